//! Answers to the model's retrieval calls. Only ids the layer issued for this conversation and
//! tenant resolve: those of this request's markers, and stored entries of this tenant.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Deserialize;

use crate::handle::Counters;
use crate::id::{EntryId, TenantId};
use crate::items::{ItemKind, split_items};
use crate::layer::Shared;
use crate::search;
use crate::store::Lookup;

/// Most matches a query answer lists.
const SEARCH_LIMIT: usize = 20;
/// Most bytes of matches a query answer carries (a single JSON record can be tens of KB), and
/// never more than `max_answer_bytes`; each match is cut to its share, and the answer says how
/// to get the rest.
const SEARCH_ANSWER_BYTES: usize = 32 * 1024;
/// Every match keeps at least this much, however many there are.
const MIN_HIT_BYTES: usize = 512;

#[derive(Deserialize)]
struct Arguments {
    hash: String,
    #[serde(default)]
    query: Option<String>,
}

/// The text the model gets for one retrieval call with `arguments` (a JSON text). `conversation`
/// is the request the call answers: a stored id resolves only when it appears in it (the model
/// can only have learned a real id from its own conversation). `None` when the conversation's
/// history lives upstream (its markers are not in the request): then any stored id of the
/// tenant resolves.
pub(crate) async fn answer(
    shared: &Shared,
    tenant: &TenantId,
    issued: &HashMap<EntryId, Arc<str>>,
    conversation: Option<&str>,
    arguments: &str,
) -> String {
    let counters = &shared.counters;
    let parsed = serde_json::from_str::<Arguments>(arguments)
        .ok()
        .and_then(|args| Some((EntryId::parse(&args.hash)?, args.query)));
    let Some((id, query)) = parsed else {
        Counters::add(&counters.retrievals_invalid, 1);
        return format!(
            "Invalid arguments for {}: expected {{\"hash\": \"<the 24 hex characters after hash= in the marker>\", \"query\": \"<optional search words>\"}}.",
            shared.tool_name
        );
    };
    let in_conversation = || {
        conversation.is_none_or(|text| {
            memchr::memmem::find(text.as_bytes(), id.as_str().as_bytes()).is_some()
        })
    };
    let original = match issued.get(&id) {
        Some(original) => original.clone(),
        None if !in_conversation() => {
            Counters::add(&counters.retrievals_unknown, 1);
            tracing::debug!(id = %id, "retrieval of an id foreign to the conversation");
            return unknown(&id);
        }
        None => match shared.store.get(id.clone(), shared.retention).await {
            Ok(Lookup::Found(entry)) if entry.tenant == *tenant => entry.original,
            // Another tenant's id is not this tenant's business: it is unknown here.
            Ok(Lookup::Found(_) | Lookup::Missing) => {
                Counters::add(&counters.retrievals_unknown, 1);
                tracing::debug!(id = %id, "retrieval of an unknown id");
                return unknown(&id);
            }
            Ok(Lookup::Expired) => {
                Counters::add(&counters.retrievals_expired, 1);
                tracing::debug!(id = %id, "retrieval of an expired id");
                return format!(
                    "The original for hash={id} has expired from the cache and cannot be retrieved. Do not retry this hash; run the tool that produced it again to get the data."
                );
            }
            Err(error) => {
                Counters::add(&counters.retrievals_unavailable, 1);
                tracing::warn!(id = %id, %error, "store unavailable for a retrieval");
                return format!(
                    "The cache holding hash={id} is unavailable right now, so the original cannot be retrieved. Run the tool that produced it again to get the data."
                );
            }
        },
    };
    let limit = shared.max_answer_bytes;
    match query.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        Some(query) => {
            if let Some(range) = RangeQuery::parse(query) {
                Counters::add(&counters.retrievals_range, 1);
                tracing::debug!(id = %id, bytes = original.len(), "retrieval of a range");
                return render_range(&shared.tool_name, &id, &original, &range, limit);
            }
            let result = search::search(&original, query, SEARCH_LIMIT);
            if result.hits.is_empty() {
                // Never "not found" for a live id: the whole original is the honest answer.
                Counters::add(&counters.retrievals_full, 1);
                return render_full(&shared.tool_name, &id, &original, limit);
            }
            Counters::add(&counters.retrievals_search, 1);
            tracing::debug!(id = %id, hits = result.hits.len(), "retrieval by query");
            render_search(&id, query, &result, limit)
        }
        None => {
            Counters::add(&counters.retrievals_full, 1);
            tracing::debug!(id = %id, bytes = original.len(), "retrieval of a full original");
            render_full(&shared.tool_name, &id, &original, limit)
        }
    }
}

fn unknown(id: &EntryId) -> String {
    format!(
        "hash={id} is unknown: it was not issued in this conversation, so there is nothing to retrieve. Do not retry it; if you need the data, run the tool that produced it again."
    )
}

/// Bytes of an answer kept for the note that says what a page holds and how to read on: the
/// tool name (64 at most), the id, a handful of numbers and fixed words fit easily.
const NOTE_RESERVE: usize = 512;
/// Most bytes of the model's query repeated in an answer.
const QUERY_ECHO_BYTES: usize = 200;

/// The whole original when it fits in `limit`, else its first page.
fn render_full(tool_name: &str, id: &EntryId, original: &str, limit: usize) -> String {
    if original.len() <= limit {
        return original.to_owned();
    }
    let units = Units::natural(original);
    match units.ends.len() {
        0 => original.to_owned(),
        count => render_units(tool_name, id, original, &units, 0, count - 1, limit),
    }
}

/// What the model can ask for by range, as `query`: `lines 120-180`, `items 5`, `bytes
/// 65537-`… (1-based, inclusive; an open end reads to the end). The answer to a paged
/// retrieval names the exact query that reads on, so the tool's schema needs no page argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RangeQuery {
    unit: RangeUnit,
    first: usize,
    last: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeUnit {
    /// Lines of the raw text, whatever the original is.
    Lines,
    /// The original's items: its main JSON collection's elements, or its lines.
    Items,
    Bytes,
}

impl RangeQuery {
    /// A range query, or `None` for search words. Only a whole query of that exact form is a
    /// range: a search for "lines" or "5 items" stays a search.
    fn parse(query: &str) -> Option<Self> {
        let query = query.trim().to_ascii_lowercase();
        let (word, numbers) = query.split_once(char::is_whitespace)?;
        let unit = match word {
            "line" | "lines" => RangeUnit::Lines,
            "item" | "items" => RangeUnit::Items,
            "byte" | "bytes" => RangeUnit::Bytes,
            _ => return None,
        };
        let number = |text: &str| -> Option<usize> {
            let text = text.trim();
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())?
        };
        let (first, last) = match numbers.split_once(['-', '\u{2013}']) {
            Some((first, last)) if last.trim().is_empty() => (number(first)?, None),
            Some((first, last)) => (number(first)?, Some(number(last)?)),
            None => {
                let first = number(numbers)?;
                (first, Some(first))
            }
        };
        (first >= 1 && last.is_none_or(|last| last >= first)).then_some(Self { unit, first, last })
    }
}

/// Where each unit (line or item) of an original ends, such that consecutive ranges of units
/// tile the original byte for byte: a line ends after its newline, an item where the next
/// begins, the last unit at the end of the original.
struct Units {
    /// "lines" or "items".
    noun: &'static str,
    ends: Vec<usize>,
}

impl Units {
    /// The units views and searches use: JSON items, or lines.
    fn natural(original: &str) -> Self {
        let items = split_items(original);
        if items.kind == ItemKind::Json
            && let Some(units) = Self::items(original, &items.items)
        {
            return units;
        }
        Self::lines(original)
    }

    fn lines(original: &str) -> Self {
        let mut ends: Vec<usize> = memchr::memchr_iter(b'\n', original.as_bytes())
            .map(|newline| newline + 1)
            .collect();
        if ends.last().copied().unwrap_or(0) < original.len() {
            ends.push(original.len());
        }
        Self {
            noun: "lines",
            ends,
        }
    }

    /// Units from item slices of `original`; `None` when they are not in order inside it.
    fn items(original: &str, items: &[&str]) -> Option<Self> {
        let base = original.as_ptr() as usize;
        let mut ends = Vec::with_capacity(items.len());
        for item in items {
            let offset = (item.as_ptr() as usize).checked_sub(base)?;
            let end = offset + item.len();
            if end > original.len() || ends.last().is_some_and(|&last| offset < last) {
                return None;
            }
            ends.push(end);
        }
        let last = ends.last_mut()?;
        *last = original.len();
        Some(Self {
            noun: "items",
            ends,
        })
    }

    fn singular(&self) -> &'static str {
        self.noun.trim_end_matches('s')
    }
}

fn render_range(
    tool_name: &str,
    id: &EntryId,
    original: &str,
    range: &RangeQuery,
    limit: usize,
) -> String {
    let units = match range.unit {
        RangeUnit::Bytes => return render_bytes(tool_name, id, original, range, limit),
        RangeUnit::Lines => Units::lines(original),
        RangeUnit::Items => Units::natural(original),
    };
    let count = units.ends.len();
    if range.first > count {
        return format!(
            "hash={id} has {count} {}: there is no {} {}.",
            units.noun,
            units.singular(),
            range.first
        );
    }
    let last = range.last.unwrap_or(count).min(count);
    render_units(
        tool_name,
        id,
        original,
        &units,
        range.first - 1,
        last - 1,
        limit,
    )
}

/// Units `first..=last` (0-based) of `original`, or as many of them as fit in `limit` with the
/// note; the note says which were shown and the query for the rest.
fn render_units(
    tool_name: &str,
    id: &EntryId,
    original: &str,
    units: &Units,
    first: usize,
    last: usize,
    limit: usize,
) -> String {
    let budget = limit.saturating_sub(NOTE_RESERVE);
    let count = units.ends.len();
    let start = first.checked_sub(1).map_or(0, |before| units.ends[before]);
    let wanted_end = units.ends[last];
    let fitting = units.ends[first..=last].partition_point(|&end| end - start <= budget);
    let (end, shown, next) = if fitting > 0 {
        let through = first + fitting - 1;
        let next = (through < last).then(|| format!("{} {}-{}", units.noun, through + 2, last + 1));
        let shown = if first == through {
            format!("{} {} of {count}", units.singular(), first + 1)
        } else {
            format!("{} {}-{} of {count}", units.noun, first + 1, through + 1)
        };
        (units.ends[through], shown, next)
    } else {
        // One unit is larger than a page: its first bytes, and the byte range of the rest.
        let end = floor_char_boundary(original, start + budget).max(start);
        let shown = format!("part of {} {} of {count}", units.singular(), first + 1);
        (end, shown, Some(format!("bytes {}-{wanted_end}", end + 1)))
    };
    page(
        tool_name,
        id,
        original,
        start..end,
        &shown,
        next.as_deref(),
        units.noun,
    )
}

fn render_bytes(
    tool_name: &str,
    id: &EntryId,
    original: &str,
    range: &RangeQuery,
    limit: usize,
) -> String {
    let len = original.len();
    if range.first > len {
        return format!(
            "hash={id} has {len} bytes: there is no byte {}.",
            range.first
        );
    }
    // Whole characters only: a start inside one moves back to its first byte.
    let start = floor_char_boundary(original, range.first - 1);
    let wanted_end = range.last.unwrap_or(len).min(len);
    let wanted_end = ceil_char_boundary(original, wanted_end).max(start);
    let budget = limit.saturating_sub(NOTE_RESERVE);
    let end = if wanted_end - start <= budget {
        wanted_end
    } else {
        floor_char_boundary(original, start + budget).max(start)
    };
    let next = (end < wanted_end).then(|| format!("bytes {}-{wanted_end}", end + 1));
    page(
        tool_name,
        id,
        original,
        start..end,
        "",
        next.as_deref(),
        "lines",
    )
}

/// A note on what part of the original follows, then that part verbatim.
fn page(
    tool_name: &str,
    id: &EntryId,
    original: &str,
    bytes: std::ops::Range<usize>,
    shown: &str,
    next: Option<&str>,
    noun: &str,
) -> String {
    let len = original.len();
    let mut out = format!("[Part of hash={id}: ");
    if !shown.is_empty() {
        let _ = write!(out, "{shown}, ");
    }
    let _ = write!(out, "bytes {}-{} of {len}.", bytes.start + 1, bytes.end);
    if let Some(next) = next {
        let _ = write!(
            out,
            " To read on, call {tool_name} with this hash and query \"{next}\"; or give search words as query to get only the matching {noun}."
        );
    }
    out.push_str("]\n");
    out.push_str(&original[bytes]);
    out
}

fn render_search(id: &EntryId, query: &str, result: &search::SearchResult, limit: usize) -> String {
    let (label, noun) = if result.unit == "lines" {
        ("line", "lines")
    } else {
        ("item", "items")
    };
    let query = crate::provider::truncated(query.to_owned(), QUERY_ECHO_BYTES);
    let mut out = format!(
        "Best matches for {query:?} in hash={id}: {} of {} matching {} ({} in all), best first.",
        result.hits.len(),
        result.matched,
        result.unit,
        result.total_items
    );
    out.push_str(" Call again without query for the whole original.\n");
    // Room for the closing notes, and for the note after a hit that was cut.
    const CLOSING_NOTES: usize = 256;
    const CUT_NOTE: usize = 40;
    let budget = limit.saturating_sub(CLOSING_NOTES);
    let share = (SEARCH_ANSWER_BYTES.min(budget) / result.hits.len().max(1)).max(MIN_HIT_BYTES);
    let (mut cut, mut first_cut, mut left_out) = (0, None, 0);
    for (rank, hit) in result.hits.iter().enumerate() {
        let text = hit.text.as_str();
        let prefix = format!("[{label} {}] ", hit.index + 1);
        let room = budget.saturating_sub(out.len() + prefix.len() + CUT_NOTE + 1);
        if room < MIN_HIT_BYTES.min(text.len()) {
            left_out = result.hits.len() - rank;
            break;
        }
        let kept = &text[..floor_char_boundary(text, share.min(room))];
        out.push_str(&prefix);
        out.push_str(kept);
        if kept.len() < text.len() {
            cut += 1;
            first_cut.get_or_insert(hit.index + 1);
            let _ = write!(out, " … [{} more bytes]", text.len() - kept.len());
        }
        out.push('\n');
    }
    if let Some(example) = first_cut {
        let _ = writeln!(
            out,
            "({cut} long {} cut short: get one whole with query \"{label} {example}\".)",
            if cut == 1 { label } else { noun }
        );
    }
    if left_out > 0 {
        let _ = writeln!(
            out,
            "({left_out} more {} not shown: use a narrower query.)",
            if left_out == 1 { "match" } else { "matches" }
        );
    }
    out
}

/// The largest index at most `at` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The smallest index at least `at` that is a char boundary of `text`.
fn ceil_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{Hit, SearchResult};

    fn id() -> EntryId {
        EntryId::parse("0123456789abcdef01234567").unwrap()
    }

    /// The verbatim part of a paged answer, and the query its note says reads on.
    fn split_page(answer: &str) -> (&str, Option<String>) {
        let (note, content) = answer.split_once("]\n").expect("a note line");
        assert!(
            note.starts_with("[Part of hash=0123456789abcdef01234567: "),
            "{note}"
        );
        let next = note
            .split_once("query \"")
            .map(|(_, rest)| rest[..rest.find('"').unwrap()].to_owned());
        (content, next)
    }

    #[test]
    fn a_query_answer_stays_bounded_and_says_what_was_cut() {
        let big = "é".repeat(20_000);
        let result = SearchResult {
            unit: "items",
            total_items: 100,
            matched: 30,
            hits: (0..20)
                .map(|index| Hit {
                    index,
                    text: big.clone(),
                    score: 1.0,
                })
                .collect(),
        };
        let answer = render_search(&id(), "q", &result, 64 * 1024);
        assert!(answer.len() <= 64 * 1024, "{}", answer.len());
        assert!(answer.contains("more bytes]"));
        assert!(answer.contains("20 long items cut short: get one whole with query \"item 1\""));
        // A small limit lists fewer matches and says so, and is never exceeded.
        for limit in [2_048, 5_000, 10_000] {
            let answer = render_search(&id(), &"long query ".repeat(100), &result, limit);
            assert!(answer.len() <= limit, "{limit}: {}", answer.len());
            assert!(answer.contains("more matches not shown"), "{answer}");
        }
        let small = SearchResult {
            unit: "lines",
            total_items: 3,
            matched: 1,
            hits: vec![Hit {
                index: 2,
                text: "needle line".into(),
                score: 2.0,
            }],
        };
        let answer = render_search(&id(), "needle", &small, 64 * 1024);
        assert!(answer.ends_with("[line 3] needle line\n"), "{answer}");
    }

    #[test]
    fn range_queries_are_recognised_only_whole() {
        let range = |unit, first, last| Some(RangeQuery { unit, first, last });
        assert_eq!(
            RangeQuery::parse("lines 813-5000"),
            range(RangeUnit::Lines, 813, Some(5000))
        );
        assert_eq!(
            RangeQuery::parse(" Line 7 "),
            range(RangeUnit::Lines, 7, Some(7))
        );
        assert_eq!(
            RangeQuery::parse("items 3 - "),
            range(RangeUnit::Items, 3, None)
        );
        assert_eq!(
            RangeQuery::parse("items 3\u{2013}9"),
            range(RangeUnit::Items, 3, Some(9))
        );
        assert_eq!(
            RangeQuery::parse("bytes 65537-70000"),
            range(RangeUnit::Bytes, 65537, Some(70000))
        );
        for search in [
            "lines",
            "lines of errors",
            "5 items",
            "lines 0-3",
            "lines 9-3",
            "lines -3",
            "lines +3",
            "lines 3-4-5",
            "lines 99999999999999999999999",
            "pages 1-2",
        ] {
            assert_eq!(RangeQuery::parse(search), None, "{search}");
        }
    }

    #[test]
    fn a_large_original_comes_in_pages_that_tile_it() {
        let original: String = (0..5_000)
            .map(|i| format!("2026-01-01 INFO line {i} é {}\n", "x".repeat(i % 50)))
            .collect();
        let limit = 8 * 1024;
        let first = render_full("ccr_retrieve", &id(), &original, limit);
        assert!(first.len() <= limit);
        assert!(
            first.starts_with("[Part of hash=0123456789abcdef01234567: lines 1-"),
            "{first}"
        );
        assert!(first.contains("To read on, call ccr_retrieve with this hash and query \"lines "));
        // Following the notes reads the original back, byte for byte.
        let mut read = String::new();
        let mut answer = first;
        let mut pages = 1;
        loop {
            assert!(answer.len() <= limit, "{}", answer.len());
            let (content, next) = split_page(&answer);
            read.push_str(content);
            let Some(next) = next else { break };
            let range = RangeQuery::parse(&next).expect("the note names a range query");
            answer = render_range("ccr_retrieve", &id(), &original, &range, limit);
            pages += 1;
        }
        assert_eq!(read, original);
        assert!(pages > original.len() / limit, "{pages}");
        // A small original is answered whole, without a note.
        assert_eq!(
            render_full("ccr_retrieve", &id(), "a\nb\n", limit),
            "a\nb\n"
        );
    }

    #[test]
    fn json_items_and_lines_longer_than_a_page_are_paged_too() {
        let records: Vec<String> = (0..400)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"name":"n{i}","note":"{}"}}"#,
                    "é".repeat(i % 40)
                )
            })
            .collect();
        let huge_line = "z".repeat(20_000);
        let originals = [
            format!("{{\"data\": [{}], \"next\": null}}", records.join(", ")),
            format!("head\n{huge_line}\ntail\n"),
            "é".repeat(30_000),
        ];
        let limit = 4 * 1024;
        for original in &originals {
            let mut read = String::new();
            let mut answer = render_full("t", &id(), original, limit);
            let mut notes = Vec::new();
            loop {
                assert!(answer.len() <= limit, "{}", answer.len());
                let (content, next) = split_page(&answer);
                notes.push(answer[..answer.len() - content.len()].to_owned());
                read.push_str(content);
                let Some(next) = next else { break };
                let range = RangeQuery::parse(&next).expect("a range query");
                answer = render_range("t", &id(), original, &range, limit);
            }
            assert_eq!(&read, original);
            assert!(notes.len() > 2, "{notes:?}");
        }
        let json_note = render_full("t", &id(), &originals[0], limit);
        assert!(json_note.contains(": items 1-"), "{json_note}");
        // One record, one line, a missing one.
        let item = render_range(
            "t",
            &id(),
            &originals[0],
            &RangeQuery::parse("item 5").unwrap(),
            limit,
        );
        assert!(
            item.contains("item 5 of 400") && item.contains(r#"{"id":4,"#),
            "{item}"
        );
        let line = render_range(
            "t",
            &id(),
            &originals[1],
            &RangeQuery::parse("lines 3").unwrap(),
            limit,
        );
        assert!(line.ends_with("tail\n"), "{line}");
        let missing = render_range(
            "t",
            &id(),
            &originals[1],
            &RangeQuery::parse("lines 9-12").unwrap(),
            limit,
        );
        assert_eq!(
            missing,
            "hash=0123456789abcdef01234567 has 3 lines: there is no line 9."
        );
    }
}
