//! One local log file per command run, in the log directory, rotated.
//!
//! File names are `<unix-ms, 13 digits>-<command>.log`, so that name order is
//! start order. The directory is created with mode 0700 and each file with mode
//! 0600 (build output can name private things). Creating a log deletes the
//! oldest ones so that at most [`KEEP_RUNS`] remain, and a single file stops
//! growing at [`MAX_LOG_BYTES`] (a note says so): the directory stays bounded
//! at about `KEEP_RUNS × MAX_LOG_BYTES` whatever the commands print.
//!
//! Writes go through a [`BufWriter`]; the runner hands over whole chunks of
//! lines and flushes once per chunk it read, so a fast child costs one write
//! syscall per pipe read, not one per line. A log that cannot be created or
//! written is a warning, never a failed command.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many run logs are kept.
pub const KEEP_RUNS: usize = 20;
/// Largest size of one run log; output past it is not logged.
pub const MAX_LOG_BYTES: u64 = 32 * 1024 * 1024;
/// Buffer of the log writer.
const BUF_SIZE: usize = 64 * 1024;

/// The log file of one command run. Shared by the stdout and stderr readers.
#[derive(Debug)]
pub struct RunLog {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    writer: Option<BufWriter<File>>,
    written: u64,
    full: bool,
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, strictly increasing within this process
/// (names made from it sort in creation order even when made in a burst).
pub fn unique_millis() -> u128 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(now_millis()).unwrap_or(u64::MAX);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return u128::from(next),
            Err(actual) => last = actual,
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl RunLog {
    /// A log that writes nothing.
    pub fn disabled() -> RunLog {
        RunLog {
            inner: Mutex::new(Inner {
                writer: None,
                written: 0,
                full: false,
            }),
            path: None,
        }
    }

    /// Creates the log of a new run of `command` in `dir`, rotating old ones.
    pub fn create(dir: &Path, command: &str) -> RunLog {
        match Self::try_create(dir, command) {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(
                    "cannot create a command log in {}: {e}; the run is not logged locally",
                    dir.display()
                );
                RunLog::disabled()
            }
        }
    }

    fn try_create(dir: &Path, command: &str) -> std::io::Result<RunLog> {
        create_private_dir(dir)?;
        let safe: String = command
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        let mut millis = unique_millis();
        // A name taken by another process: take the next free one.
        let (file, path) = loop {
            let path = dir.join(format!("{millis:013}-{safe}.log"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => millis += 1,
                Err(e) => return Err(e),
            }
        };
        rotate(dir, KEEP_RUNS);
        Ok(RunLog {
            inner: Mutex::new(Inner {
                writer: Some(BufWriter::with_capacity(BUF_SIZE, file)),
                written: 0,
                full: false,
            }),
            path: Some(path),
        })
    }

    /// Where the log is, if it is written.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends lines (each written with a trailing newline) and flushes.
    pub fn write_lines<'a>(&self, lines: impl IntoIterator<Item = &'a [u8]>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            writer,
            written,
            full,
        } = &mut *inner;
        let Some(w) = writer.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for line in lines {
            if *full {
                break;
            }
            let len = line.len() as u64 + 1;
            if *written + len > MAX_LOG_BYTES {
                *full = true;
                result = w.write_all(
                    b"[nixfleet-agent] log size limit reached; further output is not logged\n",
                );
                break;
            }
            *written += len;
            result = w.write_all(line).and_then(|()| w.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| w.flush());
        if let Err(e) = result {
            tracing::warn!("writing the command log failed: {e}; logging stops for this run");
            *writer = None;
        }
    }

    /// Appends one note line written by the agent itself (start, exit).
    pub fn note(&self, text: &str) {
        self.write_lines([text.as_bytes()]);
    }
}

/// Deletes the oldest `*.log` files of `dir` beyond `keep`.
pub fn rotate(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".log")
                && name.len() > 14
                && name.as_bytes()[..13].iter().all(u8::is_ascii_digit)
                && e.file_type().map(|t| t.is_file()).unwrap_or(false)
        })
        .map(|e| e.path())
        .collect();
    if logs.len() <= keep {
        return;
    }
    logs.sort();
    let excess = logs.len() - keep;
    for old in &logs[..excess] {
        if let Err(e) = fs::remove_file(old) {
            tracing::debug!("cannot remove old log {}: {e}", old.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_lines_and_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        // An unrelated file is never touched.
        create_private_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "keep me").unwrap();
        let mut last = None;
        for i in 0..(KEEP_RUNS + 5) {
            let log = RunLog::create(&dir, "pull");
            log.write_lines([format!("line {i}").as_bytes(), b"second".as_slice()]);
            last = log.path().map(Path::to_path_buf);
        }
        let logs: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert_eq!(logs.len(), KEEP_RUNS);
        assert!(dir.join("notes.txt").exists());
        let last = last.unwrap();
        assert_eq!(
            fs::read_to_string(&last).unwrap(),
            format!("line {}\nsecond\n", KEEP_RUNS + 4)
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&last).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn hostile_command_names_stay_in_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RunLog::create(tmp.path(), "../../etc/x y");
        let path = log.path().unwrap();
        assert_eq!(path.parent().unwrap(), tmp.path());
    }

    #[test]
    fn unwritable_dir_is_not_fatal() {
        let log = RunLog::create(Path::new("/proc/nonexistent/logs"), "pull");
        assert!(log.path().is_none());
        log.note("nothing happens");
    }
}
