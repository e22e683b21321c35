//! Views of search results: `path:line:text` lines from grep, ripgrep and the like.
//!
//! The view keeps the first and last hits and those that match the question, verbatim (so a
//! `path:line` stays quotable), and ends with how many hits each directory and file has among
//! the ones it leaves out.

use std::collections::HashMap;

use super::lines::{Selection, grep_parts};
use super::{CompressContext, View, alarm_level, prefix};
use crate::search::Bm25Matches;

/// Hits kept from the start and from the end.
const HEAD_HITS: usize = 3;
const TAIL_HITS: usize = 2;
/// Hits kept because they best match the question.
const QUERY_HITS: usize = 10;
/// Groups named in the summary.
const SUMMARY_GROUPS: usize = 12;
/// Longer hits are cut.
const MAX_LINE_BYTES: usize = 300;

/// Builds the view of search results.
pub(crate) fn compress(lines: &[&str], ctx: &CompressContext<'_>) -> View {
    let total = lines.len();
    let mut selection = Selection::new(total);
    selection.ends(HEAD_HITS, TAIL_HITS);
    for index in Bm25Matches::new(lines, ctx.query).diverse_top(QUERY_HITS) {
        selection.keep[index] = true;
        // With the hit's context lines (`path-12-text`), when grep printed them.
        for neighbour in [index.wrapping_sub(1), index + 1] {
            if lines
                .get(neighbour)
                .is_some_and(|line| is_context_line(line))
            {
                selection.keep[neighbour] = true;
            }
        }
    }
    // Hits are code, often about errors ("fn handle_error"): only capitals count.
    for (index, line) in lines.iter().enumerate() {
        if alarm_level(prefix(line, 256), true) == 3 {
            selection.keep[index] = true;
        }
    }

    // Hits per file, in first-seen order; the map is only looked up.
    let mut files: Vec<(&str, usize, usize)> = Vec::new();
    let mut file_of: HashMap<&str, usize> = HashMap::new();
    for (index, line) in lines.iter().enumerate() {
        let Some((path, _, _)) = grep_parts(line) else {
            continue;
        };
        if is_context_line(line) {
            continue;
        }
        let slot = *file_of.entry(path).or_insert_with(|| {
            files.push((path, 0, 0));
            files.len() - 1
        });
        files[slot].1 += 1;
        files[slot].2 += usize::from(!selection.keep[index]);
    }
    let hits: usize = files.iter().map(|f| f.1).sum();
    let header = format!("{hits} search hits in {} files\n", files.len());
    let footer = summary(&files);
    selection.render(lines, MAX_LINE_BYTES, &header, &footer)
}

/// `path-12-text`: a context line, not a hit.
fn is_context_line(line: &str) -> bool {
    grep_parts(line).is_some_and(|(path, number, _)| {
        line.as_bytes().get(path.len()) == Some(&b'-') && !number.is_empty()
    })
}

/// "omitted hits by directory: tower-http-0.7.1/ 40, axum-0.8.9/ 30; files with the most:
/// src/routing/mod.rs 5, …".
fn summary(files: &[(&str, usize, usize)]) -> Vec<String> {
    let omitted: usize = files.iter().map(|f| f.2).sum();
    if omitted == 0 {
        return Vec::new();
    }
    // By the first directory of the path, when there are several.
    let mut directories: Vec<(&str, usize)> = Vec::new();
    for &(path, _, count) in files {
        let directory = path.split_inclusive('/').next().unwrap_or(path);
        match directories.iter_mut().find(|(d, _)| *d == directory) {
            Some((_, total)) => *total += count,
            None => directories.push((directory, count)),
        }
    }
    directories.retain(|&(_, count)| count > 0);
    let mut parts = Vec::new();
    if directories.len() > 1 && directories.len() < files.len() {
        directories.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        let shown: Vec<String> = directories
            .iter()
            .take(SUMMARY_GROUPS)
            .map(|(d, c)| format!("{d} {c}"))
            .collect();
        let more = directories.len().saturating_sub(SUMMARY_GROUPS);
        let mut part = format!("by directory: {}", shown.join(", "));
        if more > 0 {
            part.push_str(&format!(", and {more} more"));
        }
        parts.push(part);
    }
    let mut busiest: Vec<&(&str, usize, usize)> = files.iter().filter(|f| f.2 > 1).collect();
    busiest.sort_by_key(|f| std::cmp::Reverse(f.2));
    if !busiest.is_empty() {
        let shown: Vec<String> = busiest
            .iter()
            .take(SUMMARY_GROUPS)
            .map(|(path, _, count)| format!("{path} {count}"))
            .collect();
        parts.push(format!("files with several: {}", shown.join(", ")));
    }
    let mut line = format!("omitted {omitted} hits");
    if !parts.is_empty() {
        line.push_str("; ");
        line.push_str(&parts.join("; "));
    }
    vec![line]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress as compress_output;

    fn hits() -> String {
        let mut out = String::new();
        for krate in [
            "tower-http-0.5.2",
            "tower-http-0.6.11",
            "tower-http-0.7.1",
            "axum-0.8.9",
        ] {
            for (i, module) in [
                "cors",
                "trace",
                "timeout",
                "compression",
                "limit",
                "auth",
                "fs",
                "catch_panic",
                "follow_redirect",
                "request_id",
            ]
            .iter()
            .enumerate()
            {
                let line = 100 + i * 37;
                out.push_str(&format!(
                    "{krate}/src/{module}/mod.rs:{line}:impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for {}<S>\n",
                    module.to_uppercase()
                ));
                out.push_str(&format!(
                    "{krate}/src/{module}/service.rs:{}:    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {{\n",
                    line + 20
                ));
            }
        }
        out.push_str("axum-0.8.9/src/error_handling/mod.rs:115:impl<S, F> Service<Request<B>> for HandleError<S, F>\n");
        out
    }

    #[test]
    fn keeps_the_asked_hit_verbatim_and_counts_the_rest() {
        let original = hits();
        let ctx = CompressContext {
            query: "Where does tower-http 0.7.1 implement Service for Cors?\ngrep -rn 'impl<.*> Service<' .",
            tool_name: Some("grep"),
        };
        let view = compress_output(&original, &ctx).expect("a view");
        assert!(
            view.text.starts_with("81 search hits in 81 files\n"),
            "{}",
            view.text
        );
        assert!(
            view.text
                .contains("tower-http-0.7.1/src/cors/mod.rs:100:impl<S, ReqBody, ResBody>"),
            "{}",
            view.text
        );
        // An error word in code is what was searched for, not a failure.
        assert!(!view.text.contains("HandleError<S, F>\n… "));
        let summary = view.text.lines().last().expect("summary");
        assert!(summary.starts_with("omitted "), "{summary}");
        assert!(summary.contains("by directory: "), "{summary}");
        assert!(summary.contains("tower-http-0.5.2/ "), "{summary}");
    }

    #[test]
    fn context_lines_are_told_apart() {
        assert!(is_context_line("src/a-b/lib.rs-12-    let x = 1;"));
        assert!(!is_context_line("src/a-b/lib.rs:12:    let x = 1;"));
        assert_eq!(
            grep_parts("src/lib.rs:126:43: x"),
            Some(("src/lib.rs", "126", "43: x"))
        );
        assert_eq!(grep_parts("2024-03-01 10:00:00 INFO x"), None);
        assert_eq!(grep_parts("2026-11-23T10:00:00Z INFO x"), None);
    }
}
