//! Views of source code: an outline (the lines that declare something) plus the regions that
//! match the question.

use super::lines::Selection;
use super::{CompressContext, View};
use crate::search::Bm25Matches;

/// Lines kept from the start and from the end.
const HEAD_LINES: usize = 5;
const TAIL_LINES: usize = 3;
/// Regions kept because they best match the question, and their context each side.
const QUERY_HITS: usize = 8;
const QUERY_CONTEXT: usize = 3;
/// Declarations in the outline; past this, only the least indented ones.
const OUTLINE_LINES: usize = 120;
/// Longer kept lines are cut.
const MAX_LINE_BYTES: usize = 240;
/// Source file extensions: a tool call that names one read code.
const CODE_EXTENSIONS: &[&str] = &[
    "rs", "py", "js", "mjs", "ts", "tsx", "jsx", "go", "java", "kt", "c", "h", "cc", "cpp", "hpp",
    "cs", "rb", "php", "swift", "scala", "sh", "lua", "ex", "exs", "hs", "ml", "zig",
];
/// How declarations start, after indentation.
const DECLARATIONS: &[&str] = &[
    "fn ",
    "pub ",
    "pub(",
    "async fn ",
    "unsafe ",
    "impl ",
    "impl<",
    "struct ",
    "enum ",
    "trait ",
    "mod ",
    "type ",
    "const ",
    "static ",
    "macro_rules!",
    "def ",
    "async def ",
    "class ",
    "function ",
    "export ",
    "interface ",
    "func ",
    "public ",
    "private ",
    "protected ",
    "internal ",
    "abstract ",
    "package ",
    "module ",
    "#define ",
    "typedef ",
    "namespace ",
];

/// Whether most lines read like code, or the question names a source file and many do.
pub(crate) fn is_code(sample: &[&str], query: &str) -> bool {
    let code = sample.iter().filter(|line| is_code_line(line)).count();
    let named = query
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .any(|word| {
            word.rsplit_once('.')
                .is_some_and(|(stem, ext)| !stem.is_empty() && CODE_EXTENSIONS.contains(&ext))
        });
    let count = sample.len().max(1);
    code * 100 >= count * if named { 30 } else { 55 }
}

fn is_code_line(line: &str) -> bool {
    let trimmed = line.trim();
    let ends = [
        "{", "}", ";", ")", "(", ",", ":", "]", "[", "=>", "->", "};", "});", "*/",
    ];
    ends.iter().any(|end| trimmed.ends_with(end))
        || trimmed.starts_with("//")
        || trimmed.starts_with("/*")
        || trimmed.starts_with("# ")
        || is_declaration(line)
        || trimmed.starts_with('@')
        || trimmed.starts_with("#[")
}

fn is_declaration(line: &str) -> bool {
    let trimmed = line.trim_start();
    DECLARATIONS.iter().any(|d| trimmed.starts_with(d))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Builds the view of source code.
pub(crate) fn compress(lines: &[&str], ctx: &CompressContext<'_>) -> View {
    let total = lines.len();
    let mut selection = Selection::new(total);
    selection.ends(HEAD_LINES, TAIL_LINES);
    let declarations: Vec<usize> = (0..total).filter(|&i| is_declaration(lines[i])).collect();
    let mut outline = declarations.clone();
    // Too many: the least indented ones.
    let mut depth = usize::MAX;
    while outline.len() > OUTLINE_LINES {
        let deepest = outline
            .iter()
            .map(|&i| indentation(lines[i]))
            .max()
            .unwrap_or(0);
        if deepest == 0 || deepest >= depth {
            outline.truncate(OUTLINE_LINES);
            break;
        }
        depth = deepest;
        outline.retain(|&i| indentation(lines[i]) < deepest);
    }
    for index in outline {
        selection.keep[index] = true;
    }
    // Declarations that match the question, at any depth ("fn parse_exponent" for "how is an
    // exponent parsed").
    let declaration_lines: Vec<&str> = declarations.iter().map(|&i| lines[i]).collect();
    for position in Bm25Matches::new(&declaration_lines, ctx.query).diverse_top(QUERY_HITS) {
        selection.keep[declarations[position]] = true;
    }
    for index in Bm25Matches::new(lines, ctx.query).diverse_top(QUERY_HITS) {
        let from = index.saturating_sub(QUERY_CONTEXT);
        let to = (index + QUERY_CONTEXT + 1).min(total);
        for keep in &mut selection.keep[from..to] {
            *keep = true;
        }
    }
    let header = "source code: declarations, and the regions that match the question\n";
    selection.render(lines, MAX_LINE_BYTES, header, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress as compress_output;
    use crate::compress::lines::{Shape, shape_of};

    fn rust_source() -> String {
        let mut out = String::from(
            "//! A number parser.\n\nuse std::fmt;\n\npub struct Parser<'a> {\n    input: &'a [u8],\n    index: usize,\n}\n\nimpl<'a> Parser<'a> {\n",
        );
        for i in 0..60 {
            let name = if i == 41 {
                "parse_exponent".to_owned()
            } else {
                format!("parse_part_{i}")
            };
            out.push_str(&format!(
                "    /// Parses part {i}.\n    fn {name}(&mut self, positive: bool) -> Result<u64, Error> {{\n        let mut value = 0u64;\n        while let Some(&b) = self.input.get(self.index) {{\n            value = value * 10 + u64::from(b - b'0');\n            self.index += 1;\n        }}\n        Ok(value)\n    }}\n\n"
            ));
        }
        out.push_str("}\n\nimpl fmt::Display for Parser<'_> {\n    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {\n        write!(f, \"parser\")\n    }\n}\n");
        out
    }

    #[test]
    fn rust_outline_and_the_asked_function() {
        let original = rust_source();
        let ctx = CompressContext {
            query: "How is the exponent parsed?\n{\"path\": \"src/de.rs\"}",
            tool_name: Some("read_file"),
        };
        let lines: Vec<&str> = original.lines().collect();
        assert!(matches!(shape_of(&lines, &ctx), Shape::Code));
        let view = compress_output(&original, &ctx).expect("a view");
        assert!(view.text.starts_with("source code: declarations"));
        assert!(view.text.contains("pub struct Parser<'a> {"));
        assert!(view.text.contains("impl fmt::Display for Parser<'_> {"));
        assert!(
            view.text
                .contains("    fn parse_exponent(&mut self, positive: bool)"),
            "{}",
            view.text
        );
        assert!(view.text.contains("    fn parse_part_3(&mut self"));
        // Bodies are left out.
        assert!(view.text.matches("value = value * 10").count() < 5);
    }

    #[test]
    fn python_outline() {
        let mut original = String::from(
            "import os\nimport sys\n\n\nclass ArgumentParser(object):\n    \"\"\"Parses arguments.\"\"\"\n\n",
        );
        for i in 0..80 {
            let name = if i == 50 {
                "add_mutually_exclusive_group".to_owned()
            } else {
                format!("helper_{i}")
            };
            original.push_str(&format!(
                "    def {name}(self, *args, **kwargs):\n        group = _Group(self, *args, **kwargs)\n        self._groups.append(group)\n        if not group:\n            raise ValueError('empty')\n        return group\n\n"
            ));
        }
        let ctx = CompressContext {
            query: "How does add_mutually_exclusive_group work?\n{\"path\": \"argparse.py\"}",
            tool_name: Some("read_file"),
        };
        let view = compress_output(&original, &ctx).expect("a view");
        assert!(view.text.contains("class ArgumentParser(object):"));
        assert!(
            view.text
                .contains("    def add_mutually_exclusive_group(self, *args, **kwargs):")
        );
        assert!(view.text.contains("    def helper_0(self"));
        assert!(
            !view
                .text
                .contains("ValueError('empty')\n        return group\n\n    def helper_1")
        );
    }

    #[test]
    fn prose_is_not_code() {
        let sample = [
            "This is a sentence.",
            "Another one here, with words.",
            "And a third",
        ];
        assert!(!is_code(&sample, "what does it say?"));
    }
}
