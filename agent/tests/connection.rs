//! End-to-end: connection, registration and heartbeats (protocol.md's
//! transport, register and heartbeat sections), with the real agent binary
//! against the mock dashboard.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn registers_with_every_field_then_heartbeats_at_once() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let _agent = AgentBuilder::new(&dash.ws_url(), "hsb0", &fx)
        .env("NIXFLEET_LOCATION", "work")
        .env("NIXFLEET_DEVICE_TYPE", "desktop")
        .env("NIXFLEET_THEME_COLOR", "#7aa2f7")
        .env("NIXFLEET_NIXPKGS_VERSION", "24.11.20241201.abc1234")
        .spawn();

    let (reg, reg_seq) = wait_register(&dash, "hsb0", 0).await;
    assert_eq!(s(&reg, "hostname"), "hsb0");
    assert_eq!(s(&reg, "host_type"), "nixos");
    // the release whose protocol the agent speaks, not the crate version
    assert_eq!(s(&reg, "agent_version"), "3.1.5");
    assert_eq!(s(&reg, "nixpkgs_version"), "24.11.20241201.abc1234");
    assert_eq!(s(&reg, "generation"), short7(&fx.head));
    assert_eq!(s(&reg, "theme_color"), "#7aa2f7");
    assert_eq!(reg["heartbeat_interval"], 1);
    assert_eq!(s(&reg, "location"), "work");
    assert_eq!(s(&reg, "device_type"), "desktop");
    assert_eq!(s(&reg, "repo_url"), "");
    assert_eq!(s(&reg, "repo_dir"), fx.repo.to_str().unwrap());
    assert!(reg["os_version"].is_string());
    // freshness: the first register does not wait for the binary's hash
    // (it comes with heartbeats when it is not ready in time; below)
    assert!(reg.get("store_path").is_none(), "not in /nix/store: {reg}");

    // first heartbeat right after `registered`, before any interval elapsed
    let hb = dash
        .wait_frame("hsb0", "heartbeat", reg_seq, WAIT)
        .await
        .expect("heartbeat");
    let reg_frame = dash.frames("hsb0", Some("register"))[0].clone();
    assert!(
        hb.received.duration_since(reg_frame.received) < Duration::from_millis(900),
        "first heartbeat came {:?} after register",
        hb.received.duration_since(reg_frame.received)
    );
    let p = &hb.payload;
    assert_eq!(s(p, "generation"), short7(&fx.head));
    assert!(p["pending_command"].is_null());
    assert!(p["command_pid"].is_null());
    assert_eq!(s(p, "lock_hash"), sha256_file(&fx.repo.join("flake.lock")));
    assert_no_violations(&dash);
}

/// The binary's hash (`binary_hash`, the hub's freshness) never holds up
/// registration: a register without it is followed by heartbeats that carry
/// it, and a restart of the same binary registers with it at once, from the
/// cache in the state directory.
#[tokio::test]
async fn binary_hash_follows_in_heartbeats_and_is_cached_for_the_next_start() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    // hashed off this runtime's thread, which also runs the mock dashboard
    let bin = agent_binary();
    let hash = tokio::task::spawn_blocking(move || sha256_file(&bin))
        .await
        .unwrap();
    let mut first = AgentBuilder::new(&dash.ws_url(), "hsb0", &fx).spawn();
    let (reg, seq) = wait_register(&dash, "hsb0", 0).await;
    assert!(
        reg.get("binary_hash").is_none() || reg["binary_hash"] == hash.as_str(),
        "{reg}"
    );
    let hb = heartbeat_where(&dash, "hsb0", seq, "a heartbeat with the hash", |p| {
        p.get("binary_hash").is_some()
    })
    .await
    .1;
    assert_eq!(s(&hb, "binary_hash"), hash);
    assert!(
        fx.state.join("binary-hash").exists(),
        "the hash is remembered"
    );
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(WAIT).await.success());

    let _second = AgentBuilder::new(&dash.ws_url(), "hsb0", &fx).spawn();
    let (reg, _) = wait_register(&dash, "hsb0", seq).await;
    assert_eq!(
        s(&reg, "binary_hash"),
        hash,
        "the cached hash is in register"
    );
    assert_no_violations(&dash);
}

#[tokio::test]
async fn five_heartbeats_in_five_seconds_and_generation_is_reread() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let _agent = AgentBuilder::new(&dash.ws_url(), "hb", &fx).spawn();
    let (_, reg_seq) = wait_register(&dash, "hb", 0).await;
    let reg_at = dash.frames("hb", Some("register"))[0].received;

    let fifth = dash
        .wait_until(WAIT, |d| {
            let hbs: Vec<_> = d
                .frames("hb", Some("heartbeat"))
                .into_iter()
                .filter(|f| f.seq > reg_seq)
                .collect();
            hbs.get(4).cloned()
        })
        .await
        .expect("five heartbeats");
    let took = fifth.received.duration_since(reg_at);
    assert!(took <= Duration::from_secs(5), "5 heartbeats took {took:?}");

    // a new commit shows up in a later heartbeat (re-read, not cached)
    let new_head = commit_file(&fx.repo, "hosts/hb/configuration.nix", "{ }\n");
    let last = dash.last_seq();
    dash.wait_until(WAIT, |d| {
        d.frames("hb", Some("heartbeat"))
            .into_iter()
            .find(|f| f.seq > last && f.payload["generation"] == short7(&new_head))
    })
    .await
    .expect("heartbeat with the new generation");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn metrics_from_stasysmo_files_when_fresh() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    for (name, value) in [
        ("cpu", "12.5"),
        ("ram", "40.2\n"),
        ("swap", "1"),
        ("load", "0.75"),
    ] {
        std::fs::write(fx.stasysmo.join(name), value).unwrap();
    }
    let _agent = AgentBuilder::new(&dash.ws_url(), "sts", &fx).spawn();
    let (_, seq) = wait_register(&dash, "sts", 0).await;
    let hb = dash
        .wait_frame("sts", "heartbeat", seq, WAIT)
        .await
        .expect("heartbeat");
    let m = &hb.payload["metrics"];
    assert_eq!(m["cpu"], 12.5, "{m}");
    assert_eq!(m["ram"], 40.2, "{m}");
    assert_eq!(m["swap"], 1.0, "{m}");
    assert_eq!(m["load"], 0.75, "{m}");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn metrics_measured_when_stasysmo_is_stale_or_absent() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    // stale files (older than 30 s) must be ignored
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    for name in ["cpu", "ram", "swap", "load"] {
        let path = fx.stasysmo.join(name);
        std::fs::write(&path, "77.7").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let _agent = AgentBuilder::new(&dash.ws_url(), "sys", &fx).spawn();
    let (_, seq) = wait_register(&dash, "sys", 0).await;
    let hb = dash
        .wait_frame("sys", "heartbeat", seq, WAIT)
        .await
        .expect("heartbeat");
    let m = &hb.payload["metrics"];
    assert!(m.is_object(), "metrics should be measured: {m}");
    for key in ["cpu", "ram", "swap"] {
        let v = m[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert!(m["load"].as_f64().unwrap_or(-1.0) >= 0.0);
    assert_ne!(m["ram"], 77.7, "stale StaSysMo value used");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn unauthorized_then_accepted_once_the_token_is_enrolled() {
    let dash = nixfleet_mock_dashboard::MockDashboard::start(nixfleet_mock_dashboard::Options {
        tokens: vec!["someone-else".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&dash.ws_url(), "late", &fx)
        .env("NIXFLEET_TOKEN", "enrol-me-later")
        .spawn();
    let first = dash
        .wait_event("rejected", None, 0, WAIT)
        .await
        .expect("first 401");
    dash.wait_event("rejected", None, first.seq, WAIT)
        .await
        .expect("the agent retried after a 401");
    assert!(agent.log.wait_for("authentication failed", WAIT).await);
    assert!(
        !agent.log.text().contains("enrol-me-later"),
        "token in the log"
    );

    dash.add_token("enrol-me-later");
    wait_register(&dash, "late", 0).await;
    assert_no_violations(&dash);
}

#[tokio::test]
async fn dashboard_down_at_start_then_up() {
    // find a free port, then leave it closed
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&format!("ws://{addr}/ws"), "early", &fx).spawn();
    assert!(agent.log.wait_for("cannot connect", WAIT).await);
    assert!(agent.log.wait_for("reconnecting in", WAIT).await);
    let dash = dashboard_at(addr).await;
    wait_register(&dash, "early", 0).await;
    assert_no_violations(&dash);
}

#[tokio::test]
async fn dashboard_restarted_agent_registers_again() {
    let dash = dashboard().await;
    let addr = dash.addr();
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&dash.ws_url(), "phoenix", &fx).spawn();
    wait_register(&dash, "phoenix", 0).await;
    dash.shutdown().await; // killed: no close frame

    assert!(agent.log.wait_for("connection lost", WAIT).await);
    let dash = dashboard_at(addr).await;
    let (_, seq) = wait_register(&dash, "phoenix", 0).await;
    dash.wait_frame("phoenix", "heartbeat", seq, WAIT)
        .await
        .expect("heartbeats resume");
    assert_no_violations(&dash);
}

#[tokio::test]
async fn silent_dashboard_is_detected_by_the_read_deadline() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&dash.ws_url(), "quiet", &fx)
        .env("NIXFLEET_PING_INTERVAL_MS", "200")
        .env("NIXFLEET_READ_DEADLINE_MS", "1500")
        .spawn();
    let (_, seq) = wait_register(&dash, "quiet", 0).await;
    // the dashboard stops reading: no pongs, no frames
    dash.pause("quiet");
    assert!(
        agent.log.wait_for("connection lost", WAIT).await,
        "dead connection not detected"
    );
    // ... and the agent comes back on a new connection
    wait_register(&dash, "quiet", seq).await;
    assert_no_violations(&dash);
}

#[tokio::test]
async fn pongs_keep_a_quiet_connection_alive() {
    // The dashboard sends nothing but pongs to the agent's pings (every
    // 100 ms). Over four heartbeats (> 3 s, three read deadlines of 1 s) the
    // connection must stay the same: only the pongs keep it alive.
    let dash = dashboard().await;
    let fx = Fixture::new();
    let _agent = AgentBuilder::new(&dash.ws_url(), "pinger", &fx)
        .env("NIXFLEET_PING_INTERVAL_MS", "100")
        .env("NIXFLEET_READ_DEADLINE_MS", "1000")
        .spawn();
    let (_, seq) = wait_register(&dash, "pinger", 0).await;
    dash.wait_until(WAIT, |d| {
        d.frames("pinger", Some("heartbeat"))
            .into_iter()
            .filter(|f| f.seq > seq)
            .nth(3)
    })
    .await
    .expect("four heartbeats");
    assert_eq!(
        dash.frames("pinger", Some("register")).len(),
        1,
        "the agent reconnected although the dashboard answered its pings"
    );
}

#[tokio::test]
async fn duplicate_hostname_older_connection_is_replaced_and_reconnects() {
    let dash = dashboard().await;
    let fx1 = Fixture::new();
    let fx2 = Fixture::new();
    let first = AgentBuilder::new(&dash.ws_url(), "twin", &fx1)
        .env("NIXFLEET_BACKOFF_BASE_MS", "300")
        .spawn();
    let (_, seq) = wait_register(&dash, "twin", 0).await;
    let _second = AgentBuilder::new(&dash.ws_url(), "twin", &fx2)
        .env("NIXFLEET_BACKOFF_BASE_MS", "300")
        .spawn();
    let replaced = dash
        .wait_event("replaced", Some("twin"), seq, WAIT)
        .await
        .expect("the replacement");
    // hub.go closes the older client with a close frame without a status code
    assert_eq!(replaced.code, None);
    assert!(
        first
            .log
            .wait_for("the dashboard closed the connection", WAIT)
            .await,
        "agent did not see the close"
    );
    // the replaced agent reconnects with backoff and registers again
    assert!(first.log.wait_for("reconnecting in", WAIT).await);
    let third_register = dash
        .wait_until(WAIT, |d| d.frames("twin", Some("register")).get(2).cloned())
        .await;
    assert!(
        third_register.is_some(),
        "no re-registration after the close"
    );
}

#[tokio::test]
async fn malformed_and_unknown_frames_are_ignored_without_disconnecting() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&dash.ws_url(), "robust", &fx).spawn();
    let (_, seq) = wait_register(&dash, "robust", 0).await;
    for junk in [
        "{not json",
        "[]",
        r#"{"type":"command"}"#,
        r#"{"type":"command","payload":{"command":42}}"#,
        r#"{"type":"self_destruct","payload":{}}"#,
        "",
    ] {
        dash.send_text("robust", junk).await.unwrap();
    }
    assert!(
        agent
            .log
            .wait_for("unknown type \"self_destruct\"", WAIT)
            .await
    );
    assert!(agent.log.wait_for("malformed frame", WAIT).await);
    // still the same connection: heartbeats continue, no new register
    let after = dash.last_seq();
    dash.wait_frame("robust", "heartbeat", after, WAIT)
        .await
        .expect("heartbeats continue");
    assert_eq!(dash.frames("robust", Some("register")).len(), 1);
    assert!(
        dash.events()
            .iter()
            .all(|e| e.kind != "disconnected" || e.seq < seq),
        "the agent disconnected: {:?}",
        dash.events()
    );
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_agent_reconnects() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let agent = AgentBuilder::new(&dash.ws_url(), "big", &fx).spawn();
    let (_, seq) = wait_register(&dash, "big", 0).await;
    let huge = format!(
        r#"{{"type":"command","payload":{{"command":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let _ = dash.send_text("big", &huge).await;
    assert!(agent.log.wait_for("oversized frame", WAIT).await);
    wait_register(&dash, "big", seq).await;
}

#[tokio::test]
async fn sigterm_closes_with_1000_shutdown_and_exits_0() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let mut agent = AgentBuilder::new(&dash.ws_url(), "bye", &fx).spawn();
    let (_, seq) = wait_register(&dash, "bye", 0).await;
    agent.signal(libc::SIGTERM);
    let closed = dash
        .wait_event("closed", Some("bye"), seq, WAIT)
        .await
        .expect("close frame");
    assert_eq!(closed.code, Some(1000));
    assert_eq!(closed.reason.as_deref(), Some("shutdown"));
    let status = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigint_while_disconnected_exits_0_promptly() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let fx = Fixture::new();
    let mut agent = AgentBuilder::new(&format!("ws://{addr}/ws"), "nowhere", &fx)
        .env("NIXFLEET_BACKOFF_BASE_MS", "60000")
        .spawn();
    assert!(agent.log.wait_for("reconnecting in", WAIT).await);
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_token_never_reaches_the_log() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let mut agent = AgentBuilder::new(&dash.ws_url(), "secret", &fx)
        .env("NIXFLEET_LOG_LEVEL", "trace")
        .spawn();
    wait_register(&dash, "secret", 0).await;
    assert!(agent.log.wait_for("registered", WAIT).await);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).await;
    // every line up to the end of the agent's stderr
    assert!(agent.log.wait_closed(WAIT).await, "stderr never ended");
    let log = agent.log.text();
    assert!(
        log.contains("stopping (shutdown)"),
        "log was captured: {log}"
    );
    assert!(!log.contains(TOKEN), "token leaked into the log");
}

#[tokio::test]
async fn a_password_in_the_dashboard_url_is_never_logged() {
    const PASSWORD: &str = "url-pass-7c1e";
    let dash = dashboard().await;
    let fx = Fixture::new();
    let with_password = |addr: &str| format!("ws://alice:{PASSWORD}@{addr}/ws");
    // connected: the "connected" line names the dashboard without it
    let mut agent = AgentBuilder::new(&with_password(&dash.addr().to_string()), "urlpw", &fx)
        .env("NIXFLEET_LOG_LEVEL", "trace")
        .spawn();
    wait_register(&dash, "urlpw", 0).await;
    assert!(agent.log.wait_for("connected", WAIT).await);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).await;
    assert!(agent.log.wait_closed(WAIT).await, "stderr never ended");
    let log = agent.log.text();
    assert!(log.contains("***@"), "the URL is shown, redacted: {log}");
    assert!(
        !log.contains(PASSWORD),
        "password leaked into the log: {log}"
    );

    // unreachable: "cannot connect to …" without it
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let agent = AgentBuilder::new(&with_password(&addr), "urlpw", &fx).spawn();
    assert!(
        agent
            .log
            .wait_for("cannot connect to ws://***@", WAIT)
            .await,
        "{}",
        agent.log.text()
    );
    assert!(!agent.log.text().contains(PASSWORD));

    // --check
    let out = AgentBuilder::new(&with_password(&addr), "urlpw", &fx)
        .command()
        .arg("--check")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dashboard:        ws://***@"), "{text}");
    assert!(!text.contains(PASSWORD) && !String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
}

/// A repository URL may carry a credential (`https://<token>@host/…`): it
/// never reaches `register.repo_url`, a status message, the log or
/// `--check`.
#[tokio::test]
async fn a_credential_in_the_repository_url_is_never_shown() {
    const SECRET: &str = "repo-tok-51d2";
    let dash = dashboard().await;
    let fx = Fixture::new();
    // nobody listens there: the initial clone and every pull fail
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let repo_url = format!("http://{SECRET}@{addr}/cfg.git");
    let builder = || {
        AgentBuilder::new(&dash.ws_url(), "repotok", &fx)
            .without("NIXFLEET_REPO_DIR")
            .env("NIXFLEET_REPO_URL", &repo_url)
            .env("NIXFLEET_LOG_LEVEL", "trace")
    };
    let mut agent = builder().spawn();
    let (reg, seq) = wait_register(&dash, "repotok", 0).await;
    assert_eq!(s(&reg, "repo_url"), format!("http://***@{addr}/cfg.git"));
    dash.send_command("repotok", "pull").await.unwrap();
    let st = status_for(&dash, "repotok", "pull", seq).await;
    assert_eq!(st.payload["status"], "error", "{}", st.payload);
    let everything: String = dash
        .frames("repotok", None)
        .iter()
        .map(|f| f.payload.to_string())
        .collect();
    assert!(
        !everything.contains(SECRET),
        "leaked to the dashboard: {everything}"
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10)).await;
    assert!(agent.log.wait_closed(WAIT).await, "stderr never ended");
    assert!(!agent.log.text().contains(SECRET), "{}", agent.log.text());
    let out = builder().command().arg("--check").output().await.unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("***@"), "{printed}");
    assert!(!printed.contains(SECRET), "{printed}");
}
