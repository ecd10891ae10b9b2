//! How a run ended, before it becomes a `status`.

use super::*;

/// How a run ended, before it becomes a `status`.
#[derive(Debug, Clone)]
pub(super) struct Report {
    pub(super) outcome: Outcome,
    pub(super) exit_code: i32,
    pub(super) message: String,
    /// Exit [`EXIT_RESTART`] after reporting (a successful switch).
    pub(super) restart: bool,
    /// Added to the message if the run turns out stopped (partial test results).
    pub(super) stop_detail: Option<String>,
    /// No status now: a watched switch activated, and the agent of the new
    /// generation reports it once it confirmed (or after a rollback). The
    /// message holds what came before the switch (a pull's result), for
    /// that status.
    pub(super) deferred: bool,
}

impl Report {
    pub(super) fn ok(message: String) -> Report {
        Report {
            outcome: Outcome::Ok,
            exit_code: 0,
            message,
            restart: false,
            stop_detail: None,
            deferred: false,
        }
    }

    /// A watched switch: reported by the next generation; `before` is what
    /// came first in the run (a pull's result), kept for that status.
    pub(super) fn watched(before: Option<&str>) -> Report {
        Report {
            deferred: true,
            restart: true,
            ..Report::ok(before.unwrap_or_default().to_string())
        }
    }

    pub(super) fn error(exit_code: i32, message: String) -> Report {
        Report {
            outcome: Outcome::Error,
            exit_code,
            message,
            restart: false,
            stop_detail: None,
            deferred: false,
        }
    }

    pub(super) fn with_restart(mut self) -> Report {
        self.restart = true;
        self
    }

    /// Puts `prefix; ` before the message (what succeeded before the failure).
    pub(super) fn after(mut self, prefix: &str) -> Report {
        self.message = format!("{prefix}; {}", self.message);
        self
    }
}

/// `"{what} failed: `{label}` exited with {code}"`, then the output tail.
pub(super) fn failed_message(what: &str, label: &str, code: i32, tail: &str) -> String {
    let mut message = format!("{what} failed: `{label}` exited with {code}");
    if !tail.is_empty() {
        message.push_str(":\n");
        message.push_str(tail);
    }
    message
}

pub(super) fn stopped_message(cause: StopCause) -> &'static str {
    match cause {
        StopCause::User => "Stopped by user",
        StopCause::Shutdown => "Stopped: the agent is shutting down",
        StopCause::Restart => "Stopped: the agent is restarting",
        StopCause::Reboot => "Stopped: the host reboots (reboot)",
    }
}

pub(super) use crate::host::short_commit as short;
