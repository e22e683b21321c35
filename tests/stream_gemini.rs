//! Gemini `streamGenerateContent?alt=sse` through the layer, against a scripted upstream that
//! streams in the shape the Gemini API uses: one whole `GenerateContentResponse` per `data:`
//! event, function calls whole, `finishReason` on the last chunk, CRLF line ends.

mod common;

use bytes::Bytes;
use common::streaming::*;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const TOOL: &str = "ccr_retrieve";
const STREAM_URL: &str = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
const SIGNATURE: &str = "CiQBcsjafE2bYWxsIHlvdXIgYmFzZQ==";

/// A POST with the API key in `x-goog-api-key`, as google-genai sends it.
fn gemini_post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-goog-api-key", "AIza-test-alice")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A conversation whose `bash` output is `output`, with the tools a client declares.
fn streaming_request(output: &str) -> Request<Full<Bytes>> {
    request_to(STREAM_URL, output)
}

fn request_to(url: &str, output: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "Why did the payment fail?"}]},
            {"role": "model", "parts": [{"functionCall": {"id": "call_bash", "name": "bash",
                "args": {"cmd": "cat /var/log/app.log"}}, "thoughtSignature": SIGNATURE}]},
            {"role": "user", "parts": [{"functionResponse": {"id": "call_bash", "name": "bash",
                "response": {"output": output, "exit_code": 0}}}]}
        ],
        "tools": [{"functionDeclarations": [{"name": "bash", "description": "Run a command",
            "parameters": {"type": "OBJECT", "properties": {"cmd": {"type": "STRING"}}}}]}],
        "generationConfig": {"temperature": 0.2}
    });
    gemini_post(url, body.to_string())
}

/// One chunk as the API streams it: `parts` of the first candidate, `finishReason` on the last.
fn chunk(parts: Value, finish: bool, usage: Value, response_id: &str) -> String {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if finish {
        candidate["finishReason"] = json!("STOP");
    }
    let chunk = json!({"candidates": [candidate], "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash", "responseId": response_id});
    format!("data: {chunk}\r\n\r\n")
}

/// The running usage of a round: the prompt, then what the model has written so far.
fn usage(prompt: u64, candidates: u64) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]})
}

/// A streamed text answer, word by word.
fn text_stream(id: &str, text: &str, prompt: u64) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    words
        .iter()
        .enumerate()
        .map(|(index, word)| {
            let last = index + 1 == words.len();
            chunk(
                json!([{"text": word}]),
                last,
                usage(prompt, index as u64 + 1),
                id,
            )
        })
        .collect()
}

/// A streamed turn that thinks, maybe says `before`, then calls functions (`(id, name, args)`,
/// the first call signed, as the API signs parallel calls), all calls in the last chunk.
fn calls_stream(id: &str, before: Option<&str>, calls: &[(&str, &str, Value)]) -> Vec<String> {
    let mut events = vec![chunk(
        json!([{"text": "I should look at the log.", "thought": true}]),
        false,
        usage(100, 0),
        id,
    )];
    if let Some(before) = before {
        events.push(chunk(json!([{"text": before}]), false, usage(100, 3), id));
    }
    let parts: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, (call_id, name, args))| {
            let mut part = json!({"functionCall": {"name": name, "args": args, "id": call_id}});
            if index == 0 {
                part["thoughtSignature"] = json!(SIGNATURE);
            }
            part
        })
        .collect();
    events.push(chunk(Value::Array(parts), true, usage(100, 10), id));
    events
}

/// The text the client reads (thoughts apart) and its chunks' JSON.
fn read_gemini(text: &str) -> (String, Vec<Value>) {
    let chunks: Vec<Value> = client_events(text)
        .iter()
        .map(|event| serde_json::from_str(&event.data).unwrap())
        .collect();
    let content = chunks
        .iter()
        .filter_map(|chunk| chunk["candidates"][0]["content"]["parts"].as_array())
        .flatten()
        .filter(|part| part.get("thought").is_none())
        .filter_map(|part| part["text"].as_str())
        .collect();
    (content, chunks)
}

/// The `(id, output)` of every function response named `name` in a request.
fn function_outputs(request: &Value, name: &str) -> Vec<(Option<String>, String)> {
    request["contents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|content| content["parts"].as_array())
        .flatten()
        .filter_map(|part| part.get("functionResponse"))
        .filter(|response| response["name"] == name)
        .map(|response| {
            (
                response["id"].as_str().map(str::to_owned),
                response["response"]["output"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn without_retrieval_the_stream_goes_through_byte_identical() {
    let mut events = text_stream("r1", "The card was declined.", 900);
    events.insert(0, ": keep-alive\r\n\r\n".into());
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
    assert!(
        marker_hash(log[0].text()).is_some(),
        "the output was compressed"
    );
    let sent = log[0].json();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][1]["name"], TOOL,
        "the tool joins the client's declarations"
    );
}

#[tokio::test]
async fn a_retrieval_is_answered_and_the_continuation_spliced_into_one_stream() {
    let (upstream, log) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "r1",
                Some("Let me look. "),
                &[(
                    "fc-1",
                    TOOL,
                    json!({"hash": hash, "query": "payment refused"}),
                )],
            ))
        }
        _ => sse_events(&text_stream("r2", "Token tok_4242 was declined.", 300)),
    });
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let response = layer
        .layer(upstream)
        .oneshot(streaming_request(&big_log(2_000)))
        .await
        .unwrap();
    let (_, text, error) = read_stream(response).await;
    assert!(error.is_none());
    assert!(
        !text.contains(TOOL),
        "the client never sees the tool: {text}"
    );
    assert!(
        !text.contains(SIGNATURE),
        "our call's signature goes with it"
    );
    let (content, chunks) = read_gemini(&text);
    assert_eq!(content, "Let me look. Token tok_4242 was declined.");
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["candidates"][0].get("finishReason"))
        .collect();
    assert_eq!(finishes, [&json!("STOP")], "one end");
    for chunk in &chunks {
        let parts = chunk["candidates"][0]["content"]["parts"]
            .as_array()
            .unwrap();
        assert!(!parts.is_empty(), "every chunk has parts: {chunk}");
    }
    // Usage: the continuation's counts plus the retrieval round's.
    let last = &chunks.last().unwrap()["usageMetadata"];
    assert_eq!(last["promptTokenCount"], 400);
    assert_eq!(last["candidatesTokenCount"], 14);
    assert_eq!(last["totalTokenCount"], 414);
    assert_eq!(last["promptTokensDetails"][0]["tokenCount"], 400);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    let continuation = log[1].json();
    // The model's turn, replayed: the thought, the text, the call with its signature.
    let model_turn = &continuation["contents"][3];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(
        model_turn["parts"][0],
        json!({"text": "I should look at the log.", "thought": true})
    );
    assert_eq!(model_turn["parts"][1], json!({"text": "Let me look. "}));
    assert_eq!(model_turn["parts"][2]["functionCall"]["name"], TOOL);
    assert_eq!(model_turn["parts"][2]["functionCall"]["id"], "fc-1");
    assert_eq!(model_turn["parts"][2]["thoughtSignature"], SIGNATURE);
    let answers = function_outputs(&continuation, TOOL);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0.as_deref(), Some("fc-1"));
    assert!(answers[0].1.contains("card_declined"));
    // The rest of the request is as the first round sent it (tools included).
    assert_eq!(continuation["tools"], log[0].json()["tools"]);
    assert_eq!(handle.stats().await.continuation_rounds, 1);
}

#[tokio::test]
async fn in_a_mixed_turn_our_call_is_dropped_and_the_signature_moves() {
    let (upstream, log) = sse_upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        sse_events(&calls_stream(
            "r1",
            None,
            &[
                ("fc-ours", TOOL, json!({"hash": hash})),
                ("fc-bash", "bash", json!({"cmd": "grep tok_4242 app.log"})),
            ],
        ))
    });
    let (_, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(!text.contains(TOOL) && !text.contains("fc-ours"), "{text}");
    let (_, chunks) = read_gemini(&text);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["candidates"][0]["content"]["parts"].as_array())
        .flatten()
        .filter(|part| part.get("functionCall").is_some())
        .collect();
    assert_eq!(
        calls,
        [
            &json!({"functionCall": {"name": "bash", "args": {"cmd": "grep tok_4242 app.log"},
            "id": "fc-bash"}, "thoughtSignature": SIGNATURE})
        ],
        "Gemini 3 wants the signature on the first call that stays"
    );
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );
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
                "r1",
                None,
                &[("fc-1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse_error(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
    });
    let (parts, text, error) =
        stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::OK, "the stream had begun");
    assert!(error.is_none());
    assert!(!text.contains(TOOL));
    let (_, chunks) = read_gemini(&text);
    let last = chunks.last().unwrap();
    // google-genai raises a chunk whose JSON starts with `{"error":` (ServerError for 5xx).
    assert!(
        client_events(&text)
            .last()
            .unwrap()
            .data
            .starts_with(r#"{"error":{"code":500,"#)
    );
    assert_eq!(last["error"]["status"], "INTERNAL");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("429") && message.contains("Resource has been exhausted"),
        "{message}"
    );
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["candidates"][0].get("finishReason").is_none()),
        "no end before the error"
    );
}

#[tokio::test]
async fn a_continuation_that_breaks_mid_stream_ends_with_an_error_event() {
    let (upstream, _) = sse_upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            sse_events(&calls_stream(
                "r1",
                None,
                &[("fc-1", TOOL, json!({"hash": hash}))],
            ))
        }
        _ => sse(TestBody::broken(
            text_stream("r2", "Partial answer here", 10)[..2].to_vec(),
        )),
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(
        error.is_none(),
        "the client gets an event, not a cut connection"
    );
    let (content, chunks) = read_gemini(&text);
    assert_eq!(content, "Partial answer ");
    let message = chunks.last().unwrap()["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("connection reset by upstream"),
        "{message}"
    );
}

#[tokio::test]
async fn an_error_event_in_the_stream_is_forwarded_and_not_continued() {
    let error_event = "data: {\"error\": {\"code\": 500,\"message\": \"An internal error has occurred.\",\"status\": \"INTERNAL\"}}\r\n\r\n";
    let (upstream, log) = sse_upstream(move |_, _| {
        let mut events = text_stream("r1", "Half an answer", 10);
        events.truncate(1);
        events.push(error_event.into());
        sse_events(&events)
    });
    let (_, text, error) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert!(error.is_none());
    assert!(text.starts_with("data: {\"candidates\""));
    assert!(text.ends_with(error_event), "{text}");
    assert_eq!(log.lock().unwrap().len(), 1);

    // An error status before the stream: untouched.
    let body =
        r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#;
    let (upstream, _) = sse_upstream(move |_, _| sse_error(StatusCode::BAD_REQUEST, body));
    let (parts, text, _) = stream_through_layer(upstream, streaming_request(&big_log(2_000))).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(text, body);
}

#[tokio::test]
async fn a_stream_without_alt_sse_passes_through_untouched() {
    // Without `alt=sse` the answer is one JSON array in pieces: the layer leaves it alone.
    let url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let request = request_to(url, &big_log(2_000));
    let body = http_body_util::BodyExt::collect(request.body().clone())
        .await
        .unwrap()
        .to_bytes();
    let (upstream, log) = sse_upstream(|_, _| sse_events(&text_stream("r1", "ok", 1)));
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(request)
        .await
        .unwrap();
    let _ = read_stream(response).await;
    assert_eq!(log.lock().unwrap()[0].body, body);
}

#[tokio::test]
async fn any_chunking_of_the_upstream_stream_gives_the_client_the_same_bytes() {
    // CRLF line ends, a comment, multi-byte characters and a retrieval.
    let layer = CcrLayer::new().min_tokens(200);
    let original = big_log(60);
    let probe = {
        let (upstream, log) = sse_upstream(|_, _| sse_events(&text_stream("r0", "x", 1)));
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
        "r1",
        Some("Voilà – "),
        &[("fc-1", TOOL, json!({"hash": probe}))],
    )
    .concat();
    first.insert_str(0, ": keep-alive\r\n\r\n");
    let second = text_stream("r2", "c’est réglé.", 20).concat();
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
    let (content, _) = read_gemini(&whole);
    assert_eq!(content, "Voilà – c’est réglé.");
    assert!(whole.starts_with(": keep-alive\r\n\r\n"));
    for at in 1..bytes.len() {
        let split = run(vec![bytes.slice(..at), bytes.slice(at..)]).await;
        assert_eq!(split, whole, "split at byte {at}");
    }
    let singles = run((0..bytes.len()).map(|i| bytes.slice(i..i + 1)).collect()).await;
    assert_eq!(singles, whole, "one byte per chunk");
}
