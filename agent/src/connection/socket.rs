//! The socket side of a connection: the reader task, guarded writes raced
//! against the read deadline, the close handshake, and what a session ends
//! with.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::outbound::Outbound;
use crate::protocol::{Incoming, IncomingError, Outgoing, parse_incoming};

/// How long a shutdown waits for the dashboard's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// What the connection hands incoming commands to.
pub type CommandSink = Arc<dyn Fn(Incoming) + Send + Sync>;

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// The process's exit status.
    pub code: i32,
    /// Close reason sent to the dashboard.
    pub reason: &'static str,
}

#[derive(Debug)]
pub(super) enum SessionEnd {
    Stopped(Stop),
    Lost(String),
}

pub(super) enum ReaderEvent {
    Registered,
    Closed(Option<CloseFrame>),
    Failed(String),
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The read deadline: `limit` after the last frame heard.
pub(super) struct Deadline {
    pub(super) started: Instant,
    pub(super) heard: Arc<AtomicU64>,
    pub(super) limit: Duration,
}

impl Deadline {
    pub(super) fn at(&self) -> Instant {
        self.started + Duration::from_millis(self.heard.load(Ordering::Relaxed)) + self.limit
    }

    /// Resolves once nothing was heard for `limit`.
    pub(super) async fn expired(&self) {
        loop {
            let at = self.at();
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

pub(super) fn text(frame: &Outgoing) -> Message {
    Message::text(frame.to_json())
}

pub(super) fn lost(ev: Option<ReaderEvent>) -> SessionEnd {
    match ev {
        Some(ReaderEvent::Closed(Some(frame))) => SessionEnd::Lost(format!(
            "the dashboard closed the connection ({} {})",
            u16::from(frame.code),
            frame.reason
        )),
        Some(ReaderEvent::Closed(None)) => {
            SessionEnd::Lost("the dashboard closed the connection".into())
        }
        Some(ReaderEvent::Failed(why)) => SessionEnd::Lost(why),
        Some(ReaderEvent::Registered) => SessionEnd::Lost("unexpected `registered`".into()),
        None => SessionEnd::Lost("the connection ended".into()),
    }
}

pub(super) async fn wait_stop(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Runs a write, giving up when the read deadline passes or the reader fails.
pub(super) async fn guarded<F>(
    write: F,
    deadline: &Deadline,
    events: &mut mpsc::Receiver<ReaderEvent>,
) -> Result<(), SessionEnd>
where
    F: Future<Output = Result<(), WsError>>,
{
    tokio::select! {
        r = write => r.map_err(|e| SessionEnd::Lost(format!("write failed: {e}"))),
        ev = events.recv() => Err(lost(ev)),
        _ = deadline.expired() => Err(SessionEnd::Lost("the dashboard stopped reading".into())),
    }
}

pub(super) async fn write_all(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    frames: Vec<Message>,
    deadline: &Deadline,
    events: &mut mpsc::Receiver<ReaderEvent>,
) -> Result<(), SessionEnd> {
    let work = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    guarded(work, deadline, events).await
}

pub(super) async fn close(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    events: &mut mpsc::Receiver<ReaderEvent>,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    };
    let wait = async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // wait for the dashboard's close reply (or the socket's end)
        while let Some(ev) = events.recv().await {
            if matches!(ev, ReaderEvent::Closed(_) | ReaderEvent::Failed(_)) {
                return;
            }
        }
    };
    if tokio::time::timeout(CLOSE_WAIT, wait).await.is_err() {
        tracing::warn!("the dashboard did not answer the close within 5 s");
    }
}

pub(super) async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Socket>,
    started: Instant,
    heard: Arc<AtomicU64>,
    events: mpsc::Sender<ReaderEvent>,
    on_command: CommandSink,
    out: Arc<Outbound>,
) {
    loop {
        let msg = match stream.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(WsError::Capacity(e))) => {
                let _ = events
                    .send(ReaderEvent::Failed(format!(
                        "oversized frame from the dashboard: {e}"
                    )))
                    .await;
                return;
            }
            Some(Err(e)) => {
                let _ = events
                    .send(ReaderEvent::Failed(format!("read failed: {e}")))
                    .await;
                return;
            }
            None => {
                let _ = events
                    .send(ReaderEvent::Failed("the connection ended".into()))
                    .await;
                return;
            }
        };
        heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match msg {
            Message::Text(text) => match parse_incoming(&text) {
                Ok(Incoming::Registered { .. }) => {
                    let _ = events.send(ReaderEvent::Registered).await;
                }
                Ok(other) => on_command(other),
                Err(IncomingError::UnknownType(kind)) => {
                    tracing::warn!("ignoring a frame of unknown type {kind:?}");
                }
                Err(e) => tracing::warn!("ignoring a {e}"),
            },
            Message::Binary(_) => tracing::warn!("ignoring a binary frame"),
            Message::Close(frame) => {
                let _ = events.send(ReaderEvent::Closed(frame)).await;
            }
            // the dashboard read everything written before our ping
            Message::Pong(data) => out.pong(&data),
            Message::Ping(_) | Message::Frame(_) => {}
        }
    }
}
