//! Conformance across the four API shapes: for each, the loop runs through the layer (a large
//! output compressed, the model retrieves, a final answer; and a mixed turn), and every request
//! the upstream received and every response the client got is written to
//! `target/tmp/sdk-conformance/`. Here the Chat and Responses requests are deserialized into
//! async-openai's types; `tests/sdk_check.py` (run by `.ci/run`) checks every file against the
//! official Python SDKs' types (openai, anthropic, google-genai).

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

#[derive(Clone, Copy, Debug)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Responses => "responses",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
        }
    }

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

    /// A request as the SDKs send it: question, a call of `bash`, its large output (with
    /// unicode), the client's `bash` tool.
    fn request(self, output: &str) -> String {
        let schema = json!({"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]});
        let question = "Why did the payment fail? Ünïcödé ✓";
        match self {
            Api::Chat => json!({"model": "gpt-4o", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": output}],
                "tools": [{"type": "function", "function": {"name": "bash", "description": "Run", "parameters": schema}}]}),
            Api::Responses => json!({"model": "gpt-4o", "instructions": "Be brief.", "input": [
                {"role": "user", "content": question},
                {"type": "function_call", "call_id": "call_1", "name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": output}],
                "tools": [{"type": "function", "name": "bash", "description": "Run", "parameters": schema, "strict": false}]}),
            Api::Anthropic => json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "Be brief.", "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "cat app.log"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": output,
                    "cache_control": {"type": "ephemeral"}}]}],
                "tools": [{"name": "bash", "description": "Run", "input_schema": schema}]}),
            Api::Gemini => json!({"systemInstruction": {"parts": [{"text": "Be brief."}]}, "contents": [
                {"role": "user", "parts": [{"text": question}]},
                {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"cmd": "cat app.log"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "bash", "response": {"output": output}}}]}],
                "tools": [{"functionDeclarations": [{"name": "bash", "description": "Run", "parameters": schema}]}]}),
        }
        .to_string()
    }

    /// A response in which the model calls `calls` (name, arguments).
    fn calls(self, calls: &[(&str, Value)]) -> Value {
        match self {
            Api::Chat => {
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (name, args))| {
                        json!({"id": format!("call_{i}"),
                    "type": "function", "function": {"name": name, "arguments": args.to_string()}})
                    })
                    .collect();
                json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                        "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": calls}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})
            }
            Api::Responses => {
                let mut output = vec![
                    json!({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"}),
                ];
                output.extend(calls.iter().enumerate().map(|(i, (name, args))| {
                    json!({"type": "function_call",
                    "id": format!("fc_{i}"), "call_id": format!("call_{i}"), "name": name,
                    "arguments": args.to_string(), "status": "completed"})
                }));
                responses_envelope("resp_1", output)
            }
            Api::Anthropic => {
                let content: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (name, args))| {
                        json!({"type": "tool_use",
                    "id": format!("toolu_r{i}"), "name": name, "input": args})
                    })
                    .collect();
                json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": content, "stop_reason": "tool_use", "stop_sequence": null,
                    "usage": {"input_tokens": 100, "output_tokens": 10}})
            }
            Api::Gemini => {
                let parts: Vec<Value> = calls
                    .iter()
                    .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}}))
                    .collect();
                json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
                    "modelVersion": "gemini-2.5-flash"})
            }
        }
    }

    fn answer(self, text: &str) -> Value {
        match self {
            Api::Chat => {
                json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                    "message": {"role": "assistant", "content": text, "refusal": null}}],
                "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}})
            }
            Api::Responses => responses_envelope(
                "resp_2",
                vec![
                    json!({"type": "message", "id": "msg_2", "role": "assistant",
                "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}),
                ],
            ),
            Api::Anthropic => {
                json!({"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 200, "output_tokens": 20}})
            }
            Api::Gemini => {
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 200, "candidatesTokenCount": 20, "totalTokenCount": 220},
                "modelVersion": "gemini-2.5-flash"})
            }
        }
    }
}

fn responses_envelope(id: &str, output: Vec<Value>) -> Value {
    json!({"id": id, "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o",
        "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
}

fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sdk-conformance");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(name: &str, body: &str) {
    let value: Value = serde_json::from_str(body).expect("valid JSON");
    std::fs::write(
        fixtures_dir().join(name),
        serde_json::to_string_pretty(&value).unwrap(),
    )
    .unwrap();
}

/// Runs a scripted exchange; returns what the upstream got and what the client got.
async fn exchange(api: Api, script: Vec<Value>) -> (Vec<Recorded>, String) {
    let (upstream, log) = upstream(move |round, _| {
        json_response(
            StatusCode::OK,
            script[round.min(script.len() - 1)].to_string(),
        )
    });
    let request = Request::post(api.url())
        .header("content-type", "application/json")
        .header("authorization", "Bearer conformance")
        .body(Full::new(Bytes::from(api.request(&big_log(1_500)))))
        .unwrap();
    let response = CcrLayer::new()
        .secret("conformance")
        .layer(upstream)
        .oneshot(request)
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    let log = log.lock().unwrap().clone();
    (log, text)
}

async fn conformance(api: Api) {
    // The hash is unknown to the script in advance: the model asks with a query, which the
    // layer answers from the request's own markers only when the hash is right, so take it
    // from the first request.
    let (first, _) = exchange(api, vec![api.answer("no retrieval")]).await;
    let hash = marker_hash(first[0].text()).expect("the output was compressed");
    let retrieval = api.calls(&[(
        "ccr_retrieve",
        json!({"hash": hash, "query": "payment refused"}),
    )]);
    let (log, client) = exchange(api, vec![retrieval, api.answer("The card was declined.")]).await;
    assert_eq!(
        log.len(),
        2,
        "{api:?}: the first request and one continuation"
    );
    assert!(!client.contains("ccr_retrieve"), "{api:?}: {client}");
    assert!(
        log[1].text().contains("card_declined"),
        "{api:?}: the continuation carries the answer"
    );
    for (index, request) in log.iter().enumerate() {
        write(
            &format!("{}_request_{index}.json", api.name()),
            request.text(),
        );
    }
    write(&format!("{}_response_final.json", api.name()), &client);

    let mixed = api.calls(&[
        ("ccr_retrieve", json!({"hash": hash})),
        ("bash", json!({"cmd": "ls"})),
    ]);
    let (log, client) = exchange(api, vec![mixed]).await;
    assert_eq!(
        log.len(),
        1,
        "{api:?}: a mixed turn goes back to the client"
    );
    assert!(!client.contains("ccr_retrieve"), "{api:?}: {client}");
    assert!(client.contains("bash"), "{api:?}: the client's call stays");
    write(&format!("{}_response_mixed.json", api.name()), &client);
}

#[tokio::test]
async fn chat_completions_conforms() {
    conformance(Api::Chat).await;
}

#[tokio::test]
async fn responses_conforms() {
    conformance(Api::Responses).await;
}

#[tokio::test]
async fn anthropic_messages_conforms() {
    conformance(Api::Anthropic).await;
}

#[tokio::test]
async fn gemini_conforms() {
    conformance(Api::Gemini).await;
}

#[cfg(feature = "async-openai")]
#[tokio::test]
async fn rewritten_openai_requests_deserialize_into_async_openai_types() {
    use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
    use async_openai::types::responses::{CreateResponse, Response};
    for api in [Api::Chat, Api::Responses] {
        let (first, _) = exchange(api, vec![api.answer("no retrieval")]).await;
        let hash = marker_hash(first[0].text()).unwrap();
        let retrieval = api.calls(&[("ccr_retrieve", json!({"hash": hash}))]);
        let (log, client) = exchange(api, vec![retrieval, api.answer("done")]).await;
        for request in &log {
            match api {
                Api::Chat => {
                    serde_json::from_slice::<CreateChatCompletionRequest>(&request.body)
                        .expect("chat request");
                }
                _ => {
                    serde_json::from_slice::<CreateResponse>(&request.body)
                        .expect("responses request");
                }
            }
        }
        match api {
            Api::Chat => {
                serde_json::from_str::<CreateChatCompletionResponse>(&client)
                    .expect("chat response");
            }
            _ => {
                serde_json::from_str::<Response>(&client).expect("responses response");
            }
        }
    }
}
