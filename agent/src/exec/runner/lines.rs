//! Output as lines: the bounded [`Splitter`] that cuts a byte stream into
//! lines without copying, and the [`Tail`] of the last lines kept for a
//! status message.

use std::collections::VecDeque;

/// Longest line sent or logged, in bytes; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;
/// Size of one read from a pipe or file.
pub const READ_CHUNK: usize = 64 * 1024;
/// Lines kept per stream for the status message.
pub const TAIL_LINES: usize = 12;
/// Longest line kept in a [`Tail`], in bytes.
pub const TAIL_LINE_BYTES: usize = 300;

/// Splits a byte stream into lines of at most `max` bytes without copying
/// them: lines are ranges into its buffer, valid until the next
/// [`Splitter::spare`].
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    start: usize,
    scan: usize,
    end: usize,
    max: usize,
    chunk: usize,
}

impl Splitter {
    /// A splitter for lines of at most `max` bytes, reading `chunk` bytes at a time.
    pub fn new(max: usize, chunk: usize) -> Splitter {
        let max = max.max(4);
        let chunk = chunk.max(1);
        Splitter {
            buf: vec![0; max + chunk],
            start: 0,
            scan: 0,
            end: 0,
            max,
            chunk,
        }
    }

    /// Room to read into (at least `chunk` bytes). Moves a pending partial line
    /// to the front, which invalidates earlier ranges.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < self.chunk && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scan -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`Splitter::spare`] as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete (or over-long) line, as a range for [`Splitter::get`].
    pub fn next_line(&mut self) -> Option<(usize, usize)> {
        // A newline right after `max` bytes still ends a line of `max` bytes.
        let limit = self.end.min(self.start + self.max + 1);
        if let Some(pos) = self.buf[self.scan..limit].iter().position(|&b| b == b'\n') {
            let nl = self.scan + pos;
            let mut end = nl;
            if end > self.start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = (self.start, end.min(self.start + self.max));
            self.start = nl + 1;
            self.scan = self.start;
            return Some(line);
        }
        if self.end - self.start > self.max {
            let cut = self.cut_point();
            let line = (self.start, self.start + cut);
            self.start += cut;
            self.scan = self.start;
            return Some(line);
        }
        self.scan = limit;
        None
    }

    /// Where to split an over-long line: at `max`, moved back to the start of
    /// a UTF-8 character that would otherwise be cut in two.
    fn cut_point(&self) -> usize {
        let is_continuation = |b: u8| b & 0xC0 == 0x80;
        let mut cut = self.max;
        let mut back = 0;
        while back < 3 && is_continuation(self.buf[self.start + cut]) {
            cut -= 1;
            back += 1;
        }
        if is_continuation(self.buf[self.start + cut]) || cut == 0 {
            self.max
        } else {
            cut
        }
    }

    /// At the end of the stream: the last line if it had no newline.
    pub fn finish(&mut self) -> Option<(usize, usize)> {
        if self.end > self.start {
            let mut end = self.end;
            if self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = (self.start, end);
            self.start = self.end;
            self.scan = self.end;
            Some(line)
        } else {
            None
        }
    }

    /// The bytes of a line range.
    pub fn get(&self, (from, to): (usize, usize)) -> &[u8] {
        &self.buf[from..to]
    }
}

/// The last lines of a stream, kept with a bounded size.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    /// Remembers a line, forgetting the oldest beyond [`TAIL_LINES`].
    pub fn push(&mut self, line: &str) {
        let mut slot = if self.lines.len() >= TAIL_LINES {
            self.lines.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        slot.clear();
        slot.push_str(clip(line, TAIL_LINE_BYTES));
        self.lines.push_back(slot);
    }

    /// True if no line was kept.
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.trim().is_empty())
    }

    /// The kept lines, one per line.
    pub fn text(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        lines.join("\n").trim().to_string()
    }

    /// The tail of the last lines of `bytes` (e.g. the end of a file).
    pub fn from_bytes(bytes: &[u8]) -> Tail {
        let mut tail = Tail::default();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            tail.push(line);
        }
        tail
    }
}

/// The most useful tail for a failure message: stderr's, else stdout's.
pub fn failure_tail(stderr: &Tail, stdout: &Tail) -> String {
    if stderr.is_empty() {
        stdout.text()
    } else {
        stderr.text()
    }
}

pub use crate::util::clip;
