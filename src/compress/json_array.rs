//! Views of JSON arrays: API results, listings, records.

use std::collections::{HashMap, HashSet};

use super::{
    ALARM_PREFIX_BYTES, CompressContext, KeptItem, View, alarm_level, prefix, query_words,
    render_kept, shorten,
};
use crate::search::{Bm25Matches, terms};

/// Items kept from the start and from the end.
const HEAD_ITEMS: usize = 3;
const TAIL_ITEMS: usize = 2;
/// Items kept because their values look like errors.
const ALARM_ITEMS: usize = 10;
/// Items kept because they best match the conversation's question…
const QUERY_HITS: usize = 5;
/// …of which at most this many because a value of theirs is a word of the question
/// ("sqlx-postgres", "pydantic"): the entities the question names.
const ENTITY_HITS: usize = 3;
/// Values this long or shorter can name an entity.
const ENTITY_MAX_BYTES: usize = 64;
/// Keys named in the schema line.
const SCHEMA_KEYS: usize = 20;
/// A field is summarised when it has at most this many distinct values…
const SUMMARY_MAX_DISTINCT: usize = 6;
/// …and at most this many fields are.
const SUMMARY_FIELDS: usize = 3;
/// Longer string values are not summary values.
const SUMMARY_MAX_VALUE_BYTES: usize = 40;
/// Longer string values are cut inside kept items, so that every key stays visible.
const MAX_STRING_BYTES: usize = 120;
/// Kept items longer than this are shown with their big nested containers collapsed (deepest
/// first), then cut.
const MAX_ITEM_BYTES: usize = 800;
/// A nested container longer than this (minified) is what collapsing replaces with
/// `[…N items]` or `{…N keys}`.
const SMALL_CONTAINER_BYTES: usize = 60;
/// Keys whose string values are prose or names: an error word there ("derive(Error)",
/// "serde_path_to_error") describes the item rather than reports a failure.
const PROSE_KEYS: &[&str] = &[
    "description",
    "summary",
    "readme",
    "title",
    "name",
    "id",
    "keywords",
    "categories",
    "license",
    "homepage",
    "documentation",
    "repository",
    "url",
];

/// Keys whose presence with a non-empty value marks an item as failed.
const ERROR_KEYS: &[&str] = &["error", "errors", "err", "exception", "failure"];
/// The highest alarm level: a value that is only an error word ("failed"), an error key with a
/// value, or a 5xx status. (Level 2 is an error word inside a value, 1 a warning word.)
const ALARM_EXACT: u8 = 3;

/// Builds the view of a JSON array's elements; the caller decides whether it saves enough.
pub(crate) fn compress<'a>(items: &[&'a str], ctx: &CompressContext<'_>) -> View {
    let total = items.len();
    let scans: Vec<ItemScan<'_>> = items.iter().map(|item| scan_item(item)).collect();

    let mut kept_indices: Vec<usize> = (0..HEAD_ITEMS.min(total))
        .chain(total.saturating_sub(TAIL_ITEMS)..total)
        .collect();
    kept_indices.dedup();
    // Identical items say nothing new: among alarms and query hits, keep one of each.
    let mut seen: HashSet<&'a str> = kept_indices.iter().map(|&i| items[i]).collect();
    let mut alarms: Vec<(u8, usize)> = scans
        .iter()
        .enumerate()
        .filter(|(_, scan)| scan.alarm > 0)
        .map(|(index, scan)| (scan.alarm, index))
        .collect();
    alarms.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let alarm_indices = alarms.into_iter().map(|(_, index)| index);
    kept_indices.extend(take_unseen(alarm_indices, items, &mut seen, ALARM_ITEMS));
    let entities = take_unseen(
        entity_hits(&scans, ctx.query).into_iter(),
        items,
        &mut seen,
        ENTITY_HITS,
    );
    // Twice as many candidates, as some may be duplicates of items already kept.
    let hits = Bm25Matches::new(items, &terms(ctx.query))
        .diverse_top(2 * QUERY_HITS)
        .into_iter();
    let hits = take_unseen(hits, items, &mut seen, QUERY_HITS - entities.len());
    kept_indices.extend(entities);
    kept_indices.extend(hits);
    kept_indices.sort_unstable();
    kept_indices.dedup();

    let mut text = String::new();
    text.push_str(&schema_line(&scans));
    text.push('\n');
    let kept: Vec<KeptItem> = kept_indices
        .iter()
        .map(|&index| KeptItem {
            index,
            text: render_item(items[index]),
            note: None,
        })
        .collect();
    render_kept(&mut text, &kept, total, "items");
    if let Some(summary) = omitted_summary(&scans, &kept_indices) {
        text.push_str(&summary);
        text.push('\n');
    }
    View {
        text,
        unit: "items",
        total,
        kept: kept.len(),
        lossless: false,
    }
}

/// The first `limit` candidates whose text has not been seen yet, marking them seen.
fn take_unseen<'a>(
    candidates: impl Iterator<Item = usize>,
    items: &[&'a str],
    seen: &mut HashSet<&'a str>,
    limit: usize,
) -> Vec<usize> {
    candidates
        .filter(|&index| seen.insert(items[index]))
        .take(limit)
        .collect()
}

/// What one pass over an element found.
struct ItemScan<'a> {
    kind: ValueKind,
    /// Top-level fields of an object (keys as written, without quotes) with their value when it
    /// is short and categorical: a string's contents, `true`, `false` or `null`. A scalar
    /// element is one field with an empty key.
    fields: Vec<(&'a str, Option<&'a str>)>,
    /// String values (not keys) of at most ENTITY_MAX_BYTES, at most two levels deep (an
    /// object's fields and their fields): what can name the item.
    short_values: Vec<&'a str>,
    /// 0 nothing; 1 a warning; 2 an error word; 3 an error value, key or status.
    alarm: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl ValueKind {
    fn of(first_byte: u8) -> ValueKind {
        match first_byte {
            b'{' => ValueKind::Object,
            b'[' => ValueKind::Array,
            b'"' => ValueKind::String,
            b't' | b'f' => ValueKind::Bool,
            b'n' => ValueKind::Null,
            _ => ValueKind::Number,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            ValueKind::Object => "objects",
            ValueKind::Array => "arrays",
            ValueKind::String => "strings",
            ValueKind::Number => "numbers",
            ValueKind::Bool => "booleans",
            ValueKind::Null => "nulls",
        }
    }
}

/// One pass over a (valid) JSON element: its top-level fields and how alarming its values are.
fn scan_item(raw: &str) -> ItemScan<'_> {
    let bytes = raw.as_bytes();
    let kind = bytes.first().map_or(ValueKind::Null, |&b| ValueKind::of(b));
    let mut scan = ItemScan {
        kind,
        fields: Vec::new(),
        short_values: Vec::new(),
        alarm: 0,
    };
    let mut depth = 0usize;
    // The most recent key at any depth, and the current key of the top-level object.
    let mut key = "";
    let mut top_key: Option<&str> = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'{' | b'[' => {
                if depth == 1 {
                    if let Some(k) = top_key.take() {
                        scan.fields.push((k, None));
                    }
                }
                let empty = next_non_space(bytes, i + 1).is_some_and(|b| b == b'}' || b == b']');
                if !empty && is_error_key(key) {
                    scan.alarm = ALARM_EXACT;
                }
                key = "";
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                let end = string_end(bytes, i);
                let contents = &raw[i + 1..end - 1];
                i = end;
                if next_non_space(bytes, i) == Some(b':') && depth > 0 {
                    key = contents;
                    if depth == 1 && kind == ValueKind::Object {
                        top_key = Some(contents);
                    }
                    continue;
                }
                scan.alarm = scan.alarm.max(string_alarm(key, contents));
                if depth <= 2 && contents.len() <= ENTITY_MAX_BYTES {
                    scan.short_values.push(contents);
                }
                let categorical = contents.len() <= SUMMARY_MAX_VALUE_BYTES;
                record_scalar(
                    &mut scan,
                    depth,
                    &mut top_key,
                    categorical.then_some(contents),
                );
            }
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
                let literal = &raw[start..i];
                scan.alarm = scan.alarm.max(scalar_alarm(key, literal));
                let categorical = matches!(byte, b't' | b'f' | b'n');
                record_scalar(
                    &mut scan,
                    depth,
                    &mut top_key,
                    categorical.then_some(literal),
                );
            }
            _ => i += 1,
        }
    }
    scan
}

/// Items with a value that is a whole word of the query (case-insensitive), best first: those
/// naming more, and rarer, of the query's words. A word that many items have as a value
/// ("ok") names no entity.
fn entity_hits(scans: &[ItemScan<'_>], query: &str) -> Vec<usize> {
    let words = query_words(query);
    if words.is_empty() {
        return Vec::new();
    }
    // (item, word) for each item that has the word as a value.
    let mut matches: Vec<(usize, usize)> = Vec::new();
    for (index, scan) in scans.iter().enumerate() {
        for (w, word) in words.iter().enumerate() {
            let named = scan
                .short_values
                .iter()
                .any(|value| value.eq_ignore_ascii_case(word));
            if named {
                matches.push((index, w));
            }
        }
    }
    let mut items_naming = vec![0usize; words.len()];
    for &(_, w) in &matches {
        items_naming[w] += 1;
    }
    let total = scans.len() as f64;
    let mut scores: Vec<(usize, f64)> = Vec::new();
    for &(index, w) in &matches {
        let count = items_naming[w];
        if count > 1 && count * 10 > scans.len() {
            continue;
        }
        let rarity = (1.0 + total / count as f64).ln();
        match scores.last_mut() {
            Some((last, score)) if *last == index => *score += rarity,
            _ => scores.push((index, rarity)),
        }
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scores.into_iter().map(|(index, _)| index).collect()
}

/// Records a scalar value as a field when it belongs to the top level.
fn record_scalar<'a>(
    scan: &mut ItemScan<'a>,
    depth: usize,
    top_key: &mut Option<&'a str>,
    value: Option<&'a str>,
) {
    if depth == 0 {
        scan.fields.push(("", value));
    } else if depth == 1 {
        if let Some(k) = top_key.take() {
            scan.fields.push((k, value));
        }
    }
}

fn string_alarm(key: &str, contents: &str) -> u8 {
    if contents.is_empty() {
        return 0;
    }
    if is_error_key(key) {
        return ALARM_EXACT;
    }
    match alarm_level(prefix(contents, ALARM_PREFIX_BYTES), false) {
        // The whole value is an error word: "error", "failed".
        2 if contents.trim().bytes().all(|b| b.is_ascii_alphabetic()) => ALARM_EXACT,
        level if level < ALARM_EXACT && is_prose_key(key) => 0,
        level => level,
    }
}

fn scalar_alarm(key: &str, literal: &str) -> u8 {
    if is_error_key(key) && !matches!(literal, "null" | "false" | "0") {
        return ALARM_EXACT;
    }
    let key = key.to_ascii_lowercase();
    let server_error = literal
        .parse::<u32>()
        .is_ok_and(|n| (500..600).contains(&n));
    if server_error && (key.contains("status") || key.contains("code")) {
        ALARM_EXACT
    } else {
        0
    }
}

fn is_prose_key(key: &str) -> bool {
    PROSE_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

fn is_error_key(key: &str) -> bool {
    ERROR_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k))
}

/// Index just past the string that starts with the quote at `start`.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn next_non_space(bytes: &[u8], from: usize) -> Option<u8> {
    bytes[from.min(bytes.len())..]
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
}

/// One kept item on one line: minified, long strings cut, and if still longer than
/// MAX_ITEM_BYTES, big nested containers collapsed from the deepest level up; cut at last.
fn render_item(raw: &str) -> String {
    let mut text = String::new();
    for collapse_depth in [usize::MAX, 3, 2, 1] {
        let complete;
        (text, complete) = minify(raw, MAX_STRING_BYTES, collapse_depth, MAX_ITEM_BYTES);
        if complete {
            return text;
        }
    }
    shorten(&text, MAX_ITEM_BYTES)
}

/// `raw` without whitespace outside strings, in its original key order; string values longer
/// than `max_string_bytes` are cut with "…" inside their quotes, and containers nested
/// `collapse_depth` levels deep or deeper (the element itself is level 0) that are longer than
/// SMALL_CONTAINER_BYTES are shown as `[…N items]` or `{…N keys}`. Stops early, returning
/// false, once the output is longer than `max_bytes`.
fn minify(
    raw: &str,
    max_string_bytes: usize,
    collapse_depth: usize,
    max_bytes: usize,
) -> (String, bool) {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len().min(max_bytes + max_string_bytes));
    let mut depth = 0;
    let mut i = 0;
    while i < bytes.len() {
        if out.len() > max_bytes {
            return (out, false);
        }
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                out.push_str(&cut_string(&raw[i..end], max_string_bytes));
                i = end;
            }
            open @ (b'{' | b'[') => {
                if depth >= collapse_depth {
                    let (end, size, children) = container_extent(bytes, i);
                    if size > SMALL_CONTAINER_BYTES {
                        out.push_str(&collapsed(open, children));
                        i = end;
                        continue;
                    }
                }
                depth += 1;
                out.push(char::from(open));
                i += 1;
            }
            close @ (b'}' | b']') => {
                depth = depth.saturating_sub(1);
                out.push(char::from(close));
                i += 1;
            }
            byte if byte.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b'"' | b'{' | b'[' | b'}' | b']')
                    && !bytes[i].is_ascii_whitespace()
                {
                    i += 1;
                }
                out.push_str(&raw[start..i]);
            }
        }
    }
    let complete = out.len() <= max_bytes;
    (out, complete)
}

/// For the container that opens at `start`: the index just past it, its length without
/// whitespace outside strings, and how many elements or keys it has.
fn container_extent(bytes: &[u8], start: usize) -> (usize, usize, usize) {
    let mut depth = 0;
    let mut size = 0;
    let mut children = 0;
    let mut empty = true;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                size += end - i;
                empty = false;
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > 1 {
                    empty = false;
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    let children = if empty { 0 } else { children + 1 };
                    return (i + 1, size + 1, children);
                }
            }
            b',' if depth == 1 => children += 1,
            byte if byte.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => empty = false,
        }
        size += 1;
        i += 1;
    }
    (bytes.len(), size, children + 1)
}

/// `[…3 items]`, `{…1 key}`.
fn collapsed(open: u8, children: usize) -> String {
    let (close, noun) = if open == b'{' {
        ('}', "key")
    } else {
        (']', "item")
    };
    let plural = if children == 1 { "" } else { "s" };
    format!("{}…{children} {noun}{plural}{close}", char::from(open))
}

/// A quoted JSON string cut to about `max_bytes` of contents, never inside an escape.
fn cut_string(quoted: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    let contents = &quoted[1..quoted.len().saturating_sub(1).max(1)];
    if contents.len() <= max_bytes {
        return quoted.into();
    }
    let bytes = contents.as_bytes();
    let mut cut = 0;
    while cut < max_bytes {
        cut += match bytes[cut] {
            b'\\' if bytes.get(cut + 1) == Some(&b'u') => 6,
            b'\\' => 2,
            _ => 1,
        };
    }
    let mut cut = cut.min(contents.len());
    while !contents.is_char_boundary(cut) {
        cut += 1;
    }
    format!("\"{}…\"", &contents[..cut]).into()
}

/// "JSON array of 120 objects; keys: id, name, status, …" or, for other elements,
/// "JSON array of 120 items (100 strings, 20 numbers)".
fn schema_line(scans: &[ItemScan<'_>]) -> String {
    let total = scans.len();
    let mut kinds: Vec<(ValueKind, usize)> = Vec::new();
    for scan in scans {
        match kinds.iter_mut().find(|(kind, _)| *kind == scan.kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((scan.kind, 1)),
        }
    }
    kinds.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    let mut line = match kinds.as_slice() {
        [(kind, _)] => format!("JSON array of {total} {}", kind.plural()),
        _ => {
            let counts: Vec<String> = kinds
                .iter()
                .map(|(kind, count)| format!("{count} {}", kind.plural()))
                .collect();
            format!("JSON array of {total} items ({})", counts.join(", "))
        }
    };
    let mut keys: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let object_keys = scans
        .iter()
        .filter(|scan| scan.kind == ValueKind::Object)
        .flat_map(|scan| scan.fields.iter().map(|(key, _)| *key));
    let mut more = false;
    for key in object_keys {
        if seen.insert(key) {
            if keys.len() == SCHEMA_KEYS {
                more = true;
                break;
            }
            keys.push(key);
        }
    }
    if !keys.is_empty() {
        line.push_str("; keys: ");
        line.push_str(&keys.join(", "));
        if more {
            line.push_str(", …");
        }
    }
    line
}

/// Counts of a categorical field's values among all items and among omitted ones.
struct FieldStats<'a> {
    key: &'a str,
    present: usize,
    /// (value, omitted count), in first-seen order; cleared when the field is not categorical.
    values: Vec<(&'a str, usize)>,
    categorical: bool,
}

/// "omitted items by status: ok 100, error 3; by level: …" for a few low-cardinality fields.
fn omitted_summary(scans: &[ItemScan<'_>], kept_indices: &[usize]) -> Option<String> {
    let mut stats: Vec<FieldStats<'_>> = Vec::new();
    // Only looked up, never iterated, so its order cannot reach the view.
    let mut stats_of_key: HashMap<&str, usize> = HashMap::new();
    let mut kept = kept_indices.iter().peekable();
    for (index, scan) in scans.iter().enumerate() {
        let omitted = kept.next_if_eq(&&index).is_none();
        for &(key, value) in &scan.fields {
            let slot = *stats_of_key.entry(key).or_insert_with(|| {
                stats.push(FieldStats {
                    key,
                    present: 0,
                    values: Vec::new(),
                    categorical: true,
                });
                stats.len() - 1
            });
            let field = &mut stats[slot];
            field.present += 1;
            if !field.categorical {
                continue;
            }
            let Some(value) = value else {
                field.categorical = false;
                continue;
            };
            let position = match field.values.iter().position(|(v, _)| *v == value) {
                Some(position) => position,
                None if field.values.len() < SUMMARY_MAX_DISTINCT => {
                    field.values.push((value, 0));
                    field.values.len() - 1
                }
                None => {
                    field.categorical = false;
                    continue;
                }
            };
            field.values[position].1 += usize::from(omitted);
        }
    }

    let parts: Vec<String> = stats
        .iter_mut()
        .filter(|field| {
            field.categorical && field.values.len() >= 2 && field.present * 2 >= scans.len()
        })
        .filter_map(|field| {
            field.values.retain(|(_, omitted)| *omitted > 0);
            // Stable: equal counts keep first-seen order.
            field
                .values
                .sort_by_key(|&(_, omitted)| std::cmp::Reverse(omitted));
            let counts: Vec<String> = field
                .values
                .iter()
                .map(|(value, omitted)| format!("{value} {omitted}"))
                .collect();
            if counts.is_empty() {
                return None;
            }
            let by = if field.key.is_empty() {
                String::new()
            } else {
                format!(" by {}", field.key)
            };
            Some(format!("{by}: {}", counts.join(", ")))
        })
        .take(SUMMARY_FIELDS)
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(format!("omitted items{}", parts.join(";")))
    }
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

    fn records(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                format!(
                    r#"{{"id": {i}, "name": "job-{i}", "status": "ok", "timeout_ms": 3000, "region": "{}"}}"#,
                    ["eu", "us"][i % 2]
                )
            })
            .collect()
    }

    fn view_of(items: &[String], query: &str) -> View {
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        compress(&items, &ctx(query))
    }

    #[test]
    fn error_item_is_kept_and_others_dropped() {
        let mut items = records(200);
        items[117] = r#"{"id": 117, "name": "job-117", "status": "error", "timeout_ms": 3000, "region": "eu"}"#.to_owned();
        let view = view_of(&items, "");
        assert!(
            view.text
                .contains(r#"{"id":117,"name":"job-117","status":"error""#)
        );
        assert_eq!(view.total, 200);
        assert_eq!(view.kept, HEAD_ITEMS + TAIL_ITEMS + 1);
        assert!(!view.text.contains(r#""id":50,"#));
        assert!(view.text.contains("… 114 items omitted …"));
        assert!(view.text.contains("… 80 items omitted …"));
    }

    #[test]
    fn view_has_schema_and_summary() {
        let mut items = records(100);
        items[40] = r#"{"id": 40, "name": "job-40", "status": "failed", "timeout_ms": 3000, "region": "us"}"#.to_owned();
        let view = view_of(&items, "");
        let first_line = view.text.lines().next().unwrap();
        assert_eq!(
            first_line,
            "JSON array of 100 objects; keys: id, name, status, timeout_ms, region"
        );
        let last_line = view.text.lines().last().unwrap();
        assert_eq!(
            last_line,
            "omitted items by status: ok 94; by region: us 48, eu 46"
        );
    }

    #[test]
    fn query_match_is_kept() {
        let items = records(300);
        let view = view_of(&items, "what happened to job-123?");
        assert!(view.text.contains(r#""name":"job-123""#), "{}", view.text);
    }

    #[test]
    fn items_named_in_the_query_are_kept() {
        let items: Vec<String> = (0..200)
            .map(|i| {
                let name = if i == 120 { "sqlx-postgres".to_owned() } else { format!("crate{i}") };
                // Every item mentions sqlx and postgres somewhere, so BM25 alone cannot tell.
                format!(
                    r#"{{"name": "{name}", "version": "0.{i}.0", "notes": "works with sqlx and postgres", "deps": ["sqlx-postgres-{i}"]}}"#
                )
            })
            .collect();
        let view = view_of(&items, "Which version of sqlx-postgres do we use?");
        assert!(
            view.text
                .contains(r#"{"name":"sqlx-postgres","version":"0.120.0""#),
            "{}",
            view.text
        );
    }

    #[test]
    fn common_values_name_no_entity() {
        let raws: Vec<&str> = (0..30)
            .map(|i| {
                if i == 17 {
                    r#"{"s": "bad"}"#
                } else {
                    r#"{"s": "ok"}"#
                }
            })
            .collect();
        let scans: Vec<ItemScan<'_>> = raws.iter().map(|raw| scan_item(raw)).collect();
        assert!(entity_hits(&scans, "is it ok?").is_empty());
        assert_eq!(entity_hits(&scans, "why 'bad'?"), vec![17]);
    }

    #[test]
    fn server_error_status_counts_but_timeout_key_does_not() {
        assert_eq!(scan_item(r#"{"timeout_ms": 500, "code": 200}"#).alarm, 0);
        assert_eq!(scan_item(r#"{"status_code": 503}"#).alarm, ALARM_EXACT);
        assert_eq!(scan_item(r#"{"error": null, "errors": []}"#).alarm, 0);
        assert_eq!(
            scan_item(r#"{"error": {"message": "x"}}"#).alarm,
            ALARM_EXACT
        );
        assert_eq!(
            scan_item(r#"{"msg": "request timed out after 3s"}"#).alarm,
            2
        );
        assert_eq!(scan_item(r#"{"state": "FAILED"}"#).alarm, ALARM_EXACT);
        assert_eq!(scan_item(r#"{"note": "warning: slow"}"#).alarm, 1);
        assert_eq!(scan_item(r#""fatal""#).alarm, ALARM_EXACT);
    }

    #[test]
    fn scan_finds_top_level_fields_only() {
        let scan = scan_item(
            r#"{"a": "x", "b": {"c": "y", "d": [1, "z"]}, "e": true, "f": 1.5, "g": null}"#,
        );
        assert_eq!(
            scan.fields,
            vec![
                ("a", Some("x")),
                ("b", None),
                ("e", Some("true")),
                ("f", None),
                ("g", Some("null"))
            ]
        );
    }

    #[test]
    fn identical_alarm_items_are_kept_once() {
        let mut items = records(100);
        let failed = r#"{"id": 0, "status": "error"}"#.to_owned();
        for index in [20, 30, 40] {
            items[index] = failed.clone();
        }
        items[60] = r#"{"id": 1, "status": "error"}"#.to_owned();
        let view = view_of(&items, "");
        assert_eq!(view.text.matches(r#"{"id":0,"status":"error"}"#).count(), 1);
        assert!(view.text.contains(r#"{"id":1,"status":"error"}"#));
    }

    #[test]
    fn minify_keeps_key_order_and_string_whitespace() {
        let raw = "{ \"z\" : 1,\n  \"a\" : \"two  words \\\" here\" , \"m\": [ 1, 2 ] }";
        assert_eq!(
            minify(raw, 100, usize::MAX, 1000).0,
            r#"{"z":1,"a":"two  words \" here","m":[1,2]}"#
        );
    }

    #[test]
    fn minify_cuts_long_strings_outside_escapes() {
        let raw = format!(r#"{{"d": "{}\u00e9tail", "k": 1}}"#, "a".repeat(9));
        assert_eq!(
            minify(&raw, 10, usize::MAX, 1000),
            (r#"{"d":"aaaaaaaaa\u00e9…","k":1}"#.to_owned(), true)
        );
        assert_eq!(minify(r#""short""#, 10, usize::MAX, 1000).0, r#""short""#);
        assert!(!minify(r#"["aaaa", "bbbb", "cccc"]"#, 10, usize::MAX, 8).1);
    }

    #[test]
    fn big_nested_containers_collapse() {
        let deps: Vec<String> = (0..30)
            .map(|i| format!(r#"{{"name": "dep{i}", "req": "^1.{i}"}}"#))
            .collect();
        let raw = format!(
            r#"{{"name": "sqlx-postgres", "deps": [{}], "small": [1, 2], "meta": {{"a": {{}}, "b": []}}, "rust_version": "1.94.0"}}"#,
            deps.join(", ")
        );
        let rendered = render_item(&raw);
        assert_eq!(
            rendered,
            r#"{"name":"sqlx-postgres","deps":[…30 items],"small":[1,2],"meta":{"a":{},"b":[]},"rust_version":"1.94.0"}"#
        );
        assert_eq!(
            minify(r#"{"a":[1,2,3]}"#, 100, 1, 1000).0,
            r#"{"a":[1,2,3]}"#
        );
        let (end, size, children) =
            container_extent(br#"{ "k": [1, {"x": 2}], "j": "}" } tail"#, 0);
        assert_eq!((end, size, children), (32, 25, 2));
        assert_eq!(container_extent(b"[ ]", 0), (3, 2, 0));
        assert_eq!(collapsed(b'{', 1), "{…1 key}");
    }

    #[test]
    fn prose_values_are_not_failures() {
        assert_eq!(
            scan_item(r#"{"name": "serde_path_to_error", "description": "derive(Error)"}"#).alarm,
            0
        );
        assert_eq!(scan_item(r#"{"description": "FAILED"}"#).alarm, ALARM_EXACT);
    }

    #[test]
    fn scalar_arrays_get_a_typed_schema() {
        let items: Vec<String> = (0..50)
            .map(|i| {
                if i % 10 == 0 {
                    format!("{i}")
                } else {
                    format!("\"v{i}\"")
                }
            })
            .collect();
        let view = view_of(&items, "");
        assert!(
            view.text
                .starts_with("JSON array of 50 items (45 strings, 5 numbers)\n")
        );
    }

    #[test]
    fn categorical_scalars_are_summarised() {
        let items: Vec<String> = (0..50)
            .map(|i| format!("\"{}\"", ["ok", "skip"][i % 2]))
            .collect();
        let view = view_of(&items, "");
        assert!(
            view.text.ends_with("omitted items: skip 23, ok 22\n"),
            "{}",
            view.text
        );
    }
}
