//! What heartbeats carry: a background refresher of the host's facts.
//!
//! The heartbeat itself is built by the connection's writer from
//! [`AgentState::snapshot`] and [`AgentState::running`], which never wait.
//! Everything that touches the disk or measures the host runs here, on the
//! blocking pool, once per heartbeat interval (and at once when a command asks,
//! e.g. after a pull): a slow disk makes the values late, never the heartbeat.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::host::HostType;
use crate::host::{self, MetricsReader};
use crate::state::{AgentState, HostSnapshot};

/// Reads every fact once (blocking).
pub fn read_snapshot(config: &Config, metrics: &mut MetricsReader) -> HostSnapshot {
    let (metrics, _source) = metrics.sample();
    HostSnapshot {
        generation: host::generation(&config.repo_dir),
        nixpkgs_version: host::nixpkgs_version(config.nixpkgs_version.as_deref()),
        lock_hash: host::flake_lock_hash(&config.repo_dir),
        metrics,
        reboot: match config.host_type {
            HostType::NixOs => host::reboot_need(
                &config.booted_system,
                &config.current_system,
                Some(&config.rollback.system_profile),
            ),
            HostType::MacOs => None,
        },
        store_free_mib: host::free_mib(&config.guard.nix_store),
        boot_free_mib: match config.host_type {
            HostType::NixOs => host::free_mib(&config.guard.boot_dir),
            HostType::MacOs => None,
        },
    }
}

/// Refreshes the snapshot every `interval`, and whenever a refresh is requested.
pub async fn refresher(config: Arc<Config>, state: Arc<AgentState>, metrics: MetricsReader) {
    let metrics = Arc::new(Mutex::new(metrics));
    let interval = Duration::from_secs(config.interval_secs);
    loop {
        let cfg = config.clone();
        let m = metrics.clone();
        let work = tokio::task::spawn_blocking(move || {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            read_snapshot(&cfg, &mut m)
        });
        match work.await {
            Ok(snapshot) => state.publish(snapshot),
            Err(e) => tracing::warn!("reading host facts failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = state.refresh_requested() => {}
        }
    }
}
