//! The connection to the dashboard: the only owner of the socket.
//!
//! [`Connection::run`] dials with the bearer token, registers on every connect, sends the
//! heartbeats (one on every interval, one at once after `registered`, and one
//! right after every `status`), answers and sends pings, enforces the read deadline and backs off
//! on failure. A *session* is one live socket: a reader task takes frames from
//! the dashboard, and the writer (the session loop itself) serves, in this
//! order: stop requests, heartbeats, pings, the control lane, the outbox
//! (`status`, `test_progress`) and, last, the output lane in batches — several
//! frames per write syscall when several are ready.
//!
//! Every write is raced against the read deadline, so a dashboard that stops
//! reading (a full TCP window) is detected as dead after the deadline instead of
//! blocking the agent forever.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::backoff::Backoff;
use crate::compartments::with_reboot_need;
use crate::config::Config;
use crate::host::RebootNeed;
use crate::outbound::{Lines, Outbound, OutboundRx};
use crate::protocol::{Heartbeat, Outgoing, Register};
use crate::state::AgentState;

mod socket;
use socket::{
    AbortOnDrop, Deadline, ReaderEvent, SessionEnd, Socket, close, guarded, lost, read_loop, text,
    wait_stop, write_all,
};
pub use socket::{CommandSink, Stop};

/// Largest frame accepted from the dashboard; larger ones end the session.
pub const MAX_INCOMING_FRAME: usize = 64 * 1024;
/// Items of the output lane written per flush before the writer looks at the
/// other lanes again: up to 16 pipe reads' lines (each at most 256), or 16
/// single lines.
const OUTPUT_ITEMS: usize = 16;
/// How long a shutdown spends delivering what is already in the outbox (and
/// waiting for the dashboard's pong that confirms it).
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long the socket stays open after a `status` before a clean close.
/// The hub queues an agent's frames (`agentMessages`, buffered) but not its
/// disconnect (`unregister`), and its loop may take the disconnect first:
/// a switch's status handled after it is dropped and, in lifecycle.go's
/// `HandleCommandComplete`, panics the hub's loop (a closed channel closed
/// again). Nothing the hub sends tells that it handled a status; the
/// dashboard's pong says it read it, this grace lets its loop take it.
pub const STATUS_GRACE: Duration = Duration::from_millis(500);

/// The parts of `register` that do not change while the agent runs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A register frame whose `generation` and `nixpkgs_version` are filled from
    /// the latest snapshot at each connect.
    pub register: Register,
    /// The binary's hash when it was not known at start: filled in by a
    /// background hash, then carried by every `register` and `heartbeat`.
    pub binary_hash: crate::host::BinaryHash,
}

/// Everything a connection needs.
pub struct Connection {
    config: Arc<Config>,
    state: Arc<AgentState>,
    out: Arc<Outbound>,
    rx: OutboundRx,
    identity: Identity,
    on_command: CommandSink,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The token sent now; read again from its source before a dial after a
    /// 401 and once a minute has passed ([`TOKEN_REREAD`]).
    token: crate::config::Token,
    token_read: Instant,
    unauthorized: bool,
    /// When the last `status` was written to the socket.
    status_written: Option<Instant>,
}

/// How long a token read from a file is used before it is read again (at
/// the next connection attempt; never while connected).
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);

impl Connection {
    /// Prepares a connection; nothing is dialed yet.
    pub fn new(
        config: Arc<Config>,
        state: Arc<AgentState>,
        out: Arc<Outbound>,
        rx: OutboundRx,
        identity: Identity,
        on_command: CommandSink,
    ) -> Connection {
        Connection {
            state,
            out,
            rx,
            identity,
            on_command,
            tls: None,
            token: config.token.clone(),
            token_read: Instant::now(),
            unauthorized: false,
            status_written: None,
            config,
        }
    }

    /// Runs until `stop` carries a value: connects, re-connects with backoff,
    /// and on stop closes cleanly. Returns the stop that ended it.
    pub async fn run(mut self, mut stop: watch::Receiver<Option<Stop>>) -> Stop {
        let timing = self.config.timing;
        let mut backoff = Backoff::new(timing.backoff_base, timing.backoff_base * 60);
        loop {
            if let Some(s) = *stop.borrow() {
                return s;
            }
            // a register now would tell the dashboard a lie (register_hold.rs)
            tokio::select! {
                _ = self.register_allowed() => {}
                s = wait_stop(&mut stop) => return s,
            }
            self.refresh_token().await;
            let dial = tokio::select! {
                r = self.dial() => r,
                s = wait_stop(&mut stop) => return s,
            };
            self.unauthorized = matches!(dial, Err(DialError::Unauthorized));
            match dial {
                Ok(socket) => {
                    tracing::info!(url = %crate::config::redact_url(&self.config.url), "connected");
                    let end = self.session(socket, &mut stop, &mut backoff).await;
                    // what the dashboard may not have read is written again
                    self.out.requeue_unconfirmed();
                    match end {
                        SessionEnd::Stopped(s) => return s,
                        SessionEnd::Lost(why) => tracing::warn!("connection lost: {why}"),
                    }
                }
                Err(DialError::Unauthorized) => {
                    tracing::error!(
                        "authentication failed: the dashboard rejected the agent token (HTTP 401); retrying"
                    );
                }
                Err(DialError::Other(why)) => {
                    tracing::warn!(
                        "cannot connect to {}: {why}",
                        crate::config::redact_url(&self.config.url)
                    );
                }
            }
            self.out.set_connected(false);
            let delay = backoff.next_delay();
            tracing::info!("reconnecting in {} ms", delay.as_millis());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                s = wait_stop(&mut stop) => return s,
            }
        }
    }

    async fn dial(&mut self) -> Result<Socket, DialError> {
        let mut request = self
            .config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| DialError::Other(format!("bad URL: {e}")))?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.token.expose())).map_err(|_| {
                DialError::Other("the token holds characters not allowed in an HTTP header".into())
            })?;
        auth.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, auth);

        let connector = if self.config.url.starts_with("wss://") {
            if self.tls.is_none() {
                self.tls = Some(
                    crate::tls::client_config(self.config.ca_file.as_deref())
                        .map_err(DialError::Other)?,
                );
            }
            self.tls.clone().map(Connector::Rustls)
        } else {
            Some(Connector::Plain)
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING_FRAME))
            .max_frame_size(Some(MAX_INCOMING_FRAME))
            .read_buffer_size(8 * 1024)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024);
        let deadline = self
            .config
            .timing
            .read_deadline
            .min(Duration::from_secs(30));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(ws_config),
            true,
            connector,
        );
        match tokio::time::timeout(deadline, connect).await {
            Err(_) => Err(DialError::Other("timed out".into())),
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(WsError::Http(response))) if response.status() == StatusCode::UNAUTHORIZED => {
                Err(DialError::Unauthorized)
            }
            Ok(Err(WsError::Http(response))) => Err(DialError::Other(format!(
                "the dashboard answered HTTP {}",
                response.status()
            ))),
            Ok(Err(e)) => Err(DialError::Other(e.to_string())),
        }
    }

    /// Reads the token again from its file after a 401 or once
    /// [`TOKEN_REREAD`] has passed (off the runtime thread); a rotated secret
    /// is picked up without a restart. A read that fails keeps the old token.
    async fn refresh_token(&mut self) {
        if !self.unauthorized && self.token_read.elapsed() < TOKEN_REREAD {
            return;
        }
        let source = self.config.token_source.clone();
        let read = tokio::task::spawn_blocking(move || source.reread()).await;
        self.token_read = Instant::now();
        match read {
            Ok(Some(Ok(token))) => {
                if token.expose() != self.token.expose() {
                    tracing::info!("the token file changed; using the new token");
                    self.token = token;
                }
            }
            Ok(Some(Err(e))) => {
                tracing::warn!("cannot read the token again: {e}; keeping the current one")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("reading the token again failed: {e}"),
        }
    }

    fn register_frame(&self) -> Outgoing {
        let snap = self.state.snapshot();
        let mut register = self.identity.register.clone();
        register.generation = snap.generation;
        register.nixpkgs_version = snap.nixpkgs_version;
        self.identity.binary_hash.fill(&mut register.freshness);
        Outgoing::Register(register)
    }

    fn heartbeat_frame(&self) -> Outgoing {
        let snap = self.state.snapshot();
        let running = self.state.running();
        let mut freshness = self.identity.register.freshness.clone();
        self.identity.binary_hash.fill(&mut freshness);
        Outgoing::Heartbeat(Heartbeat {
            generation: snap.generation,
            nixpkgs_version: snap.nixpkgs_version,
            pending_command: running.as_ref().map(|r| r.command.clone()),
            // a command between two processes (or not yet spawned) has no PID
            command_pid: running.as_ref().map(|r| r.pid).filter(|&pid| pid != 0),
            metrics: snap.metrics,
            lock_hash: snap.lock_hash,
            update_status: with_reboot_need(
                self.state.compartments().heartbeat_view(running.is_some()),
                snap.reboot.as_ref(),
            ),
            needs_reboot: snap.reboot.as_ref().map(RebootNeed::needed),
            store_free_mib: snap.store_free_mib,
            boot_free_mib: snap.boot_free_mib,
            freshness,
        })
    }

    /// Resolves once the agent may register: nothing in this process holds
    /// it back, and the hold on disk (if any) has passed.
    async fn register_allowed(&self) {
        self.state.register_released().await;
        let dir = self.config.state_dir.clone();
        let held = tokio::task::spawn_blocking(move || crate::register_hold::remaining(&dir))
            .await
            .ok()
            .flatten();
        if let Some(left) = held {
            tracing::warn!(
                "not registering for {} s: a rolled-back switch is held back until the dashboard's reconnect window has passed, so that it cannot count as a success",
                left.as_secs()
            );
            tokio::time::sleep(left).await;
        }
    }

    async fn session(
        &mut self,
        socket: Socket,
        stop: &mut watch::Receiver<Option<Stop>>,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        let timing = self.config.timing;
        let (mut sink, stream) = socket.split();
        let started = Instant::now();
        let heard = Arc::new(AtomicU64::new(0));
        let (events_tx, mut events) = mpsc::channel::<ReaderEvent>(4);
        let reader = tokio::spawn(read_loop(
            stream,
            started,
            heard.clone(),
            events_tx,
            self.on_command.clone(),
            self.out.clone(),
        ));
        let _abort_reader = AbortOnDrop(reader);
        let deadline = Deadline {
            started,
            heard,
            limit: timing.read_deadline,
        };

        // register, then wait for `registered`
        let register = self.register_frame();
        if let Err(end) = guarded(sink.send(text(&register)), &deadline, &mut events).await {
            return end;
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ReaderEvent::Registered) => {}
                other => return lost(other),
            },
            _ = deadline.expired() => return SessionEnd::Lost("no `registered` reply".into()),
            s = wait_stop(stop) => {
                close(&mut sink, &mut events, s.reason).await;
                return SessionEnd::Stopped(s);
            }
        }
        tracing::info!(host = %self.identity.register.hostname, "registered");
        self.state.note_registered();
        backoff.reset();
        self.out.set_connected(true);

        let mut heartbeat = tokio::time::interval(Duration::from_secs(self.config.interval_secs));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ping =
            tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch: Vec<Lines> = Vec::with_capacity(OUTPUT_ITEMS);

        loop {
            let ready = self.out.outbox_ready();
            let waiting = ready.is_none() && self.out.outbox_waiting();
            let result = tokio::select! {
                biased;
                s = wait_stop(stop) => {
                    self.drain(&mut sink, &mut events, &deadline).await;
                    if let Some(written) = self.status_written {
                        // bounded: STATUS_GRACE after the last status
                        tokio::time::sleep_until(written + STATUS_GRACE).await;
                    }
                    close(&mut sink, &mut events, s.reason).await;
                    self.out.set_connected(false);
                    return SessionEnd::Stopped(s);
                }
                ev = events.recv() => {
                    self.out.set_connected(false);
                    return lost(ev);
                }
                _ = deadline.expired() => {
                    self.out.set_connected(false);
                    return SessionEnd::Lost(format!(
                        "no frame from the dashboard for {} s",
                        timing.read_deadline.as_secs_f32()
                    ));
                }
                _ = heartbeat.tick() => {
                    let frame = self.heartbeat_frame();
                    let sent = guarded(sink.send(text(&frame)), &deadline, &mut events).await;
                    if sent.is_ok() {
                        self.state.note_heartbeat();
                    }
                    sent
                }
                _ = ping.tick() => {
                    guarded(sink.send(Message::Ping(Default::default())), &deadline, &mut events).await
                }
                Some(frame) = self.rx.control.recv() => {
                    guarded(sink.send(text(&frame)), &deadline, &mut events).await
                }
                _ = std::future::ready(()), if ready.is_some() => {
                    let mut r = Ok(());
                    if let Some(marker) = self.out.take_drop_marker() {
                        r = guarded(sink.feed(text(&marker)), &deadline, &mut events).await;
                    }
                    if r.is_ok()
                        && let Some((_, frame)) = &ready
                    {
                        r = guarded(sink.send(text(frame)), &deadline, &mut events).await;
                    }
                    if r.is_ok()
                        && let Some((id, frame)) = &ready
                    {
                        self.out.outbox_done(*id);
                        if let Outgoing::Status(st) = frame {
                            self.status_written = Some(Instant::now());
                            tracing::debug!(
                                "status of {} written; it counts once the dashboard confirms it",
                                st.command
                            );
                        }
                    }
                    // The hub completes an operation only at the heartbeat
                    // after its status (upstream lifecycle.go), so one follows
                    // every status at once, carrying the new compartments.
                    if r.is_ok() && matches!(ready, Some((_, Outgoing::Status(_)))) {
                        let frame = self.heartbeat_frame();
                        r = guarded(sink.send(text(&frame)), &deadline, &mut events).await;
                    }
                    // once the outbox is written out, ask for the proof that
                    // the dashboard read it
                    if r.is_ok()
                        && self.out.outbox_ready().is_none()
                        && let Some(payload) = self.out.confirmation_ping()
                    {
                        r = guarded(sink.send(Message::Ping(payload.into())), &deadline, &mut events).await;
                    }
                    r
                }
                n = self.rx.output.recv_many(&mut batch, OUTPUT_ITEMS) => {
                    if n == 0 {
                        // every producer is gone; nothing more will come
                        std::future::pending::<()>().await;
                    }
                    let frames = take_frames(&mut batch, &self.out);
                    let mut r = write_all(&mut sink, frames, &deadline, &mut events).await;
                    if r.is_ok()
                        && self.rx.output.is_empty()
                        && let Some(marker) = self.out.take_drop_marker()
                    {
                        r = guarded(sink.send(text(&marker)), &deadline, &mut events).await;
                    }
                    r
                }
                _ = self.out.outbox_changed(), if !waiting => Ok(()),
            };
            if let Err(end) = result {
                self.out.set_connected(false);
                return end;
            }
        }
    }

    /// Delivers what the outbox holds (and the output queued before it) before
    /// a clean close, within [`DRAIN_WAIT`].
    async fn drain(
        &mut self,
        sink: &mut futures_util::stream::SplitSink<Socket, Message>,
        events: &mut mpsc::Receiver<ReaderEvent>,
        deadline: &Deadline,
    ) {
        let until = Instant::now() + DRAIN_WAIT;
        let work = async {
            loop {
                if let Some((id, frame)) = self.out.outbox_ready() {
                    guarded(sink.send(text(&frame)), deadline, events).await?;
                    self.out.outbox_done(id);
                    if matches!(frame, Outgoing::Status(_)) {
                        self.status_written = Some(Instant::now());
                        let beat = self.heartbeat_frame();
                        guarded(sink.send(text(&beat)), deadline, events).await?;
                    }
                } else if let Some(payload) = self.out.confirmation_ping() {
                    guarded(sink.send(Message::Ping(payload.into())), deadline, events).await?;
                } else if self.out.unconfirmed() > 0 {
                    // the pong arrives on the reader; wait for it (or for the
                    // end of the drain: unconfirmed frames are then kept)
                    let confirmed = self.out.confirmation();
                    tokio::pin!(confirmed);
                    confirmed.as_mut().enable();
                    if self.out.unconfirmed() > 0 {
                        tokio::select! {
                            _ = confirmed => {}
                            ev = events.recv() => return Err(lost(ev)),
                        }
                    }
                } else if self.out.outbox_waiting() {
                    let mut batch = Vec::new();
                    let n = self.rx.output.recv_many(&mut batch, OUTPUT_ITEMS).await;
                    if n == 0 {
                        break;
                    }
                    let frames = take_frames(&mut batch, &self.out);
                    write_all(sink, frames, deadline, events).await?;
                } else {
                    break;
                }
            }
            Ok::<(), SessionEnd>(())
        };
        let _ = tokio::time::timeout_at(until, work).await;
    }
}

#[derive(Debug)]
enum DialError {
    Unauthorized,
    Other(String),
}

/// The frames of the output items taken from the lane (which it empties),
/// counted as consumed.
fn take_frames(batch: &mut Vec<Lines>, out: &Outbound) -> Vec<Message> {
    let lines: usize = batch.iter().map(Lines::count).sum();
    let weight = batch.iter().map(Lines::weight).sum();
    out.note_consumed(lines as u64, weight);
    let mut frames = Vec::with_capacity(lines);
    for item in batch.drain(..) {
        frames.extend(item.into_frames().map(Message::Text));
    }
    frames
}
