//! Figure 7: a dashboard that stops reading.

use std::time::{Duration, Instant};

use nixfleet_mock_dashboard::MockDashboard;

use crate::fixture::*;
use crate::procfs::*;
use crate::settings::*;
use crate::table::*;

pub(crate) async fn figure_stall(r: &mut Report, fx: &Fixture, rec: &MockDashboard, extras: u64) {
    let fig = "peak memory while the dashboard stops reading during a 1 000 000-line command";
    let budget = "≤ 16 MiB, and the agent recovers when it reads again";
    let host = "bench-stall";
    let agent = fx.spawn(rec, host, 1);
    let Some(hb) = wait_frame(rec, host, "heartbeat", 0).await else {
        r.no_register(fig, budget, agent.log_tail());
        return;
    };
    let hwm_before = proc_status_kib(agent.pid, "VmHWM").unwrap_or(0);
    rec.pause(host);
    let paused_at = Instant::now();
    if rec.send_command(host, "test").await.is_err() {
        r.row(fig, budget, "command not sent".into(), Verdict::Fail);
        return;
    }
    // The command runs while nobody reads: wait until its process is gone.
    let mut started = None;
    let mut ended = None;
    let mut max_rss = 0;
    let limit = Instant::now() + Duration::from_secs(120);
    while Instant::now() < limit {
        max_rss = max_rss.max(proc_status_kib(agent.pid, "VmRSS").unwrap_or(0));
        let kids = children_of(agent.pid);
        if started.is_none() && !kids.is_empty() {
            started = Some(Instant::now());
        }
        if started.is_some() && kids.is_empty() {
            ended = Some(Instant::now());
            break;
        }
        if started.is_none() && paused_at.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hwm_paused = proc_status_kib(agent.pid, "VmHWM").unwrap_or(0);
    let resumed_at = Instant::now();
    rec.resume(host);
    let status = rec
        .wait_frame(host, "status", hb.seq, Duration::from_secs(60))
        .await;
    let recovered_in = status
        .as_ref()
        .map(|f| f.received.duration_since(resumed_at));
    // a heartbeat after the status shows the connection is healthy again
    let hb_after = match &status {
        Some(st) => {
            rec.wait_frame(host, "heartbeat", st.seq, Duration::from_secs(5))
                .await
        }
        None => None,
    };
    // VmHWM can lag the per-CPU RSS counters a little: take the larger.
    let hwm_end = proc_status_kib(agent.pid, "VmHWM")
        .unwrap_or(0)
        .max(max_rss);
    let reconnects = rec
        .events()
        .iter()
        .filter(|e| e.kind == "connected" && e.host.as_deref() == Some(host) && e.seq > hb.seq)
        .count();
    let outputs = rec.frames(host, Some("output"));
    let lines: Vec<&str> = outputs
        .iter()
        .filter(|f| f.seq > hb.seq)
        .filter_map(|f| f.payload["line"].as_str())
        .collect();
    let markers: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("[nixfleet-agent]") && l.contains("dropped"))
        .collect();
    // every line the command printed (and the runner's own) that arrived
    let delivered = (lines.len() - markers.len()) as u64;
    // "[nixfleet-agent] N output line(s) dropped: …"
    let dropped: u64 = markers
        .iter()
        .filter_map(|m| m.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum();
    let accounted = delivered + dropped == FLOOD_LINES + extras;
    agent.stop().await;
    let ran = match (started, ended) {
        (Some(a), Some(b)) => format!("{:.1} s", (b - a).as_secs_f64()),
        _ => "?".into(),
    };
    r.note(format!(
        "stall: paused {:.1} s; command ran {ran} while paused; VmHWM before {:.2} MiB, while paused {:.2} MiB, at the end {:.2} MiB; max VmRSS sampled while paused {:.2} MiB",
        (resumed_at - paused_at).as_secs_f64(),
        kib_to_mib(hwm_before),
        kib_to_mib(hwm_paused),
        kib_to_mib(hwm_end),
        kib_to_mib(max_rss)
    ));
    r.note(format!(
        "stall: after resume: status {} in {}, heartbeat after it: {}, reconnects: {reconnects}; lines delivered {} + dropped (per the agent's marker) {} = {} of {} ({}); markers {:?}",
        status.as_ref().map_or_else(|| "MISSING".to_owned(), |f| f.payload.to_string()),
        recovered_in.map_or_else(|| "-".to_owned(), |d| format!("{:.0} ms", millis(d))),
        hb_after.is_some(),
        group(delivered),
        group(dropped),
        group(delivered + dropped),
        group(FLOOD_LINES + extras),
        if accounted { "every line accounted for" } else { "LINES UNACCOUNTED" },
        markers
    ));
    let recovered = status.is_some() && hb_after.is_some() && accounted;
    r.row(
        fig,
        budget,
        format!(
            "peak {:.2} MiB (VmHWM); recovered: {}{}; {} lines delivered, {} dropped and reported",
            kib_to_mib(hwm_end),
            if recovered { "yes" } else { "NO" },
            recovered_in.map_or_else(String::new, |d| format!(
                " (`status` {:.0} ms after reading resumed, heartbeats continue)",
                millis(d)
            )),
            group(delivered),
            group(dropped)
        ),
        Verdict::of(hwm_end <= 16 * 1024 && recovered),
    );
}
