//! The embedding example (`examples/run_headless.rs`) runs a CLI headless and prints its answer:
//! built by cargo, run here against the fake agent under the CLIs' names.

mod support;

use std::process::Command;

/// One run of the example with the fake agent as `cli_name` on a private `PATH`.
fn run_example(cli_name: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(support::fake_agent(), bin.join(cli_name)).unwrap();
    Command::new(support::example("run_headless"))
        .args(args)
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", dir.path())
        .env("KOKINO_FAKE_STATE", dir.path().join("state"))
        .output()
        .expect("run the example")
}

#[test]
fn the_example_prints_the_answer_of_each_cli() {
    for (cli_type, name) in [
        ("claude-code", "claude"),
        ("codex", "codex"),
        ("gemini", "gemini"),
        ("factory-droid", "droid"),
    ] {
        let out = run_example(name, &["--cli", cli_type, "what", "is", "2+2?"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cli_type}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "echo: what is 2+2?\n",
            "{cli_type}: {stderr}"
        );
        assert!(stderr.contains("session: "), "{cli_type}: {stderr}");
    }
}

#[test]
fn the_example_reports_a_failed_run_on_stderr_with_status_1() {
    // The fake agent's `fake:auth` token makes it fail as a logged-out CLI does.
    let out = run_example("claude", &["fake:auth", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("claude-code failed (auth_error)"),
        "{stderr}"
    );
}
