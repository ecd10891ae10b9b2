//! The detached switch: runs the rebuild tool so that it finishes even if the
//! agent is restarted or killed meanwhile, records how it ended in its switch
//! record (`deploy/record.rs`), and follows it from the agent.
//!
//! ## How
//!
//! The agent prepares a switch record ([`Record`]).
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
//! pruned, keeping the last [`KEEP_RECORDS`](super::record::KEEP_RECORDS).
//!
//! The service manager must not kill the agent's whole control group when the
//! agent stops (NixOS: `KillMode=process`; nix-darwin: `AbandonProcessGroup`),
//! or the switch dies with it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::record::{EXIT_NOT_STARTED, POLL, Record, SUPERVISE_FLAG};
use super::watchdog::{self, Watch};
use crate::exec::runner::{Control, MAX_LINE, READ_CHUNK, Sink, Splitter, Tail, exit_code};
use crate::protocol::Stream;

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
    /// The read buffer, lent to the blocking pool for each read.
    buf: Vec<u8>,
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
            buf: Vec::new(),
            split: Splitter::new(MAX_LINE, READ_CHUNK),
            tail: Tail::default(),
            stream,
            ranges: Vec::new(),
        }
    }

    /// Sends everything written since the last call; true if anything was
    /// read. The file is read on the blocking pool: a slow disk never holds
    /// up the runtime thread (heartbeats, pings).
    async fn drain(&mut self, sink: &Sink) -> bool {
        let mut any = false;
        loop {
            let Some(mut file) = self.file.take() else {
                return any;
            };
            let want = self.split.spare().len();
            let mut buf = std::mem::take(&mut self.buf);
            let read = tokio::task::spawn_blocking(move || {
                // zeroed once, then reused as it is
                if buf.len() != want {
                    buf.resize(want, 0);
                }
                let read = loop {
                    match file.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                (file, read, buf)
            })
            .await;
            let n = match read {
                Ok((file, Ok(n), buf)) => {
                    self.file = Some(file);
                    self.buf = buf;
                    n
                }
                Ok((_, Err(e), _)) => {
                    tracing::warn!("reading the switch output failed: {e}");
                    return any;
                }
                Err(e) => {
                    tracing::warn!("reading the switch output failed: {e}");
                    return any;
                }
            };
            if n == 0 {
                return any;
            }
            any = true;
            self.split.spare()[..n].copy_from_slice(&self.buf[..n]);
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

/// What one look at a running switch's record finds, read on the blocking
/// pool (small files, but a slow disk must not hold up the runtime thread).
struct Look {
    tool_pid: Option<u32>,
    exit: Option<i32>,
    supervisor_alive: bool,
}

impl Look {
    async fn at(record: &Record, supervisor: bool) -> Look {
        let r = record.clone();
        let looked = tokio::task::spawn_blocking(move || Look {
            tool_pid: r.tool_pid(),
            exit: r.exit_code(),
            supervisor_alive: supervisor && r.supervisor_alive(),
        })
        .await;
        looked.unwrap_or_else(|_| Look {
            tool_pid: record.tool_pid(),
            exit: record.exit_code(),
            supervisor_alive: supervisor && record.supervisor_alive(),
        })
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
    let mut out = Follower::new(&record.dir().join("stdout.log"), Stream::Stdout, from_end);
    let mut err = Follower::new(&record.dir().join("stderr.log"), Stream::Stderr, from_end);
    let mut attached = false;
    let ended = loop {
        out.drain(sink).await;
        err.drain(sink).await;
        let look = Look::at(record, own.is_none()).await;
        if !attached && let Some(pid) = look.tool_pid {
            ctl.attach(pid, true);
            attached = true;
        }
        if let Some(code) = look.exit {
            break Ended::Exit(code);
        }
        let (alive, own_exit) = match own.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => (true, None),
                Ok(Some(status)) => (false, status.code()),
                Err(_) => (false, None),
            },
            None => (look.supervisor_alive, None),
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
    use super::super::record::{KEEP_RECORDS, all_records, is_supervisor, pending, prune};
    use super::*;
    use std::fs;
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
