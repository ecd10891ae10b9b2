//! An operation of the dashboard's lifecycle on one host, and the answer to
//! a dispatch (upstream `internal/ops/lifecycle.go`, `handleDispatchOp`):
//! the records the hosts' state keeps and the lifecycle moves along.

use serde::Serialize;

/// One operation on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// `op-<n>`.
    pub id: String,
    /// The host.
    pub host: String,
    /// The op (= the command sent).
    pub op: String,
    /// Upstream's state name: `EXECUTING`, `SUCCESS`, `PARTIAL`, …
    pub status: &'static str,
    /// Why it failed or is partial.
    pub error: Option<String>,
    /// The agent's exit code, once known.
    pub exit_code: Option<i64>,
    /// Post-check waiting for the next heartbeat.
    #[serde(skip)]
    pub(crate) deferred: bool,
}

impl Op {
    /// Whether the operation is over.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status,
            "SUCCESS" | "ERROR" | "TIMEOUT" | "SKIPPED" | "BLOCKED" | "KILLED" | "PARTIAL"
        )
    }
}

/// The answer to a dispatch for one host (upstream `handleDispatchOp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dispatched {
    /// The host.
    pub host_id: String,
    /// `EXECUTING`, `blocked` or `error`.
    pub status: String,
    /// The operation's id, when one was created and sent.
    pub command_id: Option<String>,
    /// The pre-check's code when blocked (`busy`, `already_current`, …).
    pub code: Option<String>,
    /// Why it was blocked or failed.
    pub message: Option<String>,
}

impl Dispatched {
    pub(crate) fn refused(host: &str, status: &str, code: &str, message: String) -> Dispatched {
        Dispatched {
            host_id: host.to_owned(),
            status: status.to_owned(),
            command_id: None,
            code: Some(code.to_owned()),
            message: Some(message),
        }
    }
}
