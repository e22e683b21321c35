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

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, TOOL_DESCRIPTION, ToolOutput, Turn, append_to_root_array, array,
    object, set_root_member, sum_root_usage, truncated,
};
use crate::json::{
    Field, OrderedObject, Splice, array_append_point, is_null, quote, span_of, string_value,
};

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
    stream: Field<'a>,
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
        if request.stream.is("true") {
            return Ok(Inspection::Skip("streaming"));
        }
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
    fn skips_streams_and_refuses_other_shapes() {
        assert!(matches!(
            OpenAiResponses
                .inspect(r#"{"model":"m","input":[],"stream":true}"#, TOOL, 0)
                .unwrap(),
            Inspection::Skip(_)
        ));
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
}
