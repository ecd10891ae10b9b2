//! The fast receiver: a minimal dashboard for the throughput figures.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nixfleet_mock_dashboard::DEFAULT_TOKEN;
use tokio_tungstenite::tungstenite::Message;

//
// The mock dashboard parses and validates every frame into a `serde_json::Value`
// under one lock; that tops out near 1 M frames/s on a small machine, i.e. at
// the budget itself. This receiver speaks just enough of the protocol
// (bearer token, `register` → `registered`, `command`, pongs) and handles an
// `output` frame by finding its `"line":"…"` and checking the number in it
// against the next one due, so that completeness and order are verified on
// the fly, without storing anything. Every other frame is parsed as JSON.

/// What the fast receiver saw of one `status`.
#[derive(Debug, Clone)]
pub(crate) struct StatusSeen {
    pub(crate) at: Instant,
    pub(crate) payload: serde_json::Value,
    /// Output frames since the previous status.
    pub(crate) outputs: u64,
    /// Numbered lines 1..=n received in order since the previous status.
    pub(crate) in_order: u64,
    /// The first out-of-order number, if any.
    pub(crate) first_break: Option<String>,
    /// Lines that are not a bare number (the runner's own lines).
    pub(crate) other: Vec<String>,
}

#[derive(Default)]
pub(crate) struct FastHost {
    pub(crate) heartbeats: Vec<Instant>,
    pub(crate) statuses: Vec<StatusSeen>,
    pub(crate) out: Option<tokio::sync::mpsc::UnboundedSender<Message>>,
}

#[derive(Default)]
pub(crate) struct FastShared {
    pub(crate) hosts: std::sync::Mutex<std::collections::HashMap<String, FastHost>>,
    pub(crate) notify: tokio::sync::Notify,
}

#[derive(Clone)]
pub(crate) struct FastReceiver {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) shared: std::sync::Arc<FastShared>,
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FastReceiver {
    pub(crate) async fn start() -> FastReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fast receiver");
        let addr = listener.local_addr().expect("fast receiver address");
        let shared = std::sync::Arc::new(FastShared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(fast_conn(tcp, s.clone()));
            }
        });
        FastReceiver { addr, shared }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub(crate) fn send_command(&self, host: &str, command: &str) -> bool {
        let text = format!(r#"{{"type":"command","payload":{{"command":"{command}"}}}}"#);
        lock(&self.shared.hosts)
            .get(host)
            .and_then(|h| h.out.as_ref())
            .is_some_and(|out| out.send(Message::text(text)).is_ok())
    }

    pub(crate) fn heartbeats(&self, host: &str) -> Vec<Instant> {
        lock(&self.shared.hosts)
            .get(host)
            .map(|h| h.heartbeats.clone())
            .unwrap_or_default()
    }

    pub(crate) fn statuses(&self, host: &str) -> usize {
        lock(&self.shared.hosts)
            .get(host)
            .map_or(0, |h| h.statuses.len())
    }

    /// Waits for the `n`-th status (1-based) of `host`.
    pub(crate) async fn wait_status(
        &self,
        host: &str,
        n: usize,
        timeout: Duration,
    ) -> Option<StatusSeen> {
        self.wait(timeout, || {
            lock(&self.shared.hosts)
                .get(host)
                .and_then(|h| h.statuses.get(n - 1).cloned())
        })
        .await
    }

    pub(crate) async fn wait_heartbeat(&self, host: &str, timeout: Duration) -> Option<Instant> {
        self.wait(timeout, || {
            lock(&self.shared.hosts)
                .get(host)
                .and_then(|h| h.heartbeats.first().copied())
        })
        .await
    }

    pub(crate) async fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check() {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check();
            }
        }
    }
}

/// The number in an agent's `output` frame, without parsing the JSON.
pub(crate) fn output_line(text: &str) -> Option<&str> {
    if !text.starts_with(r#"{"type":"output""#) {
        return None;
    }
    let start = text.find(r#""line":""#)? + 8;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
pub(crate) async fn fast_conn(tcp: tokio::net::TcpStream, shared: std::sync::Arc<FastShared>) {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let expected = format!("Bearer {DEFAULT_TOKEN}");
        if req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
        {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(None);
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(r)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut host = String::new();
    let (mut outputs, mut next, mut first_break, mut other) = (0u64, 1u64, None, Vec::new());
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(p) => {
                let _ = tx.send(Message::Pong(p));
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        if let Some(line) = output_line(&text) {
            outputs += 1;
            match line.parse::<u64>() {
                Ok(n) if n == next => next += 1,
                Ok(n) => {
                    first_break.get_or_insert_with(|| format!("{n} where {next} was due"));
                }
                Err(_) => other.push(line.to_owned()),
            }
            continue;
        }
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let payload = v["payload"].clone();
        match v["type"].as_str() {
            Some("register") => {
                host = payload["hostname"].as_str().unwrap_or_default().to_owned();
                lock(&shared.hosts).entry(host.clone()).or_default().out = Some(tx.clone());
                let reply = format!(r#"{{"type":"registered","payload":{{"host_id":"{host}"}}}}"#);
                let _ = tx.send(Message::text(reply));
            }
            Some("heartbeat") => {
                lock(&shared.hosts)
                    .entry(host.clone())
                    .or_default()
                    .heartbeats
                    .push(now);
            }
            Some("status") => {
                let seen = StatusSeen {
                    at: now,
                    payload,
                    outputs,
                    in_order: next - 1,
                    first_break: first_break.take(),
                    other: std::mem::take(&mut other),
                };
                (outputs, next) = (0, 1);
                lock(&shared.hosts)
                    .entry(host.clone())
                    .or_default()
                    .statuses
                    .push(seen);
            }
            Some("output") => {
                // an output frame the fast path did not recognise
                outputs += 1;
                other.push(payload["line"].as_str().unwrap_or_default().to_owned());
                continue;
            }
            _ => continue,
        }
        shared.notify.notify_waiters();
    }
}
