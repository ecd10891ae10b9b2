//! The agent's side of the rollback watchdog (`deploy/watchdog.rs`):
//! preparing a watched switch, and confirming it from the new generation.
//!
//! **Before the agent leaves** (the process that ran the switch, which the
//! activation leaves running: the NixOS unit is never restarted by a
//! switch): it runs the health checks of the new generation at once (every
//! executable `hosts/<host>/health/*.sh`, and on NixOS "no unit that was
//! active before the switch has failed"). Failed: the supervisor rolls back
//! and the one status is `error` `rolled back to <generation>: <reason>`,
//! sent before the agent goes anywhere; passed: the status is `ok` (or the
//! activation's own failure, `error` with its exit code), sent before the
//! agent exits for its restart into the new generation. The dashboard gets
//! the true outcome while it still listens for it (its lifecycle calls any
//! reconnect after a switch a success, and ignores a status after that).
//!
//! **After** (the agent that starts next, the new generation's, or the old
//! one's after a rollback) finds the record at start. Without a verdict yet
//! it makes sure a supervisor guards the window (after a reboot it starts
//! one for the rest of it), waits until the dashboard has registered it
//! and, unless the old process ran them, runs the health checks; then
//! decides. The watchdog outside the agent stays the net: a new generation
//! whose agent never reaches the dashboard is rolled back at the deadline.
//! A switch that was not reported yet (its process died on the way) gets
//! its one status here; one that was gets none: its verdict goes to the
//! output and the System compartment. It exits for a restart when it runs
//! the binary of the generation that was rolled back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::compartments::{Check, Level, Part};
use crate::deploy::confirm::{self, Settled};
use crate::deploy::{Verdict, Watch, units};

/// How long a reporting agent waits for a rollback that is under way.
const ROLLBACK_WAIT: Duration = Duration::from_secs(15 * 60);

impl Run {
    /// Makes `record` a watched switch, when the watchdog is on and the
    /// system before it can be told. Says so in the output either way.
    pub(super) async fn prepare_watch(&self, record: &Record) {
        let config = self.inner().config.clone();
        if !config.rollback.enabled {
            return;
        }
        let env = self.inner().env.clone();
        let record2 = record.clone();
        let prepared =
            tokio::task::spawn_blocking(move || confirm::prepare(&config, &env, &record2))
                .await
                .unwrap_or_else(|e| Err(format!("the preparation did not finish: {e}")));
        match prepared {
            Ok(confirm::Prepared {
                watch,
                units_note,
                root_note,
            }) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] rollback watchdog: back to {} unless the new generation registers and passes its health checks within {} s",
                        watch.previous_name(),
                        watch.deadline.as_secs()
                    ))
                    .await;
                if let Some(why) = units_note {
                    self.sink
                        .note(format!(
                            "[nixfleet-agent] no failed-units check after this switch: {why}"
                        ))
                        .await;
                }
                if let Some(why) = root_note {
                    self.sink
                        .note(format!(
                            "[nixfleet-agent] no GC root holds {} while the switch is watched: {why}",
                            watch.previous_name()
                        ))
                        .await;
                }
            }
            Err(why) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] no automatic rollback for this switch: {why}"
                    ))
                    .await;
            }
        }
    }

    /// A watched switch activated (`command`, its `record` and `watch`):
    /// the new generation's health checks run in this process, before it
    /// leaves, and the outcome is the switch's one status (module docs):
    /// `Ok` with the message of a success (the agent then restarts).
    pub(super) async fn check_before_leaving(
        &mut self,
        command: CommandName,
        record: &Record,
        watch: &Watch,
    ) -> Result<String, Report> {
        let what = switch_word(command);
        self.sink
            .note("[nixfleet-agent] activated; checking the new generation before the agent restarts into it".to_string())
            .await;
        let window = confirm::window(record, watch);
        let mine = self.health(record, window).await;
        let verdict = match mine {
            Verdict::Confirmed => {
                if let Err(e) = confirm::mark_checked(record) {
                    // the next agent runs the checks again
                    tracing::warn!("cannot mark the switch as checked: {e}");
                }
                Verdict::Confirmed
            }
            // the supervisor may have decided first (its deadline)
            rollback => confirm::decide(record, &rollback),
        };
        match confirm::settle(record, verdict, what) {
            Settled::Confirmed(_) => {
                self.sink
                    .note(format!(
                        "[nixfleet-agent] the agent restarts into the new generation; the watchdog rolls back unless its agent reaches the dashboard within {} s",
                        confirm::window(record, watch).as_secs()
                    ))
                    .await;
                Ok(format!(
                    "{what} succeeded; the new generation passed its health checks"
                ))
            }
            // the activation's own failure; the new generation stays
            Settled::Failed(code, message) => Err(Report::error(code, message).with_restart()),
            Settled::RollBack(why) => {
                self.sink
                    .note(format!("[nixfleet-agent] rolling back: {why}"))
                    .await;
                let mut report = self.rolled_back(record, watch, &why).await;
                // this process runs the generation the host is back on
                report.restart = false;
                Err(report)
            }
        }
    }

    /// The new generation's agent reached the dashboard within `window`.
    async fn reach_dashboard(&self, window: Duration) -> Verdict {
        let state = self.inner().state.clone();
        if tokio::time::timeout(window, state.wait_registered())
            .await
            .is_err()
        {
            return Verdict::RollBack(format!(
                "the new generation's agent did not reach the dashboard within {} s",
                window.as_secs()
            ));
        }
        self.sink
            .note(
                "[nixfleet-agent] registered with the dashboard on the new generation".to_string(),
            )
            .await;
        Verdict::Confirmed
    }

    /// The new generation's checks: registered, health scripts, failed units.
    async fn check_new_generation(&self, record: &Record, window: Duration) -> Verdict {
        let started = Instant::now();
        if let Verdict::RollBack(why) = self.reach_dashboard(window).await {
            return Verdict::RollBack(why);
        }
        if confirm::checked(record) {
            self.sink
                .note(
                    "[nixfleet-agent] its health checks passed before the agent restarted"
                        .to_string(),
                )
                .await;
            return Verdict::Confirmed;
        }
        self.health(record, window.saturating_sub(started.elapsed()))
            .await
    }

    /// The new generation's health: the health scripts and, on NixOS, the
    /// units that were active before the switch; within `window`.
    async fn health(&self, record: &Record, window: Duration) -> Verdict {
        let started = Instant::now();
        let config = self.inner().config.clone();
        let dir = config
            .repo_dir
            .join("hosts")
            .join(&config.hostname)
            .join("health");
        let found = host_tests::discover(&dir);
        for script in &found.scripts {
            let name = host_tests::name_of(script);
            let left = window.saturating_sub(started.elapsed());
            let inner = self.inner();
            let checked = tokio::time::timeout(
                left,
                step(
                    &self.sink,
                    &self.ctl,
                    &inner.env,
                    &format!("Health check {name}"),
                    script.as_os_str(),
                    &[],
                    &config.repo_dir,
                ),
            )
            .await;
            match checked {
                Ok(Ok(_)) => {}
                Ok(Err(failed)) => {
                    return Verdict::RollBack(format!(
                        "health check {name} failed (exit {})",
                        failed.exit_code
                    ));
                }
                Err(_) => {
                    self.ctl.signal(libc::SIGKILL);
                    return Verdict::RollBack(format!(
                        "health check {name} did not finish within the deadline"
                    ));
                }
            }
        }
        // a host has hundreds of units: read the whole list (bounded)
        if let Some(before) = record.read_bounded("units.before", 1024 * 1024) {
            let before: BTreeSet<String> = before.lines().map(str::to_string).collect();
            let env = self.inner().env.vars().to_vec();
            match tokio::task::spawn_blocking(move || units("failed", &env)).await {
                Ok(Ok(failed)) => {
                    let newly: Vec<&String> = failed.intersection(&before).collect();
                    if !newly.is_empty() {
                        let names: Vec<&str> = newly.iter().map(|s| s.as_str()).collect();
                        return Verdict::RollBack(format!(
                            "units that were active before the switch failed: {}",
                            names.join(", ")
                        ));
                    }
                }
                Ok(Err(why)) => {
                    self.sink
                        .note(format!("[nixfleet-agent] failed units not checked: {why}"))
                        .await;
                }
                Err(_) => {}
            }
        }
        self.sink
            .note(format!(
                "[nixfleet-agent] the new generation is healthy ({} health check(s) passed)",
                found.scripts.len()
            ))
            .await;
        Verdict::Confirmed
    }

    /// Confirms (or sees rolled back) a watched switch and reports it once.
    /// `hold_until`: this process holds its register back (the process that
    /// ran the switch died on the way, and the dashboard still waits for a
    /// reconnect it would take for a success): the health checks run first,
    /// and after a failure no register happens before that time
    /// (`register_hold.rs`).
    async fn confirm(mut self, record: Record, watch: Watch, hold_until: Option<SystemTime>) {
        if confirm::unguarded(&record) {
            // the host rebooted inside the window: guard the rest of it
            let inner = self.inner();
            match record.spawn_supervisor(&inner.env, &inner.config.repo_dir) {
                Ok(child) => drop(child),
                Err(e) => {
                    tracing::warn!("cannot start a supervisor for the rest of the window: {e}")
                }
            }
        }
        let mut released = false;
        let verdict = match confirm::verdict(&record) {
            Some(v) => v,
            None if hold_until.is_some() => {
                // before the dashboard hears of this process
                let window = confirm::window(&record, &watch);
                let started = Instant::now();
                let mine = match self.health(&record, window).await {
                    Verdict::Confirmed => {
                        // healthy: the register tells the truth now
                        self.inner().state.release_register();
                        released = true;
                        self.reach_dashboard(window.saturating_sub(started.elapsed()))
                            .await
                    }
                    rollback => rollback,
                };
                confirm::decide(&record, &mine)
            }
            None => {
                let window = confirm::window(&record, &watch);
                let mine = self.check_new_generation(&record, window).await;
                confirm::decide(&record, &mine)
            }
        };
        if let Some(until) = hold_until.filter(|_| !released) {
            if matches!(verdict, Verdict::RollBack(_)) {
                let dir = self.inner().config.state_dir.clone();
                let held = tokio::task::spawn_blocking(move || {
                    crate::register_hold::hold_until(&dir, until)
                })
                .await;
                if !matches!(held, Ok(Ok(()))) {
                    tracing::warn!("cannot keep the register held back on disk");
                }
                self.sink
                    .note("[nixfleet-agent] the register waits until the dashboard's reconnect window has passed: a register now would count as the switch's success".to_string())
                    .await;
            }
            self.inner().state.release_register();
        }
        let what = switch_word(Commands::record_command(&record));
        let report = match confirm::settle(&record, verdict, what) {
            Settled::Confirmed(message) => Report::ok(message),
            Settled::Failed(code, message) => Report::error(code, message),
            Settled::RollBack(why) => {
                self.sink
                    .note(format!("[nixfleet-agent] rolling back: {why}"))
                    .await;
                self.rolled_back(&record, &watch, &why).await
            }
        };
        if record.is_reported() {
            // the process that ran the switch sent its one status
            self.finish_quietly(report).await;
        } else {
            self.finish(report).await;
        }
    }

    /// The report after the supervisor's rollback (waited for), with the
    /// System compartment saying the same.
    async fn rolled_back(&mut self, record: &Record, watch: &Watch, why: &str) -> Report {
        let rolled = confirm::rolled_back(
            record,
            watch,
            why,
            ROLLBACK_WAIT,
            crate::state::process_started(),
        )
        .await;
        let (level, mut report) = match rolled.exit {
            Some(0) => (Level::Error, Report::error(1, rolled.message)),
            Some(code) => (Level::Error, Report::error(code, rolled.message)),
            None => {
                let mut report = Report::error(NOT_RUN, rolled.message);
                report.outcome = Outcome::Warning;
                (Level::Unknown, report)
            }
        };
        // what the metrics and `status` count; a switch reported before it
        // was rolled back is the last switch, which was rolled back
        self.inner()
            .ledger
            .rolled_back(&report.message, record.is_reported());
        // System tells the same story; the run's own settle is skipped
        self.switched = false;
        self.inner()
            .state
            .compartments()
            .set(Part::System, Check::now(level, report.message.clone()));
        report.stop_detail = Some(report.message.clone());
        // a rollback after this process started: it runs the binary of the
        // generation that was rolled back, so restart
        report.restart = rolled.restart;
        report
    }
}

impl Commands {
    /// When `record` is a switch the hub takes the next register for (a
    /// `switch` or `pull-switch` left unreported by a process that died on
    /// the way, whose activation ended less than the hub's reconnect window
    /// ago): holds this process's register back and returns until when a
    /// rolled-back switch must keep holding it (`register_hold.rs`).
    fn register_hold_for(&self, record: &Record) -> Option<SystemTime> {
        if record.is_reported() {
            return None;
        }
        let command = Self::record_command(record);
        if !matches!(command, CommandName::Switch | CommandName::PullSwitch) {
            return None;
        }
        let until = record.ended_at()?
            + self.inner.config.timing.hub_reconnect_window
            + crate::register_hold::MARGIN;
        if until <= SystemTime::now() {
            return None;
        }
        self.inner.state.hold_register();
        Some(until)
    }

    /// Confirms a watched switch of an earlier agent process (see the module
    /// docs). False when another command holds the slot.
    pub(super) fn confirm_switch(&self, record: Record, watch: Watch) -> bool {
        let command = Self::record_command(&record);
        let hold_until = self.register_hold_for(&record);
        let ctl = if record.is_reported() {
            // reported, its checks passed: only the registration is left,
            // which comes before any command; the dashboard, which has seen
            // the switch end, may send the next one at once: no slot held
            runner::Control::new(command.as_str(), None)
        } else {
            let Some(ctl) = self.claim(command) else {
                if hold_until.is_some() {
                    self.inner.state.release_register();
                }
                return false;
            };
            // heartbeats show the switch as running while it is confirmed
            if let Some(pid) = record
                .supervisor_pid()
                .filter(|_| record.supervisor_alive())
            {
                ctl.publish_pid(pid);
            }
            ctl
        };
        ctl.set_detached();
        let this = self.clone();
        tokio::spawn(async move {
            let run = this
                .earlier_run(command, ctl, &record, "confirming", "switched")
                .await;
            run.confirm(record, watch, hold_until).await;
        });
        true
    }
}
