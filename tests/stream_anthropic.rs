//! Anthropic Messages with `stream: true` through the layer.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::streaming::*;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const TOOL: &str = "ccr_retrieve";
const MESSAGES_URL: &str = "https://api.anthropic.com/v1/messages";

/// One event as the API writes it: `event:` named after the data's type.
fn frame(data: &Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

fn message_start(id: &str, input_tokens: u64) -> String {
    frame(
        &json!({"type": "message_start", "message": {"id": id, "type": "message",
        "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1000, "output_tokens": 1, "service_tier": "standard"}}}),
    )
}

fn block_start(index: usize, block: Value) -> String {
    frame(&json!({"type": "content_block_start", "index": index, "content_block": block}))
}

fn block_delta(index: usize, delta: Value) -> String {
    frame(&json!({"type": "content_block_delta", "index": index, "delta": delta}))
}

fn block_stop(index: usize) -> String {
    frame(&json!({"type": "content_block_stop", "index": index}))
}

const PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// A text block streamed word by word.
fn text_block(index: usize, text: &str) -> Vec<String> {
    let mut events = vec![block_start(index, json!({"type": "text", "text": ""}))];
    for word in text.split_inclusive(' ') {
        events.push(block_delta(
            index,
            json!({"type": "text_delta", "text": word}),
        ));
    }
    events.push(block_stop(index));
    events
}

fn thinking_block(index: usize, thinking: &str, signature: &str) -> Vec<String> {
    vec![
        block_start(
            index,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ),
        block_delta(
            index,
            json!({"type": "thinking_delta", "thinking": thinking}),
        ),
        block_delta(
            index,
            json!({"type": "signature_delta", "signature": signature}),
        ),
        block_stop(index),
    ]
}

/// A `tool_use` block whose input streams in two pieces.
fn call_block(index: usize, id: &str, name: &str, input: &Value) -> Vec<String> {
    let input = input.to_string();
    let (head, tail) = input.split_at(input.len() / 2);
    vec![
        block_start(
            index,
            json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
        ),
        block_delta(
            index,
            json!({"type": "input_json_delta", "partial_json": ""}),
        ),
        block_delta(
            index,
            json!({"type": "input_json_delta", "partial_json": head}),
        ),
        block_delta(
            index,
            json!({"type": "input_json_delta", "partial_json": tail}),
        ),
        block_stop(index),
    ]
}

fn ending(stop_reason: &str, output_tokens: u64) -> Vec<String> {
    vec![
        frame(&json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}})),
        frame(&json!({"type": "message_stop"})),
    ]
}

/// A streamed text answer.
fn text_stream(id: &str, text: &str, input_tokens: u64) -> Vec<String> {
    let mut events = vec![message_start(id, input_tokens), PING.to_owned()];
    events.extend(text_block(0, text));
    events.extend(ending("end_turn", 5));
    events
}

/// A streamed turn that calls tools, `(id, name, input)`, after thinking and optional text.
fn calls_stream(id: &str, before: Option<&str>, calls: &[(&str, &str, Value)]) -> Vec<String> {
    let mut events = vec![message_start(id, 100)];
    events.extend(thinking_block(0, "I need the log.", "EqQBCkgIARAB/sig+=="));
    let mut index = 1;
    if let Some(before) = before {
        events.extend(text_block(index, before));
        index += 1;
    }
    for (call_id, name, input) in calls {
        events.extend(call_block(index, call_id, name, input));
        index += 1;
    }
    events.extend(ending("tool_use", 10));
    events
}

fn client_tools() -> Value {
    json!([{"name": "bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}])
}

fn streaming_request(output: &str) -> Request<Full<Bytes>> {
    let body = json!({"max_tokens": 1024, "messages": [
            {"role": "user", "content": "Why did the payment fail?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_bash", "name": "bash", "input": {"cmd": "cat /var/log/app.log"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_bash", "content": output}]}],
        "model": "claude-sonnet-4-5", "stream": true, "tools": client_tools()});
    Request::post(MESSAGES_URL)
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-alice")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The message the SDK's `MessageStream` accumulates from a stream (`accumulate_event` of
/// anthropic 2.12), failing where it would fail or would drop an event. Also returns the
/// names of the events, and `Err` with the data of an error event, which the SDK raises.
fn accumulate(text: &str) -> (Result<Value, String>, Vec<String>) {
    let mut message: Option<Value> = None;
    let mut json_buffers: HashMap<usize, String> = HashMap::new();
    let mut names = Vec::new();
    for event in client_events(text) {
        let name = event.event.expect("the SDK drops events without a name");
        names.push(name.clone());
        if name == "ping" {
            continue;
        }
        if name == "error" {
            return (Err(event.data), names);
        }
        assert!(
            !names[..names.len() - 1].contains(&"message_stop".to_owned()),
            "{name} after message_stop"
        );
        let data: Value = serde_json::from_str(&event.data).unwrap();
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
                let append = |block: &mut Value, key: &str| {
                    let text = block[key].as_str().unwrap().to_owned();
                    block[key] = json!(text + delta[key].as_str().unwrap());
                };
                match delta["type"].as_str().unwrap() {
                    "text_delta" => append(block, "text"),
                    "thinking_delta" => append(block, "thinking"),
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    "input_json_delta" => {
                        let buffer = json_buffers.entry(index).or_default();
                        buffer.push_str(delta["partial_json"].as_str().unwrap());
                        if !buffer.is_empty() {
                            block["input"] = serde_json::from_str(buffer).unwrap_or(Value::Null);
                        }
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
            "message_stop" => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    (Ok(message.unwrap()), names)
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// The `tool_result` blocks answering `tool_use_id` in a request.
fn results_for(request: &Value, tool_use_id: &str) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user" && m["content"].is_array())
        .flat_map(|m| m["content"].as_array().unwrap().clone())
        .filter(|b| b["type"] == "tool_result" && b["tool_use_id"] == tool_use_id)
        .collect()
}

#[tokio::test]
async fn without_retrieval_the_stream_goes_through_byte_identical() {
    let events = text_stream("msg_01", "The card was declined.", 900);
    let upstream_events = events.clone();
    let (upstream, log) = sse_upstream(move |_, _| sse_events(&upstream_events));
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-request-id"], "req_stream");
    assert!(error.is_none());
    assert_eq!(text, events.concat());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    let sent = log[0].json();
    assert_eq!(sent["stream"], true);
    assert!(
        marker_hash(log[0].text()).is_some(),
        "the output was compressed"
    );
    assert_eq!(sent["tools"][1]["name"], TOOL);
}

#[tokio::test]
async fn a_retrieval_is_answered_and_the_continuation_spliced_into_one_stream() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "msg_01",
                Some("Let me look. "),
                &[(
                    "toolu_r1",
                    TOOL,
                    json!({"hash": hash, "query": "payment refused"}),
                )],
            ))
        }
        _ => sse_events(&text_stream("msg_02", "Token tok_4242 was declined.", 300)),
    });
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let response = service
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    assert!(
        !text.contains(TOOL) && !text.contains("toolu_r1"),
        "the client never sees the tool: {text}"
    );
    let (message, names) = accumulate(&text);
    let message = message.unwrap();
    assert_eq!(count(&names, "message_start"), 1);
    assert_eq!(count(&names, "message_delta"), 1);
    assert_eq!(count(&names, "message_stop"), 1);
    assert_eq!(count(&names, "ping"), 1, "pings go on");
    assert_eq!(message["id"], "msg_01", "one message");
    assert_eq!(
        message["content"],
        json!([
            {"type": "thinking", "thinking": "I need the log.", "signature": "EqQBCkgIARAB/sig+=="},
            {"type": "text", "text": "Let me look. "},
            {"type": "text", "text": "Token tok_4242 was declined."}
        ])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 400, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 2000, "output_tokens": 15, "service_tier": "standard"}),
        "usage summed over rounds"
    );

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    let continuation = log[1].json();
    assert_eq!(continuation["stream"], true, "the continuation streams too");
    let answers = results_for(&continuation, "toolu_r1");
    assert!(
        answers[0]["content"]
            .as_str()
            .unwrap()
            .contains("card_declined")
    );
    // The model's turn comes back as it was streamed: thinking signed, input whole.
    let assistant = &continuation["messages"][3];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["content"][0],
        json!({"type": "thinking", "thinking": "I need the log.", "signature": "EqQBCkgIARAB/sig+=="})
    );
    assert_eq!(assistant["content"][1]["text"], "Let me look. ");
    assert_eq!(assistant["content"][2]["id"], "toolu_r1");
    assert_eq!(assistant["content"][2]["input"]["query"], "payment refused");
    assert_eq!(continuation["tools"][1]["name"], TOOL);
    assert_eq!(handle.stats().await.continuation_rounds, 1);
}

#[tokio::test]
async fn in_a_mixed_turn_our_call_is_dropped_and_indexes_stay_dense() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        sse_events(&calls_stream(
            "msg_01",
            None,
            &[
                ("toolu_ours", TOOL, json!({"hash": hash})),
                (
                    "toolu_bash",
                    "bash",
                    json!({"cmd": "grep tok_4242 app.log"}),
                ),
            ],
        ))
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(!text.contains(TOOL) && !text.contains("toolu_ours"));
    let (message, _) = accumulate(&text);
    let message = message.unwrap();
    let content = message["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(
        content[1],
        json!({"type": "tool_use", "id": "toolu_bash", "name": "bash",
            "input": {"cmd": "grep tok_4242 app.log"}})
    );
    assert_eq!(
        message["stop_reason"], "tool_use",
        "the client's call is left"
    );
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "a mixed turn is not continued"
    );
}

#[tokio::test]
async fn a_last_round_that_still_retrieves_ends_the_turn_without_the_call() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash =
            marker_hash(request.text()).unwrap_or_else(|| "0123456789abcdef01234567".to_owned());
        sse_events(&calls_stream(
            "msg_01",
            Some("Looking. "),
            &[("toolu_again", TOOL, json!({"hash": hash}))],
        ))
    });
    let service = CcrLayer::new().max_rounds(1).layer(upstream);
    let response = service
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let (_, text, _) = read_stream(response).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].json()["tool_choice"], json!({"type": "none"}));
    assert!(!text.contains(TOOL));
    let (message, names) = accumulate(&text);
    let message = message.unwrap();
    assert_eq!(count(&names, "message_start"), 1);
    let texts: Vec<&str> = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| block["text"].as_str())
        .collect();
    assert_eq!(texts, ["Looking. ", "Looking. "]);
    assert_eq!(message["content"].as_array().unwrap().len(), 4);
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 200);
}

#[tokio::test]
async fn a_refused_continuation_ends_the_stream_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "msg_01",
                Some("Let me look. "),
                &[("toolu_r1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse_error(
            StatusCode::from_u16(529).unwrap(),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
        ),
    });
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK, "the stream had begun");
    assert!(error.is_none());
    let (raised, names) = accumulate(&text);
    let raised: Value = serde_json::from_str(&raised.unwrap_err()).unwrap();
    assert_eq!(raised["type"], "error");
    assert_eq!(raised["error"]["type"], "api_error");
    let message = raised["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("529") && message.contains("Overloaded"),
        "{message}"
    );
    assert_eq!(names.last().unwrap(), "error", "nothing after it");
    assert_eq!(count(&names, "message_delta"), 0);
    assert!(!text.contains(TOOL));
    assert!(text.ends_with("\n\n"));
}

#[tokio::test]
async fn a_continuation_that_breaks_mid_stream_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "msg_01",
                None,
                &[("toolu_r1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse(TestBody::broken(
            text_stream("msg_02", "Partial answer", 10)[..4].to_vec(),
        )),
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(
        error.is_none(),
        "the client gets an event, not a cut connection"
    );
    let (raised, names) = accumulate(&text);
    let raised: Value = serde_json::from_str(&raised.unwrap_err()).unwrap();
    let message = raised["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("connection reset by upstream"),
        "{message}"
    );
    // What came of the continuation before it broke, under the next index.
    assert!(
        text.contains(r#""index":1,"type":"content_block_delta""#),
        "{text}"
    );
    assert_eq!(count(&names, "message_start"), 1);
}

#[tokio::test]
async fn upstream_errors_pass_through() {
    // An error status before the stream: untouched.
    let body = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_1"}"#;
    let (upstream, _) = sse_upstream(move |_, _| sse_error(StatusCode::UNAUTHORIZED, body));
    let (parts, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers["x-request-id"], "req_error");
    assert_eq!(text, body);

    // An error event inside the stream: forwarded as it came, and the round is not continued
    // (nor ended by the layer).
    let error_event = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (upstream, log) = sse_upstream(move |_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut events = calls_stream(
            "msg_01",
            Some("Let me look. "),
            &[("toolu_r1", TOOL, json!({"hash": hash}))],
        );
        // The thinking and text blocks, our call's start and first delta, then the error.
        events.truncate(12);
        events.push(error_event.into());
        sse_events(&events)
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.ends_with(error_event), "{text}");
    assert!(!text.contains(TOOL));
    let (raised, _) = accumulate(&text);
    assert!(raised.unwrap_err().contains("overloaded_error"));
    assert_eq!(log.lock().unwrap().len(), 1);

    // A first stream that breaks: the client sees the break, as it would without the layer.
    let (upstream, _) = sse_upstream(|_, _| {
        sse(TestBody::broken(
            text_stream("msg_01", "Half an answer", 10)[..4].to_vec(),
        ))
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.contains("Half "));
    assert!(error.unwrap().contains("connection reset"));
}

#[tokio::test]
async fn a_round_over_max_body_bytes_is_not_continued_and_ends_cleanly() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let long = "word ".repeat(3_000);
        sse_events(&calls_stream(
            "msg_01",
            Some(&long),
            &[("toolu_r1", TOOL, json!({"hash": hash}))],
        ))
    });
    let service = CcrLayer::new().max_body_bytes(20_000).layer(upstream);
    let response = service
        .oneshot(streaming_request(&big_log(150)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    assert_eq!(log.lock().unwrap().len(), 1, "not continued");
    assert!(!text.contains(TOOL));
    let (message, _) = accumulate(&text);
    let message = message.unwrap();
    assert_eq!(message["content"].as_array().unwrap().len(), 2);
    assert_eq!(message["stop_reason"], "end_turn");
}

/// A round of thousands of blocks over `max_body_bytes`: the filter remembers only the latest
/// blocks, and still drops every call of ours and numbers the client's blocks densely.
#[tokio::test]
async fn a_round_of_many_blocks_over_max_body_bytes_still_hides_our_calls() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut events = vec![message_start("msg_01", 100)];
        for index in 0..3_000 {
            if index % 2 == 0 {
                events.extend(text_block(index, "Still looking. "));
            } else {
                let id = format!("toolu_r{index}");
                events.extend(call_block(index, &id, TOOL, &json!({"hash": hash})));
            }
        }
        events.extend(ending("tool_use", 10));
        sse_events(&events)
    });
    let service = CcrLayer::new().max_body_bytes(20_000).layer(upstream);
    let response = service
        .oneshot(streaming_request(&big_log(150)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    assert_eq!(log.lock().unwrap().len(), 1, "not continued");
    assert!(!text.contains(TOOL) && !text.contains("toolu_r"));
    let (message, _) = accumulate(&text);
    let message = message.unwrap();
    assert_eq!(message["content"].as_array().unwrap().len(), 1_500);
    assert_eq!(message["stop_reason"], "end_turn");
}

#[tokio::test]
async fn any_chunking_of_the_upstream_stream_gives_the_client_the_same_bytes() {
    // A stream with CRLF line ends, a comment, multi-byte characters and a retrieval.
    let layer = CcrLayer::new().min_tokens(200);
    let original = big_log(60);
    let probe = {
        let (upstream, log) = sse_upstream(|_, _| sse_events(&text_stream("m", "x", 1)));
        let _ = read_stream(
            layer
                .clone()
                .layer(upstream)
                .oneshot(streaming_request(&original))
                .await
                .unwrap(),
        )
        .await;
        let sent = log.lock().unwrap()[0].text().to_owned();
        marker_hash(&sent).unwrap()
    };
    let mut first = calls_stream(
        "msg_01",
        Some("Voilà – "),
        &[("toolu_r1", TOOL, json!({"hash": probe}))],
    )
    .concat()
    .replace('\n', "\r\n");
    first.insert_str(0, ": keep-alive\r\n\r\n");
    let second = text_stream("msg_02", "c’est réglé.", 20).concat();
    let run = |chunks: Vec<Bytes>| {
        let layer = layer.clone();
        let original = original.clone();
        let second = second.clone();
        async move {
            let chunks = std::sync::Mutex::new(Some(chunks));
            let (upstream, _) = sse_upstream(move |round, _| match round {
                0 => sse(TestBody::chunks(chunks.lock().unwrap().take().unwrap())),
                _ => sse_events(std::slice::from_ref(&second)),
            });
            let response = layer
                .layer(upstream)
                .oneshot(streaming_request(&original))
                .await
                .unwrap();
            read_stream(response).await.1
        }
    };
    let bytes = Bytes::from(first);
    let whole = run(vec![bytes.clone()]).await;
    let (message, _) = accumulate(&whole);
    let texts: Vec<String> = message.unwrap()["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| block["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts, ["Voilà – ", "c’est réglé."]);
    assert!(whole.starts_with(": keep-alive\r\n\r\n"));
    for at in (1..bytes.len()).step_by(7) {
        let split = run(vec![bytes.slice(..at), bytes.slice(at..)]).await;
        assert_eq!(split, whole, "split at byte {at}");
    }
    let singles = run((0..bytes.len()).map(|i| bytes.slice(i..i + 1)).collect()).await;
    assert_eq!(singles, whole, "one byte per chunk");
}

#[tokio::test]
async fn events_reach_the_client_before_the_upstream_finishes() {
    let (body, sender) = TestBody::channel();
    let body = std::sync::Mutex::new(Some(body));
    let (upstream, _) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let events = text_stream("msg_01", "First words arrive early.", 10);
    let early = events[..4].concat();
    for event in &events[..4] {
        sender.send(Ok(Bytes::from(event.clone()))).unwrap();
    }
    let mut body = Box::pin(response.into_body());
    let mut received = Vec::new();
    while received.len() < early.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first events come before the upstream ends")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(received, early.into_bytes());
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("upstream work stops when the client goes away");
}
