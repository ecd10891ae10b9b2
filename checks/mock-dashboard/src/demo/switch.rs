//! Step 4 of the demo: a switch dispatched as the dashboard's UI does, under
//! the agent's rollback watchdog. The agent switches, checks the new
//! generation and reports its one status (the hub's operation awaits the
//! reconnect, `lifecycle.go`), exits 101 and is started again as systemd
//! would; the new process registers, which completes the operation, and
//! confirms the switch to the watchdog.

use std::time::Duration;

use super::Demo;

impl Demo {
    /// Step 4: the switch, the agent's exit for a restart, the new agent
    /// process registering and confirming, and the operation's end.
    pub(super) async fn switch_and_restart(&mut self) {
        let Some(id) = self.dispatch("4.", "switch") else {
            return;
        };
        let Some(status) = self.answer("4.", "switch", 30, |_| ()).await else {
            return;
        };
        self.expect_ok("4. switch", &status);
        let exit = self.wait_exit(Duration::from_secs(20)).await;
        match exit {
            Some(e) if e.code == Some(101) => self.note(&format!(
                "the agent exited with {} (\"switched, restart me\") after its status: the new generation's agent has to reach the dashboard, or the watchdog rolls it back; starting it again, as systemd would",
                e.how
            )),
            Some(e) => {
                self.missed(&format!("4. switch: the agent exited with {}, expected 101", e.how));
                return;
            }
            None => {
                self.missed("4. switch: the agent did not exit for its restart");
                return;
            }
        }
        match self.launch.start() {
            Ok(p) => {
                self.line(
                    "·",
                    "agent started",
                    &format!("pid {}", p.pid.map_or("?".into(), |p| p.to_string())),
                );
                self.pid = p.pid;
                self.exited = p.exited;
            }
            Err(e) => {
                self.setup_failed(format!("restarting the agent failed: {e}"));
                return;
            }
        }
        self.op_end("4.", &id, 30).await;
    }
}
