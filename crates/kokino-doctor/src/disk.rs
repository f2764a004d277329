//! The `disk` check: room on the file system of the data directory, where the database and
//! the agents' logs grow.

use std::path::{Path, PathBuf};

use crate::report::{Check, CheckName};
use crate::{blocking, DoctorConfig};

/// Usage of one file system, as `df` computes it: blocks used by anyone over the blocks an
/// unprivileged user could use (used + available), so the reserved root blocks count as full.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    used_pct: f64,
    available_bytes: u64,
    total_bytes: u64,
}

/// The directory itself if it exists, else its nearest existing ancestor: the broker creates
/// the data directory on first start, and until then it will live on its parent's file system.
fn existing_ancestor(dir: &Path) -> Option<PathBuf> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    absolute
        .ancestors()
        .find(|p| p.exists())
        .map(Path::to_path_buf)
}

fn usage(path: &Path) -> Result<Usage, String> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| e.to_string())?;
    let frsize = st.fragment_size() as u64;
    let blocks = st.blocks() as u64;
    let free = st.blocks_free() as u64;
    let avail = st.blocks_available() as u64;
    let used = blocks.saturating_sub(free);
    let denominator = used + avail;
    let used_pct = if denominator == 0 {
        0.0
    } else {
        used as f64 * 100.0 / denominator as f64
    };
    Ok(Usage {
        used_pct,
        available_bytes: avail * frsize,
        total_bytes: blocks * frsize,
    })
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
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

pub(crate) async fn disk(cfg: &DoctorConfig) -> Check {
    let data_dir = cfg.data_dir.clone();
    // statvfs on a hung network mount blocks in the kernel; it runs on a blocking thread so
    // that the timeout still answers.
    let measured = blocking(cfg.check_timeout, move || {
        let at = existing_ancestor(&data_dir)
            .ok_or_else(|| format!("no part of {} exists", data_dir.display()))?;
        usage(&at).map(|u| (at, u))
    })
    .await;
    let shown = cfg.data_dir.display();
    let (at, u) = match measured {
        None => {
            return Check::fail(
                CheckName::Disk,
                format!(
                    "measuring the file system of {shown} took more than {} ms (a hung network \
                     mount?)",
                    cfg.check_timeout.as_millis()
                ),
            )
        }
        Some(Err(e)) => {
            return Check::fail(
                CheckName::Disk,
                format!("cannot measure the file system of {shown}: {e}"),
            )
        }
        Some(Ok(v)) => v,
    };
    let location = if at == cfg.data_dir {
        format!("{shown}")
    } else {
        format!("{shown} (not created yet; measured at {})", at.display())
    };
    let summary = format!(
        "{:.1}% used, {} available of {} on {location}",
        u.used_pct,
        human_bytes(u.available_bytes),
        human_bytes(u.total_bytes)
    );
    if u.used_pct >= cfg.disk_fail_pct {
        Check::fail(
            CheckName::Disk,
            format!(
                "disk almost full: {summary} (fails at {}%). The broker's database and agent \
                 logs need room: free space, prune old logs and conversations \
                 (`kokino-cleanup --logs`, `kokino-cleanup --max-age 7d`), or move data_dir",
                cfg.disk_fail_pct
            ),
        )
    } else if u.used_pct >= cfg.disk_warn_pct {
        Check::pass(CheckName::Disk, summary.clone()).with_warnings(vec![format!(
            "disk {:.1}% full on {location} (warns at {}%, fails at {}%); free space or prune \
             logs before it fills",
            u.used_pct, cfg.disk_warn_pct, cfg.disk_fail_pct
        )])
    } else {
        Check::pass(CheckName::Disk, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_an_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(existing_ancestor(&missing).unwrap(), dir.path());
        let u = usage(dir.path()).unwrap();
        assert!((0.0..=100.0).contains(&u.used_pct));
        assert!(u.total_bytes > 0);
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GB");
    }
}
