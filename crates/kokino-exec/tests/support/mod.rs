//! Helpers shared by the executor's integration tests: binaries of this workspace, built on
//! demand when `cargo test` did not build them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// `<target>/<profile>`, the directory of this test's binary's parent (`<target>/debug/deps`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary under <target>/<profile>/deps")
        .to_path_buf()
}

/// Runs `cargo build` with `args` into this test's own target directory.
fn cargo_build(args: &[&str]) {
    let target_root = profile_dir().parent().expect("target root").to_path_buf();
    let status = Command::new(env!("CARGO"))
        .arg("build")
        .args(args)
        .env("CARGO_TARGET_DIR", target_root)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

/// The fake agent binary next to this test's binary (`<target>/debug/kokino-fake-agent`),
/// built once per test process: `cargo test -p kokino-exec` does not build it, and a binary
/// left by an earlier build may predate the tokens a test uses (the build is a no-op when it
/// is fresh).
pub fn fake_agent() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build(&["-p", "kokino-fake-agent"]);
        profile_dir().join("kokino-fake-agent")
    })
}

/// An example of this crate (`<target>/debug/examples/<name>`), built by `cargo build` once per
/// test process: `cargo test` builds examples only when no test target is selected, and a
/// binary left by an earlier build may be stale, so the build (a no-op when it is fresh) is
/// what makes the binary the current source's.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|n| n == name) {
        cargo_build(&["-p", "kokino-exec", "--example", name]);
        built.push(name.to_owned());
    }
    profile_dir().join("examples").join(name)
}
