//! Content-aware views of large tool outputs.
//!
//! A view keeps what a model most likely needs from an original (its start and end, errors and
//! warnings, what matches the conversation's question) and says what it left out, so that the
//! model can judge whether to retrieve the rest.
//!
//! Routing (`compress`):
//! - JSON documents and NDJSON (`json`): first a lossless rendering (minified, or the records
//!   as a tab-separated table); when that is small enough it is the view, with no marker.
//!   Otherwise a lossy view of the main collection's records (an array, the big array inside
//!   an envelope such as `{"data": [...]}` or cargo metadata, the members of a map).
//! - Other text is sorted by the shape of its lines (`lines::shape_of`): search hits
//!   (`grep`), logs, tables (`table`: `ls -l`, `ps`, `dpkg -l`, tab-separated rows), source
//!   code (`code`), and anything else (build and test output, prose).
//!
//! Every view counts the items that `items::split_items` gives, so a marker's counts and the
//! retrieval search agree. Views are deterministic: maps are only looked up, never iterated.

pub(crate) mod code;
pub(crate) mod grep;
pub(crate) mod json;
pub(crate) mod lines;
pub(crate) mod table;

use crate::items::{json_collection, split_lines};
use crate::search::terms;
use crate::tokens::estimate_tokens;
use json::Frame;

/// What the conversation says about the tool output (never from later messages).
#[derive(Debug, Clone, Default)]
pub struct CompressContext<'a> {
    /// The last user message before the tool output, and the arguments of the tool call that
    /// produced it, joined by '\n'.
    pub query: &'a str,
    /// Name of the tool that produced the output, when known.
    pub tool_name: Option<&'a str>,
}

/// A view of an original: what the model sees instead of it, without the marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The view text. The caller appends
    /// "\n[{total} {unit} compressed to {kept}. Retrieve more: hash=<24 hex>]".
    pub text: String,
    /// "items" or "lines" (ItemKind::unit()).
    pub unit: &'static str,
    /// Items in the original.
    pub total: usize,
    /// Items shown (whole or in part) in the view.
    pub kept: usize,
    /// The view says everything the original says (minified JSON, a table of uniform objects):
    /// it goes out as it is, with no marker, and nothing is stored.
    pub lossless: bool,
}

/// Tokens the caller's marker line costs, counted against the view.
const MARKER_TOKENS: usize = 40;
/// With fewer items there is nothing useful to drop.
const MIN_ITEMS: usize = 8;

/// A lossless rendering is the view when it has at most this many tokens…
const LOSSLESS_MAX_TOKENS: usize = 2_000;
/// …and at most this share of the original's (in tenths); or, when no lossy view saves
/// enough, whatever its size when it saves at least a quarter.
const LOSSLESS_MAX_TENTHS: usize = 7;
const LOSSLESS_FALLBACK_TENTHS: usize = 75;
/// Renderings shrink JSON at most about this many times (a table of pretty-printed records):
/// a larger original cannot get a lossless view within LOSSLESS_MAX_TOKENS.
const LOSSLESS_MAX_RATIO: usize = 8;

/// Pure function: returns a view when it saves enough; None leaves the output uncompressed.
/// Deterministic: same input, same bytes.
///
/// JSON (a document, or NDJSON) first gets a lossless rendering (minified, or its records as a
/// table). That rendering is the view, with no marker, when it has at most LOSSLESS_MAX_TOKENS
/// tokens and at most 70% of the original's. Otherwise a lossy view is the view when
/// `estimate_tokens(view.text) + 40 <= 0.6 * estimate_tokens(original)`; failing that, the
/// lossless rendering when it saves at least a quarter.
///
/// The layer calls [`compress_estimated`], having estimated the tokens already.
#[cfg(test)]
pub fn compress(original: &str, ctx: &CompressContext<'_>) -> Option<View> {
    compress_estimated(original, estimate_tokens(original), ctx)
}

/// `compress` for a caller that has already estimated the original's tokens
/// (`estimate_tokens(original)`, which costs about a millisecond a megabyte): the same view.
pub fn compress_estimated(
    original: &str,
    original_tokens: usize,
    ctx: &CompressContext<'_>,
) -> Option<View> {
    if !saves_enough(0, original_tokens) {
        return None;
    }
    if let Some(collection) = json_collection(original) {
        let frame = Frame::Document(&collection);
        return compress_records(&collection.items, &frame, ctx, original_tokens);
    }
    let lines = split_lines(original);
    if json::is_ndjson(&lines) {
        return compress_records(&lines, &Frame::Lines, ctx, original_tokens);
    }
    if lines.len() < MIN_ITEMS {
        return None;
    }
    let view = lines::compress(&lines, ctx);
    Some(view).filter(|view| saves_enough(estimate_tokens(&view.text), original_tokens))
}

/// The view of JSON records: lossless when that is small enough, else lossy.
fn compress_records(
    items: &[&str],
    frame: &Frame<'_, '_>,
    ctx: &CompressContext<'_>,
    original_tokens: usize,
) -> Option<View> {
    let unit = match frame {
        Frame::Document(_) => "items",
        Frame::Lines => "lines",
    };
    let lossless_view = |text: String| View {
        text,
        unit,
        total: items.len(),
        kept: items.len(),
        lossless: true,
    };
    let mut lossless = None;
    if original_tokens <= LOSSLESS_MAX_TOKENS * LOSSLESS_MAX_RATIO {
        let text = json::lossless(items, frame);
        let tokens = estimate_tokens(&text);
        if tokens <= LOSSLESS_MAX_TOKENS && tokens * 10 <= original_tokens * LOSSLESS_MAX_TENTHS {
            return Some(lossless_view(text));
        }
        lossless = Some((text, tokens));
    }
    // However few the records, a view that cuts long strings and collapses big containers
    // can save most of a large document.
    if !items.is_empty() {
        let view = json::compress(items, frame, ctx);
        if saves_enough(estimate_tokens(&view.text), original_tokens) {
            return Some(view);
        }
    }
    let (text, tokens) = lossless.unwrap_or_else(|| {
        let text = json::lossless(items, frame);
        let tokens = estimate_tokens(&text);
        (text, tokens)
    });
    (tokens * 100 <= original_tokens * LOSSLESS_FALLBACK_TENTHS).then(|| lossless_view(text))
}

/// `view_tokens + 40 <= 0.6 * original_tokens`, in integers.
fn saves_enough(view_tokens: usize, original_tokens: usize) -> bool {
    (view_tokens + MARKER_TOKENS) * 10 <= original_tokens * 6
}

/// One item a view shows, rendered, with an optional note line after it.
pub(crate) struct KeptItem {
    /// Index of the item in the original's items.
    pub index: usize,
    /// What the view shows of the item (one line).
    pub text: String,
    /// A line printed right after the item, e.g. how many similar items it stands for.
    pub note: Option<String>,
}

/// Appends kept items in order, one per line, with a "… N {unit} omitted …" line for each gap.
pub(crate) fn render_kept(out: &mut String, kept: &[KeptItem], total: usize, unit: &str) {
    let mut next = 0;
    for item in kept {
        push_omitted(out, item.index - next, unit);
        out.push_str(&item.text);
        out.push('\n');
        if let Some(note) = &item.note {
            out.push_str(note);
            out.push('\n');
        }
        next = item.index + 1;
    }
    push_omitted(out, total - next, unit);
}

fn push_omitted(out: &mut String, count: usize, unit: &str) {
    match count {
        0 => {}
        // "1 line", "1 item".
        1 => out.push_str(&format!("… 1 {} omitted …\n", unit.trim_end_matches('s'))),
        _ => out.push_str(&format!("… {count} {unit} omitted …\n")),
    }
}

/// The whole words of a query, lower-cased and without surrounding punctuation, that have a
/// search term (no stop words): "sqlx-postgres", "pydantic", "2.14.3". Sorted, without
/// duplicates.
pub(crate) fn query_words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = query
        .split_whitespace()
        .map(|word| {
            word.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|word| !terms(word).is_empty())
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// At most the first `max_bytes` of `text`, cut on a char boundary.
pub(crate) fn prefix(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max_bytes` (on a char boundary) with "…" appended when cut.
pub(crate) fn shorten(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Error words count in this many first bytes of a line or value, where log lines say their
/// level; deep inside a long text (a README in a JSON string) they are prose, not a failure.
pub(crate) const ALARM_PREFIX_BYTES: usize = 256;

/// Words that mark an error (2) or a warning (1), lower case.
const ALARM_WORDS: [(&str, u8); 25] = [
    ("error", 2),
    ("errors", 2),
    ("err", 2),
    ("fail", 2),
    ("fails", 2),
    ("failed", 2),
    ("failure", 2),
    ("failures", 2),
    ("fatal", 2),
    ("panic", 2),
    ("panicked", 2),
    ("exception", 2),
    ("traceback", 2),
    ("critical", 2),
    ("denied", 2),
    ("refused", 2),
    ("timeout", 2),
    ("abort", 2),
    ("aborted", 2),
    ("killed", 2),
    ("segfault", 2),
    ("undefined", 2),
    ("warning", 1),
    ("warnings", 1),
    ("warn", 1),
];
/// Alarm words are three to nine bytes long.
const ALARM_WORD_LENGTHS: std::ops::RangeInclusive<usize> = 3..=9;

/// For each word length, a bit for each letter an alarm word of that length starts with: most
/// words are rejected by this before any lookup.
const ALARM_INITIALS: [u32; 10] = {
    let mut initials = [0u32; 10];
    let mut i = 0;
    while i < ALARM_WORDS.len() {
        let word = ALARM_WORDS[i].0.as_bytes();
        initials[word.len()] |= 1 << (word[0] - b'a');
        i += 1;
    }
    initials
};

/// An ASCII word of up to nine bytes packed into an integer, 7 bits a byte, lower-cased;
/// None for a word with non-ASCII bytes.
const fn pack_word(word: &[u8]) -> Option<u64> {
    let mut key = 0u64;
    let mut i = 0;
    while i < word.len() {
        if word[i] >= 0x80 {
            return None;
        }
        key = key << 7 | word[i].to_ascii_lowercase() as u64;
        i += 1;
    }
    Some(key)
}

/// ALARM_WORDS packed and sorted by key, so that a lookup is a binary search over integers.
const ALARM_KEYS: [(u64, u8); ALARM_WORDS.len()] = {
    let mut keys = [(0u64, 0u8); ALARM_WORDS.len()];
    let mut i = 0;
    while i < keys.len() {
        let (word, level) = ALARM_WORDS[i];
        keys[i] = match pack_word(word.as_bytes()) {
            Some(key) => (key, level),
            None => panic!("alarm words are ASCII"),
        };
        // Insertion sort: const fns cannot call sort.
        let mut j = i;
        while j > 0 && keys[j - 1].0 > keys[j].0 {
            let swap = keys[j - 1];
            keys[j - 1] = keys[j];
            keys[j] = swap;
            j -= 1;
        }
        i += 1;
    }
    keys
};

/// How alarming a text is, from its words: 0 nothing, 1 a warning, 2 an error word, 3 an error
/// word in capitals (a log level like ERROR or FATAL, or a FAILED status).
///
/// Whole words, ASCII case-insensitive. With `identifiers_join`, '_' and '-' join words, so
/// that an identifier like `timeout_ms`, `error_handling` or `pytest-timeout` does not count
/// (JSON string values are matched without it: "ERR_TIMEOUT" counts). A lower-case error word on
/// a line that says INFO, DEBUG, TRACE or NOTICE ("negotiated timeout 10000") counts as a
/// warning.
pub(crate) fn alarm_level(text: &str, identifiers_join: bool) -> u8 {
    let bytes = text.as_bytes();
    let is_word_byte = |b: u8| {
        b.is_ascii_alphanumeric() || b >= 0x80 || (identifiers_join && (b == b'_' || b == b'-'))
    };
    let mut level = 0;
    let mut quiet = false;
    let mut pos = 0;
    while let Some(offset) = bytes[pos..].iter().position(|&b| is_word_byte(b)) {
        let start = pos + offset;
        pos = start
            + bytes[start..]
                .iter()
                .position(|&b| !is_word_byte(b))
                .unwrap_or(bytes.len() - start);
        let word = &bytes[start..pos];
        if word.len() < 3 {
            continue;
        }
        quiet |= matches!(word[0], b'I' | b'D' | b'T' | b'N')
            && matches!(word, b"INFO" | b"DEBUG" | b"TRACE" | b"NOTICE");
        let word_level = match word_alarm(word, &bytes[pos..]) {
            2 if word.iter().all(u8::is_ascii_uppercase) => 3,
            word_level => word_level,
        };
        level = level.max(word_level);
        if level == 3 {
            return 3;
        }
    }
    if level == 2 && quiet { 1 } else { level }
}

/// Alarm level of one word of three bytes or more; `rest` is the text after it.
fn word_alarm(word: &[u8], rest: &[u8]) -> u8 {
    let initial = word[0].to_ascii_lowercase().wrapping_sub(b'a');
    let may_be_listed = ALARM_WORD_LENGTHS.contains(&word.len())
        && initial < 26
        && ALARM_INITIALS[word.len()] & 1 << initial != 0;
    if may_be_listed {
        let listed =
            pack_word(word).and_then(|key| ALARM_KEYS.binary_search_by_key(&key, |&(k, _)| k).ok());
        if let Some(found) = listed {
            return ALARM_KEYS[found].1;
        }
    }
    if word.eq_ignore_ascii_case(b"timed") && starts_with_word_out(rest) {
        return 2;
    }
    // Exception types ("IOException") anywhere, and error types before a colon
    // ("ValueError: …", but not a type name like "HandleError<S>" in code).
    let exception_type = word.len() > 9 && word.ends_with(b"Exception");
    let error_type = word.len() > 5 && word.ends_with(b"Error") && rest.first() == Some(&b':');
    if exception_type || error_type { 2 } else { 0 }
}

/// Whether `rest` starts with the word "out" after one space ("timed out").
fn starts_with_word_out(rest: &[u8]) -> bool {
    rest.len() >= 4
        && rest[0] == b' '
        && rest[1..4].eq_ignore_ascii_case(b"out")
        && !rest.get(4).is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(query: &str) -> CompressContext<'_> {
        CompressContext {
            query,
            tool_name: None,
        }
    }

    fn log(lines: usize) -> String {
        (0..lines)
            .map(|i| {
                format!(
                    "2024-01-01 12:00:{:02} INFO worker {i} processed batch ok\n",
                    i % 60
                )
            })
            .collect()
    }

    #[test]
    fn small_input_is_not_compressed() {
        assert_eq!(compress("a\nb\nc\n", &ctx("")), None);
        assert_eq!(compress(&log(5), &ctx("")), None);
    }

    #[test]
    fn few_long_lines_are_not_compressed() {
        let original = format!("{}\n", "word ".repeat(2000)).repeat(4);
        assert_eq!(compress(&original, &ctx("")), None);
    }

    #[test]
    fn marker_text_does_not_stop_compression() {
        // Whether an output is already a view is the layer's question (only a marker it issued
        // counts): a marker-like line anyone can write must not shield an output.
        let mut original = log(2000);
        original.push_str(
            "[2000 lines compressed to 30. Retrieve more: hash=0123456789abcdef01234567]\n",
        );
        assert!(compress(&original, &ctx("")).is_some());
    }

    #[test]
    fn large_log_is_compressed_enough() {
        let original = log(2000);
        let view = compress(&original, &ctx("")).expect("a view");
        assert_eq!(view.unit, "lines");
        assert_eq!(view.total, 2000);
        assert!(view.kept < 100);
        assert!(saves_enough(
            estimate_tokens(&view.text),
            estimate_tokens(&original)
        ));
    }

    #[test]
    fn json_array_routes_to_items() {
        let original = format!(
            "[{}]",
            (0..100)
                .map(|i| format!(r#"{{"id":{i},"name":"item {i}","status":"ok"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let view = compress(&original, &ctx("")).expect("a view");
        assert_eq!(view.unit, "items");
        assert_eq!(view.total, 100);
        assert!(view.text.starts_with("JSON array of 100 objects"));
    }

    #[test]
    fn compress_is_deterministic() {
        let mut original = log(3000);
        original.push_str("ERROR worker 7 failed: disk full\n");
        let query = ctx("why did worker 7 fail?\ncat worker.log");
        let first = compress(&original, &query).expect("a view");
        let second = compress(&original, &query).expect("a view");
        assert_eq!(first, second);
    }

    /// A small deterministic generator for the robustness test.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }

        fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
            choices[self.below(choices.len())]
        }
    }

    const FRAGMENTS: &[&str] = &[
        "ERROR",
        "warn",
        "timed out",
        "Exception:",
        "é",
        "日本",
        "—",
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        ".",
        "..",
        "_",
        "-",
        " ",
        "  ",
        "\t",
        "0.9.0",
        "x86_64",
        "pydantic",
        "a",
        "ok",
        "Retrieve",
        "\\u00e9",
        "🚅",
    ];

    fn random_json(rng: &mut XorShift, depth: usize) -> String {
        match rng.below(if depth > 3 { 4 } else { 6 }) {
            0 => format!("{}", rng.below(1000)),
            1 => serde_json::to_string(&random_text(rng, 12)).unwrap_or_default(),
            2 => "null".to_owned(),
            3 => "true".to_owned(),
            4 => {
                let fields: Vec<String> = (0..rng.below(6))
                    .map(|_| {
                        let key = serde_json::to_string(&random_text(rng, 3)).unwrap_or_default();
                        format!("{key}: {}", random_json(rng, depth + 1))
                    })
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }
            _ => {
                let elements: Vec<String> = (0..rng.below(6))
                    .map(|_| random_json(rng, depth + 1))
                    .collect();
                format!("[{}]", elements.join(",\n "))
            }
        }
    }

    fn random_text(rng: &mut XorShift, fragments: usize) -> String {
        (0..rng.below(fragments) + 1)
            .map(|_| rng.pick(FRAGMENTS))
            .collect()
    }

    #[test]
    fn random_inputs_never_panic_and_views_are_consistent() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut views = [0, 0];
        for round in 0..300 {
            let original = if round % 2 == 0 {
                (0..rng.below(400))
                    .map(|_| random_text(&mut rng, 30))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                let elements: Vec<String> = (0..rng.below(200))
                    .map(|_| random_json(&mut rng, 0))
                    .collect();
                format!("[{}]", elements.join(", "))
            };
            let query = random_text(&mut rng, 8);
            let context = CompressContext {
                query: &query,
                tool_name: Some("grep"),
            };
            let view = compress(&original, &context);
            assert_eq!(view, compress(&original, &context));
            if let Some(view) = view {
                views[round % 2] += 1;
                let items = crate::items::split_items(&original);
                assert_eq!(view.total, items.items.len());
                assert_eq!(view.unit, items.kind.unit());
                assert!(view.kept <= view.total);
                assert!(saves_enough(
                    estimate_tokens(&view.text),
                    estimate_tokens(&original)
                ));
            }
            let result = crate::search::search(&original, &query, 5);
            assert!(result.hits.len() <= 5 && result.hits.len() <= result.matched);
        }
        // Both kinds of input were compressed often enough to exercise the views.
        assert!(views[0] > 30 && views[1] > 30, "{views:?}");
    }

    #[test]
    fn render_marks_gaps() {
        let kept = [
            KeptItem {
                index: 0,
                text: "a".into(),
                note: None,
            },
            KeptItem {
                index: 1,
                text: "b".into(),
                note: Some("  (×3 similar lines)".into()),
            },
            KeptItem {
                index: 5,
                text: "f".into(),
                note: None,
            },
        ];
        let mut out = String::new();
        render_kept(&mut out, &kept, 7, "lines");
        assert_eq!(
            out,
            "a\nb\n  (×3 similar lines)\n… 3 lines omitted …\nf\n… 1 line omitted …\n"
        );
    }

    #[test]
    fn query_words_are_whole_and_clean() {
        assert_eq!(
            query_words("Which version of `sqlx-postgres` is it? (sqlx-postgres)"),
            vec!["sqlx-postgres", "version"]
        );
    }

    #[test]
    fn shorten_cuts_on_char_boundary() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("aé", 2), "a…");
    }

    #[test]
    fn alarm_words() {
        assert_eq!(alarm_level("2024 ERROR disk full", true), 3);
        assert_eq!(alarm_level("2024 [error] disk full", true), 2);
        assert_eq!(alarm_level("INFO session timeout of 10000ms", true), 1);
        assert_eq!(alarm_level("INFO session TIMEOUT", true), 3);
        assert_eq!(alarm_level("Connection timed out", true), 2);
        assert_eq!(alarm_level("WARN slow response", true), 1);
        assert_eq!(alarm_level("all good", true), 0);
        assert_eq!(alarm_level("set timeout_ms to 30", true), 0);
        assert_eq!(alarm_level("src/error_handling/mod.rs:115: impl", true), 0);
        assert_eq!(alarm_level("for HandleError<S, F>", true), 0);
        assert_eq!(alarm_level("\"pytest-timeout; extra == 'test'\"", true), 0);
        assert_eq!(alarm_level("2015-07-29 - ERROR [main] - boom", true), 3);
        assert_eq!(alarm_level("java.io.IOException: reset", true), 2);
        assert_eq!(alarm_level("ValueError: bad literal", true), 2);
        assert_eq!(alarm_level("ERR_CONNECTION_REFUSED", false), 3);
        assert_eq!(alarm_level("err_connection_refused", false), 2);
        assert_eq!(alarm_level("terrors", true), 0);
    }
}
