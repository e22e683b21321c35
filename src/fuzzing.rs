//! Invariant checks shared by the fuzz targets (`fuzz/`) and `tests/fuzz_corpus.rs`, behind
//! the `fuzzing` feature. Not a public API.
//!
//! Each target function takes the fuzz input, runs it through the real code (the layer over an
//! in-memory scripted upstream, driven by a tiny executor) and panics with a message that names
//! the broken invariant: not only "no panic", but what a user of the layer relies on (valid
//! JSON out, bytes outside replaced outputs unchanged, every marker resolving to its exact
//! original, the retrieval tool never reaching the client, the same bytes for any chunking).
//!
//! The input is read as a little program: its first bytes choose the API and the shape of the
//! case, the rest fills it in. Where the input runs out, every further byte reads as zero, so
//! every input is a valid case and short inputs give the simplest ones.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::id::{EntryId, ID_HEX_LEN, IdKey};
use crate::json::{OrderedObject, span_of, string_value};
use crate::marker::{MARKER_TAG, render, view_with_marker};
use crate::sse::{SseEvent, SseParser};
use crate::store::{Entry, Retention, Store};
use crate::{CcrHandle, CcrLayer, MemoryStore, estimate_tokens};

/// The retrieval tool's name (the default).
const TOOL: &str = crate::DEFAULT_TOOL_NAME;
/// Every fuzzed layer shares this secret, so that runs of one input give the same ids.
const SECRET: &str = "tower-ccr fuzzing";
/// Small, so that outputs of a few hundred bytes get compressed.
const MIN_TOKENS: usize = 30;
/// Outputs of this tool are never compressed (`exclude_tools`).
const EXCLUDED_TOOL: &str = "read_file";
/// The layer's default number of continuation rounds.
const MAX_ROUNDS: usize = crate::DEFAULT_MAX_ROUNDS;

// ---------------------------------------------------------------------------------------------
// A minimal executor.

struct WakeFlag(AtomicBool);

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs a future to completion on this thread. The layer has no timers and the scripted
/// upstream lives in memory, so nothing outside this thread can wake a future: one that returns
/// `Pending` without having woken itself would hang a real executor forever. That is reported
/// as a failure instead of spinning.
fn block_on<F: Future>(future: F) -> F::Output {
    let flag = Arc::new(WakeFlag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    for _ in 0..10_000_000u32 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        assert!(
            flag.0.swap(false, Ordering::SeqCst),
            "a future returned Pending without arranging a wake-up: with an in-memory upstream \
             the exchange would hang"
        );
    }
    panic!("a future kept waking itself without finishing (livelock)");
}

// ---------------------------------------------------------------------------------------------
// Reading the fuzz input.

/// The fuzz input, read front to back; past its end every byte is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    /// A number below `n` (0 when `n` is 0 or 1).
    fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => usize::from(self.byte()) % n,
            _ => (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One of `choices`, by the next byte.
    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON written by hand, so that a case controls key order, whitespace and escapes.

#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Num(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    /// JSON text inserted as it is.
    Raw(String),
}

fn s(text: impl Into<String>) -> Json {
    Json::Str(text.into())
}

fn obj<const N: usize>(members: [(&str, Json); N]) -> Json {
    Json::Obj(
        members
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

fn arr(elements: impl IntoIterator<Item = Json>) -> Json {
    Json::Arr(elements.into_iter().collect())
}

impl Json {
    /// Adds a member to an object (nothing for other values).
    fn with(mut self, key: &str, value: Json) -> Self {
        if let Json::Obj(members) = &mut self {
            members.push((key.to_owned(), value));
        }
        self
    }

    fn compact(&self) -> String {
        self.render(Style::default())
    }

    fn render(&self, style: Style) -> String {
        let mut out = String::new();
        self.write(&mut out, style, 0);
        out
    }

    fn write(&self, out: &mut String, style: Style, depth: usize) {
        let newline = |out: &mut String, depth: usize| {
            if style.pretty {
                out.push_str(if style.crlf { "\r\n" } else { "\n" });
                (0..depth).for_each(|_| out.push_str("  "));
            }
        };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Json::Num(value) => {
                let _ = write!(out, "{value}");
            }
            Json::Str(text) => write_string(out, text, style),
            Json::Raw(text) => out.push_str(text),
            Json::Arr(elements) => {
                out.push('[');
                for (index, element) in elements.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                        if style.spaced && !style.pretty {
                            out.push(' ');
                        }
                    }
                    newline(out, depth + 1);
                    element.write(out, style, depth + 1);
                }
                if !elements.is_empty() {
                    newline(out, depth);
                }
                out.push(']');
            }
            Json::Obj(members) => {
                out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                        if style.spaced && !style.pretty {
                            out.push(' ');
                        }
                    }
                    newline(out, depth + 1);
                    write_string(out, key, style);
                    out.push(':');
                    if style.spaced || style.pretty {
                        out.push(' ');
                    }
                    value.write(out, style, depth + 1);
                }
                if !members.is_empty() {
                    newline(out, depth);
                }
                out.push('}');
            }
        }
    }
}

/// How JSON text is written: every choice a client library may make.
#[derive(Clone, Copy, Debug, Default)]
struct Style {
    pretty: bool,
    crlf: bool,
    spaced: bool,
    /// `\uXXXX` for every non-ASCII character (Python's `json.dumps` default).
    ascii: bool,
    /// `\/` for `/`.
    slash: bool,
    /// `\u000a` rather than `\n` for control characters.
    long_controls: bool,
}

impl Style {
    fn from_byte(byte: u8) -> Self {
        Self {
            pretty: byte & 1 != 0,
            crlf: byte & 2 != 0,
            spaced: byte & 4 != 0,
            ascii: byte & 8 != 0,
            slash: byte & 16 != 0,
            long_controls: byte & 32 != 0,
        }
    }
}

fn write_string(out: &mut String, text: &str, style: Style) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if style.slash => out.push_str("\\/"),
            '\n' if !style.long_controls => out.push_str("\\n"),
            '\r' if !style.long_controls => out.push_str("\\r"),
            '\t' if !style.long_controls => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if style.ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Valid JSON text (serde_json alone lets invalid UTF-8 inside an ignored string through).
fn is_json(text: &[u8]) -> bool {
    std::str::from_utf8(text).is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok())
}

// ---------------------------------------------------------------------------------------------
// Text: tool outputs of every kind the compressors tell apart, and words for everything else.

const WORDS: &[&str] = &[
    "request",
    "served",
    "payment",
    "gateway",
    "refused",
    "card",
    "declined",
    "timeout",
    "connection",
    "reset",
    "user",
    "login",
    "failed",
    "cache",
    "miss",
    "disk",
    "full",
    "retry",
    "ok",
    "done",
    "why",
    "last",
    "error",
    "latest",
];
const LEVELS: &[&str] = &["INFO", "DEBUG", "WARN", "ERROR", "TRACE", "FATAL"];
/// Fragments that stress escaping, line handling, UTF-8 boundaries and marker recognition.
const SPECIALS: &[&str] = &[
    "\"",
    "\\",
    "\u{0}",
    "\u{1f}",
    "\u{e9}",
    "\u{4e2d}",
    "\u{1f600}",
    "\u{feff}",
    "\r",
    "\t",
    "\r\n",
    "\n\n",
    "Retrieve more: hash=0123456789abcdef01234567",
    "[12 lines compressed to 3. Retrieve more: hash=",
    "hash=ABCDEF0123456789abcdef01",
    "ccr_retrieve",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "\u{2028}",
    "    ",
    "\\u0000",
    "\u{2026}",
    "error: ",
    "panicked at",
];

/// A tool output: logs, JSON documents, NDJSON, search hits, tables, code, raw bytes, …
fn gen_output(input: &mut Input<'_>) -> String {
    let kind = input.below(10);
    let lines = 8 + input.below(160);
    let pattern_len = 1 + input.below(16);
    let pattern = input.take(pattern_len).to_vec();
    let pattern = if pattern.is_empty() { vec![0] } else { pattern };
    let sprinkle = input.byte();
    let at = |i: usize| pattern[i % pattern.len()] as usize;
    let special = |i: usize| -> &'static str {
        let b = at(i);
        if sprinkle != 0 && (b ^ usize::from(sprinkle)) % 7 == 0 {
            SPECIALS[(b + i) % SPECIALS.len()]
        } else {
            ""
        }
    };
    let mut out = String::new();
    match kind {
        // A JSON document: an array of records, maybe in an envelope.
        0 | 1 => {
            let records = (0..lines).map(|i| {
                let b = at(i);
                obj([
                    ("id", Json::Num(i as i64)),
                    (
                        "name",
                        s(format!("{}{}", WORDS[b % WORDS.len()], special(i))),
                    ),
                    ("status", s(if b % 9 == 0 { "error" } else { "ok" })),
                    ("ms", Json::Num((b * 7 % 300) as i64)),
                ])
            });
            let records = arr(records);
            let doc = if kind == 1 {
                obj([("data", records), ("total", Json::Num(lines as i64))])
            } else {
                records
            };
            out = doc.render(Style::from_byte(sprinkle));
        }
        // NDJSON.
        2 => {
            for i in 0..lines {
                let b = at(i);
                let record = obj([
                    ("level", s(LEVELS[b % LEVELS.len()])),
                    (
                        "msg",
                        s(format!("{} {}", WORDS[b % WORDS.len()], special(i))),
                    ),
                    ("n", Json::Num(i as i64)),
                ]);
                out.push_str(&record.compact());
                out.push('\n');
            }
        }
        // Search hits.
        3 => {
            for i in 0..lines {
                let b = at(i);
                let _ = writeln!(
                    out,
                    "src/{}.rs:{}: let {} = {};{}",
                    WORDS[b % WORDS.len()],
                    i * 3 + 1,
                    WORDS[(b / 3) % WORDS.len()],
                    b,
                    special(i)
                );
            }
        }
        // A table.
        4 => {
            out.push_str("PERMS LINKS OWNER GROUP SIZE DATE NAME\n");
            for i in 0..lines {
                let b = at(i);
                let _ = writeln!(
                    out,
                    "-rw-r--r-- 1 root root {} Nov 24 01:{:02} {}{}.txt{}",
                    b * 131,
                    i % 60,
                    WORDS[b % WORDS.len()],
                    i,
                    special(i)
                );
            }
        }
        // Source code.
        5 => {
            for i in 0..lines {
                let b = at(i);
                match b % 4 {
                    0 => {
                        let _ =
                            writeln!(out, "fn {}_{i}(x: u32) -> u32 {{", WORDS[b % WORDS.len()]);
                    }
                    1 => {
                        let _ = writeln!(out, "    let y = x + {b}; {}", special(i));
                    }
                    2 => out.push_str("    y\n"),
                    _ => out.push_str("}\n"),
                }
            }
        }
        // Raw bytes of the input, as text.
        6 => {
            let raw = String::from_utf8_lossy(&pattern).into_owned();
            for i in 0..lines {
                let _ = writeln!(out, "{raw}{i}{}", special(i));
            }
        }
        // One line, repeated.
        7 => {
            for _ in 0..lines {
                out.push_str("the same line again\n");
            }
        }
        // JSON that is almost a document.
        8 => {
            out.push('[');
            for i in 0..lines {
                let b = at(i);
                let _ = write!(
                    out,
                    "{{\"k\":{b},\"v\":\"{}\"}},",
                    special(i).escape_default()
                );
            }
            out.push_str("\n]");
        }
        // A log.
        _ => {
            for i in 0..lines {
                let b = at(i);
                let _ = writeln!(
                    out,
                    "2026-11-23T10:{:02}:{:02}Z {} svc{}: {} {} in {}ms{}",
                    i / 60 % 60,
                    i % 60,
                    LEVELS[b % LEVELS.len()],
                    b % 3,
                    WORDS[b % WORDS.len()],
                    WORDS[(b / 5) % WORDS.len()],
                    b,
                    special(i)
                );
            }
        }
    }
    out
}

/// A few words (never the retrieval tool's name).
fn gen_words(input: &mut Input<'_>, max: usize) -> String {
    let count = 1 + input.below(max);
    (0..count)
        .map(|_| input.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A user question, which may hold any special fragment.
fn gen_question(input: &mut Input<'_>) -> String {
    let mut question = gen_words(input, 6);
    if input.below(4) == 0 {
        question.push_str(input.pick(SPECIALS));
    }
    question.push('?');
    question
}

/// A large, deterministic log: the fixed output of the response and stream targets.
fn fixed_log() -> String {
    (0..120)
        .map(|i| {
            let level = if i == 77 { "ERROR" } else { "INFO" };
            format!(
                "2026-11-23T10:00:{:02}Z {level} http: GET /api/orders/{i} 200 in {}ms\n",
                i % 60,
                i % 17
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The scripted upstream.

/// A request the upstream received.
#[derive(Clone, Debug)]
struct Recorded {
    body: Bytes,
}

impl Recorded {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response body made of the given chunks; with `yields`, it returns `Pending` (after waking
/// itself) before each chunk, as a network body would.
struct Chunks {
    chunks: VecDeque<Bytes>,
    yields: bool,
    yielded: bool,
}

impl Chunks {
    fn new(chunks: impl IntoIterator<Item = Bytes>, yields: bool) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
            yields,
            yielded: false,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.yields && !this.yielded && !this.chunks.is_empty() {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        Poll::Ready(this.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// What the script answers: status, content type, body chunks.
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    chunks: Vec<Bytes>,
    yields: bool,
}

impl Answer {
    fn json(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            content_type: Some("application/json"),
            chunks: vec![body.into()],
            yields: false,
        }
    }

    fn event_stream(chunks: Vec<Bytes>, yields: bool) -> Self {
        Self {
            status: 200,
            content_type: Some("text/event-stream; charset=utf-8"),
            chunks,
            yields,
        }
    }

    fn body(&self) -> Bytes {
        let mut joined = BytesMut::new();
        self.chunks
            .iter()
            .for_each(|chunk| joined.extend_from_slice(chunk));
        joined.freeze()
    }
}

type Script = dyn Fn(usize, &Recorded) -> Answer + Send + Sync;

/// An in-memory upstream: records every request, answers `script(round, request)`, and
/// remembers each answer's status and bytes.
#[derive(Clone)]
struct Upstream {
    requests: Arc<Mutex<Vec<Recorded>>>,
    answers: Arc<Mutex<Vec<(u16, Bytes)>>>,
    script: Arc<Script>,
}

impl Upstream {
    fn new(script: impl Fn(usize, &Recorded) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            requests: Arc::default(),
            answers: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn answers(&self) -> Vec<(u16, Bytes)> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Chunks>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let upstream = self.clone();
        Box::pin(async move {
            let body = match request.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let recorded = Recorded { body };
            let round = {
                let mut requests = upstream
                    .requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                requests.push(recorded.clone());
                requests.len() - 1
            };
            let answer = (upstream.script)(round, &recorded);
            upstream
                .answers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((answer.status, answer.body()));
            let mut response = Response::builder()
                .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK))
                .header("x-request-id", "req_fuzz");
            if let Some(content_type) = answer.content_type {
                response = response.header(http::header::CONTENT_TYPE, content_type);
            }
            let body = Chunks::new(answer.chunks, answer.yields);
            Ok(match response.body(body) {
                Ok(response) => response,
                Err(_) => Response::new(Chunks::new([], false)),
            })
        })
    }
}

/// What the client got.
struct ClientSaw {
    status: StatusCode,
    body: Bytes,
    /// An error the body ended with.
    error: Option<String>,
}

/// Sends `request` through the layer over `upstream` and reads the whole response.
fn exchange(layer: &CcrLayer, upstream: &Upstream, request: Request<Full<Bytes>>) -> ClientSaw {
    let service = layer.layer(upstream.clone());
    block_on(async move {
        let response = match service.oneshot(request).await {
            Ok(response) => response,
            Err(error) => {
                panic!("the layer failed a request although its upstream cannot fail: {error}")
            }
        };
        let (parts, body) = response.into_parts();
        let mut body = pin!(body);
        let mut bytes = BytesMut::new();
        let mut error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Err(failure) => {
                    error = Some(failure.to_string());
                    break;
                }
            }
        }
        ClientSaw {
            status: parts.status,
            body: bytes.freeze(),
            error,
        }
    })
}

fn fuzz_layer(store: Arc<MemoryStore>) -> CcrLayer {
    CcrLayer::new()
        .secret(SECRET)
        .min_tokens(MIN_TOKENS)
        .exclude_tools([EXCLUDED_TOOL])
        .store(store)
}

fn new_store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::builder().max_bytes(64 << 20).build())
}

/// The ids of the markers in `text`: the 24 hex characters after each marker tag.
fn marker_ids(text: &str) -> Vec<String> {
    text.match_indices(MARKER_TAG)
        .filter_map(|(at, _)| {
            let id = text.get(at + MARKER_TAG.len()..at + MARKER_TAG.len() + ID_HEX_LEN)?;
            id.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| id.to_owned())
        })
        .collect()
}

/// Where two byte strings first differ, with some context from each.
fn difference(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let start = at.saturating_sub(60);
    let around = |bytes: &[u8]| {
        let end = (at + 100).min(bytes.len());
        String::from_utf8_lossy(&bytes[start.min(end)..end]).into_owned()
    };
    format!(
        "they differ at byte {at} of {} and {}: {:?} / {:?}",
        a.len(),
        b.len(),
        around(a),
        around(b)
    )
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(160);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{:?}…", &text[..end])
    } else {
        format!("{text:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// The four APIs.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const APIS: [Api; 4] = [Api::Chat, Api::Responses, Api::Anthropic, Api::Gemini];

impl Api {
    fn url(self, stream: bool) -> &'static str {
        match self {
            Api::Chat => "https://api.example.com/v1/chat/completions",
            Api::Responses => "https://api.example.com/v1/responses",
            Api::Anthropic => "https://api.example.com/v1/messages",
            Api::Gemini if stream => {
                "https://generativelanguage.example.com/v1beta/models/m:streamGenerateContent?alt=sse"
            }
            Api::Gemini => "https://generativelanguage.example.com/v1beta/models/m:generateContent",
        }
    }

    /// The credential header of this API, with the value of `user`.
    fn credential(self, user: &str) -> (&'static str, String) {
        match self {
            Api::Chat | Api::Responses => ("authorization", format!("Bearer {user}")),
            Api::Anthropic => ("x-api-key", user.to_owned()),
            Api::Gemini => ("x-goog-api-key", user.to_owned()),
        }
    }

    fn post(self, stream: bool, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let (name, value) = self.credential("alice");
        let request = Request::post(self.url(stream))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(name, value)
            .body(Full::new(body.into()));
        match request {
            Ok(request) => request,
            Err(error) => panic!("a fixed request head is valid: {error}"),
        }
    }
}

/// One tool call of the conversation and its output.
struct ToolTurn {
    call_id: String,
    tool: &'static str,
    /// The call's arguments, a JSON object text.
    arguments: String,
    /// Whether the assistant turn with the call is in the request.
    call_in_history: bool,
    /// How the output is written: 0 a string, 1 one text part, 2 two text parts, 3 odd.
    shape: usize,
    is_error: bool,
    output: String,
}

/// A request of any API, described once and written in each API's shape.
struct Conversation {
    question: String,
    turns: Vec<ToolTurn>,
    /// 0 none, 1 a client tool, 2 `null`, 3 `[]`, 4 a client tool and one named like ours,
    /// 5 not an array.
    tools: usize,
    /// 0 none, 1 auto, 2 none, 3 required/any, 4 forced client tool, 5 forced retrieval tool.
    choice: usize,
    stream: bool,
    /// Several choices or candidates.
    several: bool,
    /// An unknown member first, to move the known ones.
    extra_first: bool,
    system: bool,
    /// OpenAI Responses: the history lives upstream.
    chained: bool,
    /// Gemini: snake_case keys.
    snake: bool,
}

impl Conversation {
    fn generate(input: &mut Input<'_>) -> Self {
        let question = gen_question(input);
        let count = 1 + input.below(3);
        let mut turns = Vec::with_capacity(count);
        for index in 0..count {
            let tool = input.pick(&["bash", "bash", "grep", EXCLUDED_TOOL, TOOL]);
            let arguments = obj([("cmd", s(gen_words(input, 3)))]).compact();
            let call_in_history = input.below(5) != 0;
            let shape = [0, 0, 0, 1, 2, 3][input.below(6)];
            let is_error = input.below(8) == 0;
            turns.push(ToolTurn {
                call_id: format!("call_{index}"),
                tool,
                arguments,
                call_in_history,
                shape,
                is_error,
                output: String::new(),
            });
        }
        let tools = [1, 1, 1, 0, 2, 3, 4, 5][input.below(8)];
        let choice = [0, 0, 0, 1, 2, 3, 4, 5][input.below(8)];
        let flags = input.byte();
        for turn in &mut turns {
            turn.output = gen_output(input);
        }
        Self {
            question,
            turns,
            tools,
            choice,
            stream: flags & 1 != 0,
            several: flags & 0b110 == 0b110,
            extra_first: flags & 8 != 0,
            system: flags & 16 != 0,
            chained: flags & 32 != 0,
            snake: flags & 64 != 0,
        }
    }

    /// Whether the model could call the retrieval tool in this request: if not, no marker may
    /// go out.
    fn redeemable(&self) -> bool {
        !matches!(self.choice, 2 | 4) && !matches!(self.tools, 4 | 5)
    }

    /// Texts the layer must never replace: outputs of an excluded tool and the layer's own
    /// answers (when the call that tells whose output it is is there), and not also the text
    /// of an output it may replace.
    fn protected_texts(&self, api: Api) -> HashSet<&str> {
        let known = |turn: &ToolTurn| turn.call_in_history || api == Api::Gemini;
        let protected: HashSet<&str> = self
            .turns
            .iter()
            .filter(|turn| known(turn) && [EXCLUDED_TOOL, TOOL].contains(&turn.tool))
            .map(|turn| turn.output.as_str())
            .collect();
        let open: HashSet<&str> = self
            .turns
            .iter()
            .filter(|turn| !(known(turn) && [EXCLUDED_TOOL, TOOL].contains(&turn.tool)))
            .map(|turn| turn.output.as_str())
            .collect();
        protected.difference(&open).copied().collect()
    }

    fn render(&self, api: Api) -> Json {
        let mut root = Json::Obj(Vec::new());
        if self.extra_first {
            root = root.with("metadata", obj([("trace", s("t-1"))]));
        }
        root = match api {
            Api::Chat => self.chat(root),
            Api::Responses => self.responses(root),
            Api::Anthropic => self.anthropic(root),
            Api::Gemini => self.gemini(root),
        };
        if self.stream && api != Api::Gemini {
            root = root.with("stream", Json::Bool(true));
        }
        root
    }

    /// Text parts of an output in the shape `turn.shape`, with `part` building one part.
    fn output_value(turn: &ToolTurn, part: impl Fn(&str) -> Json) -> Json {
        match turn.shape {
            0 => s(turn.output.clone()),
            1 => arr([part(&turn.output)]),
            2 => {
                let mut middle = turn.output.len() / 2;
                while !turn.output.is_char_boundary(middle) {
                    middle -= 1;
                }
                let (head, tail) = turn.output.split_at(middle);
                arr([part(head), part(tail)])
            }
            _ => obj([("unexpected", s(turn.output.clone()))]),
        }
    }

    fn chat(&self, mut root: Json) -> Json {
        root = root.with("model", s("gpt-x"));
        let mut messages = Vec::new();
        if self.system {
            messages.push(obj([("role", s("system")), ("content", s("Be brief."))]));
        }
        messages.push(obj([
            ("role", s("user")),
            ("content", s(self.question.clone())),
        ]));
        let calls: Vec<Json> = self
            .turns
            .iter()
            .filter(|turn| turn.call_in_history)
            .map(|turn| {
                obj([
                    ("id", s(turn.call_id.clone())),
                    ("type", s("function")),
                    (
                        "function",
                        obj([
                            ("name", s(turn.tool)),
                            ("arguments", s(turn.arguments.clone())),
                        ]),
                    ),
                ])
            })
            .collect();
        if !calls.is_empty() {
            messages.push(obj([
                ("role", s("assistant")),
                ("content", Json::Null),
                ("tool_calls", Json::Arr(calls)),
            ]));
        }
        for turn in &self.turns {
            let content =
                Self::output_value(turn, |text| obj([("type", s("text")), ("text", s(text))]));
            messages.push(obj([
                ("role", s("tool")),
                ("tool_call_id", s(turn.call_id.clone())),
                ("content", content),
            ]));
        }
        root = root.with("messages", Json::Arr(messages));
        let function = |name: &str| {
            obj([
                ("type", s("function")),
                (
                    "function",
                    obj([
                        ("name", s(name)),
                        ("parameters", obj([("type", s("object"))])),
                    ]),
                ),
            ])
        };
        root = self.with_tools(root, function);
        let forced = |name: &str| {
            obj([
                ("type", s("function")),
                ("function", obj([("name", s(name))])),
            ])
        };
        root = match self.choice {
            1 => root.with("tool_choice", s("auto")),
            2 => root.with("tool_choice", s("none")),
            3 => root.with("tool_choice", s("required")),
            4 => root.with("tool_choice", forced("bash")),
            5 => root.with("tool_choice", forced(TOOL)),
            _ => root,
        };
        if self.several {
            root = root.with("n", Json::Num(2));
        }
        root
    }

    /// The `tools` member of variant `self.tools`, with `tool` building one declaration.
    fn with_tools(&self, root: Json, tool: impl Fn(&str) -> Json) -> Json {
        match self.tools {
            1 => root.with("tools", arr([tool("bash")])),
            2 => root.with("tools", Json::Null),
            3 => root.with("tools", arr([])),
            4 => root.with("tools", arr([tool("bash"), tool(TOOL)])),
            5 => root.with("tools", obj([("bash", tool("bash"))])),
            _ => root,
        }
    }

    fn responses(&self, mut root: Json) -> Json {
        root = root.with("model", s("gpt-5"));
        if self.system {
            root = root.with("instructions", s("Be brief."));
        }
        let mut input = vec![obj([
            ("role", s("user")),
            (
                "content",
                arr([obj([
                    ("type", s("input_text")),
                    ("text", s(self.question.clone())),
                ])]),
            ),
        ])];
        for turn in &self.turns {
            if turn.call_in_history {
                input.push(obj([
                    ("type", s("function_call")),
                    ("call_id", s(turn.call_id.clone())),
                    ("name", s(turn.tool)),
                    ("arguments", s(turn.arguments.clone())),
                ]));
            }
        }
        for turn in &self.turns {
            let output = Self::output_value(turn, |text| {
                obj([("type", s("input_text")), ("text", s(text))])
            });
            input.push(obj([
                ("type", s("function_call_output")),
                ("call_id", s(turn.call_id.clone())),
                ("output", output),
            ]));
        }
        root = root.with("input", Json::Arr(input));
        if self.chained {
            root = root.with("previous_response_id", s("resp_previous"));
        }
        let function = |name: &str| {
            obj([
                ("type", s("function")),
                ("name", s(name)),
                ("parameters", obj([("type", s("object"))])),
            ])
        };
        root = self.with_tools(root, function);
        let forced = |name: &str| obj([("type", s("function")), ("name", s(name))]);
        match self.choice {
            1 => root.with("tool_choice", s("auto")),
            2 => root.with("tool_choice", s("none")),
            3 => root.with("tool_choice", s("required")),
            4 => root.with("tool_choice", forced("bash")),
            5 => root.with("tool_choice", forced(TOOL)),
            _ => root,
        }
    }

    fn anthropic(&self, mut root: Json) -> Json {
        root = root
            .with("model", s("claude-x"))
            .with("max_tokens", Json::Num(1024));
        if self.system {
            root = root.with("system", s("Be brief."));
        }
        let mut messages = vec![obj([
            ("role", s("user")),
            ("content", s(self.question.clone())),
        ])];
        let uses: Vec<Json> = self
            .turns
            .iter()
            .filter(|turn| turn.call_in_history)
            .map(|turn| {
                obj([
                    ("type", s("tool_use")),
                    ("id", s(turn.call_id.clone())),
                    ("name", s(turn.tool)),
                    ("input", Json::Raw(turn.arguments.clone())),
                ])
            })
            .collect();
        if !uses.is_empty() {
            messages.push(obj([
                ("role", s("assistant")),
                ("content", Json::Arr(uses)),
            ]));
        }
        let mut results: Vec<Json> = self
            .turns
            .iter()
            .map(|turn| {
                let content =
                    Self::output_value(turn, |text| obj([("type", s("text")), ("text", s(text))]));
                let mut result = obj([
                    ("type", s("tool_result")),
                    ("tool_use_id", s(turn.call_id.clone())),
                    ("content", content),
                ]);
                if turn.is_error {
                    result = result.with("is_error", Json::Bool(true));
                }
                result
            })
            .collect();
        if self.extra_first {
            results.push(obj([("type", s("text")), ("text", s("go on"))]));
        }
        messages.push(obj([("role", s("user")), ("content", Json::Arr(results))]));
        root = root.with("messages", Json::Arr(messages));
        let tool = |name: &str| {
            obj([
                ("name", s(name)),
                ("input_schema", obj([("type", s("object"))])),
            ])
        };
        root = self.with_tools(root, tool);
        let choice = |kind: &str| obj([("type", s(kind))]);
        match self.choice {
            1 => root.with("tool_choice", choice("auto")),
            2 => root.with("tool_choice", choice("none")),
            3 => root.with("tool_choice", choice("any")),
            4 => root.with("tool_choice", choice("tool").with("name", s("bash"))),
            5 => root.with("tool_choice", choice("tool").with("name", s(TOOL))),
            _ => root,
        }
    }

    fn gemini(&self, mut root: Json) -> Json {
        let key = |camel: &'static str, snake: &'static str| if self.snake { snake } else { camel };
        let mut contents = vec![obj([
            ("role", s("user")),
            ("parts", arr([obj([("text", s(self.question.clone()))])])),
        ])];
        let calls: Vec<Json> = self
            .turns
            .iter()
            .filter(|turn| turn.call_in_history)
            .map(|turn| {
                obj([(
                    key("functionCall", "function_call"),
                    obj([
                        ("name", s(turn.tool)),
                        ("args", Json::Raw(turn.arguments.clone())),
                        ("id", s(turn.call_id.clone())),
                    ]),
                )])
            })
            .collect();
        if !calls.is_empty() {
            contents.push(obj([("role", s("model")), ("parts", Json::Arr(calls))]));
        }
        let responses: Vec<Json> = self
            .turns
            .iter()
            .map(|turn| {
                let response = match turn.shape {
                    0 => obj([("output", s(turn.output.clone()))]),
                    1 if is_json(turn.output.as_bytes()) => {
                        obj([("result", Json::Raw(turn.output.clone()))])
                    }
                    1 | 2 => obj([
                        ("output", s(turn.output.clone())),
                        ("exit_code", Json::Num(0)),
                    ]),
                    _ => s(turn.output.clone()),
                };
                obj([(
                    key("functionResponse", "function_response"),
                    obj([
                        ("name", s(turn.tool)),
                        ("id", s(turn.call_id.clone())),
                        ("response", response),
                    ]),
                )])
            })
            .collect();
        contents.push(obj([("role", s("user")), ("parts", Json::Arr(responses))]));
        root = root.with("contents", Json::Arr(contents));
        if self.system {
            root = root.with(
                key("systemInstruction", "system_instruction"),
                obj([("parts", arr([obj([("text", s("Be brief."))])]))]),
            );
        }
        let declaration = |name: &str| {
            obj([(
                key("functionDeclarations", "function_declarations"),
                arr([obj([
                    ("name", s(name)),
                    ("parameters", obj([("type", s("OBJECT"))])),
                ])]),
            )])
        };
        root = self.with_tools(root, declaration);
        let config = |mode: &str, allowed: Option<&str>| {
            let mut config = obj([("mode", s(mode))]);
            if let Some(name) = allowed {
                config = config.with(
                    key("allowedFunctionNames", "allowed_function_names"),
                    arr([s(name)]),
                );
            }
            obj([(
                key("functionCallingConfig", "function_calling_config"),
                config,
            )])
        };
        root = match self.choice {
            1 => root.with(key("toolConfig", "tool_config"), config("AUTO", None)),
            2 => root.with(key("toolConfig", "tool_config"), config("NONE", None)),
            3 => root.with(key("toolConfig", "tool_config"), config("ANY", None)),
            4 => root.with(
                key("toolConfig", "tool_config"),
                config("ANY", Some("bash")),
            ),
            5 => root.with(key("toolConfig", "tool_config"), config("ANY", Some(TOOL))),
            _ => root,
        };
        if self.several {
            root = root.with(
                key("generationConfig", "generation_config"),
                obj([(key("candidateCount", "candidate_count"), Json::Num(2))]),
            );
        }
        root
    }
}

// ---------------------------------------------------------------------------------------------
// Responses of each API.

/// A final text answer.
fn final_answer(api: Api, text: &str) -> Json {
    match api {
        Api::Chat => obj([
            ("id", s("chatcmpl-final")),
            ("object", s("chat.completion")),
            ("created", Json::Num(1)),
            ("model", s("gpt-x")),
            (
                "choices",
                arr([obj([
                    ("index", Json::Num(0)),
                    ("finish_reason", s("stop")),
                    (
                        "message",
                        obj([("role", s("assistant")), ("content", s(text))]),
                    ),
                ])]),
            ),
            ("usage", chat_usage(10, 2)),
        ]),
        Api::Responses => obj([
            ("id", s("resp_final")),
            ("object", s("response")),
            ("status", s("completed")),
            ("model", s("gpt-5")),
            (
                "output",
                arr([obj([
                    ("id", s("msg_final")),
                    ("type", s("message")),
                    ("status", s("completed")),
                    ("role", s("assistant")),
                    (
                        "content",
                        arr([obj([
                            ("type", s("output_text")),
                            ("text", s(text)),
                            ("annotations", arr([])),
                        ])]),
                    ),
                ])]),
            ),
            ("usage", responses_usage(10, 2)),
        ]),
        Api::Anthropic => obj([
            ("id", s("msg_final")),
            ("type", s("message")),
            ("role", s("assistant")),
            ("model", s("claude-x")),
            (
                "content",
                arr([obj([("type", s("text")), ("text", s(text))])]),
            ),
            ("stop_reason", s("end_turn")),
            ("stop_sequence", Json::Null),
            ("usage", anthropic_usage(10, 2)),
        ]),
        Api::Gemini => obj([
            (
                "candidates",
                arr([obj([
                    (
                        "content",
                        obj([
                            ("role", s("model")),
                            ("parts", arr([obj([("text", s(text))])])),
                        ]),
                    ),
                    ("finishReason", s("STOP")),
                    ("index", Json::Num(0)),
                ])]),
            ),
            ("usageMetadata", gemini_usage(10, 2)),
            ("modelVersion", s("gemini-x")),
            ("responseId", s("r_final")),
        ]),
    }
}

/// A response that calls only the retrieval tool, with `arguments` (a JSON object text).
fn retrieval_call(api: Api, arguments: &str) -> Json {
    let call = ResponseCall {
        name: TOOL,
        id: Some("call_r".into()),
        arguments: arguments.to_owned(),
        arguments_as_object: false,
    };
    let text = None;
    match api {
        Api::Chat => chat_response(
            &[(text, vec![call], Some("tool_calls"))],
            Some(chat_usage(100, 9)),
        ),
        Api::Responses => {
            responses_response(&[ResponsesItem::Call(call)], Some(responses_usage(100, 9)))
        }
        Api::Anthropic => anthropic_response(
            &[AnthropicBlock::Call(call)],
            Some("tool_use"),
            Some(anthropic_usage(100, 9)),
        ),
        Api::Gemini => gemini_response(
            &[vec![GeminiPart::Call(call, false)]],
            Some(gemini_usage(100, 9)),
        ),
    }
}

fn chat_usage(prompt: i64, completion: i64) -> Json {
    obj([
        ("prompt_tokens", Json::Num(prompt)),
        ("completion_tokens", Json::Num(completion)),
        ("total_tokens", Json::Num(prompt + completion)),
    ])
}

fn responses_usage(input: i64, output: i64) -> Json {
    obj([
        ("input_tokens", Json::Num(input)),
        ("output_tokens", Json::Num(output)),
        ("total_tokens", Json::Num(input + output)),
    ])
}

fn anthropic_usage(input: i64, output: i64) -> Json {
    obj([
        ("input_tokens", Json::Num(input)),
        ("output_tokens", Json::Num(output)),
    ])
}

fn gemini_usage(prompt: i64, candidates: i64) -> Json {
    obj([
        ("promptTokenCount", Json::Num(prompt)),
        ("candidatesTokenCount", Json::Num(candidates)),
        ("totalTokenCount", Json::Num(prompt + candidates)),
    ])
}

/// A tool call of a model.
#[derive(Clone, Debug)]
struct ResponseCall {
    name: &'static str,
    id: Option<String>,
    /// JSON text (or anything, for a malformed call).
    arguments: String,
    /// Arguments as a JSON value rather than a string (Chat servers that do so, Responses'
    /// odd ones); Anthropic and Gemini always take objects.
    arguments_as_object: bool,
}

impl ResponseCall {
    fn arguments_value(&self) -> Json {
        if self.arguments_as_object && is_json(self.arguments.as_bytes()) {
            Json::Raw(self.arguments.clone())
        } else {
            s(self.arguments.clone())
        }
    }

    /// The arguments as an object, for the APIs that take one.
    fn arguments_object(&self) -> Json {
        match serde_json::from_str::<Value>(&self.arguments) {
            Ok(Value::Object(_)) => Json::Raw(self.arguments.clone()),
            _ => obj([("text", s(self.arguments.clone()))]),
        }
    }
}

/// One choice of a Chat response: content, calls, finish reason.
type ChatChoice = (Option<String>, Vec<ResponseCall>, Option<&'static str>);

/// Chat: a response of `choices`.
fn chat_response(choices: &[ChatChoice], usage: Option<Json>) -> Json {
    let choices = choices
        .iter()
        .enumerate()
        .map(|(index, (content, calls, finish))| {
            let mut message = obj([
                ("role", s("assistant")),
                ("content", content.clone().map_or(Json::Null, s)),
            ]);
            if !calls.is_empty() {
                let calls = calls.iter().map(|call| {
                    let mut json = Json::Obj(Vec::new());
                    if let Some(id) = &call.id {
                        json = json.with("id", s(id.clone()));
                    }
                    json.with("type", s("function")).with(
                        "function",
                        obj([
                            ("name", s(call.name)),
                            ("arguments", call.arguments_value()),
                        ]),
                    )
                });
                message = message.with("tool_calls", arr(calls));
            }
            obj([
                ("index", Json::Num(index as i64)),
                ("finish_reason", finish.map_or(Json::Null, s)),
                ("message", message),
            ])
        });
    let mut root = obj([
        ("id", s("chatcmpl-1")),
        ("object", s("chat.completion")),
        ("created", Json::Num(1)),
        ("model", s("gpt-x")),
        ("choices", arr(choices)),
    ]);
    if let Some(usage) = usage {
        root = root.with("usage", usage);
    }
    root
}

#[derive(Clone, Debug)]
enum ResponsesItem {
    Message(String),
    Call(ResponseCall),
    Reasoning,
    /// A server-side tool item.
    WebSearch,
}

impl ResponsesItem {
    fn json(&self, index: usize) -> Json {
        match self {
            ResponsesItem::Message(text) => obj([
                ("id", s(format!("msg_{index}"))),
                ("type", s("message")),
                ("status", s("completed")),
                ("role", s("assistant")),
                (
                    "content",
                    arr([obj([
                        ("type", s("output_text")),
                        ("text", s(text.clone())),
                        ("annotations", arr([])),
                    ])]),
                ),
            ]),
            ResponsesItem::Call(call) => {
                let mut json = obj([
                    ("id", s(format!("fc_{index}"))),
                    ("type", s("function_call")),
                    ("status", s("completed")),
                ]);
                if let Some(id) = &call.id {
                    json = json.with("call_id", s(id.clone()));
                }
                json.with("name", s(call.name))
                    .with("arguments", call.arguments_value())
            }
            ResponsesItem::Reasoning => obj([
                ("id", s(format!("rs_{index}"))),
                ("type", s("reasoning")),
                ("summary", arr([])),
                ("encrypted_content", s("gAAAA-encrypted==")),
            ]),
            ResponsesItem::WebSearch => obj([
                ("id", s(format!("ws_{index}"))),
                ("type", s("web_search_call")),
                ("status", s("completed")),
            ]),
        }
    }
}

fn responses_response(items: &[ResponsesItem], usage: Option<Json>) -> Json {
    let output = items
        .iter()
        .enumerate()
        .map(|(index, item)| item.json(index));
    let mut root = obj([
        ("id", s("resp_1")),
        ("object", s("response")),
        ("status", s("completed")),
        ("model", s("gpt-5")),
        ("output", arr(output)),
    ]);
    if let Some(usage) = usage {
        root = root.with("usage", usage);
    }
    root
}

#[derive(Clone, Debug)]
enum AnthropicBlock {
    Text(String),
    Call(ResponseCall),
    Thinking,
}

impl AnthropicBlock {
    fn json(&self) -> Json {
        match self {
            AnthropicBlock::Text(text) => obj([("type", s("text")), ("text", s(text.clone()))]),
            AnthropicBlock::Call(call) => {
                let mut json = obj([("type", s("tool_use"))]);
                if let Some(id) = &call.id {
                    json = json.with("id", s(id.clone()));
                }
                json.with("name", s(call.name))
                    .with("input", call.arguments_object())
            }
            AnthropicBlock::Thinking => obj([
                ("type", s("thinking")),
                ("thinking", s("Let me think.")),
                ("signature", s("EqQBsig==")),
            ]),
        }
    }
}

fn anthropic_response(blocks: &[AnthropicBlock], stop: Option<&str>, usage: Option<Json>) -> Json {
    let mut root = obj([
        ("id", s("msg_1")),
        ("type", s("message")),
        ("role", s("assistant")),
        ("model", s("claude-x")),
        ("content", arr(blocks.iter().map(AnthropicBlock::json))),
        ("stop_reason", stop.map_or(Json::Null, s)),
        ("stop_sequence", Json::Null),
    ]);
    if let Some(usage) = usage {
        root = root.with("usage", usage);
    }
    root
}

#[derive(Clone, Debug)]
enum GeminiPart {
    Text(String),
    Thought,
    /// A call, and whether it carries a thought signature.
    Call(ResponseCall, bool),
}

impl GeminiPart {
    fn json(&self) -> Json {
        match self {
            GeminiPart::Text(text) => obj([("text", s(text.clone()))]),
            GeminiPart::Thought => obj([("text", s("Thinking.")), ("thought", Json::Bool(true))]),
            GeminiPart::Call(call, signed) => {
                let mut function = obj([("name", s(call.name)), ("args", call.arguments_object())]);
                if let Some(id) = &call.id {
                    function = function.with("id", s(id.clone()));
                }
                let mut part = obj([("functionCall", function)]);
                if *signed {
                    part = part.with("thoughtSignature", s("CiQBsig=="));
                }
                part
            }
        }
    }
}

/// Gemini: candidates of parts.
fn gemini_response(candidates: &[Vec<GeminiPart>], usage: Option<Json>) -> Json {
    let candidates = candidates.iter().enumerate().map(|(index, parts)| {
        obj([
            (
                "content",
                obj([
                    ("role", s("model")),
                    ("parts", arr(parts.iter().map(GeminiPart::json))),
                ]),
            ),
            ("finishReason", s("STOP")),
            ("index", Json::Num(index as i64)),
        ])
    });
    let mut root = obj([("candidates", arr(candidates))]);
    if let Some(usage) = usage {
        root = root.with("usageMetadata", usage);
    }
    root.with("modelVersion", s("gemini-x"))
        .with("responseId", s("r_1"))
}

/// Whether the containers on the way to a response's tool calls have the types the API gives
/// them (a typed client library refuses the response otherwise). The layer leaves a response
/// that is malformed there as it is, retrieval calls included: a known gap, see
/// `our_calls_in`.
fn calls_well_placed(api: Api, body: &Value) -> bool {
    let objects = |value: &Value| match value {
        Value::Null => true,
        Value::Array(elements) => elements.iter().all(Value::is_object),
        _ => false,
    };
    let object_or_absent = |value: &Value| value.is_null() || value.is_object();
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    body.is_object()
        && match api {
            Api::Chat => {
                objects(&body["choices"])
                    && list(&body["choices"]).iter().all(|choice| {
                        object_or_absent(&choice["message"])
                            && objects(&choice["message"]["tool_calls"])
                    })
            }
            Api::Responses => objects(&body["output"]),
            Api::Anthropic => objects(&body["content"]),
            Api::Gemini => {
                objects(&body["candidates"])
                    && list(&body["candidates"]).iter().all(|candidate| {
                        object_or_absent(&candidate["content"])
                            && objects(&candidate["content"]["parts"])
                            && list(&candidate["content"]["parts"]).iter().all(|part| {
                                object_or_absent(&part["functionCall"])
                                    && object_or_absent(&part["function_call"])
                            })
                    })
            }
        }
}

/// Calls of the retrieval tool where the API puts a model's tool calls in a response body
/// (and, for OpenAI Responses, the tool in the echo of the request's `tools`).
fn our_calls_in(api: Api, body: &Value) -> usize {
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let ours = |name: &Value| name.as_str() == Some(TOOL);
    match api {
        Api::Chat => list(&body["choices"])
            .iter()
            .flat_map(|choice| list(&choice["message"]["tool_calls"]))
            .filter(|call| ours(&call["function"]["name"]))
            .count(),
        Api::Responses => list(&body["output"])
            .iter()
            .chain(&list(&body["tools"]))
            .filter(|item| {
                item["type"] == "function_call" && ours(&item["name"])
                    || item["type"] == "function" && ours(&item["name"])
            })
            .count(),
        Api::Anthropic => list(&body["content"])
            .iter()
            .filter(|block| block["type"] == "tool_use" && ours(&block["name"]))
            .count(),
        Api::Gemini => list(&body["candidates"])
            .iter()
            .flat_map(|candidate| list(&candidate["content"]["parts"]))
            .filter(|part| {
                ours(&part["functionCall"]["name"]) || ours(&part["function_call"]["name"])
            })
            .count(),
    }
}

// ---------------------------------------------------------------------------------------------
// What may change between the client's request and the one that goes upstream.

#[derive(Clone, Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

fn show_path(path: &[Segment]) -> String {
    let mut out = String::from("$");
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let _ = write!(out, ".{key}");
            }
            Segment::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

/// Where a value sits, for what may change in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Nothing may change.
    Fixed,
    /// Inside a tool output: a string or a container may become a view string.
    Output,
    /// A Gemini `functionResponse.response`: its members may change, but it stays an object.
    OutputRoot,
}

/// A tool output the layer replaced.
struct Replacement {
    path: String,
    /// The output as the layer must store it: a string unescaped, any other value as the
    /// client wrote it.
    original: String,
    view: String,
}

/// Compares a client's JSON request with what went upstream, value by value, descending only
/// where the bytes differ: outside tool outputs and the root `tools` member every byte must be
/// the same (whitespace, key order, escapes), which the skeletons (a container's bytes with its
/// children blanked out) check at every level.
struct RewriteCheck<'a> {
    api: Api,
    client: &'a str,
    sent: &'a str,
    replacements: Vec<Replacement>,
    /// The root `tools` member on both sides, when it differs.
    tools: Option<(Option<&'a RawValue>, &'a RawValue)>,
}

impl<'a> RewriteCheck<'a> {
    fn run(api: Api, client: &'a str, sent: &'a str) -> Result<Self, String> {
        let mut check = Self {
            api,
            client,
            sent,
            replacements: Vec::new(),
            tools: None,
        };
        let client_root = serde_json::from_str::<OrderedObject<'a>>(client);
        let sent_root = serde_json::from_str::<OrderedObject<'a>>(sent);
        match (client_root, sent_root) {
            (Ok(client_root), Ok(sent_root)) => {
                check.object_members(
                    client_root,
                    0..client.len(),
                    sent_root,
                    0..sent.len(),
                    &mut Vec::new(),
                    Place::Fixed,
                )?;
            }
            _ if client == sent => {}
            _ => return Err("the root is not an object, and it changed".into()),
        }
        Ok(check)
    }

    fn value(
        &mut self,
        a: &'a RawValue,
        b: &'a RawValue,
        path: &mut Vec<Segment>,
        place: Place,
    ) -> Result<(), String> {
        if a.get() == b.get() {
            return Ok(());
        }
        let (first_a, first_b) = (a.get().as_bytes()[0], b.get().as_bytes()[0]);
        let replaceable = match place {
            Place::Fixed => false,
            Place::Output => true,
            Place::OutputRoot => first_a == b'"',
        };
        if replaceable && first_b == b'"' {
            let original = if first_a == b'"' {
                string_value(a)
                    .ok_or_else(|| {
                        format!(
                            "{}: a string that is not valid text was replaced",
                            show_path(path)
                        )
                    })?
                    .into_owned()
            } else {
                a.get().to_owned()
            };
            let view = string_value(b)
                .ok_or_else(|| {
                    format!("{}: the replacement is not a valid string", show_path(path))
                })?
                .into_owned();
            self.replacements.push(Replacement {
                path: show_path(path),
                original,
                view,
            });
            return Ok(());
        }
        let span =
            |body: &str, raw: &RawValue| span_of(body, raw).ok_or("a value outside its body");
        match (first_a, first_b) {
            (b'{', b'{') => {
                let parsed_a = serde_json::from_str::<OrderedObject<'a>>(a.get())
                    .map_err(|e| e.to_string())?;
                let parsed_b = serde_json::from_str::<OrderedObject<'a>>(b.get())
                    .map_err(|e| e.to_string())?;
                let (span_a, span_b) = (span(self.client, a)?, span(self.sent, b)?);
                self.object_members(parsed_a, span_a, parsed_b, span_b, path, place)
            }
            (b'[', b'[') => {
                let elements_a = serde_json::from_str::<Vec<&'a RawValue>>(a.get())
                    .map_err(|e| e.to_string())?;
                let elements_b = serde_json::from_str::<Vec<&'a RawValue>>(b.get())
                    .map_err(|e| e.to_string())?;
                let (span_a, span_b) = (span(self.client, a)?, span(self.sent, b)?);
                self.same_skeleton(span_a, &elements_a, span_b, &elements_b, path)?;
                let inner = if place == Place::Fixed {
                    Place::Fixed
                } else {
                    Place::Output
                };
                for (index, (a, b)) in elements_a.into_iter().zip(elements_b).enumerate() {
                    path.push(Segment::Index(index));
                    self.value(a, b, path, inner)?;
                    path.pop();
                }
                Ok(())
            }
            _ => Err(format!(
                "{}: changed outside a tool output: {} became {}",
                show_path(path),
                excerpt(a.get()),
                excerpt(b.get())
            )),
        }
    }

    fn object_members(
        &mut self,
        a: OrderedObject<'a>,
        span_a: Range<usize>,
        b: OrderedObject<'a>,
        span_b: Range<usize>,
        path: &mut Vec<Segment>,
        place: Place,
    ) -> Result<(), String> {
        let mut members_b = b.0;
        let is_root = path.is_empty();
        if is_root {
            let tools_a = a.get("tools");
            let added = tools_a.is_none() && members_b.iter().any(|(key, _)| key == "tools");
            if added {
                // Added after the client's members: the skeleton shows it before the root's `}`.
                let position = members_b.iter().rposition(|(key, _)| key == "tools");
                let (_, tools_b) = members_b.remove(position.unwrap_or_default());
                let values_a: Vec<&RawValue> = a.0.iter().map(|(_, v)| *v).collect();
                let values_b: Vec<&RawValue> = members_b.iter().map(|(_, v)| *v).collect();
                let mut expected = skeleton(self.client, span_a.clone(), &values_a)?;
                let close = expected.rfind('}').ok_or("the root has no end")?;
                let comma = if values_a.is_empty() { "" } else { "," };
                expected.insert_str(close, &format!("{comma}\"tools\":\u{0}"));
                let mut with_tools = values_b.clone();
                with_tools.push(tools_b);
                with_tools.sort_by_key(|value| value.get().as_ptr() as usize);
                let got = skeleton(self.sent, span_b.clone(), &with_tools)?;
                if got != expected {
                    return Err(format!(
                        "the root changed beyond an added tools member: {} became {}",
                        excerpt(&expected),
                        excerpt(&got)
                    ));
                }
                self.tools = Some((None, tools_b));
            } else {
                let values_a: Vec<&RawValue> = a.0.iter().map(|(_, v)| *v).collect();
                let values_b: Vec<&RawValue> = members_b.iter().map(|(_, v)| *v).collect();
                self.same_skeleton(span_a, &values_a, span_b, &values_b, path)?;
            }
        } else {
            let values_a: Vec<&RawValue> = a.0.iter().map(|(_, v)| *v).collect();
            let values_b: Vec<&RawValue> = members_b.iter().map(|(_, v)| *v).collect();
            self.same_skeleton(span_a, &values_a, span_b, &values_b, path)?;
        }
        for ((key, value_a), (_, value_b)) in a.0.iter().zip(&members_b) {
            if is_root && key == "tools" {
                if value_a.get() != value_b.get() {
                    self.tools = Some((Some(value_a), value_b));
                }
                continue;
            }
            let inner = self.place_of(path, &a, key, place);
            path.push(Segment::Key(key.to_string()));
            self.value(value_a, value_b, path, inner)?;
            path.pop();
        }
        Ok(())
    }

    fn same_skeleton(
        &self,
        span_a: Range<usize>,
        children_a: &[&RawValue],
        span_b: Range<usize>,
        children_b: &[&RawValue],
        path: &[Segment],
    ) -> Result<(), String> {
        let skeleton_a = skeleton(self.client, span_a, children_a)?;
        let skeleton_b = skeleton(self.sent, span_b, children_b)?;
        if skeleton_a != skeleton_b {
            return Err(format!(
                "{}: bytes between values changed: {} became {}",
                show_path(path),
                excerpt(&skeleton_a),
                excerpt(&skeleton_b)
            ));
        }
        Ok(())
    }

    /// Where the member `key` of the object `parent` at `path` sits: each API's tool outputs,
    /// by the README's table.
    fn place_of(
        &self,
        path: &[Segment],
        parent: &OrderedObject<'_>,
        key: &str,
        place: Place,
    ) -> Place {
        if place != Place::Fixed {
            return Place::Output;
        }
        let member_is = |name: &str, values: &[&str]| {
            parent
                .0
                .iter()
                .any(|(k, v)| k == name && values.contains(&v.get()))
        };
        let key_at = |index: usize, name: &str| matches!(path.get(index), Some(Segment::Key(k)) if k == name);
        let index_at = |index: usize| matches!(path.get(index), Some(Segment::Index(_)));
        let output = match self.api {
            Api::Chat => {
                path.len() == 2
                    && key_at(0, "messages")
                    && index_at(1)
                    && key == "content"
                    && member_is("role", &["\"tool\""])
            }
            Api::Responses => {
                path.len() == 2
                    && key_at(0, "input")
                    && index_at(1)
                    && key == "output"
                    && member_is(
                        "type",
                        &["\"function_call_output\"", "\"custom_tool_call_output\""],
                    )
            }
            Api::Anthropic => {
                path.len() == 4
                    && key_at(0, "messages")
                    && index_at(1)
                    && key_at(2, "content")
                    && index_at(3)
                    && key == "content"
                    && member_is("type", &["\"tool_result\""])
            }
            Api::Gemini => {
                let response = path.len() == 5
                    && key_at(0, "contents")
                    && index_at(1)
                    && key_at(2, "parts")
                    && index_at(3)
                    && (key_at(4, "functionResponse") || key_at(4, "function_response"))
                    && key == "response";
                if response {
                    return Place::OutputRoot;
                }
                false
            }
        };
        if output { Place::Output } else { Place::Fixed }
    }
}

/// The bytes of the container at `span` with each child's bytes replaced by a NUL (which valid
/// JSON never holds outside a string).
fn skeleton(body: &str, span: Range<usize>, children: &[&RawValue]) -> Result<String, String> {
    let mut out = String::with_capacity(span.len().min(4096));
    let mut cursor = span.start;
    for child in children {
        let child = span_of(body, child).ok_or("a value outside its body")?;
        out.push_str(
            body.get(cursor..child.start)
                .ok_or("children out of order")?,
        );
        out.push('\u{0}');
        cursor = child.end;
    }
    out.push_str(
        body.get(cursor..span.end)
            .ok_or("a child past its container")?,
    );
    Ok(out)
}

/// The name of a tool declaration in a `tools` array element (Gemini: of a function
/// declaration).
fn declared_name(api: Api, tool: &Value) -> Option<&str> {
    match api {
        Api::Chat => tool["function"]["name"].as_str(),
        Api::Responses | Api::Anthropic | Api::Gemini => tool["name"].as_str(),
    }
}

/// Checks the `tools` member the layer changed: the client's tools byte for byte, then the
/// retrieval tool once (Gemini: in the first `functionDeclarations` array, or in a new tool
/// object after the client's).
fn check_tools(
    api: Api,
    client_tools: Option<&RawValue>,
    sent_tools: &RawValue,
) -> Result<(), String> {
    let client_elements: Vec<&RawValue> = match client_tools {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| "tools changed although the client's tools is not an array".to_owned())?,
    };
    let sent_elements: Vec<&RawValue> = serde_json::from_str(sent_tools.get())
        .map_err(|_| "tools went upstream as a non-array".to_owned())?;
    let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
    let ours = |raw: &RawValue| declared_name(api, &parse(raw)) == Some(TOOL);
    let same_prefix = sent_elements.len() == client_elements.len() + 1
        && client_elements
            .iter()
            .zip(&sent_elements)
            .all(|(a, b)| a.get() == b.get());
    if api != Api::Gemini {
        if same_prefix && sent_elements.last().is_some_and(|raw| ours(raw)) {
            return Ok(());
        }
        return Err(format!(
            "tools is not the client's tools plus the retrieval tool: {}",
            excerpt(sent_tools.get())
        ));
    }
    let declarations_of = |raw: &RawValue| -> Option<Vec<Value>> {
        let tool = parse(raw);
        let declarations = tool
            .get("functionDeclarations")
            .or_else(|| tool.get("function_declarations"))?;
        declarations.as_array().cloned()
    };
    if same_prefix
        && let Some(last) = sent_elements.last()
        && declarations_of(last)
            .is_some_and(|d| d.len() == 1 && declared_name(api, &d[0]) == Some(TOOL))
    {
        return Ok(());
    }
    // Appended to one tool object's declarations: that object changed, the others did not.
    if sent_elements.len() == client_elements.len() {
        let changed: Vec<usize> = (0..sent_elements.len())
            .filter(|&i| client_elements[i].get() != sent_elements[i].get())
            .collect();
        if let [index] = changed.as_slice() {
            let (before, after) = (client_elements[*index], sent_elements[*index]);
            if let (Some(mut declarations), Some(old)) =
                (declarations_of(after), declarations_of(before))
                && declarations
                    .pop()
                    .is_some_and(|d| declared_name(api, &d) == Some(TOOL))
                && declarations == old
            {
                // Byte fidelity: the tool object is the client's with text inserted once.
                let (a, b) = (before.get(), after.get());
                let prefix = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
                let suffix = a[prefix..]
                    .bytes()
                    .rev()
                    .zip(b[prefix..].bytes().rev())
                    .take_while(|(x, y)| x == y)
                    .count();
                if prefix + suffix == a.len() {
                    return Ok(());
                }
            }
        }
    }
    Err(format!(
        "Gemini tools are not the client's plus the retrieval tool: {}",
        excerpt(sent_tools.get())
    ))
}

/// The id of a view's marker, when the view ends with one.
fn view_marker_id(view: &str) -> Option<&str> {
    let rest = view.strip_suffix(']')?;
    let at = rest.rfind(MARKER_TAG)?;
    let id = &rest[at + MARKER_TAG.len()..];
    (id.len() == ID_HEX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(id)
}

/// Whether `text` is one JSON document or JSON lines: the only outputs a view may render
/// without a marker.
fn is_json_or_lines(text: &str) -> bool {
    if is_json(text.trim().as_bytes()) {
        return true;
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines: Vec<&str> = body.split('\n').collect();
    lines.len() >= 2 && lines.iter().all(|line| is_json(line.trim().as_bytes()))
}

/// Checks one replaced output: a lossy view ends in a marker whose id gives back the exact
/// original; a view without one is a lossless rendering of JSON.
fn check_replacement(handle: &CcrHandle, replacement: &Replacement) -> Result<bool, String> {
    let Replacement {
        path,
        original,
        view,
    } = replacement;
    match view_marker_id(view) {
        Some(id) => {
            let stored = block_on(handle.retrieve(id))
                .map_err(|e| format!("{path}: the store failed: {e}"))?;
            match stored {
                Some(stored) if *stored == **original => Ok(true),
                Some(stored) => Err(format!(
                    "{path}: hash={id} gives back {} instead of the original {}",
                    excerpt(&stored),
                    excerpt(original)
                )),
                None => Err(format!("{path}: the marker's hash={id} does not resolve")),
            }
        }
        None => {
            if !is_json_or_lines(original) {
                return Err(format!(
                    "{path}: replaced without a marker, but the original is not JSON: {} became {}",
                    excerpt(original),
                    excerpt(view)
                ));
            }
            if estimate_tokens(view) >= estimate_tokens(original) {
                return Err(format!(
                    "{path}: a lossless view that saves nothing: {}",
                    excerpt(view)
                ));
            }
            if let (Ok(view_value), Ok(original_value)) = (
                serde_json::from_str::<Value>(view),
                serde_json::from_str::<Value>(original.trim()),
            ) && view_value != original_value
            {
                return Err(format!(
                    "{path}: a lossless view that is other JSON: {}",
                    excerpt(view)
                ));
            }
            Ok(false)
        }
    }
}

/// Checks what went upstream for a client's request body. Returns the number of markers and
/// the outputs replaced.
fn check_rewrite(
    api: Api,
    handle: &CcrHandle,
    client: &[u8],
    sent: &[u8],
) -> (usize, Vec<Replacement>) {
    let client_json = std::str::from_utf8(client)
        .ok()
        .filter(|text| is_json(text.as_bytes()));
    let Some(client_text) = client_json else {
        assert!(
            client == sent,
            "a request body that is not JSON went upstream changed: {} became {}",
            excerpt(&String::from_utf8_lossy(client)),
            excerpt(&String::from_utf8_lossy(sent))
        );
        return (0, Vec::new());
    };
    let sent_text = match std::str::from_utf8(sent) {
        Ok(text) if is_json(sent) => text,
        _ => panic!(
            "valid JSON in, invalid JSON upstream: {}",
            excerpt(&String::from_utf8_lossy(sent))
        ),
    };
    let check = match RewriteCheck::run(api, client_text, sent_text) {
        Ok(check) => check,
        Err(violation) => panic!("{api:?}: byte fidelity: {violation}"),
    };
    let mut markers = 0;
    for replacement in &check.replacements {
        match check_replacement(handle, replacement) {
            Ok(marker) => markers += usize::from(marker),
            Err(violation) => panic!("{api:?}: {violation}"),
        }
    }
    match check.tools {
        Some((client_tools, sent_tools)) => {
            if let Err(violation) = check_tools(api, client_tools, sent_tools) {
                panic!("{api:?}: {violation}");
            }
            assert!(
                markers > 0,
                "{api:?}: the retrieval tool was added without a marker to redeem"
            );
        }
        None => assert!(
            markers == 0,
            "{api:?}: {markers} marker(s) went upstream without the retrieval tool"
        ),
    }
    (markers, check.replacements)
}

/// Whether some string in `json` is `original`, or (a paged answer) starts with a long prefix
/// of it.
fn holds_original(json: &Value, original: &str) -> bool {
    match json {
        Value::String(text) => {
            text == original
                || (original.len() > 4096 && {
                    let mut cut = 1024;
                    while !original.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.starts_with(&original[..cut])
                })
        }
        Value::Array(elements) => elements.iter().any(|e| holds_original(e, original)),
        Value::Object(members) => members.values().any(|v| holds_original(v, original)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Target: request rewriting.

/// Request rewriting for each API: a raw body, a generated conversation, or a generated one
/// with a few bytes changed. Invariants: a body that is not JSON goes upstream byte-identical;
/// valid JSON stays valid; only tool-output strings and `tools` change, every other byte stays;
/// every marker resolves to the exact original; the tool is added exactly when a marker went
/// out, never when the model could not call it; excluded tools and the layer's own answers are
/// never replaced; the same request gives the same bytes again; a full retrieval of a marker is
/// answered with the original.
pub fn request(data: &[u8]) {
    let mut input = Input::new(data);
    let head = input.byte();
    let api = APIS[usize::from(head) % 4];
    let mode = usize::from(head >> 2) % 4;
    let retrieve = head & 0x10 != 0;
    let opt_out = head >> 5 == 7;
    let (body, conversation) = match mode {
        0 => (input.rest().to_vec(), None),
        _ => {
            let conversation = Conversation::generate(&mut input);
            let style = Style::from_byte(input.byte());
            let mut body = conversation.render(api).render(style).into_bytes();
            if mode == 3 {
                // A few bytes changed: near-valid JSON.
                while !input.is_empty() && !body.is_empty() {
                    let at = input.below(body.len());
                    match input.below(3) {
                        0 => body[at] = input.byte(),
                        1 => {
                            body.remove(at);
                        }
                        _ => body.insert(at, input.pick(b"{}[]\",:\\ 0an")),
                    }
                }
            }
            (body, Some(conversation))
        }
    };
    let stream = conversation.as_ref().is_some_and(|c| c.stream);
    let make_request = |body: &[u8]| {
        let mut request = api.post(stream, body.to_vec());
        if opt_out {
            request
                .headers_mut()
                .insert(crate::OPT_OUT_HEADER, http::HeaderValue::from_static("off"));
        }
        request
    };

    let store = new_store();
    let layer = fuzz_layer(store);
    let handle = layer.handle();
    // Markers the client wrote itself (forged, or copied) are none of the layer's: the scripted
    // model retrieves only what the layer issued.
    let client_ids = marker_ids(&String::from_utf8_lossy(&body));
    let upstream = Upstream::new(move |round, request| {
        let issued = marker_ids(&request.text())
            .into_iter()
            .find(|id| !client_ids.contains(id));
        match issued.as_ref() {
            Some(id) if retrieve && round == 0 => Answer::json(
                retrieval_call(api, &obj([("hash", s(id.clone()))]).compact()).compact(),
            ),
            _ => Answer::json(final_answer(api, "Done.").compact()),
        }
    });
    let saw = exchange(&layer, &upstream, make_request(&body));
    let requests = upstream.requests();
    let Some(first) = requests.first() else {
        panic!("{api:?}: the request never reached the upstream");
    };
    assert!(
        saw.error.is_none(),
        "{api:?}: the response body failed: {:?}",
        saw.error
    );
    assert_eq!(
        saw.status,
        StatusCode::OK,
        "{api:?}: the upstream's status changed"
    );

    if opt_out {
        assert!(
            first.body == body,
            "{api:?}: a request with x-ccr: off was changed"
        );
    }
    let (markers, replacements) = check_rewrite(api, &handle, &body, &first.body);
    if let Some(conversation) = &conversation
        && mode != 3
    {
        if !conversation.redeemable() {
            assert_eq!(
                markers, 0,
                "{api:?}: a marker went out although the model cannot call the tool"
            );
        }
        let protected = conversation.protected_texts(api);
        for replacement in &replacements {
            assert!(
                !protected.contains(replacement.original.as_str()),
                "{api:?}: {}: the output of an excluded tool or of the layer's own tool was replaced",
                replacement.path
            );
        }
    }

    // The client's answer: valid JSON, without the retrieval tool (when the layer added it:
    // a client may declare a tool of that name itself).
    if let Ok(answer) = serde_json::from_slice::<Value>(&saw.body) {
        if markers > 0 {
            assert_eq!(
                our_calls_in(api, &answer),
                0,
                "{api:?}: the client got a retrieval call"
            );
        }
    } else {
        panic!(
            "{api:?}: the client's response is not JSON: {}",
            excerpt(&String::from_utf8_lossy(&saw.body))
        );
    }

    // A full retrieval of an issued id is answered with the original.
    let client_ids = marker_ids(&String::from_utf8_lossy(&body));
    let first_id = marker_ids(&first.text())
        .into_iter()
        .find(|id| !client_ids.contains(id));
    if retrieve && let Some(id) = first_id.filter(|_| markers > 0) {
        assert_eq!(
            requests.len(),
            2,
            "{api:?}: a retrieval of an issued id was not continued"
        );
        let continuation: Value = match serde_json::from_slice(&requests[1].body) {
            Ok(value) => value,
            Err(error) => panic!("{api:?}: the continuation is not JSON: {error}"),
        };
        let original = block_on(handle.retrieve(&id)).ok().flatten();
        let Some(original) = original else {
            panic!("{api:?}: hash={id} went out but does not resolve");
        };
        assert!(
            holds_original(&continuation, &original),
            "{api:?}: the continuation does not carry the original of hash={id}"
        );
    }
    for continuation in requests.iter().skip(1) {
        assert!(
            is_json(&continuation.body),
            "{api:?}: a continuation is not JSON"
        );
    }

    // Determinism: the same request again (its originals now stored) gives the same bytes.
    let again = Upstream::new(move |_, _| Answer::json(final_answer(api, "Done.").compact()));
    exchange(&layer, &again, make_request(&body));
    let again = again.requests();
    assert!(
        again.first().is_some_and(|r| r.body == first.body),
        "{api:?}: the same request went upstream with other bytes the second time"
    );
}

// ---------------------------------------------------------------------------------------------
// Fixed requests that get the retrieval tool, and generated model turns.

/// The fixed conversation of the response and stream targets: one large `bash` output (so the
/// tool is injected), and a user question that names `named_hash` (so that a retrieval of it
/// reaches the store's tenant check).
fn fixed_conversation(stream: bool, named_hash: &str) -> Conversation {
    Conversation {
        question: format!("Why did the payment fail? Compare hash={named_hash}."),
        turns: vec![ToolTurn {
            call_id: "call_0".into(),
            tool: "bash",
            arguments: "{\"cmd\":\"cat app.log\"}".into(),
            call_in_history: true,
            shape: 0,
            is_error: false,
            output: fixed_log(),
        }],
        tools: 1,
        choice: 0,
        stream,
        several: false,
        extra_first: false,
        system: false,
        chained: false,
        snake: false,
    }
}

/// Text stored for another tenant: it must never reach this tenant's requests.
const FOREIGN_SENTINEL: &str = "FOREIGN-TENANT-SENTINEL";

/// Stores an original for another tenant (as the layer would have, for a request of `bob`) and
/// returns its id.
fn store_foreign_original(store: &MemoryStore) -> String {
    let key = IdKey::from_secret(SECRET.as_bytes());
    let tenant = key.tenant(b"Bearer bob");
    let original: String = (0..40)
        .map(|i| format!("{FOREIGN_SENTINEL} line {i}\n"))
        .collect();
    let id = key.entry(&tenant, &original);
    let entry = Entry {
        tenant,
        original: Arc::from(original),
    };
    let stored = block_on(store.put(id.clone(), entry, Retention::default()));
    assert!(
        matches!(stored, Ok(true)),
        "the foreign original was not stored"
    );
    id.to_string()
}

/// Ids a generated model turn may ask for.
struct Ids {
    /// The id of the request's marker.
    issued: Option<String>,
    /// Another tenant's id, named in the conversation.
    foreign: String,
}

fn gen_arguments(input: &mut Input<'_>, ids: &Ids) -> String {
    let issued = ids
        .issued
        .clone()
        .unwrap_or_else(|| "0123456789abcdef01234567".into());
    match input.below(9) {
        0..=2 => obj([("hash", s(issued))]).compact(),
        3 => obj([("hash", s(issued)), ("query", s(gen_words(input, 4)))]).compact(),
        4 => obj([("hash", s(ids.foreign.clone()))]).compact(),
        5 => obj([("hash", s(format!(" hash={} ", issued.to_ascii_uppercase())))]).compact(),
        6 => obj([("hash", s("fedcba9876543210fedcba98"))]).compact(),
        7 => format!("not json {}", gen_words(input, 3)),
        _ => obj([("query", s(gen_words(input, 2)))]).compact(),
    }
}

fn gen_calls(input: &mut Input<'_>, ids: &Ids) -> Vec<ResponseCall> {
    let count = input.pick(&[0, 1, 1, 1, 2, 3]);
    (0..count)
        .map(|index| {
            let name = input.pick(&[TOOL, TOOL, "bash", EXCLUDED_TOOL]);
            let id = match input.below(8) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(format!("call_{index}")),
            };
            let arguments = if name == TOOL {
                gen_arguments(input, ids)
            } else {
                obj([("cmd", s(gen_words(input, 3)))]).compact()
            };
            ResponseCall {
                name,
                id,
                arguments,
                arguments_as_object: input.below(6) == 0,
            }
        })
        .collect()
}

fn gen_usage(api: Api, input: &mut Input<'_>) -> Option<Json> {
    let normal = || match api {
        Api::Chat => chat_usage(100, 9),
        Api::Responses => responses_usage(100, 9),
        Api::Anthropic => anthropic_usage(100, 9),
        Api::Gemini => gemini_usage(100, 9),
    };
    match input.below(8) {
        0 => None,
        1 => Some(Json::Null),
        2 => Some(obj([
            ("prompt_tokens", s("many")),
            ("input_tokens", Json::Raw("-1".into())),
        ])),
        3 => Some(normal().with(
            "details",
            obj([("cached_tokens", Json::Raw("1e300".into()))]),
        )),
        _ => Some(normal()),
    }
}

/// A non-streamed model turn of any shape the API allows (and some it does not).
fn gen_response(api: Api, input: &mut Input<'_>, ids: &Ids) -> Json {
    match api {
        Api::Chat => {
            let count = if input.below(8) == 0 { 2 } else { 1 };
            let choices: Vec<_> = (0..count)
                .map(|_| {
                    let content = input.flag().then(|| gen_words(input, 6));
                    let calls = gen_calls(input, ids);
                    let finish = if calls.is_empty() {
                        input.pick(&[Some("stop"), Some("length"), None])
                    } else {
                        input.pick(&[Some("tool_calls"), Some("tool_calls"), Some("stop"), None])
                    };
                    (content, calls, finish)
                })
                .collect();
            chat_response(&choices, gen_usage(api, input))
        }
        Api::Responses => {
            let count = input.below(5);
            let items: Vec<_> = (0..count)
                .map(|_| match input.below(6) {
                    0 => ResponsesItem::Message(gen_words(input, 6)),
                    1 => ResponsesItem::Reasoning,
                    2 => ResponsesItem::WebSearch,
                    _ => match gen_calls(input, ids).into_iter().next() {
                        Some(call) => ResponsesItem::Call(call),
                        None => ResponsesItem::Message(gen_words(input, 2)),
                    },
                })
                .collect();
            responses_response(&items, gen_usage(api, input))
        }
        Api::Anthropic => {
            let count = input.below(5);
            let blocks: Vec<_> = (0..count)
                .map(|_| match input.below(5) {
                    0 => AnthropicBlock::Text(gen_words(input, 6)),
                    1 => AnthropicBlock::Thinking,
                    _ => match gen_calls(input, ids).into_iter().next() {
                        Some(call) => AnthropicBlock::Call(call),
                        None => AnthropicBlock::Text(gen_words(input, 2)),
                    },
                })
                .collect();
            let stop = input.pick(&[
                Some("tool_use"),
                Some("tool_use"),
                Some("end_turn"),
                Some("max_tokens"),
                Some("pause_turn"),
                None,
            ]);
            anthropic_response(&blocks, stop, gen_usage(api, input))
        }
        Api::Gemini => {
            let count = if input.below(8) == 0 { 2 } else { 1 };
            let candidates: Vec<Vec<GeminiPart>> = (0..count)
                .map(|_| {
                    let parts = input.below(5);
                    (0..parts)
                        .map(|_| match input.below(5) {
                            0 => GeminiPart::Text(gen_words(input, 6)),
                            1 => GeminiPart::Thought,
                            _ => match gen_calls(input, ids).into_iter().next() {
                                Some(call) => GeminiPart::Call(call, input.flag()),
                                None => GeminiPart::Text(gen_words(input, 2)),
                            },
                        })
                        .collect()
                })
                .collect();
            gemini_response(&candidates, gen_usage(api, input))
        }
    }
}

/// Changes some values of `json` to other types, and drops some members: the shapes a
/// confused server may send.
fn perturb(json: Json, input: &mut Input<'_>) -> Json {
    let byte = input.byte();
    if byte >= 0xF8 {
        return match byte & 7 {
            0 => Json::Null,
            1 => Json::Num(-1),
            2 => s("x"),
            3 => arr([]),
            4 => Json::Obj(Vec::new()),
            5 => Json::Bool(false),
            6 => Json::Raw("18446744073709551616".into()),
            _ => Json::Raw("-0.0e-5".into()),
        };
    }
    match json {
        Json::Arr(elements) => Json::Arr(elements.into_iter().map(|e| perturb(e, input)).collect()),
        Json::Obj(members) => Json::Obj(
            members
                .into_iter()
                .filter_map(|(key, value)| {
                    (input.byte() != 0xF7).then(|| (key, perturb(value, input)))
                })
                .collect(),
        ),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Streams.

/// One piece of a generated stream.
#[derive(Clone, Debug)]
enum StreamPiece {
    Event {
        name: Option<String>,
        data: String,
    },
    /// Bytes written as they are (comments, blank lines).
    Raw(String),
}

fn event(name: Option<&str>, data: &Json) -> StreamPiece {
    StreamPiece::Event {
        name: name.map(str::to_owned),
        data: data.compact(),
    }
}

/// `text` in 1 to 4 pieces cut on char boundaries.
fn pieces(text: &str, input: &mut Input<'_>) -> Vec<String> {
    let count = 1 + input.below(4);
    let mut cuts: Vec<usize> = (1..count).map(|_| input.below(text.len() + 1)).collect();
    cuts.push(0);
    cuts.push(text.len());
    cuts.sort_unstable();
    cuts.windows(2)
        .filter_map(|w| {
            let (mut start, mut end) = (w[0], w[1]);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (start < end).then(|| text[start..end].to_owned())
        })
        .collect()
}

fn chat_chunk(delta: Json, finish: Option<&str>) -> Json {
    obj([
        ("id", s("chatcmpl-1")),
        ("object", s("chat.completion.chunk")),
        ("created", Json::Num(7)),
        ("model", s("gpt-x")),
        (
            "choices",
            arr([obj([
                ("index", Json::Num(0)),
                ("delta", delta),
                ("finish_reason", finish.map_or(Json::Null, s)),
            ])]),
        ),
    ])
}

fn responses_object(status: &str, output: Json, usage: Json) -> Json {
    obj([
        ("id", s("resp_1")),
        ("object", s("response")),
        ("status", s(status)),
        ("model", s("gpt-5")),
        ("output", output),
        ("usage", usage),
    ])
}

fn gemini_chunk(parts: Vec<Json>, finish: bool, usage: Json) -> Json {
    let mut candidate = obj([
        (
            "content",
            obj([("role", s("model")), ("parts", Json::Arr(parts))]),
        ),
        ("index", Json::Num(0)),
    ]);
    if finish {
        candidate = candidate.with("finishReason", s("STOP"));
    }
    obj([
        ("candidates", arr([candidate])),
        ("usageMetadata", usage),
        ("modelVersion", s("gemini-x")),
        ("responseId", s("r_1")),
    ])
}

/// A streamed model turn: maybe text, then calls, then the events that end a round.
fn gen_stream(api: Api, input: &mut Input<'_>, ids: &Ids) -> Vec<StreamPiece> {
    let text = input.flag().then(|| gen_words(input, 5));
    let calls = gen_calls(input, ids);
    let mut out = Vec::new();
    match api {
        Api::Chat => {
            out.push(event(
                None,
                &chat_chunk(obj([("role", s("assistant")), ("content", s(""))]), None),
            ));
            if let Some(text) = &text {
                for piece in pieces(text, input) {
                    out.push(event(None, &chat_chunk(obj([("content", s(piece))]), None)));
                }
            }
            for (index, call) in calls.iter().enumerate() {
                let mut start = obj([("index", Json::Num(index as i64))]);
                if let Some(id) = &call.id {
                    start = start.with("id", s(id.clone()));
                }
                let start = start.with("type", s("function")).with(
                    "function",
                    obj([("name", s(call.name)), ("arguments", s(""))]),
                );
                out.push(event(
                    None,
                    &chat_chunk(obj([("tool_calls", arr([start]))]), None),
                ));
                for piece in pieces(&call.arguments, input) {
                    let fragment = obj([
                        ("index", Json::Num(index as i64)),
                        ("function", obj([("arguments", s(piece))])),
                    ]);
                    out.push(event(
                        None,
                        &chat_chunk(obj([("tool_calls", arr([fragment]))]), None),
                    ));
                }
            }
            let finish = if calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            out.push(event(None, &chat_chunk(obj([]), Some(finish))));
            if input.below(4) != 0 {
                let usage = obj([
                    ("id", s("chatcmpl-1")),
                    ("object", s("chat.completion.chunk")),
                    ("choices", arr([])),
                    ("usage", chat_usage(100, 9)),
                ]);
                out.push(event(None, &usage));
            }
            out.push(StreamPiece::Event {
                name: None,
                data: "[DONE]".into(),
            });
        }
        Api::Responses => {
            let mut events: Vec<(String, Json)> = Vec::new();
            let created = responses_object("in_progress", arr([]), Json::Null);
            events.push((
                "response.created".into(),
                obj([("response", created.clone())]),
            ));
            events.push(("response.in_progress".into(), obj([("response", created)])));
            let mut done_items = Vec::new();
            let mut index = 0;
            if let Some(text) = &text {
                let id = format!("msg_{index}");
                let output_index = Json::Num(index as i64);
                events.push((
                    "response.output_item.added".into(),
                    obj([
                        ("output_index", output_index.clone()),
                        (
                            "item",
                            obj([
                                ("id", s(id.clone())),
                                ("type", s("message")),
                                ("status", s("in_progress")),
                                ("role", s("assistant")),
                                ("content", arr([])),
                            ]),
                        ),
                    ]),
                ));
                for piece in pieces(text, input) {
                    events.push((
                        "response.output_text.delta".into(),
                        obj([
                            ("item_id", s(id.clone())),
                            ("output_index", output_index.clone()),
                            ("content_index", Json::Num(0)),
                            ("delta", s(piece)),
                        ]),
                    ));
                }
                let item = ResponsesItem::Message(text.clone()).json(index);
                events.push((
                    "response.output_item.done".into(),
                    obj([("output_index", output_index), ("item", item.clone())]),
                ));
                done_items.push(item);
                index += 1;
            }
            for call in &calls {
                let id = format!("fc_{index}");
                let output_index = Json::Num(index as i64);
                let mut added = obj([
                    ("id", s(id.clone())),
                    ("type", s("function_call")),
                    ("status", s("in_progress")),
                    ("arguments", s("")),
                ]);
                if let Some(call_id) = &call.id {
                    added = added.with("call_id", s(call_id.clone()));
                }
                added = added.with("name", s(call.name));
                events.push((
                    "response.output_item.added".into(),
                    obj([("output_index", output_index.clone()), ("item", added)]),
                ));
                for piece in pieces(&call.arguments, input) {
                    events.push((
                        "response.function_call_arguments.delta".into(),
                        obj([
                            ("item_id", s(id.clone())),
                            ("output_index", output_index.clone()),
                            ("delta", s(piece)),
                        ]),
                    ));
                }
                events.push((
                    "response.function_call_arguments.done".into(),
                    obj([
                        ("item_id", s(id.clone())),
                        ("output_index", output_index.clone()),
                        ("arguments", s(call.arguments.clone())),
                    ]),
                ));
                let item = ResponsesItem::Call(call.clone()).json(index);
                events.push((
                    "response.output_item.done".into(),
                    obj([("output_index", output_index), ("item", item.clone())]),
                ));
                done_items.push(item);
                index += 1;
            }
            let output = if input.flag() {
                Json::Null
            } else {
                Json::Arr(done_items)
            };
            let completed = responses_object("completed", output, responses_usage(100, 9));
            events.push(("response.completed".into(), obj([("response", completed)])));
            for (number, (kind, data)) in events.into_iter().enumerate() {
                let mut members = vec![("type".to_owned(), s(kind.clone()))];
                if let Json::Obj(rest) = data {
                    members.extend(rest);
                }
                members.push(("sequence_number".into(), Json::Num(number as i64)));
                out.push(event(Some(&kind), &Json::Obj(members)));
            }
        }
        Api::Anthropic => {
            let typed = |kind: &str, data: Json| {
                let mut members = vec![("type".to_owned(), s(kind))];
                if let Json::Obj(rest) = data {
                    members.extend(rest);
                }
                event(Some(kind), &Json::Obj(members))
            };
            let message = obj([
                ("id", s("msg_1")),
                ("type", s("message")),
                ("role", s("assistant")),
                ("model", s("claude-x")),
                ("content", arr([])),
                ("stop_reason", Json::Null),
                ("stop_sequence", Json::Null),
                ("usage", anthropic_usage(100, 1)),
            ]);
            out.push(typed("message_start", obj([("message", message)])));
            out.push(typed("ping", obj([])));
            // One content block: its start, `text` in the input's pieces as `delta_type`
            // deltas (the piece under `field`), its stop.
            let mut index = 0;
            let mut block = |out: &mut Vec<StreamPiece>,
                             input: &mut Input<'_>,
                             content_block: Json,
                             (delta_type, field): (&str, &str),
                             text: &str| {
                out.push(typed(
                    "content_block_start",
                    obj([
                        ("index", Json::Num(index)),
                        ("content_block", content_block),
                    ]),
                ));
                for piece in pieces(text, input) {
                    let delta = obj([("type", s(delta_type)), (field, s(piece))]);
                    out.push(typed(
                        "content_block_delta",
                        obj([("index", Json::Num(index)), ("delta", delta)]),
                    ));
                }
                out.push(typed(
                    "content_block_stop",
                    obj([("index", Json::Num(index))]),
                ));
                index += 1;
            };
            if let Some(text) = &text {
                let content_block = obj([("type", s("text")), ("text", s(""))]);
                block(&mut out, input, content_block, ("text_delta", "text"), text);
            }
            for call in &calls {
                let mut content_block = obj([("type", s("tool_use"))]);
                if let Some(id) = &call.id {
                    content_block = content_block.with("id", s(id.clone()));
                }
                content_block = content_block
                    .with("name", s(call.name))
                    .with("input", obj([]));
                let delta = ("input_json_delta", "partial_json");
                block(&mut out, input, content_block, delta, &call.arguments);
            }
            let stop = if calls.is_empty() {
                "end_turn"
            } else {
                "tool_use"
            };
            out.push(typed(
                "message_delta",
                obj([
                    (
                        "delta",
                        obj([("stop_reason", s(stop)), ("stop_sequence", Json::Null)]),
                    ),
                    ("usage", obj([("output_tokens", Json::Num(9))])),
                ]),
            ));
            out.push(typed("message_stop", obj([])));
        }
        Api::Gemini => {
            let usage = gemini_usage(100, 9);
            let mut chunks: Vec<Vec<Json>> = Vec::new();
            if let Some(text) = &text {
                for piece in pieces(text, input) {
                    chunks.push(vec![obj([("text", s(piece))])]);
                }
            }
            let together = input.flag();
            let mut call_parts: Vec<Json> = calls
                .iter()
                .map(|call| GeminiPart::Call(call.clone(), false).json())
                .collect();
            if together || call_parts.is_empty() {
                chunks.push(std::mem::take(&mut call_parts));
            } else {
                chunks.extend(call_parts.into_iter().map(|part| vec![part]));
            }
            let last = chunks.len().saturating_sub(1);
            for (index, parts) in chunks.into_iter().enumerate() {
                out.push(event(
                    None,
                    &gemini_chunk(parts, index == last, usage.clone()),
                ));
            }
        }
    }
    out
}

/// The fixed stream of a final answer, for the rounds after the fuzzed one.
fn final_stream(api: Api) -> Vec<u8> {
    let mut input = Input::new(&[]);
    let pieces: Vec<StreamPiece> = match api {
        Api::Chat => vec![
            event(
                None,
                &chat_chunk(obj([("role", s("assistant")), ("content", s(""))]), None),
            ),
            event(None, &chat_chunk(obj([("content", s("All done."))]), None)),
            event(None, &chat_chunk(obj([]), Some("stop"))),
            StreamPiece::Event {
                name: None,
                data: "[DONE]".into(),
            },
        ],
        Api::Responses => {
            let created = responses_object("in_progress", arr([]), Json::Null);
            let item = ResponsesItem::Message("All done.".into()).json(0);
            let completed =
                responses_object("completed", arr([item.clone()]), responses_usage(10, 2));
            let kinds = [
                ("response.created", obj([("response", created)])),
                (
                    "response.output_item.done",
                    obj([("output_index", Json::Num(0)), ("item", item)]),
                ),
                ("response.completed", obj([("response", completed)])),
            ];
            kinds
                .into_iter()
                .enumerate()
                .map(|(number, (kind, data))| {
                    let mut members = vec![("type".to_owned(), s(kind))];
                    if let Json::Obj(rest) = data {
                        members.extend(rest);
                    }
                    members.push(("sequence_number".into(), Json::Num(number as i64)));
                    event(Some(kind), &Json::Obj(members))
                })
                .collect()
        }
        Api::Anthropic => {
            let message = obj([
                ("type", s("message_start")),
                (
                    "message",
                    obj([
                        ("id", s("msg_2")),
                        ("type", s("message")),
                        ("role", s("assistant")),
                        ("content", arr([])),
                        ("usage", anthropic_usage(10, 1)),
                    ]),
                ),
            ]);
            vec![
                event(Some("message_start"), &message),
                event(
                    Some("content_block_start"),
                    &obj([
                        ("type", s("content_block_start")),
                        ("index", Json::Num(0)),
                        ("content_block", obj([("type", s("text")), ("text", s(""))])),
                    ]),
                ),
                event(
                    Some("content_block_delta"),
                    &obj([
                        ("type", s("content_block_delta")),
                        ("index", Json::Num(0)),
                        (
                            "delta",
                            obj([("type", s("text_delta")), ("text", s("All done."))]),
                        ),
                    ]),
                ),
                event(
                    Some("content_block_stop"),
                    &obj([("type", s("content_block_stop")), ("index", Json::Num(0))]),
                ),
                event(
                    Some("message_delta"),
                    &obj([
                        ("type", s("message_delta")),
                        ("delta", obj([("stop_reason", s("end_turn"))])),
                        ("usage", obj([("output_tokens", Json::Num(2))])),
                    ]),
                ),
                event(Some("message_stop"), &obj([("type", s("message_stop"))])),
            ]
        }
        Api::Gemini => vec![event(
            None,
            &gemini_chunk(
                vec![obj([("text", s("All done."))])],
                true,
                gemini_usage(10, 2),
            ),
        )],
    };
    render_stream(&pieces, Framing::default(), &mut input)
}

/// How events are written.
#[derive(Clone, Copy, Debug, Default)]
struct Framing {
    /// 0 LF, 1 CRLF, 2 CR.
    line_end: usize,
    /// Flip whether `event:` lines are written (Responses and Anthropic write them).
    flip_names: bool,
    /// `data:` without a space.
    tight: bool,
    /// JSON data split over several `data:` lines.
    split_data: bool,
}

impl Framing {
    fn from_byte(byte: u8) -> Self {
        Self {
            line_end: usize::from(byte & 3) % 3,
            flip_names: byte & 4 != 0,
            tight: byte & 8 != 0,
            split_data: byte & 16 != 0,
        }
    }
}

fn render_stream(pieces: &[StreamPiece], framing: Framing, input: &mut Input<'_>) -> Vec<u8> {
    let end = ["\n", "\r\n", "\r"][framing.line_end];
    let mut out = String::new();
    for piece in pieces {
        match piece {
            StreamPiece::Raw(raw) => out.push_str(raw),
            StreamPiece::Event { name, data } => {
                if let Some(name) = name.as_deref().filter(|_| !framing.flip_names) {
                    let _ = write!(out, "event: {name}{end}");
                }
                let field = if framing.tight { "data:" } else { "data: " };
                // Only between members (`,"` is never inside a JSON string), so the data joins
                // back into the same JSON.
                let lines: Vec<&str> = if framing.split_data && input.flag() {
                    data.split_inclusive(',').collect()
                } else {
                    vec![data.as_str()]
                };
                let mut joined = Vec::new();
                for line in lines {
                    match joined.last_mut() {
                        Some(last) if !line.starts_with('"') => *last = format!("{last}{line}"),
                        _ => joined.push(line.to_owned()),
                    }
                }
                for line in joined {
                    let _ = write!(out, "{field}{line}{end}");
                }
                out.push_str(end);
            }
        }
    }
    out.into_bytes()
}

/// What `mutate_stream` did.
#[derive(Clone, Copy, Debug, Default)]
struct Mutated {
    /// The stream is no longer the generated one.
    changed: bool,
    /// Events were removed, reordered or emptied: a call may have lost the first event, which
    /// names it.
    broken: bool,
}

/// Changes a generated stream as a confused or truncated upstream would.
fn mutate_stream(api: Api, pieces: &mut Vec<StreamPiece>, input: &mut Input<'_>) -> Mutated {
    let before = format!("{pieces:?}");
    let mut broken = false;
    for _ in 0..16 {
        if input.is_empty() {
            break;
        }
        let at = input.below(pieces.len() + 1);
        match input.below(10) {
            0 => pieces.insert(at, StreamPiece::Raw(": keep-alive\n\n".into())),
            1 if at < pieces.len() => {
                pieces.remove(at);
                broken = true;
            }
            2 if at < pieces.len() => pieces.insert(at, pieces[at].clone()),
            3 if at + 1 < pieces.len() => {
                pieces.swap(at, at + 1);
                broken = true;
            }
            4 => {
                broken |= at < pieces.len();
                pieces.truncate(at);
            }
            5 if at < pieces.len() => {
                if let StreamPiece::Event { data, .. } = &mut pieces[at] {
                    *data = gen_words(input, 4);
                    broken = true;
                }
            }
            6 => {
                let message = gen_words(input, 3);
                let error = obj([("type", s("server_error")), ("message", s(message))]);
                let piece = match api {
                    Api::Chat | Api::Gemini => event(None, &obj([("error", error)])),
                    Api::Responses | Api::Anthropic => event(
                        Some("error"),
                        &obj([("type", s("error")), ("error", error)]),
                    ),
                };
                pieces.insert(at, piece);
            }
            7 if at < pieces.len() => {
                let copies = usize::from(input.byte());
                let piece = pieces[at].clone();
                for _ in 0..copies {
                    pieces.insert(at, piece.clone());
                }
            }
            8 => pieces.insert(
                at,
                StreamPiece::Event {
                    name: None,
                    data: "[DONE]".into(),
                },
            ),
            _ => pieces.insert(at, StreamPiece::Raw("\n".into())),
        }
    }
    Mutated {
        changed: format!("{pieces:?}") != before,
        broken,
    }
}

/// Splits `bytes` into chunks whose sizes cycle through `seed` (0 to 96 bytes; an empty chunk
/// is followed by a one-byte one).
fn chunked(bytes: &[u8], seed: &[u8]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut rest = bytes;
    let mut index = 0;
    while !rest.is_empty() {
        let size = seed
            .get(index % seed.len().max(1))
            .map_or(rest.len(), |b| usize::from(*b) % 97);
        let size = if size == 0 {
            chunks.push(Bytes::new());
            1
        } else {
            size
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(Bytes::copy_from_slice(chunk));
        rest = tail;
        index += 1;
    }
    chunks
}

/// The events of a stream, by the layer's own parser.
fn events_of(bytes: &[u8]) -> Vec<SseEvent> {
    let mut parser = SseParser::new(usize::MAX);
    let mut events = Vec::new();
    let _ = parser.push(bytes, |event| events.push(event));
    parser.finish(|event| events.push(event));
    events
}

/// An in-stream error, as each API writes one: `event: error`, or data whose `type` is
/// `error` or that has an `error` member.
fn is_error_event(event: &SseEvent) -> bool {
    let data = event
        .data
        .as_deref()
        .and_then(|data| serde_json::from_str::<Value>(data).ok())
        .unwrap_or(Value::Null);
    event.event.as_deref() == Some("error")
        || data["type"] == "error"
        || data.get("error").is_some_and(|error| !error.is_null())
}

/// The text the model streamed, as a client library accumulates it: Chat's `delta.content`,
/// Responses' `response.output_text.delta`, Anthropic's `text_delta`s, Gemini's text parts
/// (thoughts apart), in order.
fn streamed_text(api: Api, stream: &[u8]) -> String {
    let mut text = String::new();
    for event in events_of(stream) {
        let Some(data) = event
            .data
            .as_deref()
            .and_then(|data| serde_json::from_str::<Value>(data).ok())
        else {
            continue;
        };
        let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
        match api {
            Api::Chat => {
                for choice in list(&data["choices"]) {
                    text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
                }
            }
            Api::Responses => {
                if data["type"] == "response.output_text.delta" {
                    text.push_str(data["delta"].as_str().unwrap_or_default());
                }
            }
            Api::Anthropic => {
                if data["type"] == "content_block_delta" && data["delta"]["type"] == "text_delta" {
                    text.push_str(data["delta"]["text"].as_str().unwrap_or_default());
                }
            }
            Api::Gemini => {
                for candidate in list(&data["candidates"]) {
                    for part in list(&candidate["content"]["parts"]) {
                        if part["thought"] != true {
                            text.push_str(part["text"].as_str().unwrap_or_default());
                        }
                    }
                }
            }
        }
    }
    text
}

/// What the client must get of a malformed upstream stream (raw bytes, or a generated one
/// changed) that never mentions the retrieval tool: all the text the model streamed, in order.
/// Not the same events: the layer holds the events that end a round, numbers events and items
/// densely itself, holds the fragments of a call until its name is known, drops repeated
/// starts, and passes what it does not know as it comes. When the upstream stream reports an
/// error, the client's stream fails there: its text may stop short.
fn same_text(api: Api, upstream: &[u8], client: &[u8]) -> Result<(), String> {
    let (sent, got) = (streamed_text(api, upstream), streamed_text(api, client));
    let failed = events_of(upstream).iter().any(is_error_event);
    if got == sent || (failed && sent.starts_with(&got)) {
        return Ok(());
    }
    Err(format!(
        "the model streamed {} and the client read {}",
        excerpt(&sent),
        excerpt(&got)
    ))
}

/// KNOWN ISSUE, reported with a fix for `SseParser::finish` (src/sse.rs): a stream whose last
/// event ends in `\r\r` (CR line ends) is complete, but its last CR was held back as the
/// possible first half of a CRLF, and `finish` completes the event with one more `\r\n`: the
/// client gets an extra blank line. Harmless (a blank line dispatches nothing), so allowed
/// here to keep fuzzing the rest; remove once `finish` no longer adds it.
fn known_trailing_crlf(upstream: &[u8], client: &[u8]) -> bool {
    upstream.ends_with(b"\r\r") && client.strip_suffix(b"\r\n") == Some(upstream)
}

// ---------------------------------------------------------------------------------------------
// Target: the SSE decoder and stream interceptor.

#[derive(Clone, Copy)]
enum Chunking {
    /// Sizes from the input, and `Pending` before every chunk when it says so.
    Seeded,
    Whole,
    Bytes,
}

/// A streamed exchange of each API: the upstream answers the fixed streaming request with the
/// fuzzed bytes (arbitrary, or a generated model turn changed as a confused upstream would),
/// and later rounds with a fixed answer or the same turn again. Invariants: no panic or hang;
/// the client's body never fails; every chunking gives the client the same bytes and the
/// upstream the same requests; a stream that does not mention the retrieval tool reaches the
/// client byte for byte; in generated streams, where the tool's name appears only in its calls,
/// the client never sees it; every event the layer wrote itself carries JSON; continuations are
/// JSON; at most `max_rounds` continuations.
pub fn sse(data: &[u8]) {
    let mut input = Input::new(data);
    let head = input.byte();
    let api = APIS[usize::from(head) % 4];
    let raw = head & 4 != 0;
    let again = head & 8 != 0;
    let yields = head & 16 != 0;
    let seed = input.take(8).to_vec();
    let framing = Framing::from_byte(input.byte());
    let program: Arc<[u8]> = Arc::from(input.rest());
    // Whether the generated stream was changed into a malformed one (the input it reads does
    // not depend on the ids).
    let mutated = if raw {
        Mutated {
            changed: true,
            broken: true,
        }
    } else {
        let ids = Ids {
            issued: None,
            foreign: String::new(),
        };
        let mut input = Input::new(&program);
        let mut pieces = gen_stream(api, &mut input, &ids);
        mutate_stream(api, &mut pieces, &mut input)
    };

    let run = |chunking: Chunking| {
        let store = new_store();
        let foreign = store_foreign_original(&store);
        let layer = fuzz_layer(store);
        let body = fixed_conversation(true, &foreign).render(api).compact();
        let (program, seed) = (program.clone(), seed.clone());
        let upstream = Upstream::new(move |round, request| {
            let stream = if round == 0 || again {
                if raw {
                    program.to_vec()
                } else {
                    let ids = Ids {
                        issued: marker_ids(&request.text()).into_iter().next(),
                        foreign: foreign.clone(),
                    };
                    let mut input = Input::new(&program);
                    let mut pieces = gen_stream(api, &mut input, &ids);
                    mutate_stream(api, &mut pieces, &mut input);
                    render_stream(&pieces, framing, &mut input)
                }
            } else {
                final_stream(api)
            };
            match chunking {
                Chunking::Seeded => Answer::event_stream(chunked(&stream, &seed), yields),
                Chunking::Whole => Answer::event_stream(vec![Bytes::from(stream)], false),
                Chunking::Bytes => Answer::event_stream(chunked(&stream, &[1]), false),
            }
        });
        let saw = exchange(&layer, &upstream, api.post(true, body));
        (saw, upstream.requests(), upstream.answers())
    };

    let (saw, requests, answers) = run(Chunking::Seeded);
    assert!(
        saw.error.is_none(),
        "{api:?}: the client's stream failed: {:?}",
        saw.error
    );
    assert_eq!(saw.status, StatusCode::OK, "{api:?}: the status changed");
    assert!(
        requests.len() <= 1 + MAX_ROUNDS,
        "{api:?}: {} continuations, more than max_rounds",
        requests.len() - 1
    );
    assert!(
        requests
            .first()
            .is_some_and(|r| !marker_ids(&r.text()).is_empty()),
        "{api:?}: the fixed request was not compressed"
    );
    for continuation in requests.iter().skip(1) {
        assert!(
            is_json(&continuation.body),
            "{api:?}: a continuation is not JSON"
        );
    }
    let first = &answers[0].1;
    let mentions_tool = memchr::memmem::find(first, TOOL.as_bytes()).is_some();
    if !mentions_tool && requests.len() == 1 {
        if !mutated.changed {
            assert!(
                saw.body == *first || known_trailing_crlf(first, &saw.body),
                "{api:?}: a well-formed stream without the retrieval tool was changed: {}",
                difference(first, &saw.body)
            );
        } else if let Err(violation) = same_text(api, first, &saw.body) {
            panic!("{api:?}: a stream without the retrieval tool was changed: {violation}");
        }
    }
    // The layer knows a call by the name in its first event: when that event is gone (or
    // comes late), the rest of the call is not recognised. A known gap for malformed streams.
    if !mutated.broken {
        assert!(
            memchr::memmem::find(&saw.body, TOOL.as_bytes()).is_none(),
            "{api:?}: the client saw the retrieval tool: {}",
            excerpt(&String::from_utf8_lossy(&saw.body))
        );
    }
    // Events as they came, less the line ends that close them (the parser completes an
    // unfinished last event).
    let unframed = |event: SseEvent| {
        let end = event.raw.iter().rposition(|b| !matches!(b, b'\r' | b'\n'));
        event.raw.slice(..end.map_or(0, |end| end + 1))
    };
    let upstream_events: HashSet<Bytes> = answers
        .iter()
        .flat_map(|(_, body)| events_of(body))
        .map(unframed)
        .collect();
    for event in events_of(&saw.body) {
        let written = event.data.clone().unwrap_or_default();
        let raw = event.raw.clone();
        let unframed = unframed(event);
        if unframed.is_empty() || upstream_events.contains(&unframed) {
            continue;
        }
        assert!(
            written == "[DONE]" || is_json(written.as_bytes()),
            "{api:?}: an event the layer wrote is not JSON: {}",
            excerpt(&String::from_utf8_lossy(&raw))
        );
    }

    let (whole, whole_requests, _) = run(Chunking::Whole);
    assert!(
        whole.body == saw.body,
        "{api:?}: the client's bytes depend on the chunking (in chunks / whole): {}",
        difference(&saw.body, &whole.body)
    );
    let bodies =
        |requests: &[Recorded]| requests.iter().map(|r| r.body.clone()).collect::<Vec<_>>();
    assert!(
        bodies(&requests) == bodies(&whole_requests),
        "{api:?}: the continuations depend on the chunking"
    );
    if first.len() <= 2048 {
        let (bytewise, _, _) = run(Chunking::Bytes);
        assert!(
            bytewise.body == saw.body,
            "{api:?}: the client's bytes differ when the stream comes a byte at a time: {}",
            difference(&saw.body, &bytewise.body)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Target: the non-streamed response handler.

/// A non-streamed exchange of each API after the tool was injected: the upstream answers with
/// a fuzzed body (arbitrary bytes, or a generated model turn, maybe with values of the wrong
/// type), with a fuzzed status and content type, and later rounds with a final answer or the
/// same turn again. Invariants: no panic or hang; an error status comes back byte for byte; the
/// client's body is JSON whenever the upstream's was; the client never gets a call of the
/// retrieval tool (in generated turns, never its name at all); another tenant's original never
/// goes upstream although its hash is named in the conversation; at most `max_rounds`
/// continuations, each JSON.
pub fn response(data: &[u8]) {
    let mut input = Input::new(data);
    let head = input.byte();
    let api = APIS[usize::from(head) % 4];
    let raw = head & 4 != 0;
    let again = head & 8 != 0;
    let perturbed = head & 16 != 0;
    let status = input.pick(&[200u16, 200, 200, 200, 201, 400, 429, 500]);
    let content_type = if raw {
        input.pick(&[
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            None,
            Some("text/plain"),
        ])
    } else {
        Some("application/json")
    };
    let style = Style::from_byte(input.byte());
    let program: Arc<[u8]> = Arc::from(input.rest());

    let store = new_store();
    let foreign = store_foreign_original(&store);
    let layer = fuzz_layer(store);
    let body = fixed_conversation(false, &foreign).render(api).compact();
    let script_foreign = foreign.clone();
    let upstream = Upstream::new(move |round, request| {
        if round > 0 && !again {
            return Answer::json(final_answer(api, "Done.").compact());
        }
        let body = if raw {
            program.to_vec()
        } else {
            let ids = Ids {
                issued: marker_ids(&request.text()).into_iter().next(),
                foreign: script_foreign.clone(),
            };
            let mut input = Input::new(&program);
            let mut json = gen_response(api, &mut input, &ids);
            if perturbed {
                json = perturb(json, &mut input);
            }
            json.render(style).into_bytes()
        };
        Answer {
            status,
            content_type,
            chunks: vec![Bytes::from(body)],
            yields: false,
        }
    });
    let saw = exchange(&layer, &upstream, api.post(false, body));
    let requests = upstream.requests();
    let answers = upstream.answers();
    assert!(
        saw.error.is_none(),
        "{api:?}: the client's body failed: {:?}",
        saw.error
    );
    assert!(
        requests.len() <= 1 + MAX_ROUNDS,
        "{api:?}: {} continuations, more than max_rounds",
        requests.len() - 1
    );
    assert!(
        requests
            .first()
            .is_some_and(|r| !marker_ids(&r.text()).is_empty()),
        "{api:?}: the fixed request was not compressed"
    );
    for request in &requests {
        assert!(
            memchr::memmem::find(&request.body, FOREIGN_SENTINEL.as_bytes()).is_none(),
            "{api:?}: another tenant's original went upstream"
        );
    }
    for continuation in requests.iter().skip(1) {
        assert!(
            is_json(&continuation.body),
            "{api:?}: a continuation is not JSON"
        );
    }
    let Some((last_status, last_body)) = answers.last() else {
        panic!("{api:?}: no answer");
    };
    assert_eq!(
        saw.status.as_u16(),
        *last_status,
        "{api:?}: the status changed"
    );
    if !(200..300).contains(last_status) {
        assert!(
            saw.body == *last_body,
            "{api:?}: an upstream error did not pass through untouched"
        );
        return;
    }
    if is_json(last_body) {
        let Ok(client) = serde_json::from_slice::<Value>(&saw.body) else {
            panic!(
                "{api:?}: JSON from upstream, not JSON to the client: {}",
                excerpt(&String::from_utf8_lossy(&saw.body))
            );
        };
        let inspected = content_type.is_none_or(|t| t.contains("json"));
        let upstream_value = serde_json::from_slice::<Value>(last_body).unwrap_or(Value::Null);
        if inspected && calls_well_placed(api, &upstream_value) {
            assert_eq!(
                our_calls_in(api, &client),
                0,
                "{api:?}: the client got a retrieval call: {}",
                excerpt(&String::from_utf8_lossy(&saw.body))
            );
        }
    } else {
        assert!(
            saw.body == *last_body,
            "{api:?}: a body that is not JSON was changed"
        );
    }
    if !raw && !perturbed {
        assert!(
            memchr::memmem::find(&saw.body, TOOL.as_bytes()).is_none(),
            "{api:?}: the client saw the retrieval tool: {}",
            excerpt(&String::from_utf8_lossy(&saw.body))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Target: markers and ids.

/// What `EntryId::parse` must do: accept exactly 24 hex digits (any case), after trimming and
/// an optional `hash=`, and give them back lowercase.
fn check_parse(text: &str) {
    let parsed = EntryId::parse(text);
    let trimmed = text.trim();
    let bare = trimmed.strip_prefix("hash=").unwrap_or(trimmed);
    let is_id = bare.len() == ID_HEX_LEN && bare.bytes().all(|b| b.is_ascii_hexdigit());
    match &parsed {
        Some(id) => {
            assert!(is_id, "EntryId::parse accepted {text:?}");
            assert!(
                id.as_str().len() == ID_HEX_LEN
                    && id
                        .as_str()
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "EntryId::parse gave {:?}, not 24 lowercase hex",
                id.as_str()
            );
            assert!(
                id.as_str().eq_ignore_ascii_case(bare),
                "EntryId::parse changed the id of {text:?}"
            );
            assert_eq!(id.to_string(), id.as_str());
            assert_eq!(
                EntryId::parse(id.as_str()).as_ref(),
                Some(id),
                "the id does not parse back"
            );
            assert_eq!(EntryId::parse(&format!("hash={id}")).as_ref(), Some(id));
        }
        None => assert!(!is_id, "EntryId::parse refused {text:?}"),
    }
}

/// Markers, ids and searches. Invariants: `EntryId::parse` accepts exactly 24 hex digits and
/// nothing else, wherever the text comes from (every `hash=` in it); a rendered marker has the
/// documented shape and its id reads back, also at the end of any view; ids are keyed by tenant
/// and content; a search over any original with any query returns at most `limit` distinct
/// hits, each an item of the original with a positive score, best first, the same every time.
pub fn marker(data: &[u8]) {
    let mut input = Input::new(data);
    let total = input.below(1 << 16);
    let kept = input.below(1 << 16);
    let unit = input.pick(&["items", "lines"]);
    let limit = 1 + input.below(24);
    let rest = input.rest();
    let text = String::from_utf8_lossy(rest);

    check_parse(&text);
    for (at, _) in text.match_indices("hash=") {
        check_parse(&text[at..]);
        let mut end = (at + 5 + ID_HEX_LEN).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        check_parse(&text[at..end]);
    }

    let key = IdKey::from_secret(SECRET.as_bytes());
    let tenant = key.tenant(b"Bearer alice");
    let id = key.entry(&tenant, &text);
    assert_ne!(
        id,
        key.entry(&key.tenant(b"Bearer bob"), &text),
        "ids ignore the tenant"
    );
    assert_ne!(
        id,
        key.entry(&tenant, &format!("{text} ")),
        "ids ignore the content"
    );
    check_parse(id.as_str());
    let marker = render(total, unit, kept, &id);
    assert_eq!(
        marker,
        format!("[{total} {unit} compressed to {kept}. Retrieve more: hash={id}]"),
        "the marker's shape"
    );
    assert_eq!(view_marker_id(&marker), Some(id.as_str()));
    let view = view_with_marker(&text, total, unit, kept, &id);
    assert!(
        view.starts_with(&*text) && view.ends_with(&marker),
        "a view is its text, then the marker"
    );
    assert_eq!(
        view_marker_id(&view),
        Some(id.as_str()),
        "the view's id does not read back"
    );
    assert_eq!(
        marker_ids(&view).last().map(String::as_str),
        Some(id.as_str())
    );

    // Search, as retrieval with a query does it.
    let mut cut = rest.len() / 2;
    while !text.is_char_boundary(cut.min(text.len())) {
        cut -= 1;
    }
    let (original, query) = text.split_at(cut.min(text.len()));
    let result = crate::search::search(original, query, limit);
    assert!(result.hits.len() <= limit, "more hits than the limit");
    assert!(result.hits.len() <= result.matched && result.matched <= result.total_items);
    assert!(result.unit == "items" || result.unit == "lines");
    let mut seen = HashSet::new();
    for hit in &result.hits {
        assert!(hit.index < result.total_items, "a hit past the last item");
        assert!(seen.insert(hit.index), "item {} listed twice", hit.index);
        assert!(
            hit.score > 0.0 && hit.score.is_finite(),
            "a hit scored {}",
            hit.score
        );
        assert!(
            original.contains(&hit.text),
            "a hit that is not in the original: {:?}",
            hit.text
        );
    }
    assert_eq!(
        crate::search::search(original, query, limit),
        result,
        "search is not deterministic"
    );
}
