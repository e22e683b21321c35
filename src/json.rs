//! Byte-faithful JSON editing: locate values in the original body through borrowed
//! [`RawValue`]s and splice replacements in, so every byte outside an edit stays identical.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The byte range of `raw` inside `body`. `raw` must borrow from `body` (deserialized from it
/// with `#[serde(borrow)]`); a value that does not is a bug, reported as `None`.
pub(crate) fn span_of(body: &str, raw: &RawValue) -> Option<Range<usize>> {
    let start = (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.get().len();
    (end <= body.len()).then_some(start..end)
}

/// A JSON string literal's content, unescaped; borrowed when it holds no escape.
/// `None` when `raw` is not a string.
pub(crate) fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// `text` as a JSON string literal.
pub(crate) fn quote(text: &str) -> String {
    // Serializing a str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

/// True when `raw` is the literal `null`.
pub(crate) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Edits to apply to one body: replacements of byte ranges and insertions at positions.
#[derive(Debug, Default)]
pub(crate) struct Splice {
    edits: Vec<(Range<usize>, String)>,
}

impl Splice {
    /// Replaces `range` by `text`.
    pub(crate) fn replace(&mut self, range: Range<usize>, text: String) {
        self.edits.push((range, text));
    }

    /// Inserts `text` at byte `at`.
    pub(crate) fn insert(&mut self, at: usize, text: String) {
        self.edits.push((at..at, text));
    }

    /// True when there is nothing to apply.
    pub(crate) fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// Applies every edit to `body`. Edits must not overlap (insertions at the same position
    /// keep their order); overlapping edits are a bug, reported as `None`.
    pub(crate) fn apply(mut self, body: &str) -> Option<String> {
        self.edits
            .sort_by_key(|(range, _)| (range.start, range.end));
        let added: usize = self.edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = String::with_capacity(body.len() + added);
        let mut cursor = 0;
        for (range, text) in &self.edits {
            if range.start < cursor || range.end > body.len() {
                return None;
            }
            out.push_str(body.get(cursor..range.start)?);
            out.push_str(text);
            cursor = range.end;
        }
        out.push_str(body.get(cursor..)?);
        Some(out)
    }
}

/// Where to add an element to the array at `span` (which holds `[`…`]`), and whether the
/// array already has elements (so the new one needs a leading comma).
pub(crate) fn array_append_point(body: &str, span: &Range<usize>) -> Option<(usize, bool)> {
    let text = body.get(span.clone())?;
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    Some((span.end - 1, !inner.trim().is_empty()))
}

/// Where to add a member to the root object of `body`: just before its closing `}`; and
/// whether the object already has members.
pub(crate) fn object_append_point(body: &str) -> Option<(usize, bool)> {
    let trimmed_end = body.trim_end();
    let close = trimmed_end.len().checked_sub(1)?;
    if !trimmed_end.ends_with('}') {
        return None;
    }
    let open = body.len() - body.trim_start().len();
    let inner = body.get(open + 1..close)?;
    Some((close, !inner.trim().is_empty()))
}

/// Whether `body` may hold a JSON string literal at least `min_len` bytes long (quotes
/// excluded). It does not validate: it only rules most bodies out cheaply, in microseconds
/// instead of a full parse.
///
/// A run of `min_len` bytes without a quote contains a whole aligned block of `min_len / 2`
/// bytes, so it is enough to find an unescaped quote in every such block (usually within its
/// first bytes). A quote after a backslash counts as escaped even when the backslash itself is
/// escaped: that can only make a block look quote-free (a false "maybe"), never hide a string.
pub(crate) fn has_long_string(body: &[u8], min_len: usize) -> bool {
    if min_len < 2 {
        return true;
    }
    let block = min_len / 2;
    body.chunks_exact(block).enumerate().any(|(index, chunk)| {
        let start = index * block;
        !memchr::memchr_iter(b'"', chunk).any(|at| {
            let at = start + at;
            at == 0 || body[at - 1] != b'\\'
        })
    })
}

/// A member of a typed view of an object: absent (`None`), or present with its raw value,
/// `null` included (unlike `Option<&RawValue>`, which folds `null` into `None`). Use with
/// `#[serde(borrow, default)]`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Field<'a>(pub(crate) Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(|raw| Field(Some(raw)))
    }
}

impl<'a> Field<'a> {
    /// The raw value, unless absent or `null`.
    pub(crate) fn value(self) -> Option<&'a RawValue> {
        self.0.filter(|raw| !is_null(raw))
    }

    /// True when present with exactly this JSON text (`"tool"`, `true`…).
    pub(crate) fn is(self, json: &str) -> bool {
        self.0.is_some_and(|raw| raw.get() == json)
    }
}

/// A JSON object with its members in document order, values left raw.
#[derive(Debug)]
pub(crate) struct OrderedObject<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> OrderedObject<'a> {
    /// The value of the first member called `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| *value)
    }

    /// Renders the object compactly from the given members (values byte for byte).
    pub(crate) fn render<'b>(members: impl IntoIterator<Item = (&'b str, &'b str)>) -> String {
        let mut out = String::from("{");
        for (index, (key, value)) in members.into_iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&quote(key));
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        out
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = OrderedObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<BorrowedKey<'de>>()? {
                    members.push((key.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A key that borrows from the input when it has no escapes.
struct BorrowedKey<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedKey<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = BorrowedKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedKey(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedKey(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedKey(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// How deep a usage object is summed; deeper values are copied as they are (real usage objects
/// nest two levels, and an upstream body must not be able to exhaust the stack).
const MAX_USAGE_DEPTH: usize = 4;

/// Adds the numbers of `earlier` (usage objects of earlier rounds) to the numbers of `last`,
/// keeping `last`'s member order and every other value as it is. Integers stay integers.
pub(crate) fn sum_usage(last: &RawValue, earlier: &[serde_json::Value]) -> String {
    sum_usage_at(last, earlier, 0)
}

fn sum_usage_at(last: &RawValue, earlier: &[serde_json::Value], depth: usize) -> String {
    let text = last.get();
    if depth >= MAX_USAGE_DEPTH {
        return text.to_owned();
    }
    let Ok(object) = serde_json::from_str::<OrderedObject<'_>>(text) else {
        return text.to_owned();
    };
    let members: Vec<(String, String)> = object
        .0
        .iter()
        .map(|(key, value)| {
            let nested: Vec<serde_json::Value> = earlier
                .iter()
                .filter_map(|usage| usage.get(key.as_ref()).cloned())
                .collect();
            let text = value.get();
            let summed = if text.starts_with('{') {
                sum_usage_at(value, &nested, depth + 1)
            } else if let Ok(own) = text.parse::<u64>() {
                nested
                    .iter()
                    .filter_map(serde_json::Value::as_u64)
                    .fold(own, u64::saturating_add)
                    .to_string()
            } else if let Some(own) = text.parse::<f64>().ok().filter(|own| own.is_finite()) {
                // Fractional counters (a cost in dollars, say).
                let total = nested
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .sum::<f64>()
                    + own;
                serde_json::Number::from_f64(total)
                    .map_or_else(|| text.to_owned(), |n| n.to_string())
            } else {
                text.to_owned()
            };
            (key.to_string(), summed)
        })
        .collect();
    let mut members = members;
    // Counters only earlier rounds reported (reasoning tokens of a retrieval round, say) are
    // kept too, after the last round's members.
    for usage in earlier.iter().filter_map(serde_json::Value::as_object) {
        for (key, value) in usage {
            if members.iter().any(|(known, _)| known == key) {
                continue;
            }
            let nested: Vec<serde_json::Value> = earlier
                .iter()
                .filter_map(|usage| usage.get(key).cloned())
                .collect();
            let summed = if value.is_object() {
                let Some((first, rest)) = nested.split_first() else {
                    continue;
                };
                let Ok(first) = serde_json::value::to_raw_value(first) else {
                    continue;
                };
                sum_usage_at(&first, rest, depth + 1)
            } else if nested.iter().all(serde_json::Value::is_u64) {
                let total = nested
                    .iter()
                    .filter_map(serde_json::Value::as_u64)
                    .fold(0, u64::saturating_add);
                total.to_string()
            } else if nested.iter().all(serde_json::Value::is_number) {
                let total: f64 = nested.iter().filter_map(serde_json::Value::as_f64).sum();
                match serde_json::Number::from_f64(total) {
                    Some(total) => total.to_string(),
                    None => continue,
                }
            } else {
                continue;
            };
            members.push((key.clone(), summed));
        }
    }
    OrderedObject::render(members.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_keeps_every_other_byte() {
        let body = r#"{ "a" : [1, 2.50, "\u00e9"],  "b":"x" }"#;
        #[derive(serde::Deserialize)]
        struct Doc<'a> {
            #[serde(borrow)]
            b: &'a RawValue,
            #[serde(borrow)]
            a: &'a RawValue,
        }
        let doc: Doc<'_> = serde_json::from_str(body).unwrap();
        let mut splice = Splice::default();
        splice.replace(span_of(body, doc.b).unwrap(), quote("y\n"));
        let (at, nonempty) = array_append_point(body, &span_of(body, doc.a).unwrap()).unwrap();
        assert!(nonempty);
        splice.insert(at, ",3".into());
        let out = splice.apply(body).unwrap();
        assert_eq!(out, r#"{ "a" : [1, 2.50, "\u00e9",3],  "b":"y\n" }"#);
    }

    #[test]
    fn long_strings_are_found_across_escapes() {
        // Exhaustive against the exact answer on generated bodies: never a false "no".
        let pieces: [&[u8]; 6] = [b"\"", b"\\\"", b"\\\\", b"ab", b",", b"xyz"];
        let mut seed = 7u64;
        for _ in 0..2_000 {
            let mut body = Vec::new();
            for _ in 0..40 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                body.extend_from_slice(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            for min_len in 2..12 {
                if exact_long_string(&body, min_len) {
                    assert!(
                        has_long_string(&body, min_len),
                        "{:?} {min_len}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        // Many short strings: ruled out.
        assert!(!has_long_string(
            br#"{"a":"short","b":["x","yy"],"c":"d","e":"fg","h":"i"}"#,
            20
        ));
        assert!(has_long_string(br#"{"a":"long enough"}"#, 6));
        // Escaped quotes do not end a string.
        assert!(has_long_string(br#"{"a":"[{\"k\":1},{\"k\":2}]"}"#, 20));
        assert!(has_long_string(br#"{"a":"\\\\\\\\"}"#, 8));
        assert!(has_long_string(br#"{"a":"unterminated"#, 5));
        assert!(!has_long_string(b"", 2));
        assert!(has_long_string(b"", 1));
    }

    /// The longest string literal, by a plain state machine.
    fn exact_long_string(body: &[u8], min_len: usize) -> bool {
        let (mut in_string, mut escaped, mut start) = (false, false, 0);
        for (at, &byte) in body.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_string && byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                if in_string && at - start >= min_len {
                    return true;
                }
                in_string = !in_string;
                start = at + 1;
            }
        }
        in_string && body.len() - start >= min_len
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let mut splice = Splice::default();
        splice.replace(0..4, "x".into());
        splice.replace(2..6, "y".into());
        assert!(splice.apply("0123456789").is_none());
    }

    #[test]
    fn object_and_array_append_points() {
        assert_eq!(object_append_point(" {\"a\":1} \n"), Some((7, true)));
        assert_eq!(object_append_point("{ }"), Some((2, false)));
        assert_eq!(object_append_point("[1]"), None);
        let body = "[ ]";
        assert_eq!(array_append_point(body, &(0..3)), Some((2, false)));
    }

    #[test]
    fn string_values_borrow_unless_escaped() {
        let raw: &RawValue = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(string_value(raw), Some(Cow::Borrowed("plain"))));
        let raw: &RawValue = serde_json::from_str(r#""a\nb\u00e9""#).unwrap();
        assert_eq!(string_value(raw).unwrap(), "a\nb\u{e9}");
        let raw: &RawValue = serde_json::from_str("12").unwrap();
        assert!(string_value(raw).is_none());
    }

    #[test]
    fn usage_sums_fractions_and_stops_at_depth() {
        let last: &RawValue = serde_json::from_str(r#"{"cost":0.25,"total_tokens":3}"#).unwrap();
        let earlier = vec![serde_json::json!({"cost":0.5,"total_tokens":2})];
        assert_eq!(
            sum_usage(last, &earlier),
            r#"{"cost":0.75,"total_tokens":5}"#
        );
        // A usage object nested far deeper than any real one is not walked (and cannot overflow
        // the stack).
        let deep = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
        let deep: &RawValue = serde_json::from_str(&deep).unwrap();
        let out = sum_usage(deep, &[serde_json::json!({"a": {"a": 1}})]);
        assert!(out.starts_with(r#"{"a":{"a":{"a":{"a":{"a":"#));
    }

    #[test]
    fn counters_only_earlier_rounds_had_are_kept() {
        let last: &RawValue = serde_json::from_str(r#"{"total_tokens":3}"#).unwrap();
        let earlier = vec![
            serde_json::json!({"total_tokens":2,"reasoning_tokens":7,"details":{"cached":1}}),
            serde_json::json!({"total_tokens":1,"reasoning_tokens":1,"details":{"cached":2},"label":"x"}),
        ];
        assert_eq!(
            sum_usage(last, &earlier),
            r#"{"total_tokens":6,"details":{"cached":3},"reasoning_tokens":8}"#
        );
    }

    #[test]
    fn usage_sums_integers_in_order() {
        let last: &RawValue = serde_json::from_str(
            r#"{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"details":{"cached_tokens":4},"model":"x"}"#,
        )
        .unwrap();
        let earlier = vec![
            serde_json::json!({"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"details":{"cached_tokens":1}}),
        ];
        assert_eq!(
            sum_usage(last, &earlier),
            r#"{"prompt_tokens":15,"completion_tokens":3,"total_tokens":18,"details":{"cached_tokens":5},"model":"x"}"#
        );
    }
}
