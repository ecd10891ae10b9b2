//! The agent's resource budget (issue 5), measured end to end.
//!
//! ```text
//! cargo bench -p nixfleet-agent --bench budget                     # ~2 min
//! BUDGET_QUICK=1 cargo bench -p nixfleet-agent --bench budget      # smoke run, < 1 min
//! BUDGET_ONLY=throughput,latency cargo bench -p nixfleet-agent --bench budget
//! BUDGET_AGENT=result/bin/nixfleet-agent cargo bench …                # measure another build
//! ```
//!
//! The real agent binary (`BUDGET_AGENT`, which `checks/budget.sh` sets to
//! the build the flake ships; else the one cargo built for this bench, in the
//! bench profile, i.e. release) runs as a separate process on loopback. The receivers run in this process:
//!
//! - the mock dashboard with `keep_output_frames = false` (output frames
//!   validated and counted, not stored): idle, startup, and one validated run
//!   of the flood;
//! - the mock dashboard keeping every frame: latency (receive instants) and
//!   the stalled dashboard (`pause`/`resume`, the drop marker);
//! - a fast receiver (`fast.rs`), because the mock tops out near
//!   1 M frames/s, the budget itself: the throughput and heartbeat-under-flood
//!   figures. It checks every line's number on the fly.
//!
//! The ceiling of both receivers is measured with a trivial client and
//! printed. Keys for `BUDGET_ONLY`: ceiling, idle-rss, idle-cpu, startup,
//! throughput, latency, heartbeat, stall, size. What each figure means and how
//! it is measured: `docs/benchmarks.md`. Prints one table (Markdown), then
//! notes with the details behind each figure. Exits 0 even when a budget
//! fails, unless `BUDGET_STRICT=1`.

mod ceiling;
mod fast;
mod fixture;
mod flood;
mod idle;
mod latency;
mod procfs;
mod settings;
mod size;
mod stall;
mod table;

use std::time::{Duration, Instant};

use nixfleet_mock_dashboard::{MockDashboard, Options};

use ceiling::*;
use fast::*;
use fixture::*;
use flood::*;
use idle::*;
use latency::*;
use procfs::*;
use settings::*;
use size::*;
use stall::*;
use table::*;

async fn run(s: Settings) -> Report {
    let mut r = Report::default();
    let fx = Fixture::new(&s);
    // counting receiver: output frames validated and counted, not stored
    let dash = MockDashboard::start(Options {
        keep_output_frames: false,
        ..Options::default()
    })
    .await
    .expect("start the counting mock dashboard");
    // recording receiver: every frame kept (order, latency, stall)
    let rec = MockDashboard::start(Options::default())
        .await
        .expect("start the recording mock dashboard");

    // fast receiver: the throughput figures
    let fast = FastReceiver::start().await;

    let mut ceiling = None;
    if s.wants("ceiling") {
        ceiling = figure_ceiling(&mut r, &s, &dash, &fast).await;
    }
    if s.wants("idle-rss") || s.wants("idle-cpu") {
        figure_idle(&mut r, &s, &fx, &dash).await;
    }
    if s.wants("startup") {
        figure_startup(&mut r, &s, &fx, &dash).await;
    }
    let needs_commands = ["throughput", "latency", "heartbeat", "stall"]
        .iter()
        .any(|k| s.wants(k));
    let extras = if needs_commands {
        probe_commands(&mut r, &fx, &rec).await
    } else {
        None
    };
    let why = "the agent does not run commands yet (no `status` for `test`)";
    if s.wants("throughput") {
        match extras {
            Some(x) => figure_throughput(&mut r, &s, &fx, &dash, &fast, x, ceiling).await,
            None => not_run(&mut r, "output throughput", "≥ 1 000 000 lines/s", why),
        }
    }
    if s.wants("latency") {
        match extras {
            Some(_) => figure_latency(&mut r, &s, &fx, &rec).await,
            None => not_run(&mut r, "line latency at 1 000 lines/s", "p99 ≤ 5 ms", why),
        }
    }
    if s.wants("heartbeat") {
        match extras {
            Some(_) => figure_heartbeat(&mut r, &s, &fx, &fast).await,
            None => not_run(
                &mut r,
                "heartbeat delay during a flood",
                "≤ 1 interval late",
                why,
            ),
        }
    }
    if s.wants("stall") {
        match extras {
            Some(x) => figure_stall(&mut r, &fx, &rec, x).await,
            None => not_run(&mut r, "peak memory, stalled dashboard", "≤ 16 MiB", why),
        }
    }
    if s.wants("size") {
        figure_size(&mut r);
    }
    for (name, d) in [("counting", &dash), ("recording", &rec)] {
        let v = d.violations();
        if !v.is_empty() {
            r.note(format!(
                "{} protocol violations on the {name} mock, first: {:?}",
                v.len(),
                v.first()
            ));
        }
    }
    dash.shutdown().await;
    rec.shutdown().await;
    r
}

fn main() {
    let s = Settings::from_env();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let report = rt.block_on(run(s.clone()));
    rt.shutdown_timeout(Duration::from_secs(1));

    println!();
    println!(
        "## NixFleet agent resource budget{}",
        if s.quick {
            " (BUDGET_QUICK: shortened windows)"
        } else {
            ""
        }
    );
    println!();
    for line in machine() {
        println!("- {line}");
    }
    println!("- run took {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("| figure | measured | budget | result |");
    println!("| --- | --- | --- | --- |");
    for row in &report.rows {
        println!(
            "| {} | {} | {} | {} |",
            row.figure,
            row.measured.replace('|', "\\|"),
            row.budget,
            row.verdict.label()
        );
    }
    if !report.notes.is_empty() {
        println!();
        println!("Notes:");
        for n in &report.notes {
            println!("- {n}");
        }
    }
    let failed = report
        .rows
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Fail));
    let strict = std::env::var("BUDGET_STRICT").is_ok_and(|v| !v.is_empty() && v != "0");
    if failed && strict {
        std::process::exit(1);
    }
}
