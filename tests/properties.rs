//! Properties of the whole layer, checked with generated tool outputs (log lines, JSON arrays of
//! records, grep hits, arbitrary unicode with characters that need JSON escaping, surrogate
//! pairs and very long lines) in realistic requests of each of the four API shapes:
//!
//! - compress → retrieve gives the original: every marker that goes upstream resolves through
//!   the handle to exactly the output it replaced, and the model's retrieval call gets exactly
//!   that original in the continuation;
//! - compressing an already compressed request changes nothing;
//! - the same history gives the same bytes (twice, across layers sharing a secret, and as the
//!   prefix of a later turn).
//!
//! Each property runs 64 generated cases (`PROPTEST_CASES` overrides) and shrinks a failure to
//! a minimal case.

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;
use common::{Recorded, json_response, upstream};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::{CcrLayer, DEFAULT_MAX_ANSWER_BYTES, MIN_ANSWER_BYTES};

const TOOL: &str = "ccr_retrieve";
const MARKER_TAG: &str = "Retrieve more: hash=";
const FINAL_ANSWER: &str = "All done: the gateway declined the card.";
/// Outputs from this many estimated tokens up are compressed: low, so that generated outputs
/// stay small and the suite fast, while every compressor still runs.
const MIN_TOKENS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Generated tool outputs.

/// One tool output of a request.
#[derive(Clone, Debug)]
struct Output {
    /// The tool that produced it (and so the name of the call before it).
    tool: &'static str,
    /// The output as the tool wrote it.
    text: String,
    /// JSON records that Gemini carries as a value (`response.result`) rather than a string.
    structured: bool,
}

/// One generated conversation: a question, the model's calls, their outputs.
#[derive(Clone, Debug)]
struct Case {
    question: &'static str,
    outputs: Vec<Output>,
    /// Every non-ASCII character `\u`-escaped in the body (surrogate pairs above the BMP), as
    /// Python's `json.dumps` writes it, which the Python SDKs send.
    ascii_only: bool,
    /// `max_answer_bytes` of the layer that answers retrievals (`None`: the default), small
    /// enough in most cases that originals come back in pages.
    answer_bytes: Option<usize>,
}

const QUESTIONS: [&str; 4] = [
    "Why did the payment fail?",
    "Which order was declined? ¿por qué? 😀",
    "Summarize the \"errors\" in C:\\logs, please",
    "Find where CORS is configured",
];

const WORDS: [&str; 20] = [
    "GET",
    "/api/orders",
    "payment",
    "gateway",
    "refused",
    "card",
    "worker",
    "cache",
    "miss",
    "timeout",
    "retry",
    "served",
    "db",
    "pool",
    "exhausted",
    "user",
    "token=tok_4242",
    "code=card_declined",
    "café",
    "ünïcödé",
];

fn words(indexes: &[usize]) -> String {
    indexes
        .iter()
        .map(|&index| WORDS[index % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn log_output() -> impl Strategy<Value = Output> {
    let level = prop_oneof![
        8 => Just("INFO"),
        2 => Just("DEBUG"),
        1 => Just("WARN"),
        1 => Just("ERROR"),
    ];
    let line = (
        level,
        prop::collection::vec(0..WORDS.len(), 1..9),
        0..5_000u32,
    );
    prop::collection::vec(line, 20..100).prop_map(|lines| {
        let mut text = String::new();
        for (number, (level, indexes, millis)) in lines.iter().enumerate() {
            let _ = writeln!(
                text,
                "2026-11-23T10:{:02}:{:02}Z {level} {} in {millis}ms",
                number / 60 % 60,
                number % 60,
                words(indexes)
            );
        }
        Output {
            tool: "bash",
            text,
            structured: false,
        }
    })
}

const STATUSES: [&str; 5] = ["paid", "paid", "refunded", "pending", "card_declined"];

fn records_output() -> impl Strategy<Value = Output> {
    let record = (
        0..1_000_000u32,
        0..STATUSES.len(),
        0..100_000u64,
        "[a-z]{1,8}( [A-Za-zéü😀]{1,6})?",
        any::<bool>(),
    );
    (
        prop::collection::vec(record, 10..80),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(records, pretty, structured)| {
            let records: Vec<Value> = records
                .into_iter()
                .map(|(order, status, cents, customer, gift)| {
                    json!({"order": order, "status": STATUSES[status], "amount_cents": cents,
                        "customer": customer, "gift": gift, "items": [{"sku": format!("SKU-{}", order % 97)}]})
                })
                .collect();
            let value = Value::Array(records);
            // A structured result is the client's own bytes, so it is as serde_json writes the
            // value into the body.
            let text = if pretty && !structured {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .expect("records serialize");
            Output {
                tool: "list_orders",
                text,
                structured,
            }
        })
}

const FILES: [&str; 6] = [
    "src/main.rs",
    "src/http/cors.rs",
    "src/http/router.rs",
    "tests/api.rs",
    "README.md",
    "src/ünïcode/mod.rs",
];

fn grep_output() -> impl Strategy<Value = Output> {
    let hit = (
        0..FILES.len(),
        1..5_000u32,
        0..8usize,
        prop::collection::vec(0..WORDS.len(), 1..7),
    );
    prop::collection::vec(hit, 15..100).prop_map(|hits| {
        let mut text = String::new();
        for (file, line, indent, indexes) in hits {
            let _ = writeln!(
                text,
                "{}:{line}:{}let cors = {};",
                FILES[file],
                " ".repeat(indent),
                words(&indexes)
            );
        }
        Output {
            tool: "grep",
            text,
            structured: false,
        }
    })
}

/// Characters that stress escaping: quotes, backslashes, every kind of control character, NUL,
/// the JSON-but-not-JavaScript line separators, a BOM, non-ASCII of the BMP, and characters
/// above it (surrogate pairs in `\u` escapes).
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::char::range(' ', '~'),
        2 => prop::sample::select(vec![
            '"', '\\', '/', '\u{0}', '\u{1}', '\u{8}', '\t', '\u{b}', '\u{c}', '\r', '\u{1b}',
            '\u{1f}', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}',
        ]),
        1 => prop::char::range('\u{a0}', '\u{d7ff}'),
        1 => prop::char::range('\u{e000}', '\u{fffd}'),
        1 => prop::char::range('\u{10000}', '\u{10ffff}'),
    ]
}

fn unicode_output() -> impl Strategy<Value = Output> {
    let short_line = prop::collection::vec(tricky_char(), 0..100).prop_map(String::from_iter);
    // A very long line: a fragment repeated, cheap to generate and to shrink.
    let long_line = (prop::collection::vec(tricky_char(), 1..40), 30..200usize)
        .prop_map(|(fragment, times)| String::from_iter(fragment).repeat(times));
    let line = prop_oneof![12 => short_line, 1 => long_line];
    (prop::collection::vec(line, 10..60), any::<bool>()).prop_map(|(lines, crlf)| Output {
        tool: "read_notes",
        text: lines.join(if crlf { "\r\n" } else { "\n" }),
        structured: false,
    })
}

fn output() -> impl Strategy<Value = Output> {
    prop_oneof![
        log_output(),
        records_output(),
        grep_output(),
        unicode_output()
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(QUESTIONS.to_vec()),
        prop::collection::vec(output(), 1..=3),
        any::<bool>(),
        prop_oneof![1 => Just(None), 2 => (MIN_ANSWER_BYTES..12_000).prop_map(Some)],
    )
        .prop_map(|(question, outputs, ascii_only, answer_bytes)| Case {
            question,
            outputs,
            ascii_only,
            answer_bytes,
        })
}

/// A JSON text with every non-ASCII character written as `\u` escapes.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The four API shapes: requests as their SDKs send them, the model's responses, and where the
// outputs and the retrieval answers sit.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const APIS: [Api; 4] = [Api::Chat, Api::Responses, Api::Anthropic, Api::Gemini];

fn schema() -> Value {
    json!({"type": "object", "properties": {"arg": {"type": "string"}}})
}

fn call_id(index: usize) -> String {
    format!("call_{index}")
}

impl Api {
    fn url(self) -> &'static str {
        match self {
            Api::Chat => "https://api.openai.com/v1/chat/completions",
            Api::Responses => "https://api.openai.com/v1/responses",
            Api::Anthropic => "https://api.anthropic.com/v1/messages",
            Api::Gemini => {
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
            }
        }
    }

    /// A POST with the API's own credential header.
    fn post(self, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let builder = Request::post(self.url()).header("content-type", "application/json");
        let builder = match self {
            Api::Chat | Api::Responses => builder.header("authorization", "Bearer sk-prop"),
            Api::Anthropic => builder
                .header("x-api-key", "sk-ant-prop")
                .header("anthropic-version", "2023-06-01"),
            Api::Gemini => builder.header("x-goog-api-key", "AIza-prop"),
        };
        builder
            .body(Full::new(body.into()))
            .expect("a valid request")
    }

    /// The root member holding the conversation.
    fn history_key(self) -> &'static str {
        match self {
            Api::Chat | Api::Anthropic => "messages",
            Api::Responses => "input",
            Api::Gemini => "contents",
        }
    }

    /// The client's request: the question, the model's calls, one output per call; with
    /// `follow_up`, also the model's answer and a new question after them (the next turn).
    fn body(self, case: &Case, follow_up: Option<&str>) -> String {
        let outputs = &case.outputs;
        let arguments = |index: usize| json!({"arg": format!("run {index}")});
        let tools: Vec<&str> = {
            let mut tools: Vec<&str> = outputs.iter().map(|output| output.tool).collect();
            tools.sort_unstable();
            tools.dedup();
            tools
        };
        let body = match self {
            Api::Chat => {
                let mut messages = vec![
                    json!({"role": "system", "content": "You are a helpful SRE assistant."}),
                    json!({"role": "user", "content": case.question}),
                    json!({"role": "assistant", "content": null, "tool_calls": outputs.iter().enumerate().map(|(index, output)| {
                        json!({"id": call_id(index), "type": "function",
                            "function": {"name": output.tool, "arguments": arguments(index).to_string()}})
                    }).collect::<Vec<_>>()}),
                ];
                messages.extend(outputs.iter().enumerate().map(|(index, output)| {
                    json!({"role": "tool", "tool_call_id": call_id(index), "content": output.text})
                }));
                if let Some(follow_up) = follow_up {
                    messages.push(json!({"role": "assistant", "content": FINAL_ANSWER}));
                    messages.push(json!({"role": "user", "content": follow_up}));
                }
                json!({"model": "gpt-4o", "messages": messages, "tools": tools.iter().map(|name| {
                    json!({"type": "function", "function": {"name": name, "parameters": schema()}})
                }).collect::<Vec<_>>()})
            }
            Api::Responses => {
                let mut input = vec![
                    json!({"role": "developer", "content": "You are a helpful SRE assistant."}),
                    json!({"role": "user", "content": [{"type": "input_text", "text": case.question}]}),
                ];
                input.extend(outputs.iter().enumerate().map(|(index, output)| {
                    json!({"type": "function_call", "call_id": call_id(index), "name": output.tool,
                        "arguments": arguments(index).to_string()})
                }));
                input.extend(outputs.iter().enumerate().map(|(index, output)| {
                    json!({"type": "function_call_output", "call_id": call_id(index), "output": output.text})
                }));
                if let Some(follow_up) = follow_up {
                    input.push(json!({"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": FINAL_ANSWER}]}));
                    input.push(json!({"role": "user", "content": [{"type": "input_text", "text": follow_up}]}));
                }
                json!({"model": "gpt-5", "input": input, "tools": tools.iter().map(|name| {
                    json!({"type": "function", "name": name, "parameters": schema(), "strict": false})
                }).collect::<Vec<_>>()})
            }
            Api::Anthropic => {
                let mut calls = vec![json!({"type": "text", "text": "Let me look."})];
                calls.extend(outputs.iter().enumerate().map(|(index, output)| {
                    json!({"type": "tool_use", "id": call_id(index), "name": output.tool, "input": arguments(index)})
                }));
                let results: Vec<Value> = outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| {
                        json!({"type": "tool_result", "tool_use_id": call_id(index), "content": output.text})
                    })
                    .collect();
                let mut messages = vec![
                    json!({"role": "user", "content": case.question}),
                    json!({"role": "assistant", "content": calls}),
                    json!({"role": "user", "content": results}),
                ];
                if let Some(follow_up) = follow_up {
                    messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": FINAL_ANSWER}]}));
                    messages.push(json!({"role": "user", "content": follow_up}));
                }
                json!({"max_tokens": 1024, "model": "claude-sonnet-4-5", "messages": messages,
                    "system": "You are a helpful SRE assistant.", "tools": tools.iter().map(|name| {
                        json!({"name": name, "input_schema": schema()})
                    }).collect::<Vec<_>>()})
            }
            Api::Gemini => {
                let calls: Vec<Value> = outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| {
                        json!({"functionCall": {"id": call_id(index), "name": output.tool, "args": arguments(index)}})
                    })
                    .collect();
                let responses: Vec<Value> = outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| {
                        let response = if output.structured {
                            let value: Value =
                                serde_json::from_str(&output.text).expect("records are JSON");
                            json!({"result": value, "next_page": null})
                        } else {
                            json!({"output": output.text, "exit_code": 0})
                        };
                        json!({"functionResponse": {"id": call_id(index), "name": output.tool, "response": response}})
                    })
                    .collect();
                let mut contents = vec![
                    json!({"role": "user", "parts": [{"text": case.question}]}),
                    json!({"role": "model", "parts": calls}),
                    json!({"role": "user", "parts": responses}),
                ];
                if let Some(follow_up) = follow_up {
                    contents.push(json!({"role": "model", "parts": [{"text": FINAL_ANSWER}]}));
                    contents.push(json!({"role": "user", "parts": [{"text": follow_up}]}));
                }
                json!({"contents": contents, "generationConfig": {"temperature": 0.2},
                    "tools": [{"functionDeclarations": tools.iter().map(|name| {
                        json!({"name": name, "parameters": schema()})
                    }).collect::<Vec<_>>()}]})
            }
        }
        .to_string();
        if case.ascii_only {
            escape_non_ascii(&body)
        } else {
            body
        }
    }

    /// What a retrieval must give back for each output: the output's text, or for a value
    /// Gemini carries as JSON, its bytes as they stand in the body.
    fn originals(self, case: &Case) -> Vec<String> {
        case.outputs
            .iter()
            .map(|output| {
                if self == Api::Gemini && output.structured && case.ascii_only {
                    escape_non_ascii(&output.text)
                } else {
                    output.text.clone()
                }
            })
            .collect()
    }

    /// The values in the places of the outputs of [`Api::body`], in order.
    fn outputs(self, request: &Value) -> Vec<Value> {
        let ours = |id: &Value| id.as_str().is_some_and(|id| id.starts_with("call_"));
        let history = request[self.history_key()]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match self {
            Api::Chat => history
                .iter()
                .filter(|m| m["role"] == "tool" && ours(&m["tool_call_id"]))
                .map(|m| m["content"].clone())
                .collect(),
            Api::Responses => history
                .iter()
                .filter(|item| item["type"] == "function_call_output" && ours(&item["call_id"]))
                .map(|item| item["output"].clone())
                .collect(),
            Api::Anthropic => history
                .iter()
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|block| block["type"] == "tool_result" && ours(&block["tool_use_id"]))
                .map(|block| block["content"].clone())
                .collect(),
            Api::Gemini => history
                .iter()
                .filter_map(|content| content["parts"].as_array())
                .flatten()
                .filter_map(|part| part.get("functionResponse"))
                .filter(|response| ours(&response["id"]))
                .map(|response| {
                    let response = &response["response"];
                    response
                        .get("output")
                        .unwrap_or(&response["result"])
                        .clone()
                })
                .collect(),
        }
    }

    /// The retrieval answers in a continuation, by call id.
    fn retrieval_answers(self, request: &Value) -> HashMap<String, String> {
        let history = request[self.history_key()]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let answer = |id: &Value, text: &Value| {
            let id = id.as_str().filter(|id| id.starts_with("ccr_"))?;
            Some((id.to_owned(), text.as_str()?.to_owned()))
        };
        match self {
            Api::Chat => history
                .iter()
                .filter(|m| m["role"] == "tool")
                .filter_map(|m| answer(&m["tool_call_id"], &m["content"]))
                .collect(),
            Api::Responses => history
                .iter()
                .filter(|item| item["type"] == "function_call_output")
                .filter_map(|item| answer(&item["call_id"], &item["output"]))
                .collect(),
            Api::Anthropic => history
                .iter()
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|block| block["type"] == "tool_result")
                .filter_map(|block| answer(&block["tool_use_id"], &block["content"]))
                .collect(),
            Api::Gemini => history
                .iter()
                .filter_map(|content| content["parts"].as_array())
                .flatten()
                .filter_map(|part| part.get("functionResponse"))
                .filter(|response| response["name"] == TOOL)
                .filter_map(|response| answer(&response["id"], &response["response"]["output"]))
                .collect(),
        }
    }

    /// The names of the tools a request declares.
    fn tool_names(self, request: &Value) -> Vec<String> {
        let tools = request["tools"].as_array().cloned().unwrap_or_default();
        let names: Vec<&Value> = match self {
            Api::Chat => tools.iter().map(|tool| &tool["function"]["name"]).collect(),
            Api::Responses | Api::Anthropic => tools.iter().map(|tool| &tool["name"]).collect(),
            Api::Gemini => tools
                .iter()
                .filter_map(|tool| tool["functionDeclarations"].as_array())
                .flatten()
                .map(|declaration| &declaration["name"])
                .collect(),
        };
        names
            .into_iter()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect()
    }

    /// A response in which the model calls the retrieval tool: `(call id, hash, query)`.
    fn retrieval_calls(self, calls: &[(String, String, Option<String>)]) -> Response<Full<Bytes>> {
        let calls = calls.iter().enumerate().map(|(index, (id, hash, query))| {
            let arguments = match query {
                Some(query) => json!({"hash": hash, "query": query}),
                None => json!({"hash": hash}),
            };
            match self {
                Api::Chat => json!({"id": id, "type": "function",
                    "function": {"name": TOOL, "arguments": arguments.to_string()}}),
                Api::Responses => json!({"type": "function_call", "id": format!("fc_{index}"),
                    "call_id": id, "name": TOOL, "arguments": arguments.to_string(), "status": "completed"}),
                Api::Anthropic => json!({"type": "tool_use", "id": id, "name": TOOL, "input": arguments}),
                Api::Gemini => json!({"functionCall": {"id": id, "name": TOOL, "args": arguments}}),
            }
        });
        let calls: Vec<Value> = calls.collect();
        let body = match self {
            Api::Chat => json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                    "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": calls}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
            Api::Responses => json!({"id": "resp_1", "object": "response", "created_at": 1,
                "status": "completed", "error": null, "incomplete_details": null, "model": "gpt-5",
                "output": calls, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}}),
            Api::Anthropic => json!({"id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": calls, "stop_reason": "tool_use",
                "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 10}}),
            Api::Gemini => json!({"candidates": [{"content": {"role": "model", "parts": calls},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110}}),
        };
        json_response(StatusCode::OK, body.to_string())
    }

    /// A final text answer.
    fn answer(self, text: &str) -> Response<Full<Bytes>> {
        let body = match self {
            Api::Chat => json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 1,
                "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                    "message": {"role": "assistant", "content": text, "refusal": null}}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}}),
            Api::Responses => json!({"id": "resp_2", "object": "response", "created_at": 1,
                "status": "completed", "error": null, "incomplete_details": null, "model": "gpt-5",
                "output": [{"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": 200, "output_tokens": 20, "total_tokens": 220}}),
            Api::Anthropic => json!({"id": "msg_2", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 200, "output_tokens": 20}}),
            Api::Gemini => {
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 200, "candidatesTokenCount": 20, "totalTokenCount": 220}})
            }
        };
        json_response(StatusCode::OK, body.to_string())
    }

    /// The text of a final answer the client got.
    fn answer_text(self, response: &Value) -> Option<String> {
        let texts: Vec<&Value> = match self {
            Api::Chat => vec![&response["choices"][0]["message"]["content"]],
            Api::Responses => response["output"]
                .as_array()?
                .iter()
                .filter(|item| item["type"] == "message")
                .filter_map(|item| item["content"].as_array())
                .flatten()
                .map(|part| &part["text"])
                .collect(),
            Api::Anthropic => response["content"]
                .as_array()?
                .iter()
                .map(|block| &block["text"])
                .collect(),
            Api::Gemini => response["candidates"][0]["content"]["parts"]
                .as_array()?
                .iter()
                .map(|part| &part["text"])
                .collect(),
        };
        texts.into_iter().map(Value::as_str).collect()
    }
}

/// The ids of every marker in a text, in order, repeats included.
fn marker_hashes(text: &str) -> Vec<String> {
    text.match_indices(MARKER_TAG)
        .filter_map(|(at, _)| {
            let start = at + MARKER_TAG.len();
            let hash = text.get(start..start + 24)?;
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hash.to_owned())
        })
        .collect()
}

/// The distinct items, in the order of their first appearance.
fn unique(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}

fn parse(recorded: &Recorded) -> Result<Value, TestCaseError> {
    serde_json::from_slice(&recorded.body)
        .map_err(|error| TestCaseError::fail(format!("the upstream got invalid JSON: {error}")))
}

// ---------------------------------------------------------------------------------------------
// Running properties.

/// How often each path was taken over the cases, so that no property passes vacuously.
#[derive(Default)]
struct Coverage {
    /// Outputs replaced by a view with a marker.
    markers: Cell<usize>,
    /// Originals read back through retrieval calls, and the answers (pages) that took.
    retrievals: Cell<usize>,
    pages: Cell<usize>,
    /// Outputs changed without a marker (a lossless rendering).
    lossless: Cell<usize>,
    /// Outputs sent as they came.
    untouched: Cell<usize>,
}

impl Coverage {
    fn add(cell: &Cell<usize>, n: usize) {
        cell.set(cell.get() + n);
    }
}

/// Runs `check` on generated cases (64 unless `PROPTEST_CASES` says otherwise) on a
/// current-thread runtime; a failure is shrunk and reported with its minimal case.
fn run_property<F, Fut>(name: &str, check: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64);
    let config = Config {
        cases,
        failure_persistence: None,
        // Every case runs whole exchanges: keep shrinking bounded.
        max_shrink_iters: 512,
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut runner = TestRunner::new(config);
    match runner.run(&case(), |case| runtime.block_on(check(case))) {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!("{name}: {reason}\nminimal failing case: {case:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
    }
}

fn layer() -> CcrLayer {
    CcrLayer::new().min_tokens(MIN_TOKENS)
}

// ---------------------------------------------------------------------------------------------
// The properties.

#[test]
fn compress_then_retrieve_gives_the_original_bytes() {
    let coverage = Coverage::default();
    run_property("compress → retrieve", |case| {
        let coverage = &coverage;
        async move {
            for api in APIS {
                compress_then_retrieve(api, &case, coverage).await?;
            }
            Ok(())
        }
    });
    assert!(coverage.markers.get() > 0 && coverage.retrievals.get() > 0);
    assert!(
        coverage.pages.get() > coverage.retrievals.get(),
        "no original came in pages"
    );
    eprintln!(
        "compress → retrieve: {} outputs with a marker, {} originals read back in {} answers, {} lossless views, {} untouched",
        coverage.markers.get(),
        coverage.retrievals.get(),
        coverage.pages.get(),
        coverage.lossless.get(),
        coverage.untouched.get()
    );
}

async fn compress_then_retrieve(
    api: Api,
    case: &Case,
    coverage: &Coverage,
) -> Result<(), TestCaseError> {
    // The model retrieves every marker it sees, whole, reading on page after page as the
    // answers say (call `ccr_<round>_<n>` for the n-th marker), then answers.
    let (upstream, log) = upstream(move |round, request| {
        let hashes = unique(marker_hashes(request.text()));
        let answers = serde_json::from_slice(&request.body)
            .map(|request: Value| api.retrieval_answers(&request))
            .unwrap_or_default();
        let calls: Vec<(String, String, Option<String>)> = hashes
            .iter()
            .enumerate()
            .filter_map(|(n, hash)| {
                let query = match round {
                    0 => None,
                    _ => Some(read_page(answers.get(&format!("ccr_{}_{n}", round - 1))?).1?),
                };
                Some((format!("ccr_{round}_{n}"), hash.clone(), query))
            })
            .collect();
        if calls.is_empty() {
            api.answer(FINAL_ANSWER)
        } else {
            api.retrieval_calls(&calls)
        }
    });
    let answer_bytes = case.answer_bytes.unwrap_or(DEFAULT_MAX_ANSWER_BYTES);
    // Enough rounds for the smallest pages of the largest outputs.
    let layer = layer().max_rounds(64).max_answer_bytes(answer_bytes);
    let handle = layer.handle();
    let body = api.body(case, None);
    let response = layer
        .layer(upstream)
        .oneshot(api.post(body.clone()))
        .await
        .map_err(|error| TestCaseError::fail(format!("{api:?}: the layer failed: {error}")))?;
    let (parts, text) = common::body_text(response).await;
    prop_assert_eq!(parts.status, StatusCode::OK, "{:?}: {}", api, text);
    prop_assert!(
        !text.contains(TOOL),
        "{:?}: the client saw the tool: {}",
        api,
        text
    );
    let client: Value = serde_json::from_str(&text)
        .map_err(|error| TestCaseError::fail(format!("{api:?}: client body: {error}")))?;
    let answer = api.answer_text(&client);
    prop_assert_eq!(answer.as_deref(), Some(FINAL_ANSWER));

    let log = log.lock().expect("log").clone();
    let first = parse(&log[0])?;
    let originals = api.originals(case);
    let sent = api.outputs(&first);
    prop_assert_eq!(sent.len(), originals.len(), "{:?}: outputs in place", api);
    // Which original each marker stands for.
    let mut marked: Vec<(String, usize)> = Vec::new();
    for (index, (value, output)) in sent.iter().zip(&case.outputs).enumerate() {
        let Some(view) = value.as_str() else {
            // A JSON value stays a value only when it is left alone.
            let original: Value =
                serde_json::from_str(&output.text).expect("structured outputs are JSON");
            prop_assert_eq!(value, &original, "{:?}: a structured output changed", api);
            Coverage::add(&coverage.untouched, 1);
            continue;
        };
        let hashes = marker_hashes(view);
        let as_value = api == Api::Gemini && output.structured;
        if view == output.text && !as_value {
            Coverage::add(&coverage.untouched, 1);
        } else if let [hash] = hashes.as_slice() {
            prop_assert!(
                view.ends_with(']') && view.trim_end_matches(']').ends_with(hash.as_str()),
                "{:?}: the marker ends the view: {}",
                api,
                view
            );
            let stored = handle
                .retrieve(hash)
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(
                stored.as_deref(),
                Some(originals[index].as_str()),
                "{:?}: hash={} does not resolve to output {}",
                api,
                hash,
                index
            );
            marked.push((hash.clone(), index));
            Coverage::add(&coverage.markers, 1);
        } else {
            prop_assert!(
                hashes.is_empty(),
                "{:?}: several markers in one view: {}",
                api,
                view
            );
            // A lossless rendering of JSON must hold the same value, when it is JSON itself.
            if let (Ok(view), Ok(original)) = (
                serde_json::from_str::<Value>(view),
                serde_json::from_str::<Value>(&output.text),
            ) {
                prop_assert_eq!(
                    view,
                    original,
                    "{:?}: a lossless view changed the data",
                    api
                );
            }
            Coverage::add(&coverage.lossless, 1);
        }
    }
    // Markers appear only where outputs were replaced.
    prop_assert_eq!(
        marker_hashes(log[0].text()).len(),
        marked.len(),
        "{:?}: a marker outside the replaced outputs",
        api
    );
    let injected = api
        .tool_names(&first)
        .iter()
        .filter(|name| *name == TOOL)
        .count();
    prop_assert_eq!(
        injected,
        usize::from(!marked.is_empty()),
        "{:?}: the tool goes with the markers",
        api
    );
    if marked.is_empty() {
        prop_assert_eq!(log.len(), 1);
        return Ok(());
    }
    // The model's calls, answered by the layer: each answer within the bound, and the pages of
    // each marker, read in order, give exactly its original. The last continuation carries
    // every round's answers.
    let last = parse(log.last().expect("requests"))?;
    let answers = api.retrieval_answers(&last);
    let hashes = unique(marker_hashes(log[0].text()));
    let rounds = log.len() - 1;
    prop_assert!(rounds >= 1, "{:?}: no continuation", api);
    for (n, hash) in hashes.iter().enumerate() {
        let index = marked
            .iter()
            .find(|(marked, _)| marked == hash)
            .map(|(_, index)| *index)
            .expect("every hash came from a view");
        let mut read = String::new();
        let mut pages = 0;
        for round in 0..rounds {
            let Some(answer) = answers.get(&format!("ccr_{round}_{n}")) else {
                break;
            };
            prop_assert!(
                answer.len() <= answer_bytes,
                "{:?}: an answer of {} bytes over max_answer_bytes {}",
                api,
                answer.len(),
                answer_bytes
            );
            read.push_str(read_page(answer).0);
            pages += 1;
        }
        prop_assert!(
            read == originals[index],
            "{:?}: the {} answers to hash={} do not give output {} back:\n{:?}",
            api,
            pages,
            hash,
            index,
            answers
        );
        Coverage::add(&coverage.retrievals, 1);
        Coverage::add(&coverage.pages, pages);
    }
    Ok(())
}

/// The verbatim part of a retrieval answer, and the query that reads on when it is a page
/// of a larger original: `[Part of hash=…: …, bytes 1-1500 of 9000. To read on, call
/// ccr_retrieve with this hash and query "lines 21-120"; …]` and a newline before the part.
fn read_page(answer: &str) -> (&str, Option<String>) {
    let Some(end) = answer
        .starts_with("[Part of hash=")
        .then(|| answer.find("]\n"))
        .flatten()
    else {
        return (answer, None);
    };
    let next = answer[..end]
        .split_once("query \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(query, _)| query.to_owned());
    (&answer[end + 2..], next)
}

#[test]
fn compressing_a_compressed_request_changes_nothing() {
    let coverage = Coverage::default();
    run_property("idempotence", |case| {
        let coverage = &coverage;
        async move {
            for api in APIS {
                compress_twice(api, &case, coverage).await?;
            }
            Ok(())
        }
    });
    assert!(coverage.markers.get() > 0);
    eprintln!(
        "idempotence: {} requests with markers sent through again",
        coverage.markers.get()
    );
}

async fn compress_twice(api: Api, case: &Case, coverage: &Coverage) -> Result<(), TestCaseError> {
    let (upstream, log) = upstream(move |_, _| api.answer(FINAL_ANSWER));
    let service = layer().layer(upstream.clone());
    let send = |service: tower_ccr::CcrService<_>, body: Bytes| async move {
        service
            .oneshot(api.post(body))
            .await
            .map_err(|error| TestCaseError::fail(format!("{api:?}: the layer failed: {error}")))
    };
    send(service.clone(), Bytes::from(api.body(case, None))).await?;
    let compressed = log.lock().expect("log")[0].body.clone();
    if !marker_hashes(std::str::from_utf8(&compressed).unwrap_or_default()).is_empty() {
        Coverage::add(&coverage.markers, 1);
    }
    // The compressed request again, through the same layer (its store holds every original)
    // and through a fresh one.
    send(service, compressed.clone()).await?;
    send(layer().layer(upstream), compressed.clone()).await?;
    let log = log.lock().expect("log").clone();
    for (again, what) in log[1..].iter().zip(["the same layer", "a fresh layer"]) {
        prop_assert!(
            again.body == compressed,
            "{:?}: {} changed a compressed request:\nfirst:  {}\nsecond: {}",
            api,
            what,
            String::from_utf8_lossy(&compressed),
            again.text()
        );
    }
    Ok(())
}

#[test]
fn the_same_history_gives_the_same_bytes() {
    let coverage = Coverage::default();
    run_property("determinism", |case| {
        let coverage = &coverage;
        async move {
            for api in APIS {
                same_history_same_bytes(api, &case, coverage).await?;
            }
            Ok(())
        }
    });
    assert!(coverage.markers.get() > 0);
    eprintln!(
        "determinism: {} requests with markers compared",
        coverage.markers.get()
    );
}

/// The root members of a JSON object as raw text, and the elements of `key` (an array).
fn raw_members<'a>(
    text: &'a str,
    key: &str,
) -> Result<(BTreeMap<String, &'a RawValue>, Vec<&'a RawValue>), TestCaseError> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(text)
        .map_err(|error| TestCaseError::fail(format!("not a JSON object: {error}")))?;
    let elements: Vec<&RawValue> = members
        .get(key)
        .map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .map_err(|error| TestCaseError::fail(format!("{key} is not an array: {error}")))?
        .unwrap_or_default();
    Ok((members, elements))
}

async fn same_history_same_bytes(
    api: Api,
    case: &Case,
    coverage: &Coverage,
) -> Result<(), TestCaseError> {
    const SECRET: &str = "shared by every replica";
    let (upstream, log) = upstream(move |_, _| api.answer(FINAL_ANSWER));
    let first_layer = layer().secret(SECRET);
    let second_layer = layer().secret(SECRET);
    let body = api.body(case, None);
    let later = api.body(case, Some("And what should we do about it?"));
    let requests = [
        (&first_layer, body.clone()),
        (&first_layer, body.clone()),
        (&second_layer, body),
        (&first_layer, later),
    ];
    for (layer, body) in requests {
        layer
            .layer(upstream.clone())
            .oneshot(api.post(body))
            .await
            .map_err(|error| TestCaseError::fail(format!("{api:?}: the layer failed: {error}")))?;
    }
    let log = log.lock().expect("log").clone();
    let first = log[0].text();
    if !marker_hashes(first).is_empty() {
        Coverage::add(&coverage.markers, 1);
    }
    prop_assert!(
        log[1].body == log[0].body,
        "{:?}: the same request twice:\n{}\n{}",
        api,
        first,
        log[1].text()
    );
    prop_assert!(
        log[2].body == log[0].body,
        "{:?}: two layers with one secret:\n{}\n{}",
        api,
        first,
        log[2].text()
    );
    // The later turn: every earlier element of the history and every other member keeps its
    // bytes, and the earlier request up to its last history element is a byte prefix.
    let key = api.history_key();
    let later = log[3].text();
    let (members, history) = raw_members(first, key)?;
    let (later_members, later_history) = raw_members(later, key)?;
    prop_assert_eq!(later_history.len(), history.len() + 2);
    for (index, (earlier, now)) in history.iter().zip(&later_history).enumerate() {
        prop_assert_eq!(
            earlier.get(),
            now.get(),
            "{:?}: history element {} changed in the next turn",
            api,
            index
        );
    }
    for (name, raw) in &members {
        if name != key {
            prop_assert_eq!(
                Some(raw.get()),
                later_members.get(name).map(|raw| raw.get()),
                "{:?}: {} changed in the next turn",
                api,
                name
            );
        }
    }
    if let Some(last) = history.last() {
        let end = last.get().as_ptr() as usize - first.as_ptr() as usize + last.get().len();
        prop_assert!(
            later.starts_with(&first[..end]),
            "{:?}: the next turn does not start with the bytes of this one",
            api
        );
    }
    Ok(())
}

/// The smallest case the idempotence property found, at the default settings: 150 uniform
/// records get a lossless table of about 1,400 tokens (over `min_tokens`), which goes out
/// without a marker; sent through again, the table is compressed like any text.
#[tokio::test]
async fn a_lossless_view_is_not_compressed_again() {
    let records: Vec<Value> = (0..150)
        .map(|i| {
            json!({"order": 88_000 + i, "status": if i == 7 { "card_declined" } else { "paid" },
                "customer": format!("customer-{i}")})
        })
        .collect();
    let output = serde_json::to_string(&records).expect("records serialize");
    let (upstream, log) = upstream(|_, _| common::answer("ok", 1));
    let service = CcrLayer::new().layer(upstream);
    let body = common::chat_body(common::conversation(&output), json!({}));
    service
        .clone()
        .oneshot(common::post(common::CHAT_URL, body))
        .await
        .expect("a response");
    let compressed = log.lock().expect("log")[0].body.clone();
    let view =
        serde_json::from_slice::<Value>(&compressed).expect("JSON")["messages"][3]["content"]
            .as_str()
            .map(str::to_owned)
            .expect("a string");
    assert!(
        view.starts_with("JSON array of 150 objects as a table"),
        "{view}"
    );
    assert!(tower_ccr::estimate_tokens(&view) >= tower_ccr::DEFAULT_MIN_TOKENS);
    service
        .oneshot(common::post(common::CHAT_URL, compressed.clone()))
        .await
        .expect("a response");
    let again = log.lock().expect("log")[1].clone();
    assert_eq!(
        again.text(),
        std::str::from_utf8(&compressed).expect("UTF-8")
    );
}
