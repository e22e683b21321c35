//! Exact token counts with OpenAI's o200k_base encoding (feature `tiktoken`). The layer itself
//! uses [`estimate_tokens`](crate::estimate_tokens) on the hot path; this is for reports and
//! tests that need the real number.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn encoding() -> &'static CoreBPE {
    static ENCODING: OnceLock<CoreBPE> = OnceLock::new();
    // The BPE ranks are compiled into tiktoken-rs: this cannot fail at run time.
    ENCODING
        .get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base is embedded in tiktoken-rs"))
}

/// The number of o200k_base tokens in `text` (special tokens counted as text).
///
/// ```
/// assert_eq!(tower_ccr::count_tokens("hello world"), 2);
/// ```
pub fn count_tokens(text: &str) -> usize {
    encoding().encode_ordinary(text).len()
}
