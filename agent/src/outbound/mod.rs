//! The lanes of frames from the agent's tasks to the connection's writer.
//!
//! - **control**: `command_rejected` and other small, urgent frames. Served
//!   first. Bounded; a frame that does not fit is dropped with a warning (it can
//!   only fill while the dashboard is stuck, and then nobody reads it anyway).
//! - **output**: one item per pipe read of command output (its lines, up
//!   to 256) or per line the agent writes itself. Bounded. While the
//!   writer makes progress a full lane makes the producer wait (the child feels
//!   ordinary pipe backpressure); once the writer has made no progress for the
//!   stall timeout, lines are dropped and counted, and the writer later sends a
//!   marker line with the count. A stuck dashboard never stalls a build.
//! - **outbox**: `status`, `test_progress` and `operation_progress`. Never
//!   dropped (bounded by the number of commands, with a cap), delivered in
//!   order after every output line that was queued before them, and kept
//!   across reconnects: a command that ends while the dashboard is
//!   unreachable is reported after re-registering. A written frame counts as
//!   delivered only once the dashboard answered a ping written after it (the
//!   hub reads in order, so the pong proves it read the frame); until then it
//!   is *unconfirmed*, and a connection that dies puts it back at the front of
//!   the outbox ([`Outbound::requeue_unconfirmed`]) to be written again after
//!   the next registration. Statuses not yet confirmed are also kept in the
//!   state directory (`commands`' caller persists [`Outbound::undelivered`]).
//!
//! Heartbeats do not pass through here: the writer builds them itself on its
//! own ticker, ahead of everything else.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::protocol::{Outgoing, Output, Stream};

mod line;
use crate::util::lock;
pub use line::{BATCH_LINES, LineBatch, Lines};

/// Capacity of the control lane.
pub const CONTROL_CAPACITY: usize = 64;
/// Capacity of the output lane, in items (a pipe read's lines, or one line).
pub const OUTPUT_CAPACITY: usize = 8192;
/// About how much output text the lane holds at most.
pub const OUTPUT_BYTES: usize = 2 * 1024 * 1024;
/// Most frames kept in the outbox; the oldest is dropped past this.
pub const OUTBOX_CAPACITY: usize = 256;

/// The producers' side, shared by every task that sends frames.
#[derive(Debug)]
pub struct Outbound {
    control: mpsc::Sender<Outgoing>,
    output: mpsc::Sender<Lines>,
    outbox: Mutex<Outbox>,
    outbox_changed: Notify,
    /// Woken when frames were confirmed.
    confirmed: Notify,
    /// Woken when the undelivered statuses changed (queued or confirmed).
    undelivered: Notify,
    stall_timeout: Duration,
    connected: AtomicBool,
    enqueued: AtomicU64,
    consumed: AtomicU64,
    dropped: AtomicU64,
    /// Lines dropped and bytes written, since the process started.
    dropped_total: AtomicU64,
    bytes_total: AtomicU64,
    queued_bytes: AtomicUsize,
    progress: Notify,
    stalled: AtomicBool,
    stall_mark: AtomicU64,
    last_command: Mutex<String>,
}

/// [`Outbound::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Output lines written to the dashboard.
    pub lines: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Output lines dropped.
    pub dropped: u64,
    /// Output bytes waiting to be written.
    pub queued_bytes: u64,
    /// Frames (statuses, …) waiting in the outbox.
    pub outbox: u64,
}

/// The consumers' side, owned by the connection manager.
#[derive(Debug)]
pub struct OutboundRx {
    /// Control frames.
    pub control: mpsc::Receiver<Outgoing>,
    /// Output lines.
    pub output: mpsc::Receiver<Lines>,
}

/// Makes the lanes.
pub fn lanes(stall_timeout: Duration) -> (std::sync::Arc<Outbound>, OutboundRx) {
    let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
    let (output_tx, output_rx) = mpsc::channel(OUTPUT_CAPACITY);
    let outbound = Outbound {
        control: control_tx,
        output: output_tx,
        outbox: Mutex::new(Outbox::default()),
        outbox_changed: Notify::new(),
        confirmed: Notify::new(),
        undelivered: Notify::new(),
        stall_timeout,
        connected: AtomicBool::new(false),
        enqueued: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        dropped_total: AtomicU64::new(0),
        bytes_total: AtomicU64::new(0),
        queued_bytes: AtomicUsize::new(0),
        progress: Notify::new(),
        stalled: AtomicBool::new(false),
        stall_mark: AtomicU64::new(0),
        last_command: Mutex::new(String::new()),
    };
    (
        std::sync::Arc::new(outbound),
        OutboundRx {
            control: control_rx,
            output: output_rx,
        },
    )
}

/// The outbox: frames waiting to be written, and frames written but not yet
/// confirmed by a pong.
#[derive(Debug, Default)]
struct Outbox {
    /// `(output lines enqueued before it, id, frame)`, in order.
    queue: VecDeque<(u64, u64, Outgoing)>,
    /// The id of the frame handed out to be written ([`Outbound::outbox_ready`])
    /// and not yet done: never evicted.
    in_flight: Option<u64>,
    /// The next frame's id.
    next_id: u64,
    /// Written on this connection, not yet confirmed, in order.
    unconfirmed: VecDeque<Outgoing>,
    /// Frames ever moved to `unconfirmed` / ever confirmed (on this connection).
    written: u64,
    confirmed: u64,
    /// Confirmation pings written: `(number, written when it was written)`.
    pings: VecDeque<(u64, u64)>,
    next_ping: u64,
}

/// The payload prefix of the agent's confirmation pings.
const ACK_PREFIX: &[u8] = b"nixfleet-ack:";
/// Confirmation pings remembered at most (older ones are forgotten; a later
/// pong confirms everything before it anyway).
const MAX_PINGS: usize = 64;

impl Outbox {
    fn len(&self) -> usize {
        self.queue.len() + self.unconfirmed.len()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Makes room for one more frame when the outbox is full; returns
    /// whether `incoming` is to be queued. The frame being written is never
    /// evicted, and a status never for a progress frame: the oldest progress
    /// frame goes first; a new progress frame is dropped when only statuses
    /// are left; only a new status evicts the oldest status.
    fn make_room(&mut self, incoming: &Outgoing) -> bool {
        if self.len() < OUTBOX_CAPACITY {
            return true;
        }
        let in_flight = self.in_flight;
        let evictable = |status: bool| {
            move |(_, id, frame): &(u64, u64, Outgoing)| {
                Some(*id) != in_flight && matches!(frame, Outgoing::Status(_)) == status
            }
        };
        if let Some(i) = self.queue.iter().position(evictable(false)) {
            if let Some((_, _, old)) = self.queue.remove(i) {
                tracing::warn!("outbox full, dropping the oldest {} frame", old.kind());
            }
            return true;
        }
        if !matches!(incoming, Outgoing::Status(_)) {
            tracing::warn!(
                "outbox full of statuses, dropping a new {} frame",
                incoming.kind()
            );
            return false;
        }
        if let Some(i) = self.queue.iter().position(evictable(true)) {
            tracing::warn!("outbox full of statuses, dropping the oldest one");
            self.queue.remove(i);
        }
        true
    }
}

impl Outbound {
    /// Queues a control frame; drops it with a warning if the lane is full.
    pub fn control(&self, frame: Outgoing) {
        if let Err(e) = self.control.try_send(frame) {
            tracing::warn!("control lane full, dropping a {} frame", kind_of(&e));
        }
    }

    /// Queues a frame that must not be lost (`status`, `test_progress`): it is
    /// written after every output line queued before it, on this connection or
    /// the next.
    pub fn reliable(&self, frame: Outgoing) {
        let after = self.enqueued.load(Ordering::SeqCst);
        let is_status = matches!(frame, Outgoing::Status(_));
        {
            let mut outbox = lock(&self.outbox);
            if outbox.make_room(&frame) {
                let id = outbox.id();
                outbox.queue.push_back((after, id, frame));
            }
        }
        self.outbox_changed.notify_one();
        if is_status {
            self.undelivered.notify_one();
        }
    }

    /// Puts statuses an earlier agent process could not deliver first in the
    /// outbox (at start, before anything else is queued).
    pub fn restore(&self, frames: Vec<Outgoing>) {
        let mut outbox = lock(&self.outbox);
        for frame in frames.into_iter().rev() {
            let id = outbox.id();
            outbox.queue.push_front((0, id, frame));
        }
        drop(outbox);
        self.outbox_changed.notify_one();
    }

    /// The statuses not yet confirmed by the dashboard (queued or written),
    /// in order: what must survive a restart.
    pub fn undelivered(&self) -> Vec<crate::protocol::Status> {
        let outbox = lock(&self.outbox);
        outbox
            .unconfirmed
            .iter()
            .chain(outbox.queue.iter().map(|(_, _, f)| f))
            .filter_map(|f| match f {
                Outgoing::Status(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Resolves when statuses were queued or confirmed (the undelivered set
    /// may have changed).
    pub async fn undelivered_changed(&self) {
        self.undelivered.notified().await;
    }

    /// Sends lines of output (one item of the lane), waiting while the writer
    /// makes progress and dropping them (counted) when it does not. Never
    /// waits longer than the stall timeout for one item, and not at all while
    /// disconnected or stalled.
    ///
    /// The lane is bounded twice: by [`OUTPUT_CAPACITY`] items and by about
    /// [`OUTPUT_BYTES`] of frames (a child printing 64 KiB lines cannot make
    /// the queue hold half a gigabyte).
    pub async fn lines(&self, lines: Lines) {
        let (weight, count) = (lines.weight(), lines.count() as u64);
        let mut lines = lines;
        if self.has_room(weight) {
            match self.output.try_send(lines) {
                Ok(()) => return self.admitted(weight, count),
                Err(mpsc::error::TrySendError::Closed(_)) => return self.drop_lines(count),
                Err(mpsc::error::TrySendError::Full(l)) => lines = l,
            }
        }
        if !self.connected.load(Ordering::Relaxed) {
            return self.drop_lines(count);
        }
        // Already found stalled, and still no progress since: drop at once.
        if self.stalled.load(Ordering::Relaxed)
            && self.consumed.load(Ordering::Relaxed) == self.stall_mark.load(Ordering::Relaxed)
        {
            return self.drop_lines(count);
        }
        self.stalled.store(false, Ordering::Relaxed);
        // Wait for room while the writer keeps consuming; give up after a
        // whole stall timeout without any progress.
        let mut seen = self.consumed.load(Ordering::Relaxed);
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            // registered before looking, so no wake-up is lost in between
            progress.as_mut().enable();
            if self.has_room(weight) {
                match self.output.try_send(lines) {
                    Ok(()) => return self.admitted(weight, count),
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                    Err(mpsc::error::TrySendError::Full(l)) => lines = l,
                }
            }
            if tokio::time::timeout(self.stall_timeout, progress)
                .await
                .is_err()
            {
                let now = self.consumed.load(Ordering::Relaxed);
                if now == seen || !self.connected.load(Ordering::Relaxed) {
                    self.stall_mark.store(now, Ordering::Relaxed);
                    self.stalled.store(true, Ordering::Relaxed);
                    break;
                }
                seen = now;
            }
        }
        self.drop_lines(count);
    }

    /// Room for `weight` more bytes (a line alone in an empty lane always fits).
    fn has_room(&self, weight: usize) -> bool {
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        queued == 0 || queued + weight <= OUTPUT_BYTES
    }

    fn admitted(&self, weight: usize, count: u64) {
        self.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        self.enqueued.fetch_add(count, Ordering::SeqCst);
    }

    fn drop_lines(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        self.dropped_total.fetch_add(count, Ordering::Relaxed);
    }

    /// Remembers the running command's name (for the dropped-lines marker).
    pub fn set_command(&self, name: &str) {
        let mut last = lock(&self.last_command);
        last.clear();
        last.push_str(name);
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    // ---- the writer's side ----

    /// Whether the dashboard is connected (registered) now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Marks the connection up or down (down makes full lanes drop at once).
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Called by the writer for the output it took from the lane: how many
    /// lines, and their [`Lines::weight`] in all.
    pub fn note_consumed(&self, n: u64, weight: usize) {
        self.queued_bytes.fetch_sub(
            weight.min(self.queued_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.consumed.fetch_add(n, Ordering::SeqCst);
        self.bytes_total.fetch_add(weight as u64, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// What the metrics count: output lines and bytes written to the
    /// dashboard and lines dropped since the process started; output bytes
    /// queued and frames in the outbox now.
    pub fn counters(&self) -> Counters {
        Counters {
            lines: self.consumed.load(Ordering::Relaxed),
            bytes: self.bytes_total.load(Ordering::Relaxed),
            dropped: self.dropped_total.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed) as u64,
            outbox: lock(&self.outbox).queue.len() as u64,
        }
    }

    /// Resolves when the outbox may have become non-empty.
    pub async fn outbox_changed(&self) {
        self.outbox_changed.notified().await;
    }

    /// The next outbox frame and its id if every output line queued before it
    /// has been consumed; a clone, so that it is only removed by
    /// [`Outbound::outbox_done`] after it was written. Until then it is in
    /// flight: a full outbox never evicts it.
    pub fn outbox_ready(&self) -> Option<(u64, Outgoing)> {
        let consumed = self.consumed.load(Ordering::SeqCst);
        let mut outbox = lock(&self.outbox);
        let ready = match outbox.queue.front() {
            Some((after, id, frame)) if *after <= consumed => Some((*id, frame.clone())),
            _ => None,
        };
        outbox.in_flight = ready.as_ref().map(|(id, _)| *id);
        ready
    }

    /// True if the outbox holds a frame still waiting for earlier output.
    pub fn outbox_waiting(&self) -> bool {
        !lock(&self.outbox).queue.is_empty()
    }

    /// After writing the frame [`Outbound::outbox_ready`] returned as `id`: it
    /// is now unconfirmed until a pong confirms it. Only that very frame moves.
    pub fn outbox_done(&self, id: u64) {
        let mut outbox = lock(&self.outbox);
        outbox.in_flight = None;
        if outbox
            .queue
            .front()
            .is_some_and(|(_, front, _)| *front == id)
            && let Some((_, _, frame)) = outbox.queue.pop_front()
        {
            outbox.unconfirmed.push_back(frame);
            outbox.written += 1;
        }
    }

    /// The payload of a ping to write now so that the frames written since
    /// the last one get confirmed; `None` when nothing waits for one.
    pub fn confirmation_ping(&self) -> Option<Vec<u8>> {
        let mut outbox = lock(&self.outbox);
        let written = outbox.written;
        if outbox.unconfirmed.is_empty() || outbox.pings.back().is_some_and(|p| p.1 == written) {
            return None;
        }
        outbox.next_ping += 1;
        let n = outbox.next_ping;
        if outbox.pings.len() >= MAX_PINGS {
            outbox.pings.pop_front();
        }
        outbox.pings.push_back((n, written));
        let mut payload = ACK_PREFIX.to_vec();
        payload.extend_from_slice(n.to_string().as_bytes());
        Some(payload)
    }

    /// A pong arrived: the frames written before the ping it answers are
    /// delivered.
    pub fn pong(&self, payload: &[u8]) {
        let Some(n) = payload
            .strip_prefix(ACK_PREFIX)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u64>().ok())
        else {
            return;
        };
        let mut outbox = lock(&self.outbox);
        let mut upto = None;
        while let Some(&(ping, written)) = outbox.pings.front() {
            if ping > n {
                break;
            }
            upto = Some(written);
            outbox.pings.pop_front();
        }
        let Some(upto) = upto else {
            return;
        };
        let mut any = false;
        while outbox.confirmed < upto {
            if outbox.unconfirmed.pop_front().is_none() {
                break;
            }
            outbox.confirmed += 1;
            any = true;
        }
        drop(outbox);
        if any {
            self.confirmed.notify_waiters();
            self.undelivered.notify_one();
        }
    }

    /// How many written frames wait for a pong.
    pub fn unconfirmed(&self) -> usize {
        lock(&self.outbox).unconfirmed.len()
    }

    /// Resolves when frames were confirmed; enable it
    /// before looking at [`Outbound::unconfirmed`] so that no wake-up is lost.
    pub fn confirmation(&self) -> tokio::sync::futures::Notified<'_> {
        self.confirmed.notified()
    }

    /// The connection ended: whatever was written and not confirmed goes
    /// back to the front of the outbox, in order, to be written again.
    pub fn requeue_unconfirmed(&self) {
        let mut outbox = lock(&self.outbox);
        let back: Vec<Outgoing> = outbox.unconfirmed.drain(..).collect();
        if !back.is_empty() {
            tracing::info!(
                "{} frame(s) written but not confirmed by the dashboard are sent again after reconnecting",
                back.len()
            );
        }
        for frame in back.into_iter().rev() {
            let id = outbox.id();
            outbox.queue.push_front((0, id, frame));
        }
        outbox.pings.clear();
        outbox.written = 0;
        outbox.confirmed = 0;
        drop(outbox);
        self.outbox_changed.notify_one();
    }

    /// Takes the dropped count and returns the marker line for it, if any.
    pub fn take_drop_marker(&self) -> Option<Outgoing> {
        let n = self.dropped.swap(0, Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        tracing::warn!("{n} output lines were dropped: the dashboard was not keeping up");
        let command = lock(&self.last_command).clone();
        Some(Outgoing::Output(Output {
            line: format!(
                "[nixfleet-agent] {n} output line(s) dropped: the dashboard was not keeping up (the full output is in the agent's log)"
            ),
            stream: Stream::Stderr,
            command,
            is_error: true,
        }))
    }
}

fn kind_of(e: &mpsc::error::TrySendError<Outgoing>) -> &'static str {
    match e {
        mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Outcome, Status};

    fn status(n: i32) -> Outgoing {
        Outgoing::Status(Status {
            status: Outcome::Ok,
            command: "pull".into(),
            exit_code: n,
            message: String::new(),
            generation: String::new(),
        })
    }

    fn line(text: &str) -> Lines {
        Lines::new("test", Stream::Stdout, text)
    }

    /// The frame the writer would take now.
    fn ready(out: &Outbound) -> Option<Outgoing> {
        out.outbox_ready().map(|(_, frame)| frame)
    }

    /// The writer takes the next frame and writes it.
    fn done(out: &Outbound) {
        let (id, _) = out.outbox_ready().expect("a frame to write");
        out.outbox_done(id);
    }

    #[tokio::test]
    async fn status_waits_for_earlier_output() {
        let (out, mut rx) = lanes(Duration::from_secs(5));
        out.set_connected(true);
        out.lines(line("a")).await;
        out.lines(line("b")).await;
        out.reliable(status(0));
        assert!(ready(&out).is_none(), "status overtook output");
        assert!(rx.output.recv().await.is_some());
        out.note_consumed(1, 5);
        assert!(ready(&out).is_none());
        assert!(rx.output.recv().await.is_some());
        out.note_consumed(1, 5);
        assert_eq!(ready(&out), Some(status(0)));
        // not removed until written
        assert_eq!(ready(&out), Some(status(0)));
        done(&out);
        assert!(ready(&out).is_none());
        // written, not yet confirmed: still undelivered
        assert_eq!(out.unconfirmed(), 1);
        assert_eq!(out.undelivered().len(), 1);
    }

    #[test]
    fn a_pong_confirms_what_was_written_before_its_ping() {
        let (out, _rx) = lanes(Duration::from_secs(1));
        out.reliable(status(1));
        out.reliable(status(2));
        done(&out);
        let first = out.confirmation_ping().expect("a ping for status 1");
        assert!(out.confirmation_ping().is_none(), "one ping per batch");
        done(&out);
        let second = out.confirmation_ping().expect("a ping for status 2");
        out.pong(b"");
        out.pong(b"something else");
        assert_eq!(out.unconfirmed(), 2, "foreign pongs confirm nothing");
        out.pong(&first);
        assert_eq!(out.unconfirmed(), 1);
        out.pong(&second);
        assert_eq!(out.unconfirmed(), 0);
        assert!(out.undelivered().is_empty());
    }

    #[test]
    fn unconfirmed_frames_go_back_first_when_the_connection_ends() {
        let (out, _rx) = lanes(Duration::from_secs(1));
        out.reliable(status(1));
        out.reliable(status(2));
        done(&out);
        out.confirmation_ping();
        out.requeue_unconfirmed();
        assert_eq!(out.unconfirmed(), 0);
        assert_eq!(ready(&out), Some(status(1)));
        done(&out);
        assert_eq!(ready(&out), Some(status(2)));
        // a pong of the old connection's ping confirms nothing now
        out.pong(b"nixfleet-ack:1");
        assert_eq!(out.unconfirmed(), 1);
        out.restore(vec![status(0)]);
        assert_eq!(ready(&out), Some(status(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_writer_drops_and_counts() {
        let (out, _rx) = lanes(Duration::from_millis(100));
        out.set_connected(true);
        for i in 0..OUTPUT_CAPACITY {
            out.lines(line(&i.to_string())).await;
        }
        assert_eq!(out.dropped(), 0);
        // Lane full, nobody consumes: the next line waits one stall timeout, then drops.
        out.lines(line("x")).await;
        assert_eq!(out.dropped(), 1);
        // Still stalled: further lines drop without waiting again.
        let before = tokio::time::Instant::now();
        out.lines(line("y")).await;
        assert_eq!(tokio::time::Instant::now(), before);
        assert_eq!(out.dropped(), 2);
        let marker = out.take_drop_marker().expect("marker");
        match marker {
            Outgoing::Output(o) => assert!(o.line.contains("2 output line(s) dropped")),
            other => panic!("{other:?}"),
        }
        assert!(out.take_drop_marker().is_none());
    }

    #[tokio::test]
    async fn disconnected_full_lane_drops_at_once() {
        let (out, _rx) = lanes(Duration::from_secs(3600));
        for i in 0..OUTPUT_CAPACITY {
            out.lines(line(&i.to_string())).await;
        }
        out.lines(line("x")).await;
        assert_eq!(out.dropped(), 1);
    }

    #[test]
    fn outbox_is_bounded() {
        let (out, _rx) = lanes(Duration::from_secs(1));
        for i in 0..(OUTBOX_CAPACITY as i32 + 5) {
            out.reliable(status(i));
        }
        assert_eq!(ready(&out), Some(status(5)));
    }

    fn progress(current: u32) -> Outgoing {
        Outgoing::TestProgress(crate::protocol::TestProgress {
            current,
            total: 1000,
            passed: current,
            running: true,
            result: String::new(),
        })
    }

    #[test]
    fn a_full_outbox_never_evicts_the_frame_being_written_nor_a_status_for_progress() {
        let (out, _rx) = lanes(Duration::from_secs(1));
        out.reliable(status(0));
        // the writer takes the status; while it writes, the outbox fills up
        let (id, frame) = out.outbox_ready().unwrap();
        assert_eq!(frame, status(0));
        for i in 0..(OUTBOX_CAPACITY as u32 + 10) {
            out.reliable(progress(i));
        }
        out.reliable(status(1));
        // the frame written is the one that moves to unconfirmed
        out.outbox_done(id);
        assert_eq!(out.unconfirmed(), 1);
        let exit_codes: Vec<i32> = out.undelivered().iter().map(|s| s.exit_code).collect();
        assert_eq!(exit_codes, [0, 1], "both statuses kept");
        let mut queued = 0;
        while let Some((id, _)) = out.outbox_ready() {
            out.outbox_done(id);
            queued += 1;
        }
        assert!(queued < OUTBOX_CAPACITY, "{queued}");
    }

    #[test]
    fn a_done_for_a_frame_that_is_not_at_the_front_moves_nothing() {
        let (out, _rx) = lanes(Duration::from_secs(1));
        out.reliable(status(0));
        let (id, _) = out.outbox_ready().unwrap();
        out.outbox_done(id + 100);
        assert_eq!(out.unconfirmed(), 0, "nothing was written");
        assert_eq!(ready(&out), Some(status(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn long_lines_are_bounded_by_bytes() {
        let (out, mut rx) = lanes(Duration::from_millis(100));
        out.set_connected(true);
        let long = "x".repeat(64 * 1024);
        // far fewer lines than OUTPUT_CAPACITY, but 64 KiB each
        for _ in 0..100 {
            out.lines(line(&long)).await;
        }
        let queued = rx.output.len();
        assert!(
            queued * long.len() <= OUTPUT_BYTES + long.len(),
            "{queued} lines of 64 KiB queued"
        );
        assert_eq!(out.dropped(), (100 - queued) as u64);
        // the writer takes one: room again, and the stall is over
        let taken = rx.output.recv().await.unwrap();
        out.note_consumed(1, taken.weight());
        out.lines(line(&long)).await;
        assert_eq!(rx.output.len(), queued);
    }
}
