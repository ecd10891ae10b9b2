//! The `output` frame, written straight into its JSON text.
//!
//! One such frame goes to the dashboard per line of command output, so it is
//! the one frame on a hot path: written by hand into a single `String`, with
//! no intermediate [`Output`](super::Output) and no serializer. The text is
//! byte for byte what `serde_json` makes of
//! `Outgoing::Output(Output { line, stream, command, is_error })` (the tests
//! compare both), so the dashboard cannot tell them apart.

use super::Stream;

/// JSON's escape for each byte below 0x20, `"` and `\`: `0` = none, `u` =
/// `\u00XX`, anything else = that letter after a backslash (as serde_json).
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The `output` frame for one `line` of `command` on `stream`, as JSON text.
pub fn output_json(command: &str, stream: Stream, line: &str) -> String {
    let mut out = String::with_capacity(line.len() + command.len() + 80);
    out.push_str(OUTPUT_HEAD);
    push_json_str(&mut out, line);
    push_output_tail(&mut out, command, stream);
    out
}

/// What every `output` frame starts with, up to its line.
pub const OUTPUT_HEAD: &str = r#"{"type":"output","payload":{"line":"#;

/// Appends what follows the line in every `output` frame of `command` on
/// `stream` (the same for all lines of a chunk).
pub fn push_output_tail(out: &mut String, command: &str, stream: Stream) {
    out.push_str(r#","stream":""#);
    out.push_str(stream.as_str());
    out.push_str(r#"","command":"#);
    push_json_str(out, command);
    out.push_str(r#","is_error":"#);
    out.push_str(match stream {
        Stream::Stderr => "true",
        Stream::Stdout => "false",
    });
    out.push_str("}}");
}

/// Appends `s` to `out` as a JSON string, quotes included.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        // every byte escaped is ASCII, so `start..i` lies on char boundaries
        out.push_str(&s[start..i]);
        match esc {
            b'u' => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
            letter => {
                out.push('\\');
                out.push(char::from(letter));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Outgoing, Output};

    fn by_serde(command: &str, stream: Stream, line: &str) -> String {
        Outgoing::Output(Output {
            line: line.to_string(),
            stream,
            command: command.to_string(),
            is_error: stream == Stream::Stderr,
        })
        .to_json()
    }

    #[test]
    fn every_character_class_is_written_as_serde_json_writes_it() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "quote \" backslash \\ slash /".into(),
            "tab\there\r\nnew \u{8}\u{c}".into(),
            "é ü 日本 🦀 \u{7f} \u{2028}\u{2029}".into(),
            "\u{fffd}".into(),
        ];
        // every byte below 0x80 alone, and amid text
        for b in 0u8..0x80 {
            let c = char::from(b);
            texts.push(c.to_string());
            texts.push(format!("a{c}b{c}"));
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            for text in &texts {
                for command in ["switch", "pull-switch", "odd \"name\"\n"] {
                    assert_eq!(
                        output_json(command, stream, text),
                        by_serde(command, stream, text),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_and_mixed_lines_match_too() {
        let mut line = String::new();
        for i in 0..5000u32 {
            line.push(char::from_u32(i % 0x3000).unwrap_or('x'));
        }
        assert_eq!(
            output_json("test", Stream::Stdout, &line),
            by_serde("test", Stream::Stdout, &line)
        );
    }
}
