//! The runtime's pulse: a timer task on the agent's one runtime thread that
//! ticks at least once per heartbeat interval. Each tick proves that the
//! runtime runs its timers and tasks, the same ones that send heartbeats
//! (a blocked runtime thread, a busy loop or a deadlock on it stops the
//! pulse with them); it then
//! - sends systemd `WATCHDOG=1` (every half `WatchdogSec`), and
//! - stamps the time the agent's own watchdog thread looks at (launchd);
//! - sends the status line when it changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::facts::dashboard_host;
use super::ledger::Ledger;
use super::notify;
use crate::config::Config;
use crate::outbound::Outbound;
use crate::state::AgentState;

/// The exit code of an agent whose own watchdog found its runtime stalled
/// (`EX_SOFTWARE`): launchd's `KeepAlive` starts it again.
pub const EXIT_HUNG: i32 = 70;

/// The status line systemd shows (`systemctl status`): whether the
/// dashboard is connected, and the operation running.
pub fn status_line(connected: bool, dashboard: &str, running: Option<&str>) -> String {
    let link = if connected {
        format!("connected to {dashboard}")
    } else {
        format!("not connected to {dashboard}; retrying")
    };
    match running {
        Some(command) => format!("{link}; running {command}"),
        None => format!("{link}; idle"),
    }
}

/// How often the pulse ticks: the heartbeat interval, or more often for a
/// watchdog (half of systemd's, a quarter of the agent's own).
pub fn period(interval: Duration, systemd: Option<Duration>, own: Option<Duration>) -> Duration {
    [Some(interval), systemd.map(|d| d / 2), own.map(|d| d / 4)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(interval)
        .max(Duration::from_millis(100))
}

/// The pulse's last tick, in milliseconds since `start`.
struct Pulse {
    start: Instant,
    last: AtomicU64,
}

impl Pulse {
    fn beat(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// Runs the pulse until the process ends (spawn it on the runtime); it
/// also keeps `observed.json` current: written off the runtime when
/// something it holds changed (the connection, the operation running, the
/// history, the registrations, the generation, the reboot need), never
/// while the agent idles, so that an idle agent starts no thread for it.
pub async fn run(
    config: Arc<Config>,
    state: Arc<AgentState>,
    out: Arc<Outbound>,
    ledger: Arc<Ledger>,
) {
    let systemd = notify::systemd_watchdog();
    let own = config.watchdog.filter(|_| systemd.is_none());
    let interval = Duration::from_secs(config.interval_secs);
    let pulse = Arc::new(Pulse {
        start: Instant::now(),
        last: AtomicU64::new(0),
    });
    if let Some(limit) = own {
        watch_from_outside(limit, pulse.clone());
    }
    let freeze = freeze_hook();
    let dashboard = dashboard_host(&config.url).to_string();
    let mut shown = String::new();
    let mut written = Written::default();
    let mut writing = Writing::default();
    let mut tick = tokio::time::interval(period(interval, systemd, own));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(file) = &freeze {
            freeze_if(file);
        }
        pulse.beat();
        if systemd.is_some() {
            notify::watchdog();
        }
        let running = state.running().map(|r| r.command);
        let line = status_line(out.is_connected(), &dashboard, running.as_deref());
        if line != shown {
            notify::status(&line);
        }
        if (line != shown || !written.holds(&ledger, &state)) && !writing.is_busy() {
            written = Written::of(&ledger, &state);
            writing.start(&config, &state, &out, &ledger);
        }
        shown = line;
    }
}

/// What `observed.json` was last written with, besides the status line.
#[derive(Debug, Default)]
struct Written {
    ledger: Option<u64>,
    registrations: u64,
    generation: String,
    needs_reboot: bool,
}

impl Written {
    /// Whether nothing it notes changed (read in place, without copying).
    fn holds(&self, ledger: &Ledger, state: &AgentState) -> bool {
        self.ledger == Some(ledger.version())
            && self.registrations == state.registrations()
            && state.with_snapshot(|s| {
                s.generation == self.generation
                    && s.reboot.as_ref().is_some_and(|r| r.needed()) == self.needs_reboot
            })
    }

    fn of(ledger: &Ledger, state: &AgentState) -> Written {
        let (generation, needs_reboot) = state.with_snapshot(|s| {
            (
                s.generation.clone(),
                s.reboot.as_ref().is_some_and(|r| r.needed()),
            )
        });
        Written {
            ledger: Some(ledger.version()),
            registrations: state.registrations(),
            generation,
            needs_reboot,
        }
    }
}

/// At most one write of `observed.json` at a time, on the blocking pool: a
/// slow disk makes the file late, never the pulse.
#[derive(Default)]
struct Writing(Option<tokio::task::JoinHandle<()>>);

impl Writing {
    fn is_busy(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.is_finished())
    }

    fn start(
        &mut self,
        config: &Arc<Config>,
        state: &Arc<AgentState>,
        out: &Arc<Outbound>,
        ledger: &Arc<Ledger>,
    ) {
        let (c, s, o, l) = (config.clone(), state.clone(), out.clone(), ledger.clone());
        self.0 = Some(tokio::task::spawn_blocking(move || {
            let observed = super::facts::gather(&c, &s, &o, &l, true);
            super::ledger::write(&c.state_dir, &observed);
        }));
    }
}

/// Writes `observed.json` as the process leaves: not connected, nothing
/// running (blocking).
pub fn write_on_exit(config: &Config, state: &AgentState, out: &Outbound, ledger: &Ledger) {
    let mut observed = super::facts::gather(config, state, out, ledger, false);
    observed.running = None;
    super::ledger::write(&config.state_dir, &observed);
}

/// The agent's own watchdog, for launchd: a thread outside the runtime
/// that exits the process when the pulse has been silent for `limit`.
fn watch_from_outside(limit: Duration, pulse: Arc<Pulse>) {
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(limit / 4);
                let silent = pulse.silent_for();
                if silent > limit {
                    tracing::error!(
                        "the agent's runtime has not run for {} s (watchdog {} s): exiting to be started again",
                        silent.as_secs(),
                        limit.as_secs()
                    );
                    std::process::exit(EXIT_HUNG);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the agent's own watchdog: {e}");
    }
}

/// Test-only, in debug builds alone: the file named by
/// `NIXFLEET_TEST_FREEZE_FILE`, whose appearance freezes the runtime.
#[cfg(debug_assertions)]
fn freeze_hook() -> Option<std::path::PathBuf> {
    std::env::var_os("NIXFLEET_TEST_FREEZE_FILE").map(std::path::PathBuf::from)
}

#[cfg(not(debug_assertions))]
fn freeze_hook() -> Option<std::path::PathBuf> {
    None
}

/// Blocks the runtime's one thread for good once `file` exists (what a
/// hung agent does): nothing else on the runtime runs any more.
fn freeze_if(file: &std::path::Path) {
    if file.exists() {
        tracing::warn!("test hook: freezing the runtime");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_connected_and_what_runs() {
        assert_eq!(
            status_line(true, "fleet.example.com", None),
            "connected to fleet.example.com; idle"
        );
        assert_eq!(
            status_line(false, "fleet.example.com", Some("switch")),
            "not connected to fleet.example.com; retrying; running switch"
        );
    }

    #[test]
    fn the_pulse_ticks_for_the_shortest_need() {
        let s = Duration::from_secs;
        assert_eq!(period(s(5), None, None), s(5));
        assert_eq!(period(s(5), Some(s(60)), None), s(5));
        assert_eq!(period(s(60), Some(s(10)), None), s(5));
        assert_eq!(period(s(60), None, Some(s(20))), s(5));
    }
}
