//! Views of line-oriented text: logs, build and test output, grep hits, listings.

use std::collections::{BTreeMap, HashMap};

use super::{
    ALARM_PREFIX_BYTES, CompressContext, KeptItem, View, alarm_level, prefix, query_words,
    render_kept, shorten,
};
use crate::search::{Bm25Matches, terms};

/// Lines kept from the start and from the end: where commands print headers and results.
const HEAD_LINES: usize = 5;
const TAIL_LINES: usize = 5;
/// Lines spent on error and warning lines, with their context lines.
const ALARM_LINE_BUDGET: usize = 40;
/// Lines of context after an error line: one for each, more while the budget lasts.
const ALARM_CONTEXT_LINES: usize = 3;
/// Lines whose first this many bytes agree share a template: enough to tell log statements
/// apart, and long lines (minified JSON, base64) cost no more than short ones.
const TEMPLATE_PREFIX_BYTES: usize = 200;
/// Lines kept because they best match the conversation's question.
const QUERY_HITS: usize = 8;
/// Lines of pretty-printed JSON that state a word of the question as a value
/// (`"name": "pydantic",`) are kept with the scalar fields of the same object…
const NAMED_ENTITIES: usize = 2;
/// …at most this many fields on each side of the naming line.
const ENTITY_FIELDS_EACH_SIDE: usize = 12;
/// Longer field lines are prose (a README in a string), not properties.
const ENTITY_FIELD_MAX_BYTES: usize = 200;
/// Lines kept because they look like a test or build summary.
const SUMMARY_LINE_BUDGET: usize = 12;
/// Longer kept lines are cut.
const MAX_LINE_BYTES: usize = 400;
/// How test runners and build tools start their summary lines.
const SUMMARY_PREFIXES: &[&str] = &[
    "test result:",
    "error:",
    "error[",
    "warning:",
    "FAILED",
    "FAIL ",
    "failures:",
    "Finished",
    "running ",
    "Running ",
    "Ran ",
    "Summary",
    "Total",
    "BUILD ",
];

/// Builds the view of `lines`; the caller decides whether it saves enough.
pub(crate) fn compress(lines: &[&str], ctx: &CompressContext<'_>) -> View {
    let total = lines.len();
    let mut keep = vec![false; total];
    let mut notes: BTreeMap<usize, String> = BTreeMap::new();

    for index in (0..HEAD_LINES.min(total)).chain(total.saturating_sub(TAIL_LINES)..total) {
        keep[index] = true;
    }
    // The lines of a search tool are matches, often of code: an error word there ("fn
    // handle_error", "timeout/service.rs") is what was searched for, not a failure. Only
    // capitals (ERROR, FAILED) count.
    let min_alarm = if ctx.tool_name.is_some_and(is_search_tool) {
        3
    } else {
        1
    };
    keep_alarms(lines, min_alarm, &mut keep, &mut notes);
    for index in Bm25Matches::new(lines, &terms(ctx.query)).diverse_top(QUERY_HITS) {
        keep[index] = true;
    }
    keep_named_entities(lines, ctx.query, &mut keep);
    let summaries = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| is_summary(line))
        .take(SUMMARY_LINE_BUDGET);
    for (index, _) in summaries {
        keep[index] = true;
    }

    let kept: Vec<KeptItem> = (0..total)
        .filter(|&index| keep[index])
        .map(|index| KeptItem {
            index,
            text: shorten(lines[index], MAX_LINE_BYTES),
            note: notes.remove(&index),
        })
        .collect();
    let mut text = String::new();
    render_kept(&mut text, &kept, total, "lines");
    View {
        text,
        unit: "lines",
        total,
        kept: kept.len(),
        lossless: false,
    }
}

/// Lines of one template: where it first appears, how often, how alarming.
struct TemplateGroup {
    first: usize,
    count: usize,
    level: u8,
}

/// Keeps the first line of each distinct error (then warning) template plus the line after
/// it, within the budget, noting how many similar lines each stands for.
fn keep_alarms(
    lines: &[&str],
    min_level: u8,
    keep: &mut [bool],
    notes: &mut BTreeMap<usize, String>,
) {
    let mut groups: Vec<TemplateGroup> = Vec::new();
    // Only looked up, never iterated, so its order cannot reach the view.
    let mut group_of_template: HashMap<String, usize> = HashMap::new();
    let mut template = String::new();
    for (index, line) in lines.iter().enumerate() {
        let level = alarm_level(prefix(line, ALARM_PREFIX_BYTES), true);
        if level == 0 || level < min_level {
            continue;
        }
        template_of(prefix(line, TEMPLATE_PREFIX_BYTES), &mut template);
        match group_of_template.get(template.as_str()) {
            Some(&group) => groups[group].count += 1,
            None => {
                group_of_template.insert(template.clone(), groups.len());
                groups.push(TemplateGroup {
                    first: index,
                    count: 1,
                    level,
                });
            }
        }
    }
    // Errors before warnings; earlier first.
    groups.sort_by(|a, b| b.level.cmp(&a.level).then(a.first.cmp(&b.first)));

    let mut used = 0;
    let mut shown = 0;
    for group in &groups {
        let context = group.first + 1;
        let cost =
            usize::from(!keep[group.first]) + usize::from(context < lines.len() && !keep[context]);
        if used + cost > ALARM_LINE_BUDGET {
            break;
        }
        used += cost;
        shown += 1;
        keep[group.first] = true;
        if context < lines.len() {
            keep[context] = true;
        }
        match group.count {
            1 => {}
            2 => {
                notes.insert(group.first, "  (×1 similar line)".to_owned());
            }
            count => {
                notes.insert(group.first, format!("  (×{} similar lines)", count - 1));
            }
        }
    }
    // Leftover budget: more context after the shown errors (a panic's message, a traceback's
    // frames), most alarming first, up to the next kept line.
    for group in &groups[..shown] {
        let context = group.first + 2..(group.first + 1 + ALARM_CONTEXT_LINES).min(lines.len());
        for index in context {
            if keep[index] || used == ALARM_LINE_BUDGET {
                break;
            }
            keep[index] = true;
            used += 1;
        }
    }
}

/// Keeps the lines of pretty-printed JSON whose string value is a whole word of the query
/// (rare values first), with the scalar fields around them in the same object: for "which
/// version of pydantic", the `"name": "pydantic"` line brings its `"version"` and
/// `"requires_python"` siblings.
fn keep_named_entities(lines: &[&str], query: &str, keep: &mut [bool]) {
    let words = query_words(query);
    if words.is_empty() {
        return;
    }
    // (line, word) for each line whose value is the word.
    let mut naming: Vec<(usize, usize)> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(value) = json_field_string_value(line) else {
            continue;
        };
        if let Some(w) = words
            .iter()
            .position(|word| value.eq_ignore_ascii_case(word))
        {
            naming.push((index, w));
        }
    }
    let mut lines_naming = vec![0usize; words.len()];
    for &(_, w) in &naming {
        lines_naming[w] += 1;
    }
    // Rarest value first; a value on many lines names no single entity.
    naming.retain(|&(_, w)| lines_naming[w] <= NAMED_ENTITIES);
    naming.sort_by_key(|&(index, w)| (lines_naming[w], index));
    for &(index, _) in naming.iter().take(NAMED_ENTITIES) {
        keep[index] = true;
        let indent = indentation(lines[index]);
        let is_sibling = |line: &str| indentation(line) == indent && is_scalar_field(line);
        // Walk out from the naming line within its object: deeper lines are nested values,
        // a shallower one is the object's end.
        let above = (0..index)
            .rev()
            .take_while(|&i| indentation(lines[i]) >= indent);
        for i in above
            .filter(|&i| is_sibling(lines[i]))
            .take(ENTITY_FIELDS_EACH_SIDE)
        {
            keep[i] = true;
        }
        let below = (index + 1..lines.len()).take_while(|&i| indentation(lines[i]) >= indent);
        for i in below
            .filter(|&i| is_sibling(lines[i]))
            .take(ENTITY_FIELDS_EACH_SIDE)
        {
            keep[i] = true;
        }
    }
}

/// The contents of the string value of a `"key": "value",` line.
fn json_field_string_value(line: &str) -> Option<&str> {
    let field = line.trim().strip_suffix(',').unwrap_or(line.trim());
    let rest = field.strip_prefix('"')?;
    let (_, value) = rest.split_once("\": \"")?;
    let value = value.strip_suffix('"')?;
    (!value.contains('"')).then_some(value)
}

/// A `"key": value` line whose value is a scalar, short enough to be a property.
fn is_scalar_field(line: &str) -> bool {
    let field = line.trim();
    field.len() <= ENTITY_FIELD_MAX_BYTES
        && field.starts_with('"')
        && field.contains("\": ")
        && !field.ends_with('[')
        && !field.ends_with('{')
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The line with its variable parts (numbers, hex ids, day and month names) replaced by '#'
/// and whitespace runs collapsed, so lines that differ only there share a template.
fn template_of(line: &str, out: &mut String) {
    out.clear();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let byte = bytes[i];
        if byte.is_ascii_alphanumeric() {
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let word = &line[start..i];
            if is_variable_word(word) {
                out.push('#');
            } else {
                out.push_str(word);
            }
        } else if byte.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(' ');
        } else if byte.is_ascii() {
            i += 1;
            out.push(char::from(byte));
        } else {
            while i < bytes.len() && !bytes[i].is_ascii() {
                i += 1;
            }
            out.push_str(&line[start..i]);
        }
    }
}

fn is_variable_word(word: &str) -> bool {
    const CALENDAR: &[&str] = &[
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    word.bytes().any(|b| b.is_ascii_digit())
        || (word.len() >= 8 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        || CALENDAR.contains(&word)
}

/// Tools whose output lines are search matches or listings rather than a log.
fn is_search_tool(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "rg" | "ripgrep" | "find" | "glob" | "ls")
        || name.contains("grep")
        || name.contains("search")
}

fn is_summary(line: &str) -> bool {
    let line = line.trim_start();
    SUMMARY_PREFIXES
        .iter()
        .any(|prefix| line.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(query: &str) -> CompressContext<'_> {
        CompressContext {
            query,
            tool_name: None,
        }
    }

    fn info_log(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                format!(
                    "2024-03-01 10:{:02}:{:02} INFO request {i} served in {} ms",
                    i / 60 % 60,
                    i % 60,
                    i % 97
                )
            })
            .collect()
    }

    fn view_of(lines: &[String], query: &str) -> View {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        compress(&lines, &ctx(query))
    }

    #[test]
    fn error_line_among_info_lines_is_kept() {
        let mut lines = info_log(2000);
        lines[1234] = "2024-03-01 10:20:34 ERROR database connection refused".to_owned();
        let view = view_of(&lines, "");
        assert!(view.text.contains("ERROR database connection refused"));
        // With the line after it as context.
        assert!(view.text.contains(&lines[1235]));
        assert!(!view.text.contains(&lines[1000]));
        assert_eq!(view.total, 2000);
        assert!(view.kept < 40, "{}", view.kept);
        assert!(view.text.contains("… 1229 lines omitted …"));
    }

    #[test]
    fn query_match_is_kept() {
        let mut lines = info_log(2000);
        lines[1234] = "2024-03-01 10:20:34 INFO user alice logged in from 10.1.2.3".to_owned();
        let view = view_of(&lines, "when did alice log in?\ncat app.log");
        assert!(view.text.contains(&lines[1234]));
    }

    #[test]
    fn repeated_errors_show_once_with_count() {
        let mut lines = info_log(1000);
        for i in (100..900).step_by(20) {
            lines[i] = format!(
                "2024-03-01 10:{:02}:00 ERROR upstream 10.0.0.{i} timed out",
                i % 60
            );
        }
        let view = view_of(&lines, "");
        assert!(view.text.contains("ERROR upstream 10.0.0.100 timed out"));
        assert!(!view.text.contains("10.0.0.120 timed out"));
        assert!(view.text.contains("  (×39 similar lines)"));
    }

    #[test]
    fn distinct_errors_fit_the_budget() {
        let mut lines = info_log(3000);
        for i in 0..100 {
            lines[20 + i * 25] = format!(
                "ERROR kind{} broke",
                char::from(b'a' + (i % 26) as u8)
                    .to_string()
                    .repeat(i / 26 + 1)
            );
        }
        let view = view_of(&lines, "");
        assert!(view.kept <= HEAD_LINES + TAIL_LINES + ALARM_LINE_BUDGET);
        assert!(view.text.contains("ERROR kinda broke"));
    }

    #[test]
    fn warnings_come_after_errors() {
        let mut lines = info_log(2000);
        for i in 0..60 {
            lines[10 + i * 20] = format!(
                "WARN slow disk sd{}",
                char::from(b'a' + (i % 26) as u8)
                    .to_string()
                    .repeat(i / 26 + 1)
            );
        }
        lines[1900] = "FATAL out of memory".to_owned();
        let view = view_of(&lines, "");
        assert!(view.text.contains("FATAL out of memory"));
        assert!(view.text.contains("WARN slow disk sda"));
    }

    #[test]
    fn named_json_entity_brings_its_fields() {
        let mut lines: Vec<String> = vec!["{".into(), "  \"installed\": [".into()];
        for i in 0..60 {
            let name = if i == 41 {
                "pydantic".to_owned()
            } else {
                format!("pkg{i}")
            };
            lines.extend([
                "    {".to_owned(),
                format!("      \"name\": \"{name}\","),
                format!("      \"version\": \"1.{i}.0\","),
                format!("      \"description\": \"{}\",", "words ".repeat(60)),
                "      \"classifier\": [".to_owned(),
                "        \"Programming Language :: Python\"".to_owned(),
                "      ],".to_owned(),
                format!("      \"requires_python\": \">=3.{}\"", i % 13),
                "    },".to_owned(),
            ]);
        }
        lines.extend(["  ]".to_owned(), "}".to_owned()]);
        let view = view_of(&lines, "Which version of pydantic is installed?");
        assert!(view.text.contains("\"name\": \"pydantic\","));
        assert!(view.text.contains("\"version\": \"1.41.0\","));
        assert!(view.text.contains("\"requires_python\": \">=3.2\""));
        assert!(!view.text.contains("\"version\": \"1.40.0\","));
        assert_eq!(json_field_string_value("  \"a\": \"b\","), Some("b"));
        assert_eq!(json_field_string_value("  \"a\": [\"b\"],"), None);
    }

    #[test]
    fn search_tools_report_no_lower_case_alarms() {
        let lines: Vec<String> = (0..300)
            .map(|i| match i {
                100 => {
                    "src/error_handling/mod.rs:115: fn handle(err: Error) -> Result<()>".to_owned()
                }
                200 => "src/log.rs:9: ERROR is the highest level".to_owned(),
                _ => format!("src/file{i}.rs:{i}: impl Service for S{i}"),
            })
            .collect();
        let as_str: Vec<&str> = lines.iter().map(String::as_str).collect();
        let grep = CompressContext {
            query: "",
            tool_name: Some("Grep"),
        };
        let view = compress(&as_str, &grep);
        assert!(!view.text.contains(&lines[100]));
        assert!(view.text.contains(&lines[200]));
        let view = view_of(&lines, "");
        assert!(view.text.contains(&lines[100]));
    }

    #[test]
    fn test_summary_lines_are_kept() {
        let mut lines: Vec<String> = vec!["running 300 tests".to_owned()];
        lines.extend((0..300).map(|i| format!("test tests::case_{i:03} ... ok")));
        lines.push(String::new());
        lines.push("test result: ok. 300 passed; 0 failed; 0 ignored".to_owned());
        lines.extend((0..6).map(|i| format!("   Doc-tests line {i}")));
        let view = view_of(&lines, "");
        assert!(view.text.contains("test result: ok. 300 passed"));
        assert!(view.text.starts_with("running 300 tests\n"));
    }

    #[test]
    fn long_lines_are_cut() {
        let mut lines = info_log(100);
        lines[0] = "x".repeat(5000);
        let view = view_of(&lines, "");
        assert!(
            view.text
                .starts_with(&format!("{}…\n", "x".repeat(MAX_LINE_BYTES)))
        );
    }

    #[test]
    fn templates_ignore_numbers_ids_and_dates() {
        let mut first = String::new();
        let mut second = String::new();
        template_of(
            "[Sun Dec 04 04:47:44 2005] [error] state 6 id deadbeef01",
            &mut first,
        );
        template_of(
            "[Mon Dec 05 11:02:09 2005] [error]  state 7 id 0badc0ffee",
            &mut second,
        );
        assert_eq!(first, second);
        assert_eq!(first, "[# # # #:#:# #] [error] state # id #");
    }
}
