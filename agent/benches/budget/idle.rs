//! Figures 1 to 3: idle memory, idle CPU, startup.

use std::time::Instant;

use nixfleet_mock_dashboard::MockDashboard;

use crate::fixture::*;
use crate::procfs::*;
use crate::settings::*;
use crate::table::*;

pub(crate) async fn figure_idle(r: &mut Report, s: &Settings, fx: &Fixture, dash: &MockDashboard) {
    // three at once: the spread of one figure without three windows
    let rss_agents: Vec<_> = match s.wants("idle-rss") {
        true => (0..3)
            .map(|i| fx.spawn(dash, &format!("bench-idle-rss-{i}"), 1))
            .collect(),
        false => Vec::new(),
    };
    let cpu_agent = s
        .wants("idle-cpu")
        .then(|| fx.spawn(dash, "bench-idle-cpu", 5));
    let mut ok = true;
    for a in rss_agents.iter().chain(cpu_agent.iter()) {
        if wait_frame(dash, &a.host, "heartbeat", 0).await.is_none() {
            r.note(format!("{} never registered; {}", a.host, a.log_tail()));
            ok = false;
        }
    }
    if !ok {
        r.row(
            "idle figures",
            "",
            "agent did not register".into(),
            Verdict::Fail,
        );
        return;
    }
    let tck = clock_ticks_per_sec();
    let cpu_start = cpu_agent.as_ref().map(|a| {
        (
            Instant::now(),
            proc_cpu_ticks(a.pid).unwrap_or(0),
            proc_threads_runtime_ns(a.pid),
        )
    });
    tokio::time::sleep(s.idle).await;
    let window = format!("{} s", s.idle.as_secs());

    if !rss_agents.is_empty() {
        let rss: Vec<u64> = rss_agents
            .iter()
            .map(|a| proc_status_kib(a.pid, "VmRSS").unwrap_or(0))
            .collect();
        // the details of the median agent
        let mut order: Vec<usize> = (0..rss.len()).collect();
        order.sort_by_key(|&i| rss[i]);
        let a = &rss_agents[order[order.len() / 2]];
        let mid = rss[order[order.len() / 2]];
        let anon = proc_status_kib(a.pid, "RssAnon").unwrap_or(0);
        let file = proc_status_kib(a.pid, "RssFile").unwrap_or(0);
        let hwm = proc_status_kib(a.pid, "VmHWM").unwrap_or(0);
        let hbs = dash.frames(&a.host, Some("heartbeat")).len();
        r.row(
            "resident memory, connected and idle, interval 1 s",
            "≤ 3.5 MiB median (issue 32's goal: 2.4 MiB)",
            format!(
                "{:.2} MiB median of {} after {window} (min {:.2}, max {:.2}; median's anon {:.2} + file {:.2} MiB, peak {:.2} MiB, {} threads, {hbs} heartbeats)",
                kib_to_mib(mid),
                rss.len(),
                kib_to_mib(rss[order[0]]),
                kib_to_mib(rss[order[order.len() - 1]]),
                kib_to_mib(anon),
                kib_to_mib(file),
                kib_to_mib(hwm),
                proc_threads(a.pid)
            ),
            Verdict::of(mid as f64 <= 3.5 * 1024.0),
        );
        let pss = proc_rollup_kib(a.pid, "Pss").unwrap_or(0);
        let by_object = rss_by_object(a.pid)
            .iter()
            .map(|(name, kib)| format!("{name} {kib} kB"))
            .collect::<Vec<_>>()
            .join(", ");
        r.note(format!(
            "idle RSS by mapping (/proc/<pid>/smaps), median agent: {by_object}; PSS {pss} kB (file pages shared with other processes counted once)"
        ));
        for a in rss_agents {
            a.stop().await;
        }
    }
    if let (Some(a), Some((t0, ticks0, ns0))) = (cpu_agent, cpu_start) {
        let wall = t0.elapsed().as_secs_f64();
        let ticks = proc_cpu_ticks(a.pid).unwrap_or(0).saturating_sub(ticks0);
        let ns = runtime_since(a.pid, &ns0);
        let pct = ticks as f64 / tck as f64 / wall * 100.0;
        let pct_ns = ns as f64 / 1e9 / wall * 100.0;
        let resolution = 100.0 / tck as f64 / wall;
        r.row(
            "CPU while idle, interval 5 s (the default)",
            "≤ 0.05 % of one core",
            format!(
                "{pct:.3} % over {window} ({ticks} ticks of {} ms, resolution {resolution:.3} %; live threads' schedstat: {:.1} ms = {pct_ns:.4} %)",
                1000 / tck,
                ns as f64 / 1e6
            ),
            Verdict::of(pct <= 0.05),
        );
        a.stop().await;
    }
}

pub(crate) async fn figure_startup(
    r: &mut Report,
    s: &Settings,
    fx: &Fixture,
    dash: &MockDashboard,
) {
    let mut to_register = Vec::new();
    let mut to_registered = Vec::new();
    for i in 0..s.startup_runs {
        let host = format!("bench-start-{i}");
        let t0 = Instant::now();
        let agent = fx.spawn(dash, &host, 30);
        let reg = wait_frame(dash, &host, "register", 0).await;
        let hb = wait_frame(dash, &host, "heartbeat", 0).await;
        match (reg, hb) {
            (Some(reg), Some(hb)) => {
                to_register.push(millis(reg.received.duration_since(t0)));
                to_registered.push(millis(hb.received.duration_since(t0)));
            }
            _ => r.note(format!("startup run {i} failed; {}", agent.log_tail())),
        }
        agent.stop().await;
    }
    if to_registered.is_empty() {
        r.row(
            "start to `register`",
            "≤ 7 ms median",
            "no run registered".into(),
            Verdict::Fail,
        );
        return;
    }
    let (lo, med, hi) = spread(&to_register);
    r.row(
        "start to `register` (spawn → the frame received by the mock; dashboard already up)",
        "≤ 7 ms median (issue 32's goal: 5 ms)",
        format!(
            "{med:.1} ms median of {} (min {lo:.1}, max {hi:.1})",
            to_register.len()
        ),
        Verdict::of(med <= 7.0),
    );
    let (lo, med, hi) = spread(&to_registered);
    r.row(
        "start to `registered` (the first heartbeat received)",
        "≤ 10 ms median",
        format!(
            "{med:.1} ms median of {} (min {lo:.1}, max {hi:.1})",
            to_registered.len()
        ),
        Verdict::of(med <= 10.0),
    );
}
