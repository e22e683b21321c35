//! Google Gemini `generateContent`, on the Gemini API and on Vertex AI: any path ending in
//! `:generateContent` (`/v1beta/models/{m}:generateContent`, `/v1/…`, `/v1/tunedModels/{m}:…`,
//! `…/publishers/google/models/{m}:generateContent`), and `:streamGenerateContent` with
//! `alt=sse` in the query (without it the stream is one JSON array in pieces: not matched, it
//! passes through).
//!
//! The wire format is camelCase, as google-genai sends it. Google's JSON parser also takes
//! snake_case, and the SDK itself sends some nested keys that way (`will_continue` in a
//! `functionResponse`, `parameters_json_schema` in a declaration), so every key the adapter reads
//! is read in both spellings. A request that spells one key both ways is not read: it passes
//! through.
//!
//! # Tool outputs
//!
//! A tool output is the object `contents[i].parts[j].functionResponse.response`. The adapter
//! cannot replace that object (it must stay an object), so it works inside it:
//! - a large string is compressed in place, as a string;
//! - a large array or object becomes a string that holds its view and marker (its original is
//!   its JSON text as the client sent it), unless it holds a string large enough to be
//!   compressed on its own: then the adapter looks inside it instead, so that the rest of its
//!   structure stays as it is. Past [`MAX_DEPTH`] a large container is taken whole.
//! - `name`, `id`, `parts` and every other member of the `functionResponse` stay as they are,
//!   and so does a `response` object made only of small members.
//!
//! # The retrieval tool
//!
//! It is added to the first `functionDeclarations` array of `tools` (Gemini 2.5 models call
//! only the functions of one tool object reliably), or in a new tool object after the client's.
//! A marker goes out only when the model can call it: not with `mode: NONE`, an
//! `allowedFunctionNames` list without it, a client function of the same name, or
//! `cachedContent` (the request may then set no tools at all). Gemini 2.x models also refuse
//! function declarations next to built-in tools (`googleSearch`…) or structured output
//! (`responseMimeType: application/json`, a response schema): a request with those and no
//! function declarations of its own does not get the tool either.
//!
//! # Responses
//!
//! The model calls functions with `functionCall` parts (`finishReason` stays `STOP`). A call
//! without an `id` gets a made-up one (`ccr_{index}`) that never goes upstream: its
//! `functionResponse` then carries no id, and pairs by name and order. The continuation replays
//! the model's `content` byte for byte (thought parts and `thoughtSignature`s included), then a
//! user content with one `functionResponse` (`{"output": …}`) per call, in order; the last
//! round sets `toolConfig.functionCallingConfig.mode` to `NONE`.
//!
//! When the client gets a turn with retrieval calls stripped, the thought signature of a
//! stripped call moves to the first call that stays (Gemini 3 wants one on the first call of a
//! step), and a candidate left without parts loses its `parts` member (the shape the API itself
//! sends for a candidate without output). `usageMetadata` is summed over rounds, the
//! per-modality `*TokensDetails` arrays included.
//!
//! # Streams
//!
//! Each event is `data:` and one whole `GenerateContentResponse` chunk; text comes in pieces,
//! function calls whole. A call of ours is removed from its chunk as it arrives (the chunk goes
//! when nothing else is left in it); the chunk with `finishReason` and anything after it wait
//! for the driver. The round's turn is assembled from every chunk's parts, in order (adjacent
//! plain texts joined, every other part as it came), for the continuation, which goes to the same
//! URI and so streams too. Within a round each `usageMetadata` is a running total; from the
//! second round on, every one the client sees includes the earlier rounds' (as google-genai does
//! across the requests of one stream).

use std::borrow::Cow;

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use bytes::Bytes;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, SseEvent, StreamFilter, TOOL_DESCRIPTION, ToolOutput, Turn,
    append_to_root_array, array, object, truncated,
};
use crate::json::{
    Field, OrderedObject, Splice, array_append_point, has_long_string, is_null,
    object_append_point, quote, span_of, string_value, sum_usage,
};
use crate::tokens::estimate_tokens;

/// The Gemini `generateContent` adapter.
pub(crate) struct Gemini;

/// The first member of `object` spelled `camel` or `snake`, `null` included.
fn member<'a>(object: &OrderedObject<'a>, camel: &str, snake: &str) -> Option<&'a RawValue> {
    object
        .0
        .iter()
        .find(|(key, _)| key == camel || key == snake)
        .map(|(_, value)| *value)
}

/// The string value of a member, unless absent, `null` or not a string.
fn text_of(field: Field<'_>) -> Option<Cow<'_, str>> {
    field.value().and_then(string_value)
}

/// The retrieval tool as a Gemini function declaration. Schema types are the enum names the
/// SDK itself sends (`OBJECT`, `STRING`), which every API version accepts.
fn declaration(tool_name: &str) -> String {
    format!(
        r#"{{"name":{},"description":{},"parameters":{{"type":"OBJECT","properties":{{"hash":{{"type":"STRING","description":{}}},"query":{{"type":"STRING","description":{}}}}},"required":["hash"]}}}}"#,
        quote(tool_name),
        quote(TOOL_DESCRIPTION),
        quote(HASH_DESCRIPTION),
        quote(QUERY_DESCRIPTION),
    )
}

/// The parts of a request the adapter reads, in one pass over the body.
#[derive(Deserialize)]
struct GenerateRequest<'a> {
    #[serde(borrow)]
    contents: Vec<Content<'a>>,
    #[serde(borrow, default)]
    tools: Field<'a>,
    #[serde(borrow, default, rename = "toolConfig", alias = "tool_config")]
    tool_config: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "generationConfig",
        alias = "generation_config"
    )]
    generation_config: Field<'a>,
    #[serde(borrow, default, rename = "cachedContent", alias = "cached_content")]
    cached_content: Field<'a>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    role: Field<'a>,
    #[serde(borrow, default)]
    parts: Option<Vec<Part<'a>>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Field<'a>,
    #[serde(borrow, default)]
    thought: Field<'a>,
    #[serde(borrow, default, rename = "functionCall", alias = "function_call")]
    function_call: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "functionResponse",
        alias = "function_response"
    )]
    function_response: Field<'a>,
}

#[derive(Deserialize, Clone, Copy)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    id: Field<'a>,
    #[serde(borrow, default)]
    name: Field<'a>,
    #[serde(borrow, default)]
    args: Field<'a>,
}

#[derive(Deserialize)]
struct FunctionResponse<'a> {
    #[serde(borrow, default)]
    id: Field<'a>,
    #[serde(borrow, default)]
    name: Field<'a>,
    #[serde(borrow, default)]
    response: Field<'a>,
}

#[derive(Deserialize)]
struct ToolConfig<'a> {
    #[serde(
        borrow,
        default,
        rename = "functionCallingConfig",
        alias = "function_calling_config"
    )]
    function_calling_config: Field<'a>,
}

#[derive(Deserialize)]
struct FunctionCallingConfig<'a> {
    #[serde(borrow, default)]
    mode: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "allowedFunctionNames",
        alias = "allowed_function_names"
    )]
    allowed_function_names: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "streamFunctionCallArguments",
        alias = "stream_function_call_arguments"
    )]
    stream_function_call_arguments: Field<'a>,
}

#[derive(Deserialize)]
struct GenerationConfig<'a> {
    #[serde(borrow, default, rename = "candidateCount", alias = "candidate_count")]
    candidate_count: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "responseMimeType",
        alias = "response_mime_type"
    )]
    response_mime_type: Field<'a>,
    #[serde(borrow, default, rename = "responseSchema", alias = "response_schema")]
    response_schema: Field<'a>,
    #[serde(
        borrow,
        default,
        rename = "responseJsonSchema",
        alias = "response_json_schema"
    )]
    response_json_schema: Field<'a>,
}

impl GenerationConfig<'_> {
    fn candidates(&self) -> u64 {
        self.candidate_count
            .value()
            .and_then(|n| n.get().parse::<u64>().ok())
            .unwrap_or(1)
    }

    /// JSON (or enum) output: Gemini 2.x refuses function calling with it.
    fn structured_output(&self) -> bool {
        text_of(self.response_mime_type)
            .is_some_and(|mime| !mime.eq_ignore_ascii_case("text/plain"))
            || self.response_schema.value().is_some()
            || self.response_json_schema.value().is_some()
    }
}

/// Whether the model could call `tool_name` in this request.
fn redeemable(
    request: &GenerateRequest<'_>,
    generation: Option<&GenerationConfig<'_>>,
    tool_name: &str,
) -> bool {
    // With cached content, tools and toolConfig must live in the cache: the request may not
    // set them.
    if request.cached_content.value().is_some() {
        return false;
    }
    if let Some(config) = request.tool_config.value() {
        let Ok(config) = serde_json::from_str::<ToolConfig<'_>>(config.get()) else {
            return false;
        };
        if let Some(calling) = config.function_calling_config.value() {
            let Ok(calling) = serde_json::from_str::<FunctionCallingConfig<'_>>(calling.get())
            else {
                return false;
            };
            if let Some(mode) = calling.mode.value() {
                // The SDK treats the enum case-insensitively.
                let known = string_value(mode).is_some_and(|mode| {
                    ["AUTO", "ANY", "VALIDATED", "MODE_UNSPECIFIED"]
                        .iter()
                        .any(|m| mode.eq_ignore_ascii_case(m))
                });
                if !known {
                    return false;
                }
            }
            // Vertex then streams a call's arguments over several nameless parts: the layer
            // takes calls whole, so it does not offer its tool there.
            if calling.stream_function_call_arguments.is("true") {
                return false;
            }
            if let Some(names) = calling.allowed_function_names.value() {
                let Ok(names) = serde_json::from_str::<Vec<Cow<'_, str>>>(names.get()) else {
                    return false;
                };
                // An empty list is the same as none (proto3).
                if !names.is_empty() && !names.iter().any(|n| n == tool_name) {
                    return false;
                }
            }
        }
    }
    let (mut functions, mut built_in) = (false, false);
    if let Some(tools) = request.tools.value() {
        let Ok(tools) = array(tools.get()) else {
            return false;
        };
        for tool in tools {
            let Ok(tool) = object(tool.get()) else {
                return false;
            };
            for (key, value) in &tool.0 {
                if is_null(value) {
                    continue;
                }
                if key != "functionDeclarations" && key != "function_declarations" {
                    built_in = true;
                    continue;
                }
                let Ok(declarations) = array(value.get()) else {
                    return false;
                };
                for declaration in declarations {
                    let Ok(declaration) = object(declaration.get()) else {
                        return false;
                    };
                    let name = declaration.get("name").and_then(string_value);
                    if name.as_deref() == Some(tool_name) {
                        return false;
                    }
                    functions = true;
                }
            }
        }
    }
    // A client that already declares functions already mixes them with whatever else it sends.
    functions || !(built_in || generation.is_some_and(GenerationConfig::structured_output))
}

/// Containers nested deeper than this inside a `response` are taken whole.
const MAX_DEPTH: usize = 8;
/// The service's bound on tokens per byte: a string of `min_bytes` bytes or more may reach the
/// token threshold, and `min_bytes * TOKENS_PER_BYTE` is about that threshold.
const TOKENS_PER_BYTE: usize = 3;

/// The large values inside a `functionResponse.response`, in document order, none inside
/// another: the strings and containers whose bytes are replaced by a view.
struct LargeValues<'a> {
    min_bytes: usize,
    found: Vec<&'a RawValue>,
}

impl<'a> LargeValues<'a> {
    fn of(response: &'a RawValue, min_bytes: usize) -> Vec<&'a RawValue> {
        let mut walk = Self {
            min_bytes,
            found: Vec::new(),
        };
        if response.get().starts_with('"') {
            // Not a valid `response`, but a string may be compressed in place all the same.
            walk.value(response, 1);
        } else if response.get().len() >= min_bytes {
            // The root must stay an object: only its members can be replaced.
            walk.children(response, 0);
        }
        walk.found
    }

    /// Walks the members or elements of a container; true when one holds a string large enough
    /// to be compressed on its own.
    fn children(&mut self, container: &'a RawValue, depth: usize) -> bool {
        let text = container.get();
        let children: Vec<&'a RawValue> = if text.starts_with('{') {
            object(text).map_or_else(
                |_| Vec::new(),
                |o| o.0.into_iter().map(|(_, v)| v).collect(),
            )
        } else if text.starts_with('[') {
            array(text).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut standalone = false;
        for child in children {
            standalone |= self.value(child, depth + 1);
        }
        standalone
    }

    /// Reports `value` or the large values inside it; true when it is or holds a string large
    /// enough to be compressed on its own.
    fn value(&mut self, value: &'a RawValue, depth: usize) -> bool {
        let text = value.get();
        if text.len() < self.min_bytes {
            return false;
        }
        match text.as_bytes().first() {
            Some(b'"') => {
                self.found.push(value);
                // Members of the root are reported whatever the answer: only deeper strings
                // need it.
                depth > 1
                    && string_value(value).is_some_and(|s| {
                        estimate_tokens(&s) >= self.min_bytes.saturating_mul(TOKENS_PER_BYTE)
                    })
            }
            Some(b'{' | b'[') => {
                // Without a string of `min_bytes` inside, nothing inside is worth more than
                // the whole.
                if depth >= MAX_DEPTH || !has_long_string(text.as_bytes(), self.min_bytes) {
                    self.found.push(value);
                    return false;
                }
                let mark = self.found.len();
                if self.children(value, depth) {
                    true
                } else {
                    self.found.truncate(mark);
                    self.found.push(value);
                    false
                }
            }
            _ => false,
        }
    }
}

fn is_user(content: &Content<'_>) -> bool {
    // The API takes a content without a role as the user's.
    content.role.value().is_none() || content.role.is("\"user\"")
}

/// The text parts of a content, thoughts left out.
fn content_text(content: &Content<'_>) -> String {
    let texts: Vec<Cow<'_, str>> = content
        .parts
        .iter()
        .flatten()
        .filter(|part| !part.thought.is("true"))
        .filter_map(|part| text_of(part.text))
        .collect();
    texts.join("\n")
}

/// Whether a content is the user's and says something (function responses say nothing).
fn has_user_text(content: &Content<'_>) -> bool {
    is_user(content)
        && content.parts.iter().flatten().any(|part| {
            !part.thought.is("true") && text_of(part.text).is_some_and(|t| !t.is_empty())
        })
}

/// The function calls of a content, in order.
fn function_calls<'a>(content: &Content<'a>) -> Vec<FunctionCall<'a>> {
    content
        .parts
        .iter()
        .flatten()
        .filter_map(|part| part.function_call.value())
        .filter_map(|raw| serde_json::from_str::<FunctionCall<'a>>(raw.get()).ok())
        .collect()
}

/// The function calls of every content, indexed by id and by name, built once per request (a
/// request may hold thousands of responses: no scan backwards per response).
struct CallIndex<'a> {
    calls: Vec<Vec<FunctionCall<'a>>>,
    /// Call id -> (content index, position) of the calls with it, in order.
    by_id: HashMap<String, Vec<(usize, usize)>>,
    /// Function name -> indexes of the contents with a call of that name, in order.
    by_name: HashMap<String, Vec<usize>>,
}

impl<'a> CallIndex<'a> {
    fn new(calls: Vec<Vec<FunctionCall<'a>>>) -> Self {
        let mut by_id: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (content, content_calls) in calls.iter().enumerate() {
            for (position, call) in content_calls.iter().enumerate() {
                if let Some(id) = text_of(call.id) {
                    by_id
                        .entry(id.into_owned())
                        .or_default()
                        .push((content, position));
                }
                if let Some(name) = text_of(call.name) {
                    let contents = by_name.entry(name.into_owned()).or_default();
                    if contents.last() != Some(&content) {
                        contents.push(content);
                    }
                }
            }
        }
        Self {
            calls,
            by_id,
            by_name,
        }
    }

    /// The call a function response in content `before` answers: the latest earlier call with
    /// its `id`; else (no id, or none matches) the `nth` call named `name` in the nearest
    /// earlier content that has one.
    fn matching(
        &self,
        before: usize,
        id: Option<&str>,
        name: Option<&str>,
        nth: usize,
    ) -> Option<FunctionCall<'a>> {
        if let Some(&(content, position)) = id
            .and_then(|id| self.by_id.get(id))
            .and_then(|found| found.iter().rev().find(|(content, _)| *content < before))
        {
            return Some(self.calls[content][position]);
        }
        let content = *self
            .by_name
            .get(name?)?
            .iter()
            .rev()
            .find(|&&content| content < before)?;
        let named: Vec<&FunctionCall<'a>> = self.calls[content]
            .iter()
            .filter(|call| text_of(call.name).as_deref() == name)
            .collect();
        let last = named.len().checked_sub(1)?;
        Some(*named[nth.min(last)])
    }
}

/// The name of the function response of a part, if it has one.
fn response_name<'a>(part: &Part<'a>) -> Option<Cow<'a, str>> {
    let raw = part.function_response.value()?;
    let response: FunctionResponse<'a> = serde_json::from_str(raw.get()).ok()?;
    text_of(response.name)
}

/// A `functionCall` part of a response.
struct ResponseCall<'a> {
    part: OrderedObject<'a>,
    id: Option<String>,
    name: Option<String>,
    args: Option<&'a RawValue>,
}

impl<'a> ResponseCall<'a> {
    fn is(&self, tool_name: &str) -> bool {
        self.name.as_deref() == Some(tool_name)
    }

    /// The call's id, or one made up from its position when the model sent none (it never
    /// goes upstream: the function response then has no id).
    fn id(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("ccr_{index}"))
    }

    fn signature(&self) -> Option<&'a RawValue> {
        member(&self.part, "thoughtSignature", "thought_signature").filter(|s| !is_null(s))
    }
}

/// The content of a candidate, and the `parts` array in it.
fn candidate_parts<'a>(
    candidate: &OrderedObject<'a>,
) -> Result<Option<(&'a RawValue, &'a RawValue)>, Malformed> {
    let Some(content) = candidate.get("content").filter(|c| !is_null(c)) else {
        return Ok(None);
    };
    let parts = object(content.get())?.get("parts").filter(|p| !is_null(p));
    Ok(parts.map(|parts| (content, parts)))
}

/// Every part of a `parts` array, with its function call if it is one.
fn read_parts<'a>(
    parts: &'a RawValue,
) -> Result<Vec<(&'a RawValue, Option<ResponseCall<'a>>)>, Malformed> {
    array(parts.get())?
        .into_iter()
        .map(|raw| {
            // A part that cannot be read is kept as it is and is not taken for a call: one odd
            // part must not make the whole response unreadable (our calls would then leak).
            let Ok(part) = object(raw.get()) else {
                return Ok((raw, None));
            };
            let Some(call) = member(&part, "functionCall", "function_call").filter(|c| !is_null(c))
            else {
                return Ok((raw, None));
            };
            let Ok(call) = serde_json::from_str::<FunctionCall<'a>>(call.get()) else {
                return Ok((raw, None));
            };
            let id = text_of(call.id)
                .filter(|id| !id.is_empty())
                .map(Cow::into_owned);
            let name = text_of(call.name).map(Cow::into_owned);
            let args = call.args.value();
            Ok((
                raw,
                Some(ResponseCall {
                    part,
                    id,
                    name,
                    args,
                }),
            ))
        })
        .collect()
}

/// The calls of the first and only candidate of a response (empty when it has none, or when
/// there are several candidates).
fn only_candidate_calls<'a>(root: &OrderedObject<'a>) -> Result<Vec<ResponseCall<'a>>, Malformed> {
    let Some(candidates) = root.get("candidates").filter(|c| !is_null(c)) else {
        return Ok(Vec::new());
    };
    let candidates = array(candidates.get())?;
    let [candidate] = candidates.as_slice() else {
        return Ok(Vec::new());
    };
    let Some((_, parts)) = candidate_parts(&object(candidate.get())?)? else {
        return Ok(Vec::new());
    };
    Ok(read_parts(parts)?
        .into_iter()
        .filter_map(|(_, call)| call)
        .collect())
}

/// Edits `request` so that the model may not call functions: `toolConfig.functionCallingConfig`
/// gets `mode: NONE` (and loses `allowedFunctionNames`, meaningless then); every other member
/// stays.
fn forbid_calls(
    request: &str,
    root: &OrderedObject<'_>,
    splice: &mut Splice,
) -> Result<(), Malformed> {
    const NONE_CONFIG: &str = r#"{"mode":"NONE"}"#;
    let Some(config) = member(root, "toolConfig", "tool_config") else {
        let (at, has_members) = object_append_point(request).ok_or(Malformed("root"))?;
        let comma = if has_members { "," } else { "" };
        splice.insert(
            at,
            format!("{comma}\"toolConfig\":{{\"functionCallingConfig\":{NONE_CONFIG}}}"),
        );
        return Ok(());
    };
    let config_span = span_of(request, config).ok_or(Malformed("toolConfig"))?;
    if is_null(config) {
        splice.replace(
            config_span,
            format!("{{\"functionCallingConfig\":{NONE_CONFIG}}}"),
        );
        return Ok(());
    }
    let config_object = object(config.get())?;
    let Some(calling) = member(
        &config_object,
        "functionCallingConfig",
        "function_calling_config",
    ) else {
        let (at, has_members) = object_append_point(config.get()).ok_or(Malformed("toolConfig"))?;
        let comma = if has_members { "," } else { "" };
        splice.insert(
            config_span.start + at,
            format!("{comma}\"functionCallingConfig\":{NONE_CONFIG}"),
        );
        return Ok(());
    };
    let calling_span = span_of(request, calling).ok_or(Malformed("functionCallingConfig"))?;
    if is_null(calling) {
        splice.replace(calling_span, NONE_CONFIG.into());
        return Ok(());
    }
    let calling = object(calling.get())?;
    let mut members: Vec<(&str, &str)> = Vec::new();
    let mut has_mode = false;
    for (key, value) in &calling.0 {
        match key.as_ref() {
            "mode" => {
                has_mode = true;
                members.push(("mode", "\"NONE\""));
            }
            "allowedFunctionNames" | "allowed_function_names" => {}
            key => members.push((key, value.get())),
        }
    }
    if !has_mode {
        members.push(("mode", "\"NONE\""));
    }
    splice.replace(calling_span, OrderedObject::render(members));
    Ok(())
}

/// Sums the usage of the last round with the earlier ones: every count, and the per-modality
/// counts of the `*TokensDetails` arrays (`[{"modality":"TEXT","tokenCount":3}]`), matched by
/// modality. Counts only earlier rounds had (thoughts in the round that called the tool, none
/// in the answer) are added after the last round's: without them the sum would fall short.
fn summed_usage(last: &RawValue, earlier: &[serde_json::Value]) -> String {
    let summed = sum_usage(last, earlier);
    let Ok(usage) = object(&summed) else {
        return summed;
    };
    let mut members: Vec<(String, String)> = usage
        .0
        .iter()
        .map(|(key, value)| {
            let value =
                sum_modalities(key, value, earlier).unwrap_or_else(|| value.get().to_owned());
            (key.to_string(), value)
        })
        .collect();
    for usage in earlier.iter().filter_map(serde_json::Value::as_object) {
        for (key, value) in usage {
            if members.iter().any(|(known, _)| known == key) {
                continue;
            }
            let total = if value.is_u64() {
                let total = earlier
                    .iter()
                    .filter_map(|usage| usage.get(key)?.as_u64())
                    .fold(0, u64::saturating_add);
                Some(total.to_string())
            } else if value.is_array() {
                serde_json::from_str::<&RawValue>("[]")
                    .ok()
                    .and_then(|empty| sum_modalities(key, empty, earlier))
            } else {
                None
            };
            if let Some(total) = total {
                members.push((key.clone(), total));
            }
        }
    }
    OrderedObject::render(members.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// A modality breakdown summed over rounds; `None` when `value` is not one.
fn sum_modalities(key: &str, value: &RawValue, earlier: &[serde_json::Value]) -> Option<String> {
    if !value.get().starts_with('[') {
        return None;
    }
    let entries: Vec<OrderedObject<'_>> = array(value.get())
        .ok()?
        .into_iter()
        .map(|entry| object(entry.get()).ok())
        .collect::<Option<_>>()?;
    let modality_of = |entry: &serde_json::Value| entry.get("modality").cloned();
    let count_of = |entry: &serde_json::Value| {
        entry
            .get("tokenCount")
            .or_else(|| entry.get("token_count"))
            .and_then(serde_json::Value::as_u64)
    };
    let earlier_entries: Vec<&serde_json::Value> = earlier
        .iter()
        .filter_map(|usage| usage.get(key)?.as_array())
        .flatten()
        .collect();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut rendered = Vec::new();
    for entry in &entries {
        let modality: serde_json::Value =
            serde_json::from_str(entry.get("modality")?.get()).ok()?;
        let more: u64 = earlier_entries
            .iter()
            .filter(|e| modality_of(e).as_ref() == Some(&modality))
            .filter_map(|e| count_of(e))
            .fold(0, u64::saturating_add);
        seen.push(modality);
        let mut members: Vec<(&str, String)> = Vec::with_capacity(entry.0.len() + 1);
        let mut has_count = false;
        for (k, v) in &entry.0 {
            let summed = match k.as_ref() {
                "tokenCount" | "token_count" => {
                    has_count = true;
                    v.get()
                        .parse::<u64>()
                        .ok()
                        .map(|own| own.saturating_add(more))
                }
                _ => None,
            };
            members.push((
                k.as_ref(),
                summed.map_or_else(|| v.get().to_owned(), |n| n.to_string()),
            ));
        }
        if !has_count && more > 0 {
            members.push(("tokenCount", more.to_string()));
        }
        rendered.push(OrderedObject::render(
            members.iter().map(|(k, v)| (*k, v.as_str())),
        ));
    }
    // Modalities only earlier rounds had, in their order.
    let mut extra: Vec<(serde_json::Value, u64)> = Vec::new();
    for entry in &earlier_entries {
        let Some(modality) = modality_of(entry).filter(|m| !seen.contains(m)) else {
            continue;
        };
        let count = count_of(entry).unwrap_or(0);
        match extra.iter_mut().find(|(m, _)| *m == modality) {
            Some((_, total)) => *total = total.saturating_add(count),
            None => extra.push((modality, count)),
        }
    }
    for (modality, count) in extra {
        rendered.push(format!(r#"{{"modality":{modality},"tokenCount":{count}}}"#));
    }
    Some(format!("[{}]", rendered.join(",")))
}

impl Adapter for Gemini {
    fn may_hold_outputs(&self, body: &[u8], min_bytes: usize) -> bool {
        // A function response may be a large object of short strings: no long literal needed.
        crate::json::has_long_string(body, min_bytes)
            || (body.len() >= min_bytes
                && (memchr::memmem::find(body, b"unctionResponse").is_some()
                    || memchr::memmem::find(body, b"unction_response").is_some()))
    }

    fn name(&self) -> &'static str {
        "gemini"
    }

    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool {
        if method != http::Method::POST {
            return false;
        }
        let path = uri.path().trim_end_matches('/');
        // Without `alt=sse` a stream is one JSON array sent in pieces: not read, it passes
        // through.
        path.ends_with(":generateContent")
            || (path.ends_with(":streamGenerateContent")
                && uri
                    .query()
                    .is_some_and(|query| query.split('&').any(|pair| pair == "alt=sse")))
    }

    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed> {
        let request: GenerateRequest<'_> =
            serde_json::from_str(body).map_err(|_| Malformed("not a generateContent request"))?;
        let generation: Option<GenerationConfig<'_>> = match request.generation_config.value() {
            Some(raw) => {
                Some(serde_json::from_str(raw.get()).map_err(|_| Malformed("generationConfig"))?)
            }
            None => None,
        };
        if generation.as_ref().is_some_and(|g| g.candidates() > 1) {
            return Ok(Inspection::Skip("candidateCount > 1"));
        }
        let mut outputs = Vec::new();
        // Read once, when a first output needs them: the calls of every content.
        let mut calls: Option<CallIndex<'_>> = None;
        // The last user content with text before the current one, and its text when needed.
        let mut last_user: Option<usize> = None;
        let mut asked: Option<(usize, String)> = None;
        for (index, content) in request.contents.iter().enumerate() {
            if index > 0 && has_user_text(&request.contents[index - 1]) {
                last_user = Some(index - 1);
            }
            let Some(parts) = &content.parts else {
                continue;
            };
            // The names of this content's function responses so far, read when needed.
            let mut names: Vec<Option<Cow<'_, str>>> = Vec::new();
            for (position, part) in parts.iter().enumerate() {
                // Cheap test first: most requests carry no function response big enough.
                let Some(raw) = part
                    .function_response
                    .value()
                    .filter(|raw| raw.get().len() >= min_bytes)
                else {
                    continue;
                };
                let Ok(response) = serde_json::from_str::<FunctionResponse<'_>>(raw.get()) else {
                    continue;
                };
                let name = text_of(response.name);
                if name.as_deref() == Some(tool_name) {
                    continue; // Our own answers are never compressed.
                }
                let Some(value) = response.response.value() else {
                    continue;
                };
                let found = LargeValues::of(value, min_bytes);
                if found.is_empty() {
                    continue;
                }
                let calls = calls.get_or_insert_with(|| {
                    CallIndex::new(request.contents.iter().map(function_calls).collect())
                });
                names.extend(parts[names.len()..position].iter().map(response_name));
                let nth = names
                    .iter()
                    .filter(|n| name.is_some() && **n == name)
                    .count();
                let id = text_of(response.id).filter(|id| !id.is_empty());
                let call = calls.matching(index, id.as_deref(), name.as_deref(), nth);
                let call_name = call.as_ref().and_then(|c| text_of(c.name));
                if call_name.as_deref() == Some(tool_name) {
                    continue;
                }
                let question: &str = match last_user {
                    None => "",
                    Some(user) => {
                        if asked.as_ref().is_none_or(|(at, _)| *at != user) {
                            let text = content_text(&request.contents[user]);
                            asked = Some((user, truncated(text, MAX_QUESTION_BYTES)));
                        }
                        asked.as_ref().map_or("", |(_, text)| text.as_str())
                    }
                };
                let arguments = call
                    .as_ref()
                    .and_then(|c| c.args.value())
                    .map(|args| truncated(args.get().to_owned(), MAX_ARGUMENTS_BYTES))
                    .unwrap_or_default();
                let query = if arguments.is_empty() {
                    question.to_owned()
                } else {
                    format!("{question}\n{arguments}")
                };
                let tool = name.or(call_name).map(Cow::into_owned);
                for raw in found {
                    let span = span_of(body, raw).ok_or(Malformed("span"))?;
                    let text =
                        string_value(raw).map_or_else(|| raw.get().to_owned(), Cow::into_owned);
                    outputs.push(ToolOutput {
                        span,
                        text,
                        query: query.clone(),
                        tool_name: tool.clone(),
                    });
                }
            }
        }
        let redeemable =
            !outputs.is_empty() && redeemable(&request, generation.as_ref(), tool_name);
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
        let root = object(body)?;
        let declaration = declaration(tool_name);
        let tool = format!("{{\"functionDeclarations\":[{declaration}]}}");
        match root.get("tools") {
            Some(tools) if is_null(tools) => {
                let span = span_of(body, tools).ok_or(Malformed("tools"))?;
                splice.replace(span, format!("[{tool}]"));
            }
            Some(tools) => {
                let span = span_of(body, tools).ok_or(Malformed("tools"))?;
                let existing = array(tools.get())?.into_iter().find_map(|tool| {
                    let tool = object(tool.get()).ok()?;
                    member(&tool, "functionDeclarations", "function_declarations")
                        .filter(|d| d.get().starts_with('['))
                });
                match existing {
                    Some(declarations) => {
                        let span =
                            span_of(body, declarations).ok_or(Malformed("functionDeclarations"))?;
                        let (at, has_items) = array_append_point(body, &span)
                            .ok_or(Malformed("functionDeclarations"))?;
                        splice.insert(
                            at,
                            if has_items {
                                format!(",{declaration}")
                            } else {
                                declaration
                            },
                        );
                    }
                    None => {
                        let (at, has_items) =
                            array_append_point(body, &span).ok_or(Malformed("tools"))?;
                        splice.insert(at, if has_items { format!(",{tool}") } else { tool });
                    }
                }
            }
            None => {
                let (at, has_members) = object_append_point(body).ok_or(Malformed("root"))?;
                let comma = if has_members { "," } else { "" };
                splice.insert(at, format!("{comma}\"tools\":[{tool}]"));
            }
        }
        Ok(())
    }

    fn read_turn(&self, response: &str, tool_name: &str) -> Result<Turn, Malformed> {
        let root = object(response)?;
        let calls = only_candidate_calls(&root)?;
        if calls.is_empty() || !calls.iter().all(|call| call.is(tool_name)) {
            return Ok(Turn::Other);
        }
        Ok(Turn::Retrieve(
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| Call {
                    id: call.id(index),
                    arguments: call
                        .args
                        .map_or_else(|| "{}".to_owned(), |args| args.get().to_owned()),
                })
                .collect(),
        ))
    }

    fn usage(&self, response: &str) -> Option<serde_json::Value> {
        let root = object(response).ok()?;
        let usage = member(&root, "usageMetadata", "usage_metadata").filter(|u| !is_null(u))?;
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
        if root.get("contents").is_none() {
            return Err(Malformed("no contents"));
        }

        let response_root = object(response)?;
        let candidates = array(
            response_root
                .get("candidates")
                .ok_or(Malformed("no candidates"))?
                .get(),
        )?;
        let candidate = object(candidates.first().ok_or(Malformed("no candidate"))?.get())?;
        let (content, parts) = candidate_parts(&candidate)?.ok_or(Malformed("no parts"))?;
        // The model's turn as it came, byte for byte (thought signatures included); a role
        // only when it has none (the API would take it as the user's).
        let content_object = object(content.get())?;
        let model_turn = if content_object.get("role").is_some() {
            content.get().to_owned()
        } else {
            OrderedObject::render(
                std::iter::once(("role", "\"model\"")).chain(
                    content_object
                        .0
                        .iter()
                        .map(|(key, value)| (key.as_ref(), value.get())),
                ),
            )
        };
        let calls: Vec<ResponseCall<'_>> = read_parts(parts)?
            .into_iter()
            .filter_map(|(_, call)| call)
            .collect();
        let mut responses = Vec::with_capacity(answers.len());
        // Each answer pairs with a call not paired yet: a made-up id may equal a real one.
        let mut paired = vec![false; calls.len()];
        for answer in answers {
            let (index, call) = calls
                .iter()
                .enumerate()
                .find(|(index, call)| !paired[*index] && call.id(*index) == answer.call_id)
                .ok_or(Malformed("an answer to no call"))?;
            paired[index] = true;
            let name = quote(call.name.as_deref().unwrap_or_default());
            let output = format!("{{\"output\":{}}}", quote(&answer.text));
            let id = call.id.as_deref().map(quote);
            let mut members = vec![("name", name.as_str())];
            if let Some(id) = &id {
                members.push(("id", id.as_str()));
            }
            members.push(("response", output.as_str()));
            responses.push(format!(
                "{{\"functionResponse\":{}}}",
                OrderedObject::render(members)
            ));
        }
        let user_turn = format!("{{\"role\":\"user\",\"parts\":[{}]}}", responses.join(","));
        let mut splice = Splice::default();
        append_to_root_array(
            request,
            "contents",
            format!("{model_turn},{user_turn}"),
            &mut splice,
        )?;
        if force_final {
            forbid_calls(request, &root, &mut splice)?;
        }
        splice.apply(request).ok_or(Malformed("overlapping edits"))
    }

    fn stream_filter(&self, tool_name: &str, limit: usize) -> Box<dyn StreamFilter> {
        Box::new(GeminiStream::new(tool_name, limit))
    }

    fn finalize(
        &self,
        response: &str,
        tool_name: &str,
        earlier_usage: &[serde_json::Value],
    ) -> Result<Option<String>, Malformed> {
        let root = object(response)?;
        let mut splice = Splice::default();
        if let Some(candidates) = root.get("candidates").filter(|c| !is_null(c)) {
            for candidate in array(candidates.get())? {
                // A candidate that is not an object holds no call of ours: left as it is.
                let Ok(candidate) = object(candidate.get()) else {
                    continue;
                };
                let Some((content, parts)) = candidate_parts(&candidate)? else {
                    continue;
                };
                let read = read_parts(parts)?;
                if !read
                    .iter()
                    .any(|(_, call)| call.as_ref().is_some_and(|c| c.is(tool_name)))
                {
                    continue;
                }
                // With parallel calls only the first carries the thought signature, and Gemini 3
                // refuses a turn whose first call has none: a signature of a stripped call
                // moves to the first call that stays, unless that one has its own.
                let mut signature = read
                    .iter()
                    .filter_map(|(_, call)| call.as_ref())
                    .filter(|call| call.is(tool_name))
                    .find_map(ResponseCall::signature);
                let mut kept = Vec::new();
                for (raw, call) in &read {
                    match call {
                        Some(call) if call.is(tool_name) => {}
                        Some(call) if call.signature().is_none() && signature.is_some() => {
                            let signature = signature.take().map(RawValue::get);
                            kept.push(OrderedObject::render(
                                call.part
                                    .0
                                    .iter()
                                    .map(|(key, value)| (key.as_ref(), value.get()))
                                    .chain(signature.map(|s| ("thoughtSignature", s))),
                            ));
                        }
                        Some(_) => {
                            signature = None;
                            kept.push(raw.get().to_owned());
                        }
                        None => kept.push(raw.get().to_owned()),
                    }
                }
                if kept.is_empty() {
                    // No parts at all rather than an empty array: the shape the API itself
                    // sends for a candidate without output (SDK chats leave it out of history).
                    let content_object = object(content.get())?;
                    let members = content_object
                        .0
                        .iter()
                        .filter(|(key, _)| key != "parts")
                        .map(|(key, value)| (key.as_ref(), value.get()));
                    splice.replace(
                        span_of(response, content).ok_or(Malformed("content"))?,
                        OrderedObject::render(members),
                    );
                } else {
                    splice.replace(
                        span_of(response, parts).ok_or(Malformed("parts"))?,
                        format!("[{}]", kept.join(",")),
                    );
                }
            }
        }
        if !earlier_usage.is_empty()
            && let Some(usage) =
                member(&root, "usageMetadata", "usage_metadata").filter(|u| !is_null(u))
        {
            let span = span_of(response, usage).ok_or(Malformed("usageMetadata"))?;
            splice.replace(span, summed_usage(usage, earlier_usage));
        }
        if splice.is_empty() {
            return Ok(None);
        }
        splice
            .apply(response)
            .map(Some)
            .ok_or(Malformed("overlapping edits"))
    }
}

/// Where a `GenerateContentResponse` chunk of a stream says that its candidate is done.
const FINISH_MEMBERS: [&str; 4] = [
    "finishReason",
    "finish_reason",
    "finishMessage",
    "finish_message",
];

/// The root members of a chunk that say nothing on their own: a chunk left with only these
/// once our calls are gone is not sent.
const BOOKKEEPING_MEMBERS: [&str; 8] = [
    "usageMetadata",
    "usage_metadata",
    "modelVersion",
    "model_version",
    "responseId",
    "response_id",
    "createTime",
    "create_time",
];

/// The parts of a candidate whose only parts were our calls, when the chunk must still go out
/// (it ends the turn, or carries more than bookkeeping). The API itself ends streams with an
/// empty text part, and google-genai chats leave a whole streamed turn out of their history
/// when one of its chunks has no parts.
const EMPTY_PARTS: &str = r#"[{"text":""}]"#;

/// One part of the model's turn as a round assembles it.
enum AssembledPart {
    /// Plain text (a thought or not) with nothing else: adjacent pieces are joined.
    Text { text: String, thought: bool },
    /// Any other part, its JSON text as it came (signatures and calls kept exactly).
    Raw(String),
}

impl AssembledPart {
    fn render(&self) -> String {
        match self {
            Self::Text {
                text,
                thought: false,
            } => format!("{{\"text\":{}}}", quote(text)),
            Self::Text {
                text,
                thought: true,
            } => format!("{{\"text\":{},\"thought\":true}}", quote(text)),
            Self::Raw(raw) => raw.clone(),
        }
    }
}

/// The text of a part made of `text` alone, or of `text` and `thought: true`.
fn plain_text(part: &OrderedObject<'_>) -> Option<(String, bool)> {
    let text = part.get("text")?;
    let thought = match part.0.as_slice() {
        [_] => false,
        [_, _] => {
            if part.get("thought")?.get() != "true" {
                return None;
            }
            true
        }
        _ => return None,
    };
    Some((string_value(text)?.into_owned(), thought))
}

/// What one round of the stream has shown of the model's turn, and what it holds back.
#[derive(Default)]
struct StreamRound {
    parts: Vec<AssembledPart>,
    /// The content's `role`, as JSON text.
    role: Option<String>,
    finish_reason: Option<String>,
    /// The latest `usageMetadata`: within a round each chunk's is the running total (the SDK
    /// replaces it, chunk by chunk), so the latest is the round's.
    usage: Option<String>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// The chunk with `finishReason` and every event after it, until the driver says whether
    /// another round follows.
    held: Vec<SseEvent>,
    /// A `finishReason` came.
    finished: bool,
    /// A `finishReason` came, even in a round not continued: the round ended as it should.
    saw_finish: bool,
    /// The upstream sent an error chunk.
    errored: bool,
    /// This round is not continued (an error event, several candidates, an unreadable chunk,
    /// over the limit): nothing is held back any more, and nothing assembled.
    broken: bool,
    /// Bytes of `parts` and `held`.
    bytes: usize,
    /// The thought signature of a call of ours that was removed, for the next client call
    /// without one (Gemini 3 wants one on the first call of a step).
    pending_signature: Option<String>,
}

/// The stream filter of `streamGenerateContent?alt=sse`: every event is `data:` and one whole
/// `GenerateContentResponse` chunk. Text arrives in pieces; function calls arrive whole, so a
/// call of ours is removed from its chunk as it arrives (the chunk is dropped when nothing else
/// is left in it). Parts carry no index: nothing to renumber.
struct GeminiStream {
    tool_name: String,
    limit: usize,
    /// The usage of each earlier round, summed into every usage the client sees after them
    /// (as google-genai does across the requests of one stream).
    earlier_usage: Vec<serde_json::Value>,
    /// What the held-back chunks of the previous round still had for the client (their content,
    /// `finishReason` removed), sent before the next event.
    carried: Vec<Bytes>,
    round: StreamRound,
}

/// What becomes of one chunk on its way to the client.
enum ClientChunk {
    Unchanged,
    Changed(String),
    Dropped,
}

impl GeminiStream {
    fn new(tool_name: &str, limit: usize) -> Self {
        Self {
            tool_name: tool_name.to_owned(),
            limit,
            earlier_usage: Vec::new(),
            carried: Vec::new(),
            round: StreamRound::default(),
        }
    }

    /// `event` as the client gets it; `clear_finish` when a round follows (its end is not the
    /// end of the client's response).
    fn for_client(&mut self, event: &SseEvent, clear_finish: bool) -> Option<Bytes> {
        let Some(data) = event.data.as_deref() else {
            return Some(event.raw.clone());
        };
        let chunk = client_chunk(
            data,
            &self.tool_name,
            &mut self.round.pending_signature,
            &self.earlier_usage,
            clear_finish,
        )
        // A chunk that cannot be edited goes as it came, never lost, unless it may carry a
        // call of ours: the client never sees the tool.
        .unwrap_or_else(|_| {
            if memchr::memmem::find(data.as_bytes(), self.tool_name.as_bytes()).is_some() {
                ClientChunk::Dropped
            } else {
                ClientChunk::Unchanged
            }
        });
        match chunk {
            ClientChunk::Unchanged => Some(event.raw.clone()),
            ClientChunk::Changed(data) => Some(crate::sse::encode(event.event.as_deref(), &data)),
            ClientChunk::Dropped => None,
        }
    }

    /// The round will not be continued: what it held goes to the client now, as the end of
    /// the response, and nothing more is assembled.
    fn break_round(&mut self, out: &mut Vec<Bytes>) {
        self.round.broken = true;
        self.round.parts = Vec::new();
        for event in std::mem::take(&mut self.round.held) {
            out.extend(self.for_client(&event, false));
        }
        self.round.bytes = 0;
    }

    /// Adds a chunk's first candidate to the round's turn. Returns whether the chunk ends the
    /// round (a `finishReason`).
    fn assemble(&mut self, root: &OrderedObject<'_>) -> bool {
        let Some(candidates) = root.get("candidates").filter(|c| !is_null(c)) else {
            self.keep_bookkeeping(root);
            return false;
        };
        let Ok(candidates) = array(candidates.get()) else {
            self.round.broken = true;
            return false;
        };
        let candidates: Option<Vec<OrderedObject<'_>>> = candidates
            .iter()
            .map(|candidate| object(candidate.get()).ok())
            .collect();
        let Some(candidates) = candidates else {
            self.round.broken = true;
            return false;
        };
        let finishes = candidates.iter().any(|candidate| {
            member(candidate, "finishReason", "finish_reason").is_some_and(|r| !is_null(r))
        });
        let first_only = match candidates.as_slice() {
            [] => true,
            [candidate] => candidate
                .get("index")
                .is_none_or(|index| index.get() == "0"),
            _ => false,
        };
        if !first_only {
            // Several candidates: not a turn to continue (`read_turn` would refuse it).
            self.round.broken = true;
        }
        if self.round.broken {
            return finishes;
        }
        self.keep_bookkeeping(root);
        let Some(candidate) = candidates.first() else {
            return finishes;
        };
        if let Some(reason) =
            member(candidate, "finishReason", "finish_reason").filter(|r| !is_null(r))
        {
            self.round.finish_reason = Some(reason.get().to_owned());
        }
        let parts = match candidate_parts(candidate) {
            Ok(Some((content, parts))) => {
                if self.round.role.is_none()
                    && let Some(role) = object(content.get())
                        .ok()
                        .and_then(|content| content.get("role"))
                        .filter(|role| !is_null(role))
                {
                    self.round.role = Some(role.get().to_owned());
                }
                array(parts.get())
            }
            Ok(None) => Ok(Vec::new()),
            Err(error) => Err(error),
        };
        let Ok(parts) = parts else {
            self.round.broken = true;
            return finishes;
        };
        for part in parts {
            let text = object(part.get()).ok().as_ref().and_then(plain_text);
            match (text, self.round.parts.last_mut()) {
                (
                    Some((more, thought)),
                    Some(AssembledPart::Text {
                        text,
                        thought: last_thought,
                    }),
                ) if thought == *last_thought => {
                    self.round.bytes += more.len();
                    text.push_str(&more);
                }
                (Some((text, thought)), _) => {
                    self.round.bytes += text.len();
                    self.round.parts.push(AssembledPart::Text { text, thought });
                }
                (None, _) => {
                    self.round.bytes += part.get().len();
                    self.round
                        .parts
                        .push(AssembledPart::Raw(part.get().to_owned()));
                }
            }
        }
        finishes
    }

    /// The latest usage, model version and response id of the round.
    fn keep_bookkeeping(&mut self, root: &OrderedObject<'_>) {
        let latest = |camel: &str, snake: &str| {
            member(root, camel, snake)
                .filter(|value| !is_null(value))
                .map(|value| value.get().to_owned())
        };
        if let Some(usage) = latest("usageMetadata", "usage_metadata") {
            self.round.usage = Some(usage);
        }
        if let Some(version) = latest("modelVersion", "model_version") {
            self.round.model_version = Some(version);
        }
        if let Some(id) = latest("responseId", "response_id") {
            self.round.response_id = Some(id);
        }
    }

    /// Holds back an event of the round's end; past the limit the round is given up.
    fn hold(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        self.round.bytes += event.raw.len();
        self.round.held.push(event);
        if self.round.bytes > self.limit {
            self.break_round(out);
        }
    }
}

impl StreamFilter for GeminiStream {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Bytes>) {
        out.append(&mut self.carried);
        let root = event.data.as_deref().and_then(|data| object(data).ok());
        let Some(root) = root else {
            // Comments, and data that is no JSON object: as they came.
            if self.round.finished && !self.round.broken {
                self.hold(event, out);
            } else {
                out.push(event.raw);
            }
            return;
        };
        if root.get("error").is_some() {
            // The SDK raises it; the round ends there.
            self.round.errored = true;
            self.break_round(out);
            out.push(event.raw);
            return;
        }
        let finishes = self.assemble(&root);
        self.round.saw_finish |= finishes;
        drop(root);
        if self.round.broken {
            self.break_round(out);
            out.extend(self.for_client(&event, false));
            return;
        }
        if finishes || self.round.finished {
            self.round.finished = true;
            self.hold(event, out);
            return;
        }
        out.extend(self.for_client(&event, false));
        if self.round.bytes > self.limit {
            self.break_round(out);
        }
    }

    fn end_round(&mut self) -> Option<String> {
        let round = &self.round;
        if round.broken {
            return None;
        }
        let finish_reason = round.finish_reason.as_deref()?;
        let parts: Vec<String> = round.parts.iter().map(AssembledPart::render).collect();
        let parts = format!("[{}]", parts.join(","));
        let content = OrderedObject::render([
            ("role", round.role.as_deref().unwrap_or("\"model\"")),
            ("parts", parts.as_str()),
        ]);
        let candidate = OrderedObject::render([
            ("content", content.as_str()),
            ("finishReason", finish_reason),
            ("index", "0"),
        ]);
        let candidates = format!("[{candidate}]");
        let mut members = vec![("candidates", candidates.as_str())];
        members.extend(round.usage.as_deref().map(|u| ("usageMetadata", u)));
        members.extend(round.model_version.as_deref().map(|v| ("modelVersion", v)));
        members.extend(round.response_id.as_deref().map(|id| ("responseId", id)));
        Some(OrderedObject::render(members))
    }

    fn cut_short(&self) -> bool {
        !self.round.saw_finish && !self.round.errored
    }

    fn next_round(&mut self) {
        for event in std::mem::take(&mut self.round.held) {
            if let Some(bytes) = self.for_client(&event, true) {
                self.carried.push(bytes);
            }
        }
        if let Some(usage) = self
            .round
            .usage
            .as_deref()
            .and_then(|usage| serde_json::from_str(usage).ok())
        {
            self.earlier_usage.push(usage);
        }
        self.round = StreamRound::default();
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.carried);
        for event in std::mem::take(&mut self.round.held) {
            out.extend(self.for_client(&event, false));
        }
    }

    fn error_event(&mut self, message: &str) -> Bytes {
        // What the model said before the failure goes first (without its `finishReason`: the
        // response did not end well), then the error, which google-genai raises as a
        // `ServerError` (a chunk whose JSON starts with `{"error":`, a 5xx code).
        let mut out = std::mem::take(&mut self.carried);
        for event in std::mem::take(&mut self.round.held) {
            out.extend(self.for_client(&event, true));
        }
        out.push(crate::sse::encode(
            None,
            &format!(
                r#"{{"error":{{"code":500,"message":{},"status":"INTERNAL"}}}}"#,
                quote(message)
            ),
        ));
        Bytes::from(out.concat())
    }
}

/// A chunk for the client: our calls removed (their thought signature moved to the next client
/// call without one), usage summed with `earlier_usage`, and with `clear_finish` its
/// `finishReason` removed. Every other byte stays.
fn client_chunk(
    data: &str,
    tool_name: &str,
    pending_signature: &mut Option<String>,
    earlier_usage: &[serde_json::Value],
    clear_finish: bool,
) -> Result<ClientChunk, Malformed> {
    let root = object(data)?;
    if root.get("error").is_some() {
        return Ok(ClientChunk::Unchanged);
    }
    let mut splice = Splice::default();
    // Something of ours (a call, a finishReason) went, and whether anything else is left.
    let (mut removed, mut worth_sending) = (false, false);
    for (key, value) in &root.0 {
        match key.as_ref() {
            "candidates" if !is_null(value) => {
                for candidate in array(value.get())? {
                    let (candidate_removed, candidate_worth) = client_candidate(
                        data,
                        candidate,
                        tool_name,
                        pending_signature,
                        clear_finish,
                        &mut splice,
                    )?;
                    removed |= candidate_removed;
                    worth_sending |= candidate_worth;
                }
            }
            "usageMetadata" | "usage_metadata" if !is_null(value) && !earlier_usage.is_empty() => {
                let span = span_of(data, value).ok_or(Malformed("usageMetadata"))?;
                splice.replace(span, summed_usage(value, earlier_usage));
            }
            key if BOOKKEEPING_MEMBERS.contains(&key) => {}
            _ => worth_sending = true,
        }
    }
    if removed && !worth_sending {
        return Ok(ClientChunk::Dropped);
    }
    if splice.is_empty() {
        return Ok(ClientChunk::Unchanged);
    }
    splice
        .apply(data)
        .map(ClientChunk::Changed)
        .ok_or(Malformed("overlapping edits"))
}

/// Edits one candidate of a chunk for the client (see [`client_chunk`]). Returns whether
/// something was removed, and whether the candidate still has something to say.
fn client_candidate(
    data: &str,
    candidate_raw: &RawValue,
    tool_name: &str,
    pending_signature: &mut Option<String>,
    clear_finish: bool,
    splice: &mut Splice,
) -> Result<(bool, bool), Malformed> {
    let Ok(candidate) = object(candidate_raw.get()) else {
        // Not a candidate (`null`, say): nothing of ours in it, and it stays as it came.
        return Ok((false, true));
    };
    let (mut removed, mut worth_sending) = (false, false);
    // The new `parts` and the byte range they replace.
    let mut parts_edit: Option<(std::ops::Range<usize>, String)> = None;
    if let Some((content, parts)) = candidate_parts(&candidate)? {
        let content_object = object(content.get())?;
        worth_sending |= content_object
            .0
            .iter()
            .any(|(key, _)| key != "role" && key != "parts");
        let mut kept = Vec::new();
        let mut changed = false;
        for (raw, call) in read_parts(parts)? {
            match call {
                Some(call) if call.is(tool_name) => {
                    removed = true;
                    changed = true;
                    if pending_signature.is_none() {
                        *pending_signature = call.signature().map(|s| s.get().to_owned());
                    }
                }
                Some(call) if call.signature().is_none() && pending_signature.is_some() => {
                    changed = true;
                    let signature = pending_signature.take();
                    kept.push(OrderedObject::render(
                        call.part
                            .0
                            .iter()
                            .map(|(key, value)| (key.as_ref(), value.get()))
                            .chain(signature.as_deref().map(|s| ("thoughtSignature", s))),
                    ));
                }
                Some(_) => {
                    *pending_signature = None;
                    kept.push(raw.get().to_owned());
                }
                None => kept.push(raw.get().to_owned()),
            }
        }
        worth_sending |= !kept.is_empty();
        if changed {
            let span = span_of(data, parts).ok_or(Malformed("parts"))?;
            let parts = if kept.is_empty() {
                EMPTY_PARTS.to_owned()
            } else {
                format!("[{}]", kept.join(","))
            };
            parts_edit = Some((span, parts));
        }
    }
    let mut finish_cleared = false;
    for (key, _) in &candidate.0 {
        match key.as_ref() {
            "content" | "index" => {}
            key if FINISH_MEMBERS.contains(&key) => {
                if clear_finish {
                    finish_cleared = true;
                } else {
                    worth_sending = true;
                }
            }
            _ => worth_sending = true,
        }
    }
    if !finish_cleared {
        if let Some((span, parts)) = parts_edit {
            splice.replace(span, parts);
        }
        return Ok((removed, worth_sending));
    }
    // The candidate without its finish members; its content with the new parts.
    let candidate_span = span_of(data, candidate_raw).ok_or(Malformed("candidate"))?;
    let content = match (parts_edit, candidate.get("content")) {
        (Some((span, parts)), Some(content)) => {
            let content_span = span_of(data, content).ok_or(Malformed("content"))?;
            let mut edit = Splice::default();
            edit.replace(
                span.start - content_span.start..span.end - content_span.start,
                parts,
            );
            Some(
                edit.apply(content.get())
                    .ok_or(Malformed("overlapping edits"))?,
            )
        }
        _ => None,
    };
    let members = candidate
        .0
        .iter()
        .filter(|(key, _)| !FINISH_MEMBERS.contains(&key.as_ref()))
        .map(|(key, value)| {
            let value = match (key.as_ref(), &content) {
                ("content", Some(content)) => content.as_str(),
                _ => value.get(),
            };
            (key.as_ref(), value)
        });
    splice.replace(candidate_span, OrderedObject::render(members));
    Ok((true, worth_sending))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "ccr_retrieve";

    /// A request as google-genai 3.4 sends it (key order, snake_case keys inside declarations
    /// and function responses included).
    const REQUEST: &str = r#"{"contents": [{"parts": [{"text": "Why did the payment fail?"}], "role": "user"}, {"parts": [{"functionCall": {"id": "fc-0", "args": {"cmd": "cat log"}, "name": "bash"}, "thoughtSignature": "AQI="}], "role": "model"}, {"parts": [{"functionResponse": {"will_continue": false, "id": "fc-0", "name": "bash", "response": {"output": "line1\nerror: card \u00e9 declined", "exit_code": 0}}}], "role": "user"}], "tools": [{"functionDeclarations": [{"description": "run", "name": "bash", "parameters_json_schema": {"type": "object"}}]}], "toolConfig": {"functionCallingConfig": {"allowedFunctionNames": ["bash", "ccr_retrieve"], "mode": "ANY"}}, "generationConfig": {}}"#;

    fn inspect(body: &str, min_bytes: usize) -> (Vec<ToolOutput>, bool) {
        match Gemini.inspect(body, TOOL, min_bytes).unwrap() {
            Inspection::Outputs {
                outputs,
                redeemable,
            } => (outputs, redeemable),
            Inspection::Skip(reason) => panic!("skipped: {reason}"),
        }
    }

    /// A request whose only function response is `response` (a JSON text), after a user
    /// question and a `bash` call.
    fn with_response(response: &str) -> String {
        format!(
            r#"{{"contents":[{{"role":"user","parts":[{{"text":"q"}}]}},{{"role":"model","parts":[{{"functionCall":{{"name":"bash","args":{{}}}}}}]}},{{"role":"user","parts":[{{"functionResponse":{{"name":"bash","response":{response}}}}}]}}]}}"#
        )
    }

    #[test]
    fn matches_generate_content_on_any_version_and_host() {
        let post = http::Method::POST;
        for url in [
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
            "https://generativelanguage.googleapis.com/v1/models/gemini-2.5-flash:generateContent?key=k",
            "https://generativelanguage.googleapis.com/v1beta/tunedModels/mine:generateContent",
            "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            "http://localhost:8080/proxy/v1/models/m:generateContent/",
        ] {
            assert!(Gemini.matches(&post, &url.parse().unwrap()), "{url}");
        }
        for url in [
            "https://generativelanguage.googleapis.com/v1beta/models/m:countTokens",
            "https://generativelanguage.googleapis.com/v1beta/models/m",
            "https://api.example.com/v1/chat/completions",
            "https://generativelanguage.googleapis.com/v1beta/models/m:generateContents",
        ] {
            assert!(!Gemini.matches(&post, &url.parse().unwrap()), "{url}");
        }
        let url = "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent";
        assert!(!Gemini.matches(&http::Method::GET, &url.parse().unwrap()));
    }

    #[test]
    fn finds_large_strings_in_function_responses_with_their_context() {
        let (found, redeemable) = inspect(REQUEST, 10);
        assert!(redeemable);
        assert_eq!(found.len(), 1, "the exit code is no output");
        assert_eq!(found[0].text, "line1\nerror: card \u{e9} declined");
        assert_eq!(
            &REQUEST[found[0].span.clone()],
            r#""line1\nerror: card \u00e9 declined""#
        );
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
        assert_eq!(
            found[0].query,
            "Why did the payment fail?\n{\"cmd\": \"cat log\"}"
        );
        // Below the size threshold, nothing.
        assert!(inspect(REQUEST, 500).0.is_empty());
    }

    #[test]
    fn pairs_responses_without_ids_by_name_and_order() {
        let body = r#"{"contents":[
            {"role":"user","parts":[{"text":"old question"}]},
            {"role":"user","parts":[{"text":"compare the files"},{"text":"thinking aloud","thought":true}]},
            {"role":"model","parts":[{"text":"Reading both."},{"functionCall":{"name":"read","args":{"path":"a.txt"}}},{"functionCall":{"name":"read","args":{"path":"b.txt"}}}]},
            {"parts":[{"functionResponse":{"name":"read","response":{"output":"contents of a"}}},{"functionResponse":{"name":"read","response":{"output":"contents of b"}}},{"functionResponse":{"name":"stat","response":{"output":"no call for this"}}}]}
        ]}"#;
        let (found, _) = inspect(body, 5);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].query, "compare the files\n{\"path\":\"a.txt\"}");
        assert_eq!(found[1].query, "compare the files\n{\"path\":\"b.txt\"}");
        assert_eq!(found[2].query, "compare the files");
        assert_eq!(found[2].tool_name.as_deref(), Some("stat"));
        // An id that matches no call falls back to the name.
        let body = body.replacen(
            r#"{"name":"read","response":{"output":"contents of a"}}"#,
            r#"{"name":"read","id":"gone","response":{"output":"contents of a"}}"#,
            1,
        );
        assert_eq!(
            inspect(&body, 5).0[0].query,
            "compare the files\n{\"path\":\"a.txt\"}"
        );
    }

    #[test]
    fn ids_pick_the_call_whatever_the_order() {
        let body = r#"{"contents":[
            {"role":"user","parts":[{"text":"q"}]},
            {"role":"model","parts":[{"functionCall":{"id":"x1","name":"grep","args":{"q":"first"}}},{"functionCall":{"id":"x2","name":"grep","args":{"q":"second"}}}]},
            {"role":"user","parts":[{"functionResponse":{"id":"x2","name":"grep","response":{"output":"second hits"}}},{"functionResponse":{"id":"x1","name":"grep","response":{"output":"first hits"}}}]}
        ]}"#;
        let (found, _) = inspect(body, 5);
        assert_eq!(found[0].query, "q\n{\"q\":\"second\"}");
        assert_eq!(found[1].query, "q\n{\"q\":\"first\"}");
    }

    #[test]
    fn large_containers_become_one_output_unless_they_hold_a_large_string() {
        // An array of small records: one output, its JSON text as sent.
        let records: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"id": {i}, "status": "ok"}}"#))
            .collect();
        let array = format!("[{}]", records.join(", "));
        let body = with_response(&format!(r#"{{"result": {array}, "count": 40}}"#));
        let (found, _) = inspect(&body, 50);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, array);
        assert_eq!(&body[found[0].span.clone()], array);

        // A record holding a large text: the text alone, the rest of the structure stays.
        let log = "2026-11-23 INFO request served in 3ms by worker\n".repeat(60);
        let files = serde_json::json!([
            {"path": "app.log", "content": log},
            {"path": "small.txt", "content": "tiny"}
        ])
        .to_string();
        let body = with_response(&format!(r#"{{"files":{files},"summary":"two files"}}"#));
        let (found, _) = inspect(&body, 50);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, log);
        assert!(body[found[0].span.clone()].starts_with("\"2026-11-23"));

        // A medium string (below the token threshold on its own) does not stop its container
        // from being taken whole.
        let snippets: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    r#"{{"title":"hit {i}","snippet":"{}"}}"#,
                    "word ".repeat(12)
                )
            })
            .collect();
        let hits = format!("[{}]", snippets.join(","));
        let body = with_response(&format!(r#"{{"hits":{hits}}}"#));
        let (found, _) = inspect(&body, 50);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, hits);

        // A root made only of small members stays as it is: the root must stay an object.
        let members: Vec<String> = (0..100).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let body = with_response(&format!("{{{}}}", members.join(",")));
        assert!(inspect(&body, 50).0.is_empty());

        // Spans never overlap, whatever the nesting.
        let nested =
            serde_json::json!({"a": {"b": [{"c": log, "d": [1, 2, 3]}, records]}, "e": log});
        let body = with_response(&nested.to_string());
        let (found, _) = inspect(&body, 50);
        let mut spans: Vec<_> = found.iter().map(|o| o.span.clone()).collect();
        spans.sort_by_key(|s| s.start);
        assert!(
            spans.windows(2).all(|w| w[0].end <= w[1].start),
            "{spans:?}"
        );
        assert_eq!(found.iter().filter(|o| o.text == log).count(), 2);
    }

    #[test]
    fn deep_nesting_is_taken_whole() {
        let log = "ERROR something failed at step\n".repeat(80);
        let mut value = serde_json::json!(log);
        for _ in 0..12 {
            value = serde_json::json!({ "inner": value });
        }
        let body = with_response(&value.to_string());
        let (found, _) = inspect(&body, 50);
        assert_eq!(found.len(), 1);
        assert!(found[0].text.starts_with("{\"inner\""), "{}", found[0].text);
    }

    #[test]
    fn skips_our_own_answers_and_reads_snake_case() {
        let body = r#"{"contents":[
            {"role":"user","parts":[{"text":"question"}]},
            {"role":"model","parts":[{"function_call":{"id":"c1","name":"ccr_retrieve","args":{"hash":"abc"}}},{"function_call":{"id":"c2","name":"fetch","args":{"url":"u"}}}]},
            {"role":"user","parts":[{"function_response":{"id":"c1","name":"ccr_retrieve","response":{"output":"our own answer"}}},{"function_response":{"id":"c2","name":"fetch","response":{"output":"fetched page"}}}]}
        ]}"#;
        let (found, redeemable) = inspect(body, 5);
        assert!(redeemable);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "fetched page");
        assert_eq!(found[0].query, "question\n{\"url\":\"u\"}");
    }

    #[test]
    fn raw_unicode_and_escaped_surrogates_keep_their_spans() {
        let body = "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"日本語で?\"}]},{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"read\",\"response\":{\"output\":\"行1 \\ud83d\\ude00 ok\\n行2 é\"}}}]}]}";
        let (found, _) = inspect(body, 5);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "行1 \u{1f600} ok\n行2 é");
        assert_eq!(
            &body[found[0].span.clone()],
            "\"行1 \\ud83d\\ude00 ok\\n行2 é\""
        );
        assert_eq!(found[0].query, "日本語で?");
    }

    #[test]
    fn media_parts_of_a_function_response_are_left_alone() {
        let data = "iVBORw0KGgo".repeat(200);
        let body = format!(
            r#"{{"contents":[{{"role":"user","parts":[{{"functionResponse":{{"name":"screenshot","response":{{"output":"taken"}},"parts":[{{"inlineData":{{"mimeType":"image/png","data":"{data}"}}}}]}}}}]}}]}}"#
        );
        assert!(inspect(&body, 50).0.is_empty());
    }

    #[test]
    fn empty_and_missing_parts_are_fine() {
        let body = r#"{"contents":[{"role":"user","parts":[]},{"role":"model"},{"role":"user","parts":null},{"role":"user","parts":[{"functionResponse":{"name":"f","response":{"output":"some output"}}}]}]}"#;
        let (found, _) = inspect(body, 5);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].query, "");
        assert_eq!(found[0].tool_name.as_deref(), Some("f"));
        // A content without parts between the question and the output changes nothing.
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"q1"}]},{"role":"user","parts":[{"text":""}]},{"role":"model"},{"parts":[{"functionResponse":{"name":"f","response":{"output":"some output"}}}]},{"role":"user","parts":[{"text":"q2"}]},{"role":"model"},{"parts":[{"functionResponse":{"name":"f","response":{"output":"more output"}}}]}]}"#;
        let (found, _) = inspect(body, 5);
        assert_eq!(found[0].query, "q1");
        assert_eq!(found[1].query, "q2");
    }

    #[test]
    fn skips_several_candidates_and_refuses_other_shapes() {
        let body = r#"{"contents":[],"generationConfig":{"candidateCount":2}}"#;
        assert!(matches!(
            Gemini.inspect(body, TOOL, 0).unwrap(),
            Inspection::Skip(_)
        ));
        let body = r#"{"contents":[],"generation_config":{"candidate_count":1}}"#;
        assert!(matches!(
            Gemini.inspect(body, TOOL, 0).unwrap(),
            Inspection::Outputs { .. }
        ));
        for body in [
            "[1]",
            r#"{"model":"x"}"#,
            r#"{"contents":{}}"#,
            r#"{"contents":[],"toolConfig":{},"tool_config":{}}"#,
            r#"{"contents":[{"parts":[{"text":"a","text":"b"}]}]}"#,
            r#"{"contents":[],"generationConfig":7}"#,
        ] {
            assert!(Gemini.inspect(body, TOOL, 0).is_err(), "{body}");
        }
    }

    #[test]
    fn redeemable_only_when_the_model_can_call_the_tool() {
        let bash = r#"{"functionDeclarations":[{"name":"bash"}]}"#;
        let cases = [
            (String::new(), true),
            (format!(r#","tools":[{bash}]"#), true),
            (r#","tools":[]"#.into(), true),
            (r#","toolConfig":{"functionCallingConfig":{"mode":"AUTO"}}"#.into(), true),
            (r#","toolConfig":{"functionCallingConfig":{"mode":"any"}}"#.into(), true),
            (r#","toolConfig":{"functionCallingConfig":{"mode":"VALIDATED"}}"#.into(), true),
            (r#","toolConfig":{"functionCallingConfig":{"mode":"NONE"}}"#.into(), false),
            (r#","tool_config":{"function_calling_config":{"mode":"none"}}"#.into(), false),
            (r#","toolConfig":{"functionCallingConfig":{"mode":"SOMETIMES"}}"#.into(), false),
            (
                r#","toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["bash"]}}"#.into(),
                false,
            ),
            (
                r#","toolConfig":{"functionCallingConfig":{"mode":"ANY","allowed_function_names":["bash","ccr_retrieve"]}}"#.into(),
                true,
            ),
            (
                r#","toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":[]}}"#.into(),
                true,
            ),
            (r#","toolConfig":{"retrievalConfig":{}}"#.into(), true),
            (
                r#","tools":[{"function_declarations":[{"name":"ccr_retrieve"}]}]"#.into(),
                false,
            ),
            (
                format!(r#","tools":[{bash},{{"functionDeclarations":[{{"name":"ccr_retrieve","description":"mine"}}]}}]"#),
                false,
            ),
            (r#","cachedContent":"cachedContents/abc""#.into(), false),
            (r#","cached_content":"cachedContents/abc""#.into(), false),
            // Built-in tools or structured output without functions of the client's: Gemini
            // 2.x would refuse the request once a function is added.
            (r#","tools":[{"googleSearch":{}}]"#.into(), false),
            (format!(r#","tools":[{{"googleSearch":{{}}}},{bash}]"#), true),
            (
                r#","generationConfig":{"responseMimeType":"application/json"}"#.into(),
                false,
            ),
            (
                r#","generationConfig":{"responseMimeType":"text/plain","temperature":0.2}"#.into(),
                true,
            ),
            (r#","generationConfig":{"responseJsonSchema":{"type":"object"}}"#.into(), false),
            (
                format!(r#","tools":[{bash}],"generationConfig":{{"response_mime_type":"application/json"}}"#),
                true,
            ),
            (r#","tools":{}"#.into(), false),
        ];
        for (extra, expected) in cases {
            let body = format!(
                r#"{{"contents":[{{"role":"user","parts":[{{"functionResponse":{{"name":"f","response":{{"output":"xxxxxxxx"}}}}}}]}}]{extra}}}"#
            );
            assert_eq!(inspect(&body, 1).1, expected, "{body}");
        }
    }

    #[test]
    fn injects_into_the_first_function_declarations_or_a_new_tool() {
        let declaration = declaration(TOOL);
        let tool = format!(r#"{{"functionDeclarations":[{declaration}]}}"#);
        let cases = [
            (
                r#"{"contents":[] }"#.to_owned(),
                format!(r#"{{"contents":[] ,"tools":[{tool}]}}"#),
            ),
            (
                r#"{"contents":[],"tools":null}"#.into(),
                format!(r#"{{"contents":[],"tools":[{tool}]}}"#),
            ),
            (
                r#"{"contents":[],"tools":[ ]}"#.into(),
                format!(r#"{{"contents":[],"tools":[ {tool}]}}"#),
            ),
            (
                r#"{"tools":[{"googleSearch":{}},{"functionDeclarations":[{"name":"a"}]},{"functionDeclarations":[{"name":"b"}]}],"contents":[]}"#.into(),
                format!(
                    r#"{{"tools":[{{"googleSearch":{{}}}},{{"functionDeclarations":[{{"name":"a"}},{declaration}]}},{{"functionDeclarations":[{{"name":"b"}}]}}],"contents":[]}}"#
                ),
            ),
            (
                r#"{"tools":[{"function_declarations":[ ]}],"contents":[]}"#.into(),
                format!(r#"{{"tools":[{{"function_declarations":[ {declaration}]}}],"contents":[]}}"#),
            ),
            (
                r#"{"tools":[{"codeExecution":{}}],"contents":[]}"#.into(),
                format!(r#"{{"tools":[{{"codeExecution":{{}}}},{tool}],"contents":[]}}"#),
            ),
        ];
        for (body, expected) in cases {
            let mut splice = Splice::default();
            Gemini.inject_tool(&body, TOOL, &mut splice).unwrap();
            assert_eq!(splice.apply(&body).unwrap(), expected);
        }
        let parsed: serde_json::Value = serde_json::from_str(&declaration).unwrap();
        assert_eq!(parsed["name"], TOOL);
        assert_eq!(parsed["parameters"]["type"], "OBJECT");
        assert_eq!(parsed["parameters"]["properties"]["hash"]["type"], "STRING");
        assert_eq!(
            parsed["parameters"]["properties"]["query"]["type"],
            "STRING"
        );
        assert_eq!(
            parsed["parameters"]["required"],
            serde_json::json!(["hash"])
        );
        assert_eq!(parsed["description"], TOOL_DESCRIPTION);
    }

    /// A response as the API sends it: parallel calls, the first with a thought signature.
    const RESPONSE: &str = r#"{
  "candidates": [
    {
      "content": {
        "parts": [
          {
            "functionCall": {
              "name": "ccr_retrieve",
              "args": {
                "hash": "0123456789abcdef01234567",
                "query": "card declined"
              },
              "id": "fc-1"
            },
            "thoughtSignature": "CiQBcsjafE2b"
          },
          {
            "functionCall": {
              "name": "ccr_retrieve",
              "args": {
                "hash": "0123456789abcdef01234567"
              },
              "id": "fc-2"
            }
          }
        ],
        "role": "model"
      },
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 100,
    "candidatesTokenCount": 20,
    "totalTokenCount": 160,
    "promptTokensDetails": [
      {
        "modality": "TEXT",
        "tokenCount": 100
      }
    ],
    "thoughtsTokenCount": 40
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "r-1"
}"#;

    /// `RESPONSE` without call ids, as the Gemini API often sends them.
    fn without_ids(response: &str) -> String {
        response
            .replace(",\n              \"id\": \"fc-1\"", "")
            .replace(",\n              \"id\": \"fc-2\"", "")
    }

    #[test]
    fn reads_retrieval_turns() {
        let expected_arguments = [
            "{\n                \"hash\": \"0123456789abcdef01234567\",\n                \"query\": \"card declined\"\n              }",
            "{\n                \"hash\": \"0123456789abcdef01234567\"\n              }",
        ];
        assert_eq!(
            Gemini.read_turn(RESPONSE, TOOL).unwrap(),
            Turn::Retrieve(vec![
                Call {
                    id: "fc-1".into(),
                    arguments: expected_arguments[0].into()
                },
                Call {
                    id: "fc-2".into(),
                    arguments: expected_arguments[1].into()
                }
            ])
        );
        let plain = without_ids(RESPONSE);
        assert!(!plain.contains("fc-1"));
        assert_eq!(
            Gemini.read_turn(&plain, TOOL).unwrap(),
            Turn::Retrieve(vec![
                Call {
                    id: "ccr_0".into(),
                    arguments: expected_arguments[0].into()
                },
                Call {
                    id: "ccr_1".into(),
                    arguments: expected_arguments[1].into()
                }
            ])
        );
        // No args at all: an empty object.
        let bare = r#"{"candidates":[{"content":{"role":"model","parts":[{"function_call":{"name":"ccr_retrieve"}}]}}]}"#;
        assert_eq!(
            Gemini.read_turn(bare, TOOL).unwrap(),
            Turn::Retrieve(vec![Call {
                id: "ccr_0".into(),
                arguments: "{}".into()
            }])
        );
        let mixed = RESPONSE.replacen("\"name\": \"ccr_retrieve\"", "\"name\": \"bash\"", 1);
        assert_eq!(Gemini.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        for other in [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"The card was declined."}]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"content":{"role":"model"},"finishReason":"MAX_TOKENS"}]}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[]},"finishReason":"STOP"}]}"#,
            r#"{"candidates":[{"finishReason":"SAFETY"}]}"#,
            r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
            r#"{"candidates":[]}"#,
        ] {
            assert_eq!(
                Gemini.read_turn(other, TOOL).unwrap(),
                Turn::Other,
                "{other}"
            );
        }
        // Several candidates: not ours to continue.
        let one = r#"{"content":{"role":"model","parts":[{"functionCall":{"name":"ccr_retrieve","args":{}}}]}}"#;
        let two = format!(r#"{{"candidates":[{one},{one}]}}"#);
        assert_eq!(Gemini.read_turn(&two, TOOL).unwrap(), Turn::Other);
        assert!(Gemini.read_turn("[]", TOOL).is_err());
    }

    #[test]
    fn continuation_replays_the_model_turn_and_answers_each_call() {
        let request = r#"{"contents": [{"role":"user","parts":[{"text":"q"}]}], "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}"#;
        let answers = [
            Answer {
                call_id: "fc-1".into(),
                text: "hits \u{e9}\n".into(),
            },
            Answer {
                call_id: "fc-2".into(),
                text: "whole \"original\"".into(),
            },
        ];
        let next = Gemini
            .continuation(request, RESPONSE, &answers, false)
            .unwrap();
        let start = RESPONSE.find("{\n        \"parts\"").unwrap();
        let end = RESPONSE.find(",\n      \"finishReason\"").unwrap();
        let model_turn = &RESPONSE[start..end];
        assert!(model_turn.contains("\"thoughtSignature\": \"CiQBcsjafE2b\""));
        assert_eq!(
            next,
            format!(
                r#"{{"contents": [{{"role":"user","parts":[{{"text":"q"}}]}},{model_turn},{{"role":"user","parts":[{{"functionResponse":{{"name":"ccr_retrieve","id":"fc-1","response":{{"output":"hits é\n"}}}}}},{{"functionResponse":{{"name":"ccr_retrieve","id":"fc-2","response":{{"output":"whole \"original\""}}}}}}]}}], "toolConfig": {{"functionCallingConfig": {{"mode": "AUTO"}}}}}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(parsed["contents"][1]["role"], "model");
        assert_eq!(
            parsed["contents"][2]["parts"][1]["functionResponse"]["response"]["output"],
            "whole \"original\""
        );
    }

    #[test]
    fn continuation_without_ids_sends_none() {
        let plain = without_ids(RESPONSE);
        let answers = [
            Answer {
                call_id: "ccr_0".into(),
                text: "a".into(),
            },
            Answer {
                call_id: "ccr_1".into(),
                text: "b".into(),
            },
        ];
        let next = Gemini
            .continuation(r#"{"contents":[]}"#, &plain, &answers, false)
            .unwrap();
        assert!(!next.contains("ccr_0") && !next.contains("ccr_1"), "{next}");
        assert!(
            next.starts_with("{\"contents\":[{\n        \"parts\""),
            "{next}"
        );
        assert!(next.ends_with(
            r#",{"role":"user","parts":[{"functionResponse":{"name":"ccr_retrieve","response":{"output":"a"}}},{"functionResponse":{"name":"ccr_retrieve","response":{"output":"b"}}}]}]}"#
        ), "{next}");
        // An answer for no call of the response is a bug, reported.
        let stray = [Answer {
            call_id: "nope".into(),
            text: "x".into(),
        }];
        assert!(
            Gemini
                .continuation(r#"{"contents":[]}"#, &plain, &stray, false)
                .is_err()
        );
        // A model content without a role gets one.
        let roleless = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"ccr_retrieve","args":{}}}]}}]}"#;
        let answer = [Answer {
            call_id: "ccr_0".into(),
            text: "x".into(),
        }];
        let next = Gemini
            .continuation(r#"{"contents":[]}"#, roleless, &answer, false)
            .unwrap();
        assert!(
            next.starts_with(r#"{"contents":[{"role":"model","parts":[{"functionCall""#),
            "{next}"
        );
    }

    #[test]
    fn the_final_round_sets_mode_none() {
        let answers = [
            Answer {
                call_id: "fc-1".into(),
                text: "a".into(),
            },
            Answer {
                call_id: "fc-2".into(),
                text: "b".into(),
            },
        ];
        let none = r#"{"functionCallingConfig":{"mode":"NONE"}}"#;
        let cases = [
            (r#"{"contents":[]}"#.to_owned(), format!(r#","toolConfig":{none}}}"#)),
            (r#"{"contents":[],"toolConfig":null}"#.into(), format!(r#","toolConfig":{none}}}"#)),
            (
                r#"{"contents":[],"toolConfig":{ "retrievalConfig":{"languageCode":"en"} }}"#.into(),
                r#","toolConfig":{ "retrievalConfig":{"languageCode":"en"} ,"functionCallingConfig":{"mode":"NONE"}}}"#.into(),
            ),
            (
                r#"{"contents":[],"toolConfig":{}}"#.into(),
                r#","toolConfig":{"functionCallingConfig":{"mode":"NONE"}}}"#.into(),
            ),
            (
                r#"{"contents":[],"toolConfig":{"functionCallingConfig":null}}"#.into(),
                r#","toolConfig":{"functionCallingConfig":{"mode":"NONE"}}}"#.into(),
            ),
            (
                r#"{"contents":[],"toolConfig":{"functionCallingConfig":{"allowedFunctionNames":["bash","ccr_retrieve"],"mode":"ANY","streamFunctionCallArguments":false}}}"#.into(),
                r#","toolConfig":{"functionCallingConfig":{"mode":"NONE","streamFunctionCallArguments":false}}}"#.into(),
            ),
            (
                r#"{"contents":[],"tool_config":{"function_calling_config":{"allowed_function_names":["ccr_retrieve"]}}}"#.into(),
                r#","tool_config":{"function_calling_config":{"mode":"NONE"}}}"#.into(),
            ),
        ];
        for (request, expected_end) in cases {
            let last = Gemini
                .continuation(&request, RESPONSE, &answers, true)
                .unwrap();
            assert!(last.ends_with(&expected_end), "{request}\n{last}");
            let parsed: serde_json::Value = serde_json::from_str(&last).unwrap();
            assert_eq!(parsed["contents"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn finalize_strips_our_calls_and_moves_the_signature() {
        // Ours first (with the signature), the client's second (without one).
        let mixed = RESPONSE.replacen(
            "\"name\": \"ccr_retrieve\",\n              \"args\": {\n                \"hash\": \"0123456789abcdef01234567\"\n              }",
            "\"name\": \"bash\",\n              \"args\": {\"cmd\": \"ls\"}",
            1,
        );
        assert_eq!(Gemini.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        let out = Gemini.finalize(&mixed, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let parts = value["candidates"][0]["content"]["parts"]
            .as_array()
            .unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0]["functionCall"]["name"], "bash");
        assert_eq!(parts[0]["functionCall"]["id"], "fc-2");
        assert_eq!(parts[0]["thoughtSignature"], "CiQBcsjafE2b");
        assert_eq!(value["candidates"][0]["finishReason"], "STOP");
        // Everything outside the parts is as it came.
        let parts_start = mixed.find("\"parts\": [").unwrap();
        assert!(out.starts_with(&mixed[..parts_start + "\"parts\": ".len()]));
        let tail = &mixed[mixed.find(",\n        \"role\": \"model\"").unwrap()..];
        assert!(out.ends_with(tail));

        // A client call with its own signature keeps it; ours goes.
        let signed = r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"ccr_retrieve","args":{}},"thoughtSignature":"OURS"},{"functionCall":{"name":"bash","args":{}},"thoughtSignature":"THEIRS"},{"functionCall":{"name":"ls","args":{}}}]}}]}"#;
        let out = Gemini.finalize(signed, TOOL, &[]).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"bash","args":{}},"thoughtSignature":"THEIRS"},{"functionCall":{"name":"ls","args":{}}}]}}]}"#
        );
    }

    #[test]
    fn finalize_drops_the_parts_when_only_ours_were_there() {
        let out = Gemini.finalize(RESPONSE, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL));
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value["candidates"][0]["content"],
            serde_json::json!({"role": "model"})
        );
        assert_eq!(value["candidates"][0]["finishReason"], "STOP");
        // Text and thoughts stay.
        let with_text = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":"Let me look."},{"functionCall":{"name":"ccr_retrieve","args":{"hash":"x"}}}]}}]}"#;
        assert_eq!(
            Gemini.finalize(with_text, TOOL, &[]).unwrap().unwrap(),
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":"Let me look."}]}}]}"#
        );
        // Every candidate is cleaned.
        let one = r#"{"content":{"role":"model","parts":[{"text":"a"},{"functionCall":{"name":"ccr_retrieve","args":{}}}]}}"#;
        let out = Gemini
            .finalize(&format!(r#"{{"candidates":[{one},{one}]}}"#), TOOL, &[])
            .unwrap()
            .unwrap();
        assert!(!out.contains(TOOL));
    }

    #[test]
    fn finalize_sums_usage_and_leaves_other_responses_alone() {
        let answer = r#"{"candidates": [{"content": {"parts": [{"text": "The card was declined."}], "role": "model"}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 7, "totalTokenCount": 307, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 290}, {"modality": "IMAGE", "tokenCount": 10}]}, "modelVersion": "gemini-2.5-flash"}"#;
        assert_eq!(Gemini.finalize(answer, TOOL, &[]).unwrap(), None);
        let earlier = Gemini.usage(RESPONSE).unwrap();
        assert_eq!(earlier["promptTokenCount"], 100);
        let earlier = [
            earlier,
            serde_json::json!({"promptTokenCount": 1, "totalTokenCount": 1, "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 1}]}),
        ];
        let out = Gemini.finalize(answer, TOOL, &earlier).unwrap().unwrap();
        assert!(
            out.contains(r#""usageMetadata": {"promptTokenCount":401,"candidatesTokenCount":27,"totalTokenCount":468,"promptTokensDetails":[{"modality":"TEXT","tokenCount":390},{"modality":"IMAGE","tokenCount":10},{"modality":"AUDIO","tokenCount":1}],"thoughtsTokenCount":40}, "modelVersion""#),
            "{out}"
        );
        // The rest is byte for byte.
        assert!(out.starts_with(&answer[..answer.find("\"usageMetadata\"").unwrap()]));
        assert!(Gemini.usage(r#"{"candidates":[]}"#).is_none());
        assert_eq!(
            Gemini
                .usage(r#"{"usage_metadata":{"prompt_token_count":3}}"#)
                .unwrap()["prompt_token_count"],
            3
        );
    }

    #[test]
    fn the_query_is_bounded() {
        let question = "why ".repeat(5_000);
        let arguments = serde_json::json!({"pattern": "é".repeat(3_000)});
        let body = serde_json::json!({"contents": [
            {"role": "user", "parts": [{"text": question}]},
            {"role": "model", "parts": [{"functionCall": {"name": "grep", "args": arguments}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "grep", "response": {"output": "output"}}}]}
        ]})
        .to_string();
        let (found, _) = inspect(&body, 5);
        assert!(found[0].query.len() <= MAX_QUESTION_BYTES + 1 + MAX_ARGUMENTS_BYTES);
        assert!(found[0].query.starts_with("why why"));
        assert!(found[0].query.contains("\n{\"pattern\":\"éé"));
    }

    mod stream {
        use super::*;
        use crate::sse::SseParser;

        const LIMIT: usize = 1 << 20;
        const HASH: &str = "0123456789abcdef01234567";

        fn filter(limit: usize) -> Box<dyn StreamFilter> {
            Gemini.stream_filter(TOOL, limit)
        }

        fn events(stream: &str) -> Vec<SseEvent> {
            let mut parser = SseParser::new(LIMIT);
            let mut events = Vec::new();
            parser
                .push(stream.as_bytes(), |event| events.push(event))
                .unwrap();
            parser.finish(|event| events.push(event));
            events
        }

        /// One `data:` event per chunk, with CRLF line ends as the API may send them.
        fn stream(chunks: &[String]) -> String {
            chunks
                .iter()
                .map(|chunk| format!("data: {chunk}\r\n\r\n"))
                .collect()
        }

        /// A chunk of the first candidate, in the API's key order.
        fn chunk(parts: &str, finish: bool, usage: &str, response_id: &str) -> String {
            let finish = if finish {
                r#","finishReason": "STOP""#
            } else {
                ""
            };
            format!(
                r#"{{"candidates": [{{"content": {{"parts": {parts},"role": "model"}}{finish},"index": 0}}],"usageMetadata": {usage},"modelVersion": "gemini-2.5-flash","responseId": "{response_id}"}}"#
            )
        }

        fn ours(id: &str, query: &str, signature: Option<&str>) -> String {
            let signature =
                signature.map_or_else(String::new, |s| format!(r#","thoughtSignature": "{s}""#));
            format!(
                r#"{{"functionCall": {{"name": "{TOOL}","args": {{"hash": "{HASH}","query": "{query}"}},"id": "{id}"}}{signature}}}"#
            )
        }

        /// Feeds every event of `stream`, and returns what the client got after each.
        fn feed(filter: &mut dyn StreamFilter, stream: &str) -> Vec<Vec<Bytes>> {
            events(stream)
                .into_iter()
                .map(|event| {
                    let mut out = Vec::new();
                    filter.event(event, &mut out);
                    out
                })
                .collect()
        }

        /// The chunks the client got, as JSON.
        fn chunks_of(out: &[Bytes]) -> Vec<serde_json::Value> {
            let text: String = out.iter().map(|b| String::from_utf8_lossy(b)).collect();
            events(&text)
                .iter()
                .filter_map(|event| serde_json::from_str(event.data.as_deref()?).ok())
                .collect()
        }

        #[test]
        fn matches_sse_streams_only() {
            let post = http::Method::POST;
            for url in [
                "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse",
                "https://generativelanguage.googleapis.com/v1/models/m:streamGenerateContent?key=k&alt=sse",
                "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/p/locations/l/publishers/google/models/m:streamGenerateContent?alt=sse",
            ] {
                assert!(Gemini.matches(&post, &url.parse().unwrap()), "{url}");
            }
            for url in [
                // A streamed JSON array: passes through.
                "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent",
                "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=json",
                "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?salt=sse",
            ] {
                assert!(!Gemini.matches(&post, &url.parse().unwrap()), "{url}");
            }
        }

        #[test]
        fn without_retrieval_every_event_goes_through_byte_for_byte() {
            let upstream = format!(
                ": keep-alive\r\n\r\n{}",
                stream(&[
                    chunk(
                        r#"[{"text": "Thinking it over","thought": true}]"#,
                        false,
                        r#"{"promptTokenCount": 10,"totalTokenCount": 10}"#,
                        "r1"
                    ),
                    chunk(
                        r#"[{"text": "The card \u00e9"}]"#,
                        false,
                        r#"{"promptTokenCount": 10,"totalTokenCount": 12}"#,
                        "r1"
                    ),
                    chunk(
                        r#"[{"text": " was declined.","thoughtSignature": "SIG"}]"#,
                        true,
                        r#"{"promptTokenCount": 10,"candidatesTokenCount": 5,"totalTokenCount": 15}"#,
                        "r1"
                    ),
                ])
            );
            let mut filter = filter(LIMIT);
            let outs = feed(filter.as_mut(), &upstream);
            let sent: Vec<usize> = outs.iter().map(Vec::len).collect();
            assert_eq!(sent, [1, 1, 1, 0], "forwarded as they come, the last held");
            let response = filter.end_round().unwrap();
            assert_eq!(Gemini.read_turn(&response, TOOL).unwrap(), Turn::Other);
            let value: serde_json::Value = serde_json::from_str(&response).unwrap();
            assert_eq!(
                value["candidates"][0]["content"]["parts"],
                serde_json::json!([
                    {"text": "Thinking it over", "thought": true},
                    {"text": "The card \u{e9}"},
                    {"text": " was declined.", "thoughtSignature": "SIG"}
                ])
            );
            assert_eq!(value["usageMetadata"]["totalTokenCount"], 15);
            let mut last = Vec::new();
            filter.finish(&mut last);
            let all: Vec<u8> = outs
                .into_iter()
                .flatten()
                .chain(last)
                .flat_map(|b| b.to_vec())
                .collect();
            assert_eq!(String::from_utf8(all).unwrap(), upstream);
        }

        /// A round that only retrieves (thoughts, then the call with the turn's signature), then
        /// the answer.
        fn two_rounds() -> (String, String) {
            let first = stream(&[
                chunk(
                    r#"[{"text": "Looking","thought": true}]"#,
                    false,
                    r#"{"promptTokenCount": 100,"totalTokenCount": 100}"#,
                    "r1",
                ),
                chunk(
                    r#"[{"text": " at the log","thought": true}]"#,
                    false,
                    r#"{"promptTokenCount": 100,"totalTokenCount": 120}"#,
                    "r1",
                ),
                chunk(
                    &format!("[{}]", ours("fc-1", "declined", Some("SIG1"))),
                    true,
                    r#"{"promptTokenCount": 100,"candidatesTokenCount": 20,"totalTokenCount": 160,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 100}],"thoughtsTokenCount": 40}"#,
                    "r1",
                ),
            ]);
            let second = stream(&[
                chunk(
                    r#"[{"text": "The card"}]"#,
                    false,
                    r#"{"promptTokenCount": 300,"totalTokenCount": 300}"#,
                    "r2",
                ),
                chunk(
                    r#"[{"text": " was declined."}]"#,
                    true,
                    r#"{"promptTokenCount": 300,"candidatesTokenCount": 7,"totalTokenCount": 307,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 300}]}"#,
                    "r2",
                ),
            ]);
            (first, second)
        }

        #[test]
        fn a_retrieval_round_is_answered_and_the_next_one_spliced_in() {
            let (first, second) = two_rounds();
            let mut filter = filter(LIMIT);
            let outs = feed(filter.as_mut(), &first);
            assert_eq!(outs[0].len(), 1, "the first thought goes at once");
            assert_eq!(
                &outs[0][0][..],
                first.split_inclusive("\r\n\r\n").next().unwrap().as_bytes()
            );
            assert!(outs[2].is_empty(), "the call is held");
            let response = filter.end_round().unwrap();
            let arguments = format!(r#"{{"hash": "{HASH}","query": "declined"}}"#);
            assert_eq!(
                Gemini.read_turn(&response, TOOL).unwrap(),
                Turn::Retrieve(vec![Call {
                    id: "fc-1".into(),
                    arguments
                }])
            );
            // The continuation replays the turn: thoughts joined, the call and its signature as
            // they came.
            let request = r#"{"contents":[{"role":"user","parts":[{"text":"q"}]}]}"#;
            let answer = [Answer {
                call_id: "fc-1".into(),
                text: "ERROR card declined".into(),
            }];
            let next = Gemini
                .continuation(request, &response, &answer, false)
                .unwrap();
            let expected_turn = format!(
                r#"{{"role":"model","parts":[{{"text":"Looking at the log","thought":true}},{}]}}"#,
                ours("fc-1", "declined", Some("SIG1"))
            );
            assert!(next.contains(&expected_turn), "{next}");
            assert!(next.ends_with(r#"{"role":"user","parts":[{"functionResponse":{"name":"ccr_retrieve","id":"fc-1","response":{"output":"ERROR card declined"}}}]}]}"#), "{next}");
            filter.next_round();

            let outs2 = feed(filter.as_mut(), &second);
            assert!(filter.end_round().is_some());
            let mut last = Vec::new();
            filter.finish(&mut last);
            let client: Vec<Bytes> = outs
                .into_iter()
                .chain(outs2)
                .flatten()
                .chain(last)
                .collect();
            let text: String = client.iter().map(|b| String::from_utf8_lossy(b)).collect();
            assert!(!text.contains(TOOL) && !text.contains("SIG1"), "{text}");
            let chunks = chunks_of(&client);
            assert_eq!(chunks.len(), 4, "{text}");
            let finishes: Vec<bool> = chunks
                .iter()
                .map(|c| c["candidates"][0].get("finishReason").is_some())
                .collect();
            assert_eq!(finishes, [false, false, false, true], "one end");
            let texts: Vec<&str> = chunks
                .iter()
                .map(|c| {
                    c["candidates"][0]["content"]["parts"][0]["text"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            assert_eq!(
                texts,
                ["Looking", " at the log", "The card", " was declined."]
            );
            // Every usage after the first round counts it too; the last is the sum.
            assert_eq!(chunks[2]["usageMetadata"]["promptTokenCount"], 400);
            assert_eq!(
                chunks[3]["usageMetadata"],
                serde_json::json!({"promptTokenCount": 400, "candidatesTokenCount": 27,
                    "totalTokenCount": 467, "thoughtsTokenCount": 40,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 400}]})
            );
            // The rest of a summed chunk is as it came.
            let last_event = second.split_inclusive("\r\n\r\n").last().unwrap();
            let last_text = String::from_utf8_lossy(client.last().unwrap());
            let usage_at = last_event.find("\"usageMetadata\"").unwrap();
            assert!(
                last_text.starts_with(&last_event[..usage_at]),
                "{last_text}"
            );
            assert!(
                last_text.ends_with(
                    ",\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r2\"}\n\n"
                )
            );
        }

        #[test]
        fn what_came_with_a_retrieval_call_still_reaches_the_client() {
            // The round's last chunk has text as well as our call: the text goes out (without
            // the finishReason) once the next round starts.
            let first = stream(&[chunk(
                &format!(
                    r#"[{{"text": "Let me look."}},{}]"#,
                    ours("fc-1", "x", None)
                ),
                true,
                r#"{"promptTokenCount": 1,"totalTokenCount": 2}"#,
                "r1",
            )]);
            let mut filter = filter(LIMIT);
            assert!(feed(filter.as_mut(), &first)[0].is_empty());
            let response = filter.end_round().unwrap();
            assert!(
                matches!(Gemini.read_turn(&response, TOOL).unwrap(), Turn::Retrieve(calls) if calls[0].id == "fc-1")
            );
            filter.next_round();
            let second = stream(&[chunk(
                r#"[{"text": "Done."}]"#,
                true,
                r#"{"promptTokenCount": 3,"totalTokenCount": 4}"#,
                "r2",
            )]);
            let outs = feed(filter.as_mut(), &second);
            assert_eq!(
                String::from_utf8_lossy(&outs[0][0]),
                "data: {\"candidates\": [{\"content\":{\"parts\": [{\"text\": \"Let me look.\"}],\"role\": \"model\"},\"index\":0}],\"usageMetadata\": {\"promptTokenCount\": 1,\"totalTokenCount\": 2},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\n\n"
            );
            assert_eq!(outs[0].len(), 1, "the new round's end is held");
            let mut last = Vec::new();
            filter.finish(&mut last);
            let chunks = chunks_of(&last);
            assert_eq!(chunks[0]["usageMetadata"]["totalTokenCount"], 6);
        }

        #[test]
        fn a_mixed_turn_loses_our_call_and_moves_its_signature() {
            let upstream = stream(&[
                chunk(
                    r#"[{"text": "Checking."}]"#,
                    false,
                    r#"{"promptTokenCount": 5,"totalTokenCount": 5}"#,
                    "r1",
                ),
                chunk(
                    &format!("[{}]", ours("fc-1", "x", Some("SIG1"))),
                    false,
                    r#"{"promptTokenCount": 5,"totalTokenCount": 6}"#,
                    "r1",
                ),
                chunk(
                    r#"[{"functionCall": {"name": "bash","args": {"cmd": "ls"},"id": "fc-2"}}]"#,
                    true,
                    r#"{"promptTokenCount": 5,"candidatesTokenCount": 3,"totalTokenCount": 8}"#,
                    "r1",
                ),
            ]);
            let mut filter = filter(LIMIT);
            let outs = feed(filter.as_mut(), &upstream);
            assert_eq!(outs[0].len(), 1);
            assert!(outs[1].is_empty(), "a chunk with only our call is dropped");
            assert!(outs[2].is_empty(), "the end is held");
            let response = filter.end_round().unwrap();
            assert_eq!(Gemini.read_turn(&response, TOOL).unwrap(), Turn::Other);
            let mut last = Vec::new();
            filter.finish(&mut last);
            assert_eq!(
                String::from_utf8_lossy(&last[0]),
                "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\":{\"name\": \"bash\",\"args\": {\"cmd\": \"ls\"},\"id\": \"fc-2\"},\"thoughtSignature\":\"SIG1\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 5,\"candidatesTokenCount\": 3,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\n\n"
            );

            // Ours and the client's in one chunk; a client call with its own signature keeps it.
            let both = stream(&[chunk(
                &format!(
                    r#"[{},{{"functionCall": {{"name": "ls","args": {{}}}},"thoughtSignature": "THEIRS"}}]"#,
                    ours("fc-1", "x", Some("SIG1"))
                ),
                true,
                "{}",
                "r1",
            )]);
            let mut filter = Gemini.stream_filter(TOOL, LIMIT);
            feed(filter.as_mut(), &both);
            assert_eq!(
                Gemini
                    .read_turn(&filter.end_round().unwrap(), TOOL)
                    .unwrap(),
                Turn::Other
            );
            let mut last = Vec::new();
            filter.finish(&mut last);
            let chunks = chunks_of(&last);
            assert_eq!(
                chunks[0]["candidates"][0]["content"]["parts"],
                serde_json::json!([{"functionCall": {"name": "ls", "args": {}}, "thoughtSignature": "THEIRS"}])
            );
        }

        #[test]
        fn a_final_chunk_with_only_our_call_keeps_an_empty_part() {
            // The model ignored the forced last round: its call goes, the end stays, with a
            // part (google-genai chats drop a streamed turn with a chunk without parts).
            let upstream = stream(&[
                chunk(r#"[{"text": "Hm."}]"#, false, "{}", "r1"),
                chunk(&format!("[{}]", ours("fc-1", "x", None)), true, "{}", "r1"),
            ]);
            let mut filter = filter(LIMIT);
            feed(filter.as_mut(), &upstream);
            let mut last = Vec::new();
            filter.finish(&mut last);
            let chunks = chunks_of(&last);
            assert_eq!(
                chunks[0]["candidates"][0],
                serde_json::json!({"content": {"parts": [{"text": ""}], "role": "model"},
                    "finishReason": "STOP", "index": 0})
            );
        }

        #[test]
        fn an_upstream_error_is_forwarded_and_ends_the_round() {
            let error = r#"{"error": {"code": 503,"message": "The model is overloaded.","status": "UNAVAILABLE"}}"#;
            let upstream = format!(
                "{}data: {error}\r\n\r\n",
                stream(&[chunk(r#"[{"text": "Par"}]"#, false, "{}", "r1")])
            );
            let mut filter = filter(LIMIT);
            let outs = feed(filter.as_mut(), &upstream);
            assert_eq!(outs[1].len(), 1);
            assert_eq!(
                String::from_utf8_lossy(&outs[1][0]),
                format!("data: {error}\r\n\r\n")
            );
            assert!(filter.end_round().is_none());
            let mut last = Vec::new();
            filter.finish(&mut last);
            assert!(last.is_empty());
        }

        #[test]
        fn an_unfinished_round_is_not_continued() {
            let upstream = stream(&[chunk(
                &format!("[{}]", ours("fc-1", "x", None)),
                false,
                "{}",
                "r1",
            )]);
            let mut filter = filter(LIMIT);
            let outs = feed(filter.as_mut(), &upstream);
            assert!(outs[0].is_empty(), "ours is dropped all the same");
            assert!(filter.end_round().is_none());
            // Non-JSON data and comments go through as they came.
            let odd = "data: not json\n\n: ping\n\n";
            let outs = feed(filter.as_mut(), odd);
            assert_eq!(&outs[0][0][..], b"data: not json\n\n");
            assert_eq!(&outs[1][0][..], b": ping\n\n");
        }

        #[test]
        fn past_the_limit_the_round_is_given_up_and_nothing_is_held() {
            let long = "x".repeat(200);
            let upstream = stream(&[
                chunk(&format!(r#"[{{"text": "{long}"}}]"#), false, "{}", "r1"),
                chunk(&format!("[{}]", ours("fc-1", "x", None)), true, "{}", "r1"),
            ]);
            let mut filter = filter(100);
            let outs = feed(filter.as_mut(), &upstream);
            assert_eq!(outs[0].len(), 1);
            // The end goes at once, without our call.
            let chunks = chunks_of(&outs[1]);
            assert_eq!(chunks[0]["candidates"][0]["finishReason"], "STOP");
            assert!(!String::from_utf8_lossy(&outs[1][0]).contains(TOOL));
            assert!(filter.end_round().is_none());
            let mut last = Vec::new();
            filter.finish(&mut last);
            assert!(last.is_empty());
            // Several candidates are no turn to continue either.
            let two = r#"{"candidates": [{"content": {"parts": [{"text": "a"}]},"finishReason": "STOP","index": 0},{"content": {"parts": [{"text": "b"}]},"finishReason": "STOP","index": 1}]}"#;
            let mut filter = Gemini.stream_filter(TOOL, LIMIT);
            let outs = feed(filter.as_mut(), &format!("data: {two}\n\n"));
            assert_eq!(outs[0].len(), 1);
            assert!(filter.end_round().is_none());
        }

        #[test]
        fn the_error_event_is_one_the_sdk_raises() {
            let (first, _) = two_rounds();
            let with_text = first.replace(
                &format!("[{}]", ours("fc-1", "declined", Some("SIG1"))),
                &format!(
                    r#"[{{"text": "Reading."}},{}]"#,
                    ours("fc-1", "declined", Some("SIG1"))
                ),
            );
            let mut filter = filter(LIMIT);
            feed(filter.as_mut(), &with_text);
            assert!(filter.end_round().is_some());
            filter.next_round();
            let error = filter.error_event("the continuation failed: \"timeout\"");
            let chunks = chunks_of(std::slice::from_ref(&error));
            assert_eq!(chunks.len(), 2, "what the model said, then the error");
            assert_eq!(
                chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
                "Reading."
            );
            assert!(chunks[0]["candidates"][0].get("finishReason").is_none());
            assert_eq!(
                chunks[1],
                serde_json::json!({"error": {"code": 500,
                    "message": "the continuation failed: \"timeout\"", "status": "INTERNAL"}})
            );
            // google-genai raises on a chunk whose JSON, re-serialised, starts so.
            assert!(String::from_utf8_lossy(&error).contains("\ndata: {\"error\":{\"code\":500,"));
        }
    }
}
