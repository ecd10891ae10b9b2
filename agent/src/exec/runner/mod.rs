//! Runs one child process of a command and streams its output.
//!
//! - The child starts in its **own process group** (`process_group(0)`), with
//!   the clean environment of [`ChildEnv`], stdin from `/dev/null` and stdout
//!   and stderr piped. Its PID (= the group's id) is published through the
//!   run's [`Control`], so heartbeats show it and `stop` signals the group.
//! - Both pipes are read concurrently in large chunks and split into lines by a
//!   [`Splitter`]: a line longer than [`MAX_LINE`] bytes is split (at a UTF-8
//!   character boundary when there is one), `\r\n` endings lose the `\r`, and
//!   invalid UTF-8 is replaced (lossy), so no output can make the agent panic or
//!   grow without bound.
//! - Each chunk's lines go to the run's [`RunLog`] in one buffered write, then
//!   as their `output` frames, up to [`BATCH_LINES`] in one buffer
//!   ([`LineBatch`]), to [`Outbound::lines`], which waits while the dashboard
//!   drains (the child then meets ordinary pipe backpressure) and drops them,
//!   counted, when it is stuck. The last lines of each stream are kept in a [`Tail`] for the
//!   status message.
//! - When the child has exited but something it left behind (a background
//!   grandchild) still holds the pipes open, the reader waits
//!   [`DRAIN_AFTER_EXIT`] for the rest of the output, then kills what is left of
//!   the process group and stops reading.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::lock;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

mod lines;
pub use lines::{MAX_LINE, READ_CHUNK, Splitter, TAIL_LINES, Tail, clip, failure_tail};

use super::env::ChildEnv;
use super::runlog::RunLog;
use crate::outbound::{BATCH_LINES, LineBatch, Lines, Outbound};
use crate::protocol::Stream;
use crate::state::{AgentState, Running};

/// How long output is still read after the child exited (from processes it left).
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Why a run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// `stop` or `kill_command` from the dashboard.
    User,
    /// The agent is shutting down (SIGTERM/SIGINT).
    Shutdown,
    /// The agent is restarting (`restart`).
    Restart,
    /// The host is about to reboot (`reboot`).
    Reboot,
}

/// The handle of one command run: its name, its current process group, and
/// whether (and why) it was asked to stop. Shared by the run's task and the
/// frame handler that delivers `stop`/`kill_command`.
#[derive(Debug)]
pub struct Control {
    name: String,
    state: Option<Arc<AgentState>>,
    pgid: AtomicI32,
    detached: AtomicBool,
    pids: Mutex<Vec<u32>>,
    stop: Mutex<Option<(StopCause, i32)>>,
    done: watch::Sender<bool>,
}

impl Control {
    /// A run of `name`; `state` receives its PIDs for the heartbeats.
    pub fn new(name: &str, state: Option<Arc<AgentState>>) -> Arc<Control> {
        Arc::new(Control {
            name: name.to_string(),
            state,
            pgid: AtomicI32::new(0),
            detached: AtomicBool::new(false),
            pids: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            done: watch::Sender::new(false),
        })
    }

    /// The command's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new process group leader of this run: publishes its PID and, if a
    /// stop was already requested, signals it at once. `detached` marks a
    /// switch in its own session, which agent shutdown leaves running.
    pub fn attach(&self, pid: u32, detached: bool) {
        let Ok(pgid) = i32::try_from(pid) else {
            return;
        };
        self.detached.store(detached, Ordering::SeqCst);
        self.pgid.store(pgid, Ordering::SeqCst);
        self.publish_pid(pid);
        let requested = *lock(&self.stop);
        if let Some((_, sig)) = requested {
            signal_group(pgid, sig);
        }
    }

    /// Publishes a PID of this run that is not a process group to signal
    /// (the switch supervisor, until the tool's PID is known).
    ///
    /// The run shows in the heartbeats from its first PID on (a heartbeat
    /// never carries a command without a process).
    pub fn publish_pid(&self, pid: u32) {
        lock(&self.pids).push(pid);
        if let Some(state) = &self.state {
            match state.running() {
                Some(r) if r.command == self.name => state.set_pid(pid),
                _ => state.set_running(Some(Running {
                    command: self.name.clone(),
                    pid,
                })),
            }
        }
    }

    /// The current step (and its process group) is over: nothing left to
    /// signal, and no longer a detached switch.
    pub fn step_ended(&self) {
        self.pgid.store(0, Ordering::SeqCst);
        self.detached.store(false, Ordering::SeqCst);
    }

    /// Marks the current step as a detached switch from the moment it is
    /// being started (before its process group is known), so that agent
    /// shutdown leaves it alone.
    pub fn set_detached(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// True while the current step is a detached switch.
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }

    /// The PID shown for this run (its latest process group leader), 0 if none yet.
    pub fn current_pid(&self) -> u32 {
        lock(&self.pids).last().copied().unwrap_or(0)
    }

    /// True if `pid` is a process this run started (the dashboard may name an
    /// earlier step's PID of a multi-step command).
    pub fn owns_pid(&self, pid: i64) -> bool {
        lock(&self.pids).iter().any(|&p| i64::from(p) == pid)
    }

    /// Asks the run to stop: no further step starts, and the current process
    /// group gets `sig`. A later request may only make the signal stronger.
    pub fn request_stop(&self, cause: StopCause, sig: i32) {
        {
            let mut stop = lock(&self.stop);
            match *stop {
                None => *stop = Some((cause, sig)),
                Some((first, _)) => *stop = Some((first, sig)),
            }
        }
        self.signal(sig);
    }

    /// Why the run was asked to stop, if it was.
    pub fn stop_cause(&self) -> Option<StopCause> {
        lock(&self.stop).map(|(cause, _)| cause)
    }

    /// Sends `sig` to the current process group, if there is one.
    pub fn signal(&self, sig: i32) {
        signal_group(self.pgid.load(Ordering::SeqCst), sig);
    }

    /// Marks the run as finished.
    pub fn finish(&self) {
        self.done.send_replace(true);
    }

    /// Resolves when the run finished.
    pub async fn wait_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// Sends `sig` to process group `pgid`; never to group 0 (our own) or 1.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions; the group id is one
    // this run created (a child started with process_group(0)).
    let rc = unsafe { libc::killpg(pgid, sig) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("cannot signal process group {pgid}: {e}");
        }
    }
}

/// The exit code of a finished child: its status, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Where the lines of a run go: the dashboard (or the agent's own log, for
/// work nobody asked for), and the run's log file.
#[derive(Debug, Clone)]
pub struct Sink {
    command: String,
    out: Option<Arc<Outbound>>,
    log: Arc<RunLog>,
    /// Lines kept for the caller instead of being sent ([`Sink::capturing`]).
    captured: Option<Arc<Mutex<Captured>>>,
}

/// Lines a capturing sink keeps at most (the rest still reach the log).
pub const MAX_CAPTURED: usize = 100_000;
/// Bytes of lines a capturing sink keeps at most (the rest still reach the
/// log): a long line of 64 KiB a hundred thousand times is 6 GiB.
pub const MAX_CAPTURED_BYTES: usize = 8 * 1024 * 1024;

/// The lines a capturing sink kept, bounded by [`MAX_CAPTURED`] lines and
/// [`MAX_CAPTURED_BYTES`].
#[derive(Debug, Default)]
pub struct Captured {
    lines: Vec<String>,
    bytes: usize,
}

impl Captured {
    fn push(&mut self, line: String) {
        if self.lines.len() < MAX_CAPTURED && self.bytes + line.len() <= MAX_CAPTURED_BYTES {
            self.bytes += line.len();
            self.lines.push(line);
        }
    }

    /// The lines kept so far, leaving none.
    pub fn take(&mut self) -> Vec<String> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }
}

impl Sink {
    /// Lines of `command`, to `out` (or to the agent's log when `None`) and `log`.
    pub fn new(command: &str, out: Option<Arc<Outbound>>, log: Arc<RunLog>) -> Sink {
        Sink {
            command: command.to_string(),
            out,
            log,
            captured: None,
        }
    }

    /// Lines of `command` to `log` only, kept for the caller (bounded, see
    /// [`Captured`]): output the agent reads and summarises itself.
    pub fn capturing(command: &str, log: Arc<RunLog>) -> (Sink, Arc<Mutex<Captured>>) {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let sink = Sink {
            command: command.to_string(),
            out: None,
            log,
            captured: Some(captured.clone()),
        };
        (sink, captured)
    }

    /// The run's log file, shared (for another sink of the same run).
    pub fn log_handle(&self) -> Arc<RunLog> {
        self.log.clone()
    }

    /// The run's log file.
    pub fn log(&self) -> &RunLog {
        &self.log
    }

    /// Sends the lines `ranges` of `split` (one chunk's worth), remembering
    /// them in `tail`.
    pub async fn emit(
        &self,
        stream: Stream,
        split: &Splitter,
        ranges: &[(usize, usize)],
        tail: &mut Tail,
    ) {
        if ranges.is_empty() {
            return;
        }
        self.log
            .write_lines(ranges.iter().map(|&r| split.get(r)))
            .await;
        // only the last lines of a chunk can end up in the tail
        let tail_from = ranges.len().saturating_sub(TAIL_LINES);
        // lines kept for the caller, or logged for lack of a dashboard, are
        // never framed
        let sending = self.captured.is_none() && self.out.is_some();
        for (g, group) in ranges.chunks(BATCH_LINES).enumerate() {
            let bytes = group.iter().map(|&(a, b)| b - a).sum();
            let mut batch =
                sending.then(|| LineBatch::new(&self.command, stream, group.len(), bytes));
            // the group's lines checked as UTF-8 in one pass (the common
            // case); a line cut inside a character, or the lines of a group
            // that is not UTF-8, are checked alone
            let first = group.first().map_or(0, |r| r.0);
            let last = group.last().map_or(first, |r| r.1);
            let span = std::str::from_utf8(split.get((first, last))).ok();
            for (j, &r) in group.iter().enumerate() {
                // borrowed unless the bytes need repair: no copy of a valid line
                let text = match span
                    .and_then(|s| s.get(r.0.checked_sub(first)?..r.1.checked_sub(first)?))
                {
                    Some(line) => Cow::Borrowed(line),
                    None => String::from_utf8_lossy(split.get(r)),
                };
                if g * BATCH_LINES + j >= tail_from {
                    tail.push(&text);
                }
                match (&self.captured, &mut batch) {
                    (Some(captured), _) => lock(captured).push(text.into_owned()),
                    (None, Some(batch)) => batch.push(&text),
                    (None, None) => {
                        tracing::info!("{} {}: {text}", self.command, stream.as_str())
                    }
                }
            }
            if let (Some(out), Some(batch)) = (&self.out, batch) {
                out.lines(batch.into_lines()).await;
            }
        }
    }

    /// Text written by the agent itself (a test's name, a resumed switch):
    /// one `output` frame per line, as the protocol wants.
    pub async fn note(&self, text: String) {
        if !text.contains(['\n', '\r']) {
            self.log.note(&text);
            return self.send(Stream::Stdout, &text).await;
        }
        // one chunk for the log, waiting for room in its queue (a block of
        // notes, e.g. a preview, must not lose lines while it is full)
        self.log.write_lines(text.lines().map(str::as_bytes)).await;
        for line in text.lines() {
            self.send(Stream::Stdout, line).await;
        }
    }

    /// Lines of the agent's own for the dashboard only, one `output` frame
    /// each: the command's log got them (or more) another way, in order.
    pub async fn announce(&self, lines: &[String]) {
        for line in lines {
            self.send(Stream::Stdout, line).await;
        }
    }

    async fn send(&self, stream: Stream, text: &str) {
        match &self.out {
            Some(out) => out.lines(Lines::new(&self.command, stream, text)).await,
            None => tracing::info!("{} {}: {text}", self.command, stream.as_str()),
        }
    }
}

/// Reads `reader` to its end, sending every line to `sink`.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    sink: &Sink,
    tail: &mut Tail,
) {
    let mut split = Splitter::new(MAX_LINE, READ_CHUNK);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    loop {
        let n = match reader.read(split.spare()).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    "reading the {} of {} failed: {e}",
                    stream.as_str(),
                    sink.command
                );
                break;
            }
        };
        split.commit(n);
        ranges.clear();
        while let Some(r) = split.next_line() {
            ranges.push(r);
        }
        sink.emit(stream, &split, &ranges, tail).await;
    }
    ranges.clear();
    if let Some(r) = split.finish() {
        ranges.push(r);
        sink.emit(stream, &split, &ranges, tail).await;
    }
}

/// One process to run.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// The program, looked up on the child's `PATH` unless a path.
    pub program: &'a OsStr,
    /// Its arguments.
    pub args: &'a [&'a OsStr],
    /// Its working directory.
    pub cwd: &'a Path,
}

impl Spec<'_> {
    /// The command line for messages, e.g. `git fetch origin main`.
    pub fn label(&self) -> String {
        let mut label = self.program.to_string_lossy().into_owned();
        for arg in self.args {
            label.push(' ');
            // a repository URL's credential never reaches a message
            label.push_str(&crate::config::redact_repo_url(&arg.to_string_lossy()));
        }
        label
    }
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// Last stdout lines.
    pub stdout: Tail,
    /// Last stderr lines.
    pub stderr: Tail,
}

/// Runs one process to its end; `Err` only if it could not be started.
pub async fn run_step(
    sink: &Sink,
    ctl: &Control,
    env: &ChildEnv,
    spec: &Spec<'_>,
) -> std::io::Result<StepResult> {
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    env.apply(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    ctl.attach(pid, false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out_tail = Tail::default();
    let mut err_tail = Tail::default();
    let status = {
        let pumps = async {
            tokio::join!(
                async {
                    if let Some(r) = stdout {
                        pump(r, Stream::Stdout, sink, &mut out_tail).await;
                    }
                },
                async {
                    if let Some(r) = stderr {
                        pump(r, Stream::Stderr, sink, &mut err_tail).await;
                    }
                }
            )
        };
        let mut pumps = std::pin::pin!(pumps);
        let mut drained = false;
        let status = tokio::select! {
            _ = &mut pumps => {
                drained = true;
                child.wait().await
            }
            status = child.wait() => status,
        };
        if !drained
            && tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pumps)
                .await
                .is_err()
        {
            tracing::warn!(
                "{}: processes left behind by `{}` still hold its output open; killing its process group",
                sink.command,
                spec.label()
            );
            ctl.signal(libc::SIGKILL);
            if tokio::time::timeout(Duration::from_millis(500), &mut pumps)
                .await
                .is_err()
            {
                tracing::warn!("{}: no longer reading its leftover output", sink.command);
            }
        }
        status
    };
    ctl.step_ended();
    let status = status?;
    Ok(StepResult {
        code: exit_code(status),
        stdout: out_tail,
        stderr: err_tail,
    })
}

#[cfg(test)]
pub(crate) mod tests;
