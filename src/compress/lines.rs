//! Views of line-oriented text: logs, build and test output, grep hits, listings.

use std::collections::{BTreeMap, HashMap};

use super::{
    ALARM_PREFIX_BYTES, CompressContext, KeptItem, View, alarm_level, prefix, query_words,
    render_kept, shorten,
};
use crate::search::Bm25Matches;

/// Lines kept from the start and from the end: where commands print headers and results.
const HEAD_LINES: usize = 5;
const TAIL_LINES: usize = 5;
/// Lines spent on error and warning lines, with their context lines.
const ALARM_LINE_BUDGET: usize = 40;
/// Of which at most this many for warnings.
const WARNING_LINE_BUDGET: usize = 16;
/// Lines of context after an error line: one for each, more while the budget lasts.
const ALARM_CONTEXT_LINES: usize = 3;
/// Lines whose first this many bytes agree share a template: enough to tell log statements
/// apart, and long lines (minified JSON, base64) cost no more than short ones.
pub(crate) const TEMPLATE_PREFIX_BYTES: usize = 200;
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

/// What a text is, as far as its view goes.
pub(crate) enum Shape {
    /// Log lines: most start with a time or carry a level word.
    Log,
    /// Search hits: `path:line:text`.
    Grep,
    /// Rows of columns: `ls -l`, `ps`, `dpkg -l`, `docker ps`.
    Table(super::table::Layout),
    /// Source code.
    Code,
    /// Anything else: build and test output, prose, Markdown.
    Text,
}

/// Sorts a text into a shape from its lines (and the tool call's arguments, for code).
pub(crate) fn shape_of(lines: &[&str], ctx: &CompressContext<'_>) -> Shape {
    let sample = sample_lines(lines);
    let count = sample.len().max(1);
    let grep = sample.iter().filter(|line| is_grep_line(line)).count();
    if grep * 10 >= count * 6 {
        return Shape::Grep;
    }
    let log = sample.iter().filter(|line| is_log_line(line)).count();
    if log * 2 >= count {
        return Shape::Log;
    }
    if let Some(layout) = super::table::Layout::detect(lines) {
        return Shape::Table(layout);
    }
    if super::code::is_code(&sample, ctx.query) {
        return Shape::Code;
    }
    Shape::Text
}

/// Non-empty lines, at most about 400 spread over the text, for sorting it into a shape.
fn sample_lines<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let step = (lines.len() / 400).max(1);
    lines
        .iter()
        .step_by(step)
        .filter(|line| !line.trim().is_empty())
        .copied()
        .collect()
}

/// `path:12:text` or `path-12-text` (a context line): a path without spaces, a line number.
pub(crate) fn is_grep_line(line: &str) -> bool {
    grep_parts(line).is_some() || line == "--"
}

/// (path, line number, text) of a grep hit (`path:12:text`) or context line (`path-12-text`).
/// A hit's `:12:` is looked for first: a path may itself hold `-2024-` (a dated file name).
pub(crate) fn grep_parts(line: &str) -> Option<(&str, &str, &str)> {
    grep_parts_with(line, b':').or_else(|| grep_parts_with(line, b'-'))
}

/// `grep_parts` for one separator: the path ends at the first `separator` followed by digits
/// and the same separator.
fn grep_parts_with(line: &str, separator: u8) -> Option<(&str, &str, &str)> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i < 300 {
        let byte = bytes[i];
        if byte == b' ' || byte == b'\t' {
            return None;
        }
        if byte == separator && i > 0 {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let after = i + 1 + digits;
            // A path has a letter, '/' or '.': "2024-03-01" and "2024-03-01T10" are dates.
            let date = i >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-';
            let path_like = !date
                && bytes[..i]
                    .iter()
                    .any(|b| b.is_ascii_alphabetic() || *b == b'/' || *b == b'.');
            if digits > 0 && bytes.get(after) == Some(&separator) && path_like {
                return Some((&line[..i], &line[i + 1..after], &line[after + 1..]));
            }
        }
        i += 1;
    }
    None
}

/// Words that say a line's level in a log.
const LEVEL_WORDS: &[&str] = &[
    "INFO",
    "WARN",
    "WARNING",
    "ERROR",
    "DEBUG",
    "TRACE",
    "FATAL",
    "CRITICAL",
    "NOTICE",
    "[info]",
    "[warn]",
    "[warning]",
    "[error]",
    "[debug]",
    "[notice]",
    "[crit]",
    "[INFO]",
    "[WARN]",
    "[ERROR]",
    "[DEBUG]",
];

/// Whether a word is one of LEVEL_WORDS (they start with a capital or '[').
fn is_level_word(word: &str) -> bool {
    let first = word.as_bytes().first().copied().unwrap_or(b' ');
    (first.is_ascii_uppercase() || first == b'[')
        && (4..=9).contains(&word.len())
        && LEVEL_WORDS.contains(&word)
}

/// A time (`12:34`, `12:34:56,789`) among the first four words, or a level word among the
/// first six.
fn is_log_line(line: &str) -> bool {
    for (position, word) in line.split_ascii_whitespace().take(6).enumerate() {
        if position < 4 && is_time(word) {
            return true;
        }
        let word = word.trim_end_matches(':');
        if is_level_word(word) {
            return true;
        }
    }
    false
}

/// `12:34`, `12:34:56`, `12:34:56.789]`, `2024-05-06T12:34:56Z`.
fn is_time(word: &str) -> bool {
    let word = word.rsplit('T').next().unwrap_or(word);
    let bytes = word.trim_start_matches('[').as_bytes();
    let hour = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    (1..=2).contains(&hour)
        && bytes.get(hour) == Some(&b':')
        && bytes.len() >= hour + 3
        && bytes[hour + 1..hour + 3].iter().all(u8::is_ascii_digit)
}

/// Builds the view of `lines`; the caller decides whether it saves enough.
pub(crate) fn compress(lines: &[&str], ctx: &CompressContext<'_>) -> View {
    match shape_of(lines, ctx) {
        Shape::Grep => super::grep::compress(lines, ctx),
        Shape::Table(layout) => super::table::compress(lines, &layout, ctx),
        Shape::Code => super::code::compress(lines, ctx),
        Shape::Log => text_view(lines, ctx, true),
        Shape::Text => text_view(lines, ctx, false),
    }
}

/// Lines kept, with notes, for the views of lines.
pub(crate) struct Selection {
    pub keep: Vec<bool>,
    pub notes: BTreeMap<usize, String>,
}

impl Selection {
    pub(crate) fn new(total: usize) -> Selection {
        Selection {
            keep: vec![false; total],
            notes: BTreeMap::new(),
        }
    }

    /// The first `head` and last `tail` lines.
    pub(crate) fn ends(&mut self, head: usize, tail: usize) {
        let total = self.keep.len();
        for index in (0..head.min(total)).chain(total.saturating_sub(tail)..total) {
            self.keep[index] = true;
        }
    }

    /// The lines kept, in order, cut to `max_bytes`, with "… N lines omitted …" between, then
    /// `footer` lines.
    pub(crate) fn render(
        mut self,
        lines: &[&str],
        max_bytes: usize,
        header: &str,
        footer: &[String],
    ) -> View {
        let total = lines.len();
        let kept: Vec<KeptItem> = (0..total)
            .filter(|&index| self.keep[index])
            .map(|index| KeptItem {
                index,
                text: shorten(lines[index], max_bytes),
                note: self.notes.remove(&index),
            })
            .collect();
        let mut text = String::from(header);
        render_kept(&mut text, &kept, total, "lines");
        for line in footer {
            text.push_str(line);
            text.push('\n');
        }
        View {
            text,
            unit: "lines",
            total,
            kept: kept.len(),
            lossless: false,
        }
    }
}

/// The view of a log, or of build, test or other output: start and end, errors and warnings
/// with context, summary lines, what matches the question; a log also gets counts by level
/// and its most frequent line templates, text its Markdown headings.
fn text_view(lines: &[&str], ctx: &CompressContext<'_>, log: bool) -> View {
    let total = lines.len();
    let mut selection = Selection::new(total);
    selection.ends(HEAD_LINES, TAIL_LINES);
    // The lines of a search tool are matches, often of code: an error word there ("fn
    // handle_error", "timeout/service.rs") is what was searched for, not a failure. Only
    // capitals (ERROR, FAILED) count.
    let min_alarm = if ctx.tool_name.is_some_and(is_search_tool) {
        3
    } else {
        1
    };
    keep_alarms(lines, min_alarm, &mut selection.keep, &mut selection.notes);
    // In a log a line stands alone; in other text a match is read with its neighbours.
    let window = if log { 0 } else { TEXT_WINDOW_LINES };
    for index in Bm25Matches::new(lines, ctx.query).diverse_top(QUERY_HITS) {
        let from = index.saturating_sub(window);
        let to = (index + window + 1).min(total);
        for keep in &mut selection.keep[from..to] {
            *keep = true;
        }
    }
    keep_named_entities(lines, ctx.query, &mut selection.keep);
    let summaries = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| is_summary(line))
        .take(SUMMARY_LINE_BUDGET);
    for (index, _) in summaries {
        selection.keep[index] = true;
    }
    let mut footer = Vec::new();
    if log {
        footer.extend(log_summary(lines, &selection.keep));
    } else {
        let headings = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| {
                line.starts_with('#') && line.trim_start_matches('#').starts_with(' ')
            })
            .take(HEADING_LINES);
        for (index, _) in headings {
            selection.keep[index] = true;
        }
    }
    selection.render(lines, MAX_LINE_BYTES, "", &footer)
}

/// Lines kept on each side of a line of text (not a log) that matches the question.
const TEXT_WINDOW_LINES: usize = 1;
/// Markdown headings kept in a view of text.
const HEADING_LINES: usize = 30;
/// Templates named in a log's summary, and how much of each is shown.
const SUMMARY_TEMPLATES: usize = 5;
const SUMMARY_TEMPLATE_BYTES: usize = 100;

/// "omitted lines by level: INFO 1500, WARN 300" and "most frequent omitted lines:
/// `… PacketResponder # for block blk_# terminating` ×350, …" (numbers and ids as #).
fn log_summary(lines: &[&str], keep: &[bool]) -> Vec<String> {
    let mut levels: Vec<(&str, usize)> = Vec::new();
    // (template hash, first line, count) of omitted lines; the map is only looked up.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut group_of: HashMap<u64, usize> = HashMap::new();
    for (index, line) in lines.iter().enumerate() {
        if keep[index] {
            continue;
        }
        let level = line
            .split_ascii_whitespace()
            .take(6)
            .map(|word| word.trim_end_matches(':'))
            .find(|word| is_level_word(word));
        if let Some(level) = level {
            let level = level.trim_matches(|c| c == '[' || c == ']');
            match levels
                .iter_mut()
                .find(|(l, _)| l.eq_ignore_ascii_case(level))
            {
                Some((_, count)) => *count += 1,
                None => levels.push((level, 1)),
            }
        }
        let hash = template_hash(prefix(line, TEMPLATE_PREFIX_BYTES));
        match group_of.get(&hash) {
            Some(&group) => groups[group].1 += 1,
            None => {
                group_of.insert(hash, groups.len());
                groups.push((index, 1));
            }
        }
    }
    let mut out = Vec::new();
    if !levels.is_empty() {
        levels.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        let counts: Vec<String> = levels.iter().map(|(l, c)| format!("{l} {c}")).collect();
        out.push(format!("omitted lines by level: {}", counts.join(", ")));
    }
    groups.retain(|&(_, count)| count > 1);
    groups.sort_by_key(|&(first, count)| (std::cmp::Reverse(count), first));
    if !groups.is_empty() {
        let mut template = String::new();
        let shown: Vec<String> = groups
            .iter()
            .take(SUMMARY_TEMPLATES)
            .map(|&(first, count)| {
                template_of(prefix(lines[first], TEMPLATE_PREFIX_BYTES), &mut template);
                format!(
                    "`{}` ×{count}",
                    shorten(template.trim(), SUMMARY_TEMPLATE_BYTES)
                )
            })
            .collect();
        out.push(format!(
            "most frequent omitted lines (numbers and ids as #): {}",
            shown.join(", ")
        ));
    }
    out
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
    let mut group_of_template: HashMap<u64, usize> = HashMap::new();
    // The templates of the groups, split into words, by word count: a new template that
    // differs from an earlier one in a word or two ("invalid user admin" and "invalid user
    // test") joins its group.
    let mut by_length: HashMap<usize, Vec<(usize, Vec<String>)>> = HashMap::new();
    let mut template = String::new();
    for (index, line) in lines.iter().enumerate() {
        let level = alarm_level(prefix(line, ALARM_PREFIX_BYTES), true);
        if level == 0 || level < min_level {
            continue;
        }
        let hash = template_hash(prefix(line, TEMPLATE_PREFIX_BYTES));
        if let Some(&group) = group_of_template.get(&hash) {
            groups[group].count += 1;
            continue;
        }
        template_of(prefix(line, TEMPLATE_PREFIX_BYTES), &mut template);
        let words: Vec<String> = template.split(' ').map(str::to_owned).collect();
        let similar = by_length.get(&words.len()).and_then(|candidates| {
            candidates
                .iter()
                .take(MAX_SIMILAR_CANDIDATES)
                .find(|(group, known)| {
                    groups[*group].level == level && words_differ_little(known, &words)
                })
                .map(|&(group, _)| group)
        });
        let group = similar.unwrap_or_else(|| {
            groups.push(TemplateGroup {
                first: index,
                count: 0,
                level,
            });
            by_length
                .entry(words.len())
                .or_default()
                .push((groups.len() - 1, words));
            groups.len() - 1
        });
        groups[group].count += 1;
        group_of_template.insert(hash, group);
    }
    // Errors before warnings; earlier first.
    groups.sort_by(|a, b| b.level.cmp(&a.level).then(a.first.cmp(&b.first)));

    let mut used = 0;
    let mut warnings_used = 0;
    let mut shown = 0;
    for group in &groups {
        // Errors bring the line after them (a panic's message, a traceback's first frame);
        // warnings come alone, and take at most part of the budget.
        let warning = group.level < 2;
        let context = group.first + 1;
        let with_context = !warning && context < lines.len();
        let cost = usize::from(!keep[group.first]) + usize::from(with_context && !keep[context]);
        if used + cost > ALARM_LINE_BUDGET
            || (warning && warnings_used + cost > WARNING_LINE_BUDGET)
        {
            break;
        }
        used += cost;
        if warning {
            warnings_used += cost;
        }
        shown += 1;
        keep[group.first] = true;
        if with_context {
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
    for group in groups[..shown].iter().filter(|group| group.level >= 2) {
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

/// Templates of the same length compared with a new one before it starts a group.
const MAX_SIMILAR_CANDIDATES: usize = 64;

/// Whether two templates of the same length differ in at most one word in five (at least
/// one), and agree on their first two words that are not variable.
fn words_differ_little(a: &[String], b: &[String]) -> bool {
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let constant_start_agrees = a
        .iter()
        .zip(b)
        .filter(|(x, _)| !x.starts_with('#'))
        .take(2)
        .all(|(x, y)| x == y);
    constant_start_agrees && differing <= (a.len() / 5).max(1)
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

/// The line with its variable parts replaced by '#' and whitespace runs collapsed, so lines
/// that differ only there share a template. Variable: words (runs of letters, digits, '_',
/// '.' and '-') with a digit (numbers, IPs, versions, host names like `adsl-70-242.dsl.net`),
/// long hex ids, day and month names, and the value after '=' (`rhost=…`, `user=…`).
pub(crate) fn template_of(line: &str, out: &mut String) {
    out.clear();
    template_parts(line, |part| match part {
        Part::Text(text) => out.push_str(text),
        Part::Variable => out.push('#'),
        Part::Space => out.push(' '),
    });
}

/// A hash of `template_of(line)`, without building it.
pub(crate) fn template_hash(line: &str) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |byte: u8| hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    template_parts(line, |part| match part {
        Part::Text(text) => text.bytes().for_each(&mut mix),
        Part::Variable => mix(b'#'),
        Part::Space => mix(b' '),
    });
    hash
}

/// A piece of a line's template.
enum Part<'a> {
    Text(&'a str),
    Variable,
    Space,
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')
}

/// Calls `emit` with the parts of a line's template, in order.
fn template_parts<'a>(line: &'a str, mut emit: impl FnMut(Part<'a>)) {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut after_equals = false;
    while i < bytes.len() {
        let start = i;
        let byte = bytes[i];
        if byte.is_ascii_alphanumeric() {
            while i < bytes.len() && is_word_byte(bytes[i]) {
                i += 1;
            }
            // A sentence's final dot or a trailing dash is not part of the word.
            while i > start + 1 && matches!(bytes[i - 1], b'.' | b'-') {
                i -= 1;
            }
            let word = &line[start..i];
            if after_equals || is_variable_word(word) {
                emit(Part::Variable);
            } else {
                emit(Part::Text(word));
            }
            after_equals = false;
        } else if byte.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            emit(Part::Space);
            after_equals = false;
        } else if byte.is_ascii() {
            i += 1;
            emit(Part::Text(&line[start..i]));
            after_equals = byte == b'=';
        } else {
            while i < bytes.len() && !bytes[i].is_ascii() {
                i += 1;
            }
            emit(Part::Text(&line[start..i]));
            after_equals = false;
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
pub(crate) fn is_search_tool(name: &str) -> bool {
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

    #[test]
    fn grep_hits_in_dated_file_names_are_hits() {
        assert_eq!(
            grep_parts("posts/2024-01-05-hello.md:12:text"),
            Some(("posts/2024-01-05-hello.md", "12", "text"))
        );
        assert_eq!(
            grep_parts("src/lib.rs-7-context"),
            Some(("src/lib.rs", "7", "context"))
        );
        assert_eq!(grep_parts("2024-03-01 10:00:01 INFO x"), None);
    }

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
        let as_str: Vec<&str> = lines.iter().map(String::as_str).collect();
        let view = text_view(
            &as_str,
            &ctx("Which version of pydantic is installed?"),
            false,
        );
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
        // Search hits are recognised by their shape too, without the tool's name.
        let view = view_of(&lines, "");
        assert!(!view.text.contains(&lines[100]));
        assert!(view.text.contains(&lines[200]));
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

    #[test]
    fn shapes_are_told_apart() {
        let shape = |text: &str, query: &str| {
            let lines: Vec<&str> = text.lines().collect();
            match shape_of(&lines, &ctx(query)) {
                Shape::Log => "log",
                Shape::Grep => "grep",
                Shape::Table(_) => "table",
                Shape::Code => "code",
                Shape::Text => "text",
            }
        };
        let log: String = info_log(50).join("\n");
        assert_eq!(shape(&log, ""), "log");
        let apache: String = (0..50)
            .map(|i| {
                format!(
                    "[Sun Dec 04 04:47:{:02} 2005] [notice] child {i} ok\n",
                    i % 60
                )
            })
            .collect();
        assert_eq!(shape(&apache, ""), "log");
        let grep: String = (0..50)
            .map(|i| format!("src/m{i}.rs:{i}:fn f{i}() {{}}\n"))
            .collect();
        assert_eq!(shape(&grep, ""), "grep");
        let ls: String = (0..50)
            .map(|i| format!("-rw-r--r--  1 root root {:>6} Apr 27  2026 f{i}\n", i * 100))
            .collect();
        assert_eq!(shape(&ls, ""), "table");
        let code: String = (0..50)
            .map(|i| format!("fn f{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n"))
            .collect();
        assert_eq!(shape(&code, "read src/lib.rs"), "code");
        let tests: String = (0..50)
            .map(|i| format!("test tests::case_{i} ... ok\n"))
            .collect();
        assert_eq!(shape(&tests, ""), "text");
    }

    #[test]
    fn log_summary_counts_levels_and_templates() {
        let mut lines = info_log(1000);
        for i in (10..1000).step_by(10) {
            lines[i] = format!(
                "2024-03-01 10:00:{:02} WARN cache miss for key user:{i}",
                i % 60
            );
        }
        let view = view_of(&lines, "");
        let footer: Vec<&str> = view.text.lines().rev().take(2).collect();
        assert!(
            footer[1].starts_with("omitted lines by level: INFO 8"),
            "{footer:?}"
        );
        assert!(footer[1].contains("WARN 9"), "{footer:?}");
        assert!(
            footer[0].starts_with("most frequent omitted lines (numbers and ids as #): `# #:#:# INFO request # served in # ms` ×"),
            "{footer:?}"
        );
        assert!(
            footer[0].contains("`# #:#:# WARN cache miss for key user:#` ×9"),
            "{footer:?}"
        );
    }

    #[test]
    fn template_hash_agrees_with_template() {
        let (mut a, mut b) = (String::new(), String::new());
        let one = "[Sun Dec 04 04:47:44 2005] [error] é state 6";
        let two = "[Mon Dec 05 11:02:09 2005] [error]  é state 7";
        template_of(one, &mut a);
        template_of(two, &mut b);
        assert_eq!(a, b);
        assert_eq!(template_hash(one), template_hash(two));
        assert_ne!(
            template_hash(one),
            template_hash("[Sun Dec 04 04:47:44 2005] [notice] é state 6")
        );
    }
}
