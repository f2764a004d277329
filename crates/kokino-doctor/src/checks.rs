//! The `binary`, `environment` and `dryrun` checks: can the broker find the CLI, will the CLI
//! get a sane environment, and does it start at all.

use std::path::{Path, PathBuf};

use kokino_cli::{EnvMap, ENTRYPOINT_VAR, NESTING_MARKER_VAR, PROTECTED_VARS};
use kokino_core::CliType;
use kokino_exec::probe::run_probe;

use crate::report::{Check, CheckName};
use crate::{blocking, hints, AgentContext, DoctorConfig};

/// Long values (a PATH of a hundred entries) are shortened in messages so that one check stays
/// one readable line.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// The first line worth showing from a command's output: the first non-empty line of stdout
/// that has a digit in it (a version), else the first non-empty line of stdout, else of stderr.
pub(crate) fn first_line(stdout: &str, stderr: &str) -> Option<String> {
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| shorten(l, 200))
            .collect()
    };
    let out = lines(stdout);
    out.iter()
        .find(|l| l.chars().any(|c| c.is_ascii_digit()))
        .or(out.first())
        .cloned()
        .or_else(|| lines(stderr).into_iter().next())
}

/// `binary`: the executor's own lookup ([`kokino_exec::resolve_binary`]) of `name` (the
/// agent's binary, else the configured one) on the broker's PATH, or the configured path. Its
/// failure is the one hard fact of the doctor: without an executable file nothing can run.
pub(crate) fn binary(cfg: &DoctorConfig, cli: CliType, name: &str) -> (Check, Option<PathBuf>) {
    let where_configured = if name == cfg.binary(cli) {
        format!("configured in [binaries] for {cli}")
    } else {
        "the agent's `binary`".to_owned()
    };
    let path_var = cfg.lookup_path();
    match kokino_exec::resolve_binary(name, path_var.as_deref()) {
        Ok(path) => {
            let mut message = format!("{name} found at {}", path.display());
            // npm installs a symlink to the package's entry point; showing the target tells the
            // operator which installation the broker will run when there are several.
            if let Ok(target) = std::fs::canonicalize(&path) {
                if target != path {
                    message.push_str(&format!(" (→ {})", target.display()));
                }
            }
            (Check::pass(CheckName::Binary, message), Some(path))
        }
        Err(_) if name.contains('/') => (
            Check::fail_hard(
                CheckName::Binary,
                format!(
                    "{name} ({where_configured}) does not exist or is not an executable file. \
                     Fix the path, or install the CLI with `{}`",
                    hints::install(cli)
                ),
            ),
            None,
        ),
        Err(_) => {
            let path_text = path_var
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let where_ = if path_text.is_empty() {
                "the broker has no PATH".to_owned()
            } else {
                format!("PATH={}", shorten(&path_text, 300))
            };
            (
                Check::fail_hard(
                    CheckName::Binary,
                    format!(
                        "{name} not found on the broker's PATH ({where_}). Install it with `{}`, \
                         add its directory to the broker's PATH, or set {cli} = \"/full/path/to/\
                         {name}\" under [binaries] in the broker config",
                        hints::install(cli)
                    ),
                ),
                None,
            )
        }
    }
}

fn on_path(path: &str, dir: &Path) -> bool {
    std::env::split_paths(path).any(|p| p == dir)
}

/// Reads a script's `#!` line and says which program it needs: for `#!/usr/bin/env node` that
/// is `node` looked up on PATH, otherwise the interpreter's own path. `None` for a native
/// binary.
fn interpreter(binary: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(binary).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    if !head.starts_with(b"#!") {
        return None;
    }
    let line = head[2..].split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interp = words.next()?;
    if interp.ends_with("/env") {
        // `env -S node --flags` and `env VAR=x node` both name the program after the options
        // and assignments.
        words
            .find(|w| !w.starts_with('-') && !w.contains('='))
            .map(str::to_owned)
    } else {
        Some(interp.to_owned())
    }
}

/// `environment`: the exact child environment the executor builds
/// ([`kokino_cli::child_env`]) for `agent`, inspected for what a CLI needs.
pub(crate) async fn environment(
    cfg: &DoctorConfig,
    cli: CliType,
    name: &str,
    resolved: Option<&Path>,
    child: &EnvMap,
    agent: &AgentContext,
) -> Check {
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    match child.get("HOME").map(String::as_str) {
        None | Some("") => problems.push(
            "HOME is not set in the CLI's environment; every CLI keeps its login and sessions \
             under it. Give the broker a HOME (systemd: Environment=HOME=/home/<user>)"
                .into(),
        ),
        Some(home) => {
            let home_path = PathBuf::from(home);
            let probe = home_path.clone();
            let state = blocking(cfg.check_timeout, move || {
                (
                    probe.is_dir(),
                    nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_ok(),
                )
            })
            .await;
            match state {
                _ if !home_path.is_absolute() => {
                    problems.push(format!("HOME={home} is not an absolute path"))
                }
                None => problems.push(format!(
                    "HOME={home} did not answer within {} ms (a hung network mount?)",
                    cfg.check_timeout.as_millis()
                )),
                Some((false, _)) => problems.push(format!(
                    "HOME={home} is not a directory; create it or give the broker the right HOME"
                )),
                Some((true, false)) => warnings.push(format!(
                    "HOME={home} is not writable by the broker's user; CLIs write their sessions \
                     and refreshed logins there"
                )),
                Some((true, true)) => notes.push(format!("HOME={home}")),
            }
        }
    }

    match child.get("PATH").map(String::as_str) {
        None | Some("") => problems.push(
            "PATH is empty in the CLI's environment; the CLI could not start its interpreter \
             (node) or its tools. Give the broker a PATH"
                .into(),
        ),
        Some(path) => {
            notes.push(format!(
                "PATH has {} entries",
                std::env::split_paths(path).count()
            ));
            if let Some(bin) = resolved {
                let configured_path = name.contains('/');
                if let Some(dir) = bin.parent() {
                    if !configured_path && !on_path(path, dir) {
                        warnings.push(format!(
                            "{} is not on the PATH given to the CLI; the broker starts the CLI by \
                             its full path, but anything the CLI runs by name from there is not \
                             found. Add {} to the broker's PATH",
                            dir.display(),
                            dir.display()
                        ));
                    }
                }
                let bin_owned = bin.to_path_buf();
                let needs = blocking(cfg.check_timeout, move || interpreter(&bin_owned))
                    .await
                    .flatten();
                if let Some(program) = needs {
                    if kokino_exec::resolve_binary(&program, Some(path.as_ref())).is_err() {
                        problems.push(format!(
                            "{} is a script run by `{program}` (its #! line), and `{program}` is \
                             not on the PATH given to the CLI; add the directory of `{program}` \
                             to the broker's PATH (PATH={})",
                            bin.display(),
                            shorten(path, 200)
                        ));
                    }
                }
            }
        }
    }

    for var in cfg.conflicting(cli) {
        if !cfg.base_env.contains_key(&var) {
            continue;
        }
        if agent.env.contains_key(&var) {
            // The executor lays the agent's env over the stripped broker environment, so an
            // agent that carries the variable itself gets its own value: that is the intended
            // way to give one agent API-key billing.
            notes.push(format!("{var} comes from the agent's env"));
        } else if PROTECTED_VARS.contains(&var.as_str()) {
            warnings.push(format!(
                "{var} is listed as conflicting for {cli} but is always kept, because the CLI \
                 cannot run without it; remove it from [conflicting_env]"
            ));
        } else if child.contains_key(&var) {
            problems.push(format!(
                "{var} is listed as conflicting for {cli} but still reaches the CLI"
            ));
        } else if var == "ANTHROPIC_API_KEY" && cli == CliType::ClaudeCode {
            warnings.push(
                "ANTHROPIC_API_KEY is set in the broker environment and is removed for \
                 claude-code agents (so the subscription login is used); unset it, or set it in \
                 an agent's env if you want API-key billing for that agent"
                    .into(),
            );
        } else {
            warnings.push(format!(
                "{var} is set in the broker environment and is removed for {cli} agents; unset \
                 it, or set it in an agent's env if that agent should use it"
            ));
        }
    }

    if child.contains_key(NESTING_MARKER_VAR) {
        problems.push(format!(
            "{NESTING_MARKER_VAR} reaches the CLI, which then believes it runs inside another \
             Claude Code session"
        ));
    } else if cfg.base_env.contains_key(NESTING_MARKER_VAR) {
        notes.push(format!(
            "{NESTING_MARKER_VAR} (the broker was started from a Claude Code shell) is removed"
        ));
    }
    if cli == CliType::ClaudeCode && !child.contains_key(ENTRYPOINT_VAR) {
        problems.push(format!("{ENTRYPOINT_VAR} is not set for claude"));
    }

    if problems.is_empty() {
        Check::pass(
            CheckName::Environment,
            format!(
                "child environment ok: {} ({} variables)",
                notes.join(", "),
                child.len()
            ),
        )
        .with_warnings(warnings)
    } else {
        Check::fail(CheckName::Environment, problems.join("; ")).with_warnings(warnings)
    }
}

/// `dryrun`: `<binary> --version` in the child environment, within the CLI's probe timeout
/// ([`DoctorConfig::probe_timeout`]). The version line is returned for the report. Every
/// failure here is soft: a CLI that is slow or odd on `--version` may still run prompts.
pub(crate) async fn dryrun(
    cfg: &DoctorConfig,
    cli: CliType,
    name: &str,
    resolved: Option<&Path>,
    child: &EnvMap,
) -> (Check, Option<String>) {
    let Some(bin) = resolved else {
        return (
            Check::fail(
                CheckName::Dryrun,
                format!("not run: {name} was not found (see the binary check)"),
            ),
            None,
        );
    };
    let timeout = cfg.probe_timeout(cli);
    let ms = timeout.as_millis();
    let out = run_probe(bin, &["--version"], child, None, timeout).await;
    if let Some(e) = &out.spawn_error {
        return (
            Check::fail(
                CheckName::Dryrun,
                format!("{e}. If it is a script, is its interpreter (node) on the broker's PATH?"),
            ),
            None,
        );
    }
    if out.timed_out {
        return (
            Check::fail(
                CheckName::Dryrun,
                format!(
                    "`{name} --version` timed out after {ms} ms and was killed; the CLI hangs \
                     before doing any work, or the host is very loaded (gemini took up to 19 s \
                     on a busy 2-core host). Run `{} --version` by hand as the broker's user to \
                     see where it stops, or raise doctor.check_timeout_ms",
                    bin.display()
                ),
            ),
            None,
        );
    }
    let line = first_line(&out.stdout, &out.stderr);
    if !out.success() {
        let how = match (out.exit_code, out.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            _ => "failed".to_owned(),
        };
        return (
            Check::fail(
                CheckName::Dryrun,
                format!(
                    "`{name} --version` {how}: {}. Reinstall with `{}`",
                    line.as_deref().unwrap_or("(no output)"),
                    hints::install(cli)
                ),
            ),
            None,
        );
    }
    match line {
        Some(version) => (
            Check::pass(
                CheckName::Dryrun,
                format!(
                    "`{name} --version` answered {version:?} in {} ms",
                    out.duration.as_millis()
                ),
            ),
            Some(version),
        ),
        None => (
            Check::fail(
                CheckName::Dryrun,
                format!(
                    "`{name} --version` exited 0 but printed nothing; is {} really the {cli} CLI?",
                    bin.display()
                ),
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn version_lines_prefer_stdout_lines_with_digits() {
        assert_eq!(
            first_line("\n2.1.197 (Claude Code)\n", "warn").as_deref(),
            Some("2.1.197 (Claude Code)")
        );
        assert_eq!(
            first_line("WARNING: x\ncodex-cli 0.169.0\n", "").as_deref(),
            Some("codex-cli 0.169.0")
        );
        assert_eq!(first_line("", "0.61.0\n").as_deref(), Some("0.61.0"));
        assert_eq!(first_line(" \n", ""), None);
    }

    #[test]
    fn interpreter_of_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        assert_eq!(
            interpreter(&w("a", "#!/usr/bin/env node\nx")).as_deref(),
            Some("node")
        );
        assert_eq!(
            interpreter(&w("b", "#!/usr/bin/env -S node --no-warnings\n")).as_deref(),
            Some("node")
        );
        assert_eq!(
            interpreter(&w("c", "#!/bin/sh\n")).as_deref(),
            Some("/bin/sh")
        );
        assert_eq!(interpreter(&w("d", "\x7fELF....")), None);
    }
}
