//! The metrics endpoint: off unless `NIXFLEET_METRICS_LISTEN` names an
//! address (the modules' `metrics.enable`, `metrics.listenAddress`,
//! loopback by default). Plain HTTP/1.1, one request per connection:
//! `GET /metrics` answers [`super::metrics::render`]; anything else 404 or
//! 405. At most [`SLOTS`] connections at once (more are closed at once),
//! each with [`REQUEST_LIMIT`] bytes of request and [`DEADLINE`] to finish.
//! A listener that cannot bind is logged; the agent runs on without it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::ledger::Ledger;
use super::metrics::{Sources, render};
use crate::outbound::Outbound;
use crate::state::AgentState;

/// Connections served at once.
pub const SLOTS: usize = 4;
/// The most a request may be (its request line and headers).
pub const REQUEST_LIMIT: usize = 4096;
/// How long one connection may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What the endpoint reads.
pub struct Endpoint {
    pub state: Arc<AgentState>,
    pub out: Arc<Outbound>,
    pub ledger: Arc<Ledger>,
    /// The watchdog's period, if one is on.
    pub watchdog: Option<Duration>,
    /// The Nix version, once `nix --version` answered.
    pub nix_version: OnceLock<String>,
}

/// Listens on `addr` and serves until the process ends; `env` is the
/// operations' environment (for `nix --version`, once).
pub async fn start(addr: SocketAddr, endpoint: Arc<Endpoint>, env: Vec<(OsString, OsString)>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics: cannot listen on {addr}: {e}; the agent runs without them");
            return;
        }
    };
    tracing::info!("metrics at http://{addr}/metrics");
    let ep = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        if let Ok(nix) = crate::host::detect_nix(&env) {
            let _ = ep.nix_version.set(nix.number());
        }
    });
    let slots = Arc::new(Semaphore::new(SLOTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // e.g. out of file descriptors: wait instead of spinning
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let ep = endpoint.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(stream, &ep)).await;
            drop(slot);
        });
    }
}

/// The request's method and path (without a query), once its head is read.
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = stream.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(n)
}

async fn answer(mut stream: TcpStream, ep: &Endpoint) -> std::io::Result<()> {
    let mut buf = [0u8; REQUEST_LIMIT];
    let n = read_head(&mut stream, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            render(&Sources {
                version: crate::VERSION,
                nix_version: ep.nix_version.get().map(String::as_str).unwrap_or(""),
                watchdog: ep.watchdog,
                state: &ep.state,
                out: &ep.out,
                ledger: &ep.ledger,
            }),
        ),
        ("GET", _) => (
            "404 Not Found",
            "not found; the metrics are at /metrics\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".to_string()),
    };
    let header = format!(
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
