//! The metrics endpoint (`observe/serve.rs`): off by default (the agent
//! listens on no TCP port), and on: what a fleet owner alerts on, checked
//! by Prometheus' own tools: `promtool check metrics` on the exposition and
//! a real Prometheus scraping it (Debian's `prometheus` package). Without
//! them the test says so and passes, unless `NIXFLEET_PROMETHEUS=require`
//! (what `.ci/run` sets), where it fails.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "metricshost";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: the status line and the body.
async fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The metrics once `ready` holds for them.
async fn scrape_when(port: u16, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((status, body)) = get(port, "/metrics").await
            && status == "HTTP/1.1 200 OK"
            && ready(&body)
        {
            return body;
        }
        assert!(Instant::now() < deadline, "the metrics never got there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The socket inodes of `pid` that listen on TCP.
fn listening_sockets(pid: i32) -> Vec<String> {
    let mine: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // st 0A: LISTEN; the inode is the tenth column
            (cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|s| s.to_string()))?
        })
        .filter(|inode| mine.contains(inode))
        .collect()
}

fn tool(name: &str) -> Option<String> {
    let found = ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("NIXFLEET_PROMETHEUS").as_deref() != Ok("require"),
            "NIXFLEET_PROMETHEUS=require: {name} is missing (apt-get install prometheus)"
        );
        eprintln!("SKIPPED: {name} is missing (apt-get install prometheus)");
    }
    found
}

#[tokio::test]
async fn off_by_default_nothing_listens() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let a = AgentBuilder::new(&dash.ws_url(), HOST, &fx).spawn();
    wait_register(&dash, HOST, 0).await;
    assert_eq!(listening_sockets(a.pid()), Vec::<String>::new());
    // the same agent with the endpoint on listens on exactly one
    let fx = Fixture::new();
    let port = free_port();
    let b = AgentBuilder::new(&dash.ws_url(), "metricshost2", &fx)
        .env("NIXFLEET_METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .spawn();
    scrape_when(port, |_| true).await;
    assert_eq!(listening_sockets(b.pid()).len(), 1);
}

/// What a fleet owner alerts on, as promtool and Prometheus read it:
/// connected, operations by outcome, the last switch (kept across the
/// restart), output counters; `connected` drops to 0 while the dashboard
/// is away; anything but `GET /metrics` is refused.
#[tokio::test]
async fn metrics_say_what_a_fleet_owner_alerts_on_and_prometheus_reads_them() {
    let dash = dashboard().await;
    let addr = dash.addr();
    let fx = Fixture::new();
    host_test(&fx.repo, HOST, "T01-ok.sh", "echo fine");
    git(&fx.repo, &["add", "-A"]);
    git(&fx.repo, &["commit", "-qm", "a test"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .env("NIXFLEET_METRICS_LISTEN", &listen)
        .spawn();
    let (_, reg) = wait_register(&dash, HOST, 0).await;
    dash.send_command(HOST, "test").await.unwrap();
    status_for(&dash, HOST, "test", reg).await;
    let body = scrape_when(port, |b| {
        b.contains("nixfleet_agent_operations_total{command=\"test\",outcome=\"ok\"} 1")
    })
    .await;
    for want in [
        "nixfleet_agent_connected 1\n",
        "nixfleet_agent_reconnects_total 0\n",
        "# TYPE nixfleet_agent_operations_total counter\n",
        "nixfleet_agent_build_info{version=\"",
        "nixfleet_agent_watchdog_seconds 0\n",
        "nixfleet_agent_automatic_rollbacks_total 0\n",
        "nixfleet_agent_needs_reboot 0\n",
    ] {
        assert!(body.contains(want), "no {want:?} in:\n{body}");
    }
    let lines: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("nixfleet_agent_output_lines_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(lines >= 1, "the test's output was streamed: {body}");
    assert_eq!(
        get(port, "/").await.map(|r| r.0),
        Some("HTTP/1.1 404 Not Found".to_string())
    );

    if let Some(promtool) = tool("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    if let Some(prometheus) = tool("prometheus") {
        let dir = fx.tmp.path().join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: nixfleet-agent\n    static_configs:\n      - targets: ['{listen}']\n"
            ),
        )
        .unwrap();
        let web = free_port();
        let mut server = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // one query until Prometheus has scraped the agent once
        let query = "/api/v1/query?query=nixfleet_agent_connected%7Bjob%3D%22nixfleet-agent%22%7D";
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answer = String::new();
        while Instant::now() < deadline {
            if let Some((_, body)) = get(web, query).await {
                answer = body;
                if answer.contains("\"value\":[") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = server.kill();
        let _ = server.wait();
        assert!(
            answer.contains("\"status\":\"success\"") && answer.contains(",\"1\"]"),
            "Prometheus did not read nixfleet_agent_connected 1: {answer}"
        );
    }

    // the dashboard goes away: connected drops to 0
    dash.shutdown().await;
    scrape_when(port, |b| b.contains("nixfleet_agent_connected 0\n")).await;

    // the agent restarts: the counts are the earlier process's
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(0));
    let dash = dashboard_at(addr).await;
    let _b = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .env("NIXFLEET_METRICS_LISTEN", &listen)
        .spawn();
    scrape_when(port, |b| {
        b.contains("nixfleet_agent_connected 1\n")
            && b.contains("nixfleet_agent_operations_total{command=\"test\",outcome=\"ok\"} 1")
    })
    .await;
    assert_no_violations(&dash);
}
