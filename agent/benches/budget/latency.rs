//! Figure 5: line latency at 1000 lines/s.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nixfleet_mock_dashboard::MockDashboard;

use crate::fixture::*;
use crate::settings::*;
use crate::table::*;

/// Maps `Instant`s to wall-clock seconds since the epoch.
pub(crate) struct WallClock {
    pub(crate) at: Instant,
    pub(crate) epoch_secs: f64,
}

impl WallClock {
    pub(crate) fn calibrate() -> WallClock {
        let mut best: Option<(Duration, Instant, f64)> = None;
        for _ in 0..50 {
            let a = Instant::now();
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs_f64();
            let b = Instant::now();
            let spread = b - a;
            if best.is_none_or(|(d, _, _)| spread < d) {
                best = Some((spread, a + spread / 2, wall));
            }
        }
        let (_, at, epoch_secs) = best.expect("calibrated");
        WallClock { at, epoch_secs }
    }

    pub(crate) fn wall(&self, i: Instant) -> f64 {
        if i >= self.at {
            self.epoch_secs + (i - self.at).as_secs_f64()
        } else {
            self.epoch_secs - (self.at - i).as_secs_f64()
        }
    }
}

pub(crate) async fn figure_latency(
    r: &mut Report,
    s: &Settings,
    fx: &Fixture,
    rec: &MockDashboard,
) {
    let fig = "line latency at 1 000 lines/s, produced → received";
    let budget = "p99 ≤ 5 ms";
    let agent = fx.spawn(rec, "bench-latency", 30);
    let Some(hb) = wait_frame(rec, "bench-latency", "heartbeat", 0).await else {
        r.no_register(fig, budget, agent.log_tail());
        return;
    };
    let clock = WallClock::calibrate();
    if rec.send_command("bench-latency", "test").await.is_err() {
        r.row(fig, budget, "command not sent".into(), Verdict::Fail);
        return;
    }
    let status = poll_frame(
        rec,
        "bench-latency",
        "status",
        hb.seq,
        Duration::from_secs(s.latency_secs * 3 + 30),
    )
    .await;
    let clock_end = WallClock::calibrate();
    agent.stop().await;
    if status.is_none() {
        r.row(fig, budget, "no status".into(), Verdict::Fail);
        return;
    }
    let mut lat = Vec::new();
    for f in rec.frames("bench-latency", Some("output")) {
        let line = f.payload["line"].as_str().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(_n), Some(ts)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(produced) = ts.parse::<f64>() else {
            continue;
        };
        lat.push((clock.wall(f.received) - produced) * 1000.0);
    }
    let expected = s.latency_secs * 1000;
    lat.sort_by(f64::total_cmp);
    let drift_ms = (clock_end.epoch_secs - clock.wall(clock_end.at)) * 1000.0;
    r.note(format!(
        "latency: wall clock vs monotonic drift over the run {drift_ms:.3} ms (the error bound of the mapping)"
    ));
    let p99 = percentile(&lat, 99.0);
    r.row(
        fig,
        budget,
        format!(
            "p99 {p99:.2} ms (p50 {:.2}, p99.9 {:.2}, max {:.2} ms; {} of {} lines)",
            percentile(&lat, 50.0),
            percentile(&lat, 99.9),
            lat.last().copied().unwrap_or(f64::NAN),
            group(lat.len() as u64),
            group(expected)
        ),
        Verdict::of(p99 <= 5.0 && lat.len() as u64 == expected),
    );
}
