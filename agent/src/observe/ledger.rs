//! What the agent did, for the metrics and `nixfleet-agent status`: the
//! last operations with their outcome and time, counts by name and outcome,
//! the last switch, the automatic rollbacks. Kept in memory (bounded) and,
//! by the pulse, in `<state>/observed.json` (with the live facts of the
//! moment: connection, systems), so that the last switch survives the
//! agent's restart into the new generation and `status` works while the
//! agent is stopped.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The file, in the state directory.
pub const FILE: &str = "observed.json";
/// How many operations are kept.
pub const KEEP: usize = 20;
/// How long a kept message may be.
const MESSAGE: usize = 300;

/// One operation that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The command's name (`switch`, `pull`, …).
    pub command: String,
    /// `ok`, `error`, `stopped` or `warning`, as its status said.
    pub outcome: String,
    /// Its exit code.
    pub exit_code: i32,
    /// Its status's message (clipped).
    pub message: String,
    /// When it ended (seconds since the epoch).
    pub finished_at: u64,
    /// How long it ran, in seconds, when this process saw it start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
}

/// What is kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The last [`KEEP`] operations, oldest first.
    #[serde(default)]
    pub operations: VecDeque<Operation>,
    /// Operations by `command` and then `outcome`.
    #[serde(default)]
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// The last switch-like operation (switch, pull-switch, update,
    /// force-rebuild, rollback).
    #[serde(default)]
    pub last_switch: Option<Operation>,
    /// Switches the watchdog rolled back.
    #[serde(default)]
    pub automatic_rollbacks: u64,
}

/// The ledger: the history, and when the running operations started.
#[derive(Debug, Default)]
pub struct Ledger {
    history: Mutex<History>,
    started: Mutex<BTreeMap<String, std::time::Instant>>,
    /// Bumped on every change (the pulse writes the file when it moved).
    version: AtomicU64,
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    crate::util::unix_secs(SystemTime::now())
}

fn clip(text: &str) -> String {
    crate::util::clip(text, MESSAGE).to_string()
}

/// Whether `command` switches the host (its outcome is the last switch's).
pub fn switches(command: &str) -> bool {
    matches!(
        command,
        "switch" | "pull-switch" | "update" | "force-rebuild" | "rollback"
    )
}

impl Ledger {
    /// The ledger with the history an earlier process left in `state_dir`
    /// (none, or an unreadable file: empty, with a warning).
    pub fn load(state_dir: &Path) -> Ledger {
        let history = match std::fs::read(path(state_dir)) {
            Ok(bytes) => match serde_json::from_slice::<Observed>(&bytes) {
                Ok(observed) => observed.history,
                Err(e) => {
                    tracing::warn!("ignoring {}: {e}", path(state_dir).display());
                    History::default()
                }
            },
            Err(_) => History::default(),
        };
        Ledger {
            history: Mutex::new(history),
            ..Ledger::default()
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `command` started now.
    pub fn started(&self, command: &str) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.insert(command.to_string(), std::time::Instant::now());
    }

    /// `command` ended with this status.
    pub fn ended(&self, command: &str, outcome: &str, exit_code: i32, message: &str) {
        let duration_secs = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(command)
            .map(|t| t.elapsed().as_secs_f64());
        let op = Operation {
            command: command.to_string(),
            outcome: outcome.to_string(),
            exit_code,
            message: clip(message),
            finished_at: now(),
            duration_secs,
        };
        let mut h = self.history();
        *h.counts
            .entry(op.command.clone())
            .or_default()
            .entry(op.outcome.clone())
            .or_default() += 1;
        if switches(command) {
            h.last_switch = Some(op.clone());
        }
        h.operations.push_back(op);
        while h.operations.len() > KEEP {
            h.operations.pop_front();
        }
        drop(h);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// The watchdog rolled a switch back; `message` says to what and why.
    /// When the switch was `reported` before (its status went out), the
    /// last switch's outcome becomes that; else its status, which says it,
    /// is still to come.
    pub fn rolled_back(&self, message: &str, reported: bool) {
        let mut h = self.history();
        h.automatic_rollbacks += 1;
        if reported && let Some(last) = h.last_switch.as_mut() {
            last.outcome = "rolled-back".to_string();
            last.message = clip(message);
        }
        drop(h);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `f` on the history, without copying it.
    pub fn with_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&self.history())
    }

    /// A copy of the history.
    pub fn snapshot(&self) -> History {
        self.history().clone()
    }

    /// Moves on every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

/// `observed.json`: the history and the facts of the moment it was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The agent process that wrote it.
    pub pid: u32,
    /// When it was written (seconds since the epoch).
    pub written_at: u64,
    /// When that process started.
    pub started_at: u64,
    /// The agent's version.
    pub version: String,
    /// The dashboard's host (no path, no credential).
    pub dashboard: String,
    /// Whether the dashboard was connected.
    pub connected: bool,
    /// When the dashboard last registered this agent.
    pub last_register_at: Option<u64>,
    /// When the last heartbeat was written to a registered connection.
    pub last_heartbeat_at: Option<u64>,
    /// Times the dashboard registered this process (reconnects + 1).
    pub registrations: u64,
    /// The operation running, if one is.
    pub running: Option<String>,
    /// The running, booted and profile systems (NixOS), as links resolve.
    #[serde(default)]
    pub systems: Systems,
    /// Whether a reboot is needed (NixOS), and why.
    pub needs_reboot: bool,
    /// The configuration repository's commit (7 hex characters).
    pub generation: String,
    /// Where the command logs are.
    pub log_dir: PathBuf,
    /// The service manager's journal of the agent (`journalctl …`).
    pub journal: String,
    /// What is kept across restarts.
    #[serde(flatten)]
    pub history: History,
}

/// The systems a NixOS host has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Systems {
    /// `/run/current-system`.
    pub current: Option<PathBuf>,
    /// `/run/booted-system`.
    pub booted: Option<PathBuf>,
    /// The system profile's generation.
    pub profile: Option<PathBuf>,
}

/// The file's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes `observed` (blocking: call it off the runtime).
pub fn write(state_dir: &Path, observed: &Observed) {
    match serde_json::to_vec_pretty(observed) {
        Ok(bytes) => {
            if let Err(e) = crate::atomic::write(&path(state_dir), &bytes) {
                tracing::debug!("cannot write {}: {e}", path(state_dir).display());
            }
        }
        Err(e) => tracing::debug!("cannot serialise what the agent observed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_bounded_counted_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::load(dir.path());
        for n in 0..(KEEP + 5) {
            ledger.started("pull");
            ledger.ended("pull", "ok", 0, &format!("pull {n}"));
        }
        ledger.ended("switch", "ok", 0, "Switch succeeded");
        ledger.rolled_back("rolled back to x: health check failed", true);
        let h = ledger.snapshot();
        assert_eq!(h.operations.len(), KEEP);
        assert_eq!(h.counts["pull"]["ok"], (KEEP + 5) as u64);
        assert_eq!(h.operations[0].message, "pull 6");
        assert!(h.operations[0].duration_secs.is_some());
        let last = h.last_switch.clone().unwrap();
        assert_eq!(last.outcome, "rolled-back");
        assert_eq!(h.automatic_rollbacks, 1);
        write(
            dir.path(),
            &Observed {
                history: h.clone(),
                ..Observed::default()
            },
        );
        assert_eq!(Ledger::load(dir.path()).snapshot(), h);
    }

    #[test]
    fn an_unreadable_file_starts_an_empty_history() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{ not json").unwrap();
        assert_eq!(Ledger::load(dir.path()).snapshot(), History::default());
    }
}
