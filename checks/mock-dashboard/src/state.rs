//! The record: hosts, frames, events and violations, all under one lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::hub::{Remote, Stored};
use crate::link::ConnHandle;
use crate::op::Op;
use crate::{Event, Frame, HostInfo, MAX_EVENTS, MAX_FRAMES_PER_HOST, MAX_VIOLATIONS, Violation};

/// Heartbeat interval assumed for a host whose `register` carried no valid one.
pub(crate) const DEFAULT_INTERVAL: u64 = 30;

/// Violations logged before the log goes quiet (they are still recorded).
const MAX_LOGGED_VIOLATIONS: u64 = 1_000;

/// Everything recorded so far.
#[derive(Default)]
pub(crate) struct State {
    /// The last sequence number handed out.
    pub(crate) seq: u64,
    /// Hosts that registered at least once.
    pub(crate) hosts: BTreeMap<String, HostState>,
    /// Frames of connections that had not registered (yet).
    pub(crate) unregistered: FrameLog,
    pub(crate) events: VecDeque<Event>,
    pub(crate) violations: Vec<Violation>,
    /// All violations seen, including those not kept.
    pub(crate) violations_seen: u64,
    /// Every operation, oldest first (bounded by [`crate::lifecycle::MAX_OPS`]).
    pub(crate) ops: VecDeque<Op>,
    /// The last operation number handed out.
    pub(crate) op_seq: u64,
    /// The desired state, when the dashboard has one (upstream's version fetcher).
    pub(crate) remote: Option<Remote>,
}

/// One registered host.
pub(crate) struct HostState {
    /// Its live connection, if any.
    pub(crate) conn: Option<Arc<ConnHandle>>,
    pub(crate) heartbeat_interval: u64,
    /// Last frame from the live connection (or its registration).
    pub(crate) last_seen: Instant,
    pub(crate) log: FrameLog,
    /// What the hub's database holds (compartments, versions, pending command).
    pub(crate) stored: Stored,
    /// The id of the host's non-terminal operation.
    pub(crate) active_op: Option<String>,
}

impl HostState {
    pub(crate) fn new(now: Instant) -> Self {
        HostState {
            conn: None,
            heartbeat_interval: DEFAULT_INTERVAL,
            last_seen: now,
            log: FrameLog::default(),
            stored: Stored::default(),
            active_op: None,
        }
    }
}

/// The frames of one host, bounded by [`MAX_FRAMES_PER_HOST`].
#[derive(Default)]
pub(crate) struct FrameLog {
    pub(crate) frames: VecDeque<Frame>,
    pub(crate) output_count: u64,
}

impl FrameLog {
    pub(crate) fn push(&mut self, frame: Frame) {
        if self.frames.len() >= MAX_FRAMES_PER_HOST {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// Index of the first frame with `seq > after`.
    fn start(&self, after: u64) -> usize {
        self.frames.partition_point(|f| f.seq <= after)
    }
}

impl State {
    /// Hand out the next sequence number.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Record an event and return its sequence number.
    pub(crate) fn push_event(
        &mut self,
        kind: &str,
        host: Option<&str>,
        code: Option<u16>,
        reason: Option<String>,
    ) -> u64 {
        let seq = self.next_seq();
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq,
            kind: kind.to_owned(),
            host: host.map(str::to_owned),
            code,
            reason,
        });
        seq
    }

    /// Record (and log) a violation of the frame `seq`.
    pub(crate) fn push_violation(&mut self, host: Option<&str>, seq: u64, message: String) {
        self.violations_seen += 1;
        let who = host.unwrap_or("(unregistered)");
        if self.violations_seen <= MAX_LOGGED_VIOLATIONS {
            tracing::warn!("protocol violation by {who} (frame {seq}): {message}");
        } else if self.violations_seen == MAX_LOGGED_VIOLATIONS + 1 {
            tracing::warn!("more protocol violations: recorded, no longer logged");
        }
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation {
                host: host.map(str::to_owned),
                seq,
                message,
            });
        }
    }

    fn log(&self, host: &str) -> Option<&FrameLog> {
        if host.is_empty() {
            Some(&self.unregistered)
        } else {
            self.hosts.get(host).map(|h| &h.log)
        }
    }

    /// Frames of `host` with `seq > after`, optionally only of `kind`.
    pub(crate) fn frames(&self, host: &str, kind: Option<&str>, after: u64) -> Vec<Frame> {
        let Some(log) = self.log(host) else {
            return Vec::new();
        };
        log.frames
            .range(log.start(after)..)
            .filter(|f| kind.is_none_or(|k| f.kind == k))
            .cloned()
            .collect()
    }

    /// The first frame of `host` of `kind` with `seq > after`, and the highest
    /// seq looked at (so the next search can start there).
    pub(crate) fn first_frame(&self, host: &str, kind: &str, after: u64) -> (Option<Frame>, u64) {
        let Some(log) = self.log(host) else {
            return (None, after);
        };
        let mut scanned = after;
        for f in log.frames.range(log.start(after)..) {
            if f.kind == kind {
                return (Some(f.clone()), scanned);
            }
            scanned = f.seq;
        }
        (None, scanned)
    }

    pub(crate) fn output_count(&self, host: &str) -> u64 {
        self.log(host).map_or(0, |l| l.output_count)
    }

    /// What the dashboard shows of every host (`dashboard_version` decides
    /// the Agent compartment).
    pub(crate) fn host_infos(&self, dashboard_version: &str) -> Vec<HostInfo> {
        let now = Instant::now();
        let remote = self.remote.as_ref();
        self.hosts
            .iter()
            .map(|(name, h)| {
                let ago = now.saturating_duration_since(h.last_seen);
                let connected = h.conn.is_some();
                HostInfo {
                    hostname: name.clone(),
                    connected,
                    // upstream hub.go: online from register until the socket goes
                    online: connected,
                    heartbeat_interval: h.heartbeat_interval,
                    last_seen_ms_ago: u64::try_from(ago.as_millis()).unwrap_or(u64::MAX),
                    agent_version: h.stored.agent_version.clone(),
                    agent_outdated: h.stored.agent_outdated(dashboard_version),
                    generation: h.stored.generation.clone(),
                    pending_command: h.stored.pending_command.clone(),
                    operation: self.active(name).cloned(),
                    stored: h.stored.stored_view(remote, dashboard_version),
                    row: h.stored.row_view(remote, dashboard_version),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(seq: u64, kind: &str) -> Frame {
        Frame {
            seq,
            kind: kind.into(),
            payload: serde_json::Value::Null,
            received: Instant::now(),
        }
    }

    #[test]
    fn frames_filter_and_first_frame() {
        let mut st = State::default();
        for (seq, kind) in [(1, "a"), (3, "b"), (5, "a"), (8, "b")] {
            st.unregistered.push(frame(seq, kind));
        }
        let seqs = |v: Vec<Frame>| v.iter().map(|f| f.seq).collect::<Vec<_>>();
        assert_eq!(seqs(st.frames("", None, 0)), [1, 3, 5, 8]);
        assert_eq!(seqs(st.frames("", Some("a"), 0)), [1, 5]);
        assert_eq!(seqs(st.frames("", None, 3)), [5, 8]);
        assert_eq!(seqs(st.frames("", Some("b"), 4)), [8]);
        assert!(st.frames("nobody", None, 0).is_empty());
        let (f, _) = st.first_frame("", "b", 3);
        assert_eq!(f.map(|f| f.seq), Some(8));
        let (f, scanned) = st.first_frame("", "c", 0);
        assert!(f.is_none());
        assert_eq!(scanned, 8);
    }

    #[test]
    fn online_means_connected() {
        let mut st = State::default();
        let now = Instant::now();
        let conn = Arc::new(ConnHandle {
            id: 1,
            out: tokio::sync::mpsc::unbounded_channel().0,
            paused: tokio::sync::watch::channel(false).0,
            kill: tokio::sync::watch::channel(false).0,
        });
        for (name, ago, connected) in [("fresh", 2, true), ("stale", 4, true), ("gone", 0, false)] {
            let mut h = HostState::new(now);
            h.heartbeat_interval = 1;
            h.last_seen = now.checked_sub(Duration::from_secs(ago)).unwrap_or(now);
            h.conn = connected.then(|| Arc::clone(&conn));
            st.hosts.insert(name.to_owned(), h);
        }
        let infos = st.host_infos("3.1.5");
        let by_name = |n: &str| infos.iter().find(|h| h.hostname == n).cloned();
        let fresh = by_name("fresh").expect("fresh");
        assert!(fresh.connected && fresh.online);
        assert!(fresh.last_seen_ms_ago >= 2000);
        // no "3 × interval" rule (hub.go): connected is online
        let stale = by_name("stale").expect("stale");
        assert!(stale.connected && stale.online);
        let gone = by_name("gone").expect("gone");
        assert!(!gone.connected && !gone.online);
        assert_eq!(
            infos
                .iter()
                .map(|h| h.hostname.as_str())
                .collect::<Vec<_>>(),
            ["fresh", "gone", "stale"]
        );
    }

    #[test]
    fn events_are_bounded() {
        let mut st = State::default();
        for _ in 0..MAX_EVENTS + 5 {
            st.push_event("connected", Some("h"), None, None);
        }
        assert_eq!(st.events.len(), MAX_EVENTS);
        assert_eq!(st.events.front().map(|e| e.seq), Some(6));
    }
}
