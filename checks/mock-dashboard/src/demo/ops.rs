//! Operations as the dashboard's UI runs them: dispatch, the `status`
//! answer, and the operation's end.

use std::time::Duration;

use super::*;

impl Demo {
    /// Dispatch `op` as the UI does and follow it: its `status`, then the
    /// operation to its end. Returns the status frame when the operation
    /// succeeded.
    pub(super) async fn operation(
        &mut self,
        step: &str,
        op: &str,
        timeout_s: u64,
    ) -> Option<Frame> {
        self.operation_with(step, op, timeout_s, |_| ()).await
    }

    /// [`operation`](Self::operation), showing every item on the way to `seen`.
    pub(super) async fn operation_with(
        &mut self,
        step: &str,
        op: &str,
        timeout_s: u64,
        seen: impl FnMut(&Item),
    ) -> Option<Frame> {
        let id = self.dispatch(step, op)?;
        let status = self.answer(step, op, timeout_s, seen).await?;
        self.expect_ok(&format!("{step} {op}"), &status);
        let done = self.op_end(step, &id, timeout_s).await?;
        (done.status == "SUCCESS").then_some(status)
    }

    /// Dispatch `op`; its id, or `None` (recorded) when it was not sent.
    pub(super) fn dispatch(&mut self, step: &str, op: &str) -> Option<String> {
        self.drain();
        self.last_miss = None;
        let d = self.dash.dispatch(HOST, op, false);
        match (&d.command_id, d.status.as_str()) {
            (Some(id), "EXECUTING") => {
                self.line(
                    "→",
                    "command",
                    &format!("{op}   (operation {id}: EXECUTING)"),
                );
                Some(id.clone())
            }
            _ => {
                let why = d.message.unwrap_or_default();
                self.note(&format!(
                    "the dashboard did not send {op}: {} {why}",
                    d.status
                ));
                self.missed(&format!("{step} {op}: {} ({why})", d.status));
                None
            }
        }
    }

    /// Wait for the agent's `status` for `command`.
    pub(super) async fn answer(
        &mut self,
        step: &str,
        command: &str,
        timeout_s: u64,
        mut seen: impl FnMut(&Item),
    ) -> Option<Frame> {
        let item = self
            .wait_for_answer(Duration::from_secs(timeout_s), |i| {
                seen(i);
                i.frame("status")
                    .is_some_and(|f| f.payload["command"] == command)
            })
            .await;
        match item {
            Some(Item::Frame(f)) => Some(f),
            _ => {
                self.missed(&format!("{step} {command}: no `status` for {command}"));
                None
            }
        }
    }

    /// Wait for operation `id` to end (the hub ends most at the heartbeat
    /// after their status); print and return it.
    pub(super) async fn op_end(&mut self, step: &str, id: &str, timeout_s: u64) -> Option<Op> {
        let dash = self.dash.clone();
        let ended = move || dash.op(id).is_some_and(|o| o.is_terminal());
        let done = ended()
            || self
                .wait_for(Duration::from_secs(timeout_s), |_| ended())
                .await
                .is_some();
        let op = self.dash.op(id);
        match (&op, done) {
            (Some(o), true) => {
                let why = o
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                self.note(&format!("operation {id} {}: {}{why}", o.op, o.status));
                self.show_row();
                if o.status != "SUCCESS" {
                    self.missed(&format!("{step} {}: operation {}{why}", o.op, o.status));
                }
            }
            _ => self.missed(&format!(
                "{step}: operation {id} did not end (it is {})",
                op.as_ref().map_or("unknown", |o| o.status)
            )),
        }
        op
    }

    /// Print the host row as the dashboard's UI would show it.
    pub(super) fn show_row(&mut self) {
        self.drain();
        let Some(h) = self.dash.host(HOST) else {
            return;
        };
        let r = &h.row;
        let cell = |name: &str, c: &crate::Check| {
            if c.status == "ok" || c.message.is_empty() {
                format!("{name} {}", c.status)
            } else {
                format!("{name} {} ({})", c.status, c.message)
            }
        };
        println!(
            "{:>9}  row: {} · {} · {} · {} · {}",
            "",
            cell("Agent", &r.agent),
            cell("Git", &r.git),
            cell("Lock", &r.lock),
            cell("System", &r.system),
            cell("Tests", &r.tests)
        );
    }

    /// Record a step whose expected answer did not come, with the reason the
    /// last wait gave up when there is one.
    pub(super) fn missed(&mut self, what: &str) {
        let entry = match self.last_miss.take() {
            Some(why) => format!("{what} ({why})"),
            None => what.to_owned(),
        };
        self.unanswered.push(entry);
    }

    /// Record that the demo could not do its own part (the first such problem).
    pub(super) fn setup_failed(&mut self, what: String) {
        self.setup_error.get_or_insert(what);
    }

    /// Record `status` when it is not `ok`.
    pub(super) fn expect_ok(&mut self, step: &str, status: &Frame) {
        let p = &status.payload;
        if p["status"] != "ok" {
            self.note(&format!("expected status \"ok\", got {}", p["status"]));
            self.missed(&format!(
                "{step}: the status is {} (exit {}, {:?}), expected \"ok\"",
                p["status"],
                p["exit_code"],
                text(p, "message")
            ));
        }
    }
}
