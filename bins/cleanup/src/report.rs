//! What the operator reads: one line per action on stdout, progress on stderr, and the totals.
//!
//! Progress goes to stderr so that stdout stays a clean record of what was done, one action per
//! line, which is what an operator pipes into a file or greps afterwards.

use std::time::{Duration, Instant};

/// Totals of a run, planned or done.
#[derive(Debug, Default)]
pub struct Totals {
    pub ended: usize,
    pub kept_recent: usize,
    pub skipped_busy: usize,
    pub gone: usize,
    /// `None` when the job was not asked for; `Some(None)` when the count is not known (a dry
    /// run through `--url`, which has no endpoint to count events).
    pub events: Option<Option<u64>>,
    pub rotated: Option<usize>,
    pub logs_deleted: Option<usize>,
    pub failed: usize,
}

impl Totals {
    /// The plan has something to change.
    pub fn has_work(&self) -> bool {
        self.ended > 0
            || self.events.is_some_and(|n| n != Some(0))
            || self.rotated.is_some_and(|n| n > 0)
            || self.logs_deleted.is_some_and(|n| n > 0)
    }

    /// `ended 3 sessions, kept 2 recent, skipped 1 executing, deleted 120 events, ...`, or the
    /// same in the conditional for a plan.
    pub fn summary(&self, planned: bool) -> String {
        let (end, del, rot) = if planned {
            ("would end", "would delete", "would rotate")
        } else {
            ("ended", "deleted", "rotated")
        };
        let mut parts = vec![format!("{end} {}", plural(self.ended, "session"))];
        if self.kept_recent > 0 {
            parts.push(format!("kept {} recent", self.kept_recent));
        }
        if self.skipped_busy > 0 {
            parts.push(format!("skipped {} executing", self.skipped_busy));
        }
        if self.gone > 0 {
            parts.push(format!("{} already ended", self.gone));
        }
        match self.events {
            Some(Some(n)) => parts.push(format!("{del} {}", plural(n as usize, "event"))),
            Some(None) => parts.push(format!("{del} old events (count not available)")),
            None => {}
        }
        if let Some(n) = self.rotated {
            parts.push(format!("{rot} {}", plural(n, "log")));
        }
        if let Some(n) = self.logs_deleted {
            parts.push(format!("{del} {}", plural(n, "old log file")));
        }
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        parts.join(", ")
    }
}

pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `45s`, `12m3s`, `30h12m`, `3d4h`: two units are enough to judge staleness at a glance.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if days >= 2 {
        format!("{days}d{hours}h")
    } else if s >= 3_600 {
        // Under two days, hours read better than `1d6h` next to a `--max-age 24h`.
        format!("{}h{mins}m", s / 3_600)
    } else if s >= 60 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// A flag's duration as the operator would have written it: `24h`, `90m`, `7d`, `0s`.
pub fn flag_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Progress of a long loop on stderr: every `EVERY` items, and at least every two seconds when
/// items are slow (a broker answering end-session after cancelling a run), so a long run never
/// looks hung. Short runs print nothing.
pub struct Progress {
    noun: &'static str,
    total: usize,
    printed: usize,
    last: Instant,
}

impl Progress {
    const EVERY: usize = 50;
    const INTERVAL: Duration = Duration::from_secs(2);

    pub fn new(noun: &'static str, total: usize) -> Self {
        Progress {
            noun,
            total,
            printed: 0,
            last: Instant::now(),
        }
    }

    /// `handled` items of the total are done; `detail` adds to the line when it is printed.
    pub fn tick(&mut self, handled: usize, detail: impl FnOnce() -> String) {
        if handled >= self.total {
            return;
        }
        let milestone = handled % Self::EVERY == 0 && handled != self.printed;
        if milestone || self.last.elapsed() >= Self::INTERVAL {
            eprintln!(
                "kokino-cleanup: progress {handled}/{} {}{}",
                self.total,
                self.noun,
                detail()
            );
            self.printed = handled;
            self.last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(12 * 60 + 3)), "12m3s");
        assert_eq!(
            human_duration(Duration::from_secs(30 * 3600 + 12 * 60)),
            "30h12m"
        );
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d4h"
        );
        assert_eq!(flag_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(flag_duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(flag_duration(Duration::from_secs(90)), "90s");
        assert_eq!(flag_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn summary_names_only_the_jobs_that_ran() {
        let t = Totals {
            ended: 3,
            skipped_busy: 1,
            events: Some(Some(120)),
            rotated: Some(2),
            logs_deleted: Some(4),
            ..Totals::default()
        };
        assert_eq!(
            t.summary(false),
            "ended 3 sessions, skipped 1 executing, deleted 120 events, rotated 2 logs, \
             deleted 4 old log files"
        );
        let only_sessions = Totals {
            ended: 1,
            ..Totals::default()
        };
        assert_eq!(only_sessions.summary(true), "would end 1 session");
        assert!(!Totals::default().has_work());
    }
}
