//! `cargo xtask schemathesis`: fuzzes a real broker against its own OpenAPI document.
//!
//! A broker (debug build) runs on loopback in a temporary world with the fake agent as every
//! CLI and a few agents registered; schemathesis (pinned in tests/schemathesis/requirements.txt)
//! reads `GET /openapi.json` and sends a bounded number of generated requests to every
//! operation. The run fails on any server error (5xx other than the documented ones), any status,
//! content type, header or body that the document does not allow, and any crash.
//! Without schemathesis installed the task says loudly that it skipped.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::harness::World;

/// Examples per operation: enough to reach every parameter's edge cases, few enough that the
/// whole run stays around a minute on two cores.
const MAX_EXAMPLES: &str = "25";

/// The checks that matter for the contract (the rest judge API design, not conformance).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance";

pub(crate) fn run(root: &Path) -> Result<()> {
    let available = Command::new("schemathesis")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        println!(
            "warning: schemathesis is not installed, so the schema fuzzing was SKIPPED \
             (pip install -r tests/schemathesis/requirements.txt)"
        );
        return Ok(());
    }
    let status = crate::cargo()
        .args([
            "build",
            "-q",
            "-p",
            "kokino-broker",
            "-p",
            "kokino-fake-agent",
        ])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("building the broker failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let world = World::named(&target.join("debug"), "schemathesis")?;
    // Every CLI type present (the fake agent under each name) and credentials for the two that
    // are checked by variables, so the environment, health and integrity endpoints answer 200:
    // a 503 there is a finding about the host, not about the API.
    for name in ["gemini", "droid"] {
        std::os::unix::fs::symlink(
            world.bins.join("kokino-fake-agent"),
            world.dir.join("bin").join(name),
        )?;
    }
    let path = format!(
        "{}:{}",
        world.dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The broker inherits xtask's environment; xtask is single-threaded here.
    std::env::set_var("PATH", path);
    std::env::set_var("GEMINI_API_KEY", "schemathesis");
    std::env::set_var("FACTORY_API_KEY", "schemathesis");
    std::env::set_var("HOME", world.dir.join("home"));
    let broker = world.start_broker_with(&[
        "--allow-binary".to_owned(),
        world.claude().display().to_string(),
    ])?;
    for agent in ["alpha", "beta"] {
        world.register(&broker, agent)?;
    }
    let url = format!("http://{}", broker.addr);
    println!("==> schemathesis run {url}/openapi.json (max {MAX_EXAMPLES} examples per operation)");
    let status = Command::new("schemathesis")
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--url", &url])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        // The status stream never ends by design (it lasts as long as the page is open), so a
        // fuzzer's request would only wait for its timeout; its first event is the snapshot
        // that `GET /api/status` returns, which is fuzzed.
        .args(["--exclude-path", "/api/status/stream"])
        // One worker: schemathesis's coverage phase is not thread-safe on every Python (an
        // "AST constructor recursion depth mismatch" from two workers compiling at once).
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--seed", "1"])
        .env("NO_COLOR", "1")
        .current_dir(&world.dir)
        .status()
        .context("start schemathesis")?;
    drop(broker);
    if !status.success() {
        bail!("schemathesis found failures ({status})");
    }
    Ok(())
}
