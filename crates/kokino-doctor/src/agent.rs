//! The agent a check is run for. A CLI's credentials often live in the agent rather than in the
//! broker: an API key in the agent's `env`, a custom provider chosen with `-c model_provider=…`
//! in its extra arguments, a bring-your-own-key model named in its `model`. Judging auth from the
//! broker's environment alone calls such agents "not logged in" although their runs work.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kokino_core::{AgentSpec, CliType};

/// What the executor adds to the broker's environment and argv for one agent. The default (all
/// empty) is an agent without settings of its own, which is what [`crate::check_cli`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentContext {
    /// Named in the report (`agentId`) so that a per-agent verdict says whose it is.
    pub agent_id: Option<String>,
    /// The agent's own variables (`env` at register), laid over the broker's environment after
    /// the conflicting variables are removed, exactly as the executor does. Values are never
    /// shown in a message.
    pub env: BTreeMap<String, String>,
    /// A `HOME` for the CLI (where it keeps its login, config and sessions). `None` keeps
    /// `env["HOME"]`, else the broker's `HOME`.
    pub home: Option<PathBuf>,
    /// The agent's model, which the executor passes as `--model`/`-m`. For Droid,
    /// `custom:<name>` selects a bring-your-own-key model that needs no Factory login.
    pub model: Option<String>,
    /// The agent's extra arguments, as the executor appends them (`-c model_provider=…`,
    /// `--profile …`, `-m custom:…`).
    pub extra_args: Vec<String>,
    /// The agent's own binary, instead of the broker's `[binaries]` entry for its CLI type.
    pub binary: Option<String>,
}

impl AgentContext {
    /// The context of a registered agent.
    pub fn from_spec(spec: &AgentSpec) -> AgentContext {
        AgentContext {
            agent_id: Some(spec.agent_id.to_string()),
            env: spec.env.clone(),
            home: None,
            model: spec.model.clone(),
            extra_args: spec.extra_args.clone(),
            binary: spec.binary.clone(),
        }
    }

    /// The arguments of a run that can change how the CLI authenticates: the model flag the
    /// executor adds, then the extra arguments (kokino-cli's `build_args` puts them in that
    /// order).
    pub(crate) fn auth_args(&self, cli: CliType) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(m) = &self.model {
            let flag = if cli == CliType::ClaudeCode {
                "--model"
            } else {
                "-m"
            };
            args.push(flag.to_owned());
            args.push(m.clone());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The values of an option in `args`, in every spelling a CLI parser accepts: `-c v`, `-cv`,
/// `--config v` and `--config=v`. Later values win in the CLIs, so callers read them in order.
pub(crate) fn option_values(args: &[String], short: Option<&str>, long: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == long || Some(a.as_str()) == short {
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            out.push(v.to_owned());
        } else if let Some(v) = short
            .and_then(|s| a.strip_prefix(s))
            .filter(|v| !v.is_empty() && !a.starts_with("--"))
        {
            out.push(v.trim_start_matches('=').to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn option_spellings() {
        let args = v(&[
            "-c",
            "model_provider=a",
            "--config=x=1",
            "-cy=2",
            "--config",
            "z=3",
            "--yolo",
        ]);
        assert_eq!(
            option_values(&args, Some("-c"), "--config"),
            ["model_provider=a", "x=1", "y=2", "z=3"]
        );
        assert!(option_values(&args, Some("-p"), "--profile").is_empty());
        assert_eq!(
            option_values(&v(&["-m", "custom:x"]), Some("-m"), "--model"),
            ["custom:x"]
        );
    }

    #[test]
    fn the_model_flag_comes_before_the_extra_args() {
        let ctx = AgentContext {
            model: Some("custom:fake".into()),
            extra_args: v(&["--auto", "low"]),
            ..AgentContext::default()
        };
        assert_eq!(
            ctx.auth_args(CliType::FactoryDroid),
            ["-m", "custom:fake", "--auto", "low"]
        );
        assert_eq!(ctx.auth_args(CliType::ClaudeCode)[0], "--model");
    }
}
