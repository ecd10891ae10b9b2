//! One agent connection: a reader task (records and validates every frame,
//! handles `register`) and a writer task (frames to the agent), so that a
//! blocked write never stops reading and a paused reader never stops writing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};

use serde_json::Value;

use crate::link::{ConnHandle, Outgoing};
use crate::state::{DEFAULT_INTERVAL, HostState, State};
use crate::validate::{self, BINARY};
use crate::{CLOSE_TIMEOUT, Frame, MockDashboard, lock};

/// Frames recorded at most before waiters are woken (see `Reader::read_loop`).
const BURST: u32 = 256;

/// Serve one upgraded connection until it ends.
pub(crate) async fn run(dash: MockDashboard, socket: WebSocket, peer: SocketAddr) {
    let inner = dash.inner();
    let id = inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (out, out_rx) = mpsc::unbounded_channel();
    let handle = Arc::new(ConnHandle {
        id,
        out,
        paused: watch::channel(false).0,
        kill: watch::channel(false).0,
    });
    tracing::info!("{peer}: connection {id} opened");
    let (sink, stream) = socket.split();
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        Arc::clone(&handle),
        inner.ping_interval,
    ));
    let mut reader = Reader {
        dash: dash.clone(),
        handle: Arc::clone(&handle),
        peer,
        host: None,
        registered: false,
        switch_status_at: std::cell::Cell::new(None),
    };
    let why = reader.read_loop(stream).await;
    handle.kill.send_replace(true);
    // The writer stops at once on `kill`; afterwards the socket is closed.
    let _ = writer.await;

    let host = reader.host.take();
    let mut st = lock(&inner.state);
    let mut awaiting = None;
    if let Some(name) = host.as_deref()
        && let Some(h) = st.hosts.get_mut(name)
        && h.conn.as_ref().is_some_and(|c| c.id == id)
    {
        h.conn = None;
        // hub.go handleUnregister (P1920): a switch cut off mid-run awaits a reconnect
        awaiting = st.op_disconnect(name).map(|op| (name.to_owned(), op));
        if let Some(at) = reader.switch_status_at.get()
            && at.elapsed() < STATUS_CLOSE_RACE
        {
            let seq = st.seq;
            st.push_violation(
                Some(name),
                seq,
                format!(
                    "the connection closed {} ms after a switch's status: the real hub may take the disconnect first and then panic on the status (hub.go: agentMessages is buffered, unregister is not; lifecycle.go HandleCommandComplete closes cancelTimeout twice); keep the socket open a moment after a final status",
                    at.elapsed().as_millis()
                ),
            );
        }
    }
    st.push_event("disconnected", host.as_deref(), None, Some(why.clone()));
    drop(st);
    if let Some((name, op)) = awaiting {
        dash.start_reconnect_timer(name, op);
    }
    inner.wake();
    let who = host.as_deref().unwrap_or("(unregistered)");
    tracing::info!("{peer}: {who} disconnected: {why}");
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    handle: Arc<ConnHandle>,
    ping_every: std::time::Duration,
) {
    let mut kill = handle.kill.subscribe();
    // hub.go writePump: a ping every pingPeriod (54 s)
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let out = tokio::select! {
            biased;
            _ = kill.wait_for(|k| *k) => return,
            _ = ping.tick() => Some(Outgoing::Message(Message::Ping(Default::default()), None)),
            out = rx.recv() => out,
        };
        let Some(out) = out else { return };
        let (msg, ack, closing) = match out {
            Outgoing::Message(msg, ack) => (msg, ack, false),
            Outgoing::Close { code, reason, ack } => {
                let frame = (code != 1005).then(|| CloseFrame {
                    code,
                    reason: reason.into(),
                });
                (Message::Close(frame), ack, true)
            }
        };
        let result = tokio::select! {
            biased;
            _ = kill.wait_for(|k| *k) => Err("the connection was dropped".to_owned()),
            r = sink.send(msg) => r.map_err(|e| e.to_string()),
        };
        let failed = result.is_err();
        if let Some(ack) = ack {
            // The sender may have given up waiting.
            let _ = ack.send(result);
        }
        if failed {
            return;
        }
        if closing {
            // Nothing may follow a close frame; the reader sees the agent's
            // answer and ends. An agent that does not answer is dropped.
            tokio::select! {
                _ = kill.wait_for(|k| *k) => {}
                _ = tokio::time::sleep(CLOSE_TIMEOUT) => {
                    handle.kill.send_replace(true);
                }
            }
            return;
        }
    }
}

/// The reading half of a connection.
struct Reader {
    dash: MockDashboard,
    handle: Arc<ConnHandle>,
    peer: SocketAddr,
    /// The host name this connection registered with.
    host: Option<String>,
    /// Whether a `register` arrived (even one without a usable host name).
    registered: bool,
    /// When a `status` moved a switch (`switch`, `pull-switch`) that was
    /// `EXECUTING`, on this connection.
    switch_status_at: std::cell::Cell<Option<std::time::Instant>>,
}

/// A connection closed sooner than this after a switch's `status` races the
/// hub: hub.go queues an agent's frames (`agentMessages`, buffered) but not
/// its disconnect (`unregister`), and its loop may take the disconnect
/// first (P1920: the switch then awaits the reconnect), then the status,
/// whose `HandleCommandComplete` (lifecycle.go) closes the op's
/// `cancelTimeout` a second time and panics the hub's loop.
pub const STATUS_CLOSE_RACE: std::time::Duration = std::time::Duration::from_millis(100);

impl Reader {
    /// Read until the socket ends; returns why it ended.
    ///
    /// Waiters are woken once per burst rather than once per frame: while
    /// more frames are ready at once (up to [`BURST`]), they are recorded
    /// first. Under a flood of output lines this saves a thread wake-up per
    /// line; when frames trickle in, every frame wakes at once.
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> String {
        let mut paused = self.handle.paused.subscribe();
        let mut kill = self.handle.kill.subscribe();
        let mut close_seen = false;
        let mut unannounced = 0;
        // hub.go readPump: the deadline moves with every frame (pongWait, 60 s)
        let limit = self.dash.inner().read_deadline;
        let mut deadline = tokio::time::Instant::now() + limit;
        loop {
            let is_paused = *paused.borrow_and_update();
            let ready = if !is_paused && unannounced > 0 && unannounced < BURST {
                stream.next().now_or_never()
            } else {
                None
            };
            let msg = match ready {
                Some(msg) => msg,
                None => {
                    if unannounced > 0 {
                        self.dash.inner().wake();
                        unannounced = 0;
                    }
                    tokio::select! {
                        biased;
                        _ = kill.wait_for(|k| *k) => {
                            return "dropped by the dashboard".to_owned();
                        }
                        _ = paused.changed() => {
                            deadline = tokio::time::Instant::now() + limit;
                            continue;
                        }
                        _ = tokio::time::sleep_until(deadline), if !is_paused => {
                            return format!("no frame for {} s (read deadline)", limit.as_secs_f32());
                        }
                        msg = stream.next(), if !is_paused => msg,
                    }
                }
            };
            unannounced += 1;
            deadline = tokio::time::Instant::now() + limit;
            match msg {
                None if close_seen => return "closed".to_owned(),
                None => return "connection ended without a close frame".to_owned(),
                Some(Err(e)) => return format!("connection error: {e}"),
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                Some(Ok(Message::Binary(data))) => self.on_binary(data.len()),
                Some(Ok(Message::Close(frame))) => {
                    close_seen = true;
                    self.on_close(frame);
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        let checked = validate::check(text, self.registered);
        let inner = self.dash.inner();
        let now = Instant::now();
        let is_output = checked.kind == "output";
        let keep = !is_output || inner.keep_output_frames;
        let mut reply = None;
        let mut awaiting = None;

        let mut guard = lock(&inner.state);
        let st = &mut *guard;
        let seq = st.next_seq();
        if checked.kind == "register" {
            self.registered = true;
        }
        // what the hub acts on (small frames; output is only logged upstream)
        let acted_on = matches!(
            checked.kind.as_ref(),
            "register" | "heartbeat" | "status" | "command_rejected"
        )
        .then(|| checked.payload.clone());
        let frame = keep.then(|| Frame {
            seq,
            kind: checked.kind.into_owned(),
            payload: checked.payload,
            received: now,
        });
        if let Some(reg) = checked.register {
            let interval = reg.heartbeat_interval.unwrap_or(DEFAULT_INTERVAL);
            // Moving to another name: leave the old one.
            if let Some(old) = self.host.take().filter(|h| *h != reg.hostname)
                && let Some(h) = st.hosts.get_mut(&old)
                && h.conn.as_ref().is_some_and(|c| c.id == self.handle.id)
            {
                h.conn = None;
            }
            let host = st
                .hosts
                .entry(reg.hostname.clone())
                .or_insert_with(|| HostState::new(now));
            let replaced = host
                .conn
                .replace(Arc::clone(&self.handle))
                .filter(|old| old.id != self.handle.id);
            host.heartbeat_interval = interval;
            host.last_seen = now;
            if let Some(p) = &acted_on {
                host.stored.on_register(p);
            }
            if let Some(f) = frame {
                host.log.push(f);
            }
            if let Some(old) = replaced {
                // hub.go handleAgentRegister: the older client is closed, and
                // its writePump sends a close frame without a status code
                let _ = old.out.send(Outgoing::Close {
                    code: 1005,
                    reason: "",
                    ack: None,
                });
                st.push_event(
                    "replaced",
                    Some(&reg.hostname),
                    None,
                    Some("replaced by a newer connection".into()),
                );
                tracing::info!(
                    "{}: older connection closed (close frame without a code)",
                    reg.hostname
                );
            }
            st.op_reconnect(&reg.hostname);
            st.push_event("connected", Some(&reg.hostname), None, None);
            tracing::info!("{}: registered as {}", self.peer, reg.hostname);
            let text = serde_json::json!({
                "type": "registered",
                "payload": {"host_id": reg.hostname},
            });
            reply = Some(text.to_string());
            self.host = Some(reg.hostname);
        } else {
            let log = match self.host.as_deref().and_then(|h| st.hosts.get_mut(h)) {
                Some(host) => {
                    if host.conn.as_ref().is_some_and(|c| c.id == self.handle.id) {
                        host.last_seen = now;
                    }
                    &mut host.log
                }
                None => &mut st.unregistered,
            };
            if is_output {
                log.output_count += 1;
            }
            let kind = frame.as_ref().map(|f| f.kind.clone());
            if let Some(f) = frame {
                log.push(f);
            }
            if let (Some(kind), Some(payload), Some(name)) = (kind, &acted_on, self.host.clone()) {
                awaiting = self.act(st, &name, &kind, payload, seq);
            }
        }
        for problem in checked.problems {
            st.push_violation(self.host.as_deref(), seq, problem);
        }
        drop(guard);
        if let Some(op) = awaiting
            && let Some(name) = self.host.clone()
        {
            self.dash.start_reconnect_timer(name, op);
        }
        if let Some(text) = reply {
            let _ = self
                .handle
                .out
                .send(Outgoing::Message(Message::Text(text.into()), None));
        }
    }

    /// The hub's rules for one frame of the live connection of `host`
    /// (`hub.go` `handleHeartbeat`, `handleStatus`, command_rejected). Returns
    /// an operation that now awaits a reconnect.
    fn act(
        &self,
        st: &mut State,
        host: &str,
        kind: &str,
        payload: &Value,
        seq: u64,
    ) -> Option<String> {
        let version = &self.dash.inner().dashboard_version;
        let current = st
            .hosts
            .get(host)
            .is_some_and(|h| h.conn.as_ref().is_some_and(|c| c.id == self.handle.id));
        if !current || !payload.is_object() {
            return None;
        }
        let remote = st.remote.clone();
        let h = st.hosts.get_mut(host)?;
        match kind {
            "heartbeat" => {
                h.stored.on_heartbeat(remote.as_ref(), payload);
                st.op_heartbeat(host, version);
                None
            }
            "status" => {
                h.stored.on_status(payload);
                let exit = payload
                    .get("exit_code")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let command = crate::hub::text(payload, "command");
                if let Some(op) = st.active(host).filter(|o| o.op == command) {
                    if op.status == "AWAITING_RECONNECT" || op.deferred {
                        // lifecycle.go HandleCommandComplete: the op's
                        // cancelTimeout was closed already (by the exit-0
                        // status, or the disconnect that made it await the
                        // reconnect); closing it again panics the hub's loop,
                        // which restarts with the op unchanged
                        let problem = format!(
                            "a second status for the operation {} ({}, {}): the real hub panics on it (lifecycle.go HandleCommandComplete closes cancelTimeout again) and keeps the operation as it was",
                            op.id, op.op, op.status
                        );
                        st.push_violation(Some(host), seq, problem);
                        return None;
                    }
                    if (command == "switch" || command == "pull-switch") && op.status == "EXECUTING"
                    {
                        self.switch_status_at.set(Some(std::time::Instant::now()));
                    }
                }
                st.op_status(
                    host,
                    &crate::hub::text(payload, "command"),
                    exit,
                    &crate::hub::text(payload, "message"),
                )
            }
            "command_rejected" => {
                st.op_rejected(
                    host,
                    &crate::hub::text(payload, "reason"),
                    &crate::hub::text(payload, "current_command"),
                );
                None
            }
            _ => None,
        }
    }

    fn on_binary(&mut self, len: usize) {
        let inner = self.dash.inner();
        let mut guard = lock(&inner.state);
        let st = &mut *guard;
        let seq = st.next_seq();
        let frame = Frame {
            seq,
            kind: BINARY.to_owned(),
            payload: serde_json::json!({ "len": len }),
            received: Instant::now(),
        };
        match self.host.as_deref().and_then(|h| st.hosts.get_mut(h)) {
            Some(host) => host.log.push(frame),
            None => st.unregistered.push(frame),
        }
        let message = "binary frame (the protocol uses JSON text frames only)".to_owned();
        st.push_violation(self.host.as_deref(), seq, message);
        drop(guard);
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) {
        let inner = self.dash.inner();
        let (code, reason) = match frame {
            Some(f) => (Some(f.code), Some(f.reason.as_str().to_owned())),
            None => (None, None),
        };
        tracing::info!(
            "{}: close frame from {} (code {code:?}, reason {reason:?})",
            self.peer,
            self.host.as_deref().unwrap_or("(unregistered)")
        );
        lock(&inner.state).push_event("closed", self.host.as_deref(), code, reason);
    }
}
