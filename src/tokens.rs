//! A cheap token estimate, close to OpenAI's o200k_base counts without a vocabulary.
//!
//! Each byte costs what its class costs after the classes of the two bytes before it (a word
//! start, a digit run start, a single space before a number, a newline run, a run of mixed or
//! repeated punctuation, ...). The costs are a least-squares fit against o200k_base counts over
//! logs, JSON (minified and pretty), Rust and Python code, Markdown and English prose, kept in
//! hundredths of a token. The loop has no branches on the text, so it runs at about a byte per
//! nanosecond or better.

// Byte classes; punctuation that repeats the byte before it is a class of its own.
const LOWER: u8 = 0;
const UPPER: u8 = 1;
const DIGIT: u8 = 2;
const SPACE: u8 = 3;
const NEWLINE: u8 = 4;
const PUNCT: u8 = 5;
const PUNCT_REPEAT: u8 = 6;
const NON_ASCII: u8 = 7;

// Costs in hundredths of a token.
/// Every letter, plus a word start (after a non-letter, or a capital after lower case).
const LETTER: u16 = 12;
const WORD_START: u16 = 50;
/// A letter right after a single punctuation character (".init", "/usr", "_name").
const GLUED_WORD_START: u16 = 34;
/// Every digit, plus a digit run start (o200k splits numbers into groups of three).
const DIGIT_COST: u16 = 29;
const DIGIT_RUN: u16 = 113;
/// A single space before a number does not merge into it, unlike into a word.
const SPACE_BEFORE_DIGIT: u16 = 44;
/// A run of two or more spaces inside a line (column alignment).
const SPACE_RUN: u16 = 261;
/// A run of newlines (with the indentation after them).
const NEWLINE_RUN: u16 = 152;
/// A punctuation run start, each further different character in it, and a repeat ("==").
const PUNCT_START: u16 = 46;
const PUNCT_MIXED: u16 = 29;
const PUNCT_REPEATED: u16 = 5;
/// Non-ASCII bytes: o200k covers most scripts well, about one token per four to six bytes.
const NON_ASCII_BYTE: u16 = 17;

const fn byte_classes() -> [u8; 256] {
    let mut table = [NON_ASCII; 256];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = match byte as u8 {
            b'a'..=b'z' => LOWER,
            b'A'..=b'Z' => UPPER,
            b'0'..=b'9' => DIGIT,
            b'\n' | b'\r' => NEWLINE,
            b' ' | b'\t' | 0x0b | 0x0c => SPACE,
            _ => PUNCT,
        };
        byte += 1;
    }
    table
}

const fn is_letter(class: u8) -> bool {
    class == LOWER || class == UPPER
}

const fn is_punct(class: u8) -> bool {
    class == PUNCT || class == PUNCT_REPEAT
}

/// Cost of a byte of class `current` after bytes of classes `before_previous`, `previous`.
const fn byte_cost(before_previous: u8, previous: u8, current: u8) -> u16 {
    match current {
        LOWER | UPPER => {
            let mut cost = LETTER;
            if !is_letter(previous) || (previous == LOWER && current == UPPER) {
                cost += WORD_START;
            }
            if is_punct(previous) && !is_punct(before_previous) {
                cost += GLUED_WORD_START;
            }
            cost
        }
        DIGIT => {
            let mut cost = DIGIT_COST;
            if previous != DIGIT {
                cost += DIGIT_RUN;
            }
            if previous == SPACE && before_previous != SPACE {
                cost += SPACE_BEFORE_DIGIT;
            }
            cost
        }
        SPACE => {
            let run_start = before_previous != SPACE && before_previous != NEWLINE;
            if previous == SPACE && run_start {
                SPACE_RUN
            } else {
                0
            }
        }
        NEWLINE => {
            if previous == NEWLINE || previous == SPACE {
                0
            } else {
                NEWLINE_RUN
            }
        }
        PUNCT => {
            if is_punct(previous) {
                PUNCT_MIXED
            } else {
                PUNCT_START
            }
        }
        PUNCT_REPEAT => {
            if previous == PUNCT_REPEAT {
                0
            } else {
                PUNCT_REPEATED
            }
        }
        _ => NON_ASCII_BYTE,
    }
}

/// Costs indexed by the classes of three consecutive bytes, 3 bits each.
const fn cost_table() -> [u16; 512] {
    let mut table = [0; 512];
    let mut index = 0;
    while index < 512 {
        table[index] = byte_cost(
            (index >> 6) as u8,
            (index >> 3 & 7) as u8,
            (index & 7) as u8,
        );
        index += 1;
    }
    table
}

static CLASS: [u8; 256] = byte_classes();
static COST: [u16; 512] = cost_table();

/// Cheap token estimate for the hot path (no allocation, one pass).
pub fn estimate_tokens(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    // The text starts as if after a line break. `state` holds the classes of the two bytes
    // before, 3 bits each; the table lookups of a block of bytes do not wait on each other.
    let bytes = text.as_bytes();
    let mut state = u32::from(NEWLINE) << 3 | u32::from(NEWLINE);
    let mut previous_byte = b'\n';
    let mut cost = 0u32;
    let mut total = 0usize;
    for block in bytes.chunks(1 << 16) {
        for &byte in block {
            let class = CLASS[usize::from(byte)];
            let class = u32::from(class + u8::from((class == PUNCT) & (byte == previous_byte)));
            state = (state << 3 | class) & 511;
            cost += u32::from(COST[state as usize]);
            previous_byte = byte;
        }
        // A block of 65,536 bytes costs at most 65,536 * 261 hundredths: no overflow.
        total += cost as usize;
        cost = 0;
    }
    ((total + 50) / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_zero_tokens() {
        assert_eq!(estimate_tokens(""), 0);
    }

    #[test]
    fn short_strings_are_close() {
        assert_eq!(estimate_tokens("hello"), 1);
        assert!((2..=3).contains(&estimate_tokens("hello world")));
        // o200k: 4 groups of up to three digits.
        assert!((4..=5).contains(&estimate_tokens("1234567890")));
    }

    #[test]
    fn log_and_code_lines_are_within_a_quarter() {
        // (text, o200k_base count)
        let samples = [
            ("2024-03-01 10:20:34 ERROR database connection refused", 16),
            ("    let mut scores = vec![0.0; items.len()];", 15),
            (r#"{"id":1,"name":"alpha","status":"ok"}"#, 13),
        ];
        for (text, real) in samples {
            let estimate = estimate_tokens(text);
            assert!(
                estimate * 4 >= real * 3 && estimate * 4 <= real * 5,
                "{estimate} vs {real}: {text}"
            );
        }
    }

    #[test]
    fn english_prose_is_about_one_token_per_word() {
        let sentence = "The quick brown fox jumps over the lazy dog while the farmer watches \
                        from the porch, wondering whether it will rain before the harvest. ";
        let words = sentence.split_whitespace().count();
        let text = sentence.repeat(1000 / words + 1);
        let total_words = text.split_whitespace().count();
        let estimate = estimate_tokens(&text) * 1000 / total_words;
        assert!(
            (900..=1600).contains(&estimate),
            "{estimate} per 1000 words"
        );
    }

    #[test]
    fn repeated_punctuation_and_whitespace_are_cheap() {
        // o200k: 1, 2 and 5 tokens.
        assert!(estimate_tokens(&"=".repeat(80)) <= 4);
        assert!(estimate_tokens(&" ".repeat(80)) <= 4);
        assert!(estimate_tokens(&"\n".repeat(80)) <= 6);
    }

    #[test]
    fn non_ascii_costs_about_one_token_per_few_bytes() {
        let text = "日本語のテキストです。".repeat(10);
        let estimate = estimate_tokens(&text);
        assert!(
            // o200k: 80 tokens for these 330 bytes; Cyrillic and accented Latin cost less.
            (text.len() / 6..=text.len() / 3).contains(&estimate),
            "{estimate} for {} bytes",
            text.len()
        );
    }
}
