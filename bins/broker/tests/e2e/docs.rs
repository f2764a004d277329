//! Every command the README gives runs as written against a real broker.

use crate::common::*;

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let w = World::new();
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let blocks = shell_blocks(&readme);
    let tour_dir = w.path().join("tour");
    // The broker is started with the flags the tour gives (it allows the tour's binary).
    let start = blocks
        .iter()
        .flat_map(|(_, body)| body.lines())
        .find(|l| l.contains("--bin kokino-broker -- "))
        .expect("the README starts the broker for the tour");
    let flags: Vec<String> = start
        .split_once(" -- ")
        .unwrap()
        .1
        .split_whitespace()
        .map(|f| f.replace("/tmp/kokino-tour", &tour_dir.display().to_string()))
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let b = w.start_with(&flags, &[]);
    let tour = blocks
        .iter()
        .find(|(_, body)| body.contains("/agents/register"))
        .expect("the README has a tour block");
    let (ok, out, err) = run_doc_snippet(
        &b,
        &tour.1,
        &[
            ("/tmp/kokino-tour", tour_dir.display().to_string()),
            (
                "$PWD/target/debug/kokino-fake-agent",
                fake_agent().display().to_string(),
            ),
        ],
    );
    assert!(ok, "the tour failed:\n{out}\n{err}");
    assert!(out.contains("echo: What is 2+2?"), "{out}");
    assert!(out.contains("echo: And 3+3?"), "{out}");
    // The two executions print `{content, sessionId}`; the session ids must be equal.
    let sessions: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"sessionId\""))
        .collect();
    assert!(sessions.len() >= 2, "{out}");
    assert_eq!(
        sessions[0], sessions[1],
        "the second run resumed the session"
    );
    assert!(out.contains("kokino_executions_total"), "{out}");
}

#[test]
fn the_readme_names_the_commands_ci_runs() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    assert!(readme.contains("cargo run --release --bin kokino-broker"));
    assert!(readme.contains("cargo test --workspace"));
    // CI runs `cargo xtask ci`, whose test step is the README's test command.
    let ci_runs_xtask = ci.lines().any(|l| l.trim() == "cargo xtask ci");
    assert!(ci_runs_xtask, ".ci/run runs cargo xtask ci");
    let xtask = std::fs::read_to_string(workspace_root().join("xtask/src/main.rs")).unwrap();
    assert!(
        xtask.contains(r#"&["test", "--workspace"]"#),
        "cargo xtask ci runs cargo test --workspace"
    );
}
