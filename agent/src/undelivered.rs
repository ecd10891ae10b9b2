//! Statuses the dashboard has not confirmed yet, kept in
//! `<state>/undelivered.json` so that a restart (or a crash) does not lose
//! them: a test that finished while the dashboard was away is reported after
//! the next start's registration, exactly like a switch record.
//!
//! [`persist_loop`] is the file's only writer: it rewrites it (temporary
//! file, then rename) whenever the set changes, off the runtime thread, and
//! removes it when nothing is undelivered; [`flush`] writes it once more on
//! the way out. At most [`crate::outbound::OUTBOX_CAPACITY`] statuses are
//! kept (the outbox drops the oldest, with a log line, past that), and at
//! most [`MAX_FILE`] bytes are read back. An unreadable or corrupt file is
//! logged and ignored, never fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::outbound::Outbound;
use crate::protocol::{Outgoing, Status};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "undelivered.json";
/// Largest file read back (256 statuses of at most 4000 bytes, and then some).
pub const MAX_FILE: u64 = 2 * 1024 * 1024;

/// The statuses an earlier agent process left undelivered (blocking).
pub fn load(state_dir: &Path) -> Vec<Outgoing> {
    use std::io::Read;
    let path = state_dir.join(FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; its statuses are lost", path.display());
            return Vec::new();
        }
    };
    let mut text = Vec::new();
    if let Err(e) = file.take(MAX_FILE + 1).read_to_end(&mut text) {
        tracing::warn!("cannot read {}: {e}; its statuses are lost", path.display());
        return Vec::new();
    }
    if text.len() as u64 > MAX_FILE {
        tracing::warn!(
            "{} is larger than {MAX_FILE} bytes; ignored",
            path.display()
        );
        return Vec::new();
    }
    match serde_json::from_slice::<Vec<Status>>(&text) {
        Ok(list) => {
            if !list.is_empty() {
                tracing::info!(
                    "{} status(es) an earlier agent process could not deliver are sent after registering",
                    list.len()
                );
            }
            list.into_iter().map(Outgoing::Status).collect()
        }
        Err(e) => {
            tracing::warn!("ignoring {}: not a list of statuses ({e})", path.display());
            Vec::new()
        }
    }
}

fn write(path: &Path, statuses: &[Status]) -> std::io::Result<()> {
    if statuses.is_empty() {
        return match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!(
                    "every status is confirmed by the dashboard; removed {}",
                    path.display()
                );
                Ok(())
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(()),
        };
    }
    let text = serde_json::to_vec(statuses).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &text)
}

/// Writes the undelivered statuses now (blocking).
pub fn flush(out: &Outbound, state_dir: &Path) {
    let path = state_dir.join(FILE_NAME);
    if let Err(e) = write(&path, &out.undelivered()) {
        tracing::warn!(
            "cannot keep the undelivered statuses in {}: {e}",
            path.display()
        );
    }
}

/// Rewrites the file whenever the undelivered statuses change.
pub async fn persist_loop(out: Arc<Outbound>, state_dir: PathBuf) {
    loop {
        out.undelivered_changed().await;
        let (o, dir) = (out.clone(), state_dir.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || flush(&o, &dir)).await {
            tracing::warn!("keeping the undelivered statuses failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Outcome;

    fn status(n: i32) -> Status {
        Status {
            status: Outcome::Ok,
            command: "test".into(),
            exit_code: n,
            message: "1/1 passed".into(),
            generation: String::new(),
        }
    }

    #[test]
    fn round_trip_empty_removes_and_corrupt_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write(&path, &[status(0), status(1)]).unwrap();
        assert_eq!(
            load(dir.path()),
            vec![Outgoing::Status(status(0)), Outgoing::Status(status(1))]
        );
        write(&path, &[]).unwrap();
        assert!(!path.exists());
        assert!(load(dir.path()).is_empty());
        std::fs::write(&path, "{ nope").unwrap();
        assert!(load(dir.path()).is_empty());
    }
}
