//! Figures 4 and 6: throughput (and order), heartbeats during a full-speed
//! flood; and whether this agent runs the commands the figures need.

use std::time::{Duration, Instant};

use nixfleet_mock_dashboard::MockDashboard;

use crate::ceiling::*;
use crate::fast::*;
use crate::fixture::*;
use crate::procfs::*;
use crate::settings::*;
use crate::table::*;

// Commands: does this agent run them yet?

/// Extra output lines the `test` runner prints around one script's own output,
/// or `None` when the agent does not run commands.
pub(crate) async fn probe_commands(
    r: &mut Report,
    fx: &Fixture,
    rec: &MockDashboard,
) -> Option<u64> {
    let agent = fx.spawn(rec, "bench-probe", 30);
    let hb = wait_frame(rec, "bench-probe", "heartbeat", 0).await?;
    rec.send_command("bench-probe", "test").await.ok()?;
    let status = rec
        .wait_frame("bench-probe", "status", hb.seq, Duration::from_secs(10))
        .await;
    let result = match status {
        Some(st) => {
            let lines: Vec<String> = rec
                .frames("bench-probe", Some("output"))
                .iter()
                .filter_map(|f| f.payload["line"].as_str().map(str::to_owned))
                .collect();
            r.note(format!(
                "`test` with one script printing `probe`: status {}, output lines {lines:?}",
                st.payload
            ));
            Some(lines.len().saturating_sub(1) as u64)
        }
        None => {
            r.note(format!(
                "the agent sent no `status` for `test` within 10 s: commands are not implemented in this build; {}",
                agent.log_tail()
            ));
            None
        }
    };
    agent.stop().await;
    result
}

/// Sends `test` to an agent on the fast receiver and waits for its status.
pub(crate) async fn fast_flood(
    fast: &FastReceiver,
    host: &str,
    timeout: Duration,
) -> Option<(f64, StatusSeen)> {
    let n = fast.statuses(host) + 1;
    let t0 = Instant::now();
    if !fast.send_command(host, "test") {
        return None;
    }
    let st = fast.wait_status(host, n, timeout).await?;
    Some((st.at.duration_since(t0).as_secs_f64(), st))
}

const RATIO_FIGURE: &str = "output throughput against the fast receiver's ceiling, interleaved (ceiling, agent, ceiling, agent, …)";
const RATIO_BUDGET: &str = "≥ 80 % of the ceiling, median";

pub(crate) async fn figure_throughput(
    r: &mut Report,
    s: &Settings,
    fx: &Fixture,
    dash: &MockDashboard,
    fast: &FastReceiver,
    extras: u64,
    ceiling: Option<f64>,
) {
    let fig = "output throughput, 1 000 000 short lines (`seq`)";
    let budget = "≥ 1 000 000 lines/s, every line, in order, before `status`";
    let host = "bench-flood";
    let agent = fx.spawn_url(&fast.ws_url(), host, 30);
    if fast.wait_heartbeat(host, WAIT).await.is_none() {
        r.no_register(fig, budget, agent.log_tail());
        return;
    }
    let mut rates = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_per_line = Vec::new();
    let mut complete = true;
    for i in 0..s.throughput_runs {
        // interleaved: the receiver's ceiling right before each agent run,
        // so that both see the same machine
        let ceiling_now = match fast_ceiling_run(fast, FLOOD_LINES).await {
            Ok(rate) => Some(rate),
            Err(e) => {
                r.note(format!("throughput run {i}: ceiling run failed: {e}"));
                None
            }
        };
        let ticks_before = proc_cpu_ticks(agent.pid);
        let flood = fast_flood(fast, host, Duration::from_secs(300)).await;
        // the agent's own CPU (utime + stime; the command's processes are
        // their own), per line streamed
        if let (Some(before), Some(after)) = (ticks_before, proc_cpu_ticks(agent.pid)) {
            let secs = after.saturating_sub(before) as f64 / clock_ticks_per_sec() as f64;
            cpu_per_line.push(secs / FLOOD_LINES as f64 * 1e6);
        }
        let Some((secs, st)) = flood else {
            r.note(format!(
                "throughput run {i}: no status; {}",
                agent.log_tail()
            ));
            complete = false;
            continue;
        };
        let rate = FLOOD_LINES as f64 / secs;
        let ok = st.in_order == FLOOD_LINES
            && st.first_break.is_none()
            && st.outputs == FLOOD_LINES + extras;
        complete &= ok;
        r.note(format!(
            "throughput run {i}: {:.0} ms command sent → `status` received, {:.2} M lines/s; before the status: {} output frames, numbered lines 1..={} in order{}, other lines {:?}; status {}",
            secs * 1000.0,
            rate / 1e6,
            group(st.outputs),
            group(st.in_order),
            st.first_break
                .as_ref()
                .map_or_else(String::new, |b| format!(", first break: {b}")),
            st.other.iter().take(4).collect::<Vec<_>>(),
            st.payload
        ));
        rates.push(rate);
        if let Some(c) = ceiling_now {
            r.note(format!(
                "throughput run {i}: the trivial client just before: {:.2} M frames/s; agent / ceiling {:.0} %",
                c / 1e6,
                rate / c * 100.0
            ));
            ratios.push(rate / c);
        }
    }
    agent.stop().await;

    // the same command through the mock dashboard: every frame validated
    let agent = fx.spawn(dash, host, 30);
    if wait_frame(dash, host, "heartbeat", 0).await.is_some() {
        let after = dash.last_seq();
        let before = dash.output_count(host);
        let t0 = Instant::now();
        let sent = dash.send_command(host, "test").await.is_ok();
        let st = match sent {
            true => poll_frame(dash, host, "status", after, Duration::from_secs(300)).await,
            false => None,
        };
        match st {
            Some(st) => {
                let secs = st.received.duration_since(t0).as_secs_f64();
                let n = dash.output_count(host) - before;
                complete &= n == FLOOD_LINES + extras;
                r.note(format!(
                    "through the mock dashboard (validates every frame; ceiling above): {:.2} M lines/s, {} output frames counted before the status",
                    FLOOD_LINES as f64 / secs / 1e6,
                    group(n)
                ));
            }
            None => r.note(format!("mock run: no status; {}", agent.log_tail())),
        }
    }
    agent.stop().await;

    if rates.is_empty() {
        r.row(fig, budget, "no run finished".into(), Verdict::Fail);
        return;
    }
    if !cpu_per_line.is_empty() {
        let (lo, mid, hi) = spread(&cpu_per_line);
        r.row(
            "CPU per streamed output line (the agent's own utime + stime, fast receiver)",
            "≤ 0.3 µs, every line",
            format!(
                "{mid:.2} µs median of {} (min {lo:.2}, max {hi:.2}; 10 ms ticks over each run)",
                cpu_per_line.len(),
            ),
            Verdict::of(mid <= 0.3 && complete),
        );
    }
    if ratios.is_empty() {
        r.row(
            RATIO_FIGURE,
            RATIO_BUDGET,
            "no interleaved pair finished".into(),
            Verdict::Fail,
        );
    } else {
        let (lo, mid, hi) = spread(&ratios);
        r.row(
            RATIO_FIGURE,
            RATIO_BUDGET,
            format!(
                "{:.0} % median of {} pairs (min {:.0} %, max {:.0} %)",
                mid * 100.0,
                ratios.len(),
                lo * 100.0,
                hi * 100.0
            ),
            Verdict::of(mid >= 0.8 && complete),
        );
    }
    let med = median(&rates);
    let bottleneck = ceiling.is_some_and(|c| c < med * 1.2);
    r.row(
        fig,
        budget,
        format!(
            "{:.2} M lines/s (median of {}, command sent → `status` received, fast receiver); every line, in order, before `status`: {}{}",
            med / 1e6,
            rates.len(),
            if complete { "yes" } else { "NO" },
            if bottleneck { " (receiver near its ceiling!)" } else { "" }
        ),
        Verdict::of(med >= 1e6 && complete),
    );
}

pub(crate) async fn figure_heartbeat(
    r: &mut Report,
    s: &Settings,
    fx: &Fixture,
    fast: &FastReceiver,
) {
    let fig = "heartbeat delay while output floods at full speed (interval 1 s)";
    let budget = "never more than 1 interval late";
    let host = "bench-hb";
    let agent = fx.spawn_url(&fast.ws_url(), host, 1);
    if fast.wait_heartbeat(host, WAIT).await.is_none() {
        r.no_register(fig, budget, agent.log_tail());
        return;
    }
    // a few heartbeats of calm first
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    let run = fast_flood(fast, host, Duration::from_secs(s.flood_secs * 10 + 30)).await;
    let t_end = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.stop().await;
    let Some((secs, st)) = run else {
        r.row(fig, budget, "no status".into(), Verdict::Fail);
        return;
    };
    let hbs = fast.heartbeats(host);
    // the last heartbeat before the command, every one during, the first after
    let first = hbs.iter().rposition(|h| *h <= t0).unwrap_or(0);
    let last = hbs
        .iter()
        .position(|h| *h >= t_end)
        .unwrap_or(hbs.len().saturating_sub(1));
    let window = &hbs[first..=last.max(first)];
    let gaps: Vec<f64> = window
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    let during = hbs.iter().filter(|h| **h > t0 && **h < t_end).count();
    r.row(
        fig,
        budget,
        format!(
            "max gap {:.0} ms = {:.0} ms late ({} heartbeats during a {:.1} s flood of {} lines, {:.2} M lines/s)",
            max_gap * 1000.0,
            (max_gap - 1.0).max(0.0) * 1000.0,
            during,
            secs,
            group(st.outputs),
            st.outputs as f64 / secs / 1e6
        ),
        Verdict::of(!gaps.is_empty() && max_gap <= 2.0),
    );
}
