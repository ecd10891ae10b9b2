//! The benchmark's settings (`BUDGET_*` variables) and shared constants.

use std::collections::BTreeSet;
use std::time::Duration;

/// The agent binary cargo built for this bench.
const CARGO_AGENT_BIN: &str = env!("CARGO_BIN_EXE_nixfleet-agent");

/// The agent binary measured: `BUDGET_AGENT` (another build of the same
/// source, e.g. the flake's `result/bin/nixfleet-agent` or a musl build),
/// else the one cargo built for this bench.
pub(crate) fn agent_bin() -> String {
    std::env::var("BUDGET_AGENT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CARGO_AGENT_BIN.to_string())
}
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Lines of the flood command (figures 4 and 7).
pub(crate) const FLOOD_LINES: u64 = 1_000_000;
/// How long any single wait may take before the figure is given up.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) only: Option<BTreeSet<String>>,
    /// Idle window of figures 1 and 2.
    pub(crate) idle: Duration,
    pub(crate) startup_runs: usize,
    pub(crate) throughput_runs: usize,
    /// Lines the receiver-ceiling client sends.
    pub(crate) ceiling_lines: u64,
    /// Duration of the 1000 lines/s command (figure 5).
    pub(crate) latency_secs: u64,
    /// Duration of the full-speed flood while heartbeats are watched (figure 6).
    pub(crate) flood_secs: u64,
}

impl Settings {
    pub(crate) fn from_env() -> Settings {
        let quick = std::env::var("BUDGET_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let only = std::env::var("BUDGET_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        if quick {
            Settings {
                quick,
                only,
                idle: Duration::from_secs(10),
                startup_runs: 5,
                throughput_runs: 1,
                ceiling_lines: 300_000,
                latency_secs: 3,
                flood_secs: 3,
            }
        } else {
            Settings {
                quick,
                only,
                idle: Duration::from_secs(60),
                startup_runs: 20,
                throughput_runs: 5,
                ceiling_lines: 1_000_000,
                latency_secs: 10,
                flood_secs: 6,
            }
        }
    }

    pub(crate) fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(key))
    }
}
