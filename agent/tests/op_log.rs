//! End-to-end: the hub's operation log for every switch-like operation the
//! hub dispatches (`switch`, `force-rebuild`, `rollback`: upstream's
//! registry has no `pull-switch` or `update` op) and every outcome —
//! success, failure, stop, rolled back — as the mock's lifecycle decides it
//! (`lifecycle.go`: a switch's exit 0 awaits the reconnect; any other op's
//! exit 0 is completed by its post-check at the next heartbeat; a non-zero
//! exit is ERROR at once). Watched: the running system is on record and the
//! fake activation points it at what it activates. `switch` itself is
//! covered in `watchdog.rs` and `switch.rs`; this file covers the others.

mod common;

use std::path::PathBuf;

use common::cmdhost::*;
use common::*;
use nixfleet_mock_dashboard::{MockDashboard, Op};

/// A watched host: generation 1 `old`, generation 2 the running system
/// (the fakes' built system), the fake activation moving `current`.
struct Host {
    dash: MockDashboard,
    fx: Fixture,
    fakes: Fakes,
    old: PathBuf,
    current: PathBuf,
}

async fn host() -> Host {
    host_with(true).await
}

/// [`host`]; without `old` the profile has the running system only.
async fn host_with(with_old: bool) -> Host {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let old = fakes
        .store
        .join("11111111111111111111111111111111-nixos-system-old");
    if with_old {
        fakes.generations(&[&old, &fakes.system]);
    } else {
        fakes.generations(&[&fakes.system]);
    }
    let current = fx.tmp.path().join("current-system");
    std::os::unix::fs::symlink(&fakes.system, &current).unwrap();
    std::fs::write(fakes.file("current.link"), current.to_str().unwrap()).unwrap();
    // no units on this host: the failed-units check finds none
    write_exec(&fakes.bin.join("systemctl"), "#!/bin/sh\nexit 0\n");
    Host {
        dash,
        fx,
        fakes,
        old,
        current,
    }
}

impl Host {
    fn agent(&self) -> AgentBuilder {
        agent(&self.dash, &self.fx, &self.fakes)
            .env("NIXFLEET_CURRENT_SYSTEM", self.current.to_str().unwrap())
            .env("NIXFLEET_ROLLBACK_DEADLINE", "600")
    }

    /// Dispatches `op` as the UI does; its id.
    async fn dispatch(&self, op: &str) -> String {
        wait_register(&self.dash, HOST, 0).await;
        let d = self.dash.dispatch(HOST, op, true);
        assert_eq!(d.status, "EXECUTING", "{d:?}");
        d.command_id.expect("id")
    }

    async fn ended(&self, id: &str) -> Op {
        self.dash.wait_op(id, WAIT).await.expect("the op")
    }

    fn failing_health_check(&self) {
        write_exec(
            &self.fx.repo.join(format!("hosts/{HOST}/health/10-web.sh")),
            "#!/bin/sh\necho 'web: connection refused' >&2\nexit 3\n",
        );
    }
}

#[tokio::test]
async fn force_rebuild_failed_is_an_error() {
    let h = host().await;
    h.fakes.touch("rebuild.fail");
    let _a = h.agent().spawn();
    let id = h.dispatch("force-rebuild").await;
    let op = h.ended(&id).await;
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert_eq!(op.exit_code, Some(1));
    assert_no_violations(&h.dash);
}

#[tokio::test]
async fn force_rebuild_stopped_while_it_builds_is_an_error() {
    let h = host().await;
    h.fakes.touch("build.wait");
    let _a = h.agent().spawn();
    let id = h.dispatch("force-rebuild").await;
    file_appears(&h.fakes.file("build.waiting")).await;
    h.dash.kill(HOST).expect("the UI's Kill");
    let op = h.ended(&id).await;
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert!(!h.fakes.file("rebuild.argv").exists(), "nothing activated");
    assert_no_violations(&h.dash);
}

#[tokio::test]
async fn force_rebuild_rolled_back_is_an_error() {
    let h = host().await;
    h.failing_health_check();
    let _a = h.agent().spawn();
    let id = h.dispatch("force-rebuild").await;
    let op = h.ended(&id).await;
    assert_rolled_back_error(&op);
    assert_no_violations(&h.dash);
}

#[tokio::test]
async fn a_watched_rollback_succeeds_after_its_checks() {
    let h = host().await;
    let mut a = h.agent().spawn();
    let id = h.dispatch("rollback").await;
    // checked, reported, then the restart; the post-check at the next
    // heartbeat completes it
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));
    let _b = h.agent().spawn();
    let op = h.ended(&id).await;
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(std::fs::canonicalize(&h.current).unwrap(), h.old);
    assert_no_violations(&h.dash);
}

#[tokio::test]
async fn a_rollback_with_nothing_to_go_back_to_is_an_error() {
    let h = host_with(false).await;
    let _a = h.agent().spawn();
    let id = h.dispatch("rollback").await;
    let op = h.ended(&id).await;
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert!(!h.fakes.file("rebuild.argv").exists(), "nothing activated");
    assert_no_violations(&h.dash);
}

/// `stop` while the rollback activates is refused (the activation cannot
/// be stopped part-way); the rollback ends on its own and succeeds.
#[tokio::test]
async fn a_rollback_whose_stop_is_refused_ends_on_its_own() {
    let h = host().await;
    h.fakes.touch("rebuild.wait");
    let mut a = h.agent().spawn();
    let id = h.dispatch("rollback").await;
    file_appears(&h.fakes.file("rebuild.waiting")).await;
    let stop_at = command(&h.dash, "stop").await;
    let st = status(&h.dash, stop_at).await;
    assert_eq!(s(&st.payload, "command"), "stop", "{}", st.payload);
    assert_eq!(s(&st.payload, "status"), "error", "{}", st.payload);
    h.fakes.touch("rebuild.go");
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));
    let _b = h.agent().spawn();
    let op = h.ended(&id).await;
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_no_violations(&h.dash);
}

#[tokio::test]
async fn a_rollback_whose_generation_fails_its_checks_is_rolled_back_and_an_error() {
    let h = host().await;
    h.failing_health_check();
    let _a = h.agent().spawn();
    let id = h.dispatch("rollback").await;
    let op = h.ended(&id).await;
    assert_rolled_back_error(&op);
    // back on the system it ran before the rollback
    assert_eq!(std::fs::canonicalize(&h.current).unwrap(), h.fakes.system);
    assert_no_violations(&h.dash);
}

/// The hub's verdict on a switch whose new generation was rolled back.
fn assert_rolled_back_error(op: &Op) {
    assert_eq!(op.status, "ERROR", "{op:?}");
    assert!(
        op.error
            .as_deref()
            .is_some_and(|e| e.starts_with("rolled back to ")),
        "{op:?}"
    );
}
