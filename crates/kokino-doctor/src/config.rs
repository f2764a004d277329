//! What the doctor checks against: the same binaries, conflicting variables and base
//! environment the broker uses to start CLIs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use kokino_core::CliType;

use crate::DoctorError;

/// Thresholds and timeouts of behavior.md ("Environment doctor"), overridable for tests and
/// unusual hosts.
#[derive(Debug, Clone)]
pub struct DoctorConfig {
    /// Binary per CLI type, as in the broker's `[binaries]` config; a type without an entry
    /// uses its default name (`claude`, `codex`, `gemini`, `droid`) looked up on `PATH`.
    pub binaries: BTreeMap<CliType, String>,
    /// Variables removed from a CLI's environment, as in the broker's `[conflicting_env]`; a
    /// type without an entry uses [`kokino_cli::default_conflicting_vars`].
    pub conflicting_vars: BTreeMap<CliType, Vec<String>>,
    /// The broker's data directory; the disk check measures its file system.
    pub data_dir: PathBuf,
    /// Used space (percent) at or above which the disk check warns.
    pub disk_warn_pct: f64,
    /// Used space (percent) at or above which the disk check fails.
    pub disk_fail_pct: f64,
    /// The most any one check may take, the dry run's `--version` included (5 000 ms).
    pub check_timeout: Duration,
    /// The broker's environment: the starting point of every child environment.
    pub base_env: BTreeMap<String, String>,
    /// The `PATH` used to find bare binary names. `None` means `base_env["PATH"]`, which is what
    /// the broker itself uses.
    pub path_var: Option<OsString>,
}

impl DoctorConfig {
    /// The defaults, with this process's environment as the broker's environment. That is right
    /// when the doctor runs in the broker or as the broker's user with the broker's settings.
    pub fn from_process_env(data_dir: impl Into<PathBuf>) -> DoctorConfig {
        DoctorConfig::with_env(data_dir, std::env::vars().collect())
    }

    /// The defaults, with an explicit base environment.
    pub fn with_env(data_dir: impl Into<PathBuf>, base_env: BTreeMap<String, String>) -> Self {
        DoctorConfig {
            binaries: BTreeMap::new(),
            conflicting_vars: BTreeMap::new(),
            data_dir: data_dir.into(),
            disk_warn_pct: 85.0,
            disk_fail_pct: 95.0,
            check_timeout: Duration::from_millis(5_000),
            base_env,
            path_var: None,
        }
    }

    /// Rejects settings under which the checks would be meaningless.
    pub fn validate(&self) -> Result<(), DoctorError> {
        let pct = |field, v: f64| {
            if !(0.0..=100.0).contains(&v) {
                return Err(DoctorError::InvalidConfig {
                    field,
                    reason: format!("{v} is not a percentage between 0 and 100"),
                });
            }
            Ok(())
        };
        pct("disk_warn_pct", self.disk_warn_pct)?;
        pct("disk_fail_pct", self.disk_fail_pct)?;
        if self.check_timeout.is_zero() {
            return Err(DoctorError::InvalidConfig {
                field: "check_timeout",
                reason: "must be greater than 0".into(),
            });
        }
        for (cli, binary) in &self.binaries {
            if binary.trim().is_empty() {
                return Err(DoctorError::InvalidConfig {
                    field: "binaries",
                    reason: format!("the binary for {cli} is empty"),
                });
            }
        }
        Ok(())
    }

    /// The binary name or path configured for `cli`.
    pub fn binary(&self, cli: CliType) -> &str {
        self.binaries
            .get(&cli)
            .map(String::as_str)
            .unwrap_or_else(|| cli.default_binary())
    }

    /// The conflicting variables for `cli`: the configured list, else the default one.
    pub fn conflicting(&self, cli: CliType) -> Vec<String> {
        match self.conflicting_vars.get(&cli) {
            Some(list) => list.clone(),
            None => kokino_cli::default_conflicting_vars(cli)
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }

    /// The `PATH` bare binary names are looked up on.
    pub fn lookup_path(&self) -> Option<OsString> {
        self.path_var
            .clone()
            .or_else(|| self.base_env.get("PATH").map(OsString::from))
    }
}

/// Parses `claude-code`, `codex`, `gemini`, `factory-droid` or `all` (also accepted: the binary
/// names `claude` and `droid`, which operators type out of habit).
pub fn parse_cli_selection(s: &str) -> Result<Vec<CliType>, DoctorError> {
    match s.trim() {
        "all" => Ok(CliType::ALL.to_vec()),
        "claude" => Ok(vec![CliType::ClaudeCode]),
        "droid" => Ok(vec![CliType::FactoryDroid]),
        other => other
            .parse::<CliType>()
            .map(|t| vec![t])
            .map_err(|_| DoctorError::UnknownCliType(other.chars().take(64).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec_and_validate() {
        let c = DoctorConfig::with_env("/data", BTreeMap::new());
        assert_eq!(c.disk_warn_pct, 85.0);
        assert_eq!(c.disk_fail_pct, 95.0);
        assert_eq!(c.check_timeout, Duration::from_millis(5_000));
        assert_eq!(c.binary(CliType::FactoryDroid), "droid");
        assert_eq!(c.conflicting(CliType::ClaudeCode), ["ANTHROPIC_API_KEY"]);
        assert!(c.conflicting(CliType::Codex).is_empty());
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.disk_fail_pct = 120.0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cli_selection() {
        assert_eq!(parse_cli_selection("all").unwrap().len(), 4);
        assert_eq!(
            parse_cli_selection("claude").unwrap(),
            [CliType::ClaudeCode]
        );
        assert_eq!(
            parse_cli_selection("factory-droid").unwrap(),
            [CliType::FactoryDroid]
        );
        assert!(matches!(
            parse_cli_selection("--format"),
            Err(DoctorError::UnknownCliType(_))
        ));
    }
}
