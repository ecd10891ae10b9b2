//! Wire types of the dashboard protocol (v2), see `protocol.md`.
//!
//! Every frame is a JSON text message `{"type": "<kind>", "payload": {...}}`.
//! Outgoing frames are built from [`Outgoing`]; incoming text is parsed with
//! [`parse_incoming`], which tells malformed JSON apart from an unknown type so
//! that both can be logged and ignored.

use serde::{Deserialize, Serialize};

use crate::host::{Freshness, Metrics};

mod output_json;
pub use output_json::{OUTPUT_HEAD, output_json, push_json_str, push_output_tail};

/// The `register` payload: the first frame on every connection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Register {
    /// Host name without domain.
    pub hostname: String,
    /// `"nixos"` or `"macos"`.
    pub host_type: String,
    /// The agent's version.
    pub agent_version: String,
    /// OS version, e.g. `"24.11"` or `"15.2"`.
    pub os_version: String,
    /// Full nixpkgs version with revision.
    pub nixpkgs_version: String,
    /// Commit of the deployed configuration repository, as its first 7 hex
    /// characters (upstream's `detectGeneration`).
    pub generation: String,
    /// `#rrggbb` or empty.
    pub theme_color: String,
    /// Heartbeat interval in seconds.
    pub heartbeat_interval: u64,
    /// `home`, `work` or `cloud`.
    pub location: String,
    /// `server`, `desktop`, `laptop` or `gaming`.
    pub device_type: String,
    /// Git URL of the configuration repository (isolated mode), may be empty.
    pub repo_url: String,
    /// Local path of the configuration repository.
    pub repo_dir: String,
    /// `source_commit`, `store_path`, `binary_hash` of the running binary.
    #[serde(flatten)]
    pub freshness: Freshness,
}

/// The `heartbeat` payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Heartbeat {
    /// Commit of the configuration repository (7 hex characters), re-read each time.
    pub generation: String,
    /// As in [`Register::nixpkgs_version`].
    pub nixpkgs_version: String,
    /// The running command's name, `None` (null) when idle.
    pub pending_command: Option<String>,
    /// The running command's PID, `None` (null) when idle.
    pub command_pid: Option<u32>,
    /// Host metrics, null when they cannot be had.
    pub metrics: Option<Metrics>,
    /// SHA-256 hex of the repository's `flake.lock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_hash: Option<String>,
    /// The host row's compartments as the agent sees them.
    pub update_status: UpdateStatus,
    /// NixOS: the booted kernel, initrd or kernel modules differ from the
    /// current system's. An extension of this agent: the hub decodes
    /// payloads into structs and ignores fields it does not know
    /// (`messages.go` `ParsePayload`). Absent where it does not apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs_reboot: Option<bool>,
    /// Free MiB on the Nix store's filesystem; an extension, as
    /// `needs_reboot`. Absent when it cannot be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_free_mib: Option<u64>,
    /// Free MiB on `/boot` (NixOS); an extension, as `needs_reboot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_free_mib: Option<u64>,
    /// As in [`Register::freshness`].
    #[serde(flatten)]
    pub freshness: Freshness,
}

/// One compartment of `update_status`: `{status, message, checked_at}`.
///
/// `status` is `ok`, `outdated`, `error`, `unknown` or `working`; the empty
/// string means "not reported" (upstream's agent sends `git` that way: the
/// dashboard computes it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusCheck {
    /// The compartment's colour.
    pub status: String,
    /// What the UI shows on hover.
    pub message: String,
    /// When it was decided, RFC 3339 UTC (empty when never).
    pub checked_at: String,
}

/// The heartbeat's `update_status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UpdateStatus {
    /// Computed by the dashboard; the agent sends it empty.
    pub git: StatusCheck,
    /// Age of the last commit that touched `flake.lock`.
    pub lock: StatusCheck,
    /// Whether the running system is the repository's configuration.
    pub system: StatusCheck,
    /// The host tests' last result.
    pub tests: StatusCheck,
}

/// One phase of `operation_progress` (`pull`, `lock`, `system`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhaseProgress {
    /// Steps done.
    pub current: u32,
    /// Steps in all.
    pub total: u32,
    /// `pending`, `in_progress`, `complete` or `error`.
    pub status: &'static str,
}

/// The `tests` phase of `operation_progress`, one result per script.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TestsProgress {
    /// Scripts finished (at most `total`).
    pub current: u32,
    /// Scripts shown (at most [`MAX_TEST_DOTS`]).
    pub total: u32,
    /// `pass`, `fail` or `pending`, one per shown script.
    pub results: Vec<&'static str>,
    /// `pending`, `in_progress`, `complete` or `error`.
    pub status: &'static str,
}

/// Most test scripts shown as dots, as upstream caps them for display.
pub const MAX_TEST_DOTS: usize = 8;

/// The phases of one `operation_progress` frame; absent phases are omitted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Progress {
    /// The pull phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<PhaseProgress>,
    /// The lock phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<PhaseProgress>,
    /// The system (switch) phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<PhaseProgress>,
    /// The tests phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsProgress>,
}

/// The `operation_progress` payload: drives the Status column's dots.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OperationProgress {
    /// The phases this frame reports.
    pub progress: Progress,
}

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The wire name, `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The `output` payload: one line of a running command.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Output {
    /// The line, without its line ending.
    pub line: String,
    /// Where it came from.
    pub stream: Stream,
    /// The command's name.
    pub command: String,
    /// True for stderr.
    pub is_error: bool,
}

/// Outcome of a command, as in `status.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Succeeded.
    Ok,
    /// Failed, or was refused.
    Error,
    /// Stopped by `stop`, `kill` or `kill_command`.
    Stopped,
    /// Done, with something the user should look at (`check-version`).
    Warning,
}

impl Outcome {
    /// The wire name: `ok`, `error`, `stopped`, `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Stopped => "stopped",
            Outcome::Warning => "warning",
        }
    }
}

/// The `status` payload: a command ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `ok`, `error` or `stopped`.
    pub status: Outcome,
    /// The command's name.
    pub command: String,
    /// Exit code of the command (or of its failing step).
    pub exit_code: i32,
    /// A human summary; on failure the last stderr lines.
    pub message: String,
    /// The configuration repository's commit after the command (7 hex characters).
    pub generation: String,
}

/// The `command_rejected` payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandRejected {
    /// Why: `"command already running"`.
    pub reason: String,
    /// The running command's name.
    pub current_command: String,
    /// The running command's PID.
    pub current_pid: u32,
}

/// The `test_progress` payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TestProgress {
    /// Test scripts finished so far.
    pub current: u32,
    /// Test scripts in all.
    pub total: u32,
    /// Test scripts passed so far.
    pub passed: u32,
    /// False on the last message.
    pub running: bool,
    /// Summary, e.g. `"4/5 passed"`, empty while running.
    pub result: String,
}

/// A frame the agent sends.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Outgoing {
    /// See [`Register`].
    Register(Register),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Output`].
    Output(Output),
    /// See [`Status`].
    Status(Status),
    /// See [`CommandRejected`].
    CommandRejected(CommandRejected),
    /// See [`TestProgress`].
    TestProgress(TestProgress),
    /// See [`OperationProgress`].
    OperationProgress(OperationProgress),
}

impl Outgoing {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string
        // keys, no failing Serialize impls); fall back to an empty object anyway.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Register(_) => "register",
            Outgoing::Heartbeat(_) => "heartbeat",
            Outgoing::Output(_) => "output",
            Outgoing::Status(_) => "status",
            Outgoing::CommandRejected(_) => "command_rejected",
            Outgoing::TestProgress(_) => "test_progress",
            Outgoing::OperationProgress(_) => "operation_progress",
        }
    }
}

/// A frame the dashboard sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Registration accepted.
    Registered {
        /// The id the dashboard gave the host.
        host_id: String,
    },
    /// Run a command. The name is only ever matched against a closed set.
    Command {
        /// The command's name as sent.
        command: String,
    },
    /// Signal the running command.
    KillCommand {
        /// `"SIGTERM"` or `"SIGKILL"` (anything else is refused).
        signal: String,
        /// Target PID, 0 for the current command.
        pid: i64,
    },
}

/// Why an incoming frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingError {
    /// Not JSON, or not the `{"type", "payload"}` envelope, or a payload of the wrong shape.
    Malformed(String),
    /// A well-formed frame of a type this agent does not know.
    UnknownType(String),
}

impl std::fmt::Display for IncomingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IncomingError::Malformed(why) => write!(f, "malformed frame: {why}"),
            IncomingError::UnknownType(kind) => write!(f, "unknown frame type {kind:?}"),
        }
    }
}

impl std::error::Error for IncomingError {}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

#[derive(Deserialize)]
struct RegisteredPayload {
    #[serde(default)]
    host_id: String,
}

#[derive(Deserialize)]
struct CommandPayload {
    command: String,
}

#[derive(Deserialize)]
struct KillPayload {
    #[serde(default = "default_signal")]
    signal: String,
    #[serde(default)]
    pid: i64,
}

fn default_signal() -> String {
    String::from("SIGTERM")
}

/// Longest kind name echoed back into a log line.
const MAX_ECHO: usize = 64;

fn clip(text: &str) -> String {
    crate::util::clip(text, MAX_ECHO).to_string()
}

/// Parses one text frame from the dashboard.
pub fn parse_incoming(text: &str) -> Result<Incoming, IncomingError> {
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| IncomingError::Malformed(e.to_string()))?;
    let payload = |e: serde_json::Error| {
        IncomingError::Malformed(format!("bad {} payload: {e}", envelope.kind))
    };
    match envelope.kind.as_str() {
        "registered" => {
            let p: RegisteredPayload = if envelope.payload.is_null() {
                RegisteredPayload {
                    host_id: String::new(),
                }
            } else {
                serde_json::from_value(envelope.payload.clone()).map_err(payload)?
            };
            Ok(Incoming::Registered { host_id: p.host_id })
        }
        "command" => {
            let p: CommandPayload =
                serde_json::from_value(envelope.payload.clone()).map_err(payload)?;
            Ok(Incoming::Command { command: p.command })
        }
        "kill_command" => {
            let p: KillPayload =
                serde_json::from_value(envelope.payload.clone()).map_err(payload)?;
            Ok(Incoming::KillCommand {
                signal: p.signal,
                pid: p.pid,
            })
        }
        other => Err(IncomingError::UnknownType(clip(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_names_itself_as_the_wire_does() {
        for o in [
            Outcome::Ok,
            Outcome::Error,
            Outcome::Stopped,
            Outcome::Warning,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    #[test]
    fn output_frame_shape() {
        let frame = Outgoing::Output(Output {
            line: "hello \"x\"".into(),
            stream: Stream::Stderr,
            command: "pull".into(),
            is_error: true,
        });
        let v: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert_eq!(v["type"], "output");
        assert_eq!(v["payload"]["line"], "hello \"x\"");
        assert_eq!(v["payload"]["stream"], "stderr");
        assert_eq!(v["payload"]["is_error"], true);
    }

    #[test]
    fn idle_heartbeat_has_nulls() {
        let frame = Outgoing::Heartbeat(Heartbeat {
            generation: "abc1234".into(),
            nixpkgs_version: String::new(),
            pending_command: None,
            command_pid: None,
            metrics: None,
            lock_hash: None,
            update_status: UpdateStatus::default(),
            needs_reboot: None,
            store_free_mib: None,
            boot_free_mib: None,
            freshness: Freshness::default(),
        });
        let v: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
        assert!(v["payload"]["pending_command"].is_null());
        assert!(v["payload"]["command_pid"].is_null());
        assert!(v["payload"]["metrics"].is_null());
        assert!(v["payload"].get("lock_hash").is_none());
    }

    #[test]
    fn parses_known_frames() {
        assert_eq!(
            parse_incoming(r#"{"type":"registered","payload":{"host_id":"h"}}"#),
            Ok(Incoming::Registered {
                host_id: "h".into()
            })
        );
        assert_eq!(
            parse_incoming(r#"{"type":"command","payload":{"command":"pull"}}"#),
            Ok(Incoming::Command {
                command: "pull".into()
            })
        );
        assert_eq!(
            parse_incoming(r#"{"type":"kill_command","payload":{"signal":"SIGKILL","pid":0}}"#),
            Ok(Incoming::KillCommand {
                signal: "SIGKILL".into(),
                pid: 0
            })
        );
    }

    #[test]
    fn tells_malformed_from_unknown() {
        assert!(matches!(
            parse_incoming("{not json"),
            Err(IncomingError::Malformed(_))
        ));
        assert!(matches!(
            parse_incoming(r#"{"payload":{}}"#),
            Err(IncomingError::Malformed(_))
        ));
        assert!(matches!(
            parse_incoming(r#"{"type":"command","payload":{"command":5}}"#),
            Err(IncomingError::Malformed(_))
        ));
        assert_eq!(
            parse_incoming(r#"{"type":"party","payload":{}}"#),
            Err(IncomingError::UnknownType("party".into()))
        );
    }
}
