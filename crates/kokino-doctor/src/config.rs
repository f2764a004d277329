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
    /// The most any one check may take (5 000 ms): file reads under `HOME` and the floor of
    /// the probes that start the CLI (see [`DoctorConfig::probe_timeout`]).
    pub check_timeout: Duration,
    /// An explicit cap, per CLI type, for the probes that start the CLI (`--version`, `claude
    /// auth status`, `codex login status`). Empty by default: then each CLI gets the larger of
    /// `check_timeout` and [`default_probe_timeout`].
    pub probe_timeouts: BTreeMap<CliType, Duration>,
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
            probe_timeouts: BTreeMap::new(),
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
        if let Some((cli, _)) = self.probe_timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(DoctorError::InvalidConfig {
                field: "probe_timeouts",
                reason: format!("the probe timeout of {cli} must be greater than 0"),
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

    /// How long a probe that starts `cli` may take: the explicit [`DoctorConfig::probe_timeouts`]
    /// entry, else the larger of `check_timeout` and [`default_probe_timeout`]. Raising
    /// `check_timeout` therefore raises every probe, and the broker's default 5 000 ms no longer
    /// cuts off a CLI that is merely slow to start on a loaded host.
    pub fn probe_timeout(&self, cli: CliType) -> Duration {
        self.probe_timeouts
            .get(&cli)
            .copied()
            .unwrap_or_else(|| self.check_timeout.max(default_probe_timeout(cli)))
    }

    /// Sets one cap for every check and every probe of every CLI type, as `kokino-doctor
    /// --timeout-ms` does: an operator who names a timeout means it, also below the defaults.
    pub fn set_all_timeouts(&mut self, timeout: Duration) {
        self.check_timeout = timeout;
        self.probe_timeouts = CliType::ALL.iter().map(|c| (*c, timeout)).collect();
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

/// The default cap of the probes that start `cli`, from the real CLIs measured on a 2-core host
/// (docs/reference/real-clis.md, docs/ops/ENVIRONMENT-TROUBLESHOOTING.md). Each is several times
/// the slowest start seen under load, because a timeout here is only ever a soft verdict but
/// still puts a false alarm in front of the operator:
///
/// | CLI | `--version` idle / loaded | status command loaded | default |
/// |---|---|---|---|
/// | claude | 0.09–0.36 s / 2.0 s | `auth status` 4.1 s | 15 s |
/// | codex | 0.09–0.17 s / 1.5 s | `login status` 1.1 s | 10 s |
/// | gemini | 1.3 s / 19 s | none | 30 s |
/// | droid | 0.17 s / 1.4 s | none | 10 s |
pub fn default_probe_timeout(cli: CliType) -> Duration {
    Duration::from_secs(match cli {
        CliType::ClaudeCode => 15,
        CliType::Codex => 10,
        CliType::Gemini => 30,
        CliType::FactoryDroid => 10,
    })
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
        // The probes that start a CLI get at least the per-CLI default, and more when the
        // general timeout is larger.
        assert_eq!(c.probe_timeout(CliType::Gemini), Duration::from_secs(30));
        assert_eq!(
            c.probe_timeout(CliType::ClaudeCode),
            Duration::from_secs(15)
        );
        assert_eq!(c.probe_timeout(CliType::Codex), Duration::from_secs(10));
        assert_eq!(
            c.probe_timeout(CliType::FactoryDroid),
            Duration::from_secs(10)
        );
        let mut slow = c.clone();
        slow.check_timeout = Duration::from_secs(60);
        assert_eq!(slow.probe_timeout(CliType::Gemini), Duration::from_secs(60));
        let mut explicit = c.clone();
        explicit.set_all_timeouts(Duration::from_millis(300));
        assert_eq!(
            explicit.probe_timeout(CliType::Gemini),
            Duration::from_millis(300)
        );
        assert_eq!(explicit.check_timeout, Duration::from_millis(300));
        explicit
            .probe_timeouts
            .insert(CliType::Codex, Duration::ZERO);
        assert!(explicit.validate().is_err());
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
