//! The marker that ends every view: `[120 items compressed to 12. Retrieve more: hash=<24 hex>]`.

use crate::id::EntryId;

/// Text that every marker contains; an output holding it is never compressed again.
pub(crate) const MARKER_TAG: &str = "Retrieve more: hash=";

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
}
