//! End-to-end: the dashboard's host row (protocol.md "heartbeat",
//! `update_status`, `operation_progress`) with the real agent binary against
//! the mock dashboard, which stores compartments and runs operations as the
//! real hub does (`hub.go`, `lifecycle.go`). Every wait is on an event.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nixfleet_mock_dashboard::{MockDashboard, Options, Remote};
use serde_json::Value;

const HOST: &str = "rowhost";

fn agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes) -> AgentBuilder {
    AgentBuilder::new(&dash.ws_url(), HOST, fx).with_fakes(fakes)
}

fn test_script(repo: &Path, name: &str, body: &str) {
    host_test(repo, HOST, name, body);
}

/// The first heartbeat after `after` whose payload satisfies `pred`.
async fn heartbeat_where(
    dash: &MockDashboard,
    after: u64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (u64, Value) {
    common::heartbeat_where(dash, HOST, after, what, pred).await
}

fn part<'a>(hb: &'a Value, name: &str) -> &'a str {
    hb["update_status"][name]["status"].as_str().unwrap_or("?")
}

async fn status_after(dash: &MockDashboard, after: u64) -> (u64, Value) {
    let f = dash
        .wait_frame(HOST, "status", after, WAIT)
        .await
        .expect("a status");
    (f.seq, f.payload)
}

#[tokio::test]
async fn agent_compartment_is_green_by_default_and_follows_the_override() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _a = agent(&dash, &fx, &fakes).spawn();
    let (reg, seq) = wait_register(&dash, HOST, 0).await;
    assert_eq!(reg["agent_version"], "3.1.5");
    // freshness fields in heartbeats, as in register (the hash as soon as
    // it is known)
    let (_, hb) = heartbeat_where(&dash, seq, "a heartbeat with the hash", |hb| {
        hb.get("binary_hash").is_some()
    })
    .await;
    assert!(hb["binary_hash"].as_str().is_some_and(|h| h.len() == 64));
    assert!(reg.get("binary_hash").is_none() || hb["binary_hash"] == reg["binary_hash"]);
    let info = dash.host(HOST).expect("host");
    assert!(!info.agent_outdated);
    assert_eq!(info.row.agent.status, "ok");

    // a fleet on another dashboard release sets the override
    let other = MockDashboard::start(Options {
        dashboard_version: "3.2.0".into(),
        ..Options::default()
    })
    .await
    .expect("start");
    let fx2 = Fixture::new();
    let mut old = agent(&other, &fx2, &fakes).spawn();
    wait_register(&other, HOST, 0).await;
    assert!(
        other.host(HOST).expect("host").agent_outdated,
        "3.1.5 ≠ 3.2.0"
    );
    old.signal(libc::SIGTERM);
    old.wait_exit(WAIT).await;
    let a = agent(&other, &fx2, &fakes)
        .env("NIXFLEET_REPORTED_VERSION", "3.2.0")
        .spawn();
    let (reg, _) = wait_register(&other, HOST, other.last_seq()).await;
    assert_eq!(reg["agent_version"], "3.2.0");
    assert!(!other.host(HOST).expect("host").agent_outdated);
    // the agent's own version stays visible in its start-up line
    assert!(
        a.log
            .wait_for(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), WAIT)
            .await
            || a.log
                .wait_for(&format!("version={}", env!("CARGO_PKG_VERSION")), WAIT)
                .await,
        "{}",
        a.log.text()
    );
    assert_no_violations(&dash);
    assert_no_violations(&other);
}

#[tokio::test]
async fn a_heartbeat_follows_every_status_at_once() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    // an hour between periodic heartbeats: any later one is the status rule's
    let a = agent(&dash, &fx, &fakes)
        .env("NIXFLEET_INTERVAL", "3600")
        .spawn();
    let (_, reg) = wait_register(&dash, HOST, 0).await;
    let (first, hb) = heartbeat_where(&dash, reg, "the first", |_| true).await;
    assert_eq!(hb["update_status"]["git"]["status"], "");
    // the Lock measured at start (off the path to register) is written once known
    assert!(a.log.wait_for("compartments written", WAIT).await);
    for command in ["no-such-command", "test", "stop"] {
        let before = dash.last_seq();
        dash.send_command(HOST, command).await.expect("send");
        let (st, _) = status_after(&dash, before).await;
        let (beat, hb) = heartbeat_where(&dash, st, "the one after the status", |_| true).await;
        assert!(beat > st && st > first);
        // measured at start, off the path to register
        assert_eq!(part(&hb, "lock"), "ok", "{hb}");
    }
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pull_switch_test_through_the_lifecycle_with_the_right_compartments() {
    let dash = MockDashboard::start(Options {
        reconnect_timeout: Duration::from_secs(30),
        ..Options::default()
    })
    .await
    .expect("start");
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let isolated = |dash: &MockDashboard| {
        agent(dash, &fx, &fakes)
            .without("NIXFLEET_REPO_DIR")
            .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
    };
    let mut a = isolated(&dash).spawn();
    heartbeat_where(&dash, 0, "the clone", |hb| {
        hb["generation"] == short7(&fx.head)
    })
    .await;

    // Pull: a new commit → System outdated, op SUCCESS at the heartbeat after the status
    let new = commit_file(&fx.repo, "hosts/rowhost/configuration.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    let before = dash.last_seq();
    let d = dash.dispatch(HOST, "pull", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .expect("op");
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    let (st, _) = status_after(&dash, before).await;
    let pull_dots: Vec<Value> = dash
        .frames(HOST, Some("operation_progress"))
        .into_iter()
        .filter(|f| f.seq > before && f.seq < st)
        .map(|f| f.payload["progress"]["pull"].clone())
        .collect();
    assert_eq!(pull_dots.len(), 2, "{pull_dots:?}");
    assert_eq!(pull_dots[0]["status"], "in_progress");
    assert_eq!(pull_dots[1]["status"], "complete");
    assert_eq!(pull_dots[1]["current"], 4);
    let info = dash.host(HOST).expect("host");
    assert_eq!(info.generation, short7(&new));
    assert_eq!(info.stored.system.status, "outdated", "{info:?}");
    assert_eq!(info.stored.lock.status, "ok");

    // Switch: System working while it runs, then AWAITING_RECONNECT until the
    // restarted agent registers, then System ok and Tests outdated
    fakes.touch("rebuild.wait");
    let before = dash.last_seq();
    let d = dash.dispatch(HOST, "switch", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let id = d.command_id.clone().unwrap();
    heartbeat_where(&dash, before, "System working", |hb| {
        part(hb, "system") == "working"
    })
    .await;
    fakes.touch("rebuild.go");
    dash.wait_until(WAIT, |d| {
        d.op(&id).filter(|o| o.status == "AWAITING_RECONNECT")
    })
    .await
    .expect("awaiting reconnect");
    let status = a.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(101), "the restart code");
    let system_dots: Vec<Value> = dash
        .frames(HOST, Some("operation_progress"))
        .into_iter()
        .filter(|f| f.seq > before)
        .map(|f| f.payload["progress"]["system"].clone())
        .collect();
    assert_eq!(
        system_dots.first().map(|p| &p["status"]),
        Some(&Value::from("in_progress"))
    );
    assert_eq!(
        system_dots.last().map(|p| &p["status"]),
        Some(&Value::from("complete"))
    );
    // the service manager starts the agent again
    let seen = dash.last_seq();
    let _b = isolated(&dash).spawn();
    let (_, reg) = wait_register(&dash, HOST, seen).await;
    let op = dash.wait_op(&id, WAIT).await.expect("op");
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    // the new process's very first heartbeat already knows (persisted on exit)
    let (_, hb) = heartbeat_where(&dash, reg, "the first after the restart", |_| true).await;
    assert_eq!(part(&hb, "system"), "ok", "{hb}");
    assert_eq!(part(&hb, "tests"), "outdated", "{hb}");

    // Test: Tests working while it runs, then ok
    test_script(
        &fx.repo,
        "T01-waits.sh",
        &format!(
            "while [ ! -e {0} ]; do [ -d \"$(dirname {0})\" ] || exit 1; sleep 0.02; done",
            fakes.file("tests.go").display()
        ),
    );
    test_script(&fx.repo, "T02-ok.sh", "true");
    git(&fx.repo, &["add", "-A"]);
    git(&fx.repo, &["commit", "-q", "-m", "tests"]);
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    let d = dash.dispatch(HOST, "pull", false);
    dash.wait_op(d.command_id.as_deref().unwrap(), WAIT).await;
    let before = dash.last_seq();
    let d = dash.dispatch(HOST, "test", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    heartbeat_where(&dash, before, "Tests working", |hb| {
        part(hb, "tests") == "working"
    })
    .await;
    fakes.touch("tests.go");
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .expect("op");
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    assert_eq!(dash.host(HOST).expect("host").stored.tests.status, "ok");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn test_dots_one_per_script_before_the_status() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(&fx.repo, "T01-a.sh", "true");
    test_script(&fx.repo, "T02-b.sh", "exit 3");
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let before = dash.last_seq();
    dash.send_command(HOST, "test").await.expect("send");
    let (st, status) = status_after(&dash, before).await;
    assert_eq!(status["status"], "error");
    let dots: Vec<Value> = dash
        .frames(HOST, Some("operation_progress"))
        .into_iter()
        .filter(|f| f.seq > before && f.seq < st)
        .map(|f| f.payload["progress"]["tests"].clone())
        .collect();
    let shown: Vec<(String, String)> = dots
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_owned(),
                d["results"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "in_progress".to_owned(),
                r#"["pending","pending"]"#.to_owned()
            ),
            ("in_progress".to_owned(), r#"["pass","pending"]"#.to_owned()),
            ("error".to_owned(), r#"["pass","fail"]"#.to_owned()),
        ]
    );
    let (_, hb) =
        heartbeat_where(&dash, st, "Tests error", |hb| part(hb, "tests") == "error").await;
    assert!(
        hb["update_status"]["tests"]["message"]
            .as_str()
            .unwrap()
            .contains("1/2 passed")
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_failed_switch_is_a_system_error() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    fakes.touch("rebuild.fail");
    let _a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let d = dash.dispatch(HOST, "switch", false);
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .expect("op");
    assert_eq!(op.status, "ERROR", "{op:?}");
    // the hub stores the status's message first, then the heartbeat's System
    let (st, _) = status_after(&dash, 0).await;
    heartbeat_where(&dash, st, "the one after the status", |_| true).await;
    let info = dash.host(HOST).expect("host");
    assert_eq!(info.stored.system.status, "error");
    assert_eq!(info.stored.system.message, "Switch failed (exit 1)");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn compartments_survive_a_restart_and_a_corrupt_file_is_replaced() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    test_script(&fx.repo, "T01-a.sh", "exit 1");
    let mut a = agent(&dash, &fx, &fakes).spawn();
    wait_register(&dash, HOST, 0).await;
    let before = dash.last_seq();
    dash.send_command(HOST, "test").await.expect("send");
    let (st, _) = status_after(&dash, before).await;
    let (_, hb) =
        heartbeat_where(&dash, st, "Tests error", |hb| part(hb, "tests") == "error").await;
    let message = hb["update_status"]["tests"]["message"].clone();
    let file = fx.state.join("compartments.json");
    // written off the runtime thread, which logs each write
    let mut seen = 0;
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("0/1 passed")) {
        seen += 1;
        assert!(
            a.log.wait_for_nth("compartments written", seen, WAIT).await,
            "{}",
            a.log.text()
        );
    }
    a.signal(libc::SIGTERM);
    a.wait_exit(WAIT).await;

    let mut b = agent(&dash, &fx, &fakes).spawn();
    let (_, reg) = wait_register(&dash, HOST, dash.last_seq()).await;
    let (_, hb) = heartbeat_where(&dash, reg, "the first after the restart", |_| true).await;
    assert_eq!(part(&hb, "tests"), "error");
    assert_eq!(hb["update_status"]["tests"]["message"], message);
    b.signal(libc::SIGTERM);
    b.wait_exit(WAIT).await;

    std::fs::write(&file, b"\x00garbage{").expect("corrupt it");
    let c = agent(&dash, &fx, &fakes).spawn();
    let (_, reg) = wait_register(&dash, HOST, dash.last_seq()).await;
    let (_, hb) = heartbeat_where(&dash, reg, "the first after the corruption", |_| true).await;
    assert_eq!(part(&hb, "tests"), "unknown");
    assert!(c.log.wait_for("ignoring the compartments file", WAIT).await);
    assert_no_violations(&dash);
}

#[tokio::test]
async fn a_pull_succeeds_against_a_version_tracking_dashboard() {
    // With a desired state, the hub takes Lock from `lock_hash` and runs the
    // pull's post-check (Lock ok) at the heartbeat right after the status:
    // that heartbeat must carry the pulled flake.lock's hash.
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let _a = agent(&dash, &fx, &fakes)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
        .spawn();
    heartbeat_where(&dash, 0, "the clone", |hb| {
        hb["generation"] == short7(&fx.head)
    })
    .await;
    std::fs::write(
        fx.repo.join("flake.lock"),
        "{\"nodes\":{\"n\":{}},\"version\":7}\n",
    )
    .expect("write");
    let new = commit_file(&fx.repo, "hosts/rowhost/x.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    dash.set_remote(Some(Remote {
        commit: new.clone(),
        lock_hash: sha256_file(&fx.repo.join("flake.lock")),
    }));
    let d = dash.dispatch(HOST, "pull", false);
    assert_eq!(d.status, "EXECUTING", "{d:?}");
    let op = dash
        .wait_op(d.command_id.as_deref().unwrap(), WAIT)
        .await
        .expect("op");
    assert_eq!(op.status, "SUCCESS", "{op:?}");
    let row = dash.host(HOST).expect("host").row;
    assert_eq!(
        (row.git.status.as_str(), row.lock.status.as_str()),
        ("ok", "ok"),
        "{row:?}"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pull_switch_moves_system_through_outdated_and_working_to_ok() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let bare = bare_origin(&fx);
    let mut a = agent(&dash, &fx, &fakes)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
        .spawn();
    heartbeat_where(&dash, 0, "the clone", |hb| {
        hb["generation"] == short7(&fx.head)
    })
    .await;
    commit_file(&fx.repo, "hosts/rowhost/y.nix", "{ }\n");
    git(&fx.repo, &["push", "-q", "origin", "main"]);
    fakes.touch("rebuild.wait");
    let before = dash.last_seq();
    dash.send_command(HOST, "pull-switch").await.expect("send");
    heartbeat_where(&dash, before, "System working", |hb| {
        part(hb, "system") == "working"
    })
    .await;
    fakes.touch("rebuild.go");
    let (st, status) = status_after(&dash, before).await;
    assert_eq!(status["status"], "ok", "{status}");
    let (_, hb) = heartbeat_where(&dash, st, "the one after the status", |_| true).await;
    assert_eq!(part(&hb, "system"), "ok", "{hb}");
    assert_eq!(
        hb["update_status"]["system"]["message"],
        "Pull+Switch succeeded"
    );
    assert_eq!(part(&hb, "tests"), "outdated", "{hb}");
    // the pull phase's dots come before the system phase's
    let phases: Vec<String> = dash
        .frames(HOST, Some("operation_progress"))
        .into_iter()
        .filter(|f| f.seq > before && f.seq < st)
        .map(|f| {
            let p = &f.payload["progress"];
            let (name, v) = if p["pull"].is_object() {
                ("pull", &p["pull"])
            } else {
                ("system", &p["system"])
            };
            format!("{name} {}", v["status"].as_str().unwrap_or("?"))
        })
        .collect();
    assert_eq!(
        phases,
        [
            "pull in_progress",
            "pull complete",
            "system in_progress",
            "system complete"
        ]
    );
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(101));
    assert_no_violations(&dash);
}

/// A switch stopped while it builds changed nothing: System is what it was
/// before (not "partly switched"), the dots end, the status is `stopped`.
#[tokio::test]
async fn a_switch_stopped_while_it_builds_leaves_system_as_it_was() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let fakes = Fakes::new(&fx);
    let _a = agent(&dash, &fx, &fakes).spawn();
    let (_, seq) = wait_register(&dash, HOST, 0).await;
    let (_, hb) = heartbeat_where(&dash, seq, "a heartbeat", |_| true).await;
    let before = hb["update_status"]["system"].clone();
    fakes.touch("build.wait");
    let sent = dash.last_seq();
    dash.send_command(HOST, "switch").await.expect("send");
    file_appears(&fakes.file("build.waiting")).await;
    heartbeat_where(&dash, sent, "System working", |hb| {
        part(hb, "system") == "working"
    })
    .await;
    dash.send_command(HOST, "stop").await.expect("send");
    let (st, status) = status_after(&dash, sent).await;
    assert_eq!(status["command"], "switch", "{status}");
    assert_eq!(status["status"], "stopped", "{status}");
    let (_, hb) = heartbeat_where(&dash, st, "the one after the status", |_| true).await;
    assert_eq!(hb["update_status"]["system"], before, "{hb}");
    assert!(
        !fakes.file("rebuild.argv").exists(),
        "nothing was activated"
    );
    assert_no_violations(&dash);
}
