//! The `nixfleet-mock-dashboard` program: `serve` and `demo`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PROGRAM: &str = env!("CARGO_BIN_EXE_nixfleet-mock-dashboard");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mock-dash-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn serve_until_sigterm() {
    let dir = scratch("serve");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "NIXFLEET_TOKEN=from-file\n").expect("token file");
    let mut child = Command::new(PROGRAM)
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token_file)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(rest) = line.split("agents connect to ws://").nth(1) {
                return rest.split('/').next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("serve prints its address")
    .expect("an address");
    // Keep draining the log so the program never blocks on it.
    let log = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push(line);
        }
        all
    });
    assert_eq!(get(&addr, "/api/hosts").await, "[]");

    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Authorization", "Bearer from-file".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the token from the file is accepted");
    let register = json!({"type": "register", "payload": {"hostname": "vm1"}});
    ws.send(Message::text(register.to_string()))
        .await
        .expect("send");
    // Registered (with violations for the missing fields): the reply comes
    // after the record.
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("registered in time");
    assert!(matches!(reply, Some(Ok(Message::Text(t))) if t.as_str().contains("registered")));
    let hosts = get(&addr, "/api/hosts").await;
    assert!(hosts.contains("\"hostname\":\"vm1\""), "{hosts}");
    assert!(
        get(&addr, "/api/violations")
            .await
            .contains("missing field")
    );

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status}");
    let log = log.await.expect("log");
    assert!(
        log.iter().any(|l| l.contains("registered as vm1")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("protocol violation")),
        "{log:#?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    for args in [&["serve", "--bogus"][..], &["frobnicate"], &["demo", "--x"]] {
        let out = Command::new(PROGRAM)
            .args(args)
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
    let out = Command::new(PROGRAM)
        .arg("--help")
        .output()
        .await
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

#[tokio::test]
async fn demo_without_an_agent_says_how_to_get_one() {
    let out = Command::new(PROGRAM)
        .arg("demo")
        .env("NIXFLEET_AGENT_BIN", "/nonexistent/nixfleet-agent")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NIXFLEET_AGENT_BIN"));

    let beside = PathBuf::from(PROGRAM).with_file_name("nixfleet-agent");
    if beside.exists() {
        eprintln!("an agent is built next to the program; skipping the not-found case");
        return;
    }
    let out = Command::new(PROGRAM)
        .arg("demo")
        .env_remove("NIXFLEET_AGENT_BIN")
        .env("PATH", "/nonexistent")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build"), "{err}");
}

/// The whole demo against `examples/fake_agent.rs` (built by `cargo test`).
#[tokio::test]
async fn demo_runs_against_a_fake_agent() {
    let fake = PathBuf::from(PROGRAM)
        .parent()
        .map(|d| d.join("examples").join("fake_agent"))
        .expect("target dir");
    if !fake.exists() {
        eprintln!(
            "{} is not built (cargo test without a target filter builds it); skipping",
            fake.display()
        );
        return;
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(PROGRAM)
            .arg("demo")
            .arg("--agent")
            .arg(&fake)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo finishes within a minute")
    .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in [
        "← register ",
        "→ registered       host_id=demo-host",
        "← heartbeat ",
        "→ command          pull",
        "pull ok exit=0",
        "the agent is now on",
        "← test_progress    3/3 done, 3 passed, finished: 3/3 passed",
        "→ command          stop",
        "test stopped",
        "the agent reports the run as stopped",
        "← close            code=1000 reason=\"shutdown\"",
        "the agent exited: exit status: 0",
        "protocol violations: none",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("no answer from the agent"), "{text}");
}
