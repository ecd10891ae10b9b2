//! A hand-driven WebSocket client of the mock dashboard, and its HTTP
//! control API, for `dashboard.rs` and `hub_rules.rs`.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{MockDashboard, Options};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(5);

pub async fn start() -> MockDashboard {
    MockDashboard::start(Options::default())
        .await
        .expect("start dashboard")
}

pub async fn try_connect(
    dash: &MockDashboard,
    token: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut req = dash.ws_url().into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

pub async fn connect(dash: &MockDashboard) -> Ws {
    try_connect(dash, Some("test-token"))
        .await
        .expect("connect with the default token")
}

pub fn register_payload(host: &str, interval: u64) -> Value {
    json!({
        "hostname": host, "host_type": "nixos", "agent_version": "0.1.0",
        "os_version": "24.11", "nixpkgs_version": "24.11.20241201.abc1234",
        "generation": "abc1234", "theme_color": "", "heartbeat_interval": interval,
        "location": "home", "device_type": "server", "repo_url": "",
        "repo_dir": "/var/lib/nixfleet-agent/repo"
    })
}

pub fn heartbeat() -> Value {
    json!({"type": "heartbeat", "payload": {
        "generation": "abc1234", "nixpkgs_version": "24.11.20241201.abc1234",
        "pending_command": null, "command_pid": null,
        "metrics": {"cpu": 1.5, "ram": 20.0, "swap": 0.0, "load": 0.1},
        "update_status": {
            "git": {"status": "", "message": "", "checked_at": ""},
            "lock": {"status": "ok", "message": "Updated today", "checked_at": "2026-12-01T21:27:05Z"},
            "system": {"status": "unknown", "message": "", "checked_at": ""},
            "tests": {"status": "unknown", "message": "", "checked_at": ""}
        }
    }})
}

pub fn output(line: &str) -> Value {
    json!({"type": "output", "payload": {
        "line": line, "stream": "stdout", "command": "test", "is_error": false
    }})
}

pub async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame from the dashboard, as JSON (pings/pongs skipped).
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame from the dashboard in time")
            .expect("the connection is open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame the dashboard sends (pings/pongs/texts skipped).
pub async fn recv_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close frame in time");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Connect and register as `host`; returns the socket after `registered`.
pub async fn agent(dash: &MockDashboard, host: &str) -> Ws {
    let mut ws = connect(dash).await;
    send(
        &mut ws,
        &json!({"type": "register", "payload": register_payload(host, 1)}),
    )
    .await;
    let reply = recv_json(&mut ws).await;
    assert_eq!(
        reply,
        json!({"type": "registered", "payload": {"host_id": host}})
    );
    ws
}

/// A minimal HTTP/1.1 client: (status, parsed JSON body or the raw text).
pub async fn http(dash: &MockDashboard, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(dash.addr()).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        dash.addr(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(buf).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, body)
}

pub fn status_frame(command: &str, status: &str, exit: i64) -> Value {
    json!({"type": "status", "payload": {
        "status": status, "command": command, "exit_code": exit,
        "message": if exit == 0 { "" } else { "it failed" }, "generation": "abc1234"
    }})
}

/// The next `command` the dashboard sends, by name.
pub async fn recv_command(ws: &mut Ws) -> String {
    loop {
        let v = recv_json(ws).await;
        if v["type"] == "command" {
            return v["payload"]["command"].as_str().expect("name").to_owned();
        }
    }
}

pub async fn op_state(dash: &MockDashboard, id: &str, state: &str) {
    let found = dash
        .wait_until(WAIT, |d| d.op(id).filter(|o| o.status == state))
        .await;
    assert!(found.is_some(), "{id} never {state}: {:?}", dash.op(id));
}
