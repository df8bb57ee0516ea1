//! Prerequisite checks for tests that need root or host tools.
//!
//! Every test that cannot run without something the host may lack (root,
//! a binary, a kernel feature) asks here first and returns early when told
//! to. What "skip" means depends on where the test runs:
//!
//! - Under CI (`CI=true` in the environment, as `.ci/run` and CI services
//!   set it) the host was prepared by `scripts/setup`, so a missing
//!   prerequisite is a broken setup: [`skip`] panics and the test fails.
//! - Elsewhere [`skip`] prints `SKIP <test>: <reason>` to stderr and the
//!   test returns, so `cargo test` as an unprivileged user still runs the
//!   rest.
//!
//! ```no_run
//! #[test]
//! fn mounts_something() {
//!     if !crius_testkit::require_root() {
//!         return;
//!     }
//!     // ...
//! }
//! ```

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// True when the environment says this is a CI run (`CI=true` or `CI=1`).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The running test's name: libtest names each test's thread after it
/// (async tests run their body on that thread too).
fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("<test>")
        .to_string()
}

/// Records that the current test cannot run because of `reason`: under CI
/// this panics (the test fails), elsewhere it prints `SKIP <test>: <reason>`
/// and the caller returns.
#[track_caller]
pub fn skip(reason: impl Display) {
    report(is_ci(), &current_test(), &reason);
}

#[track_caller]
fn report(ci: bool, test: &str, reason: &dyn Display) {
    if ci {
        panic!(
            "{test}: {reason} — under CI=true a missing prerequisite is a failure \
             (run scripts/setup as root)"
        );
    }
    eprintln!("SKIP {test}: {reason}");
}

/// True when `ok`; otherwise [`skip`]s with `reason` and returns false.
#[track_caller]
pub fn require(ok: bool, reason: impl Display) -> bool {
    if !ok {
        skip(reason);
    }
    ok
}

/// True when the test process runs as root; otherwise [`skip`]s.
#[track_caller]
pub fn require_root() -> bool {
    require(
        nix::unistd::geteuid().is_root(),
        "needs root (run it as root: scripts/test)",
    )
}

/// True when every tool exists; otherwise [`skip`]s naming the first
/// missing one. Absolute paths are checked as they are, bare names are
/// looked up on `$PATH`.
#[track_caller]
pub fn require_tools(tools: &[&str]) -> bool {
    for tool in tools {
        if find_tool(tool).is_none() {
            skip(format!(
                "{tool} is not installed (scripts/setup installs it)"
            ));
            return false;
        }
    }
    true
}

/// Root plus the tools.
#[track_caller]
pub fn require_root_and_tools(tools: &[&str]) -> bool {
    require_root() && require_tools(tools)
}

/// Where `tool` is: itself if it is an absolute path that exists, else the
/// first `$PATH` entry holding it.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = Path::new(tool);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_path_lookups() {
        assert_eq!(find_tool("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_tool("/no/such/tool"), None);
        assert!(find_tool("sh").is_some_and(|p| p.ends_with("sh")));
        assert_eq!(find_tool("no-such-tool-anywhere"), None);
    }

    #[test]
    fn met_prerequisites_never_skip() {
        // Holds under CI too: nothing here may panic.
        assert!(require(true, "unused"));
        assert!(require_tools(&["/bin/sh", "sh"]));
    }

    #[test]
    #[should_panic(
        expected = "t: no frobnicator — under CI=true a missing prerequisite is a failure"
    )]
    fn under_ci_a_skip_is_a_failure() {
        report(true, "t", &"no frobnicator");
    }

    #[test]
    fn outside_ci_a_skip_returns() {
        report(false, "t", &"no frobnicator");
    }

    #[test]
    fn the_test_name_comes_from_the_thread() {
        assert_eq!(current_test(), "tests::the_test_name_comes_from_the_thread");
    }
}
