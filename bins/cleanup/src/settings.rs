//! Flags, the broker's config file and the environment, resolved into one [`Settings`].
//!
//! The precedence is the broker's: flags, then `KOKINO_*` variables (clap reads both), then the
//! config file, then defaults. Reading the same file and variables as the broker is what lets an
//! operator run `kokino-cleanup --config /etc/kokino.toml` and be sure it works on the broker's
//! own database and logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kokino_core::AgentId;
use kokino_logs::AgentLogs;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "kokino-cleanup",
    version,
    about = "Ends stale agent sessions (keeping their conversations), and on request rotates and \
             prunes agent logs and deletes old telemetry events. Works on the broker's store \
             directly, or through a running broker with --url.",
    after_help = "Exit codes: 0 done (or nothing to do), 1 something failed or the operator \
                  declined, 2 could not run (bad flags or config, store or broker unreachable, \
                  no terminal to confirm on and no --yes)."
)]
pub struct Args {
    /// Only say what would be done; change nothing. Needs no --yes.
    #[arg(long)]
    pub dry_run: bool,
    /// End sessions idle for at least this long: a number and a unit, s, m, h or d (30m, 24h, 7d).
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = parse_max_age)]
    pub max_age: Duration,
    /// Only this agent's session. Logs and events are not per agent and are unaffected.
    #[arg(long, value_name = "ID", value_parser = parse_agent)]
    pub agent: Option<AgentId>,
    /// Do it without asking. Without it, the plan is shown and confirmed on the terminal.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Also rotate every agent log now and delete rotated logs older than the retention.
    #[arg(long)]
    pub logs: bool,
    /// Also delete telemetry events older than this many days (at least 1).
    #[arg(long, value_name = "DAYS", value_parser = parse_days)]
    pub metrics_days: Option<u32>,
    /// The broker's TOML config file; data_dir, database_url, token_file and [maintenance]
    /// log_max_bytes and log_retention_days are used, other keys are ignored.
    #[arg(long, value_name = "FILE", env = "KOKINO_CONFIG")]
    pub config: Option<PathBuf>,
    /// The broker's data directory (database and logs/); default ./data.
    #[arg(long, value_name = "DIR", env = "KOKINO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL; default sqlite://<data-dir>/kokino.db.
    #[arg(long, value_name = "URL", env = "KOKINO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Work through the broker at this URL (e.g. http://127.0.0.1:5050) instead of its store.
    /// With --logs, also give --data-dir: logs are files on the broker's machine.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the broker's bearer token (--url mode).
    #[arg(long, value_name = "FILE", env = "KOKINO_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Where sessions and events are cleaned.
#[derive(Debug, Clone)]
pub enum Target {
    /// The store itself, opened like the broker opens it.
    Store { database_url: String },
    /// A running broker, through its HTTP API.
    Broker { url: String, token: Option<String> },
}

/// Everything a run needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub dry_run: bool,
    pub yes: bool,
    pub max_age: Duration,
    pub agent: Option<AgentId>,
    pub metrics_days: Option<u32>,
    /// Set when `--logs` was given.
    pub logs: Option<LogSettings>,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub retention: Duration,
}

impl LogSettings {
    pub fn agent_logs(&self) -> AgentLogs {
        AgentLogs::new(&self.dir, self.max_bytes, self.retention)
    }
}

/// The part of the broker's config file this tool reads. Unknown keys are ignored on purpose:
/// the file belongs to the broker, and a key added there must not break the cleanup job.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    maintenance: FileMaintenance,
}

#[derive(Debug, Default, Deserialize)]
struct FileMaintenance {
    log_max_bytes: Option<u64>,
    log_retention_days: Option<u64>,
}

pub fn resolve(args: Args) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    // `--data-dir` (or KOKINO_DATA_DIR, or the config file's data_dir) said explicitly, as
    // opposed to the ./data default; `--logs` through `--url` needs to know the difference.
    let explicit_data_dir = args.data_dir.clone().or(file.data_dir.clone());
    let data_dir = explicit_data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./data"));

    let target = match &args.url {
        Some(url) => {
            let url = url.trim_end_matches('/').to_owned();
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("--url must start with http:// or https://, not {url:?}");
            }
            let token = match args.token_file.as_ref().or(file.token_file.as_ref()) {
                Some(path) => Some(read_token(path)?),
                None => None,
            };
            Target::Broker { url, token }
        }
        None => Target::Store {
            database_url: args
                .database_url
                .clone()
                .or(file.database_url.clone())
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("kokino.db").display())),
        },
    };

    let logs = if args.logs {
        if matches!(target, Target::Broker { .. }) && explicit_data_dir.is_none() {
            bail!(
                "--logs cannot work through --url: agent logs are files on the broker's machine, \
                 and the broker has no endpoint to rotate them. Run kokino-cleanup there with \
                 --data-dir (or --config) pointing at the broker's data directory"
            );
        }
        let m = &file.maintenance;
        let max_bytes = match m.log_max_bytes {
            Some(v) => positive("maintenance.log_max_bytes", v)?,
            None => AgentLogs::DEFAULT_MAX_BYTES,
        };
        let retention = match m.log_retention_days {
            Some(v) => Duration::from_secs(86_400 * positive("maintenance.log_retention_days", v)?),
            None => AgentLogs::DEFAULT_RETENTION,
        };
        Some(LogSettings {
            dir: data_dir.join("logs"),
            max_bytes,
            retention,
        })
    } else {
        None
    };

    Ok(Settings {
        target,
        dry_run: args.dry_run,
        yes: args.yes,
        max_age: args.max_age,
        agent: args.agent,
        metrics_days: args.metrics_days,
        logs,
    })
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn read_token(path: &Path) -> Result<String> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = raw.trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

fn positive(name: &str, v: u64) -> Result<u64> {
    if v == 0 {
        bail!("{name} in the config file must be greater than 0");
    }
    Ok(v)
}

/// `90s`, `30m`, `24h`, `7d`. A bare number is refused rather than guessed at: the predecessor
/// script took minutes for some flags and hours for others, and a wrong guess here ends sessions.
pub fn parse_max_age(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || {
        format!("{raw:?} is not a duration: write a number and a unit, s, m, h or d (30m, 24h, 7d)")
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    // chrono, which does the date arithmetic later, tops out near 292 billion years; a bound
    // far below that keeps every later conversion infallible.
    const MAX_SECS: u64 = 100 * 365 * 86_400;
    match n.checked_mul(secs_per) {
        Some(secs) if secs <= MAX_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{raw:?} is too long: at most 100 years")),
    }
}

fn parse_agent(raw: &str) -> Result<AgentId, String> {
    AgentId::parse(raw).map_err(|e| e.to_string())
}

fn parse_days(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(0) => Err("0 would delete every event, including today's; give at least 1".into()),
        Ok(days) if days <= 36_500 => Ok(days),
        _ => Err(format!("{raw:?} is not a number of days from 1 to 36500")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_takes_a_number_and_a_unit() {
        assert_eq!(parse_max_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_max_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_max_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_max_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_max_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "",
            "24",
            "h",
            "24x",
            "-1h",
            "1.5h",
            "24 h",
            "1h30m",
            "99999999999999999999d",
        ] {
            let err = parse_max_age(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn metrics_days_refuses_zero() {
        assert_eq!(parse_days("30"), Ok(30));
        assert!(parse_days("0").unwrap_err().contains("at least 1"));
        assert!(parse_days("-3").is_err());
        assert!(parse_days("lots").is_err());
    }
}
