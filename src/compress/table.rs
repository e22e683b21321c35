//! Views of tables in text: `ls -l`, `ps aux`, `dpkg -l`, `kubectl get`, tab-separated rows.
//!
//! The view keeps the header, the first and last rows, rows that match the question, rows
//! with the largest values of numeric columns and with rare values of categorical ones, and
//! ends with counts and ranges per column for the rows it leaves out.

use super::lines::Selection;
use super::{CompressContext, View, alarm_level, prefix, query_words, shorten};
use crate::search::Bm25Matches;

/// Rows kept from the start (after the header) and from the end.
const HEAD_ROWS: usize = 3;
const TAIL_ROWS: usize = 2;
/// Rows kept because they best match the question.
const QUERY_HITS: usize = 8;
/// Rows kept because a cell of theirs is a word of the question.
const NAMED_ROWS: usize = 3;
/// Rows kept for the largest values of numeric columns, and for rare values.
const TOP_ROWS: usize = 6;
const RARE_ROWS: usize = 6;
/// A column is categorical with at most this many distinct values.
const MAX_CATEGORIES: usize = 8;
/// Columns in the summary of omitted rows.
const SUMMARY_COLUMNS: usize = 6;
/// Longer kept lines are cut.
const MAX_LINE_BYTES: usize = 300;
/// Lines searched for a header.
const HEADER_SEARCH_LINES: usize = 12;
/// Share of rows (in tenths) that must have all columns.
const FULL_ROWS_TENTHS: usize = 8;
/// Fewer rows make no table worth summarising.
const MIN_ROWS: usize = 8;

/// How a text splits into rows and columns.
pub(crate) struct Layout {
    /// The header line, if any.
    header: Option<usize>,
    /// The first row (after the header and a separator line).
    first_row: usize,
    /// Columns: fields beyond the last column belong to it.
    columns: usize,
    /// Column names: the header's, or known ones (`ls -l`), or "column N".
    names: Vec<String>,
    /// Cells are separated by tabs rather than runs of spaces.
    tabs: bool,
    /// For fixed-width columns, the byte offsets where they start; empty otherwise.
    starts: Vec<usize>,
}

impl Layout {
    /// The layout of a table, when the text is one: a header of at least three words
    /// (mostly capitalised, or followed by a `---` line) over rows that have at least as many
    /// fields; or, without a header, rows of at least three fields of which two columns are
    /// numbers; or tab-separated rows with a constant number of tabs.
    pub(crate) fn detect(lines: &[&str]) -> Option<Layout> {
        Layout::tab_separated(lines)
            .or_else(|| Layout::with_header(lines))
            .or_else(|| Layout::numeric(lines))
    }

    fn tab_separated(lines: &[&str]) -> Option<Layout> {
        let rows: Vec<&str> = lines.iter().copied().filter(|l| !l.is_empty()).collect();
        let tabs = rows.first()?.matches('\t').count();
        let same = rows
            .iter()
            .filter(|row| row.matches('\t').count() == tabs)
            .count();
        if tabs < 1 || rows.len() < MIN_ROWS || same * 10 < rows.len() * 9 {
            return None;
        }
        let first: Vec<&str> = rows[0].split('\t').collect();
        let header = first.iter().all(|cell| parse_number(cell).is_none());
        let names = if header {
            first.iter().map(|cell| cell.trim().to_owned()).collect()
        } else {
            (1..=tabs + 1).map(|c| format!("column {c}")).collect()
        };
        let header_line = lines.iter().position(|l| !l.is_empty());
        Some(Layout {
            header: header_line.filter(|_| header),
            first_row: header_line.map_or(0, |h| h + usize::from(header)),
            columns: tabs + 1,
            names,
            tabs: true,
            starts: Vec::new(),
        })
    }

    fn with_header(lines: &[&str]) -> Option<Layout> {
        for (h, line) in lines.iter().enumerate().take(HEADER_SEARCH_LINES) {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            // Words, and maybe punctuation (dpkg's "||/"), but no numbers.
            let words: Vec<&str> = fields
                .iter()
                .copied()
                .filter(|f| f.bytes().any(|b| b.is_ascii_alphabetic()))
                .collect();
            let punctuation = fields.iter().all(|f| {
                f.bytes().any(|b| b.is_ascii_alphabetic())
                    || f.bytes().all(|b| b.is_ascii_punctuation())
            });
            if fields.len() < 3 || words.len() < 3 || !punctuation {
                continue;
            }
            let separator = lines.get(h + 1).is_some_and(|next| is_separator(next));
            let capitalised = words
                .iter()
                .filter(|f| {
                    f.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                        .starts_with(|c: char| c.is_ascii_uppercase())
                })
                .count();
            if !separator && capitalised * 10 < words.len() * 8 {
                continue;
            }
            let first_row = h + 1 + usize::from(separator);
            let rows = &lines[first_row.min(lines.len())..];
            let non_empty = rows.iter().filter(|r| !r.trim().is_empty()).count();
            // Names of several words ("CONTAINER ID", "LAST SEEN"): the columns are where
            // the header's names start, and rows are cut there.
            let starts = wide_column_starts(line);
            let fixed = !separator
                && starts.len() >= 3
                && starts.len() < fields.len()
                && left_aligned(rows, &starts);
            let full = rows
                .iter()
                .filter(|r| {
                    if fixed {
                        r.chars().count() > starts[starts.len() - 1]
                    } else {
                        r.split_ascii_whitespace().nth(fields.len() - 1).is_some()
                    }
                })
                .count();
            if non_empty < MIN_ROWS || full * 10 < non_empty * FULL_ROWS_TENTHS {
                continue;
            }
            // A line of the same shape as the rows is not a header.
            let header_like_rows = rows
                .iter()
                .take(20)
                .filter(|r| {
                    r.split_ascii_whitespace()
                        .all(|f| f.bytes().any(|b| b.is_ascii_alphabetic()))
                })
                .count();
            if !separator && header_like_rows * 10 >= rows.len().min(20) * 9 {
                continue;
            }
            if fixed {
                let names = starts
                    .iter()
                    .enumerate()
                    .map(|(c, &start)| {
                        let at = |position: usize| byte_at(line, position).unwrap_or(line.len());
                        let (from, to) =
                            (at(start), starts.get(c + 1).map_or(line.len(), |&e| at(e)));
                        line[from..to.max(from)].trim().to_owned()
                    })
                    .collect();
                return Some(Layout {
                    header: Some(h),
                    first_row,
                    columns: starts.len(),
                    names,
                    tabs: false,
                    starts,
                });
            }
            return Some(Layout {
                header: Some(h),
                first_row,
                columns: fields.len(),
                names: fields.iter().map(|f| (*f).to_owned()).collect(),
                tabs: false,
                starts: Vec::new(),
            });
        }
        None
    }

    fn numeric(lines: &[&str]) -> Option<Layout> {
        let rows: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if rows.len() < MIN_ROWS {
            return None;
        }
        let mut counts: Vec<usize> = rows
            .iter()
            .map(|r| r.split_ascii_whitespace().take(40).count())
            .collect();
        counts.sort_unstable();
        // The most fields that at least 80% of the rows have.
        let columns = counts[rows.len() * (10 - FULL_ROWS_TENTHS) / 10];
        if columns < 3 {
            return None;
        }
        let mut numbers = vec![0usize; columns - 1];
        for row in &rows {
            for (c, field) in row.split_ascii_whitespace().take(columns - 1).enumerate() {
                numbers[c] += usize::from(parse_number(field).is_some());
            }
        }
        let numeric_columns = numbers
            .iter()
            .filter(|&&n| n * 10 >= rows.len() * 9)
            .count();
        if numeric_columns < 2 {
            return None;
        }
        let long_listing = rows
            .iter()
            .filter(|r| r.split_ascii_whitespace().next().is_some_and(is_file_mode))
            .count()
            * 10
            >= rows.len() * 9;
        let names = if long_listing && columns >= 9 {
            [
                "mode", "links", "owner", "group", "size", "month", "day", "time", "name",
            ]
            .iter()
            .map(|n| (*n).to_owned())
            .chain((10..=columns).map(|c| format!("column {c}")))
            .collect()
        } else {
            (1..=columns).map(|c| format!("column {c}")).collect()
        };
        Some(Layout {
            header: None,
            first_row: 0,
            columns: if long_listing {
                columns.min(9)
            } else {
                columns
            },
            names,
            tabs: false,
            starts: Vec::new(),
        })
    }

    /// The cells of a row: the first `columns - 1` fields, then the rest of the line.
    fn cells<'a>(&self, line: &'a str) -> Vec<&'a str> {
        if self.tabs {
            return line.split('\t').map(str::trim).collect();
        }
        if !self.starts.is_empty() {
            let at = |position: usize| byte_at(line, position).unwrap_or(line.len());
            return self
                .starts
                .iter()
                .enumerate()
                .map(|(c, &start)| {
                    let from = at(start);
                    let to = self.starts.get(c + 1).map_or(line.len(), |&e| at(e));
                    line[from..to.max(from)].trim()
                })
                .collect();
        }
        let mut cells = Vec::with_capacity(self.columns);
        let mut rest = line.trim_start();
        while cells.len() + 1 < self.columns {
            let Some(end) = rest.find(|c: char| c.is_ascii_whitespace()) else {
                break;
            };
            cells.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        if !rest.is_empty() {
            cells.push(rest.trim_end());
        }
        cells
    }
}

/// Where (in chars) the names of a header start, when names are separated by two spaces or
/// more.
fn wide_column_starts(header: &str) -> Vec<usize> {
    let chars: Vec<char> = header.chars().collect();
    (0..chars.len())
        .filter(|&i| {
            chars[i] != ' ' && (i == 0 || (i >= 2 && chars[i - 1] == ' ' && chars[i - 2] == ' '))
        })
        .collect()
}

/// The byte offset of the char at `position` (columns align by chars: `…` is one), or the
/// length when the line is that long exactly; None past it.
fn byte_at(line: &str, position: usize) -> Option<usize> {
    if line.is_ascii() {
        return (position <= line.len()).then_some(position);
    }
    line.char_indices()
        .map(|(offset, _)| offset)
        .chain(std::iter::once(line.len()))
        .nth(position)
}

/// Whether nine rows in ten (of the first fifty) have a value starting at each column start.
fn left_aligned(rows: &[&str], starts: &[usize]) -> bool {
    let sample: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| !r.trim().is_empty())
        .take(50)
        .collect();
    let aligned = sample
        .iter()
        .filter(|row| {
            let bytes = row.as_bytes();
            starts.iter().all(|&start| {
                start == 0
                    || byte_at(row, start).is_some_and(|offset| {
                        bytes.get(offset).is_some_and(|&b| b != b' ') && bytes[offset - 1] == b' '
                    })
            })
        })
        .count();
    !sample.is_empty() && aligned * 10 >= sample.len() * 9
}

/// `-rw-r--r--`, `drwxr-xr-x.`, `lrwxrwxrwx@`.
fn is_file_mode(field: &str) -> bool {
    let bytes = field.as_bytes();
    bytes.len() >= 10
        && b"-dlcbps".contains(&bytes[0])
        && bytes[1..10].iter().all(|b| b"rwxsStT-".contains(b))
}

fn is_separator(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.len() >= 3
        && trimmed
            .bytes()
            .all(|b| matches!(b, b'-' | b'=' | b'+' | b'|' | b' '))
}

/// A number, allowing a unit suffix (`12K`, `3.5G`, `45%`) and thousands separators.
fn parse_number(text: &str) -> Option<f64> {
    let trimmed = text.trim_end_matches(['%', 'K', 'M', 'G', 'T', 'k', 'B']);
    if trimmed.is_empty() || !trimmed.bytes().next()?.is_ascii_digit() && !trimmed.starts_with('-')
    {
        return None;
    }
    let scale = match text[trimmed.len()..].chars().next() {
        Some('K' | 'k') => 1e3,
        Some('M') => 1e6,
        Some('G') => 1e9,
        Some('T') => 1e12,
        _ => 1.0,
    };
    let value = if trimmed.contains(',') {
        let plain: String = trimmed.chars().filter(|&c| c != ',').collect();
        plain.parse::<f64>().ok()
    } else {
        trimmed.parse::<f64>().ok()
    };
    value.map(|x| x * scale)
}

/// What one column holds.
struct ColumnStats<'a> {
    /// (value, rows), while there are at most MAX_CATEGORIES + 1 distinct values.
    values: Vec<(&'a str, Vec<usize>)>,
    categorical: bool,
    /// (row line index, value) where the cell is a number.
    numbers: Vec<(usize, f64)>,
    cells: usize,
}

/// Builds the view of a table.
pub(crate) fn compress(lines: &[&str], layout: &Layout, ctx: &CompressContext<'_>) -> View {
    let total = lines.len();
    let mut selection = Selection::new(total);
    // Everything before the first row (a legend, the header, its separator) is short: keep
    // the header and separator.
    if let Some(header) = layout.header {
        for index in header..layout.first_row.min(total) {
            selection.keep[index] = true;
        }
    }
    let rows: Vec<usize> = (layout.first_row..total)
        .filter(|&index| !lines[index].trim().is_empty())
        .collect();
    for &index in rows
        .iter()
        .take(HEAD_ROWS)
        .chain(rows.iter().rev().take(TAIL_ROWS))
    {
        selection.keep[index] = true;
    }
    for index in Bm25Matches::new(lines, ctx.query).diverse_top(QUERY_HITS) {
        selection.keep[index] = true;
    }
    // Rows with a cell that is a word of the question ("openssl", "libssl.so.3"): the rows
    // it names, rarest first.
    let words = query_words(ctx.query);
    if !words.is_empty() {
        let mut named: Vec<(usize, usize)> = Vec::new();
        let mut naming = vec![0usize; words.len()];
        for &index in &rows {
            for cell in layout.cells(lines[index]) {
                if let Some(w) = words
                    .iter()
                    .position(|word| cell.eq_ignore_ascii_case(word))
                {
                    named.push((index, w));
                    naming[w] += 1;
                    break;
                }
            }
        }
        named.sort_by_key(|&(index, w)| (naming[w], index));
        for &(index, _) in named.iter().take(NAMED_ROWS) {
            selection.keep[index] = true;
        }
    }
    // Only capitals (ERROR, FAILED) are failures in a listing: descriptions say "error".
    for &index in &rows {
        if alarm_level(prefix(lines[index], 256), true) == 3 {
            selection.keep[index] = true;
        }
    }

    let columns = column_stats(lines, layout, &rows);
    // The rows with the largest values of numeric columns that vary and are not sorted (ids,
    // line numbers): the biggest files, the busiest processes. One per column, then another.
    let mut tops: Vec<Vec<usize>> = Vec::new();
    for column in &columns {
        let few_values = column.categorical && column.values.len() < 3;
        if few_values || !is_numeric(column, rows.len()) || is_sorted(&column.numbers) {
            continue;
        }
        let mut by_value = column.numbers.clone();
        by_value.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        tops.push(by_value.iter().take(2).map(|&(index, _)| index).collect());
    }
    let mut added = 0;
    for rank in 0..2 {
        for top in &tops {
            if let Some(&index) = top.get(rank) {
                if added < TOP_ROWS && !selection.keep[index] {
                    selection.keep[index] = true;
                    added += 1;
                }
            }
        }
    }
    // Rare values of categorical columns: a stopped process, a package not installed.
    let threshold = (rows.len() / 50).max(1);
    let mut added = 0;
    for column in &columns {
        if !column.categorical || column.values.len() < 2 || column.cells * 2 < rows.len() {
            continue;
        }
        for (_, value_rows) in column.values.iter().filter(|(_, r)| r.len() <= threshold) {
            if added < RARE_ROWS && !selection.keep[value_rows[0]] {
                selection.keep[value_rows[0]] = true;
                added += 1;
            }
        }
    }

    let footer = summary(layout, &columns, &selection.keep, rows.len());
    let header = format!(
        "table of {} rows and {} columns ({})\n",
        rows.len(),
        layout.columns,
        shorten(&layout.names.join(", "), 200)
    );
    selection.render(lines, MAX_LINE_BYTES, &header, &footer)
}

/// Numbers in at least nine rows in ten.
fn is_numeric(column: &ColumnStats<'_>, rows: usize) -> bool {
    column.numbers.len() * 10 >= rows * 9
}

fn is_sorted(numbers: &[(usize, f64)]) -> bool {
    numbers.windows(2).all(|w| w[1].1 >= w[0].1) || numbers.windows(2).all(|w| w[1].1 <= w[0].1)
}

fn column_stats<'a>(lines: &[&'a str], layout: &Layout, rows: &[usize]) -> Vec<ColumnStats<'a>> {
    let mut columns: Vec<ColumnStats<'a>> = (0..layout.columns)
        .map(|_| ColumnStats {
            values: Vec::new(),
            categorical: true,
            numbers: Vec::new(),
            cells: 0,
        })
        .collect();
    for &index in rows {
        for (c, cell) in layout
            .cells(lines[index])
            .into_iter()
            .enumerate()
            .take(layout.columns)
        {
            let column = &mut columns[c];
            column.cells += 1;
            if let Some(number) = parse_number(cell) {
                column.numbers.push((index, number));
            }
            if !column.categorical {
                continue;
            }
            match column.values.iter().position(|(v, _)| *v == cell) {
                Some(position) => column.values[position].1.push(index),
                None if column.values.len() <= MAX_CATEGORIES => {
                    column.values.push((cell, vec![index]))
                }
                None => {
                    column.categorical = false;
                    column.values.clear();
                }
            }
        }
    }
    columns
}

/// "omitted 1061 rows: owner: root 1061; size: 0–9.8M (median 14K); …".
fn summary(
    layout: &Layout,
    columns: &[ColumnStats<'_>],
    keep: &[bool],
    rows: usize,
) -> Vec<String> {
    let omitted_rows = |list: &[usize]| list.iter().filter(|&&i| !keep[i]).count();
    let mut parts = Vec::new();
    for (c, column) in columns.iter().enumerate() {
        if parts.len() == SUMMARY_COLUMNS {
            break;
        }
        let name = &layout.names[c.min(layout.names.len() - 1)];
        let numeric = is_numeric(column, rows) && (!column.categorical || column.values.len() > 4);
        if !numeric && column.categorical && !column.values.is_empty() && column.cells * 2 >= rows {
            let mut counts: Vec<(&str, usize)> = column
                .values
                .iter()
                .map(|(value, list)| (*value, omitted_rows(list)))
                .filter(|&(_, count)| count > 0)
                .collect();
            if counts.is_empty() {
                continue;
            }
            counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
            let counts: Vec<String> = counts
                .iter()
                .map(|(value, count)| format!("{} {count}", shorten(value, 40)))
                .collect();
            parts.push(format!("{name}: {}", counts.join(", ")));
        } else if numeric {
            let values: Vec<f64> = column
                .numbers
                .iter()
                .filter(|&&(i, _)| !keep[i])
                .map(|&(_, x)| x)
                .collect();
            if values.is_empty() {
                continue;
            }
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sorted = values;
            let middle = sorted.len() / 2;
            sorted.select_nth_unstable_by(middle, f64::total_cmp);
            parts.push(format!(
                "{name}: {}–{} (median {})",
                number(min),
                number(max),
                number(sorted[middle])
            ));
        }
    }
    let omitted = (0..keep.len()).filter(|&i| !keep[i]).count();
    if parts.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "omitted {omitted} lines; their columns: {}",
        parts.join("; ")
    )]
}

/// 12, 3.5, 9.8M.
fn number(x: f64) -> String {
    let (value, suffix) = match x.abs() {
        a if a >= 1e12 => (x / 1e12, "T"),
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e4 => (x / 1e3, "K"),
        _ => (x, ""),
    };
    let text = if value.fract() == 0.0 {
        format!("{}", value as i64)
    } else {
        let text = format!("{value:.1}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress as compress_output;
    use crate::compress::lines::{Shape, shape_of};

    fn ctx(query: &str) -> CompressContext<'_> {
        CompressContext {
            query,
            tool_name: Some("bash"),
        }
    }

    fn ps_aux() -> String {
        let mut out = String::from(
            "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND\n",
        );
        for pid in 1..200 {
            let (user, cpu, mem, rss, command) = match pid {
                77 => (
                    "postgres",
                    12.5,
                    31.2,
                    5_123_456,
                    "postgres: checkpointer".to_owned(),
                ),
                150 => (
                    "www-data",
                    97.1,
                    2.0,
                    304_112,
                    "php-fpm: pool www".to_owned(),
                ),
                _ => (
                    ["root", "root", "daemon"][pid % 3],
                    0.1 * (pid % 5) as f64,
                    0.1 * (pid % 7) as f64,
                    10_000 + pid * 13,
                    format!("/usr/sbin/worker --id {pid} --verbose"),
                ),
            };
            out.push_str(&format!(
                "{user:<10} {pid:>5} {cpu:>4.1} {mem:>4.1} {:>7} {rss:>6} ?        Ss   10:{:02}   0:{:02} {command}\n",
                rss * 3,
                pid % 60,
                pid % 50
            ));
        }
        out
    }

    #[test]
    fn ps_keeps_header_busiest_processes_and_counts() {
        let original = ps_aux();
        let lines: Vec<&str> = original.lines().collect();
        assert!(matches!(shape_of(&lines, &ctx("")), Shape::Table(_)));
        let view = compress_output(
            &original,
            &ctx("Which process uses the most memory?\nps aux"),
        )
        .expect("a view");
        assert!(
            view.text
                .starts_with("table of 199 rows and 11 columns (USER, PID, %CPU")
        );
        assert!(view.text.contains("\nUSER         PID %CPU %MEM"));
        assert!(
            view.text.contains("postgres: checkpointer"),
            "{}",
            view.text
        );
        assert!(view.text.contains("php-fpm: pool www"));
        let summary = view.text.lines().last().expect("summary");
        assert!(summary.contains("USER: root "), "{summary}");
        assert!(summary.contains("%CPU: 0–"), "{summary}");
        assert_eq!(view.total, 200);
    }

    fn dpkg() -> String {
        let mut out = String::from(
            "Desired=Unknown/Install/Remove/Purge/Hold\n\
             | Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend\n\
             |/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)\n\
             ||/ Name                 Version          Architecture Description\n\
             +++-====================-================-============-==============================\n",
        );
        for i in 0..400 {
            let (status, name, version) = match i {
                250 => ("ii", "openssl".to_owned(), "3.0.17-1~deb12u2".to_owned()),
                301 => ("rc", "old-daemon".to_owned(), "1.2-3".to_owned()),
                _ => ("ii", format!("lib{i}-tools"), format!("1.{i}-1")),
            };
            out.push_str(&format!(
                "{status}  {name:<20} {version:<16} amd64        tools for task {i}, with error checking\n"
            ));
        }
        out
    }

    #[test]
    fn dpkg_keeps_header_query_and_rare_status() {
        let original = dpkg();
        let view = compress_output(
            &original,
            &ctx("Which version of openssl is installed?\ndpkg -l"),
        )
        .expect("a view");
        assert!(view.text.contains("||/ Name"));
        assert!(view.text.contains("+++-===="));
        assert!(
            view.text.contains("openssl              3.0.17-1~deb12u2"),
            "{}",
            view.text
        );
        assert!(view.text.contains("rc  old-daemon"), "{}", view.text);
        // "error checking" in descriptions is no failure.
        assert!(view.kept < 20, "{}", view.text);
        assert!(view.text.contains("||/: ii 39"), "{}", view.text);
    }

    fn ls_la() -> String {
        let mut out = String::from("total 574368\n");
        for i in 0..600 {
            let line = match i {
                0 => "drwxr-xr-x 41 root root     40960 Sep 22 04:51 .".to_owned(),
                300 => "-rw-r--r--  1 root root    688160 Apr  3  2026 libssl.so.3".to_owned(),
                301 => "lrwxrwxrwx  1 root root        11 Apr  3  2026 libssl.so -> libssl.so.3"
                    .to_owned(),
                444 => "-rw-r--r--  1 root root 117308864 Jan  3  2023 libLLVM-15.so.1".to_owned(),
                _ => format!(
                    "-rw-r--r--  1 root root {:>9} Apr 27  2026 libthing{i}.so.1",
                    1000 + i * 37 % 5000
                ),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    #[test]
    fn ls_keeps_the_asked_file_and_the_largest() {
        let original = ls_la();
        let view = compress_output(
            &original,
            &ctx("How large is libssl.so.3?\nls -la /usr/lib"),
        )
        .expect("a view");
        assert!(
            view.text
                .starts_with("table of 601 rows and 9 columns (mode, links, owner")
        );
        assert!(
            view.text.contains("688160 Apr  3  2026 libssl.so.3\n"),
            "{}",
            view.text
        );
        assert!(view.text.contains("libLLVM-15.so.1"));
        assert!(view.text.contains("owner: root "), "{}", view.text);
    }

    #[test]
    fn tab_separated_rows_are_a_table() {
        let mut original = String::from("name\tstatus\tlatency_ms\n");
        for i in 0..300 {
            let status = if i == 123 { "down" } else { "up" };
            original.push_str(&format!("svc-{i}\t{status}\t{}\n", 10 + i % 20));
        }
        let view = compress_output(&original, &ctx("")).expect("a view");
        assert!(
            view.text
                .starts_with("table of 300 rows and 3 columns (name, status, latency_ms)")
        );
        assert!(view.text.contains("svc-123\tdown"), "{}", view.text);
        assert!(view.text.contains("status: up 29"), "{}", view.text);
    }

    #[test]
    fn numbers_read_with_units() {
        assert_eq!(parse_number("12K"), Some(12e3));
        assert_eq!(parse_number("3.5G"), Some(3.5e9));
        assert_eq!(parse_number("45%"), Some(45.0));
        assert_eq!(parse_number("1,234"), Some(1234.0));
        assert_eq!(parse_number("root"), None);
        assert_eq!(number(117_308_864.0), "117.3M");
        assert!(is_file_mode("lrwxrwxrwx"));
        assert!(!is_file_mode("total"));
    }

    #[test]
    fn fixed_width_columns_follow_the_header() {
        let mut original = String::from(
            "CONTAINER ID   IMAGE          COMMAND                  CREATED        STATUS                  NAMES\n",
        );
        for i in 0..120 {
            let status = if i == 77 {
                "Exited (137) 2 hours ago"
            } else {
                "Up 3 hours"
            };
            original.push_str(&format!(
                "{:<15}{:<15}{:<25}{:<15}{:<24}web-{i}\n",
                format!("{:012x}", 0xabc000 + i),
                format!("nginx:1.{}", i % 3),
                "\"/docker-entrypoint.…\"",
                "3 hours ago",
                status
            ));
        }
        let lines: Vec<&str> = original.lines().collect();
        let Some(layout) = Layout::detect(&lines) else {
            panic!("a table");
        };
        assert_eq!(
            layout.names,
            [
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "NAMES"
            ]
        );
        assert_eq!(layout.cells(lines[78])[4], "Exited (137) 2 hours ago");
        let view = compress_output(&original, &ctx("")).expect("a view");
        assert!(
            view.text.contains("Exited (137) 2 hours ago"),
            "{}",
            view.text
        );
        assert!(view.text.contains("STATUS: Up 3 hours 11"), "{}", view.text);
        assert!(view.text.contains("IMAGE: nginx:1."), "{}", view.text);
    }
}
