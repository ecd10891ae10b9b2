//! The detached switch: runs the rebuild tool so that it finishes even if the
//! agent is restarted or killed meanwhile, and records how it ended.
//!
//! ## How
//!
//! The agent prepares a *switch record*, a directory
//! `<state>/switch/<unix-ms>-<agent-pid>/` (mode 0700) holding:
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `command` | agent | the dashboard command it belongs to (`switch`, `pull-switch`, `update`) |
//! | `argv` | agent | program and arguments, NUL-separated |
//! | `stdout.log`, `stderr.log` | supervisor and tool | the tool's output |
//! | `supervisor.pid` | agent and supervisor | PID of the supervisor, and the boot it runs in |
//! | `pid` | supervisor | PID of the tool = its process group |
//! | `exit` | supervisor | the tool's exit code (128 + signal if killed) |
//! | `exit.reserve` | agent | room for `exit` on a disk that fills up (freed by the supervisor when writing `exit` fails) |
//! | `reported` | agent | present once the final `status` was queued |
//! | `prefix` | agent | what came before the switch in the status message (a pull's result) |
//! | `watch`, `verdict`, … | agent and supervisor | the rollback watchdog's (`commands/watchdog.rs`) |
//!
//! Small files are written atomically (a temporary file of the writing
//! process's own, then rename), so two writers of `supervisor.pid` never
//! disturb each other.
//!
//! The agent then re-executes its own binary as `nixfleet-agent
//! --supervise-switch <record-dir>` ([`SUPERVISE_FLAG`], dispatched by `main` to
//! [`supervise_main`]) in a **new session** (`setsid` before exec), with the
//! clean child environment, stdin from `/dev/null` and stdout/stderr appended
//! to the record's log files — files, not pipes, so that nothing in the switch
//! gets SIGPIPE when the agent dies. The supervisor starts the tool in its own
//! process group (the target of `stop`), waits for it, writes `exit`, and
//! exits with the tool's code itself: the agent that started it learns the
//! code from the supervisor's exit status when `exit` could not be written.
//!
//! The agent follows the record: it polls the log files every [`POLL`] and
//! streams new lines as output, and reports the final `status` when `exit`
//! appears (with the output tail on failure). An agent that starts and finds
//! an unreported record reports a finished one at once and *adopts* one still
//! running: it shows it as the running command, streams the rest of its output
//! and reports when it ends. Each record is reported once; reported records are
//! pruned, keeping the last [`KEEP_RECORDS`].
//!
//! The service manager must not kill the agent's whole control group when the
//! agent stops (NixOS: `KillMode=process`; nix-darwin: `AbandonProcessGroup`),
//! or the switch dies with it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::env::ChildEnv;
use super::runlog::{create_private_dir, unique_millis};
use super::runner::{Control, READ_CHUNK, Sink, Splitter, Tail, exit_code, failure_tail};
use super::watchdog::{self, Watch};
use crate::protocol::Stream;

/// The hidden command-line flag that makes the binary a switch supervisor.
pub const SUPERVISE_FLAG: &str = "--supervise-switch";
/// How often a running switch's files are polled.
pub const POLL: Duration = Duration::from_millis(20);
/// Reported records kept for inspection.
pub const KEEP_RECORDS: usize = 10;
/// How much of the end of a log file is read for a failure message.
const TAIL_BYTES: u64 = 16 * 1024;

/// Exit code recorded when the tool could not be started.
pub const EXIT_NOT_STARTED: i32 = 127;

/// A file of [`RESERVE_BYTES`] made with the record: the room the exit code
/// needs on a disk that fills up while the switch runs.
const RESERVE: &str = "exit.reserve";
/// Several blocks' worth: the exit file, its temporary twin and the rename.
const RESERVE_BYTES: usize = 16 * 1024;

/// Entry point of the supervisor process (`nixfleet-agent --supervise-switch
/// <record-dir>`); returns the process's exit status.
///
/// Runs the record's `argv` in its own process group, with the supervisor's
/// environment, working directory and stdout/stderr (which the agent pointed
/// at the record's log files), waits for it and writes its exit code. Does not
/// call `setsid` itself: the agent starts it in a new session.
pub fn supervise_main(args: &[String]) -> i32 {
    let Some(dir) = args.first() else {
        eprintln!("nixfleet-agent: {SUPERVISE_FLAG} needs the switch record directory");
        return 2;
    };
    let record = Record::open(PathBuf::from(dir));
    if let Err(e) = record.write_supervisor_pid(std::process::id()) {
        eprintln!("nixfleet-agent: cannot write to the switch record {dir}: {e}");
    }
    // Started again after a reboot inside the confirmation window: the tool
    // succeeded before; guard the rest of the window.
    if record.exit_code() == Some(0)
        && let Some(watch) = Watch::load(&record)
    {
        return watchdog::guard(&record, &watch);
    }
    let argv = match record.argv() {
        Some(argv) => argv,
        None => {
            eprintln!("nixfleet-agent: the switch record {dir} has no command line");
            return record.finish_with(EXIT_NOT_STARTED);
        }
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "nixfleet-agent: cannot start {}: {e}",
                argv[0].to_string_lossy()
            );
            return record.finish_with(EXIT_NOT_STARTED);
        }
    };
    if let Err(e) = record.write_file("pid", child.id().to_string().as_bytes()) {
        eprintln!("nixfleet-agent: cannot record the switch's pid: {e}");
    }
    let code = match child.wait() {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("nixfleet-agent: waiting for the switch failed: {e}");
            1
        }
    };
    // a watched switch that succeeded, or that failed after activating the
    // new system (marked before its code is on record), waits for the new
    // generation's verdict
    let watch = Watch::load(&record).filter(|w| watchdog::note_tool_end(&record, w, code));
    let code = record.finish_with(code);
    if let Some(watch) = watch
        && record.exit_code() == Some(code)
        && watchdog::engaged(&record, code)
    {
        return watchdog::guard(&record, &watch);
    }
    code
}

/// One switch record directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    dir: PathBuf,
}

impl Record {
    /// The record in `dir`.
    pub fn open(dir: PathBuf) -> Record {
        Record { dir }
    }

    /// Prepares a new record under `root` for `command` running `argv`.
    pub fn create(root: &Path, command: &str, argv: &[OsString]) -> std::io::Result<Record> {
        create_private_dir(root)?;
        let mut millis = unique_millis();
        let dir = loop {
            let dir = root.join(format!("{millis:013}-{}", std::process::id()));
            match fs::DirBuilder::new().mode_private().create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => millis += 1,
                Err(e) => return Err(e),
            }
        };
        let record = Record { dir };
        record.write_file("command", command.as_bytes())?;
        let mut joined = Vec::new();
        for (i, arg) in argv.iter().enumerate() {
            if i > 0 {
                joined.push(0);
            }
            joined.extend_from_slice(arg.as_bytes());
        }
        record.write_file("argv", &joined)?;
        for name in ["stdout.log", "stderr.log"] {
            record.open_log(name)?;
        }
        // space for the exit code, freed by the supervisor if the disk fills
        record.write_file(RESERVE, &[b'.'; RESERVE_BYTES])?;
        Ok(record)
    }

    /// The record's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_log(&self, name: &str) -> std::io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.dir.join(name))
    }

    /// Writes a small file atomically (temporary file, fsync, rename). The
    /// temporary name is this process's own and this write's own, so that
    /// the agent and the supervisor (both write `supervisor.pid`, with the
    /// same content) never rename each other's file away.
    pub fn write_file(&self, name: &str, content: &[u8]) -> std::io::Result<()> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(name)).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// A small file of the record, trimmed (at most 4 KiB read).
    pub fn read_small(&self, name: &str) -> Option<String> {
        self.read_bounded(name, 4096)
    }

    /// A file of the record, trimmed, of at most `max` bytes read.
    pub fn read_bounded(&self, name: &str, max: u64) -> Option<String> {
        let mut s = String::new();
        File::open(self.dir.join(name))
            .ok()?
            .take(max)
            .read_to_string(&mut s)
            .ok()?;
        Some(s.trim().to_string())
    }

    /// Records the tool's exit code and returns it as the supervisor's own
    /// exit status, so that an agent waiting for the supervisor learns the
    /// code even when the record cannot be written. A write that fails (a
    /// full disk) is tried once more after freeing the space reserved for it
    /// when the record was made.
    fn finish_with(&self, code: i32) -> i32 {
        let text = code.to_string();
        if let Err(first) = self.write_file("exit", text.as_bytes()) {
            let _ = fs::remove_file(self.dir.join(RESERVE));
            if let Err(e) = self.write_file("exit", text.as_bytes()) {
                eprintln!(
                    "nixfleet-agent: cannot record the switch's exit code {code}: {first}; again: {e}"
                );
            }
        }
        code
    }

    /// The command line, program first.
    pub fn argv(&self) -> Option<Vec<OsString>> {
        let mut bytes = Vec::new();
        File::open(self.dir.join("argv"))
            .ok()?
            .take(64 * 1024)
            .read_to_end(&mut bytes)
            .ok()?;
        let argv: Vec<OsString> = bytes
            .split(|b| *b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        match argv.first() {
            Some(p) if !p.is_empty() => Some(argv),
            _ => None,
        }
    }

    /// The command line for messages.
    pub fn label(&self) -> String {
        self.argv()
            .map(|argv| {
                argv.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "switch".to_string())
    }

    /// The dashboard command this switch belongs to.
    pub fn command(&self) -> String {
        self.read_small("command").unwrap_or_default()
    }

    /// The tool's exit code, once it ended.
    pub fn exit_code(&self) -> Option<i32> {
        self.read_small("exit")?.parse().ok()
    }

    /// The tool's PID (its process group), once started.
    pub fn tool_pid(&self) -> Option<u32> {
        self.read_small("pid")?.parse().ok().filter(|&p| p > 1)
    }

    /// The supervisor's PID.
    pub fn supervisor_pid(&self) -> Option<u32> {
        let text = self.read_small("supervisor.pid")?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok().filter(|&p| p > 1)?;
        // a PID of another boot names some other process now (where no
        // /proc tells a supervisor from it, macOS)
        match lines.next() {
            Some(boot) if boot != this_boot() => None,
            _ => Some(pid),
        }
    }

    /// Records the supervisor's PID with the boot it runs in.
    pub fn write_supervisor_pid(&self, pid: u32) -> std::io::Result<()> {
        self.write_file(
            "supervisor.pid",
            format!("{pid}\n{}", this_boot()).as_bytes(),
        )
    }

    /// True once the final status was queued.
    pub fn is_reported(&self) -> bool {
        self.dir.join("reported").exists()
    }

    /// Marks the record as reported.
    pub fn mark_reported(&self) {
        if let Err(e) = self.write_file("reported", b"") {
            tracing::warn!(
                "cannot mark the switch record {} as reported: {e}; it may be reported again",
                self.dir.display()
            );
        }
    }

    /// True if the supervisor process is still there.
    pub fn supervisor_alive(&self) -> bool {
        self.supervisor_pid().is_some_and(is_supervisor)
    }

    /// The last lines of the switch's output, stderr first.
    pub fn tail(&self) -> String {
        let read_tail = |name: &str| -> Tail {
            let Ok(mut f) = File::open(self.dir.join(name)) else {
                return Tail::default();
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let from = len.saturating_sub(TAIL_BYTES);
            let mut bytes = Vec::new();
            if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
                return Tail::default();
            }
            if from > 0 {
                // drop the partial first line
                if let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
                    bytes.drain(..=nl);
                }
            }
            Tail::from_bytes(&bytes)
        };
        failure_tail(&read_tail("stderr.log"), &read_tail("stdout.log"))
    }

    /// Starts the supervisor for this record in a new session.
    pub fn spawn_supervisor(
        &self,
        env: &ChildEnv,
        cwd: &Path,
    ) -> std::io::Result<tokio::process::Child> {
        let exe = std::env::current_exe()?;
        let stdout = self.open_log("stdout.log")?;
        let stderr = self.open_log("stderr.log")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(SUPERVISE_FLAG)
            .arg(&self.dir)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        env.apply(&mut cmd);
        // SAFETY: the closure runs between fork and exec and only calls
        // setsid(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            // The supervisor writes it too; whichever is first helps a new
            // agent tell a live switch from a dead one.
            let _ = self.write_supervisor_pid(pid);
        }
        Ok(child)
    }
}

trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

/// True if `pid` is alive and (where `/proc` tells) a switch supervisor.
/// What identifies the current boot.
fn this_boot() -> String {
    super::reboot::boot_identity(Path::new(crate::config::BOOT_ID_FILE))
}

fn is_supervisor(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only probes for existence.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == SUPERVISE_FLAG.as_bytes()),
        // No /proc (macOS): trust the PID.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// The unreported records under `root`, oldest first.
pub fn pending(root: &Path) -> Vec<Record> {
    let mut records = all_records(root);
    records.retain(|r| !r.is_reported());
    records
}

fn all_records(root: &Path) -> Vec<Record> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_bytes();
            name.len() > 13 && name[..13].iter().all(u8::is_ascii_digit)
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter().map(Record::open).collect()
}

/// Deletes reported records beyond the newest `keep`.
pub fn prune(root: &Path, keep: usize) {
    let reported: Vec<Record> = all_records(root)
        .into_iter()
        .filter(Record::is_reported)
        .collect();
    if reported.len() <= keep {
        return;
    }
    for old in &reported[..reported.len() - keep] {
        if let Err(e) = fs::remove_dir_all(old.dir()) {
            tracing::debug!(
                "cannot remove old switch record {}: {e}",
                old.dir().display()
            );
        }
    }
}

/// How a followed switch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The tool exited with this code (128 + signal if killed).
    Exit(i32),
    /// The record has no exit code, but the supervisor's own exit status
    /// carried it (the record could not be written).
    Unrecorded(i32),
    /// The supervisor is gone without recording an exit code.
    Vanished,
}

/// Reads new bytes of one log file and sends its complete lines.
struct Follower {
    file: Option<File>,
    split: Splitter,
    tail: Tail,
    stream: Stream,
    ranges: Vec<(usize, usize)>,
}

impl Follower {
    fn new(path: &Path, stream: Stream, from_end: bool) -> Follower {
        let file = File::open(path).ok().map(|mut f| {
            if from_end {
                let _ = f.seek(SeekFrom::End(0));
            }
            f
        });
        Follower {
            file,
            split: Splitter::new(super::runner::MAX_LINE, READ_CHUNK),
            tail: Tail::default(),
            stream,
            ranges: Vec::new(),
        }
    }

    /// Sends everything written since the last call; true if anything was read.
    async fn drain(&mut self, sink: &Sink) -> bool {
        let mut any = false;
        loop {
            let Some(file) = self.file.as_mut() else {
                return any;
            };
            let n = match file.read(self.split.spare()) {
                Ok(0) => return any,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading the switch output failed: {e}");
                    self.file = None;
                    return any;
                }
            };
            any = true;
            self.split.commit(n);
            self.ranges.clear();
            while let Some(r) = self.split.next_line() {
                self.ranges.push(r);
            }
            sink.emit(self.stream, &self.split, &self.ranges, &mut self.tail)
                .await;
        }
    }

    async fn finish(&mut self, sink: &Sink) {
        self.drain(sink).await;
        self.ranges.clear();
        if let Some(r) = self.split.finish() {
            self.ranges.push(r);
            sink.emit(self.stream, &self.split, &self.ranges, &mut self.tail)
                .await;
        }
    }
}

/// Follows a running switch to its end: streams its output to `sink`,
/// publishes the tool's PID through `ctl` (so `stop` reaches it) and returns
/// how it ended. `own` is the supervisor when this agent started it;
/// `from_end` skips output written before (an adopted switch).
pub async fn follow(
    record: &Record,
    sink: &Sink,
    ctl: &Control,
    mut own: Option<tokio::process::Child>,
    from_end: bool,
) -> Ended {
    ctl.set_detached();
    let mut out = Follower::new(&record.dir.join("stdout.log"), Stream::Stdout, from_end);
    let mut err = Follower::new(&record.dir.join("stderr.log"), Stream::Stderr, from_end);
    let mut attached = false;
    let ended = loop {
        out.drain(sink).await;
        err.drain(sink).await;
        if !attached && let Some(pid) = record.tool_pid() {
            ctl.attach(pid, true);
            attached = true;
        }
        if let Some(code) = record.exit_code() {
            break Ended::Exit(code);
        }
        let (alive, own_exit) = match own.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => (true, None),
                Ok(Some(status)) => (false, status.code()),
                Err(_) => (false, None),
            },
            None => (record.supervisor_alive(), None),
        };
        if !alive {
            // It may have written `exit` just before it ended; else its own
            // exit status carries the tool's code (the record could not be
            // written, e.g. on a full disk).
            match (record.exit_code(), own_exit) {
                (Some(code), _) => break Ended::Exit(code),
                (None, Some(code)) => break Ended::Unrecorded(code),
                (None, None) => break Ended::Vanished,
            }
        }
        tokio::time::sleep(POLL).await;
    };
    out.finish(sink).await;
    err.finish(sink).await;
    ctl.step_ended();
    ended
}

/// The switch's program and arguments: `<tool> switch --flake <flake>`.
pub fn argv(program: &str, flake: &str) -> Vec<OsString> {
    ["switch", "--flake", flake]
        .iter()
        .fold(vec![OsString::from(program)], |mut v, a| {
            v.push(OsStr::new(a).to_owned());
            v
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_supervisor_pid_of_another_boot_names_nobody() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Record::create(&tmp.path().join("switch"), "switch", &argv("x", "y")).unwrap();
        r.write_supervisor_pid(4242).unwrap();
        assert_eq!(r.supervisor_pid(), Some(4242));
        r.write_file("supervisor.pid", b"4242\nanother boot")
            .unwrap();
        assert_eq!(r.supervisor_pid(), None, "a PID of another boot");
        // a record of an older agent, without the boot: the PID alone
        r.write_file("supervisor.pid", b"4242").unwrap();
        assert_eq!(r.supervisor_pid(), Some(4242));
    }

    fn fake_tool(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-rebuild");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn record_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("switch");
        let argv = argv("nixos-rebuild", "/etc/nixos#host one");
        let r = Record::create(&root, "pull-switch", &argv).unwrap();
        assert_eq!(r.command(), "pull-switch");
        assert_eq!(r.argv().unwrap(), argv);
        assert_eq!(
            r.label(),
            "nixos-rebuild switch --flake /etc/nixos#host one"
        );
        assert_eq!(r.exit_code(), None);
        assert!(!r.is_reported());
        assert_eq!(pending(&root), vec![r.clone()]);
        r.write_file("exit", b"3\n").unwrap();
        assert_eq!(r.exit_code(), Some(3));
        r.mark_reported();
        assert!(pending(&root).is_empty());
        assert_eq!(
            fs::metadata(r.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    /// The supervisor entry point, run in-process against a fake tool.
    #[test]
    fn supervisor_records_exit_code_and_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let tool = fake_tool(tmp.path(), "echo \"args: $*\"; exit 7");
        let argv = vec![
            tool.into_os_string(),
            "switch".into(),
            "--flake".into(),
            "x#y".into(),
        ];
        let r = Record::create(&tmp.path().join("switch"), "switch", &argv).unwrap();
        let code = supervise_main(&[r.dir().to_string_lossy().into_owned()]);
        assert_eq!(code, 7, "the supervisor exits with the tool's code");
        assert_eq!(r.exit_code(), Some(7));
        assert!(r.tool_pid().is_some());
        assert_eq!(r.supervisor_pid(), Some(std::process::id()));
    }

    #[test]
    fn supervisor_records_a_missing_tool() {
        let tmp = tempfile::tempdir().unwrap();
        let argv = vec![OsString::from("/nonexistent/nixos-rebuild")];
        let r = Record::create(&tmp.path().join("switch"), "switch", &argv).unwrap();
        assert_eq!(
            supervise_main(&[r.dir().to_string_lossy().into_owned()]),
            EXIT_NOT_STARTED
        );
        assert_eq!(r.exit_code(), Some(EXIT_NOT_STARTED));
        assert_eq!(supervise_main(&[]), 2);
    }

    #[test]
    fn tail_prefers_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Record::create(&tmp.path().join("switch"), "switch", &argv("x", "y")).unwrap();
        fs::write(r.dir().join("stdout.log"), "out1\nout2\n").unwrap();
        assert_eq!(r.tail(), "out1\nout2");
        let mut big = String::new();
        for i in 0..5000 {
            big.push_str(&format!("error line {i}\n"));
        }
        fs::write(r.dir().join("stderr.log"), big).unwrap();
        let tail = r.tail();
        assert!(tail.ends_with("error line 4999"), "{tail}");
        assert!(!tail.contains("error line 10\n"));
    }

    #[test]
    fn prune_keeps_the_newest_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("switch");
        let mut all = Vec::new();
        for _ in 0..(KEEP_RECORDS + 3) {
            let r = Record::create(&root, "switch", &argv("x", "y")).unwrap();
            r.mark_reported();
            all.push(r);
        }
        let open = Record::create(&root, "switch", &argv("x", "y")).unwrap();
        prune(&root, KEEP_RECORDS);
        assert!(!all[0].dir().exists());
        assert!(all[KEEP_RECORDS + 2].dir().exists());
        assert!(open.dir().exists(), "an unreported record was pruned");
        assert_eq!(all_records(&root).len(), KEEP_RECORDS + 1);
    }

    #[test]
    fn dead_pids_are_not_supervisors() {
        assert!(!is_supervisor(u32::MAX));
        // This test process is alive but not a supervisor.
        assert!(!is_supervisor(std::process::id()) || !Path::new("/proc/self").exists());
    }
}
