//! OpenAI Chat Completions, and every server that speaks it: any host, any path ending in
//! `/chat/completions`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Adapter, Answer, Call, HASH_DESCRIPTION, Inspection, MAX_ARGUMENTS_BYTES, MAX_QUESTION_BYTES,
    Malformed, QUERY_DESCRIPTION, TOOL_DESCRIPTION, ToolOutput, Turn, append_to_root_array, array,
    object, set_root_member, sum_root_usage, truncated,
};
use crate::json::{Field, OrderedObject, Splice, is_null, quote, span_of, string_value};

/// The Chat Completions adapter.
pub(crate) struct OpenAiChat;

/// A tool call as it appears in an assistant message or a response.
#[derive(Deserialize)]
struct ToolCall {
    id: Option<String>,
    function: Option<FunctionCall>,
}

#[derive(Deserialize)]
struct FunctionCall {
    name: Option<String>,
    arguments: Option<String>,
}

/// A tool call of a response, read leniently: servers that speak Chat Completions do not all
/// send `arguments` as a string, or an `id`. A call is ours by its name alone.
struct ResponseCall<'a> {
    raw: &'a RawValue,
    members: OrderedObject<'a>,
    name: Option<String>,
    /// The arguments as JSON text: the string unescaped, or any other value as it is.
    arguments: String,
}

impl<'a> ResponseCall<'a> {
    fn read(raw: &'a RawValue) -> Result<Self, Malformed> {
        let members = object(raw.get())?;
        let function = members.get("function").and_then(|f| object(f.get()).ok());
        let name = function
            .as_ref()
            .and_then(|f| f.get("name"))
            .and_then(string_value)
            .map(|n| n.into_owned());
        let arguments = match function.as_ref().and_then(|f| f.get("arguments")) {
            Some(raw) => string_value(raw).map_or_else(|| raw.get().to_owned(), |a| a.into_owned()),
            None => String::new(),
        };
        Ok(Self {
            raw,
            members,
            name,
            arguments,
        })
    }

    fn is(&self, tool_name: &str) -> bool {
        self.name.as_deref() == Some(tool_name)
    }

    /// The call's id, or one made up from its position when the server sent none (the
    /// continuation then carries the same made-up id on both sides).
    fn id(&self, index: usize) -> String {
        self.members
            .get("id")
            .and_then(string_value)
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("call_ccr_{index}"), |id| id.into_owned())
    }

    /// The call as it goes back in the continuation: as it came, with its id when it had none.
    fn replayed(&self, index: usize) -> String {
        if self
            .members
            .get("id")
            .and_then(string_value)
            .is_some_and(|id| !id.is_empty())
        {
            return self.raw.get().to_owned();
        }
        let id = quote(&self.id(index));
        let members = std::iter::once(("id", id.as_str())).chain(
            self.members
                .0
                .iter()
                .filter(|(key, _)| key != "id")
                .map(|(key, value)| (key.as_ref(), value.get())),
        );
        OrderedObject::render(members)
    }
}

/// The tool calls of the message of a response choice (empty when it has none).
fn response_calls<'a>(message: &OrderedObject<'a>) -> Result<Vec<ResponseCall<'a>>, Malformed> {
    let Some(tool_calls) = message.get("tool_calls").filter(|t| !is_null(t)) else {
        return Ok(Vec::new());
    };
    array(tool_calls.get())?
        .into_iter()
        .map(ResponseCall::read)
        .collect()
}

/// The retrieval tool in Chat Completions format.
fn tool_definition(tool_name: &str) -> String {
    format!(
        r#"{{"type":"function","function":{{"name":{},"description":{},"parameters":{{"type":"object","properties":{{"hash":{{"type":"string","description":{}}},"query":{{"type":"string","description":{}}}}},"required":["hash"]}}}}}}"#,
        quote(tool_name),
        quote(TOOL_DESCRIPTION),
        quote(HASH_DESCRIPTION),
        quote(QUERY_DESCRIPTION),
    )
}

/// Plain text of a user message's content: a string, or its text parts.
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
        .filter_map(|part| {
            part.get("text")
                .and_then(string_value)
                .map(|t| t.into_owned())
        })
        .collect();
    texts.join("\n")
}

/// The parts of a request the adapter reads, in one pass over the body. Duplicate members
/// are an error (then the request passes through untouched).
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Field<'a>,
    #[serde(borrow, default)]
    tool_choice: Field<'a>,
    #[serde(borrow, default)]
    stream: Field<'a>,
    #[serde(borrow, default)]
    n: Field<'a>,
    #[serde(borrow, default)]
    functions: Field<'a>,
    #[serde(borrow, default)]
    function_call: Field<'a>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Field<'a>,
    #[serde(borrow, default)]
    content: Field<'a>,
    #[serde(borrow, default)]
    tool_call_id: Field<'a>,
    #[serde(borrow, default)]
    tool_calls: Field<'a>,
}

/// Whether the model could call `tool_name` in this request.
fn redeemable(request: &ChatRequest<'_>, tool_name: &str) -> bool {
    // The deprecated `functions` API cannot be mixed with `tools`.
    if request.functions.0.is_some() || request.function_call.0.is_some() {
        return false;
    }
    if let Some(choice) = request.tool_choice.0 {
        match choice.get() {
            "\"auto\"" | "\"required\"" | "null" => {}
            text if text.starts_with('{') => {
                // A named function other than ours, or an allowed-tools list we are not in.
                let Ok(choice) = object(text) else {
                    return false;
                };
                let named = choice
                    .get("function")
                    .and_then(|f| object(f.get()).ok())
                    .and_then(|f| f.get("name").and_then(string_value).map(|n| n.into_owned()));
                if named.as_deref() != Some(tool_name) {
                    return false;
                }
            }
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
        let Ok(tool) = object(tool.get()) else {
            return false;
        };
        let name_of = |key: &str| {
            tool.get(key)
                .and_then(|inner| object(inner.get()).ok())
                .and_then(|inner| {
                    inner
                        .get("name")
                        .and_then(string_value)
                        .map(|n| n.into_owned())
                })
        };
        name_of("function").as_deref() != Some(tool_name)
            && name_of("custom").as_deref() != Some(tool_name)
    })
}

/// What the conversation says before each message, gathered in one forward pass (a request
/// may hold thousands of tool outputs: no scan backwards per output).
#[derive(Default)]
struct Context<'a> {
    /// Content of the last user message so far.
    last_user: Option<&'a RawValue>,
    /// Tool call id -> (tool name, arguments), from the assistant messages so far.
    calls: HashMap<String, (Option<String>, String)>,
}

impl<'a> Context<'a> {
    /// Takes in a message that comes before the ones still to be read.
    fn read(&mut self, message: &ChatMessage<'a>) {
        if message.role.is("\"user\"") {
            self.last_user = message.content.value();
        } else if message.role.is("\"assistant\"")
            && let Some(Ok(calls)) = message.tool_calls.value().map(|calls| array(calls.get()))
        {
            for call in calls {
                let Ok(call) = serde_json::from_str::<ToolCall>(call.get()) else {
                    continue;
                };
                if let (Some(id), Some(function)) = (call.id, call.function) {
                    self.calls
                        .insert(id, (function.name, function.arguments.unwrap_or_default()));
                }
            }
        }
    }

    /// The last user message (bounded), and the tool name and arguments (bounded) of the call
    /// whose id is `call_id`.
    fn of(&self, call_id: Option<&str>) -> (String, Option<String>, String) {
        let last_user = truncated(
            self.last_user.map(content_text).unwrap_or_default(),
            MAX_QUESTION_BYTES,
        );
        match call_id.and_then(|id| self.calls.get(id)) {
            Some((name, arguments)) => (
                last_user,
                name.clone(),
                truncated(arguments.clone(), MAX_ARGUMENTS_BYTES),
            ),
            None => (last_user, None, String::new()),
        }
    }
}

impl Adapter for OpenAiChat {
    fn name(&self) -> &'static str {
        "openai-chat"
    }

    fn matches(&self, method: &http::Method, uri: &http::Uri) -> bool {
        method == http::Method::POST
            && uri
                .path()
                .trim_end_matches('/')
                .ends_with("/chat/completions")
    }

    fn inspect(
        &self,
        body: &str,
        tool_name: &str,
        min_bytes: usize,
    ) -> Result<Inspection, Malformed> {
        let request: ChatRequest<'_> =
            serde_json::from_str(body).map_err(|_| Malformed("not a chat request"))?;
        if request.stream.is("true") {
            return Ok(Inspection::Skip("streaming"));
        }
        if request
            .n
            .0
            .is_some_and(|n| n.get().parse::<u64>().is_ok_and(|n| n > 1))
        {
            return Ok(Inspection::Skip("n > 1"));
        }
        let mut outputs = Vec::new();
        // Cheap test first: most requests carry no tool output big enough to matter.
        let is_candidate = |message: &ChatMessage<'_>| {
            message.role.is("\"tool\"")
                && message
                    .content
                    .value()
                    .is_some_and(|c| c.get().len() >= min_bytes)
        };
        let any_candidate = request.messages.iter().any(is_candidate);
        let mut context = Context::default();
        for message in request.messages.iter().filter(|_| any_candidate) {
            if !is_candidate(message) {
                context.read(message);
                continue;
            }
            let Some(content) = message.content.value() else {
                continue;
            };
            let call_id = message.tool_call_id.value().and_then(string_value);
            let (last_user, tool, arguments) = context.of(call_id.as_deref());
            if tool.as_deref() == Some(tool_name) {
                continue; // Our own answers are never compressed.
            }
            let query = if arguments.is_empty() {
                last_user
            } else {
                format!("{last_user}\n{arguments}")
            };
            let strings: Vec<&RawValue> = if content.get().starts_with('"') {
                vec![content]
            } else if content.get().starts_with('[') {
                array(content.get())?
                    .into_iter()
                    .filter_map(|part| object(part.get()).ok())
                    .filter(|part| {
                        part.get("type").and_then(string_value).as_deref() == Some("text")
                    })
                    .filter_map(|part| part.get("text"))
                    .collect()
            } else {
                Vec::new()
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
        let choices = array(root.get("choices").ok_or(Malformed("no choices"))?.get())?;
        let [choice] = choices.as_slice() else {
            return Ok(Turn::Other);
        };
        let choice = object(choice.get())?;
        let Some(message) = choice.get("message") else {
            return Ok(Turn::Other);
        };
        let calls = response_calls(&object(message.get())?)?;
        if calls.is_empty() || !calls.iter().all(|call| call.is(tool_name)) {
            return Ok(Turn::Other);
        }
        Ok(Turn::Retrieve(
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| Call {
                    id: call.id(index),
                    arguments: call.arguments.clone(),
                })
                .collect(),
        ))
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
        let choices = array(
            response_root
                .get("choices")
                .ok_or(Malformed("no choices"))?
                .get(),
        )?;
        let choice = object(choices.first().ok_or(Malformed("no choice"))?.get())?;
        let message = object(choice.get("message").ok_or(Malformed("no message"))?.get())?;
        // The assistant message as the model sent it, less what only responses carry, so that
        // provider-specific fields (reasoning, signatures) go back as they came.
        let calls = response_calls(&message)?;
        let replayed_calls = format!(
            "[{}]",
            calls
                .iter()
                .enumerate()
                .map(|(index, call)| call.replayed(index))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut members: Vec<(&str, &str)> = vec![("role", "\"assistant\"")];
        for (key, value) in &message.0 {
            let keep = match key.as_ref() {
                "role" | "annotations" => false,
                "content" => true,
                _ => !is_null(value),
            };
            if key == "tool_calls" {
                members.push(("tool_calls", replayed_calls.as_str()));
            } else if keep {
                members.push((key.as_ref(), value.get()));
            }
        }
        if message.get("content").is_none() {
            members.insert(1, ("content", "null"));
        }
        let mut appended = OrderedObject::render(members);
        for answer in answers {
            let tool_message = OrderedObject::render([
                ("role", "\"tool\""),
                ("tool_call_id", quote(&answer.call_id).as_str()),
                ("content", quote(&answer.text).as_str()),
            ]);
            appended.push(',');
            appended.push_str(&tool_message);
        }

        let mut splice = Splice::default();
        append_to_root_array(request, "messages", appended, &mut splice)?;
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
        if let Some(choices) = root.get("choices") {
            for choice in array(choices.get())? {
                let choice = object(choice.get())?;
                let Some(message_raw) = choice.get("message") else {
                    continue;
                };
                let message = object(message_raw.get())?;
                let calls = response_calls(&message)?;
                let kept: Vec<&str> = calls
                    .iter()
                    .filter(|call| !call.is(tool_name))
                    .map(|call| call.raw.get())
                    .collect();
                if kept.len() == calls.len() {
                    continue;
                }
                let kept_array = format!("[{}]", kept.join(","));
                let members = message.0.iter().filter_map(|(key, value)| {
                    if key == "tool_calls" {
                        (!kept.is_empty()).then_some((key.as_ref(), kept_array.as_str()))
                    } else {
                        Some((key.as_ref(), value.get()))
                    }
                });
                let rendered = OrderedObject::render(members);
                splice.replace(
                    span_of(response, message_raw).ok_or(Malformed("message"))?,
                    rendered,
                );
                if kept.is_empty()
                    && let Some(reason) = choice
                        .get("finish_reason")
                        .filter(|r| r.get() == "\"tool_calls\"")
                {
                    splice.replace(
                        span_of(response, reason).ok_or(Malformed("finish_reason"))?,
                        "\"stop\"".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: &str = "ccr_retrieve";

    fn outputs(body: &str) -> (Vec<ToolOutput>, bool) {
        // A big tool output, so that redeemability is evaluated.
        let body = &body.replacen(
            "\"messages\":[]",
            r#""messages":[{"role":"tool","content":"x"}]"#,
            1,
        );
        match OpenAiChat.inspect(body, TOOL, 0).unwrap() {
            Inspection::Outputs {
                outputs,
                redeemable,
            } => (outputs, redeemable),
            Inspection::Skip(reason) => panic!("skipped: {reason}"),
        }
    }

    #[test]
    fn finds_string_and_part_outputs_with_their_context() {
        let body = r#"{"model":"m","messages":[
            {"role":"user","content":"why did the build fail?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"bash","arguments":"{\"cmd\":\"make\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"line1\nerror: x"},
            {"role":"tool","tool_call_id":"c2","content":[{"type":"text","text":"part \u00e9"},{"type":"image_url","image_url":{}}]}
        ]}"#;
        let (found, redeemable) = outputs(body);
        assert!(redeemable);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].text, "line1\nerror: x");
        assert_eq!(&body[found[0].span.clone()], r#""line1\nerror: x""#);
        assert_eq!(found[0].tool_name.as_deref(), Some("bash"));
        assert_eq!(
            found[0].query,
            "why did the build fail?\n{\"cmd\":\"make\"}"
        );
        assert_eq!(found[1].text, "part \u{e9}");
        assert_eq!(found[1].tool_name, None);
    }

    #[test]
    fn skips_streams_and_several_choices() {
        for body in [
            r#"{"messages":[],"stream":true}"#,
            r#"{"messages":[],"n":2}"#,
        ] {
            assert!(
                matches!(
                    OpenAiChat.inspect(body, TOOL, 0).unwrap(),
                    Inspection::Skip(_)
                ),
                "{body}"
            );
        }
        // Duplicate members make the request unreadable: it passes through.
        assert!(
            OpenAiChat
                .inspect(r#"{"messages":[],"n":1,"n":1}"#, TOOL, 0)
                .is_err()
        );
        assert!(OpenAiChat.inspect("[1]", TOOL, 0).is_err());
        assert!(OpenAiChat.inspect(r#"{"model":"x"}"#, TOOL, 0).is_err());
    }

    #[test]
    fn redeemable_only_when_the_model_can_call_the_tool() {
        let cases = [
            (r#"{"messages":[]}"#, true),
            (r#"{"messages":[],"tool_choice":"auto"}"#, true),
            (r#"{"messages":[],"tool_choice":"none"}"#, false),
            (
                r#"{"messages":[],"tool_choice":{"type":"function","function":{"name":"bash"}}}"#,
                false,
            ),
            (
                r#"{"messages":[],"tools":[{"type":"function","function":{"name":"ccr_retrieve"}}]}"#,
                false,
            ),
            (
                r#"{"messages":[],"tools":[{"type":"function","function":{"name":"bash"}}]}"#,
                true,
            ),
            (r#"{"messages":[],"functions":[]}"#, false),
        ];
        for (body, expected) in cases {
            assert_eq!(outputs(body).1, expected, "{body}");
        }
    }

    #[test]
    fn injects_after_the_clients_tools() {
        let tool = tool_definition(TOOL);
        let cases = [
            (
                r#"{"messages":[] }"#,
                format!(r#"{{"messages":[] ,"tools":[{tool}]}}"#),
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
                r#"{"tools":[{"a":1}],"messages":[]}"#,
                format!(r#"{{"tools":[{{"a":1}},{tool}],"messages":[]}}"#),
            ),
        ];
        for (body, expected) in cases {
            let mut splice = Splice::default();
            OpenAiChat.inject_tool(body, TOOL, &mut splice).unwrap();
            assert_eq!(splice.apply(body).unwrap(), expected);
        }
        let parsed: serde_json::Value = serde_json::from_str(&tool).unwrap();
        assert_eq!(parsed["function"]["parameters"]["required"][0], "hash");
    }

    const RESPONSE: &str = r#"{"id":"r1","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"refusal":null,"annotations":[],"tool_calls":[{"id":"call_1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}]}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;

    #[test]
    fn reads_retrieval_turns() {
        assert_eq!(
            OpenAiChat.read_turn(RESPONSE, TOOL).unwrap(),
            Turn::Retrieve(vec![Call {
                id: "call_1".into(),
                arguments: r#"{"hash":"abc"}"#.into()
            }])
        );
        let mixed = RESPONSE.replace(
            r#"}}]}}]"#,
            r#"}},{"id":"call_2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        assert_eq!(OpenAiChat.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        let answer = r#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(OpenAiChat.read_turn(answer, TOOL).unwrap(), Turn::Other);
    }

    #[test]
    fn retrieval_calls_are_recognised_by_name_alone() {
        // Arguments as an object, and no id: a server that only mostly speaks the format.
        let odd = r#"{"choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"ccr_retrieve","arguments":{"hash":"abc"}}}]}}]}"#;
        assert_eq!(
            OpenAiChat.read_turn(odd, TOOL).unwrap(),
            Turn::Retrieve(vec![Call {
                id: "call_ccr_0".into(),
                arguments: r#"{"hash":"abc"}"#.into()
            }])
        );
        let answers = [Answer {
            call_id: "call_ccr_0".into(),
            text: "orig".into(),
        }];
        let next = OpenAiChat
            .continuation(r#"{"messages":[]}"#, odd, &answers, false)
            .unwrap();
        let next: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(next["messages"][0]["tool_calls"][0]["id"], "call_ccr_0");
        assert_eq!(next["messages"][1]["tool_call_id"], "call_ccr_0");
        // Mixed with a client call: ours is stripped whatever its shape.
        let mixed = odd.replace(
            r#"}}}]}}]"#,
            r#"}}},{"id":"c2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        assert_eq!(OpenAiChat.read_turn(&mixed, TOOL).unwrap(), Turn::Other);
        let out = OpenAiChat.finalize(&mixed, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL), "{out}");
        assert!(out.contains("c2"));
    }

    #[test]
    fn the_query_is_bounded() {
        let question = "why ".repeat(5_000);
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": question},
            {"role": "tool", "tool_call_id": "x", "content": "output"}
        ]})
        .to_string();
        let (found, _) = outputs(&body);
        assert!(found[0].query.len() <= MAX_QUESTION_BYTES);
    }

    #[test]
    fn continuation_appends_the_turn_and_answers() {
        let request =
            r#"{"model":"m", "messages":[{"role":"user","content":"q"}],"tool_choice":"auto"}"#;
        let answers = [Answer {
            call_id: "call_1".into(),
            text: "orig\n".into(),
        }];
        let next = OpenAiChat
            .continuation(request, RESPONSE, &answers, false)
            .unwrap();
        assert_eq!(
            next,
            r#"{"model":"m", "messages":[{"role":"user","content":"q"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"ccr_retrieve","arguments":"{\"hash\":\"abc\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"orig\n"}],"tool_choice":"auto"}"#
        );
        let last = OpenAiChat
            .continuation(request, RESPONSE, &answers, true)
            .unwrap();
        assert!(last.ends_with(r#""tool_choice":"none"}"#));
        let without_choice = r#"{"messages":[{"role":"user","content":"q"}]}"#;
        let last = OpenAiChat
            .continuation(without_choice, RESPONSE, &answers, true)
            .unwrap();
        assert!(last.ends_with(r#"],"tool_choice":"none"}"#), "{last}");
    }

    #[test]
    fn finalize_strips_our_calls_and_sums_usage() {
        let mixed = RESPONSE.replace(
            r#"}}]}}]"#,
            r#"}},{"id":"call_2","type":"function","function":{"name":"bash","arguments":"{}"}}]}}]"#,
        );
        let out = OpenAiChat.finalize(&mixed, TOOL, &[]).unwrap().unwrap();
        assert!(!out.contains(TOOL));
        assert!(out.contains(r#""finish_reason":"tool_calls""#));
        assert!(out.contains("call_2"));

        let out = OpenAiChat
            .finalize(
                RESPONSE,
                TOOL,
                &[serde_json::json!({"prompt_tokens":1,"completion_tokens":1,"total_tokens":2})],
            )
            .unwrap()
            .unwrap();
        assert!(!out.contains(TOOL));
        assert!(!out.contains("tool_calls\":"), "{out}");
        assert!(out.contains(r#""finish_reason":"stop""#));
        assert!(
            out.contains(r#""usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17}"#)
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["choices"][0]["message"]["role"], "assistant");

        let answer = r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(OpenAiChat.finalize(answer, TOOL, &[]).unwrap(), None);
    }
}
