//! A log file the agent can be told to reopen, for nix-darwin.
//!
//! launchd opens the daemon's log (`StandardOutPath`/`StandardErrorPath`)
//! once, and newsyslog rotates it by renaming: an agent that kept writing to
//! its file descriptors would go on growing the rotated file until its next
//! restart. With `NIXFLEET_LOG_FILE` set the agent reopens that path on
//! SIGHUP and puts it in place of its stdout and stderr; with
//! `NIXFLEET_PID_FILE` set it writes its PID there, so that newsyslog knows
//! whom to signal (`newsyslog.d/nixfleet-agent.conf`: pid file and signal 1).
//! Without a log file, SIGHUP is logged and ignored (it no longer ends the
//! agent).

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Opens `path` for appending (creating it 0640) and makes it the process's
/// stdout and stderr.
pub fn reopen(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2(2) on a file descriptor we own onto 1 and 2; no memory
        // is involved, and the old descriptions are closed by the kernel.
        if unsafe { libc::dup2(file.as_raw_fd(), fd) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes this process's PID to `path` (temporary file, then rename).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    crate::atomic::write(path, format!("{}\n", std::process::id()).as_bytes())
}

/// Removes the PID file if it is still ours.
pub fn remove_pid_file(path: &Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|t| t.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// How often the size of a bounded log is looked at.
const SIZE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps `path` below `max` bytes (forever): when it is larger, it becomes
/// `<path>.1` (replacing the one before) and the agent reopens `path`. For a
/// log nothing else rotates (a launchd agent of a user).
pub async fn bound_size(path: PathBuf, max: u64) {
    let mut tick = tokio::time::interval(SIZE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = path.clone();
        let rotated = tokio::task::spawn_blocking(move || rotate_if_larger(&p, max, reopen)).await;
        match rotated {
            Ok(Ok(true)) => {
                tracing::info!("rotated the log file {} at {max} bytes", path.display())
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("cannot rotate the log file {}: {e}", path.display()),
            Err(e) => tracing::warn!("rotating the log file failed: {e}"),
        }
    }
}

/// Moves `path` to `<path>.1` and reopens `path` (with `reopen`) when it is
/// larger than `max` bytes; whether it did.
pub fn rotate_if_larger(
    path: &Path,
    max: u64,
    reopen: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > max => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::rename(path, &old)?;
    reopen(path)?;
    Ok(true)
}

/// Reopens `log_file` on every SIGHUP (forever).
pub async fn reopen_on_hangup(log_file: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the log file is not reopened on rotation");
        return;
    };
    while hup.recv().await.is_some() {
        match &log_file {
            Some(path) => match reopen(path) {
                Ok(()) => tracing::info!("SIGHUP: reopened the log file {}", path.display()),
                Err(e) => tracing::warn!("SIGHUP: cannot reopen {}: {e}", path.display()),
            },
            None => tracing::info!("SIGHUP ignored: no NIXFLEET_LOG_FILE to reopen"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_bound_is_moved_aside_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let reopened = std::cell::Cell::new(false);
        let reopen = |p: &Path| {
            reopened.set(true);
            std::fs::write(p, b"")
        };
        assert!(!rotate_if_larger(&log, 10, reopen).unwrap(), "no log yet");
        std::fs::write(&log, b"0123456789").unwrap();
        assert!(!rotate_if_larger(&log, 10, reopen).unwrap(), "at the bound");
        assert!(!reopened.get());
        std::fs::write(&log, b"0123456789A").unwrap();
        assert!(rotate_if_larger(&log, 10, reopen).unwrap());
        assert!(reopened.get());
        assert_eq!(
            std::fs::read(dir.path().join("agent.log.1")).unwrap(),
            b"0123456789A"
        );
        assert_eq!(std::fs::read(&log).unwrap(), b"");
    }

    #[test]
    fn pid_files_are_ours_to_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.pid");
        write_pid_file(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        remove_pid_file(&path);
        assert!(!path.exists());
        std::fs::write(&path, "1\n").unwrap();
        remove_pid_file(&path);
        assert!(path.exists(), "another process's pid file stays");
    }
}
