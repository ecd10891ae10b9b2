//! Lines of output on their way to the writer, each already its `output`
//! frame's JSON text.
//!
//! The lines of one chunk (one pipe read) are written into one buffer and
//! handed over as slices of it ([`LineBatch`]): a fast child's thousands of
//! lines per read cost one allocation, not one each.

use bytes::Bytes;

use crate::protocol::{OUTPUT_HEAD, Stream, output_json, push_json_str, push_output_tail};

/// One line of output on its way to the writer: its `output` frame's JSON
/// text (the writer sends it as it is).
#[derive(Debug)]
pub struct Line {
    frame: Bytes,
}

impl Line {
    /// The line `text` of `command` on `stream`.
    pub fn new(command: &str, stream: Stream, text: &str) -> Line {
        Line {
            frame: Bytes::from(output_json(command, stream, text)),
        }
    }

    /// What the line costs while queued, for the lane's byte bound: its frame.
    pub fn weight(&self) -> usize {
        self.frame.len()
    }

    /// The `output` frame's JSON text (valid UTF-8: written from `&str`s, cut
    /// at frame boundaries).
    pub fn into_frame_bytes(self) -> Bytes {
        self.frame
    }

    /// The frame read back (tests look at what the writer would send).
    #[cfg(test)]
    pub fn output(&self) -> crate::protocol::Output {
        let v: serde_json::Value = serde_json::from_slice(&self.frame).expect("an output frame");
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
    }

    /// The frame read back, as the writer's other frames (tests).
    #[cfg(test)]
    pub fn into_frame(self) -> crate::protocol::Outgoing {
        crate::protocol::Outgoing::Output(self.output())
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

    /// The lines, in order, each a slice of the one buffer.
    pub fn into_lines(self) -> impl Iterator<Item = Line> {
        let all = Bytes::from(self.buf);
        let mut start = 0;
        self.ends.into_iter().map(move |end| {
            let frame = all.slice(start..end);
            start = end;
            Line { frame }
        })
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
        let lines: Vec<Line> = batch.into_lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, text) in lines.iter().zip(texts) {
            assert_eq!(
                line.frame,
                output_json("test", Stream::Stderr, text).as_bytes()
            );
            assert_eq!(line.weight(), line.frame.len());
            assert_eq!(line.output().line, text);
        }
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
