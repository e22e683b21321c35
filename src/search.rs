//! BM25 search over the items of an original, for the model's retrieval calls.

use crate::items::split_items;

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
/// IDF = ln(1 + (N - df + 0.5)/(df + 0.5))); returns at most `limit` hits, best first (ties:
/// lower index first), only items with score > 0. `matched` = number of items with score > 0.
pub fn search(original: &str, query: &str, limit: usize) -> SearchResult {
    let items = split_items(original);
    let scores = bm25_scores(&items.items, &terms(query));
    let ranked = rank(&scores);
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
        matched: ranked.len(),
        hits,
    }
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

/// BM25 score of every item against the query terms (duplicates in the query count once).
pub(crate) fn bm25_scores(items: &[&str], query_terms: &[String]) -> Vec<f64> {
    Bm25Matches::new(items, query_terms).scores()
}

/// How much a query term still counts in `Bm25Matches::diverse_top` once a pick has it.
const COVERED_TERM_WEIGHT: f64 = 0.5;
/// Picks of `Bm25Matches::diverse_top` score at least this: a term in more than about 40% of
/// the items (IDF ln 2.5) matches too much to single an item out.
const MIN_PICK_SCORE: f64 = 0.9;

/// The BM25 weight of every (item, query term) pair where the item contains the term.
pub(crate) struct Bm25Matches {
    /// (item, query term, weight), in item order.
    weights: Vec<(usize, usize, f64)>,
    item_count: usize,
    term_count: usize,
}

impl Bm25Matches {
    /// Scores `items` against `query_terms` (duplicates count once) in one pass over the items
    /// that only counts the query's terms, so nothing is allocated per item term. An item's
    /// length, for BM25's length normalisation, is its number of words.
    pub(crate) fn new(items: &[&str], query_terms: &[String]) -> Bm25Matches {
        let mut query: Vec<&str> = query_terms.iter().map(String::as_str).collect();
        query.sort_unstable();
        query.dedup();
        let mut matches = Bm25Matches {
            weights: Vec::new(),
            item_count: items.len(),
            term_count: query.len(),
        };
        if query.is_empty() || items.is_empty() {
            return matches;
        }
        // Most words of an item are not in the query: skip them before any lookup.
        let filter = TermFilter::new(&query);
        let mut scanner = TermScanner::default();
        let mut lengths = Vec::with_capacity(items.len());
        let mut doc_freq = vec![0u32; query.len()];
        let mut freq = vec![0u32; query.len()];
        // (item, query term, term frequency), turned into weights below.
        let mut postings: Vec<(usize, usize, u32)> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let length = match filter.words_if_no_term(item.as_bytes()) {
                Some(words) => words,
                None => scanner.scan(item, Wanted::Like(&filter), |term| {
                    if let Ok(k) = query.binary_search(&term) {
                        freq[k] += 1;
                    }
                }),
            };
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
        for &(index, _, weight) in &self.weights {
            scores[index] += weight;
        }
        scores
    }

    /// Up to `limit` matching items, picked greedily: each pick is the item with the best score
    /// where query terms that earlier picks contain count less, so that the picks cover the
    /// whole question rather than repeat its most frequent part. Ties keep the lower index.
    /// Only items whose full score reaches MIN_PICK_SCORE are picked.
    pub(crate) fn diverse_top(&self, limit: usize) -> Vec<usize> {
        // (item, range of its weights), in item order, for items that score enough.
        let mut groups: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (position, &(index, _, _)) in self.weights.iter().enumerate() {
            match groups.last_mut() {
                Some((last, range)) if *last == index => range.end = position + 1,
                _ => groups.push((index, position..position + 1)),
            }
        }
        groups.retain(|(_, range)| {
            let score: f64 = self.weights[range.clone()].iter().map(|w| w.2).sum();
            score >= MIN_PICK_SCORE
        });
        let mut term_weight = vec![1.0; self.term_count];
        let mut picked = vec![false; groups.len()];
        let mut top = Vec::new();
        while top.len() < limit {
            let mut best: Option<(usize, f64)> = None;
            for (group, (_, range)) in groups.iter().enumerate() {
                if picked[group] {
                    continue;
                }
                let score: f64 = self.weights[range.clone()]
                    .iter()
                    .map(|&(_, k, weight)| term_weight[k] * weight)
                    .sum();
                if best.is_none_or(|(_, best_score)| score > best_score) {
                    best = Some((group, score));
                }
            }
            let Some((group, _)) = best else {
                break;
            };
            picked[group] = true;
            let (index, range) = &groups[group];
            top.push(*index);
            for &(_, k, _) in &self.weights[range.clone()] {
                term_weight[k] *= COVERED_TERM_WEIGHT;
            }
        }
        top
    }
}

/// Splits text into terms, reusing one buffer for lowercasing.
#[derive(Default)]
struct TermScanner {
    lower: String,
}

/// What a word contains besides ASCII lower case letters and digits.
#[derive(Clone, Copy, Default)]
struct WordShape {
    upper: bool,
    underscore: bool,
    non_ascii: bool,
}

/// Byte classes for the term scanner.
const SEPARATOR: u8 = 0;
const WORD_BYTE: u8 = 1;
const UPPER_BYTE: u8 = 2 | WORD_BYTE;
const UNDERSCORE_BYTE: u8 = 4 | WORD_BYTE;
/// A byte of a non-ASCII char, which is a word char when alphanumeric.
const NON_ASCII_BYTE: u8 = 8;

const TERM_BYTE_CLASS: [u8; 256] = {
    let mut table = [NON_ASCII_BYTE; 256];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = match byte as u8 {
            b'a'..=b'z' | b'0'..=b'9' => WORD_BYTE,
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
            filter.lengths |= 1 << term.len().min(63);
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
            }
            chain_words += 1;
            if wanted.may_match(&bytes[start..pos], shape) {
                self.emit_word(&text[start..pos], shape, &mut emit);
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
                let shape = WordShape {
                    upper: chain.bytes().any(|b| b.is_ascii_uppercase()),
                    underscore: false,
                    non_ascii: !chain.is_ascii(),
                };
                if wanted.may_match(chain.as_bytes(), shape) {
                    self.emit_term(chain, shape, &mut emit);
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
            emit(lower);
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
    };
    (pos, shape)
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
        let scores = bm25_scores(&["apple pie", "banana split"], &terms("apple"));
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
}
