//! Text rendering: one line per check, with a mark an operator (or `grep`) can read at a
//! glance: `✓` passed, `✗` failed, `!` passed with a warning, `-` skipped.

use std::fmt::Write as _;

use kokino_doctor::{CliReport, EnvironmentReport};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

impl Status {
    pub fn mark(self) -> char {
        match self {
            Status::Ok => '✓',
            Status::Warn => '!',
            Status::Fail => '✗',
            Status::Skipped => '-',
        }
    }
}

/// One line of output: `  ✓ name  message (hint)`.
pub fn line(out: &mut String, indent: usize, status: Status, name: &str, message: &str) {
    let _ = writeln!(
        out,
        "{:indent$}{} {name:<13} {message}",
        "",
        status.mark(),
        indent = indent
    );
}

/// The checks of one CLI type, under a heading line for the type.
pub fn cli_report(out: &mut String, indent: usize, r: &CliReport) {
    let status = if !r.passed {
        Status::Fail
    } else if r.warnings.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    // Only a hard fact (a missing binary) may make the broker disable the CLI type; saying
    // which kind of failure this is tells the operator whether the broker will act on it.
    let kind = if r.disables_cli() {
        "; a hard fact: the broker may disable this CLI type"
    } else {
        ""
    };
    let verdict = match status {
        Status::Fail => format!("FAILED: {}{kind}", join_names(r)),
        Status::Warn => format!("passed with {} warning(s)", r.warnings.len()),
        _ => "passed".to_owned(),
    };
    let version = r
        .version
        .as_deref()
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    line(
        out,
        indent,
        status,
        r.cli_type.as_str(),
        &format!("{verdict} ({} ms{version})", r.duration_ms),
    );
    for c in &r.checks {
        let (status, message) = match (&c.warning, c.passed) {
            (_, false) => (Status::Fail, c.message.clone()),
            (Some(w), true) => (Status::Warn, format!("{} — warning: {w}", c.message)),
            (None, true) => (Status::Ok, c.message.clone()),
        };
        line(out, indent + 2, status, c.name.as_str(), &message);
    }
}

fn join_names(r: &CliReport) -> String {
    r.failed_checks()
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn environment_report(out: &mut String, indent: usize, report: &EnvironmentReport) {
    for r in &report.results {
        cli_report(out, indent, r);
    }
}
