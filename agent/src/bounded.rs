//! Running a short-lived helper program (git, systemctl, lsof, the host's
//! facts on macOS) with a time limit, the one way the agent does it:
//!
//! - the environment is exactly the one given (never the agent's own, so the
//!   token cannot reach a helper);
//! - standard output and standard error are drained while the program runs,
//!   so a program that prints more than a pipe holds (64 KiB on Linux) never
//!   blocks on a full pipe; of each, the last [`KEEP`] bytes are kept;
//! - the program runs in a process group of its own, and over the time limit
//!   the whole group is killed, so nothing it started lingers;
//! - a descendant that keeps a pipe open after the program exited does not
//!   hold the caller beyond the time limit.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of each output stream is kept: the last bytes.
pub const KEEP: usize = 1024 * 1024;

/// How often the program's exit is looked for.
const POLL: Duration = Duration::from_millis(5);

/// Runs `program` with `args` and exactly the environment `env`, and returns
/// its exit status and the last [`KEEP`] bytes of each output stream; an error of kind `TimedOut` (the group killed) when it takes
/// longer than `limit`.
pub fn run(
    program: impl AsRef<OsStr>,
    args: &[&OsStr],
    env: &[(OsString, OsString)],
    limit: Duration,
) -> std::io::Result<Output> {
    let program = program.as_ref();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + limit;
    let (done, finished) = mpsc::channel();
    let stdout = drain(child.stdout.take(), done.clone());
    let stderr = drain(child.stderr.take(), done);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{} took longer than {} s",
                    program.to_string_lossy(),
                    limit.as_secs()
                ),
            ));
        }
        std::thread::sleep(POLL);
    };
    // both streams at their end, or what they have by the deadline
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if finished.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    })
}

/// Reads `pipe` to its end on a thread of its own, keeping the last [`KEEP`]
/// bytes; says so on `done` when the pipe closed.
fn drain(pipe: Option<impl Read + Send + 'static>, done: mpsc::Sender<()>) -> Arc<Mutex<Vec<u8>>> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let Some(mut pipe) = pipe else {
        let _ = done.send(());
        return kept;
    };
    let into = kept.clone();
    let spawned = std::thread::Builder::new()
        .name("helper-output".into())
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * KEEP {
                            let cut = kept.len() - KEEP;
                            kept.drain(..cut);
                        }
                    }
                }
            }
            let _ = done.send(());
        });
    if spawned.is_err() {
        tracing::warn!("cannot start a thread to read a helper's output");
    }
    kept
}

fn take(kept: &Mutex<Vec<u8>>) -> Vec<u8> {
    let mut kept = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
    }
    kept
}

/// SIGKILL to the process group led by `pid`.
fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it has no memory effects.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, limit: Duration) -> std::io::Result<Output> {
        let path = [(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
        run(
            OsStr::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            &path,
            limit,
        )
    }

    #[test]
    fn more_than_a_pipe_holds_comes_back_at_once() {
        // 70 000 bytes on each stream: past the 64 KiB pipe buffer
        let out = sh(
            "head -c 70000 /dev/zero; head -c 70000 /dev/zero >&2",
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 70_000);
        assert_eq!(out.stderr.len(), 70_000);
    }

    #[test]
    fn only_the_last_bytes_are_kept() {
        let out = sh(
            &format!("head -c {} /dev/zero; echo end", 3 * KEEP),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), KEEP);
        assert!(out.stdout.ends_with(b"end\n"));
    }

    #[test]
    fn over_the_limit_the_whole_group_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let err = sh(&script, Duration::from_millis(500)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // the grandchild is gone too (reaped by whoever adopted it)
        let deadline = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "the grandchild survived: {status}"
        );
    }

    #[test]
    fn the_environment_is_exactly_the_one_given() {
        let out = sh("env", Duration::from_secs(10)).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split('=').next())
            .filter(|n| *n != "PWD" && *n != "SHLVL" && *n != "_")
            .collect();
        assert_eq!(names, ["PATH"], "{text}");
    }

    #[test]
    fn a_descendant_holding_the_pipe_does_not_hold_the_caller() {
        let started = Instant::now();
        let out = sh("sleep 37 & echo quick", Duration::from_secs(2)).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"quick\n");
        assert!(started.elapsed() < Duration::from_secs(10));
        // the sleeper is left to its fate; end it
        let _ = std::process::Command::new("pkill")
            .args(["-f", "^sleep 37$"])
            .status();
    }
}
