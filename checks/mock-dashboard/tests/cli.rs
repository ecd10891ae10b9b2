//! The `nixfleet-mock-dashboard` program: `serve` and `demo` (the demo against
//! the real agent is the agent crate's `tests/demo.rs`).

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

/// An agent that is not there: exit 2 and what to do, whatever is built
/// next to the program or on `PATH`.
#[tokio::test]
async fn demo_without_an_agent_says_how_to_get_one() {
    let out = Command::new(PROGRAM)
        .args(["demo", "--agent", "/nonexistent/nixfleet-agent"])
        .output()
        .await
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--agent /nonexistent/nixfleet-agent: no such file"),
        "{err}"
    );
    assert!(err.contains("Run `cargo build` first"), "{err}");
    assert!(out.stdout.is_empty(), "no transcript without an agent");

    let out = Command::new(PROGRAM)
        .arg("demo")
        .env("NIXFLEET_AGENT_BIN", "/nonexistent/nixfleet-agent")
        .output()
        .await
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("NIXFLEET_AGENT_BIN=/nonexistent/nixfleet-agent: no such file"),
        "{err}"
    );
    assert!(err.contains("Run `cargo build` first"), "{err}");
}
