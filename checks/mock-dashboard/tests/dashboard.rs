//! The mock dashboard against a hand-driven WebSocket client: registration,
//! tokens, frames, violations, the control API, pause, disconnects, shutdown.
//! The hub's own rules (frame limit, pings, the operation lifecycle):
//! `hub_rules.rs`.

mod client;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{Error, MockDashboard, Options};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use client::*;

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
