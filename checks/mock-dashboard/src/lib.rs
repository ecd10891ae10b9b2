//! The dashboard side of the NixFleet agent protocol (`protocol.md`), for tests.
//!
//! [`MockDashboard`] listens on one TCP address for the WebSocket endpoint `/ws`
//! and for a small JSON control API under `/api` (see `docs/mock-dashboard.md`).
//! It behaves like the real hub (upstream `markus-barta/nixfleet` 3.1.5,
//! `src/internal/dashboard/hub.go`), rule by rule: the bearer token on the
//! upgrade (`handlers.go`), `registered` replies, an older connection of the
//! same host replaced with a close frame without a code, online = connected,
//! a 512 KiB read limit, pings every 54 s and a 60 s read deadline; the
//! compartments stored from heartbeats and statuses ([`hub`]); and the
//! operation lifecycle of `lifecycle.go` ([`lifecycle`]). It records every
//! frame and connection event with a global sequence number, and validates
//! every frame an agent sends as plain JSON against the protocol. Problems are recorded as [`Violation`]s instead of failing the
//! connection, so a test can assert `violations().is_empty()` at its end.
//!
//! Waiting is event-driven: [`MockDashboard::wait_until`] and its helpers are
//! woken on every recorded frame and event, never by polling with sleeps.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use nixfleet_mock_dashboard::{MockDashboard, Options};
//!
//! let dash = MockDashboard::start(Options::default()).await?;
//! // start the agent with NIXFLEET_URL = dash.ws_url(), NIXFLEET_TOKEN = "test-token" …
//! let hello = dash.wait_event("connected", Some("host1"), 0, Duration::from_secs(10)).await;
//! assert!(hello.is_some());
//! dash.send_command("host1", "test").await.ok();
//! let status = dash.wait_frame("host1", "status", 0, Duration::from_secs(30)).await;
//! assert!(status.is_some());
//! assert!(dash.violations().is_empty());
//! dash.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Memory is bounded: at most [`MAX_FRAMES_PER_HOST`] frames are kept per host
//! (the oldest are dropped first), at most [`MAX_EVENTS`] events (oldest dropped)
//! and the first [`MAX_VIOLATIONS`] violations (later ones are counted in the
//! log only). With [`Options::keep_output_frames`] off, `output` frames are
//! validated and counted but not stored at all.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod conn;
pub mod demo;
pub mod hub;
pub mod lifecycle;
mod link;
mod net;
mod op;
mod records;
mod state;
mod validate;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use crate::conn::STATUS_CLOSE_RACE;
pub use crate::hub::{Check, Compartments, Remote};
use crate::link::{ConnHandle, Outgoing};
pub use crate::op::{Dispatched, Op};
pub use crate::records::{Error, Event, Frame, HostInfo, SEND_TIMEOUT, Violation};
use crate::state::State;

/// The token accepted when no other is configured.
pub const DEFAULT_TOKEN: &str = "test-token";

/// How many frames are kept per host; older frames are dropped first.
pub const MAX_FRAMES_PER_HOST: usize = 1_000_000;

/// How many events are kept; older events are dropped first.
pub const MAX_EVENTS: usize = 100_000;

/// How many violations are kept; later ones are only logged (and counted).
pub const MAX_VIOLATIONS: usize = 100_000;

/// How long the dashboard waits for the agent to answer a close frame before it
/// drops the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a [`MockDashboard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port (see [`MockDashboard::addr`]).
    pub listen: SocketAddr,
    /// Bearer tokens accepted on the WebSocket upgrade.
    pub tokens: Vec<String>,
    /// Store `output` frames (default). When false they are still validated
    /// and counted ([`MockDashboard::output_count`]) but not kept, so that a
    /// throughput test can send millions of lines.
    pub keep_output_frames: bool,
    /// The dashboard's own release; an agent reporting another
    /// `agent_version` is "outdated" (upstream `handlers.go`).
    pub dashboard_version: String,
    /// How long a switch waits for the agent to register again (upstream 90 s).
    pub reconnect_timeout: Duration,
    /// How often the dashboard pings each agent (upstream 54 s).
    pub ping_interval: Duration,
    /// A connection with no frame for this long is dropped (upstream 60 s).
    pub read_deadline: Duration,
}

/// Upstream's release this mock mirrors.
pub const DASHBOARD_VERSION: &str = "3.1.5";

/// Largest message read from an agent; a larger one drops the connection
/// (upstream `maxMessageSize`).
pub const MAX_MESSAGE: usize = 512 * 1024;

impl Default for Options {
    /// `127.0.0.1:0`, the token `test-token`, output frames kept, and
    /// upstream's version and timings.
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: vec![DEFAULT_TOKEN.to_owned()],
            keep_output_frames: true,
            dashboard_version: DASHBOARD_VERSION.to_owned(),
            reconnect_timeout: lifecycle::RECONNECT_TIMEOUT,
            ping_interval: Duration::from_secs(54),
            read_deadline: Duration::from_secs(60),
        }
    }
}

/// State shared by the handle, the HTTP handlers and the connection tasks.
pub(crate) struct Inner {
    pub(crate) addr: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) keep_output_frames: bool,
    pub(crate) dashboard_version: String,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) read_deadline: Duration,
    pub(crate) tokens: Mutex<HashSet<String>>,
    pub(crate) state: Mutex<State>,
    pub(crate) notify: Notify,
    pub(crate) sockets: Arc<net::Registry>,
    pub(crate) serve_task: Mutex<Option<JoinHandle<()>>>,
    pub(crate) next_conn_id: AtomicU64,
}

impl Inner {
    /// Wake every [`MockDashboard::wait_until`].
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }
}

/// Lock a mutex, ignoring poisoning (a panicking test must not hide the record).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running mock dashboard. Cloning is cheap; every clone is the same dashboard.
#[derive(Clone)]
pub struct MockDashboard {
    inner: Arc<Inner>,
}

impl fmt::Debug for MockDashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDashboard")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl MockDashboard {
    /// Bind `opts.listen` and serve `/ws` and `/api` in background tokio tasks.
    pub async fn start(opts: Options) -> std::io::Result<MockDashboard> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let sockets = Arc::new(net::Registry::default());
        let inner = Arc::new(Inner {
            addr,
            started: Instant::now(),
            keep_output_frames: opts.keep_output_frames,
            dashboard_version: opts.dashboard_version,
            reconnect_timeout: opts.reconnect_timeout,
            ping_interval: opts.ping_interval,
            read_deadline: opts.read_deadline,
            tokens: Mutex::new(opts.tokens.into_iter().collect()),
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            sockets: Arc::clone(&sockets),
            serve_task: Mutex::new(None),
            next_conn_id: AtomicU64::new(1),
        });
        let dash = MockDashboard { inner };
        let router = api::router(dash.clone());
        let listener = net::TrackedListener::new(listener, sockets);
        let task = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<net::Peer>();
            if let Err(e) = axum::serve(listener, service).await {
                tracing::error!("mock dashboard stopped serving: {e}");
            }
        });
        *lock(&dash.inner.serve_task) = Some(task);
        tracing::info!("mock dashboard listening on {addr}");
        Ok(dash)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The address the dashboard listens on (with the real port when port 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `ws://ADDR/ws`, the value for the agent's `NIXFLEET_URL`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.inner.addr)
    }

    /// `http://ADDR`, the base of the control API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Accept one more bearer token from now on.
    pub fn add_token(&self, token: &str) {
        lock(&self.inner.tokens).insert(token.to_owned());
        tracing::info!("token added");
    }

    /// Stop accepting a bearer token (a rotated secret); live connections stay.
    pub fn remove_token(&self, token: &str) {
        lock(&self.inner.tokens).remove(token);
        tracing::info!("token removed");
    }

    /// Every host that ever registered, sorted by name.
    pub fn hosts(&self) -> Vec<HostInfo> {
        lock(&self.inner.state).host_infos(&self.inner.dashboard_version)
    }

    /// One host, if it ever registered.
    pub fn host(&self, name: &str) -> Option<HostInfo> {
        self.hosts().into_iter().find(|h| h.hostname == name)
    }

    /// Dispatches operation `op` to `host` as the UI does (`POST
    /// /api/dispatch`): pre-checks unless `force`, then the command is sent and
    /// the operation follows the lifecycle.
    pub fn dispatch(&self, host: &str, op: &str, force: bool) -> Dispatched {
        let version = self.inner.dashboard_version.clone();
        let d = lock(&self.inner.state).dispatch(host, op, force, &version);
        self.inner.wake();
        d
    }

    /// The UI's Kill button (`POST /api/hosts/{host}/kill`): the active
    /// operation becomes `KILLING` and the command `kill` is sent.
    pub fn kill(&self, host: &str) -> Result<(), String> {
        let r = lock(&self.inner.state).kill(host);
        self.inner.wake();
        r
    }

    /// Every operation (of `host`, when given), oldest first.
    pub fn ops(&self, host: Option<&str>) -> Vec<Op> {
        lock(&self.inner.state)
            .ops
            .iter()
            .filter(|o| host.is_none_or(|h| o.host == h))
            .cloned()
            .collect()
    }

    /// The operation `id`, if known.
    pub fn op(&self, id: &str) -> Option<Op> {
        lock(&self.inner.state)
            .ops
            .iter()
            .rev()
            .find(|o| o.id == id)
            .cloned()
    }

    /// Waits until operation `id` is terminal; returns it (or its last state
    /// at the timeout).
    pub async fn wait_op(&self, id: &str, timeout: Duration) -> Option<Op> {
        let done = self
            .wait_until(timeout, |d| d.op(id).filter(Op::is_terminal))
            .await;
        done.or_else(|| self.op(id))
    }

    /// Sets (or clears) the dashboard's desired state (upstream's version
    /// fetcher): Git is then compared with `commit`, Lock with `lock_hash`.
    pub fn set_remote(&self, remote: Option<Remote>) {
        lock(&self.inner.state).remote = remote;
        self.inner.wake();
    }

    pub(crate) fn start_reconnect_timer(&self, host: String, id: String) {
        let dash = self.clone();
        let wait = self.inner.reconnect_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            lock(&dash.inner.state).op_reconnect_timeout(&host, &id);
            dash.inner.wake();
        });
    }

    /// Send `{"type":"command","payload":{"command":<command>}}` to the host and
    /// wait until it is written to the socket.
    pub async fn send_command(&self, host: &str, command: &str) -> Result<(), Error> {
        let text = serde_json::json!({"type": "command", "payload": {"command": command}});
        tracing::info!("{host}: sending command `{command}`");
        self.send_text(host, &text.to_string()).await
    }

    /// Send `text` verbatim as one text frame (malformed JSON, unknown types,
    /// `kill_command`, …) and wait until it is written to the socket.
    pub async fn send_text(&self, host: &str, text: &str) -> Result<(), Error> {
        let conn = self.conn(host)?;
        let (ack, done) = tokio::sync::oneshot::channel();
        let msg = axum::extract::ws::Message::Text(text.into());
        conn.out
            .send(Outgoing::Message(msg, Some(ack)))
            .map_err(|_| Error::NotConnected(host.to_owned()))?;
        Self::await_ack(host, done).await
    }

    async fn await_ack(
        host: &str,
        done: tokio::sync::oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), Error> {
        match tokio::time::timeout(SEND_TIMEOUT, done).await {
            Err(_) => Err(Error::Timeout(host.to_owned())),
            Ok(Err(_)) => Err(Error::NotConnected(host.to_owned())),
            Ok(Ok(Err(reason))) => Err(Error::SendFailed {
                host: host.to_owned(),
                reason,
            }),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    pub(crate) fn conn(&self, host: &str) -> Result<Arc<ConnHandle>, Error> {
        lock(&self.inner.state)
            .hosts
            .get(host)
            .and_then(|h| h.conn.clone())
            .ok_or_else(|| Error::NotConnected(host.to_owned()))
    }

    /// Stop reading the host's socket entirely: no frames are taken in and no
    /// pings are answered, so TCP backpressure builds up on the agent's side
    /// (a stalled dashboard). Writing to it still works. No effect when the
    /// host is not connected.
    pub fn pause(&self, host: &str) {
        // Not connected: nothing to pause, as documented.
        let _ = self.try_pause(host, true);
    }

    /// Read the host's socket again after [`pause`](Self::pause).
    pub fn resume(&self, host: &str) {
        // Not connected: nothing to resume, as documented.
        let _ = self.try_pause(host, false);
    }

    pub(crate) fn try_pause(&self, host: &str, paused: bool) -> Result<(), Error> {
        let conn = self.conn(host)?;
        conn.paused.send_replace(paused);
        let what = if paused { "paused" } else { "resumed" };
        tracing::info!("{host}: reading {what}");
        Ok(())
    }

    /// Close the host's connection with a close frame carrying `code` (reason
    /// "closed by the mock dashboard") and return once it is written; the
    /// socket ends when the agent answers, or [`CLOSE_TIMEOUT`] later. Two codes
    /// are special: 1006 drops the TCP connection at once without any close
    /// frame (a network failure), 1005 sends a close frame without a code.
    /// No effect when the host is not connected.
    pub async fn disconnect(&self, host: &str, code: u16) {
        if let Err(e) = self.try_disconnect(host, code).await {
            tracing::info!("disconnect: {e}");
        }
    }

    pub(crate) async fn try_disconnect(&self, host: &str, code: u16) -> Result<(), Error> {
        let conn = self.conn(host)?;
        if code == 1006 {
            tracing::info!("{host}: dropping the connection without a close frame");
            conn.kill.send_replace(true);
            return Ok(());
        }
        tracing::info!("{host}: closing the connection with code {code}");
        let (ack, done) = tokio::sync::oneshot::channel();
        conn.out
            .send(Outgoing::Close {
                code,
                reason: "closed by the mock dashboard",
                ack: Some(ack),
            })
            .map_err(|_| Error::NotConnected(host.to_owned()))?;
        Self::await_ack(host, done).await
    }

    /// Frames received from `host` (optionally only of type `kind`), oldest
    /// first. Frames a connection sent before it registered are listed under
    /// the host name `""`.
    pub fn frames(&self, host: &str, kind: Option<&str>) -> Vec<Frame> {
        lock(&self.inner.state).frames(host, kind, 0)
    }

    /// How many `output` frames `host` sent, counted even when they are not kept.
    pub fn output_count(&self, host: &str) -> u64 {
        lock(&self.inner.state).output_count(host)
    }

    /// Every recorded event, oldest first.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.inner.state).events.iter().cloned().collect()
    }

    /// Every recorded protocol violation, oldest first.
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.inner.state).violations.clone()
    }

    /// The highest sequence number assigned so far (frames and events share
    /// one counter; 0 before anything happened).
    pub fn last_seq(&self) -> u64 {
        lock(&self.inner.state).seq
    }

    /// Wait until `check` returns `Some`, or `timeout` passes (`None`).
    ///
    /// `check` runs at once and again after every recorded frame or event (and
    /// every change of a host's connection); there is no polling.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&MockDashboard) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking so that no wake-up is lost in between.
            notified.as_mut().enable();
            if let Some(found) = check(self) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(self);
            }
        }
    }

    /// Wait for the first frame of type `kind` from `host` with `seq > after_seq`.
    pub async fn wait_frame(
        &self,
        host: &str,
        kind: &str,
        after_seq: u64,
        timeout: Duration,
    ) -> Option<Frame> {
        // Frames are ordered by seq; remember how far we looked.
        let mut cursor = after_seq;
        self.wait_until(timeout, |d| {
            let st = lock(&d.inner.state);
            let (found, scanned) = st.first_frame(host, kind, cursor);
            cursor = cursor.max(scanned);
            found
        })
        .await
    }

    /// Wait for the first event of `kind` (and of `host`, when given) with
    /// `seq > after_seq`.
    pub async fn wait_event(
        &self,
        kind: &str,
        host: Option<&str>,
        after_seq: u64,
        timeout: Duration,
    ) -> Option<Event> {
        self.wait_until(timeout, |d| {
            lock(&d.inner.state)
                .events
                .iter()
                .find(|e| {
                    e.seq > after_seq
                        && e.kind == kind
                        && host.is_none_or(|h| e.host.as_deref() == Some(h))
                })
                .cloned()
        })
        .await
    }

    /// Stop abruptly, like a killed process: stop listening and drop every
    /// socket without a close frame. The address can be bound again as soon as
    /// this returns. Other clones keep answering queries about what was recorded.
    pub async fn shutdown(self) {
        let task = lock(&self.inner.serve_task).take();
        if let Some(task) = task {
            task.abort();
            // Completes once the serve future, and so the listener, is dropped.
            let _ = task.await;
        }
        let conns: Vec<Arc<ConnHandle>> = lock(&self.inner.state)
            .hosts
            .values()
            .filter_map(|h| h.conn.clone())
            .collect();
        for conn in conns {
            conn.kill.send_replace(true);
        }
        self.inner.sockets.close_all();
        tracing::info!("mock dashboard on {} shut down", self.inner.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options() {
        let o = Options::default();
        assert_eq!(o.listen.to_string(), "127.0.0.1:0");
        assert_eq!(o.tokens, vec!["test-token".to_owned()]);
        assert!(o.keep_output_frames);
        assert_eq!(o.dashboard_version, "3.1.5");
        assert_eq!(o.reconnect_timeout, Duration::from_secs(90));
        assert_eq!(o.ping_interval, Duration::from_secs(54));
        assert_eq!(o.read_deadline, Duration::from_secs(60));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            Error::NotConnected("h".into()).to_string(),
            "host `h` is not connected"
        );
    }
}
