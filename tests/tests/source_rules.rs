//! Rules about the workspace's own sources that the compiler and clippy do
//! not check.

use std::path::{Path, PathBuf};

use crius_tests::workspace_root;

/// Every `.rs` file below `dir`, skipping build output.
fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && entry.file_name() != "target" && entry.file_name() != ".git" {
                stack.push(path);
            } else if !is_dir && path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A test that skips by printing and returning passes under CI too, where
/// a missing prerequisite must fail: skips go through `crius_testkit::skip`
/// (or its `require_*` helpers), which is the only place that may print one.
#[test]
fn skips_go_through_crius_testkit() {
    let root = workspace_root();
    let testkit = root.join("testkit");
    let sources = rust_sources(&root);
    assert!(
        sources
            .iter()
            .any(|p| p.ends_with("tests/tests/source_rules.rs")),
        "the walk found no sources under {}",
        root.display()
    );
    let mut offenders = Vec::new();
    for path in sources.iter().filter(|p| !p.starts_with(&testkit)) {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            // Spelled in two pieces so this file does not match itself.
            let printed_skip = ["eprintln!(\"", "skip"].concat();
            if lower.contains(&printed_skip) {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "skips printed by hand (use crius_testkit::skip / require_*):\n{}",
        offenders.join("\n")
    );
}
