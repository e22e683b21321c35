//! Views of JSON: arrays of records, envelopes around them (`{"data": [...]}`, cargo
//! metadata), maps of records, and NDJSON.
//!
//! First a lossless rendering: the document minified, or its records as a table (a header of
//! keys, one row per record, cells separated by tabs). When that is small enough it is the view,
//! with no marker. Otherwise a lossy view keeps the schema, the first and last records, records
//! with error-like values, records that match the question, numeric outliers and change points,
//! rare values of low-cardinality fields, and summarises what it leaves out.

use std::collections::{HashMap, HashSet};

use super::{
    ALARM_PREFIX_BYTES, CompressContext, KeptItem, View, alarm_level, prefix, query_words,
    render_kept, shorten,
};
use crate::items::{Collection, PathStep, children, skip_space, string_end, value_end};
use crate::search::Bm25Matches;

/// Records kept from the start and from the end.
const HEAD_ITEMS: usize = 3;
const TAIL_ITEMS: usize = 2;
/// Records kept because their values look like errors (then warnings).
const ALARM_ITEMS: usize = 10;
/// Records kept because they best match the conversation's question…
const QUERY_HITS: usize = 5;
/// …of which at most this many because a value of theirs is a word of the question
/// ("sqlx-postgres", "pydantic"): the entities the question names.
const ENTITY_HITS: usize = 3;
/// Values this long or shorter can name an entity.
const ENTITY_MAX_BYTES: usize = 64;
/// An object value with more members is a map, and its members are not fields.
const MAX_NESTED_FIELDS: usize = 16;
/// Values this long or shorter are matched against the question.
const DIGEST_MAX_BYTES: usize = 160;
/// Records kept as numeric outliers or change points, and for rare values.
const OUTLIER_ITEMS: usize = 6;
const RARE_VALUE_ITEMS: usize = 6;
/// Keys named in the schema line.
const SCHEMA_KEYS: usize = 24;
/// A field is categorical when it has at most this many distinct values.
const MAX_CATEGORIES: usize = 8;
/// Fields in the summary of omitted records, and its length.
const SUMMARY_FIELDS: usize = 6;
const SUMMARY_MAX_BYTES: usize = 700;
/// Longer string values are not categories.
const CATEGORY_MAX_BYTES: usize = 40;
/// Longer string values are cut inside kept records (JSON lines, table cells).
const MAX_STRING_BYTES: usize = 120;
const MAX_CELL_BYTES: usize = 80;
/// Kept records longer than this are shown with their big nested containers collapsed
/// (deepest first), then cut.
const MAX_ITEM_BYTES: usize = 800;
/// A nested container longer than this (minified) is what collapsing replaces with
/// `[…N items]` or `{…N keys}`.
const SMALL_CONTAINER_BYTES: usize = 60;
/// A table has at most this many columns.
const MAX_COLUMNS: usize = 40;
/// Keys whose string values are prose or names: an error word there ("derive(Error)",
/// "serde_path_to_error") describes the record rather than reports a failure.
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
    "body",
];
/// Keys whose presence with a non-empty value marks a record as failed.
const ERROR_KEYS: &[&str] = &["error", "errors", "err", "exception", "failure"];
/// The highest alarm level: a value that is only an error word ("failed"), an error key with a
/// value, or a 5xx status. (Level 2 is an error word inside a value, 1 a warning word.)
const ALARM_EXACT: u8 = 3;

/// FNV-1a, for maps keyed by short strings (field names): only looked up, never iterated.
#[derive(Default, Clone, Copy)]
struct FastHash;

struct Fnv(u64);

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Where records come from.
pub(crate) enum Frame<'c, 'a> {
    /// A JSON document: its main collection.
    Document(&'c Collection<'a>),
    /// NDJSON: one record a line.
    Lines,
}

/// One record: an array element or NDJSON line, or an object's member (key and value).
#[derive(Clone, Copy)]
struct Record<'a> {
    /// The item as `split_items` gives it.
    raw: &'a str,
    /// The member's key (raw contents), for members of a map.
    key: Option<&'a str>,
    value: &'a str,
}

impl<'a> Record<'a> {
    fn of(raw: &'a str, member: bool) -> Record<'a> {
        if !member {
            return Record {
                raw,
                key: None,
                value: raw,
            };
        }
        let bytes = raw.as_bytes();
        let key_end = string_end(bytes, 0);
        let value_start = skip_space(bytes, skip_space(bytes, key_end) + 1);
        Record {
            raw,
            key: Some(&raw[1..key_end - 1]),
            value: &raw[value_start.min(raw.len())..],
        }
    }
}

/// Whether every line is one JSON object or array: NDJSON (JSON Lines).
pub(crate) fn is_ndjson(lines: &[&str]) -> bool {
    lines.len() >= 2
        && lines.iter().all(|line| {
            let line = line.trim();
            let framed = (line.starts_with('{') && line.ends_with('}'))
                || (line.starts_with('[') && line.ends_with(']'));
            framed && serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok()
        })
}

/// The lossless rendering of JSON records: the document minified (NDJSON: each line
/// minified), or the records as a table, whichever is shorter.
pub(crate) fn lossless(items: &[&str], frame: &Frame<'_, '_>) -> String {
    let minified = match frame {
        Frame::Document(collection) => {
            let mut out = String::with_capacity(collection.doc.len());
            minify_into(&mut out, collection.doc);
            out
        }
        Frame::Lines => {
            let mut out = String::new();
            for item in items {
                minify_into(&mut out, item);
                out.push('\n');
            }
            out
        }
    };
    let records = records_of(items, frame);
    match lossless_table(&records, frame) {
        Some(table) if table.len() < minified.len() => table,
        _ => minified,
    }
}

fn records_of<'a>(items: &[&'a str], frame: &Frame<'_, 'a>) -> Vec<Record<'a>> {
    let members = matches!(frame, Frame::Document(collection) if collection.members);
    items
        .iter()
        .map(|item| Record::of(item.trim(), members))
        .collect()
}

/// Builds the lossy view of JSON records; the caller decides whether it saves enough.
pub(crate) fn compress(items: &[&str], frame: &Frame<'_, '_>, ctx: &CompressContext<'_>) -> View {
    let total = items.len();
    let unit = match frame {
        Frame::Document(_) => "items",
        Frame::Lines => "lines",
    };
    let records = records_of(items, frame);
    let (scans, stats) = scan_all(&records);

    let kept_indices = select(items, &records, &scans, &stats, ctx);

    let mut text = String::new();
    if let Frame::Document(collection) = frame {
        if !collection.path.is_empty() {
            text.push_str(&envelope(collection, false));
            text.push('\n');
        }
    }
    text.push_str(&schema_line(&scans, frame));
    text.push('\n');
    let table = Table::plan(&records, &scans, &stats);
    let kept: Vec<KeptItem> = kept_indices
        .iter()
        .map(|&index| KeptItem {
            index,
            text: match &table {
                Some(table) => table.lossy_row(&records[index]),
                None => render_record(&records[index]),
            },
            note: None,
        })
        .collect();
    if let Some(table) = &table {
        text.push_str(&table.preamble(false));
    }
    render_kept(&mut text, &kept, total, unit);
    let omitted: Vec<bool> = {
        let mut omitted = vec![true; total];
        kept_indices
            .iter()
            .for_each(|&index| omitted[index] = false);
        omitted
    };
    if let Some(summary) = omitted_summary(&records, &scans, &stats, &omitted) {
        text.push_str(&summary);
        text.push('\n');
    }
    View {
        text,
        unit,
        total,
        kept: kept.len(),
        lossless: false,
    }
}

/// The records a lossy view keeps, sorted: first and last, alarms, query matches, outliers
/// and change points, rare values; one of each set of identical records.
fn select(
    items: &[&str],
    records: &[Record<'_>],
    scans: &[ItemScan<'_>],
    stats: &[FieldStats<'_>],
    ctx: &CompressContext<'_>,
) -> Vec<usize> {
    let total = items.len();
    let mut kept: Vec<usize> = (0..HEAD_ITEMS.min(total))
        .chain(total.saturating_sub(TAIL_ITEMS)..total)
        .collect();
    kept.dedup();
    // Identical records say nothing new: keep one of each.
    let mut seen: HashSet<&str> = kept.iter().map(|&i| records[i].raw).collect();
    let mut alarms: Vec<(u8, usize)> = scans
        .iter()
        .enumerate()
        .filter(|(_, scan)| scan.alarm > 0)
        .map(|(index, scan)| (scan.alarm, index))
        .collect();
    alarms.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let alarms = alarms.into_iter().map(|(_, index)| index);
    kept.extend(take_unseen(alarms, records, &mut seen, ALARM_ITEMS));
    let entities = take_unseen(
        entity_hits(scans, ctx.query).into_iter(),
        records,
        &mut seen,
        ENTITY_HITS,
    );
    // Twice as many candidates, as some may be duplicates of records already kept.
    let digests: Vec<&str> = scans.iter().map(|scan| scan.digest.as_str()).collect();
    let hits = Bm25Matches::new(&digests, ctx.query)
        .diverse_top(2 * QUERY_HITS)
        .into_iter();
    let hits = take_unseen(
        hits,
        records,
        &mut seen,
        QUERY_HITS.saturating_sub(entities.len()),
    );
    kept.extend(entities);
    kept.extend(hits);
    let outliers = numeric_outliers(stats);
    kept.extend(take_unseen(
        outliers.into_iter(),
        records,
        &mut seen,
        OUTLIER_ITEMS,
    ));
    let rare = rare_values(stats, scans.len());
    kept.extend(take_unseen(
        rare.into_iter(),
        records,
        &mut seen,
        RARE_VALUE_ITEMS,
    ));
    kept.sort_unstable();
    kept.dedup();
    kept
}

/// The first `limit` candidates whose text has not been seen yet, marking them seen.
fn take_unseen<'a>(
    candidates: impl Iterator<Item = usize>,
    records: &[Record<'a>],
    seen: &mut HashSet<&'a str>,
    limit: usize,
) -> Vec<usize> {
    candidates
        .filter(|&index| seen.insert(records[index].raw))
        .take(limit)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scanning records.

/// What one pass over a record found.
struct ItemScan<'a> {
    kind: ValueKind,
    /// Fields of an object record: its members, and the members of its object members
    /// (`parent` is then the outer key). A scalar record is one field with empty keys.
    fields: Vec<Field<'a>>,
    /// String values (not keys) of at most ENTITY_MAX_BYTES, at most two levels deep: what
    /// can name the record.
    short_values: Vec<&'a str>,
    /// Its string values of at most DIGEST_MAX_BYTES, up to two levels deep, joined by
    /// spaces: what the question is matched against (not long prose like READMEs).
    digest: String,
    /// 0 nothing; 1 a warning; 2 an error word; 3 an error value, key or status.
    alarm: u8,
}

/// A field of a record: `parent` is "" for top-level members.
#[derive(Clone, Copy)]
struct Field<'a> {
    parent: &'a str,
    key: &'a str,
    /// The value as written.
    raw: &'a str,
    /// A hash of (parent, key), to tell fields apart quickly.
    id: u64,
}

/// FNV-1a of a field's parent and key.
fn field_id(parent: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in parent.as_bytes().iter().chain(b"\0").chain(key.as_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ValueKind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl ValueKind {
    fn of(raw: &str) -> ValueKind {
        match raw.as_bytes().first() {
            Some(b'{') => ValueKind::Object,
            Some(b'[') => ValueKind::Array,
            Some(b'"') => ValueKind::String,
            Some(b't' | b'f') => ValueKind::Bool,
            Some(b'n') | None => ValueKind::Null,
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

fn scan_record<'a>(record: &Record<'a>) -> ItemScan<'a> {
    let value = record.value;
    let kind = ValueKind::of(value);
    let mut scan = ItemScan {
        kind,
        fields: Vec::new(),
        short_values: Vec::new(),
        digest: String::new(),
        alarm: 0,
    };
    if let Some(key) = record.key {
        scan.short_values.push(key);
        scan.digest.push_str(key);
    }
    scan_values(value, &mut scan);
    if !matches!(kind, ValueKind::Object | ValueKind::Array) {
        scan.fields.push(Field {
            parent: "",
            key: "",
            raw: value,
            id: field_id("", ""),
        });
    }
    scan
}

/// One pass over a record's bytes: its fields (top-level members, and the members of
/// top-level objects), how alarming its values are, its short values and its digest.
fn scan_values<'a>(raw: &'a str, scan: &mut ItemScan<'a>) {
    let bytes = raw.as_bytes();
    let record_is_object = bytes.first() == Some(&b'{');
    let mut depth = 0usize;
    // The most recent key at any depth.
    let mut key = "";
    // The field open at depth 1 and 2 (key, value start); at depth 2 only inside an object
    // that is the value of a field at depth 1.
    let mut open: [Option<(&'a str, usize)>; 3] = [None; 3];
    let close = |open: &mut [Option<(&'a str, usize)>; 3],
                 level: usize,
                 end: usize,
                 fields: &mut Vec<Field<'a>>| {
        if let Some((field_key, start)) = open[level].take() {
            let parent = if level == 2 {
                open[1].map_or("", |(parent, _)| parent)
            } else {
                ""
            };
            if level == 1 {
                // An object of many members is a map (features, dependencies by name), not a
                // record: its members are no fields.
                let nested = fields
                    .iter()
                    .rev()
                    .take_while(|f| !f.parent.is_empty() && f.parent == field_key)
                    .count();
                if nested > MAX_NESTED_FIELDS {
                    fields.truncate(fields.len() - nested);
                }
            }
            fields.push(Field {
                parent,
                key: field_key,
                raw: raw[start..end].trim_end(),
                id: field_id(parent, field_key),
            });
        }
    };
    // One bit per depth (below 64): whether the container there is an array.
    let mut arrays = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            open @ (b'{' | b'[') => {
                let empty = bytes
                    .get(skip_space(bytes, i + 1))
                    .is_some_and(|&b| b == b'}' || b == b']');
                if !empty && is_error_key(key) {
                    scan.alarm = ALARM_EXACT;
                }
                key = "";
                depth += 1;
                if depth < 64 {
                    arrays = arrays & !(1 << depth) | u64::from(open == b'[') << depth;
                }
                i += 1;
            }
            b'}' | b']' => {
                if depth <= 2 && record_is_object {
                    close(&mut open, depth, i, &mut scan.fields);
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                if depth <= 2 && record_is_object {
                    close(&mut open, depth, i, &mut scan.fields);
                }
                i += 1;
            }
            b'"' => {
                let end = string_end(bytes, i);
                let contents = &raw[i + 1..end.max(i + 2) - 1];
                i = end;
                if depth > 0 {
                    let after = skip_space(bytes, i);
                    if bytes.get(after) == Some(&b':') {
                        key = contents;
                        let nested_object =
                            depth == 2 && open[1].is_some_and(|(_, start)| bytes[start] == b'{');
                        if record_is_object && (depth == 1 || nested_object) {
                            open[depth] = Some((contents, skip_space(bytes, after + 1)));
                        }
                        i = after + 1;
                        continue;
                    }
                }
                // Strings in arrays are names and tags ("panic-handler", "timeout" as a
                // feature) unless they read like a message.
                let in_array = depth < 64 && arrays & 1 << depth != 0;
                if !in_array || memchr::memchr(b' ', prefix(contents, 64).as_bytes()).is_some() {
                    scan.alarm = scan.alarm.max(string_alarm(key, contents));
                }
                if depth <= 2 && contents.len() <= ENTITY_MAX_BYTES {
                    scan.short_values.push(contents);
                }
                if depth <= 2 && contents.len() <= DIGEST_MAX_BYTES {
                    if !scan.digest.is_empty() {
                        scan.digest.push(' ');
                    }
                    scan.digest.push_str(contents);
                }
            }
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                let end = value_end(bytes, i);
                scan.alarm = scan.alarm.max(scalar_alarm(key, &raw[i..end]));
                i = end.max(i + 1);
            }
            _ => i += 1,
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
    // Prose (a title, a description) describes rather than reports a failure: only a whole
    // value can be an error word there.
    let prose = is_prose_key(key);
    if prose && memchr::memchr(b' ', contents.as_bytes()).is_some() {
        return 0;
    }
    // A path or URL ("src/error.rs", "https://…/timeout") names a place, not a failure.
    let head = prefix(contents, ALARM_PREFIX_BYTES).as_bytes();
    if memchr::memchr(b'/', head).is_some() && memchr::memchr(b' ', head).is_none() {
        return 0;
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
    let server_error = literal.len() == 3
        && literal.starts_with('5')
        && literal.bytes().all(|b| b.is_ascii_digit());
    let status_key = || {
        let key = key.to_ascii_lowercase();
        key.contains("status") || key.contains("code")
    };
    if server_error && status_key() {
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

/// Records with a value that is a whole word of the query (case-insensitive), best first:
/// those naming more, and rarer, of the query's words. A word that many records have as a
/// value ("ok") names no entity.
fn entity_hits(scans: &[ItemScan<'_>], query: &str) -> Vec<usize> {
    let words = query_words(query);
    if words.is_empty() {
        return Vec::new();
    }
    // (record, word) for each record that has the word as a value.
    let mut matches: Vec<(usize, usize)> = Vec::new();
    for (index, scan) in scans.iter().enumerate() {
        for (w, word) in words.iter().enumerate() {
            let named = scan
                .short_values
                .iter()
                .any(|value| value.len() == word.len() && value.eq_ignore_ascii_case(word));
            if named {
                matches.push((index, w));
            }
        }
    }
    let mut naming = vec![0usize; words.len()];
    for &(_, w) in &matches {
        naming[w] += 1;
    }
    let total = scans.len() as f64;
    let mut scores: Vec<(usize, f64)> = Vec::new();
    for &(index, w) in &matches {
        let count = naming[w];
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

// ---------------------------------------------------------------------------------------------
// Field statistics: categories, numbers, outliers.

/// What the records say about one field.
struct FieldStats<'a> {
    parent: &'a str,
    key: &'a str,
    id: u64,
    /// Records that have it.
    present: usize,
    /// Distinct raw values with the records that have them, while there are at most
    /// MAX_CATEGORIES + 1 (then `categorical` is false).
    values: Vec<(&'a str, Vec<usize>)>,
    categorical: bool,
    /// (record, value) of its numeric values.
    numbers: Vec<(usize, f64)>,
    /// The same raw value in every record.
    constant: bool,
    /// Its first raw value.
    first: Option<&'a str>,
    /// Records where it is a string that starts like a date ("2024-05-06…").
    dates: Vec<(usize, &'a str)>,
}

impl FieldStats<'_> {
    fn name(&self) -> String {
        if self.parent.is_empty() {
            self.key.to_owned()
        } else {
            format!("{}.{}", self.parent, self.key)
        }
    }
}

/// Field statistics, built record by record right after each is scanned (its keys are then
/// still in the cache).
struct StatsBuilder<'a> {
    stats: Vec<FieldStats<'a>>,
    // Only looked up, never iterated, so its order cannot reach the view.
    slot_of: HashMap<(&'a str, &'a str), usize, FastHash>,
    // Records mostly list the same fields in the same order: the slot of the field at the
    // same position in the previous record is the first guess.
    previous_slots: Vec<usize>,
    slots: Vec<usize>,
}

impl<'a> StatsBuilder<'a> {
    fn new() -> StatsBuilder<'a> {
        StatsBuilder {
            stats: Vec::new(),
            slot_of: HashMap::default(),
            previous_slots: Vec::new(),
            slots: Vec::new(),
        }
    }

    fn add(&mut self, index: usize, scan: &ItemScan<'a>) {
        self.slots.clear();
        for (position, field) in scan.fields.iter().enumerate() {
            let guess = self.previous_slots.get(position).copied().filter(|&slot| {
                // Same hash and lengths: the same field, without comparing bytes.
                let known = &self.stats[slot];
                known.id == field.id
                    && known.key.len() == field.key.len()
                    && known.parent.len() == field.parent.len()
            });
            let slot = guess.unwrap_or_else(|| {
                *self
                    .slot_of
                    .entry((field.parent, field.key))
                    .or_insert_with(|| {
                        self.stats.push(FieldStats {
                            parent: field.parent,
                            key: field.key,
                            id: field.id,
                            present: 0,
                            values: Vec::new(),
                            categorical: true,
                            numbers: Vec::new(),
                            constant: true,
                            first: None,
                            dates: Vec::new(),
                        });
                        self.stats.len() - 1
                    })
            });
            self.slots.push(slot);
            let field_stats = &mut self.stats[slot];
            field_stats.present += 1;
            let kind = ValueKind::of(field.raw);
            if kind == ValueKind::Number {
                if let Ok(number) = field.raw.parse::<f64>() {
                    field_stats.numbers.push((index, number));
                }
            }
            if kind == ValueKind::String && is_date_like(field.raw) {
                field_stats.dates.push((index, field.raw.trim_matches('"')));
            }
            match field_stats.first {
                None => field_stats.first = Some(field.raw),
                Some(first) if first != field.raw => field_stats.constant = false,
                Some(_) => {}
            }
            if !field_stats.categorical {
                continue;
            }
            let categorical_value = match kind {
                ValueKind::String => field.raw.len() <= CATEGORY_MAX_BYTES + 2,
                ValueKind::Object | ValueKind::Array => field.raw.len() <= 2,
                _ => true,
            };
            if !categorical_value {
                field_stats.categorical = false;
                field_stats.values.truncate(1);
                continue;
            }
            match field_stats.values.iter().position(|(v, _)| *v == field.raw) {
                Some(position) => field_stats.values[position].1.push(index),
                None if field_stats.values.len() <= MAX_CATEGORIES => {
                    field_stats.values.push((field.raw, vec![index]));
                }
                None => {
                    field_stats.categorical = false;
                    field_stats.values.truncate(1);
                }
            }
        }
        std::mem::swap(&mut self.previous_slots, &mut self.slots);
    }

    fn finish(mut self, records: usize) -> Vec<FieldStats<'a>> {
        for field in &mut self.stats {
            field.constant &= field.present == records && records > 1;
            if !field.categorical {
                field.values.truncate(1);
            }
        }
        self.stats
    }
}

/// Scans the records and gathers their field statistics.
fn scan_all<'a>(records: &[Record<'a>]) -> (Vec<ItemScan<'a>>, Vec<FieldStats<'a>>) {
    let mut builder = StatsBuilder::new();
    let scans: Vec<ItemScan<'a>> = records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            let scan = scan_record(record);
            builder.add(index, &scan);
            scan
        })
        .collect();
    let stats = builder.finish(scans.len());
    (scans, stats)
}

fn is_date_like(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.len() >= 12
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b'-'
        && b[6..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
}

/// Whether the numbers only go up (or only down): ids, counters, timestamps.
fn is_monotone(numbers: &[(usize, f64)]) -> bool {
    let up = numbers.windows(2).all(|w| w[1].1 >= w[0].1);
    let down = numbers.windows(2).all(|w| w[1].1 <= w[0].1);
    up || down
}

/// Numeric fields with at least this many values can have outliers and change points.
const MIN_NUMBERS: usize = 8;
/// A value further from the median than this many median absolute deviations is an outlier.
const OUTLIER_MADS: f64 = 6.0;
/// A shift of the mean between the windows before and after a record larger than this many
/// median steps is a change point.
const CHANGE_STEPS: f64 = 6.0;

/// Records with numeric outliers, then change points: for each numeric field that is not
/// monotone, the two records furthest from its median (beyond OUTLIER_MADS) and the record
/// where its level shifts most (beyond CHANGE_STEPS).
fn numeric_outliers(stats: &[FieldStats<'_>]) -> Vec<usize> {
    let mut outliers: Vec<usize> = Vec::new();
    let mut changes: Vec<usize> = Vec::new();
    for field in stats {
        let numbers = &field.numbers;
        if numbers.len() < MIN_NUMBERS || field.categorical || is_monotone(numbers) {
            continue;
        }
        let median = median(numbers.iter().map(|&(_, x)| x).collect());
        let mad = median_of_abs(numbers.iter().map(|&(_, x)| x - median));
        let mut far: Vec<(f64, usize)> = numbers
            .iter()
            .map(|&(index, x)| ((x - median).abs(), index))
            .filter(|&(distance, _)| {
                if mad > 0.0 {
                    distance > OUTLIER_MADS * mad
                } else {
                    distance > 0.0
                }
            })
            .collect();
        // With no spread, only a few values that differ are outliers.
        if mad == 0.0 && far.len() * 20 > numbers.len() {
            far.clear();
        }
        far.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        outliers.extend(far.iter().take(2).map(|&(_, index)| index));
        if let Some(index) = change_point(numbers) {
            changes.push(index);
        }
    }
    outliers.extend(changes);
    outliers
}

/// The record where the mean of the values after it differs most from the mean before it
/// (windows of up to ten values), when that shift is large against the typical step.
fn change_point(numbers: &[(usize, f64)]) -> Option<usize> {
    let n = numbers.len();
    let window = (n / 4).clamp(2, 10);
    if n < 2 * window {
        return None;
    }
    let step = median_of_abs(numbers.windows(2).map(|w| w[1].1 - w[0].1));
    let mut prefix = vec![0.0; n + 1];
    for (i, &(_, x)) in numbers.iter().enumerate() {
        prefix[i + 1] = prefix[i] + x;
    }
    let mean = |from: usize, to: usize| (prefix[to] - prefix[from]) / (to - from) as f64;
    let mut best: Option<(f64, usize)> = None;
    for i in window..=n - window {
        let shift = (mean(i, i + window) - mean(i - window, i)).abs();
        if best.is_none_or(|(best_shift, _)| shift > best_shift) {
            best = Some((shift, i));
        }
    }
    let (shift, i) = best?;
    let large = if step > 0.0 {
        shift > CHANGE_STEPS * step
    } else {
        shift > 0.0
    };
    large.then(|| numbers[i].0)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let middle = values.len() / 2;
    values.select_nth_unstable_by(middle, f64::total_cmp);
    values[middle]
}

fn median_of_abs(values: impl Iterator<Item = f64>) -> f64 {
    median(values.map(f64::abs).collect())
}

/// For categorical fields present in most records, the first record of each value that few
/// records have (at most one in fifty, and not the only value).
fn rare_values(stats: &[FieldStats<'_>], total: usize) -> Vec<usize> {
    let mut rare = Vec::new();
    for field in stats {
        if !field.categorical || field.values.len() < 2 || field.present * 2 < total {
            continue;
        }
        let threshold = (total / 50).max(1);
        let mut values: Vec<&(&str, Vec<usize>)> = field
            .values
            .iter()
            .filter(|(_, records)| records.len() <= threshold)
            .collect();
        values.sort_by_key(|(_, records)| (records.len(), records[0]));
        rare.extend(values.iter().take(2).map(|(_, records)| records[0]));
    }
    rare
}

// ---------------------------------------------------------------------------------------------
// Lines of the view.

/// "JSON array of 120 objects; keys: id, name, status, …" or, for other elements,
/// "JSON array of 120 items (100 strings, 20 numbers)"; for a collection inside a document,
/// named by its path ("packages: 164 objects; keys: …").
fn schema_line(scans: &[ItemScan<'_>], frame: &Frame<'_, '_>) -> String {
    let total = scans.len();
    let mut kinds: Vec<(ValueKind, usize)> = Vec::new();
    for scan in scans {
        match kinds.iter_mut().find(|(kind, _)| *kind == scan.kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((scan.kind, 1)),
        }
    }
    kinds.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    let what = match kinds.as_slice() {
        [(kind, _)] => format!("{total} {}", kind.plural()),
        _ => {
            let counts: Vec<String> = kinds
                .iter()
                .map(|(kind, count)| format!("{count} {}", kind.plural()))
                .collect();
            format!("{total} items ({})", counts.join(", "))
        }
    };
    let mut line = match frame {
        Frame::Lines => format!("NDJSON, {what}, one a line"),
        Frame::Document(collection) if collection.members => {
            let path = collection.path_text();
            if path.is_empty() {
                format!("JSON object of {total} members")
            } else {
                format!("{path}: object of {total} members")
            }
        }
        Frame::Document(collection) if collection.path.is_empty() => {
            format!("JSON array of {what}")
        }
        Frame::Document(collection) => format!("{}: array of {what}", collection.path_text()),
    };
    let mut keys: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let object_keys = scans
        .iter()
        .filter(|scan| scan.kind == ValueKind::Object)
        .flat_map(|scan| {
            scan.fields
                .iter()
                .filter(|field| field.parent.is_empty())
                .map(|field| field.key)
        });
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

/// "omitted 480 items: state: open 300, closed 180; comments: 0–57; created_at: 2023-…–2024-…".
fn omitted_summary(
    records: &[Record<'_>],
    scans: &[ItemScan<'_>],
    stats: &[FieldStats<'_>],
    omitted: &[bool],
) -> Option<String> {
    let omitted_count = omitted.iter().filter(|&&o| o).count();
    if omitted_count == 0 {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut length = 0;
    for field in stats {
        if parts.len() == SUMMARY_FIELDS || length > SUMMARY_MAX_BYTES {
            break;
        }
        if field.constant || field.present * 2 < scans.len() {
            continue;
        }
        let name = field.name();
        let part = if field.categorical && field.values.len() >= 2 {
            let mut counts: Vec<(&str, usize)> = field
                .values
                .iter()
                .map(|(value, records)| (*value, records.iter().filter(|&&r| omitted[r]).count()))
                .filter(|&(_, count)| count > 0)
                .collect();
            if counts.is_empty() {
                continue;
            }
            // Stable: equal counts keep first-seen order.
            counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
            let counts: Vec<String> = counts
                .iter()
                .map(|(value, count)| format!("{} {count}", cell(value, MAX_CELL_BYTES)))
                .collect();
            format!("{name}: {}", counts.join(", "))
        } else if field.numbers.len() * 2 >= field.present && !field.numbers.is_empty() {
            let values: Vec<f64> = field
                .numbers
                .iter()
                .filter(|&&(r, _)| omitted[r])
                .map(|&(_, x)| x)
                .collect();
            if values.is_empty() {
                continue;
            }
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let median = median(values);
            if min == max {
                format!("{name}: {}", number(min))
            } else {
                format!(
                    "{name}: {}–{} (median {})",
                    number(min),
                    number(max),
                    number(median)
                )
            }
        } else if field.dates.len() * 2 >= field.present && !field.dates.is_empty() {
            let mut dates: Vec<&str> = field
                .dates
                .iter()
                .filter(|&&(r, _)| omitted[r])
                .map(|&(_, date)| date)
                .collect();
            dates.sort_unstable();
            match (dates.first(), dates.last()) {
                (Some(first), Some(last)) => format!("{name}: {first} … {last}"),
                _ => continue,
            }
        } else {
            continue;
        };
        length += part.len();
        parts.push(part);
    }
    let duplicates = duplicate_count(records, omitted);
    let mut line = format!("omitted {omitted_count} items");
    if duplicates > 0 {
        line.push_str(&format!(" ({duplicates} of them repeat an earlier item)"));
    }
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join("; "));
    }
    Some(line)
}

/// Omitted records identical to an earlier record.
fn duplicate_count(records: &[Record<'_>], omitted: &[bool]) -> usize {
    // Sorted by length, then text, then position: identical records are neighbours, the
    // earliest first.
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| {
        let (a_raw, b_raw) = (records[a].raw, records[b].raw);
        a_raw
            .len()
            .cmp(&b_raw.len())
            .then_with(|| a_raw.cmp(b_raw))
            .then(a.cmp(&b))
    });
    order
        .windows(2)
        .filter(|pair| records[pair[0]].raw == records[pair[1]].raw && omitted[pair[1]])
        .count()
}

/// A number as the summary writes it: integers without a fraction, others with up to four
/// significant decimals.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let text = format!("{x:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The document with the collection replaced by `[…N items below]`: its other members
/// minified (`lossless`) or with long strings cut and big containers collapsed.
fn envelope(collection: &Collection<'_>, lossless: bool) -> String {
    let mut out = String::new();
    envelope_into(&mut out, 0, 0..collection.doc.len(), collection, lossless);
    out
}

fn envelope_into(
    out: &mut String,
    level: usize,
    span: std::ops::Range<usize>,
    collection: &Collection<'_>,
    lossless: bool,
) {
    let doc = collection.doc;
    let Some(step) = collection.path.get(level) else {
        let count = collection.items.len();
        let noun = if collection.members {
            "members"
        } else {
            "items"
        };
        let (open, close) = if collection.members {
            ('{', '}')
        } else {
            ('[', ']')
        };
        out.push_str(&format!("{open}…{count} {noun} below{close}"));
        return;
    };
    let bytes = doc.as_bytes();
    let is_object = bytes[span.start] == b'{';
    out.push(if is_object { '{' } else { '[' });
    let mut on_path_done = false;
    for (i, child) in collection.levels[level].iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let on_path = !on_path_done
            && match (step, &child.key) {
                (PathStep::Key(key), Some(range)) => &doc[range.clone()] == *key,
                (PathStep::Only, None) => true,
                _ => false,
            };
        if let Some(range) = &child.key {
            out.push('"');
            out.push_str(&doc[range.clone()]);
            out.push_str("\":");
        }
        if on_path {
            on_path_done = true;
            envelope_into(out, level + 1, child.value.clone(), collection, lossless);
        } else if lossless {
            minify_into(out, &doc[child.value.clone()]);
        } else {
            out.push_str(&render_value(&doc[child.value.clone()], 300, 80));
        }
    }
    out.push(if is_object { '}' } else { ']' });
}

// ---------------------------------------------------------------------------------------------
// Tables.

/// Records shown as a table: a header of keys, one row per record, cells separated by tabs.
struct Table<'a> {
    /// Columns in first-seen order, without those with the same value in every record.
    columns: Vec<&'a str>,
    /// (key, raw value) of the fields every record has with the same value.
    constants: Vec<(&'a str, &'a str)>,
    /// The records are members of a map: the first column is their key.
    keyed: bool,
}

impl<'a> Table<'a> {
    /// A table for records that are mostly flat objects (their values mostly scalars or
    /// small containers), with at most MAX_COLUMNS columns.
    fn plan(
        records: &[Record<'a>],
        scans: &[ItemScan<'a>],
        stats: &[FieldStats<'a>],
    ) -> Option<Table<'a>> {
        if records.is_empty() || scans.iter().any(|scan| scan.kind != ValueKind::Object) {
            return None;
        }
        let top: Vec<&FieldStats<'a>> = stats.iter().filter(|f| f.parent.is_empty()).collect();
        if top.len() > MAX_COLUMNS || top.is_empty() {
            return None;
        }
        // Mostly scalars and small containers, by count and by bytes: a big container would
        // be a collapsed cell, and most of the record out of sight.
        let (mut cells, mut flat, mut bytes, mut big_bytes) = (0usize, 0usize, 0usize, 0usize);
        for (record, scan) in records.iter().zip(scans) {
            bytes += record.value.len();
            for field in scan.fields.iter().filter(|f| f.parent.is_empty()) {
                cells += 1;
                let kind = ValueKind::of(field.raw);
                let big = matches!(kind, ValueKind::Object | ValueKind::Array)
                    && field.raw.len() > SMALL_CONTAINER_BYTES;
                flat += usize::from(!big);
                big_bytes += if big { field.raw.len() } else { 0 };
            }
        }
        if flat * 10 < cells * 7 || big_bytes * 10 > bytes * 4 {
            return None;
        }
        let constants = top
            .iter()
            .filter(|f| f.constant)
            .filter_map(|f| {
                let raw = scans[0]
                    .fields
                    .iter()
                    .find(|field| field.parent.is_empty() && field.key == f.key)?
                    .raw;
                Some((f.key, raw))
            })
            .collect();
        let columns = top.iter().filter(|f| !f.constant).map(|f| f.key).collect();
        Some(Table {
            columns,
            constants,
            keyed: records[0].key.is_some(),
        })
    }

    /// What the table is and its header line.
    fn preamble(&self, lossless: bool) -> String {
        let mut text = String::from(
            "one row per record, tab-separated; cells are JSON values with plain strings unquoted; an empty cell is a missing key",
        );
        if !lossless {
            text.push_str("; long strings cut (…), big containers collapsed");
        }
        if !self.constants.is_empty() {
            let constants: Vec<String> = self
                .constants
                .iter()
                .map(|(key, raw)| {
                    if lossless {
                        // Exact: the members as a JSON object, keys quoted.
                        let mut value = String::new();
                        minify_into(&mut value, raw);
                        format!("{}:{value}", crate::json::quote(key))
                    } else {
                        format!("{key}={}", render_value(raw, 200, 60))
                    }
                })
                .collect();
            if lossless {
                text.push_str("; every record also has ");
                text.push('{');
                text.push_str(&constants.join(","));
                text.push('}');
            } else {
                text.push_str("; every record also has ");
                text.push_str(&constants.join(", "));
            }
        }
        text.push('\n');
        if self.keyed {
            text.push_str("(key)\t");
        }
        text.push_str(&self.columns.join("\t"));
        text.push('\n');
        text
    }

    /// The cells of a record, lossless or cut.
    fn row(&self, record: &Record<'_>, lossless: bool) -> String {
        let mut row = String::new();
        if let Some(key) = record.key {
            row.push_str(&cell(&format!("\"{key}\""), usize::MAX));
            row.push('\t');
        }
        let fields = children(record.value, 0..record.value.len());
        for (c, column) in self.columns.iter().enumerate() {
            if c > 0 {
                row.push('\t');
            }
            let found = fields.iter().find(|child| {
                child
                    .key
                    .as_ref()
                    .is_some_and(|key| &record.value[key.clone()] == *column)
            });
            if let Some(child) = found {
                let raw = &record.value[child.value.clone()];
                if lossless {
                    row.push_str(&cell(raw, usize::MAX));
                } else if raw.starts_with('"') {
                    row.push_str(&cell(raw, MAX_CELL_BYTES));
                } else {
                    row.push_str(&render_value(raw, 200, 40));
                }
            }
        }
        row
    }

    fn lossy_row(&self, record: &Record<'_>) -> String {
        self.row(record, false)
    }
}

/// A table cell for a raw JSON value: strings without their quotes when plain (no escapes,
/// tabs or surrounding spaces, not empty, not readable as another JSON value), other values
/// minified. Strings longer than `max_bytes` are cut with "…".
fn cell(raw: &str, max_bytes: usize) -> String {
    if let Some(contents) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let plain = is_plain(contents);
        if contents.len() > max_bytes {
            let cut = shorten(contents, max_bytes);
            return if plain { cut } else { format!("\"{cut}\"") };
        }
        return if plain {
            contents.to_owned()
        } else {
            raw.to_owned()
        };
    }
    let mut out = String::new();
    minify_into(&mut out, raw);
    out
}

/// A string that a cell can show without quotes and still be read back exactly.
fn is_plain(contents: &str) -> bool {
    let bytes = contents.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    !contents.contains(['\\', '\t', '"'])
        && !first.is_ascii_whitespace()
        && !last.is_ascii_whitespace()
        && !matches!(first, b'{' | b'[')
        // Anything JSON would read as a value (a number of any size, true, false, null) must
        // keep its quotes.
        && serde_json::from_str::<serde::de::IgnoredAny>(contents).is_err()
}

/// The records as a lossless table, when every record is an object whose keys are plain,
/// appear once, and follow the column order.
fn lossless_table(records: &[Record<'_>], frame: &Frame<'_, '_>) -> Option<String> {
    let (scans, stats) = scan_all(records);
    let table = Table::plan(records, &scans, &stats)?;
    let order: HashMap<&str, usize> = stats
        .iter()
        .filter(|f| f.parent.is_empty())
        .enumerate()
        .map(|(i, f)| (f.key, i))
        .collect();
    for scan in &scans {
        let mut last = None;
        for field in scan.fields.iter().filter(|f| f.parent.is_empty()) {
            let position = order.get(field.key).copied();
            if position <= last || !is_plain(field.key) {
                return None;
            }
            last = position;
        }
    }
    let mut text = String::new();
    match frame {
        Frame::Document(collection) if !collection.path.is_empty() => {
            text.push_str(&envelope(collection, true));
            text.push('\n');
            text.push_str(&format!(
                "{}: {} records as a table, ",
                collection.path_text(),
                records.len()
            ));
        }
        Frame::Document(collection) if collection.members => {
            text.push_str(&format!(
                "JSON object of {} members as a table, ",
                records.len()
            ));
        }
        Frame::Document(_) => {
            text.push_str(&format!(
                "JSON array of {} objects as a table, ",
                records.len()
            ));
        }
        Frame::Lines => {
            text.push_str(&format!("NDJSON of {} objects as a table, ", records.len()));
        }
    }
    text.push_str(&table.preamble(true));
    for record in records {
        text.push_str(&table.row(record, true));
        text.push('\n');
    }
    Some(text)
}

// ---------------------------------------------------------------------------------------------
// Rendering JSON.

/// A record on one line: minified, long strings cut, and if still longer than MAX_ITEM_BYTES,
/// big nested containers collapsed from the deepest level up; cut at last. Members of a map
/// start with their key.
fn render_record(record: &Record<'_>) -> String {
    let value = render_value(record.value, MAX_ITEM_BYTES, MAX_STRING_BYTES);
    match record.key {
        Some(key) => format!("\"{key}\":{value}"),
        None => value,
    }
}

/// `raw` minified, strings longer than `max_string_bytes` cut, and if still longer than
/// `max_bytes`, nested containers collapsed to `[…N items]` or `{…N keys}`, largest first;
/// cut at last. A container that holds most of its parent (the wrapper `{"metadata": {...}}`
/// of a record) is opened rather than collapsed, so the scalars inside it stay visible.
fn render_value(raw: &str, max_bytes: usize, max_string_bytes: usize) -> String {
    let nodes = container_nodes(raw, max_string_bytes);
    let mut collapse = vec![false; nodes.len()];
    if let Some(root) = nodes.first().filter(|root| root.size > max_bytes) {
        let mut total = root.size;
        // The wrappers: containers holding at least 80% of a parent of a few children that
        // is the root or a wrapper.
        let mut wrapper = vec![false; nodes.len()];
        wrapper[0] = true;
        for (index, node) in nodes.iter().enumerate().skip(1) {
            let parent = &nodes[node.parent];
            wrapper[index] = wrapper[node.parent]
                && parent.children <= MAX_WRAPPER_CHILDREN
                && node.size * 10 >= parent.size * 8;
        }
        let mut order: Vec<usize> = (1..nodes.len())
            .filter(|&i| !wrapper[i] && nodes[i].size > SMALL_CONTAINER_BYTES)
            .collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(nodes[i].size), i));
        for index in order {
            if total <= max_bytes {
                break;
            }
            // Inside a collapsed container: already out of sight.
            let mut ancestor = nodes[index].parent;
            let mut hidden = false;
            while ancestor != usize::MAX {
                hidden |= collapse[ancestor];
                ancestor = nodes[ancestor].parent;
            }
            if hidden {
                continue;
            }
            collapse[index] = true;
            // Collapsing a container inside a collapsed descendant's place: the sizes of
            // collapsed descendants were already taken off.
            let inner_saved: usize = nodes
                .iter()
                .enumerate()
                .skip(index + 1)
                .take_while(|(_, n)| n.start < nodes[index].end)
                .filter(|(i, _)| collapse[*i] && *i != index)
                .map(|(_, n)| n.size.saturating_sub(PLACEHOLDER_BYTES))
                .sum();
            total -= (nodes[index].size - inner_saved).saturating_sub(PLACEHOLDER_BYTES);
        }
    }
    let text = minify_collapsed(raw, max_string_bytes, &nodes, &collapse);
    // Still too long with every big container collapsed: many long strings. Cut them shorter.
    if text.len() > max_bytes && max_string_bytes > SHORT_STRING_BYTES {
        return render_value(raw, max_bytes, SHORT_STRING_BYTES);
    }
    shorten(&text, max_bytes)
}

/// A container with more children is a list, not a wrapper around one of them.
const MAX_WRAPPER_CHILDREN: usize = 4;
/// Strings are cut this short when a record does not fit otherwise.
const SHORT_STRING_BYTES: usize = 40;
/// About how long `[…12 items]` is.
const PLACEHOLDER_BYTES: usize = 12;

/// A container inside a JSON value, for `render_value`.
struct Node {
    start: usize,
    end: usize,
    /// Index of the enclosing container's node; usize::MAX for the outermost.
    parent: usize,
    /// Minified length with strings cut.
    size: usize,
    /// Elements or keys.
    children: usize,
}

/// The containers of `raw` in order of their start (the value itself first, when it is one),
/// with their sizes once minified and strings cut at `max_string_bytes`.
fn container_nodes(raw: &str, max_string_bytes: usize) -> Vec<Node> {
    let bytes = raw.as_bytes();
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (length, next) = match bytes[i] {
            b'"' => {
                if let Some(&top) = stack.last() {
                    nodes[top].children += usize::from(nodes[top].children == 0);
                }
                let end = string_end(bytes, i);
                ((end - i).min(max_string_bytes + 8), end)
            }
            b'{' | b'[' => {
                let parent = stack.last().copied().unwrap_or(usize::MAX);
                if let Some(&top) = stack.last() {
                    nodes[top].children += usize::from(nodes[top].children == 0);
                }
                stack.push(nodes.len());
                nodes.push(Node {
                    start: i,
                    end: bytes.len(),
                    parent,
                    size: 0,
                    children: 0,
                });
                (1, i + 1)
            }
            b'}' | b']' => {
                if let Some(index) = stack.pop() {
                    nodes[index].end = i + 1;
                    nodes[index].size += 1;
                    let size = nodes[index].size;
                    if let Some(&parent) = stack.last() {
                        nodes[parent].size += size;
                    }
                }
                i += 1;
                continue;
            }
            b',' => {
                if let Some(&top) = stack.last() {
                    nodes[top].children += 1;
                }
                (1, i + 1)
            }
            b' ' | b'\n' | b'\r' | b'\t' => (0, i + 1),
            _ => {
                if let Some(&top) = stack.last() {
                    nodes[top].children += usize::from(nodes[top].children == 0);
                }
                (1, i + 1)
            }
        };
        if let Some(&top) = stack.last() {
            nodes[top].size += length;
        }
        i = next;
    }
    nodes
}

/// `raw` minified, strings cut at `max_string_bytes`, the marked containers collapsed.
fn minify_collapsed(
    raw: &str,
    max_string_bytes: usize,
    nodes: &[Node],
    collapse: &[bool],
) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::new();
    let mut next_node = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                out.push_str(&cut_string(&raw[i..end], max_string_bytes));
                i = end;
            }
            open @ (b'{' | b'[') => {
                let index = next_node;
                next_node += 1;
                if collapse.get(index) == Some(&true) {
                    let node = &nodes[index];
                    out.push_str(&collapsed(open, node.children));
                    i = node.end;
                    // Skip the nodes inside.
                    while nodes.get(next_node).is_some_and(|n| n.start < node.end) {
                        next_node += 1;
                    }
                    continue;
                }
                out.push(char::from(open));
                i += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(bytes[i], b'"' | b'{' | b'[' | b' ' | b'\n' | b'\r' | b'\t')
                {
                    i += 1;
                }
                out.push_str(&raw[start..i]);
            }
        }
    }
    out
}

/// Appends `raw` without whitespace outside strings; strings and numbers as written.
pub(crate) fn minify_into(out: &mut String, raw: &str) {
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&raw[start..i]);
                i = skip_space(bytes, i);
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&raw[start..]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress as compress_output;
    use crate::items::{json_collection, split_items};
    use serde_json::{Map, Value, json};

    fn ctx(query: &str) -> CompressContext<'_> {
        CompressContext {
            query,
            tool_name: None,
        }
    }

    fn view_of(original: &str, query: &str) -> View {
        compress_output(original, &ctx(query)).expect("a view")
    }

    fn marker_view(original: &str, query: &str) -> View {
        let view = view_of(original, query);
        assert!(!view.lossless, "{}", view.text);
        assert_eq!(view.total, split_items(original).items.len());
        view
    }

    /// Reads a lossless table back into JSON values: the test of losslessness.
    fn parse_table(text: &str) -> Vec<Value> {
        let mut lines = text.lines();
        let intro = lines.next().expect("intro");
        let mut constants = Map::new();
        if let Some((_, object)) = intro.split_once("; every record also has ") {
            // The constant members, as one JSON object.
            constants = serde_json::from_str(object).expect("a JSON object of constants");
        }
        let columns: Vec<&str> = lines.next().expect("header").split('\t').collect();
        lines
            .map(|row| {
                let mut object = Map::new();
                for (column, cell) in columns.iter().zip(row.split('\t')) {
                    if cell.is_empty() {
                        continue;
                    }
                    let value = serde_json::from_str(cell)
                        .unwrap_or_else(|_| Value::String(cell.to_owned()));
                    object.insert((*column).to_owned(), value);
                }
                for (key, value) in &constants {
                    object.insert(key.clone(), value.clone());
                }
                Value::Object(object)
            })
            .collect()
    }

    /// Records with values that a table must keep apart, as JSON text (numbers as written).
    fn tricky_original(count: usize) -> String {
        let notes = [
            r#""""#,
            r#""null""#,
            r#""a\tb""#,
            r#""say \"hi\"""#,
            r#"" padded ""#,
            r#""12""#,
            r#""true""#,
            r#""[x]""#,
            r#""é ✓""#,
            r#""line\nbreak""#,
        ];
        let ratios = ["1.50", "-0.0", "1e3", "null", "7"];
        let records: Vec<String> = (0..count)
            .map(|i| {
                let ratio = if i % 4 == 1 {
                    String::new()
                } else {
                    format!(r#""ratio": {}, "#, ratios[i % 5])
                };
                let tags = if i % 3 == 0 {
                    r#"["a", "b"]"#.to_owned()
                } else {
                    format!(r#"{{"k": {i}}}"#)
                };
                format!(
                    r#"  {{"id": {i}, "name": "job {i}", "note": {}, {ratio}"tags": {tags}, "kind": "batch"}}"#,
                    notes[i % 10]
                )
            })
            .collect();
        format!("[\n{}\n]\n", records.join(",\n"))
    }

    #[test]
    fn cells_that_json_would_read_as_values_keep_their_quotes() {
        for value in ["1e400", "1E400", "-0", "12", "true", "null", "1.0e5"] {
            assert!(!is_plain(value), "{value}");
        }
        for text in ["item 1", "1e4x", "é ✓", "a=1, b"] {
            assert!(is_plain(text), "{text}");
        }
    }

    #[test]
    fn lossless_table_reads_back_exactly() {
        let original = tricky_original(40);
        let records: Vec<Value> = serde_json::from_str(&original).expect("JSON");
        let collection = json_collection(&original).expect("JSON");
        let text = lossless(&collection.items, &Frame::Document(&collection));
        assert!(
            text.starts_with("JSON array of 40 objects as a table"),
            "{text}"
        );
        assert!(text.contains("every record also has {\"kind\":\"batch\"}"));
        assert_eq!(parse_table(&text), records);
        // Numbers stay as written, strings that could be read as something else stay quoted.
        assert!(text.contains("\t1.50\t") && text.contains("\t-0.0\t") && text.contains("\t1e3\t"));
        assert!(
            text.contains("\t\"null\"\t")
                && text.contains("\t\"12\"\t")
                && text.contains("\t\"\"\t")
        );
        assert!(text.contains("\t\"a\\tb\"\t") && text.contains("\t\"line\\nbreak\"\t"));
        assert!(text.contains("\té ✓\t"));
        // A missing key is an empty cell.
        assert!(text.contains("\tjob 1\t\"null\"\t\t"), "{text}");
    }

    #[test]
    fn small_json_gets_a_lossless_view_without_marker() {
        let records: Vec<Value> = (0..30)
            .map(|i| json!({"id": i, "name": format!("item {i}"), "status": "ok", "size": i * 10}))
            .collect();
        let original = serde_json::to_string_pretty(&records).expect("JSON");
        let view = view_of(&original, "");
        assert!(view.lossless);
        assert_eq!((view.total, view.kept), (30, 30));
        assert_eq!(parse_table(&view.text), records);
        assert!(estimate_tokens_of(&view.text) * 2 < estimate_tokens_of(&original));
    }

    fn estimate_tokens_of(text: &str) -> usize {
        crate::tokens::estimate_tokens(text)
    }

    #[test]
    fn keys_out_of_order_make_a_minified_view() {
        let records: Vec<String> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    format!("  {{\n    \"a\": {i},\n    \"b\": \"x y z\"\n  }}")
                } else {
                    format!("  {{\n    \"b\": \"x y z\",\n    \"a\": {i}\n  }}")
                }
            })
            .collect();
        let original = format!("[\n{}\n]", records.join(",\n"));
        let view = view_of(&original, "");
        assert!(view.lossless);
        let minified: String = original.split_whitespace().collect::<Vec<_>>().join("");
        assert_eq!(view.text, minified.replace("xyz", "x y z"));
    }

    fn jobs(count: usize) -> Vec<Value> {
        (0..count)
            .map(|i| {
                json!({
                    "id": i,
                    "name": format!("job-{i}"),
                    "status": "ok",
                    "timeout_ms": 3000,
                    "region": (["eu", "us"][i % 2]),
                    "duration_ms": 100 + (i * 37) % 50,
                    "message": format!("processed batch {i} of the nightly import without trouble"),
                })
            })
            .collect()
    }

    #[test]
    fn error_values_are_kept_and_error_keys_alone_are_not() {
        let mut records = jobs(400);
        records[117]["status"] = json!("failed");
        records[250]["message"] = json!("upstream refused the connection: ECONNREFUSED");
        let original = serde_json::to_string_pretty(&records).expect("JSON");
        let view = marker_view(&original, "");
        assert!(view.text.contains("job-117\tus\tfailed"), "{}", view.text);
        assert!(view.text.contains("upstream refused the connection"));
        // `timeout_ms` everywhere is not an error: few items are kept.
        assert!(view.kept <= 12, "{}", view.kept);
        let first = view.text.lines().next().expect("schema");
        assert_eq!(
            first,
            "JSON array of 400 objects; keys: duration_ms, id, message, name, region, status, timeout_ms"
        );
        assert!(view.text.contains("every record also has timeout_ms=3000"));
        let summary = view.text.lines().last().expect("summary");
        assert!(summary.starts_with("omitted 39"), "{summary}");
        assert!(summary.contains("status: ok 3"), "{summary}");
        assert!(summary.contains("region: "), "{summary}");
        assert!(summary.contains("duration_ms: 100–149"), "{summary}");
    }

    #[test]
    fn query_matches_and_named_entities_are_kept() {
        let records = jobs(500);
        let original = serde_json::to_string(&records).expect("JSON");
        let view = marker_view(&original, "what happened to job-321?");
        assert!(view.text.contains("\tjob-321\t"), "{}", view.text);
        assert!(!view.text.contains("\tjob-320\t"));
    }

    #[test]
    fn identical_items_are_kept_once_and_counted() {
        let mut records = jobs(300);
        for index in [20, 30, 40, 50] {
            records[index] = json!({"id": 0, "name": "job-x", "status": "error", "timeout_ms": 3000, "region": "eu", "duration_ms": 1, "message": "boom"});
        }
        let original = serde_json::to_string(&records).expect("JSON");
        let view = marker_view(&original, "");
        assert_eq!(view.text.matches("job-x").count(), 1, "{}", view.text);
        assert!(
            view.text.contains("(3 of them repeat an earlier item)"),
            "{}",
            view.text
        );
    }

    fn metrics() -> Vec<Value> {
        (0..600)
            .map(|i| {
                // A small wobble, a level shift at 400, one spike at 211.
                let base = if i >= 400 { 80.0 } else { 35.0 };
                let cpu = if i == 211 { 97.5 } else { base + f64::from((i * 7 % 11) as u8) / 10.0 };
                json!({"ts": 1_767_225_600 + i * 60, "host": (["web-1", "web-2"][i % 2]), "cpu": cpu, "status": if i == 333 { "degraded" } else { "ok" }})
            })
            .collect()
    }

    #[test]
    fn outliers_change_points_and_rare_values_are_kept() {
        let original = serde_json::to_string(&metrics()).expect("JSON");
        let view = marker_view(&original, "");
        assert!(view.text.contains("97.5\tweb-2"), "{}", view.text);
        // The first record after the level shift.
        assert!(
            view.text
                .contains(&format!("\t{}", 1_767_225_600 + 400 * 60)),
            "{}",
            view.text
        );
        assert!(view.text.contains("degraded"));
        // The timestamp is monotone: its extremes are no outliers.
        assert!(view.kept <= 12, "{}", view.kept);
        assert!(view.text.contains("cpu: 35–81 (median"), "{}", view.text);
    }

    #[test]
    fn search_finds_the_largest_value_of_a_named_field() {
        let original = serde_json::to_string(&metrics()).expect("JSON");
        let result = crate::search::search(&original, "when was the cpu spike?", 3);
        assert_eq!(result.hits[0].index, 211);
        let result = crate::search::search(&original, "lowest cpu", 1);
        assert_ne!(result.hits[0].index, 211);
    }

    #[test]
    fn envelope_shows_its_scalars_and_items_are_the_big_array() {
        let users: Vec<Value> = (0..300)
            .map(|i| {
                let email = if i == 188 {
                    "dana@example.com".to_owned()
                } else {
                    format!("user{i}@example.com")
                };
                let plan = if i == 188 {
                    "enterprise"
                } else {
                    ["free", "pro", "team"][i % 3]
                };
                json!({"id": i + 1, "email": email, "plan": plan, "active": i % 10 != 0})
            })
            .collect();
        let original = serde_json::to_string_pretty(&json!({
            "data": users,
            "meta": {"total": 300, "page": 1},
            "links": {"next": null},
        }))
        .expect("JSON");
        let view = marker_view(&original, "Which plan is dana@example.com on?");
        let mut lines = view.text.lines();
        assert_eq!(
            lines.next(),
            Some(
                r#"{"data":[…300 items below],"links":{"next":null},"meta":{"page":1,"total":300}}"#
            )
        );
        assert!(lines.next().is_some_and(|l| {
            l.starts_with("data: array of 300 objects; keys: active, email, id, plan")
        }));
        assert!(
            view.text
                .contains("true\tdana@example.com\t189\tenterprise"),
            "{}",
            view.text
        );
        assert_eq!(view.total, 300);
        let result = crate::search::search(&original, "dana@example.com", 1);
        assert_eq!(result.unit, "items");
        assert!(result.hits[0].text.contains("enterprise"));
    }

    #[test]
    fn ndjson_records_are_lines() {
        let mut lines: Vec<String> = (0..800)
            .map(|i| {
                format!(
                    r#"{{"t":"10:{:02}:{:02}","level":"info","msg":"request served","ms":{}}}"#,
                    i / 60 % 60,
                    i % 60,
                    i % 17
                )
            })
            .collect();
        lines[612] =
            r#"{"t":"10:10:12","level":"error","msg":"payment gateway refused card","ms":3}"#
                .to_owned();
        let original = lines.join("\n") + "\n";
        let view = marker_view(&original, "did anything fail?");
        assert_eq!(view.unit, "lines");
        assert_eq!(view.total, 800);
        assert!(view.text.starts_with("NDJSON, 800 objects, one a line"));
        assert!(view.text.contains("payment gateway refused card"));
        assert!(view.text.contains("level: info 7"), "{}", view.text);
    }

    /// A GitHub-style issue list: nested users and labels, long bodies, URLs.
    fn issues(count: usize) -> Vec<Value> {
        (0..count)
            .map(|i| {
                let n = count - i;
                let title = if n == 317 { "Crash when parsing empty config file".to_owned() } else { format!("Improve the widget renderer, part {n}") };
                json!({
                    "url": format!("https://api.github.com/repos/acme/widget/issues/{n}"),
                    "html_url": format!("https://github.com/acme/widget/issues/{n}"),
                    "id": 2_000_000_000u64 + n as u64 * 7919,
                    "number": n,
                    "title": title,
                    "user": {"login": if n == 317 { "mkowalski".to_owned() } else { format!("user{}", n % 13) }, "id": 1000 + n % 13, "type": "User"},
                    "labels": if n % 4 == 0 { json!([{"name": "bug", "color": "d73a4a"}]) } else { json!([]) },
                    "state": if n % 3 == 0 { "open" } else { "closed" },
                    "locked": false,
                    "comments": if n == 42 { 187 } else { n % 6 },
                    "created_at": format!("2025-{:02}-{:02}T10:00:00Z", n % 12 + 1, n % 28 + 1),
                    "body": "Steps to reproduce: open the app, click the button, watch the spinner. ".repeat(1 + n % 5),
                })
            })
            .collect()
    }

    #[test]
    fn issue_list_keeps_the_asked_issue_and_saves_most_tokens() {
        let original = serde_json::to_string_pretty(&issues(500)).expect("JSON");
        let view = marker_view(
            &original,
            "Which issue reports a crash when parsing an empty config, and who opened it?\ngh api repos/acme/widget/issues",
        );
        assert!(
            view.text.contains("Crash when parsing empty config file"),
            "{}",
            view.text
        );
        assert!(view.text.contains("mkowalski"));
        // The issue with by far the most comments is an outlier.
        assert!(view.text.contains("\t187\t"), "{}", view.text);
        assert!(view.text.contains("state: closed"), "{}", view.text);
        let (before, after) = (
            estimate_tokens_of(&original),
            estimate_tokens_of(&view.text),
        );
        assert!(after * 20 < before, "{after} of {before}");
    }

    #[test]
    fn package_lists_keep_the_named_package_with_its_fields() {
        let packages: Vec<Value> = (0..160)
            .map(|i| {
                let name = if i == 120 { "sqlx-postgres".to_owned() } else { format!("crate{i}") };
                let dependencies: Vec<Value> = (0..30)
                    .map(|d| json!({"name": format!("dep{d}"), "req": format!("^1.{d}"), "kind": null, "optional": false}))
                    .collect();
                json!({
                    "name": name,
                    "version": format!("0.{i}.0"),
                    "description": "Works with sqlx and postgres. ".repeat(3),
                    "dependencies": dependencies,
                    "features": {"default": ["std"], "std": []},
                    "rust_version": format!("1.{}.0", 60 + i % 30),
                })
            })
            .collect();
        let original = serde_json::to_string(&json!({
            "packages": packages,
            "workspace_members": ["path+file:///w#app@0.1.0"],
            "version": 1,
        }))
        .expect("JSON");
        let view = marker_view(
            &original,
            "Which version of sqlx-postgres is used, and which Rust version does it need?",
        );
        assert!(view.text.starts_with(r#"{"packages":[…160 items below],"version":1,"workspace_members":["path+file:///w#app@0.1.0"]}"#), "{}", view.text);
        let line = view
            .text
            .lines()
            .find(|l| l.contains(r#""name":"sqlx-postgres""#))
            .expect("the named package");
        assert!(line.contains(r#""version":"0.120.0""#), "{line}");
        assert!(line.contains(r#""dependencies":[…30 items]"#), "{line}");
        assert!(line.contains(r#""rust_version":"1.60.0""#), "{line}");
    }

    #[test]
    fn wrapped_records_keep_their_inner_scalars() {
        let raw = format!(
            r#"{{"metadata": {{"name": "pydantic", "version": "2.14.3", "description": "{}", "classifier": [{}], "requires_python": ">=3.10"}}, "installer": "pip"}}"#,
            "word ".repeat(300),
            (0..40)
                .map(|i| format!("\"Classifier :: {i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rendered = render_value(&raw, MAX_ITEM_BYTES, MAX_STRING_BYTES);
        assert!(
            rendered.starts_with(
                r#"{"metadata":{"name":"pydantic","version":"2.14.3","description":"word word"#
            ),
            "{rendered}"
        );
        assert!(
            rendered.ends_with(
                r#""classifier":[…40 items],"requires_python":">=3.10"},"installer":"pip"}"#
            ),
            "{rendered}"
        );
    }

    #[test]
    fn scan_finds_fields_and_alarms() {
        let scan = scan_record(&Record::of(
            r#"{"a": "x", "b": {"c": "y", "d": [1, "z"]}, "e": true, "f": 1.5, "g": null}"#,
            false,
        ));
        let fields: Vec<(&str, &str, &str)> = scan
            .fields
            .iter()
            .map(|f| (f.parent, f.key, f.raw))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("", "a", "\"x\""),
                ("b", "c", "\"y\""),
                ("b", "d", "[1, \"z\"]"),
                ("", "b", r#"{"c": "y", "d": [1, "z"]}"#),
                ("", "e", "true"),
                ("", "f", "1.5"),
                ("", "g", "null")
            ]
        );
        let alarm = |raw: &str| scan_record(&Record::of(raw, false)).alarm;
        assert_eq!(alarm(r#"{"timeout_ms": 500, "code": 200}"#), 0);
        assert_eq!(alarm(r#"{"status_code": 503}"#), ALARM_EXACT);
        assert_eq!(alarm(r#"{"error": null, "errors": []}"#), 0);
        assert_eq!(alarm(r#"{"error": {"message": "x"}}"#), ALARM_EXACT);
        assert_eq!(alarm(r#"{"msg": "request timed out after 3s"}"#), 2);
        assert_eq!(alarm(r#"{"state": "FAILED"}"#), ALARM_EXACT);
        assert_eq!(alarm(r#"{"note": "warning: slow"}"#), 1);
        assert_eq!(alarm(r#"{"features": ["panic-handler", "timeout"]}"#), 0);
        assert_eq!(alarm(r#"{"path": "src/error/timeout.rs"}"#), 0);
        assert_eq!(alarm(r#"{"title": "Crash on error"}"#), 0);
        assert_eq!(alarm(r#""fatal""#), ALARM_EXACT);
    }

    #[test]
    fn maps_of_records_are_members() {
        let map: Map<String, Value> = (0..200)
            .map(|i| (format!("node_modules/pkg{i}"), json!({"version": format!("1.{i}.0"), "license": if i == 77 { "GPL-3.0" } else { "MIT" }})))
            .collect();
        let original = serde_json::to_string_pretty(&Value::Object(map)).expect("JSON");
        let view = marker_view(&original, "");
        assert!(
            view.text.starts_with("JSON object of 200 members"),
            "{}",
            view.text
        );
        // The rare license is kept, with its key.
        assert!(view.text.contains("node_modules/pkg77"), "{}", view.text);
        assert!(view.text.contains("GPL-3.0"));
    }

    #[test]
    fn cells_are_quoted_when_needed() {
        assert_eq!(cell(r#""plain text""#, 100), "plain text");
        assert_eq!(cell(r#""""#, 100), r#""""#);
        assert_eq!(cell(r#""42""#, 100), r#""42""#);
        assert_eq!(cell(r#""{x}""#, 100), r#""{x}""#);
        assert_eq!(cell("{ \"a\" : [1, 2] }", 100), r#"{"a":[1,2]}"#);
        assert_eq!(cell(r#""abcdefgh""#, 3), "abc…");
    }

    #[test]
    fn a_document_of_few_members_is_cut_down() {
        let original = serde_json::to_string_pretty(&json!({
            "path": "src/main.rs",
            "content": "fn main() { println!(\"hello\"); }\n".repeat(2000),
        }))
        .expect("JSON");
        let view = marker_view(&original, "");
        assert_eq!((view.total, view.unit), (2, "items"));
        assert!(
            view.text.starts_with("JSON object of 2 members"),
            "{}",
            view.text
        );
        assert!(
            view.text.contains(r#""path":"src/main.rs""#),
            "{}",
            view.text
        );
        assert!(view.text.contains(r#""content":"fn main() { println!"#));
        assert!(view.text.len() < 1000);
    }
}
