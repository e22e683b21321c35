//! Anthropic Messages: `POST …/messages` (the official API is `/v1/messages`), non-streaming.
//!
//! Tool outputs are the `tool_result` blocks of user messages; the model's calls are the
//! `tool_use` blocks of the response's `content`. Other endpoints under `/messages`
//! (`count_tokens`, `batches`) do not match, and a body that is not a Messages request (OpenAI
//! Assistants also posts to `…/threads/{id}/messages`) is reported as malformed, so it passes
//! through untouched.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, TOOL_DESCRIPTION, ToolOutput, Turn, append_to_root_array, array,
    object, set_root_member, sum_root_usage,
};
use crate::compress::prefix;
use crate::json::{Field, OrderedObject, Splice, is_null, quote, span_of, string_value};

/// The Anthropic Messages adapter.
pub(crate) struct AnthropicMessages;

/// A content block, read leniently: an element that is not an object has no members (and is
/// never a tool block).
struct Block<'a> {
    raw: &'a RawValue,
    members: Option<OrderedObject<'a>>,
}

impl<'a> Block<'a> {
    fn read(raw: &'a RawValue) -> Self {
        Self {
            raw,
            members: object(raw.get()).ok(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members.as_ref()?.get(key)
    }

    fn string(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(string_value)
    }

    fn is(&self, kind: &str) -> bool {
        self.string("type").as_deref() == Some(kind)
    }

    /// A `tool_use` block of the tool `tool_name`.
    fn is_call_of(&self, tool_name: &str) -> bool {
        self.is("tool_use") && self.string("name").as_deref() == Some(tool_name)
    }
}

/// The blocks of a content array.
fn blocks(content: &RawValue) -> Result<Vec<Block<'_>>, Malformed> {
    Ok(array(content.get())?.into_iter().map(Block::read).collect())
}

/// The retrieval tool in Messages format.
fn tool_definition(tool_name: &str) -> String {
    format!(
        r#"{{"name":{},"description":{},"input_schema":{{"type":"object","properties":{{"hash":{{"type":"string","description":{}}},"query":{{"type":"string","description":{}}}}},"required":["hash"]}}}}"#,
        quote(tool_name),
        quote(TOOL_DESCRIPTION),
        quote(HASH_DESCRIPTION),
        quote(QUERY_DESCRIPTION),
    )
}

/// The parts of a request the adapter reads, in one pass over the body. `model` and
/// `messages` are required: a body without them is not a Messages request. Duplicate members
/// are an error (then the request passes through untouched).
#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
    #[serde(borrow, default)]
    tools: Field<'a>,
    #[serde(borrow, default)]
    tool_choice: Field<'a>,
    #[serde(borrow, default)]
    stream: Field<'a>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Field<'a>,
    #[serde(borrow, default)]
    content: Field<'a>,
}

impl Message<'_> {
    fn is_user(&self) -> bool {
        self.role.is("\"user\"")
    }

    fn is_assistant(&self) -> bool {
        self.role.is("\"assistant\"")
    }
}

/// Whether the model could call `tool_name` in this request. `disable_parallel_tool_use` does
/// not matter: the model may still call the tool alone, and the layer answers one call as well
/// as several.
fn redeemable(request: &MessagesRequest<'_>, tool_name: &str) -> bool {
    if let Some(choice) = request.tool_choice.value() {
        let Ok(choice) = object(choice.get()) else {
            return false;
        };
        match choice.get("type").and_then(string_value).as_deref() {
            Some("auto" | "any") => {}
            // Forced to one tool: fine only when it is ours.
            Some("tool") => {
                if choice.get("name").and_then(string_value).as_deref() != Some(tool_name) {
                    return false;
                }
            }
            // `none`, or a form this adapter does not know.
            _ => return false,
        }
    }
    let Some(tools) = request.tools.value() else {
        return true;
    };
    let Ok(tools) = array(tools.get()) else {
        return false;
    };
    tools.iter().all(|tool| {
        // Client, server and built-in tools alike: one of our name makes our calls ambiguous.
        object(tool.get())
            .is_ok_and(|tool| tool.get("name").and_then(string_value).as_deref() != Some(tool_name))
    })
}

/// The user's text: string literals joined by '\n', at most `MAX_QUESTION_BYTES`.
fn user_text(texts: &[&RawValue]) -> String {
    let mut out = String::new();
    for (index, raw) in texts.iter().enumerate() {
        if out.len() > MAX_QUESTION_BYTES {
            break;
        }
        if index > 0 {
            out.push('\n');
        }
        out.push_str(&string_value(raw).unwrap_or_default());
    }
    let end = prefix(&out, MAX_QUESTION_BYTES).len();
    out.truncate(end);
    out
}

/// A client tool call of the history: its tool's name and its input as JSON text.
struct HistoryCall<'a> {
    name: Option<Cow<'a, str>>,
    input: Option<&'a RawValue>,
}

/// The string literals of a `tool_result` block that hold its output: `content` as a string,
/// or its `text` blocks (each one separately). Images, documents and the rest stay as they are.
fn output_strings<'a>(result: &Block<'a>) -> Vec<&'a RawValue> {
    let Some(content) = result.get("content") else {
        return Vec::new();
    };
    match content.get().as_bytes().first() {
        Some(b'"') => vec![content],
        Some(b'[') => array(content.get())
            .unwrap_or_default()
            .into_iter()
            .map(Block::read)
            .filter(|block| block.is("text"))
            .filter_map(|block| block.get("text"))
            .filter(|text| text.get().starts_with('"'))
            .collect(),
        _ => Vec::new(),
    }
}

impl Adapter for AnthropicMessages {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool {
        // `…/messages/count_tokens` and `…/messages/batches` end otherwise.
        method == http::Method::POST && uri.path().trim_end_matches('/').ends_with("/messages")
    }

    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed> {
        let request: MessagesRequest<'_> =
            serde_json::from_str(body).map_err(|_| Malformed("not a messages request"))?;
        if !request.model.get().starts_with('"') {
            return Err(Malformed("model is not a string"));
        }
        if request.stream.is("true") {
            return Ok(Inspection::Skip("streaming"));
        }
        // Cheap test first: most requests carry no tool output big enough to matter.
        let last_candidate = request.messages.iter().rposition(|message| {
            message.is_user()
                && message
                    .content
                    .value()
                    .is_some_and(|c| c.get().starts_with('[') && c.get().len() >= min_bytes)
        });
        let Some(last_candidate) = last_candidate else {
            return Ok(Inspection::Outputs {
                outputs: Vec::new(),
                redeemable: false,
            });
        };

        let mut outputs = Vec::new();
        // The text of the last user message that has text, and the calls seen so far by id
        // (the latest wins).
        let mut last_user: Vec<&RawValue> = Vec::new();
        let mut calls: HashMap<Cow<'_, str>, HistoryCall<'_>> = HashMap::new();
        for message in &request.messages[..=last_candidate] {
            let Some(content) = message.content.value() else {
                continue;
            };
            if message.is_assistant() {
                if !content.get().starts_with('[') {
                    continue;
                }
                for block in blocks(content)? {
                    if !block.is("tool_use") {
                        continue;
                    }
                    if let Some(id) = block.string("id") {
                        let call = HistoryCall {
                            name: block.string("name"),
                            input: block.get("input"),
                        };
                        calls.insert(id, call);
                    }
                }
                continue;
            }
            if !message.is_user() {
                continue;
            }
            if content.get().starts_with('"') {
                last_user = vec![content];
                continue;
            }
            if !content.get().starts_with('[') {
                continue;
            }
            // Text blocks of this message, so far: they come before the outputs that follow
            // them. Tool results are not the user's words.
            let mut texts: Vec<&RawValue> = Vec::new();
            for block in blocks(content)? {
                if block.is("text") {
                    texts.extend(block.get("text").filter(|t| t.get().starts_with('"')));
                    continue;
                }
                if !block.is("tool_result") || block.raw.get().len() < min_bytes {
                    continue;
                }
                let call = block.string("tool_use_id").and_then(|id| calls.get(&id));
                let tool = call.and_then(|c| c.name.as_deref());
                if tool == Some(tool_name) {
                    continue; // Our own answers are never compressed.
                }
                let strings: Vec<&RawValue> = output_strings(&block)
                    .into_iter()
                    .filter(|raw| raw.get().len() >= min_bytes)
                    .collect();
                if strings.is_empty() {
                    continue;
                }
                let question = user_text(if texts.is_empty() { &last_user } else { &texts });
                let input = call
                    .and_then(|c| c.input)
                    .map(|input| prefix(input.get(), MAX_ARGUMENTS_BYTES).to_owned())
                    .unwrap_or_default();
                let query = if input.is_empty() {
                    question
                } else {
                    format!("{question}\n{input}")
                };
                for raw in strings {
                    let (Some(span), Some(text)) = (span_of(body, raw), string_value(raw)) else {
                        continue;
                    };
                    outputs.push(ToolOutput {
                        span,
                        text: text.into_owned(),
                        query: query.clone(),
                        tool_name: tool.map(str::to_owned),
                    });
                }
            }
            if !texts.is_empty() {
                last_user = texts;
            }
        }
        let redeemable = !outputs.is_empty() && redeemable(&request, tool_name);
        Ok(Inspection::Outputs {
            outputs,
            redeemable,
        })
    }

    fn inject_tool(
        &self,
        body: &str,
        tool_name: &str,
        splice: &mut Splice,
    ) -> Result<(), Malformed> {
        append_to_root_array(body, "tools", tool_definition(tool_name), splice)
    }

    fn read_turn(&self, response: &str, tool_name: &str) -> Result<Turn, Malformed> {
        let root = object(response)?;
        let content = root.get("content").ok_or(Malformed("no content"))?;
        // `pause_turn` (a long server-tool turn) is not a call of ours, nor is any other stop.
        if root.get("stop_reason").and_then(string_value).as_deref() != Some("tool_use") {
            return Ok(Turn::Other);
        }
        let blocks = blocks(content)?;
        let uses: Vec<&Block<'_>> = blocks.iter().filter(|b| b.is("tool_use")).collect();
        if uses.is_empty() || !uses.iter().all(|b| b.is_call_of(tool_name)) {
            return Ok(Turn::Other);
        }
        let mut calls = Vec::with_capacity(uses.len());
        for block in uses {
            // Without an id a result cannot be paired: the call is stripped instead.
            let Some(id) = block.string("id").filter(|id| !id.is_empty()) else {
                return Ok(Turn::Other);
            };
            calls.push(Call {
                id: id.into_owned(),
                arguments: block
                    .get("input")
                    .map_or_else(|| "{}".to_owned(), |input| input.get().to_owned()),
            });
        }
        Ok(Turn::Retrieve(calls))
    }

    fn usage(&self, response: &str) -> Option<serde_json::Value> {
        let root = object(response).ok()?;
        let usage = root.get("usage").filter(|u| !is_null(u))?;
        serde_json::from_str(usage.get()).ok()
    }

    fn continuation(
        &self,
        request: &str,
        response: &str,
        answers: &[Answer],
        force_final: bool,
    ) -> Result<String, Malformed> {
        let root = object(request)?;
        if root.get("messages").is_none() {
            return Err(Malformed("no messages"));
        }

        let response_root = object(response)?;
        let content = response_root
            .get("content")
            .ok_or(Malformed("no content"))?;
        // One result per call, in the calls' order; a call without an answer would make the
        // request invalid.
        let mut results = Vec::new();
        for block in blocks(content)?.iter().filter(|b| b.is("tool_use")) {
            let id = block.string("id").ok_or(Malformed("tool_use without id"))?;
            let answer = answers
                .iter()
                .find(|answer| answer.call_id == id)
                .ok_or(Malformed("tool_use without an answer"))?;
            results.push(OrderedObject::render([
                ("type", "\"tool_result\""),
                ("tool_use_id", quote(&answer.call_id).as_str()),
                ("content", quote(&answer.text).as_str()),
            ]));
        }
        if results.is_empty() {
            return Err(Malformed("no tool_use"));
        }
        // The assistant turn exactly as the model sent it (thinking blocks and their
        // signatures must come back unmodified), then the results.
        let assistant =
            OrderedObject::render([("role", "\"assistant\""), ("content", content.get())]);
        let results = format!("[{}]", results.join(","));
        let user = OrderedObject::render([("role", "\"user\""), ("content", results.as_str())]);
        let mut splice = Splice::default();
        append_to_root_array(
            request,
            "messages",
            format!("{assistant},{user}"),
            &mut splice,
        )?;
        if force_final {
            set_root_member(
                request,
                &root,
                "tool_choice",
                r#"{"type":"none"}"#,
                &mut splice,
            )?;
        }
        splice.apply(request).ok_or(Malformed("overlapping edits"))
    }

    fn finalize(
        &self,
        response: &str,
        tool_name: &str,
        earlier_usage: &[serde_json::Value],
    ) -> Result<Option<String>, Malformed> {
        let root = object(response)?;
        let mut splice = Splice::default();
        if let Some(content) = root.get("content").filter(|c| !is_null(c)) {
            let blocks = blocks(content)?;
            let ours: Vec<bool> = blocks.iter().map(|b| b.is_call_of(tool_name)).collect();
            if ours.contains(&true) {
                strip_blocks(response, content, &blocks, &ours, &mut splice)?;
                let client_calls = blocks
                    .iter()
                    .zip(&ours)
                    .any(|(block, ours)| !ours && block.is("tool_use"));
                // Without a call left, "tool_use" would send the client looking for one.
                if !client_calls
                    && let Some(reason) = root
                        .get("stop_reason")
                        .filter(|r| string_value(r).as_deref() == Some("tool_use"))
                {
                    splice.replace(
                        span_of(response, reason).ok_or(Malformed("stop_reason"))?,
                        "\"end_turn\"".into(),
                    );
                }
            }
        }
        sum_root_usage(response, &root, "usage", earlier_usage, &mut splice)?;
        if splice.is_empty() {
            return Ok(None);
        }
        splice
            .apply(response)
            .map(Some)
            .ok_or(Malformed("overlapping edits"))
    }
}

/// Removes the elements flagged in `remove` from the `content` array, keeping every other byte
/// (the kept blocks, their separators and whitespace) as it is.
fn strip_blocks(
    response: &str,
    content: &RawValue,
    blocks: &[Block<'_>],
    remove: &[bool],
    splice: &mut Splice,
) -> Result<(), Malformed> {
    let spans = blocks
        .iter()
        .map(|block| span_of(response, block.raw))
        .collect::<Option<Vec<_>>>()
        .ok_or(Malformed("content"))?;
    let Some(first_kept) = remove.iter().position(|removed| !removed) else {
        let span = span_of(response, content).ok_or(Malformed("content"))?;
        splice.replace(span, "[]".into());
        return Ok(());
    };
    for (index, span) in spans.iter().enumerate() {
        if !remove[index] {
            continue;
        }
        let range = if index < first_kept {
            // Before the first kept block: the block and what follows it, up to the next one.
            span.start..spans[index + 1].start
        } else {
            // After it: what precedes the block (its comma) and the block.
            spans[index - 1].end..span.end
        };
        splice.replace(range, String::new());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "ccr_retrieve";

    /// A request as the official SDK sends it (compact separators, raw UTF-8, its key order):
    /// parallel calls, a string result with `cache_control`, an error result of text and image
    /// blocks, and a text block after the results.
    const REQUEST: &str = r#"{"max_tokens":1024,"messages":[{"role":"user","content":"Why did the deploy fail? ünïcode ✓"},{"role":"assistant","content":[{"type":"thinking","thinking":"Check the log.","signature":"EqQBCkgIARABGAIiQL\/sig+=="},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_01A","name":"bash","input":{"cmd":"cat deploy.log"}},{"type":"tool_use","id":"toolu_01B","name":"read_file","input":{"path":"app.json"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A","content":"step 1 ok\nERROR: disk full \u00e9","cache_control":{"type":"ephemeral"}},{"type":"tool_result","tool_use_id":"toolu_01B","is_error":true,"content":[{"type":"text","text":"ENOENT: app.json"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"second part"}]},{"type":"text","text":"Also check the config."}]}],"model":"claude-sonnet-4-5","system":[{"type":"text","text":"You are an SRE.","cache_control":{"type":"ephemeral"}}],"tool_choice":{"type":"auto"},"tools":[{"name":"bash","description":"Run a command","input_schema":{"type":"object","properties":{"cmd":{"type":"string"}},"required":["cmd"]}},{"name":"read_file","input_schema":{"type":"object","properties":{"path":{"type":"string"}}}}]}"#;

    fn inspect(body: &str, min_bytes: usize) -> (Vec<ToolOutput>, bool) {
        match AnthropicMessages.inspect(body, TOOL, min_bytes).unwrap() {
            Inspection::Outputs {
                outputs,
                redeemable,
            } => (outputs, redeemable),
            Inspection::Skip(reason) => panic!("skipped: {reason}"),
        }
    }

    /// A minimal request with one big-enough tool result, and `extra` members.
    fn with_result(extra: &str) -> String {
        format!(
            r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"t","content":"output"}}]}}]{extra}}}"#
        )
    }

    #[test]
    fn matches_post_messages_only() {
        let post = http::Method::POST;
        let cases = [
            ("https://api.anthropic.com/v1/messages", true),
            ("https://api.anthropic.com/v1/messages/", true),
            ("https://api.anthropic.com/v1/messages?beta=true", true),
            ("http://localhost:4000/anthropic/v1/messages", true),
            ("https://api.anthropic.com/v1/messages/count_tokens", false),
            ("https://api.anthropic.com/v1/messages/batches", false),
            (
                "https://api.anthropic.com/v1/messages/batches/b1/results",
                false,
            ),
            ("https://api.anthropic.com/v1/chat/completions", false),
            ("https://api.anthropic.com/v1/message", false),
            ("https://api.anthropic.com/v1/usermessages", false),
        ];
        for (uri, expected) in cases {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(AnthropicMessages.matches(&post, &uri), expected, "{uri}");
        }
        let uri: http::Uri = "https://api.anthropic.com/v1/messages".parse().unwrap();
        assert!(!AnthropicMessages.matches(&http::Method::GET, &uri));
    }

    #[test]
    fn finds_string_and_text_block_outputs_with_their_context() {
        let (found, redeemable) = inspect(REQUEST, 0);
        assert!(redeemable);
        assert_eq!(found.len(), 3, "{found:?}");

        assert_eq!(found[0].text, "step 1 ok\nERROR: disk full \u{e9}");
        assert_eq!(
            &REQUEST[found[0].span.clone()],
            r#""step 1 ok\nERROR: disk full \u00e9""#
        );
        // The cache_control marker is outside the span: replacing the output keeps its bytes.
        assert!(
            REQUEST[found[0].span.end..].starts_with(r#","cache_control":{"type":"ephemeral"}}"#)
        );
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
        assert_eq!(
            found[0].query,
            "Why did the deploy fail? ünïcode ✓\n{\"cmd\":\"cat deploy.log\"}"
        );

        // An error result: each text block separately, the image left alone.
        assert_eq!(found[1].text, "ENOENT: app.json");
        assert_eq!(&REQUEST[found[1].span.clone()], r#""ENOENT: app.json""#);
        assert_eq!(found[2].text, "second part");
        assert_eq!(found[2].tool_name.as_deref(), Some("read_file"));
        assert_eq!(
            found[2].query,
            "Why did the deploy fail? ünïcode ✓\n{\"path\":\"app.json\"}"
        );
        assert!(found.iter().all(|o| !o.text.contains("iVBOR")));

        // `min_bytes` leaves the short ones out.
        let (found, _) = inspect(REQUEST, 25);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
    }

    #[test]
    fn the_question_is_the_last_user_text_before_the_output() {
        let body = r#"{"model":"m","messages":[
            {"role":"user","content":[{"type":"text","text":"first question"}]},
            {"role":"assistant","content":[{"type":"tool_use","id":"a","name":"ls","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":"one"},{"type":"text","text":"then this"}]},
            {"role":"assistant","content":[{"type":"tool_use","id":"b","name":"cat","input":{"f":"x"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"b","content":[{"type":"text","text":"two"}]}]},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":[{"type":"text","text":"before"},{"type":"text","text":"it"},{"type":"tool_result","tool_use_id":"zzz","content":"three"}]}
        ]}"#;
        let (found, _) = inspect(body, 0);
        let queries: Vec<&str> = found.iter().map(|o| o.query.as_str()).collect();
        assert_eq!(
            queries,
            [
                "first question\n{}",
                "then this\n{\"f\":\"x\"}",
                "before\nit"
            ]
        );
        assert_eq!(found[2].tool_name, None, "no call with that id");
        // Tool results are never the user's words.
        assert!(!found[1].query.contains("one"));
    }

    #[test]
    fn outputs_of_the_retrieval_tool_are_left_alone() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"q"},
            {"role":"assistant","content":[{"type":"tool_use","id":"r","name":"ccr_retrieve","input":{"hash":"abc"}},{"type":"tool_use","id":"s","name":"bash","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"r","content":"original"},{"type":"tool_result","tool_use_id":"s","content":"shell"}]}]}"#;
        let (found, _) = inspect(body, 0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "shell");
    }

    #[test]
    fn empty_and_absent_contents_are_skipped() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"tool_result","tool_use_id":"a"},
            {"type":"tool_result","tool_use_id":"b","content":""},
            {"type":"tool_result","tool_use_id":"c","content":[]},
            {"type":"tool_result","tool_use_id":"d","content":null},
            {"type":"tool_result","tool_use_id":"e","content":[{"type":"text"},{"type":"text","text":7},"odd",{"type":"document","source":{"type":"text","data":"doc"}}]},
            {"type":"tool_result","tool_use_id":"f","content":{"not":"valid"}}
        ]}]}"#;
        let (found, redeemable) = inspect(body, 0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].text, "");
        assert!(redeemable);
        // Nothing big enough: no outputs, and no need to judge the tool choice.
        let (found, redeemable) = inspect(REQUEST, REQUEST.len());
        assert!(found.is_empty());
        assert!(!redeemable);
        // Results only count in user messages.
        let body = r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"a","content":"x"}]}]}"#;
        assert!(inspect(body, 0).0.is_empty());
    }

    #[test]
    fn the_query_is_bounded() {
        let question = "why ".repeat(5_000);
        let input = serde_json::json!({ "pattern": "x".repeat(5_000) });
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "grep", "input": input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "output"}]}
        ]})
        .to_string();
        let (found, _) = inspect(&body, 0);
        assert!(found[0].query.len() <= MAX_QUESTION_BYTES + 1 + MAX_ARGUMENTS_BYTES);
        assert!(found[0].query.starts_with("why why"));
        // Cut on a char boundary.
        let body = body.replace("why ", "é");
        let (found, _) = inspect(&body, 0);
        assert!(found[0].query.starts_with("éé"));
    }

    #[test]
    fn streams_skip_and_other_bodies_are_malformed() {
        assert!(matches!(
            AnthropicMessages
                .inspect(&with_result(r#","stream":true"#), TOOL, 0)
                .unwrap(),
            Inspection::Skip(_)
        ));
        assert!(matches!(
            AnthropicMessages
                .inspect(&with_result(r#","stream":false"#), TOOL, 0)
                .unwrap(),
            Inspection::Outputs { .. }
        ));
        let foreign = [
            // OpenAI Assistants: `POST /v1/threads/{id}/messages`.
            r#"{"role":"user","content":"hello","attachments":[],"metadata":{}}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5}"#,
            r#"{"model":"m","max_tokens":5}"#,
            r#"{"model":null,"messages":[]}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[],"model":"m"}"#,
            "[1]",
            "not json",
        ];
        for body in foreign {
            assert!(AnthropicMessages.inspect(body, TOOL, 0).is_err(), "{body}");
        }
    }

    #[test]
    fn redeemable_only_when_the_model_can_call_the_tool() {
        let cases = [
            ("", true),
            (r#","tool_choice":{"type":"auto"}"#, true),
            (
                r#","tool_choice":{"type":"auto","disable_parallel_tool_use":true}"#,
                true,
            ),
            (r#","tool_choice":{"type":"any"}"#, true),
            (
                r#","tool_choice":{"type":"any","disable_parallel_tool_use":true}"#,
                true,
            ),
            (r#","tool_choice":null"#, true),
            (r#","tool_choice":{"type":"none"}"#, false),
            (r#","tool_choice":{"type":"tool","name":"bash"}"#, false),
            (
                r#","tool_choice":{"type":"tool","name":"ccr_retrieve"}"#,
                true,
            ),
            (r#","tool_choice":{"type":"something_new"}"#, false),
            (r#","tool_choice":"auto""#, false),
            (
                r#","tools":[{"name":"bash","input_schema":{"type":"object"}}]"#,
                true,
            ),
            (r#","tools":null"#, true),
            (
                r#","tools":[{"name":"ccr_retrieve","input_schema":{"type":"object"}}]"#,
                false,
            ),
            (
                r#","tools":[{"type":"bash_20250124","name":"ccr_retrieve"}]"#,
                false,
            ),
            (
                r#","tools":[{"type":"web_search_20250305","name":"web_search"}]"#,
                true,
            ),
            (r#","tools":[1]"#, false),
            (r#","tools":{}"#, false),
        ];
        for (extra, expected) in cases {
            assert_eq!(inspect(&with_result(extra), 0).1, expected, "{extra}");
        }
    }

    #[test]
    fn injects_after_the_clients_tools() {
        let tool = tool_definition(TOOL);
        let cases = [
            (
                r#"{"model":"m","messages":[] }"#,
                format!(r#"{{"model":"m","messages":[] ,"tools":[{tool}]}}"#),
            ),
            (
                r#"{"messages":[],"tools":null}"#,
                format!(r#"{{"messages":[],"tools":[{tool}]}}"#),
            ),
            (
                r#"{"messages":[],"tools":[ ]}"#,
                format!(r#"{{"messages":[],"tools":[ {tool}]}}"#),
            ),
            (
                r#"{"tools":[{"name":"bash","cache_control":{"type":"ephemeral"}}],"messages":[]}"#,
                format!(
                    r#"{{"tools":[{{"name":"bash","cache_control":{{"type":"ephemeral"}}}},{tool}],"messages":[]}}"#
                ),
            ),
        ];
        for (body, expected) in cases {
            let mut splice = Splice::default();
            AnthropicMessages
                .inject_tool(body, TOOL, &mut splice)
                .unwrap();
            assert_eq!(splice.apply(body).unwrap(), expected);
        }
        let parsed: serde_json::Value = serde_json::from_str(&tool).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "name": "ccr_retrieve",
                "description": TOOL_DESCRIPTION,
                "input_schema": {"type": "object", "properties": {
                    "hash": {"type": "string", "description": HASH_DESCRIPTION},
                    "query": {"type": "string", "description": QUERY_DESCRIPTION}
                }, "required": ["hash"]}
            })
        );
        // Its bytes never change.
        assert_eq!(tool, tool_definition(TOOL));
        assert!(
            AnthropicMessages
                .inject_tool("[]", TOOL, &mut Splice::default())
                .is_err()
        );
    }

    /// A response with a thinking block, text and two parallel retrieval calls.
    const RESPONSE: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"thinking","thinking":"I need the full log.","signature":"ErUBCkYIBBgCIkB\/a+b=="},{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix\/LafPsn4a"},{"type":"text","text":"Fetching the log.","citations":null},{"type":"tool_use","id":"toolu_R1","name":"ccr_retrieve","input":{"hash":"abc","query":"disk full"}},{"type":"tool_use","id":"toolu_R2","name":"ccr_retrieve","input":{"hash":"abc"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":10,"cache_read_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":0},"output_tokens":50,"service_tier":"standard"}}"#;

    fn answers() -> Vec<Answer> {
        vec![
            Answer {
                call_id: "toolu_R1".into(),
                text: "[line 9] ERROR: disk full".into(),
            },
            Answer {
                call_id: "toolu_R2".into(),
                text: "whole\noriginal \u{e9}".into(),
            },
        ]
    }

    #[test]
    fn reads_retrieval_turns() {
        assert_eq!(
            AnthropicMessages.read_turn(RESPONSE, TOOL).unwrap(),
            Turn::Retrieve(vec![
                Call {
                    id: "toolu_R1".into(),
                    arguments: r#"{"hash":"abc","query":"disk full"}"#.into()
                },
                Call {
                    id: "toolu_R2".into(),
                    arguments: r#"{"hash":"abc"}"#.into()
                },
            ])
        );
        let others = [
            // Mixed with a client call.
            RESPONSE.replace(r#""name":"ccr_retrieve","input":{"hash":"abc"}"#, r#""name":"bash","input":{}"#),
            // A paused turn is not a tool stop, nor is any other stop reason.
            RESPONSE.replace(r#""stop_reason":"tool_use""#, r#""stop_reason":"pause_turn""#),
            RESPONSE.replace(r#""stop_reason":"tool_use""#, r#""stop_reason":"max_tokens""#),
            RESPONSE.replace(r#""stop_reason":"tool_use","#, ""),
            // A call without an id cannot be answered.
            RESPONSE.replace(r#""id":"toolu_R2","#, ""),
            // No call at all.
            r#"{"type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"stop_reason":"tool_use"}"#.to_owned(),
            r#"{"type":"message","role":"assistant","content":[],"stop_reason":"end_turn"}"#.to_owned(),
        ];
        for response in &others {
            assert_eq!(
                AnthropicMessages.read_turn(response, TOOL).unwrap(),
                Turn::Other,
                "{response}"
            );
        }
        assert!(
            AnthropicMessages
                .read_turn(r#"{"type":"error"}"#, TOOL)
                .is_err()
        );
        assert!(AnthropicMessages.read_turn("[]", TOOL).is_err());
    }

    #[test]
    fn continuation_replays_the_turn_verbatim_and_answers_every_call_in_order() {
        let request = r#"{"max_tokens":1024,"messages":[{"role":"user","content":"q"}],"model":"m","tool_choice":{"type":"auto"},"tools":[]}"#;
        let next = AnthropicMessages
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        let content_at = RESPONSE.find("[{\"type\":\"thinking\"").unwrap();
        let content_end = RESPONSE.find(r#"],"stop_reason""#).unwrap() + 1;
        let content = &RESPONSE[content_at..content_end];
        assert_eq!(
            next,
            format!(
                r#"{{"max_tokens":1024,"messages":[{{"role":"user","content":"q"}},{{"role":"assistant","content":{content}}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_R1","content":"[line 9] ERROR: disk full"}},{{"type":"tool_result","tool_use_id":"toolu_R2","content":"whole\noriginal é"}}]}}],"model":"m","tool_choice":{{"type":"auto"}},"tools":[]}}"#
            )
        );
        // Signatures and redacted data byte for byte (escapes included).
        assert!(next.contains(r#""signature":"ErUBCkYIBBgCIkB\/a+b==""#));
        assert!(next.contains(r#""data":"EmwKAhgBEgy3va3pzix\/LafPsn4a""#));

        // Answers given in another order still follow the calls' order.
        let mut reversed = answers();
        reversed.reverse();
        assert_eq!(
            AnthropicMessages
                .continuation(request, RESPONSE, &reversed, false)
                .unwrap(),
            next
        );
        // A call without an answer: no continuation rather than an invalid request.
        assert!(
            AnthropicMessages
                .continuation(request, RESPONSE, &answers()[..1], false)
                .is_err()
        );
    }

    #[test]
    fn the_final_round_forbids_tools() {
        let request = r#"{"model":"m","messages":[{"role":"user","content":"q"}],"tool_choice":{"type":"any","disable_parallel_tool_use":true}}"#;
        let last = AnthropicMessages
            .continuation(request, RESPONSE, &answers(), true)
            .unwrap();
        assert!(
            last.ends_with(r#"original é"}]}],"tool_choice":{"type":"none"}}"#),
            "{last}"
        );
        let without_choice = r#"{"model":"m","messages":[{"role":"user","content":"q"}] }"#;
        let last = AnthropicMessages
            .continuation(without_choice, RESPONSE, &answers(), true)
            .unwrap();
        assert!(
            last.ends_with(r#"}]}] ,"tool_choice":{"type":"none"}}"#),
            "{last}"
        );
        let value: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(value["messages"].as_array().unwrap().len(), 3);
        assert_eq!(
            value["messages"][2]["content"][1]["tool_use_id"],
            "toolu_R2"
        );
        // Into an empty history as well.
        let empty = r#"{"model":"m","messages":[]}"#;
        let next = AnthropicMessages
            .continuation(empty, RESPONSE, &answers(), false)
            .unwrap();
        assert!(next.starts_with(r#"{"model":"m","messages":[{"role":"assistant","content":[{"#));
    }

    #[test]
    fn finalize_strips_our_calls_and_keeps_client_calls_valid() {
        // Mixed: the client's call stays, and so does "tool_use".
        let mixed = RESPONSE.replace(
            r#"{"type":"tool_use","id":"toolu_R2","name":"ccr_retrieve","input":{"hash":"abc"}}"#,
            r#"{"type":"tool_use","id":"toolu_B","name":"bash","input":{"cmd":"df -h"}}"#,
        );
        let out = AnthropicMessages
            .finalize(&mixed, TOOL, &[])
            .unwrap()
            .unwrap();
        assert!(!out.contains(TOOL), "{out}");
        assert_eq!(
            out,
            mixed.replace(
                r#",{"type":"tool_use","id":"toolu_R1","name":"ccr_retrieve","input":{"hash":"abc","query":"disk full"}}"#,
                ""
            )
        );
        assert!(out.contains(r#""stop_reason":"tool_use""#));

        // Only ours: gone, and the turn ends.
        let out = AnthropicMessages
            .finalize(RESPONSE, TOOL, &[])
            .unwrap()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["stop_reason"], "end_turn");
        let kinds: Vec<&str> = value["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["thinking", "redacted_thinking", "text"]);
        assert!(out.contains(r#""signature":"ErUBCkYIBBgCIkB\/a+b==""#));

        // Ours first, with whitespace around: every other byte stays.
        let spaced = r#"{"content": [ {"type":"tool_use","id":"a","name":"ccr_retrieve","input":{}} ,
            {"type":"tool_use","id":"b","name":"bash","input":{}} , {"type":"tool_use","id":"c","name":"ccr_retrieve","input":{}} ], "stop_reason":"tool_use"}"#;
        let out = AnthropicMessages
            .finalize(spaced, TOOL, &[])
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            r#"{"content": [ {"type":"tool_use","id":"b","name":"bash","input":{}} ], "stop_reason":"tool_use"}"#
        );
        // Nothing but ours: an empty content array.
        let only = r#"{"content":[ {"type":"tool_use","id":"a","name":"ccr_retrieve","input":{}} ],"stop_reason":"tool_use"}"#;
        assert_eq!(
            AnthropicMessages
                .finalize(only, TOOL, &[])
                .unwrap()
                .unwrap(),
            r#"{"content":[],"stop_reason":"end_turn"}"#
        );
        // Another stop reason is left as it is.
        let cut = r#"{"content":[{"type":"text","text":"x"},{"type":"tool_use","id":"a","name":"ccr_retrieve","input":{"ha"}}],"stop_reason":"max_tokens"}"#;
        assert!(
            AnthropicMessages.finalize(cut, TOOL, &[]).is_err(),
            "not JSON"
        );
        let cut = r#"{"content":[{"type":"text","text":"x"},{"type":"tool_use","id":"a","name":"ccr_retrieve","input":{}}],"stop_reason":"max_tokens"}"#;
        assert_eq!(
            AnthropicMessages.finalize(cut, TOOL, &[]).unwrap().unwrap(),
            r#"{"content":[{"type":"text","text":"x"}],"stop_reason":"max_tokens"}"#
        );
    }

    #[test]
    fn finalize_sums_usage_over_rounds() {
        let answer = r#"{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Disk full."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":120,"cache_creation_input_tokens":0,"cache_read_input_tokens":1100,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":20,"service_tier":"standard"}}"#;
        let earlier = AnthropicMessages.usage(RESPONSE).unwrap();
        assert_eq!(earlier["input_tokens"], 100);
        let out = AnthropicMessages
            .finalize(answer, TOOL, &[earlier])
            .unwrap()
            .unwrap();
        assert!(
            out.contains(r#""usage":{"input_tokens":220,"cache_creation_input_tokens":10,"cache_read_input_tokens":2100,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":0},"output_tokens":70,"service_tier":"standard"}}"#),
            "{out}"
        );
        // Only the usage changed.
        let usage_at = answer.find(r#""usage""#).unwrap();
        assert_eq!(&out[..usage_at], &answer[..usage_at]);
        // Nothing to change.
        assert_eq!(AnthropicMessages.finalize(answer, TOOL, &[]).unwrap(), None);
        // A null cache count stays null.
        let nulls = r#"{"content":[],"usage":{"input_tokens":1,"cache_read_input_tokens":null,"output_tokens":2}}"#;
        let out = AnthropicMessages
            .finalize(nulls, TOOL, &[serde_json::json!({"input_tokens":3,"cache_read_input_tokens":4,"output_tokens":5})])
            .unwrap()
            .unwrap();
        assert!(
            out.contains(r#"{"input_tokens":4,"cache_read_input_tokens":null,"output_tokens":7}"#),
            "{out}"
        );
        assert_eq!(AnthropicMessages.usage(r#"{"content":[]}"#), None);
    }

    #[test]
    fn a_compressed_output_keeps_every_other_byte() {
        // What the service does with an inspection: replace the spans, add the tool.
        let (found, _) = inspect(REQUEST, 0);
        let mut splice = Splice::default();
        splice.replace(found[0].span.clone(), quote("VIEW"));
        AnthropicMessages
            .inject_tool(REQUEST, TOOL, &mut splice)
            .unwrap();
        let out = splice.apply(REQUEST).unwrap();
        // The tools array is the last member: the tool goes just before its `]`.
        let tools_end = REQUEST.len() - 2;
        let expected = format!(
            "{},{}{}",
            &REQUEST[..tools_end],
            tool_definition(TOOL),
            &REQUEST[tools_end..]
        )
        .replace(r#""step 1 ok\nERROR: disk full \u00e9""#, r#""VIEW""#);
        assert_eq!(out, expected);
    }
}
