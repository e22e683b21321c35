//! The marker that ends every view: `[120 items compressed to 12. Retrieve more: hash=<24 hex>]`.

use crate::id::{EntryId, ID_HEX_LEN};

/// Text that every marker contains, just before its id.
pub(crate) const MARKER_TAG: &str = "Retrieve more: hash=";

/// Longest `<total> <unit> compressed to <kept>. ` part a marker can have: two counts, a unit
/// word and the fixed words. Keeps the parse of a hostile output cheap.
const MAX_MARKER_HEAD_BYTES: usize = 96;

/// The id of the marker that ends `text`, when `text` ends exactly as a view does: a line
/// `[<total> <unit> compressed to <kept>. Retrieve more: hash=<24 lowercase hex>]`. Only the
/// shape is checked here; whether the layer issued the id is the caller's question (a marker
/// anyone can type proves nothing).
pub(crate) fn trailing_marker(text: &str) -> Option<EntryId> {
    let rest = text.strip_suffix(']')?;
    let hex_at = rest.len().checked_sub(ID_HEX_LEN)?;
    let (rest, hex) = rest.split_at_checked(hex_at)?;
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let rest = rest.strip_suffix(MARKER_TAG)?;
    let open = rest.rfind('[')?;
    let head = &rest[open + 1..];
    if head.len() > MAX_MARKER_HEAD_BYTES || !(open == 0 || rest[..open].ends_with('\n')) {
        return None;
    }
    // `<total> <unit> compressed to <kept>. `
    let (total, head) = head.split_once(' ')?;
    let (unit, head) = head.split_once(" compressed to ")?;
    let kept = head.strip_suffix(". ")?;
    let is_count = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_unit = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    (is_count(total) && is_unit(unit) && is_count(kept)).then(|| EntryId::parse(hex))?
}

/// Renders the marker for a view that shows `kept` of `total` units of an original.
pub(crate) fn render(total: usize, unit: &str, kept: usize, id: &EntryId) -> String {
    format!("[{total} {unit} compressed to {kept}. {MARKER_TAG}{id}]")
}

/// The view as the model sees it: the view text, a newline, the marker.
pub(crate) fn view_with_marker(
    view: &str,
    total: usize,
    unit: &str,
    kept: usize,
    id: &EntryId,
) -> String {
    let marker = render(total, unit, kept, id);
    let mut out = String::with_capacity(view.len() + 1 + marker.len());
    out.push_str(view);
    if !view.is_empty() && !view.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&marker);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_has_the_documented_shape() {
        let id = EntryId::parse("0123456789abcdef01234567").unwrap();
        assert_eq!(
            render(120, "items", 12, &id),
            "[120 items compressed to 12. Retrieve more: hash=0123456789abcdef01234567]"
        );
        assert_eq!(
            view_with_marker("a\nb", 9, "lines", 2, &id),
            "a\nb\n[9 lines compressed to 2. Retrieve more: hash=0123456789abcdef01234567]"
        );
    }

    #[test]
    fn only_a_view_shaped_ending_is_a_trailing_marker() {
        let id = EntryId::parse("0123456789abcdef01234567").unwrap();
        for unit in ["lines", "items", "rows"] {
            let view = view_with_marker("head\ntail", 900, unit, 20, &id);
            assert_eq!(trailing_marker(&view), Some(id.clone()), "{view}");
        }
        assert_eq!(
            trailing_marker(&render(5, "items", 1, &id)),
            Some(id.clone())
        );
        let hex = id.as_str();
        for not_a_view in [
            format!("[5 items compressed to 1. Retrieve more: hash={hex}]\n"),
            format!("[5 items compressed to 1. Retrieve more: hash={hex}] "),
            format!("text [5 items compressed to 1. Retrieve more: hash={hex}]"),
            format!(
                "[5 items compressed to 1. Retrieve more: hash={}]",
                hex.to_uppercase()
            ),
            format!("[5 items compressed to 1. Retrieve more: hash={hex}0]"),
            format!(
                "[5 items compressed to 1. Retrieve more: hash={}]",
                &hex[1..]
            ),
            format!("[x items compressed to 1. Retrieve more: hash={hex}]"),
            format!("[5 items compressed to . Retrieve more: hash={hex}]"),
            format!("[5 it ems compressed to 1. Retrieve more: hash={hex}]"),
            format!("[5 items compressed to 1.Retrieve more: hash={hex}]"),
            format!("Retrieve more: hash={hex}]"),
            format!(
                "[{} items compressed to 1. Retrieve more: hash={hex}]",
                "9".repeat(100)
            ),
            "]".to_owned(),
            String::new(),
            "é".repeat(30) + "]",
        ] {
            assert_eq!(trailing_marker(&not_a_view), None, "{not_a_view}");
        }
    }
}
