//! `--logs`: prune rotated agent logs older than the retention, then rotate the current ones.
//!
//! Pruning comes first so that a log rotated now, whose compressed file is new, is never
//! mistaken for an old one in the same run. The rotation is forced (every non-empty log, not
//! just those over the size limit), which is what "rotate now" means to an operator, except
//! while an agent is executing: `kokino-logs` rotates by renaming, and a running CLI's log
//! writer would keep appending to the renamed file while it is being compressed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kokino_logs::{LogError, LogStatus};

use crate::report::{human_bytes, human_duration, plural, Progress};
use crate::settings::LogSettings;

pub struct LogPlan {
    /// Rotated files past the retention, with their age.
    pub prune: Vec<(String, Option<Duration>)>,
    /// Current logs that would be rotated.
    pub rotate: Vec<LogStatus>,
    pub forced: bool,
}

#[derive(Debug, Default)]
pub struct LogDone {
    pub deleted: usize,
    pub rotated: usize,
    pub failed: usize,
}

pub fn plan(settings: &LogSettings, busy_agents: usize) -> Result<LogPlan, LogError> {
    let logs = settings.agent_logs();
    let now = SystemTime::now();
    let prune = logs
        .prune(now, true)?
        .deleted
        .into_iter()
        .map(|path| {
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            (path, age)
        })
        .collect();
    let forced = busy_agents == 0;
    let rotate = logs
        .status()?
        .into_iter()
        .filter(|s| s.size_bytes > 0 && (forced || s.size_bytes >= settings.max_bytes))
        .collect();
    Ok(LogPlan {
        prune,
        rotate,
        forced,
    })
}

impl LogPlan {
    pub fn print(&self, settings: &LogSettings, busy_agents: usize) {
        if !self.forced {
            eprintln!(
                "kokino-cleanup: note: {} executing, so only logs over the size limit ({}) are \
                 rotated: a forced rotation would move a log from under a running CLI",
                plural(busy_agents, "agent is"),
                human_bytes(settings.max_bytes)
            );
        }
        for (path, age) in &self.prune {
            let age = age.map(human_duration).unwrap_or_else(|| "?".into());
            println!("would delete old log  path={path} age={age}");
        }
        for st in &self.rotate {
            println!(
                "would rotate log  agent={} size={} path={}",
                st.agent_id,
                human_bytes(st.size_bytes),
                st.path
            );
        }
    }
}

/// Prunes, rotates, and waits for the compression of what it rotated.
pub fn apply(settings: &LogSettings, forced: bool) -> LogDone {
    let logs = settings.agent_logs();
    let mut done = LogDone::default();
    match logs.prune(SystemTime::now(), false) {
        Ok(m) => {
            for path in &m.deleted {
                println!("deleted old log  path={path}");
            }
            done.deleted = m.deleted.len();
        }
        Err(e) => {
            println!("FAILED delete old logs  error={e}");
            done.failed += 1;
        }
    }
    let rotated = match logs.rotate_all(forced) {
        Ok(m) => m.rotated,
        Err(e) => {
            println!("FAILED rotate logs  error={e}");
            done.failed += 1;
            return done;
        }
    };
    done.rotated = rotated.len();
    let gz: Vec<PathBuf> = rotated.iter().map(PathBuf::from).collect();
    // `kokino-logs` compresses in a background thread so that a broker never waits for gzip.
    // This process exits when it is done, which would kill that thread half-way and leave a
    // truncated .gz next to the uncompressed file; so wait until every rotation is complete.
    let unfinished = wait_for_compression(&gz, Duration::from_secs(30));
    for path in &gz {
        if unfinished.contains(path) {
            println!(
                "FAILED rotate log  path={} error=compression did not finish; the uncompressed \
                 file {} is kept",
                path.display(),
                aside_of(path).display()
            );
            done.failed += 1;
        } else {
            println!("rotated log  path={}", path.display());
        }
    }
    done
}

/// The uncompressed file a rotation renamed the log to: the `.gz` path without `.gz`. It is
/// removed once its compressed copy is complete.
fn aside_of(gz: &Path) -> PathBuf {
    let s = gz.to_string_lossy();
    PathBuf::from(s.strip_suffix(".gz").unwrap_or(&s).to_owned())
}

/// Waits until every rotated file is compressed; gives up on those whose compression has made
/// no progress (no compressed file grew, none finished) for `stall`. Returns the unfinished.
fn wait_for_compression(gz: &[PathBuf], stall: Duration) -> Vec<PathBuf> {
    let mut progress = Progress::new("logs compressed", gz.len());
    let mut last_change = Instant::now();
    let mut last_state = (usize::MAX, 0u64);
    loop {
        let pending: Vec<PathBuf> = gz
            .iter()
            .filter(|g| aside_of(g).exists())
            .cloned()
            .collect();
        if pending.is_empty() {
            return pending;
        }
        let written: u64 = pending
            .iter()
            .filter_map(|g| std::fs::metadata(g).ok())
            .map(|m| m.len())
            .sum();
        let state = (pending.len(), written);
        if state != last_state {
            last_state = state;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return pending;
        }
        let finished = gz.len() - pending.len();
        progress.tick(finished, String::new);
        std::thread::sleep(Duration::from_millis(20));
    }
}
