//! The doctor on the four real CLIs (claude, codex, gemini, droid from npm), each set up with API
//! keys and no vendor login, as docs/reference/real-clis.md describes: per agent, none may be a
//! failure, and in the broker's own environment (no credentials) none may be a hard one.
//!
//! The CLIs are looked for in `$KOKINO_REAL_CLI_DIR/node_modules/.bin`, else in the
//! workspace's `.real-clis`, else in `/work/wt/realcli/.real-clis`. Without them the test says
//! loudly that it was skipped and how to install them. No provider is contacted: the doctor
//! reads files and runs `--version` and the status commands, which work offline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kokino_core::CliType;
use kokino_doctor::{check_agent, check_cli, AgentContext, CheckName, CliReport, DoctorConfig};

fn real_cli_bin() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("KOKINO_REAL_CLI_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            workspace.join(".real-clis"),
            PathBuf::from("/work/wt/realcli/.real-clis"),
        ])
        .map(|p| p.join("node_modules/.bin"))
        .find(|bin| {
            ["claude", "codex", "gemini", "droid"]
                .iter()
                .all(|c| bin.join(c).exists())
        })
}

/// The API-key set-up of one CLI in `home`, as the real-CLI suite points it at its provider
/// stand-in (the URL need not answer: the doctor does not call it).
fn setup(cli: CliType, home: &Path) -> AgentContext {
    let base = "http://127.0.0.1:9";
    let mut ctx = AgentContext {
        agent_id: Some(format!("real-{cli}")),
        home: Some(home.to_path_buf()),
        ..AgentContext::default()
    };
    let mut put = |k: &str, v: &str| {
        ctx.env.insert(k.to_owned(), v.to_owned());
    };
    match cli {
        CliType::ClaudeCode => {
            put("ANTHROPIC_BASE_URL", base);
            put("ANTHROPIC_API_KEY", "sk-standin");
            put("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        }
        CliType::Codex => {
            std::fs::create_dir_all(home.join(".codex")).unwrap();
            std::fs::write(
                home.join(".codex/config.toml"),
                format!(
                    "model = \"gpt-fake\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\n\
                     name = \"fake\"\nbase_url = \"{base}/v1\"\nenv_key = \"FAKE_OPENAI_KEY\"\n\
                     wire_api = \"responses\"\n"
                ),
            )
            .unwrap();
            put("FAKE_OPENAI_KEY", "sk-standin");
        }
        CliType::Gemini => {
            std::fs::create_dir_all(home.join(".gemini")).unwrap();
            std::fs::write(
                home.join(".gemini/settings.json"),
                r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
            )
            .unwrap();
            put("GOOGLE_GEMINI_BASE_URL", base);
            put("GEMINI_API_KEY", "standin");
            ctx.model = Some("gemini-2.5-flash".into());
        }
        CliType::FactoryDroid => {
            std::fs::create_dir_all(home.join(".factory")).unwrap();
            std::fs::write(
                home.join(".factory/config.json"),
                serde_json::json!({"custom_models": [{"model_display_name": "Fake",
                    "model": "claude-fake", "base_url": base, "api_key": "sk-standin",
                    "provider": "anthropic", "max_tokens": 4096}]})
                .to_string(),
            )
            .unwrap();
            ctx.model = Some("custom:claude-fake".into());
            ctx.extra_args = vec!["--auto".into(), "low".into()];
        }
    }
    ctx
}

fn summary(r: &CliReport) -> String {
    let checks: Vec<String> = r
        .checks
        .iter()
        .map(|c| {
            let mark = match (c.passed, c.warning.is_some()) {
                (true, false) => "pass",
                (true, true) => "warn",
                (false, _) if c.disables_cli() => "FAIL(hard)",
                (false, _) => "fail(soft)",
            };
            format!("{}={mark}", c.name)
        })
        .collect();
    format!(
        "{:<13} {} version={:?} {} ms; auth: {}{}",
        r.cli_type.as_str(),
        checks.join(" "),
        r.version.as_deref().unwrap_or("-"),
        r.duration_ms,
        r.check(CheckName::Auth).unwrap().message,
        r.check(CheckName::Auth)
            .unwrap()
            .warning
            .as_deref()
            .map(|w| format!(" [warning: {w}]"))
            .unwrap_or_default()
    )
}

#[tokio::test]
async fn the_doctor_never_fails_a_working_real_cli() {
    let Some(bin) = real_cli_bin() else {
        eprintln!(
            "\n*** SKIPPED the_doctor_never_fails_a_working_real_cli: the real CLIs are not \
             installed. Install them with `scripts/install-real-clis.sh` (or set \
             KOKINO_REAL_CLI_DIR to a prefix holding node_modules/.bin/{{claude,codex,gemini,\
             droid}}). ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker_home = dir.path().join("broker-home");
    std::fs::create_dir_all(&broker_home).unwrap();
    // The broker's environment: this test's PATH (for node) and a HOME without any login.
    let mut env = BTreeMap::new();
    env.insert("HOME".to_owned(), broker_home.display().to_string());
    env.insert(
        "PATH".to_owned(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let mut cfg = DoctorConfig::with_env(&data, env);
    cfg.disk_warn_pct = 100.0;
    cfg.disk_fail_pct = 100.0;
    for cli in CliType::ALL {
        cfg.binaries
            .insert(*cli, bin.join(cli.default_binary()).display().to_string());
    }

    let mut failures = Vec::new();
    eprintln!("doctor on the real CLIs in {}:", bin.display());
    eprintln!("  per agent, API-key set-up:");
    for cli in CliType::ALL {
        let home = dir.path().join(format!("home-{cli}"));
        std::fs::create_dir_all(&home).unwrap();
        let ctx = setup(*cli, &home);
        let r = check_agent(&cfg, *cli, &ctx).await;
        eprintln!("    {}", summary(&r));
        if !r.passed || r.disables_cli() {
            failures.push(serde_json::to_string_pretty(&r).unwrap());
        }
        if !r.check(CheckName::Auth).unwrap().passed {
            failures.push(format!("{cli}: auth failed"));
        }
    }
    eprintln!("  the broker's own environment, no credentials:");
    for cli in CliType::ALL {
        let r = check_cli(&cfg, *cli).await;
        eprintln!("    {}", summary(&r));
        if r.disables_cli() {
            failures.push(serde_json::to_string_pretty(&r).unwrap());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
