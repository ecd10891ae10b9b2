//! What the rest of the dashboard holds of a live connection, and the work
//! its writer task takes: shared by the connection (`conn.rs`), the hosts'
//! state (`state.rs`) and the lifecycle (`lifecycle.rs`), which send frames
//! to an agent through it.

use axum::extract::ws::Message;
use tokio::sync::{mpsc, oneshot, watch};

/// What the rest of the dashboard holds of a live connection.
pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    /// Frames to write.
    pub(crate) out: mpsc::UnboundedSender<Outgoing>,
    /// True: do not read the socket.
    pub(crate) paused: watch::Sender<bool>,
    /// True: drop the socket now, without a close frame.
    pub(crate) kill: watch::Sender<bool>,
}

/// Acknowledgement of a write: `Err` carries the write error.
pub(crate) type Ack = Option<oneshot::Sender<Result<(), String>>>;

/// Work for the writer task.
pub(crate) enum Outgoing {
    /// Write this frame.
    Message(Message, Ack),
    /// Write a close frame, wait for the agent's answer, then drop the socket.
    Close {
        code: u16,
        reason: &'static str,
        ack: Ack,
    },
}
