//! State shared between the agent's tasks, read without waiting.
//!
//! The heartbeat reads [`AgentState::running`] and the latest [`HostSnapshot`]:
//! both are plain values behind short locks, never awaited, so a heartbeat
//! never waits for a command, a slow dashboard or a slow disk. The snapshot is
//! refreshed by a blocking task (`host` reads files) on its own schedule.

use std::sync::Mutex;

use tokio::sync::{Notify, watch};

use std::sync::Arc;

use crate::compartments::Store;
use crate::host::Metrics;

/// The command that is running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Its name.
    pub command: String,
    /// PID of its current process (the process-group leader); 0 until spawned.
    pub pid: u32,
}

/// Facts about the host that cost a disk read, refreshed in the background.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSnapshot {
    /// The configuration repository's commit as the wire carries it (its first
    /// 7 hex characters, [`crate::host::generation`]), empty if unknown.
    pub generation: String,
    /// nixpkgs version, empty if unknown.
    pub nixpkgs_version: String,
    /// SHA-256 of `flake.lock`.
    pub lock_hash: Option<String>,
    /// Latest metrics.
    pub metrics: Option<Metrics>,
    /// NixOS: whether the booted kernel, initrd or modules differ from the
    /// current system's (`None`: not applicable, or cannot be told).
    pub reboot: Option<crate::host::RebootNeed>,
    /// Free MiB on the Nix store's filesystem (`None`: cannot be measured).
    pub store_free_mib: Option<u64>,
    /// Free MiB on `/boot` (`None`: no `/boot`, as on macOS, or unreadable).
    pub boot_free_mib: Option<u64>,
}

/// When this process started (the first call, which `run` makes first).
pub fn process_started() -> std::time::SystemTime {
    static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::SystemTime::now)
}

/// Shared state of one agent process.
#[derive(Debug)]
pub struct AgentState {
    running: Mutex<Option<Running>>,
    snapshot: watch::Sender<HostSnapshot>,
    refresh: Notify,
    exit: watch::Sender<Option<i32>>,
    compartments: Arc<Store>,
    /// How many times this process was `registered` by the dashboard.
    registered: watch::Sender<u64>,
    /// Holds that keep this process from registering (`register_hold.rs`:
    /// a switch's health checks before the register).
    register_holds: watch::Sender<u32>,
    /// When the last `registered` and the last heartbeat on a registered
    /// connection happened (seconds since the epoch; 0: never).
    last_register_at: std::sync::atomic::AtomicU64,
    last_heartbeat_at: std::sync::atomic::AtomicU64,
}

impl Default for AgentState {
    /// Compartments kept in memory only.
    fn default() -> Self {
        AgentState::with_compartments(Arc::new(Store::in_memory()))
    }
}

impl AgentState {
    /// State whose compartments are `store`.
    pub fn with_compartments(store: Arc<Store>) -> AgentState {
        AgentState {
            running: Mutex::new(None),
            snapshot: watch::Sender::new(HostSnapshot::default()),
            refresh: Notify::new(),
            exit: watch::Sender::new(None),
            compartments: store,
            registered: watch::Sender::new(0),
            register_holds: watch::Sender::new(0),
            last_register_at: Default::default(),
            last_heartbeat_at: Default::default(),
        }
    }

    /// Keeps the connection from registering until [`Self::release_register`].
    pub fn hold_register(&self) {
        self.register_holds.send_modify(|n| *n += 1);
    }

    /// Ends one [`Self::hold_register`].
    pub fn release_register(&self) {
        self.register_holds
            .send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Resolves once nothing holds the register back in this process.
    pub async fn register_released(&self) {
        let mut rx = self.register_holds.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The dashboard answered a `register` with `registered`.
    pub fn note_registered(&self) {
        self.registered.send_modify(|n| *n += 1);
        self.last_register_at.store(
            crate::util::unix_secs(std::time::SystemTime::now()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A heartbeat was written to a registered connection.
    pub fn note_heartbeat(&self) {
        self.last_heartbeat_at.store(
            crate::util::unix_secs(std::time::SystemTime::now()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// How many times the dashboard registered this process.
    pub fn registrations(&self) -> u64 {
        *self.registered.borrow()
    }

    /// When the last `registered` came (seconds since the epoch).
    pub fn last_register_at(&self) -> Option<u64> {
        Some(
            self.last_register_at
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|t| *t > 0)
    }

    /// When the last heartbeat went out on a registered connection.
    pub fn last_heartbeat_at(&self) -> Option<u64> {
        Some(
            self.last_heartbeat_at
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|t| *t > 0)
    }

    /// Resolves once this process has been registered by the dashboard.
    pub async fn wait_registered(&self) {
        let mut rx = self.registered.subscribe();
        // the sender lives as long as `self`, so this only ends when registered
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// The Lock, System and Tests compartments.
    pub fn compartments(&self) -> &Arc<Store> {
        &self.compartments
    }

    /// The running command, if any.
    pub fn running(&self) -> Option<Running> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets or clears the running command.
    pub fn set_running(&self, running: Option<Running>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = running;
    }

    /// Updates the running command's PID (a command with several steps has several).
    pub fn set_pid(&self, pid: u32) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            r.pid = pid;
        }
    }

    /// Runs `f` on the latest host facts, without copying them.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&HostSnapshot) -> R) -> R {
        f(&self.snapshot.borrow())
    }

    /// A copy of the latest host facts.
    pub fn snapshot(&self) -> HostSnapshot {
        self.snapshot.borrow().clone()
    }

    /// Publishes a new host snapshot.
    pub fn publish(&self, snapshot: HostSnapshot) {
        self.snapshot.send_replace(snapshot);
    }

    /// Updates the generation at once (after a pull), without waiting for the refresher.
    pub fn set_generation(&self, generation: &str) {
        self.snapshot.send_modify(|s| {
            if s.generation != generation {
                s.generation = generation.to_string();
            }
        });
    }

    /// Updates the `flake.lock` hash at once (after a pull), without waiting
    /// for the refresher.
    pub fn set_lock_hash(&self, lock_hash: Option<String>) {
        self.snapshot.send_modify(|s| s.lock_hash = lock_hash);
    }

    /// Asks the refresher to re-read the host's facts now.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when a refresh was requested.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Asks the agent to close the connection cleanly (after delivering what is
    /// in the outbox) and exit with `code` (e.g. [`crate::config::EXIT_RESTART`]).
    pub fn request_exit(&self, code: i32) {
        self.exit.send_replace(Some(code));
    }

    /// Resolves with the exit code once an exit was requested.
    pub async fn exit_requested(&self) -> i32 {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return code;
            }
            if rx.changed().await.is_err() {
                return 1;
            }
        }
    }
}
