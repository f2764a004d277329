//! The short version of `cargo xtask chaos` (the long one is 100 rounds and more): a few
//! `kill -9`s of a real broker at random instants, and, with PostgreSQL, a few kills and pauses of
//! one of two brokers whose runs outlast their lease. Any orphan, overlap, lost turn or stuck
//! lock fails the test.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_short_chaos_run_finds_no_broken_promise() {
    let xtask = PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let bins = xtask.parent().expect("the target directory").to_path_buf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    // `cargo test --workspace` has built them already; `cargo test -p xtask` has not.
    let built = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-p", "kokino-broker", "-p", "kokino-fake-agent"])
        .status()
        .expect("cargo build");
    assert!(
        built.success(),
        "building the broker and the fake agent failed"
    );
    let out = Command::new(&xtask)
        .args([
            "chaos",
            "--rounds",
            "4",
            "--cluster-rounds",
            "2",
            "--seed",
            "20261204",
            "--bins",
        ])
        .arg(&bins)
        .env("KOKINO_LOG", "error")
        .output()
        .expect("run xtask chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "chaos found broken promises:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("(a) one broker, SQLite: 4 rounds"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 orphans, 0 overlapping runs, 0 lost turns, 0 stuck locks"),
        "{stdout}"
    );
}
