//! Quickstart: `cargo run --example quickstart`
//!
//! A scripted model (embedded, no network, no API key) sits behind `CcrLayer`. The client sends a
//! conversation whose last tool output is a 2,000-line server log. The layer compresses it, the
//! model asks for the lines it needs through the retrieval tool, the layer answers and continues,
//! and the client gets the final answer without ever seeing the tool.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_ccr::{CcrLayer, estimate_tokens};

/// What the scripted model saw and did, for printing.
#[derive(Default)]
struct Transcript {
    requests: Vec<Value>,
    calls: Vec<String>,
}

/// A tiny scripted model speaking OpenAI Chat Completions. When a tool output ends in a marker it
/// asks for the lines about the payment failure; once it has them, it answers from them.
fn scripted_model(request: &Value, transcript: &mut Transcript) -> Value {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    let retrieved = last["role"] == "tool" && last["tool_call_id"] == "call_ccr_1";
    let message = if retrieved {
        let evidence = last["content"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .find(|line| line.contains("ERROR"))
            .unwrap_or("nothing")
            .to_owned();
        json!({"role": "assistant", "content": format!("The payment failed because the gateway refused the card. Evidence: {evidence}")})
    } else {
        let marker = messages
            .iter()
            .filter(|m| m["role"] == "tool")
            .find_map(|m| {
                let text = m["content"].as_str()?;
                let at = text.find("Retrieve more: hash=")? + "Retrieve more: hash=".len();
                Some(text[at..at + 24].to_owned())
            });
        match marker {
            Some(hash) => {
                let arguments = json!({"hash": hash, "query": "payment gateway error"}).to_string();
                transcript.calls.push(arguments.clone());
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_ccr_1", "type": "function",
                    "function": {"name": "ccr_retrieve", "arguments": arguments}}]})
            }
            None => json!({"role": "assistant", "content": "I could not find the cause."}),
        }
    };
    let finish_reason = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    let prompt_tokens = estimate_tokens(&request.to_string()) as u64;
    json!({
        "id": "chatcmpl-quickstart", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 30, "total_tokens": prompt_tokens + 30}
    })
}

fn server_log() -> String {
    let mut log = String::new();
    for i in 0..2_000 {
        if i == 1_337 {
            log.push_str("2026-11-23T10:22:17Z ERROR payments: gateway refused card for order 88412: code=card_declined\n");
        } else {
            log.push_str(&format!(
                "2026-11-23T10:{:02}:{:02}Z INFO http: GET /api/orders/{i} 200 in {}ms\n",
                i / 60 % 60,
                i % 60,
                3 + i % 17
            ));
        }
    }
    log
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let transcript = Arc::new(Mutex::new(Transcript::default()));
    let recorder = transcript.clone();
    let model = service_fn(move |request: Request<Full<Bytes>>| {
        let transcript = recorder.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let request: Value = serde_json::from_slice(&body)?;
            let mut transcript = transcript.lock().unwrap();
            let answer = scripted_model(&request, &mut transcript);
            transcript.requests.push(request);
            let response = Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))?;
            Ok::<_, BoxError>(response)
        }
    });

    let layer = CcrLayer::new();
    let handle = layer.handle();
    let client = ServiceBuilder::new().layer(layer).service(model);

    let log = server_log();
    let body = json!({
        "model": "scripted",
        "messages": [
            {"role": "user", "content": "Why did the payment for order 88412 fail?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"cmd\":\"tail -n 2000 /var/log/shop.log\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": log}
        ],
        "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object",
            "properties": {"cmd": {"type": "string"}}}}}]
    });
    let request = Request::post("http://model.local/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer demo")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.oneshot(request).await?;
    let answer: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;

    let stats = handle.stats().await;
    let transcript = transcript.lock().unwrap();
    let first = &transcript.requests[0];
    let view = first["messages"][2]["content"].as_str().unwrap_or_default();
    let before = estimate_tokens(&log);
    let after = estimate_tokens(view);
    println!("tower-ccr quickstart: a scripted model behind CcrLayer (no network, no API key)\n");
    println!(
        "tool output: {} lines, ~{before} tokens",
        log.lines().count()
    );
    println!(
        "view sent upstream: {} lines, ~{after} tokens ({:.1}% fewer)",
        view.lines().count(),
        100.0 * (1.0 - after as f64 / before as f64)
    );
    println!(
        "\nthe view the model saw:\n  {}",
        view.lines().collect::<Vec<_>>().join("\n  ")
    );
    println!(
        "\nthe model called: ccr_retrieve {}",
        transcript.calls.join(", ")
    );
    if let Some(continuation) = transcript.requests.get(1) {
        let messages = continuation["messages"].as_array().unwrap();
        let retrieved = messages.last().unwrap()["content"]
            .as_str()
            .unwrap_or_default();
        println!(
            "the layer answered it with:\n  {}",
            retrieved.lines().take(4).collect::<Vec<_>>().join("\n  ")
        );
    }
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    println!("\nfinal answer (all the client sees): {content}");
    println!(
        "client saw the retrieval tool: {}",
        answer.to_string().contains("ccr_retrieve")
    );
    println!("usage summed over rounds: {}", answer["usage"]);
    println!(
        "\nstats: {} output compressed, ~{} -> ~{} tokens, {} continuation round, {} search retrieval, store {} entries / {} bytes",
        stats.outputs_compressed,
        stats.tokens_before,
        stats.tokens_after,
        stats.continuation_rounds,
        stats.retrievals.search,
        stats.entries,
        stats.bytes
    );
    Ok(())
}
