//! The mock dashboard's rules that come from the real hub (NixFleet 3.1.5
//! `hub.go`, `lifecycle.go`): the 512 KiB frame limit, pings and the read
//! deadline, and the lifecycle of an operation, with a hand-driven client.

mod client;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{MockDashboard, Options};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use client::*;

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
    // an agent keeps the socket open a moment after a switch's status (the
    // rule of the next test); this is that moment, not a synchronisation
    tokio::time::sleep(nixfleet_mock_dashboard::STATUS_CLOSE_RACE).await;
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

/// What makes the real hub panic is a violation, and the operation stays
/// as the hub keeps it: a second status for an operation whose timeout was
/// cancelled (lifecycle.go `HandleCommandComplete`), and a connection that
/// closes right after a switch's status (hub.go: the disconnect may be
/// handled first, then the status panics).
#[tokio::test]
async fn what_panics_the_real_hub_is_a_violation() {
    let dash = MockDashboard::start(Options::default())
        .await
        .expect("start");
    let mut ws = agent(&dash, "racy").await;
    let d = dash.dispatch("racy", "switch", true);
    let sw = d.command_id.expect("id");
    assert_eq!(recv_command(&mut ws).await, "switch");
    send(&mut ws, &status_frame("switch", "ok", 0)).await;
    op_state(&dash, &sw, "AWAITING_RECONNECT").await;
    assert!(dash.violations().is_empty(), "{:#?}", dash.violations());
    send(&mut ws, &status_frame("switch", "error", 1)).await;
    let v = dash
        .wait_until(WAIT, |d| d.violations().into_iter().next())
        .await
        .expect("a violation");
    assert!(
        v.message.contains("a second status for the operation"),
        "{v:?}"
    );
    assert_eq!(dash.op(&sw).expect("op").status, "AWAITING_RECONNECT");
    drop(ws);

    let mut ws = agent(&dash, "racy2").await;
    let d = dash.dispatch("racy2", "switch", true);
    let sw = d.command_id.expect("id");
    assert_eq!(recv_command(&mut ws).await, "switch");
    send(&mut ws, &status_frame("switch", "error", 4)).await;
    op_state(&dash, &sw, "ERROR").await;
    drop(ws);
    let v = dash
        .wait_until(WAIT, |d| {
            d.violations()
                .into_iter()
                .find(|v| v.message.contains("after a switch's status"))
        })
        .await;
    assert!(v.is_some(), "{:#?}", dash.violations());
}
