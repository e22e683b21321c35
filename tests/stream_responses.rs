//! OpenAI Responses with `stream: true` through the layer: typed events forwarded as they come,
//! retrieval rounds spliced into one response (one `response.created`, one terminal event,
//! `sequence_number` and `output_index` consistent across rounds), failures as error events.
//!
//! The streams the client got are also written to `$CARGO_TARGET_TMPDIR/stream-responses/`, to
//! replay through the official SDK's stream accumulator.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::streaming::*;
use common::*;
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const TOOL: &str = "ccr_retrieve";
const RESPONSES_URL: &str = "https://api.example.com/v1/responses";
const ENCRYPTED: &str = "gAAAAABo-encrypted-reasoning==";

/// The events of one upstream round, built in order: each gets the next `sequence_number`.
struct Round {
    id: String,
    tools: Value,
    events: Vec<String>,
    /// The `output_index` of the next item.
    next_index: u64,
}

impl Round {
    /// A round answering `request`: its start events echo the request's tools, as the API's do.
    fn new(id: &str, request: &Recorded) -> Self {
        let mut round = Self {
            id: id.to_owned(),
            tools: request.json().get("tools").cloned().unwrap_or(json!([])),
            events: Vec::new(),
            next_index: 0,
        };
        let response = round.response("in_progress", json!([]), Value::Null);
        round.push(json!({"type": "response.created", "response": response}));
        round.push(json!({"type": "response.in_progress", "response": response}));
        round
    }

    fn response(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({"id": self.id, "object": "response", "created_at": 1, "status": status,
            "error": null, "incomplete_details": null, "model": "gpt-5", "output": output,
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": self.tools, "usage": usage})
    }

    fn push(&mut self, mut event: Value) {
        event["sequence_number"] = json!(self.events.len());
        let kind = event["type"].as_str().unwrap().to_owned();
        self.events
            .push(format!("event: {kind}\ndata: {event}\n\n"));
    }

    fn reasoning(&mut self) -> Value {
        let index = self.next_index;
        self.next_index += 1;
        let id = format!("rs_{}_{index}", self.id);
        let done =
            json!({"id": id, "type": "reasoning", "summary": [], "encrypted_content": ENCRYPTED});
        self.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"id": id, "type": "reasoning", "summary": []}}),
        );
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": done}),
        );
        done
    }

    fn message(&mut self, text: &str) -> Value {
        let index = self.next_index;
        self.next_index += 1;
        let id = format!("msg_{}_{index}", self.id);
        self.push(json!({"type": "response.output_item.added", "output_index": index,
            "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
        self.push(
            json!({"type": "response.content_part.added", "item_id": id, "output_index": index,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for word in text.split_inclusive(' ') {
            self.push(
                json!({"type": "response.output_text.delta", "item_id": id, "output_index": index,
                "content_index": 0, "delta": word, "logprobs": []}),
            );
        }
        self.push(
            json!({"type": "response.output_text.done", "item_id": id, "output_index": index,
            "content_index": 0, "text": text, "logprobs": []}),
        );
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        self.push(
            json!({"type": "response.content_part.done", "item_id": id, "output_index": index,
            "content_index": 0, "part": part}),
        );
        let done = json!({"id": id, "type": "message", "status": "completed", "role": "assistant",
            "content": [part]});
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": done}),
        );
        done
    }

    fn call(&mut self, call_id: &str, name: &str, arguments: &Value) -> Value {
        let index = self.next_index;
        self.next_index += 1;
        let id = format!("fc_{}_{index}", self.id);
        let arguments = arguments.to_string();
        let (head, tail) = arguments.split_at(arguments.len() / 2);
        self.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"id": id, "type": "function_call", "status": "in_progress", "arguments": "",
                "call_id": call_id, "name": name}}),
        );
        for delta in [head, tail] {
            self.push(
                json!({"type": "response.function_call_arguments.delta", "item_id": id,
                "output_index": index, "delta": delta}),
            );
        }
        self.push(
            json!({"type": "response.function_call_arguments.done", "item_id": id,
            "output_index": index, "arguments": arguments}),
        );
        let done = json!({"id": id, "type": "function_call", "status": "completed",
            "arguments": arguments, "call_id": call_id, "name": name});
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": done}),
        );
        done
    }

    /// `response.completed`: `output` given in full, or `null` (clients rebuild it from the
    /// done items).
    fn completed(mut self, output: Value, input_tokens: u64) -> Vec<String> {
        let usage = json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 4},
            "total_tokens": input_tokens + 10});
        let response = self.response("completed", output, usage);
        self.push(json!({"type": "response.completed", "response": response}));
        self.events
    }
}

/// A streamed request after a call of `bash` whose output is `output`.
fn streaming_body(output: &str, extra: Value) -> String {
    let mut body = json!({"model": "gpt-5", "stream": true, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Why did the payment fail?"}]},
        {"type": "function_call", "id": "fc_0", "call_id": "call_bash", "name": "bash",
            "arguments": "{\"cmd\":\"cat /var/log/app.log\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_bash", "output": output}],
        "tools": [{"type": "function", "name": "bash", "description": "Run a command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}, "strict": false}]});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

fn streaming_request(output: &str) -> http::Request<http_body_util::Full<Bytes>> {
    post(RESPONSES_URL, streaming_body(output, json!({})))
}

/// The data of every event the client got, checking each `event:` line names its type.
fn read_events(text: &str) -> Vec<Value> {
    client_events(text)
        .iter()
        .map(|event| {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(event.event.as_deref(), data["type"].as_str(), "{data}");
            data
        })
        .collect()
}

/// What the SDK's stream accumulator requires of one response: `response.created` first and
/// once, `sequence_number` 0, 1, 2…, each item added once at the next `output_index` and
/// every event of an item after its `added`, at most one terminal event, which ends the stream
/// unless an error event does; and never a trace of the retrieval tool.
fn assert_one_response(events: &[Value]) {
    assert_eq!(events[0]["type"], "response.created");
    let mut added = 0;
    for (sequence, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], sequence, "{event}");
        let kind = event["type"].as_str().unwrap();
        let start = ["response.created", "response.in_progress"];
        if let Some(position) = start.iter().position(|start| *start == kind) {
            assert_eq!(sequence, position, "one start: {event}");
        }
        if kind == "response.output_item.added" {
            assert_eq!(event["output_index"], added, "dense indexes: {event}");
            added += 1;
        } else if let Some(index) = event["output_index"].as_u64() {
            assert!(index < added, "an event of an item not added: {event}");
        }
        if matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed"
        ) {
            assert_eq!(
                sequence,
                events.len() - 1,
                "the terminal event ends the stream"
            );
        }
    }
    let text = serde_json::to_string(events).unwrap();
    assert!(
        !text.contains(TOOL),
        "the client never sees the tool: {text}"
    );
}

/// The text the client reads.
fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect()
}

/// Keeps the client's stream for the SDK check.
fn keep_for_sdk_check(name: &str, text: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream-responses");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.sse")), text).unwrap();
}

/// The function call outputs answering `call_id` in a request's `input`.
fn outputs_for(request: &Value, call_id: &str) -> Vec<String> {
    request["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function_call_output" && item["call_id"] == call_id)
        .map(|item| item["output"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn without_retrieval_events_pass_as_they_came() {
    let (upstream, log) =
        sse_upstream(|_, request| sse(TestBody::chunks([sse_text(request, "resp_1")])));
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-request-id"], "req_stream");
    assert!(error.is_none());
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    let sent = log[0].json();
    assert_eq!(sent["stream"], true);
    assert!(
        marker_hash(log[0].text()).is_some(),
        "the output was compressed"
    );
    assert_eq!(sent["tools"][1]["name"], TOOL);

    let events = read_events(&text);
    assert_one_response(&events);
    assert_eq!(text_of(&events), "The card was declined.");
    // Every event of the message is byte for byte the upstream's; the start and end events
    // lose only our tool from the request's tools they echo.
    let upstream_events = client_events(&sse_text(&log[0], "resp_1"));
    let client = client_events(&text);
    assert_eq!(client.len(), upstream_events.len());
    for (got, sent) in client.iter().zip(&upstream_events) {
        if sent.data.contains(TOOL) {
            let mut expected: Value = serde_json::from_str(&sent.data).unwrap();
            let tools = expected["response"]["tools"].as_array_mut().unwrap();
            tools.retain(|tool| tool["name"] != TOOL);
            assert_eq!(serde_json::from_str::<Value>(&got.data).unwrap(), expected);
        } else {
            assert_eq!(got, sent);
        }
    }
    let end = events.last().unwrap();
    assert_eq!(end["response"]["usage"]["input_tokens"], 900);
    keep_for_sdk_check("no-retrieval", &text);
}

/// The upstream's stream for a plain answer to `request` (as in the test above).
fn sse_text(request: &Recorded, id: &str) -> String {
    let mut round = Round::new(id, request);
    let message = round.message("The card was declined.");
    round.completed(json!([message]), 900).concat()
}

/// Round 0: reasoning, then a retrieval call (with `output` null in `response.completed`, as
/// some servers send it); later rounds: the answer.
fn retrieval_then_answer(round: usize, request: &Recorded) -> http::Response<TestBody> {
    match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let mut first = Round::new("resp_1", request);
            first.reasoning();
            first.call(
                "call_r1",
                TOOL,
                &json!({"hash": hash, "query": "payment refused"}),
            );
            sse_events(&first.completed(Value::Null, 1_000))
        }
        _ => {
            let mut second = Round::new("resp_2", request);
            let message = second.message("Token tok_4242 was declined.");
            sse_events(&second.completed(json!([message]), 300))
        }
    }
}

#[tokio::test]
async fn a_retrieval_is_answered_and_the_continuation_spliced_into_one_response() {
    let (upstream, log) = sse_upstream(retrieval_then_answer);
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let response = service
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    let events = read_events(&text);
    assert_one_response(&events);
    keep_for_sdk_check("retrieval", &text);
    assert_eq!(text_of(&events), "Token tok_4242 was declined.");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done"
        ],
        "the first round's reasoning reaches the client"
    );
    // The message is the client's second item.
    assert_eq!(events[4]["item"]["type"], "message");
    assert_eq!(events[4]["output_index"], 1);
    let end = events.last().unwrap();
    assert_eq!(end["type"], "response.completed");
    assert_eq!(
        end["response"]["id"], "resp_1",
        "one response: the id the stream started with (the SDK's helper checks it)"
    );
    let usage = &end["response"]["usage"];
    assert_eq!(usage["input_tokens"], 1_300, "usage summed over rounds");
    assert_eq!(usage["output_tokens"], 20);
    assert_eq!(usage["total_tokens"], 1_320);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 8);
    let output = end["response"]["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["type"], "message");

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    let continuation = log[1].json();
    assert_eq!(continuation["stream"], true, "the continuation streams too");
    let input = continuation["input"].as_array().unwrap();
    // The client's items, then round 0's output (rebuilt from its done items), then the answer.
    assert_eq!(input.len(), 3 + 2 + 1);
    assert_eq!(input[3]["type"], "reasoning");
    assert_eq!(input[3]["encrypted_content"], ENCRYPTED);
    assert_eq!(input[4]["call_id"], "call_r1");
    assert_eq!(input[4]["name"], TOOL);
    let arguments: Value = serde_json::from_str(input[4]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["query"], "payment refused");
    let answers = outputs_for(&continuation, "call_r1");
    assert!(answers[0].contains("card_declined"), "{}", answers[0]);
    assert_eq!(handle.stats().await.continuation_rounds, 1);
}

#[tokio::test]
async fn a_chained_stream_continues_from_the_rounds_response() {
    let (upstream, log) = sse_upstream(retrieval_then_answer);
    let service = CcrLayer::new().layer(upstream);
    let body = streaming_body(&big_log(2_000), json!({"previous_response_id": "resp_0"}));
    let response = service
        .clone()
        .oneshot(post(RESPONSES_URL, body))
        .await
        .unwrap();
    let (_, text, _) = read_stream(response).await;
    let events = read_events(&text);
    assert_one_response(&events);
    assert_eq!(events.last().unwrap()["response"]["id"], "resp_1");
    let log_now = log.lock().unwrap().clone();
    let continuation = log_now[1].json();
    assert_eq!(continuation["previous_response_id"], "resp_1");
    let input = continuation["input"].as_array().unwrap();
    assert_eq!(input.len(), 1, "only the answer: {input:?}");
    assert_eq!(input[0]["call_id"], "call_r1");

    // The client chains from the id it saw: the request continues the last round, which holds
    // the whole turn (resp_1 upstream ends in an unanswered retrieval call).
    let next = json!({"model": "gpt-5", "stream": true, "previous_response_id": "resp_1",
        "input": [{"role": "user", "content": "Thanks. And the refund?"}]})
    .to_string();
    let response = service
        .clone()
        .oneshot(post(RESPONSES_URL, next.clone()))
        .await
        .unwrap();
    let _ = read_stream(response).await;
    let log_now = log.lock().unwrap().clone();
    let chained = log_now.last().unwrap();
    assert_eq!(chained.json()["previous_response_id"], "resp_2");
    let redirected = next.replace("\"resp_1\"", "\"resp_2\"");
    assert!(
        chained
            .text()
            .starts_with(&redirected[..redirected.len() - 1]),
        "only the id changes, and the tool of the turn stays: {}",
        chained.text()
    );
    assert_eq!(chained.json()["tools"][0]["name"], TOOL);
    // Another tenant's resp_1 is not redirected.
    let mut other = post(RESPONSES_URL, next.clone());
    other
        .headers_mut()
        .insert("authorization", "Bearer sk-someone-else".parse().unwrap());
    let _ = read_stream(service.oneshot(other).await.unwrap()).await;
    assert_eq!(log.lock().unwrap().last().unwrap().text(), next);
}

#[tokio::test]
async fn in_a_mixed_turn_our_call_is_dropped_and_indexes_stay_dense() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut round = Round::new("resp_1", request);
        let ours = round.call("call_ours", TOOL, &json!({"hash": hash}));
        let theirs = round.call(
            "call_bash",
            "bash",
            &json!({"cmd": "grep tok_4242 app.log"}),
        );
        sse_events(&round.completed(json!([ours, theirs]), 500))
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(!text.contains("call_ours"));
    let events = read_events(&text);
    assert_one_response(&events);
    keep_for_sdk_check("mixed", &text);
    let item_events: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("output_index").is_some())
        .collect();
    assert_eq!(item_events.len(), 5);
    assert!(item_events.iter().all(|e| e["output_index"] == 0));
    assert_eq!(item_events[0]["item"]["call_id"], "call_bash");
    let arguments: String = item_events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        arguments,
        json!({"cmd": "grep tok_4242 app.log"}).to_string()
    );
    let output = events.last().unwrap()["response"]["output"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["call_id"], "call_bash");
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "a mixed turn is not continued"
    );
}

/// A server that never names some calls, not even in their done items: they reach the client
/// before the terminal event, in upstream order, at the next dense indexes.
#[tokio::test]
async fn calls_never_named_reach_the_client_in_order_at_dense_indexes() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut round = Round::new("resp_1", request);
        let ours = round.call("call_ours", TOOL, &json!({"hash": hash}));
        let first = round.call("call_first", "", &json!({"cmd": "make"}));
        let second = round.call("call_second", "", &json!({"cmd": "make test"}));
        sse_events(&round.completed(json!([ours, first, second]), 500))
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none());
    assert!(!text.contains("call_ours"));
    let events = read_events(&text);
    assert_one_response(&events);
    keep_for_sdk_check("never-named", &text);
    let added: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .map(|e| {
            (
                e["item"]["call_id"].as_str().unwrap(),
                e["output_index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(added, [("call_first", 0), ("call_second", 1)]);
    assert_eq!(log.lock().unwrap().len(), 1, "the client has calls to run");
}

/// A call the stream never names but the terminal response names ours is answered, and none
/// of its events reach the client.
#[tokio::test]
async fn a_call_named_only_by_the_terminal_response_is_answered_and_hidden() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let mut first = Round::new("resp_1", request);
            first.reasoning();
            let reasoning = json!({"id": "rs_resp_1_0", "type": "reasoning", "summary": [],
                "encrypted_content": ENCRYPTED});
            let arguments = json!({"hash": hash, "query": "payment refused"});
            let mut ours = first.call("call_r1", "", &arguments);
            ours["name"] = json!(TOOL);
            sse_events(&first.completed(json!([reasoning, ours]), 1_000))
        }
        _ => {
            let mut second = Round::new("resp_2", request);
            let message = second.message("Token tok_4242 was declined.");
            sse_events(&second.completed(json!([message]), 300))
        }
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none());
    assert!(
        !text.contains("call_r1"),
        "our call reached the client: {text}"
    );
    let events = read_events(&text);
    assert_one_response(&events);
    keep_for_sdk_check("named-by-the-terminal", &text);
    assert_eq!(text_of(&events), "Token tok_4242 was declined.");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "answered and continued");
    let answers = outputs_for(&log[1].json(), "call_r1");
    assert!(answers[0].contains("card_declined"), "{}", answers[0]);
}

/// The client's error event: the API's `error` event with the SDK's members, and the nested
/// `error` object the Python SDK raises `APIError` on.
fn assert_error_event(event: &Value, message_contains: &str) {
    assert_eq!(event["type"], "error");
    let message = event["message"].as_str().unwrap();
    assert!(message.contains(message_contains), "{message}");
    assert_eq!(event["error"]["message"], message);
    assert!(event["code"].is_string());
    assert!(event.get("param").is_some());
}

#[tokio::test]
async fn a_refused_continuation_ends_the_stream_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => retrieval_then_answer(0, request),
        _ => sse_error(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
    });
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK, "the stream had begun");
    assert!(error.is_none());
    let events = read_events(&text);
    assert_one_response(&events);
    keep_for_sdk_check("refused-continuation", &text);
    assert_eq!(events.len(), 4 + 1);
    assert_error_event(events.last().unwrap(), "429");
    assert_error_event(events.last().unwrap(), "Rate limit reached");
}

#[tokio::test]
async fn a_continuation_that_breaks_or_stops_short_ends_with_an_error_event() {
    for broken in [true, false] {
        let (upstream, _) = sse_upstream(move |round, request| match round {
            0 => retrieval_then_answer(0, request),
            _ => {
                let mut second = Round::new("resp_2", request);
                second.message("Partial answer");
                let events = second.completed(Value::Null, 1)[..5].to_vec();
                if broken {
                    sse(TestBody::broken(events))
                } else {
                    sse_events(&events)
                }
            }
        });
        let service = CcrLayer::new().layer(upstream);
        let response = service
            .oneshot(streaming_request(&big_log(2_000)))
            .await
            .unwrap();
        let (_, text, error) = read_stream(response).await;
        assert!(
            error.is_none(),
            "the client gets an event, not a cut connection"
        );
        let events = read_events(&text);
        assert_one_response(&events);
        assert_eq!(text_of(&events), "Partial ");
        let expected = if broken {
            "connection reset by upstream"
        } else {
            "ended before"
        };
        assert_error_event(events.last().unwrap(), expected);
    }
}

#[tokio::test]
async fn upstream_errors_pass_through() {
    // An error status before the stream: untouched.
    let body = r#"{"error":{"message":"Invalid key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let (upstream, _) = sse_upstream(move |_, _| sse_error(StatusCode::UNAUTHORIZED, body));
    let (parts, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(text, body);

    // An error event inside the stream, after our call began: forwarded as it came (its
    // sequence number already the client's), and the round is not continued.
    let error_event = "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"The server had an error\",\"param\":null,\"sequence_number\":4}\n\n";
    let (upstream, log) = sse_upstream(move |_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut round = Round::new("resp_1", request);
        round.reasoning();
        round.call("call_r1", TOOL, &json!({"hash": hash}));
        let mut events = round.completed(Value::Null, 1);
        events.truncate(6);
        events.push(error_event.into());
        sse_events(&events)
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.ends_with(error_event), "{text}");
    assert_one_response(&read_events(&text));
    assert_eq!(log.lock().unwrap().len(), 1);

    // A first stream that breaks: the client sees the break, as it would without the layer.
    let (upstream, _) = sse_upstream(|_, request| {
        let mut round = Round::new("resp_1", request);
        round.message("Half an answer");
        sse(TestBody::broken(
            round.completed(Value::Null, 1)[..5].to_vec(),
        ))
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.contains("Half "));
    assert!(error.unwrap().contains("connection reset"));
}

#[tokio::test]
async fn events_reach_the_client_before_the_upstream_finishes() {
    let (body, sender) = TestBody::channel();
    let body = std::sync::Mutex::new(Some(body));
    let (upstream, log) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    // The events the upstream would send, rebuilt for the request it got.
    let events = {
        let log = log.lock().unwrap();
        let mut round = Round::new("resp_1", &log[0]);
        round.message("First words arrive early.");
        round.completed(Value::Null, 1)
    };
    // A message's first delta, before anything else of the upstream.
    for event in &events[..5] {
        sender.send(Ok(Bytes::from(event.clone()))).unwrap();
    }
    let mut body = Box::pin(response.into_body());
    let mut received = String::new();
    while !received.contains("\"delta\":\"First \"") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first events come before the upstream ends")
            .unwrap()
            .unwrap();
        received.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
    }
    assert!(received.ends_with(&events[4]), "the delta event as it came");
    assert!(!body.is_end_stream());

    // The client goes away: the upstream body is dropped with it.
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("upstream work stops when the client goes away");
}

/// The client's stream ended with the layer's error event for a round it could not follow
/// past `max_body_bytes`: nothing after it, no terminal event.
fn assert_given_up(events: &[Value]) {
    let last = events.last().unwrap();
    assert_error_event(last, "max_body_bytes");
    assert_eq!(last["code"], "ccr_stream_over_limit");
    assert!(
        events
            .iter()
            .all(|e| e["type"] != "response.completed" && e["type"] != "response.incomplete"),
        "no terminal event after the error"
    );
}

/// Past `max_body_bytes`, a call not named yet (it could have been ours) turns out to be the
/// client's: none of its events went out, so the client gets an error event, its stream ends
/// there, and the upstream body is dropped rather than read to its end.
#[tokio::test]
async fn a_call_named_the_clients_past_the_limit_ends_with_an_error_and_stops_the_upstream() {
    let (body, sender) = TestBody::channel();
    let body = std::sync::Mutex::new(Some(body));
    let (upstream, log) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let response = CcrLayer::new()
        .max_body_bytes(64 * 1024)
        .layer(upstream)
        .oneshot(streaming_request(&big_log(500)))
        .await
        .unwrap();
    let events = {
        let log = log.lock().unwrap();
        let mut round = Round::new("resp_1", &log[0]);
        round.message("Running the tests.");
        round.push(
            json!({"type": "response.output_item.added", "output_index": 1,
            "item": {"id": "fc_1", "type": "function_call", "status": "in_progress",
                "arguments": "", "call_id": "call_1", "name": ""}}),
        );
        for _ in 0..100 {
            round.push(json!({"type": "response.function_call_arguments.delta",
                "item_id": "fc_1", "output_index": 1, "delta": "x".repeat(1_000)}));
        }
        round.push(
            json!({"type": "response.output_item.done", "output_index": 1,
            "item": {"id": "fc_1", "type": "function_call", "status": "completed",
                "arguments": "{}", "call_id": "call_1", "name": "bash"}}),
        );
        round.events
    };
    for event in events {
        sender.send(Ok(Bytes::from(event))).unwrap();
    }
    let mut body = Box::pin(response.into_body());
    let mut received = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stream ends without waiting for the upstream");
        match frame {
            Some(frame) => received.extend_from_slice(&frame.unwrap().into_data().unwrap()),
            None => break,
        }
    }
    let text = String::from_utf8(received).unwrap();
    assert!(!text.contains("fc_1"), "the withheld events stay withheld");
    let events = read_events(&text);
    assert_one_response(&events);
    assert_eq!(text_of(&events), "Running the tests.");
    assert_given_up(&events);
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("the upstream body was dropped");
}

/// Past `max_body_bytes`, a call whose events never name it is the client's unless the
/// terminal response names it ours: the client is told when it is not.
#[tokio::test]
async fn a_call_never_named_past_the_limit_ends_with_an_error_unless_it_is_ours() {
    for name in [Some(TOOL), Some("bash"), None] {
        let (upstream, log) = sse_upstream(move |_, request| {
            let mut round = Round::new("resp_1", request);
            // Their done items go over the limit.
            let first = round.message(&"word ".repeat(8_000));
            let second = round.message(&"word ".repeat(8_000));
            let mut call = round.call("call_1", "", &json!({"cmd": "make"}));
            let output = match name {
                Some(name) => {
                    call["name"] = json!(name);
                    json!([first, second, call])
                }
                None => Value::Null,
            };
            sse_events(&round.completed(output, 500))
        });
        let response = CcrLayer::new()
            .max_body_bytes(64 * 1024)
            .layer(upstream)
            .oneshot(streaming_request(&big_log(500)))
            .await
            .unwrap();
        let (_, text, error) = read_stream(response).await;
        assert!(error.is_none());
        assert!(!text.contains("call_1"), "{name:?}");
        let events = read_events(&text);
        assert_one_response(&events);
        assert!(
            text_of(&events) == "word ".repeat(16_000),
            "the messages went whole"
        );
        if name == Some(TOOL) {
            assert_eq!(events.last().unwrap()["type"], "response.completed");
        } else {
            assert_given_up(&events);
        }
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "over the limit: not continued"
        );
    }
}

/// A server that never sends `output_item.added`: past `max_body_bytes`, however many items
/// came before, every later item's events reach the client.
#[tokio::test]
async fn past_the_limit_items_never_announced_reach_the_client() {
    let (upstream, _) = sse_upstream(|_, request| {
        let mut round = Round::new("resp_1", request);
        for index in 0..40 {
            let id = format!("msg_{index}");
            // The first two items' done items go over the limit.
            let text = if index < 2 {
                "word ".repeat(8_000)
            } else {
                format!("t{index} ")
            };
            round.push(json!({"type": "response.output_text.delta", "item_id": id,
                "output_index": index, "content_index": 0, "delta": text, "logprobs": []}));
            let part = json!({"type": "output_text", "text": text, "annotations": []});
            round.push(
                json!({"type": "response.output_item.done", "output_index": index,
                "item": {"id": id, "type": "message", "status": "completed",
                    "role": "assistant", "content": [part]}}),
            );
        }
        round.push(
            json!({"type": "response.function_call_arguments.delta", "item_id": "fc_40",
            "output_index": 40, "delta": "{}"}),
        );
        round.push(
            json!({"type": "response.output_item.done", "output_index": 40,
            "item": {"id": "fc_40", "type": "function_call", "status": "completed",
                "arguments": "{}", "call_id": "call_40", "name": "bash"}}),
        );
        sse_events(&round.completed(Value::Null, 500))
    });
    let response = CcrLayer::new()
        .max_body_bytes(64 * 1024)
        .layer(upstream)
        .oneshot(streaming_request(&big_log(500)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    let events = read_events(&text);
    for (sequence, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], sequence, "{event}");
    }
    let later: String = (2..40).map(|index| format!("t{index} ")).collect();
    let text = text_of(&events);
    assert_eq!(&text[80_000..], later, "every later item's text");
    assert!(text[..80_000] == "word ".repeat(16_000));
    let call = events
        .iter()
        .filter(|e| e["item_id"] == "fc_40" || e["item"]["id"] == "fc_40")
        .count();
    assert_eq!(call, 2, "the client's call, both its events");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
}

/// Streamed, a made-up id asked for again in a stored mixed turn: the answer the layer keeps
/// for that call (sent when the client chains on the turn) is looked up in the request the
/// exchange started with, not in the continuation that quotes the first refusal.
#[tokio::test]
async fn a_foreign_id_asked_again_in_a_streamed_mixed_turn_stays_unknown() {
    let layer = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .secret("stream-foreign");
    // Another conversation of the same tenant stores an original.
    let (upstream_a, log_a) = sse_upstream(|_, request| {
        let mut round = Round::new("resp_A", request);
        let done = round.message("ok");
        sse_events(&round.completed(json!([done]), 10))
    });
    let response = layer
        .clone()
        .layer(upstream_a)
        .oneshot(streaming_request(&big_log(1_500)))
        .await
        .unwrap();
    let _ = read_stream(response).await;
    let foreign = marker_hash(log_a.lock().unwrap()[0].text()).unwrap();

    let hash = foreign.clone();
    let (upstream_b, log_b) = sse_upstream(move |round, request| {
        let arguments = json!({"hash": hash});
        match round {
            0 => {
                let mut first = Round::new("resp_B0", request);
                let call = first.call("call_1", TOOL, &arguments);
                sse_events(&first.completed(json!([call]), 100))
            }
            _ => {
                let mut second = Round::new("resp_B1", request);
                let ours = second.call("call_2", TOOL, &arguments);
                let theirs = second.call("call_b", "bash", &json!({"cmd": "ls"}));
                sse_events(&second.completed(json!([ours, theirs]), 200))
            }
        }
    });
    let response = layer
        .clone()
        .layer(upstream_b)
        .oneshot(streaming_request(&big_log(1_300)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none(), "{text}");
    assert!(text.contains("call_b") && !text.contains(TOOL), "{text}");
    assert_eq!(log_b.lock().unwrap().len(), 2);

    // The client answers its call, chaining on the id it saw.
    let (upstream_c, log_c) = sse_upstream(|_, request| {
        let mut round = Round::new("resp_C", request);
        let done = round.message("done");
        sse_events(&round.completed(json!([done]), 10))
    });
    let next = json!({"model": "gpt-5", "stream": true, "previous_response_id": "resp_B0",
        "input": [{"type": "function_call_output", "call_id": "call_b", "output": "a.txt"}]});
    let response = layer
        .layer(upstream_c)
        .oneshot(post(RESPONSES_URL, next.to_string()))
        .await
        .unwrap();
    let _ = read_stream(response).await;
    let sent = log_c.lock().unwrap()[0].json();
    assert_eq!(sent["previous_response_id"], "resp_B1", "{sent}");
    let answers = outputs_for(&sent, "call_2");
    assert_eq!(answers.len(), 1, "{sent}");
    assert!(answers[0].contains("is unknown"), "{}", answers[0]);
    assert!(!answers[0].contains("code=card_declined"));
}
