//! Anthropic Messages: `POST …/messages` (the official API is `/v1/messages`), streamed or not.
//!
//! Tool outputs are the `tool_result` blocks of user messages; the model's calls are the
//! `tool_use` blocks of the response's `content` (streamed: the content blocks of
//! `content_block_start`/`_delta`/`_stop` events, see [`MessagesStream`]). Other endpoints under `/messages`
//! (`count_tokens`, `batches`) do not match, and a body that is not a Messages request (OpenAI
//! Assistants also posts to `…/threads/{id}/messages`) is reported as malformed, so it passes
//! through untouched.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, SseEvent, StreamFilter, TOOL_DESCRIPTION, ToolOutput, Turn,
    append_to_root_array, array, object, set_root_member, sum_root_usage,
};
use crate::compress::prefix;
use crate::json::{
    Field, OrderedObject, Splice, is_null, object_append_point, quote, span_of, string_value,
};
use crate::sse;

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
    /// Not used (a streamed request is handled like any other), but read so that a body with
    /// two `stream` members is refused rather than read one way here and another upstream.
    #[serde(borrow, default, rename = "stream")]
    _stream: Field<'a>,
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

    fn stream_filter(&self, tool_name: &str, limit: usize) -> Box<dyn StreamFilter> {
        Box::new(MessagesStream::new(tool_name, limit))
    }

    /// The continuation keeps every member of `request`, `"stream":true` included: a streamed
    /// exchange continues streamed.
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

/// One streamed exchange (`stream: true`) as the client sees it (see [`StreamFilter`]).
///
/// The events of the retrieval tool's `tool_use` blocks are dropped, and the other content
/// blocks are renumbered so that the client sees indexes 0, 1, 2, … across rounds (the SDK's
/// accumulator finds a block by its index in the list of blocks started so far). Of the events
/// that bracket a round, the client gets the first round's `message_start` and the last round's
/// `message_delta` and `message_stop`. Each round's content is assembled as it streams, within
/// `limit` bytes, into the non-streamed `Message` the adapter reads and replays.
struct MessagesStream {
    tool_name: String,
    limit: usize,
    /// Whether the client got a `message_start`: a stitched stream has one.
    started: bool,
    /// The client's index for the next content block forwarded.
    next_index: u64,
    /// The usage of every round that was continued, for the sum.
    earlier_usage: Vec<serde_json::Value>,
    round: Round,
}

/// Past the limit, how many of the round's latest blocks are remembered, to renumber or drop
/// their later events. Anthropic streams blocks one after another, so only the last one gets
/// events; the others allow for a server that interleaves a few.
const BLOCKS_KEPT_PAST_LIMIT: usize = 16;

/// What the current round streamed so far.
#[derive(Default)]
struct Round {
    /// `message_start.message`; dropped over the limit.
    message: Option<String>,
    /// The usage of `message_start`, kept over the limit: it is summed.
    start_usage: Option<String>,
    /// Every block of the round; past the limit, only the latest (see
    /// [`BLOCKS_KEPT_PAST_LIMIT`]).
    blocks: Vec<StreamedBlock>,
    /// Blocks were forgotten past the limit: an event of a block not remembered may be one of a
    /// call of ours, so it is dropped.
    forgot_blocks: bool,
    /// The round's ending events, held until the driver knows whether another round follows.
    message_delta: Option<SseEvent>,
    message_stop: Option<SseEvent>,
    /// Events after `message_stop`, sent after it.
    after_stop: Vec<Bytes>,
    /// Bytes kept to assemble the round's response.
    held: usize,
    over_limit: bool,
    /// The upstream sent an error event.
    failed: bool,
    /// A delta this adapter cannot assemble: the turn could not be replayed as it was.
    unknown_delta: bool,
    /// `tool_use` blocks of the retrieval tool, and of other tools.
    our_calls: bool,
    client_calls: bool,
}

/// One content block of the current round.
struct StreamedBlock {
    upstream_index: u64,
    /// `None` for a call of the retrieval tool: none of its events reach the client.
    client_index: Option<u64>,
    content: BlockContent,
}

/// A content block as `content_block_start` gave it and what its deltas added since.
#[derive(Default)]
struct BlockContent {
    start: String,
    text: String,
    thinking: String,
    signature: Option<String>,
    citations: Vec<String>,
    partial_json: String,
}

impl BlockContent {
    /// Adds the `delta` of a `content_block_delta` as the SDK's accumulator does; false for a
    /// delta of a kind it does not know, or without its field.
    fn add(&mut self, delta: &RawValue) -> bool {
        let Ok(delta) = object(delta.get()) else {
            return false;
        };
        let text = |key: &str| delta.get(key).and_then(string_value);
        match delta.get("type").and_then(string_value).as_deref() {
            Some("text_delta") => text("text").map(|t| self.text.push_str(&t)).is_some(),
            Some("thinking_delta") => text("thinking")
                .map(|t| self.thinking.push_str(&t))
                .is_some(),
            // The signature comes whole, once, at the end of its thinking block.
            Some("signature_delta") => text("signature")
                .map(|s| self.signature = Some(s.into_owned()))
                .is_some(),
            Some("input_json_delta") => text("partial_json")
                .map(|t| self.partial_json.push_str(&t))
                .is_some(),
            Some("citations_delta") => delta
                .get("citation")
                .map(|c| self.citations.push(c.get().to_owned()))
                .is_some(),
            _ => false,
        }
    }

    /// The block as a non-streamed response holds it; `None` without a start or with a tool
    /// input that is not a JSON object (the upstream would refuse it in a continuation).
    fn assemble(&self) -> Option<String> {
        let start = object(&self.start).ok()?;
        let appended = |key: &str, added: &str| {
            let before = start.get(key).and_then(string_value).unwrap_or_default();
            quote(&format!("{before}{added}"))
        };
        let mut changes: Vec<(&str, String)> = Vec::new();
        if !self.text.is_empty() {
            changes.push(("text", appended("text", &self.text)));
        }
        if !self.thinking.is_empty() {
            changes.push(("thinking", appended("thinking", &self.thinking)));
        }
        if let Some(signature) = &self.signature {
            changes.push(("signature", quote(signature)));
        }
        if !self.citations.is_empty() {
            let earlier = start
                .get("citations")
                .and_then(|citations| array(citations.get()).ok())
                .unwrap_or_default();
            let all: Vec<&str> = earlier
                .iter()
                .map(|citation| citation.get())
                .chain(self.citations.iter().map(String::as_str))
                .collect();
            changes.push(("citations", format!("[{}]", all.join(","))));
        }
        // Without deltas the input stays what the start said (`{}`).
        if !self.partial_json.trim().is_empty() {
            let input: &RawValue = serde_json::from_str(&self.partial_json).ok()?;
            let input = input.get().trim();
            if !input.starts_with('{') {
                return None;
            }
            changes.push(("input", input.to_owned()));
        }
        Some(with_members(&start, &changes))
    }
}

impl Round {
    /// The round's usage: `message_start`'s, with the last `message_delta`'s written over it
    /// (its counts are running totals, and it leaves out those that did not change).
    fn usage(&self) -> Option<String> {
        let delta = self
            .message_delta
            .as_ref()
            .and_then(data_object)
            .and_then(|event| event.get("usage"))
            .filter(|usage| !is_null(usage));
        match (self.start_usage.as_deref(), delta) {
            (Some(start), Some(delta)) => overwritten(start, delta.get(), |_| true),
            (start, delta) => start.or(delta.map(RawValue::get)).map(str::to_owned),
        }
    }

    /// The round as a non-streamed `Message`: `message_start`'s message with the blocks, what
    /// `message_delta` says (stop reason, stop sequence…) and the round's usage. `None` when the
    /// round did not end with `message_stop`, failed, or went over the limit.
    fn response(&self) -> Option<String> {
        if self.failed || self.over_limit || self.unknown_delta || self.message_stop.is_none() {
            return None;
        }
        let message = object(self.message.as_deref()?).ok()?;
        let event = data_object(self.message_delta.as_ref()?)?;
        let delta = event.get("delta")?;
        let blocks = self
            .blocks
            .iter()
            .map(|block| block.content.assemble())
            .collect::<Option<Vec<_>>>()?;
        let mut changes = vec![("content", format!("[{}]", blocks.join(",")))];
        if let Some(usage) = self.usage() {
            changes.push(("usage", usage));
        }
        overwritten(&with_members(&message, &changes), delta.get(), |_| true)
    }
}

impl MessagesStream {
    fn new(tool_name: &str, limit: usize) -> Self {
        Self {
            tool_name: tool_name.to_owned(),
            limit,
            started: false,
            next_index: 0,
            earlier_usage: Vec::new(),
            round: Round::default(),
        }
    }

    /// Counts `bytes` the round keeps against the limit. Past it, what the round kept is
    /// dropped and nothing more is kept (false): the round cannot be continued.
    fn hold(&mut self, bytes: usize) -> bool {
        let round = &mut self.round;
        round.held = round.held.saturating_add(bytes);
        if round.held > self.limit && !round.over_limit {
            round.over_limit = true;
            round.message = None;
            for block in &mut round.blocks {
                block.content = BlockContent::default();
            }
        }
        !round.over_limit
    }

    fn message_start(
        &mut self,
        event: &SseEvent,
        members: &OrderedObject<'_>,
        out: &mut Vec<Bytes>,
    ) {
        let message = members.get("message");
        self.round.start_usage = message
            .and_then(|message| object(message.get()).ok())
            .and_then(|message| message.get("usage"))
            .filter(|usage| !is_null(usage))
            .map(|usage| usage.get().to_owned());
        if self.hold(message.map_or(0, |message| message.get().len())) {
            self.round.message = message.map(|message| message.get().to_owned());
        }
        if !self.started {
            self.started = true;
            out.push(event.raw.clone());
        }
    }

    fn block_start(&mut self, event: &SseEvent, members: &OrderedObject<'_>, out: &mut Vec<Bytes>) {
        let Some(upstream_index) = members.get("index").and_then(index_value) else {
            out.push(event.raw.clone());
            return;
        };
        let block = members.get("content_block");
        let block_members = block.and_then(|block| object(block.get()).ok());
        let field = |key: &str| {
            block_members
                .as_ref()
                .and_then(|block| block.get(key))
                .and_then(string_value)
        };
        let is_call = field("type").as_deref() == Some("tool_use");
        let client_index = if is_call && field("name").as_deref() == Some(self.tool_name.as_str()) {
            self.round.our_calls = true;
            None
        } else {
            self.round.client_calls |= is_call;
            self.next_index += 1;
            Some(self.next_index - 1)
        };
        let mut content = BlockContent::default();
        // The block's bookkeeping counts too: a start that carries nothing is not free.
        let size = size_of::<StreamedBlock>() + block.map_or(0, |block| block.get().len());
        if self.hold(size) {
            content.start = block
                .map(|block| block.get().to_owned())
                .unwrap_or_default();
        } else if self.round.blocks.len() >= BLOCKS_KEPT_PAST_LIMIT {
            // The round will not be assembled: only the blocks that may still get events are
            // needed.
            let forgotten = self.round.blocks.len() + 1 - BLOCKS_KEPT_PAST_LIMIT;
            self.round.blocks.drain(..forgotten);
            self.round.forgot_blocks = true;
        }
        self.round.blocks.push(StreamedBlock {
            upstream_index,
            client_index,
            content,
        });
        if let Some(client_index) = client_index {
            out.push(renumbered(event, members, client_index));
        }
    }

    /// A `content_block_delta` or `content_block_stop`.
    fn block_event(&mut self, event: &SseEvent, members: &OrderedObject<'_>, out: &mut Vec<Bytes>) {
        let position = members
            .get("index")
            .and_then(index_value)
            .and_then(|index| {
                self.round
                    .blocks
                    .iter()
                    .rposition(|block| block.upstream_index == index)
            });
        let Some(position) = position else {
            // A block whose start this filter did not see: not ours to change. Unless it may
            // be a forgotten one, of ours for all the filter knows.
            if !self.round.forgot_blocks {
                out.push(event.raw.clone());
            }
            return;
        };
        if let Some(delta) = members.get("delta")
            && self.hold(delta.get().len())
            && !self.round.blocks[position].content.add(delta)
        {
            self.round.unknown_delta = true;
        }
        if let Some(client_index) = self.round.blocks[position].client_index {
            out.push(renumbered(event, members, client_index));
        }
    }

    /// The usage summed over every round, `None` for a single round.
    fn total_usage(&self, round: &Round) -> Option<String> {
        if self.earlier_usage.is_empty() {
            return None;
        }
        let last = round.usage()?;
        let last: &RawValue = serde_json::from_str(&last).ok()?;
        Some(crate::json::sum_usage(last, &self.earlier_usage))
    }

    /// The last round's `message_delta` for the client: `end_turn` for `tool_use` when the only
    /// calls were ours (as [`Adapter::finalize`] does), and the usage summed over every round.
    /// The SDK writes a `message_delta`'s counts over those of the one `message_start` the
    /// client got (the first round's), so every summed count goes into it.
    fn final_delta(&self, round: &Round, event: &SseEvent) -> Bytes {
        let Some((data, members)) = event
            .data
            .as_deref()
            .and_then(|data| Some((data, object(data).ok()?)))
        else {
            return event.raw.clone();
        };
        let mut splice = Splice::default();
        if round.our_calls && !round.client_calls {
            let reason = members
                .get("delta")
                .and_then(|delta| object(delta.get()).ok())
                .and_then(|delta| delta.get("stop_reason"))
                .filter(|reason| string_value(reason).as_deref() == Some("tool_use"));
            if let Some(span) = reason.and_then(|reason| span_of(data, reason)) {
                splice.replace(span, "\"end_turn\"".to_owned());
            }
        }
        if let Some(total) = self.total_usage(round) {
            match members.get("usage").filter(|usage| !is_null(usage)) {
                Some(usage) => {
                    if let (Some(span), Some(summed)) = (
                        span_of(data, usage),
                        overwritten(usage.get(), &total, is_count),
                    ) {
                        splice.replace(span, summed);
                    }
                }
                None => {
                    if let (Some((at, has_members)), Some(summed)) = (
                        object_append_point(data),
                        overwritten("{}", &total, is_count),
                    ) {
                        let comma = if has_members { "," } else { "" };
                        splice.insert(at, format!("{comma}\"usage\":{summed}"));
                    }
                }
            }
        }
        if splice.is_empty() {
            return event.raw.clone();
        }
        splice.apply(data).map_or_else(
            || event.raw.clone(),
            |data| sse::encode(event.event.as_deref(), &data),
        )
    }
}

impl StreamFilter for MessagesStream {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        let is_error = event.event.as_deref() == Some("error");
        if self.round.message_stop.is_some() && !is_error {
            // After the message's end, events wait with it (a ping, say).
            if !self.round.over_limit {
                self.hold(event.raw.len());
                self.round.after_stop.push(event.raw);
            }
            return;
        }
        let Some(members) = data_object(&event) else {
            // Keep-alives, comments, data that is not a JSON object: passed on as they are.
            self.round.failed |= is_error;
            out.push(event.raw.clone());
            return;
        };
        let kind = members.get("type").and_then(string_value);
        let kind = kind
            .as_deref()
            .or(event.event.as_deref())
            .unwrap_or_default();
        match if is_error { "error" } else { kind } {
            // Forwarded as it came: the client's SDK raises it.
            "error" => {
                self.round.failed = true;
                out.push(event.raw.clone());
            }
            "message_start" => self.message_start(&event, &members, out),
            "content_block_start" => self.block_start(&event, &members, out),
            "content_block_delta" | "content_block_stop" => {
                self.block_event(&event, &members, out);
            }
            "message_delta" => {
                self.hold(event.data.as_ref().map_or(0, String::len));
                self.round.message_delta = Some(event.clone());
            }
            "message_stop" => self.round.message_stop = Some(event.clone()),
            // `ping`, and kinds this adapter does not know.
            _ => out.push(event.raw.clone()),
        }
    }

    fn end_round(&mut self) -> Option<String> {
        self.round.response()
    }

    fn cut_short(&self) -> bool {
        !self.round.failed && self.round.message_stop.is_none()
    }

    fn next_round(&mut self) {
        let round = std::mem::take(&mut self.round);
        if let Some(usage) = round.usage().and_then(|u| serde_json::from_str(&u).ok()) {
            self.earlier_usage.push(usage);
        }
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        let round = std::mem::take(&mut self.round);
        // After an error event the client's stream has failed already: nothing is left to end.
        if round.failed {
            return;
        }
        if let Some(delta) = &round.message_delta {
            out.push(self.final_delta(&round, delta));
        }
        if let Some(stop) = round.message_stop {
            out.push(stop.raw);
        }
        out.extend(round.after_stop);
    }

    fn error_event(&mut self, message: &str) -> Bytes {
        let error = OrderedObject::render([
            ("type", "\"api_error\""),
            ("message", quote(message).as_str()),
        ]);
        let data = OrderedObject::render([("type", "\"error\""), ("error", error.as_str())]);
        sse::encode(Some("error"), &data)
    }
}

/// The data of an event as a JSON object.
fn data_object(event: &SseEvent) -> Option<OrderedObject<'_>> {
    object(event.data.as_deref()?).ok()
}

/// A content block index.
fn index_value(raw: &RawValue) -> Option<u64> {
    raw.get().parse().ok()
}

/// A usage count to sum: a number, or an object of counts (`cache_creation`,
/// `server_tool_use`), not a label (`service_tier`).
fn is_count(value: &RawValue) -> bool {
    matches!(value.get().as_bytes().first(), Some(b'0'..=b'9' | b'{'))
}

/// `event` with its `index` set to `client_index`; the event as it came when that is its
/// index already.
fn renumbered(event: &SseEvent, members: &OrderedObject<'_>, client_index: u64) -> Bytes {
    let client_index = client_index.to_string();
    let (Some(data), Some(index)) = (event.data.as_deref(), members.get("index")) else {
        return event.raw.clone();
    };
    if index.get() == client_index {
        return event.raw.clone();
    }
    let mut splice = Splice::default();
    if let Some(span) = span_of(data, index) {
        splice.replace(span, client_index);
    }
    splice.apply(data).map_or_else(
        || event.raw.clone(),
        |data| sse::encode(event.event.as_deref(), &data),
    )
}

/// `object` with the members in `changes` set: replaced in place, or added after its own.
fn with_members(object: &OrderedObject<'_>, changes: &[(&str, String)]) -> String {
    let mut members: Vec<(&str, &str)> = object
        .0
        .iter()
        .map(|(key, value)| {
            let changed = changes.iter().find(|(name, _)| name == key);
            (
                key.as_ref(),
                changed.map_or(value.get(), |(_, value)| value.as_str()),
            )
        })
        .collect();
    for (key, value) in changes {
        if object.get(key).is_none() {
            members.push((key, value));
        }
    }
    OrderedObject::render(members)
}

/// The object `base` with the members of the object `update` written over it; a `null` in
/// `update` erases nothing, and a member only `update` has is added when `added` accepts it.
fn overwritten(base: &str, update: &str, added: impl Fn(&RawValue) -> bool) -> Option<String> {
    let base = object(base).ok()?;
    let update = object(update).ok()?;
    let changes: Vec<(&str, String)> = update
        .0
        .iter()
        .filter(|(key, value)| !is_null(value) && (base.get(key).is_some() || added(value)))
        .map(|(key, value)| (key.as_ref(), value.get().to_owned()))
        .collect();
    Some(with_members(&base, &changes))
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
    fn streams_are_inspected_and_other_bodies_are_malformed() {
        for stream in [r#","stream":true"#, r#","stream":false"#] {
            let (found, redeemable) = inspect(&with_result(stream), 0);
            assert_eq!(found.len(), 1, "{stream}");
            assert!(redeemable);
        }
        // The continuation of a streamed request streams too.
        let request = with_result(r#","stream":true"#);
        let next = AnthropicMessages
            .continuation(&request, RESPONSE, &answers(), true)
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(value["stream"], true);
        let foreign = [
            // Read one way here and maybe another way upstream.
            r#"{"model":"m","messages":[],"stream":false,"stream":true}"#,
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

    // Streaming.

    use crate::sse::SseParser;
    use serde_json::{Value, json};

    const LIMIT: usize = 1 << 20;

    /// One event as the API writes it.
    fn frame(data: &Value) -> String {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    }

    fn parse(stream: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(LIMIT);
        let mut events = Vec::new();
        parser.push(stream, |event| events.push(event)).unwrap();
        parser.finish(|event| events.push(event));
        events
    }

    fn message_start(id: &str, usage: Value) -> String {
        frame(
            &json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        )
    }

    fn block_start(index: u64, block: Value) -> String {
        frame(&json!({"type": "content_block_start", "index": index, "content_block": block}))
    }

    fn delta(index: u64, delta: Value) -> String {
        frame(&json!({"type": "content_block_delta", "index": index, "delta": delta}))
    }

    fn block_stop(index: u64) -> String {
        frame(&json!({"type": "content_block_stop", "index": index}))
    }

    fn text_block(index: u64, text: &str) -> String {
        block_start(index, json!({"type": "text", "text": ""}))
            + &delta(index, json!({"type": "text_delta", "text": text}))
            + &block_stop(index)
    }

    /// A `tool_use` block whose input streams in pieces.
    fn call_block(index: u64, id: &str, name: &str, pieces: &[&str]) -> String {
        let mut out = block_start(
            index,
            json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
        );
        for piece in pieces {
            out += &delta(
                index,
                json!({"type": "input_json_delta", "partial_json": piece}),
            );
        }
        out + &block_stop(index)
    }

    fn ending(stop_reason: &str, usage: Value) -> String {
        frame(&json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage}))
            + &frame(&json!({"type": "message_stop"}))
    }

    const PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";

    /// A retrieval-only round: thinking, text, then two calls of ours.
    fn retrieval_round() -> String {
        [
            message_start(
                "msg_01",
                json!({"input_tokens": 100, "cache_creation_input_tokens": 10,
                    "cache_read_input_tokens": 1000, "output_tokens": 1, "service_tier": "standard"}),
            ),
            PING.to_owned(),
            block_start(0, json!({"type": "thinking", "thinking": "", "signature": ""})),
            delta(0, json!({"type": "thinking_delta", "thinking": "I need "})),
            delta(0, json!({"type": "thinking_delta", "thinking": "the log \"é\"."})),
            delta(0, json!({"type": "signature_delta", "signature": "ErUBCkYIBBgCIkB/a+b=="})),
            block_stop(0),
            text_block(1, "Fetching the log."),
            call_block(2, "toolu_R1", TOOL, &["{\"hash\": \"ab", "c\", \"query\":", " \"disk full\"}"]),
            call_block(3, "toolu_R2", TOOL, &[]),
            ending("tool_use", json!({"output_tokens": 50})),
        ]
        .concat()
    }

    /// The answer after the retrieval.
    fn answer_round() -> String {
        [
            message_start(
                "msg_02",
                json!({"input_tokens": 120, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1100, "output_tokens": 1, "service_tier": "standard"}),
            ),
            text_block(0, "Disk full."),
            ending("end_turn", json!({"output_tokens": 20})),
        ]
        .concat()
    }

    /// Feeds a round's events one by one; returns what the client got after each.
    fn feed(filter: &mut dyn StreamFilter, stream: &str) -> Vec<Vec<Bytes>> {
        parse(stream.as_bytes())
            .into_iter()
            .map(|event| {
                let mut out = Vec::new();
                filter.event(event, &mut out);
                out
            })
            .collect()
    }

    fn concat(chunks: impl IntoIterator<Item = Bytes>) -> String {
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|b| b.to_vec()).collect();
        String::from_utf8(bytes).unwrap()
    }

    /// What the SDK's `MessageStream` makes of a stream (`accumulate_event` of anthropic 2.12),
    /// failing where it would fail or would silently drop an event.
    fn accumulate(stream: &str) -> Value {
        let mut message: Option<Value> = None;
        let mut json_buffers: HashMap<usize, String> = HashMap::new();
        let mut stopped = false;
        for event in parse(stream.as_bytes())
            .into_iter()
            .filter(|e| e.event.is_some() || e.data.is_some())
        {
            let name = event.event.expect("the SDK drops events without a name");
            assert!(!stopped, "{name} after message_stop");
            if name == "ping" {
                continue;
            }
            assert_ne!(name, "error", "the SDK raises: {:?}", event.data);
            let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            if name == "message_start" {
                assert!(message.is_none(), "a second message_start");
                message = Some(data["message"].clone());
                continue;
            }
            let message = message.as_mut().expect("message_start first");
            let content = message["content"].as_array_mut().unwrap();
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(data["index"], content.len(), "indexes are dense");
                    content.push(data["content_block"].clone());
                }
                "content_block_delta" => {
                    let index = data["index"].as_u64().unwrap() as usize;
                    let block = &mut content[index];
                    let delta = &data["delta"];
                    match delta["type"].as_str().unwrap() {
                        "text_delta" => {
                            let text = block["text"].as_str().unwrap().to_owned();
                            block["text"] = json!(text + delta["text"].as_str().unwrap());
                        }
                        "thinking_delta" => {
                            let text = block["thinking"].as_str().unwrap().to_owned();
                            block["thinking"] = json!(text + delta["thinking"].as_str().unwrap());
                        }
                        "signature_delta" => block["signature"] = delta["signature"].clone(),
                        "input_json_delta" => {
                            let buffer = json_buffers.entry(index).or_default();
                            buffer.push_str(delta["partial_json"].as_str().unwrap());
                            block["input"] = serde_json::from_str(buffer).unwrap_or(Value::Null);
                        }
                        other => panic!("delta {other}"),
                    }
                }
                "content_block_stop" => {
                    assert!((data["index"].as_u64().unwrap() as usize) < content.len());
                }
                "message_delta" => {
                    message["stop_reason"] = data["delta"]["stop_reason"].clone();
                    message["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                    let usage = &data["usage"];
                    message["usage"]["output_tokens"] = usage["output_tokens"].clone();
                    for key in [
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                        "server_tool_use",
                        "output_tokens_details",
                    ] {
                        if !usage[key].is_null() {
                            message["usage"][key] = usage[key].clone();
                        }
                    }
                }
                "message_stop" => stopped = true,
                other => panic!("unexpected {other}"),
            }
        }
        assert!(stopped, "the stream ends with message_stop");
        message.unwrap()
    }

    fn filter(limit: usize) -> Box<dyn StreamFilter> {
        AnthropicMessages.stream_filter(TOOL, limit)
    }

    #[test]
    fn a_round_without_retrieval_streams_through_byte_for_byte() {
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            PING.to_owned(),
            text_block(0, "Let me look."),
            call_block(1, "toolu_B", "bash", &["{\"cmd\":", " \"df\"}"]),
            ": keep-alive\n\n".to_owned(),
            ending("tool_use", json!({"output_tokens": 30})),
        ]
        .concat();
        let mut filter = filter(LIMIT);
        let outs = feed(filter.as_mut(), &stream);
        let count = outs.len();
        // Each event goes on as it arrives, except the two that end the round.
        assert!(outs[..count - 2].iter().all(|out| out.len() == 1));
        assert!(outs[count - 2..].iter().all(Vec::is_empty));
        let response = filter.end_round().unwrap();
        assert_eq!(
            AnthropicMessages.read_turn(&response, TOOL).unwrap(),
            Turn::Other
        );
        let mut end = Vec::new();
        filter.finish(&mut end);
        let client = concat(outs.into_iter().flatten().chain(end));
        assert_eq!(client, stream);
        let message = accumulate(&client);
        assert_eq!(message["content"][1]["input"], json!({"cmd": "df"}));
        assert_eq!(message["stop_reason"], "tool_use");
    }

    #[test]
    fn a_retrieval_round_and_its_continuation_make_one_message() {
        let mut filter = filter(LIMIT);
        let first = retrieval_round();
        let outs = feed(filter.as_mut(), &first);
        // The start, the ping, the thinking and text blocks as they came; nothing of our calls
        // nor of the ending.
        let mut client = concat(outs.into_iter().flatten());
        let ours_at = first
            .find(
                r#"event: content_block_start
data: {"content_block":{"id":"toolu_R1""#,
            )
            .unwrap();
        assert_eq!(client, first[..ours_at]);

        let response = filter.end_round().unwrap();
        let Turn::Retrieve(calls) = AnthropicMessages.read_turn(&response, TOOL).unwrap() else {
            panic!("{response}");
        };
        assert_eq!(
            calls,
            [
                Call {
                    id: "toolu_R1".into(),
                    arguments: r#"{"hash": "abc", "query": "disk full"}"#.into()
                },
                Call {
                    id: "toolu_R2".into(),
                    arguments: "{}".into()
                },
            ]
        );
        // The assembled message is the non-streamed one, thinking and its signature exact.
        let value: Value = serde_json::from_str(&response).unwrap();
        assert_eq!(
            value,
            json!({"id": "msg_01", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": [
                    {"type": "thinking", "thinking": "I need the log \"é\".",
                        "signature": "ErUBCkYIBBgCIkB/a+b=="},
                    {"type": "text", "text": "Fetching the log."},
                    {"type": "tool_use", "id": "toolu_R1", "name": TOOL,
                        "input": {"hash": "abc", "query": "disk full"}},
                    {"type": "tool_use", "id": "toolu_R2", "name": TOOL, "input": {}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 100, "cache_creation_input_tokens": 10,
                    "cache_read_input_tokens": 1000, "output_tokens": 50,
                    "service_tier": "standard"}})
        );
        let request = r#"{"model":"m","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"q"}]}"#;
        let next = AnthropicMessages
            .continuation(request, &response, &answers(), false)
            .unwrap();
        let next: Value = serde_json::from_str(&next).unwrap();
        assert_eq!(next["messages"][1]["content"], value["content"]);
        assert_eq!(next["messages"][2]["content"][1]["tool_use_id"], "toolu_R2");
        assert_eq!(next["stream"], true);

        filter.next_round();
        let outs = feed(filter.as_mut(), &answer_round());
        // Its start is dropped; its text block follows the first round's two.
        assert!(outs[0].is_empty());
        let second = concat(outs.into_iter().flatten());
        assert!(
            second.starts_with(
                "event: content_block_start\ndata: {\"content_block\":{\"text\":\"\",\"type\":\"text\"},\"index\":2,"
            ),
            "{second}"
        );
        client += &second;
        let response = filter.end_round().unwrap();
        assert_eq!(
            AnthropicMessages.read_turn(&response, TOOL).unwrap(),
            Turn::Other
        );
        let mut end = Vec::new();
        filter.finish(&mut end);
        assert_eq!(end.len(), 2);
        client += &concat(end);
        assert!(!client.contains(TOOL), "{client}");

        let message = accumulate(&client);
        assert_eq!(message["id"], "msg_01");
        let texts: Vec<&str> = message["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|block| block["text"].as_str().unwrap_or("(thinking)"))
            .collect();
        assert_eq!(texts, ["(thinking)", "Fetching the log.", "Disk full."]);
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 220, "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 2100, "output_tokens": 70, "service_tier": "standard"})
        );
    }

    #[test]
    fn a_mixed_turn_keeps_the_clients_call_under_a_dense_index() {
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            call_block(0, "toolu_R1", TOOL, &["{\"hash\":\"abc\"}"]),
            text_block(1, "Checking."),
            call_block(2, "toolu_B", "bash", &["{\"cmd\":\"df\"}"]),
            ending("tool_use", json!({"output_tokens": 30})),
        ]
        .concat();
        let mut filter = filter(LIMIT);
        let mut client: Vec<Bytes> = feed(filter.as_mut(), &stream)
            .into_iter()
            .flatten()
            .collect();
        let response = filter.end_round().unwrap();
        // Both calls are in the round's response: the driver does not continue it.
        assert_eq!(
            AnthropicMessages.read_turn(&response, TOOL).unwrap(),
            Turn::Other
        );
        assert!(response.contains("toolu_R1") && response.contains("toolu_B"));
        filter.finish(&mut client);
        let client = concat(client);
        assert!(!client.contains("toolu_R1"), "{client}");
        let message = accumulate(&client);
        assert_eq!(
            message["content"],
            json!([{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_B", "name": "bash", "input": {"cmd": "df"}}])
        );
        // A client call is left: the client has to run it.
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 5, "output_tokens": 30})
        );
    }

    #[test]
    fn a_last_round_with_only_our_calls_ends_the_turn() {
        // A final round where the model called the tool anyway, over the limit.
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            text_block(0, "Let me check again."),
            call_block(1, "toolu_R1", TOOL, &["{\"hash\":", "\"abc\"}"]),
            ending("tool_use", json!({"output_tokens": 30})),
        ]
        .concat();
        let mut filter = filter(100);
        let mut client: Vec<Bytes> = feed(filter.as_mut(), &stream)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(filter.end_round(), None, "over the limit");
        filter.finish(&mut client);
        let client = concat(client);
        assert!(!client.contains(TOOL));
        let message = accumulate(&client);
        assert_eq!(message["content"].as_array().unwrap().len(), 1);
        assert_eq!(message["stop_reason"], "end_turn");
        assert!(client.ends_with(&frame(&json!({"type": "message_stop"}))));
    }

    #[test]
    fn usage_missing_from_the_last_message_delta_is_added() {
        let mut filter = filter(LIMIT);
        let mut client: Vec<Bytes> = feed(filter.as_mut(), &retrieval_round())
            .into_iter()
            .flatten()
            .collect();
        assert!(filter.end_round().is_some());
        filter.next_round();
        let second = [
            message_start(
                "msg_02",
                json!({"input_tokens": 7, "output_tokens": 1,
                    "cache_creation": {"ephemeral_5m_input_tokens": 3}}),
            ),
            text_block(0, "Done."),
            frame(&json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}})),
            frame(&json!({"type": "message_stop"})),
        ]
        .concat();
        client.extend(feed(filter.as_mut(), &second).into_iter().flatten());
        filter.finish(&mut client);
        let client = concat(client);
        let message = accumulate(&client);
        // The first round said 100 in, 50 out; the second 7 in and (from its start) 1 out.
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 107, "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 1000, "output_tokens": 51, "service_tier": "standard"})
        );
        let events = parse(client.as_bytes());
        let delta = events[events.len() - 2].data.as_deref().unwrap();
        assert_eq!(
            delta,
            r#"{"delta":{"stop_reason":"end_turn"},"type":"message_delta","usage":{"cache_creation":{"ephemeral_5m_input_tokens":3},"input_tokens":107,"output_tokens":51,"cache_creation_input_tokens":10,"cache_read_input_tokens":1000}}"#
        );
    }

    #[test]
    fn an_upstream_error_is_forwarded_and_ends_the_exchange() {
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            text_block(0, "Part"),
            error.to_owned(),
        ]
        .concat();
        let mut filter = filter(LIMIT);
        let mut client: Vec<Bytes> = feed(filter.as_mut(), &stream)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(filter.end_round(), None);
        filter.finish(&mut client);
        assert_eq!(concat(client), stream, "as it came, and nothing after it");

        // An error event whose data is not JSON is one as well.
        let mut filter = self::filter(LIMIT);
        let odd = "event: error\ndata: upstream broke\n\n";
        let outs = feed(filter.as_mut(), &(retrieval_round() + odd));
        assert_eq!(outs.last().unwrap()[0], odd);
        assert_eq!(filter.end_round(), None);
    }

    #[test]
    fn an_unfinished_round_is_not_continued() {
        let mut filter = filter(LIMIT);
        let round = retrieval_round();
        let cut = round.find("event: message_stop").unwrap();
        feed(filter.as_mut(), &round[..cut]);
        assert_eq!(filter.end_round(), None);
        let mut end = Vec::new();
        filter.finish(&mut end);
        let end = concat(end);
        assert!(end.contains(r#""stop_reason":"end_turn""#), "{end}");

        // A call cut in the middle of its input cannot be replayed.
        let mut filter = self::filter(LIMIT);
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            call_block(0, "toolu_R1", TOOL, &["{\"hash\":"]),
            ending("tool_use", json!({"output_tokens": 3})),
        ]
        .concat();
        feed(filter.as_mut(), &stream);
        assert_eq!(filter.end_round(), None);

        // Nor can a block with a delta this adapter does not know.
        let mut filter = self::filter(LIMIT);
        let stream = retrieval_round().replace(
            "event: ping\n",
            &(block_start(9, json!({"type": "text", "text": ""}))
                + &delta(9, json!({"type": "future_delta", "x": 1}))
                + "event: ping\n"),
        );
        feed(filter.as_mut(), &stream);
        assert_eq!(filter.end_round(), None);
    }

    #[test]
    fn past_the_limit_events_still_flow_and_ours_are_still_dropped() {
        let round = retrieval_round();
        let mut whole = filter(LIMIT);
        let expected: Vec<Vec<Bytes>> = feed(whole.as_mut(), &round);
        for limit in [0, 200, 600] {
            let mut filter = filter(limit);
            assert_eq!(feed(filter.as_mut(), &round), expected, "limit {limit}");
            assert_eq!(filter.end_round(), None, "limit {limit}");
        }
        let mut filter = filter(round.len());
        feed(filter.as_mut(), &round);
        assert!(filter.end_round().is_some());
    }

    #[test]
    fn block_bookkeeping_stays_bounded() {
        let limit = 4_096;
        let mut stream = message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1}));
        // Starts that carry no block: nothing of them is assembled, but each is remembered.
        for index in 0..2_000 {
            stream += &frame(&json!({"type": "content_block_start", "index": index}));
        }
        // Past the limit, text blocks and calls of ours, one after another.
        for index in 2_000..4_000 {
            stream += &if index % 2 == 0 {
                text_block(index, "word ")
            } else {
                call_block(
                    index,
                    &format!("toolu_{index}"),
                    TOOL,
                    &["{\"hash\":\"abc\"}"],
                )
            };
        }
        // A late delta of a call of ours long gone by.
        stream += &delta(
            2_001,
            json!({"type": "input_json_delta", "partial_json": "late"}),
        );
        stream += &ending("tool_use", json!({"output_tokens": 30}));
        let mut filter = MessagesStream::new(TOOL, limit);
        let mut client = Vec::new();
        let mut most_kept = 0;
        for event in parse(stream.as_bytes()) {
            filter.event(event, &mut client);
            most_kept = most_kept.max(filter.round.blocks.len());
        }
        assert!(most_kept <= 64, "{most_kept} blocks kept");
        assert_eq!(filter.end_round(), None, "over the limit");
        filter.finish(&mut client);
        let client = concat(client);
        assert!(!client.contains(TOOL) && !client.contains("late"));
        let message = accumulate(&client);
        assert_eq!(message["content"].as_array().unwrap().len(), 2_000 + 1_000);
        assert_eq!(message["content"][2_000]["text"], "word ");
        assert_eq!(message["stop_reason"], "end_turn");
    }

    #[test]
    fn unknown_events_and_odd_data_pass_through() {
        let stream = [
            message_start("msg_01", json!({"input_tokens": 5, "output_tokens": 1})),
            "event: future_event\ndata: {\"type\":\"future_event\",\"index\":0}\n\n".to_owned(),
            "data: not json\n\n".to_owned(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":7,\"delta\":{\"type\":\"text_delta\",\"text\":\"?\"}}\n\n".to_owned(),
            text_block(0, "ok"),
            ending("end_turn", json!({"output_tokens": 3})),
        ]
        .concat();
        let mut filter = filter(LIMIT);
        let mut client: Vec<Bytes> = feed(filter.as_mut(), &stream)
            .into_iter()
            .flatten()
            .collect();
        assert!(filter.end_round().is_some());
        filter.finish(&mut client);
        assert_eq!(concat(client), stream);
    }

    #[test]
    fn the_error_event_is_one_the_sdk_raises() {
        let event = filter(LIMIT).error_event("continuation failed: \"503\"");
        let events = parse(&event);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        let data: Value = serde_json::from_str(events[0].data.as_deref().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"type": "error", "error": {"type": "api_error", "message": "continuation failed: \"503\""}})
        );
    }
}
