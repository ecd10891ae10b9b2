//! `nixfleet-agent status`: what the agent observed, read from the state
//! directory by the host's owner, while the agent runs, after it stopped,
//! and across its restart; and its errors for someone who may not read the
//! state or names a directory without it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const HOST: &str = "statushost";

fn status(fx: &Fixture, args: &[&str]) -> std::process::Output {
    Command::new(agent_binary())
        .arg("status")
        .args(["--state-dir", fx.state.to_str().unwrap()])
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

/// `status --json` once `ready` holds for it (the agent writes its file on
/// the pulse after a change).
async fn json_when(fx: &Fixture, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = status(fx, &["--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if ready(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status --json never got there: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_shows_connection_operations_and_survives_stop_and_restart() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    host_test(&fx.repo, HOST, "T01-ok.sh", "echo fine");
    git(&fx.repo, &["add", "-A"]);
    git(&fx.repo, &["commit", "-qm", "a test"]);
    let mut a = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    let (_, reg) = wait_register(&dash, HOST, 0).await;
    dash.send_command(HOST, "test").await.unwrap();
    status_for(&dash, HOST, "test", reg).await;

    let v = json_when(&fx, |v| {
        v["connected"] == true && v["operations"].as_array().is_some_and(|o| !o.is_empty())
    })
    .await;
    assert_eq!(v["agent_running"], true, "{v}");
    assert_eq!(v["pid"], a.pid(), "{v}");
    let op = &v["operations"][0];
    assert_eq!(op["command"], "test", "{v}");
    assert_eq!(op["outcome"], "ok", "{v}");
    assert_eq!(op["message"], "1/1 passed", "{v}");
    assert!(op["duration_secs"].as_f64().is_some(), "{v}");
    assert_eq!(v["counts"]["test"]["ok"], 1, "{v}");
    assert_eq!(v["registrations"], 1, "{v}");
    let text = String::from_utf8(status(&fx, &[]).stdout).unwrap();
    for want in [
        "agent:        running (pid ",
        "dashboard:    connected (127.0.0.1:",
        "test           ok          ",
        ": 1/1 passed",
        "logs:         ",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }

    // stopped: the file says what it last saw, and that it is gone
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(0));
    let out = status(&fx, &["--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agent_running"], false, "{v}");
    assert_eq!(v["connected"], false, "{v}");
    assert_eq!(v["operations"][0]["command"], "test", "{v}");
    let text = String::from_utf8(status(&fx, &[]).stdout).unwrap();
    assert!(
        text.contains("agent:        not running (last seen "),
        "{text}"
    );

    // started again: the history is the earlier process's
    let b = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    let v = json_when(&fx, |v| v["pid"] == b.pid() && v["connected"] == true).await;
    assert_eq!(v["operations"][0]["command"], "test", "{v}");
    assert_eq!(v["counts"]["test"]["ok"], 1, "{v}");
    assert_no_violations(&dash);
}

#[test]
fn status_says_why_it_cannot_read_the_state() {
    let fx = Fixture::new();
    let out = status(&fx, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no agent state in ") && err.contains("--state-dir"),
        "{err}"
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // the root agent's state (0700) read by another user
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&fx.state).unwrap();
    std::fs::write(fx.state.join("observed.json"), "{}").unwrap();
    std::fs::set_permissions(&fx.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(agent_binary())
        .args(["status", "--state-dir", fx.state.to_str().unwrap()])
        .env_clear()
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied; run it as root (sudo nixfleet-agent status) or as the user whose agent it is"),
        "{err}"
    );
    assert_eq!(
        status(&fx, &["--bogus"]).status.code(),
        Some(2),
        "a bad argument"
    );
}
