//! `kokino-cleanup`: ends stale agent sessions, and on request rotates and prunes agent logs and
//! deletes old telemetry events. It replaces the predecessor's `cleanup-sessions.js` (which
//! queried columns that did not exist and could not reach the broker's in-memory sessions) and
//! `rotate-logs.sh`.
//!
//! A run has three steps. It plans (reads what is there, changes nothing), shows the plan and
//! asks for confirmation unless `--yes` or `--dry-run` was given, and then acts, printing one
//! line per action and totals at the end. Ending a session keeps its conversation: it is the
//! broker's end-session, not a deletion of history.
//!
//! Exit codes: 0 done, 1 something failed (or the operator declined), 2 could not run.

#![forbid(unsafe_code)]

mod backend;
mod direct;
mod logs;
mod remote;
mod report;
mod settings;

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Parser;

use backend::{Backend, EndResult, Fatal, Session};
use report::{human_duration, Progress, Totals};
use settings::{Args, Settings};

fn main() {
    // Clap exits with 2 on bad flags by itself, naming the flag and the value.
    let args = Args::parse();
    let settings = match settings::resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kokino-cleanup: {e:#}");
            std::process::exit(2);
        }
    };
    // Refused before anything is read, not only when there turns out to be work: a cron job
    // without --yes must fail on its first run, not weeks later on the first stale session.
    if !settings.dry_run && !settings.yes && !std::io::stdin().is_terminal() {
        eprintln!(
            "kokino-cleanup: stdin is not a terminal, so there is no one to confirm with: pass \
             --yes to clean up without asking, or --dry-run to only see what would be done"
        );
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kokino-cleanup: cannot start: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(run(settings)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("kokino-cleanup: {e:#}");
            2
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// `Ok(true)`: everything done; `Ok(false)`: something failed or was declined; `Err`: could not
/// run.
async fn run(s: Settings) -> Result<bool> {
    let backend = Backend::connect(&s.target).await?;
    let max_age = chrono::Duration::from_std(s.max_age).context("--max-age is too long")?;
    let now = Utc::now();
    let cutoff = now - max_age;
    println!(
        "kokino-cleanup: {}; sessions idle for {} or more{}{}",
        backend.describe(),
        report::flag_duration(s.max_age),
        s.agent
            .as_ref()
            .map(|a| format!(", agent {a} only"))
            .unwrap_or_default(),
        if s.dry_run { " (dry run)" } else { "" },
    );

    // ---- plan: read everything, change nothing.
    let mut ok = true;
    let listing = backend.sessions(s.agent.as_ref()).await?;
    if let Some(id) = &s.agent {
        if !listing.agent_exists {
            eprintln!("kokino-cleanup: there is no agent {id}");
            ok = false;
        } else if listing.sessions.is_empty() {
            eprintln!("kokino-cleanup: agent {id} has no session");
        }
    }
    let mut plan = Totals::default();
    let mut stale: Vec<Session> = Vec::new();
    for session in listing.sessions {
        match session.last_activity {
            None => println!(
                "skip session  agent={} reason=unknown-last-activity",
                session.agent
            ),
            Some(t) if t > cutoff => plan.kept_recent += 1,
            Some(_) if session.busy => {
                println!("skip session  {} reason=executing", describe(&session));
                plan.skipped_busy += 1;
            }
            Some(_) => stale.push(session),
        }
    }
    stale.sort_by_key(|s| s.last_activity);
    plan.ended = stale.len();
    if let Some(days) = s.metrics_days {
        plan.events = Some(
            backend
                .count_events(days)
                .await
                .context("cannot count events")?,
        );
    }
    let log_plan = match &s.logs {
        Some(ls) => {
            let (ls, busy) = (ls.clone(), listing.busy_agents);
            let p = tokio::task::spawn_blocking(move || logs::plan(&ls, busy))
                .await?
                .context("cannot read the agent logs")?;
            plan.rotated = Some(p.rotate.len());
            plan.logs_deleted = Some(p.prune.len());
            Some(p)
        }
        None => None,
    };

    // ---- show the plan when someone is going to read it before anything happens.
    if s.dry_run || !s.yes {
        for session in &stale {
            println!("would end session  {}", describe(session));
        }
        if let (Some(days), Some(count)) = (s.metrics_days, plan.events) {
            match count {
                Some(n) => println!(
                    "would delete {} older than {days} days (before {})",
                    report::plural(n as usize, "event"),
                    backend::days_ago(now, days).format("%Y-%m-%dT%H:%M:%SZ")
                ),
                None => println!(
                    "would delete events older than {days} days (count not available through --url)"
                ),
            }
        }
        if let (Some(p), Some(ls)) = (&log_plan, &s.logs) {
            p.print(ls, listing.busy_agents);
        }
    }
    if s.dry_run {
        println!("dry run: {}; nothing was changed", plan.summary(true));
        return Ok(ok);
    }
    if !plan.has_work() {
        println!("nothing to do: {}", plan.summary(false));
        return Ok(ok);
    }
    if !s.yes && !confirm(&format!("{}. Proceed?", plan.summary(true)))? {
        println!("cancelled: nothing was changed");
        return Ok(false);
    }

    // ---- act. Time has passed (the operator read the plan), so each session is judged again
    // on a fresh listing, and the store backend re-checks each one against the store itself.
    let mut done = Totals {
        kept_recent: plan.kept_recent,
        skipped_busy: plan.skipped_busy,
        ..Totals::default()
    };
    let current = backend.sessions(s.agent.as_ref()).await?;
    let cutoff = Utc::now() - max_age;
    let mut progress = Progress::new("sessions", stale.len());
    for (i, planned) in stale.iter().enumerate() {
        let now_seen = current.sessions.iter().find(|c| c.agent == planned.agent);
        let result = match now_seen {
            None => Ok(EndResult::Gone),
            Some(c) if c.last_activity.is_some_and(|t| t > cutoff) => Ok(EndResult::Active),
            Some(c) if c.busy => Ok(EndResult::Busy),
            Some(c) => backend.end_session(c, cutoff).await,
        };
        match result {
            Ok(EndResult::Ended) => {
                println!("ended session  {}", describe(planned));
                done.ended += 1;
            }
            Ok(EndResult::Gone) => {
                println!("skip session  agent={} reason=already-ended", planned.agent);
                done.gone += 1;
            }
            Ok(EndResult::Busy) => {
                println!("skip session  {} reason=executing", describe(planned));
                done.skipped_busy += 1;
            }
            Ok(EndResult::Active) => {
                println!("skip session  agent={} reason=active-again", planned.agent);
                done.kept_recent += 1;
            }
            Err(e) if e.is::<Fatal>() => return Err(e),
            Err(e) => {
                println!("FAILED end session  agent={} error={e:#}", planned.agent);
                done.failed += 1;
            }
        }
        progress.tick(i + 1, || format!(", {} ended", done.ended));
    }

    if let Some(days) = s.metrics_days {
        match backend.delete_events(days).await {
            Ok(n) => {
                println!(
                    "deleted {} older than {days} days",
                    report::plural(n as usize, "event")
                );
                done.events = Some(Some(n));
            }
            Err(e) if e.is::<Fatal>() => return Err(e),
            Err(e) => {
                println!("FAILED delete events  error={e:#}");
                done.events = Some(Some(0));
                done.failed += 1;
            }
        }
    }

    if let Some(ls) = &s.logs {
        let forced = current.busy_agents == 0;
        if !forced && log_plan.as_ref().is_some_and(|p| p.forced) {
            eprintln!(
                "kokino-cleanup: note: an agent started executing; only logs over the size \
                 limit are rotated"
            );
        }
        let ls = ls.clone();
        let r = tokio::task::spawn_blocking(move || logs::apply(&ls, forced)).await?;
        done.rotated = Some(r.rotated);
        done.logs_deleted = Some(r.deleted);
        done.failed += r.failed;
    }

    println!("{}", done.summary(false));
    Ok(ok && done.failed == 0)
}

/// `agent=a1 idle=30h12m conversation=… cli-session=…`, leaving out what is not known.
fn describe(s: &Session) -> String {
    let mut line = format!("agent={}", s.agent);
    if let Some(t) = s.last_activity {
        let idle = (Utc::now() - t).to_std().unwrap_or(Duration::ZERO);
        line.push_str(&format!(" idle={}", human_duration(idle)));
    }
    if let Some(c) = &s.conversation {
        line.push_str(&format!(" conversation={c}"));
    }
    if let Some(c) = &s.cli_session {
        line.push_str(&format!(" cli-session={c}"));
    }
    line
}

/// Asks on the terminal; only `y` or `yes` proceeds. The question goes to stderr so that stdout
/// stays the record of actions.
fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
