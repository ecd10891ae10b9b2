//! The facts of the moment that `observed.json` carries beside the
//! history ([`super::ledger`]): the connection, the operation running, the
//! host's systems, where the logs are.

use std::path::{Path, PathBuf};

use super::ledger::{Ledger, Observed, Systems, now};
use crate::config::Config;
use crate::host::HostType;
use crate::outbound::Outbound;
use crate::state::AgentState;

/// The host (and port) of the dashboard's URL, for the status line and `status`: no
/// path, query or credential.
pub fn dashboard_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// When this process started (seconds since the epoch).
pub fn started_at() -> u64 {
    crate::util::unix_secs(crate::state::process_started())
}

/// Where the agent's own log is: its file (launchd), else the journal of
/// its system unit (root) or user unit.
pub fn journal_hint(config: &Config) -> String {
    if let Some(file) = &config.log_file {
        return file.display().to_string();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "journalctl -u nixfleet-agent".to_string()
    } else {
        "journalctl --user -u nixfleet-agent".to_string()
    }
}

fn resolve(link: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(link).ok()
}

/// Everything `observed.json` holds now (reads three links: call it off the
/// runtime).
pub fn gather(
    config: &Config,
    state: &AgentState,
    out: &Outbound,
    ledger: &Ledger,
    connected: bool,
) -> Observed {
    let snapshot = state.snapshot();
    let systems = match config.host_type {
        HostType::NixOs => Systems {
            current: resolve(&config.current_system),
            booted: resolve(&config.booted_system),
            profile: resolve(&config.rollback.system_profile),
        },
        HostType::MacOs => Systems::default(),
    };
    Observed {
        pid: std::process::id(),
        written_at: now(),
        started_at: started_at(),
        version: crate::VERSION.to_string(),
        dashboard: dashboard_host(&config.url).to_string(),
        connected: connected && out.is_connected(),
        last_register_at: state.last_register_at(),
        last_heartbeat_at: state.last_heartbeat_at(),
        registrations: state.registrations(),
        running: state.running().map(|r| r.command),
        systems,
        needs_reboot: snapshot.reboot.as_ref().is_some_and(|r| r.needed()),
        generation: snapshot.generation,
        log_dir: config.log_dir.clone(),
        journal: journal_hint(config),
        history: ledger.snapshot(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_is_named_by_its_host_alone() {
        assert_eq!(
            dashboard_host("wss://fleet.example.com/ws"),
            "fleet.example.com"
        );
        assert_eq!(
            dashboard_host("wss://user:secret@fleet.example.com:8443/ws?x=1"),
            "fleet.example.com:8443"
        );
        assert_eq!(dashboard_host("ws://127.0.0.1:9/ws"), "127.0.0.1:9");
    }
}
