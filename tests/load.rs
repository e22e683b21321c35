//! Load: 1,000 concurrent requests through one layer (one `CcrService`, cloned per task) on a
//! multi-thread runtime, mixing the four APIs, streamed and not, with and without retrieval
//! rounds, five tenants, and a store budget small enough that originals are evicted all the
//! time. Checked: no deadlock (the whole run under a timeout), every client gets the right
//! final answer and never the retrieval tool, every retrieval answer is exactly its original
//! (or, for ids from earlier requests, an actionable unknown/expired text, never another
//! original), every marker resolves when the upstream sees it unless the budget evicted it
//! since, tenants never see each other's originals, and the store stays within its budget
//! during the run and after.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Recorded;
use common::streaming::{TestBody, client_events, read_stream, sse_upstream};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::store::{Entry, Lookup, Retention, Store};
use tower_ccr::{CcrHandle, CcrLayer, EntryId, MemoryStore, TenantId};

const TOOL: &str = "ccr_retrieve";
const MARKER_TAG: &str = "Retrieve more: hash=";
/// Requests sent at once.
const CONCURRENT: usize = 1_000;
/// Requests sent one by one before, whose ids later requests name.
const WARM_UP: usize = 24;
const TENANTS: usize = 5;
/// About 20 originals fill it, while the run marks about 9 MB of them: eviction all the time.
const BUDGET: u64 = 160 * 1024;
const MIN_TOKENS: usize = 300;
/// The concurrent phase takes a few seconds in a debug build; past this it is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const APIS: [Api; 4] = [Api::Chat, Api::Responses, Api::Anthropic, Api::Gemini];

/// What the scripted model does with a request.
#[derive(Clone, Debug)]
enum Plan {
    /// Answers at once.
    Answer,
    /// Retrieves every marker it sees, `rounds` times, then answers.
    RetrieveMarkers { rounds: usize },
    /// Retrieves an id an earlier request was given (named in the question), then answers.
    RetrieveEarlier {
        hash: String,
        /// The original behind it, when it belongs to this request's tenant.
        own_original: Option<Arc<str>>,
    },
}

#[derive(Clone, Debug)]
struct Task {
    id: usize,
    api: Api,
    stream: bool,
    tenant: usize,
    outputs: Vec<String>,
    plan: Plan,
}

impl Task {
    /// The credential and the header that carries it (`None`: Gemini's `key` query
    /// parameter, which half the Gemini requests use). The layer's tenant is its value.
    fn credential(&self) -> (Option<&'static str>, String) {
        let key = format!("sk-tenant-{}", self.tenant);
        match self.api {
            Api::Chat | Api::Responses => (Some("authorization"), format!("Bearer {key}")),
            Api::Anthropic => (Some("x-api-key"), key),
            Api::Gemini if self.id % 2 == 0 => (Some("x-goog-api-key"), key),
            Api::Gemini => (None, key),
        }
    }

    fn owner(&self) -> String {
        self.credential().1
    }

    fn answer(&self) -> String {
        format!("Task {} is answered: the card was declined.", self.id)
    }

    fn question(&self) -> String {
        let earlier = match &self.plan {
            Plan::RetrieveEarlier { hash, .. } => format!(" Earlier output id: {hash}."),
            _ => String::new(),
        };
        format!("task={}; why did the payment fail?{earlier}", self.id)
    }

    fn url(&self) -> String {
        let url = match (self.api, self.stream) {
            (Api::Chat, _) => "https://api.openai.com/v1/chat/completions",
            (Api::Responses, _) => "https://api.openai.com/v1/responses",
            (Api::Anthropic, _) => "https://api.anthropic.com/v1/messages",
            (Api::Gemini, false) => {
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
            }
            (Api::Gemini, true) => {
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            }
        };
        match self.credential() {
            (None, key) if url.contains('?') => format!("{url}&key={key}"),
            (None, key) => format!("{url}?key={key}"),
            (Some(_), _) => url.to_owned(),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::post(self.url()).header("content-type", "application/json");
        if let (Some(header), value) = self.credential() {
            request = request.header(header, value);
        }
        request
            .body(Full::new(Bytes::from(self.body())))
            .expect("a valid request")
    }

    fn body(&self) -> String {
        let question = self.question();
        let call = |index: usize| format!("call_{index}");
        let schema = json!({"type": "object", "properties": {"cmd": {"type": "string"}}});
        let mut body = match self.api {
            Api::Chat => {
                let mut messages = vec![
                    json!({"role": "system", "content": "You are a helpful SRE assistant."}),
                    json!({"role": "user", "content": question}),
                    json!({"role": "assistant", "content": null, "tool_calls": (0..self.outputs.len()).map(|index| {
                        json!({"id": call(index), "type": "function",
                            "function": {"name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"}})
                    }).collect::<Vec<_>>()}),
                ];
                messages.extend(self.outputs.iter().enumerate().map(|(index, output)| {
                    json!({"role": "tool", "tool_call_id": call(index), "content": output})
                }));
                json!({"model": "gpt-4o", "messages": messages,
                    "tools": [{"type": "function", "function": {"name": "bash", "parameters": schema}}]})
            }
            Api::Responses => {
                let mut input = vec![
                    json!({"role": "user", "content": [{"type": "input_text", "text": question}]}),
                ];
                input.extend((0..self.outputs.len()).map(|index| {
                    json!({"type": "function_call", "call_id": call(index), "name": "bash",
                        "arguments": "{\"cmd\":\"cat app.log\"}"})
                }));
                input.extend(self.outputs.iter().enumerate().map(|(index, output)| {
                    json!({"type": "function_call_output", "call_id": call(index), "output": output})
                }));
                json!({"model": "gpt-5", "input": input,
                    "tools": [{"type": "function", "name": "bash", "parameters": schema, "strict": false}]})
            }
            Api::Anthropic => {
                let calls: Vec<Value> = (0..self.outputs.len())
                    .map(|index| json!({"type": "tool_use", "id": call(index), "name": "bash", "input": {"cmd": "cat app.log"}}))
                    .collect();
                let results: Vec<Value> = self
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| json!({"type": "tool_result", "tool_use_id": call(index), "content": output}))
                    .collect();
                json!({"max_tokens": 1024, "model": "claude-sonnet-4-5", "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": calls},
                    {"role": "user", "content": results}],
                    "tools": [{"name": "bash", "input_schema": schema}]})
            }
            Api::Gemini => {
                let calls: Vec<Value> = (0..self.outputs.len())
                    .map(|index| json!({"functionCall": {"id": call(index), "name": "bash", "args": {"cmd": "cat app.log"}}}))
                    .collect();
                let responses: Vec<Value> = self
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| json!({"functionResponse": {"id": call(index), "name": "bash", "response": {"output": output}}}))
                    .collect();
                json!({"contents": [
                    {"role": "user", "parts": [{"text": question}]},
                    {"role": "model", "parts": calls},
                    {"role": "user", "parts": responses}],
                    "tools": [{"functionDeclarations": [{"name": "bash", "parameters": schema}]}]})
            }
        };
        if self.stream {
            match self.api {
                Api::Chat => {
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({"include_usage": true});
                }
                Api::Responses | Api::Anthropic => body["stream"] = json!(true),
                Api::Gemini => {}
            }
        }
        body.to_string()
    }
}

/// A log whose every line names its owner and task, so that no two tasks' originals are alike.
fn task_log(owner: &str, task: usize, lines: usize) -> String {
    let mut log = String::new();
    for line in 0..lines {
        let level = if line == lines / 2 { "ERROR" } else { "INFO" };
        log.push_str(&format!(
            "2026-11-23T10:{:02}:{:02}Z {level} [{owner} task {task}] GET /api/orders/{line} served in {}ms\n",
            line / 60 % 60,
            line % 60,
            3 + (line * 7 + task) % 91
        ));
    }
    log
}

/// One output every tenant sends: the same content gives each tenant its own id.
fn common_log() -> String {
    task_log("everyone", 0, 90)
}

// ---------------------------------------------------------------------------------------------
// The scripted model.

/// The task a request belongs to (its question says `task=<id>;`).
fn task_of(text: &str) -> Option<usize> {
    let at = text.find("task=")? + "task=".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The distinct ids of the markers in a text, in order.
fn marker_hashes(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text.match_indices(MARKER_TAG)
        .filter_map(|(at, _)| {
            let start = at + MARKER_TAG.len();
            let hash = text.get(start..start + 24)?;
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hash.to_owned())
        })
        .filter(|hash| seen.insert(hash.clone()))
        .collect()
}

/// Whether the request offers the retrieval tool (a model can only call what it is offered).
fn offers_tool(request: &Value, api: Api) -> bool {
    let tools = request["tools"].as_array().cloned().unwrap_or_default();
    let names: Vec<&Value> = match api {
        Api::Chat => tools.iter().map(|tool| &tool["function"]["name"]).collect(),
        Api::Responses | Api::Anthropic => tools.iter().map(|tool| &tool["name"]).collect(),
        Api::Gemini => tools
            .iter()
            .filter_map(|tool| tool["functionDeclarations"].as_array())
            .flatten()
            .map(|declaration| &declaration["name"])
            .collect(),
    };
    names.iter().any(|name| *name == TOOL)
}

/// What the upstream saw of one marker when the request carrying it arrived.
struct Sighting {
    task: usize,
    hash: String,
    lookup: Lookup,
}

/// The model's turn for a request: call ids encode what they retrieve (`ccr_r<round>_<hash>`
/// for markers, `ccr_e_<hash>` for an earlier id).
fn script(
    tasks: &Mutex<HashMap<usize, Arc<Task>>>,
    handle: &CcrHandle,
    sightings: &Mutex<Vec<Sighting>>,
    request: &Recorded,
) -> Response<TestBody> {
    let text = request.text();
    let task = task_of(text).and_then(|id| tasks.lock().expect("tasks").get(&id).cloned());
    let Some(task) = task else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/json")
            .body(TestBody::chunks([r#"{"error":"no task"}"#]))
            .expect("a response");
    };
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/json")
            .body(TestBody::chunks([r#"{"error":"not JSON"}"#]))
            .expect("a response");
    };
    let hashes = marker_hashes(text);
    let rounds_done = (0..)
        .take_while(|round| text.contains(&format!("ccr_r{round}_")))
        .count();
    let first_round = rounds_done == 0 && !text.contains("ccr_e_");
    if first_round {
        // Every marker that went out must resolve now, unless the budget evicted it since (the
        // lookup refreshes the entry, as a retrieval would).
        let mut seen = sightings.lock().expect("sightings");
        for hash in &hashes {
            let lookup =
                futures::executor::block_on(handle.lookup(hash)).unwrap_or(Lookup::Missing);
            seen.push(Sighting {
                task: task.id,
                hash: hash.clone(),
                lookup,
            });
        }
    }
    let calls: Vec<(String, String)> = match &task.plan {
        Plan::RetrieveMarkers { rounds } if rounds_done < *rounds && !hashes.is_empty() => hashes
            .iter()
            .map(|hash| (format!("ccr_r{rounds_done}_{hash}"), hash.clone()))
            .collect(),
        Plan::RetrieveEarlier { hash, .. } if first_round && offers_tool(&json, task.api) => {
            vec![(format!("ccr_e_{hash}"), hash.clone())]
        }
        _ => Vec::new(),
    };
    let turn = if calls.is_empty() {
        Turn::Answer(task.answer())
    } else {
        Turn::Calls(calls)
    };
    respond(task.api, task.stream, &turn)
}

enum Turn {
    /// `(call id, hash)` of each retrieval call.
    Calls(Vec<(String, String)>),
    Answer(String),
}

fn respond(api: Api, stream: bool, turn: &Turn) -> Response<TestBody> {
    let (content_type, chunks) = if stream {
        ("text/event-stream", stream_events(api, turn))
    } else {
        (
            "application/json",
            vec![response_json(api, turn).to_string()],
        )
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(TestBody::chunks(chunks))
        .expect("a response")
}

fn call_json(api: Api, index: usize, id: &str, hash: &str) -> Value {
    let arguments = json!({"hash": hash});
    match api {
        Api::Chat => json!({"id": id, "type": "function",
            "function": {"name": TOOL, "arguments": arguments.to_string()}}),
        Api::Responses => {
            json!({"type": "function_call", "id": format!("fc_{index}"), "call_id": id,
            "name": TOOL, "arguments": arguments.to_string(), "status": "completed"})
        }
        Api::Anthropic => json!({"type": "tool_use", "id": id, "name": TOOL, "input": arguments}),
        Api::Gemini => json!({"functionCall": {"id": id, "name": TOOL, "args": arguments}}),
    }
}

fn responses_envelope(output: Vec<Value>) -> Value {
    json!({"id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
        "error": null, "incomplete_details": null, "model": "gpt-5", "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}})
}

fn response_json(api: Api, turn: &Turn) -> Value {
    match turn {
        Turn::Calls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(index, (id, hash))| call_json(api, index, id, hash))
                .collect();
            match api {
                Api::Chat => json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "tool_calls",
                        "message": {"role": "assistant", "content": null, "tool_calls": calls}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
                Api::Responses => responses_envelope(calls),
                Api::Anthropic => json!({"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-5", "content": calls, "stop_reason": "tool_use",
                    "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 10}}),
                Api::Gemini => json!({"candidates": [{"content": {"role": "model", "parts": calls},
                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110}}),
            }
        }
        Turn::Answer(text) => match api {
            Api::Chat => json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 1,
                "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}}),
            Api::Responses => responses_envelope(vec![json!({"type": "message", "id": "msg_2",
                "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]})]),
            Api::Anthropic => json!({"id": "msg_2", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 200, "output_tokens": 20}}),
            Api::Gemini => {
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 200, "candidatesTokenCount": 20, "totalTokenCount": 220}})
            }
        },
    }
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// A turn streamed the way each API streams it.
fn stream_events(api: Api, turn: &Turn) -> Vec<String> {
    match api {
        Api::Chat => {
            let chunk = |delta: Value, finish: Option<&str>| {
                sse(
                    None,
                    &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                )
            };
            let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
            let finish = match turn {
                Turn::Calls(calls) => {
                    for (index, (id, hash)) in calls.iter().enumerate() {
                        let arguments = json!({"hash": hash}).to_string();
                        let (head, tail) = arguments.split_at(arguments.len() / 2);
                        events.push(chunk(
                            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                            "function": {"name": TOOL, "arguments": head}}]}),
                            None,
                        ));
                        events.push(chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": tail}}]}),
                            None,
                        ));
                    }
                    "tool_calls"
                }
                Turn::Answer(text) => {
                    for word in text.split_inclusive(' ') {
                        events.push(chunk(json!({"content": word}), None));
                    }
                    "stop"
                }
            };
            events.push(chunk(json!({}), Some(finish)));
            events.push(sse(
                None,
                &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "created": 1, "model": "gpt-4o", "choices": [],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
            ));
            events.push("data: [DONE]\n\n".to_owned());
            events
        }
        Api::Responses => {
            let items = match response_json(api, turn)["output"].as_array() {
                Some(items) => items.clone(),
                None => Vec::new(),
            };
            responses_stream(&items)
        }
        Api::Anthropic => {
            let event = |data: Value| sse(data["type"].as_str(), &data);
            let mut events = vec![event(
                json!({"type": "message_start", "message": {"id": "msg_1",
                "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1}}}),
            )];
            let stop_reason = match turn {
                Turn::Calls(calls) => {
                    for (index, (id, hash)) in calls.iter().enumerate() {
                        let arguments = json!({"hash": hash}).to_string();
                        let (head, tail) = arguments.split_at(arguments.len() / 2);
                        events.push(event(json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": id, "name": TOOL, "input": {}}})));
                        for part in [head, tail] {
                            events
                                .push(event(json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part}})));
                        }
                        events.push(event(json!({"type": "content_block_stop", "index": index})));
                    }
                    "tool_use"
                }
                Turn::Answer(text) => {
                    events.push(event(json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}})));
                    for word in text.split_inclusive(' ') {
                        events.push(event(json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": word}})));
                    }
                    events.push(event(json!({"type": "content_block_stop", "index": 0})));
                    "end_turn"
                }
            };
            events.push(event(json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 10}})));
            events.push(event(json!({"type": "message_stop"})));
            events
        }
        Api::Gemini => {
            let chunk = |parts: Value, finish: bool| {
                let mut candidate =
                    json!({"content": {"role": "model", "parts": parts}, "index": 0});
                if finish {
                    candidate["finishReason"] = json!("STOP");
                }
                format!(
                    "data: {}\r\n\r\n",
                    json!({"candidates": [candidate],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
                    "modelVersion": "gemini-2.5-flash"})
                )
            };
            match turn {
                Turn::Calls(calls) => {
                    let parts: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(index, (id, hash))| call_json(api, index, id, hash))
                        .collect();
                    vec![chunk(Value::Array(parts), true)]
                }
                Turn::Answer(text) => {
                    let words: Vec<&str> = text.split_inclusive(' ').collect();
                    words
                        .iter()
                        .enumerate()
                        .map(|(index, word)| {
                            chunk(json!([{"text": word}]), index + 1 == words.len())
                        })
                        .collect()
                }
            }
        }
    }
}

/// A Responses stream that produces `items`.
fn responses_stream(items: &[Value]) -> Vec<String> {
    let mut events = Vec::new();
    let mut push = |mut data: Value| {
        data["sequence_number"] = json!(events.len());
        events.push(sse(data["type"].as_str(), &data));
    };
    let mut pending = responses_envelope(Vec::new());
    pending["status"] = json!("in_progress");
    pending["usage"] = Value::Null;
    push(json!({"type": "response.created", "response": pending}));
    push(json!({"type": "response.in_progress", "response": pending}));
    for (index, item) in items.iter().enumerate() {
        let item_id = item["id"].clone();
        if item["type"] == "function_call" {
            let mut added = item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            push(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            );
            push(
                json!({"type": "response.function_call_arguments.delta", "output_index": index,
                "item_id": item_id, "delta": item["arguments"]}),
            );
            push(
                json!({"type": "response.function_call_arguments.done", "output_index": index,
                "item_id": item_id, "arguments": item["arguments"]}),
            );
        } else {
            let mut added = item.clone();
            added["content"] = json!([]);
            added["status"] = json!("in_progress");
            push(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            );
            push(
                json!({"type": "response.content_part.added", "output_index": index, "item_id": item_id,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            let text = item["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for word in text.split_inclusive(' ') {
                push(
                    json!({"type": "response.output_text.delta", "output_index": index,
                    "item_id": item_id, "content_index": 0, "delta": word, "logprobs": []}),
                );
            }
            push(
                json!({"type": "response.output_text.done", "output_index": index, "item_id": item_id,
                "content_index": 0, "text": text, "logprobs": []}),
            );
            push(
                json!({"type": "response.content_part.done", "output_index": index, "item_id": item_id,
                "content_index": 0, "part": item["content"][0]}),
            );
        }
        push(json!({"type": "response.output_item.done", "output_index": index, "item": item}));
    }
    push(json!({"type": "response.completed", "response": responses_envelope(items.to_vec())}));
    events
}

// ---------------------------------------------------------------------------------------------
// What the client and the upstream got.

/// The final text a client read, or why it is not a clean answer.
fn client_answer(api: Api, stream: bool, text: &str) -> Result<String, String> {
    if text.contains(TOOL) {
        return Err(format!("the client saw the retrieval tool: {text}"));
    }
    if !stream {
        let response: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
        let texts: Vec<&Value> = match api {
            Api::Chat => vec![&response["choices"][0]["message"]["content"]],
            Api::Responses => response["output"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item["content"].as_array())
                .flatten()
                .map(|part| &part["text"])
                .collect(),
            Api::Anthropic => response["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|block| &block["text"])
                .collect(),
            Api::Gemini => response["candidates"][0]["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|part| &part["text"])
                .collect(),
        };
        return texts
            .into_iter()
            .map(|text| {
                text.as_str()
                    .ok_or_else(|| format!("not a text answer: {response}"))
            })
            .collect();
    }
    let mut answer = String::new();
    for event in client_events(text) {
        if event.event.as_deref() == Some("error") || event.data == "[DONE]" {
            if event.data == "[DONE]" {
                continue;
            }
            return Err(format!("an error event: {}", event.data));
        }
        let data: Value = serde_json::from_str(&event.data).map_err(|error| error.to_string())?;
        if data.get("error").is_some_and(|error| !error.is_null()) {
            return Err(format!("an error event: {}", event.data));
        }
        let piece = match api {
            Api::Chat => data["choices"][0]["delta"]["content"].as_str(),
            Api::Responses => (data["type"] == "response.output_text.delta")
                .then(|| data["delta"].as_str())
                .flatten(),
            Api::Anthropic => (data["delta"]["type"] == "text_delta")
                .then(|| data["delta"]["text"].as_str())
                .flatten(),
            Api::Gemini => data["candidates"][0]["content"]["parts"][0]["text"].as_str(),
        };
        answer.push_str(piece.unwrap_or_default());
    }
    Ok(answer)
}

/// The outputs of a request built by [`Task::body`], in order.
fn request_outputs(api: Api, request: &Value) -> Vec<String> {
    let ours = |id: &Value| id.as_str().is_some_and(|id| id.starts_with("call_"));
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let history_key = match api {
        Api::Chat | Api::Anthropic => "messages",
        Api::Responses => "input",
        Api::Gemini => "contents",
    };
    let history = request[history_key].as_array().cloned().unwrap_or_default();
    match api {
        Api::Chat => history
            .iter()
            .filter(|m| m["role"] == "tool" && ours(&m["tool_call_id"]))
            .map(|m| text(&m["content"]))
            .collect(),
        Api::Responses => history
            .iter()
            .filter(|item| item["type"] == "function_call_output" && ours(&item["call_id"]))
            .map(|item| text(&item["output"]))
            .collect(),
        Api::Anthropic => history
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|block| block["type"] == "tool_result" && ours(&block["tool_use_id"]))
            .map(|block| text(&block["content"]))
            .collect(),
        Api::Gemini => history
            .iter()
            .filter_map(|content| content["parts"].as_array())
            .flatten()
            .filter_map(|part| part.get("functionResponse"))
            .filter(|response| ours(&response["id"]))
            .map(|response| text(&response["response"]["output"]))
            .collect(),
    }
}

/// The layer's answers to retrieval calls in a continuation, by call id.
fn retrieval_answers(api: Api, request: &Value) -> HashMap<String, String> {
    let answer = |id: &Value, text: &Value| {
        let id = id.as_str().filter(|id| id.starts_with("ccr_"))?;
        Some((id.to_owned(), text.as_str()?.to_owned()))
    };
    let values = |key: &str| request[key].as_array().cloned().unwrap_or_default();
    match api {
        Api::Chat => values("messages")
            .iter()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| answer(&m["tool_call_id"], &m["content"]))
            .collect(),
        Api::Responses => values("input")
            .iter()
            .filter(|item| item["type"] == "function_call_output")
            .filter_map(|item| answer(&item["call_id"], &item["output"]))
            .collect(),
        Api::Anthropic => values("messages")
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|block| block["type"] == "tool_result")
            .filter_map(|block| answer(&block["tool_use_id"], &block["content"]))
            .collect(),
        Api::Gemini => values("contents")
            .iter()
            .filter_map(|content| content["parts"].as_array())
            .flatten()
            .filter_map(|part| part.get("functionResponse"))
            .filter_map(|response| answer(&response["id"], &response["response"]["output"]))
            .collect(),
    }
}

/// The layer's final answer to an id it will not resolve: it names the id and says not to
/// retry.
fn is_actionable_refusal(answer: &str, hash: &str) -> bool {
    answer.contains(&format!("hash={hash}")) && answer.to_lowercase().contains("do not retry")
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Sends a task's request and reads the whole response.
async fn send<S>(service: S, task: &Task) -> Result<String, String>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_ccr::CcrBody<TestBody>>,
            Error = tower::BoxError,
        >,
{
    let response = service
        .oneshot(task.request())
        .await
        .map_err(|error| format!("the layer failed: {error}"))?;
    let (parts, text, error) = read_stream(response).await;
    if parts.status != StatusCode::OK {
        return Err(format!("status {}: {text}", parts.status));
    }
    if let Some(error) = error {
        return Err(format!("the body broke: {error}"));
    }
    Ok(text)
}

/// The tasks: `WARM_UP` plain ones first, then `CONCURRENT` of every kind. Deterministic (no
/// randomness: the mix cycles through APIs, stream flags, tenants and plans).
fn warm_up_tasks() -> Vec<Task> {
    (0..WARM_UP)
        .map(|id| {
            let mut task = Task {
                id,
                api: APIS[id % APIS.len()],
                stream: false,
                tenant: id % TENANTS,
                outputs: Vec::new(),
                plan: Plan::Answer,
            };
            task.outputs = vec![task_log(&task.owner(), id, 80), common_log()];
            task
        })
        .collect()
}

/// The concurrent tasks; `earlier` holds each warm-up task's id of its output, with its owner
/// and original.
fn concurrent_tasks(earlier: &[(String, String, Arc<str>)]) -> Vec<Task> {
    (WARM_UP..WARM_UP + CONCURRENT)
        .map(|id| {
            let n = id - WARM_UP;
            // Every block of 40 consecutive tasks has every API × stream flag × tenant, and
            // one plan.
            let mut task = Task {
                id,
                api: APIS[n % APIS.len()],
                stream: (n / 4) % 2 == 1,
                tenant: (n / 8) % TENANTS,
                outputs: Vec::new(),
                plan: Plan::Answer,
            };
            let owner = task.owner();
            task.outputs = vec![task_log(&owner, id, 60 + n % 50)];
            if n % 5 == 0 {
                task.outputs.push(common_log());
            }
            task.plan = match (n / 40) % 10 {
                0..=3 => Plan::Answer,
                4..=6 => Plan::RetrieveMarkers { rounds: 1 },
                7 => Plan::RetrieveMarkers { rounds: 2 },
                _ => {
                    // An id a warm-up request got: another tenant's (it never resolves), or
                    // this tenant's own: of its own log (long evicted: an actionable refusal,
                    // or the original while the budget keeps it) or of the log every tenant
                    // sends, which this request carries again (it resolves).
                    let own = (n / 40) % 10 == 8;
                    let common = own && n % 2 == 0;
                    if common && !task.outputs.contains(&common_log()) {
                        task.outputs.push(common_log());
                    }
                    let candidates: Vec<&(String, String, Arc<str>)> = earlier
                        .iter()
                        .filter(|(_, earlier_owner, original)| {
                            (*earlier_owner == owner) == own
                                && (**original == *common_log()) == common
                        })
                        .collect();
                    match candidates.get(n % candidates.len().max(1)) {
                        Some((hash, _, original)) => Plan::RetrieveEarlier {
                            hash: hash.clone(),
                            own_original: own.then(|| original.clone()),
                        },
                        None => Plan::RetrieveMarkers { rounds: 1 },
                    }
                }
            };
            task
        })
        .collect()
}

#[derive(Default)]
struct StoreSamples {
    count: AtomicU64,
    max_bytes: AtomicU64,
    over_budget: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_through_one_layer() {
    let store = MemoryStore::builder().max_bytes(BUDGET).build();
    let layer = CcrLayer::new().min_tokens(MIN_TOKENS).store(store);
    let handle = layer.handle();
    let tasks: Arc<Mutex<HashMap<usize, Arc<Task>>>> = Arc::default();
    let sightings: Arc<Mutex<Vec<Sighting>>> = Arc::default();
    let (upstream, log) = {
        let (tasks, handle, sightings) = (tasks.clone(), handle.clone(), sightings.clone());
        sse_upstream(move |_, request| script(&tasks, &handle, &sightings, request))
    };
    let service = layer.layer(upstream);
    let started = Instant::now();

    // Warm-up, one by one: ids that later requests name.
    let warm_up = warm_up_tasks();
    tasks
        .lock()
        .expect("tasks")
        .extend(warm_up.iter().map(|task| (task.id, Arc::new(task.clone()))));
    for task in &warm_up {
        let text = send(service.clone(), task).await.expect("a warm-up answer");
        assert_eq!(client_answer(task.api, false, &text), Ok(task.answer()));
    }
    // Each warm-up output's id, owner and original.
    let earlier: Vec<(String, String, Arc<str>)> = {
        let log = log.lock().expect("log");
        let mut earlier = Vec::new();
        for (task, recorded) in warm_up.iter().zip(log.iter()) {
            let request: Value = serde_json::from_slice(&recorded.body).expect("JSON");
            for (view, original) in request_outputs(task.api, &request)
                .iter()
                .zip(&task.outputs)
            {
                if let [hash] = marker_hashes(view).as_slice() {
                    earlier.push((hash.clone(), task.owner(), Arc::from(original.as_str())));
                }
            }
        }
        earlier
    };
    assert_eq!(
        earlier.len(),
        2 * WARM_UP,
        "every warm-up output was compressed"
    );

    let concurrent = concurrent_tasks(&earlier);
    tasks.lock().expect("tasks").extend(
        concurrent
            .iter()
            .map(|task| (task.id, Arc::new(task.clone()))),
    );

    // The store's size, sampled while the requests run, from a thread of its own so that the
    // runtime's scheduling does not decide when.
    let samples = Arc::new(StoreSamples::default());
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (handle, samples, running) = (handle.clone(), samples.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                let bytes = futures::executor::block_on(handle.stats()).bytes;
                samples.count.fetch_add(1, Ordering::Relaxed);
                samples.max_bytes.fetch_max(bytes, Ordering::Relaxed);
                if bytes > BUDGET {
                    samples.over_budget.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let run = {
        let concurrent = concurrent.clone();
        async move {
            let running: Vec<_> = concurrent
                .into_iter()
                .map(|task| {
                    let service = service.clone();
                    tokio::spawn(async move {
                        let result = send(service, &task).await;
                        (task, result)
                    })
                })
                .collect();
            let mut results = Vec::with_capacity(running.len());
            for task in running {
                results.push(task.await.expect("a task finished"));
            }
            results
        }
    };
    let results = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .expect("1,000 concurrent requests finish in time: no deadlock");
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    sampler.join().expect("the sampler");

    // Every client got its own answer, never the tool.
    let mut failures = Vec::new();
    for (task, result) in &results {
        let answer = result
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|text| client_answer(task.api, task.stream, text));
        if answer.as_deref() != Ok(task.answer().as_str()) {
            failures.push(format!(
                "task {} ({:?}, stream {}, {:?}): {answer:?}",
                task.id, task.api, task.stream, task.plan
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONCURRENT} clients got a wrong response; first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // What the upstream got: per task, one first request and the continuations its plan calls
    // for; every retrieval answer exact or an actionable refusal.
    let log = log.lock().expect("log").clone();
    let by_task = group_by_task(&log);
    let table = tasks.lock().expect("tasks").clone();
    let mut originals: HashMap<(usize, String), String> = HashMap::new();
    let mut counts = Counts::default();
    for task in &concurrent {
        let requests = by_task.get(&task.id).map(Vec::as_slice).unwrap_or_default();
        let first = requests
            .first()
            .unwrap_or_else(|| panic!("task {}: the upstream never got it", task.id));
        let sent = request_outputs(task.api, first);
        assert_eq!(sent.len(), task.outputs.len(), "task {}", task.id);
        for (view, original) in sent.iter().zip(&task.outputs) {
            match marker_hashes(view).as_slice() {
                [hash] => {
                    originals.insert((task.id, hash.clone()), original.clone());
                    counts.markers += 1;
                }
                [] => {
                    // The store refused the original (see `concurrent_puts_of_new_originals_are_all_admitted`):
                    // then the output goes out whole, never a marker without its original.
                    assert_eq!(view, original, "task {}: changed without a marker", task.id);
                    counts.uncompressed += 1;
                }
                more => panic!("task {}: several markers in one view: {more:?}", task.id),
            }
        }
        let marked = sent.iter().any(|view| !marker_hashes(view).is_empty());
        let expected_rounds = match &task.plan {
            Plan::Answer => 0,
            Plan::RetrieveMarkers { rounds } => usize::from(marked) * rounds,
            Plan::RetrieveEarlier { .. } => usize::from(marked),
        };
        assert_eq!(
            requests.len(),
            1 + expected_rounds,
            "task {} ({:?}): requests upstream",
            task.id,
            task.plan
        );
        // A continuation carries the answers of every round before it: each call once.
        let mut answers: HashMap<String, String> = HashMap::new();
        for continuation in &requests[1..] {
            for (call, answer) in retrieval_answers(task.api, continuation) {
                let first = answers
                    .entry(call.clone())
                    .or_insert_with(|| answer.clone());
                assert_eq!(
                    *first, answer,
                    "task {}: {call} answered twice, differently",
                    task.id
                );
            }
        }
        for (call, answer) in &answers {
            check_answer(task, call, answer, &originals, &table, &mut counts);
        }
    }

    // Every marker resolved when the upstream saw it, to its original and its tenant, unless
    // the budget had evicted it in between (then it reads as expired, never as unknown).
    let mut tenants: HashMap<String, HashSet<TenantId>> = HashMap::new();
    let mut common_ids: HashMap<String, HashSet<String>> = HashMap::new();
    let common = common_log();
    for sighting in sightings.lock().expect("sightings").iter() {
        let Some(task) = table.get(&sighting.task) else {
            panic!("a sighting of an unknown task {}", sighting.task);
        };
        if task.id < WARM_UP {
            continue;
        }
        let expected = originals
            .get(&(task.id, sighting.hash.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "task {}: hash={} seen but not in a view",
                    task.id, sighting.hash
                )
            });
        match &sighting.lookup {
            Lookup::Found(entry) => {
                assert_eq!(
                    &*entry.original,
                    expected.as_str(),
                    "task {}: hash={}",
                    task.id,
                    sighting.hash
                );
                tenants
                    .entry(task.owner())
                    .or_default()
                    .insert(entry.tenant.clone());
                counts.resolved_when_sent += 1;
            }
            Lookup::Expired => counts.evicted_before_sent += 1,
            Lookup::Missing => panic!(
                "task {}: hash={} went out but the store never heard of it",
                task.id, sighting.hash
            ),
        }
        if *expected == common {
            common_ids
                .entry(task.owner())
                .or_default()
                .insert(sighting.hash.clone());
        }
    }
    // One tenant id per credential, a different one for each.
    let all: HashSet<&TenantId> = tenants.values().flatten().collect();
    assert!(tenants.values().all(|ids| ids.len() == 1), "{tenants:?}");
    assert_eq!(all.len(), tenants.len());
    // The same content gets one id per tenant, a different one for each.
    let common_all: HashSet<&String> = common_ids.values().flatten().collect();
    assert!(
        common_ids.values().all(|ids| ids.len() == 1),
        "{common_ids:?}"
    );
    assert_eq!(common_all.len(), common_ids.len());
    assert!(common_ids.len() > 1);

    // The store stayed within its budget, and eviction did happen.
    let stats = handle.stats().await;
    let sampled = samples.count.load(Ordering::Relaxed);
    let max_sampled = samples.max_bytes.load(Ordering::Relaxed);
    assert!(stats.bytes <= BUDGET, "{} bytes at the end", stats.bytes);
    assert_eq!(
        samples.over_budget.load(Ordering::Relaxed),
        0,
        "{sampled} samples, the largest {max_sampled} bytes over a budget of {BUDGET}"
    );
    let stored: usize = originals.values().map(String::len).sum::<usize>();
    let warm_up_gone = {
        let mut gone = 0;
        for (hash, _, _) in &earlier {
            if handle.lookup(hash).await.expect("lookup") == Lookup::Expired {
                gone += 1;
            }
        }
        gone
    };
    assert!(warm_up_gone > 0, "the budget evicted nothing");
    // The counters agree with what the upstream saw, whatever the interleaving.
    let continuations = log.len() - WARM_UP - CONCURRENT;
    assert_eq!(stats.continuation_rounds as usize, continuations);
    assert_eq!(
        stats.retrievals.full as usize,
        counts.exact_answers + counts.own_earlier_exact
    );
    assert_eq!(
        (stats.retrievals.unknown + stats.retrievals.expired) as usize,
        counts.own_earlier_refused + counts.foreign_refused
    );
    assert!(counts.exact_answers > 0 && counts.foreign_refused > 0 && counts.own_earlier_exact > 0);

    eprintln!(
        "load: {CONCURRENT} concurrent requests (+{WARM_UP} warm-up) in {elapsed:?}; {} upstream requests, {} continuation rounds; \
         {} markers ({} resolved when sent, {} evicted in between), {} outputs left uncompressed; \
         {} exact retrieval answers, own earlier ids: {} exact / {} refused, foreign ids: {} refused; \
         store: {} entries, {} bytes at the end, max sampled {max_sampled} of {BUDGET} over {sampled} samples, \
         {stored} bytes of originals marked, {warm_up_gone}/{} warm-up ids evicted; retrievals: {} full, {} unknown, {} expired",
        log.len(),
        stats.continuation_rounds,
        counts.markers,
        counts.resolved_when_sent,
        counts.evicted_before_sent,
        counts.uncompressed,
        counts.exact_answers,
        counts.own_earlier_exact,
        counts.own_earlier_refused,
        counts.foreign_refused,
        stats.entries,
        stats.bytes,
        earlier.len(),
        stats.retrievals.full,
        stats.retrievals.unknown,
        stats.retrievals.expired,
    );
}

#[derive(Default)]
struct Counts {
    markers: usize,
    uncompressed: usize,
    resolved_when_sent: usize,
    evicted_before_sent: usize,
    exact_answers: usize,
    own_earlier_exact: usize,
    own_earlier_refused: usize,
    foreign_refused: usize,
}

/// The upstream's requests by task, each parsed, in the order they came.
fn group_by_task(log: &[Recorded]) -> HashMap<usize, Vec<Value>> {
    let mut by_task: HashMap<usize, Vec<Value>> = HashMap::new();
    for recorded in log {
        let task = task_of(recorded.text()).expect("every request names its task");
        let json = serde_json::from_slice(&recorded.body).expect("the upstream got JSON");
        by_task.entry(task).or_default().push(json);
    }
    by_task
}

/// One retrieval answer: a marker of the request gets exactly its original; an earlier id
/// gets its original only for its own tenant, else an actionable refusal; nothing ever gets
/// another task's original.
fn check_answer(
    task: &Task,
    call: &str,
    answer: &str,
    originals: &HashMap<(usize, String), String>,
    table: &HashMap<usize, Arc<Task>>,
    counts: &mut Counts,
) {
    if let Some(hash) = call.strip_prefix("ccr_e_") {
        let Plan::RetrieveEarlier { own_original, .. } = &task.plan else {
            panic!(
                "task {}: an earlier-id call it did not make: {call}",
                task.id
            );
        };
        match own_original {
            Some(original) if answer == &**original => counts.own_earlier_exact += 1,
            Some(_) if is_actionable_refusal(answer, hash) => counts.own_earlier_refused += 1,
            None if is_actionable_refusal(answer, hash) => counts.foreign_refused += 1,
            _ => {
                let leaked = table
                    .values()
                    .any(|other| other.outputs.iter().any(|o| o == answer));
                panic!(
                    "task {} (tenant {}): hash={hash} answered with neither its own original nor a refusal (another task's original: {leaked}): {}",
                    task.id,
                    task.owner(),
                    &answer[..answer.len().min(300)]
                );
            }
        }
        return;
    }
    let hash = call
        .split_once('_')
        .and_then(|(_, rest)| rest.split_once('_'))
        .map(|(_, hash)| hash)
        .unwrap_or_default();
    let expected = originals
        .get(&(task.id, hash.to_owned()))
        .unwrap_or_else(|| panic!("task {}: a call for hash={hash} of no view", task.id));
    assert!(
        answer == expected,
        "task {}: the answer to hash={hash} is not its original: {}",
        task.id,
        &answer[..answer.len().min(300)]
    );
    counts.exact_answers += 1;
}

/// The store under concurrent puts of new originals into a full budget: every one is admitted
/// (the README: the store makes room first, "so TinyLFU admission never refuses new outputs").
/// A refused original costs no data (its output goes out whole) but loses its compression.
#[test]
fn concurrent_puts_of_new_originals_are_all_admitted() {
    let store = Arc::new(MemoryStore::builder().max_bytes(BUDGET).build());
    let tenant = tenant_of_a_request(store.clone());
    let refused = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (store, tenant, refused) = (&store, &tenant, &refused);
            scope.spawn(move || {
                for put in 0..1_000u64 {
                    let id = EntryId::parse(&format!("{thread:08x}{put:016x}")).expect("an id");
                    let entry = Entry {
                        tenant: tenant.clone(),
                        original: Arc::from(format!("thread {thread} put {put}\n").repeat(400)),
                    };
                    let resident =
                        futures::executor::block_on(store.put(id, entry, Retention::default()))
                            .expect("the memory store does not fail");
                    if !resident {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(refused.load(Ordering::Relaxed), 0, "of 4,000 new originals");
    let usage = futures::executor::block_on(store.usage()).expect("usage");
    assert!(usage.bytes <= BUDGET);
}

/// A tenant id as the layer makes them (they are made nowhere else): that of one request.
fn tenant_of_a_request(store: Arc<MemoryStore>) -> TenantId {
    let layer = CcrLayer::new().min_tokens(MIN_TOKENS).store(store);
    let handle = layer.handle();
    let task = Task {
        id: 0,
        api: Api::Chat,
        stream: false,
        tenant: 0,
        outputs: vec![task_log("sk-tenant-0", 0, 80)],
        plan: Plan::Answer,
    };
    let answer = task.answer();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (upstream, log) =
            sse_upstream(move |_, _| respond(Api::Chat, false, &Turn::Answer(answer.clone())));
        send(layer.layer(upstream), &task).await.expect("an answer");
        let hash = marker_hashes(log.lock().expect("log")[0].text())
            .into_iter()
            .next()
            .expect("a marker");
        match handle.lookup(&hash).await.expect("lookup") {
            Lookup::Found(entry) => entry.tenant,
            other => panic!("the original is not stored: {other:?}"),
        }
    })
}
