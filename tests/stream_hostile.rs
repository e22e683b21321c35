//! Hostile and unusual upstream streams (found by a review of the streaming support): the
//! retrieval tool never reaches the client, a continuation cut short ends in an error event,
//! rounds never run into each other, and work stays linear.

mod common;

use bytes::Bytes;
use common::streaming::*;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const TOOL: &str = "ccr_retrieve";

// ---------------------------------------------------------------- Chat Completions helpers

fn chat_chunk(id: &str, delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        "usage": null});
    format!("data: {chunk}\n\n")
}

fn chat_usage(id: &str, prompt: u64, completion: u64) -> String {
    let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}});
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

fn chat_text(id: &str, text: &str) -> Vec<String> {
    let mut events = vec![chat_chunk(
        id,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for word in text.split_inclusive(' ') {
        events.push(chat_chunk(id, json!({"content": word}), None));
    }
    events.push(chat_chunk(id, json!({}), Some("stop")));
    events.push(chat_usage(id, 300, 5));
    events.push(DONE.into());
    events
}

fn chat_request(output: &str) -> Request<Full<Bytes>> {
    post(
        CHAT_URL,
        chat_body(
            conversation(output),
            json!({"stream": true, "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]}),
        ),
    )
}

// ---------------------------------------------------------------- invariant 1: no leak

/// Some OpenAI-compatible servers send a call's id first and its name in a later fragment: the
/// call's fragments wait for its name, so a retrieval call never reaches the client.
#[tokio::test]
async fn chat_a_call_named_in_a_later_fragment_stays_hidden() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let arguments = json!({"hash": hash}).to_string();
            let id = "chatcmpl-1";
            sse_events(&[
                chat_chunk(id, json!({"role": "assistant", "content": null}), None),
                chat_chunk(
                    id,
                    json!({"tool_calls": [{"index": 0, "id": "call_r1", "type": "function",
                        "function": {"arguments": ""}}]}),
                    None,
                ),
                chat_chunk(
                    id,
                    json!({"tool_calls": [{"index": 0, "function": {"name": TOOL, "arguments": arguments}}]}),
                    None,
                ),
                chat_chunk(id, json!({}), Some("tool_calls")),
                chat_usage(id, 100, 10),
                DONE.into(),
            ])
        }
        _ => sse_events(&chat_text("chatcmpl-2", "Token tok_4242 was declined.")),
    });
    let (_, text, _) = stream_through_layer(upstream, chat_request(&big_log(2_000))).await;
    let rounds = log.lock().unwrap().len();
    assert!(
        !text.contains(TOOL) && !text.contains("call_r1"),
        "rounds sent upstream: {rounds}; the client saw the retrieval call:\n{text}"
    );
}

/// Same for Responses: an `output_item.added` whose item does not carry the name yet (the name
/// is only in `output_item.done`): the item's events wait for it.
#[tokio::test]
async fn responses_a_call_named_only_in_its_done_item_stays_hidden() {
    const URL: &str = "https://api.example.com/v1/responses";
    let (upstream, _log) = sse_upstream(|round, request| {
        let event = |kind: &str, sequence: usize, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(sequence);
            format!("event: {kind}\ndata: {data}\n\n")
        };
        let response = |id: &str, status: &str, output: Value| {
            json!({"id": id, "object": "response", "status": status, "model": "gpt-5",
                "output": output, "tools": [], "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}})
        };
        match round {
            0 => {
                let hash = marker_hash(request.text()).unwrap();
                let arguments = json!({"hash": hash}).to_string();
                let done = json!({"id": "fc_1", "type": "function_call", "status": "completed",
                    "arguments": arguments, "call_id": "call_r1", "name": TOOL});
                sse_events(&[
                    event(
                        "response.created",
                        0,
                        json!({"response": response("resp_1", "in_progress", json!([]))}),
                    ),
                    event(
                        "response.output_item.added",
                        1,
                        json!({"output_index": 0, "item": {"id": "fc_1", "type": "function_call",
                            "status": "in_progress", "arguments": "", "call_id": "call_r1"}}),
                    ),
                    event(
                        "response.function_call_arguments.delta",
                        2,
                        json!({"item_id": "fc_1", "output_index": 0, "delta": arguments}),
                    ),
                    event(
                        "response.output_item.done",
                        3,
                        json!({"output_index": 0, "item": done}),
                    ),
                    event(
                        "response.completed",
                        4,
                        json!({"response": response("resp_1", "completed", json!([done]))}),
                    ),
                ])
            }
            _ => {
                let message = json!({"id": "msg_2", "type": "message", "status": "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]});
                sse_events(&[
                    event(
                        "response.created",
                        0,
                        json!({"response": response("resp_2", "in_progress", json!([]))}),
                    ),
                    event(
                        "response.output_item.added",
                        1,
                        json!({"output_index": 0, "item": message}),
                    ),
                    event(
                        "response.output_item.done",
                        2,
                        json!({"output_index": 0, "item": message}),
                    ),
                    event(
                        "response.completed",
                        3,
                        json!({"response": response("resp_2", "completed", json!([message]))}),
                    ),
                ])
            }
        }
    });
    let body = json!({"model": "gpt-5", "stream": true, "input": [
        {"role": "user", "content": "Why did the payment fail?"},
        {"type": "function_call", "id": "fc_0", "call_id": "call_bash", "name": "bash",
            "arguments": "{\"cmd\":\"cat\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_bash", "output": big_log(2_000)}],
        "tools": [{"type": "function", "name": "bash", "parameters": {"type": "object"}}]});
    let (_, text, _) = stream_through_layer(upstream, post(URL, body.to_string())).await;
    assert!(
        !text.contains(TOOL) && !text.contains("call_r1"),
        "the client saw the retrieval call:\n{text}"
    );
}

/// Vertex AI with `toolConfig.functionCallingConfig.streamFunctionCallArguments: true` streams a
/// call as `{name, willContinue: true}`, then parts `{partialArgs: […], willContinue}` without a
/// name, then an empty `functionCall: {}`. The layer takes calls whole, so it does not offer its
/// tool there: nothing is compressed lossily, and the stream passes through.
#[tokio::test]
async fn gemini_vertex_streamed_call_arguments_get_no_retrieval_tool() {
    const URL: &str = "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-3-pro-preview:streamGenerateContent?alt=sse";
    let (upstream, log) = sse_upstream(|round, request| {
        let chunk = |parts: Value, finish: bool| {
            let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
            if finish {
                candidate["finishReason"] = json!("STOP");
            }
            let chunk = json!({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 10,
                "candidatesTokenCount": 2, "totalTokenCount": 12}, "responseId": "r"});
            format!("data: {chunk}\r\n\r\n")
        };
        match round {
            0 => {
                let hash = marker_hash(request.text()).unwrap_or_default();
                sse_events(&[
                    chunk(
                        json!([{"functionCall": {"name": TOOL, "willContinue": true}, "thoughtSignature": "c2ln"}]),
                        false,
                    ),
                    chunk(
                        json!([{"functionCall": {"partialArgs": [{"jsonPath": "$.hash", "stringValue": hash}],
                            "willContinue": true}}]),
                        false,
                    ),
                    chunk(json!([{"functionCall": {}}]), true),
                ])
            }
            _ => sse_events(&[chunk(
                json!([{"text": "Token tok_4242 was declined."}]),
                true,
            )]),
        }
    });
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "Why did the payment fail?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"cmd": "cat"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "bash",
                "response": {"output": big_log(2_000)}}}]}
        ],
        "tools": [{"functionDeclarations": [{"name": "bash", "parameters": {"type": "OBJECT"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "streamFunctionCallArguments": true}}
    });
    let request = Request::post(URL)
        .header("content-type", "application/json")
        .header("authorization", "Bearer ya29.alice")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (_, text, _) = stream_through_layer(upstream, request).await;
    let sent = log.lock().unwrap()[0].clone();
    assert!(
        marker_hash(sent.text()).is_none(),
        "no marker without a way to redeem it"
    );
    assert!(!sent.text().contains(TOOL), "no tool either");
    assert!(text.contains("partialArgs"), "the stream passed through");
}

// ---------------------------------------------------------------- invariant 4: short continuation

/// A continuation that answers 200 `text/event-stream` and then stops before its round ended
/// (no `finish_reason`, no `[DONE]`): the client's stream ends with an error event, not just
/// stops.
#[tokio::test]
async fn chat_a_continuation_that_stops_short_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let id = "chatcmpl-1";
            sse_events(&[
                chat_chunk(id, json!({"role": "assistant", "content": null}), None),
                chat_chunk(
                    id,
                    json!({"tool_calls": [{"index": 0, "id": "call_r1", "type": "function",
                        "function": {"name": TOOL, "arguments": json!({"hash": hash}).to_string()}}]}),
                    None,
                ),
                chat_chunk(id, json!({}), Some("tool_calls")),
                DONE.into(),
            ])
        }
        // Two chunks of the answer, then the upstream closes the stream cleanly.
        _ => sse_events(&chat_text("chatcmpl-2", "Partial answer")[..2]),
    });
    let (_, text, error) = stream_through_layer(upstream, chat_request(&big_log(2_000))).await;
    assert!(error.is_none());
    let last = client_events(&text).pop().unwrap();
    assert!(
        last.data.starts_with(r#"{"error":"#),
        "the stream must end with an error event, it ends with: {last:?}\n{text}"
    );
}

fn anthropic_frame(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

fn anthropic_start(id: &str) -> String {
    anthropic_frame(
        json!({"type": "message_start", "message": {"id": id, "type": "message",
        "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1}}}),
    )
}

fn anthropic_end(stop_reason: &str) -> Vec<String> {
    vec![
        anthropic_frame(json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 10}})),
        anthropic_frame(json!({"type": "message_stop"})),
    ]
}

fn anthropic_call(index: usize, id: &str, name: &str, input: &Value) -> Vec<String> {
    vec![
        anthropic_frame(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})),
        anthropic_frame(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "input_json_delta", "partial_json": input.to_string()}})),
        anthropic_frame(json!({"type": "content_block_stop", "index": index})),
    ]
}

fn anthropic_text(index: usize, text: &str) -> Vec<String> {
    vec![
        anthropic_frame(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}})),
        anthropic_frame(json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}})),
        anthropic_frame(json!({"type": "content_block_stop", "index": index})),
    ]
}

fn anthropic_request(output: &str) -> Request<Full<Bytes>> {
    let body = json!({"max_tokens": 1024, "messages": [
            {"role": "user", "content": "Why did the payment fail?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_bash", "name": "bash", "input": {"cmd": "cat"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_bash", "content": output}]}],
        "model": "claude-sonnet-4-5", "stream": true,
        "tools": [{"name": "bash", "input_schema": {"type": "object"}}]});
    Request::post("https://api.anthropic.com/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-alice")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Anthropic: a continuation that stops before `message_stop` ends in an error event.
#[tokio::test]
async fn anthropic_a_continuation_that_stops_short_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let mut events = vec![anthropic_start("msg_1")];
            events.extend(anthropic_call(0, "toolu_r1", TOOL, &json!({"hash": hash})));
            events.extend(anthropic_end("tool_use"));
            sse_events(&events)
        }
        _ => {
            let mut events = vec![anthropic_start("msg_2")];
            events.push(anthropic_frame(
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            events.push(anthropic_frame(
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Partial "}}),
            ));
            sse_events(&events)
        }
    });
    let (_, text, error) = stream_through_layer(upstream, anthropic_request(&big_log(2_000))).await;
    assert!(error.is_none());
    let last = client_events(&text).pop().unwrap();
    assert_eq!(
        last.event.as_deref(),
        Some("error"),
        "the stream must end with an error event, it ends with: {last:?}\n{text}"
    );
}

fn gemini_chunk(parts: Value, finish: bool) -> String {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    let chunk = json!({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 10,
        "candidatesTokenCount": 2, "totalTokenCount": 12}, "responseId": "r"});
    format!("data: {chunk}\r\n\r\n")
}

fn gemini_request(output: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "Why did the payment fail?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"cmd": "cat"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "bash",
                "response": {"output": output}}}]}
        ],
        "tools": [{"functionDeclarations": [{"name": "bash", "parameters": {"type": "OBJECT"}}]}]
    });
    Request::post("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        .header("content-type", "application/json")
        .header("x-goog-api-key", "AIza-alice")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Gemini: a continuation that stops before its `finishReason` chunk ends in an error chunk.
#[tokio::test]
async fn gemini_a_continuation_that_stops_short_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&[gemini_chunk(
                json!([{"functionCall": {"name": TOOL, "args": {"hash": hash}}}]),
                true,
            )])
        }
        _ => sse_events(&[gemini_chunk(json!([{"text": "Partial "}]), false)]),
    });
    let (_, text, error) = stream_through_layer(upstream, gemini_request(&big_log(2_000))).await;
    assert!(error.is_none());
    let last = client_events(&text).pop().unwrap();
    assert!(
        last.data.starts_with(r#"{"error":"#),
        "the stream must end with an error event, it ends with: {last:?}\n{text}"
    );
}

/// Gemini: a continuation answered 200 `text/event-stream` with an empty body, after a first
/// round that held only our call: the client gets an error chunk, not an empty 200.
#[tokio::test]
async fn gemini_an_empty_continuation_ends_with_an_error_event() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&[gemini_chunk(
                json!([{"functionCall": {"name": TOOL, "args": {"hash": hash}}}]),
                true,
            )])
        }
        _ => sse_events(&[]),
    });
    let (parts, text, error) =
        stream_through_layer(upstream, gemini_request(&big_log(2_000))).await;
    assert_eq!(log.lock().unwrap().len(), 2, "a continuation was sent");
    assert!(error.is_none());
    assert!(
        text.contains(r#"{"error":"#),
        "status {}; the client got {:?} instead of an error event",
        parts.status,
        text
    );
}

// ---------------------------------------------------------------- invariant 3: hostile streams

/// A hostile (or buggy) upstream that opens a new tool call index in every fragment: the
/// filter's work per fragment must not grow with the calls seen so far (it did: 40k indexes
/// took 14 s in a debug build), and every call reaches the client with its index.
#[tokio::test]
async fn many_call_indexes_all_reach_the_client_in_order() {
    let calls = 20_000;
    let mut events = vec![chat_chunk(
        "chatcmpl-1",
        json!({"role": "assistant", "content": null}),
        None,
    )];
    for index in 0..calls {
        events.push(chat_chunk(
            "chatcmpl-1",
            json!({"tool_calls": [{"index": index, "id": format!("c{index}"), "type": "function",
                "function": {"name": "bash", "arguments": "{}"}}]}),
            None,
        ));
    }
    events.push(chat_chunk("chatcmpl-1", json!({}), Some("tool_calls")));
    events.push(DONE.into());
    let expected = events.concat();
    let (upstream, _) = sse_upstream(move |_, _| sse_events(&events));
    let (_, text, _) = stream_through_layer(upstream, chat_request(&big_log(2_000))).await;
    assert_eq!(text, expected, "nothing of ours: every event as it came");
}

// ---------------------------------------------------------------- framing across rounds

/// A first round whose stream ends with an event that has no blank line after it (a `ping` after
/// `message_stop`): it is completed with its blank line, so the continuation's first event is
/// not read as part of it (the SDK would fail on two JSON lines in one event).
#[tokio::test]
async fn anthropic_an_unterminated_last_event_is_completed_before_the_next_round() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let mut events = vec![anthropic_start("msg_1")];
            events.extend(anthropic_call(0, "toolu_r1", TOOL, &json!({"hash": hash})));
            events.extend(anthropic_end("tool_use"));
            events.push("event: ping\ndata: {\"type\": \"ping\"}\n".into());
            sse_events(&events)
        }
        _ => {
            let mut events = vec![anthropic_start("msg_2")];
            events.extend(anthropic_text(0, "Token tok_4242 was declined."));
            events.extend(anthropic_end("end_turn"));
            sse_events(&events)
        }
    });
    let (_, text, _) = stream_through_layer(upstream, anthropic_request(&big_log(2_000))).await;
    for event in client_events(&text) {
        assert!(
            serde_json::from_str::<Value>(&event.data).is_ok(),
            "an event the client cannot read: {event:?}\n{text}"
        );
    }
}

/// Gemini: a chunk with a candidate that is not an object: our call is still taken out of the
/// others (and a chunk that cannot be edited at all is dropped if it may hold our call).
#[tokio::test]
async fn gemini_an_uneditable_chunk_with_our_call_is_dropped() {
    let (upstream, _) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let chunk = json!({"candidates": [
            {"content": {"parts": [{"functionCall": {"name": TOOL, "args": {"hash": hash}}}], "role": "model"},
             "index": 0, "finishReason": "STOP"}, null]});
        sse_events(&[format!("data: {chunk}\r\n\r\n")])
    });
    let (_, text, _) = stream_through_layer(upstream, gemini_request(&big_log(2_000))).await;
    assert!(!text.contains(TOOL), "{text}");
}

// ---------------------------------------------------------------- Chat calls without an index

/// A round as Gemini's OpenAI compatibility endpoint streams it: tool call fragments without
/// `index` (`index` is `with_index` when given: relays that send `"index": null`), the call's
/// thought signature in `extra_content`, arguments in one fragment or split over two, and
/// `finish_reason: "stop"` ending the call turn.
fn index_less_call_round(hash: &str, with_index: Option<Value>, split: bool) -> Vec<String> {
    let arguments = json!({"hash": hash}).to_string();
    let (head, tail) = if split {
        arguments.split_at(arguments.len() / 2)
    } else {
        (arguments.as_str(), "")
    };
    let mut first = json!({"id": "function-call-1", "type": "function",
        "function": {"name": TOOL, "arguments": head},
        "extra_content": {"google": {"thought_signature": "SIG"}}});
    let mut rest = json!({"function": {"arguments": tail}});
    if let Some(index) = &with_index {
        first["index"] = index.clone();
        rest["index"] = index.clone();
    }
    let mut events = vec![chat_chunk(
        "g1",
        json!({"role": "assistant", "tool_calls": [first]}),
        None,
    )];
    if split {
        events.push(chat_chunk("g1", json!({"tool_calls": [rest]}), None));
    }
    events.push(chat_chunk("g1", json!({}), Some("stop")));
    events.push(DONE.into());
    events
}

/// Gemini's OpenAI compatibility endpoint streams calls without `tool_calls[].index` and ends
/// the turn with `finish_reason: "stop"`; some relays send `"index": null`. The retrieval call
/// is assembled all the same: hidden from the client, answered, continued, and its thought
/// signature goes back with it (Gemini 3 refuses a continuation without it).
#[tokio::test]
async fn chat_calls_without_an_index_stay_hidden_and_are_answered() {
    for (with_index, split) in [
        (None, false),
        (None, true),
        (Some(Value::Null), false),
        (Some(Value::Null), true),
    ] {
        let variant = format!("index {with_index:?}, split {split}");
        let (upstream, log) = sse_upstream(move |round, request| match round {
            0 => {
                let hash = marker_hash(request.text()).unwrap();
                sse_events(&index_less_call_round(&hash, with_index.clone(), split))
            }
            _ => sse_events(&chat_text("g2", "Token tok_4242 was declined.")),
        });
        let response = CcrLayer::new()
            .layer(upstream)
            .oneshot(chat_request(&big_log(2_000)))
            .await
            .unwrap();
        let (_, text, error) = read_stream(response).await;
        assert!(error.is_none(), "{variant}");
        assert!(
            !text.contains(TOOL) && !text.contains("function-call-1"),
            "{variant}: the client saw the retrieval call:\n{text}"
        );
        assert!(text.contains("tok_4242"), "{variant}: {text}");
        let log = log.lock().unwrap();
        assert_eq!(
            log.len(),
            2,
            "{variant}: the call was answered and continued"
        );
        let continuation = log[1].json();
        assert_eq!(
            retrieval_answers(&continuation, "function-call-1").len(),
            1,
            "{variant}"
        );
        let call = &continuation["messages"][4]["tool_calls"][0];
        assert_eq!(call["id"], "function-call-1", "{variant}");
        assert_eq!(
            call["extra_content"]["google"]["thought_signature"], "SIG",
            "{variant}: {call}"
        );
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments["hash"].as_str().unwrap().len(), 24, "{variant}");
    }
}

/// Index-less calls of a mixed turn: ours is dropped, the client's fragments (a new id starts
/// a call, a fragment with neither id nor name continues the last one) go out as they came,
/// without an index made up for them, and the turn is not continued.
#[tokio::test]
async fn chat_index_less_client_calls_go_out_as_they_came() {
    let bash_head = json!({"id": "function-call-2", "type": "function",
        "function": {"name": "bash", "arguments": "{\"cmd\":"}});
    let bash_tail = json!({"function": {"arguments": "\"make\"}"}});
    let (upstream, log) = sse_upstream({
        let (bash_head, bash_tail) = (bash_head.clone(), bash_tail.clone());
        move |_, request| {
            let hash = marker_hash(request.text()).unwrap();
            let ours = json!({"id": "function-call-1", "type": "function",
                "function": {"name": TOOL, "arguments": json!({"hash": hash}).to_string()}});
            sse_events(&[
                chat_chunk(
                    "g1",
                    json!({"role": "assistant", "tool_calls": [ours, bash_head]}),
                    None,
                ),
                chat_chunk("g1", json!({"tool_calls": [bash_tail]}), None),
                chat_chunk("g1", json!({}), Some("stop")),
                DONE.into(),
            ])
        }
    });
    let (_, text, error) = stream_through_layer(upstream, chat_request(&big_log(2_000))).await;
    assert!(error.is_none());
    assert!(
        !text.contains(TOOL) && !text.contains("function-call-1"),
        "{text}"
    );
    let fragments: Vec<Value> = client_events(&text)
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(fragments, vec![bash_head, bash_tail], "{text}");
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "a mixed turn is not continued"
    );
}
