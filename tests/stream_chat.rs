//! Chat Completions with `stream: true` through the layer.

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

fn chunk(id: &str, delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        "usage": null});
    format!("data: {chunk}\n\n")
}

fn usage_chunk(id: &str, prompt: u64, completion: u64) -> String {
    let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 7, "model": "gpt-x",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}});
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

/// A streamed text answer, with a usage chunk.
fn text_stream(id: &str, text: &str, prompt: u64) -> Vec<String> {
    let mut events = vec![chunk(id, json!({"role": "assistant", "content": ""}), None)];
    for word in text.split_inclusive(' ') {
        events.push(chunk(id, json!({"content": word}), None));
    }
    events.push(chunk(id, json!({}), Some("stop")));
    events.push(usage_chunk(id, prompt, 5));
    events.push(DONE.into());
    events
}

/// A streamed turn that calls tools: `(call id, name, arguments)`, arguments in two fragments.
fn calls_stream(id: &str, before: Option<&str>, calls: &[(&str, &str, Value)]) -> Vec<String> {
    let mut events = vec![chunk(
        id,
        json!({"role": "assistant", "content": null}),
        None,
    )];
    if let Some(before) = before {
        events.push(chunk(id, json!({"content": before}), None));
    }
    for (index, (call_id, name, arguments)) in calls.iter().enumerate() {
        let arguments = arguments.to_string();
        let (head, tail) = arguments.split_at(arguments.len() / 2);
        events.push(chunk(
            id,
            json!({"tool_calls": [{"index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        events.push(chunk(
            id,
            json!({"tool_calls": [{"index": index, "function": {"arguments": head}}]}),
            None,
        ));
        events.push(chunk(
            id,
            json!({"tool_calls": [{"index": index, "function": {"arguments": tail}}]}),
            None,
        ));
    }
    events.push(chunk(id, json!({}), Some("tool_calls")));
    events.push(usage_chunk(id, 100, 10));
    events.push(DONE.into());
    events
}

fn streaming_request(output: &str) -> http::Request<http_body_util::Full<Bytes>> {
    post(
        CHAT_URL,
        chat_body(
            conversation(output),
            json!({"stream": true, "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]}),
        ),
    )
}

/// The content the client reads, concatenated, and its chunks' JSON.
fn read_chat(text: &str) -> (String, Vec<Value>) {
    let events = client_events(text);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let content = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (content, chunks)
}

#[tokio::test]
async fn without_retrieval_the_stream_goes_through_byte_identical() {
    let events = text_stream("chatcmpl-1", "The card was declined.", 900);
    let upstream_events = events.clone();
    let (upstream, log) = sse_upstream(move |_, _| sse_events(&upstream_events));
    let service = CcrLayer::new().layer(upstream);
    let original = big_log(2_000);
    let response = service.oneshot(streaming_request(&original)).await.unwrap();
    let (parts, text, error) = read_stream(response).await;
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
    assert_eq!(sent["tools"][1]["function"]["name"], TOOL);
}

#[tokio::test]
async fn a_retrieval_is_answered_and_the_continuation_spliced_into_one_stream() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "chatcmpl-1",
                Some("Let me look. "),
                &[(
                    "call_r1",
                    TOOL,
                    json!({"hash": hash, "query": "payment refused"}),
                )],
            ))
        }
        _ => sse_events(&text_stream(
            "chatcmpl-2",
            "Token tok_4242 was declined.",
            300,
        )),
    });
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let original = big_log(2_000);
    let response = service.oneshot(streaming_request(&original)).await.unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    assert!(
        !text.contains(TOOL),
        "the client never sees the tool: {text}"
    );
    assert_eq!(text.matches("data: [DONE]").count(), 1);
    assert!(text.ends_with(DONE));
    let (content, chunks) = read_chat(&text);
    assert_eq!(content, "Let me look. Token tok_4242 was declined.");
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-1", "one completion: {chunk}");
        assert!(chunk["choices"][0]["delta"].get("tool_calls").is_none());
    }
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("role").is_some())
        .count();
    assert_eq!(roles, 1, "one role, as in one message");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finishes, vec!["stop"]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 400, "usage summed over rounds");
    assert_eq!(usage["completion_tokens"], 15);
    assert_eq!(usage["total_tokens"], 415);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    let continuation = log[1].json();
    assert_eq!(continuation["stream"], true, "the continuation streams too");
    let answers = retrieval_answers(&continuation, "call_r1");
    assert!(answers[0].contains("card_declined"));
    let assistant = &continuation["messages"][4];
    assert_eq!(assistant["content"], "Let me look. ");
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], TOOL);
    let arguments: Value = serde_json::from_str(
        assistant["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments["query"], "payment refused");
    assert_eq!(handle.stats().await.continuation_rounds, 1);
}

#[tokio::test]
async fn in_a_mixed_turn_our_call_is_dropped_and_indexes_stay_dense() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        sse_events(&calls_stream(
            "chatcmpl-1",
            None,
            &[
                ("call_ours", TOOL, json!({"hash": hash})),
                ("call_bash", "bash", json!({"cmd": "grep tok_4242 app.log"})),
            ],
        ))
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(!text.contains(TOOL) && !text.contains("call_ours"));
    let (_, chunks) = read_chat(&text);
    let fragments: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(fragments.len(), 3);
    assert!(fragments.iter().all(|f| f["index"] == 0), "{fragments:?}");
    assert_eq!(fragments[0]["id"], "call_bash");
    let arguments: String = fragments
        .iter()
        .filter_map(|f| f["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        arguments,
        json!({"cmd": "grep tok_4242 app.log"}).to_string()
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    assert_eq!(text.matches("[DONE]").count(), 1);
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "a mixed turn is not continued"
    );
}

#[tokio::test]
async fn a_refused_continuation_ends_the_stream_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "chatcmpl-1",
                None,
                &[("call_r1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse_error(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
    });
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK, "the stream had begun");
    assert!(error.is_none());
    let events = client_events(&text);
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    let message = last["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("429") && message.contains("Rate limit reached"),
        "{message}"
    );
    assert!(!text.contains("[DONE]") && !text.contains(TOOL));
}

#[tokio::test]
async fn a_continuation_that_breaks_mid_stream_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "chatcmpl-1",
                None,
                &[("call_r1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse(TestBody::broken(
            text_stream("chatcmpl-2", "Partial answer", 10)[..2].to_vec(),
        )),
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(
        error.is_none(),
        "the client gets an event, not a cut connection"
    );
    let (content, chunks) = read_chat(&text);
    assert_eq!(content, "Partial ");
    let message = chunks.last().unwrap()["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("connection reset by upstream"),
        "{message}"
    );
}

#[tokio::test]
async fn upstream_errors_pass_through() {
    // An error status before the stream: untouched.
    let body = r#"{"error":{"message":"Invalid key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let (upstream, _) = sse_upstream(move |_, _| sse_error(StatusCode::UNAUTHORIZED, body));
    let (parts, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers["x-request-id"], "req_error");
    assert_eq!(text, body);

    // An error event inside the stream: forwarded as it came, and the round is not continued.
    let error_event = "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let (upstream, log) = sse_upstream(move |_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let mut events = calls_stream(
            "chatcmpl-1",
            None,
            &[("call_r1", TOOL, json!({"hash": hash}))],
        );
        events.truncate(3);
        events.push(error_event.into());
        sse_events(&events)
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.ends_with(error_event), "{text}");
    assert!(!text.contains(TOOL));
    assert_eq!(log.lock().unwrap().len(), 1);

    // A first stream that breaks: the client sees the break, as it would without the layer.
    let (upstream, _) = sse_upstream(|_, _| {
        sse(TestBody::broken(
            text_stream("chatcmpl-1", "Half an answer", 10)[..2].to_vec(),
        ))
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(text.contains("Half "));
    assert!(error.unwrap().contains("connection reset"));
}

#[tokio::test]
async fn any_chunking_of_the_upstream_stream_gives_the_client_the_same_bytes() {
    // A stream with CRLF line ends, a comment, a multi-byte character and a retrieval.
    let layer = CcrLayer::new().min_tokens(200);
    let original = big_log(60);
    let probe = {
        let (upstream, log) = sse_upstream(|_, _| sse_events(&text_stream("c", "x", 1)));
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
        "chatcmpl-1",
        Some("Voilà – "),
        &[("call_r1", TOOL, json!({"hash": probe}))],
    )
    .concat()
    .replace("\n", "\r\n");
    first.insert_str(0, ": keep-alive\r\n\r\n");
    let second = text_stream("chatcmpl-2", "c’est réglé.", 20).concat();
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
    let (content, _) = read_chat(&whole);
    assert_eq!(content, "Voilà – c’est réglé.");
    assert!(whole.starts_with(": keep-alive\r\n\r\n"));
    for at in 1..bytes.len() {
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
    let events = text_stream("chatcmpl-1", "First words arrive early.", 10);
    sender.send(Ok(Bytes::from(events[0].clone()))).unwrap();
    sender.send(Ok(Bytes::from(events[1].clone()))).unwrap();
    let mut body = Box::pin(response.into_body());
    let mut received = Vec::new();
    while received.len() < events[0].len() + events[1].len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first events come before the upstream ends")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(received, (events[0].clone() + &events[1]).into_bytes());

    // The client goes away: the upstream body is dropped with it.
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("upstream work stops when the client goes away");
}

#[tokio::test]
async fn a_client_that_goes_away_during_a_continuation_stops_it() {
    let (body, sender) = TestBody::channel();
    let body = std::sync::Mutex::new(Some(body));
    let (upstream, log) = sse_upstream(move |round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "chatcmpl-1",
                Some("Looking. "),
                &[("call_r1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse(body.lock().unwrap().take().unwrap()),
    });
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let mut body = Box::pin(response.into_body());
    sender
        .send(Ok(Bytes::from(chunk(
            "chatcmpl-2",
            json!({"content": "Still"}),
            None,
        ))))
        .unwrap();
    let mut text = String::new();
    while !text.contains("Still") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
    }
    assert_eq!(log.lock().unwrap().len(), 2);
    assert!(!body.is_end_stream());
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("the continuation's upstream body is dropped");
}

#[tokio::test]
async fn the_streamed_body_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let (upstream, _) = sse_upstream(|_, _| sse_events(&text_stream("c", "ok", 1)));
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    assert_send_sync(response.body());
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(DONE.as_bytes()));
}

/// A retrieval turn with provider fields: Gemini's thought signature on the call, OpenRouter's
/// `reasoning_details` (an array streamed in pieces) and a string member on the delta.
fn turn_with_provider_fields(hash: &str) -> (Vec<String>, Value) {
    let arguments = json!({"hash": hash}).to_string();
    let detail = |text: &str| json!({"type": "reasoning.text", "text": text, "format": "unknown"});
    let events = vec![
        chunk(
            "c1",
            json!({"role": "assistant", "content": null, "reasoning_details": [detail("Look ")]}),
            None,
        ),
        chunk(
            "c1",
            json!({"reasoning_content": "Thinking", "reasoning_details": [detail("it up.")]}),
            None,
        ),
        chunk(
            "c1",
            json!({"tool_calls": [{"index": 0, "id": "call_r1", "type": "function",
                "function": {"name": TOOL, "arguments": arguments},
                "extra_content": {"google": {"thought_signature": "SIG"}}}]}),
            None,
        ),
        chunk("c1", json!({}), Some("tool_calls")),
        DONE.into(),
    ];
    let message = json!({"role": "assistant", "content": null, "reasoning_content": "Thinking",
        "reasoning_details": [detail("Look "), detail("it up.")],
        "tool_calls": [{"id": "call_r1", "type": "function",
            "function": {"name": TOOL, "arguments": arguments},
            "extra_content": {"google": {"thought_signature": "SIG"}}}]});
    (events, message)
}

/// The continuation of a streamed round replays what the model sent as the non-streamed path
/// replays the same turn: provider fields of the call (Gemini 3 refuses a continuation without
/// its thought signature) and non-string members of the delta.
#[tokio::test]
async fn a_streamed_calls_provider_fields_go_back_in_the_continuation() {
    let (streaming, log) = sse_upstream(|round, request| match round {
        0 => sse_events(&turn_with_provider_fields(&marker_hash(request.text()).unwrap()).0),
        _ => sse_events(&text_stream("c2", "Done.", 300)),
    });
    let response = CcrLayer::new()
        .layer(streaming)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none() && !text.contains(TOOL), "{text}");
    let streamed = log.lock().unwrap()[1].json();

    let (not_streaming, log) = upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let message = turn_with_provider_fields(&hash).1;
            json_response(
                StatusCode::OK,
                json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "gpt-x",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]})
                .to_string(),
            )
        }
        _ => answer("Done.", 300),
    });
    let request = post(
        CHAT_URL,
        chat_body(
            conversation(&big_log(2_000)),
            json!({"tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]}),
        ),
    );
    let response = CcrLayer::new()
        .layer(not_streaming)
        .oneshot(request)
        .await
        .unwrap();
    let _ = body_text(response).await;
    let not_streamed = log.lock().unwrap()[1].json();

    let call = &streamed["messages"][4]["tool_calls"][0];
    assert_eq!(call["extra_content"]["google"]["thought_signature"], "SIG");
    // Each layer marks the output with its own hash: the turns differ in it alone.
    let without_arguments = |request: &Value| {
        let mut message = request["messages"][4].clone();
        let arguments = message["tool_calls"][0]["function"]["arguments"].take();
        assert!(arguments.as_str().unwrap().starts_with("{\"hash\":"));
        message
    };
    assert_eq!(
        without_arguments(&streamed),
        without_arguments(&not_streamed),
        "the streamed round's continuation replays the turn as the non-streamed one does"
    );
}

/// Azure OpenAI streams begin with a content filter chunk whose `id`, `model` and `created` are
/// empty: the completion's id is the first real one, and later rounds carry it.
#[tokio::test]
async fn an_azure_content_filter_chunk_does_not_give_the_completion_its_id() {
    let azure_prefix = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n";
    let (upstream, log) = sse_upstream(move |round, request| {
        let mut events = vec![azure_prefix.to_owned()];
        events.extend(match round {
            0 => {
                let hash = marker_hash(request.text()).unwrap();
                calls_stream(
                    "chatcmpl-1",
                    Some("Let me look. "),
                    &[("call_r1", TOOL, json!({"hash": hash}))],
                )
            }
            _ => text_stream("chatcmpl-2", "Token tok_4242 was declined.", 300),
        });
        sse_events(&events)
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none());
    assert_eq!(log.lock().unwrap().len(), 2);
    let (content, chunks) = read_chat(&text);
    assert_eq!(content, "Let me look. Token tok_4242 was declined.");
    for chunk in chunks
        .iter()
        .filter(|c| c["choices"].as_array().is_some_and(|c| !c.is_empty()))
    {
        assert_eq!(chunk["id"], "chatcmpl-1", "one completion: {chunk}");
    }
}

/// Past `max_body_bytes`, a call whose first fragments were dropped (it could have been ours)
/// turns out to be the client's: the client gets an error event, its stream ends there, and
/// the upstream body is dropped rather than read to its end.
#[tokio::test]
async fn a_round_the_filter_gives_up_on_ends_with_an_error_and_stops_the_upstream() {
    let (body, sender) = TestBody::channel();
    let body = std::sync::Mutex::new(Some(body));
    let (upstream, _) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let response = CcrLayer::new()
        .max_body_bytes(64 * 1024)
        .layer(upstream)
        .oneshot(streaming_request(&big_log(500)))
        .await
        .unwrap();
    let send = |event: String| sender.send(Ok(Bytes::from(event))).unwrap();
    send(chunk(
        "c1",
        json!({"role": "assistant", "content": null}),
        None,
    ));
    send(chunk(
        "c1",
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"arguments": ""}}]}),
        None,
    ));
    for _ in 0..100 {
        send(chunk(
            "c1",
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "x".repeat(1_000)}}]}),
            None,
        ));
    }
    send(chunk(
        "c1",
        json!({"tool_calls": [{"index": 0, "function": {"name": "bash"}}]}),
        None,
    ));
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
    assert!(
        text.contains("\"code\":\"ccr_stream_over_limit\""),
        "{text}"
    );
    assert!(!text.contains("xxxx"), "the dropped fragments stay dropped");
    tokio::time::timeout(Duration::from_secs(5), sender.closed())
        .await
        .expect("the upstream body was dropped");
}

/// A retrieval turn of a Mistral reasoning model: `delta.content` comes as lists of
/// `thinking` and `text` chunks of one fragment each, after an empty string; the
/// non-streamed message has one chunk per block.
fn mistral_turn(hash: &str) -> (Vec<String>, Value) {
    let arguments = json!({"hash": hash}).to_string();
    let thinking =
        |text: &str| json!([{"type": "thinking", "thinking": [{"type": "text", "text": text}]}]);
    let text = |text: &str| json!([{"type": "text", "text": text}]);
    let mut events = vec![chunk(
        "m1",
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for piece in [
        thinking("I need"),
        thinking(" the log"),
        text("Let me "),
        text("look."),
    ] {
        events.push(chunk("m1", json!({"content": piece}), None));
    }
    events.push(chunk(
        "m1",
        json!({"tool_calls": [{"index": 0, "id": "call_r1", "type": "function",
            "function": {"name": TOOL, "arguments": arguments}}]}),
        None,
    ));
    events.push(chunk("m1", json!({}), Some("tool_calls")));
    events.push(DONE.into());
    let message = json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "I need the log"}]},
            {"type": "text", "text": "Let me look."}],
        "tool_calls": [{"id": "call_r1", "type": "function",
            "function": {"name": TOOL, "arguments": arguments}}]});
    (events, message)
}

/// The assistant message the layer appended to a continuation, as raw text: a JSON parser
/// would keep one of two members of the same name.
fn appended_assistant(continuation: &str) -> &str {
    let start = continuation.rfind("{\"role\":\"assistant\"").unwrap();
    let message = &continuation[start..];
    &message[..message.find("\"tool_calls\"").unwrap()]
}

/// The continuation of a streamed Mistral round carries one `content`, the one the
/// non-streamed round's continuation carries.
#[tokio::test]
async fn a_streamed_content_of_chunk_lists_goes_back_as_the_non_streamed_one() {
    let (streaming, log) = sse_upstream(|round, request| match round {
        0 => sse_events(&mistral_turn(&marker_hash(request.text()).unwrap()).0),
        _ => sse_events(&text_stream("m2", "Done.", 300)),
    });
    let (_, text, error) =
        stream_through_layer(streaming, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none() && !text.contains(TOOL), "{text}");
    let streamed = log.lock().unwrap()[1].clone();
    assert_eq!(
        appended_assistant(streamed.text())
            .matches("\"content\":")
            .count(),
        1,
        "{}",
        streamed.text()
    );

    let (not_streaming, log) = upstream(|round, request| match round {
        0 => json_response(
            StatusCode::OK,
            json!({"id": "m1", "object": "chat.completion", "created": 7, "model": "gpt-x",
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                    "message": mistral_turn(&marker_hash(request.text()).unwrap()).1}]})
            .to_string(),
        ),
        _ => answer("Done.", 300),
    });
    let request = post(
        CHAT_URL,
        chat_body(
            conversation(&big_log(2_000)),
            json!({"tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]}),
        ),
    );
    let response = CcrLayer::new()
        .layer(not_streaming)
        .oneshot(request)
        .await
        .unwrap();
    let _ = body_text(response).await;
    let not_streamed = log.lock().unwrap()[1].json();
    // Each layer marks the output with its own hash: the turns differ in it alone.
    let content = |request: &Value| request["messages"][4]["content"].clone();
    assert_eq!(content(&streamed.json()), content(&not_streamed));
    assert_eq!(
        content(&not_streamed),
        json!([{"type": "thinking", "thinking": [{"type": "text", "text": "I need the log"}]},
            {"type": "text", "text": "Let me look."}])
    );
}

/// Mistral's reasoning models may stream plain text before or after their content lists:
/// the text goes back as text parts of the one list, merged with the text parts beside it.
#[tokio::test]
async fn content_streamed_as_text_and_as_lists_goes_back_as_one_list() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let mut events = mistral_turn(&marker_hash(request.text()).unwrap()).0;
            events.insert(1, chunk("m1", json!({"content": "Sure. "}), None));
            events.insert(6, chunk("m1", json!({"content": " Now."}), None));
            sse_events(&events)
        }
        _ => sse_events(&text_stream("m2", "Done.", 300)),
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none(), "{text}");
    assert!(!text.contains(TOOL) && !text.contains("call_r1"), "{text}");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "continued");
    assert_eq!(
        appended_assistant(log[1].text())
            .matches("\"content\":")
            .count(),
        1
    );
    // The text parts the layer writes put `type` first, as Mistral does; this test's parts
    // (serde_json's sorted keys) put `text` first, so the two are not merged: the same content.
    assert_eq!(
        log[1].json()["messages"][4]["content"],
        json!([{"type": "text", "text": "Sure. "},
            {"type": "thinking", "thinking": [{"type": "text", "text": "I need the log"}]},
            {"type": "text", "text": "Let me look."},
            {"type": "text", "text": " Now."}])
    );
}

/// Past `max_body_bytes`, a call not named yet is dropped (it could be ours); the round ends
/// without naming it: it was the client's, and the client is told rather than read a turn
/// that ends with `stop` and lacks it.
#[tokio::test]
async fn a_call_never_named_past_the_limit_ends_the_stream_with_an_error() {
    let (upstream, log) = sse_upstream(|_, _| {
        let mut events = vec![
            chunk("c1", json!({"role": "assistant", "content": null}), None),
            chunk(
                "c1",
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"arguments": ""}}]}),
                None,
            ),
        ];
        for _ in 0..100 {
            events.push(chunk(
                "c1",
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "x".repeat(1_000)}}]}),
                None,
            ));
        }
        events.push(chunk("c1", json!({}), Some("tool_calls")));
        events.push(DONE.into());
        sse_events(&events)
    });
    let response = CcrLayer::new()
        .max_body_bytes(64 * 1024)
        .layer(upstream)
        .oneshot(streaming_request(&big_log(500)))
        .await
        .unwrap();
    let (_, text, _) = read_stream(response).await;
    assert!(
        text.contains("\"code\":\"ccr_stream_over_limit\""),
        "{text}"
    );
    assert!(!text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(!text.contains(DONE), "{text}");
    assert_eq!(log.lock().unwrap().len(), 1);
}
