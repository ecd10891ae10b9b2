//! The fleet operations the dashboard asks for (protocol.md's command table;
//! `docs/commands.md` for what each runs on NixOS, nix-darwin and Home
//! Manager hosts).
//!
//! ## The command set, and one dispatcher
//!
//! [`CommandName`] is a closed set matched by exact name. Anything else — a
//! path, shell text, a name with a space, `bump-flake` — is answered with
//! status `error` "unknown command" and nothing runs. A name is never used as
//! a path, an argument or shell text: every program, argument and path comes
//! from the configuration (`Config`) or the host, never from the dashboard.
//!
//! [`Commands::handle`] is the one dispatcher; the busy rules live in one
//! table, [`CommandName::busy`]: a run holds the *slot* from the moment its
//! frame is handled until its `status` is queued, and a second command
//! meanwhile gets `command_rejected` (with the running command's name and
//! PID); `stop` and `kill` act on the running command, `restart` and `reboot`
//! work while busy and end it first. [`Commands::handle`] never waits: the
//! work runs on its own tokio task.
//!
//! One module per operation:
//!
//! - `pull.rs`: `pull` (isolated mode: fetch, `reset --hard`, `clean -fd` in
//!   the agent's own clone; legacy mode: `git pull`), with `repair.rs`: stale
//!   git locks removed first, a broken clone of the agent's own cloned again.
//! - `switches.rs`: `switch`, `pull-switch`, `update`, `force-rebuild`,
//!   `rollback`, run detached under the switch supervisor (`deploy/`) and
//!   followed by exit [`EXIT_RESTART`]; the switches an earlier agent
//!   process left behind. A switch's phases: `preview.rs` (the dry run and
//!   the guards before building), `build.rs` (the build, the `/boot` guard,
//!   the activation of exactly the built path), `changes.rs` (the preview
//!   block between them); `trust.rs` (signed commits); `confirm.rs` (the
//!   new generation's health checks and the one status of a watched
//!   switch).
//! - `host_tests.rs`: `test`.
//! - `reboot.rs`: `reboot`.
//! - `refresh.rs`: `refresh-lock`, `refresh-system`, `refresh-git`.
//! - `check_version.rs`: `check-version`.
//! - `names.rs` (the command set and the busy table), `run.rs` (one run),
//!   `report.rs` (how a run ended), `row.rs` (the host row).
//! - here: `stop`/`kill` (SIGTERM to the running command's process group,
//!   SIGKILL after `NIXFLEET_STOP_GRACE_MS`; status `stopped`; idle: error
//!   "no command running"), `restart`, and `kill_command` (the dashboard's
//!   signal, `SIGTERM` or `SIGKILL`, only for the agent's own running
//!   command: PID 0 or a PID this run started; anything else is refused).
//!
//! ## Statuses
//!
//! Every `status` goes through the outbox ([`Outbound::reliable`]): it follows
//! the command's output and survives reconnects. `generation` is the
//! repository's `HEAD` commit after the command (empty if unknown);
//! `exit_code` is the failing process's exit code (128 + signal when killed),
//! 0 on success, and −1 ([`NOT_RUN`]) when no process ran (unknown command,
//! refusals, a stop before the next step began). Failure messages end with the
//! last lines of the failing step's stderr (or stdout when stderr was empty).
//!
//! Every run writes its output to a log file of its own (see `exec/runlog.rs`).

mod build;
mod changes;
mod check_version;
mod confirm;
mod host_tests;
mod names;
mod preview;
mod pull;
mod reboot;
mod refresh;
mod repair;
mod report;
mod row;
mod run;
mod switches;
mod trust;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::deploy::{ACTIVATE_FLAG, SUPERVISE_FLAG, activate_main, supervise_main};
pub use env::ChildEnv;

use crate::config::{Config, EXIT_RESTART, RepoMode};
use crate::deploy::{self, Ended, Record};
use crate::exec::{env, owner, runlog, runner};
use crate::host;
use crate::outbound::Outbound;
use crate::protocol::{CommandRejected, Incoming, Outcome, Outgoing, Status, TestProgress};
use crate::state::AgentState;
use row::{Phase, PhaseEnd, Row, TestDots};
use runlog::RunLog;
use runner::{Control, Sink, Spec, StepResult, StopCause, clip, failure_tail, run_step};

pub use names::{Busy, CommandName};
use pull::{clone_repo, is_git_checkout};
pub use refresh::system_installable;
use report::{Report, failed_message, short, stopped_message};
use run::{Run, step};
use switches::{switch_word, system_label};

use crate::util::lock;

/// `exit_code` of a status when no process ran.
pub const NOT_RUN: i32 = -1;
/// Longest status message, in bytes.
pub const MAX_MESSAGE: usize = 4000;
/// Grace between SIGTERM and SIGKILL when the agent itself shuts down (at most
/// this, and at most `NIXFLEET_STOP_GRACE_MS`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Longest command name echoed back in a status.
const MAX_ECHO: usize = 64;

/// The commands part of the agent. Cheap to clone (one shared inner state).
#[derive(Debug, Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    state: Arc<AgentState>,
    out: Arc<Outbound>,
    env: ChildEnv,
    slot: Mutex<Option<Arc<Control>>>,
    exiting: AtomicBool,
    /// A `reboot` is under way (it never runs twice at once).
    rebooting: AtomicBool,
    /// What ran and how it ended, for the metrics and `status`.
    ledger: Arc<crate::observe::ledger::Ledger>,
}

impl Commands {
    /// The commands part, sending through `out` and publishing into `state`.
    pub fn new(config: Arc<Config>, state: Arc<AgentState>, out: Arc<Outbound>) -> Commands {
        Commands::with_ledger(config, state, out, Arc::default())
    }

    /// [`Commands::new`], noting what runs and how it ends in `ledger`.
    pub fn with_ledger(
        config: Arc<Config>,
        state: Arc<AgentState>,
        out: Arc<Outbound>,
        ledger: Arc<crate::observe::ledger::Ledger>,
    ) -> Commands {
        let env = ChildEnv::for_config(&config);
        Commands {
            inner: Arc::new(Inner {
                config,
                state,
                out,
                env,
                slot: Mutex::new(None),
                exiting: AtomicBool::new(false),
                rebooting: AtomicBool::new(false),
                ledger,
            }),
        }
    }

    /// Before connecting: reports switches an earlier agent process left
    /// behind (a finished one at once; a running one is adopted: shown as
    /// running, its further output streamed, its status reported when it
    /// ends), then, in isolated mode, clones the repository if the clone is
    /// missing (a failure is logged; `pull` tries again).
    pub async fn startup(&self) {
        self.recover_switches();
        self.report_reboot();
        let config = self.inner.config.clone();
        let RepoMode::Isolated { url } = &config.repo_mode else {
            return;
        };
        if is_git_checkout(&config.repo_dir) {
            return;
        }
        // Hold the slot as a `pull` meanwhile, so that a dashboard `pull`
        // cannot clone into the same directory at the same time.
        let Some(ctl) = self.claim(CommandName::Pull) else {
            return;
        };
        let log = Arc::new(RunLog::create_off_thread(&config.log_dir, "clone").await);
        let sink = Sink::new("clone", None, log);
        tracing::info!(
            "cloning {} (branch {}) into {}",
            crate::config::redact_repo_url(url),
            config.branch,
            config.repo_dir.display()
        );
        match clone_repo(&sink, &ctl, &self.inner.env, &config, url).await {
            Ok(()) => tracing::info!("cloned the configuration repository"),
            Err(report) => tracing::warn!("initial clone failed: {}", report.message),
        }
        self.release(&ctl);
        ctl.finish();
        self.inner
            .state
            .set_generation(&host::generation(&config.repo_dir));
        self.inner.state.request_refresh();
        self.refresh_lock().await;
    }

    /// Handles one dashboard frame. Never waits: work runs on its own task.
    pub fn handle(&self, msg: Incoming) {
        match msg {
            Incoming::Registered { .. } => {}
            Incoming::Command { command } => self.on_command(&command),
            Incoming::KillCommand { signal, pid } => self.on_kill(&signal, pid),
        }
    }

    /// The agent is shutting down (`restarting`: for a restart, exit 101):
    /// terminates a running command's process group (SIGTERM, SIGKILL after
    /// a short grace) and returns when it ended; its status says which. A
    /// detached switch is left running; the next agent process reports it.
    pub async fn shutdown(&self, restarting: bool) {
        self.inner.exiting.store(true, Ordering::SeqCst);
        let Some(ctl) = self.current() else {
            return;
        };
        if ctl.is_detached() {
            tracing::info!("leaving the running switch to finish on its own");
            return;
        }
        let grace = self.inner.config.timing.stop_grace.min(SHUTDOWN_GRACE);
        let cause = if restarting {
            StopCause::Restart
        } else {
            StopCause::Shutdown
        };
        ctl.request_stop(cause, libc::SIGTERM);
        if tokio::time::timeout(grace, ctl.wait_done()).await.is_err() {
            ctl.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), ctl.wait_done()).await;
        }
    }

    // ---- frames ----

    fn on_command(&self, name: &str) {
        if name == names::BUMP_FLAKE {
            tracing::warn!("refusing {name}");
            self.reply_error(name, names::BUMP_FLAKE_REFUSED.to_string());
            return;
        }
        let Some(command) = CommandName::parse(name) else {
            let shown = match clip(name, MAX_ECHO) {
                "" => "(empty)",
                shown => shown,
            };
            tracing::warn!("refusing unknown command {shown:?}");
            self.reply_error(shown, "unknown command".to_string());
            return;
        };
        tracing::info!("command {}", command.as_str());
        match (command.busy(), command) {
            (Busy::OnRunning, _) => match self.current() {
                Some(ctl) if ctl.is_detached() => {
                    self.reply_error(command.as_str(), activating_refusal(ctl.name()))
                }
                Some(ctl) => self.stop_run(ctl, StopCause::User, libc::SIGTERM),
                None => self.reply_error(command.as_str(), "no command running".to_string()),
            },
            (Busy::Preempts, CommandName::Reboot) => self.reboot(),
            (Busy::Preempts, _) => self.restart(),
            (Busy::Exclusive, _) => self.start(command),
        }
    }

    fn on_kill(&self, signal: &str, pid: i64) {
        let sig = match signal {
            "SIGTERM" => libc::SIGTERM,
            "SIGKILL" => libc::SIGKILL,
            other => {
                let shown = clip(other, MAX_ECHO);
                tracing::warn!("refusing kill_command with signal {shown:?}");
                self.reply_error(
                    "kill_command",
                    format!("unsupported signal {shown:?}; only SIGTERM and SIGKILL"),
                );
                return;
            }
        };
        let Some(ctl) = self.current() else {
            self.reply_error("kill_command", "no command running".to_string());
            return;
        };
        if ctl.is_detached() {
            self.reply_error("kill_command", activating_refusal(ctl.name()));
            return;
        }
        if pid != 0 && !ctl.owns_pid(pid) {
            tracing::warn!(
                "refusing kill_command for pid {pid}: not the running command ({})",
                ctl.name()
            );
            self.reply_error(
                "kill_command",
                format!(
                    "pid {pid} is not the running command ({}, pid {}); nothing was signalled",
                    ctl.name(),
                    ctl.current_pid()
                ),
            );
            return;
        }
        self.stop_run(ctl, StopCause::User, sig);
    }

    fn current(&self) -> Option<Arc<Control>> {
        lock(&self.inner.slot).clone()
    }

    /// The environment every child of the agent gets.
    pub fn child_env(&self) -> &ChildEnv {
        &self.inner.env
    }

    /// Takes the slot for `command`, or `None` if another run holds it.
    fn claim(&self, command: CommandName) -> Option<Arc<Control>> {
        let mut slot = lock(&self.inner.slot);
        if slot.is_some() {
            return None;
        }
        let ctl = Control::new(command.as_str(), Some(self.inner.state.clone()));
        *slot = Some(ctl.clone());
        // `state.running` is set with the run's first PID (Control::publish_pid).
        self.inner.out.set_command(command.as_str());
        Some(ctl)
    }

    /// Gives the slot back (if `ctl` still holds it) and shows idle.
    fn release(&self, ctl: &Arc<Control>) {
        let mut slot = lock(&self.inner.slot);
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            *slot = None;
            self.inner.state.set_running(None);
        }
    }

    fn start(&self, command: CommandName) {
        if self.inner.exiting.load(Ordering::SeqCst) {
            self.reply_error(
                command.as_str(),
                "the agent is restarting; send the command again once it is back".to_string(),
            );
            return;
        }
        let Some(ctl) = self.claim(command) else {
            let (current_command, current_pid) = match self.current() {
                Some(c) => (c.name().to_string(), c.current_pid()),
                // released in between: report what the heartbeats showed
                None => self
                    .inner
                    .state
                    .running()
                    .map(|r| (r.command, r.pid))
                    .unwrap_or_default(),
            };
            tracing::info!(
                "rejecting {}: {current_command} is running",
                command.as_str()
            );
            self.inner
                .out
                .control(Outgoing::CommandRejected(CommandRejected {
                    reason: "command already running".to_string(),
                    current_command,
                    current_pid,
                }));
            return;
        };
        let this = self.clone();
        tokio::spawn(async move { this.execute(command, ctl).await });
    }

    fn stop_run(&self, ctl: Arc<Control>, cause: StopCause, sig: i32) {
        tracing::info!("stopping {} (signal {sig})", ctl.name());
        ctl.request_stop(cause, sig);
        if sig != libc::SIGKILL {
            let grace = self.inner.config.timing.stop_grace;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {
                        tracing::info!("{} still running after the grace period; SIGKILL", ctl.name());
                        ctl.signal(libc::SIGKILL);
                    }
                    _ = ctl.wait_done() => {}
                }
            });
        }
    }

    fn restart(&self) {
        self.inner.exiting.store(true, Ordering::SeqCst);
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(ctl) = this.current()
                && !ctl.is_detached()
            {
                this.stop_run(ctl.clone(), StopCause::Restart, libc::SIGTERM);
                let limit = this.inner.config.timing.stop_grace + Duration::from_secs(2);
                let _ = tokio::time::timeout(limit, ctl.wait_done()).await;
            }
            this.send_status(Report::ok("Restarting the agent".to_string()), "restart");
            this.inner.state.request_exit(EXIT_RESTART);
        });
    }

    /// Measures the Lock compartment now (off the runtime thread).
    async fn refresh_lock(&self) -> crate::compartments::Check {
        let env = Arc::new(self.inner.env.vars().to_vec());
        crate::compartments::refresh_lock(
            self.inner.state.compartments(),
            &self.inner.config.repo_dir,
            &env,
        )
        .await
    }

    /// The host row this agent's runs change.
    fn row(&self) -> Row<'_> {
        Row {
            store: self.inner.state.compartments(),
            out: &self.inner.out,
        }
    }

    fn reply_error(&self, command: &str, message: String) {
        self.send_status(Report::error(NOT_RUN, message), command);
    }

    fn send_status(&self, report: Report, command: &str) {
        self.inner.ledger.ended(
            command,
            report.outcome.as_str(),
            report.exit_code,
            &report.message,
        );
        let generation = host::generation(&self.inner.config.repo_dir);
        self.inner.out.reliable(Outgoing::Status(Status {
            status: report.outcome,
            command: command.to_string(),
            exit_code: report.exit_code,
            message: clip(&report.message, MAX_MESSAGE).to_string(),
            generation,
        }));
    }

    // ---- runs ----

    async fn execute(self, command: CommandName, ctl: Arc<Control>) {
        let log =
            Arc::new(RunLog::create_off_thread(&self.inner.config.log_dir, command.as_str()).await);
        log.note(&format!("[nixfleet-agent] {} started", command.as_str()));
        self.inner.ledger.started(command.as_str());
        if let Some(path) = log.path() {
            tracing::debug!("{} logs to {}", command.as_str(), path.display());
        }
        let mut run = Run {
            commands: self.clone(),
            sink: Sink::new(command.as_str(), Some(self.inner.out.clone()), log),
            ctl,
            record: None,
            switched: false,
            boot_only: false,
            system_before: None,
            test_dots: None,
            verified: None,
        };
        if command.needs_nix()
            && let Err(report) = run.require_nix(command).await
        {
            run.finish(report).await;
            return;
        }
        let report = match command {
            CommandName::Pull => run.pull().await.map(Report::ok),
            CommandName::Switch | CommandName::ForceRebuild => {
                run.switch(command).await.map(|s| s.report(None))
            }
            CommandName::PullSwitch => run.pull_switch().await,
            CommandName::Update => run.update().await,
            CommandName::Rollback => run.rollback().await,
            CommandName::Test => Ok(run.test().await),
            CommandName::CheckVersion => run.check_version().await,
            CommandName::RefreshLock => Ok(run.refresh_lock().await),
            CommandName::RefreshSystem => Ok(run.refresh_system().await),
            CommandName::RefreshGit => Ok(run.refresh_git().await),
            CommandName::Stop | CommandName::Kill | CommandName::Restart | CommandName::Reboot => {
                Err(Report::error(
                    NOT_RUN,
                    format!("{} is not a run", command.as_str()),
                ))
            }
        };
        let report = report.unwrap_or_else(|r| r);
        run.finish(report).await;
    }
}

/// Why a switch is not stopped once its activation began: stopping it
/// part-way leaves the host half-switched, and on NixOS it would not even
/// stop it (`systemd-run --pipe` dies on SIGTERM while
/// switch-to-configuration goes on in its transient unit, so the host
/// switches anyway and a "stopped" status would lie). It ends on its own,
/// and its checks and the rollback watchdog decide what the host runs.
fn activating_refusal(name: &str) -> String {
    format!(
        "{name} is activating the new system and cannot be stopped part-way (on NixOS the activation runs on in a transient unit of systemd); it ends on its own, then its health checks and the rollback watchdog decide"
    )
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lifecycle;
