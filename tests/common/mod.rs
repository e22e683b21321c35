//! An in-process scripted upstream and request builders shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{BoxError, Service, service_fn};

pub mod streaming;

pub const CHAT_URL: &str = "https://api.example.com/v1/chat/completions";

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream got JSON")
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Every request the upstream received, in order.
pub type Log = Arc<Mutex<Vec<Recorded>>>;

pub type Script = dyn Fn(usize, &Recorded) -> Response<Full<Bytes>> + Send + Sync;

/// A mock upstream: records every request and answers with `script(round, request)`.
pub fn upstream(
    script: impl Fn(usize, &Recorded) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Log,
) {
    let log: Log = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let recorder = log.clone();
    let service = service_fn(move |request: Request<Full<Bytes>>| {
        let log = recorder.clone();
        let script = script.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let recorded = Recorded {
                headers: parts.headers,
                body,
            };
            let round = {
                let mut log = log.lock().unwrap();
                log.push(recorded.clone());
                log.len() - 1
            };
            Ok::<_, Infallible>(script(round, &recorded))
        }
    });
    (service, log)
}

pub fn json_response(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", "req_123")
        .body(Full::new(Bytes::from(body.into())))
        .unwrap()
}

/// A final answer in Chat Completions format.
pub fn answer(content: &str, prompt_tokens: u64) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7,
                "prompt_tokens_details": {"cached_tokens": 0}}
        })
        .to_string(),
    )
}

/// A response whose message calls tools: `(call id, tool name, arguments JSON)`.
pub fn tool_calls(calls: &[(&str, &str, Value)]) -> Response<Full<Bytes>> {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments.to_string()}})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [], "tool_calls": calls}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110,
                "prompt_tokens_details": {"cached_tokens": 0}}
        })
        .to_string(),
    )
}

/// A server log of `lines` lines with one error line (the needle) in the middle.
pub fn big_log(lines: usize) -> String {
    let mut log = String::new();
    for i in 0..lines {
        if i == lines / 2 {
            log.push_str("2026-11-23T10:00:00Z ERROR payment gateway refused card token=tok_4242 code=card_declined\n");
        } else {
            log.push_str(&format!(
                "2026-11-23T10:00:{:02}Z INFO GET /api/items/{i} served in {}ms by worker-{}\n",
                i % 60,
                3 + i % 17,
                i % 4
            ));
        }
    }
    log
}

/// A conversation: user question, assistant call of `bash`, tool output.
pub fn conversation(output: &str) -> Value {
    json!([
        {"role": "system", "content": "You are a helpful SRE assistant."},
        {"role": "user", "content": "Why did the payment fail?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_bash", "type": "function",
            "function": {"name": "bash", "arguments": "{\"cmd\":\"cat /var/log/app.log\"}"}}]},
        {"role": "tool", "tool_call_id": "call_bash", "content": output}
    ])
}

pub fn chat_body(messages: Value, extra: Value) -> String {
    let mut body = json!({"model": "gpt-x", "messages": messages});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

pub fn post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-alice")
        .body(Full::new(body.into()))
        .unwrap()
}

/// The first marker's id in a text.
pub fn marker_hash(text: &str) -> Option<String> {
    let at = text.find("Retrieve more: hash=")? + "Retrieve more: hash=".len();
    Some(text[at..at + 24].to_owned())
}

pub async fn body_text<B>(response: Response<B>) -> (http::response::Parts, String)
where
    B: http_body::Body,
    B::Error: Into<BoxError> + std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The content of the tool message of the retrieval tool's answer in a continuation request.
pub fn retrieval_answers(request: &Value, tool_call_id: &str) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool" && m["tool_call_id"] == tool_call_id)
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Serves the scripted upstream over real HTTP/1.1 (hyper) on 127.0.0.1; returns its address.
pub async fn serve(
    script: impl Fn(usize, &Recorded) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> (std::net::SocketAddr, Log) {
    use hyper_util::rt::TokioIo;
    let (service, log) = upstream(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let request = Request::from_parts(parts, Full::new(body));
                            let response =
                                tower::ServiceExt::oneshot(service, request).await.unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, log)
}
