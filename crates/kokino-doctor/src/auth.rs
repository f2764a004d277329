//! The `auth` check: is the CLI logged in for the user and `HOME` it will run with?
//!
//! Claude Code and Codex answer that themselves, offline (`claude auth status` prints JSON with
//! `loggedIn`; `codex login status` exits 0 when logged in). Gemini and Droid have no such
//! command, so their credential variables and the files their logins write are inspected. The
//! predecessor looked for `~/.claude/.env`, which a real Claude login does not create, so its
//! check failed on working installs; asking the CLI avoids guessing.

use std::path::{Path, PathBuf};

use kokino_cli::EnvMap;
use kokino_core::CliType;
use kokino_exec::probe::{run_probe, ProbeOutput};
use serde_json::Value;

use crate::checks::{first_line, shorten};
use crate::report::{Check, CheckName};
use crate::{blocking, hints, DoctorConfig};

fn set(env: &EnvMap, var: &str) -> bool {
    env.get(var).is_some_and(|v| !v.trim().is_empty())
}

fn home(env: &EnvMap) -> Option<PathBuf> {
    env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn timed_out(cfg: &DoctorConfig, command: &str) -> Check {
    Check::fail(
        CheckName::Auth,
        format!(
            "`{command}` timed out after {} ms and was killed; run it by hand as the broker's \
             user to see why",
            cfg.check_timeout.as_millis()
        ),
    )
}

pub(crate) async fn auth(
    cfg: &DoctorConfig,
    cli: CliType,
    resolved: Option<&Path>,
    child: &EnvMap,
) -> Check {
    match cli {
        CliType::ClaudeCode | CliType::Codex => {
            let Some(bin) = resolved else {
                return Check::fail(
                    CheckName::Auth,
                    format!(
                        "not run: {} was not found (see the binary check)",
                        cfg.binary(cli)
                    ),
                );
            };
            if cli == CliType::ClaudeCode {
                claude(cfg, bin, child).await
            } else {
                codex(cfg, bin, child).await
            }
        }
        CliType::Gemini | CliType::FactoryDroid => {
            let env = child.clone();
            let result = blocking(cfg.check_timeout, move || {
                if cli == CliType::Gemini {
                    gemini(&env)
                } else {
                    droid(&env)
                }
            })
            .await;
            result.unwrap_or_else(|| {
                Check::fail(
                    CheckName::Auth,
                    format!(
                        "reading the credential files under HOME took more than {} ms (a hung \
                         network mount?)",
                        cfg.check_timeout.as_millis()
                    ),
                )
            })
        }
    }
}

fn home_text(child: &EnvMap) -> String {
    child
        .get("HOME")
        .map(|h| format!(" for HOME={h}"))
        .unwrap_or_default()
}

/// Finds the JSON object carrying `loggedIn` in `claude auth status` output (the whole output,
/// or any one line of it, in case a warning precedes it).
fn claude_status(out: &ProbeOutput) -> Option<Value> {
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s.trim())
            .ok()
            .filter(|v| v.get("loggedIn").is_some_and(Value::is_boolean))
    };
    parse(&out.stdout).or_else(|| out.stdout.lines().find_map(parse))
}

async fn claude(cfg: &DoctorConfig, bin: &Path, child: &EnvMap) -> Check {
    let out = run_probe(bin, &["auth", "status"], child, None, cfg.check_timeout).await;
    if let Some(e) = out.spawn_error {
        return Check::fail(
            CheckName::Auth,
            format!("cannot run `claude auth status`: {e}"),
        );
    }
    if out.timed_out {
        return timed_out(cfg, "claude auth status");
    }
    let login = hints::login(CliType::ClaudeCode);
    let who = home_text(child);
    match claude_status(&out) {
        Some(v) if v["loggedIn"] == Value::Bool(true) => {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let mut detail = Vec::new();
            if let Some(m) = field("authMethod") {
                detail.push(format!("authMethod {m}"));
            }
            if let Some(p) = field("apiProvider") {
                detail.push(format!("apiProvider {p}"));
            }
            if let Some(s) = field("subscriptionType") {
                detail.push(format!("subscription {s}"));
            }
            let check = Check::pass(
                CheckName::Auth,
                format!("claude is logged in{who} ({})", detail.join(", ")),
            );
            // With ANTHROPIC_API_KEY removed from the child, an API-key login can only come from
            // Claude Code's own settings (a stored key or an apiKeyHelper): worth knowing,
            // because those runs are billed per token instead of using the subscription.
            if field("authMethod").as_deref() == Some("api_key") {
                check.with_warnings(vec![
                    "claude authenticates with an API key, not a subscription login; runs are \
                     billed per token"
                        .into(),
                ])
            } else {
                check
            }
        }
        Some(_) => Check::fail(
            CheckName::Auth,
            format!(
                "claude is not logged in{who} (`claude auth status` says loggedIn: false). As \
                 the broker's user, {login}"
            ),
        ),
        None => {
            // Versions of Claude Code older than `auth status` print a usage error. The login
            // itself lives in ~/.claude/.credentials.json on Linux, which is the next best
            // evidence.
            let creds = home(child).map(|h| h.join(".claude/.credentials.json"));
            let said = first_line(&out.stdout, &out.stderr).unwrap_or_else(|| "no output".into());
            match creds {
                Some(c) if c.is_file() => Check::pass(
                    CheckName::Auth,
                    format!("found {} (a claude login)", c.display()),
                )
                .with_warnings(vec![format!(
                    "`claude auth status` gave no status (exit {:?}: {said}); update Claude Code \
                     for a reliable auth check",
                    out.exit_code
                )]),
                _ => Check::fail(
                    CheckName::Auth,
                    format!(
                        "cannot tell whether claude is logged in{who}: `claude auth status` \
                         exited with {:?} ({said}). As the broker's user, {login}",
                        out.exit_code
                    ),
                ),
            }
        }
    }
}

async fn codex(cfg: &DoctorConfig, bin: &Path, child: &EnvMap) -> Check {
    let out = run_probe(bin, &["login", "status"], child, None, cfg.check_timeout).await;
    if let Some(e) = out.spawn_error {
        return Check::fail(
            CheckName::Auth,
            format!("cannot run `codex login status`: {e}"),
        );
    }
    if out.timed_out {
        return timed_out(cfg, "codex login status");
    }
    // The real CLI prints its status on stderr; read both streams.
    let said = shorten(&out.combined().replace('\n', " "), 200);
    let said = if said.is_empty() {
        "no output".to_owned()
    } else {
        said
    };
    let who = home_text(child);
    if out.exit_code == Some(0) {
        return Check::pass(CheckName::Auth, format!("codex{who}: {said}"));
    }
    if set(child, "CODEX_API_KEY") {
        return Check::pass(
            CheckName::Auth,
            format!(
                "codex has no stored login{who} ({said}), but CODEX_API_KEY is set in its \
                 environment, which `codex exec` uses"
            ),
        );
    }
    Check::fail(
        CheckName::Auth,
        format!(
            "codex is not logged in{who} (`codex login status`: {said}). As the broker's user, {}",
            hints::login(CliType::Codex)
        ),
    )
}

/// A `.env` file that Gemini CLI loads (`~/.gemini/.env`, `~/.env`) and that sets `var`.
fn dotenv_sets(home: &Path, var: &str) -> Option<PathBuf> {
    [home.join(".gemini/.env"), home.join(".env")]
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(p).is_ok_and(|text| {
                text.lines().any(|l| {
                    let l = l.trim().trim_start_matches("export ").trim_start();
                    l.strip_prefix(var)
                        .and_then(|rest| rest.trim_start().strip_prefix('='))
                        .is_some_and(|value| !value.trim().trim_matches(['"', '\'']).is_empty())
                })
            })
        })
}

/// The auth method chosen in Gemini's settings: `security.auth.selectedType` (current
/// versions) or the top-level `selectedAuthType` (older ones). Gemini accepts comments in its
/// settings; a file that is not plain JSON is searched for the value as text.
fn gemini_selected_type(text: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v
            .pointer("/security/auth/selectedType")
            .or_else(|| v.get("selectedAuthType"))
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    ["\"selectedType\"", "\"selectedAuthType\""]
        .iter()
        .find_map(|key| {
            let rest = &text[text.find(key)? + key.len()..];
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_owned())
        })
}

fn gemini(child: &EnvMap) -> Check {
    // Headless Gemini takes its auth method from these variables or from settings.json, and
    // exits 41 without one ("Please set an Auth method…"), even when an OAuth login exists.
    for var in [
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_USE_GCA",
    ] {
        if set(child, var) {
            return Check::pass(
                CheckName::Auth,
                format!("{var} is set in gemini's environment"),
            );
        }
    }
    let login = hints::login(CliType::Gemini);
    let Some(home) = home(child) else {
        return Check::fail(
            CheckName::Auth,
            format!("HOME is not set, so gemini cannot find its login (see environment); {login}"),
        );
    };
    let settings = home.join(".gemini/settings.json");
    let oauth = home.join(".gemini/oauth_creds.json");
    let selected = std::fs::read_to_string(&settings)
        .ok()
        .and_then(|t| gemini_selected_type(&t));
    match selected.as_deref() {
        Some("oauth-personal") | Some("login-with-google") => {
            if oauth.is_file() {
                Check::pass(
                    CheckName::Auth,
                    format!(
                        "gemini logs in with Google ({} and {})",
                        settings.display(),
                        oauth.display()
                    ),
                )
            } else {
                Check::fail(
                    CheckName::Auth,
                    format!(
                        "{} selects login with Google, but {} is missing; {login}",
                        settings.display(),
                        oauth.display()
                    ),
                )
            }
        }
        Some("gemini-api-key") => match dotenv_sets(&home, "GEMINI_API_KEY") {
            Some(file) => Check::pass(
                CheckName::Auth,
                format!("gemini uses GEMINI_API_KEY from {}", file.display()),
            ),
            None => Check::fail(
                CheckName::Auth,
                format!(
                    "{} selects an API key, but GEMINI_API_KEY is neither in gemini's \
                     environment nor in ~/.gemini/.env; set it for the broker or the agent",
                    settings.display()
                ),
            ),
        },
        Some(other) => Check::pass(
            CheckName::Auth,
            format!("{} selects the auth method {other:?}", settings.display()),
        ),
        None => {
            if let Some(file) = ["GEMINI_API_KEY", "GOOGLE_API_KEY"]
                .into_iter()
                .find_map(|v| dotenv_sets(&home, v))
            {
                return Check::pass(
                    CheckName::Auth,
                    format!("gemini finds an API key in {}", file.display()),
                );
            }
            let found = if oauth.is_file() {
                format!(
                    "{} exists but no auth method is selected in {}, so headless gemini exits \
                     41; set security.auth.selectedType to \"oauth-personal\" there, or ",
                    oauth.display(),
                    settings.display()
                )
            } else {
                "gemini has no credentials: no GEMINI_API_KEY, GOOGLE_API_KEY, \
                 GOOGLE_GENAI_USE_VERTEXAI or GOOGLE_GENAI_USE_GCA, and no auth method in \
                 ~/.gemini/settings.json; "
                    .to_owned()
            };
            Check::fail(CheckName::Auth, format!("{found}{login}"))
        }
    }
}

/// Whether a Droid config file declares custom (bring-your-own-key) models, which work without
/// a Factory login.
fn droid_byok(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| {
            ["custom_models", "customModels"].iter().any(|k| {
                v.get(k)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            })
        })
}

fn droid(child: &EnvMap) -> Check {
    if set(child, "FACTORY_API_KEY") {
        return Check::pass(
            CheckName::Auth,
            "FACTORY_API_KEY is set in droid's environment",
        );
    }
    let login = hints::login(CliType::FactoryDroid);
    let Some(home) = home(child) else {
        return Check::fail(
            CheckName::Auth,
            format!("HOME is not set, so droid cannot find its login (see environment); {login}"),
        );
    };
    let dir = home.join(".factory");
    // `/login` stores the session in ~/.factory: `auth.json` in older releases, an encrypted
    // `auth.v2.*` file in newer ones. Any of them is evidence of a login.
    let login_file = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("auth"))
            })
    });
    if let Some(file) = login_file {
        return Check::pass(
            CheckName::Auth,
            format!("found {} (a droid login)", file.display()),
        );
    }
    if let Some(cfg) = [dir.join("config.json"), dir.join("settings.json")]
        .into_iter()
        .find(|p| droid_byok(p))
    {
        return Check::pass(
            CheckName::Auth,
            format!(
                "no Factory login, but {} declares custom models",
                cfg.display()
            ),
        )
        .with_warnings(vec![
            "droid has no Factory login: only the custom (bring-your-own-key) models will work"
                .into(),
        ]);
    }
    Check::fail(
        CheckName::Auth,
        format!(
            "droid is not logged in: no FACTORY_API_KEY and no login file in {}; as the \
             broker's user, {login}",
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_home(home: &Path) -> EnvMap {
        let mut e = EnvMap::new();
        e.insert("HOME".into(), home.display().to_string());
        e
    }

    #[test]
    fn gemini_settings_auth_types() {
        assert_eq!(
            gemini_selected_type(r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#)
                .as_deref(),
            Some("oauth-personal")
        );
        assert_eq!(
            gemini_selected_type(r#"{"selectedAuthType":"gemini-api-key"}"#).as_deref(),
            Some("gemini-api-key")
        );
        assert_eq!(
            gemini_selected_type("{ // comment\n \"selectedType\" : \"vertex-ai\" }").as_deref(),
            Some("vertex-ai")
        );
        assert_eq!(gemini_selected_type("{}"), None);
    }

    #[test]
    fn gemini_needs_a_selected_method_or_a_key() {
        let home = tempfile::tempdir().unwrap();
        let env = env_with_home(home.path());
        let c = gemini(&env);
        assert!(!c.passed && c.message.contains("gemini"), "{}", c.message);

        std::fs::create_dir_all(home.path().join(".gemini")).unwrap();
        std::fs::write(home.path().join(".gemini/oauth_creds.json"), "{}").unwrap();
        let c = gemini(&env);
        assert!(
            !c.passed && c.message.contains("selectedType"),
            "{}",
            c.message
        );

        std::fs::write(
            home.path().join(".gemini/settings.json"),
            r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#,
        )
        .unwrap();
        assert!(gemini(&env).passed);

        let mut keyed = env_with_home(Path::new("/nonexistent"));
        keyed.insert("GEMINI_API_KEY".into(), "secret-value-123".into());
        let c = gemini(&keyed);
        assert!(c.passed, "{}", c.message);
        assert!(!c.message.contains("secret-value-123"));
    }

    #[test]
    fn droid_accepts_a_key_a_login_file_or_byok_models() {
        let home = tempfile::tempdir().unwrap();
        let env = env_with_home(home.path());
        let c = droid(&env);
        assert!(
            !c.passed && c.message.contains("FACTORY_API_KEY"),
            "{}",
            c.message
        );

        let dir = home.path().join(".factory");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"custom_models":[{"model":"x"}]}"#,
        )
        .unwrap();
        let c = droid(&env);
        assert!(c.passed && c.warning.is_some());

        std::fs::write(dir.join("auth.v2.file"), "sealed").unwrap();
        let c = droid(&env);
        assert!(c.passed && c.warning.is_none());

        let mut keyed = env_with_home(Path::new("/nonexistent"));
        keyed.insert("FACTORY_API_KEY".into(), "fk".into());
        assert!(droid(&keyed).passed);
    }
}
