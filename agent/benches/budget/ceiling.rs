//! The receivers' ceiling: a trivial client that sends exactly the agent's frames.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::{DEFAULT_TOKEN, MockDashboard};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::fast::*;
use crate::fixture::*;
use crate::settings::*;
use crate::table::*;

pub(crate) const REGISTER_JSON: &str = r#"{"type":"register","payload":{"hostname":"bench-ceiling","host_type":"nixos","agent_version":"0.0.0","os_version":"24.11","nixpkgs_version":"24.11.20241201.abc1234","generation":"0123456","theme_color":"","heartbeat_interval":30,"location":"home","device_type":"server","repo_url":"","repo_dir":"/tmp/repo"}}"#;

/// Sends `lines` output frames then one `status` as fast as the socket takes
/// them, on its own thread and runtime (like a separate agent process).
pub(crate) fn ceiling_client(
    url: String,
    lines: u64,
) -> std::thread::JoinHandle<Result<Instant, String>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut req = url.into_client_request().map_err(|e| e.to_string())?;
            let auth = HeaderValue::from_str(&format!("Bearer {DEFAULT_TOKEN}"))
                .map_err(|e| e.to_string())?;
            req.headers_mut().insert("authorization", auth);
            let (ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sink, mut stream) = ws.split();
            sink.send(Message::text(REGISTER_JSON))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("registered") => break,
                    Some(Ok(_)) => {}
                    other => return Err(format!("no `registered`: {other:?}")),
                }
            }
            // Keep reading (pongs etc.) so that the socket never stalls.
            tokio::spawn(async move { while stream.next().await.is_some() {} });
            let started = Instant::now();
            for i in 1..=lines {
                let frame = format!(
                    r#"{{"type":"output","payload":{{"line":"{i}","stream":"stdout","command":"test","is_error":false}}}}"#
                );
                sink.feed(Message::text(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                if i % 256 == 0 {
                    sink.flush().await.map_err(|e| e.to_string())?;
                }
            }
            let status = r#"{"type":"status","payload":{"status":"ok","command":"test","exit_code":0,"message":"","generation":"0123456"}}"#;
            sink.send(Message::text(status))
                .await
                .map_err(|e| e.to_string())?;
            // Stay connected until the dashboard has seen everything.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(started)
        })
    })
}

/// One run of the trivial client against the fast receiver: its rate in
/// frames/s (every frame counted before its `status`), or why it failed.
pub(crate) async fn fast_ceiling_run(fast: &FastReceiver, lines: u64) -> Result<f64, String> {
    let n = fast.statuses("bench-ceiling") + 1;
    let client = ceiling_client(fast.ws_url(), lines);
    let st = fast
        .wait_status("bench-ceiling", n, Duration::from_secs(120))
        .await;
    let started = tokio::task::spawn_blocking(move || client.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the ceiling client panicked".to_string())??;
    let st = st.ok_or("no status from the ceiling client")?;
    if st.outputs != lines {
        return Err(format!(
            "{} of {lines} frames before the status",
            st.outputs
        ));
    }
    Ok(lines as f64 / st.at.duration_since(started).as_secs_f64())
}

pub(crate) async fn figure_ceiling(
    r: &mut Report,
    s: &Settings,
    dash: &MockDashboard,
    fast: &FastReceiver,
) -> Option<f64> {
    let budget = "must exceed the agent's throughput";
    let fig = "receiver ceiling: mock dashboard (keep_output_frames = false), trivial client";
    let client = ceiling_client(dash.ws_url(), s.ceiling_lines);
    let st = poll_frame(dash, "bench-ceiling", "status", 0, Duration::from_secs(120)).await;
    let end = st.map(|f| f.received);
    let count = dash.output_count("bench-ceiling");
    let started = tokio::task::spawn_blocking(move || client.join())
        .await
        .expect("join the ceiling client");
    match (started, end) {
        (Ok(Ok(started)), Some(end)) => {
            let secs = end.duration_since(started).as_secs_f64();
            r.row(
                fig,
                budget,
                format!(
                    "{:.2} M frames/s ({} frames in {:.0} ms)",
                    count as f64 / secs / 1e6,
                    group(count),
                    secs * 1000.0
                ),
                Verdict::Info,
            );
        }
        (started, end) => r.row(
            fig,
            budget,
            format!("failed: client {started:?}, status seen: {}", end.is_some()),
            Verdict::Fail,
        ),
    }
    let fig = "receiver ceiling: the bench's fast receiver, trivial client";
    match fast_ceiling_run(fast, s.ceiling_lines).await {
        Ok(rate) => {
            r.row(
                fig,
                budget,
                format!(
                    "{:.2} M frames/s ({} frames)",
                    rate / 1e6,
                    group(s.ceiling_lines)
                ),
                Verdict::Info,
            );
            Some(rate)
        }
        Err(e) => {
            r.row(fig, budget, format!("failed: {e}"), Verdict::Fail);
            None
        }
    }
}
