//! OpenAI Responses (`POST …/responses`), and every server that speaks it: any host, any path
//! ending in `/responses` (not `/responses/{id}`, `/responses/input_tokens`…).
//!
//! Tool outputs are `function_call_output` (and `custom_tool_call_output`) items of `input`,
//! paired with their call by `call_id`. The model's calls are `function_call` items of the
//! response's `output`; the response `status` stays `completed` when it calls tools.
//!
//! A continuation takes one of three forms, chosen from the request (see [`Mode`]):
//! - the full history in `input` (the client's items, every output item of the response, then
//!   one `function_call_output` per answered call), as the SDK's tool runner does;
//! - chained on the stored response: `previous_response_id` set to the response's `id` and
//!   `input` holding only the answers, when the client itself chains (`previous_response_id`)
//!   and the response was stored (`store` not `false`);
//! - in a server-side `conversation`, which keeps every item itself: `input` holds only the
//!   answers.

use std::borrow::Cow;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, SseEvent, StreamFilter, TOOL_DESCRIPTION, ToolOutput, Turn,
    append_to_root_array, array, object, set_root_member, sum_root_usage, truncated,
};
use crate::json::{
    Field, OrderedObject, Splice, array_append_point, is_null, quote, span_of, string_value,
};
use crate::sse;

/// The Responses adapter.
pub(crate) struct OpenAiResponses;

/// The string value of member `key`, if it is a string.
fn string_member<'a>(members: &OrderedObject<'a>, key: &str) -> Option<Cow<'a, str>> {
    members.get(key).and_then(string_value)
}

/// The retrieval tool in Responses format: flat, with `parameters` and `strict` given
/// explicitly (both are required keys of the SDK's `FunctionToolParam`).
fn tool_definition(tool_name: &str) -> String {
    format!(
        r#"{{"type":"function","name":{},"description":{},"parameters":{{"type":"object","properties":{{"hash":{{"type":"string","description":{}}},"query":{{"type":"string","description":{}}}}},"required":["hash"]}},"strict":false}}"#,
        quote(tool_name),
        quote(TOOL_DESCRIPTION),
        quote(HASH_DESCRIPTION),
        quote(QUERY_DESCRIPTION),
    )
}

/// The parts of a request the adapter reads, in one pass over the body. Duplicate members
/// are an error (then the request passes through untouched).
#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow, default)]
    model: Field<'a>,
    #[serde(borrow, default)]
    input: Field<'a>,
    #[serde(borrow, default)]
    tools: Field<'a>,
    #[serde(borrow, default)]
    tool_choice: Field<'a>,
    #[serde(borrow, default)]
    background: Field<'a>,
}

/// An item of `input`, with the members the adapter reads.
#[derive(Deserialize)]
struct InputItem<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Field<'a>,
    #[serde(borrow, default)]
    role: Field<'a>,
    #[serde(borrow, default)]
    content: Field<'a>,
    #[serde(borrow, default)]
    call_id: Field<'a>,
    #[serde(borrow, default)]
    name: Field<'a>,
    #[serde(borrow, default)]
    namespace: Field<'a>,
    /// A `function_call`'s arguments.
    #[serde(borrow, default)]
    arguments: Field<'a>,
    /// A `custom_tool_call`'s input.
    #[serde(borrow, default)]
    input: Field<'a>,
    #[serde(borrow, default)]
    output: Field<'a>,
    /// The tools an `additional_tools` item adds.
    #[serde(borrow, default)]
    tools: Field<'a>,
}

impl InputItem<'_> {
    fn kind(&self) -> Option<Cow<'_, str>> {
        self.kind.value().and_then(string_value)
    }

    /// A user message: `{"role":"user",…}` with `type` absent or `"message"`.
    fn is_user_message(&self) -> bool {
        self.role.is("\"user\"") && matches!(self.kind().as_deref(), None | Some("message"))
    }
}

/// The kind of call item that produces each kind of output item.
fn call_kind_of(output_kind: &str) -> Option<&'static str> {
    match output_kind {
        "function_call_output" => Some("function_call"),
        "custom_tool_call_output" => Some("custom_tool_call"),
        _ => None,
    }
}

/// A call item's input: the arguments of a function call, the input of a custom tool call.
fn call_input<'a>(item: &InputItem<'a>) -> Field<'a> {
    if item.kind().as_deref() == Some("custom_tool_call") {
        item.input
    } else {
        item.arguments
    }
}

/// Plain text of a user message's content: a string, or its `input_text` parts.
fn content_text(content: &RawValue) -> String {
    if let Some(text) = string_value(content) {
        return text.into_owned();
    }
    let Ok(parts) = array(content.get()) else {
        return String::new();
    };
    let texts: Vec<String> = parts
        .iter()
        .filter_map(|part| object(part.get()).ok())
        .filter(|part| string_member(part, "type").as_deref() == Some("input_text"))
        .filter_map(|part| string_member(&part, "text").map(Cow::into_owned))
        .collect();
    texts.join("\n")
}

/// The call that produced an output, as far as the request shows it.
struct CallContext {
    name: Option<String>,
    /// Set when the call was made inside a namespace: then it is not the retrieval tool.
    namespaced: bool,
    arguments: String,
}

/// The conversation before item `index`: the last user message, and the call of the output at
/// `index` (found by `call_id` among the earlier items).
/// Where each item's context is, found in one pass over the items (a request may hold
/// thousands of outputs: no scan backwards per output).
struct ContextIndex {
    /// For each item, the index of the last user message before it.
    last_user: Vec<Option<usize>>,
    /// (item type, call id) -> the indexes of the items with them, in order.
    calls: HashMap<(String, String), Vec<usize>>,
}

impl ContextIndex {
    fn new(items: &[InputItem<'_>]) -> Self {
        let mut last_user = Vec::with_capacity(items.len());
        let mut calls: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut last = None;
        for (index, item) in items.iter().enumerate() {
            last_user.push(last);
            if item.is_user_message() {
                last = Some(index);
            }
            if let (Some(kind), Some(call_id)) =
                (item.kind(), item.call_id.value().and_then(string_value))
            {
                calls
                    .entry((kind.into_owned(), call_id.into_owned()))
                    .or_default()
                    .push(index);
            }
        }
        Self { last_user, calls }
    }
}

fn context_before(
    items: &[InputItem<'_>],
    context: &ContextIndex,
    index: usize,
) -> (String, Option<CallContext>) {
    let output = &items[index];
    let last_user = context.last_user[index]
        .and_then(|at| items[at].content.value())
        .map(content_text)
        .unwrap_or_default();
    let last_user = truncated(last_user, MAX_QUESTION_BYTES);
    let call = output
        .kind()
        .and_then(|kind| call_kind_of(&kind))
        .zip(output.call_id.value().and_then(string_value))
        .and_then(|(call_kind, call_id)| {
            let at = context
                .calls
                .get(&(call_kind.to_owned(), call_id.into_owned()))?
                .iter()
                .rev()
                .find(|&&at| at < index)?;
            let item = &items[*at];
            Some(CallContext {
                name: item
                    .name
                    .value()
                    .and_then(string_value)
                    .map(Cow::into_owned),
                namespaced: item.namespace.value().is_some(),
                arguments: call_input(item).value().map_or_else(String::new, |raw| {
                    string_value(raw).map_or_else(|| raw.get().to_owned(), Cow::into_owned)
                }),
            })
        });
    let call = call.map(|mut call| {
        call.arguments = truncated(call.arguments, MAX_ARGUMENTS_BYTES);
        call
    });
    (last_user, call)
}

/// Whether a tools array (of the request, or of an `additional_tools` item) holds a tool
/// called `tool_name`. `None`: not an array of objects.
fn names_tool(tools: &RawValue, tool_name: &str) -> Option<bool> {
    let tools = array(tools.get()).ok()?;
    let mut found = false;
    for tool in tools {
        let tool = object(tool.get()).ok()?;
        found |= string_member(&tool, "name").as_deref() == Some(tool_name);
    }
    Some(found)
}

/// Whether the model could call `tool_name` in this request.
fn redeemable(request: &ResponsesRequest<'_>, items: &[InputItem<'_>], tool_name: &str) -> bool {
    // A background response is fetched later by the client, past the layer: nobody would
    // answer the model's retrieval calls.
    if request.background.is("true") {
        return false;
    }
    if let Some(choice) = request.tool_choice.value() {
        match choice.get() {
            "\"auto\"" | "\"required\"" => {}
            text if text.starts_with('{') => {
                let Ok(choice) = object(text) else {
                    return false;
                };
                match string_member(&choice, "type").as_deref() {
                    // A forced function: only ours will do.
                    Some("function") => {
                        if string_member(&choice, "name").as_deref() != Some(tool_name) {
                            return false;
                        }
                    }
                    // A set of allowed tools: ours must be in it.
                    Some("allowed_tools") => {
                        let allowed = choice
                            .get("tools")
                            .and_then(|tools| array(tools.get()).ok())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|tool| object(tool.get()).ok())
                            .any(|tool| {
                                string_member(&tool, "type").as_deref() == Some("function")
                                    && string_member(&tool, "name").as_deref() == Some(tool_name)
                            });
                        if !allowed {
                            return false;
                        }
                    }
                    // A forced custom, hosted, MCP… tool.
                    _ => return false,
                }
            }
            // "none", or a value the adapter does not know.
            _ => return false,
        }
    }
    // No client tool may already carry the name, in `tools` or added by an item.
    if let Some(tools) = request.tools.value()
        && names_tool(tools, tool_name) != Some(false)
    {
        return false;
    }
    items
        .iter()
        .filter(|item| item.kind().as_deref() == Some("additional_tools"))
        .filter_map(|item| item.tools.value())
        .all(|tools| names_tool(tools, tool_name) == Some(false))
}

/// Output item types that need nothing from the client: the server ran them, or they are the
/// model's text and reasoning. A turn with any other item besides the retrieval calls (a client
/// function, a custom tool, computer use, a shell…) goes back to the client.
const SERVER_SIDE_ITEMS: &[&str] = &[
    "reasoning",
    "message",
    "web_search_call",
    "file_search_call",
    "code_interpreter_call",
    "image_generation_call",
    "mcp_call",
    "mcp_list_tools",
    "compaction",
];

/// An item of a response's `output`.
struct OutputItem<'a> {
    raw: &'a RawValue,
    members: OrderedObject<'a>,
}

impl<'a> OutputItem<'a> {
    fn read(raw: &'a RawValue) -> Result<Self, Malformed> {
        // An item that is not an object is kept as it is, with no type: one odd item must not
        // make the whole response unreadable (our calls would then leak to the client).
        Ok(Self {
            raw,
            members: object(raw.get()).unwrap_or(OrderedObject(Vec::new())),
        })
    }

    fn kind(&self) -> Option<Cow<'a, str>> {
        string_member(&self.members, "type")
    }

    /// A call of the retrieval tool: a `function_call` of that name, outside any namespace.
    fn is_ours(&self, tool_name: &str) -> bool {
        self.kind().as_deref() == Some("function_call")
            && string_member(&self.members, "name").as_deref() == Some(tool_name)
            && self.members.get("namespace").is_none_or(is_null)
    }

    /// The item as it goes back in `input`: as it came, less what only responses carry. Like
    /// the SDK's tool runner, `created_by` goes, and so do the `null` values that a response
    /// type allows but the input type does not (a function call's `id`, say).
    fn replayed(&self) -> String {
        let kind = self.kind();
        let not_nullable: &[&str] = match kind.as_deref() {
            Some("function_call") => &["id", "namespace", "status", "async"],
            Some("reasoning") => &["content", "status"],
            _ => &[],
        };
        let drop = |key: &str, value: &RawValue| {
            key == "created_by" || (is_null(value) && not_nullable.contains(&key))
        };
        if !self.members.0.iter().any(|(key, value)| drop(key, value)) {
            return self.raw.get().to_owned();
        }
        OrderedObject::render(
            self.members
                .0
                .iter()
                .filter(|(key, value)| !drop(key, value))
                .map(|(key, value)| (key.as_ref(), value.get())),
        )
    }

    /// A reasoning item that can only be replayed from the server's store: without
    /// `encrypted_content`, its `id` must resolve there.
    fn is_reasoning_without_content(&self) -> bool {
        self.kind().as_deref() == Some("reasoning")
            && string_member(&self.members, "encrypted_content").is_none_or(|c| c.is_empty())
    }
}

/// The items of a response's `output` (empty when it is `null`).
fn output_items<'a>(root: &OrderedObject<'a>) -> Result<Vec<OutputItem<'a>>, Malformed> {
    let output = root.get("output").ok_or(Malformed("no output"))?;
    if is_null(output) {
        return Ok(Vec::new());
    }
    array(output.get())?
        .into_iter()
        .map(OutputItem::read)
        .collect()
}

/// How a continuation carries the conversation.
#[derive(Debug)]
enum Mode<'a> {
    /// The whole history goes in `input`: the request had none upstream (no
    /// `previous_response_id`), or the response was not stored (`store: false`), so it cannot
    /// be chained on. A `previous_response_id` of the request stays as it is: it still names
    /// the context before the request's own items. With `store: false`, reasoning items
    /// without `encrypted_content` are dropped (the server could not resolve their ids).
    Full { stored: bool },
    /// `previous_response_id` becomes the response's `id` (this raw JSON string), and `input`
    /// only the answers: the client chains on stored responses, and this one was stored.
    Chained(&'a str),
    /// The request names a server-side `conversation`, which holds the request's items and
    /// the response's output once the response completes: `input` only the answers.
    Conversation,
}

impl<'a> Mode<'a> {
    fn of(request: &OrderedObject<'_>, response: &OrderedObject<'a>) -> Self {
        let stored = request
            .get("store")
            .is_none_or(|store| store.get() != "false");
        if request.get("conversation").is_some_and(|c| !is_null(c)) {
            return Mode::Conversation;
        }
        let chained = request
            .get("previous_response_id")
            .is_some_and(|id| !is_null(id));
        match response.get("id").filter(|id| string_value(id).is_some()) {
            Some(id) if chained && stored => Mode::Chained(id.get()),
            _ => Mode::Full { stored },
        }
    }
}

/// A `function_call_output` item answering one call.
fn answer_item(answer: &Answer) -> String {
    OrderedObject::render([
        ("type", "\"function_call_output\""),
        ("call_id", quote(&answer.call_id).as_str()),
        ("output", quote(&answer.text).as_str()),
    ])
}

impl Adapter for OpenAiResponses {
    fn name(&self) -> &'static str {
        "openai-responses"
    }

    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool {
        method == http::Method::POST && uri.path().trim_end_matches('/').ends_with("/responses")
    }

    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed> {
        let request: ResponsesRequest<'_> =
            serde_json::from_str(body).map_err(|_| Malformed("not a responses request"))?;
        if request
            .model
            .value()
            .and_then(string_value)
            .is_none_or(|model| model.is_empty())
        {
            return Err(Malformed("no model"));
        }
        let input = request.input.value().ok_or(Malformed("no input"))?;
        let items: Vec<InputItem<'_>> = match input.get().as_bytes().first() {
            // A plain text input: a user message, no tool output.
            Some(b'"') => Vec::new(),
            Some(b'[') => serde_json::from_str(input.get())
                .map_err(|_| Malformed("input items are not objects"))?,
            _ => return Err(Malformed("input is neither text nor items")),
        };
        let mut outputs = Vec::new();
        // Cheap test first: most requests carry no tool output big enough to matter.
        let candidates = items.iter().enumerate().filter(|(_, item)| {
            item.output
                .value()
                .is_some_and(|o| o.get().len() >= min_bytes)
                && item
                    .kind()
                    .is_some_and(|kind| call_kind_of(&kind).is_some())
        });
        let mut context = None;
        for (index, item) in candidates {
            let Some(output) = item.output.value() else {
                continue;
            };
            let context = context.get_or_insert_with(|| ContextIndex::new(&items));
            let (last_user, call) = context_before(&items, context, index);
            if call
                .as_ref()
                .is_some_and(|call| !call.namespaced && call.name.as_deref() == Some(tool_name))
            {
                continue; // Our own answers are never compressed.
            }
            let (tool, arguments) = match call {
                Some(call) => (call.name, call.arguments),
                // The call lives upstream (previous_response_id): the output may name its tool.
                None => (
                    item.name
                        .value()
                        .and_then(string_value)
                        .map(Cow::into_owned),
                    String::new(),
                ),
            };
            let query = if arguments.is_empty() {
                last_user
            } else {
                format!("{last_user}\n{arguments}")
            };
            let strings: Vec<&RawValue> = match output.get().as_bytes().first() {
                Some(b'"') => vec![output],
                Some(b'[') => array(output.get())?
                    .into_iter()
                    .filter_map(|part| object(part.get()).ok())
                    .filter(|part| string_member(part, "type").as_deref() == Some("input_text"))
                    .filter_map(|part| part.get("text"))
                    .collect(),
                _ => Vec::new(),
            };
            for raw in strings {
                if raw.get().len() < min_bytes {
                    continue;
                }
                let (Some(span), Some(text)) = (span_of(body, raw), string_value(raw)) else {
                    continue;
                };
                outputs.push(ToolOutput {
                    span,
                    text: text.into_owned(),
                    query: query.clone(),
                    tool_name: tool.clone(),
                });
            }
        }
        // A request continuing a turn upstream may need the tool although it brings no output.
        let chained = self.upstream_history(body).is_some();
        let redeemable =
            (!outputs.is_empty() || chained) && redeemable(&request, &items, tool_name);
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
        let mut calls = Vec::new();
        for item in output_items(&root)? {
            if item.is_ours(tool_name) {
                let Some(id) = string_member(&item.members, "call_id").filter(|id| !id.is_empty())
                else {
                    // Without a call id there is nothing to pair an answer with.
                    return Ok(Turn::Other);
                };
                let arguments = match item.members.get("arguments") {
                    Some(raw) => {
                        string_value(raw).map_or_else(|| raw.get().to_owned(), Cow::into_owned)
                    }
                    None => String::new(),
                };
                calls.push(Call {
                    id: id.into_owned(),
                    arguments,
                });
            } else if !item
                .kind()
                .is_some_and(|kind| SERVER_SIDE_ITEMS.contains(&kind.as_ref()))
            {
                return Ok(Turn::Other);
            }
        }
        Ok(if calls.is_empty() {
            Turn::Other
        } else {
            Turn::Retrieve(calls)
        })
    }

    fn unsettled_calls(&self, request: &str, response: &str, tool_name: &str) -> Vec<Call> {
        // Only a stored response (the default) keeps our calls upstream.
        let stored = object(request)
            .ok()
            .and_then(|request| request.get("store").map(|store| store.get() != "false"))
            .unwrap_or(true);
        let Some(root) = object(response).ok().filter(|_| stored) else {
            return Vec::new();
        };
        output_items(&root)
            .unwrap_or_default()
            .into_iter()
            .filter(|item| item.is_ours(tool_name))
            .filter_map(|item| {
                let id = string_member(&item.members, "call_id").filter(|id| !id.is_empty())?;
                let arguments = item
                    .members
                    .get("arguments")
                    .map_or_else(String::new, |raw| {
                        string_value(raw).map_or_else(|| raw.get().to_owned(), Cow::into_owned)
                    });
                Some(Call {
                    id: id.into_owned(),
                    arguments,
                })
            })
            .collect()
    }

    fn settle(
        &self,
        request: &str,
        answers: &[Answer],
        splice: &mut Splice,
    ) -> Result<(), Malformed> {
        let root = object(request)?;
        let input = root.get("input").ok_or(Malformed("no input"))?;
        let span = span_of(request, input).ok_or(Malformed("input"))?;
        let outputs: Vec<String> = answers
            .iter()
            .map(|answer| {
                OrderedObject::render([
                    ("type", "\"function_call_output\""),
                    ("call_id", quote(&answer.call_id).as_str()),
                    ("output", quote(&answer.text).as_str()),
                ])
            })
            .collect();
        let outputs = outputs.join(",");
        if input.get().starts_with('"') {
            // A text input becomes a list: the answers, then the text as a user message.
            let message = OrderedObject::render([("role", "\"user\""), ("content", input.get())]);
            splice.replace(span, format!("[{outputs},{message}]"));
        } else {
            let inner = input.get().strip_prefix('[').ok_or(Malformed("input"))?;
            let comma = if inner.trim_start().starts_with(']') {
                ""
            } else {
                ","
            };
            splice.insert(span.start + 1, format!("{outputs}{comma}"));
        }
        Ok(())
    }

    fn redirect_history(
        &self,
        request: &str,
        to: &str,
        splice: &mut Splice,
    ) -> Result<(), Malformed> {
        let root = object(request)?;
        let previous = root
            .get("previous_response_id")
            .ok_or(Malformed("no previous_response_id"))?;
        splice.replace(
            span_of(request, previous).ok_or(Malformed("previous_response_id"))?,
            quote(to),
        );
        Ok(())
    }

    fn upstream_history(&self, request: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Upstream<'a> {
            #[serde(borrow, default)]
            previous_response_id: Field<'a>,
            #[serde(borrow, default)]
            conversation: Field<'a>,
        }
        let request = serde_json::from_str::<Upstream<'_>>(request).ok()?;
        let conversation = request.conversation.value().and_then(|conversation| {
            // A conversation is named by an id, or an object with one.
            string_value(conversation)
                .map(|id| id.into_owned())
                .or_else(|| {
                    object(conversation.get())
                        .ok()?
                        .get("id")
                        .and_then(string_value)
                        .map(|id| id.into_owned())
                })
        });
        request
            .previous_response_id
            .value()
            .and_then(string_value)
            .map(|id| id.into_owned())
            .or(conversation)
    }

    fn response_id(&self, response: &str) -> Option<String> {
        object(response)
            .ok()?
            .get("id")
            .and_then(string_value)
            .map(|id| id.into_owned())
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
        let input = root.get("input").ok_or(Malformed("no input"))?;
        let input_span = span_of(request, input).ok_or(Malformed("input"))?;
        let response_root = object(response)?;
        let answered: Vec<String> = answers.iter().map(answer_item).collect();

        let mut splice = Splice::default();
        match Mode::of(&root, &response_root) {
            Mode::Chained(id) => {
                let previous = root
                    .get("previous_response_id")
                    .and_then(|previous| span_of(request, previous))
                    .ok_or(Malformed("previous_response_id"))?;
                splice.replace(previous, id.to_owned());
                splice.replace(input_span, format!("[{}]", answered.join(",")));
            }
            Mode::Conversation => {
                splice.replace(input_span, format!("[{}]", answered.join(",")));
            }
            Mode::Full { stored } => {
                let items = output_items(&response_root)?;
                let appended: Vec<String> = items
                    .iter()
                    .filter(|item| stored || !item.is_reasoning_without_content())
                    .map(OutputItem::replayed)
                    .chain(answered)
                    .collect();
                let appended = appended.join(",");
                if string_value(input).is_some() {
                    // A text input is a user message: it becomes the first item.
                    let message =
                        OrderedObject::render([("role", "\"user\""), ("content", input.get())]);
                    splice.replace(input_span, format!("[{message},{appended}]"));
                } else {
                    let (at, has_items) =
                        array_append_point(request, &input_span).ok_or(Malformed("input"))?;
                    splice.insert(
                        at,
                        if has_items {
                            format!(",{appended}")
                        } else {
                            appended
                        },
                    );
                }
            }
        }
        if force_final {
            set_root_member(request, &root, "tool_choice", "\"none\"", &mut splice)?;
        }
        splice.apply(request).ok_or(Malformed("overlapping edits"))
    }

    fn stream_filter(&self, tool_name: &str, limit: usize) -> Box<dyn StreamFilter> {
        Box::new(ResponsesStream::new(tool_name, limit))
    }

    fn finalize(
        &self,
        response: &str,
        tool_name: &str,
        earlier_usage: &[serde_json::Value],
    ) -> Result<Option<String>, Malformed> {
        let root = object(response)?;
        let mut splice = Splice::default();

        // The model's retrieval calls (left in a mixed turn, or past the round cap).
        if let Some(output) = root.get("output").filter(|o| !is_null(o)) {
            let items = output_items(&root)?;
            let ours: Vec<bool> = items.iter().map(|item| item.is_ours(tool_name)).collect();
            if ours.contains(&true) {
                let mut keep: Vec<bool> = ours.iter().map(|ours| !ours).collect();
                // A reasoning item left with nothing after it (it preceded only our calls)
                // goes too: replayed alone, it is refused ("provided without its required
                // following item").
                let last_kept_other = (0..items.len())
                    .rev()
                    .find(|&i| keep[i] && items[i].kind().as_deref() != Some("reasoning"));
                for i in last_kept_other.map_or(0, |i| i + 1)..items.len() {
                    if keep[i] && ours[i + 1..].contains(&true) {
                        keep[i] = false;
                    }
                }
                let kept: Vec<&str> = items
                    .iter()
                    .zip(&keep)
                    .filter(|(_, keep)| **keep)
                    .map(|(item, _)| item.raw.get())
                    .collect();
                let span = span_of(response, output).ok_or(Malformed("output"))?;
                splice.replace(span, format!("[{}]", kept.join(",")));
            }
        }

        // The response echoes the request's tools: the client never sees ours.
        if let Some(tools) = root.get("tools").filter(|t| !is_null(t))
            && let Ok(list) = array(tools.get())
        {
            let is_ours = |tool: &&RawValue| {
                object(tool.get()).is_ok_and(|tool| {
                    string_member(&tool, "type").as_deref() == Some("function")
                        && string_member(&tool, "name").as_deref() == Some(tool_name)
                })
            };
            if list.iter().any(is_ours) {
                let kept: Vec<&str> = list
                    .iter()
                    .filter(|tool| !is_ours(tool))
                    .map(|tool| tool.get())
                    .collect();
                let span = span_of(response, tools).ok_or(Malformed("tools"))?;
                splice.replace(span, format!("[{}]", kept.join(",")));
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

/// The events that end a response. The round's one is held back until the layer knows whether
/// another round follows.
const TERMINAL_EVENTS: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// The events that start a response: the client gets those of the first round only.
const START_EVENTS: &[&str] = &[
    "response.created",
    "response.queued",
    "response.in_progress",
];

/// What becomes of one upstream event.
enum Fate {
    /// Goes to the client as it came.
    Raw,
    /// Goes to the client with this data instead.
    Rewritten(String),
    /// Never reaches the client: an event of a retrieval call, a later round's start.
    Dropped,
    /// The round's terminal event, or an event after it: held with the round's ending.
    Ending,
    /// The event named a call whose events waited for its name: send those, then judge the
    /// event again.
    Retry,
}

/// What becomes of the events of one upstream output item.
#[derive(Clone)]
enum Slot {
    /// The client's item, at this index.
    Client(u64),
    /// A call of the retrieval tool: dropped.
    Ours,
    /// A function call not named yet: its events wait for the name.
    Unnamed(Vec<SseEvent>),
    /// A call still not named when the round went over the limit, with the ids its item was
    /// announced with (see [`withheld`]). Nothing more of it is held, and since it may be ours,
    /// none of its events reach the client: the round is not continued, so no one would answer
    /// it. Named ours later (by its done item or the terminal response), it stays dropped; any
    /// other outcome means the client's call went nowhere, and the filter gives up (the client
    /// gets an error event).
    Withheld(Vec<String>),
}

/// The longest item id a [`Slot::Withheld`] keeps: past the limit nothing is counted, so what a
/// slot keeps is bounded by itself. A call of ours known only by a longer id at the terminal
/// event is taken for the client's (the client is told, nothing is lost).
const MAX_WITHHELD_ID_BYTES: usize = 256;

/// The slot of a call withheld past the limit, announced with `ids`.
fn withheld(mut ids: Vec<String>) -> Slot {
    ids.retain(|id| id.len() <= MAX_WITHHELD_ID_BYTES);
    Slot::Withheld(ids)
}

/// One streamed Responses exchange (see [`StreamFilter`]). The client sees one response: the
/// first round's start events, the items of every round with `output_index` dense across
/// rounds, `sequence_number` counting every event it gets, and the last round's terminal
/// event (its response as [`Adapter::finalize`] leaves it: our calls and tool removed, usage
/// summed over the rounds).
struct ResponsesStream {
    tool_name: String,
    limit: usize,
    /// The `sequence_number` of the client's next event.
    next_sequence: u64,
    /// The `output_index` of the client's next item.
    next_output_index: u64,
    /// A round was continued: the start events of later rounds are dropped.
    continued: bool,
    /// The usage of the rounds that were continued.
    earlier_usage: Vec<serde_json::Value>,
    /// The id of the response the client saw start.
    first_response_id: Option<String>,
    /// Events that waited for their call's name, to send before the current one.
    flush: Vec<SseEvent>,
    /// Why the filter stopped following the round, when it did: past the limit, a call whose
    /// events were withheld turned out to be the client's (or could not be told from ours any
    /// more), or an event came for an item no longer remembered. The client gets an error
    /// event, and nothing more.
    given_up: Option<&'static str>,
    round: Round,
}

/// Past the limit, how many of the round's items (the latest by upstream index, and every
/// withheld call) are remembered, to renumber or drop their later events. Items stream one
/// after another, so only the last one gets events; the others allow for a server that
/// interleaves a few.
const ITEMS_KEPT_PAST_LIMIT: usize = 16;

/// Why the filter gives up on a call it withheld, not named yet, when the round crossed
/// `max_body_bytes`, and that turned out to be the client's (or was never named).
const UNNAMED_PAST_LIMIT: &str = "a function call went over max_body_bytes before it was named";

/// What the filter keeps of the current round.
#[derive(Default)]
struct Round {
    /// Upstream `output_index` -> what becomes of the item's events. Ordered: calls never named
    /// are settled in upstream order. Past the limit, only the latest items and the withheld
    /// calls (see [`ITEMS_KEPT_PAST_LIMIT`]).
    indexes: BTreeMap<u64, Slot>,
    /// The highest index forgotten past the limit. An item above it was never seen: its
    /// events are judged as any new item's. An event of an item not remembered at or below it
    /// may be a late one of a forgotten item, ours or the client's, whose client index is
    /// forgotten too: the filter gives up rather than drop it unsaid or send it misnumbered.
    forgotten_up_to: Option<u64>,
    /// The items of `output_item.done`, by upstream index: the response's `output` when the
    /// terminal event carries none.
    done_items: BTreeMap<u64, String>,
    /// The terminal event, then whatever came after it.
    ending: Vec<SseEvent>,
    /// The terminal event came.
    ended: bool,
    /// Bytes of `done_items`, `ending`, the events of calls not named yet and the entries of
    /// `indexes`.
    held_bytes: usize,
    /// More than the limit was held: nothing more is, and the round is not continued.
    over_limit: bool,
    /// The upstream sent an error event: the round is not continued.
    errored: bool,
    /// The round's usage, read by `end_round`.
    usage: Option<serde_json::Value>,
}

impl ResponsesStream {
    fn new(tool_name: &str, limit: usize) -> Self {
        Self {
            tool_name: tool_name.to_owned(),
            limit,
            next_sequence: 0,
            next_output_index: 0,
            continued: false,
            earlier_usage: Vec::new(),
            first_response_id: None,
            flush: Vec::new(),
            given_up: None,
            round: Round::default(),
        }
    }

    fn give_up(&mut self, reason: &'static str) {
        self.given_up.get_or_insert(reason);
    }

    /// Once the filter gave up: what was held would end the stream as if nothing was missing;
    /// the error event does instead.
    fn report_given_up(&mut self, out: &mut Vec<Bytes>) {
        if let Some(reason) = self.given_up {
            self.round.errored = true;
            self.round.ending = Vec::new();
            self.flush = Vec::new();
            let error = self.error_with_code(reason, "ccr_stream_over_limit");
            out.push(error);
        }
    }

    /// The API's error event, with the client's next sequence number.
    fn error_with_code(&mut self, message: &str, code: &str) -> Bytes {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let message = quote(message);
        // The event's members are ResponseErrorEvent's; the nested `error` object, as the API
        // itself sends it, is what makes the Python SDK's stream raise `APIError`.
        let code = quote(code);
        let error = OrderedObject::render([
            ("type", "\"ccr_error\""),
            ("code", code.as_str()),
            ("message", message.as_str()),
            ("param", "null"),
        ]);
        let data = OrderedObject::render([
            ("type", "\"error\""),
            ("code", code.as_str()),
            ("message", message.as_str()),
            ("param", "null"),
            ("error", error.as_str()),
            ("sequence_number", sequence.to_string().as_str()),
        ]);
        sse::encode(Some("error"), &data)
    }

    /// Decides an event's fate, and keeps what the round's response needs of it.
    fn judge(&mut self, event: &SseEvent) -> Fate {
        if self.given_up.is_some() {
            return Fate::Dropped;
        }
        if self.round.ended {
            return Fate::Ending;
        }
        let Some(data) = event.data.as_deref() else {
            return Fate::Raw;
        };
        let Ok(members) = object(data) else {
            return Fate::Raw;
        };
        let kind = string_member(&members, "type");
        let kind = kind.as_deref().unwrap_or_default();
        if TERMINAL_EVENTS.contains(&kind) {
            // What calls never named held is judged (numbered, its done item kept) before the
            // round ends, then the terminal event is judged again.
            if self.settle_unnamed(&members) {
                return Fate::Retry;
            }
            if kind != "response.failed" {
                // A failed response's calls are not to be run: its end tells the client.
                self.settle_withheld(&members);
            }
            if self.given_up.is_some() {
                return Fate::Dropped;
            }
            self.round.ended = true;
            return Fate::Ending;
        }
        if START_EVENTS.contains(&kind) && self.continued {
            return Fate::Dropped;
        }
        if kind == "error" {
            self.round.errored = true;
        }
        let mut splice = Splice::default();
        if let Some(raw_index) = members.get("output_index")
            && let Ok(upstream_index) = raw_index.get().parse::<u64>()
        {
            let item = members
                .get("item")
                .filter(|_| kind.starts_with("response.output_item."));
            // Our calls are known by the name their item carries, from `output_item.added` on
            // (or later, for a server that names a call only in its done item).
            let verdict = item.and_then(|item| {
                let item = OutputItem::read(item).ok()?;
                let unnamed = item.kind().as_deref() == Some("function_call")
                    && string_member(&item.members, "name").is_none_or(|name| name.is_empty());
                (!unnamed).then(|| item.is_ours(&self.tool_name))
            });
            let slot = self.round.indexes.get(&upstream_index);
            if slot.is_none()
                && self
                    .round
                    .forgotten_up_to
                    .is_some_and(|forgotten| upstream_index <= forgotten)
                && kind != "response.output_item.added"
            {
                // Past the limit, an event of an item not remembered may be a late one of a
                // forgotten item: ours, or the client's at an index no longer known.
                self.give_up("an event came for an item forgotten past max_body_bytes");
                return Fate::Dropped;
            }
            match (slot, verdict) {
                (None | Some(Slot::Unnamed(_)), Some(ours)) => {
                    let slot = if ours {
                        Slot::Ours
                    } else {
                        self.next_output_index += 1;
                        Slot::Client(self.next_output_index - 1)
                    };
                    if let Some(Slot::Unnamed(held)) = self.set_slot(upstream_index, slot) {
                        self.round.held_bytes =
                            self.round.held_bytes.saturating_sub(size_of_events(&held));
                        // What waited for the name goes first (or nowhere, for ours).
                        if !ours {
                            self.flush = held;
                        }
                        return Fate::Retry;
                    }
                }
                (None, None) if item.is_some() => {
                    let slot = if self.round.over_limit {
                        let ids = item
                            .and_then(|item| object(item.get()).ok())
                            .map(|item| item_ids(&item))
                            .unwrap_or_default();
                        withheld(ids)
                    } else {
                        self.round.held_bytes += event.raw.len();
                        Slot::Unnamed(vec![event.clone()])
                    };
                    self.set_slot(upstream_index, slot);
                    return Fate::Dropped;
                }
                (Some(Slot::Unnamed(_)), None) => {
                    self.round.held_bytes += event.raw.len();
                    if let Some(Slot::Unnamed(held)) = self.round.indexes.get_mut(&upstream_index) {
                        held.push(event.clone());
                    }
                    return Fate::Dropped;
                }
                (None, None) => {
                    // An event of an item the stream never announced: the client's.
                    self.next_output_index += 1;
                    self.set_slot(upstream_index, Slot::Client(self.next_output_index - 1));
                    if self.given_up.is_some() {
                        return Fate::Dropped; // Not sent: it takes no sequence number.
                    }
                }
                // An item first seen through events that did not name it (no
                // `output_item.added`), now named as ours: it does not reach the client.
                (Some(Slot::Client(_)), Some(true)) => return Fate::Dropped,
                // A call withheld past the limit, named: ours stays dropped; the client's had
                // none of its events sent, so the client must be told.
                (Some(Slot::Withheld(_)), Some(true)) => {
                    self.set_slot(upstream_index, Slot::Ours);
                    return Fate::Dropped;
                }
                (Some(Slot::Withheld(_)), Some(false)) => {
                    self.give_up(UNNAMED_PAST_LIMIT);
                    return Fate::Dropped;
                }
                (Some(_), _) => {}
            }
            if kind == "response.output_item.done"
                && let Some(item) = item
            {
                self.keep_done_item(upstream_index, item.get());
            }
            let Some(Slot::Client(client_index)) = self.round.indexes.get(&upstream_index).cloned()
            else {
                return Fate::Dropped;
            };
            if client_index != upstream_index
                && let Some(span) = span_of(data, raw_index)
            {
                splice.replace(span, client_index.to_string());
            }
        }
        self.rewrite(data, &members, splice)
    }

    /// The event with the client's sequence number, and its response (of a start or terminal
    /// event) as the client may see it; `Raw` when nothing changes.
    fn rewrite(&mut self, data: &str, members: &OrderedObject<'_>, mut splice: Splice) -> Fate {
        if let Some(response) = members.get("response").filter(|r| r.get().starts_with('{'))
            && let Some(span) = span_of(data, response)
        {
            let finalized = OpenAiResponses
                .finalize(response.get(), &self.tool_name, &self.earlier_usage)
                .ok()
                .flatten();
            let client_response =
                self.with_first_id(finalized.as_deref().unwrap_or(response.get()));
            if let Some(client_response) = client_response.or(finalized) {
                splice.replace(span, client_response);
            }
        }
        if let Some(sequence) = members.get("sequence_number") {
            let number = self.next_sequence;
            self.next_sequence += 1;
            if sequence.get() != number.to_string()
                && let Some(span) = span_of(data, sequence)
            {
                splice.replace(span, number.to_string());
            }
        }
        if splice.is_empty() {
            return Fate::Raw;
        }
        splice.apply(data).map_or(Fate::Raw, Fate::Rewritten)
    }

    /// The response the client sees carries the first round's id throughout: clients check
    /// that a stream's lifecycle events name one response (the OpenAI SDK's stream helper
    /// raises otherwise). The layer redirects a later `previous_response_id` naming it to the
    /// last round's response, which holds the whole turn. `None`: no change.
    fn with_first_id(&mut self, response: &str) -> Option<String> {
        let root = object(response).ok()?;
        let id = root.get("id")?;
        let Some(first) = &self.first_response_id else {
            self.first_response_id = string_value(id).map(|id| id.into_owned());
            return None;
        };
        if string_value(id).as_deref() == Some(first.as_str()) {
            return None;
        }
        let mut splice = Splice::default();
        splice.replace(span_of(response, id)?, quote(first));
        splice.apply(response)
    }

    /// At the terminal event, settles the calls never named, in upstream order: one the
    /// terminal response's `output` names ours (the item at its index, or one with its `id` or
    /// `call_id`) is dropped with what it held, any other becomes the client's next item, its
    /// held events to send before the terminal event. False when there were none.
    fn settle_unnamed(&mut self, terminal: &OrderedObject<'_>) -> bool {
        let unnamed: Vec<u64> = self
            .round
            .indexes
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Unnamed(_)))
            .map(|(index, _)| *index)
            .collect();
        if unnamed.is_empty() {
            return false;
        }
        let (ours_at, our_ids) = self.terminal_ours(terminal);
        for upstream_index in unnamed {
            let ours_by_index = ours_by_index(&ours_at, upstream_index);
            let ours_by_id = || match self.round.indexes.get(&upstream_index) {
                Some(Slot::Unnamed(held)) => {
                    held_item_ids(held).iter().any(|id| our_ids.contains(id))
                }
                _ => false,
            };
            let ours = ours_by_index || ours_by_id();
            let slot = if ours {
                Slot::Ours
            } else {
                self.next_output_index += 1;
                Slot::Client(self.next_output_index - 1)
            };
            if let Some(Slot::Unnamed(held)) = self.set_slot(upstream_index, slot) {
                self.round.held_bytes = self.round.held_bytes.saturating_sub(size_of_events(&held));
                if !ours {
                    self.flush.extend(held);
                }
            }
        }
        true
    }

    /// The terminal response's items, by upstream `output_index`: ours or not; and the ids of
    /// ours.
    fn terminal_ours(&self, terminal: &OrderedObject<'_>) -> (Vec<bool>, Vec<String>) {
        terminal
            .get("response")
            .and_then(|response| object(response.get()).ok())
            .and_then(|response| {
                let items = output_items(&response).ok()?;
                let ours_at: Vec<bool> = items
                    .iter()
                    .map(|item| item.is_ours(&self.tool_name))
                    .collect();
                let our_ids: Vec<String> = items
                    .iter()
                    .filter(|item| item.is_ours(&self.tool_name))
                    .flat_map(|item| item_ids(&item.members))
                    .collect();
                Some((ours_at, our_ids))
            })
            .unwrap_or_default()
    }

    /// At the terminal event (past the limit), settles the calls withheld and still not named:
    /// one the terminal response names ours (as [`Self::settle_unnamed`] tells) stays dropped;
    /// any other is the client's, none of whose events went out, so the filter gives up.
    fn settle_withheld(&mut self, terminal: &OrderedObject<'_>) {
        let withheld: Vec<(u64, Vec<String>)> = self
            .round
            .indexes
            .iter()
            .filter_map(|(index, slot)| match slot {
                Slot::Withheld(ids) => Some((*index, ids.clone())),
                _ => None,
            })
            .collect();
        if withheld.is_empty() {
            return;
        }
        let (ours_at, our_ids) = self.terminal_ours(terminal);
        for (upstream_index, ids) in withheld {
            let ours = ours_by_index(&ours_at, upstream_index)
                || ids.iter().any(|id| our_ids.contains(id));
            if !ours {
                self.give_up(UNNAMED_PAST_LIMIT);
                return;
            }
            self.set_slot(upstream_index, Slot::Ours);
        }
    }

    /// Sets what becomes of an item's events; the slot it had, if any. A new item's entry counts
    /// against the limit; past it, the lowest indexes are forgotten to make room (the round
    /// will not be continued: only items that may still get events are needed), except the
    /// withheld calls, whose fate is still to tell the client: when those alone fill the room,
    /// the filter gives up.
    fn set_slot(&mut self, upstream_index: u64, slot: Slot) -> Option<Slot> {
        let round = &mut self.round;
        if !round.indexes.contains_key(&upstream_index) {
            if round.over_limit {
                while round.indexes.len() >= ITEMS_KEPT_PAST_LIMIT {
                    let forgettable = round
                        .indexes
                        .iter()
                        .find(|(_, slot)| !matches!(slot, Slot::Withheld(_)))
                        .map(|(index, _)| *index);
                    let Some(forgotten) = forgettable else {
                        self.given_up.get_or_insert(
                            "too many function calls not named yet past max_body_bytes",
                        );
                        break;
                    };
                    round.indexes.remove(&forgotten);
                    round.forgotten_up_to = round.forgotten_up_to.max(Some(forgotten));
                }
            } else {
                round.held_bytes += size_of::<(u64, Slot)>();
            }
        }
        round.indexes.insert(upstream_index, slot)
    }

    fn keep_done_item(&mut self, upstream_index: u64, item: &str) {
        if self.round.over_limit {
            return;
        }
        self.round.held_bytes += item.len();
        self.round
            .done_items
            .insert(upstream_index, item.to_owned());
    }

    /// Sends an event that is not held (any more): ending events go through here too.
    fn send(&mut self, event: SseEvent, fate: Fate, out: &mut Vec<Bytes>) {
        match fate {
            Fate::Raw => out.push(event.raw),
            Fate::Rewritten(data) => out.push(sse::encode(event.event.as_deref(), &data)),
            Fate::Dropped => {}
            // The call is named now (judging settled it): judged again, it has its fate.
            Fate::Retry => {
                let fate = self.judge(&event);
                self.send(event, fate, out);
            }
            Fate::Ending => {
                let fate = match event.data.as_deref().map(|data| (data, object(data))) {
                    Some((data, Ok(members))) => self.rewrite(data, &members, Splice::default()),
                    _ => Fate::Raw,
                };
                self.send(event, fate, out);
            }
        }
    }

    /// Holds an ending event (sends it at once past the limit).
    fn hold(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        if self.round.over_limit {
            self.send(event, Fate::Ending, out);
            return;
        }
        self.round.held_bytes += event.raw.len();
        self.round.ending.push(event);
    }

    /// Past the limit, nothing more is held and what was goes: the round will not be continued,
    /// so its ending events are final.
    fn enforce_limit(&mut self, out: &mut Vec<Bytes>) {
        if self.round.held_bytes <= self.limit || self.round.over_limit {
            return;
        }
        self.round.over_limit = true;
        self.round.done_items = BTreeMap::new();
        self.round.held_bytes = 0;
        // Calls not named yet hold nothing more either; since any may be ours, none of their
        // events go to the client.
        for slot in self.round.indexes.values_mut() {
            if let Slot::Unnamed(held) = slot {
                *slot = withheld(held_item_ids(held));
            }
        }
        self.release(out);
    }

    /// Sends the held ending events.
    fn release(&mut self, out: &mut Vec<Bytes>) {
        for event in std::mem::take(&mut self.round.ending) {
            self.send(event, Fate::Ending, out);
        }
    }
}

/// The non-empty `id` and `call_id` of an output item.
fn item_ids(item: &OrderedObject<'_>) -> Vec<String> {
    ["id", "call_id"]
        .into_iter()
        .filter_map(|key| string_member(item, key))
        .filter(|id| !id.is_empty())
        .map(Cow::into_owned)
        .collect()
}

/// The ids of the item a call not named yet was announced with (its first held event).
fn held_item_ids(held: &[SseEvent]) -> Vec<String> {
    held.first()
        .and_then(|event| object(event.data.as_deref()?).ok())
        .and_then(|members| object(members.get("item")?.get()).ok())
        .map(|item| item_ids(&item))
        .unwrap_or_default()
}

/// Whether the terminal response's item at `upstream_index` is ours (see
/// [`ResponsesStream::terminal_ours`]).
fn ours_by_index(ours_at: &[bool], upstream_index: u64) -> bool {
    usize::try_from(upstream_index)
        .ok()
        .and_then(|at| ours_at.get(at).copied())
        .unwrap_or(false)
}

/// The bytes of `events` as they came.
fn size_of_events(events: &[SseEvent]) -> usize {
    events.iter().map(|event| event.raw.len()).sum()
}

/// `response` with its `output` rebuilt from the round's `output_item.done` items when the
/// terminal event carries none (`null`, absent or empty), as the SDK's stream accumulator does.
fn with_done_items(response: &str, done_items: &BTreeMap<u64, String>) -> Option<String> {
    let root = object(response).ok()?;
    let carries_output = root.get("output").is_some_and(|output| {
        !is_null(output) && array(output.get()).is_ok_and(|items| !items.is_empty())
    });
    if carries_output || done_items.is_empty() {
        return Some(response.to_owned());
    }
    let items: Vec<&str> = done_items.values().map(String::as_str).collect();
    let mut splice = Splice::default();
    set_root_member(
        response,
        &root,
        "output",
        &format!("[{}]", items.join(",")),
        &mut splice,
    )
    .ok()?;
    splice.apply(response)
}

impl StreamFilter for ResponsesStream {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        if self.given_up.is_some() {
            return; // The client was told; nothing more of the round goes out.
        }
        let mut fate = self.judge(&event);
        if !self.flush.is_empty() || matches!(fate, Fate::Retry) {
            for waiting in std::mem::take(&mut self.flush) {
                let waiting_fate = self.judge(&waiting);
                self.send(waiting, waiting_fate, out);
            }
            if matches!(fate, Fate::Retry) {
                fate = self.judge(&event);
            }
        }
        if self.given_up.is_none() {
            match fate {
                Fate::Ending => self.hold(event, out),
                fate => self.send(event, fate, out),
            }
            self.enforce_limit(out);
        }
        self.report_given_up(out);
    }

    fn end_round(&mut self) -> Option<String> {
        let round = &mut self.round;
        if round.errored || round.over_limit {
            return None;
        }
        let members = object(round.ending.first()?.data.as_deref()?).ok()?;
        // A failed response is no turn to continue.
        if string_member(&members, "type").as_deref() == Some("response.failed") {
            return None;
        }
        let response = members.get("response")?.get();
        let response = with_done_items(response, &round.done_items)?;
        round.usage = OpenAiResponses.usage(&response);
        Some(response)
    }

    fn next_round(&mut self) {
        let round = std::mem::take(&mut self.round);
        self.earlier_usage.extend(round.usage);
        self.continued = true;
    }

    fn cut_short(&self) -> bool {
        !self.round.ended && !self.round.errored
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        // A call withheld past the limit is judged at the terminal event; a stream that
        // stopped before one leaves it unjudged, and it may have been the client's.
        let withheld = self
            .round
            .indexes
            .values()
            .any(|slot| matches!(slot, Slot::Withheld(_)));
        if withheld && !self.round.ended && !self.round.errored && self.given_up.is_none() {
            self.give_up(UNNAMED_PAST_LIMIT);
            self.report_given_up(out);
            return;
        }
        self.release(out);
    }

    fn error_event(&mut self, message: &str) -> Bytes {
        self.error_with_code(message, "ccr_continuation_failed")
    }

    fn gave_up(&self) -> bool {
        // Set while handling an event, whose handling then pushes the error event.
        self.given_up.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "ccr_retrieve";

    fn inspect(body: &str, min_bytes: usize) -> (Vec<ToolOutput>, bool) {
        match OpenAiResponses.inspect(body, TOOL, min_bytes).unwrap() {
            Inspection::Outputs {
                outputs,
                redeemable,
            } => (outputs, redeemable),
            Inspection::Skip(reason) => panic!("skipped: {reason}"),
        }
    }

    /// A request as the SDK sends it after a tool call: user message, reasoning item, the
    /// call, its output (a string), and a second output as a content array.
    const REQUEST: &str = r#"{"model":"gpt-5","input":[
        {"role":"developer","content":"Be brief."},
        {"role":"user","content":[{"type":"input_text","text":"why did the build fail?"},{"type":"input_image","image_url":"data:image/png;base64,AAAA","detail":"auto"}]},
        {"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"gAAAAB"},
        {"type":"function_call","id":"fc_1","call_id":"call_A","name":"bash","arguments":"{\"cmd\":\"make\"}","status":"completed"},
        {"type":"function_call_output","call_id":"call_A","output":"line1\nerror: caf\u00e9 \ud83d\ude00"},
        {"type":"function_call","id":"fc_2","call_id":"call_B","name":"fetch","arguments":"{\"url\":\"x\"}","status":"completed"},
        {"type":"function_call_output","call_id":"call_B","output":[{"type":"input_text","text":"part one"},{"type":"input_image","image_url":"https://example.com/a.png"},{"type":"input_text","text":"part two"}]}
    ],"tools":[{"type":"function","name":"bash","parameters":{"type":"object"},"strict":true}],"store":true}"#;

    #[test]
    fn unsettled_calls_of_a_stored_response_are_answered_in_the_next_request() {
        let response = r#"{"id":"resp_m","output":[{"type":"function_call","call_id":"call_a","name":"ccr_retrieve","arguments":"{\"hash\":\"x\"}"},{"type":"function_call","call_id":"call_b","name":"bash","arguments":"{}"}]}"#;
        let calls = OpenAiResponses.unsettled_calls(r#"{"model":"m","input":[]}"#, response, TOOL);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, "call_a");
        assert!(
            OpenAiResponses
                .unsettled_calls(r#"{"model":"m","input":[],"store":false}"#, response, TOOL)
                .is_empty()
        );
        let answers = [Answer {
            call_id: "call_a".into(),
            text: "the original".into(),
        }];
        for (request, expected) in [
            (
                r#"{"model":"m","previous_response_id":"resp_m","input":[{"type":"function_call_output","call_id":"call_b","output":"ok"}]}"#,
                r#"{"model":"m","previous_response_id":"resp_m","input":[{"type":"function_call_output","call_id":"call_a","output":"the original"},{"type":"function_call_output","call_id":"call_b","output":"ok"}]}"#,
            ),
            (
                r#"{"model":"m","previous_response_id":"resp_m","input":"go on"}"#,
                r#"{"model":"m","previous_response_id":"resp_m","input":[{"type":"function_call_output","call_id":"call_a","output":"the original"},{"role":"user","content":"go on"}]}"#,
            ),
            (
                r#"{"model":"m","previous_response_id":"resp_m","input":[ ]}"#,
                r#"{"model":"m","previous_response_id":"resp_m","input":[{"type":"function_call_output","call_id":"call_a","output":"the original"} ]}"#,
            ),
        ] {
            let mut splice = Splice::default();
            OpenAiResponses
                .settle(request, &answers, &mut splice)
                .unwrap();
            assert_eq!(splice.apply(request).unwrap(), expected);
        }
    }

    #[test]
    fn matches_only_the_create_endpoint() {
        let post = http::Method::POST;
        for (method, uri, expected) in [
            (&post, "https://api.openai.com/v1/responses", true),
            (&post, "http://localhost:8080/v1/responses/", true),
            (
                &post,
                "https://x.openai.azure.com/openai/responses?api-version=2025-04-01",
                true,
            ),
            (&post, "/responses", true),
            (&post, "https://api.openai.com/v1/responses/resp_123", false),
            (
                &post,
                "https://api.openai.com/v1/responses/input_tokens",
                false,
            ),
            (&post, "https://api.openai.com/v1/responses/compact", false),
            (
                &post,
                "https://api.openai.com/v1/responses/resp_1/cancel",
                false,
            ),
            (&post, "https://api.openai.com/v1/chat/completions", false),
            (&post, "https://api.openai.com/v1/my_responses", false),
            (
                &http::Method::GET,
                "https://api.openai.com/v1/responses",
                false,
            ),
        ] {
            let uri: http::Uri = uri.parse().unwrap();
            assert_eq!(
                OpenAiResponses.matches(method, &uri),
                expected,
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn finds_string_and_part_outputs_with_their_context() {
        let (found, redeemable) = inspect(REQUEST, 0);
        assert!(redeemable);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].text, "line1\nerror: caf\u{e9} \u{1f600}");
        assert_eq!(
            &REQUEST[found[0].span.clone()],
            r#""line1\nerror: caf\u00e9 \ud83d\ude00""#
        );
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
        assert_eq!(
            found[0].query,
            "why did the build fail?\n{\"cmd\":\"make\"}"
        );
        // Each text part of a content array separately; the image is left alone.
        assert_eq!(found[1].text, "part one");
        assert_eq!(&REQUEST[found[1].span.clone()], r#""part one""#);
        assert_eq!(found[2].text, "part two");
        assert_eq!(found[1].tool_name.as_deref(), Some("fetch"));
        assert_eq!(found[2].query, "why did the build fail?\n{\"url\":\"x\"}");
        // Short strings are not reported.
        let (found, _) = inspect(REQUEST, 20);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "line1\nerror: caf\u{e9} \u{1f600}");
    }

    #[test]
    fn text_input_has_no_outputs() {
        let (found, redeemable) = inspect(r#"{"model":"gpt-5","input":"hello there"}"#, 0);
        assert!(found.is_empty());
        assert!(!redeemable);
    }

    #[test]
    fn context_comes_from_before_the_output_and_falls_back_to_its_own_name() {
        let body = r#"{"model":"m","previous_response_id":"resp_0","input":[
            {"type":"message","role":"user","content":"first question"},
            {"type":"function_call_output","call_id":"call_up","name":"grep","output":"upstream call"},
            {"role":"user","content":"later question"}
        ]}"#;
        let (found, _) = inspect(body, 0);
        assert_eq!(found.len(), 1);
        // The call lives upstream: no arguments, the output's own name.
        assert_eq!(found[0].query, "first question");
        assert_eq!(found[0].tool_name.as_deref(), Some("grep"));

        // A call after the output does not count; neither does an assistant message.
        let body = r#"{"model":"m","input":[
            {"role":"assistant","content":"not the user"},
            {"type":"function_call_output","call_id":"c","output":"out"},
            {"type":"function_call","call_id":"c","name":"bash","arguments":"{}"}
        ]}"#;
        let (found, _) = inspect(body, 0);
        assert_eq!(found[0].query, "");
        assert_eq!(found[0].tool_name, None);
    }

    #[test]
    fn custom_tool_outputs_are_found_with_their_input() {
        let body = r#"{"model":"m","input":[
            {"role":"user","content":"apply it"},
            {"type":"custom_tool_call","call_id":"ct","name":"patch","input":"*** Begin Patch"},
            {"type":"custom_tool_call_output","call_id":"ct","output":"patched 3 files"}
        ]}"#;
        let (found, _) = inspect(body, 0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "patched 3 files");
        assert_eq!(found[0].tool_name.as_deref(), Some("patch"));
        assert_eq!(found[0].query, "apply it\n*** Begin Patch");
    }

    #[test]
    fn our_own_answers_are_skipped() {
        let body = r#"{"model":"m","input":[
            {"role":"user","content":"q"},
            {"type":"function_call","call_id":"r1","name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"},
            {"type":"function_call_output","call_id":"r1","output":"the original"},
            {"type":"function_call","call_id":"r2","name":"ccr_retrieve","namespace":"crm","arguments":"{}"},
            {"type":"function_call_output","call_id":"r2","output":"a namespaced tool of the same name"}
        ]}"#;
        let (found, _) = inspect(body, 0);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "a namespaced tool of the same name");
    }

    #[test]
    fn the_query_is_bounded() {
        let body = serde_json::json!({"model": "m", "input": [
            {"role": "user", "content": "why ".repeat(5_000)},
            {"type": "function_call", "call_id": "c", "name": "t", "arguments": "é".repeat(3_000)},
            {"type": "function_call_output", "call_id": "c", "output": "output"}
        ]})
        .to_string();
        let (found, _) = inspect(&body, 0);
        assert!(found[0].query.len() <= MAX_QUESTION_BYTES + 1 + MAX_ARGUMENTS_BYTES);
        assert!(found[0].query.starts_with("why why"));
        assert!(found[0].query.ends_with('é'));
    }

    #[test]
    fn reads_streams_and_refuses_other_shapes() {
        // A streamed request is compressed like any other: the stream filter answers it.
        let body = r#"{"model":"m","input":[{"type":"function_call_output","call_id":"c","output":"x"}],"stream":true}"#;
        let (found, redeemable) = inspect(body, 0);
        assert_eq!(found.len(), 1);
        assert!(redeemable);
        for body in [
            "[1]",
            r#"{"input":[]}"#,
            r#"{"model":"","input":[]}"#,
            r#"{"model":7,"input":[]}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","input":null}"#,
            r#"{"model":"m","input":7}"#,
            r#"{"model":"m","input":[1]}"#,
            r#"{"model":"m","messages":[]}"#,
            // Duplicate members make the request unreadable: it passes through.
            r#"{"model":"m","input":[],"tools":[],"tools":[]}"#,
            r#"{"model":"m","input":[{"type":"function_call_output","output":"a","output":"b"}]}"#,
        ] {
            assert!(OpenAiResponses.inspect(body, TOOL, 0).is_err(), "{body}");
        }
    }

    #[test]
    fn redeemable_only_when_the_model_can_call_the_tool() {
        let output = r#"{"type":"function_call_output","call_id":"c","output":"x"}"#;
        let cases = [
            ("", true),
            (r#","tool_choice":"auto""#, true),
            (r#","tool_choice":"required""#, true),
            (r#","tool_choice":null"#, true),
            (r#","tool_choice":"none""#, false),
            (r#","tool_choice":"sometimes""#, false),
            (r#","tool_choice":{"type":"function","name":"bash"}"#, false),
            (
                r#","tool_choice":{"type":"function","name":"ccr_retrieve"}"#,
                true,
            ),
            (r#","tool_choice":{"type":"custom","name":"patch"}"#, false),
            (r#","tool_choice":{"type":"web_search_preview"}"#, false),
            (
                r#","tool_choice":{"type":"allowed_tools","mode":"auto","tools":[{"type":"function","name":"bash"}]}"#,
                false,
            ),
            (
                r#","tool_choice":{"type":"allowed_tools","mode":"auto","tools":[{"type":"function","name":"ccr_retrieve"}]}"#,
                true,
            ),
            (r#","tools":[{"type":"function","name":"bash"}]"#, true),
            (r#","tools":null"#, true),
            (
                r#","tools":[{"type":"function","name":"ccr_retrieve"}]"#,
                false,
            ),
            (
                r#","tools":[{"type":"custom","name":"ccr_retrieve"}]"#,
                false,
            ),
            (r#","tools":{"type":"function"}"#, false),
            (r#","tools":[7]"#, false),
            (r#","background":true"#, false),
            (r#","background":false"#, true),
        ];
        for (extra, expected) in cases {
            let body = format!(r#"{{"model":"m","input":[{output}]{extra}}}"#);
            assert_eq!(inspect(&body, 0).1, expected, "{body}");
        }
        // A tool of our name added by an item.
        let body = format!(
            r#"{{"model":"m","input":[{{"type":"additional_tools","role":"developer","tools":[{{"type":"function","name":"ccr_retrieve"}}]}},{output}]}}"#
        );
        assert!(!inspect(&body, 0).1);
    }

    #[test]
    fn injects_after_the_clients_tools() {
        let tool = tool_definition(TOOL);
        let cases = [
            (
                r#"{"model":"m","input":[] }"#,
                format!(r#"{{"model":"m","input":[] ,"tools":[{tool}]}}"#),
            ),
            (
                r#"{"input":[],"tools":null}"#,
                format!(r#"{{"input":[],"tools":[{tool}]}}"#),
            ),
            (
                r#"{"input":[],"tools":[ ]}"#,
                format!(r#"{{"input":[],"tools":[ {tool}]}}"#),
            ),
            (
                r#"{"tools":[{"type":"web_search"}],"input":[]}"#,
                format!(r#"{{"tools":[{{"type":"web_search"}},{tool}],"input":[]}}"#),
            ),
        ];
        for (body, expected) in cases {
            let mut splice = Splice::default();
            OpenAiResponses
                .inject_tool(body, TOOL, &mut splice)
                .unwrap();
            assert_eq!(splice.apply(body).unwrap(), expected);
        }
        // The flat shape of the SDK's FunctionToolParam.
        let parsed: serde_json::Value = serde_json::from_str(&tool).unwrap();
        assert_eq!(parsed["type"], "function");
        assert_eq!(parsed["name"], TOOL);
        assert_eq!(parsed["description"], TOOL_DESCRIPTION);
        assert_eq!(parsed["strict"], false);
        assert_eq!(
            parsed["parameters"]["required"],
            serde_json::json!(["hash"])
        );
        assert_eq!(
            parsed["parameters"]["properties"]["query"]["type"],
            "string"
        );
        assert!(parsed.get("function").is_none());
        // Its bytes never change.
        assert_eq!(tool, tool_definition(TOOL));
    }

    /// A response in which the model reasons and calls the retrieval tool twice in parallel.
    const RESPONSE: &str = r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-5","output":[{"id":"rs_2","type":"reasoning","summary":[],"encrypted_content":"gAAAAC=="},{"id":"fc_3","type":"function_call","status":"completed","arguments":"{\"hash\":\"abc\",\"query\":\"caf\u00e9\"}","call_id":"call_r1","name":"ccr_retrieve"},{"id":"fc_4","type":"function_call","status":"completed","arguments":"{\"hash\":\"abc\"}","call_id":"call_r2","name":"ccr_retrieve"}],"parallel_tool_calls":true,"tool_choice":"auto","tools":[{"type":"function","name":"bash","parameters":{"type":"object"},"strict":true},{"type":"function","name":"ccr_retrieve","description":"d","parameters":{},"strict":false}],"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":120}}"#;

    /// An answer, with a function call of the client's added when `mixed`.
    fn with_client_call(response: &str) -> String {
        response.replace(
            r#""name":"ccr_retrieve"}],"#,
            r#""name":"ccr_retrieve"},{"type":"function_call","id":"fc_5","call_id":"call_c","name":"bash","arguments":"{}","status":"completed"}],"#,
        )
    }

    #[test]
    fn reads_retrieval_turns() {
        assert_eq!(
            OpenAiResponses.read_turn(RESPONSE, TOOL).unwrap(),
            Turn::Retrieve(vec![
                Call {
                    id: "call_r1".into(),
                    arguments: "{\"hash\":\"abc\",\"query\":\"caf\u{e9}\"}".into()
                },
                Call {
                    id: "call_r2".into(),
                    arguments: r#"{"hash":"abc"}"#.into()
                }
            ])
        );
        let mixed = with_client_call(RESPONSE);
        assert_ne!(mixed, RESPONSE);
        assert_eq!(
            OpenAiResponses.read_turn(&mixed, TOOL).unwrap(),
            Turn::Other
        );
        // Any other call kind the client runs makes the turn the client's.
        for other in [
            r#"{"type":"custom_tool_call","call_id":"x","name":"patch","input":"p"}"#,
            r#"{"type":"computer_call","call_id":"x","action":{}}"#,
            r#"{"type":"mcp_approval_request","id":"x","name":"n","arguments":"{}","server_label":"s"}"#,
            r#"{"type":"function_call","call_id":"x","name":"ccr_retrieve","namespace":"crm","arguments":"{}"}"#,
        ] {
            let response = RESPONSE.replacen(r#""output":["#, &format!(r#""output":[{other},"#), 1);
            assert_eq!(
                OpenAiResponses.read_turn(&response, TOOL).unwrap(),
                Turn::Other,
                "{other}"
            );
        }
        // A hosted tool call the server ran does not stop the loop.
        let searched = RESPONSE.replacen(
            r#""output":["#,
            r#""output":[{"type":"web_search_call","id":"ws_1","status":"completed"},"#,
            1,
        );
        assert!(matches!(
            OpenAiResponses.read_turn(&searched, TOOL).unwrap(),
            Turn::Retrieve(calls) if calls.len() == 2
        ));
        let answer = r#"{"id":"resp_2","status":"completed","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"hi","annotations":[]}]}]}"#;
        assert_eq!(
            OpenAiResponses.read_turn(answer, TOOL).unwrap(),
            Turn::Other
        );
        let failed = r#"{"id":"resp_3","status":"failed","error":{"code":"server_error","message":"x"},"output":null}"#;
        assert_eq!(
            OpenAiResponses.read_turn(failed, TOOL).unwrap(),
            Turn::Other
        );
        assert!(
            OpenAiResponses
                .read_turn(r#"{"choices":[]}"#, TOOL)
                .is_err()
        );
        // No call id: nothing to pair an answer with.
        let no_id = RESPONSE.replace(r#""call_id":"call_r1","#, "");
        assert_eq!(
            OpenAiResponses.read_turn(&no_id, TOOL).unwrap(),
            Turn::Other
        );
    }

    fn answers() -> [Answer; 2] {
        [
            Answer {
                call_id: "call_r1".into(),
                text: "matches: caf\u{e9}\n".into(),
            },
            Answer {
                call_id: "call_r2".into(),
                text: "the \"whole\" original".into(),
            },
        ]
    }

    const ANSWERS_JSON: &str = r#"{"type":"function_call_output","call_id":"call_r1","output":"matches: café\n"},{"type":"function_call_output","call_id":"call_r2","output":"the \"whole\" original"}"#;

    #[test]
    fn a_full_history_continuation_appends_every_output_item_then_the_answers() {
        let request = r#"{"model":"gpt-5", "input":[{"role":"user","content":"q"}],"tool_choice":"auto","include":["reasoning.encrypted_content"]}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        assert_eq!(
            next,
            format!(
                r#"{{"model":"gpt-5", "input":[{{"role":"user","content":"q"}},{{"id":"rs_2","type":"reasoning","summary":[],"encrypted_content":"gAAAAC=="}},{{"id":"fc_3","type":"function_call","status":"completed","arguments":"{{\"hash\":\"abc\",\"query\":\"caf\u00e9\"}}","call_id":"call_r1","name":"ccr_retrieve"}},{{"id":"fc_4","type":"function_call","status":"completed","arguments":"{{\"hash\":\"abc\"}}","call_id":"call_r2","name":"ccr_retrieve"}},{ANSWERS_JSON}],"tool_choice":"auto","include":["reasoning.encrypted_content"]}}"#
            )
        );
        let last = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), true)
            .unwrap();
        assert!(
            last.contains(r#"],"tool_choice":"none","include""#),
            "{last}"
        );
        let without_choice = r#"{"model":"m","input":[]}"#;
        let last = OpenAiResponses
            .continuation(without_choice, RESPONSE, &answers(), true)
            .unwrap();
        assert!(
            last.starts_with(r#"{"model":"m","input":[{"id":"rs_2""#),
            "{last}"
        );
        assert!(last.ends_with(r#"}],"tool_choice":"none"}"#), "{last}");
        let value: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(value["input"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn a_text_input_becomes_a_user_message() {
        let request = r#"{"model":"m","input":"caf\u00e9?","store":true}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        assert!(
            next.starts_with(
                r#"{"model":"m","input":[{"role":"user","content":"caf\u00e9?"},{"id":"rs_2","#
            ),
            "{next}"
        );
        assert!(next.ends_with(&format!(r#"{ANSWERS_JSON}],"store":true}}"#)));
    }

    #[test]
    fn without_storage_reasoning_needs_its_encrypted_content() {
        let response = RESPONSE.replace(
            r#"{"id":"rs_2","type":"reasoning","summary":[],"encrypted_content":"gAAAAC=="}"#,
            r#"{"id":"rs_2","type":"reasoning","summary":[],"encrypted_content":"gAAAAC=="},{"id":"rs_3","type":"reasoning","summary":[],"encrypted_content":null}"#,
        );
        // Stored: every item, by id.
        let request = r#"{"model":"m","input":[]}"#;
        let next = OpenAiResponses
            .continuation(request, &response, &answers(), false)
            .unwrap();
        assert!(next.contains(r#""id":"rs_3""#));
        // Not stored: only reasoning that carries its content.
        let request = r#"{"model":"m","input":[],"store":false}"#;
        let next = OpenAiResponses
            .continuation(request, &response, &answers(), false)
            .unwrap();
        assert!(!next.contains(r#""id":"rs_3""#), "{next}");
        assert!(next.contains(r#""encrypted_content":"gAAAAC==""#));
        assert!(next.contains(r#""call_id":"call_r2","name":"ccr_retrieve""#));
    }

    #[test]
    fn response_only_fields_are_dropped_from_replayed_items() {
        let response = r#"{"id":"resp_1","output":[{"type":"reasoning","id":"rs_1","summary":[],"content":null,"encrypted_content":null,"status":null},{"type":"function_call","id":null,"call_id":"call_r1","name":"ccr_retrieve","namespace":null,"arguments":"{}","status":null,"created_by":"user_1"},{"type":"message","id":"msg_1","role":"assistant","status":"completed","phase":"commentary","content":[{"type":"output_text","text":"Looking.","annotations":[],"logprobs":[]}]}]}"#;
        let next = OpenAiResponses
            .continuation(
                r#"{"model":"m","input":[]}"#,
                response,
                &answers()[..1],
                false,
            )
            .unwrap();
        assert_eq!(
            next,
            r#"{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":null},{"type":"function_call","call_id":"call_r1","name":"ccr_retrieve","arguments":"{}"},{"type":"message","id":"msg_1","role":"assistant","status":"completed","phase":"commentary","content":[{"type":"output_text","text":"Looking.","annotations":[],"logprobs":[]}]},{"type":"function_call_output","call_id":"call_r1","output":"matches: café\n"}]}"#
        );
    }

    #[test]
    fn a_chained_continuation_sends_only_the_answers_after_the_response() {
        let request = r#"{"model":"m","previous_response_id":"resp_0","input":[{"type":"function_call_output","call_id":"call_A","output":"view"}],"instructions":"Be brief.","tools":[]}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        assert_eq!(
            next,
            format!(
                r#"{{"model":"m","previous_response_id":"resp_1","input":[{ANSWERS_JSON}],"instructions":"Be brief.","tools":[]}}"#
            )
        );
        // The same with store: true, and the final round.
        let request = r#"{"store":true,"previous_response_id":"resp_0","input":"go","tool_choice":{"type":"function","name":"ccr_retrieve"},"model":"m"}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers()[1..], true)
            .unwrap();
        assert_eq!(
            next,
            r#"{"store":true,"previous_response_id":"resp_1","input":[{"type":"function_call_output","call_id":"call_r2","output":"the \"whole\" original"}],"tool_choice":"none","model":"m"}"#
        );
        // Not stored: the response cannot be chained on; the history goes in full after the
        // same earlier context.
        let request = r#"{"model":"m","previous_response_id":"resp_0","store":false,"input":[]}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        assert!(next.starts_with(r#"{"model":"m","previous_response_id":"resp_0","store":false,"input":[{"id":"rs_2""#), "{next}");
        // A response without an id cannot be chained on either.
        let request = r#"{"model":"m","previous_response_id":"resp_0","input":[]}"#;
        let anonymous = RESPONSE.replace(r#""id":"resp_1","#, "");
        let next = OpenAiResponses
            .continuation(request, &anonymous, &answers(), false)
            .unwrap();
        assert!(next.contains(r#""previous_response_id":"resp_0""#));
        assert!(next.contains(r#""id":"fc_4""#));
    }

    #[test]
    fn a_conversation_continuation_sends_only_the_answers() {
        let request = r#"{"model":"m","conversation":{"id":"conv_1"},"input":[{"role":"user","content":"q"}]}"#;
        let next = OpenAiResponses
            .continuation(request, RESPONSE, &answers(), false)
            .unwrap();
        assert_eq!(
            next,
            format!(r#"{{"model":"m","conversation":{{"id":"conv_1"}},"input":[{ANSWERS_JSON}]}}"#)
        );
    }

    #[test]
    fn history_is_upstream_with_a_previous_response_or_a_conversation() {
        for (body, expected) in [
            (r#"{"model":"m","input":[]}"#, false),
            (
                r#"{"model":"m","input":[],"previous_response_id":null}"#,
                false,
            ),
            (
                r#"{"model":"m","input":[],"previous_response_id":"resp_1"}"#,
                true,
            ),
            (r#"{"model":"m","input":[],"conversation":"conv_1"}"#, true),
            (
                r#"{"model":"m","input":[],"conversation":{"id":"conv_1"}}"#,
                true,
            ),
            ("not json", false),
        ] {
            assert_eq!(
                OpenAiResponses.upstream_history(body).is_some(),
                expected,
                "{body}"
            );
        }
        assert_eq!(
            OpenAiResponses
                .upstream_history(r#"{"model":"m","input":[],"conversation":{"id":"conv_1"}}"#)
                .as_deref(),
            Some("conv_1")
        );
        assert_eq!(
            OpenAiResponses
                .response_id(r#"{"id":"resp_7","output":[]}"#)
                .as_deref(),
            Some("resp_7")
        );
        {}
    }

    #[test]
    fn finalize_strips_our_calls_and_tool_and_sums_usage() {
        let mixed = with_client_call(RESPONSE);
        let out = OpenAiResponses
            .finalize(&mixed, TOOL, &[])
            .unwrap()
            .unwrap();
        assert!(!out.contains(TOOL), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let output = value["output"].as_array().unwrap();
        // The reasoning item stays: the client's call follows it.
        assert_eq!(output.len(), 2);
        assert_eq!(output[0]["id"], "rs_2");
        assert_eq!(output[1]["call_id"], "call_c");
        assert_eq!(value["status"], "completed");
        assert_eq!(value["tools"].as_array().unwrap().len(), 1);
        assert_eq!(value["tools"][0]["name"], "bash");
        // Everything else keeps its bytes.
        assert!(out.starts_with(r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-5","output":[{"id":"rs_2","#));
        assert!(out.ends_with(r#""parallel_tool_calls":true,"tool_choice":"auto","tools":[{"type":"function","name":"bash","parameters":{"type":"object"},"strict":true}],"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":120}}"#));

        // Only our calls (the model ignored the last round's tool_choice): they go, with the
        // reasoning item that preceded them; usage is summed over the rounds.
        let earlier = [
            serde_json::json!({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 55}),
        ];
        let out = OpenAiResponses
            .finalize(RESPONSE, TOOL, &earlier)
            .unwrap()
            .unwrap();
        assert!(out.contains(r#""output":[]"#), "{out}");
        assert!(out.contains(r#""usage":{"input_tokens":150,"input_tokens_details":{"cached_tokens":50},"output_tokens":25,"output_tokens_details":{"reasoning_tokens":14},"total_tokens":175}"#), "{out}");

        // An answer after a message and our call keeps the message.
        let answered = RESPONSE.replacen(
            r#""output":["#,
            r#""output":[{"type":"message","id":"m","role":"assistant","status":"completed","content":[]},"#,
            1,
        );
        let out = OpenAiResponses
            .finalize(&answered, TOOL, &[])
            .unwrap()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["output"].as_array().unwrap().len(), 1);
        assert_eq!(value["output"][0]["type"], "message");

        // Nothing of ours: no change.
        let answer = r#"{"id":"resp_2","status":"completed","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"hi","annotations":[]}]}],"tools":[{"type":"function","name":"bash"}],"usage":{"input_tokens":1}}"#;
        assert_eq!(OpenAiResponses.finalize(answer, TOOL, &[]).unwrap(), None);
        assert!(OpenAiResponses.finalize("[]", TOOL, &[]).is_err());
    }

    #[test]
    fn usage_is_the_usage_object() {
        assert_eq!(
            OpenAiResponses.usage(RESPONSE).unwrap()["total_tokens"],
            120
        );
        assert_eq!(OpenAiResponses.usage(r#"{"usage":null}"#), None);
    }

    mod streaming {
        use super::*;
        use crate::sse::SseParser;
        use serde_json::{Value, json};

        const LIMIT: usize = 1 << 20;

        /// The events of an SSE text.
        fn parse(text: &[u8]) -> Vec<SseEvent> {
            let mut parser = SseParser::new(LIMIT);
            let mut events = Vec::new();
            parser.push(text, |event| events.push(event)).unwrap();
            parser.finish(|event| events.push(event));
            events
        }

        /// An upstream round: `event:` + `data:` per event, `sequence_number` from 0 and the
        /// members in the order written.
        fn upstream(events: &[Value]) -> Vec<SseEvent> {
            let mut text = String::new();
            for (sequence, event) in events.iter().enumerate() {
                let mut event = event.clone();
                event["sequence_number"] = json!(sequence);
                let kind = event["type"].as_str().unwrap().to_owned();
                text.push_str(&format!("event: {kind}\ndata: {event}\n\n"));
            }
            parse(text.as_bytes())
        }

        /// Feeds a round event by event; what the client got after each one.
        fn feed(filter: &mut dyn StreamFilter, events: Vec<SseEvent>) -> Vec<Vec<Bytes>> {
            events
                .into_iter()
                .map(|event| {
                    let mut out = Vec::new();
                    filter.event(event, &mut out);
                    out
                })
                .collect()
        }

        /// The data of the client's events, as JSON.
        fn client_events(out: &[Bytes]) -> Vec<Value> {
            let bytes: Vec<u8> = out.iter().flat_map(|chunk| chunk.to_vec()).collect();
            parse(&bytes)
                .iter()
                .map(|event| {
                    let value: Value =
                        serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
                    // The `event:` line names the type, as the API's does.
                    assert_eq!(event.event.as_deref(), value["type"].as_str());
                    value
                })
                .collect()
        }

        fn new_filter() -> Box<dyn StreamFilter> {
            OpenAiResponses.stream_filter(TOOL, LIMIT)
        }

        fn tools() -> Value {
            json!([
                {"type":"function","name":"bash","parameters":{"type":"object"},"strict":true},
                {"type":"function","name":TOOL,"description":"d","parameters":{},"strict":false}
            ])
        }

        fn response(id: &str, status: &str, output: Value, usage: Value) -> Value {
            json!({"id":id,"object":"response","status":status,"model":"gpt-5","output":output,"tools":tools(),"usage":usage})
        }

        fn usage(input: u64, output: u64) -> Value {
            json!({"input_tokens":input,"input_tokens_details":{"cached_tokens":0},"output_tokens":output,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":input + output})
        }

        fn start(id: &str) -> Vec<Value> {
            let response = response(id, "in_progress", json!([]), Value::Null);
            vec![
                json!({"type":"response.created","response":response}),
                json!({"type":"response.in_progress","response":response}),
            ]
        }

        fn message(index: u64, id: &str, text: &str) -> (Vec<Value>, Value) {
            let done = json!({"id":id,"type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":text,"annotations":[]}]});
            let (head, tail) = text.split_at(text.len() / 2);
            let events = vec![
                json!({"type":"response.output_item.added","output_index":index,"item":{"id":id,"type":"message","status":"in_progress","role":"assistant","content":[]}}),
                json!({"type":"response.content_part.added","item_id":id,"output_index":index,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}),
                json!({"type":"response.output_text.delta","item_id":id,"output_index":index,"content_index":0,"delta":head,"logprobs":[]}),
                json!({"type":"response.output_text.delta","item_id":id,"output_index":index,"content_index":0,"delta":tail,"logprobs":[]}),
                json!({"type":"response.output_text.done","item_id":id,"output_index":index,"content_index":0,"text":text,"logprobs":[]}),
                json!({"type":"response.content_part.done","item_id":id,"output_index":index,"content_index":0,"part":{"type":"output_text","text":text,"annotations":[]}}),
                json!({"type":"response.output_item.done","output_index":index,"item":done}),
            ];
            (events, done)
        }

        fn call(
            index: u64,
            id: &str,
            call_id: &str,
            name: &str,
            arguments: &str,
        ) -> (Vec<Value>, Value) {
            let done = json!({"id":id,"type":"function_call","status":"completed","arguments":arguments,"call_id":call_id,"name":name});
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            let events = vec![
                json!({"type":"response.output_item.added","output_index":index,"item":{"id":id,"type":"function_call","status":"in_progress","arguments":"","call_id":call_id,"name":name}}),
                json!({"type":"response.function_call_arguments.delta","item_id":id,"output_index":index,"delta":head}),
                json!({"type":"response.function_call_arguments.delta","item_id":id,"output_index":index,"delta":tail}),
                json!({"type":"response.function_call_arguments.done","item_id":id,"output_index":index,"arguments":arguments}),
                json!({"type":"response.output_item.done","output_index":index,"item":done}),
            ];
            (events, done)
        }

        fn reasoning(index: u64, id: &str) -> (Vec<Value>, Value) {
            let done =
                json!({"id":id,"type":"reasoning","summary":[],"encrypted_content":"gAAAAE=="});
            let events = vec![
                json!({"type":"response.output_item.added","output_index":index,"item":{"id":id,"type":"reasoning","summary":[]}}),
                json!({"type":"response.output_item.done","output_index":index,"item":done}),
            ];
            (events, done)
        }

        fn completed(response: Value) -> Value {
            json!({"type":"response.completed","response":response})
        }

        /// The client's stream holds one response as the SDK accumulates it: one start, one
        /// end, sequence numbers 0, 1, 2…, every item added once at a dense index and done
        /// before the end, no event of ours.
        fn assert_coherent(events: &[Value]) {
            for (sequence, event) in events.iter().enumerate() {
                assert_eq!(event["sequence_number"], json!(sequence), "{event}");
            }
            let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(kinds[0], "response.created");
            assert_eq!(
                kinds.iter().filter(|k| **k == "response.created").count(),
                1
            );
            assert_eq!(
                kinds
                    .iter()
                    .filter(|k| **k == "response.in_progress")
                    .count(),
                1
            );
            let terminal = kinds.iter().filter(|k| TERMINAL_EVENTS.contains(k)).count();
            assert!(terminal <= 1);
            let added: Vec<u64> = events
                .iter()
                .filter(|e| e["type"] == "response.output_item.added")
                .map(|e| e["output_index"].as_u64().unwrap())
                .collect();
            assert_eq!(added, (0..added.len() as u64).collect::<Vec<_>>());
            for event in events {
                if let Some(index) = event["output_index"].as_u64() {
                    assert!(index < added.len() as u64, "{event}");
                }
            }
            let text = serde_json::to_string(events).unwrap();
            assert!(!text.contains(TOOL), "{text}");
        }

        #[test]
        fn without_retrieval_every_event_goes_at_once_byte_for_byte() {
            let (message_events, message_done) = message(0, "msg_1", "The build failed.");
            let mut events = start("resp_1");
            events.extend(message_events);
            events.push(completed(response(
                "resp_1",
                "completed",
                json!([message_done]),
                usage(10, 5),
            )));
            let mut upstream_events = upstream(&events);
            // A keep-alive and an event that is not JSON go as they are.
            let mut extra = parse(b": keep-alive\r\n\r\ndata: not json\r\n\r\n");
            upstream_events.splice(2..2, extra.drain(..));
            let raws: Vec<Bytes> = upstream_events.iter().map(|e| e.raw.clone()).collect();

            let mut filter = new_filter();
            let outs = feed(filter.as_mut(), upstream_events);
            let last = outs.len() - 1;
            for (index, out) in outs.iter().enumerate() {
                match index {
                    // The start events echo the request's tools: ours goes.
                    0 | 1 => {
                        assert_eq!(out.len(), 1);
                        let ours = format!(
                            r#",{{"description":"d","name":"{TOOL}","parameters":{{}},"strict":false,"type":"function"}}"#
                        );
                        let upstream = String::from_utf8(raws[index].to_vec()).unwrap();
                        assert!(upstream.contains(&ours));
                        assert_eq!(out[0], upstream.replace(&ours, ""));
                    }
                    // The terminal event waits for the end of the round.
                    _ if index == last => assert!(out.is_empty()),
                    _ => assert_eq!(out, &vec![raws[index].clone()], "event {index}"),
                }
            }
            let response = filter.end_round().unwrap();
            assert_eq!(
                OpenAiResponses.read_turn(&response, TOOL).unwrap(),
                Turn::Other
            );
            let mut out = Vec::new();
            filter.finish(&mut out);
            let end = client_events(&out);
            assert_eq!(end.len(), 1);
            assert_eq!(end[0]["type"], "response.completed");
            assert_eq!(
                end[0]["sequence_number"],
                json!(9),
                "after the 2 start and 7 message events"
            );
            assert_eq!(end[0]["response"]["output"][0]["id"], "msg_1");
            assert_eq!(end[0]["response"]["usage"], usage(10, 5));
            assert_eq!(end[0]["response"]["tools"].as_array().unwrap().len(), 1);

            let mut all: Vec<Bytes> = outs.into_iter().flatten().collect();
            all.extend(out);
            let all: Vec<Bytes> = all
                .into_iter()
                .filter(|b| b.starts_with(b"event:"))
                .collect();
            assert_coherent(&client_events(&all));
        }

        /// Round 1: reasoning, then our call (its terminal event without output); round 2 the
        /// answer.
        fn retrieval_rounds() -> (Vec<SseEvent>, Vec<SseEvent>) {
            let (reasoning_events, _) = reasoning(0, "rs_1");
            let (call_events, _) = call(
                1,
                "fc_1",
                "call_r1",
                TOOL,
                r#"{"hash":"abc","query":"café"}"#,
            );
            let mut first = start("resp_1");
            first.extend(reasoning_events);
            first.extend(call_events);
            first.push(completed(response(
                "resp_1",
                "completed",
                Value::Null,
                usage(100, 20),
            )));
            let (message_events, message_done) = message(0, "msg_2", "It failed on café.");
            let mut second = start("resp_2");
            second.extend(message_events);
            second.push(completed(response(
                "resp_2",
                "completed",
                json!([message_done]),
                usage(150, 30),
            )));
            (upstream(&first), upstream(&second))
        }

        #[test]
        fn a_retrieval_round_is_continued_into_one_response() {
            let (first, second) = retrieval_rounds();
            let mut filter = new_filter();
            let mut client: Vec<Bytes> =
                feed(filter.as_mut(), first).into_iter().flatten().collect();
            // Of round 1 the client got the start and the reasoning item, nothing of our call.
            let so_far = client_events(&client);
            let kinds: Vec<&str> = so_far.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(
                kinds,
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.output_item.done"
                ]
            );

            let response = filter.end_round().unwrap();
            // The terminal event had no output: it is rebuilt from the done items, ours too.
            let Turn::Retrieve(calls) = OpenAiResponses.read_turn(&response, TOOL).unwrap() else {
                panic!("{response}");
            };
            assert_eq!(
                calls,
                [Call {
                    id: "call_r1".into(),
                    arguments: r#"{"hash":"abc","query":"café"}"#.into()
                }]
            );
            assert_eq!(
                OpenAiResponses.response_id(&response).as_deref(),
                Some("resp_1")
            );
            let request =
                r#"{"model":"gpt-5","input":[{"role":"user","content":"why?"}],"stream":true}"#;
            let answers = [Answer {
                call_id: "call_r1".into(),
                text: "the original".into(),
            }];
            let next = OpenAiResponses
                .continuation(request, &response, &answers, false)
                .unwrap();
            let next: Value = serde_json::from_str(&next).unwrap();
            assert_eq!(next["stream"], true);
            let input = next["input"].as_array().unwrap();
            assert_eq!(input.len(), 4);
            assert_eq!(input[1]["encrypted_content"], "gAAAAE==");
            assert_eq!(input[2]["call_id"], "call_r1");
            assert_eq!(input[2]["arguments"], r#"{"hash":"abc","query":"café"}"#);
            assert_eq!(input[3]["type"], "function_call_output");

            filter.next_round();
            let outs = feed(filter.as_mut(), second);
            // The second start is dropped; the message streams at once.
            assert!(outs[0].is_empty() && outs[1].is_empty());
            assert!(outs[2..outs.len() - 1].iter().all(|out| out.len() == 1));
            client.extend(outs.into_iter().flatten());
            let response = filter.end_round().unwrap();
            assert_eq!(
                OpenAiResponses.read_turn(&response, TOOL).unwrap(),
                Turn::Other
            );
            filter.finish(&mut client);

            let events = client_events(&client);
            assert_coherent(&events);
            // The message is the client's second item.
            let message_events: Vec<&Value> = events
                .iter()
                .filter(|e| e["item_id"] == "msg_2" || e["item"]["id"] == "msg_2")
                .collect();
            assert_eq!(message_events.len(), 7);
            assert!(message_events.iter().all(|e| e["output_index"] == 1));
            let end = events.last().unwrap();
            assert_eq!(end["type"], "response.completed");
            assert_eq!(
                end["response"]["id"], "resp_1",
                "the id the stream started with"
            );
            assert_eq!(
                end["response"]["usage"],
                json!({"input_tokens":250,"input_tokens_details":{"cached_tokens":0},"output_tokens":50,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":300})
            );
            assert_eq!(end["response"]["output"].as_array().unwrap().len(), 1);
            assert_eq!(events.len(), 2 + 2 + 7 + 1);
        }

        #[test]
        fn a_mixed_turn_keeps_the_clients_call_at_a_renumbered_index() {
            let (ours, ours_done) = call(0, "fc_1", "call_r1", TOOL, r#"{"hash":"abc"}"#);
            let (theirs, theirs_done) = call(1, "fc_2", "call_c", "bash", r#"{"cmd":"make"}"#);
            let mut events = start("resp_1");
            events.extend(ours);
            events.extend(theirs);
            events.push(completed(response(
                "resp_1",
                "completed",
                json!([ours_done, theirs_done]),
                usage(10, 5),
            )));
            let mut filter = new_filter();
            let mut client: Vec<Bytes> = feed(filter.as_mut(), upstream(&events))
                .into_iter()
                .flatten()
                .collect();
            let response = filter.end_round().unwrap();
            assert_eq!(
                OpenAiResponses.read_turn(&response, TOOL).unwrap(),
                Turn::Other
            );
            filter.finish(&mut client);
            let events = client_events(&client);
            assert_coherent(&events);
            assert_eq!(events.len(), 2 + 5 + 1);
            assert!(events[2..7].iter().all(|e| e["output_index"] == 0));
            assert_eq!(events[2]["item"]["call_id"], "call_c");
            assert_eq!(events[3]["delta"], r#"{"cmd":"#);
            let output = events[7]["response"]["output"].as_array().unwrap();
            assert_eq!(output.len(), 1);
            assert_eq!(output[0]["call_id"], "call_c");
            assert_eq!(events[7]["response"]["usage"], usage(10, 5));
        }

        #[test]
        fn an_upstream_error_goes_to_the_client_and_ends_the_exchange() {
            let (message_events, _) = message(0, "msg_1", "Partial");
            let mut events = start("resp_1");
            events.extend(message_events[..3].iter().cloned());
            events
                .push(json!({"type":"error","code":"server_error","message":"boom","param":null}));
            let upstream_events = upstream(&events);
            let error_raw = upstream_events.last().unwrap().raw.clone();
            let mut filter = new_filter();
            let outs = feed(filter.as_mut(), upstream_events);
            assert_eq!(
                outs.last().unwrap(),
                &vec![error_raw],
                "already numbered right: unchanged"
            );
            assert_eq!(filter.end_round(), None);
            let mut out = Vec::new();
            filter.finish(&mut out);
            assert!(out.is_empty());

            // In a continuation, it is renumbered after what the client already got.
            let (first, _) = retrieval_rounds();
            let mut filter = new_filter();
            let mut client: Vec<Bytes> =
                feed(filter.as_mut(), first).into_iter().flatten().collect();
            assert!(filter.end_round().is_some());
            filter.next_round();
            let mut second = start("resp_2");
            second.push(json!({"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null}));
            client.extend(
                feed(filter.as_mut(), upstream(&second))
                    .into_iter()
                    .flatten(),
            );
            assert_eq!(filter.end_round(), None);
            filter.finish(&mut client);
            let events = client_events(&client);
            assert_coherent(&events);
            let error = events.last().unwrap();
            assert_eq!(error["type"], "error");
            assert_eq!(error["message"], "slow down");
            assert_eq!(error["sequence_number"], 4);
        }

        #[test]
        fn an_unfinished_round_is_not_continued() {
            let (first, _) = retrieval_rounds();
            let cut = first.len() - 1;
            let mut filter = new_filter();
            let client: Vec<Bytes> = feed(filter.as_mut(), first.into_iter().take(cut).collect())
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(filter.end_round(), None);
            let mut out = Vec::new();
            filter.finish(&mut out);
            assert!(out.is_empty());
            let error = filter.error_event("the continuation failed");
            let mut events = client_events(&client);
            events.extend(client_events(&[error]));
            assert_coherent(&events);

            // A continuation cut short ends with an error event, not just an end of stream.
            let (first, second) = retrieval_rounds();
            let mut filter = new_filter();
            let mut client: Vec<Bytes> =
                feed(filter.as_mut(), first).into_iter().flatten().collect();
            assert!(filter.end_round().is_some());
            filter.next_round();
            client.extend(
                feed(filter.as_mut(), second.into_iter().take(4).collect())
                    .into_iter()
                    .flatten(),
            );
            assert_eq!(filter.end_round(), None);
            assert!(filter.cut_short(), "the driver tells the client");
            client.push(filter.error_event("the continuation's stream ended before its response"));
            let events = client_events(&client);
            assert_coherent(&events);
            let last = events.last().unwrap();
            assert_eq!(last["type"], "error");
            assert_eq!(last["sequence_number"], 6);
        }

        #[test]
        fn the_error_event_is_the_apis_and_raises_in_the_sdk() {
            let mut filter = new_filter();
            let mut out = Vec::new();
            let (first, _) = retrieval_rounds();
            for event in first.into_iter().take(3) {
                filter.event(event, &mut out);
            }
            let error = filter.error_event("upstream \"failed\"");
            assert!(error.starts_with(b"event: error\ndata: {"));
            let events = client_events(&[error]);
            // ResponseErrorEvent's members, and the nested error the SDK raises on.
            assert_eq!(
                events[0],
                json!({"type":"error","code":"ccr_continuation_failed","message":"upstream \"failed\"","param":null,"error":{"type":"ccr_error","code":"ccr_continuation_failed","message":"upstream \"failed\"","param":null},"sequence_number":3})
            );
        }

        #[test]
        fn a_failed_or_incomplete_response_ends_the_round() {
            for (kind, status, continued) in [
                ("response.failed", "failed", false),
                ("response.incomplete", "incomplete", true),
            ] {
                let (call_events, _) = call(0, "fc_1", "call_r1", TOOL, r#"{"hash":"abc"}"#);
                let mut events = start("resp_1");
                events.extend(call_events);
                events.push(json!({"type":kind,"response":response("resp_1", status, Value::Null, usage(1, 1))}));
                let mut filter = new_filter();
                let mut client: Vec<Bytes> = feed(filter.as_mut(), upstream(&events))
                    .into_iter()
                    .flatten()
                    .collect();
                assert_eq!(filter.end_round().is_some(), continued, "{kind}");
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                assert_eq!(events.last().unwrap()["type"], kind);
                // Null output stays null: the SDK rebuilds it from the items the client saw.
                assert_eq!(events.last().unwrap()["response"]["output"], Value::Null);
            }
        }

        #[test]
        fn over_the_limit_the_round_ends_as_it_is() {
            let (first, _) = retrieval_rounds();
            let mut filter = OpenAiResponses.stream_filter(TOOL, 300);
            let outs = feed(filter.as_mut(), first);
            // The terminal event could not be held: it went at once, without our call.
            let end = client_events(outs.last().unwrap());
            assert_eq!(end.len(), 1);
            assert_eq!(end[0]["type"], "response.completed");
            assert_eq!(filter.end_round(), None);
            let mut out = Vec::new();
            filter.finish(&mut out);
            assert!(out.is_empty());
            let events = client_events(&outs.into_iter().flatten().collect::<Vec<_>>());
            assert_coherent(&events);

            // Under it, the same round is held and continued.
            let (first, _) = retrieval_rounds();
            let mut filter = OpenAiResponses.stream_filter(TOOL, 2_000);
            let outs = feed(filter.as_mut(), first);
            assert!(outs.last().unwrap().is_empty());
            assert!(filter.end_round().is_some());
        }

        /// The bytes the round holds in events of calls not named yet.
        fn held_unnamed(filter: &ResponsesStream) -> usize {
            filter
                .round
                .indexes
                .values()
                .map(|slot| match slot {
                    Slot::Unnamed(held) => size_of_events(held),
                    _ => 0,
                })
                .sum()
        }

        /// The client's stream ended with the filter's error event: it was told, and nothing
        /// came after it.
        fn assert_given_up(filter: &dyn StreamFilter, events: &[Value]) {
            assert!(filter.gave_up());
            let last = events.last().unwrap();
            assert_eq!(last["type"], "error", "{last}");
            assert_eq!(last["code"], "ccr_stream_over_limit", "{last}");
            assert_eq!(last["error"]["code"], "ccr_stream_over_limit", "{last}");
            assert!(
                events
                    .iter()
                    .all(|e| !TERMINAL_EVENTS.contains(&e["type"].as_str().unwrap())),
                "no terminal event after a give-up"
            );
        }

        /// A stream that stops before its terminal event leaves a call withheld past the limit
        /// unjudged: it may have been the client's, so the client is told.
        #[test]
        fn a_call_withheld_when_the_stream_stops_before_its_end_ends_with_an_error() {
            let (message_events, _) = message(0, "msg_1", "Looking.");
            let mut events = start("resp_1");
            events.extend(message_events);
            events.push(json!({"type":"response.output_item.added","output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":""}}));
            for _ in 0..1_000 {
                events.push(json!({"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"x".repeat(100)}));
            }
            let mut filter = ResponsesStream::new(TOOL, 4_096);
            let mut client = Vec::new();
            for event in upstream(&events) {
                filter.event(event, &mut client);
            }
            assert!(!filter.gave_up());
            assert_eq!(filter.end_round(), None);
            filter.finish(&mut client);
            let events = client_events(&client);
            assert_given_up(&filter, &events);
            let numbers: Vec<u64> = events
                .iter()
                .map(|e| e["sequence_number"].as_u64().unwrap())
                .collect();
            assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
        }

        #[test]
        fn a_call_not_named_holds_no_more_than_the_limit() {
            let limit = 4_096;
            for (later_name, terminal_lists_it) in
                [(TOOL, true), (TOOL, false), ("bash", true), ("bash", false)]
            {
                let (message_events, message_done) = message(0, "msg_1", "Looking.");
                let mut events = start("resp_1");
                events.extend(message_events);
                events.push(json!({"type":"response.output_item.added","output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":""}}));
                for _ in 0..1_000 {
                    events.push(json!({"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"x".repeat(100)}));
                }
                let done = json!({"id":"fc_1","type":"function_call","status":"completed","arguments":"x","call_id":"call_1","name":later_name});
                events
                    .push(json!({"type":"response.output_item.done","output_index":1,"item":done}));
                // Some servers send no `output` in the terminal event.
                let output = if terminal_lists_it {
                    json!([message_done, done])
                } else {
                    Value::Null
                };
                events.push(completed(response(
                    "resp_1",
                    "completed",
                    output,
                    usage(10, 5),
                )));
                let mut filter = ResponsesStream::new(TOOL, limit);
                let mut client = Vec::new();
                let mut most_held = 0;
                for event in upstream(&events) {
                    if filter.gave_up() {
                        break; // The exchange's stream drops the upstream here.
                    }
                    filter.event(event, &mut client);
                    most_held = most_held.max(held_unnamed(&filter));
                }
                assert!(most_held <= limit, "{most_held} bytes held");
                assert_eq!(filter.end_round(), None, "over the limit");
                assert!(!filter.cut_short());
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                // Its name came too late: the call may have been ours, so nothing of it went.
                assert!(
                    events
                        .iter()
                        .all(|e| e["item_id"] != "fc_1" && e["item"]["id"] != "fc_1"),
                    "{later_name}"
                );
                if later_name == TOOL {
                    assert!(!filter.gave_up());
                    assert_eq!(events.last().unwrap()["type"], "response.completed");
                } else {
                    // The client's call, none of its events sent: the client is told.
                    assert_given_up(&filter, &events);
                    assert_eq!(events.len(), 2 + 7 + 1, "the message, then the error");
                }
            }
        }

        /// Past the limit, a call whose events never name it is judged by the terminal
        /// response: one it names ours stays hidden; any other (named the client's, or not
        /// listed) ends the exchange with an error event.
        #[test]
        fn a_call_never_named_past_the_limit_is_judged_by_the_terminal_response() {
            let limit = 4_096;
            // A message whose done item alone goes over the limit.
            let (message_events, message_done) = message(0, "msg_1", &"y".repeat(limit));
            let ours = json!({"id":"fc_1","type":"function_call","status":"completed","arguments":"{}","call_id":"call_1","name":TOOL});
            let clients = json!({"id":"fc_1","type":"function_call","status":"completed","arguments":"{}","call_id":"call_1","name":"bash"});
            for (kind, output, hidden) in [
                ("response.completed", json!([message_done, ours]), true),
                // Only ours listed, not at its index: known by its id.
                ("response.completed", json!([ours]), true),
                ("response.completed", json!([message_done, clients]), false),
                ("response.completed", json!([message_done]), false),
                ("response.completed", Value::Null, false),
                ("response.incomplete", Value::Null, false),
                // A failed response's calls are not to be run: its end tells the client.
                ("response.failed", Value::Null, true),
            ] {
                let (call_events, _) = call(1, "fc_1", "call_1", "", "{}");
                let mut events = start("resp_1");
                events.extend(message_events.clone());
                events.extend(call_events);
                let status = kind.trim_start_matches("response.");
                let terminal = response("resp_1", status, output.clone(), usage(10, 5));
                events.push(json!({"type":kind,"response":terminal}));
                let mut filter = ResponsesStream::new(TOOL, limit);
                let mut client = Vec::new();
                for event in upstream(&events) {
                    if filter.gave_up() {
                        break;
                    }
                    filter.event(event, &mut client);
                }
                assert_eq!(filter.end_round(), None, "over the limit");
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                assert!(
                    events
                        .iter()
                        .all(|e| e["item_id"] != "fc_1" && e["item"]["id"] != "fc_1"),
                    "{output}"
                );
                if hidden {
                    assert!(!filter.gave_up(), "{kind} {output}");
                    assert_eq!(events.last().unwrap()["type"], kind);
                } else {
                    assert_given_up(&filter, &events);
                }
            }
        }

        /// Past the limit, calls withheld (announced without a name) are remembered until they
        /// are named: named ours one after another, however many, they stay hidden; when
        /// withheld calls alone fill the room, the client is told.
        #[test]
        fn withheld_calls_are_never_forgotten() {
            let limit = 4_096;
            let (message_events, _) = message(0, "msg_0", &"y".repeat(limit));
            let announced = |index: u64| json!({"type":"response.output_item.added","output_index":index,"item":{"id":format!("fc_{index}"),"type":"function_call","status":"in_progress","arguments":"","call_id":format!("call_{index}"),"name":""}});
            for named_ours in [true, false] {
                let mut events = start("resp_1");
                events.extend(message_events.clone());
                let calls = if named_ours {
                    100
                } else {
                    ITEMS_KEPT_PAST_LIMIT as u64 + 1
                };
                for index in 1..=calls {
                    events.push(announced(index));
                    if named_ours {
                        let done = json!({"id":format!("fc_{index}"),"type":"function_call","status":"completed","arguments":"{}","call_id":format!("call_{index}"),"name":TOOL});
                        events.push(json!({"type":"response.output_item.done","output_index":index,"item":done}));
                    }
                }
                events.push(completed(response(
                    "resp_1",
                    "completed",
                    Value::Null,
                    usage(10, 5),
                )));
                let upstream_events = upstream(&events);
                let last_call = upstream_events.len() - 2;
                let mut filter = ResponsesStream::new(TOOL, limit);
                let mut client = Vec::new();
                let mut gave_up_at = None;
                for (at, event) in upstream_events.into_iter().enumerate() {
                    filter.event(event, &mut client);
                    assert!(filter.round.indexes.len() <= ITEMS_KEPT_PAST_LIMIT + 1);
                    if filter.gave_up() {
                        gave_up_at = Some(at);
                        break;
                    }
                }
                assert_eq!(filter.end_round(), None, "over the limit");
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                assert!(events.iter().all(|e| e["item"]["type"] != "function_call"));
                if named_ours {
                    assert!(!filter.gave_up());
                    assert_eq!(events.last().unwrap()["type"], "response.completed");
                } else {
                    // Sixteen withheld calls fill the room; the seventeenth gives up, before
                    // the terminal event.
                    assert_eq!(gave_up_at, Some(last_call));
                    assert_given_up(&filter, &events);
                    assert_eq!(events.len(), 2 + 7 + 1);
                }
            }
        }

        /// Past the limit, items a server never announces with `output_item.added` still reach
        /// the client, however many came before.
        #[test]
        fn past_the_limit_items_never_announced_reach_the_client() {
            let limit = 4_096;
            let mut events = start("resp_1");
            let text = |index: u64| format!("t{index} ");
            for index in 0..40 {
                let id = format!("msg_{index}");
                // The first message's done item alone goes over the limit.
                let text = if index == 0 {
                    "y".repeat(limit)
                } else {
                    text(index)
                };
                events.push(json!({"type":"response.output_text.delta","item_id":id,"output_index":index,"content_index":0,"delta":text,"logprobs":[]}));
                let done = json!({"id":id,"type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":text,"annotations":[]}]});
                events.push(
                    json!({"type":"response.output_item.done","output_index":index,"item":done}),
                );
            }
            // And a call of the client's, never announced either.
            let done = json!({"id":"fc_40","type":"function_call","status":"completed","arguments":"{}","call_id":"call_40","name":"bash"});
            events.push(json!({"type":"response.function_call_arguments.delta","item_id":"fc_40","output_index":40,"delta":"{}"}));
            events.push(json!({"type":"response.output_item.done","output_index":40,"item":done}));
            events.push(completed(response(
                "resp_1",
                "completed",
                Value::Null,
                usage(10, 5),
            )));
            let upstream_events = upstream(&events);
            let mut filter = ResponsesStream::new(TOOL, limit);
            let mut client = Vec::new();
            for event in upstream_events {
                filter.event(event, &mut client);
            }
            assert!(filter.round.indexes.len() <= ITEMS_KEPT_PAST_LIMIT);
            assert_eq!(filter.end_round(), None, "over the limit");
            filter.finish(&mut client);
            assert!(!filter.gave_up());
            let events = client_events(&client);
            // Every event reached the client, at its own index (nothing of ours to renumber).
            assert_eq!(events.len(), 2 + 40 * 2 + 2 + 1);
            for (sequence, event) in events.iter().enumerate() {
                assert_eq!(event["sequence_number"], json!(sequence), "{event}");
            }
            let texts: String = events
                .iter()
                .filter(|e| e["type"] == "response.output_text.delta")
                .skip(1)
                .map(|e| e["delta"].as_str().unwrap())
                .collect();
            assert_eq!(texts, (1..40).map(text).collect::<String>());
            let call: Vec<&Value> = events
                .iter()
                .filter(|e| e["item_id"] == "fc_40" || e["item"]["id"] == "fc_40")
                .collect();
            assert_eq!(call.len(), 2);
            assert!(call.iter().all(|e| e["output_index"] == 40));
            assert_eq!(events.last().unwrap()["type"], "response.completed");
        }

        #[test]
        fn item_bookkeeping_stays_bounded() {
            let limit = 4_096;
            let bound = limit / size_of::<(u64, Slot)>() + ITEMS_KEPT_PAST_LIMIT;
            // Events of items never announced: each one a new item, nothing of it held.
            let mut events = start("resp_1");
            for index in 0..2_000 {
                events.push(json!({"type":"response.output_text.delta","item_id":"msg","output_index":index,"content_index":0,"delta":"x","logprobs":[]}));
            }
            let mut filter = ResponsesStream::new(TOOL, limit);
            let mut most_kept = 0;
            for event in upstream(&events) {
                filter.event(event, &mut Vec::new());
                most_kept = most_kept.max(filter.round.indexes.len());
            }
            assert!(most_kept <= bound, "{most_kept} items kept");

            // Past the limit, messages and calls of ours, one after another.
            let mut events = start("resp_1");
            for index in 0..2_000 {
                events.extend(if index % 2 == 0 {
                    message(index, &format!("msg_{index}"), "Still looking.").0
                } else {
                    let id = format!("fc_{index}");
                    call(
                        index,
                        &id,
                        &format!("call_{index}"),
                        TOOL,
                        r#"{"hash":"abc"}"#,
                    )
                    .0
                });
            }
            // A late event of an item long forgotten, a call of ours or a message of the
            // client's (whose client index is forgotten too): the filter cannot tell.
            let late_events = [
                None,
                Some(
                    json!({"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":"late"}),
                ),
                Some(
                    json!({"type":"response.output_text.delta","item_id":"msg_0","output_index":0,"content_index":0,"delta":"late","logprobs":[]}),
                ),
            ];
            for late_event in late_events {
                let late = late_event.is_some();
                let mut events = events.clone();
                events.extend(late_event);
                events.push(completed(response(
                    "resp_1",
                    "completed",
                    Value::Null,
                    usage(10, 5),
                )));
                let mut filter = ResponsesStream::new(TOOL, limit);
                let mut client = Vec::new();
                let mut most_kept = 0;
                for event in upstream(&events) {
                    if filter.gave_up() {
                        break;
                    }
                    filter.event(event, &mut client);
                    most_kept = most_kept.max(filter.round.indexes.len());
                }
                assert!(most_kept <= bound, "{most_kept} items kept");
                assert_eq!(filter.end_round(), None, "over the limit");
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                assert!(!serde_json::to_string(&events).unwrap().contains("late"));
                let added = events
                    .iter()
                    .filter(|e| e["type"] == "response.output_item.added")
                    .count();
                assert_eq!(added, 1_000);
                if late {
                    // Its fate is not known any more: the client is told rather than risk
                    // losing its text.
                    assert_given_up(&filter, &events);
                } else {
                    assert!(!filter.gave_up());
                    assert_eq!(events.last().unwrap()["type"], "response.completed");
                }
            }
        }

        /// Two calls whose events never name them (nor does their done item), after ours.
        fn calls_never_named(terminal_output: Value) -> Vec<SseEvent> {
            let (ours, _) = call(0, "fc_0", "call_r1", TOOL, r#"{"hash":"abc"}"#);
            let (first, _) = call(1, "fc_1", "call_c1", "", r#"{"cmd":"make"}"#);
            let (second, _) = call(2, "fc_2", "call_c2", "", r#"{"cmd":"ls"}"#);
            let mut events = start("resp_1");
            events.extend(ours);
            events.extend(first);
            events.extend(second);
            events.push(completed(response(
                "resp_1",
                "completed",
                terminal_output,
                usage(10, 5),
            )));
            upstream(&events)
        }

        #[test]
        fn calls_never_named_follow_in_order_at_dense_indexes() {
            // Each filter's map has its own hash seed: the order must not depend on it.
            for _ in 0..20 {
                let mut filter = new_filter();
                let mut client: Vec<Bytes> = feed(filter.as_mut(), calls_never_named(Value::Null))
                    .into_iter()
                    .flatten()
                    .collect();
                // The output is rebuilt from the done items: the client's two calls are in it.
                let response = filter.end_round().unwrap();
                let response: Value = serde_json::from_str(&response).unwrap();
                let call_ids: Vec<&str> = response["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|item| item["call_id"].as_str().unwrap())
                    .collect();
                assert_eq!(call_ids, ["call_r1", "call_c1", "call_c2"]);
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                let calls: Vec<(&str, u64)> = events
                    .iter()
                    .filter(|e| e["type"] == "response.output_item.added")
                    .map(|e| {
                        (
                            e["item"]["call_id"].as_str().unwrap(),
                            e["output_index"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(calls, [("call_c1", 0), ("call_c2", 1)]);
                assert_eq!(events.len(), 2 + 5 + 5 + 1);
                assert!(events[2..7].iter().all(|e| e["output_index"] == 0));
                assert!(events[7..12].iter().all(|e| e["output_index"] == 1));
            }
        }

        #[test]
        fn a_call_the_terminal_response_names_ours_stays_hidden() {
            let output = json!([
                {"id":"fc_0","type":"function_call","status":"completed","arguments":r#"{"hash":"abc"}"#,"call_id":"call_r1","name":TOOL},
                {"id":"fc_1","type":"function_call","status":"completed","arguments":r#"{"cmd":"make"}"#,"call_id":"call_c1","name":TOOL},
                {"id":"fc_2","type":"function_call","status":"completed","arguments":r#"{"cmd":"ls"}"#,"call_id":"call_c2","name":"bash"}
            ]);
            // Known by its index in the output, or by its id when the output lists only some.
            let ours_alone = json!([output[1].clone()]);
            for output in [output, ours_alone] {
                let mut filter = new_filter();
                let mut client: Vec<Bytes> = feed(filter.as_mut(), calls_never_named(output))
                    .into_iter()
                    .flatten()
                    .collect();
                assert!(filter.end_round().is_some());
                filter.finish(&mut client);
                let events = client_events(&client);
                assert_coherent(&events);
                assert!(
                    events
                        .iter()
                        .all(|e| e["item_id"] != "fc_1" && e["item"]["id"] != "fc_1"),
                    "the call named ours at the end went to the client"
                );
                let added: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["type"] == "response.output_item.added")
                    .collect();
                assert_eq!(added.len(), 1);
                assert_eq!(added[0]["item"]["call_id"], "call_c2");
                assert_eq!(added[0]["output_index"], 0);
            }
        }

        #[test]
        fn an_empty_output_is_rebuilt_and_a_full_one_kept() {
            let done = BTreeMap::from([
                (1, r#"{"type":"b"}"#.to_owned()),
                (0, r#"{"type":"a"}"#.to_owned()),
            ]);
            assert_eq!(
                with_done_items(r#"{"id":"r","output":[]}"#, &done).unwrap(),
                r#"{"id":"r","output":[{"type":"a"},{"type":"b"}]}"#
            );
            assert_eq!(
                with_done_items(r#"{"id":"r"}"#, &done).unwrap(),
                r#"{"id":"r","output":[{"type":"a"},{"type":"b"}]}"#
            );
            assert_eq!(
                with_done_items(r#"{"id":"r","output":[{"type":"c"}]}"#, &done).unwrap(),
                r#"{"id":"r","output":[{"type":"c"}]}"#
            );
            assert_eq!(
                with_done_items(r#"{"id":"r","output":null}"#, &BTreeMap::new()).unwrap(),
                r#"{"id":"r","output":null}"#
            );
        }
    }
}
