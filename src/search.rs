//! BM25 search over the items of an original, for the model's retrieval calls.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::compress::lines::{TEMPLATE_PREFIX_BYTES, template_of};
use crate::compress::{ALARM_PREFIX_BYTES, alarm_level, prefix};
use crate::items::{children, split_items};

/// BM25 term-frequency saturation.
const K1: f64 = 1.2;
/// BM25 length normalisation.
const B: f64 = 0.75;

/// One search hit: the item's index in the original's items, its text, its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Index of the item in the original's items (0-based).
    pub index: usize,
    /// The item's text as it appears in the original.
    pub text: String,
    /// BM25 score, greater than zero.
    pub score: f64,
}

/// The result of a search over one original.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// "items" or "lines": what the original's items are.
    pub unit: &'static str,
    /// Number of items in the original.
    pub total_items: usize,
    /// Number of items that match at least one query term.
    pub matched: usize,
    /// The best hits, best first.
    pub hits: Vec<Hit>,
}

/// Searches `original`'s items (see items::split_items) with BM25 (k1 = 1.2, b = 0.75,
/// IDF = ln(1 + (N - df + 0.5)/(df + 0.5))); returns at most `limit` hits, best first, only
/// items with score > 0. `matched` = number of items with score > 0.
///
/// Words match by a light stem ("serving" finds "serve", "failed" finds "fail"), a time
/// "21:40:43" also finds "214043". A question about failures ("why did it fail?") also finds
/// lines that report an error ("panicked", "Exception"), and one about the "last" or
/// "latest" prefers later items among near-equal scores. Ties keep the lower index first.
/// Lines that only repeat a better hit's template (the same text up to numbers and ids) and
/// duplicate items come after the hits that show something new.
pub fn search(original: &str, query: &str, limit: usize) -> SearchResult {
    let items = split_items(original);
    let lines = items.kind == crate::items::ItemKind::Lines;
    let alarms = (lines && has_failure_intent(query)).then(|| {
        items
            .items
            .iter()
            .map(|item| alarm_level(prefix(item, ALARM_PREFIX_BYTES), true) >= 2)
            .collect::<Vec<bool>>()
    });
    let mut scores = Bm25Matches::with_flags(&items.items, query, alarms.as_deref()).scores();
    let recent = has_recency_intent(query);
    if recent {
        let n = scores.len().max(1) as f64;
        for (index, score) in scores.iter_mut().enumerate() {
            *score *= 1.0 + RECENCY_BONUS * index as f64 / n;
        }
    }
    let mut ranked = rank(&scores);
    if !lines {
        if let Some(by_value) = superlative_order(&items.items, query, &ranked) {
            ranked = by_value;
        }
    }
    let ranked = new_first(&ranked, &scores, &items.items, lines, recent, limit);
    let matched = scores.iter().filter(|&&score| score > 0.0).count();
    let hits = ranked
        .iter()
        .take(limit)
        .map(|&index| Hit {
            index,
            text: items.items[index].to_owned(),
            score: scores[index],
        })
        .collect();
    SearchResult {
        unit: items.kind.unit(),
        total_items: items.items.len(),
        matched,
        hits,
    }
}

/// How much later items gain, at most, when the query asks for the last or latest.
const RECENCY_BONUS: f64 = 0.1;

/// Share of a template's best score that its later lines need to stand for it when the query
/// asks for the latest.
const RECENT_REPRESENTATIVE_SHARE: f64 = 0.8;

/// The first `limit` of `ranked` reordered so that items showing something new come first:
/// the best line of each template (items: each distinct text), in rank order, then the rest.
/// With `recent`, a template is shown by its latest line that scores nearly as well as its
/// best.
fn new_first(
    ranked: &[usize],
    scores: &[f64],
    items: &[&str],
    lines: bool,
    recent: bool,
    limit: usize,
) -> Vec<usize> {
    // Only looked up, never iterated: the order comes from `ranked`.
    let mut group_of: HashMap<Cow<'_, str>, usize> = HashMap::new();
    // (representative, best score) of each group, in rank order of their best items.
    let mut groups: Vec<(usize, f64)> = Vec::new();
    let mut repeats = Vec::new();
    let mut template = String::new();
    for &index in ranked {
        if groups.len() >= limit && !recent {
            break;
        }
        let key = if lines {
            template_of(prefix(items[index], TEMPLATE_PREFIX_BYTES), &mut template);
            Cow::Owned(template.clone())
        } else {
            Cow::Borrowed(items[index])
        };
        match group_of.get(&key) {
            None => {
                group_of.insert(key, groups.len());
                groups.push((index, scores[index]));
            }
            Some(&group) => {
                let (representative, best) = &mut groups[group];
                if recent
                    && index > *representative
                    && scores[index] >= RECENT_REPRESENTATIVE_SHARE * *best
                {
                    repeats.push(*representative);
                    *representative = index;
                } else {
                    repeats.push(index);
                }
            }
        }
    }
    let mut order: Vec<usize> = groups.iter().map(|&(index, _)| index).take(limit).collect();
    if order.len() < limit {
        let mut rest = repeats;
        rest.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order.extend(rest.into_iter().take(limit - order.len()));
    }
    order
}

/// Whether the query asks about failures: it has an error word ("fail", "error", "panic") or
/// says something broke.
fn has_failure_intent(query: &str) -> bool {
    const MORE: &[&str] = &[
        "crash", "crashed", "crashes", "wrong", "broken", "broke", "problem", "problems", "flaky",
    ];
    alarm_level(query, true) >= 2
        || query
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|word| MORE.iter().any(|m| word.eq_ignore_ascii_case(m)))
}

/// Words that ask for the largest or the smallest value of something.
const LARGEST_WORDS: &[&str] = &[
    "highest", "largest", "biggest", "max", "maximum", "peak", "spike", "spikes", "most", "top",
    "slowest", "longest", "heaviest", "greatest",
];
const SMALLEST_WORDS: &[&str] = &[
    "lowest", "smallest", "min", "minimum", "least", "fastest", "shortest", "fewest",
];

/// For a question about the largest or smallest value of a numeric field that it names ("the
/// highest cpu", "the most comments"): the matching records ordered by that field (largest or
/// smallest first), then the others in rank order.
fn superlative_order(items: &[&str], query: &str, ranked: &[usize]) -> Option<Vec<usize>> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_ascii_alphabetic())
        .map(str::to_ascii_lowercase)
        .collect();
    let largest = words.iter().any(|w| LARGEST_WORDS.contains(&w.as_str()));
    let smallest = words.iter().any(|w| SMALLEST_WORDS.contains(&w.as_str()));
    if largest == smallest {
        return None;
    }
    let query_stems: Vec<String> = terms(query).iter().map(|t| stem(t).to_owned()).collect();
    // The first numeric top-level field, among the first records, whose name has a word of the
    // query.
    let names_query_word = |key: &str| {
        key.split(|c: char| !c.is_ascii_alphanumeric())
            .map(str::to_ascii_lowercase)
            .any(|part| query_stems.iter().any(|q| q == stem(&part)))
    };
    let field = items.iter().take(50).find_map(|item| {
        let item = item.trim();
        if !item.starts_with('{') {
            return None;
        }
        children(item, 0..item.len()).into_iter().find_map(|child| {
            let key = &item[child.key?];
            let value = &item[child.value];
            (value.parse::<f64>().is_ok() && names_query_word(key)).then_some(key)
        })
    })?;
    let value_of = |item: &str| -> Option<f64> {
        let item = item.trim();
        if !item.starts_with('{') {
            return None;
        }
        children(item, 0..item.len())
            .into_iter()
            .find(|child| {
                child
                    .key
                    .as_ref()
                    .is_some_and(|k| &item[k.clone()] == field)
            })
            .and_then(|child| item[child.value].parse::<f64>().ok())
    };
    let mut valued: Vec<(usize, f64)> = ranked
        .iter()
        .filter_map(|&index| value_of(items[index]).map(|value| (index, value)))
        .collect();
    if valued.is_empty() {
        return None;
    }
    valued.sort_by(|a, b| {
        let order = if largest {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        };
        order.then(a.0.cmp(&b.0))
    });
    let mut order: Vec<usize> = valued.iter().map(|&(index, _)| index).collect();
    let mut in_order = vec![false; items.len()];
    order.iter().for_each(|&index| in_order[index] = true);
    order.extend(ranked.iter().filter(|&&index| !in_order[index]));
    Some(order)
}

/// Whether the query asks for the last or most recent of something.
fn has_recency_intent(query: &str) -> bool {
    const WORDS: &[&str] = &["last", "latest", "recent", "newest", "final", "lastly"];
    query
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|word| WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)))
}

/// Lowercased search terms of a text: maximal runs of ASCII alphanumerics plus '_' (and
/// non-ASCII alphanumeric chars), length >= 2, minus a small English stop-word list.
///
/// Identifiers split on any other character ("sqlx-postgres" gives "sqlx", "postgres");
/// a snake_case run also gives its parts. Runs joined by single dots ("0.9.0", "60.30.224.116",
/// "lib.rs") are also emitted whole, after their parts.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    TermScanner::default().scan(text, Wanted::All, |term| out.push(term.to_owned()));
    out
}

/// Indices of items with a positive score, best first; ties keep the lower index first.
pub(crate) fn rank(scores: &[f64]) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
    ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    ranked
}

/// BM25 score of every item against the query (see `Bm25Matches`).
#[cfg(test)]
pub(crate) fn bm25_scores(items: &[&str], query: &str) -> Vec<f64> {
    Bm25Matches::new(items, query).scores()
}

/// How much a query term still counts in `Bm25Matches::diverse_top` once a pick has it.
const COVERED_TERM_WEIGHT: f64 = 0.5;
/// Picks of `Bm25Matches::diverse_top` score at least this: a term in more than about 40% of
/// the items (IDF ln 2.5) matches too much to single an item out.
const MIN_PICK_SCORE: f64 = 0.9;

/// How much the terms of a query word count besides its best one: "/usr/lib/x86_64-linux-gnu"
/// gives seven terms, and an item that has them all should not outrank one that has the single
/// rare term of "libssl.so.3".
const OTHER_TERMS_WEIGHT: f64 = 0.3;

/// The BM25 weight of every (item, query term) pair where the item contains the term.
///
/// An item's score sums, over the query's words (whitespace-separated), the weight of the
/// word's best term in the item plus OTHER_TERMS_WEIGHT times the weights of its other terms.
pub(crate) struct Bm25Matches {
    /// (item, query term, weight), in item order, then term order.
    weights: Vec<(usize, usize, f64)>,
    item_count: usize,
    term_count: usize,
    /// The terms of each query word, as indices, without duplicates.
    words: Vec<Vec<usize>>,
}

impl Bm25Matches {
    /// Scores `items` against the words of `query` in one pass over the items that only
    /// counts the query's terms, so nothing is allocated per item term. Terms match by their
    /// stems (see `stem`). An item's length, for BM25's length normalisation, is its number
    /// of words.
    pub(crate) fn new(items: &[&str], query: &str) -> Bm25Matches {
        Bm25Matches::with_flags(items, query, None)
    }

    /// Like `new`, with `flags` (one per item) as one more query word that flagged items
    /// contain once.
    pub(crate) fn with_flags(items: &[&str], query: &str, flags: Option<&[bool]>) -> Bm25Matches {
        let word_terms: Vec<Vec<String>> = query
            .split_whitespace()
            .map(terms)
            .filter(|terms| !terms.is_empty())
            .collect();
        let mut stems: Vec<&str> = word_terms.iter().flatten().map(|term| stem(term)).collect();
        stems.sort_unstable();
        stems.dedup();
        let mut words: Vec<Vec<usize>> = word_terms
            .iter()
            .map(|terms| {
                let mut indices: Vec<usize> = terms
                    .iter()
                    .filter_map(|term| stems.binary_search(&stem(term)).ok())
                    .collect();
                indices.sort_unstable();
                indices.dedup();
                indices
            })
            .collect();
        words.sort();
        words.dedup();
        let query = stems;
        let flag_term = query.len();
        if flags.is_some() {
            words.push(vec![flag_term]);
        }
        let term_count = query.len() + usize::from(flags.is_some());
        let mut matches = Bm25Matches {
            weights: Vec::new(),
            item_count: items.len(),
            term_count,
            words,
        };
        if term_count == 0 || items.is_empty() {
            return matches;
        }
        // Most words of an item are not in the query: skip them before any lookup.
        let filter = TermFilter::new(&query);
        let mut scanner = TermScanner {
            stem: true,
            ..TermScanner::default()
        };
        let mut lengths = Vec::with_capacity(items.len());
        let mut doc_freq = vec![0u32; term_count];
        let mut freq = vec![0u32; term_count];
        // (item, query term, term frequency), turned into weights below.
        let mut postings: Vec<(usize, usize, u32)> = Vec::new();
        let lookup = TermLookup::new(&query);
        // The quick check pays off while most items have no query term; once most have one,
        // every item is scanned right away.
        let (mut checked, mut needed_scan) = (0usize, 0usize);
        for (index, item) in items.iter().enumerate() {
            let quick = if needed_scan * 4 > checked * 3 && checked >= 64 {
                None
            } else {
                checked += 1;
                let words = filter.words_if_no_term(item.as_bytes());
                needed_scan += usize::from(words.is_none());
                words
            };
            let length = match quick {
                Some(words) => words,
                None => scanner.scan(item, Wanted::Like(&filter), |term| {
                    if let Some(k) = lookup.find(term) {
                        freq[k] += 1;
                    }
                }),
            };
            if flags.is_some_and(|flags| flags[index]) {
                freq[flag_term] = 1;
            }
            lengths.push(length);
            for (k, count) in freq.iter_mut().enumerate() {
                if *count > 0 {
                    postings.push((index, k, *count));
                    doc_freq[k] += 1;
                    *count = 0;
                }
            }
        }

        let n = items.len() as f64;
        let total_length: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        let avg_length = (total_length as f64 / n).max(1.0);
        let idf: Vec<f64> = doc_freq
            .iter()
            .map(|&df| {
                let df = f64::from(df);
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            })
            .collect();
        matches.weights = postings
            .into_iter()
            .map(|(index, k, count)| {
                let tf = f64::from(count);
                let norm = K1 * (1.0 - B + B * f64::from(lengths[index]) / avg_length);
                (index, k, idf[k] * tf * (K1 + 1.0) / (tf + norm))
            })
            .collect();
        matches
    }

    /// The BM25 score of every item.
    pub(crate) fn scores(&self) -> Vec<f64> {
        let mut scores = vec![0.0; self.item_count];
        let term_weight = vec![1.0; self.term_count];
        let mut scratch = vec![0.0; self.term_count];
        for (index, range) in self.item_ranges() {
            scores[index] = self.score(range, &term_weight, &mut scratch);
        }
        scores
    }

    /// (item, range of its weights) for each item with a weight, in item order.
    fn item_ranges(&self) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut ranges: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (position, &(index, _, _)) in self.weights.iter().enumerate() {
            match ranges.last_mut() {
                Some((last, range)) if *last == index => range.end = position + 1,
                _ => ranges.push((index, position..position + 1)),
            }
        }
        ranges
    }

    /// Score of one item from its weights, each term's weight scaled by `term_weight`;
    /// `scratch` has one zeroed slot per term and is left zeroed.
    fn score(
        &self,
        range: std::ops::Range<usize>,
        term_weight: &[f64],
        scratch: &mut [f64],
    ) -> f64 {
        let weights = &self.weights[range];
        for &(_, k, weight) in weights {
            scratch[k] = term_weight[k] * weight;
        }
        let mut score = 0.0;
        for word in &self.words {
            let (mut best, mut sum) = (0.0f64, 0.0);
            for &k in word {
                best = best.max(scratch[k]);
                sum += scratch[k];
            }
            score += best + OTHER_TERMS_WEIGHT * (sum - best);
        }
        for &(_, k, _) in weights {
            scratch[k] = 0.0;
        }
        score
    }

    /// Up to `limit` matching items, picked greedily: each pick is the item with the best score
    /// where query terms that earlier picks contain count less, so that the picks cover the
    /// whole question rather than repeat its most frequent part. Ties keep the lower index.
    /// Only items whose full score reaches MIN_PICK_SCORE are picked.
    pub(crate) fn diverse_top(&self, limit: usize) -> Vec<usize> {
        let mut term_weight = vec![1.0; self.term_count];
        let mut scratch = vec![0.0; self.term_count];
        // Lazy greedy: scores only go down as picks cover terms, so a candidate's last score
        // bounds its current one. Pop the best bound, rescore it, and pick it if it still
        // beats every other bound. Ties keep the lower index.
        let mut heap: BinaryHeap<(OrderedScore, Reverse<usize>, usize)> = BinaryHeap::new();
        let ranges = self.item_ranges();
        let mut candidates: Vec<(OrderedScore, Reverse<usize>, usize)> = Vec::new();
        for (position, (index, range)) in ranges.iter().enumerate() {
            let score = self.score(range.clone(), &term_weight, &mut scratch);
            if score >= MIN_PICK_SCORE {
                candidates.push((OrderedScore(score), Reverse(*index), position));
            }
        }
        // The best few hundred are enough to pick from: among thousands of lines that match
        // alike, the picks would only churn.
        let keep = limit.saturating_mul(CANDIDATES_PER_PICK);
        if candidates.len() > keep {
            candidates.select_nth_unstable_by(keep, |a, b| b.cmp(a));
            candidates.truncate(keep);
        }
        heap.extend(candidates);
        let mut top = Vec::new();
        // Picks so far when each candidate was last scored.
        let mut scored_at = vec![0usize; ranges.len()];
        while top.len() < limit {
            let Some((_, Reverse(index), position)) = heap.pop() else {
                break;
            };
            let range = ranges[position].1.clone();
            if scored_at[position] < top.len() {
                let score = self.score(range, &term_weight, &mut scratch);
                scored_at[position] = top.len();
                heap.push((OrderedScore(score), Reverse(index), position));
                continue;
            }
            top.push(index);
            for &(_, k, _) in &self.weights[range] {
                term_weight[k] *= COVERED_TERM_WEIGHT;
            }
        }
        top
    }
}

/// Finds a term among a few (the query's) without string comparisons for terms of up to
/// eight bytes: by length, then the bytes packed into an integer.
struct TermLookup<'a> {
    /// (length, first eight bytes, index, term), sorted.
    keys: Vec<(usize, u64, usize, &'a str)>,
}

impl<'a> TermLookup<'a> {
    fn new(terms: &[&'a str]) -> TermLookup<'a> {
        let mut keys: Vec<(usize, u64, usize, &'a str)> = terms
            .iter()
            .enumerate()
            .map(|(index, term)| (term.len(), Self::head(term), index, *term))
            .collect();
        keys.sort_unstable();
        TermLookup { keys }
    }

    fn head(term: &str) -> u64 {
        let mut bytes = [0u8; 8];
        let n = term.len().min(8);
        bytes[..n].copy_from_slice(&term.as_bytes()[..n]);
        u64::from_le_bytes(bytes)
    }

    fn find(&self, term: &str) -> Option<usize> {
        let head = Self::head(term);
        let len = term.len();
        self.keys
            .iter()
            .find(|&&(l, h, _, t)| l == len && h == head && (len <= 8 || t == term))
            .map(|&(_, _, index, _)| index)
    }
}

/// `Bm25Matches::diverse_top` picks among this many candidates per pick, the best first.
const CANDIDATES_PER_PICK: usize = 32;

/// A score ordered by `f64::total_cmp`, for the heap.
#[derive(Clone, Copy, PartialEq)]
struct OrderedScore(f64);

impl Eq for OrderedScore {}

impl PartialOrd for OrderedScore {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedScore {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Splits text into terms, reusing buffers for lowercasing and joining.
#[derive(Default)]
struct TermScanner {
    lower: String,
    joined: String,
    /// Emit the stems of words (see `stem`), not the words.
    stem: bool,
}

/// What a word contains besides ASCII lower case letters and digits.
#[derive(Clone, Copy, Default)]
struct WordShape {
    upper: bool,
    underscore: bool,
    non_ascii: bool,
    /// Only ASCII digits.
    digits: bool,
}

/// Byte classes for the term scanner.
const SEPARATOR: u8 = 0;
const WORD_BYTE: u8 = 1;
const UPPER_BYTE: u8 = 2 | WORD_BYTE;
const UNDERSCORE_BYTE: u8 = 4 | WORD_BYTE;
/// A byte of a non-ASCII char, which is a word char when alphanumeric.
const NON_ASCII_BYTE: u8 = 8;
/// Lower-case letters and digits, told apart so that a word's classes say whether it is a
/// number.
const LETTER_BYTE: u8 = 16 | WORD_BYTE;
const DIGIT_BYTE: u8 = 32 | WORD_BYTE;

const TERM_BYTE_CLASS: [u8; 256] = {
    let mut table = [NON_ASCII_BYTE; 256];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = match byte as u8 {
            b'a'..=b'z' => LETTER_BYTE,
            b'0'..=b'9' => DIGIT_BYTE,
            b'A'..=b'Z' => UPPER_BYTE,
            b'_' => UNDERSCORE_BYTE,
            _ => SEPARATOR,
        };
        byte += 1;
    }
    table
};

/// Which terms a scan needs: all, or only those that may be one of a few known terms (all
/// others are skipped before any lowercasing or lookup).
#[derive(Clone, Copy)]
enum Wanted<'a> {
    All,
    Like(&'a TermFilter),
}

impl Wanted<'_> {
    /// Whether terms of a word (or dotted run) `text` may be needed.
    fn may_match(self, text: &[u8], shape: WordShape) -> bool {
        match self {
            Wanted::All => true,
            // Underscore parts start anywhere in the word; non-ASCII lowercases unpredictably.
            Wanted::Like(filter) => shape.underscore || shape.non_ascii || filter.may_match(text),
        }
    }
}

/// A quick, conservative test for "may be one of these terms": the first bytes (lower-cased)
/// and the length of some term agree.
struct TermFilter {
    /// One bit for the two bytes of each two-byte term.
    pairs: Vec<u64>,
    /// One bit for a hash of the first three bytes of each longer term.
    triples: Vec<u64>,
    /// One bit per length; bit 63 stands for 63 bytes and longer.
    lengths: u64,
}

impl TermFilter {
    const BITS: usize = 1 << 16;

    fn new(terms: &[&str]) -> TermFilter {
        let mut filter = TermFilter {
            pairs: vec![0; Self::BITS / 64],
            triples: vec![0; Self::BITS / 64],
            lengths: 0,
        };
        for term in terms {
            // Terms have two bytes or more.
            let bytes = term.as_bytes();
            if bytes.len() == 2 {
                set_bit(&mut filter.pairs, Self::pair(bytes));
            } else {
                set_bit(&mut filter.triples, Self::triple(bytes));
            }
            // A stem also stands for words up to four bytes longer ("run" for "running").
            let longest = if term.bytes().all(|b| b.is_ascii_lowercase()) {
                term.len() + MAX_STEM_CUT
            } else {
                term.len()
            };
            for length in term.len()..=longest {
                filter.lengths |= 1 << length.min(63);
            }
        }
        filter
    }

    fn lower(text: &[u8], i: usize) -> usize {
        usize::from(text.get(i).map_or(0, u8::to_ascii_lowercase))
    }

    fn pair(text: &[u8]) -> usize {
        Self::lower(text, 0) << 8 | Self::lower(text, 1)
    }

    fn triple(text: &[u8]) -> usize {
        let key = (Self::pair(text) << 8 | Self::lower(text, 2)) as u32;
        (key.wrapping_mul(0x9E37_79B1) >> 16) as usize
    }

    /// Whether a term may start at the start of `text`.
    fn may_start(&self, text: &[u8]) -> bool {
        test_bit(&self.pairs, Self::pair(text)) || test_bit(&self.triples, Self::triple(text))
    }

    /// Whether `word` may be one of the terms.
    fn may_match(&self, word: &[u8]) -> bool {
        word.len() >= 2 && self.lengths & 1 << word.len().min(63) != 0 && self.may_start(word)
    }

    /// For an ASCII text where no term may start at any alphanumeric run: its word count, as
    /// `TermScanner::scan` counts words. None otherwise: the text needs an exact scan.
    fn words_if_no_term(&self, text: &[u8]) -> Option<u32> {
        let mut words = 0;
        let mut run = 0;
        let mut previous_alphanumeric = false;
        for (i, &byte) in text.iter().enumerate() {
            if !byte.is_ascii() {
                return None;
            }
            let alphanumeric = byte.is_ascii_alphanumeric();
            // Terms start at alphanumeric runs: words, dotted runs, and the parts of
            // snake_case words all do.
            if alphanumeric && !previous_alphanumeric && self.may_start(&text[i..]) {
                return None;
            }
            run = if alphanumeric || byte == b'_' {
                run + 1
            } else {
                0
            };
            words += u32::from(run == 2);
            previous_alphanumeric = alphanumeric;
        }
        Some(words)
    }
}

fn set_bit(bits: &mut [u64], bit: usize) {
    bits[bit / 64] |= 1 << (bit % 64);
}

fn test_bit(bits: &[u64], bit: usize) -> bool {
    bits[bit / 64] & 1 << (bit % 64) != 0
}

impl TermScanner {
    /// Calls `emit` with each wanted term of `text`, in order; returns how many words (runs of
    /// word chars of two or more bytes) the text has, a cheap measure of its length.
    fn scan(&mut self, text: &str, wanted: Wanted<'_>, mut emit: impl FnMut(&str)) -> u32 {
        let bytes = text.as_bytes();
        let mut words = 0;
        let mut pos = 0;
        // Start of the current run of words joined by single dots, and how many words it has.
        let mut chain_start = 0;
        let mut chain_words = 0;
        let mut chain_shape = WordShape::default();
        // The same for numbers joined by single colons; `colon_end` is where the last ended.
        let mut colon_start = 0;
        let mut colon_words = 0;
        let mut colon_end = 0;
        loop {
            pos += bytes[pos..]
                .iter()
                .position(|&b| TERM_BYTE_CLASS[usize::from(b)] != SEPARATOR)
                .unwrap_or(bytes.len() - pos);
            if pos >= bytes.len() {
                break;
            }
            if !bytes[pos].is_ascii() {
                let (is_word, char_len) = non_ascii_word_char_at(text, pos);
                if !is_word {
                    pos += char_len;
                    continue;
                }
            }
            let start = pos;
            let shape;
            (pos, shape) = scan_word(text, pos);
            words += u32::from(pos - start >= 2);
            if chain_words == 0 {
                chain_start = start;
                chain_shape = WordShape::default();
            }
            chain_words += 1;
            chain_shape.upper |= shape.upper;
            chain_shape.non_ascii |= shape.non_ascii;
            if wanted.may_match(&bytes[start..pos], shape) {
                self.emit_word(&text[start..pos], shape, &mut emit);
            }
            // Numbers joined by single colons ("21:40:43") are also emitted whole and without
            // the colons ("214043", as compact timestamps write it).
            if shape.digits {
                if colon_words == 0 || colon_end + 1 != start || bytes[colon_end] != b':' {
                    colon_start = start;
                    colon_words = 0;
                }
                colon_words += 1;
                colon_end = pos;
                let continues = bytes.get(pos) == Some(&b':')
                    && bytes.get(pos + 1).is_some_and(u8::is_ascii_digit);
                if !continues {
                    if colon_words > 1 {
                        self.emit_colon_run(&text[colon_start..pos], wanted, &mut emit);
                    }
                    colon_words = 0;
                }
            } else {
                colon_words = 0;
            }
            let dot_then_word = bytes.get(pos) == Some(&b'.')
                && bytes.get(pos + 1).is_some_and(|&next| {
                    match TERM_BYTE_CLASS[usize::from(next)] {
                        SEPARATOR => false,
                        NON_ASCII_BYTE => non_ascii_word_char_at(text, pos + 1).0,
                        _ => true,
                    }
                });
            if dot_then_word {
                pos += 1;
                continue;
            }
            if chain_words > 1 {
                let chain = &text[chain_start..pos];
                if wanted.may_match(chain.as_bytes(), chain_shape) {
                    self.emit_term(chain, chain_shape, &mut emit);
                }
            }
            chain_words = 0;
        }
        words
    }

    fn emit_word(&mut self, word: &str, shape: WordShape, emit: &mut impl FnMut(&str)) {
        if !shape.underscore {
            self.emit_term(word, shape, emit);
            return;
        }
        let word = word.trim_matches('_');
        self.emit_term(word, shape, emit);
        if word.contains('_') {
            for part in word.split('_') {
                self.emit_term(part, shape, emit);
            }
        }
    }

    /// Emits "21:40:43" and "214043".
    fn emit_colon_run(&mut self, run: &str, wanted: Wanted<'_>, emit: &mut impl FnMut(&str)) {
        if wanted.may_match(run.as_bytes(), WordShape::default()) {
            emit(run);
        }
        self.joined.clear();
        self.joined.extend(run.split(':'));
        if wanted.may_match(self.joined.as_bytes(), WordShape::default()) {
            emit(&self.joined);
        }
    }

    fn emit_term(&mut self, term: &str, shape: WordShape, emit: &mut impl FnMut(&str)) {
        let lower = if shape.non_ascii {
            if term.chars().nth(1).is_none() {
                return;
            }
            self.lower.clear();
            self.lower.extend(term.chars().flat_map(char::to_lowercase));
            &self.lower
        } else if term.len() < 2 {
            return;
        } else if shape.upper {
            self.lower.clear();
            self.lower.push_str(term);
            self.lower.make_ascii_lowercase();
            &self.lower
        } else {
            term
        };
        if !is_stop_word(lower) {
            emit(if self.stem { stem(lower) } else { lower });
        }
    }
}

/// Whether the non-ASCII char at byte `pos` is alphanumeric, and its length in bytes.
fn non_ascii_word_char_at(text: &str, pos: usize) -> (bool, usize) {
    let c = text[pos..].chars().next().unwrap_or(' ');
    (c.is_alphanumeric(), c.len_utf8())
}

/// End of the word that starts at `pos`, and what it contains.
fn scan_word(text: &str, mut pos: usize) -> (usize, WordShape) {
    let bytes = text.as_bytes();
    let mut classes = 0;
    while pos < bytes.len() {
        let class = TERM_BYTE_CLASS[usize::from(bytes[pos])];
        if class == SEPARATOR {
            break;
        }
        if class == NON_ASCII_BYTE {
            let (is_word, char_len) = non_ascii_word_char_at(text, pos);
            if !is_word {
                break;
            }
            pos += char_len;
        } else {
            pos += 1;
        }
        classes |= class;
    }
    let shape = WordShape {
        upper: classes & UPPER_BYTE == UPPER_BYTE,
        underscore: classes & UNDERSCORE_BYTE == UNDERSCORE_BYTE,
        non_ascii: classes & NON_ASCII_BYTE != 0,
        digits: classes == DIGIT_BYTE,
    };
    (pos, shape)
}

/// A stem is at most this many bytes shorter than its word.
const MAX_STEM_CUT: usize = 4;

/// A light English stem of a lower-case ASCII word, always a prefix of it of three bytes or
/// more: "serving", "served", "serves", "serve" give "serv"; "running" gives "run"; "tests"
/// gives "test". Other terms (numbers, dotted runs, identifiers) are their own stems.
pub(crate) fn stem(term: &str) -> &str {
    /// "runn" to "run", "stopp" to "stop"; not "fall", "pass", "free".
    fn undouble(stem: &str) -> &str {
        let b = stem.as_bytes();
        let n = b.len();
        let doubled = n >= 4
            && b[n - 1] == b[n - 2]
            && !matches!(
                b[n - 1],
                b'l' | b's' | b'z' | b'a' | b'e' | b'i' | b'o' | b'u'
            );
        if doubled { &stem[..n - 1] } else { stem }
    }
    let bytes = term.as_bytes();
    if bytes.len() < 4 || !bytes.iter().all(u8::is_ascii_lowercase) {
        return term;
    }
    let n = bytes.len();
    if n >= 6 && term.ends_with("ing") {
        undouble(&term[..n - 3])
    } else if n >= 5 && term.ends_with("ed") {
        undouble(&term[..n - 2])
    } else if n >= 5 && term.ends_with("es") && !term.ends_with("ies") {
        &term[..n - 2]
    } else if (term.ends_with('s')
        && !(term.ends_with("ss") || term.ends_with("us") || term.ends_with("is")))
        || term.ends_with('e')
    {
        &term[..n - 1]
    } else {
        term
    }
}

/// Common English words that say nothing about which item matches.
const STOP_WORDS: [&str; 60] = [
    "the", "and", "of", "to", "a", "in", "is", "it", "for", "on", "with", "as", "at", "by", "an",
    "be", "this", "that", "what", "which", "did", "does", "do", "was", "were", "are", "how", "any",
    "from", "or", "there", "their", "our", "we", "you", "i", "my", "me", "when", "where", "who",
    "why", "has", "have", "had", "not", "no", "can", "will", "would", "should", "could", "about",
    "into", "than", "then", "them", "these", "those", "its",
];

/// A word of up to eight bytes packed into an integer, for cheap comparisons.
const fn pack(word: &[u8]) -> u64 {
    let mut key = 0u64;
    let mut i = 0;
    while i < word.len() {
        key = key << 8 | word[i] as u64;
        i += 1;
    }
    key
}

/// STOP_WORDS packed and sorted, so that a lookup is a binary search over integers.
const STOP_KEYS: [u64; STOP_WORDS.len()] = {
    let mut keys = [0u64; STOP_WORDS.len()];
    let mut i = 0;
    while i < keys.len() {
        keys[i] = pack(STOP_WORDS[i].as_bytes());
        // Insertion sort: const fns cannot call sort.
        let mut j = i;
        while j > 0 && keys[j - 1] > keys[j] {
            let swap = keys[j - 1];
            keys[j - 1] = keys[j];
            keys[j] = swap;
            j -= 1;
        }
        i += 1;
    }
    keys
};

/// Stop words are at most six bytes long, and ASCII words never pack to the same key.
fn is_stop_word(term: &str) -> bool {
    term.len() <= 6 && STOP_KEYS.binary_search(&pack(term.as_bytes())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_lowercase_and_drop_stop_words() {
        assert_eq!(
            terms("Which version of Pydantic is installed?"),
            vec!["version", "pydantic", "installed"]
        );
    }

    #[test]
    fn terms_split_identifiers_and_keep_dotted_runs() {
        assert_eq!(
            terms("sqlx-postgres 0.9.0"),
            vec!["sqlx", "postgres", "0.9.0"]
        );
        assert_eq!(
            terms("rhost=60.30.224.116"),
            vec!["rhost", "60", "30", "224", "116", "60.30.224.116"]
        );
        assert_eq!(
            terms("src/lib.rs:126"),
            vec!["src", "lib", "rs", "lib.rs", "126"]
        );
        assert_eq!(
            terms("div_rounds_toward_zero"),
            vec!["div_rounds_toward_zero", "div", "rounds", "toward", "zero"]
        );
        // A sentence-ending dot does not join words.
        assert_eq!(
            terms("version 2.14. Next"),
            vec!["version", "14", "2.14", "next"]
        );
    }

    #[test]
    fn terms_handle_non_ascii() {
        assert_eq!(terms("Größe über"), vec!["größe", "über"]);
        assert_eq!(terms("x é ab"), vec!["ab"]);
    }

    #[test]
    fn rare_term_outranks_common_term() {
        let mut lines: Vec<String> = (0..50).map(|i| format!("request {i} ok")).collect();
        lines[10] = "request 10 failed with timeout".to_owned();
        let original = lines.join("\n");
        let result = search(&original, "request timeout", 5);
        assert_eq!(result.hits[0].index, 10);
        assert_eq!(result.matched, 50);
        assert_eq!(result.hits.len(), 5);
        assert_eq!(result.unit, "lines");
        assert_eq!(result.total_items, 50);
        assert!(result.hits[0].score > result.hits[1].score);
        // Equal scores: lower index first.
        assert_eq!(result.hits[1].index, 0);
        assert_eq!(result.hits[2].index, 1);
    }

    #[test]
    fn no_match_gives_no_hits() {
        let result = search("alpha\nbeta\ngamma", "delta", 10);
        assert_eq!(result.matched, 0);
        assert!(result.hits.is_empty());
        let result = search("alpha\nbeta", "", 10);
        assert_eq!(result.matched, 0);
    }

    #[test]
    fn searches_json_array_elements() {
        let original = r#"[{"name":"serde","version":"1.0.1"},{"name":"sqlx-postgres","version":"0.9.0"},{"name":"tokio","version":"1.2.3"}]"#;
        let result = search(original, "sqlx-postgres version", 10);
        assert_eq!(result.unit, "items");
        assert_eq!(result.total_items, 3);
        assert_eq!(result.hits[0].index, 1);
        assert_eq!(
            result.hits[0].text,
            r#"{"name":"sqlx-postgres","version":"0.9.0"}"#
        );
    }

    #[test]
    fn scores_follow_bm25() {
        // Two items, one matching once: N = 2, df = 1, so IDF = ln(1 + 1.5 / 1.5) = ln 2.
        let scores = bm25_scores(&["apple pie", "banana split"], "apple");
        let expected = 2f64.ln() * (K1 + 1.0) / (1.0 + K1);
        assert!((scores[0] - expected).abs() < 1e-12, "{scores:?}");
        assert_eq!(scores[1], 0.0);
    }

    #[test]
    fn quick_word_count_agrees_with_the_scanner() {
        let filter = TermFilter::new(&["zz"]);
        let texts = [
            "a bb ccc_dd _e_ f.gh 0.9.0 x86_64-linux-gnu",
            "__init__ a_b a.b.c",
            "",
            "x",
            "[Sun Dec 04] [error] mod_jk child 6 (code=0x1F)",
        ];
        for text in texts {
            let quick = filter.words_if_no_term(text.as_bytes());
            let exact = TermScanner::default().scan(text, Wanted::All, |_| {});
            assert_eq!(quick, Some(exact), "{text}");
        }
        assert_eq!(filter.words_if_no_term("ünï".as_bytes()), None);
    }

    #[test]
    fn quick_check_never_misses_a_term() {
        let texts = [
            "see x86_64-linux-gnu/libssl.so.3 now",
            "sqlx-postgres@0.9.0",
            "Requires_Python >=3.10",
            "rhost=60.30.224.116",
        ];
        for text in texts {
            let all_terms = terms(text);
            let all: Vec<&str> = all_terms.iter().map(String::as_str).collect();
            for term in &all {
                let filter = TermFilter::new(&[term]);
                assert_eq!(
                    filter.words_if_no_term(text.as_bytes()),
                    None,
                    "{term} in {text}"
                );
            }
        }
    }

    #[test]
    fn search_is_deterministic() {
        let original: String = (0..300)
            .map(|i| format!("line {i} value {}\n", i % 7))
            .collect();
        let first = search(&original, "value 3 line", 20);
        let second = search(&original, "value 3 line", 20);
        assert_eq!(first, second);
    }

    #[test]
    fn stems_join_word_forms() {
        for (word, expected) in [
            ("serving", "serv"),
            ("served", "serv"),
            ("serves", "serv"),
            ("serve", "serv"),
            ("running", "run"),
            ("stopped", "stop"),
            ("tests", "test"),
            ("files", "fil"),
            ("file", "fil"),
            ("status", "status"),
            ("process", "process"),
            ("falling", "fall"),
            ("0.9.0", "0.9.0"),
            ("use", "use"),
        ] {
            assert_eq!(stem(word), expected, "{word}");
        }
        let result = search(
            "a block was served\nnothing here\nanother line",
            "serving blocks",
            5,
        );
        assert_eq!(result.hits.len(), 1);
        assert_eq!(result.hits[0].index, 0);
    }

    #[test]
    fn a_time_finds_compact_timestamps() {
        let original = "081109 214042 INFO served blk_1\n081109 214043 WARN exception serving blk_2\n081109 214044 INFO served blk_3";
        let result = search(original, "what happened at 21:40:43?", 5);
        assert_eq!(result.hits[0].index, 1);
        assert!(terms("at 21:40:43").contains(&"21:40:43".to_owned()));
        assert!(terms("at 21:40:43").contains(&"214043".to_owned()));
    }

    #[test]
    fn a_question_about_failure_finds_error_lines() {
        let mut lines: Vec<String> = (0..60)
            .map(|i| format!("test tests::case_{i} ... ok"))
            .collect();
        lines.push("thread 'tests::div' panicked at src/lib.rs:126:43:".to_owned());
        lines.push("assertion failed".to_owned());
        let original = lines.join("\n");
        let result = search(&original, "Which test failed and why?", 3);
        let texts: Vec<&str> = result.hits.iter().map(|h| h.text.as_str()).collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("panicked at src/lib.rs:126:43")),
            "{texts:?}"
        );
    }

    #[test]
    fn a_question_about_the_last_prefers_later_lines() {
        let original: String = (0..50)
            .map(|i| {
                format!(
                    "INFO executor: Running task {i}.0 in stage 29.0 (TID {})\n",
                    1300 + i
                )
            })
            .collect();
        let result = search(&original, "What was the last task the executor started?", 3);
        assert_eq!(result.hits[0].index, 49);
        let result = search(&original, "Which task did the executor start?", 3);
        assert_eq!(result.hits[0].index, 0);
    }

    #[test]
    fn repeated_templates_come_after_new_lines() {
        let mut lines: Vec<String> = (0..30)
            .map(|i| format!("[error] mod_jk child workerEnv in error state {i}"))
            .collect();
        lines.push(
            "[error] [client 1.2.3.4] Directory index forbidden by rule: /var/www/".to_owned(),
        );
        let original = lines.join("\n");
        let result = search(&original, "which kinds of error entries are there?", 3);
        let indices: Vec<usize> = result.hits.iter().map(|h| h.index).collect();
        assert!(indices.contains(&30), "{indices:?}");
        assert_eq!(result.matched, 31);
    }

    #[test]
    fn one_rare_term_beats_many_parts_of_a_path() {
        let original = "lrwxrwxrwx 1 root root 35 libcrypt.so -> /lib/x86_64-linux-gnu/libcrypt.so.1\n\
                        -rw-r--r-- 1 root root 688160 libssl.so.3\n\
                        lrwxrwxrwx 1 root root 37 libz.so -> /lib/x86_64-linux-gnu/libz.so.1";
        let result = search(
            original,
            "How large is libssl.so.3 in /usr/lib/x86_64-linux-gnu?",
            3,
        );
        assert_eq!(result.hits[0].index, 1);
    }
}
