//! The one host of `commands.rs` and `switch.rs`: the agent with the fake
//! tools against the mock dashboard, and the waits both files use.

use std::path::{Path, PathBuf};

use nixfleet_mock_dashboard::{Frame, MockDashboard};
use serde_json::{Value, json};

use super::*;

pub const HOST: &str = "cmdhost";

/// A host test script `hosts/<HOST>/tests/<name>` in `repo`.
pub fn test_script(repo: &Path, name: &str, body: &str) {
    host_test(repo, HOST, name, body);
}

/// An agent against `dash` in legacy mode on the fixture's repo, fakes on PATH.
pub fn agent(dash: &MockDashboard, fx: &Fixture, fakes: &Fakes) -> AgentBuilder {
    AgentBuilder::new(&dash.ws_url(), HOST, fx).with_fakes(fakes)
}

/// An agent in isolated mode: its own clone of `bare` in `<state>/repo`.
pub fn isolated_agent(
    dash: &MockDashboard,
    fx: &Fixture,
    fakes: &Fakes,
    bare: &Path,
) -> AgentBuilder {
    agent(dash, fx, fakes)
        .without("NIXFLEET_REPO_DIR")
        .env("NIXFLEET_REPO_URL", bare.to_str().unwrap())
}

/// Waits for a heartbeat carrying the fixture's HEAD: the agent's first start
/// in isolated mode has cloned the origin.
pub async fn cloned(dash: &MockDashboard, fx: &Fixture) {
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("heartbeat"))
            .into_iter()
            .find(|f| f.payload["generation"] == short7(&fx.head))
    })
    .await
    .expect("a heartbeat with the cloned generation");
}

pub async fn registered(dash: &MockDashboard) -> u64 {
    wait_register(dash, HOST, 0).await.1
}

pub async fn command(dash: &MockDashboard, name: &str) -> u64 {
    let seq = dash.last_seq();
    dash.send_command(HOST, name).await.expect("send command");
    seq
}

pub async fn kill_command(dash: &MockDashboard, signal: &str, pid: i64) -> u64 {
    let seq = dash.last_seq();
    let frame = json!({"type": "kill_command", "payload": {"signal": signal, "pid": pid}});
    dash.send_text(HOST, &frame.to_string())
        .await
        .expect("send kill_command");
    seq
}

pub async fn next(dash: &MockDashboard, kind: &str, after: u64) -> Frame {
    dash.wait_frame(HOST, kind, after, WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {kind} after seq {after}; frames: {:#?}",
                dash.frames(HOST, None)
            )
        })
}

pub async fn status(dash: &MockDashboard, after: u64) -> Frame {
    next(dash, "status", after).await
}

/// Waits for an output line equal to `line` after `after`.
pub async fn output_line(dash: &MockDashboard, line: &str, after: u64) -> Frame {
    dash.wait_until(WAIT, |d| {
        d.frames(HOST, Some("output"))
            .into_iter()
            .find(|f| f.seq > after && f.payload["line"] == line)
    })
    .await
    .unwrap_or_else(|| panic!("no output line {line:?}"))
}

pub fn outputs(dash: &MockDashboard, after: u64, before: u64) -> Vec<Value> {
    dash.frames(HOST, Some("output"))
        .into_iter()
        .filter(|f| f.seq > after && f.seq < before)
        .map(|f| f.payload)
        .collect()
}

pub fn switch_records(state: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state.join("switch"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}
