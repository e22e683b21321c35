//! async-openai's `chat().create` through the layer, against a local scripted upstream.
#![cfg(feature = "async-openai")]

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use common::*;
use serde_json::json;
use tower_ccr::CcrLayer;
use tower_ccr::async_openai::CcrHttpService;

#[tokio::test]
async fn chat_create_runs_through_the_layer() {
    let (addr, log) = serve(|round, request| {
        // What the layer sends still deserializes into async-openai's request type.
        serde_json::from_slice::<CreateChatCompletionRequest>(&request.body)
            .expect("a valid request");
        match round {
            0 => tool_calls(&[(
                "call_9",
                "ccr_retrieve",
                json!({"hash": marker_hash(request.text()).unwrap()}),
            )]),
            _ => answer("The gateway declined the card.", 1_000),
        }
    })
    .await;
    let layer = CcrLayer::new().max_answer_bytes(1 << 20);
    let handle = layer.handle();
    let config = OpenAIConfig::new()
        .with_api_key("sk-test")
        .with_api_base(format!("http://{addr}/v1"));
    let client = Client::with_config(config)
        .with_http_service(CcrHttpService::new(&layer, reqwest::Client::new()));

    let original = big_log(2_500);
    let request: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "gpt-x",
        "messages": conversation(&original),
        "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
    }))
    .unwrap();
    let response: CreateChatCompletionResponse = client.chat().create(request).await.unwrap();
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("The gateway declined the card.")
    );
    assert!(response.choices[0].message.tool_calls.is_none());
    assert_eq!(response.usage.unwrap().prompt_tokens, 1_100);

    {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[0].body.len() * 5 < original.len());
        assert_eq!(retrieval_answers(&log[1].json(), "call_9"), vec![original]);
    }
    assert_eq!(handle.stats().await.retrievals.full, 1);
}

#[tokio::test]
async fn api_errors_reach_async_openai_unchanged() {
    let (addr, _) = serve(|_, _| {
        json_response(
            http::StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"bad model","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#,
        )
    })
    .await;
    let config = OpenAIConfig::new().with_api_base(format!("http://{addr}/v1"));
    let client = Client::with_config(config).with_http_service(CcrHttpService::new(
        &CcrLayer::new(),
        reqwest::Client::new(),
    ));
    let request: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "nope", "messages": conversation(&big_log(2_000))
    }))
    .unwrap();
    let error = client.chat().create(request).await.unwrap_err();
    match error {
        async_openai::error::OpenAIError::ApiError(api) => {
            assert_eq!(api.status_code.as_u16(), 400);
            assert_eq!(api.api_error.message, "bad model");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn sse_body(chunks: &[serde_json::Value]) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

fn stream_chunk(id: &str, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
}

#[tokio::test]
async fn chat_create_stream_runs_through_the_layer() {
    use futures::StreamExt;
    let (addr, log) = serve(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let arguments = json!({"hash": hash, "query": "payment"}).to_string();
            sse_body(&[
                stream_chunk(
                    "chatcmpl-1",
                    json!({"role": "assistant", "content": null}),
                    None,
                ),
                stream_chunk(
                    "chatcmpl-1",
                    json!({"tool_calls": [{"index": 0, "id": "call_s", "type": "function",
                        "function": {"name": "ccr_retrieve", "arguments": arguments}}]}),
                    None,
                ),
                stream_chunk("chatcmpl-1", json!({}), Some("tool_calls")),
            ])
        }
        _ => sse_body(&[
            stream_chunk(
                "chatcmpl-2",
                json!({"role": "assistant", "content": "The gateway "}),
                None,
            ),
            stream_chunk("chatcmpl-2", json!({"content": "declined the card."}), None),
            stream_chunk("chatcmpl-2", json!({}), Some("stop")),
        ]),
    })
    .await;
    let layer = CcrLayer::new();
    let config = OpenAIConfig::new()
        .with_api_key("sk-test")
        .with_api_base(format!("http://{addr}/v1"));
    let client = Client::with_config(config)
        .with_http_service(CcrHttpService::new(&layer, reqwest::Client::new()));
    let request: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "gpt-x",
        "messages": conversation(&big_log(2_500)),
        "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
    }))
    .unwrap();
    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut content = String::new();
    let mut finish_reasons = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("every chunk deserializes");
        assert_eq!(chunk.id, "chatcmpl-1", "one completion");
        let choice = &chunk.choices[0];
        assert!(
            choice.delta.tool_calls.is_none(),
            "the client never sees the tool"
        );
        content.push_str(choice.delta.content.as_deref().unwrap_or_default());
        finish_reasons.extend(choice.finish_reason);
    }
    assert_eq!(content, "The gateway declined the card.");
    assert_eq!(finish_reasons.len(), 1);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert!(retrieval_answers(&log[1].json(), "call_s")[0].contains("card_declined"));
}
