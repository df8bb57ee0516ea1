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

/// `text` with comments blanked and the contents of string and char
/// literals blanked, byte for byte, so offsets and line numbers still match
/// the file and nothing quoted can look like code.
fn code_only(text: &str) -> Vec<u8> {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(src.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, i);
            while j < src.len() {
                if src[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if src[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br"))
            && (i == 0 || !ident(src[i - 1]))
        {
            // Raw string: r"…", r#"…"#, br"…".
            let start = if rest[0] == b'b' { i + 2 } else { i + 1 };
            let hashes = src[start..].iter().take_while(|&&b| b == b'#').count();
            if src.get(start + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let body = start + hashes + 1;
            let closing: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = src[body..]
                .windows(closing.len())
                .position(|w| w == closing.as_slice())
                .map_or(src.len(), |p| body + p);
            blank(&mut out, body, end);
            i = end + closing.len();
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != b'"' {
                j += if src[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j.min(src.len()));
            i = j + 1;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', 'é'); a lifetime ('a)
            // has no closing quote right after its first character.
            let close = if rest.get(1) == Some(&b'\\') {
                rest.iter()
                    .skip(2)
                    .take(10)
                    .position(|&b| b == b'\'')
                    .map(|p| p + 2)
            } else {
                let width = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + width) == Some(&b'\'')).then_some(1 + width)
            };
            match close {
                Some(p) => {
                    blank(&mut out, i + 1, i + p);
                    i += p + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The offset just past the bracket that closes the one at `open`.
fn closing(code: &[u8], open: usize) -> usize {
    let (o, c) = match code[open] {
        b'{' => (b'{', b'}'),
        b'(' => (b'(', b')'),
        _ => unreachable!("not an opening bracket"),
    };
    let mut depth = 0usize;
    for (j, &b) in code.iter().enumerate().skip(open) {
        if b == o {
            depth += 1;
        } else if b == c {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
    }
    code.len()
}

/// The byte ranges of every `async fn` body and `async { }` block.
fn async_bodies(code: &[u8]) -> Vec<(usize, usize)> {
    let text = String::from_utf8_lossy(code);
    let mut bodies = Vec::new();
    for (at, _) in text.match_indices("async") {
        let word_start = at == 0 || !(code[at - 1].is_ascii_alphanumeric() || code[at - 1] == b'_');
        let after = at + "async".len();
        if !word_start
            || code
                .get(after)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            continue;
        }
        let rest = text[after..].trim_start();
        let rest = rest.strip_prefix("move").map_or(rest, str::trim_start);
        let skipped = text.len() - rest.len();
        let open = if rest.starts_with('{') {
            Some(skipped)
        } else if rest.starts_with("fn") {
            // The body is the first `{` after the signature; a `;` first
            // means a trait method without a body.
            rest.find(['{', ';'])
                .filter(|&p| rest.as_bytes()[p] == b'{')
                .map(|p| skipped + p)
        } else {
            None
        };
        if let Some(open) = open {
            bodies.push((open, closing(code, open)));
        }
    }
    bodies
}

/// Byte ranges handed to another thread: the arguments of
/// `spawn_blocking(…)` (and of the daemon's `blocking(…)` wrapper of it),
/// `block_in_place(…)` and `std::thread::spawn(…)`.
fn off_executor(code: &[u8]) -> Vec<(usize, usize)> {
    let text = String::from_utf8_lossy(code);
    let mut ranges = Vec::new();
    for call in ["blocking", "block_in_place", "thread::spawn"] {
        for (at, _) in text.match_indices(call) {
            let after = at + call.len();
            let rest = &text[after..];
            let Some(p) = rest.find('(') else { continue };
            // `spawn_blocking(` or `spawn_blocking::<T>(`, nothing else.
            let between = rest[..p].trim();
            if !(between.is_empty() || between.starts_with("::<")) {
                continue;
            }
            let open = after + p;
            ranges.push((open, closing(code, open)));
        }
    }
    ranges
}

/// Calls that block the calling thread on the filesystem or the clock.
/// `fs::` alone counts where the file imports `std::fs` (and not
/// `tokio::fs` under that name).
fn blocking_calls(text: &str) -> Vec<&'static str> {
    let mut calls = vec!["std::fs::", "std::thread::sleep", "thread::sleep("];
    let imports_std_fs = text.contains("use std::fs;") || text.contains("use std::{fs");
    if imports_std_fs && !text.contains("use tokio::fs;") {
        calls.push(" fs::");
        calls.push("(fs::");
        calls.push("!fs::");
        calls.push("&fs::");
    }
    if text.contains("use std::fs::File")
        || text.contains("std::fs::{File")
        || text.contains("fs::{File")
    {
        calls.push("File::open(");
        calls.push("File::create(");
    }
    if text.contains("std::fs::OpenOptions")
        || text.contains("fs::{OpenOptions")
        || text.contains(", OpenOptions")
    {
        calls.push("OpenOptions::new(");
    }
    calls
}

/// A blocking call inside async code stalls every task of that executor
/// thread (the CRI server, the exit watchers, the streams). In the daemon
/// and the handlers, async code does filesystem work through `tokio::fs`
/// or hands it to `spawn_blocking`, and sleeps with `tokio::time::sleep`.
/// A call that must stay (it only ever runs before the executor starts, or
/// on a thread of its own) says why on its line or in the comment right
/// above it, with `// blocking-ok: <why>`.
#[test]
fn async_code_does_not_block_on_the_filesystem_or_sleep() {
    let root = workspace_root();
    let mut scanned = 0;
    let mut offenders = Vec::new();
    for dir in ["core/src", "core/criusctl/src", "handlers", "shim-api/src"] {
        for path in rust_sources(&root.join(dir)) {
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            let in_tests_dir = rel.split('/').any(|c| c == "tests");
            let test_file = rel.ends_with("/tests.rs") || rel.ends_with("/build.rs");
            if in_tests_dir || test_file {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut code = code_only(&text);
            // The unit tests at the end of a file are test code.
            if let Some(p) = String::from_utf8_lossy(&code).find("#[cfg(test)]\nmod ") {
                code.truncate(p);
            }
            let code_text = String::from_utf8_lossy(&code).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            // Excused on the call's line or in the comment right above it.
            let excused = |line: usize| {
                lines[line].contains("// blocking-ok:")
                    || lines[..line]
                        .iter()
                        .rev()
                        .take_while(|l| l.trim_start().starts_with("//"))
                        .any(|l| l.contains("blocking-ok:"))
            };
            let bodies = async_bodies(&code);
            let handed_off = off_executor(&code);
            scanned += 1;
            let mut seen = std::collections::BTreeSet::new();
            for call in blocking_calls(&text) {
                for (at, _) in code_text.match_indices(call) {
                    if code_text[..at].ends_with("tokio::fs::") {
                        continue;
                    }
                    let in_async = bodies.iter().any(|&(s, e)| s < at && at < e);
                    let off = handed_off.iter().any(|&(s, e)| s < at && at < e);
                    let line = code_text[..at].matches('\n').count();
                    if in_async && !off && !excused(line) && seen.insert(line) {
                        offenders.push(format!("{rel}:{}: {}", line + 1, lines[line].trim()));
                    }
                }
            }
        }
    }
    assert!(
        scanned > 50,
        "the walk found only {scanned} sources under {}",
        root.display()
    );
    assert!(
        offenders.is_empty(),
        "blocking calls in async code (use tokio::fs, spawn_blocking or tokio::time::sleep; \
         or say why with `// blocking-ok:`):\n{}",
        offenders.join("\n")
    );
}

/// The scanner itself: it must see a blocking call in an async body and
/// pass one handed to `spawn_blocking`, in a sync fn, in a comment or in a
/// string.
#[test]
fn the_blocking_call_scanner_tells_async_code_from_the_rest() {
    let text = r##"
use std::fs;
fn sync_one() { fs::read("a"); }
async fn bad() {
    let x = "std::fs::read in a string";
    // std::fs::read in a comment
    std::fs::read("b");
}
async fn good() {
    tokio::task::spawn_blocking(move || std::fs::read("c")).await;
}
"##;
    let code = code_only(text);
    let code_text = String::from_utf8_lossy(&code).into_owned();
    let bodies = async_bodies(&code);
    let off = off_executor(&code);
    let hits: Vec<usize> = blocking_calls(text)
        .into_iter()
        .flat_map(|c| {
            code_text
                .match_indices(c)
                .map(|(at, _)| at)
                .collect::<Vec<_>>()
        })
        .filter(|&at| bodies.iter().any(|&(s, e)| s < at && at < e))
        .filter(|&at| !off.iter().any(|&(s, e)| s < at && at < e))
        .map(|at| code_text[..at].matches('\n').count() + 1)
        .collect();
    assert_eq!(hits, vec![7], "code as scanned:\n{code_text}");
}
