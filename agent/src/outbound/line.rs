//! Output on its way to the writer, each line already its `output` frame's
//! JSON text.
//!
//! The lines of one chunk (one pipe read) are written into one buffer
//! ([`LineBatch`]) and handed over as one item ([`Lines`]), whose frames the
//! writer sends as slices of it: a fast child's thousands of lines per read
//! cost one allocation and one pass through the lane, not one each.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{OUTPUT_HEAD, Stream, output_json, push_json_str, push_output_tail};

/// Output on its way to the writer: one line, or the lines of one pipe read
/// (up to [`BATCH_LINES`]), as their `output` frames' JSON text back to back
/// in one buffer (the writer sends each frame as it is). One item of the
/// output lane.
///
/// Its fields are private and it is made only from `String`s ([`Lines::new`],
/// [`LineBatch::into_lines`]): `buf` is valid UTF-8 and every end in `ends`
/// falls after a whole `&str` was written, so each frame is valid UTF-8.
#[derive(Debug)]
pub struct Lines {
    buf: Bytes,
    /// Where each frame ends in `buf`; `None`: `buf` is one frame.
    ends: Option<Vec<usize>>,
}

impl Lines {
    /// The one line `text` of `command` on `stream`.
    pub fn new(command: &str, stream: Stream, text: &str) -> Lines {
        Lines {
            buf: Bytes::from(output_json(command, stream, text)),
            ends: None,
        }
    }

    /// How many lines.
    pub fn count(&self) -> usize {
        self.ends.as_ref().map_or(1, Vec::len)
    }

    /// What the lines cost while queued, for the lane's byte bound: their
    /// frames (the buffer holds nothing else).
    pub fn weight(&self) -> usize {
        self.buf.len()
    }

    /// Each line's `output` frame, in order, as the text of a WebSocket
    /// message; slices of the one buffer, not validated again: the writer
    /// sends a million lines a second, and checking each frame's UTF-8 took
    /// 7 % of the agent's CPU per line (checks/budget.sh).
    pub fn into_frames(self) -> impl Iterator<Item = Utf8Bytes> {
        let Lines { buf, ends } = self;
        let ends = ends.unwrap_or_else(|| vec![buf.len()]);
        let mut start = 0;
        ends.into_iter().map(move |end| {
            let frame = buf.slice(start..end);
            start = end;
            // every frame of every test is checked
            debug_assert!(std::str::from_utf8(&frame).is_ok(), "a frame is UTF-8");
            // SAFETY: `buf` was a `String` and `end` is where a frame
            // ended after whole `&str`s were pushed (the type's invariant),
            // so `start..end` is valid UTF-8.
            unsafe { Utf8Bytes::from_bytes_unchecked(frame) }
        })
    }

    /// The frames read back (tests look at what the writer would send).
    #[cfg(test)]
    pub fn outputs(&self) -> Vec<crate::protocol::Output> {
        let lines = Lines {
            buf: self.buf.clone(),
            ends: self.ends.clone(),
        };
        lines
            .into_frames()
            .map(|frame| {
                let v: serde_json::Value = serde_json::from_str(&frame).expect("an output frame");
                let p = &v["payload"];
                let text = |k: &str| p[k].as_str().expect("a string field").to_string();
                crate::protocol::Output {
                    line: text("line"),
                    stream: match p["stream"].as_str() {
                        Some("stderr") => Stream::Stderr,
                        _ => Stream::Stdout,
                    },
                    command: text("command"),
                    is_error: p["is_error"].as_bool().expect("is_error"),
                }
            })
            .collect()
    }
}

/// Lines a [`LineBatch`] takes at most: its buffer stays in the tens of KiB
/// (below musl's threshold for a fresh `mmap` per allocation).
pub const BATCH_LINES: usize = 256;

/// The `output` frames of up to [`BATCH_LINES`] lines of `command` on
/// `stream`, written back to back into one buffer sized for them.
///
/// The buffer lives as long as any of its lines is queued, so it is sized
/// for the lines it gets, never more: a child printing one line per read
/// makes one small buffer per line, and the lane's byte bound (which counts
/// frames) stays the bound of the memory it holds.
#[derive(Debug)]
pub struct LineBatch {
    /// What follows the line in each frame (the same for all).
    tail: String,
    buf: String,
    ends: Vec<usize>,
}

impl LineBatch {
    /// An empty batch for `lines` lines of `bytes` bytes of text in all.
    pub fn new(command: &str, stream: Stream, lines: usize, bytes: usize) -> LineBatch {
        let mut tail = String::with_capacity(command.len() + 48);
        push_output_tail(&mut tail, command, stream);
        // the frame of a line that needs no escaping, exactly
        let per_line = OUTPUT_HEAD.len() + 2 + tail.len();
        LineBatch {
            buf: String::with_capacity(bytes + lines * per_line),
            tail,
            ends: Vec::with_capacity(lines),
        }
    }

    /// Adds the frame of one line.
    pub fn push(&mut self, text: &str) {
        self.buf.push_str(OUTPUT_HEAD);
        push_json_str(&mut self.buf, text);
        self.buf.push_str(&self.tail);
        self.ends.push(self.buf.len());
    }

    /// The lines, as one item of the lane.
    pub fn into_lines(self) -> Lines {
        Lines {
            buf: Bytes::from(self.buf),
            ends: Some(self.ends),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_each_line_its_own_frame_in_order() {
        let texts = ["one", "", "thrée \"3\""];
        let bytes = texts.iter().map(|t| t.len()).sum();
        let mut batch = LineBatch::new("test", Stream::Stderr, texts.len(), bytes);
        for text in texts {
            batch.push(text);
        }
        let lines = batch.into_lines();
        assert_eq!(lines.count(), 3);
        assert_eq!(
            lines.weight(),
            texts
                .iter()
                .map(|t| output_json("test", Stream::Stderr, t).len())
                .sum::<usize>()
        );
        let outputs = lines.outputs();
        let frames: Vec<Utf8Bytes> = lines.into_frames().collect();
        for ((frame, output), text) in frames.iter().zip(&outputs).zip(texts) {
            assert_eq!(frame.as_str(), output_json("test", Stream::Stderr, text));
            assert_eq!(output.line, text);
        }
        assert_eq!(frames.len(), 3);
        let one = Lines::new("test", Stream::Stdout, "x");
        assert_eq!(
            (one.count(), one.weight()),
            (1, output_json("test", Stream::Stdout, "x").len())
        );
        assert_eq!(one.into_frames().count(), 1);
    }

    #[test]
    fn a_batch_holds_no_more_memory_than_its_frames() {
        // one line per read, e.g. a build's progress: the buffer each queued
        // line keeps alive is that line's frame, not room for a full batch
        let mut batch = LineBatch::new("switch", Stream::Stdout, 1, 5);
        batch.push("hello");
        let frame = output_json("switch", Stream::Stdout, "hello");
        assert_eq!(batch.buf.capacity(), frame.len());
        let mut full = LineBatch::new("test", Stream::Stdout, BATCH_LINES, BATCH_LINES);
        for _ in 0..BATCH_LINES {
            full.push("x");
        }
        assert_eq!(
            full.buf.capacity(),
            full.buf.len(),
            "sized exactly, never grown"
        );
    }
}
