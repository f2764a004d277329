//! The doctor's answers, in the shapes of `GET /api/health/environment` (http-api.md,
//! "Environment and versions"). They deserialize as well as serialize, so that `kokino-doctor
//! --url` reads a broker's answer with the same types the broker writes it with.

use chrono::{DateTime, Utc};
use kokino_core::CliType;
use serde::{Deserialize, Serialize};

/// The five checks, in the order they are reported.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckName {
    Binary,
    Environment,
    Auth,
    Disk,
    Dryrun,
}

impl CheckName {
    pub const ALL: [CheckName; 5] = [
        CheckName::Binary,
        CheckName::Environment,
        CheckName::Auth,
        CheckName::Disk,
        CheckName::Dryrun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Binary => "binary",
            CheckName::Environment => "environment",
            CheckName::Auth => "auth",
            CheckName::Disk => "disk",
            CheckName::Dryrun => "dryrun",
        }
    }
}

impl std::fmt::Display for CheckName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How sure the doctor is of a failing verdict, and so what the broker may do about it.
///
/// The doctor looks at a CLI from the outside; most of what it concludes is a judgement that the
/// CLI itself may contradict when it really runs (a status command that does not know about API
/// keys or custom providers, a `--version` that is slow on a loaded host). Only a few verdicts
/// are facts that no agent setting and no retry can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Certainty {
    /// A fact about the host: the CLI's binary is missing or not an executable file. Every run
    /// of an agent that uses that binary fails at spawn, so disabling the CLI type
    /// automatically (and routing its agents elsewhere) is justified.
    Hard,
    /// A judgement: auth, the environment, the disk, the dry run, and every timeout. It is
    /// worth an operator's attention but must never disable a CLI type automatically; the
    /// breakers judge a CLI by the runs that really fail.
    Soft,
}

/// One check's verdict. A check that passed with a `warning` still passes; the warning is also
/// listed in the report's `warnings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: CheckName,
    pub passed: bool,
    /// What was found, and on failure what the operator should do about it.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// For a failed check, how sure the verdict is (see [`Certainty`]); absent on a pass. A
    /// report from an older broker has none, which reads as [`Certainty::Soft`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certainty: Option<Certainty>,
    /// The separate warnings that `warning` joins, for the report's `warnings` list.
    #[serde(skip)]
    pub(crate) warning_list: Vec<String>,
}

impl Check {
    pub(crate) fn pass(name: CheckName, message: impl Into<String>) -> Check {
        Check {
            name,
            passed: true,
            message: message.into(),
            warning: None,
            certainty: None,
            warning_list: Vec::new(),
        }
    }

    /// A soft failure: a judgement that must not disable the CLI type (see [`Certainty`]).
    pub(crate) fn fail(name: CheckName, message: impl Into<String>) -> Check {
        Check {
            name,
            passed: false,
            message: message.into(),
            warning: None,
            certainty: Some(Certainty::Soft),
            warning_list: Vec::new(),
        }
    }

    /// A hard failure: a fact that justifies disabling the CLI type (see [`Certainty`]).
    pub(crate) fn fail_hard(name: CheckName, message: impl Into<String>) -> Check {
        Check {
            certainty: Some(Certainty::Hard),
            ..Check::fail(name, message)
        }
    }

    /// A pass whose verdict the doctor cannot be sure of: the check passes, and `warning`
    /// says what the doctor could not confirm and what to look at if runs fail.
    pub(crate) fn unsure(
        name: CheckName,
        message: impl Into<String>,
        warning: impl Into<String>,
    ) -> Check {
        Check::pass(name, message).with_warnings(vec![warning.into()])
    }

    /// Whether this verdict may disable the CLI type automatically: it failed and it is a
    /// [`Certainty::Hard`] fact (the binary is missing or not executable). Auth, environment,
    /// disk and dry-run failures, timeouts included, never do.
    pub fn disables_cli(&self) -> bool {
        !self.passed && self.certainty == Some(Certainty::Hard)
    }

    pub(crate) fn with_warnings(mut self, warnings: Vec<String>) -> Check {
        if !warnings.is_empty() {
            self.warning = Some(warnings.join("; "));
        }
        self.warning_list = warnings;
        self
    }
}

/// The doctor's verdict for one CLI type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CliReport {
    pub cli_type: CliType,
    /// All five checks passed (warnings allowed).
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Every warning of every check, one entry each.
    #[serde(default)]
    pub warnings: Vec<String>,
    pub checked_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The first line the CLI printed for `--version`, when the dry run got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The agent whose environment, extra arguments and binary the checks were run with
    /// ([`crate::AgentContext`]); absent for the broker's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

impl CliReport {
    /// Whether this report justifies disabling the CLI type automatically: some check failed
    /// with a [`Certainty::Hard`] verdict. A report that failed only on soft verdicts (auth, dry
    /// run, timeouts, environment, disk) returns `false`, however many checks failed.
    pub fn disables_cli(&self) -> bool {
        self.checks.iter().any(Check::disables_cli)
    }

    /// The first check whose failure justifies disabling the CLI type, for the reason shown in
    /// the fallback status.
    pub fn disabling_check(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.disables_cli())
    }

    pub fn check(&self, name: CheckName) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn failed_checks(&self) -> Vec<CheckName> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    /// The telemetry events this report stands for (behavior.md, "Environment doctor"):
    /// `ENV_CHECK_PASSED` or `ENV_CHECK_FAILED`, plus `ENV_DEGRADED` when it passed with
    /// warnings. The broker records them; the doctor only names them.
    pub fn event_types(&self) -> Vec<&'static str> {
        if !self.passed {
            vec!["ENV_CHECK_FAILED"]
        } else if self.warnings.is_empty() {
            vec!["ENV_CHECK_PASSED"]
        } else {
            vec!["ENV_CHECK_PASSED", "ENV_DEGRADED"]
        }
    }
}

/// The doctor's verdict for several CLI types (`GET /api/health/environment` without `cli`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentReport {
    /// Every CLI type passed.
    pub overall: bool,
    pub checked_at: DateTime<Utc>,
    pub results: Vec<CliReport>,
}

impl EnvironmentReport {
    pub fn from_results(checked_at: DateTime<Utc>, results: Vec<CliReport>) -> EnvironmentReport {
        EnvironmentReport {
            overall: results.iter().all(|r| r.passed),
            checked_at,
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_the_http_api_shape() {
        let r = CliReport {
            cli_type: CliType::ClaudeCode,
            passed: true,
            checks: vec![
                Check::pass(CheckName::Binary, "claude found at /usr/bin/claude"),
                Check::pass(CheckName::Environment, "ok").with_warnings(vec!["w".into()]),
            ],
            warnings: vec!["w".into()],
            checked_at: "2025-01-24T10:00:00Z".parse().unwrap(),
            duration_ms: 12,
            version: Some("2.1.197 (Claude Code)".into()),
            agent_id: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cliType"], "claude-code");
        assert_eq!(v["checks"][0]["name"], "binary");
        assert!(v["checks"][0].get("warning").is_none());
        assert_eq!(v["checks"][1]["warning"], "w");
        assert_eq!(v["checkedAt"], "2025-01-24T10:00:00Z");
        assert_eq!(v["durationMs"], 12);
        assert_eq!(v["version"], "2.1.197 (Claude Code)");
        let back: CliReport = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        assert_eq!(r.event_types(), ["ENV_CHECK_PASSED", "ENV_DEGRADED"]);
        assert!(v["checks"][0].get("certainty").is_none());
        assert!(v.get("agentId").is_none());
        assert!(!r.disables_cli());

        let all = EnvironmentReport::from_results(r.checked_at, vec![r]);
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(v["overall"], true);
        assert_eq!(v["results"][0]["cliType"], "claude-code");
    }

    #[test]
    fn only_a_hard_failure_disables_the_cli() {
        let soft = Check::fail(CheckName::Auth, "not logged in");
        let hard = Check::fail_hard(CheckName::Binary, "claude not found");
        assert!(!soft.disables_cli() && hard.disables_cli());
        assert!(!Check::pass(CheckName::Binary, "ok").disables_cli());
        let v = serde_json::to_value(&soft).unwrap();
        assert_eq!(v["certainty"], "soft");
        assert_eq!(serde_json::to_value(&hard).unwrap()["certainty"], "hard");
        // An older broker's answer has no certainty: it never reads as a hard failure.
        let old: Check = serde_json::from_value(
            serde_json::json!({"name":"binary","passed":false,"message":"x"}),
        )
        .unwrap();
        assert!(!old.disables_cli());

        let mut r = CliReport {
            cli_type: CliType::Gemini,
            passed: false,
            checks: vec![soft.clone(), Check::fail(CheckName::Dryrun, "timed out")],
            warnings: vec![],
            checked_at: "2025-01-24T10:00:00Z".parse().unwrap(),
            duration_ms: 1,
            version: None,
            agent_id: Some("g1".into()),
        };
        assert!(!r.disables_cli() && r.disabling_check().is_none());
        assert_eq!(serde_json::to_value(&r).unwrap()["agentId"], "g1");
        r.checks.insert(0, hard);
        assert!(r.disables_cli());
        assert_eq!(r.disabling_check().unwrap().name, CheckName::Binary);
    }
}
