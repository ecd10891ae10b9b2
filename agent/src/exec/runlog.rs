//! One local log file per command run, in the log directory, rotated.
//!
//! File names are `<unix-ms, 13 digits>-<command>.log`, so that name order is
//! start order. The directory is created with mode 0700 and each file with mode
//! 0600 (build output can name private things). Creating a log deletes the
//! oldest ones so that at most [`KEEP_RUNS`] remain, and a single file stops
//! growing at [`MAX_LOG_BYTES`] (a note says so): the directory stays bounded
//! at about `KEEP_RUNS × MAX_LOG_BYTES` whatever the commands print.
//!
//! Writes happen on a writer thread of the run, never on the runtime thread:
//! a slow or hung disk then holds up the command (its pipe fills, as with a
//! slow terminal) but never a heartbeat. The runner hands over whole chunks
//! of lines (one per pipe read) through a small bounded queue and awaits room
//! in it; the writer appends through a [`BufWriter`] and flushes once per
//! chunk, so a fast child costs one write syscall per pipe read, not one per
//! line. A log that cannot be created or written is a warning, never a failed
//! command.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many run logs are kept.
pub const KEEP_RUNS: usize = 20;
/// Largest size of one run log; output past it is not logged.
pub const MAX_LOG_BYTES: u64 = 32 * 1024 * 1024;
/// Buffer of the log writer.
const BUF_SIZE: usize = 64 * 1024;

/// Chunks waiting for the writer thread (each is one pipe read's lines).
const QUEUE: usize = 16;

/// What the writer thread is asked to do.
enum Msg {
    /// Append these bytes (whole lines, each ending in a newline).
    Chunk(Vec<u8>),
    /// Reply once everything before has been written and flushed (tests).
    #[cfg(test)]
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// The log file of one command run. Shared by the stdout and stderr readers.
#[derive(Debug)]
pub struct RunLog {
    tx: Option<tokio::sync::mpsc::Sender<Msg>>,
    path: Option<PathBuf>,
}

/// The writer thread's side.
struct Writer {
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
            tx: None,
            path: None,
        }
    }

    /// Creates the log of a new run of `command` in `dir`, rotating old ones.
    /// [`RunLog::create`] on the blocking pool (it makes the directory,
    /// rotates old logs and opens a file): the runtime thread never waits
    /// for the disk.
    pub async fn create_off_thread(dir: &Path, command: &str) -> RunLog {
        let (d, c) = (dir.to_path_buf(), command.to_string());
        match tokio::task::spawn_blocking(move || RunLog::create(&d, &c)).await {
            Ok(log) => log,
            Err(_) => RunLog::create(dir, command),
        }
    }

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
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let writer = Writer {
            writer: Some(BufWriter::with_capacity(BUF_SIZE, file)),
            written: 0,
            full: false,
        };
        std::thread::Builder::new()
            .name("nixfleet-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(RunLog {
            tx: Some(tx),
            path: Some(path),
        })
    }

    /// Where the log is, if it is written.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends lines (each written with a trailing newline). The bytes are
    /// copied at once; the returned future waits for room in the writer's
    /// queue (backpressure from a slow disk), never for the disk itself.
    pub fn write_lines<'a>(
        &self,
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        let chunk = self.tx.as_ref().map(|_| {
            let mut chunk = Vec::new();
            for line in lines {
                chunk.extend_from_slice(line);
                chunk.push(b'\n');
            }
            chunk
        });
        async move {
            if let (Some(tx), Some(chunk)) = (&self.tx, chunk) {
                let _ = tx.send(Msg::Chunk(chunk)).await;
            }
        }
    }

    /// Appends one note line written by the agent itself (start, exit). Never
    /// waits: while the disk is so slow that the queue is full, the note is
    /// left out of the log.
    pub fn note(&self, text: &str) {
        if let Some(tx) = &self.tx {
            let mut chunk = Vec::with_capacity(text.len() + 1);
            chunk.extend_from_slice(text.as_bytes());
            chunk.push(b'\n');
            if tx.try_send(Msg::Chunk(chunk)).is_err() {
                tracing::debug!("command log queue full; a note was not logged");
            }
        }
    }

    /// Resolves once everything handed over so far is written and flushed.
    #[cfg(test)]
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, wait) = tokio::sync::oneshot::channel();
            if tx.send(Msg::Sync(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }
}

impl Writer {
    /// The writer thread: appends chunks until every sender is gone.
    fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Chunk(chunk) => self.append(&chunk),
                #[cfg(test)]
                Msg::Sync(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn append(&mut self, chunk: &[u8]) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for line in chunk.split_inclusive(|&b| b == b'\n') {
            if self.full {
                break;
            }
            let len = line.len() as u64;
            if self.written + len > MAX_LOG_BYTES {
                self.full = true;
                result = w.write_all(
                    b"[nixfleet-agent] log size limit reached; further output is not logged\n",
                );
                break;
            }
            self.written += len;
            result = w.write_all(line);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| w.flush());
        if let Err(e) = result {
            tracing::warn!("writing the command log failed: {e}; logging stops for this run");
            self.writer = None;
        }
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

    #[tokio::test]
    async fn writes_lines_and_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        // An unrelated file is never touched.
        create_private_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "keep me").unwrap();
        let mut last = None;
        for i in 0..(KEEP_RUNS + 5) {
            let log = RunLog::create(&dir, "pull");
            log.write_lines([format!("line {i}").as_bytes(), b"second".as_slice()])
                .await;
            log.flush().await;
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
