//! The service manager's side (`observe/`): what the agent sends to
//! `$NOTIFY_SOCKET` (the datagram socket systemd gives a `Type=notify`
//! unit, bound here by the test as systemd binds it), and its own watchdog
//! for launchd, which exits a frozen agent. systemd itself acting on them
//! (a stopped agent restarted within `WatchdogSec`, the status line in
//! `systemctl status`) is in the host twin (`host_twin.rs`).

mod common;

use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use common::*;

const HOST: &str = "notifyhost";
/// Nobody listens here: an unreachable dashboard.
const NOWHERE: &str = "ws://127.0.0.1:9/ws";

/// The datagrams the agent sent, until `done` says enough (or `limit`);
/// read without blocking the test's runtime (the mock dashboard runs on it).
async fn read_until(
    socket: &UnixDatagram,
    limit: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline && !done(&got) {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
        {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn bind(fx: &Fixture) -> (UnixDatagram, String) {
    let path = fx.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (socket, path.to_str().unwrap().to_string())
}

/// Ready before the dashboard answered (it never does here), with the
/// status line; `WATCHDOG=1` every half `WATCHDOG_USEC`; the status line
/// when the dashboard connects; `STOPPING=1` on SIGTERM.
#[tokio::test]
async fn ready_watchdog_status_and_stopping_reach_the_service_manager() {
    let fx = Fixture::new();
    let (socket, path) = bind(&fx);
    // an unreachable dashboard is not a failed start
    let mut a = AgentBuilder::new(NOWHERE, HOST, &fx)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .spawn();
    let got = read_until(&socket, WAIT, |g| {
        g.iter().any(|d| d.starts_with("READY=1\n"))
            && g.iter().filter(|d| d.as_str() == "WATCHDOG=1\n").count() >= 3
    })
    .await;
    let ready = got.iter().find(|d| d.starts_with("READY=1\n"));
    assert_eq!(
        ready.map(String::as_str),
        Some("READY=1\nSTATUS=not connected to 127.0.0.1:9; retrying; idle\n"),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|d| d.as_str() == "WATCHDOG=1\n").count() >= 3,
        "{got:?}"
    );
    a.signal(libc::SIGTERM);
    let got = read_until(&socket, WAIT, |g| {
        g.iter().any(|d| d.starts_with("STOPPING=1\n"))
    })
    .await;
    assert!(
        got.contains(&"STOPPING=1\nSTATUS=stopping (shutdown)\n".to_string()),
        "{got:?}"
    );
    assert_eq!(a.wait_exit(WAIT).await.code(), Some(0));

    // connected: the status line says so
    let dash = dashboard().await;
    let b = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .env("NOTIFY_SOCKET", &path)
        .spawn();
    let want = format!(
        "STATUS=connected to {}; idle\n",
        dash.ws_url()
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
    );
    let got = read_until(&socket, WAIT, |g| g.contains(&want)).await;
    assert!(got.contains(&want), "{got:?}\n{}", b.log.text());
    // no watchdog asked for: no WATCHDOG=1
    assert!(!got.iter().any(|d| d.contains("WATCHDOG=1")), "{got:?}");
    assert_no_violations(&dash);
}

/// launchd has no watchdog: with `NIXFLEET_WATCHDOG_SEC` the agent's own
/// thread exits a frozen agent (70) for `KeepAlive` to start it again.
/// The freeze is the debug builds' test hook: the runtime's one thread
/// blocked for good, as a hung agent's would be.
#[tokio::test]
async fn the_agents_own_watchdog_exits_a_frozen_agent() {
    let dash = dashboard().await;
    let fx = Fixture::new();
    let freeze = fx.tmp.path().join("freeze");
    let mut a = AgentBuilder::new(&dash.ws_url(), HOST, &fx)
        .env("NIXFLEET_WATCHDOG_SEC", "5")
        .env("NIXFLEET_TEST_FREEZE_FILE", freeze.to_str().unwrap())
        .spawn();
    wait_register(&dash, HOST, 0).await;
    std::fs::write(&freeze, "").unwrap();
    let frozen = Instant::now();
    assert_eq!(
        a.wait_exit(Duration::from_secs(20)).await.code(),
        Some(70),
        "exits EX_SOFTWARE"
    );
    let waited = frozen.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "not before the watchdog's 5 s: {waited:?}"
    );
    assert!(
        a.log.wait_closed(WAIT).await
            && a.log.text().contains("the agent's runtime has not run for"),
        "{}",
        a.log.text()
    );
}
