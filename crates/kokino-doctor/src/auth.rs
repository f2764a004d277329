//! The `auth` check: will the CLI be able to authenticate when the broker runs it, with the
//! environment, `HOME` and arguments it will really get?
//!
//! A CLI authenticates in several ways, and its own status command knows only some of them:
//! `claude auth status` reports `loggedIn: false` when `ANTHROPIC_API_KEY` is not in *its*
//! environment (the broker strips it by default, an agent may carry its own), and `codex login
//! status` says "Not logged in" for a custom provider whose key is in `env_key`, although `codex
//! exec` works. So the doctor collects the credentials the CLI will see (variables, config files,
//! the provider or model chosen in the arguments) and asks the status command where there is
//! one; when the two disagree, or when nothing can be confirmed, the verdict is a warning, not a
//! failure (see the table in the crate documentation). Gemini and Droid have no status command;
//! their settings and credential files are read, following the CLI's own precedence.
//!
//! Every failure here is [`crate::Certainty::Soft`]. No secret value is ever put in a message;
//! base URLs are shown, because which endpoint a CLI talks to is what an operator needs to know.

use std::path::{Path, PathBuf};

use kokino_cli::EnvMap;
use kokino_core::CliType;
use kokino_exec::probe::{run_probe, ProbeOutput};
use serde_json::Value;

use crate::agent::option_values;
use crate::checks::{first_line, shorten};
use crate::report::{Check, CheckName};
use crate::{blocking, hints, DoctorConfig};

fn set(env: &EnvMap, var: &str) -> bool {
    env.get(var).is_some_and(|v| !v.trim().is_empty())
}

/// A boolean switch as the CLIs read them: set, and not `0`/`false`.
fn truthy(env: &EnvMap, var: &str) -> bool {
    env.get(var)
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn home(env: &EnvMap) -> Option<PathBuf> {
    env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// ` against VAR=<url>` when the CLI is pointed at another endpoint, for the messages.
fn endpoint(env: &EnvMap, var: &str) -> String {
    match env.get(var).filter(|v| !v.trim().is_empty()) {
        Some(url) => format!(" against {var}={}", shorten(url, 120)),
        None => String::new(),
    }
}

/// `A`, `A and B`, `A, B and C`.
fn list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn timed_out(command: &str, ms: u128) -> Check {
    Check::fail(
        CheckName::Auth,
        format!(
            "`{command}` timed out after {ms} ms and was killed; run it by hand as the broker's \
             user to see why"
        ),
    )
}

pub(crate) async fn auth(
    cfg: &DoctorConfig,
    cli: CliType,
    resolved: Option<&Path>,
    child: &EnvMap,
    args: &[String],
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
                codex(cfg, bin, child, args).await
            }
        }
        CliType::Gemini | CliType::FactoryDroid => {
            let env = child.clone();
            let args = args.to_vec();
            let result = blocking(cfg.check_timeout, move || {
                if cli == CliType::Gemini {
                    gemini(&env)
                } else {
                    droid(&env, &args)
                }
            })
            .await;
            result.unwrap_or_else(|| {
                Check::unsure(
                    CheckName::Auth,
                    "credentials not read",
                    format!(
                        "reading the credential files under HOME took more than {} ms (a hung \
                         network mount?), so the doctor cannot tell whether {cli} is logged in",
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

/// The credentials Claude Code takes from its environment: an API key or bearer token
/// (`ANTHROPIC_AUTH_TOKEN`, for gateways), a long-lived OAuth token from `claude setup-token`,
/// or a cloud provider switch (Bedrock, Vertex, Foundry use the cloud's own credentials).
fn claude_env_credentials(child: &EnvMap) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ]
    .into_iter()
    .filter(|v| set(child, v))
    .collect();
    found.extend(
        [
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
            "CLAUDE_CODE_USE_FOUNDRY",
        ]
        .into_iter()
        .filter(|v| truthy(child, v)),
    );
    found
}

async fn claude(cfg: &DoctorConfig, bin: &Path, child: &EnvMap) -> Check {
    let timeout = cfg.probe_timeout(CliType::ClaudeCode);
    let creds = claude_env_credentials(child);
    let via = endpoint(child, "ANTHROPIC_BASE_URL");
    let from_env = format!(
        "claude gets {}{via} from its environment, which `claude -p` uses",
        list(&creds)
    );
    let out = run_probe(bin, &["auth", "status"], child, None, timeout).await;
    if let Some(e) = out.spawn_error {
        return Check::fail(
            CheckName::Auth,
            format!("cannot run `claude auth status`: {e}"),
        );
    }
    if out.timed_out {
        if !creds.is_empty() {
            return Check::unsure(
                CheckName::Auth,
                from_env,
                format!(
                    "`claude auth status` timed out after {} ms, so the doctor could not \
                     confirm the login",
                    timeout.as_millis()
                ),
            );
        }
        return timed_out("claude auth status", timeout.as_millis());
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
            if let Some(s) = field("apiKeySource") {
                detail.push(format!("key from {s}"));
            }
            if let Some(s) = field("subscriptionType") {
                detail.push(format!("subscription {s}"));
            }
            let check = Check::pass(
                CheckName::Auth,
                format!("claude is logged in{who} ({}){via}", detail.join(", ")),
            );
            // An API key the agent was given on purpose is the operator's choice. One that comes
            // from Claude Code's own settings (a stored key or an apiKeyHelper) is worth
            // knowing, because those runs are billed per token instead of using the
            // subscription.
            if field("authMethod").as_deref() == Some("api_key") && creds.is_empty() {
                check.with_warnings(vec![
                    "claude authenticates with an API key, not a subscription login; runs are \
                     billed per token"
                        .into(),
                ])
            } else {
                check
            }
        }
        Some(_) if !creds.is_empty() => Check::unsure(
            CheckName::Auth,
            from_env,
            format!(
                "`claude auth status` says loggedIn: false{who}, but the CLI gets {}; the \
                 doctor cannot confirm them. If runs fail with an auth error, check that value",
                list(&creds)
            ),
        ),
        Some(_) => {
            // The broker's own key is removed for claude agents by default, which is exactly
            // when an operator who "has a key" sees this: say where the key went.
            let stripped = if set(&cfg.base_env, "ANTHROPIC_API_KEY") {
                " The broker's ANTHROPIC_API_KEY is removed for claude-code agents \
                 ([conflicting_env]); give the agent ANTHROPIC_API_KEY in its env to use a key."
            } else {
                ""
            };
            Check::fail(
                CheckName::Auth,
                format!(
                    "claude is not logged in{who} (`claude auth status` says loggedIn: false) \
                     and its environment carries no ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN or \
                     CLAUDE_CODE_OAUTH_TOKEN.{stripped} As the broker's user, {login}"
                ),
            )
        }
        None => {
            // Versions of Claude Code older than `auth status` print a usage error. The login
            // itself lives in ~/.claude/.credentials.json on Linux, which is the next best
            // evidence.
            let creds_file = home(child).map(|h| h.join(".claude/.credentials.json"));
            let said = first_line(&out.stdout, &out.stderr).unwrap_or_else(|| "no output".into());
            let no_status = format!(
                "`claude auth status` gave no status (exit {:?}: {said}); update Claude Code for \
                 a reliable auth check",
                out.exit_code
            );
            match creds_file {
                Some(c) if c.is_file() => Check::unsure(
                    CheckName::Auth,
                    format!("found {} (a claude login)", c.display()),
                    no_status,
                ),
                _ if !creds.is_empty() => Check::unsure(CheckName::Auth, from_env, no_status),
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

/// Codex's configuration directory: `CODEX_HOME`, else `~/.codex`.
fn codex_home(child: &EnvMap) -> Option<PathBuf> {
    match child.get("CODEX_HOME").filter(|v| !v.trim().is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => home(child).map(|h| h.join(".codex")),
    }
}

/// The `-c key=value` overrides in `args`. Codex parses each value as TOML and takes the raw
/// text as a string when that fails (`-c model_provider=fake` needs no quotes).
fn codex_overrides(args: &[String]) -> Vec<(String, toml::Value)> {
    option_values(args, Some("-c"), "--config")
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let value = toml::from_str::<toml::Table>(&format!("x = {v}"))
                .ok()
                .and_then(|mut t| t.remove("x"))
                .unwrap_or_else(|| toml::Value::String(v.trim().to_owned()));
            Some((k.trim().to_owned(), value))
        })
        .collect()
}

fn lookup<'a>(t: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let v = t.get(*first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        lookup(v.as_table()?, rest)
    }
}

fn lookup_str(t: Option<&toml::Table>, path: &[&str]) -> Option<String> {
    t.and_then(|t| lookup(t, path))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
}

/// The model provider a codex run will use.
#[derive(Debug)]
struct CodexProvider {
    id: String,
    /// Where the choice was made, for the messages.
    chosen_in: String,
    /// `[model_providers.<id>]` with the `-c model_providers.<id>.…` overrides applied; `None`
    /// when neither defines the provider.
    def: Option<toml::Table>,
    /// `--oss`: a local open-source provider (Ollama, LM Studio), no key at all.
    oss: bool,
}

/// Resolves the provider as codex does: a `-c model_provider=…` override, then the selected
/// profile (`--profile`/`-p`, else `profile` in the config), then the config's top-level
/// `model_provider`; `openai` when none names one.
fn codex_provider(
    config: Option<&toml::Table>,
    config_name: &str,
    args: &[String],
) -> CodexProvider {
    let overrides = codex_overrides(args);
    let over = |key: &str| {
        overrides
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
    };
    let profile = option_values(args, Some("-p"), "--profile")
        .pop()
        .or_else(|| over("profile"))
        .or_else(|| lookup_str(config, &["profile"]));
    let from_profile = profile.as_deref().and_then(|p| {
        lookup_str(config, &["profiles", p, "model_provider"])
            .map(|id| (id, format!("profile {p} of {config_name}")))
    });
    let (id, chosen_in) = if let Some(id) = over("model_provider") {
        (
            id,
            "`-c model_provider=…` in the agent's arguments".to_owned(),
        )
    } else if let Some(found) = from_profile {
        found
    } else if let Some(id) = lookup_str(config, &["model_provider"]) {
        (id, config_name.to_owned())
    } else {
        ("openai".to_owned(), "the default".to_owned())
    };
    let mut def = config
        .and_then(|c| lookup(c, &["model_providers", &id]))
        .and_then(toml::Value::as_table)
        .cloned();
    let whole = format!("model_providers.{id}");
    let prefix = format!("{whole}.");
    for (k, v) in &overrides {
        if *k == whole {
            if let Some(t) = v.as_table() {
                def = Some(t.clone());
            }
        } else if let Some(field) = k.strip_prefix(&prefix) {
            def.get_or_insert_with(toml::Table::new)
                .insert(field.to_owned(), v.clone());
        }
    }
    CodexProvider {
        id,
        chosen_in,
        def,
        oss: args.iter().any(|a| a == "--oss"),
    }
}

/// The config file, or why codex will not accept it. A missing file is no problem.
fn read_codex_config(path: &Path) -> Result<Option<toml::Table>, String> {
    match std::fs::read_to_string(path) {
        Err(_) => Ok(None),
        Ok(text) => toml::from_str::<toml::Table>(&text).map(Some).map_err(|e| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("").to_owned();
            format!(
                "{} is not valid TOML ({})",
                path.display(),
                shorten(&first, 160)
            )
        }),
    }
}

/// The verdict for a provider other than OpenAI's, or `None` when it uses the OpenAI login
/// after all (`requires_openai_auth`) and `codex login status` decides.
fn codex_custom(p: &CodexProvider, child: &EnvMap) -> Option<Check> {
    let id = &p.id;
    let chosen = &p.chosen_in;
    let Some(def) = &p.def else {
        if matches!(id.as_str(), "ollama" | "lmstudio" | "oss") {
            return Some(Check::pass(
                CheckName::Auth,
                format!(
                    "codex uses its built-in local provider {id} ({chosen}), which needs no login"
                ),
            ));
        }
        return Some(Check::unsure(
            CheckName::Auth,
            format!("codex uses model_provider {id} ({chosen})"),
            format!(
                "model_provider {id} is defined neither under [model_providers.{id}] in codex's \
                 config.toml nor by `-c model_providers.{id}.…`; unless it is one of codex's \
                 built-in providers, codex refuses to start"
            ),
        ));
    };
    if def
        .get("requires_openai_auth")
        .and_then(toml::Value::as_bool)
        == Some(true)
    {
        return None;
    }
    let at = def
        .get("base_url")
        .and_then(toml::Value::as_str)
        .map(|u| format!(" at {}", shorten(u, 120)))
        .unwrap_or_default();
    let check = match def.get("env_key").and_then(toml::Value::as_str) {
        Some(key) if set(child, key) => Check::pass(
            CheckName::Auth,
            format!(
                "codex uses the custom provider {id}{at} ({chosen}) with its key from {key}; \
                 `codex login status` knows nothing of custom providers (it says \"Not logged \
                 in\"), so it is not asked"
            ),
        ),
        Some(key) => Check::fail(
            CheckName::Auth,
            format!(
                "codex uses the custom provider {id}{at} ({chosen}), whose env_key {key} is not \
                 set in the CLI's environment, so `codex exec` stops before its first request. \
                 Set {key} in the agent's env (or the broker's)"
            ),
        ),
        None => Check::pass(
            CheckName::Auth,
            format!(
                "codex uses the custom provider {id}{at} ({chosen}), which declares no env_key \
                 (a local server, or a token in the provider's own settings)"
            ),
        ),
    };
    Some(check)
}

async fn codex(cfg: &DoctorConfig, bin: &Path, child: &EnvMap, args: &[String]) -> Check {
    let dir = codex_home(child);
    let path = dir.map(|d| d.join("config.toml"));
    let read = {
        let path = path.clone();
        blocking(cfg.check_timeout, move || match path {
            Some(p) => read_codex_config(&p),
            None => Ok(None),
        })
        .await
    };
    let config = match read {
        Some(Ok(config)) => config,
        Some(Err(problem)) => {
            return Check::fail(
                CheckName::Auth,
                format!("codex will refuse to start: {problem}"),
            )
        }
        None => None,
    };
    let config_name = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "config.toml".into());
    let provider = codex_provider(config.as_ref(), &config_name, args);
    if provider.oss {
        return Check::pass(
            CheckName::Auth,
            "codex runs with --oss (a local open-source provider), which needs no login",
        );
    }
    if provider.id != "openai" {
        if let Some(check) = codex_custom(&provider, child) {
            return check;
        }
    }

    let timeout = cfg.probe_timeout(CliType::Codex);
    let out = run_probe(bin, &["login", "status"], child, None, timeout).await;
    if let Some(e) = out.spawn_error {
        return Check::fail(
            CheckName::Auth,
            format!("cannot run `codex login status`: {e}"),
        );
    }
    // The real CLI prints its status on stderr; read both streams.
    let said = if out.timed_out {
        format!("timed out after {} ms", timeout.as_millis())
    } else {
        // Codex prefixes its answer with start-up warnings (helper binaries it could not
        // create under /tmp); they would push the answer out of the shortened line.
        let combined = out.combined();
        let answer: Vec<&str> = combined
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("WARNING:"))
            .collect();
        let text = if answer.is_empty() {
            combined.replace('\n', " ")
        } else {
            answer.join(" ")
        };
        let s = shorten(&text, 200);
        if s.is_empty() {
            "no output".to_owned()
        } else {
            s
        }
    };
    let who = home_text(child);
    let via = endpoint(child, "OPENAI_BASE_URL");
    if out.exit_code == Some(0) && !out.timed_out {
        return Check::pass(CheckName::Auth, format!("codex{who}: {said}{via}"));
    }
    if set(child, "CODEX_API_KEY") {
        return Check::pass(
            CheckName::Auth,
            format!(
                "codex has no stored login{who} ({said}), but CODEX_API_KEY is set in its \
                 environment, which `codex exec` uses{via}"
            ),
        );
    }
    if set(child, "OPENAI_API_KEY") {
        return Check::unsure(
            CheckName::Auth,
            format!("codex has no stored login{who} ({said}), but OPENAI_API_KEY is set{via}"),
            "`codex exec` reads CODEX_API_KEY; whether it also takes OPENAI_API_KEY without \
             `codex login --with-api-key` depends on its version. Set CODEX_API_KEY in the \
             agent's env to be sure",
        );
    }
    if out.timed_out {
        return timed_out("codex login status", timeout.as_millis());
    }
    Check::fail(
        CheckName::Auth,
        format!(
            "codex is not logged in{who} (`codex login status`: {said}), uses the default OpenAI \
             provider, and gets no CODEX_API_KEY or OPENAI_API_KEY. As the broker's user, {} \
             (or give the agent a custom provider with `-c model_provider=…`)",
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

/// The auth method Gemini derives from its environment when its settings select none, in its
/// own order (gemini-cli 0.61 `getAuthTypeFromEnv`; the switches must be exactly `true`).
fn gemini_env_auth_type(child: &EnvMap) -> Option<(&'static str, &'static str)> {
    let is_true = |var: &str| child.get(var).is_some_and(|v| v == "true");
    if is_true("GOOGLE_GENAI_USE_GCA") {
        Some(("oauth-personal", "GOOGLE_GENAI_USE_GCA=true"))
    } else if is_true("GOOGLE_GENAI_USE_VERTEXAI") {
        Some(("vertex-ai", "GOOGLE_GENAI_USE_VERTEXAI=true"))
    } else if set(child, "GOOGLE_GEMINI_BASE_URL") {
        Some(("gateway", "GOOGLE_GEMINI_BASE_URL"))
    } else if set(child, "GEMINI_API_KEY") {
        Some(("gemini-api-key", "GEMINI_API_KEY"))
    } else if is_true("CLOUD_SHELL") || is_true("GEMINI_CLI_USE_COMPUTE_ADC") {
        Some((
            "compute-default-credentials",
            "GEMINI_CLI_USE_COMPUTE_ADC=true",
        ))
    } else {
        None
    }
}

/// Gemini has no status command. Headless, it takes the auth method from its settings, else
/// from its variables, checks that the method has what it needs, and exits 41 otherwise. The
/// doctor follows the same steps; what it cannot see (a key Gemini stored itself, system or
/// workspace settings) makes every negative verdict a warning.
fn gemini(child: &EnvMap) -> Check {
    let login = hints::login(CliType::Gemini);
    let via = endpoint(child, "GOOGLE_GEMINI_BASE_URL");
    let home = home(child);
    let settings = home.as_ref().map(|h| h.join(".gemini/settings.json"));
    let selected = settings
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| gemini_selected_type(&t));
    let settings_name = settings
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.gemini/settings.json".into());
    let dotenv_key = |var: &str| home.as_deref().and_then(|h| dotenv_sets(h, var));
    let (method, source) = match (&selected, gemini_env_auth_type(child)) {
        (Some(t), _) => (t.clone(), settings_name.clone()),
        (None, Some((t, var))) => (t.to_owned(), var.to_owned()),
        (None, None) if dotenv_key("GEMINI_API_KEY").is_some() => {
            ("gemini-api-key".to_owned(), "a .env file".to_owned())
        }
        (None, None) => {
            let oauth = home.as_ref().map(|h| h.join(".gemini/oauth_creds.json"));
            let why = match oauth.filter(|o| o.is_file()) {
                Some(o) => format!(
                    "{} exists but no auth method is selected in {settings_name}, so headless \
                     gemini exits 41; set security.auth.selectedType to \"oauth-personal\" \
                     there, or {login}",
                    o.display()
                ),
                None => format!(
                    "gemini has no status command, and the doctor sees no credentials: no \
                     GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI or GOOGLE_GENAI_USE_GCA in its \
                     environment and no auth method (security.auth.selectedType) in \
                     {settings_name}; headless gemini then exits 41. {login}"
                ),
            };
            return Check::unsure(CheckName::Auth, "no gemini credentials in sight", why);
        }
    };
    let uses = format!("gemini uses the auth method {method:?} (from {source}){via}");
    match method.as_str() {
        "oauth-personal" | "login-with-google" => {
            let oauth = home.as_ref().map(|h| h.join(".gemini/oauth_creds.json"));
            match oauth {
                Some(o) if o.is_file() => Check::pass(
                    CheckName::Auth,
                    format!("{uses}, with the Google login in {}", o.display()),
                ),
                _ => Check::unsure(
                    CheckName::Auth,
                    uses,
                    format!(
                        "login with Google is selected, but ~/.gemini/oauth_creds.json is \
                         missing, and headless gemini cannot open a browser; {login}"
                    ),
                ),
            }
        }
        "compute-default-credentials" | "cloud-shell" => Check::pass(CheckName::Auth, uses),
        "gemini-api-key" => {
            if set(child, "GEMINI_API_KEY") {
                Check::pass(CheckName::Auth, format!("{uses}, with GEMINI_API_KEY"))
            } else if let Some(file) = dotenv_key("GEMINI_API_KEY") {
                Check::pass(
                    CheckName::Auth,
                    format!("{uses}, with GEMINI_API_KEY from {}", file.display()),
                )
            } else {
                Check::unsure(
                    CheckName::Auth,
                    uses,
                    "an API key is selected, but GEMINI_API_KEY is neither in gemini's \
                     environment nor in ~/.gemini/.env (gemini may have stored one itself); set \
                     it for the agent or the broker",
                )
            }
        }
        "vertex-ai" => {
            let project = set(child, "GOOGLE_CLOUD_PROJECT") && set(child, "GOOGLE_CLOUD_LOCATION");
            if project || set(child, "GOOGLE_API_KEY") {
                Check::pass(CheckName::Auth, uses)
            } else {
                Check::unsure(
                    CheckName::Auth,
                    uses,
                    "Vertex AI needs GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION, or \
                     GOOGLE_API_KEY (express mode), and gemini's environment has neither",
                )
            }
        }
        "gateway" => Check::unsure(
            CheckName::Auth,
            uses,
            "with GOOGLE_GEMINI_BASE_URL and no auth method selected, gemini picks \"gateway\", \
             which gemini-cli 0.61 rejects headless (\"Invalid auth method selected\"); set \
             security.auth.selectedType to \"gemini-api-key\" in ~/.gemini/settings.json and \
             keep GEMINI_API_KEY",
        ),
        _ => Check::pass(CheckName::Auth, uses),
    }
}

/// The custom (bring-your-own-key) models a Droid config file declares, which work without a
/// Factory login.
fn droid_custom_models(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| {
            ["custom_models", "customModels"]
                .iter()
                .filter_map(|k| v.get(k).and_then(Value::as_array))
                .flatten()
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `-m custom:<name>` names this custom model: by its model, its display name or id.
fn droid_model_matches(model: &Value, name: &str) -> bool {
    ["model", "model_display_name", "displayName", "id"]
        .iter()
        .any(|k| model.get(k).and_then(Value::as_str) == Some(name))
}

/// Droid has no status command: `FACTORY_API_KEY`, a login file, or a custom model chosen with
/// `-m custom:<name>` are the evidence; without any, the verdict is a warning.
fn droid(child: &EnvMap, args: &[String]) -> Check {
    if set(child, "FACTORY_API_KEY") {
        return Check::pass(
            CheckName::Auth,
            "FACTORY_API_KEY is set in droid's environment",
        );
    }
    let login = hints::login(CliType::FactoryDroid);
    let Some(home) = home(child) else {
        return Check::unsure(
            CheckName::Auth,
            "no droid credentials in sight",
            format!(
                "HOME is not set, so droid cannot find its login (see environment) and no \
                 FACTORY_API_KEY is set; {login}"
            ),
        );
    };
    let dir = home.join(".factory");
    let configs: Vec<(PathBuf, Vec<Value>)> = [dir.join("config.json"), dir.join("settings.json")]
        .into_iter()
        .map(|p| {
            let models = droid_custom_models(&p);
            (p, models)
        })
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let model = option_values(args, Some("-m"), "--model").pop();
    if let Some(name) = model.as_deref().and_then(|m| m.strip_prefix("custom:")) {
        let found = configs.iter().find_map(|(p, models)| {
            models
                .iter()
                .find(|m| droid_model_matches(m, name))
                .map(|m| (p, m))
        });
        return match found {
            Some((path, m)) => {
                let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
                let at = match field("base_url") {
                    "" => String::new(),
                    url => format!(" at {}", shorten(url, 120)),
                };
                let check = Check::pass(
                    CheckName::Auth,
                    format!(
                        "droid runs the custom model {name} ({} provider{at}) declared in {}, \
                         which needs no Factory login",
                        match field("provider") {
                            "" => "its",
                            p => p,
                        },
                        path.display()
                    ),
                );
                if field("api_key").trim().is_empty() {
                    check.with_warnings(vec![format!(
                        "the custom model {name} has no api_key in {}; its provider will \
                         probably refuse the requests",
                        path.display()
                    )])
                } else {
                    check
                }
            }
            None => Check::unsure(
                CheckName::Auth,
                format!("droid is asked for the custom model {name}"),
                format!(
                    "`-m custom:{name}` names no model in the custom_models of {}/config.json \
                     (by model, model_display_name or id); droid will not find it",
                    dir.display()
                ),
            ),
        };
    }
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
    if let Some((cfg, _)) = configs.first() {
        return Check::unsure(
            CheckName::Auth,
            format!(
                "no Factory login, but {} declares custom models",
                cfg.display()
            ),
            "droid has no Factory login: only the custom (bring-your-own-key) models will \
             work; give the agent the model `custom:<model>`",
        );
    }
    Check::unsure(
        CheckName::Auth,
        "no droid credentials in sight",
        format!(
            "droid has no status command, and the doctor sees no FACTORY_API_KEY, no login file \
             in {} and no custom models; as the broker's user, {login}",
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
        // Nothing in sight is a warning (gemini has no status command to ask), with the hint.
        let c = gemini(&env);
        let w = c.warning.clone().unwrap_or_default();
        assert!(
            c.passed && w.contains("gemini") && w.contains("GEMINI_API_KEY"),
            "{c:?}"
        );

        std::fs::create_dir_all(home.path().join(".gemini")).unwrap();
        std::fs::write(home.path().join(".gemini/oauth_creds.json"), "{}").unwrap();
        let c = gemini(&env);
        let w = c.warning.clone().unwrap_or_default();
        assert!(c.passed && w.contains("selectedType"), "{c:?}");

        std::fs::write(
            home.path().join(".gemini/settings.json"),
            r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#,
        )
        .unwrap();
        let c = gemini(&env);
        assert!(c.passed && c.warning.is_none(), "{c:?}");

        let mut keyed = env_with_home(Path::new("/nonexistent"));
        keyed.insert("GEMINI_API_KEY".into(), "secret-value-123".into());
        let c = gemini(&keyed);
        assert!(c.passed && c.warning.is_none(), "{c:?}");
        assert!(!c.message.contains("secret-value-123"));

        // The settings win over the variables, as in gemini: a key does not help a Google
        // login whose credentials are missing.
        let h2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(h2.path().join(".gemini")).unwrap();
        std::fs::write(
            h2.path().join(".gemini/settings.json"),
            r#"{"security":{"auth":{"selectedType":"oauth-personal"}}}"#,
        )
        .unwrap();
        let mut env2 = env_with_home(h2.path());
        env2.insert("GEMINI_API_KEY".into(), "k".into());
        let c = gemini(&env2);
        assert!(
            c.passed && c.warning.as_deref().unwrap().contains("oauth_creds"),
            "{c:?}"
        );

        // A base URL without a selected method makes gemini 0.61 pick "gateway", which it
        // rejects headless; with selectedType gemini-api-key it is the stand-in set-up.
        let h3 = tempfile::tempdir().unwrap();
        let mut env3 = env_with_home(h3.path());
        env3.insert("GEMINI_API_KEY".into(), "k".into());
        env3.insert("GOOGLE_GEMINI_BASE_URL".into(), "http://127.0.0.1:9".into());
        let c = gemini(&env3);
        assert!(
            c.passed && c.warning.as_deref().unwrap().contains("gateway"),
            "{c:?}"
        );
        std::fs::create_dir_all(h3.path().join(".gemini")).unwrap();
        std::fs::write(
            h3.path().join(".gemini/settings.json"),
            r#"{"security":{"auth":{"selectedType":"gemini-api-key"}}}"#,
        )
        .unwrap();
        let c = gemini(&env3);
        assert!(c.passed && c.warning.is_none(), "{c:?}");
        assert!(c.message.contains("http://127.0.0.1:9"), "{}", c.message);

        // Vertex needs a project and location, or an express-mode key.
        let mut vertex = env_with_home(Path::new("/nonexistent"));
        vertex.insert("GOOGLE_GENAI_USE_VERTEXAI".into(), "true".into());
        assert!(gemini(&vertex).warning.is_some());
        vertex.insert("GOOGLE_API_KEY".into(), "k".into());
        assert!(gemini(&vertex).warning.is_none());
    }

    #[test]
    fn droid_accepts_a_key_a_login_file_or_byok_models() {
        let home = tempfile::tempdir().unwrap();
        let env = env_with_home(home.path());
        let none: Vec<String> = Vec::new();
        let c = droid(&env, &none);
        assert!(
            c.passed && c.warning.as_deref().unwrap().contains("FACTORY_API_KEY"),
            "{c:?}"
        );

        let dir = home.path().join(".factory");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"custom_models":[{"model":"x","model_display_name":"X","api_key":"sk-byok",
                "base_url":"http://127.0.0.1:9","provider":"anthropic"}]}"#,
        )
        .unwrap();
        let c = droid(&env, &none);
        assert!(c.passed && c.warning.is_some());

        // Chosen with `-m custom:<model>`, a BYOK model needs no login at all.
        let chosen = vec!["-m".to_owned(), "custom:x".to_owned()];
        let c = droid(&env, &chosen);
        assert!(c.passed && c.warning.is_none(), "{c:?}");
        assert!(
            c.message
                .contains("anthropic provider at http://127.0.0.1:9"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("sk-byok"));
        let c = droid(&env, &["-m".to_owned(), "custom:X".to_owned()]);
        assert!(c.passed && c.warning.is_none(), "{c:?}");
        let c = droid(&env, &["-m".to_owned(), "custom:other".to_owned()]);
        assert!(c.passed && c.warning.as_deref().unwrap().contains("custom:other"));

        std::fs::write(dir.join("auth.v2.file"), "sealed").unwrap();
        let c = droid(&env, &none);
        assert!(c.passed && c.warning.is_none());

        let mut keyed = env_with_home(Path::new("/nonexistent"));
        keyed.insert("FACTORY_API_KEY".into(), "fk".into());
        assert!(droid(&keyed, &none).passed);
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn codex_provider_resolution_follows_codex() {
        let config: toml::Table = toml::from_str(
            "model_provider = \"fake\"\nprofile = \"p1\"\n\
             [model_providers.fake]\nbase_url = \"http://127.0.0.1:9/v1\"\nenv_key = \"FAKE_KEY\"\n\
             [profiles.p1]\nmodel_provider = \"azure\"\n\
             [profiles.p2]\nmodel_provider = \"fake\"\n",
        )
        .unwrap();
        // The selected profile wins over the top level; an argument wins over both.
        let p = codex_provider(Some(&config), "cfg", &[]);
        assert_eq!(p.id, "azure");
        assert!(p.chosen_in.contains("profile p1") && p.def.is_none());
        let p = codex_provider(Some(&config), "cfg", &args(&["-p", "p2"]));
        assert_eq!(p.id, "fake");
        assert_eq!(p.def.unwrap()["env_key"].as_str(), Some("FAKE_KEY"));
        let p = codex_provider(
            Some(&config),
            "cfg",
            &args(&[
                "-c",
                "model_provider=mine",
                "-c",
                "model_providers.mine.env_key=\"MINE_KEY\"",
                "--config=model_providers.mine.base_url=http://h/v1",
            ]),
        );
        assert_eq!(p.id, "mine");
        assert!(p.chosen_in.contains("-c model_provider"));
        let def = p.def.unwrap();
        assert_eq!(def["env_key"].as_str(), Some("MINE_KEY"));
        assert_eq!(def["base_url"].as_str(), Some("http://h/v1"));
        let p = codex_provider(None, "cfg", &[]);
        assert_eq!((p.id.as_str(), p.oss), ("openai", false));
        assert!(codex_provider(None, "cfg", &args(&["--oss"])).oss);

        // The verdicts for a custom provider: key set → pass, unset → soft failure, unknown
        // provider → warning.
        let mut env = EnvMap::new();
        let p = codex_provider(
            None,
            "cfg",
            &args(&[
                "-c",
                "model_provider=mine",
                "-c",
                "model_providers.mine.env_key=MINE_KEY",
            ]),
        );
        let c = codex_custom(&p, &env).unwrap();
        assert!(!c.passed && c.message.contains("MINE_KEY") && !c.disables_cli());
        env.insert("MINE_KEY".into(), "secret-mine".into());
        let c = codex_custom(&p, &env).unwrap();
        assert!(c.passed && c.warning.is_none() && !c.message.contains("secret-mine"));
        let p = codex_provider(None, "cfg", &args(&["-c", "model_provider=nowhere"]));
        let c = codex_custom(&p, &env).unwrap();
        assert!(c.passed && c.warning.is_some());
        let p = codex_provider(None, "cfg", &args(&["-c", "model_provider=ollama"]));
        assert!(codex_custom(&p, &env).unwrap().warning.is_none());
    }
}
