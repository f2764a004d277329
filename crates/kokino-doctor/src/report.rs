//! The doctor's answers, in the shapes of `GET /api/health/environment` (http-api.md,
//! "Environment and versions"). They deserialize as well as serialize, so that `kokino-doctor
//! --url` reads a broker's answer with the same types the broker writes it with.

use chrono::{DateTime, Utc};
use kokino_core::CliType;
use serde::{Deserialize, Serialize};

/// The five checks, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// One check's verdict. A check that passed with a `warning` still passes; the warning is also
/// listed in the report's `warnings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: CheckName,
    pub passed: bool,
    /// What was found, and on failure what the operator should do about it.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
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
            warning_list: Vec::new(),
        }
    }

    pub(crate) fn fail(name: CheckName, message: impl Into<String>) -> Check {
        Check {
            name,
            passed: false,
            message: message.into(),
            warning: None,
            warning_list: Vec::new(),
        }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl CliReport {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

        let all = EnvironmentReport::from_results(r.checked_at, vec![r]);
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(v["overall"], true);
        assert_eq!(v["results"][0]["cliType"], "claude-code");
    }
}
