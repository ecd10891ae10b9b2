//! What tells the world outside the dashboard that the agent is alive and
//! what it does: the service manager's readiness, watchdog and status line
//! ([`notify`], [`liveness`]). A room of its own beside the heartbeat and the
//! state: it reads them and the connection's state, and nothing reads it.
//!
//! - systemd (NixOS's unit and Home Manager's user unit, `Type=notify`):
//!   `READY=1` once the agent is initialised (configuration read, state
//!   recovered: not when the dashboard answers, an unreachable dashboard is
//!   not a failed start), `WATCHDOG=1` from the runtime's own timer every
//!   half `WatchdogSec`, `STATUS=` one line (connected or not, the operation
//!   running) whenever it changes, `STOPPING=1` on the way out.
//! - launchd has no watchdog: with `NIXFLEET_WATCHDOG_SEC` (the nix-darwin
//!   and Home Manager modules on macOS set it) a thread outside the runtime
//!   watches its timer and exits ([`liveness::EXIT_HUNG`]) for `KeepAlive`
//!   to start the agent again.
//! - [`ledger`] keeps what ran and how it ended, and the pulse writes it
//!   with the facts of the moment ([`facts`]) to `<state>/observed.json`,
//!   which `nixfleet-agent status` ([`report`]) reads.
//! - [`serve`] answers Prometheus' scrapes with [`metrics`] when
//!   `NIXFLEET_METRICS_LISTEN` is set (off by default).

pub mod facts;
pub mod ledger;
pub mod liveness;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod serve;
