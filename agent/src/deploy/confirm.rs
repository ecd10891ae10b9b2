//! The deploy machinery's side of a watched switch, for the operations in
//! `commands/`: preparing the watch before a switch, telling whether an
//! ended switch is watched, and turning the watchdog's record into the one
//! outcome the next agent process reports (`commands/confirm.rs` runs the
//! health checks and sends the status).
//!
//! Everything here reads or writes the switch record; nothing runs a
//! command the dashboard sees.

use std::time::Duration;

use super::record::{POLL, Record};
use super::watch::{units, watch_for};
use super::watchdog::{self, Kind, Verdict, Watch};
use crate::config::Config;
use crate::exec::env::ChildEnv;

/// What a watched switch is guarded by, once prepared.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// What the watchdog switches back to.
    pub watch: Watch,
    /// Why the failed-units check will not run, if it will not.
    pub units_note: Option<String>,
    /// Why no GC root holds the system to roll back to, if none does.
    pub root_note: Option<String>,
}

/// Makes `record` a watched switch (blocking): the system before it and,
/// on NixOS, the active units; `Err` says why it cannot be watched.
pub fn prepare(config: &Config, env: &ChildEnv, record: &Record) -> Result<Prepared, String> {
    let watch = watch_for(config, env)?;
    watch
        .save(record)
        .map_err(|e| format!("cannot write the watch file: {e}"))?;
    let root_note = watchdog::hold_target(record, &watch, env.vars()).err();
    let units_note = if watch.kind == Kind::NixOs {
        match units("active", env.vars()) {
            Ok(active) => {
                let list: Vec<&str> = active.iter().map(String::as_str).collect();
                record
                    .write_file("units.before", list.join("\n").as_bytes())
                    .map_err(|e| format!("cannot write units.before: {e}"))?;
                None
            }
            Err(why) => Some(why),
        }
    } else {
        None
    };
    Ok(Prepared {
        watch,
        units_note,
        root_note,
    })
}

/// The watch of a switch that ended with `code`, when the watchdog guards
/// it: the next agent process confirms it (or it is rolled back).
pub fn watched(record: &Record, code: i32) -> Option<Watch> {
    if !watchdog::engaged(record, code) {
        return None;
    }
    Watch::load(record)
}

/// The mark of a watched switch whose health checks the old generation's
/// agent ran and passed before it left, having reported the switch: the
/// new generation's agent only has to reach the dashboard in the window.
const CHECKED: &str = "checked";

/// The mark of a reported switch whose end an agent process has shown
/// ([`mark_settled`]).
const SETTLED: &str = "settled";

/// Marks `record`: its health checks passed in the process that ran the
/// switch (before it reported it and left).
pub fn mark_checked(record: &Record) -> std::io::Result<()> {
    record.write_file(CHECKED, b"")
}

/// Whether the health checks of `record` passed before the switch was
/// reported ([`mark_checked`]).
pub fn checked(record: &Record) -> bool {
    record.dir().join(CHECKED).exists()
}

/// Marks a reported switch as settled: an agent process has shown how it
/// ended (confirmed, or rolled back on the System row).
pub fn mark_settled(record: &Record) -> std::io::Result<()> {
    record.write_file(SETTLED, b"")
}

/// Watched switches that were reported before the agent left (their checks
/// passed in the old process) and still wait for the new generation's
/// agent to reach the dashboard, or were rolled back by the supervisor
/// while no agent ran (the new generation's never started) and wait for an
/// agent to show it; with what each would roll back to.
pub fn awaiting_new_agent(root: &std::path::Path) -> Vec<(Record, Watch)> {
    super::record::all_records(root)
        .into_iter()
        .filter(|r| {
            r.is_reported()
                && checked(r)
                && !r.dir().join(SETTLED).exists()
                && !matches!(watchdog::verdict_of(r), Some(Verdict::Confirmed))
        })
        .filter_map(|r| {
            let watch = watched(&r, r.exit_code()?)?;
            Some((r, watch))
        })
        .collect()
}

/// Whether nobody guards the window any more (the host rebooted inside
/// it): a supervisor must be started for the rest of it.
pub fn unguarded(record: &Record) -> bool {
    watchdog::verdict_of(record).is_none() && !record.supervisor_alive()
}

/// The verdict on record, if there is one.
pub fn verdict(record: &Record) -> Option<Verdict> {
    watchdog::verdict_of(record)
}

/// How long the new generation has left to confirm.
pub fn window(record: &Record, watch: &Watch) -> Duration {
    watchdog::left(record).unwrap_or(watch.deadline)
}

/// Records `mine` unless the supervisor decided first; the verdict that holds.
pub fn decide(record: &Record, mine: &Verdict) -> Verdict {
    watchdog::decide(record, mine)
}

/// What a watched switch comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Confirmed: the status's message.
    Confirmed(String),
    /// Confirmed, but the tool failed after activating: its code, the message.
    Failed(i32, String),
    /// To be rolled back (or rolled back): why.
    RollBack(String),
}

/// What `verdict` makes of the switch of `record`; `what` names the switch
/// ("Switch"). What came before the switch in its run (a pull's result) is
/// put before a confirmation's message.
pub fn settle(record: &Record, verdict: Verdict, what: &str) -> Settled {
    let prefix = record.read_small("prefix").filter(|p| !p.is_empty());
    let with_prefix = |m: String| match &prefix {
        Some(p) => format!("{p}; {m}"),
        None => m,
    };
    // a tool that failed after activating: its failure is part of the story
    let failed_tool = watchdog::activated_with_error(record).map(|code| {
        let mut failed = format!(
            "`{}` exited {code} after activating the new generation",
            record.label()
        );
        let tail = record.tail();
        if !tail.is_empty() {
            failed.push_str(&format!(" ({})", tail.lines().last().unwrap_or_default()));
        }
        (code, failed)
    });
    match (verdict, failed_tool) {
        (Verdict::Confirmed, None) => Settled::Confirmed(with_prefix(format!(
            "{what} succeeded; confirmed by the new generation"
        ))),
        (Verdict::Confirmed, Some((code, failed))) => Settled::Failed(
            code,
            with_prefix(format!(
                "{what} failed: {failed}; the new generation passed its checks and stays"
            )),
        ),
        (Verdict::RollBack(why), Some((_, failed))) => {
            Settled::RollBack(format!("{why} ({failed})"))
        }
        (Verdict::RollBack(why), None) => Settled::RollBack(why),
    }
}

/// How the supervisor's rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The rollback's exit code; `None` when it is not known.
    pub exit: Option<i32>,
    /// The status's message.
    pub message: String,
    /// Whether it happened after this process started: this process runs
    /// the binary of the generation that was rolled back, so it restarts.
    pub restart: bool,
}

/// Waits (at most `limit`) for the supervisor's rollback of `record` to end
/// and tells how it ended; `why` is the reason of the rollback.
pub async fn rolled_back(
    record: &Record,
    watch: &Watch,
    why: &str,
    limit: Duration,
    started: std::time::SystemTime,
) -> RolledBack {
    let waited = std::time::Instant::now();
    let exit = loop {
        if let Some(code) = watchdog::rollback_exit(record) {
            break Some(code);
        }
        if !record.supervisor_alive() || waited.elapsed() > limit {
            break watchdog::rollback_exit(record);
        }
        tokio::time::sleep(POLL * 5).await;
    };
    let generation = watch.previous_name();
    let message = match exit {
        Some(0) => format!("rolled back to {generation}: {why}"),
        Some(code) => {
            let runs = match watchdog::runs_after_failed_rollback(record) {
                Some(runs) => format!(
                    "the host runs {}, which its profile and boot default name",
                    runs.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| runs.display().to_string())
                ),
                None => "the host may still run the new generation".to_string(),
            };
            let mut message =
                format!("rollback to {generation} failed (exit {code}): {why}; {runs}");
            let tail = watchdog::rollback_tail(record);
            if !tail.is_empty() {
                message.push_str(":\n");
                message.push_str(&tail);
            }
            message
        }
        None => format!("rollback to {generation} result unknown: {why}"),
    };
    RolledBack {
        exit,
        message,
        restart: watchdog::rollback_time(record).is_some_and(|t| t >= started),
    }
}

/// The latest watched switch under `root`, for `nixfleet-agent status`:
/// on probation while its supervisor guards it, or rolled back; `None` when
/// it was confirmed, is not watched, or there is none.
pub fn watch_summary(root: &std::path::Path) -> Option<String> {
    let record = super::record::all_records(root).into_iter().last()?;
    let watch = Watch::load(&record)?;
    match watchdog::verdict_of(&record) {
        None if record.supervisor_alive() => Some(format!(
            "a switch is on probation: unless the new generation confirms it, the watchdog rolls back to {}",
            watch.previous_name()
        )),
        Some(Verdict::RollBack(why)) => Some(match watchdog::rollback_exit(&record) {
            Some(0) => format!("rolled back to {}: {why}", watch.previous_name()),
            Some(code) => format!(
                "the rollback to {} failed (exit {code}): {why}",
                watch.previous_name()
            ),
            None => format!("rolling back to {}: {why}", watch.previous_name()),
        }),
        _ => None,
    }
}
