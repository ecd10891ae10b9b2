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
//!   one by one to [`Outbound::line`], which waits while the dashboard drains
//!   (the child then meets ordinary pipe backpressure) and drops, counted, when
//!   it is stuck. The last lines of each stream are kept in a [`Tail`] for the
//!   status message.
//! - When the child has exited but something it left behind (a background
//!   grandchild) still holds the pipes open, the reader waits
//!   [`DRAIN_AFTER_EXIT`] for the rest of the output, then kills what is left of
//!   the process group and stops reading.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::env::ChildEnv;
use super::runlog::RunLog;
use crate::outbound::{Line, Outbound};
use crate::protocol::Stream;
use crate::state::{AgentState, Running};

/// Longest line sent or logged, in bytes; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;
/// Size of one read from a pipe or file.
pub const READ_CHUNK: usize = 64 * 1024;
/// How long output is still read after the child exited (from processes it left).
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Lines kept per stream for the status message.
pub const TAIL_LINES: usize = 12;
/// Longest line kept in a [`Tail`], in bytes.
pub const TAIL_LINE_BYTES: usize = 300;

/// Splits a byte stream into lines of at most `max` bytes without copying
/// them: lines are ranges into its buffer, valid until the next
/// [`Splitter::spare`].
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    start: usize,
    scan: usize,
    end: usize,
    max: usize,
    chunk: usize,
}

impl Splitter {
    /// A splitter for lines of at most `max` bytes, reading `chunk` bytes at a time.
    pub fn new(max: usize, chunk: usize) -> Splitter {
        let max = max.max(4);
        let chunk = chunk.max(1);
        Splitter {
            buf: vec![0; max + chunk],
            start: 0,
            scan: 0,
            end: 0,
            max,
            chunk,
        }
    }

    /// Room to read into (at least `chunk` bytes). Moves a pending partial line
    /// to the front, which invalidates earlier ranges.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < self.chunk && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scan -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`Splitter::spare`] as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete (or over-long) line, as a range for [`Splitter::get`].
    pub fn next_line(&mut self) -> Option<(usize, usize)> {
        // A newline right after `max` bytes still ends a line of `max` bytes.
        let limit = self.end.min(self.start + self.max + 1);
        if let Some(pos) = self.buf[self.scan..limit].iter().position(|&b| b == b'\n') {
            let nl = self.scan + pos;
            let mut end = nl;
            if end > self.start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = (self.start, end.min(self.start + self.max));
            self.start = nl + 1;
            self.scan = self.start;
            return Some(line);
        }
        if self.end - self.start > self.max {
            let cut = self.cut_point();
            let line = (self.start, self.start + cut);
            self.start += cut;
            self.scan = self.start;
            return Some(line);
        }
        self.scan = limit;
        None
    }

    /// Where to split an over-long line: at `max`, moved back to the start of
    /// a UTF-8 character that would otherwise be cut in two.
    fn cut_point(&self) -> usize {
        let is_continuation = |b: u8| b & 0xC0 == 0x80;
        let mut cut = self.max;
        let mut back = 0;
        while back < 3 && is_continuation(self.buf[self.start + cut]) {
            cut -= 1;
            back += 1;
        }
        if is_continuation(self.buf[self.start + cut]) || cut == 0 {
            self.max
        } else {
            cut
        }
    }

    /// At the end of the stream: the last line if it had no newline.
    pub fn finish(&mut self) -> Option<(usize, usize)> {
        if self.end > self.start {
            let mut end = self.end;
            if self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = (self.start, end);
            self.start = self.end;
            self.scan = self.end;
            Some(line)
        } else {
            None
        }
    }

    /// The bytes of a line range.
    pub fn get(&self, (from, to): (usize, usize)) -> &[u8] {
        &self.buf[from..to]
    }
}

/// The last lines of a stream, kept with a bounded size.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    /// Remembers a line, forgetting the oldest beyond [`TAIL_LINES`].
    pub fn push(&mut self, line: &str) {
        let mut slot = if self.lines.len() >= TAIL_LINES {
            self.lines.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        slot.clear();
        slot.push_str(clip(line, TAIL_LINE_BYTES));
        self.lines.push_back(slot);
    }

    /// True if no line was kept.
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.trim().is_empty())
    }

    /// The kept lines, one per line.
    pub fn text(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        lines.join("\n").trim().to_string()
    }

    /// The tail of the last lines of `bytes` (e.g. the end of a file).
    pub fn from_bytes(bytes: &[u8]) -> Tail {
        let mut tail = Tail::default();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            tail.push(line);
        }
        tail
    }
}

/// The most useful tail for a failure message: stderr's, else stdout's.
pub fn failure_tail(stderr: &Tail, stdout: &Tail) -> String {
    if stderr.is_empty() {
        stdout.text()
    } else {
        stderr.text()
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

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

    /// The current process group is gone.
    pub fn detach(&self) {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
}

impl Sink {
    /// Lines of `command`, to `out` (or to the agent's log when `None`) and `log`.
    pub fn new(command: &str, out: Option<Arc<Outbound>>, log: Arc<RunLog>) -> Sink {
        Sink {
            command: command.to_string(),
            out,
            log,
        }
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
        for (i, &r) in ranges.iter().enumerate() {
            let text = String::from_utf8_lossy(split.get(r)).into_owned();
            if i >= tail_from {
                tail.push(&text);
            }
            self.send(stream, text).await;
        }
    }

    /// Text written by the agent itself (a test's name, a resumed switch):
    /// one `output` frame per line, as the protocol wants.
    pub async fn note(&self, text: String) {
        if !text.contains(['\n', '\r']) {
            self.log.note(&text);
            return self.send(Stream::Stdout, text).await;
        }
        for line in text.lines() {
            self.log.note(line);
            self.send(Stream::Stdout, line.to_string()).await;
        }
    }

    async fn send(&self, stream: Stream, text: String) {
        match &self.out {
            Some(out) => {
                out.line(Line {
                    command: self.command.clone(),
                    stream,
                    text,
                })
                .await;
            }
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
            label.push_str(&arg.to_string_lossy());
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
    ctl.detach();
    let status = status?;
    Ok(StepResult {
        code: exit_code(status),
        stdout: out_tail,
        stderr: err_tail,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outbound::{self, OutboundRx};
    use std::ffi::OsString;

    /// Waits (up to 5 s) for `pid` to be gone or a zombie (a killed orphan
    /// waits for its new parent to reap it).
    pub(crate) fn gone(pid: i32) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            let dead = match stat {
                // SAFETY: probing with signal 0 (systems without /proc).
                Err(_) if !Path::new("/proc/self").exists() => unsafe { libc::kill(pid, 0) != 0 },
                Err(_) => true,
                Ok(s) => s
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            };
            if dead {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn split_all(input: &[u8], max: usize, chunk: usize) -> Vec<Vec<u8>> {
        let mut s = Splitter::new(max, chunk);
        let mut lines = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let spare = s.spare();
            let n = spare.len().min(rest.len()).min(chunk);
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            s.commit(n);
            while let Some(r) = s.next_line() {
                lines.push(s.get(r).to_vec());
            }
        }
        if let Some(r) = s.finish() {
            lines.push(s.get(r).to_vec());
        }
        lines
    }

    #[test]
    fn splits_lines_across_chunks() {
        for chunk in [1, 2, 3, 7, 64] {
            let lines = split_all(b"a\nbb\r\n\nccc\nlast", 16, chunk);
            assert_eq!(
                lines,
                vec![
                    b"a".to_vec(),
                    b"bb".to_vec(),
                    b"".to_vec(),
                    b"ccc".to_vec(),
                    b"last".to_vec()
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn long_lines_are_split_at_max() {
        let mut input = vec![b'x'; 10];
        input.push(b'\n');
        input.extend_from_slice(&[b'y'; 8]);
        input.push(b'\n');
        for chunk in [1, 3, 100] {
            let lines = split_all(&input, 4, chunk);
            assert_eq!(
                lines,
                vec![
                    b"xxxx".to_vec(),
                    b"xxxx".to_vec(),
                    b"xx".to_vec(),
                    b"yyyy".to_vec(),
                    b"yyyy".to_vec()
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn split_respects_utf8_characters() {
        // "aé€" = 61 | c3 a9 | e2 82 ac; max 4 would cut the euro sign.
        let lines = split_all("aé€b\n".as_bytes(), 4, 64);
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8(l.clone()).unwrap())
            .collect();
        assert_eq!(text, vec!["aé", "€b"]);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed: u32 = 12345;
        for _ in 0..200 {
            let len = (seed % 300) as usize;
            let mut data = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let b = (seed >> 16) as u8;
                data.push(if b.is_multiple_of(7) { b'\n' } else { b });
            }
            for (max, chunk) in [(4, 1), (5, 3), (16, 7)] {
                let lines = split_all(&data, max, chunk);
                assert!(lines.iter().all(|l| l.len() <= max));
                let total: usize = lines.iter().map(Vec::len).sum();
                assert!(total <= data.len());
            }
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        assert!(t.is_empty());
        for i in 0..100 {
            t.push(&format!("line {i}"));
        }
        let text = t.text();
        assert!(text.starts_with(&format!("line {}", 100 - TAIL_LINES)));
        assert!(text.ends_with("line 99"));
        t.push(&"é".repeat(1000));
        assert!(t.text().len() < 100 * TAIL_LINES + TAIL_LINE_BYTES);
    }

    struct Harness {
        out: Arc<Outbound>,
        collector: tokio::task::JoinHandle<Vec<(Stream, String)>>,
    }

    fn harness() -> Harness {
        let (out, rx) = outbound::lanes(Duration::from_secs(5));
        out.set_connected(true);
        let consumer = Arc::downgrade(&out);
        let collector = tokio::spawn(async move {
            let OutboundRx { mut output, .. } = rx;
            let mut lines = Vec::new();
            while let Some(line) = output.recv().await {
                if let Some(c) = consumer.upgrade() {
                    c.note_consumed(1, line.weight());
                }
                lines.push((line.stream, line.text));
            }
            lines
        });
        Harness { out, collector }
    }

    fn sh(script: &str) -> Vec<OsString> {
        vec![OsString::from("-c"), OsString::from(script)]
    }

    async fn run_sh(
        out: &Arc<Outbound>,
        ctl: &Arc<Control>,
        log: Arc<RunLog>,
        script: &str,
    ) -> StepResult {
        let sink = Sink::new("test", Some(out.clone()), log);
        let env = ChildEnv::from_process(Path::new("/tmp"), &crate::config::SshSettings::default());
        let args = sh(script);
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let spec = Spec {
            program: OsStr::new("sh"),
            args: &args,
            cwd: Path::new("/"),
        };
        run_step(&sink, ctl, &env, &spec).await.unwrap()
    }

    #[tokio::test]
    async fn streams_both_streams_and_logs() {
        let h = harness();
        let tmp = tempfile::tempdir().unwrap();
        let log = Arc::new(RunLog::create(tmp.path(), "test"));
        let ctl = Control::new("test", None);
        let r = run_sh(
            &h.out,
            &ctl,
            log.clone(),
            "echo one; echo err >&2; printf 'no newline\\377'; exit 3",
        )
        .await;
        assert_eq!(r.code, 3);
        assert_eq!(r.stderr.text(), "err");
        drop(h.out);
        let lines = h.collector.await.unwrap();
        assert!(lines.contains(&(Stream::Stdout, "one".into())));
        assert!(lines.contains(&(Stream::Stderr, "err".into())));
        assert!(lines.contains(&(Stream::Stdout, "no newline\u{FFFD}".into())));
        log.flush().await;
        let logged = std::fs::read(log.path().unwrap()).unwrap();
        assert!(logged.windows(4).any(|w| w == b"one\n"));
        assert!(logged.windows(11).any(|w| w == b"no newline\xff"));
        assert!(ctl.current_pid() > 1);
    }

    #[tokio::test]
    async fn environment_is_clean() {
        let h = harness();
        let ctl = Control::new("test", None);
        // The test process itself may have any variables; the child sees none
        // but the whitelisted ones.
        let r = run_sh(
            &h.out,
            &ctl,
            Arc::new(RunLog::disabled()),
            "env | cut -d= -f1 | sort | tr '\\n' ' '",
        )
        .await;
        assert_eq!(r.code, 0);
        drop(h.out);
        let lines = h.collector.await.unwrap();
        let names = &lines[0].1;
        for name in names.split_whitespace() {
            let allowed = super::super::env::PASSED.contains(&name)
                || [
                    "PATH",
                    "HOME",
                    "GIT_TERMINAL_PROMPT",
                    "GIT_SSH_COMMAND",
                    "PWD",
                    "SHLVL",
                    "_",
                    "OLDPWD",
                ]
                .contains(&name);
            assert!(allowed, "{name} leaked into the child environment");
        }
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group() {
        let h = harness();
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("grandchild");
        let ctl = Control::new("test", None);
        let c2 = ctl.clone();
        let pf = pidfile.clone();
        let stopper = tokio::spawn(async move {
            // wait for the grandchild to exist, then stop
            while std::fs::read_to_string(&pf)
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            c2.request_stop(StopCause::User, libc::SIGTERM);
        });
        let script = format!(
            "sleep 1000 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
            pidfile.display()
        );
        let started = std::time::Instant::now();
        let r = run_sh(&h.out, &ctl, Arc::new(RunLog::disabled()), &script).await;
        stopper.await.unwrap();
        assert_eq!(r.code, 128 + libc::SIGTERM);
        assert!(started.elapsed() < Duration::from_secs(10));
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            gone(grandchild),
            "grandchild {grandchild} survived the stop"
        );
        assert_eq!(ctl.stop_cause(), Some(StopCause::User));
    }

    #[tokio::test]
    async fn leftover_background_process_does_not_hang_the_run() {
        let h = harness();
        let ctl = Control::new("test", None);
        let started = std::time::Instant::now();
        let r = run_sh(
            &h.out,
            &ctl,
            Arc::new(RunLog::disabled()),
            "sleep 1000 & echo started",
        )
        .await;
        assert_eq!(r.code, 0);
        assert!(started.elapsed() < DRAIN_AFTER_EXIT + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn spawn_failure_is_an_error() {
        let (out, _rx) = outbound::lanes(Duration::from_secs(1));
        let sink = Sink::new("pull", Some(out), Arc::new(RunLog::disabled()));
        let ctl = Control::new("pull", None);
        let env = ChildEnv::from_process(Path::new("/tmp"), &crate::config::SshSettings::default());
        let spec = Spec {
            program: OsStr::new("nixfleet-no-such-program"),
            args: &[],
            cwd: Path::new("/"),
        };
        assert!(run_step(&sink, &ctl, &env, &spec).await.is_err());
    }

    /// A million short lines flow through in order and quickly (debug builds
    /// are slower; the rate is printed, the order and count are asserted).
    #[tokio::test]
    async fn a_million_lines_in_order() {
        let h = harness();
        let tmp = tempfile::tempdir().unwrap();
        let log = Arc::new(RunLog::create(tmp.path(), "test"));
        let ctl = Control::new("test", None);
        let started = std::time::Instant::now();
        let r = run_sh(&h.out, &ctl, log.clone(), "seq 1 1000000").await;
        let elapsed = started.elapsed();
        assert_eq!(r.code, 0);
        drop(h.out);
        let lines = h.collector.await.unwrap();
        assert_eq!(lines.len(), 1_000_000);
        for (i, (stream, text)) in lines.iter().enumerate() {
            assert_eq!(*stream, Stream::Stdout);
            assert_eq!(text, &(i + 1).to_string());
        }
        eprintln!(
            "1,000,000 lines in {elapsed:?} ({:.0} lines/s)",
            1e6 / elapsed.as_secs_f64()
        );
        log.flush().await;
        let logged = std::fs::metadata(log.path().unwrap()).unwrap().len();
        assert_eq!(logged, 6_888_896);
    }
}
