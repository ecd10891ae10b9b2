//! Operations and their lifecycle, from upstream
//! `src/internal/ops/lifecycle.go` and `registry.go` (NixFleet 3.1.5).
//!
//! An operation dispatched through the control API (`POST /api/dispatch`, the
//! UI's only path) gets an id and moves through the upstream states:
//!
//! - `VALIDATING` → `BLOCKED` when the op's pre-check fails (unless `force`),
//!   else `EXECUTING` with `pending_command` set and `{"command": <op>}` sent.
//!   A host with a non-terminal operation refuses another ("command_pending").
//! - The agent's `status` for that op: exit ≠ 0 → `ERROR` with its message;
//!   `switch`/`pull-switch` exit 0 → `AWAITING_RECONNECT`, then `SUCCESS` when
//!   the agent registers again within the reconnect timeout (90 s), else
//!   `TIMEOUT`; any other op exit 0 → its post-check runs at the **next
//!   heartbeat**: `SUCCESS`, or `PARTIAL` when the post-check fails.
//! - A disconnect while `switch`/`pull-switch` is `EXECUTING` →
//!   `AWAITING_RECONNECT` (P1920).
//! - A second status for an op whose `cancelTimeout` is closed already
//!   (`AWAITING_RECONNECT`, or a deferred post-check) panics the real hub's
//!   loop in `HandleCommandComplete`: the mock records a violation and keeps
//!   the op as it is (`conn.rs`, with the close right after a switch's
//!   status that races the same panic through `hub.go`'s queues).
//! - The reconnect completes it with `SUCCESS` without a freshness
//!   comparison: `HandleAgentReconnect`'s `STALE_BINARY`/`SUSPICIOUS` verdicts
//!   need a pre-switch freshness that 3.1.5's `getAgentFreshness` never
//!   provides (it returns nil).
//! - `command_rejected` → `ERROR` "Agent rejected command: …".
//! - Kill (`POST /api/hosts/{host}/kill`, the UI's Kill button) → `KILLING` and
//!   the command `kill` is sent; the killed command's status then ends it.
//!
//! Not mirrored: the warning and hard timeouts (`RUNNING_WARNING`,
//! `TIMEOUT_PENDING`), which only change what the UI offers, the TOTP check of
//! `reboot` (the mock accepts any code), and the binary freshness verdicts
//! after a reconnect (upstream never captures the pre-switch freshness: its
//! `getAgentFreshness` returns nil, so a reconnect is always `SUCCESS`).

use std::time::Duration;

use axum::extract::ws::Message;

use crate::link::Outgoing;
pub use crate::op::{Dispatched, Op};
use crate::state::State;

/// How long a switch waits for the agent to register again (upstream's
/// `ReconnectTimeout` for switch).
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(90);

/// Most operations kept; the oldest finished ones are dropped first.
pub const MAX_OPS: usize = 10_000;

/// The ops of upstream's registry that agents execute.
pub const AGENT_OPS: [&str; 13] = [
    "pull",
    "switch",
    "test",
    "rollback",
    "restart",
    "stop",
    "reboot",
    "check-version",
    "refresh-git",
    "refresh-lock",
    "refresh-system",
    "bump-flake",
    "force-rebuild",
];

fn command_frame(name: &str) -> Message {
    let text = serde_json::json!({"type": "command", "payload": {"command": name}});
    Message::Text(text.to_string().into())
}

impl State {
    fn active_mut(&mut self, host: &str) -> Option<&mut Op> {
        let id = self.hosts.get(host)?.active_op.clone()?;
        self.ops.iter_mut().rev().find(|o| o.id == id)
    }

    /// The host's non-terminal operation, if any.
    pub(crate) fn active(&self, host: &str) -> Option<&Op> {
        let id = self.hosts.get(host)?.active_op.as_ref()?;
        self.ops.iter().rev().find(|o| &o.id == id)
    }

    fn push_op(&mut self, op: Op) {
        if self.ops.len() >= MAX_OPS
            && let Some(i) = self.ops.iter().position(Op::is_terminal)
        {
            self.ops.remove(i);
        }
        self.ops.push_back(op);
    }

    /// Ends the host's active operation with `status` and clears
    /// `pending_command` (upstream `clearActive`).
    fn finish(
        &mut self,
        host: &str,
        status: &'static str,
        error: Option<String>,
        exit: Option<i64>,
    ) {
        if let Some(op) = self.active_mut(host) {
            op.status = status;
            op.error = error;
            if exit.is_some() {
                op.exit_code = exit;
            }
            op.deferred = false;
            tracing::info!("{host}: operation {} {} → {status}", op.id, op.op);
        }
        if let Some(h) = self.hosts.get_mut(host) {
            h.active_op = None;
            h.stored.pending_command = None;
        }
    }

    /// The pre-check of `op` on `host` (upstream `registry.go` `Validate`).
    fn validate(
        &self,
        host: &str,
        op: &str,
        dashboard_version: &str,
    ) -> Result<(), (&'static str, String)> {
        let h = self.hosts.get(host);
        let online = h.is_some_and(|h| h.conn.is_some());
        let pending = h.and_then(|h| h.stored.pending_command.clone());
        let need_online = || {
            if online {
                Ok(())
            } else {
                Err(("offline", "Host is offline".to_owned()))
            }
        };
        let not_busy = || match &pending {
            Some(p) => Err(("busy", format!("Command {p:?} already running"))),
            None => Ok(()),
        };
        let Some(h) = h else {
            return Err(("offline", "Host is offline".to_owned()));
        };
        match op {
            "pull" => {
                need_online()?;
                not_busy()?;
                if crate::hub::git_status(self.remote.as_ref(), &h.stored.generation).status == "ok"
                {
                    return Err(("already_current", "Git already up to date".to_owned()));
                }
                Ok(())
            }
            "switch" => {
                need_online()?;
                not_busy()?;
                if h.stored.lock_status() == "outdated" {
                    return Err((
                        "lock_outdated",
                        "Pull required before switch (lock outdated)".to_owned(),
                    ));
                }
                if h.stored.system_status() == "ok" && !h.stored.agent_outdated(dashboard_version) {
                    return Err(("already_current", "System already up to date".to_owned()));
                }
                Ok(())
            }
            "test" | "rollback" => {
                need_online()?;
                not_busy()
            }
            "stop" => match pending {
                Some(_) => Ok(()),
                None => Err(("no_pending", "No command running to stop".to_owned())),
            },
            _ => need_online(),
        }
    }

    /// The post-check of a finished `op` (upstream `registry.go` `PostCheck`).
    fn post_check(&self, host: &str, op: &str, dashboard_version: &str) -> Result<(), String> {
        let Some(h) = self.hosts.get(host) else {
            return Err("host not found".to_owned());
        };
        let online = h.conn.is_some();
        match op {
            "pull" if h.stored.lock_status() != "ok" => Err("Lock status not ok after pull".into()),
            "switch" if h.stored.system_status() != "ok" => {
                Err("System status not ok after switch".into())
            }
            "rollback" if h.stored.system_status() != "ok" => {
                Err("System status not ok after rollback".into())
            }
            "restart" if !online => Err("Agent did not reconnect after restart".into()),
            "reboot" if !online => Err("Agent did not reconnect after reboot".into()),
            "bump-flake" if h.stored.lock_status() != "ok" => {
                Err("Lock file did not change after bump".into())
            }
            "force-rebuild" if h.stored.agent_outdated(dashboard_version) => {
                Err("Agent still outdated after force rebuild".into())
            }
            _ => Ok(()),
        }
    }

    /// `ExecuteOp` for one host. Returns the dispatch answer.
    pub(crate) fn dispatch(
        &mut self,
        host: &str,
        op: &str,
        force: bool,
        dashboard_version: &str,
    ) -> Dispatched {
        if !AGENT_OPS.contains(&op) {
            return Dispatched::refused(
                host,
                "error",
                "unknown_op",
                format!("Unknown operation: {op}"),
            );
        }
        if !self.hosts.contains_key(host) {
            return Dispatched::refused(host, "error", "not_found", "Host not found".to_owned());
        }
        if let Some(active) = self.active(host) {
            let message = format!("Command '{}' already running", active.op);
            return Dispatched::refused(host, "error", "command_pending", message);
        }
        self.op_seq += 1;
        let id = format!("op-{}", self.op_seq);
        let mut record = Op {
            id: id.clone(),
            host: host.to_owned(),
            op: op.to_owned(),
            status: "VALIDATING",
            error: None,
            exit_code: None,
            deferred: false,
        };
        if !force && let Err((code, message)) = self.validate(host, op, dashboard_version) {
            record.status = "BLOCKED";
            record.error = Some(message.clone());
            self.push_op(record);
            return Dispatched {
                command_id: Some(id),
                ..Dispatched::refused(host, "blocked", code, message)
            };
        }
        record.status = "EXECUTING";
        let conn = self.hosts.get(host).and_then(|h| h.conn.clone());
        let sent = conn.is_some_and(|c| {
            c.out
                .send(Outgoing::Message(command_frame(op), None))
                .is_ok()
        });
        if !sent {
            record.status = "ERROR";
            record.error = Some("Failed to send command to agent".to_owned());
            record.exit_code = Some(1);
            self.push_op(record);
            return Dispatched {
                command_id: Some(id),
                ..Dispatched::refused(
                    host,
                    "error",
                    "send_failed",
                    "Failed to send command to agent".to_owned(),
                )
            };
        }
        tracing::info!("{host}: operation {id} {op} EXECUTING");
        self.push_op(record);
        if let Some(h) = self.hosts.get_mut(host) {
            h.active_op = Some(id.clone());
            h.stored.pending_command = Some(op.to_owned());
        }
        Dispatched {
            host_id: host.to_owned(),
            status: "EXECUTING".to_owned(),
            command_id: Some(id),
            code: None,
            message: None,
        }
    }

    /// `KillCommand`: `KILLING`, and the command `kill` sent.
    pub(crate) fn kill(&mut self, host: &str) -> Result<(), String> {
        let conn = self.hosts.get(host).and_then(|h| h.conn.clone());
        let Some(op) = self.active_mut(host) else {
            return Err("No active command for host".to_owned());
        };
        op.status = "KILLING";
        let sent = conn.is_some_and(|c| {
            c.out
                .send(Outgoing::Message(command_frame("kill"), None))
                .is_ok()
        });
        if !sent {
            op.status = "ERROR";
            op.error = Some("Failed to send kill signal".to_owned());
            return Err("Failed to send kill signal".to_owned());
        }
        Ok(())
    }

    /// `HandleCommandComplete`. Returns the id of an operation that now awaits
    /// a reconnect (the caller starts its timer).
    pub(crate) fn op_status(
        &mut self,
        host: &str,
        command: &str,
        exit: i64,
        message: &str,
    ) -> Option<String> {
        let active = self.active_mut(host)?;
        if active.op != command {
            return None;
        }
        if (command == "switch" || command == "pull-switch") && exit == 0 {
            active.status = "AWAITING_RECONNECT";
            active.exit_code = Some(0);
            return Some(active.id.clone());
        }
        if exit == 0 {
            active.deferred = true;
            active.exit_code = Some(0);
            return None;
        }
        self.finish(host, "ERROR", Some(message.to_owned()), Some(exit));
        None
    }

    /// `HandleHeartbeat`: the deferred post-check.
    pub(crate) fn op_heartbeat(&mut self, host: &str, dashboard_version: &str) {
        let Some(op) = self
            .active(host)
            .filter(|o| o.deferred)
            .map(|o| o.op.clone())
        else {
            return;
        };
        match self.post_check(host, &op, dashboard_version) {
            Ok(()) => self.finish(host, "SUCCESS", None, None),
            Err(why) => self.finish(host, "PARTIAL", Some(why), None),
        }
    }

    /// `HandleAgentReconnect`.
    pub(crate) fn op_reconnect(&mut self, host: &str) {
        if self
            .active(host)
            .is_some_and(|o| o.status == "AWAITING_RECONNECT")
        {
            self.finish(host, "SUCCESS", None, None);
        }
    }

    /// The agent's socket went away (P1920). Returns an operation that now
    /// awaits a reconnect.
    pub(crate) fn op_disconnect(&mut self, host: &str) -> Option<String> {
        let op = self.active_mut(host)?;
        if (op.op == "switch" || op.op == "pull-switch") && op.status == "EXECUTING" {
            op.status = "AWAITING_RECONNECT";
            return Some(op.id.clone());
        }
        None
    }

    /// `HandleCommandRejected`.
    pub(crate) fn op_rejected(&mut self, host: &str, reason: &str, current: &str) {
        if self.active(host).is_none() {
            return;
        }
        let error = if current.is_empty() {
            format!("Agent rejected command: {reason}")
        } else {
            format!("Agent rejected command: {reason} (agent running: {current})")
        };
        self.finish(host, "ERROR", Some(error), Some(1));
    }

    /// The reconnect timer of operation `id` ran out.
    pub(crate) fn op_reconnect_timeout(&mut self, host: &str, id: &str) {
        if self
            .active(host)
            .is_some_and(|o| o.id == id && o.status == "AWAITING_RECONNECT")
        {
            self.finish(
                host,
                "TIMEOUT",
                Some("Agent did not reconnect in time".to_owned()),
                None,
            );
        }
    }
}
