//! Splitting an original into items: the units that views keep or omit and searches rank.

use serde::de::IgnoredAny;

/// How an original splits into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// The elements of a JSON document's main collection (see `json_collection`).
    Json,
    /// The lines of any other text.
    Lines,
}

impl ItemKind {
    /// The plural noun for items of this kind, as views and search results name them.
    pub fn unit(self) -> &'static str {
        match self {
            ItemKind::Json => "items",
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

/// Split: if the trimmed text is a JSON array or object, the items of its main collection
/// (see `json_collection`), raw slices of the original; otherwise its lines (split on '\n', a
/// trailing '\r' stripped, a final empty line after a trailing newline dropped). NDJSON is
/// lines: each line is one record.
pub fn split_items(original: &str) -> Items<'_> {
    match json_collection(original) {
        Some(collection) => Items {
            kind: ItemKind::Json,
            items: collection.items,
        },
        None => Items {
            kind: ItemKind::Lines,
            items: split_lines(original),
        },
    }
}

/// A container on the way from a JSON document's root to its main collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathStep<'a> {
    /// The member with this key (raw contents between the quotes).
    Key(&'a str),
    /// The only element of an array.
    Only,
}

/// The collection of a JSON document whose elements are the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Collection<'a> {
    /// The document, trimmed.
    pub doc: &'a str,
    /// How to get from the root to the collection (empty: the root is the collection).
    pub path: Vec<PathStep<'a>>,
    /// Byte range of the collection (from its bracket to its closing one) in `doc`.
    pub span: std::ops::Range<usize>,
    /// The collection is an object, and its items are its members (`"key": value`).
    pub members: bool,
    /// The elements (of an array) or members (of an object), raw slices of `doc`.
    pub items: Vec<&'a str>,
    /// The children of each container on the path, from the root (as many as path steps).
    pub levels: Vec<Vec<Child>>,
}

impl Collection<'_> {
    /// "packages", "data.items", "Reservations[0].Instances"; empty for the root.
    pub(crate) fn path_text(&self) -> String {
        let mut text = String::new();
        for step in &self.path {
            match step {
                PathStep::Key(key) => {
                    if !text.is_empty() {
                        text.push('.');
                    }
                    text.push_str(key);
                }
                PathStep::Only => text.push_str("[0]"),
            }
        }
        text
    }
}

/// A member holding at least this share of its container's bytes is where the data is: the
/// search for the main collection goes down into it.
const DOMINANT_SHARE: f64 = 0.5;
/// In an object of at most FEW_MEMBERS members, a container of at least MANY_CHILDREN children
/// holding at least BIGGEST_LIST_SHARE of the bytes, and bigger than every other member, is
/// where the data is too.
const FEW_MEMBERS: usize = 8;
const MANY_CHILDREN: usize = 8;
const BIGGEST_LIST_SHARE: f64 = 0.25;

/// The main collection of a JSON document (an array or object, after trimming): starting at
/// the root, go down into the member (or the only element) that holds at least half of its
/// container's bytes, while there is one; the container reached is the collection. So the
/// items of `[...]` are its elements; of `{"data": [...], "meta": {...}}`, the elements of
/// `data`; of cargo metadata, its `packages`; of an object of many similar members (a map of
/// records), its members. None when the text is not JSON.
pub(crate) fn json_collection(original: &str) -> Option<Collection<'_>> {
    let doc = original.trim();
    let bytes = doc.as_bytes();
    let framed = matches!(
        (bytes.first(), bytes.last()),
        (Some(b'['), Some(b']')) | (Some(b'{'), Some(b'}'))
    );
    // Deeper documents are not walked (the walk recurses per level): they are lines.
    if !framed
        || nesting_exceeds(bytes, MAX_NESTING)
        || serde_json::from_str::<IgnoredAny>(doc).is_err()
    {
        return None;
    }
    let mut path = Vec::new();
    let mut levels = Vec::new();
    let mut span = 0..doc.len();
    // The children of the container at `span`, and those of its container children, found in
    // one walk.
    let (mut current, mut grandchildren) = children_two_levels(doc, span.clone());
    loop {
        let size = span.len() as f64;
        let is_object = bytes[span.start] == b'{';
        let dominant = current
            .iter()
            .enumerate()
            .max_by_key(|(_, child)| (child.value.len(), std::cmp::Reverse(child.value.start)))
            .filter(|(position, child)| {
                let share = child.value.len() as f64 / size;
                // A record of a few members whose biggest is a list of many: the list, even
                // when the other members are big too.
                let biggest_list = is_object
                    && current.len() <= FEW_MEMBERS
                    && grandchildren[*position].len() >= MANY_CHILDREN
                    && share >= BIGGEST_LIST_SHARE;
                // A member whose name appears twice is ambiguous: the path could not tell the
                // two apart, so the walk stops there.
                let unique = child.key.as_ref().is_none_or(|key| {
                    current
                        .iter()
                        .filter(|other| {
                            other
                                .key
                                .as_ref()
                                .is_some_and(|k| doc[k.clone()] == doc[key.clone()])
                        })
                        .count()
                        == 1
                });
                matches!(bytes[child.value.start], b'{' | b'[')
                    && (share >= DOMINANT_SHARE || biggest_list)
                    && (is_object || current.len() == 1)
                    && unique
            })
            .map(|(position, child)| (position, child.clone()));
        let Some((position, child)) = dominant else {
            let items = current
                .iter()
                .map(|child| {
                    let start = child.key.clone().map_or(child.value.start, |k| k.start - 1);
                    &doc[start..child.value.end]
                })
                .collect();
            return Some(Collection {
                doc,
                path,
                span,
                members: is_object,
                items,
                levels,
            });
        };
        path.push(match child.key.clone() {
            Some(key) => PathStep::Key(&doc[key]),
            None => PathStep::Only,
        });
        span = child.value.clone();
        let next = std::mem::take(&mut grandchildren[position]);
        levels.push(current);
        // The next level's children are known; their own children take another walk, needed
        // only to go further down.
        current = next;
        let further = current.iter().any(|c| {
            matches!(bytes[c.value.start], b'{' | b'[')
                && c.value.len() as f64 >= DOMINANT_SHARE * span.len() as f64
        });
        grandchildren = if further {
            current
                .iter()
                .map(|c| {
                    if matches!(bytes[c.value.start], b'{' | b'[') {
                        children(doc, c.value.clone())
                    } else {
                        Vec::new()
                    }
                })
                .collect()
        } else {
            vec![Vec::new(); current.len()]
        };
    }
}

/// JSON nested deeper than this is not taken for a document (serde_json's own limit is 128).
const MAX_NESTING: usize = 128;

/// Whether `bytes` nests arrays and objects deeper than `max` (strings skipped). Linear, no
/// recursion.
fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The children of the container at `span`, and for each child the children of it when it is
/// a container (else none), in one walk.
fn children_two_levels(doc: &str, span: std::ops::Range<usize>) -> (Vec<Child>, Vec<Vec<Child>>) {
    let bytes = doc.as_bytes();
    let mut out = Vec::new();
    let mut nested = Vec::new();
    for_each_child(bytes, span, |key, value_start| {
        let (grandchildren, end) = if matches!(bytes[value_start], b'{' | b'[') {
            let mut grandchildren = Vec::new();
            let end = for_each_child(bytes, value_start..bytes.len(), |key, start| {
                let end = value_end(bytes, start);
                grandchildren.push(Child {
                    key,
                    value: start..end,
                });
                end
            });
            (grandchildren, end)
        } else {
            (Vec::new(), value_end(bytes, value_start))
        };
        out.push(Child {
            key,
            value: value_start..end,
        });
        nested.push(grandchildren);
        end
    });
    (out, nested)
}

/// Calls `visit(key, value start)` for each member or element of the valid JSON container
/// that starts at `span.start`; `visit` returns where the value ends. Returns the index just
/// past the container.
fn for_each_child(
    bytes: &[u8],
    span: std::ops::Range<usize>,
    mut visit: impl FnMut(Option<std::ops::Range<usize>>, usize) -> usize,
) -> usize {
    let is_object = bytes[span.start] == b'{';
    let mut i = span.start + 1;
    loop {
        i = skip_space(bytes, i);
        match bytes.get(i) {
            None => return bytes.len(),
            Some(b'}' | b']') => return i + 1,
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let key = if is_object {
            let key_end = string_end(bytes, i);
            let key = i + 1..key_end - 1;
            // Past the colon.
            i = skip_space(bytes, skip_space(bytes, key_end) + 1);
            Some(key)
        } else {
            None
        };
        i = visit(key, i);
    }
}

/// A member or element of a container: its key's contents (members) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Child {
    pub key: Option<std::ops::Range<usize>>,
    pub value: std::ops::Range<usize>,
}

/// The members or elements of the valid JSON container at `span` of `doc`.
pub(crate) fn children(doc: &str, span: std::ops::Range<usize>) -> Vec<Child> {
    let bytes = doc.as_bytes();
    let mut out = Vec::new();
    for_each_child(bytes, span, |key, start| {
        let end = value_end(bytes, start);
        out.push(Child {
            key,
            value: start..end,
        });
        end
    });
    out
}

/// Byte classes for scanning valid JSON.
const OTHER: u8 = 0;
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
const JSON_CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    table[b'"' as usize] = QUOTE;
    table[b'{' as usize] = OPEN;
    table[b'[' as usize] = OPEN;
    table[b'}' as usize] = CLOSE;
    table[b']' as usize] = CLOSE;
    table
};

/// Index of the first non-whitespace byte at or after `i`.
pub(crate) fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// Index just past the string whose opening quote is at `start`.
pub(crate) fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
        i += offset;
        if bytes[i] == b'\\' {
            i += 2;
        } else {
            return i + 1;
        }
    }
    bytes.len()
}

/// Index just past the value that starts at `start` (a string, container or literal).
pub(crate) fn value_end(bytes: &[u8], start: usize) -> usize {
    match bytes.get(start) {
        Some(b'"') => string_end(bytes, start),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match JSON_CLASS[usize::from(bytes[i])] {
                    QUOTE => {
                        i = string_end(bytes, i);
                        continue;
                    }
                    OPEN => depth += 1,
                    CLOSE => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        _ => {
            let mut i = start;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            i
        }
    }
}

/// The lines of a text, as `split_items` gives them.
pub(crate) fn split_lines(text: &str) -> Vec<&str> {
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
    fn deeply_nested_json_is_lines_and_duplicate_members_are_not_walked() {
        let records: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"id":{i},"name":"n{i}"}}"#))
            .collect();
        let deep = format!(
            "{}[{}]{}",
            "[".repeat(10_000),
            records.join(","),
            "]".repeat(10_000)
        );
        assert_eq!(split_items(&deep).kind, ItemKind::Lines);
        assert!(nesting_exceeds(b"[[[", 2));
        assert!(!nesting_exceeds(br#"["[[[[", {"a": "]]]"}]"#, 2));
        let strings: Vec<String> = (0..80).map(|i| format!(r#""secret-{i:03}""#)).collect();
        let duplicate = format!(
            r#"{{"data":[{}],"data":[{}]}}"#,
            strings.join(","),
            records[..30].join(",")
        );
        // The root's members are the items: neither `data` is taken for the collection.
        let items = split_items(&duplicate);
        assert_eq!(items.items.len(), 2);
    }

    #[test]
    fn json_array_elements_are_raw_slices() {
        let original = " [ {\"a\": 1,  \"b\": [1, 2]}, \"x\" , 3 ]\n";
        let items = split_items(original);
        assert_eq!(items.kind, ItemKind::Json);
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
        assert_eq!(items.kind, ItemKind::Json);
        assert!(items.items.is_empty());
        assert!(split_items("{ }").items.is_empty());
    }

    #[test]
    fn bracketed_log_lines_are_lines() {
        let items = split_items("[Sun Dec 04] [error] one\n[Sun Dec 04] [notice] two\n");
        assert_eq!(items.kind, ItemKind::Lines);
        assert_eq!(items.items.len(), 2);
        // Framed like JSON, but not JSON.
        let items = split_items("[1] first\n[2] second]");
        assert_eq!(items.kind, ItemKind::Lines);
    }

    #[test]
    fn envelope_items_are_its_big_array() {
        let original = r#"{"meta": {"page": 1}, "data": [{"id": 1, "s": "a, b"}, {"id": 2}, {"id": 3, "t": [1, {"x": "]"}]}]}"#;
        let collection = json_collection(original).expect("JSON");
        assert_eq!(collection.path, vec![PathStep::Key("data")]);
        assert_eq!(collection.path_text(), "data");
        assert!(!collection.members);
        assert_eq!(
            collection.items,
            vec![
                r#"{"id": 1, "s": "a, b"}"#,
                r#"{"id": 2}"#,
                r#"{"id": 3, "t": [1, {"x": "]"}]}"#
            ]
        );
        assert_eq!(
            &collection.doc[collection.span.clone()],
            &original[original.find("[{").unwrap()..original.len() - 1]
        );
    }

    #[test]
    fn collection_is_found_through_wrappers() {
        let original = r#"{"Reservations": [{"Instances": [{"id": "i-1"}, {"id": "i-2"}], "Owner": "me"}], "n": 1}"#;
        let collection = json_collection(original).expect("JSON");
        assert_eq!(collection.path_text(), "Reservations[0].Instances");
        assert_eq!(
            collection.items,
            vec![r#"{"id": "i-1"}"#, r#"{"id": "i-2"}"#]
        );
    }

    #[test]
    fn object_without_a_dominant_member_is_a_map() {
        let original = "{\n  \"a\": {\"v\": 1},\n  \"b\\\"c\": {\"v\": 2},\n  \"d\": 3\n}";
        let items = split_items(original);
        assert_eq!(items.kind, ItemKind::Json);
        assert_eq!(
            items.items,
            vec![r#""a": {"v": 1}"#, r#""b\"c": {"v": 2}"#, r#""d": 3"#]
        );
        let collection = json_collection(original).expect("JSON");
        assert!(collection.members);
        assert!(collection.path.is_empty());
    }

    #[test]
    fn values_end_where_they_should() {
        let bytes = br#"{"a": "x\"}", "b": [1, "]"]} tail"#;
        assert_eq!(value_end(bytes, 0), bytes.len() - 5);
        assert_eq!(string_end(bytes, 6), 12);
        assert_eq!(value_end(b"-1.5e3, 2", 0), 6);
        assert_eq!(value_end(b"true}", 0), 4);
    }

    #[test]
    fn lines_strip_carriage_returns_and_final_newline() {
        assert_eq!(split_items("a\r\nb\r\n").items, vec!["a", "b"]);
        assert_eq!(split_items("a\n\nb").items, vec!["a", "", "b"]);
        assert_eq!(split_items("a\n\n").items, vec!["a", ""]);
        assert_eq!(split_items("\n").items, vec![""]);
        assert!(split_items("").items.is_empty());
        // NDJSON is lines.
        let ndjson = "{\"a\": 1}\n{\"a\": 2}\n";
        assert_eq!(split_items(ndjson).kind, ItemKind::Lines);
    }

    #[test]
    fn units() {
        assert_eq!(ItemKind::Json.unit(), "items");
        assert_eq!(ItemKind::Lines.unit(), "lines");
    }

    #[test]
    fn the_biggest_of_several_lists_is_the_collection() {
        let users: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"id": {i}, "name": "user {i}"}}"#))
            .collect();
        let groups: Vec<String> = (0..30)
            .map(|i| format!(r#"{{"id": {i}, "name": "group {i}"}}"#))
            .collect();
        let original = format!(
            r#"{{"users": [{}], "groups": [{}], "total": 70}}"#,
            users.join(", "),
            groups.join(", ")
        );
        let collection = json_collection(&original).expect("JSON");
        assert_eq!(collection.path_text(), "users");
        assert_eq!(collection.items.len(), 40);
    }
}
