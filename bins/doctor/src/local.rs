//! Local mode: run the environment doctor on this host, with the broker's settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kokino_core::CliType;
use kokino_doctor::{DoctorConfig, EnvironmentReport};
use serde::Deserialize;

use crate::{output, Args, Format};

/// The keys of the broker's TOML config file that matter to the doctor. The broker rejects
/// unknown keys; the doctor ignores the ones it does not use, so that it keeps reading the
/// broker's file when the broker gains settings.
#[derive(Debug, Default, Deserialize)]
pub struct BrokerFile {
    pub data_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub binaries: BTreeMap<String, String>,
    #[serde(default)]
    pub conflicting_env: BTreeMap<String, Vec<String>>,
}

pub fn read_broker_file(path: &Path) -> Result<BrokerFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn cli_key(key: &str, section: &str) -> Result<CliType> {
    key.parse()
        .map_err(|e| anyhow::anyhow!("[{section}] in the config file: {e}"))
}

/// The doctor's settings: defaults, then the broker's config file, then flags.
pub fn config(args: &Args, file: &BrokerFile) -> Result<DoctorConfig> {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let mut cfg = DoctorConfig::from_process_env(data_dir);
    for (cli, binary) in &file.binaries {
        cfg.binaries
            .insert(cli_key(cli, "binaries")?, binary.clone());
    }
    for (cli, vars) in &file.conflicting_env {
        cfg.conflicting_vars
            .insert(cli_key(cli, "conflicting_env")?, vars.clone());
    }
    // A timeout the operator names applies to everything, also below the per-CLI defaults.
    if let Some(ms) = args.timeout_ms {
        cfg.set_all_timeouts(Duration::from_millis(ms));
    }
    if let Some(v) = args.disk_warn_pct {
        cfg.disk_warn_pct = v;
    }
    if let Some(v) = args.disk_fail_pct {
        cfg.disk_fail_pct = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs the checks and prints the report. Returns whether everything passed (warnings count
/// as failures with `--strict`).
pub async fn run(args: &Args, clis: &[CliType], file: &BrokerFile) -> Result<bool> {
    let cfg = config(args, file)?;
    let report: EnvironmentReport = kokino_doctor::check_many(&cfg, clis).await;
    let warnings: usize = report.results.iter().map(|r| r.warnings.len()).sum();
    let ok = report.overall && !(args.strict && warnings > 0);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            let mut out = format!(
                "kokino-doctor: local checks (data dir {})\n",
                cfg.data_dir.display()
            );
            output::environment_report(&mut out, 0, &report);
            let passed = report.results.iter().filter(|r| r.passed).count();
            out.push_str(&format!(
                "\n{}: {passed} of {} CLI type(s) passed, {warnings} warning(s)\n",
                if ok { "OK" } else { "FAILED" },
                report.results.len()
            ));
            print!("{out}");
        }
    }
    Ok(ok)
}
