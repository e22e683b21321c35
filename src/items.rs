//! Splitting an original into items: the units that views keep or omit and searches rank.

use serde_json::value::RawValue;

/// How an original splits into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// The elements of a top-level JSON array.
    JsonArray,
    /// The lines of any other text.
    Lines,
}

impl ItemKind {
    /// The plural noun for items of this kind, as views and search results name them.
    pub fn unit(self) -> &'static str {
        match self {
            ItemKind::JsonArray => "items",
            ItemKind::Lines => "lines",
        }
    }
}

/// An original split into items: borrowed slices of the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items<'a> {
    /// How the original was split.
    pub kind: ItemKind,
    /// The items, in original order.
    pub items: Vec<&'a str>,
}

/// Split: if the trimmed text parses as a JSON array (serde_json, `Vec<&RawValue>`), its elements
/// (raw bytes of each element, borrowed from `original`); otherwise its lines (split on '\n', a
/// trailing '\r' stripped, a final empty line after a trailing newline dropped).
pub fn split_items(original: &str) -> Items<'_> {
    let trimmed = original.trim();
    // Only a leading '[' can start an array; skip the parser for everything else.
    if trimmed.starts_with('[') {
        if let Ok(elements) = serde_json::from_str::<Vec<&RawValue>>(trimmed) {
            return Items {
                kind: ItemKind::JsonArray,
                items: elements.into_iter().map(RawValue::get).collect(),
            };
        }
    }
    Items {
        kind: ItemKind::Lines,
        items: split_lines(original),
    }
}

fn split_lines(text: &str) -> Vec<&str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    body.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_elements_are_raw_slices() {
        let original = " [ {\"a\": 1,  \"b\": [1, 2]}, \"x\" , 3 ]\n";
        let items = split_items(original);
        assert_eq!(items.kind, ItemKind::JsonArray);
        assert_eq!(
            items.items,
            vec!["{\"a\": 1,  \"b\": [1, 2]}", "\"x\"", "3"]
        );
        // Borrowed from the original, not copied.
        let range = original.as_bytes().as_ptr_range();
        assert!(range.contains(&items.items[0].as_ptr()));
    }

    #[test]
    fn empty_json_array_has_no_items() {
        let items = split_items("[]");
        assert_eq!(items.kind, ItemKind::JsonArray);
        assert!(items.items.is_empty());
    }

    #[test]
    fn bracketed_log_lines_are_lines() {
        let items = split_items("[Sun Dec 04] [error] one\n[Sun Dec 04] [notice] two\n");
        assert_eq!(items.kind, ItemKind::Lines);
        assert_eq!(items.items.len(), 2);
    }

    #[test]
    fn json_object_is_lines() {
        let items = split_items("{\n  \"a\": [1, 2]\n}");
        assert_eq!(items.kind, ItemKind::Lines);
        assert_eq!(items.items, vec!["{", "  \"a\": [1, 2]", "}"]);
    }

    #[test]
    fn lines_strip_carriage_returns_and_final_newline() {
        assert_eq!(split_items("a\r\nb\r\n").items, vec!["a", "b"]);
        assert_eq!(split_items("a\n\nb").items, vec!["a", "", "b"]);
        assert_eq!(split_items("a\n\n").items, vec!["a", ""]);
        assert_eq!(split_items("\n").items, vec![""]);
        assert!(split_items("").items.is_empty());
    }

    #[test]
    fn units() {
        assert_eq!(ItemKind::JsonArray.unit(), "items");
        assert_eq!(ItemKind::Lines.unit(), "lines");
    }
}
