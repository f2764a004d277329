//! The doctor against real processes: the workspace's fake agent under the four CLI names,
//! scripts that hang, and a temp HOME.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kokino_core::CliType;
use kokino_doctor::{
    check_agent, check_all, check_cli, AgentContext, Certainty, CheckName, CliReport, DoctorConfig,
};

/// The fake agent, built once on demand when only this package's tests were built.
fn fake_agent() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let path = dir.join("kokino-fake-agent");
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "kokino-fake-agent"])
                .status()
                .expect("cargo build");
            assert!(status.success(), "could not build kokino-fake-agent");
        }
        path
    })
    .clone()
}

/// A temp world: `bin/` with the fake agent as claude/codex/gemini/droid, a HOME, a data dir.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World::empty();
        for name in ["claude", "codex", "gemini", "droid"] {
            std::os::unix::fs::symlink(fake_agent(), w.bin().join(name)).unwrap();
        }
        w
    }

    fn empty() -> World {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "home", "data", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        World { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.bin().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Credentials for the two CLIs without a status command, as their real logins leave them.
    fn log_in_gemini_and_droid(&self) {
        let gemini = self.home().join(".gemini");
        std::fs::create_dir_all(&gemini).unwrap();
        std::fs::write(
            gemini.join("settings.json"),
            r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#,
        )
        .unwrap();
        std::fs::write(gemini.join("oauth_creds.json"), r#"{"access_token":"x"}"#).unwrap();
        let factory = self.home().join(".factory");
        std::fs::create_dir_all(&factory).unwrap();
        std::fs::write(factory.join("auth.json"), r#"{"access_token":"x"}"#).unwrap();
    }

    fn config(&self) -> DoctorConfig {
        let mut env = BTreeMap::new();
        env.insert("HOME".to_owned(), self.home().display().to_string());
        env.insert(
            "PATH".to_owned(),
            format!("{}:/usr/bin:/bin", self.bin().display()),
        );
        env.insert(
            "KOKINO_FAKE_STATE".to_owned(),
            self.dir.path().join("state").display().to_string(),
        );
        let mut cfg = DoctorConfig::with_env(self.dir.path().join("data"), env);
        // The host's disk may really be over 85 % full; these tests are not about that.
        cfg.disk_warn_pct = 100.0;
        cfg.disk_fail_pct = 100.0;
        cfg
    }
}

fn check(r: &CliReport, name: CheckName) -> &kokino_doctor::Check {
    r.check(name).expect("every check is reported")
}

fn explain(r: &CliReport) -> String {
    serde_json::to_string_pretty(r).unwrap()
}

#[tokio::test]
async fn claude_and_codex_pass_every_check_with_the_fake_agent() {
    let w = World::new();
    let cfg = w.config();
    for cli in [CliType::ClaudeCode, CliType::Codex] {
        let r = check_cli(&cfg, cli).await;
        assert!(r.passed, "{}", explain(&r));
        assert!(r.warnings.is_empty(), "{}", explain(&r));
        let names: Vec<_> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CheckName::ALL);
        assert!(check(&r, CheckName::Binary)
            .message
            .contains(&w.bin().display().to_string()));
        assert!(
            check(&r, CheckName::Auth).message.contains("logged in")
                || check(&r, CheckName::Auth).message.contains("Logged in")
        );
    }
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert_eq!(r.version.as_deref(), Some("2.1.197 (Claude Code)"));
    assert_eq!(r.event_types(), ["ENV_CHECK_PASSED"]);
    let r = check_cli(&cfg, CliType::Codex).await;
    assert_eq!(r.version.as_deref(), Some("codex-cli 0.169.0"));
    assert!(check(&r, CheckName::Auth)
        .message
        .contains("Logged in using ChatGPT"));
}

#[tokio::test]
async fn all_four_pass_when_gemini_and_droid_have_their_login_files() {
    let w = World::new();
    w.log_in_gemini_and_droid();
    let report = check_all(&w.config()).await;
    assert!(
        report.overall,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    let types: Vec<_> = report.results.iter().map(|r| r.cli_type).collect();
    assert_eq!(types, CliType::ALL);
    let versions: Vec<_> = report
        .results
        .iter()
        .map(|r| r.version.clone().unwrap())
        .collect();
    assert_eq!(
        versions,
        [
            "2.1.197 (Claude Code)",
            "codex-cli 0.169.0",
            "0.61.0",
            "0.225.2"
        ]
    );
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["overall"], true);
    assert_eq!(v["results"][2]["cliType"], "gemini");
    assert_eq!(v["results"][2]["checks"][2]["name"], "auth");
    assert!(v["checkedAt"].as_str().unwrap().contains('T'));
}

/// Gemini and Droid have no status command, and their credentials may live where the doctor
/// cannot look (a key Gemini stored itself, system settings): with none in sight the verdict is
/// a warning with the login hint, never a failure.
#[tokio::test]
async fn gemini_and_droid_without_credentials_warn_with_the_login_hint() {
    let w = World::new();
    let cfg = w.config();
    let r = check_cli(&cfg, CliType::Gemini).await;
    let auth = check(&r, CheckName::Auth);
    assert!(r.passed && auth.passed, "{}", explain(&r));
    let warning = auth.warning.as_deref().expect("a warning");
    assert!(warning.contains("GEMINI_API_KEY"), "{warning}");
    assert!(warning.contains("Login with Google"), "{warning}");
    assert_eq!(r.event_types(), ["ENV_CHECK_PASSED", "ENV_DEGRADED"]);
    let r = check_cli(&cfg, CliType::FactoryDroid).await;
    let auth = check(&r, CheckName::Auth);
    assert!(auth.passed);
    let warning = auth.warning.as_deref().expect("a warning");
    assert!(warning.contains("/login") && warning.contains("FACTORY_API_KEY"));
    assert!(!r.disables_cli());

    // A key in the broker's environment is enough, and its value is never shown.
    let mut cfg = w.config();
    cfg.base_env
        .insert("FACTORY_API_KEY".into(), "fk-secret-value".into());
    let r = check_cli(&cfg, CliType::FactoryDroid).await;
    assert!(r.passed, "{}", explain(&r));
    assert!(r.warnings.is_empty(), "{}", explain(&r));
    assert!(!explain(&r).contains("fk-secret-value"));
}

#[tokio::test]
async fn a_missing_binary_fails_with_the_install_hint() {
    let w = World::empty();
    let cfg = w.config();
    for (cli, hint) in [
        (
            CliType::ClaudeCode,
            "npm install -g @anthropic-ai/claude-code",
        ),
        (CliType::Codex, "npm install -g @openai/codex"),
        (CliType::Gemini, "npm install -g @google/gemini-cli"),
        (
            CliType::FactoryDroid,
            "curl -fsSL https://app.factory.ai/cli | sh",
        ),
    ] {
        let r = check_cli(&cfg, cli).await;
        assert!(!r.passed);
        let binary = check(&r, CheckName::Binary);
        assert!(!binary.passed);
        assert!(binary.message.contains(hint), "{}", binary.message);
        assert!(binary.message.contains("not found"), "{}", binary.message);
        let dry = check(&r, CheckName::Dryrun);
        assert!(!dry.passed && dry.message.contains("not run"));
        assert_eq!(r.event_types(), ["ENV_CHECK_FAILED"]);
        assert!(r.failed_checks().contains(&CheckName::Binary));
        // The one hard fact: it may disable the CLI type; the checks that could not run
        // because of it are soft and would not on their own.
        assert_eq!(binary.certainty, Some(Certainty::Hard));
        assert!(binary.disables_cli() && r.disables_cli());
        assert_eq!(r.disabling_check().unwrap().name, CheckName::Binary);
        assert!(!dry.disables_cli());
        assert_eq!(
            serde_json::to_value(&r).unwrap()["checks"][0]["certainty"],
            "hard"
        );
    }
    // A configured path that does not exist says so, instead of blaming PATH.
    let mut cfg = w.config();
    cfg.binaries
        .insert(CliType::Codex, "/nonexistent/bin/codex".into());
    let r = check_cli(&cfg, CliType::Codex).await;
    let binary = check(&r, CheckName::Binary);
    assert!(binary.message.contains("/nonexistent/bin/codex"));
    assert!(binary.message.contains("[binaries]"));
}

#[tokio::test]
async fn a_configured_absolute_binary_is_used_even_off_path() {
    let w = World::empty();
    let elsewhere = w.dir.path().join("opt");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // The fake agent takes its personality from a name ending in the CLI's name.
    let custom = elsewhere.join("my-claude");
    std::os::unix::fs::symlink(fake_agent(), &custom).unwrap();
    let mut cfg = w.config();
    cfg.binaries
        .insert(CliType::ClaudeCode, custom.display().to_string());
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert!(r.passed, "{}", explain(&r));
    assert!(r.warnings.is_empty(), "{}", explain(&r));
    assert!(check(&r, CheckName::Binary)
        .message
        .contains(&custom.display().to_string()));
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some(i) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[i + 1..].split_whitespace().collect();
        // After the command name: state, ppid, pgrp.
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

#[tokio::test]
async fn a_cli_that_hangs_on_version_fails_the_dry_run_quickly_and_leaves_no_process() {
    let w = World::empty();
    let pids = w.dir.path().join("pids");
    w.script(
        "claude",
        &format!("#!/bin/sh\necho $$ >> {}\nsleep 100\n", pids.display()),
    );
    let mut cfg = w.config();
    cfg.set_all_timeouts(Duration::from_millis(300));
    let started = Instant::now();
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    // A hanging CLI is a soft verdict: the breakers, not the doctor, judge its real runs.
    assert!(!r.passed && !r.disables_cli(), "{}", explain(&r));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let dry = check(&r, CheckName::Dryrun);
    assert!(!dry.passed);
    assert!(
        dry.message.contains("timed out after 300 ms"),
        "{}",
        dry.message
    );
    // `claude auth status` hangs the same way and is bounded the same way.
    let auth = check(&r, CheckName::Auth);
    assert!(!auth.passed && auth.message.contains("timed out after 300 ms"));
    assert!(r.version.is_none());

    let text = std::fs::read_to_string(&pids).unwrap();
    let groups: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(groups.len(), 2, "one --version and one auth status probe");
    for pgid in groups {
        let deadline = Instant::now() + Duration::from_secs(2);
        while group_alive(pgid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !group_alive(pgid),
            "process group {pgid} outlived the doctor"
        );
    }
}

#[tokio::test]
async fn a_probe_cap_of_five_seconds_is_reported_as_5000_ms() {
    let w = World::empty();
    w.script("gemini", "#!/bin/sh\nsleep 100\n");
    w.log_in_gemini_and_droid();
    let mut cfg = w.config();
    assert_eq!(cfg.check_timeout, Duration::from_millis(5_000));
    // The old default for every probe, now set explicitly for gemini.
    cfg.probe_timeouts
        .insert(CliType::Gemini, Duration::from_millis(5_000));
    let started = Instant::now();
    let r = check_cli(&cfg, CliType::Gemini).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    let dry = check(&r, CheckName::Dryrun);
    assert!(
        dry.message.contains("timed out after 5000 ms"),
        "{}",
        dry.message
    );
    assert_eq!(dry.certainty, Some(Certainty::Soft));
    assert!(!r.disables_cli());
    // Gemini's auth check reads files and does not run the hanging binary.
    assert!(check(&r, CheckName::Auth).passed);
}

/// `gemini --version` took 15–19 s on a loaded 2-core host. The default cap is per CLI, and a
/// gemini that needs longer than the old 5 s passes the dry run with the broker's default
/// `check_timeout` of 5 000 ms.
#[tokio::test]
async fn a_slow_gemini_version_passes_with_the_default_caps() {
    let w = World::empty();
    w.script("gemini", "#!/bin/sh\nsleep 6\necho 0.61.0\n");
    w.log_in_gemini_and_droid();
    let cfg = w.config();
    assert_eq!(cfg.probe_timeout(CliType::Gemini), Duration::from_secs(30));
    assert_eq!(
        kokino_doctor::default_probe_timeout(CliType::ClaudeCode),
        Duration::from_secs(15)
    );
    let r = check_cli(&cfg, CliType::Gemini).await;
    assert!(r.passed, "{}", explain(&r));
    assert_eq!(r.version.as_deref(), Some("0.61.0"));
}

#[tokio::test]
async fn an_inherited_anthropic_key_is_a_warning_not_a_failure_and_is_never_shown() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.base_env
        .insert("ANTHROPIC_API_KEY".into(), "sk-ant-secret-value".into());
    cfg.base_env.insert("CLAUDECODE".into(), "1".into());
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert!(r.passed, "{}", explain(&r));
    let env = check(&r, CheckName::Environment);
    assert!(env.passed);
    assert!(env
        .warning
        .as_deref()
        .unwrap()
        .contains("ANTHROPIC_API_KEY"));
    assert!(env.message.contains("CLAUDECODE"), "{}", env.message);
    assert_eq!(r.warnings.len(), 1, "{}", explain(&r));
    assert!(r.warnings[0].contains(
        "ANTHROPIC_API_KEY is set in the broker environment and is removed for claude-code agents"
    ));
    assert_eq!(r.event_types(), ["ENV_CHECK_PASSED", "ENV_DEGRADED"]);
    assert!(!explain(&r).contains("sk-ant-secret-value"));

    // Codex keeps the key (it is not conflicting for codex), so there is nothing to warn about.
    let r = check_cli(&cfg, CliType::Codex).await;
    assert!(r.warnings.is_empty(), "{}", explain(&r));

    // An operator's own conflicting list is honoured and reported the same way.
    cfg.conflicting_vars
        .insert(CliType::Codex, vec!["ANTHROPIC_API_KEY".into()]);
    let r = check_cli(&cfg, CliType::Codex).await;
    assert!(r.passed);
    assert!(
        r.warnings[0].contains("removed for codex agents"),
        "{}",
        explain(&r)
    );
}

#[tokio::test]
async fn environment_problems_fail_with_what_to_do() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.base_env.remove("HOME");
    let r = check_cli(&cfg, CliType::Codex).await;
    let env = check(&r, CheckName::Environment);
    assert!(!env.passed);
    assert!(env.message.contains("HOME is not set"), "{}", env.message);

    let mut cfg = w.config();
    cfg.base_env.insert(
        "HOME".into(),
        w.dir.path().join("no-such-home").display().to_string(),
    );
    let env = check(
        &check_cli(&cfg, CliType::Codex).await,
        CheckName::Environment,
    )
    .clone();
    assert!(!env.passed && env.message.contains("not a directory"));

    // An npm-style script whose interpreter is not on the CLI's PATH.
    let w = World::empty();
    w.script(
        "droid",
        "#!/usr/bin/env kokino-no-such-interpreter\nconsole.log('x')\n",
    );
    let r = check_cli(&w.config(), CliType::FactoryDroid).await;
    let env = check(&r, CheckName::Environment);
    assert!(!env.passed);
    assert!(
        env.message.contains("kokino-no-such-interpreter"),
        "{}",
        env.message
    );
    assert!(!check(&r, CheckName::Dryrun).passed);
}

#[tokio::test]
async fn a_disk_threshold_of_zero_forces_the_disk_check_to_fail() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.disk_fail_pct = 0.0;
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert!(!r.passed);
    assert_eq!(r.failed_checks(), [CheckName::Disk]);
    let disk = check(&r, CheckName::Disk);
    assert!(
        disk.message.contains("disk almost full"),
        "{}",
        disk.message
    );
    assert!(disk.message.contains("kokino-cleanup"));

    let mut cfg = w.config();
    cfg.disk_warn_pct = 0.0;
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert!(r.passed);
    assert!(check(&r, CheckName::Disk).warning.is_some());
    assert!(r.warnings[0].contains("full"));

    // A data directory that does not exist yet is measured on its nearest existing parent.
    let mut cfg = w.config();
    cfg.data_dir = w.dir.path().join("not/yet/data");
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    let disk = check(&r, CheckName::Disk);
    assert!(disk.passed && disk.message.contains("not created yet"));
}

#[tokio::test]
async fn logged_out_claude_and_codex_fail_auth_with_the_login_command() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.base_env
        .insert("KOKINO_FAKE_LOGGED_OUT".into(), "1".into());
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert_eq!(r.failed_checks(), [CheckName::Auth], "{}", explain(&r));
    let auth = check(&r, CheckName::Auth);
    assert!(auth.message.contains("not logged in"), "{}", auth.message);
    assert!(auth.message.contains("`claude`") && auth.message.contains("/login"));
    assert!(auth.message.contains(&w.home().display().to_string()));

    let r = check_cli(&cfg, CliType::Codex).await;
    assert_eq!(r.failed_checks(), [CheckName::Auth], "{}", explain(&r));
    let auth = check(&r, CheckName::Auth);
    assert!(auth.message.contains("Not logged in"), "{}", auth.message);
    assert!(auth.message.contains("codex login"));
    // No credentials at all is a failure, but a soft one: it never disables the CLI type.
    assert_eq!(auth.certainty, Some(Certainty::Soft));
    assert!(!r.disables_cli());
}

// ------------------------------------------------------------------ auth judged per agent

/// A context for an agent with these variables.
fn agent(id: &str, env: &[(&str, &str)]) -> AgentContext {
    AgentContext {
        agent_id: Some(id.to_owned()),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..AgentContext::default()
    }
}

/// `claude auth status` says loggedIn: false when the key is not in its environment (the broker
/// strips ANTHROPIC_API_KEY for claude by default), although `claude -p` works with a key the
/// agent carries. The doctor judges with the agent's environment: a key there turns a
/// logged-out status into a pass with a warning, not a failure.
#[tokio::test]
async fn an_agent_api_key_makes_a_logged_out_claude_a_warning_not_a_failure() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.base_env
        .insert("KOKINO_FAKE_LOGGED_OUT".into(), "1".into());
    cfg.base_env
        .insert("ANTHROPIC_API_KEY".into(), "sk-ant-broker-secret".into());

    // The broker's own environment: its key is stripped, and the status is believed. The
    // failure says where the key went, and it is soft.
    let r = check_cli(&cfg, CliType::ClaudeCode).await;
    assert_eq!(r.failed_checks(), [CheckName::Auth], "{}", explain(&r));
    let auth = check(&r, CheckName::Auth);
    assert!(
        auth.message.contains("[conflicting_env]"),
        "{}",
        auth.message
    );
    assert!(auth.message.contains("/login"), "{}", auth.message);
    assert!(!r.disables_cli());
    assert!(r.agent_id.is_none());

    // An agent that carries its own key and base URL (the API-key set-up of the real CLI).
    let ctx = agent(
        "claude-key",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-agent-secret"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:8787"),
        ],
    );
    let r = check_agent(&cfg, CliType::ClaudeCode, &ctx).await;
    assert!(r.passed, "{}", explain(&r));
    assert_eq!(r.agent_id.as_deref(), Some("claude-key"));
    let auth = check(&r, CheckName::Auth);
    assert!(
        auth.message.contains("ANTHROPIC_API_KEY"),
        "{}",
        auth.message
    );
    assert!(
        auth.message
            .contains("ANTHROPIC_BASE_URL=http://127.0.0.1:8787"),
        "{}",
        auth.message
    );
    let warning = auth
        .warning
        .as_deref()
        .expect("the disagreement is a warning");
    assert!(warning.contains("loggedIn: false"), "{warning}");
    // The agent's own key is not "a conflicting variable that still reaches the CLI".
    let env = check(&r, CheckName::Environment);
    assert!(env.passed, "{}", explain(&r));
    assert!(
        env.message.contains("from the agent's env"),
        "{}",
        env.message
    );
    let text = explain(&r);
    assert!(!text.contains("sk-ant-agent-secret") && !text.contains("sk-ant-broker-secret"));

    // Other credentials Claude Code takes from its environment count the same way.
    for var in ["ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"] {
        let r = check_agent(&cfg, CliType::ClaudeCode, &agent("t", &[(var, "tok")])).await;
        assert!(r.passed, "{var}: {}", explain(&r));
        assert!(check(&r, CheckName::Auth).warning.is_some());
    }
    let bedrock = agent("b", &[("CLAUDE_CODE_USE_BEDROCK", "1")]);
    assert!(
        check_agent(&cfg, CliType::ClaudeCode, &bedrock)
            .await
            .passed
    );
    let off = agent("b", &[("CLAUDE_CODE_USE_BEDROCK", "0")]);
    assert!(!check_agent(&cfg, CliType::ClaudeCode, &off).await.passed);
}

/// `codex login status` says "Not logged in" for a custom provider, although `codex exec`
/// works with the provider's `env_key` set. Chosen in the agent's extra arguments or in
/// config.toml under the agent's HOME, the provider decides, and the status is not asked.
#[tokio::test]
async fn a_custom_codex_provider_with_its_key_passes_although_login_status_says_not_logged_in() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.base_env
        .insert("KOKINO_FAKE_LOGGED_OUT".into(), "1".into());
    // Without the provider: logged out, no key, a soft failure.
    let r = check_cli(&cfg, CliType::Codex).await;
    assert_eq!(r.failed_checks(), [CheckName::Auth], "{}", explain(&r));
    assert!(!r.disables_cli());

    // `-c model_provider=…` in the agent's extra arguments, its key in the agent's env.
    let mut ctx = agent("codex-args", &[("STANDIN_KEY", "sk-standin-secret")]);
    ctx.extra_args = [
        "-c",
        "model_provider=standin",
        "-c",
        "model_providers.standin.base_url=\"http://127.0.0.1:8787/v1\"",
        "-c",
        "model_providers.standin.env_key=STANDIN_KEY",
        "--dangerously-bypass-approvals-and-sandbox",
    ]
    .map(String::from)
    .to_vec();
    let r = check_agent(&cfg, CliType::Codex, &ctx).await;
    assert!(r.passed, "{}", explain(&r));
    assert!(r.warnings.is_empty(), "{}", explain(&r));
    let auth = check(&r, CheckName::Auth);
    assert!(
        auth.message.contains("custom provider standin"),
        "{}",
        auth.message
    );
    assert!(
        auth.message.contains("http://127.0.0.1:8787/v1"),
        "{}",
        auth.message
    );
    assert!(auth.message.contains("STANDIN_KEY"), "{}", auth.message);
    assert!(!explain(&r).contains("sk-standin-secret"));

    // The same provider without its key: codex exec would stop, a soft failure that names it.
    let mut keyless = ctx.clone();
    keyless.env.clear();
    let r = check_agent(&cfg, CliType::Codex, &keyless).await;
    assert_eq!(r.failed_checks(), [CheckName::Auth], "{}", explain(&r));
    assert!(check(&r, CheckName::Auth)
        .message
        .contains("STANDIN_KEY is not set"));
    assert!(!r.disables_cli());

    // The real-CLI set-up: the provider in config.toml of the agent's own HOME.
    let home = w.dir.path().join("codex-home");
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::write(
        home.join(".codex/config.toml"),
        "model = \"gpt-fake\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\n\
         name = \"fake\"\nbase_url = \"http://127.0.0.1:8787/v1\"\nenv_key = \"FAKE_OPENAI_KEY\"\n\
         wire_api = \"responses\"\n",
    )
    .unwrap();
    let mut ctx = agent("codex-config", &[("FAKE_OPENAI_KEY", "sk-x")]);
    ctx.home = Some(home.clone());
    let r = check_agent(&cfg, CliType::Codex, &ctx).await;
    assert!(r.passed && r.warnings.is_empty(), "{}", explain(&r));
    assert!(check(&r, CheckName::Auth)
        .message
        .contains(&home.join(".codex/config.toml").display().to_string()));

    // CODEX_API_KEY passes outright; OPENAI_API_KEY alone is a warning (codex may not read it).
    let r = check_agent(&cfg, CliType::Codex, &agent("k", &[("CODEX_API_KEY", "k")])).await;
    assert!(r.passed && r.warnings.is_empty(), "{}", explain(&r));
    let r = check_agent(
        &cfg,
        CliType::Codex,
        &agent("o", &[("OPENAI_API_KEY", "k")]),
    )
    .await;
    assert!(r.passed, "{}", explain(&r));
    assert!(check(&r, CheckName::Auth)
        .warning
        .as_deref()
        .unwrap()
        .contains("CODEX_API_KEY"));
}

/// Gemini and Droid judged with the agent's env, HOME and model: a key only the agent carries,
/// and a BYOK model chosen with `custom:`, are enough.
#[tokio::test]
async fn gemini_and_droid_credentials_in_the_agent_pass() {
    let w = World::new();
    let cfg = w.config();
    let home = w.dir.path().join("agent-home");
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(
        home.join(".gemini/settings.json"),
        r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
    )
    .unwrap();
    let mut ctx = agent(
        "gem",
        &[
            ("GEMINI_API_KEY", "gk-secret"),
            ("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:8787"),
        ],
    );
    ctx.home = Some(home.clone());
    ctx.model = Some("gemini-2.5-flash".into());
    let r = check_agent(&cfg, CliType::Gemini, &ctx).await;
    assert!(r.passed && r.warnings.is_empty(), "{}", explain(&r));
    assert!(!explain(&r).contains("gk-secret"));

    std::fs::create_dir_all(home.join(".factory")).unwrap();
    std::fs::write(
        home.join(".factory/config.json"),
        r#"{"custom_models":[{"model_display_name":"Fake","model":"claude-fake",
            "base_url":"http://127.0.0.1:8787","api_key":"sk-byok-secret","provider":"anthropic"}]}"#,
    )
    .unwrap();
    let mut ctx = agent("droid", &[]);
    ctx.home = Some(home);
    ctx.model = Some("custom:claude-fake".into());
    ctx.extra_args = vec!["--auto".into(), "low".into()];
    let r = check_agent(&cfg, CliType::FactoryDroid, &ctx).await;
    assert!(r.passed && r.warnings.is_empty(), "{}", explain(&r));
    assert!(check(&r, CheckName::Auth).message.contains("claude-fake"));
    assert!(!explain(&r).contains("sk-byok-secret"));
}

/// An agent's own binary that does not exist is the same hard fact as a missing CLI.
#[tokio::test]
async fn an_agents_missing_binary_is_a_hard_failure_that_disables() {
    let w = World::new();
    let mut ctx = agent("custom-bin", &[]);
    ctx.binary = Some(w.dir.path().join("nowhere/claude").display().to_string());
    let r = check_agent(&w.config(), CliType::ClaudeCode, &ctx).await;
    let binary = check(&r, CheckName::Binary);
    assert!(!binary.passed && binary.message.contains("the agent's `binary`"));
    assert!(r.disables_cli());
    // A file that exists but is not executable is the same fact.
    let plain = w.dir.path().join("plain-claude");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    ctx.binary = Some(plain.display().to_string());
    let r = check_agent(&w.config(), CliType::ClaudeCode, &ctx).await;
    assert!(r.disables_cli(), "{}", explain(&r));
}
