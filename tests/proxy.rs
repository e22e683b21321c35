//! `ccr-proxy` in process, in front of mock upstreams served over real HTTP on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::big_log;
use common::streaming::{TestBody, client_events, read_stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tower_ccr::proxy::{Proxy, Routes};
use tower_ccr::{CcrHandle, CcrLayer};

/// Generous bound on waiting for something that must happen; never reached when all is well.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A mock upstream over real HTTP/1.1.

/// A request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

type Seens = Arc<Mutex<Vec<Seen>>>;
type Script = Arc<dyn Fn(usize, &Seen) -> Response<TestBody> + Send + Sync>;

/// Serves `script(round, request)` on 127.0.0.1, recording every request.
async fn mock(
    script: impl Fn(usize, &Seen) -> Response<TestBody> + Send + Sync + 'static,
) -> (SocketAddr, Seens) {
    let script: Script = Arc::new(script);
    let seen: Seens = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, log) = (script.clone(), log.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (script, log) = (script.clone(), log.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let seen = Seen {
                        method: parts.method,
                        uri: parts.uri,
                        headers: parts.headers,
                        body,
                    };
                    let round = {
                        let mut log = log.lock().unwrap();
                        log.push(seen.clone());
                        log.len() - 1
                    };
                    Ok::<_, hyper::Error>(script(round, &seen))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    (addr, seen)
}

fn json_response(status: StatusCode, body: &Value) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", "req_mock")
        .body(TestBody::chunks([body.to_string()]))
        .unwrap()
}

fn sse_response(events: Vec<String>) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(TestBody::chunks(events))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The proxy under test.

struct Running {
    addr: SocketAddr,
    handle: CcrHandle,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the shutdown signal and waits for `serve` to return.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
    }
}

async fn start(proxy: Proxy) -> Running {
    let handle = proxy.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(proxy.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        handle,
        stop: Some(stop),
        server,
    }
}

fn routes(openai: SocketAddr, anthropic: SocketAddr, gemini: SocketAddr) -> Routes {
    Routes::new(
        format!("http://{openai}").parse().unwrap(),
        format!("http://{anthropic}").parse().unwrap(),
        format!("http://{gemini}").parse().unwrap(),
    )
}

fn layer() -> CcrLayer {
    CcrLayer::new().secret("proxy tests")
}

fn client<B>() -> Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    let response = client::<Full<Bytes>>()
        .get(url.parse().unwrap())
        .await
        .unwrap();
    let (parts, text, error) = read_stream(response).await;
    assert!(error.is_none());
    (parts.status, parts.headers, text)
}

// ---------------------------------------------------------------------------------------------
// The four APIs, as their SDKs send and receive them.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const ANSWER: &str = "The card was declined.";

impl Api {
    const ALL: [Api; 4] = [Api::Chat, Api::Responses, Api::Anthropic, Api::Gemini];

    fn path(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Api::Chat, _) => "/v1/chat/completions",
            (Api::Responses, _) => "/v1/responses",
            (Api::Anthropic, _) => "/v1/messages",
            (Api::Gemini, false) => "/v1beta/models/gemini-2.5-flash:generateContent",
            (Api::Gemini, true) => "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        }
    }

    fn credential(self) -> (&'static str, &'static str) {
        match self {
            Api::Chat | Api::Responses => ("authorization", "Bearer sk-proxy-test"),
            Api::Anthropic => ("x-api-key", "sk-ant-proxy-test"),
            Api::Gemini => ("x-goog-api-key", "AIza-proxy-test"),
        }
    }

    fn request(self, output: &str, stream: bool) -> String {
        let question = "Why did the payment fail?";
        let mut body = match self {
            Api::Chat => json!({"model": "gpt-4o", "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": output}]}),
            Api::Responses => json!({"model": "gpt-4o", "input": [
                {"role": "user", "content": question},
                {"type": "function_call", "call_id": "call_1", "name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": output}]}),
            Api::Anthropic => {
                json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "cat app.log"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": output}]}]})
            }
            Api::Gemini => json!({"contents": [
                {"role": "user", "parts": [{"text": question}]},
                {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"cmd": "cat app.log"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "bash", "response": {"output": output}}}]}]}),
        };
        if stream && self != Api::Gemini {
            body["stream"] = json!(true);
        }
        body.to_string()
    }

    fn post(self, proxy: &Running, body: String, stream: bool) -> Request<Full<Bytes>> {
        let (name, value) = self.credential();
        let mut request = Request::post(proxy.url(self.path(stream)))
            .header("content-type", "application/json")
            .header(name, value);
        if self == Api::Anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        request.body(Full::new(Bytes::from(body))).unwrap()
    }

    /// The model calls the retrieval tool for `hash`.
    fn retrieval(self, hash: &str, stream: bool) -> Response<TestBody> {
        let args = json!({"hash": hash, "query": "payment refused"});
        match (self, stream) {
            (Api::Chat, false) => json_response(
                StatusCode::OK,
                &json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                        "tool_calls": [{"id": "call_r", "type": "function", "function": {"name": "ccr_retrieve", "arguments": args.to_string()}}]}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
            ),
            (Api::Chat, true) => sse_response(vec![
                chat_chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_r", "type": "function",
                    "function": {"name": "ccr_retrieve", "arguments": args.to_string()}}]}),
                    None,
                ),
                chat_chunk(json!({}), Some("tool_calls")),
                "data: [DONE]\n\n".into(),
            ]),
            (Api::Responses, false) => json_response(
                StatusCode::OK,
                &responses_envelope("resp_1", vec![function_call_item("ccr_retrieve", &args)]),
            ),
            (Api::Responses, true) => sse_response(responses_stream(
                "resp_1",
                &[function_call_item("ccr_retrieve", &args)],
            )),
            (Api::Anthropic, false) => json_response(
                StatusCode::OK,
                &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [{"type": "tool_use", "id": "toolu_r", "name": "ccr_retrieve", "input": args}],
                    "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 10}}),
            ),
            (Api::Anthropic, true) => sse_response(vec![
                anthropic_start("msg_1"),
                anthropic_event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_r", "name": "ccr_retrieve", "input": {}}}),
                ),
                anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": args.to_string()}}),
                ),
                anthropic_event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                anthropic_event(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 10}}),
                ),
                anthropic_event("message_stop", json!({"type": "message_stop"})),
            ]),
            (Api::Gemini, stream) => {
                let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": {"name": "ccr_retrieve", "args": args}}]}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110}});
                if stream {
                    sse_response(vec![format!("data: {chunk}\r\n\r\n")])
                } else {
                    json_response(StatusCode::OK, &chunk)
                }
            }
        }
    }

    /// The model answers with text.
    fn answer(self, stream: bool) -> Response<TestBody> {
        match (self, stream) {
            (Api::Chat, false) => json_response(
                StatusCode::OK,
                &json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}}),
            ),
            (Api::Chat, true) => sse_response(vec![
                chat_chunk(json!({"role": "assistant", "content": ""}), None),
                chat_chunk(json!({"content": ANSWER}), None),
                chat_chunk(json!({}), Some("stop")),
                "data: [DONE]\n\n".into(),
            ]),
            (Api::Responses, false) => json_response(
                StatusCode::OK,
                &responses_envelope("resp_2", vec![message_item()]),
            ),
            (Api::Responses, true) => sse_response(responses_stream("resp_2", &[message_item()])),
            (Api::Anthropic, false) => json_response(
                StatusCode::OK,
                &json!({"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 200, "output_tokens": 20}}),
            ),
            (Api::Anthropic, true) => sse_response(vec![
                anthropic_start("msg_2"),
                anthropic_event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ANSWER}}),
                ),
                anthropic_event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                anthropic_event(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 20}}),
                ),
                anthropic_event("message_stop", json!({"type": "message_stop"})),
            ]),
            (Api::Gemini, stream) => {
                let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ANSWER}]},
                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 200, "candidatesTokenCount": 20, "totalTokenCount": 220}});
                if stream {
                    sse_response(vec![format!("data: {chunk}\r\n\r\n")])
                } else {
                    json_response(StatusCode::OK, &chunk)
                }
            }
        }
    }
}

fn chat_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]});
    format!("data: {chunk}\n\n")
}

fn anthropic_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn anthropic_start(id: &str) -> String {
    anthropic_event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 100, "output_tokens": 1}}}),
    )
}

fn function_call_item(name: &str, args: &Value) -> Value {
    json!({"type": "function_call", "id": "fc_r", "call_id": "call_r", "name": name,
        "arguments": args.to_string(), "status": "completed"})
}

fn message_item() -> Value {
    json!({"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]})
}

fn responses_envelope(id: &str, output: Vec<Value>) -> Value {
    json!({"id": id, "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o",
        "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
}

/// A Responses stream producing `items`.
fn responses_stream(id: &str, items: &[Value]) -> Vec<String> {
    let mut events = Vec::new();
    let mut push = |mut data: Value| {
        data["sequence_number"] = json!(events.len());
        let name = data["type"].as_str().unwrap().to_owned();
        events.push(format!("event: {name}\ndata: {data}\n\n"));
    };
    let mut pending = responses_envelope(id, Vec::new());
    pending["status"] = json!("in_progress");
    pending["usage"] = Value::Null;
    push(json!({"type": "response.created", "response": pending}));
    for (index, item) in items.iter().enumerate() {
        let mut added = item.clone();
        if item["type"] == "function_call" {
            added["arguments"] = json!("");
        } else {
            added["content"] = json!([]);
        }
        added["status"] = json!("in_progress");
        push(json!({"type": "response.output_item.added", "output_index": index, "item": added}));
        if item["type"] == "function_call" {
            push(
                json!({"type": "response.function_call_arguments.delta", "output_index": index,
                "item_id": item["id"], "delta": item["arguments"]}),
            );
        } else {
            push(
                json!({"type": "response.output_text.delta", "output_index": index, "item_id": item["id"],
                "content_index": 0, "delta": ANSWER}),
            );
        }
        push(json!({"type": "response.output_item.done", "output_index": index, "item": item}));
    }
    push(json!({"type": "response.completed", "response": responses_envelope(id, items.to_vec())}));
    events
}

/// The first marker's id in a text.
fn marker_hash(text: &str) -> Option<String> {
    common::marker_hash(text)
}

/// A script: the model retrieves what the first request's marker names, then answers.
fn retrieve_then_answer(api: Api, stream: bool) -> impl Fn(usize, &Seen) -> Response<TestBody> {
    move |round, seen| match (round, marker_hash(seen.text())) {
        (0, Some(hash)) => api.retrieval(&hash, stream),
        _ => api.answer(stream),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn each_api_is_compressed_and_its_retrieval_answered_through_the_proxy() {
    for stream in [false, true] {
        for api in Api::ALL {
            let (openai, openai_seen) = mock(retrieve_then_answer(api, stream)).await;
            let (anthropic, anthropic_seen) = mock(retrieve_then_answer(api, stream)).await;
            let (gemini, gemini_seen) = mock(retrieve_then_answer(api, stream)).await;
            let proxy = start(Proxy::new(layer(), routes(openai, anthropic, gemini))).await;
            let output = big_log(3_000);

            let request = api.post(&proxy, api.request(&output, stream), stream);
            let response = client().request(request).await.unwrap();
            let (parts, text, error) = read_stream(response).await;
            let context = format!("{api:?}, stream: {stream}");
            assert_eq!(parts.status, StatusCode::OK, "{context}: {text}");
            assert!(error.is_none(), "{context}: {error:?}");
            assert!(text.contains(ANSWER), "{context}: {text}");
            assert!(!text.contains("ccr_retrieve"), "{context}: {text}");
            if stream {
                assert!(
                    parts.headers["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("text/event-stream")
                );
                assert!(!client_events(&text).is_empty(), "{context}");
            }

            // The request went to its provider's upstream only: the first round compressed,
            // then one continuation carrying the retrieved lines.
            let (right, wrong) = match api {
                Api::Chat | Api::Responses => (&openai_seen, [&anthropic_seen, &gemini_seen]),
                Api::Anthropic => (&anthropic_seen, [&openai_seen, &gemini_seen]),
                Api::Gemini => (&gemini_seen, [&openai_seen, &anthropic_seen]),
            };
            assert!(wrong.iter().all(|seen| seen.lock().unwrap().is_empty()));
            let seen = right.lock().unwrap().clone();
            assert_eq!(seen.len(), 2, "{context}");
            assert!(
                seen[0].body.len() < output.len() / 5,
                "{context}: compressed"
            );
            assert!(seen[0].text().contains("ccr_retrieve"), "{context}");
            let needles = |s: &Seen| s.text().matches("card_declined").count();
            assert!(
                needles(&seen[1]) > needles(&seen[0]),
                "{context}: retrieved"
            );
            for request in &seen {
                assert_eq!(
                    request.uri.path(),
                    api.path(stream).split('?').next().unwrap()
                );
                assert_eq!(
                    request.uri.query(),
                    api.path(stream).split_once('?').map(|p| p.1)
                );
                let host = match api {
                    Api::Chat | Api::Responses => openai,
                    Api::Anthropic => anthropic,
                    Api::Gemini => gemini,
                };
                assert_eq!(
                    request.headers["host"],
                    host.to_string().as_str(),
                    "{context}"
                );
                let (name, value) = api.credential();
                assert_eq!(request.headers[name], value, "{context}");
                // Chunked framing toward the upstream is hyper's choice, never a leftover.
                assert!(!request.headers.contains_key("connection"), "{context}");
            }

            let stats = proxy.handle.stats().await;
            assert_eq!(stats.outputs_compressed, 1, "{context}");
            assert_eq!(stats.continuation_rounds, 1, "{context}");
            assert_eq!(stats.retrievals.search, 1, "{context}");
            proxy.stop().await;
        }
    }
}

#[tokio::test]
async fn other_requests_pass_through_byte_identical_both_ways() {
    let response_body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let answer = response_body.clone();
    let (upstream, log) = mock(move |_, _| {
        Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("x-upstream", "one")
            .header("x-upstream", "two")
            .header("content-type", "application/octet-stream")
            .header("connection", "x-hop")
            .header("x-hop", "dropped")
            .body(TestBody::chunks(
                answer.chunks(7_000).map(Bytes::copy_from_slice),
            ))
            .unwrap()
    })
    .await;
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;

    // A streamed (chunked) binary body, repeated headers, hop-by-hop headers.
    let request_body: Vec<u8> = (0..=255u8).rev().cycle().take(100_000).collect();
    let request = Request::builder()
        .method("PUT")
        .uri(proxy.url("/v1/files/file-1/content?purpose=batch&x=%20y"))
        .header("authorization", "Bearer sk-files")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("content-type", "application/octet-stream")
        .header("connection", "keep-alive, x-trace-hop")
        .header("x-trace-hop", "for the proxy only")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eDp5")
        .body(TestBody::chunks(
            request_body
                .chunks(10_000)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(parts.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(body.as_ref(), response_body.as_slice());
    let upstream_headers: Vec<_> = parts.headers.get_all("x-upstream").iter().collect();
    assert_eq!(upstream_headers, ["one", "two"]);
    assert!(!parts.headers.contains_key("x-hop"));

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(
        seen.uri.path_and_query().unwrap().as_str(),
        "/v1/files/file-1/content?purpose=batch&x=%20y"
    );
    assert_eq!(seen.body.as_ref(), request_body.as_slice());
    let multi: Vec<_> = seen.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(seen.headers["authorization"], "Bearer sk-files");
    assert_eq!(seen.headers["host"], upstream.to_string().as_str());
    for hop in [
        "x-trace-hop",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(!seen.headers.contains_key(hop), "{hop} was forwarded");
    }

    // A request of a supported API with nothing to compress, and one that opts out, go upstream
    // with the very bytes the client sent.
    for (body, opt_out) in [
        (Api::Chat.request("short output", false), false),
        (Api::Chat.request(&big_log(3_000), false), true),
    ] {
        let mut request = Api::Chat.post(&proxy, body.clone(), false);
        if opt_out {
            request
                .headers_mut()
                .insert("x-ccr", HeaderValue::from_static("off"));
        }
        let response = client().request(request).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
        let last = log.lock().unwrap().last().unwrap().clone();
        assert_eq!(last.text(), body);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn healthz_and_metrics_are_the_proxys_own() {
    let (upstream, seen) = mock(retrieve_then_answer(Api::Chat, false)).await;
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;
    let (status, headers, text) = get(&proxy.url("/healthz")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "ok\n"));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let request = Api::Chat.post(&proxy, Api::Chat.request(&big_log(3_000), false), false);
    let response = client().request(request).await.unwrap();
    let _ = response.into_body().collect().await.unwrap();
    // A 404 from the upstream is a client error of the other API.
    let response = client::<Full<Bytes>>()
        .get(proxy.url("/v1/nothing").parse().unwrap())
        .await
        .unwrap();
    let _ = response.into_body().collect().await.unwrap();

    let (status, headers, text) = get(&proxy.url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("ccr_proxy_requests_total{api=\"openai-chat\",outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        value("ccr_proxy_requests_total{api=\"other\",outcome=\"success\"}"),
        1.0,
        "the mock answers every path with 200"
    );
    assert_eq!(value("ccr_outputs_compressed_total"), 1.0);
    assert!(value("ccr_tokens_before_total") > 10.0 * value("ccr_tokens_after_total"));
    assert_eq!(value("ccr_retrievals_total{outcome=\"search\"}"), 1.0);
    assert_eq!(value("ccr_continuation_rounds_total"), 1.0);
    assert_eq!(value("ccr_store_up"), 1.0);
    assert_eq!(value("ccr_store_entries"), 1.0);
    assert!(value("ccr_store_bytes") > 100_000.0);
    // Two chat rounds and the other request reached the OpenAI upstream.
    assert_eq!(
        value("ccr_proxy_upstream_latency_seconds_count{route=\"openai\"}"),
        3.0
    );
    assert_eq!(
        value("ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"+Inf\"}"),
        3.0
    );
    assert_eq!(
        value("ccr_proxy_upstream_errors_total{route=\"openai\"}"),
        0.0
    );
    // The proxy's own endpoints never reach an upstream.
    assert_eq!(seen.lock().unwrap().len(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_in_the_metrics() {
    // A port nobody listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start(Proxy::new(layer(), routes(closed, closed, closed))).await;
    let request = Api::Anthropic.post(&proxy, Api::Anthropic.request("hi", false), false);
    let response = client().request(request).await.unwrap();
    let (parts, text, _) = read_stream(response).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["type"], "proxy_error");
    let (_, _, metrics) = get(&proxy.url("/metrics")).await;
    assert!(
        metrics.contains("ccr_proxy_requests_total{api=\"anthropic\",outcome=\"proxy_error\"} 1\n")
    );
    assert!(metrics.contains("ccr_proxy_upstream_errors_total{route=\"anthropic\"} 1\n"));
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_stalls_the_tls_handshake_is_a_502_within_the_connect_timeout() {
    // Accepts TCP connections and never answers the ClientHello.
    let stalled = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalled.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = stalled.accept().await {
            connections.push(connection);
        }
    });
    let https: tower_ccr::proxy::Upstream = format!("https://{addr}").parse().unwrap();
    let routes = Routes::new(https.clone(), https.clone(), https);
    let proxy =
        start(Proxy::new(layer(), routes).connect_timeout(Duration::from_millis(300))).await;
    let started = std::time::Instant::now();
    let request = Api::Anthropic.post(&proxy, Api::Anthropic.request("hi", false), false);
    let response = tokio::time::timeout(PATIENCE, client().request(request))
        .await
        .expect("the proxy answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    proxy.stop().await;
    held.abort();
}

/// A mock whose response streams whatever the returned slot's sender sends.
type Feed = Arc<Mutex<Option<mpsc::UnboundedSender<Result<Bytes, tower::BoxError>>>>>;

async fn streaming_mock() -> (SocketAddr, Feed) {
    let feed: Feed = Arc::default();
    let slot = feed.clone();
    let (addr, _) = mock(move |_, _| {
        let (body, sender) = TestBody::channel();
        *slot.lock().unwrap() = Some(sender);
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    })
    .await;
    (addr, feed)
}

/// Sends a small streamed chat request; returns the response once its head arrived.
async fn open_stream(proxy: &Running) -> Response<Incoming> {
    let request = Api::Chat.post(proxy, Api::Chat.request("short", true), true);
    client().request(request).await.unwrap()
}

async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(data);
                }
            }
            Err(_) => return None,
        }
    }
}

/// Waits until the proxy refuses new connections (its listener is closed).
async fn wait_until_refused(addr: SocketAddr) {
    tokio::time::timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the listener closes on shutdown");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let (upstream, feed) = streaming_mock().await;
    let proxy =
        start(Proxy::new(layer(), routes(upstream, upstream, upstream)).shutdown_timeout(PATIENCE))
            .await;
    let response = open_stream(&proxy).await;
    assert_eq!(response.status(), StatusCode::OK);
    let sender = feed.lock().unwrap().clone().unwrap();
    let first = chat_chunk(json!({"role": "assistant", "content": "Hel"}), None);
    sender.send(Ok(Bytes::from(first.clone()))).unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), first.as_bytes());

    let Running {
        addr,
        mut stop,
        server,
        ..
    } = proxy;
    let _ = stop.take().unwrap().send(());
    wait_until_refused(addr).await;
    assert!(!server.is_finished(), "the stream is still in flight");

    let rest = [
        chat_chunk(json!({"content": "lo"}), None),
        chat_chunk(json!({}), Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ];
    for event in &rest {
        sender.send(Ok(Bytes::from(event.clone()))).unwrap();
    }
    drop(sender);
    feed.lock().unwrap().take();
    let tail = body
        .collect()
        .await
        .expect("the stream ends cleanly")
        .to_bytes();
    assert_eq!(tail, rest.concat().as_bytes());
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("serve returns once the stream ended")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_shutdown_deadline_closes_streams_that_do_not_end() {
    let (upstream, feed) = streaming_mock().await;
    let proxy = start(
        Proxy::new(layer(), routes(upstream, upstream, upstream))
            .shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    let response = open_stream(&proxy).await;
    let sender = feed.lock().unwrap().clone().unwrap();
    sender
        .send(Ok(Bytes::from_static(b": keep-alive\n\n")))
        .unwrap();
    let mut body = response.into_body();
    assert!(next_data(&mut body).await.is_some());
    proxy.stop().await;
    // The connection was closed under the stream: the client's body ends in an error.
    let rest = body.collect().await;
    assert!(rest.is_err(), "the stream was cut, not finished");
    drop(sender);
}

#[tokio::test]
async fn a_client_that_goes_away_drops_the_upstream_stream() {
    let (upstream, feed) = streaming_mock().await;
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;
    let response = open_stream(&proxy).await;
    let sender = feed.lock().unwrap().take().unwrap();
    sender.send(Ok(Bytes::from_static(b": ping\n\n"))).unwrap();
    let mut body = response.into_body();
    assert!(next_data(&mut body).await.is_some());
    drop(body); // the client goes away mid-stream
    // The proxy drops its upstream connection: the mock's body is dropped with it.
    tokio::time::timeout(PATIENCE, sender.closed())
        .await
        .expect("the upstream stream is dropped when the client goes away");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_answer_closes_the_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads a request and never answers; it reports when the request arrived
    // and when its peer hung up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (events, mut upstream_events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut arrived = false;
                while let Ok(1..) = stream.read(&mut buffer).await {
                    if !arrived {
                        arrived = true;
                        let _ = events.send("arrived");
                    }
                }
                let _ = events.send("hung up");
            });
        }
    });
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = Api::Chat.request("short", false);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    let arrived = tokio::time::timeout(PATIENCE, upstream_events.recv()).await;
    assert_eq!(arrived.unwrap(), Some("arrived"));
    drop(client);
    let hung_up = tokio::time::timeout(PATIENCE, upstream_events.recv())
        .await
        .expect("the proxy closes its upstream request when the client hangs up");
    assert_eq!(hung_up, Some("hung up"));
    proxy.stop().await;
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let (upstream, seen) = mock(retrieve_then_answer(Api::Responses, true)).await;
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Api::Responses.post(&proxy, Api::Responses.request(&big_log(3_000), true), true);
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let (parts, text, error) = read_stream(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(error.is_none());
    assert!(text.contains(ANSWER) && !text.contains("ccr_retrieve"));
    assert_eq!(seen.lock().unwrap().len(), 2);
    proxy.stop().await;
}

/// An upstream that accepts an upgrade to `echo` and echoes what it gets.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
                assert_eq!(request.headers()["upgrade"], "echo");
                assert_eq!(request.headers()["sec-test"], "kept");
                tokio::spawn(async move {
                    let upgraded = hyper::upgrade::on(&mut request).await.unwrap();
                    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
                Ok::<_, hyper::Error>(
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    upstream
}

/// Opens an `echo` tunnel through the proxy at `addr` and checks that it echoes.
async fn open_tunnel(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /v1/realtime HTTP/1.1\r\nhost: proxy\r\nconnection: upgrade\r\nupgrade: echo\r\nsec-test: kept\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    echoes(&mut stream).await;
    stream
}

async fn echoes(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
}

#[tokio::test]
async fn upgrades_are_tunnelled() {
    let upstream = echo_upstream().await;
    let proxy = start(Proxy::new(layer(), routes(upstream, upstream, upstream))).await;
    let stream = open_tunnel(proxy.addr).await;
    drop(stream);
    proxy.stop().await;
}

#[tokio::test]
async fn a_tunnel_goes_on_until_the_shutdown_deadline_then_is_closed() {
    use tokio::io::AsyncReadExt;
    let upstream = echo_upstream().await;
    let deadline = Duration::from_millis(600);
    let proxy =
        start(Proxy::new(layer(), routes(upstream, upstream, upstream)).shutdown_timeout(deadline))
            .await;
    let mut stream = open_tunnel(proxy.addr).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.stop());
    // Within the deadline, the tunnel still works and the proxy waits for it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    echoes(&mut stream).await;
    assert!(!stopping.is_finished(), "serve returned with a tunnel open");
    // At the deadline it is closed: the client reads the end of the stream.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the tunnel was closed")
        .unwrap();
    assert!(rest.is_empty());
    assert!(started.elapsed() >= deadline - Duration::from_millis(50));
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The binary.

const BINARY: &str = env!("CARGO_BIN_EXE_ccr-proxy");

#[test]
fn the_binary_explains_its_flags_and_refuses_bad_ones() {
    use std::process::Command;
    let output = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--upstream <PREFIX=URL>",
        "[env: CCR_SECRET]",
        "[default: 127.0.0.1:8787]",
        "/v1/messages",
        "GET /healthz",
    ] {
        assert!(help.contains(needle), "{needle} in\n{help}");
    }
    let output = Command::new(BINARY)
        .args(["--ttl", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ttl"));
}

/// The Python of a venv with the pinned SDKs (`tests/sdk-requirements.txt`): `$CCR_SDK_PYTHON`,
/// or `target/sdk-venv` (which `.ci/run` uses too), created when missing. `None` when there is
/// no `python3` at all.
fn sdk_python() -> Option<std::path::PathBuf> {
    use std::process::Command;
    if let Some(python) = std::env::var_os("CCR_SDK_PYTHON") {
        return Some(python.into());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("sdk-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let Ok(status) = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
        else {
            return None;
        };
        assert!(status.success(), "python3 -m venv {venv:?} failed");
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(root.join("tests").join("sdk-requirements.txt"))
        .status()
        .expect("the venv's python runs");
    assert!(status.success(), "installing the SDKs failed");
    Some(python)
}

#[test]
fn official_python_sdks_through_the_proxy_binary() {
    let Some(python) = sdk_python() else {
        eprintln!("SKIPPED: no python3 on this machine; the Python SDK test did not run");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy_sdk.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(BINARY)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tests/proxy_sdk.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// Replicas sharing a Redis store.

/// Replicas sharing a Redis store (the machine's on 127.0.0.1:6379; `.ci/run` starts one).
#[cfg(feature = "redis")]
mod replicas {
    use super::*;
    use tower_ccr::proxy::ProxyArgs;

    /// A `ccr-proxy` process; killed when dropped.
    struct ProxyProcess {
        child: std::process::Child,
        addr: SocketAddr,
    }

    impl ProxyProcess {
        /// Starts the binary on a free port with `args`, and waits until it listens.
        fn spawn(args: &[&str]) -> Self {
            use std::io::BufRead;
            let mut child = std::process::Command::new(BINARY)
                .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
                .args(args)
                .env("RUST_LOG", "info")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let (found, listening) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let entry: Value = serde_json::from_str(&line).expect("JSON log lines");
                    if entry["message"] == "listening" {
                        let _ = found.send(entry["addr"].as_str().unwrap().parse().unwrap());
                    }
                }
            });
            let addr = listening.recv_timeout(PATIENCE).expect("the proxy listens");
            Self { child, addr }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    impl Drop for ProxyProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// A key prefix no other test run uses.
    fn unique_prefix() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("ccr-proxy-test:{}:{nanos}:", std::process::id())
    }

    async fn post_json(url: &str, credential: (&str, &str), body: &Value) -> (StatusCode, String) {
        let request = Request::post(url)
            .header("content-type", "application/json")
            .header(credential.0, credential.1)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client().request(request).await.unwrap();
        let (parts, text, error) = read_stream(response).await;
        assert!(error.is_none());
        (parts.status, text)
    }

    #[tokio::test]
    async fn two_proxy_processes_share_originals_through_redis() {
        // The model: answers the first request (whose marker it notes), then, asked through the
        // other proxy to look again, calls the retrieval tool with that marker's id, then answers.
        let hash: Arc<Mutex<Option<String>>> = Arc::default();
        let noted = hash.clone();
        let (upstream, log) = mock(move |round, seen| match round {
            0 => {
                *noted.lock().unwrap() = marker_hash(seen.text());
                json_response(
                    StatusCode::OK,
                    &responses_envelope("resp_A1", vec![message_item()]),
                )
            }
            1 => {
                Api::Responses.retrieval(noted.lock().unwrap().as_deref().unwrap_or("none"), false)
            }
            _ => Api::Responses.answer(false),
        })
        .await;
        let upstream = format!("http://{upstream}");
        let prefix = unique_prefix();
        let args = [
            "--store",
            REDIS_URL,
            "--redis-prefix",
            prefix.as_str(),
            "--secret",
            "shared by both replicas",
            "--openai-base",
            upstream.as_str(),
        ];
        let a = ProxyProcess::spawn(&args);
        let b = ProxyProcess::spawn(&args);
        let credential = ("authorization", "Bearer sk-replicas");

        // Through A, with the history kept upstream (`store: true`).
        let mut first: Value =
            serde_json::from_str(&Api::Responses.request(&big_log(3_000), false)).unwrap();
        first["store"] = json!(true);
        let (status, text) = post_json(&a.url("/v1/responses"), credential, &first).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let hash = hash
            .lock()
            .unwrap()
            .clone()
            .expect("A compressed the output");

        // Through B: the next turn names A's response and carries no copy of the output.
        let next = json!({"model": "gpt-4o", "store": true, "previous_response_id": "resp_A1",
            "input": [{"role": "user", "content": "Show me the failing line in full."}]});
        let (status, text) = post_json(&b.url("/v1/responses"), credential, &next).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["output"][0]["content"][0]["text"], ANSWER, "{text}");
        assert!(!text.contains("ccr_retrieve"), "{text}");

        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "A's request, B's request, B's continuation");
        assert!(
            !seen[1].text().contains("INFO GET /api/items"),
            "no copy in B's request"
        );
        assert!(
            seen[1].text().contains("ccr_retrieve"),
            "B kept the retrieval tool for a turn A gave it"
        );
        assert!(
            seen[2].text().contains("code=card_declined") && seen[2].text().contains("call_r"),
            "B answered the call for {hash} from the shared store: {}",
            seen[2].text()
        );
        let (_, _, metrics) = get(&b.url("/metrics")).await;
        assert!(
            metrics.contains("ccr_retrievals_total{outcome=\"search\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("ccr_continuation_rounds_total 1\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn requests_keep_succeeding_when_redis_stops() {
        use clap::Parser;
        // A Redis of this test's own, so that stopping it touches nothing else.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        /// Stops the server however the test ends.
        struct Server(std::process::Child);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let redis = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server installed (.ci/run installs it)");
        let redis = Server(redis);
        let (upstream, log) = mock(retrieve_then_answer(Api::Chat, false)).await;
        let url = format!("redis://127.0.0.1:{port}");
        let base = format!("http://{upstream}");
        // Until the server answers, the proxy starts all the same and compresses nothing.
        let args = ProxyArgs::try_parse_from([
            "ccr-proxy",
            "--store",
            url.as_str(),
            "--openai-base",
            base.as_str(),
            "--secret",
            "redis stops",
        ])
        .unwrap();
        let proxy = start(args.proxy().await.expect("a proxy, Redis up or not")).await;
        let output = big_log(3_000);
        let send = || async {
            let request = Api::Chat.post(&proxy, Api::Chat.request(&output, false), false);
            let (parts, text, error) = read_stream(client().request(request).await.unwrap()).await;
            assert!(error.is_none());
            (parts.status, text)
        };
        let compressed = tokio::time::timeout(PATIENCE, async {
            loop {
                let before = log.lock().unwrap().len();
                let (status, text) = send().await;
                assert_eq!(status, StatusCode::OK, "{text}");
                let seen = log.lock().unwrap()[before].clone();
                if marker_hash(seen.text()).is_some() {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("outputs are compressed once Redis answers");
        assert!(compressed.contains(ANSWER));

        drop(redis);
        for _ in 0..3 {
            let before = log.lock().unwrap().len();
            let (status, text) = send().await;
            assert_eq!(status, StatusCode::OK, "{text}");
            assert!(text.contains(ANSWER));
            let seen = log.lock().unwrap()[before..].to_vec();
            assert_eq!(seen.len(), 1, "nothing to retrieve: one round");
            assert!(
                marker_hash(seen[0].text()).is_none() && seen[0].body.len() > output.len(),
                "without its store the proxy sends the output whole"
            );
        }
        // The store's gauges are unknown now, not 0.
        let (_, _, metrics) = get(&proxy.url("/metrics")).await;
        assert!(metrics.contains("ccr_store_up 0\n"), "{metrics}");
        assert!(!metrics.contains("ccr_store_entries"), "{metrics}");
        proxy.stop().await;
    }
}
