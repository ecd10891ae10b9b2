//! The fleet operations the dashboard asks for: `pull`, `switch`,
//! `pull-switch`, `update`, `test`, `stop`, `restart`, and `kill_command`.
//!
//! ## The command set
//!
//! [`CommandName`] is a closed set matched by exact name. Anything else — a
//! path, shell text, a name with a space — is answered with status `error`
//! "unknown command" and nothing runs. A name is never used as a path, an
//! argument or shell text: every program, argument and path comes from the
//! configuration (`Config`), never from the dashboard.
//!
//! ## One command at a time
//!
//! A run holds the *slot* from the moment its frame is handled until its
//! `status` is queued. A second command meanwhile gets `command_rejected`
//! (with the running command's name and PID) and the running one is not
//! touched; `stop`, `kill_command` and `restart` work while busy.
//! [`Commands::handle`] never waits: the work runs on its own tokio task.
//!
//! ## What each command does
//!
//! - `pull`, isolated mode: `git remote set-url origin <url>` (so a changed
//!   `NIXFLEET_REPO_URL` takes effect), `git fetch origin <branch>`,
//!   `git reset --hard origin/<branch>`, `git clean -fd` in the agent's clone,
//!   which is made with `git clone --branch <branch> -- <url> <dir>` when
//!   missing (at startup, or by `pull`). Legacy mode: `git pull` in the
//!   configured checkout. The message reads "Pull: Updated to abc1234" or
//!   "Pull: Already at abc1234"; the generation is published at once.
//! - `switch`: `<tool> switch --flake <flake>` as a detached switch (see
//!   `commands/switch.rs` for how it survives the agent), then exit
//!   [`EXIT_RESTART`] so that the service manager restarts the agent on the new
//!   binary.
//! - `pull-switch`: pull, then switch only if the pull succeeded.
//! - `update`: `nix --extra-experimental-features "nix-command flakes" flake
//!   update` in the repository, then switch.
//! - `test`: every executable `hosts/<hostname>/tests/T*.sh`, in name order,
//!   each in its own process group with the repository as working directory;
//!   a `test_progress` after each; final "p/N passed" (with the failed names),
//!   or "no tests" (status `ok`).
//! - `stop`: SIGTERM to the running command's process group, SIGKILL after
//!   `NIXFLEET_STOP_GRACE_MS`; no further step of a multi-step command starts;
//!   status `stopped` "Stopped by user". A test run keeps its partial results
//!   (a last `test_progress` with `running: false`). Nothing running: status
//!   `error` "no command running" for command `stop`.
//! - `kill_command`: like `stop` with the dashboard's signal (`SIGTERM` or
//!   `SIGKILL` only), and only for the agent's own running command: PID 0, or
//!   a PID this run started. Anything else is refused with a status `error`
//!   for command `kill_command`, and nothing is signalled.
//! - `restart`: stops a running command (not a detached switch, which the next
//!   agent process adopts), reports status `ok`, then exits [`EXIT_RESTART`].
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
//! Every run writes its output to a log file of its own (see `commands/runlog.rs`).

mod env;
mod host_tests;
mod row;
mod runlog;
mod runner;
mod switch;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use env::ChildEnv;
pub use switch::{SUPERVISE_FLAG, supervise_main};

use crate::config::{Config, EXIT_RESTART, RepoMode};
use crate::host;
use crate::outbound::Outbound;
use crate::protocol::{CommandRejected, Incoming, Outcome, Outgoing, Status, TestProgress};
use crate::state::AgentState;
use row::{Phase, PhaseEnd, Row, TestDots};
use runlog::RunLog;
use runner::{Control, Sink, Spec, StepResult, StopCause, clip, failure_tail, run_step};
use switch::{Ended, Record};

/// `exit_code` of a status when no process ran.
pub const NOT_RUN: i32 = -1;
/// Longest status message, in bytes.
pub const MAX_MESSAGE: usize = 4000;
/// Grace between SIGTERM and SIGKILL when the agent itself shuts down (at most
/// this, and at most `NIXFLEET_STOP_GRACE_MS`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Longest command name echoed back in a status.
const MAX_ECHO: usize = 64;

/// The commands the dashboard may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    /// `pull`.
    Pull,
    /// `switch`.
    Switch,
    /// `pull-switch`.
    PullSwitch,
    /// `test`.
    Test,
    /// `update`.
    Update,
    /// `stop`.
    Stop,
    /// `restart`.
    Restart,
}

impl CommandName {
    /// Every command.
    pub const ALL: [CommandName; 7] = [
        CommandName::Pull,
        CommandName::Switch,
        CommandName::PullSwitch,
        CommandName::Test,
        CommandName::Update,
        CommandName::Stop,
        CommandName::Restart,
    ];

    /// The command with exactly this name, if any.
    pub fn parse(name: &str) -> Option<CommandName> {
        CommandName::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::Pull => "pull",
            CommandName::Switch => "switch",
            CommandName::PullSwitch => "pull-switch",
            CommandName::Test => "test",
            CommandName::Update => "update",
            CommandName::Stop => "stop",
            CommandName::Restart => "restart",
        }
    }
}

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
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a run ended, before it becomes a `status`.
#[derive(Debug, Clone)]
struct Report {
    outcome: Outcome,
    exit_code: i32,
    message: String,
    /// Exit [`EXIT_RESTART`] after reporting (a successful switch).
    restart: bool,
    /// Added to the message if the run turns out stopped (partial test results).
    stop_detail: Option<String>,
}

impl Report {
    fn ok(message: String) -> Report {
        Report {
            outcome: Outcome::Ok,
            exit_code: 0,
            message,
            restart: false,
            stop_detail: None,
        }
    }

    fn error(exit_code: i32, message: String) -> Report {
        Report {
            outcome: Outcome::Error,
            exit_code,
            message,
            restart: false,
            stop_detail: None,
        }
    }

    fn with_restart(mut self) -> Report {
        self.restart = true;
        self
    }

    /// Puts `prefix; ` before the message (what succeeded before the failure).
    fn after(mut self, prefix: &str) -> Report {
        self.message = format!("{prefix}; {}", self.message);
        self
    }
}

/// `"{what} failed: `{label}` exited with {code}"`, then the output tail.
fn failed_message(what: &str, label: &str, code: i32, tail: &str) -> String {
    let mut message = format!("{what} failed: `{label}` exited with {code}");
    if !tail.is_empty() {
        message.push_str(":\n");
        message.push_str(tail);
    }
    message
}

fn stopped_message(cause: StopCause) -> &'static str {
    match cause {
        StopCause::User => "Stopped by user",
        StopCause::Shutdown => "Stopped: the agent is shutting down",
        StopCause::Restart => "Stopped: the agent is restarting",
    }
}

/// The first 7 characters of a commit.
fn short(commit: &str) -> &str {
    clip(commit, 7)
}

fn is_git_checkout(dir: &Path) -> bool {
    dir.join(".git").exists()
}

impl Commands {
    /// The commands part, sending through `out` and publishing into `state`.
    pub fn new(config: Arc<Config>, state: Arc<AgentState>, out: Arc<Outbound>) -> Commands {
        let env = ChildEnv::from_process(&config.state_dir, config.ssh_key.as_deref());
        Commands {
            inner: Arc::new(Inner {
                config,
                state,
                out,
                env,
                slot: Mutex::new(None),
                exiting: AtomicBool::new(false),
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
        let log = Arc::new(RunLog::create(&config.log_dir, "clone"));
        let sink = Sink::new("clone", None, log);
        tracing::info!(
            "cloning {url} (branch {}) into {}",
            config.branch,
            config.repo_dir.display()
        );
        match clone_repo(&sink, &ctl, &self.inner.env, &config, url).await {
            Ok(()) => tracing::info!("cloned the configuration repository"),
            Err(report) => tracing::warn!("initial clone failed: {}", report.message),
        }
        self.release(&ctl);
        ctl.finish();
        let generation = host::git_head_commit(&config.repo_dir).unwrap_or_default();
        self.inner.state.set_generation(&generation);
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

    /// The agent is shutting down: terminates a running command's process
    /// group (SIGTERM, SIGKILL after a short grace) and returns when it ended.
    /// A detached switch is left running; the next agent process reports it.
    pub async fn shutdown(&self) {
        self.inner.exiting.store(true, Ordering::SeqCst);
        let Some(ctl) = self.current() else {
            return;
        };
        if ctl.is_detached() {
            tracing::info!("leaving the running switch to finish on its own");
            return;
        }
        let grace = self.inner.config.timing.stop_grace.min(SHUTDOWN_GRACE);
        ctl.request_stop(StopCause::Shutdown, libc::SIGTERM);
        if tokio::time::timeout(grace, ctl.wait_done()).await.is_err() {
            ctl.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), ctl.wait_done()).await;
        }
    }

    // ---- frames ----

    fn on_command(&self, name: &str) {
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
        match command {
            CommandName::Stop => match self.current() {
                Some(ctl) => self.stop_run(ctl, StopCause::User, libc::SIGTERM),
                None => self.reply_error("stop", "no command running".to_string()),
            },
            CommandName::Restart => self.restart(),
            _ => self.start(command),
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
        let generation = host::git_head_commit(&self.inner.config.repo_dir).unwrap_or_default();
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
        let log = Arc::new(RunLog::create(&self.inner.config.log_dir, command.as_str()));
        log.note(&format!("[nixfleet-agent] {} started", command.as_str()));
        if let Some(path) = log.path() {
            tracing::debug!("{} logs to {}", command.as_str(), path.display());
        }
        let mut run = Run {
            commands: self.clone(),
            sink: Sink::new(command.as_str(), Some(self.inner.out.clone()), log),
            ctl,
            record: None,
            switched: false,
            test_dots: None,
        };
        let report = match command {
            CommandName::Pull => run.pull().await.map(Report::ok),
            CommandName::Switch => run
                .switch(command)
                .await
                .map(|m| Report::ok(m).with_restart()),
            CommandName::PullSwitch => run.pull_switch().await,
            CommandName::Update => run.update().await,
            CommandName::Test => Ok(run.test().await),
            CommandName::Stop | CommandName::Restart => Err(Report::error(
                NOT_RUN,
                format!("{} is not a run", command.as_str()),
            )),
        };
        let report = report.unwrap_or_else(|r| r);
        run.finish(report);
    }

    /// Switches an earlier agent process left behind: report or adopt.
    fn recover_switches(&self) {
        let root = self.inner.config.state_dir.join("switch");
        for record in switch::pending(&root) {
            if let Some(code) = record.exit_code() {
                self.report_record(&record, Ended::Exit(code));
            } else if record.supervisor_alive() {
                if !self.adopt(record.clone()) {
                    tracing::warn!(
                        "another switch is already followed; {} stays for the next start",
                        record.dir().display()
                    );
                }
            } else {
                self.report_record(&record, Ended::Vanished);
            }
        }
        switch::prune(&root, switch::KEEP_RECORDS);
    }

    fn record_command(record: &Record) -> CommandName {
        match CommandName::parse(&record.command()) {
            Some(c @ (CommandName::Switch | CommandName::PullSwitch | CommandName::Update)) => c,
            _ => CommandName::Switch,
        }
    }

    /// Reports a switch that ended while no agent was watching.
    fn report_record(&self, record: &Record, ended: Ended) {
        let command = Self::record_command(record);
        tracing::info!(
            "reporting the switch {} left by an earlier agent process: {ended:?}",
            record.dir().display()
        );
        let mut report = switch_report(record, ended)
            .map(Report::ok)
            .unwrap_or_else(|r| r);
        report
            .message
            .push_str(" (started by an earlier agent process)");
        self.row()
            .system_result(system_label(command), report.outcome, report.exit_code);
        self.send_status(report, command.as_str());
        record.mark_reported();
    }

    /// Follows a switch still running from an earlier agent process.
    fn adopt(&self, record: Record) -> bool {
        let command = Self::record_command(&record);
        let Some(ctl) = self.claim(command) else {
            return false;
        };
        if let Some(pid) = record.supervisor_pid() {
            ctl.publish_pid(pid);
        }
        tracing::info!(
            "adopting the running switch {} of an earlier agent process",
            record.dir().display()
        );
        let this = self.clone();
        tokio::spawn(async move {
            let log = Arc::new(RunLog::create(&this.inner.config.log_dir, command.as_str()));
            let run = Run {
                commands: this.clone(),
                sink: Sink::new(command.as_str(), Some(this.inner.out.clone()), log),
                ctl,
                record: Some(record.clone()),
                switched: true,
                test_dots: None,
            };
            run.sink
                .note(format!(
                    "[nixfleet-agent] following `{}`, started by an earlier agent process",
                    record.label()
                ))
                .await;
            let ended = switch::follow(&record, &run.sink, &run.ctl, None, true).await;
            let report = switch_report(&record, ended)
                .map(|m| Report::ok(m).with_restart())
                .unwrap_or_else(|r| r);
            run.finish(report);
        });
        true
    }
}

/// How the System compartment names a command's system phase.
fn system_label(command: CommandName) -> &'static str {
    match command {
        CommandName::PullSwitch => "Pull+Switch",
        CommandName::Update => "Update+Switch",
        _ => "Switch",
    }
}

/// The outcome of a followed switch: `Ok(message)` or the failure report.
fn switch_report(record: &Record, ended: Ended) -> Result<String, Report> {
    match ended {
        Ended::Exit(0) => Ok("Switch succeeded".to_string()),
        Ended::Exit(code) => Err(Report::error(
            code,
            failed_message("Switch", &record.label(), code, &record.tail()),
        )),
        Ended::Vanished => {
            let tail = record.tail();
            let mut message =
                "Switch failed: the switch supervisor ended without recording an exit code"
                    .to_string();
            if !tail.is_empty() {
                message.push_str(":\n");
                message.push_str(&tail);
            }
            Err(Report::error(NOT_RUN, message))
        }
    }
}

/// Clones the repository (isolated mode).
async fn clone_repo(
    sink: &Sink,
    ctl: &Control,
    env: &ChildEnv,
    config: &Config,
    url: &str,
) -> Result<(), Report> {
    let dir = &config.repo_dir;
    let Some(parent) = dir.parent() else {
        return Err(Report::error(
            NOT_RUN,
            format!("Clone failed: {} has no parent directory", dir.display()),
        ));
    };
    if let Err(e) = std::fs::create_dir_all(parent) {
        return Err(Report::error(
            NOT_RUN,
            format!("Clone failed: cannot create {}: {e}", parent.display()),
        ));
    }
    let args: [&OsStr; 6] = [
        OsStr::new("clone"),
        OsStr::new("--branch"),
        OsStr::new(&config.branch),
        OsStr::new("--"),
        OsStr::new(url),
        dir.as_os_str(),
    ];
    step(sink, ctl, env, "Clone", OsStr::new("git"), &args, parent)
        .await
        .map(|_| ())
}

/// Runs one step; a non-zero exit or a failed start is the failure report.
async fn step(
    sink: &Sink,
    ctl: &Control,
    env: &ChildEnv,
    what: &str,
    program: &OsStr,
    args: &[&OsStr],
    cwd: &Path,
) -> Result<StepResult, Report> {
    if ctl.stop_cause().is_some() {
        return Err(Report::error(NOT_RUN, format!("{what}: not started")));
    }
    let spec = Spec { program, args, cwd };
    match run_step(sink, ctl, env, &spec).await {
        Err(e) => Err(Report::error(
            127,
            format!(
                "{what} failed: cannot start {}: {e}",
                program.to_string_lossy()
            ),
        )),
        Ok(r) if r.code != 0 => Err(Report::error(
            r.code,
            failed_message(
                what,
                &spec.label(),
                r.code,
                &failure_tail(&r.stderr, &r.stdout),
            ),
        )),
        Ok(r) => Ok(r),
    }
}

/// One run of a command on its task.
struct Run {
    commands: Commands,
    sink: Sink,
    ctl: Arc<Control>,
    /// The switch record this run started or adopted, marked reported at the end.
    record: Option<Record>,
    /// Whether the run began a system phase (System is `working`).
    switched: bool,
    /// The test run's dots, once it began.
    test_dots: Option<TestDots>,
}

impl Run {
    fn inner(&self) -> &Inner {
        &self.commands.inner
    }

    async fn git(&self, what: &str, args: &[&str]) -> Result<StepResult, Report> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let inner = self.inner();
        step(
            &self.sink,
            &self.ctl,
            &inner.env,
            what,
            OsStr::new("git"),
            &args,
            &inner.config.repo_dir,
        )
        .await
    }

    /// `pull` with its progress dots and the System compartment after it.
    async fn pull(&mut self) -> Result<String, Report> {
        let commands = self.commands.clone();
        let row = commands.row();
        row.begin(Phase::Pull);
        let before = host::git_head_commit(&self.inner().config.repo_dir).unwrap_or_default();
        let result = self.pull_steps().await;
        match &result {
            Ok(_) => {
                row.end(Phase::Pull, PhaseEnd::Complete);
                let after =
                    host::git_head_commit(&self.inner().config.repo_dir).unwrap_or_default();
                if after != before {
                    row.pulled_new_commit();
                }
                // The heartbeat right after the status must carry the new
                // lock hash and Lock: a hub with version tracking runs the
                // pull's post-check (Lock ok) on that heartbeat.
                let repo = self.inner().config.repo_dir.clone();
                if let Ok(hash) =
                    tokio::task::spawn_blocking(move || host::flake_lock_hash(&repo)).await
                {
                    self.inner().state.set_lock_hash(hash);
                }
                self.commands.refresh_lock().await;
            }
            Err(_) => row.end(Phase::Pull, PhaseEnd::Failed),
        }
        result
    }

    async fn pull_steps(&mut self) -> Result<String, Report> {
        let config = self.inner().config.clone();
        let repo = &config.repo_dir;
        let before = host::git_head_commit(repo).unwrap_or_default();
        match &config.repo_mode {
            RepoMode::Isolated { url } => {
                if is_git_checkout(repo) {
                    let origin = format!("origin/{}", config.branch);
                    self.git("Pull", &["remote", "set-url", "origin", url])
                        .await?;
                    self.git("Pull", &["fetch", "origin", &config.branch])
                        .await?;
                    self.git("Pull", &["reset", "--hard", &origin]).await?;
                    self.git("Pull", &["clean", "-fd"]).await?;
                } else {
                    clone_repo(&self.sink, &self.ctl, &self.inner().env, &config, url)
                        .await
                        .map_err(|mut r| {
                            r.message = format!("Pull failed: {}", r.message);
                            r
                        })?;
                }
            }
            RepoMode::Legacy => {
                if !repo.is_dir() {
                    return Err(Report::error(
                        NOT_RUN,
                        format!(
                            "Pull failed: the repository directory {} does not exist",
                            repo.display()
                        ),
                    ));
                }
                self.git("Pull", &["pull"]).await?;
            }
        }
        let after = host::git_head_commit(repo).unwrap_or_default();
        let state = &self.inner().state;
        state.set_generation(&after);
        state.request_refresh();
        Ok(if after.is_empty() {
            "Pull: done".to_string()
        } else if after == before {
            format!("Pull: Already at {}", short(&after))
        } else {
            format!("Pull: Updated to {}", short(&after))
        })
    }

    async fn switch(&mut self, command: CommandName) -> Result<String, Report> {
        if self.ctl.stop_cause().is_some() {
            return Err(Report::error(NOT_RUN, "Switch: not started".to_string()));
        }
        self.commands.row().begin(Phase::System);
        self.switched = true;
        let config = self.inner().config.clone();
        let argv = switch::argv(config.switch_tool.program(), &config.flake);
        let root = config.state_dir.join("switch");
        let record = Record::create(&root, command.as_str(), &argv).map_err(|e| {
            Report::error(
                NOT_RUN,
                format!(
                    "Switch failed: cannot prepare the switch record in {}: {e}",
                    root.display()
                ),
            )
        })?;
        self.record = Some(record.clone());
        self.ctl.set_detached();
        let child = record
            .spawn_supervisor(&self.inner().env, &config.repo_dir)
            .map_err(|e| {
                Report::error(
                    127,
                    format!("Switch failed: cannot start the switch supervisor: {e}"),
                )
            })?;
        if let Some(pid) = child.id() {
            self.ctl.publish_pid(pid);
        }
        let ended = switch::follow(&record, &self.sink, &self.ctl, Some(child), false).await;
        switch_report(&record, ended)
    }

    async fn pull_switch(&mut self) -> Result<Report, Report> {
        let pulled = self.pull().await?;
        let switched = self
            .switch(CommandName::PullSwitch)
            .await
            .map_err(|r| r.after(&pulled))?;
        Ok(Report::ok(format!("{pulled}; {switched}")).with_restart())
    }

    async fn update(&mut self) -> Result<Report, Report> {
        let args: [&OsStr; 4] = [
            OsStr::new("--extra-experimental-features"),
            OsStr::new("nix-command flakes"),
            OsStr::new("flake"),
            OsStr::new("update"),
        ];
        let inner = self.inner();
        step(
            &self.sink,
            &self.ctl,
            &inner.env,
            "Update",
            OsStr::new("nix"),
            &args,
            &inner.config.repo_dir,
        )
        .await?;
        self.inner().state.request_refresh();
        let updated = "Update: flake inputs updated";
        let switched = self
            .switch(CommandName::Update)
            .await
            .map_err(|r| r.after(updated))?;
        Ok(Report::ok(format!("{updated}; {switched}")).with_restart())
    }

    async fn test(&mut self) -> Report {
        let config = self.inner().config.clone();
        let dir = host_tests::tests_dir(&config.repo_dir, &config.hostname);
        let scripts = host_tests::discover(&dir);
        let total = u32::try_from(scripts.len()).unwrap_or(u32::MAX);
        let out = self.inner().out.clone();
        let progress = |current: u32, passed: u32, running: bool, result: String| {
            out.reliable(Outgoing::TestProgress(TestProgress {
                current,
                total,
                passed,
                running,
                result,
            }));
        };
        self.commands.row().tests_begin(scripts.len());
        self.test_dots = Some(TestDots::new(scripts.len()));
        if scripts.is_empty() {
            self.sink
                .note(format!("[nixfleet-agent] no tests in {}", dir.display()))
                .await;
            progress(0, 0, false, "no tests".to_string());
            return Report::ok("no tests".to_string());
        }
        let mut current = 0u32;
        let mut passed = 0u32;
        let mut failed: Vec<String> = Vec::new();
        let mut last_code = NOT_RUN;
        for script in &scripts {
            if self.ctl.stop_cause().is_some() {
                break;
            }
            let name = host_tests::name_of(script);
            self.sink.note(format!("==> {name}")).await;
            let spec = Spec {
                program: script.as_os_str(),
                args: &[],
                cwd: &config.repo_dir,
            };
            let verdict = match run_step(&self.sink, &self.ctl, &self.inner().env, &spec).await {
                Ok(r) if r.code == 0 => {
                    last_code = 0;
                    passed += 1;
                    "passed".to_string()
                }
                Ok(r) => {
                    last_code = r.code;
                    failed.push(name.clone());
                    format!("FAILED (exit {})", r.code)
                }
                Err(e) => {
                    last_code = 127;
                    failed.push(name.clone());
                    format!("FAILED (cannot start: {e})")
                }
            };
            self.sink.note(format!("<== {name} {verdict}")).await;
            let index = current as usize;
            current += 1;
            if let Some(dots) = &mut self.test_dots {
                dots.record(index, verdict == "passed");
            }
            if self.ctl.stop_cause().is_some() {
                break;
            }
            if current < total {
                progress(current, passed, true, String::new());
                if let Some(dots) = &self.test_dots {
                    self.commands.row().tests_dots(dots, "in_progress");
                }
            }
        }
        let stopped = self.ctl.stop_cause().is_some();
        let summary = format!("{passed}/{total} passed");
        progress(
            current,
            passed,
            false,
            if stopped {
                format!("{summary} (stopped)")
            } else {
                summary.clone()
            },
        );
        let mut report = if failed.is_empty() && current == total {
            Report::ok(summary)
        } else if failed.is_empty() {
            Report::error(NOT_RUN, summary)
        } else {
            Report::error(1, format!("{summary}; failed: {}", failed.join(", ")))
        };
        if stopped {
            // the exit code of the script the stop ended (128 + signal)
            report.exit_code = last_code;
        }
        report.stop_detail = Some(format!(
            "{passed}/{total} tests passed, {current} run before the stop"
        ));
        report
    }

    /// The compartments and the last dots after the run (before its status,
    /// so that the heartbeat after the status carries them).
    fn settle_row(&self, report: &Report) {
        let row = self.commands.row();
        match CommandName::parse(self.ctl.name()) {
            Some(CommandName::Test) => {
                if let Some(dots) = &self.test_dots {
                    row.tests_result(dots, report.outcome, &report.message);
                }
            }
            Some(c) if self.switched => {
                row.system_result(system_label(c), report.outcome, report.exit_code)
            }
            _ => {}
        }
    }

    /// Reports the run: the slot is released first, then the status queued,
    /// then the switch record marked, then (after a successful switch) the
    /// agent asked to exit for a restart.
    fn finish(self, mut report: Report) {
        if let Some(cause) = self.ctl.stop_cause()
            && report.outcome != Outcome::Ok
        {
            report.outcome = Outcome::Stopped;
            report.restart = false;
            report.message = match &report.stop_detail {
                Some(detail) => format!("{} ({detail})", stopped_message(cause)),
                None => stopped_message(cause).to_string(),
            };
        }
        let inner = self.inner();
        let command = self.ctl.name().to_string();
        self.sink.log().note(&format!(
            "[nixfleet-agent] {command} ended: {:?} (exit {}): {}",
            report.outcome, report.exit_code, report.message
        ));
        tracing::info!(
            "{command} ended: {:?} (exit {})",
            report.outcome,
            report.exit_code
        );
        self.settle_row(&report);
        self.commands.release(&self.ctl);
        let restart = report.restart;
        self.commands.send_status(report, &command);
        if let Some(record) = &self.record {
            record.mark_reported();
            switch::prune(&inner.config.state_dir.join("switch"), switch::KEEP_RECORDS);
        }
        if restart {
            inner.exiting.store(true, Ordering::SeqCst);
            inner.state.request_exit(EXIT_RESTART);
        }
        self.ctl.finish();
    }
}

#[cfg(test)]
mod tests;
