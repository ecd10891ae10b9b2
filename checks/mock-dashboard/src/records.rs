//! What the mock dashboard records and answers with: the frames an agent
//! sent, the events of its connections, the protocol violations found, what
//! it knows about each host, and why a frame could not be sent.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hub::Compartments;
use crate::op::Op;

/// How long [`MockDashboard::send_command`](crate::MockDashboard::send_command), [`MockDashboard::send_text`](crate::MockDashboard::send_text) and
/// [`MockDashboard::disconnect`](crate::MockDashboard::disconnect) wait for a frame to be written to the socket.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One text frame received from an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Global sequence number (shared with [`Event`]s).
    pub seq: u64,
    /// The frame's `type`; `"<malformed>"` for text that is not a JSON object
    /// with a string `type`, `"<binary>"` for a binary frame.
    pub kind: String,
    /// The frame's `payload` (`null` when missing); for `"<malformed>"` frames
    /// the raw text as a JSON string (or the whole value when it parsed), for
    /// `"<binary>"` frames `{"len": n}`.
    pub payload: serde_json::Value,
    /// When the frame was received.
    pub received: Instant,
}

/// Something that happened to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Global sequence number (shared with [`Frame`]s).
    pub seq: u64,
    /// `connected` (a host registered), `rejected` (HTTP 401 on the upgrade),
    /// `closed` (the agent sent a close frame), `replaced` (the dashboard closed
    /// an older connection of the host, with a close frame without a code) or
    /// `disconnected` (a socket ended).
    pub kind: String,
    /// The host, when known (not for `rejected`, nor for connections that
    /// ended before registering).
    pub host: Option<String>,
    /// Close code: of the agent's close frame for `closed` (absent when its
    /// close frame had none), absent for `replaced`, 401 for `rejected`.
    pub code: Option<u16>,
    /// Close reason for `closed`/`replaced`, why for `rejected` and
    /// `disconnected`.
    pub reason: Option<String>,
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The host that sent it; `None` before the connection registered.
    pub host: Option<String>,
    /// Sequence number of the offending [`Frame`].
    pub seq: u64,
    /// What is wrong, e.g. "heartbeat: missing field `metrics`".
    pub message: String,
}

/// What the dashboard knows about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The name the host registered with.
    pub hostname: String,
    /// Whether the host has a live connection.
    pub connected: bool,
    /// As upstream: the same as `connected` (`heartbeat_interval` is stored,
    /// not used for liveness).
    pub online: bool,
    /// The interval from the host's last `register` (30 when it sent none valid).
    pub heartbeat_interval: u64,
    /// Milliseconds since the host's last frame (or its registration).
    pub last_seen_ms_ago: u64,
    /// `agent_version` from the last `register`.
    pub agent_version: String,
    /// `agent_version` differs from the dashboard's release.
    pub agent_outdated: bool,
    /// The last generation reported.
    pub generation: String,
    /// The lifecycle's pending command.
    pub pending_command: Option<String>,
    /// The host's non-terminal operation.
    pub operation: Option<Op>,
    /// The compartments as stored (what op validation and post-checks read).
    pub stored: Compartments,
    /// The compartments as the UI shows them (with upstream's gating).
    pub row: Compartments,
}

/// Why a frame could not be sent to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The host has no live connection (never registered, or gone).
    NotConnected(String),
    /// Writing to the host's socket failed.
    SendFailed {
        /// The host.
        host: String,
        /// The write error.
        reason: String,
    },
    /// The frame was not written within [`SEND_TIMEOUT`] (the agent does not
    /// read its socket).
    Timeout(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotConnected(host) => write!(f, "host `{host}` is not connected"),
            Error::SendFailed { host, reason } => {
                write!(f, "sending to host `{host}` failed: {reason}")
            }
            Error::Timeout(host) => write!(
                f,
                "sending to host `{host}` timed out after {} s",
                SEND_TIMEOUT.as_secs()
            ),
        }
    }
}

impl std::error::Error for Error {}
