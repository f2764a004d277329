//! Command lines for the four CLIs (spec: `cli-adapters.md`, "Headless invocation").
//!
//! Neither the prompt nor the system prompt is ever put in argv: every CLI reads the prompt from
//! stdin, which keeps prompts out of `ps` and lets them exceed the argv size limit; Claude reads
//! the system prompt from a file (`--append-system-prompt-file`), the others get it at the head of
//! their first prompt.

use kokino_core::CliType;

use crate::{InvocationRequest, SessionArg};

/// The arguments after the binary name for one headless run.
pub fn build_args(req: &InvocationRequest<'_>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &str| args.push(a.to_owned());
    match req.cli {
        CliType::ClaudeCode => {
            // `--verbose` is required with stream-json in print mode; without it the CLI exits 1.
            for a in ["-p", "--output-format", "stream-json", "--verbose"] {
                push(a);
            }
            match req.session {
                SessionArg::New { preassigned_id } => {
                    push("--session-id");
                    push(preassigned_id);
                }
                SessionArg::Resume { session_id } => {
                    push("--resume");
                    push(session_id);
                }
            }
            if let Some(m) = req.model {
                push("--model");
                push(m);
            }
            // The text itself would be readable by every local user in `/proc/*/cmdline`; the
            // file is private to the broker's user. Without a file, the system prompt is not
            // sent (the caller chose not to write one).
            if let (Some(_), Some(file)) = (req.system_prompt, req.system_prompt_file) {
                push("--append-system-prompt-file");
                push(file);
            }
            args.extend(req.extra_args.iter().cloned());
        }
        CliType::Codex => {
            // `--skip-git-repo-check` because agents often work outside a git repository, where
            // codex otherwise refuses to start. Codex has no system-prompt flag; the broker puts
            // the system prompt at the head of the first prompt (see `first_prompt_with_system`).
            for a in ["exec", "--json", "--skip-git-repo-check"] {
                push(a);
            }
            // The model and the extra arguments are options of `exec` itself, so they go before
            // the `resume` subcommand, and they apply to resumed runs as well (a provider chosen
            // with `-c model_provider=…` must be chosen again on every run).
            if let Some(m) = req.model {
                push("-m");
                push(m);
            }
            args.extend(req.extra_args.iter().cloned());
            if let SessionArg::Resume { session_id } = req.session {
                args.push("resume".to_owned());
                args.push(session_id.to_owned());
            }
            // `-` makes codex read the prompt from stdin; it must be the last argument so that it
            // is the prompt positional of `exec` or of `exec resume`.
            args.push("-".to_owned());
        }
        CliType::Gemini => {
            // No `-p`: a piped stdin is headless mode. `--skip-trust` because an untrusted folder
            // otherwise ends the run with exit 55. There is no system-prompt flag.
            for a in ["-o", "stream-json", "--skip-trust"] {
                push(a);
            }
            if let Some(m) = req.model {
                push("-m");
                push(m);
            }
            if let SessionArg::Resume { session_id } = req.session {
                push("--resume");
                push(session_id);
            }
            args.extend(req.extra_args.iter().cloned());
        }
        CliType::FactoryDroid => {
            // Droid's autonomy level (`--auto low|medium|high`) is an operator decision, so it only
            // comes through `extra_args`. There is no system-prompt flag used here. A session is
            // continued with `--fork <id>`, not `-s <id>`: `-s` fetches the session from Factory's
            // servers and fails silently without a Factory login (bring-your-own-key models),
            // while `--fork` works from the local session file and carries the whole history
            // into a new session, whose id the stream reports and the broker records.
            for a in ["exec", "-o", "stream-json"] {
                push(a);
            }
            if let Some(m) = req.model {
                push("-m");
                push(m);
            }
            if let SessionArg::Resume { session_id } = req.session {
                push("--fork");
                push(session_id);
            }
            args.extend(req.extra_args.iter().cloned());
        }
    }
    args
}

/// The prompt to send on the first turn of a session.
///
/// Claude reads the system prompt from a file (`--append-system-prompt-file`), so its prompt is
/// unchanged. Codex,
/// Gemini and Droid have no such flag in headless mode; the system prompt is put in front of the
/// first prompt instead, separated by a blank line, and the CLI's own session keeps it in context
/// for later turns. An empty or absent system prompt leaves the prompt unchanged.
pub fn first_prompt_with_system(cli: CliType, system_prompt: Option<&str>, prompt: &str) -> String {
    match (cli, system_prompt) {
        (CliType::ClaudeCode, _) | (_, None) => prompt.to_owned(),
        (_, Some(s)) if s.trim().is_empty() => prompt.to_owned(),
        (_, Some(s)) => format!("{s}\n\n{prompt}"),
    }
}

/// Whether the system prompt reaches this CLI through a file named in its arguments (`build_args`
/// with [`InvocationRequest::system_prompt_file`]) rather than through the first prompt
/// (`first_prompt_with_system`).
pub fn system_prompt_in_args(cli: CliType) -> bool {
    matches!(cli, CliType::ClaudeCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        cli: CliType,
        model: Option<&'a str>,
        system_prompt: Option<&'a str>,
        extra_args: &'a [String],
        session: SessionArg<'a>,
    ) -> Vec<String> {
        build_args(&InvocationRequest {
            cli,
            model,
            system_prompt,
            system_prompt_file: system_prompt.map(|_| "/data/prompts/a.system.md"),
            extra_args,
            session,
        })
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    const NEW: SessionArg<'static> = SessionArg::New {
        preassigned_id: "11111111-1111-4111-8111-111111111111",
    };
    const RESUME: SessionArg<'static> = SessionArg::Resume {
        session_id: "sess-42",
    };

    #[test]
    fn claude_new_and_resume() {
        let extra = v(&["--max-turns", "3"]);
        assert_eq!(
            req(
                CliType::ClaudeCode,
                Some("sonnet"),
                Some("Be brief."),
                &extra,
                NEW
            ),
            v(&[
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--session-id",
                "11111111-1111-4111-8111-111111111111",
                "--model",
                "sonnet",
                "--append-system-prompt-file",
                "/data/prompts/a.system.md",
                "--max-turns",
                "3",
            ])
        );
        assert_eq!(
            req(CliType::ClaudeCode, None, None, &[], RESUME),
            v(&[
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--resume",
                "sess-42"
            ])
        );
    }

    #[test]
    fn codex_new_and_resume_keep_stdin_marker_last() {
        let extra = v(&["-c", "model_provider=fake"]);
        assert_eq!(
            req(CliType::Codex, Some("gpt-5"), Some("ignored"), &extra, NEW),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-m",
                "gpt-5",
                "-c",
                "model_provider=fake",
                "-"
            ])
        );
        assert_eq!(
            req(CliType::Codex, Some("gpt-5"), None, &extra, RESUME),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-m",
                "gpt-5",
                "-c",
                "model_provider=fake",
                "resume",
                "sess-42",
                "-"
            ])
        );
        assert_eq!(
            req(CliType::Codex, None, None, &[], RESUME),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "resume",
                "sess-42",
                "-"
            ])
        );
    }

    #[test]
    fn gemini_new_and_resume() {
        let extra = v(&["--yolo"]);
        assert_eq!(
            req(
                CliType::Gemini,
                Some("gemini-2.5-flash"),
                Some("sys"),
                &extra,
                NEW
            ),
            v(&[
                "-o",
                "stream-json",
                "--skip-trust",
                "-m",
                "gemini-2.5-flash",
                "--yolo"
            ])
        );
        assert_eq!(
            req(CliType::Gemini, None, None, &[], RESUME),
            v(&["-o", "stream-json", "--skip-trust", "--resume", "sess-42"])
        );
    }

    #[test]
    fn droid_new_and_resume() {
        let extra = v(&["--auto", "low"]);
        assert_eq!(
            req(
                CliType::FactoryDroid,
                Some("custom:claude-fake"),
                Some("sys"),
                &extra,
                NEW
            ),
            v(&[
                "exec",
                "-o",
                "stream-json",
                "-m",
                "custom:claude-fake",
                "--auto",
                "low"
            ])
        );
        assert_eq!(
            req(CliType::FactoryDroid, None, None, &[], RESUME),
            v(&["exec", "-o", "stream-json", "--fork", "sess-42"])
        );
    }

    #[test]
    fn the_system_prompt_text_never_appears_in_argv() {
        for cli in CliType::ALL {
            for session in [NEW, RESUME] {
                for file in [None, Some("/p/a.md")] {
                    let args = build_args(&InvocationRequest {
                        cli: *cli,
                        model: None,
                        system_prompt: Some("SYSTEM-SECRET"),
                        system_prompt_file: file,
                        extra_args: &[],
                        session,
                    });
                    assert!(
                        args.iter().all(|a| !a.contains("SYSTEM-SECRET")),
                        "{cli:?}: {args:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_prompt_never_appears_in_argv() {
        // The prompt is not even an input of build_args; this guards the preassigned id and the
        // system prompt from being confused with a positional prompt by checking no CLI gets
        // `-p <text>` style arguments beyond Claude's bare `-p` flag.
        for cli in CliType::ALL {
            let args = req(*cli, None, None, &[], NEW);
            if let Some(i) = args.iter().position(|a| a == "-p") {
                assert_eq!(*cli, CliType::ClaudeCode);
                assert_eq!(args.get(i + 1).map(String::as_str), Some("--output-format"));
            }
        }
    }

    #[test]
    fn system_prompt_goes_into_the_first_prompt_for_non_claude_clis() {
        assert_eq!(
            first_prompt_with_system(CliType::ClaudeCode, Some("S"), "P"),
            "P"
        );
        for cli in [CliType::Codex, CliType::Gemini, CliType::FactoryDroid] {
            assert_eq!(first_prompt_with_system(cli, Some("S"), "P"), "S\n\nP");
            assert_eq!(first_prompt_with_system(cli, None, "P"), "P");
            assert_eq!(first_prompt_with_system(cli, Some("  "), "P"), "P");
            assert!(!system_prompt_in_args(cli));
        }
        assert!(system_prompt_in_args(CliType::ClaudeCode));
    }
}
