//! The environment given to a CLI child (spec: `cli-adapters.md`, "Environment given to the CLI").
//!
//! This is a pure function of its inputs so that the executor and the doctor's `environment`
//! check compute exactly the same map, and so that it can be tested without touching the real
//! process environment.

use kokino_core::CliType;

use crate::EnvMap;

/// Variables that Claude Code sets in the processes it starts. A broker launched from a Claude
/// Code shell inherits `CLAUDECODE=1`, and a child that sees it believes it is nested inside
/// another Claude Code session (recent versions refuse to start, older ones change behaviour).
/// The official Agent SDK removes it from the child for that reason (guides/peer-systems.md §2,
/// "Claude Agent SDK"), and so do we, for every CLI type: a Codex or Droid agent may itself run
/// `claude` as a tool.
pub const NESTING_MARKER_VAR: &str = "CLAUDECODE";

/// Tells Claude Code which kind of client started it. The Agent SDK sets its own value
/// (`sdk-py`, `sdk-ts`); a plain `claude -p` run marks itself `sdk-cli`, which is exactly what the
/// broker does, so that is the value we set for Claude children. An agent's explicit setting wins.
pub const ENTRYPOINT_VAR: &str = "CLAUDE_CODE_ENTRYPOINT";

/// The value of [`ENTRYPOINT_VAR`] for Claude children started by the broker.
pub const ENTRYPOINT_VALUE: &str = "sdk-cli";

/// Variables the child always keeps from the broker's environment even if an operator lists them
/// as conflicting: without them a CLI cannot find its config (`HOME`), its user, or itself and
/// its tools (`PATH`). An agent may still set them explicitly.
pub const PROTECTED_VARS: &[&str] = &["HOME", "USER", "PATH"];

/// The default list of variables removed from a child's environment unless the agent sets them
/// explicitly.
///
/// For Claude Code, an inherited `ANTHROPIC_API_KEY` would silently switch the CLI from the
/// operator's subscription login to pay-per-use API billing (and to a different account), so it
/// is removed. The spec names no conflicting variable for the other CLIs.
pub fn default_conflicting_vars(cli: CliType) -> &'static [&'static str] {
    match cli {
        CliType::ClaudeCode => &["ANTHROPIC_API_KEY"],
        CliType::Codex | CliType::Gemini | CliType::FactoryDroid => &[],
    }
}

/// Builds the child environment.
///
/// Order: start from `base` (the broker's environment); drop the `conflicting` variables and the
/// nesting marker; apply `agent_env`, which therefore wins over everything, including a
/// conflicting variable the agent sets on purpose; finally, for Claude, set the entrypoint unless
/// the agent chose one.
pub fn child_env(
    cli: CliType,
    base: impl IntoIterator<Item = (String, String)>,
    agent_env: &EnvMap,
    conflicting: &[String],
) -> EnvMap {
    let mut env: EnvMap = base
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .filter(|(k, _)| k != NESTING_MARKER_VAR)
        .filter(|(k, _)| {
            PROTECTED_VARS.contains(&k.as_str()) || !conflicting.iter().any(|c| c == k)
        })
        .collect();
    for (k, v) in agent_env {
        env.insert(k.clone(), v.clone());
    }
    if cli == CliType::ClaudeCode && !agent_env.contains_key(ENTRYPOINT_VAR) {
        env.insert(ENTRYPOINT_VAR.to_owned(), ENTRYPOINT_VALUE.to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        [
            ("HOME", "/home/op"),
            ("USER", "op"),
            ("PATH", "/usr/bin:/bin"),
            ("ANTHROPIC_API_KEY", "sk-broker"),
            ("CLAUDECODE", "1"),
            ("CLAUDE_CODE_ENTRYPOINT", "cli"),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn defaults(cli: CliType) -> Vec<String> {
        default_conflicting_vars(cli)
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    #[test]
    fn claude_drops_the_api_key_and_the_nesting_marker_and_sets_the_entrypoint() {
        let env = child_env(
            CliType::ClaudeCode,
            base(),
            &EnvMap::new(),
            &defaults(CliType::ClaudeCode),
        );
        assert!(!env.contains_key("ANTHROPIC_API_KEY"));
        assert!(!env.contains_key("CLAUDECODE"));
        assert_eq!(env["CLAUDE_CODE_ENTRYPOINT"], "sdk-cli");
        assert_eq!(env["HOME"], "/home/op");
        assert_eq!(env["USER"], "op");
        assert_eq!(env["PATH"], "/usr/bin:/bin");
        assert_eq!(env["LANG"], "C.UTF-8");
    }

    #[test]
    fn an_explicit_agent_setting_wins_over_the_conflicting_list() {
        let mut agent = EnvMap::new();
        agent.insert("ANTHROPIC_API_KEY".into(), "sk-agent".into());
        agent.insert("CLAUDE_CODE_ENTRYPOINT".into(), "custom".into());
        agent.insert("HOME".into(), "/srv/agent".into());
        let env = child_env(
            CliType::ClaudeCode,
            base(),
            &agent,
            &defaults(CliType::ClaudeCode),
        );
        assert_eq!(env["ANTHROPIC_API_KEY"], "sk-agent");
        assert_eq!(env["CLAUDE_CODE_ENTRYPOINT"], "custom");
        assert_eq!(env["HOME"], "/srv/agent");
    }

    #[test]
    fn other_clis_keep_the_key_by_default_but_never_the_nesting_marker() {
        for cli in [CliType::Codex, CliType::Gemini, CliType::FactoryDroid] {
            assert!(default_conflicting_vars(cli).is_empty());
            let env = child_env(cli, base(), &EnvMap::new(), &defaults(cli));
            assert_eq!(env["ANTHROPIC_API_KEY"], "sk-broker");
            assert!(!env.contains_key("CLAUDECODE"));
            // The entrypoint only means something to Claude; it is passed through untouched.
            assert_eq!(env["CLAUDE_CODE_ENTRYPOINT"], "cli");
        }
    }

    #[test]
    fn operator_conflicting_list_applies_but_cannot_remove_protected_vars() {
        let conflicting = vec![
            "OPENAI_API_KEY".to_owned(),
            "PATH".to_owned(),
            "HOME".to_owned(),
        ];
        let mut b = base();
        b.push(("OPENAI_API_KEY".into(), "sk-openai".into()));
        let env = child_env(CliType::Codex, b, &EnvMap::new(), &conflicting);
        assert!(!env.contains_key("OPENAI_API_KEY"));
        assert_eq!(env["PATH"], "/usr/bin:/bin");
        assert_eq!(env["HOME"], "/home/op");
    }

    #[test]
    fn agent_env_adds_new_variables() {
        let mut agent = EnvMap::new();
        agent.insert("GEMINI_API_KEY".into(), "g".into());
        let env = child_env(CliType::Gemini, base(), &agent, &[]);
        assert_eq!(env["GEMINI_API_KEY"], "g");
    }
}
