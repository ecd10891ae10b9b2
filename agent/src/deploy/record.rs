//! The switch record: a directory `<state>/switch/<unix-ms>-<agent-pid>/`
//! (mode 0700) that a switch leaves, so that it finishes and is reported once
//! whatever happens to the agent meanwhile:
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `command` | agent | the dashboard command it belongs to (`switch`, `pull-switch`, `update`, `force-rebuild`, `rollback`) |
//! | `argv` | agent | program and arguments, NUL-separated |
//! | `stdout.log`, `stderr.log` | supervisor and tool | the tool's output |
//! | `supervisor.pid` | agent and supervisor | PID of the supervisor, and the boot it runs in |
//! | `pid` | supervisor | PID of the tool = its process group |
//! | `exit` | supervisor | the tool's exit code (128 + signal if killed) |
//! | `exit.reserve` | agent | room for `exit` on a disk that fills up (freed by the supervisor when writing `exit` fails) |
//! | `reported` | agent | present once the final `status` was kept |
//! | `prefix` | agent | what came before the switch in the status message (a pull's result) |
//! | `watch`, `verdict`, … | agent and supervisor | the rollback watchdog's (`deploy/watchdog.rs`) |
//!
//! Small files are written atomically (a temporary file of the writing
//! process's own, then rename), so two writers of `supervisor.pid` never
//! disturb each other. Reported records are pruned, keeping the last
//! [`KEEP_RECORDS`].

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::exec::env::ChildEnv;
use crate::exec::runlog::{create_private_dir, unique_millis};
use crate::exec::runner::Tail;
use crate::exec::runner::failure_tail;

/// The argument that makes the agent's binary activate a built system
/// (`deploy/activation.rs`): a switch's command line in its record.
pub const ACTIVATE_FLAG: &str = "--activate";

/// `--activate`'s optional last argument: the activation's deadline in
/// seconds (`activation.rs`); a setting, left out of the record's label.
pub const TIMEOUT_ARG: &str = "--timeout=";

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

    /// Writes a small file of the record atomically (`crate::atomic`: a
    /// temporary file of this process's and this write's own, fsync,
    /// rename), so that the agent and the supervisor (both write
    /// `supervisor.pid`) never disturb each other.
    pub fn write_file(&self, name: &str, content: &[u8]) -> std::io::Result<()> {
        crate::atomic::write(&self.dir.join(name), content)
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
    pub(super) fn finish_with(&self, code: i32) -> i32 {
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
            .map(|mut argv| {
                // the agent's own activation: named by its program's name
                if argv.get(1).is_some_and(|a| a == ACTIVATE_FLAG)
                    && let Some(name) = Path::new(&argv[0]).file_name()
                {
                    argv[0] = name.to_owned();
                    // its deadline is a setting, not what it does
                    argv.retain(|a| !a.to_string_lossy().starts_with(TIMEOUT_ARG));
                }
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

    /// When the tool's exit code was recorded (the activation ended).
    pub fn ended_at(&self) -> Option<std::time::SystemTime> {
        fs::metadata(self.dir.join("exit"))
            .and_then(|m| m.modified())
            .ok()
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

/// What identifies the current boot.
fn this_boot() -> String {
    crate::host::boot_identity(Path::new(crate::config::BOOT_ID_FILE))
}

/// True if `pid` is alive and (where `/proc` tells) a switch supervisor.
pub(super) fn is_supervisor(pid: u32) -> bool {
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

pub(super) fn all_records(root: &Path) -> Vec<Record> {
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
