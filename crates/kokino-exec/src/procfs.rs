//! The little of procfs the supervisor needs: a process's start time (so a recorded pid is never
//! mistaken for a later process that reused it) and the resident memory of a process group.

use std::fs;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: i32) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.nth(19)?.parse().ok()
}

/// The fields after the command name: the name is in parentheses and may itself contain spaces
/// or parentheses, so split after the last `)`.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace())
}

/// Process group of `pid` (field 5).
fn pgrp_of(stat: &str) -> Option<i32> {
    stat_fields(stat)?.nth(2)?.parse().ok()
}

/// Parent pid of a process (field 4).
fn ppid_of(stat: &str) -> Option<i32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// Whether a `stat` line is a live process's (not a zombie `Z`, not dead `X`).
fn stat_is_live(stat: &str) -> bool {
    stat_fields(stat)
        .and_then(|mut f| f.next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The numeric entries of `/proc`, with the text of their `stat` files.
fn all_stats() -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)))
        .collect()
}

/// How many threads `pid` has, from one read of its `stat`; `None` when it is gone or a zombie.
pub fn live_thread_count(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if !stat_is_live(&stat) {
        return None;
    }
    // Field 20, num_threads; the fields after the command name start at field 3.
    stat_fields(&stat)?.nth(17)?.parse().ok()
}

/// Whether `pid` has any child (live or not yet reaped), over all its threads. A few small
/// reads instead of a scan of every process: for a child subreaper with no child, no
/// descendant of it can be alive anywhere, since orphans are re-parented to it.
pub fn has_children(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        // Unreadable: answer as if there were children, so the caller takes the thorough path.
        return true;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("children"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(true)
    })
}

/// Pids of the live processes that are in the group `pgid` or descend from `root` (children,
/// their children, and so on, through any group or session), `root` itself excluded. One pass
/// over `/proc`.
///
/// The supervisor asks this of itself: it is a child subreaper, so a CLI's descendant that
/// daemonized (double fork, `setsid`) is re-parented to it and still found here, although it
/// left the group.
pub fn group_and_descendants(pgid: i32, root: i32) -> Vec<i32> {
    let stats = all_stats();
    let mut parent = std::collections::HashMap::new();
    for (pid, stat) in &stats {
        if let Some(pp) = ppid_of(stat) {
            parent.insert(*pid, pp);
        }
    }
    let descends = |mut pid: i32| {
        // A chain of parents is finite (it ends at 1 or 0), and bounded here anyway against a
        // table read while processes came and went.
        for _ in 0..4096 {
            match parent.get(&pid) {
                Some(&pp) if pp == root => return true,
                Some(&pp) if pp > 1 && pp != pid => pid = pp,
                _ => return false,
            }
        }
        false
    };
    stats
        .iter()
        .filter(|(pid, stat)| {
            *pid != root && stat_is_live(stat) && (pgrp_of(stat) == Some(pgid) || descends(*pid))
        })
        .map(|(pid, _)| *pid)
        .collect()
}

/// The value of the environment variable `name` that `pid` started with, when we may read its
/// environment (our own user's processes).
pub fn env_var(pid: i32, name: &str) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|var| {
        let rest = var.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// Pids of every live process in the group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| pgrp_of(&s))
                == Some(pgid)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie (state `Z`) or dead (`X`).
pub fn is_live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|s| stat_is_live(&s))
}

/// Resident set size of one process in bytes (`/proc/<pid>/statm`, second field, in pages).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// User plus system CPU time of one process, in clock ticks (fields 14 and 15 of `stat`).
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat_fields(&stat)?.skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of the whole group's live members, in clock ticks.
pub fn group_cpu_ticks(pgid: i32) -> u64 {
    group_members(pgid).into_iter().filter_map(cpu_ticks).sum()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the `/proc` CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident memory of the whole group: the CLI, its tools and its MCP servers together.
pub fn group_rss_bytes(pgid: i32) -> u64 {
    group_members(pgid).into_iter().filter_map(rss_bytes).sum()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Whether `pid` is alive and is still the process that started at `start` (not a reused pid).
pub fn is_same_process(pid: i32, start: i64) -> bool {
    start_time(pid) == Some(start)
}

/// Kills what is left of a process group a previous life of the broker recorded (its leader's
/// pid and start time). Returns whether a live process of it was signalled.
///
/// * The leader is alive and is the recorded process: the group is ours; kill it.
/// * The leader's pid is alive but started at another time: the pid was reused by an unrelated
///   process, which may lead a group of that number; touch nothing.
/// * The leader is gone (or a zombie): whatever still has this process group is what the CLI
///   left behind (tools, MCP servers, shells). Linux does not hand out a pid while it still
///   names a process group, so those members can only be the recorded group's; kill them.
pub fn kill_recorded_group(pid: i32, start: i64) -> bool {
    if pid <= 1 {
        return false;
    }
    if is_live(pid) && !is_same_process(pid, start) {
        return false;
    }
    if !group_members(pid).into_iter().any(is_live) {
        return false;
    }
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(is_same_process(me, start_time(me).unwrap()));
    }

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let stat = "123 (a b) c) S 1 77 77 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0";
        assert_eq!(pgrp_of(stat), Some(77));
        assert_eq!(ppid_of(stat), Some(1));
        assert!(stat_is_live(stat));
        assert!(!stat_is_live("9 (z) Z 1 9 9 0"));
        assert_eq!(stat_fields(stat).unwrap().nth(19), Some("4242"));
    }
}
