//! The service manager's notifications (`sd_notify(3)`), through the
//! `sd-notify` crate: a datagram to `$NOTIFY_SOCKET`; nothing when the
//! variable is unset (not started by systemd, or not `Type=notify`). A
//! failure is logged once at debug level and never stops the agent.

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

static FAILED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states)
        && !FAILED.swap(true, Ordering::Relaxed)
    {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// `READY=1` with the first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=<line>`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// `WATCHDOG=1`: the runtime made progress.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1` with the reason as the status line.
pub fn stopping(reason: &str) {
    let line = format!("stopping ({reason})");
    send(&[NotifyState::Stopping, NotifyState::Status(&line)]);
}

/// systemd's watchdog period for this process (`WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names it), if one is set.
pub fn systemd_watchdog() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}
