//! Server-sent events: a framing parser that survives any chunking, and the encoder for the
//! events the layer writes itself.
//!
//! The parser works on bytes and only decodes whole events, so a chunk may end anywhere (inside
//! a UTF-8 character, between the CR and LF of a line end). Every event keeps its raw bytes:
//! events the layer does not change go to the client exactly as they came.

use bytes::{Bytes, BytesMut};

/// One event of a stream: the lines up to and including a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The event's bytes as they came, its blank line included.
    pub(crate) raw: Bytes,
    /// The `event:` field, when there is one.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined by `\n`; `None` when the event has no data field (comments and
    /// keep-alives).
    pub(crate) data: Option<String>,
}

/// An event longer than the parser's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventTooLarge;

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server-sent event over the size limit")
    }
}

impl std::error::Error for EventTooLarge {}

/// Splits a byte stream into events. Holds at most one unfinished event, of at most `limit`
/// bytes.
#[derive(Debug)]
pub(crate) struct SseParser {
    buffer: BytesMut,
    /// Where the next unscanned line starts in `buffer`.
    line_start: usize,
    /// How far `buffer` was searched for a line end (never before `line_start`): a line that
    /// arrives in many chunks is searched once, not from its start on every chunk.
    scanned: usize,
    limit: usize,
}

impl SseParser {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            line_start: 0,
            scanned: 0,
            limit,
        }
    }

    /// Adds a chunk and hands every event it completes to `emit`, in order.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        mut emit: impl FnMut(SseEvent),
    ) -> Result<(), EventTooLarge> {
        self.buffer.extend_from_slice(chunk);
        loop {
            let from = self.scanned.max(self.line_start);
            let Some(at) = memchr::memchr2(b'\r', b'\n', &self.buffer[from..]) else {
                self.scanned = self.buffer.len();
                break;
            };
            // Bytes between `line_start` and `from` hold no line end: `end` is past them, so
            // `end == line_start` still means a blank line.
            let end = from + at;
            let terminator = if self.buffer[end] == b'\n' {
                1
            } else if end + 1 == self.buffer.len() {
                // A CR at the end of what arrived may be the first half of a CRLF: it is
                // looked at again when more arrives.
                self.scanned = end;
                break;
            } else if self.buffer[end + 1] == b'\n' {
                2
            } else {
                1
            };
            if end == self.line_start {
                // A blank line ends the event.
                let raw = self.buffer.split_to(end + terminator).freeze();
                self.line_start = 0;
                self.scanned = 0;
                emit(parse(raw));
            } else {
                self.line_start = end + terminator;
            }
        }
        if self.buffer.len() > self.limit {
            return Err(EventTooLarge);
        }
        Ok(())
    }

    /// The stream ended: an unfinished last event (no blank line after it) is handed on rather
    /// than dropped, so that nothing the upstream sent is lost, completed with its blank line so
    /// that what follows it (a continuation's events) is not read as part of it.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(SseEvent)) {
        // A CR held back as the possible first half of a CRLF ends its line now: when that line
        // is blank, the event is complete already.
        let complete =
            self.buffer.last() == Some(&b'\r') && self.line_start + 1 == self.buffer.len();
        self.line_start = 0;
        self.scanned = 0;
        if !self.buffer.is_empty() {
            if !complete {
                let ending: &[u8] = match self.buffer.last() {
                    // After a CR, a CRLF is one more (blank) line.
                    Some(b'\r') => b"\r\n",
                    Some(b'\n') => b"\n",
                    _ => b"\n\n",
                };
                self.buffer.extend_from_slice(ending);
            }
            let raw = self.buffer.split().freeze();
            emit(parse(raw));
        }
    }
}

/// The fields of one event's bytes.
fn parse(raw: Bytes) -> SseEvent {
    let text = String::from_utf8_lossy(&raw);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut event = None;
    let mut data: Option<String> = None;
    for line in lines(text) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    SseEvent { raw, event, data }
}

/// The lines of `text`, split at CRLF, LF or CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let after = &rest[end..];
        rest = after
            .strip_prefix("\r\n")
            .or_else(|| after.strip_prefix('\n'))
            .or_else(|| after.strip_prefix('\r'))
            .unwrap_or(after);
        Some(line)
    })
}

/// An event the layer writes: `event:` when given, then `data` (one `data:` line per line of
/// it), then the blank line.
pub(crate) fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data: \n");
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk, |event| events.push(event)).unwrap();
        }
        parser.finish(|event| events.push(event));
        events
    }

    const STREAM: &str = "event: message_start\r\ndata: {\"a\":\"\u{e9}\u{4e2d}\"}\r\n\r\n: keep-alive\n\ndata: line one\ndata: line two\n\nevent: ping\rdata: {}\r\rdata: [DONE]\n\n";

    #[test]
    fn reads_fields_comments_multi_line_data_and_every_line_end() {
        let events = events_of(&[STREAM.as_bytes()]);
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].event.as_deref(), Some("message_start"));
        assert_eq!(
            events[0].data.as_deref(),
            Some("{\"a\":\"\u{e9}\u{4e2d}\"}")
        );
        assert!(events[1].event.is_none() && events[1].data.is_none());
        assert_eq!(events[2].data.as_deref(), Some("line one\nline two"));
        assert_eq!(events[3].event.as_deref(), Some("ping"));
        assert_eq!(events[3].data.as_deref(), Some("{}"));
        assert_eq!(events[4].data.as_deref(), Some("[DONE]"));
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, STREAM.as_bytes(), "raw bytes add up to the stream");
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let whole = events_of(&[STREAM.as_bytes()]);
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(
                events_of(&[&bytes[..at], &bytes[at..]]),
                whole,
                "split at {at}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events_of(&singles), whole);
    }

    #[test]
    fn an_unfinished_last_event_is_kept() {
        let events = events_of(&[b"data: a\n\ndata: [DONE]\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data.as_deref(), Some("[DONE]"));
        assert_eq!(
            events[1].raw, "data: [DONE]\n\n",
            "completed with its blank line"
        );
        for (unfinished, completed) in [
            ("data: a", "data: a\n\n"),
            ("data: a\r", "data: a\r\r\n"),
            (": comment\r\n", ": comment\r\n\n"),
            // The CR held back for a possible LF was a blank line: complete already.
            ("data: a\r\r", "data: a\r\r"),
        ] {
            let events = events_of(&[unfinished.as_bytes()]);
            assert_eq!(events[0].raw, completed);
            assert_eq!(events_of(&[&events[0].raw]), events, "{unfinished:?}");
        }
    }

    /// A line that arrives in many small chunks is searched for its end once, not from its
    /// start on every chunk: a long event costs linear work.
    #[test]
    fn a_long_line_in_small_chunks_is_scanned_once() {
        let mut parser = SseParser::new(64 << 20);
        parser.push(b"data: ", |_| {}).unwrap();
        for piece in vec![b'x'; 1 << 20].chunks(1024) {
            parser.push(piece, |_| panic!("no event yet")).unwrap();
            assert_eq!(
                parser.scanned,
                parser.buffer.len(),
                "nothing is left to rescan"
            );
        }
        // A CR at the end of a chunk is looked at again: it may be the first half of a CRLF.
        parser.push(b"\r", |_| panic!("no event yet")).unwrap();
        assert_eq!(parser.scanned, parser.buffer.len() - 1);
        let mut events = Vec::new();
        parser.push(b"\n\r", |event| events.push(event)).unwrap();
        assert!(events.is_empty());
        parser
            .push(b"\ndata: next", |event| events.push(event))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.as_ref().map(String::len), Some(1 << 20));
        assert!(events[0].raw.ends_with(b"x\r\n\r\n"));
        parser.finish(|event| events.push(event));
        assert_eq!(events[1].data.as_deref(), Some("next"));
    }

    #[test]
    fn an_event_over_the_limit_is_refused() {
        let mut parser = SseParser::new(16);
        assert!(parser.push(b"data: 0123456789", |_| {}).is_ok());
        assert_eq!(parser.push(b"abcdef", |_| {}), Err(EventTooLarge));
        let mut parser = SseParser::new(16);
        let mut count = 0;
        for _ in 0..100 {
            parser.push(b"data: 01234\n\n", |_| count += 1).unwrap();
        }
        assert_eq!(count, 100, "whole events never count against the limit");
    }

    #[test]
    fn encodes_what_it_parses() {
        let bytes = encode(Some("error"), "{\"a\":1}\nsecond");
        assert_eq!(bytes, "event: error\ndata: {\"a\":1}\ndata: second\n\n");
        let events = events_of(&[&bytes]);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(events[0].data.as_deref(), Some("{\"a\":1}\nsecond"));
        assert_eq!(encode(None, "[DONE]"), "data: [DONE]\n\n");
    }
}
