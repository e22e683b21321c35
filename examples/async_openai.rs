//! async-openai over CcrLayer: `cargo run --example async_openai --features async-openai`
//!
//! Without `OPENAI_BASE_URL`, it serves a scripted model on 127.0.0.1 (no network, no key) and
//! points async-openai at it. With `OPENAI_BASE_URL` (and `OPENAI_API_KEY`) it talks to that
//! server instead (for `https`, enable async-openai's `rustls` feature).

use std::convert::Infallible;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::CreateChatCompletionRequest;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tower_ccr::CcrLayer;
use tower_ccr::async_openai::CcrHttpService;

/// A scripted Chat Completions model: asks for the compressed original once, then answers.
fn scripted_answer(request: &Value) -> Value {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let marker = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .find_map(|m| {
            let text = m["content"].as_str()?;
            let at = text.find("hash=")? + "hash=".len();
            Some(text[at..at + 24].to_owned())
        });
    let message = match marker {
        Some(hash) if last["tool_call_id"] != "call_ccr" => {
            json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_ccr", "type": "function", "function": {"name": "ccr_retrieve",
                "arguments": json!({"hash": hash, "query": "failed"}).to_string()}}]})
        }
        _ => {
            let evidence = last["content"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            json!({"role": "assistant", "content": format!("Job 1234 failed. {evidence}")})
        }
    };
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

async fn serve_scripted_model() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let answer = scripted_answer(&request).to_string();
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap(),
                    )
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = match std::env::var("OPENAI_BASE_URL") {
        Ok(base) => base,
        Err(_) => format!("http://{}/v1", serve_scripted_model().await),
    };
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_else(|_| "sk-local".into());
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let client = Client::with_config(OpenAIConfig::new().with_api_base(&base).with_api_key(key))
        .with_http_service(CcrHttpService::new(&layer, reqwest::Client::new()));

    let mut log = String::new();
    for i in 0..3_000 {
        if i == 1_234 {
            log.push_str("job 1234 FAILED: exit code 137 (out of memory)\n");
        } else {
            log.push_str(&format!(
                "job {i} ok in {} ms on node-{}\n",
                100 + i % 50,
                i % 9
            ));
        }
    }
    let request: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into()),
        "messages": [
            {"role": "user", "content": "Which job failed, and why?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"cmd\":\"cat jobs.log\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": log}
        ],
        "tools": [{"type": "function", "function": {"name": "bash", "description": "Run a shell command",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]
    }))?;
    let response = client.chat().create(request).await?;
    println!(
        "answer: {}",
        response.choices[0]
            .message
            .content
            .as_deref()
            .unwrap_or("(none)")
    );
    let stats = handle.stats().await;
    println!(
        "compressed {} output(s): ~{} -> ~{} tokens; {} retrieval round(s)",
        stats.outputs_compressed,
        stats.tokens_before,
        stats.tokens_after,
        stats.continuation_rounds
    );
    Ok(())
}
