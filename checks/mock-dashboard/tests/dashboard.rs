//! The mock dashboard against a hand-driven WebSocket client.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{Error, MockDashboard, Options};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

async fn start() -> MockDashboard {
    MockDashboard::start(Options::default())
        .await
        .expect("start dashboard")
}

async fn try_connect(dash: &MockDashboard, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
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

async fn connect(dash: &MockDashboard) -> Ws {
    try_connect(dash, Some("test-token"))
        .await
        .expect("connect with the default token")
}

fn register_payload(host: &str, interval: u64) -> Value {
    json!({
        "hostname": host, "host_type": "nixos", "agent_version": "0.1.0",
        "os_version": "24.11", "nixpkgs_version": "24.11.20241201.abc1234",
        "generation": "abc1234", "theme_color": "", "heartbeat_interval": interval,
        "location": "home", "device_type": "server", "repo_url": "",
        "repo_dir": "/var/lib/nixfleet-agent/repo"
    })
}

fn heartbeat() -> Value {
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

fn output(line: &str) -> Value {
    json!({"type": "output", "payload": {
        "line": line, "stream": "stdout", "command": "test", "is_error": false
    }})
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame from the dashboard, as JSON (pings/pongs skipped).
async fn recv_json(ws: &mut Ws) -> Value {
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
async fn recv_close(ws: &mut Ws) -> Option<CloseFrame> {
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
async fn agent(dash: &MockDashboard, host: &str) -> Ws {
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
async fn http(dash: &MockDashboard, method: &str, path: &str, body: &str) -> (u16, Value) {
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

#[tokio::test]
async fn register_is_answered_and_recorded() {
    let dash = start().await;
    let _ws = agent(&dash, "host1").await;
    let ev = dash
        .wait_event("connected", Some("host1"), 0, WAIT)
        .await
        .expect("connected event");
    assert_eq!(ev.code, None);
    let hosts = dash.hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].hostname, "host1");
    assert!(hosts[0].connected && hosts[0].online);
    assert_eq!(hosts[0].heartbeat_interval, 1);
    let reg = dash.frames("host1", Some("register"));
    assert_eq!(reg.len(), 1);
    assert_eq!(reg[0].payload["hostname"], "host1");
    assert!(reg[0].seq < ev.seq);
    assert!(dash.last_seq() >= ev.seq);
    assert_eq!(dash.violations(), vec![]);
}

#[tokio::test]
async fn wrong_or_missing_token_gets_401() {
    let dash = start().await;
    for token in [None, Some("wrong"), Some("")] {
        match try_connect(&dash, token).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401 for {token:?}, got {:?}", other.map(|_| ())),
        }
    }
    let rejected: Vec<_> = dash
        .events()
        .into_iter()
        .filter(|e| e.kind == "rejected")
        .collect();
    assert_eq!(rejected.len(), 3);
    assert!(
        rejected
            .iter()
            .all(|e| e.code == Some(401) && e.host.is_none())
    );
    // Enrolled later: accepted from then on.
    dash.add_token("wrong");
    try_connect(&dash, Some("wrong"))
        .await
        .expect("token added");
    let (status, body) = http(&dash, "POST", "/api/tokens", r#"{"token":"other"}"#).await;
    assert_eq!((status, body), (200, json!({"added": true})));
    try_connect(&dash, Some("other"))
        .await
        .expect("token added by API");
    assert!(dash.hosts().is_empty(), "nobody registered");
}

#[tokio::test]
async fn duplicate_host_closes_the_older_connection_without_a_code() {
    let dash = start().await;
    let mut old = agent(&dash, "dup").await;
    let mut new = agent(&dash, "dup").await;
    // hub.go: the older client's close frame carries no status code
    assert!(
        recv_close(&mut old).await.is_none(),
        "a close without a code"
    );
    // Reading on sends the client's answer to the close frame.
    assert!(matches!(
        tokio::time::timeout(WAIT, old.next()).await,
        Ok(None | Some(Err(_)))
    ));
    let ev = dash
        .wait_event("replaced", Some("dup"), 0, WAIT)
        .await
        .expect("replaced event");
    assert_eq!(ev.code, None);
    // The old socket ends; the host stays connected through the new one.
    dash.wait_event("disconnected", Some("dup"), 0, WAIT)
        .await
        .expect("old connection gone");
    assert_eq!(dash.hosts().len(), 1);
    assert!(dash.hosts()[0].connected);
    dash.send_command("dup", "pull").await.expect("send");
    assert_eq!(
        recv_json(&mut new).await,
        json!({"type": "command", "payload": {"command": "pull"}})
    );
    assert_eq!(dash.violations(), vec![]);
}

#[tokio::test]
async fn bad_frames_are_recorded_as_violations() {
    let dash = start().await;
    let mut ws = connect(&dash).await;
    send(&mut ws, &heartbeat()).await; // before register
    ws.send(Message::text("{oops")).await.expect("send");
    send(
        &mut ws,
        &json!({"type": "register", "payload": register_payload("bad", 1)}),
    )
    .await;
    recv_json(&mut ws).await;
    let mut hb = heartbeat();
    hb["payload"]
        .as_object_mut()
        .expect("object")
        .remove("metrics");
    send(&mut ws, &hb).await;
    send(&mut ws, &json!({"type": "heartbeet", "payload": {}})).await;
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    let n = dash
        .wait_until(WAIT, |d| (d.violations().len() >= 5).then_some(()))
        .await;
    assert!(n.is_some(), "violations: {:#?}", dash.violations());
    let v = dash.violations();
    assert_eq!(v.len(), 5, "{v:#?}");
    assert_eq!(v[0].host, None);
    assert!(v[0].message.contains("before register"), "{v:#?}");
    assert_eq!(v[1].host, None);
    assert!(v[1].message.contains("malformed JSON"));
    assert_eq!(v[2].host.as_deref(), Some("bad"));
    assert!(v[2].message.contains("missing field `metrics`"));
    assert!(v[3].message.contains("unknown frame type `heartbeet`"));
    assert!(v[4].message.contains("binary"));
    // Frames before register are listed under "".
    let early: Vec<_> = dash.frames("", None).into_iter().map(|f| f.kind).collect();
    assert_eq!(early, ["heartbeat", "<malformed>"]);
    let kinds: Vec<_> = dash
        .frames("bad", None)
        .into_iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, ["register", "heartbeat", "heartbeet", "<binary>"]);
    // Each violation points at its frame.
    let hb_seq = dash.frames("bad", Some("heartbeat"))[0].seq;
    assert_eq!(v[2].seq, hb_seq);
    let (status, body) = http(&dash, "GET", "/api/violations", "").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(5));
    assert_eq!(body[2]["host"], "bad");
    // Still connected: violations never close the connection.
    assert!(dash.hosts()[0].connected);
}

#[tokio::test]
async fn frames_can_be_filtered_and_awaited() {
    let dash = start().await;
    let mut ws = agent(&dash, "f").await;
    let start_seq = dash.last_seq();
    for i in 0..3 {
        send(&mut ws, &heartbeat()).await;
        send(&mut ws, &output(&format!("line {i}"))).await;
    }
    let status = json!({"type": "status", "payload": {"status": "ok", "command": "test",
        "exit_code": 0, "message": "", "generation": "abc1234"}});
    send(&mut ws, &status).await;
    let st = dash
        .wait_frame("f", "status", start_seq, WAIT)
        .await
        .expect("status");
    assert_eq!(st.payload["command"], "test");
    assert_eq!(dash.frames("f", Some("heartbeat")).len(), 3);
    let out = dash.frames("f", Some("output"));
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].payload["line"], "line 2");
    assert_eq!(dash.output_count("f"), 3);
    assert_eq!(dash.frames("f", None).len(), 8);
    assert!(dash.frames("nobody", None).is_empty());
    // wait_frame only looks after `after_seq`.
    let second = dash
        .wait_frame("f", "output", out[0].seq, WAIT)
        .await
        .expect("second output");
    assert_eq!(second.seq, out[1].seq);
    assert!(
        dash.wait_frame("f", "status", st.seq, Duration::from_millis(50))
            .await
            .is_none()
    );
    // The same through HTTP.
    let path = format!("/api/hosts/f/frames?type=output&after={}", out[0].seq);
    let (code, body) = http(&dash, "GET", &path, "").await;
    assert_eq!(code, 200);
    let list = body.as_array().expect("array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["type"], "output");
    assert_eq!(list[0]["seq"], out[1].seq);
    assert_eq!(list[1]["payload"]["line"], "line 2");
    assert!(list[0]["received_ms"].is_u64());
    let (_, all) = http(&dash, "GET", "/api/hosts/f/frames", "").await;
    assert_eq!(all.as_array().map(Vec::len), Some(8));
    assert_eq!(dash.violations(), vec![]);
}

#[tokio::test]
async fn output_frames_are_counted_but_not_kept_when_asked() {
    let dash = MockDashboard::start(Options {
        keep_output_frames: false,
        ..Options::default()
    })
    .await
    .expect("start");
    let mut ws = agent(&dash, "fast").await;
    const N: u64 = 20_000;
    let started = Instant::now();
    for i in 0..N {
        ws.feed(Message::text(output(&format!("line {i}")).to_string()))
            .await
            .expect("feed");
    }
    ws.flush().await.expect("flush");
    send(&mut ws, &heartbeat()).await;
    let counted = dash
        .wait_until(Duration::from_secs(30), |d| {
            (d.output_count("fast") == N).then_some(())
        })
        .await;
    assert!(counted.is_some(), "counted {}", dash.output_count("fast"));
    dash.wait_frame("fast", "heartbeat", 0, WAIT)
        .await
        .expect("heartbeat after the output");
    eprintln!("{N} output frames in {:?}", started.elapsed());
    assert!(dash.frames("fast", Some("output")).is_empty());
    assert_eq!(dash.violations(), vec![]);
    // Bad output frames are still validated.
    let mut bad = output("x");
    bad["payload"]["is_error"] = json!(true);
    send(&mut ws, &bad).await;
    let v = dash
        .wait_until(WAIT, |d| d.violations().into_iter().next())
        .await
        .expect("a violation");
    assert!(v.message.contains("is_error"));
}

#[tokio::test]
async fn commands_and_raw_text_reach_the_agent() {
    let dash = start().await;
    let mut ws = agent(&dash, "c").await;
    dash.send_command("c", "test").await.expect("send");
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "command", "payload": {"command": "test"}})
    );
    dash.send_text(
        "c",
        r#"{"type":"kill_command","payload":{"signal":"SIGTERM","pid":0}}"#,
    )
    .await
    .expect("send");
    assert_eq!(recv_json(&mut ws).await["type"], "kill_command");
    assert_eq!(
        dash.send_command("nobody", "pull").await,
        Err(Error::NotConnected("nobody".into()))
    );
    let (code, body) = http(
        &dash,
        "POST",
        "/api/hosts/c/command",
        r#"{"command":"pull"}"#,
    )
    .await;
    assert_eq!((code, body), (200, json!({"sent": true})));
    assert_eq!(recv_json(&mut ws).await["payload"]["command"], "pull");
    let (code, _) = http(&dash, "POST", "/api/hosts/c/frame", "{not json").await;
    assert_eq!(code, 200);
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "{not json"),
        other => panic!("expected the raw text, got {other:?}"),
    }
    let (code, body) = http(
        &dash,
        "POST",
        "/api/hosts/nobody/command",
        r#"{"command":"pull"}"#,
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not connected"))
    );
    let (code, _) = http(&dash, "POST", "/api/hosts/c/command", "pull").await;
    assert_eq!(code, 400);
    let (code, _) = http(&dash, "POST", "/api/hosts/nobody/pause", "").await;
    assert_eq!(code, 404);
    let (code, hosts) = http(&dash, "GET", "/api/hosts", "").await;
    assert_eq!(code, 200);
    assert_eq!(hosts[0]["hostname"], "c");
    assert_eq!(hosts[0]["connected"], true);
    assert_eq!(hosts[0]["online"], true);
    assert_eq!(hosts[0]["heartbeat_interval"], 1);
    assert!(hosts[0]["last_seen_ms_ago"].is_u64());
}

#[tokio::test]
async fn pause_stops_reading_until_resume() {
    let dash = start().await;
    let mut ws = agent(&dash, "p").await;
    let (code, body) = http(&dash, "POST", "/api/hosts/p/pause", "").await;
    assert_eq!((code, body), (200, json!({"paused": true})));
    // Neither frames nor pings are read while paused.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    send(&mut ws, &heartbeat()).await;
    assert!(
        dash.wait_frame("p", "heartbeat", 0, Duration::from_millis(300))
            .await
            .is_none(),
        "a paused dashboard read a frame"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws.next())
            .await
            .is_err(),
        "a paused dashboard answered"
    );
    // Backpressure: writes stall once the socket buffers are full.
    // (frames under the hub's 512 KiB read limit)
    let big = output(&"x".repeat(256 * 1024)).to_string();
    let mut sent = 0u64;
    let blocked = loop {
        let mut fut = Box::pin(ws.send(Message::text(big.clone())));
        if tokio::time::timeout(Duration::from_millis(500), &mut fut)
            .await
            .is_err()
        {
            break fut;
        }
        sent += 1;
        assert!(sent < 4096, "writes to a paused dashboard never block");
    };
    // Writing to a paused connection still works.
    dash.send_command("p", "test")
        .await
        .expect("send while paused");
    dash.resume("p");
    blocked.await.expect("the stalled write completes");
    sent += 1;
    let all = dash
        .wait_until(Duration::from_secs(20), |d| {
            (d.output_count("p") == sent).then_some(())
        })
        .await;
    assert!(all.is_some(), "{} of {sent}", dash.output_count("p"));
    dash.wait_frame("p", "heartbeat", 0, WAIT)
        .await
        .expect("heartbeat read after resume");
    let mut got_pong = false;
    let mut got_command = false;
    while !(got_pong && got_command) {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"are you there");
                got_pong = true;
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(t.as_str().contains("\"test\""));
                got_command = true;
            }
            other => panic!("expected a pong and the command, got {other:?}"),
        }
    }
    assert_eq!(dash.violations(), vec![]);
}

#[tokio::test]
async fn dashboard_disconnects_with_a_code() {
    let dash = start().await;
    let mut ws = agent(&dash, "d").await;
    let seq = dash.last_seq();
    dash.disconnect("d", 4000).await;
    let close = recv_close(&mut ws).await.expect("a code");
    assert_eq!(u16::from(close.code), 4000);
    // The client answers the close; the socket ends.
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await,
        Ok(None | Some(Err(_)))
    ));
    dash.wait_event("disconnected", Some("d"), seq, WAIT)
        .await
        .expect("disconnected");
    assert!(!dash.hosts()[0].connected);
    assert!(!dash.hosts()[0].online);

    // Over HTTP, and 1006: dropped without a close frame.
    let mut ws = agent(&dash, "d").await;
    let seq = dash.last_seq();
    let (code, _) = http(&dash, "POST", "/api/hosts/d/disconnect?code=1006", "").await;
    assert_eq!(code, 200);
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(None | Some(Err(_))) => {}
        other => panic!("expected the connection to end without a close frame, got {other:?}"),
    }
    dash.wait_event("disconnected", Some("d"), seq, WAIT)
        .await
        .expect("disconnected");
    assert!(
        !dash
            .events()
            .iter()
            .any(|e| e.kind == "closed" && e.seq > seq),
        "no close frame was exchanged"
    );
    let (code, _) = http(&dash, "POST", "/api/hosts/d/disconnect", "").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn agent_close_frame_is_recorded() {
    let dash = start().await;
    let mut ws = agent(&dash, "bye").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "shutdown".into(),
    }))
    .await
    .expect("close");
    let closed = dash
        .wait_event("closed", Some("bye"), 0, WAIT)
        .await
        .expect("closed event");
    assert_eq!(closed.code, Some(1000));
    assert_eq!(closed.reason.as_deref(), Some("shutdown"));
    // The dashboard answers the close frame.
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await,
        Ok(Some(Ok(Message::Close(_))) | None)
    ));
    let gone = dash
        .wait_event("disconnected", Some("bye"), closed.seq, WAIT)
        .await
        .expect("disconnected");
    assert_eq!(gone.reason.as_deref(), Some("closed"));
    let (code, body) = http(&dash, "GET", "/api/events?host=bye", "").await;
    assert_eq!(code, 200);
    let kinds: Vec<_> = body
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["connected", "closed", "disconnected"]);
    assert_eq!(body[1]["code"], 1000);
    assert_eq!(body[1]["reason"], "shutdown");
}

#[tokio::test]
async fn shutdown_drops_sockets_and_frees_the_port() {
    let dash = start().await;
    let addr = dash.addr();
    let mut ws = agent(&dash, "s").await;
    // A control-API connection kept alive must not keep anything bound.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /api/hosts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let record = dash.clone();
    dash.shutdown().await;
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(None | Some(Err(_))) => {}
        other => panic!("expected the socket to end without a close frame, got {other:?}"),
    }
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, idle.read_to_end(&mut rest))
        .await
        .expect("the idle HTTP connection is cut too")
        .ok();
    // The record survives in other clones.
    assert_eq!(record.frames("s", Some("register")).len(), 1);
    // Same address again, at once.
    let again = MockDashboard::start(Options {
        listen: addr,
        ..Options::default()
    })
    .await
    .expect("the port is free again");
    assert_eq!(again.addr(), addr);
    let _ws = agent(&again, "s").await;
    assert!(again.hosts()[0].connected);
    again.shutdown().await;
}

#[tokio::test]
async fn wait_until_times_out_and_wakes_on_events() {
    let dash = start().await;
    let t = Instant::now();
    assert_eq!(
        dash.wait_until(Duration::from_millis(100), |_| None::<()>)
            .await,
        None
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    let waiter = {
        let dash = dash.clone();
        tokio::spawn(async move {
            dash.wait_event("connected", Some("late"), 0, Duration::from_secs(10))
                .await
        })
    };
    let _ws = agent(&dash, "late").await;
    let ev = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("woken")
        .expect("join")
        .expect("event");
    assert_eq!(ev.host.as_deref(), Some("late"));
}

#[tokio::test]
async fn a_non_upgrade_request_to_ws_is_refused() {
    let dash = start().await;
    let (code, _) = http(&dash, "GET", "/ws", "").await;
    assert_eq!(code, 401);
    assert_eq!(dash.events().len(), 1);
    let (code, _) = http(&dash, "GET", "/nothing", "").await;
    assert_eq!(code, 404);
}

/// `cargo test --release -p nixfleet-mock-dashboard -- --ignored --nocapture`:
/// how fast the dashboard takes in output lines (it must never be the
/// bottleneck of the agent's throughput benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn million_output_lines() {
    let dash = MockDashboard::start(Options {
        keep_output_frames: false,
        ..Options::default()
    })
    .await
    .expect("start");
    let mut ws = agent(&dash, "bench").await;
    const N: u64 = 1_000_000;
    let frames: Vec<String> = (0..1000)
        .map(|i| {
            output(&format!(
                "line {i} of some typical build output, /nix/store/abc-foo"
            ))
            .to_string()
        })
        .collect();
    let started = Instant::now();
    let client = tokio::spawn(async move {
        for i in 0..N {
            let text = frames[(i % 1000) as usize].clone();
            ws.feed(Message::text(text)).await.expect("feed");
        }
        ws.flush().await.expect("flush");
        send(&mut ws, &heartbeat()).await;
        ws
    });
    let done = dash
        .wait_frame("bench", "heartbeat", 0, Duration::from_secs(120))
        .await;
    let elapsed = started.elapsed();
    let _ws = client.await.expect("client");
    assert!(done.is_some(), "only {} lines", dash.output_count("bench"));
    eprintln!(
        "{N} output lines in {elapsed:?}: {:.0} lines/s",
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(dash.violations(), vec![]);
}

fn status_frame(command: &str, status: &str, exit: i64) -> Value {
    json!({"type": "status", "payload": {
        "status": status, "command": command, "exit_code": exit,
        "message": if exit == 0 { "" } else { "it failed" }, "generation": "abc1234"
    }})
}

/// The next `command` the dashboard sends, by name.
async fn recv_command(ws: &mut Ws) -> String {
    loop {
        let v = recv_json(ws).await;
        if v["type"] == "command" {
            return v["payload"]["command"].as_str().expect("name").to_owned();
        }
    }
}

async fn op_state(dash: &MockDashboard, id: &str, state: &str) {
    let found = dash
        .wait_until(WAIT, |d| d.op(id).filter(|o| o.status == state))
        .await;
    assert!(found.is_some(), "{id} never {state}: {:?}", dash.op(id));
}

#[tokio::test]
async fn a_frame_over_the_hubs_512_kib_limit_drops_the_connection() {
    let dash = start().await;
    let mut ws = agent(&dash, "big").await;
    send(&mut ws, &output(&"y".repeat(400 * 1024))).await;
    let seq = dash.last_seq();
    let _ = ws
        .send(Message::text(output(&"x".repeat(600 * 1024)).to_string()))
        .await;
    let ev = dash
        .wait_event("disconnected", Some("big"), seq, WAIT)
        .await;
    assert!(ev.is_some(), "the connection was not dropped");
    assert_eq!(dash.output_count("big"), 1);
}

#[tokio::test]
async fn pings_and_the_read_deadline() {
    let dash = MockDashboard::start(Options {
        ping_interval: Duration::from_millis(100),
        read_deadline: Duration::from_millis(400),
        ..Options::default()
    })
    .await
    .expect("start");
    let mut ws = agent(&dash, "quiet").await;
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping from the dashboard");
    // silent from here on: not reading (so no pong goes out), sending nothing
    let ev = dash
        .wait_event("disconnected", Some("quiet"), 0, WAIT)
        .await;
    assert!(
        ev.is_some_and(|e| e.reason.is_some_and(|r| r.contains("read deadline"))),
        "{:?}",
        dash.events()
    );
}

#[tokio::test]
async fn operations_follow_the_hubs_lifecycle() {
    let dash = MockDashboard::start(Options {
        reconnect_timeout: Duration::from_millis(2000),
        ..Options::default()
    })
    .await
    .expect("start");
    let mut ws = agent(&dash, "ops").await;
    // agent_version 0.1.0 against the dashboard's 3.1.5
    let info = dash.host("ops").expect("host");
    assert!(info.agent_outdated);
    assert_eq!(info.row.agent.status, "outdated");
    assert_eq!(
        info.row.git.status, "error",
        "no version tracking configured"
    );

    // pull: EXECUTING, the status defers to the next heartbeat, then SUCCESS
    let (code, body) = http(
        &dash,
        "POST",
        "/api/dispatch",
        r#"{"op":"pull","hosts":["ops"]}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "EXECUTING", "{body}");
    let id = body["results"][0]["command_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(recv_command(&mut ws).await, "pull");
    assert_eq!(
        dash.host("ops").expect("host").pending_command.as_deref(),
        Some("pull")
    );
    send(&mut ws, &status_frame("pull", "ok", 0)).await;
    send(&mut ws, &output("marker")).await;
    dash.wait_until(WAIT, |d| (d.output_count("ops") > 0).then_some(()))
        .await;
    assert_eq!(
        dash.op(&id).expect("op").status,
        "EXECUTING",
        "deferred to a heartbeat"
    );
    send(&mut ws, &heartbeat()).await;
    op_state(&dash, &id, "SUCCESS").await;
    assert_eq!(dash.host("ops").expect("host").pending_command, None);

    // a second operation while one runs is refused; command_rejected is an error
    let d = dash.dispatch("ops", "test", false);
    let test_id = d.command_id.expect("id");
    assert_eq!(recv_command(&mut ws).await, "test");
    let again = dash.dispatch("ops", "test", false);
    assert_eq!(
        (again.status.as_str(), again.code.as_deref()),
        ("error", Some("command_pending"))
    );
    send(
        &mut ws,
        &json!({"type": "command_rejected", "payload": {
        "reason": "command already running", "current_command": "pull", "current_pid": 7}}),
    )
    .await;
    op_state(&dash, &test_id, "ERROR").await;

    // Kill sends the command `kill`; the killed command's status ends it
    let d = dash.dispatch("ops", "test", false);
    let test_id = d.command_id.expect("id");
    assert_eq!(recv_command(&mut ws).await, "test");
    dash.kill("ops").expect("kill");
    assert_eq!(dash.op(&test_id).expect("op").status, "KILLING");
    assert_eq!(recv_command(&mut ws).await, "kill");
    send(&mut ws, &status_frame("test", "stopped", 143)).await;
    op_state(&dash, &test_id, "ERROR").await;

    // switch: AWAITING_RECONNECT after its status, SUCCESS once registered again
    let d = dash.dispatch("ops", "switch", false);
    let sw = d.command_id.expect("id");
    assert_eq!(recv_command(&mut ws).await, "switch");
    send(&mut ws, &status_frame("switch", "ok", 0)).await;
    op_state(&dash, &sw, "AWAITING_RECONNECT").await;
    drop(ws);
    let mut ws = agent(&dash, "ops").await;
    op_state(&dash, &sw, "SUCCESS").await;
    let info = dash.host("ops").expect("host");
    assert_eq!(
        info.stored.system.status, "ok",
        "status: Last switch succeeded"
    );
    assert_eq!(info.stored.tests.status, "outdated");

    // System ok and the agent outdated: switch allowed; agent current: blocked
    let mut hb = heartbeat();
    hb["payload"]["update_status"]["system"]["status"] = json!("ok");
    send(&mut ws, &hb).await;
    let seq = dash.last_seq();
    dash.wait_frame("ops", "heartbeat", seq - 1, WAIT)
        .await
        .expect("heartbeat");
    drop(ws);
    let mut current = register_payload("ops", 1);
    current["agent_version"] = json!("3.1.5");
    let mut ws = connect(&dash).await;
    send(&mut ws, &json!({"type": "register", "payload": current})).await;
    recv_json(&mut ws).await;
    assert!(!dash.host("ops").expect("host").agent_outdated);
    let blocked = dash.dispatch("ops", "switch", false);
    assert_eq!(
        (blocked.status.as_str(), blocked.code.as_deref()),
        ("blocked", Some("already_current"))
    );
    let forced = dash.dispatch("ops", "switch", true);
    assert_eq!(forced.status, "EXECUTING");
    assert_eq!(recv_command(&mut ws).await, "switch");
    // cut off mid-switch: awaiting a reconnect that never comes
    drop(ws);
    op_state(
        &dash,
        forced.command_id.as_deref().expect("id"),
        "AWAITING_RECONNECT",
    )
    .await;
    op_state(&dash, forced.command_id.as_deref().expect("id"), "TIMEOUT").await;
    assert!(dash.violations().is_empty(), "{:#?}", dash.violations());
}
