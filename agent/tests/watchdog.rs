//! End-to-end: the rollback watchdog (docs/commands.md, "Automatic
//! rollback"). The real agent and its real switch supervisor, a fake
//! `nixos-rebuild`, and a fixture tree standing for the system before the
//! switch (`NIXFLEET_CURRENT_SYSTEM`), whose fake `bin/switch-to-configuration`
//! records what it was asked to activate. A fake `nix-env` records how the
//! system profile is set back; a fake `systemctl` lists units.
//!
//! The agent that ran the switch checks the new generation before it
//! leaves and sends the switch's one status then; the agent of the "new
//! generation" is simply the next agent process, as systemd would start it
//! after exit 101, which only has to reach the dashboard; one that "cannot
//! reach the dashboard" is given a port nobody listens on. Every outcome
//! is also asserted as the hub's operation log would show it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nixfleet_mock_dashboard::MockDashboard;
use serde_json::Value;

const HOST: &str = "watchhost";
/// The status of a watched switch whose health checks passed before the
/// agent restarted.
const OK_MESSAGE: &str = "Switch succeeded; the new generation passed its health checks";
/// Nobody listens here: an agent that cannot reach its dashboard.
const NOWHERE: &str = "ws://127.0.0.1:9/ws";

struct Setup {
    dash: MockDashboard,
    fx: Fixture,
    fakes: Fakes,
    /// The system before the switch, as its store path would be.
    previous: PathBuf,
    profile: PathBuf,
}

async fn setup() -> Setup {
    setup_on(dashboard().await).await
}

/// A setup whose mock keeps a switch awaiting its reconnect for `secs`
/// (the hub's 90 s window, shrunk with the test's deadlines).
async fn setup_with_reconnect_window(secs: u64) -> Setup {
    let dash = MockDashboard::start(nixfleet_mock_dashboard::Options {
        reconnect_timeout: std::time::Duration::from_secs(secs),
        ..Default::default()
    })
    .await
    .unwrap();
    setup_on(dash).await
}

async fn setup_on(dash: MockDashboard) -> Setup {
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let d = fakes.dir.display();
    let previous = fx.tmp.path().join("store/nixos-system-watchhost-1");
    write_exec(
        &previous.join("bin/switch-to-configuration"),
        &format!("#!/bin/sh\necho \"$0 $*\" >> {d}/activated\n"),
    );
    let previous = std::fs::canonicalize(&previous).unwrap();
    std::os::unix::fs::symlink(&previous, fx.tmp.path().join("current-system")).unwrap();
    write_exec(
        &fakes.bin.join("nix-env"),
        &format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {d}/nix-env.argv\n"),
    );
    // `systemctl list-units --state=<s> …` prints the units in fake/units.<s>
    write_exec(
        &fakes.bin.join("systemctl"),
        &format!("#!/bin/sh\nstate=${{2#--state=}}\ncat {d}/units.$state 2>/dev/null\nexit 0\n"),
    );
    let profile = fx.tmp.path().join("profiles/system");
    Setup {
        dash,
        fx,
        fakes,
        previous,
        profile,
    }
}

impl Setup {
    fn agent(&self, url: &str, deadline_secs: u64) -> AgentBuilder {
        AgentBuilder::new(url, HOST, &self.fx)
            .with_fakes(&self.fakes)
            .env(
                "NIXFLEET_CURRENT_SYSTEM",
                self.fx.tmp.path().join("current-system").to_str().unwrap(),
            )
            .env("NIXFLEET_SYSTEM_PROFILE", self.profile.to_str().unwrap())
            .env("NIXFLEET_ROLLBACK_DEADLINE", &deadline_secs.to_string())
    }

    /// Sends `switch` to the registered agent `a`, which checks the new
    /// generation, reports `ok` and only then exits 101 for its restart.
    async fn switch_and_restart(&self, a: &mut Agent) -> u64 {
        wait_register(&self.dash, HOST, 0).await;
        let sent = self.dash.last_seq();
        self.dash.send_command(HOST, "switch").await.unwrap();
        assert_eq!(a.wait_exit(WAIT).await.code(), Some(101), "restart code");
        let statuses = self.statuses();
        assert_eq!(statuses.len(), 1, "reported before the restart");
        assert_eq!(statuses[0]["status"], "ok", "{}", statuses[0]);
        assert_eq!(statuses[0]["message"], OK_MESSAGE);
        sent
    }

    /// Dispatches `switch` through the mock's lifecycle to the registered
    /// agent `a`, which checks the new generation, reports `ok` and exits 101
    /// for its restart; returns the operation's id.
    async fn dispatch_switch_and_restart(&self, a: &mut Agent) -> String {
        wait_register(&self.dash, HOST, 0).await;
        let sent = self.dash.last_seq();
        let d = self.dash.dispatch(HOST, "switch", false);
        assert_eq!(d.status, "EXECUTING", "{d:?}");
        let id = d.command_id.clone().unwrap();
        let st = status_for(&self.dash, HOST, "switch", sent).await;
        assert_eq!(st.payload["status"], "ok", "{}", st.payload);
        assert_eq!(st.payload["message"], OK_MESSAGE);
        assert_eq!(a.wait_exit(WAIT).await.code(), Some(101), "restart code");
        id
    }

    fn statuses(&self) -> Vec<Value> {
        self.dash
            .frames(HOST, Some("status"))
            .into_iter()
            .map(|f| f.payload)
            .filter(|p| p["command"] == "switch")
            .collect()
    }

    fn record(&self) -> PathBuf {
        let dir = self.fx.state.join("switch");
        let records: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(records.len(), 1, "one switch, never retried: {records:?}");
        records[0].clone()
    }

    fn assert_rolled_back(&self) {
        assert_eq!(
            self.fakes.read("nix-env.argv"),
            format!(
                "-p\n{}\n--set\n{}\n",
                self.profile.display(),
                self.previous.display()
            ),
            "the profile is set back to the recorded path"
        );
        assert_eq!(
            self.fakes.read("activated"),
            format!(
                "{}/bin/switch-to-configuration switch\n",
                self.previous.display()
            ),
            "the recorded system was activated, once"
        );
    }
}

fn supervisor_pid(record: &Path) -> i32 {
    std::fs::read_to_string(record.join("supervisor.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rolled_back_message(s: &Setup, reason: &str) -> String {
    format!(
        "rolled back to {}: {reason}",
        s.previous.file_name().unwrap().to_string_lossy()
    )
}

#[tokio::test]
async fn a_switch_confirmed_in_time_is_not_rolled_back() {
    let s = setup().await;
    let mut a = s.agent(&s.dash.ws_url(), 60).spawn();
    // through the dashboard's lifecycle: the status comes before the restart
    let id = s.dispatch_switch_and_restart(&mut a).await;
    let id = id.as_str();
    // lifecycle.go: a switch's exit 0 awaits the reconnect
    assert_eq!(s.dash.op(id).unwrap().status, "AWAITING_RECONNECT");
    let record = s.record();
    let supervisor = supervisor_pid(&record);
    let b = s.agent(&s.dash.ws_url(), 60).spawn();
    assert!(
        pid_gone(supervisor).await,
        "the supervisor ends once the new generation reached the dashboard"
    );
    assert!(
        b.log
            .wait_for("switch (reported before the restart) ended: Ok", WAIT)
            .await
    );
    // the new generation's verdict is in its output, not in a status
    let said = s.dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("output")).into_iter().find(|f| {
            f.payload["line"]
                == "[nixfleet-agent] switch, reported before the restart: Switch succeeded; confirmed by the new generation"
        })
    });
    assert!(said.await.is_some());
    let op = s.dash.wait_op(id, WAIT).await.unwrap();
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(
        std::fs::read_to_string(record.join("verdict")).unwrap(),
        "confirmed\n"
    );
    assert!(!s.fakes.file("activated").exists(), "nothing rolled back");
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}

/// `force-rebuild` (upstream's registry: "Rebuild with cache bypass", its
/// `force-update` pipeline's first op): a switch with
/// `--option narinfo-cache-negative-ttl 0`, with everything a switch has:
/// detached, watched, checked, reported, the agent restarted on the new
/// system.
#[tokio::test]
async fn force_rebuild_is_a_watched_switch_that_bypasses_the_negative_cache() {
    let s = setup().await;
    let mut a = s.agent(&s.dash.ws_url(), 60).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let sent = s.dash.last_seq();
    let d = s.dash.dispatch(HOST, "force-rebuild", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let st = status_for(&s.dash, HOST, "force-rebuild", sent).await;
    assert_eq!(st.payload["status"], "ok", "{}", st.payload);
    assert_eq!(
        st.payload["message"],
        "Force rebuild succeeded; the new generation passed its health checks"
    );
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101), "restart code");
    assert!(
        s.fakes.read("nix-build.argv").contains(&format!(
            " --option narinfo-cache-negative-ttl 0 {}#nixosConfigurations.",
            s.fx.repo.display()
        )),
        "{}",
        s.fakes.read("nix-build.argv")
    );
    assert_eq!(s.fakes.read("rebuild.argv"), "switch\n");
    let supervisor = supervisor_pid(&s.record());
    let _b = s.agent(&s.dash.ws_url(), 60).spawn();
    assert!(
        pid_gone(supervisor).await,
        "the supervisor ends once confirmed"
    );
    // not a switch to the hub: its exit 0 defers the post-check to the next
    // heartbeat (no AWAITING_RECONNECT), which passes
    let op = s
        .dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    let statuses = s
        .dash
        .frames(HOST, Some("status"))
        .into_iter()
        .filter(|f| f.payload["command"] == "force-rebuild")
        .count();
    assert_eq!(statuses, 1, "reported once");
    assert!(!s.fakes.file("activated").exists(), "nothing rolled back");
    assert_no_violations(&s.dash);
}

/// A switch tool that activates the new system and then exits non-zero, as
/// switch-to-configuration does when some units fail to start (exit 4): the
/// switch happened and its checks pass, so the new generation stays and the
/// agent restarts onto it; the one status, sent before the restart, is the
/// tool's failure: the hub's op is ERROR with the real exit code.
#[tokio::test]
async fn a_switch_that_activated_but_exited_non_zero_is_an_error_before_the_restart() {
    let s = setup().await;
    let next = s.fx.tmp.path().join("store/nixos-system-watchhost-2");
    let current = s.fx.tmp.path().join("current-system");
    // what switch-to-configuration does when a unit fails: it switched
    // (/run/current-system is the new system), then exits 4
    write_exec(
        &next.join("bin/switch-to-configuration"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = dry-activate ] && exit 0\nln -sfn {} {}\necho 'warning: the following units failed: flaky.service' >&2\nexit 4\n",
            next.display(),
            current.display()
        ),
    );
    std::fs::write(next.join("nixos-version"), "26.05.next\n").unwrap();
    std::fs::write(s.fakes.file("nix.out"), next.to_str().unwrap()).unwrap();
    let mut a = s.agent(&s.dash.ws_url(), 60).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let sent = s.dash.last_seq();
    let d = s.dash.dispatch(HOST, "switch", false);
    let st = status_for(&s.dash, HOST, "switch", sent).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    assert_eq!(st.payload["exit_code"], 4, "{}", st.payload);
    assert_eq!(
        st.payload["message"],
        "Switch failed: `nixfleet-agent --activate nixos switch ".to_string()
            + &format!("{} {}", s.profile.display(), next.display())
            + "` exited 4 after activating the new generation (nixfleet-agent: switch-to-configuration switch exited 4: some units failed to start or to restart); the new generation passed its checks and stays",
    );
    // the hub's verdict, before the agent leaves
    let op = s.dash.op(d.command_id.as_deref().unwrap()).unwrap();
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert_eq!(op.exit_code, Some(4));
    assert_eq!(
        a.wait_exit(WAIT).await.code(),
        Some(101),
        "onto the new generation"
    );
    let b = s.agent(&s.dash.ws_url(), 60).spawn();
    assert!(
        b.log
            .wait_for("(reported before the restart) ended", WAIT)
            .await
    );
    assert!(!s.fakes.file("activated").exists(), "nothing rolled back");
    let op = s.dash.op(d.command_id.as_deref().unwrap()).unwrap();
    assert_eq!(op.status, "ERROR", "the reconnect changes nothing: {op:?}");
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}

/// The net outside the agent: the new generation's agent never reaches the
/// dashboard, the supervisor rolls back at the deadline. The switch was
/// reported (its checks passed); what happened after goes to the System
/// compartment, not to a second status.
#[tokio::test]
async fn a_new_agent_that_cannot_reach_the_dashboard_is_rolled_back_once() {
    let s = setup().await;
    let mut a = s.agent(&s.dash.ws_url(), 2).spawn();
    let sent = s.switch_and_restart(&mut a).await;
    // the deadline passes, the supervisor rolls back; this agent says so
    // (output, log, System) and exits to run the rolled-back binary
    let mut b = s.agent(NOWHERE, 2).spawn();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(101));
    s.assert_rolled_back();
    let _c = s.agent(&s.dash.ws_url(), 2).spawn();
    // whoever saw the window end first says so: the supervisor (the whole
    // window), or the agent itself, which waits for what was left of the
    // window when it started (the 2 s window's rest: 1 or 2 s)
    let reasons = [
        "the new generation's agent did not confirm within 2 s (it did not reach the dashboard, or its health checks did not finish)",
        "the new generation's agent did not reach the dashboard within 2 s",
        "the new generation's agent did not reach the dashboard within 1 s",
    ];
    let (_, reg) = wait_register(&s.dash, HOST, sent).await;
    let (_, hb) = heartbeat_where(&s.dash, HOST, reg, "System error", |p| {
        p["update_status"]["system"]["status"] == "error"
    })
    .await;
    let message = hb["update_status"]["system"]["message"].as_str().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| message == rolled_back_message(&s, r)),
        "{message}"
    );
    assert_eq!(s.statuses().len(), 1, "reported once, before the restart");
    s.record();
    assert_no_violations(&s.dash);
}

/// The new generation's agent never starts (its unit fails, as a Home
/// Manager user unit that is `keep-old` restarts onto it only after the
/// status went out): no agent runs until the supervisor has rolled back at
/// the deadline. The next agent, of the generation the host is back on,
/// shows the rollback on the System row; the one status stays the one sent
/// before the restart.
#[tokio::test]
async fn a_new_agent_that_never_starts_is_rolled_back_and_the_next_one_shows_it() {
    // the test's 2 s deadline stands for one of at least 100 s, which
    // outlasts the hub's 90 s window: the mock's window shrinks with it
    let s = setup_with_reconnect_window(1).await;
    let mut a = s.agent(&s.dash.ws_url(), 2).spawn();
    wait_register(&s.dash, HOST, 0).await;
    // through the dashboard's lifecycle: the status comes before the restart
    let sent = s.dash.last_seq();
    let d = s.dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let id = d.command_id.clone().unwrap();
    let st = status_for(&s.dash, HOST, "switch", sent).await;
    assert_eq!(st.payload["message"], OK_MESSAGE, "{}", st.payload);
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101), "restart code");
    file_appears(&s.record().join("rollback.exit")).await;
    s.assert_rolled_back();
    let _b = s.agent(&s.dash.ws_url(), 2).spawn();
    let (_, reg) = wait_register(&s.dash, HOST, sent).await;
    let (_, hb) = heartbeat_where(&s.dash, HOST, reg, "System error", |p| {
        p["update_status"]["system"]["status"] == "error"
    })
    .await;
    let message = hb["update_status"]["system"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&rolled_back_message(
            &s,
            "the new generation's agent did not confirm within 2 s"
        )),
        "{message}"
    );
    assert_eq!(s.statuses().len(), 1, "reported once, before the restart");
    // no agent came back within the hub's window: TIMEOUT, never SUCCESS
    let op = s.dash.wait_op(&id, WAIT).await.unwrap();
    assert_eq!(op.status, "TIMEOUT", "{op:?}");
    assert_no_violations(&s.dash);
}

/// A health check that fails right after the activation: the agent that
/// ran the switch rolls back and reports the error before it goes
/// anywhere (it runs the generation the host is back on: no restart); the
/// hub's op is ERROR, never SUCCESS.
#[tokio::test]
async fn a_failed_health_check_rolls_back_and_is_an_error_before_the_agent_leaves() {
    let s = setup().await;
    write_exec(
        &s.fx.repo.join("hosts").join(HOST).join("health/10-web.sh"),
        "#!/bin/sh\necho 'web: connection refused' >&2\nexit 3\n",
    );
    let a = s.agent(&s.dash.ws_url(), 600).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let sent = s.dash.last_seq();
    let d = s.dash.dispatch(HOST, "switch", false);
    let st = status_for(&s.dash, HOST, "switch", sent).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    let message = rolled_back_message(&s, "health check 10-web.sh failed (exit 3)");
    assert_eq!(st.payload["message"], message.as_str());
    s.assert_rolled_back();
    let op = s.dash.op(d.command_id.as_deref().unwrap()).unwrap();
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert_eq!(op.error.as_deref(), Some(message.as_str()));
    // the same agent goes on: a heartbeat after the status, System error
    heartbeat_where(&s.dash, HOST, st.seq, "System error", |p| {
        p["update_status"]["system"]["message"] == message.as_str()
    })
    .await;
    assert!(
        s.dash
            .frames(HOST, Some("output"))
            .iter()
            .any(|f| f.payload["line"]
                == "[nixfleet-agent] rolling back: health check 10-web.sh failed (exit 3)"),
        "the output says it"
    );
    assert!(
        a.log.text().contains("switch ended: Error"),
        "the agent goes on"
    );
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_unit_that_was_active_and_failed_after_the_switch_rolls_back() {
    let s = setup().await;
    // a host has hundreds of units; the one that fails comes after them,
    // and the list is longer than a pipe holds (64 KiB)
    let mut active: String = (0..2000)
        .map(|n| format!("a-unit-{n:04}.service loaded active running a unit of the host\n"))
        .collect();
    assert!(active.len() > 96 * 1024);
    active.push_str("nginx.service loaded active running nginx\n");
    std::fs::write(s.fakes.file("units.active"), active).unwrap();
    // after the switch: nginx failed, and a unit that was never active too
    std::fs::write(
        s.fakes.file("units.failed"),
        "nginx.service loaded failed failed nginx\nflaky.service loaded failed failed x\n",
    )
    .unwrap();
    let _a = s.agent(&s.dash.ws_url(), 600).spawn();
    wait_register(&s.dash, HOST, 0).await;
    let sent = s.dash.last_seq();
    s.dash.send_command(HOST, "switch").await.unwrap();
    let st = status_for(&s.dash, HOST, "switch", sent).await;
    assert_eq!(
        st.payload["message"],
        rolled_back_message(
            &s,
            "units that were active before the switch failed: nginx.service"
        )
        .as_str(),
        "{}",
        st.payload
    );
    s.assert_rolled_back();
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn the_window_survives_a_reboot_of_the_supervisor() {
    let s = setup().await;
    let mut a = s.agent(&s.dash.ws_url(), 3).spawn();
    let sent = s.switch_and_restart(&mut a).await;
    // the host "reboots": the supervisor that guards the window is gone
    let record = s.record();
    let supervisor = supervisor_pid(&record);
    file_appears(&record.join("confirm.left")).await;
    // SAFETY: kill(2) with a PID this test's agent started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    assert!(pid_gone(supervisor).await);
    assert!(!record.join("verdict").exists());
    // the next agent cannot reach the dashboard either: it starts a
    // supervisor for the rest of the window, which rolls back
    let mut b = s.agent(NOWHERE, 3).spawn();
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(101));
    s.assert_rolled_back();
    let _c = s.agent(&s.dash.ws_url(), 3).spawn();
    let (_, reg) = wait_register(&s.dash, HOST, sent).await;
    let (_, hb) = heartbeat_where(&s.dash, HOST, reg, "System error", |p| {
        p["update_status"]["system"]["status"] == "error"
    })
    .await;
    assert!(
        hb["update_status"]["system"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&rolled_back_message(&s, "")),
        "{hb}"
    );
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}

#[tokio::test]
async fn a_supervisor_whose_record_is_deleted_stops_guarding_without_rolling_back() {
    let s = setup().await;
    let mut a = s.agent(&s.dash.ws_url(), 5).spawn();
    // through the dashboard's lifecycle
    let id = s.dispatch_switch_and_restart(&mut a).await;
    let record = s.record();
    let supervisor = supervisor_pid(&record);
    file_appears(&record.join("confirm.left")).await;
    // the state directory is wiped while the window is open: no agent can
    // confirm the switch nor learn of a rollback any more
    std::fs::remove_dir_all(s.fx.state.join("switch")).unwrap();
    assert!(pid_gone(supervisor).await, "the supervisor stops guarding");
    // the new generation's agent reaches the dashboard: the host runs it,
    // and the hub's op log says so (lifecycle.go: the reconnect completes it)
    let _b = s.agent(&s.dash.ws_url(), 5).spawn();
    let op = s.dash.wait_op(&id, WAIT).await.unwrap();
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
    assert!(
        !s.fakes.dir.join("activated").exists(),
        "nothing was activated: {:?}",
        std::fs::read_to_string(s.fakes.dir.join("activated"))
    );
    let profile = s.fakes.read("nix-env.argv");
    assert!(
        !profile.contains(s.previous.to_str().unwrap()),
        "the profile was not set back: {profile}"
    );
}

#[tokio::test]
async fn without_a_system_on_record_or_with_the_watchdog_off_a_switch_reports_at_once() {
    let s = setup().await;
    for (what, agent) in [
        (
            "off",
            s.agent(&s.dash.ws_url(), 60)
                .env("NIXFLEET_ROLLBACK_ON_FAILURE", "0"),
        ),
        (
            "no current system",
            s.agent(&s.dash.ws_url(), 60).env(
                "NIXFLEET_CURRENT_SYSTEM",
                Path::new("/nonexistent/current-system").to_str().unwrap(),
            ),
        ),
    ] {
        let seen = s.dash.last_seq();
        let mut a = agent.spawn();
        wait_register(&s.dash, HOST, seen).await;
        let sent = s.dash.last_seq();
        s.dash.send_command(HOST, "switch").await.unwrap();
        let st = status_for(&s.dash, HOST, "switch", sent).await;
        assert_eq!(st.payload["status"], "ok", "{what}: {}", st.payload);
        assert_eq!(st.payload["message"], "Switch succeeded", "{what}");
        assert_eq!(a.wait_exit(WAIT).await.code(), Some(101), "{what}");
    }
    let said = s.dash.frames(HOST, Some("output")).into_iter().any(|f| {
        f.payload["line"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[nixfleet-agent] no automatic rollback for this switch: cannot resolve /nonexistent/current-system")
    });
    assert!(said, "the output says why the switch is not watched");
    assert_no_violations(&s.dash);
}

/// The process that ran a switch dies during the activation (nix-darwin and
/// Home Manager reload their launchd agents; here SIGKILL): the hub's
/// switch then awaits a reconnect, and would call the first `register` a
/// success. The next process runs the health checks before it registers;
/// they fail, the switch is rolled back, and no process of the agent
/// registers until the hub's reconnect window has passed: the operation
/// ends TIMEOUT, never SUCCESS, and the status says what happened.
#[tokio::test]
async fn a_switch_whose_agent_died_is_never_a_success_when_it_is_rolled_back() {
    let s = setup_with_reconnect_window(3).await;
    write_exec(
        &s.fx.repo.join("hosts").join(HOST).join("health/10-web.sh"),
        "#!/bin/sh\necho 'web: connection refused' >&2\nexit 3\n",
    );
    s.fakes.touch("rebuild.wait");
    let agent = || {
        s.agent(&s.dash.ws_url(), 600)
            .env("NIXFLEET_TOKEN", TOKEN)
            .env("NIXFLEET_HUB_RECONNECT_WINDOW_MS", "3000")
    };
    let mut a = agent().spawn();
    wait_register(&s.dash, HOST, 0).await;
    let sent = s.dash.last_seq();
    let d = s.dash.dispatch(HOST, "switch", false);
    let id = d.command_id.expect("id");
    file_appears(&s.fakes.file("rebuild.waiting")).await;
    a.signal(libc::SIGKILL);
    a.wait_exit(WAIT).await;
    // the activation ends without the agent that started it
    s.fakes.touch("rebuild.go");
    let record = s.record();
    file_appears(&record.join("exit")).await;
    let mut b = agent().spawn();
    // it rolls back without registering, then restarts onto the old binary
    assert_eq!(b.wait_exit(WAIT).await.code(), Some(101));
    s.assert_rolled_back();
    let _c = agent().spawn();
    let st = status_for(&s.dash, HOST, "switch", sent).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    assert_eq!(
        st.payload["message"],
        rolled_back_message(&s, "health check 10-web.sh failed (exit 3)").as_str()
    );
    let op = s.dash.op(&id).expect("op");
    assert_eq!(op.status, "TIMEOUT", "never SUCCESS: {op:?}");
    assert_eq!(s.statuses().len(), 1, "reported once");
    assert_no_violations(&s.dash);
}
