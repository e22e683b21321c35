//! The layer on a real hyper-util client against a real HTTP/1.1 upstream.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_ccr::CcrLayer;

#[tokio::test]
async fn full_loop_over_real_http() {
    let (addr, log) = serve(|round, request| match round {
        0 => tool_calls(&[(
            "call_1",
            "ccr_retrieve",
            json!({"hash": marker_hash(request.text()).unwrap(), "query": "gateway refused"}),
        )]),
        _ => answer("card_declined", 42),
    })
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = ServiceBuilder::new().layer(layer).service(client);

    let url = format!("http://{addr}/v1/chat/completions");
    let response = service
        .clone()
        .oneshot(post(
            &url,
            chat_body(conversation(&big_log(3_000)), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["choices"][0]["message"]["content"], "card_declined");
    assert!(!text.contains("ccr_retrieve"));
    {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].headers["accept-encoding"], "identity");
        assert_eq!(log[1].headers["authorization"], "Bearer sk-test-alice");
        let answer = &retrieval_answers(&log[1].json(), "call_1")[0];
        assert!(answer.contains("card_declined"));
    }
    assert_eq!(handle.stats().await.continuation_rounds, 1);

    // A 429 from a real server passes through with its headers and body.
    let (addr, _) = serve(|_, _| {
        let mut response = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"slow down"}}"#,
        );
        response
            .headers_mut()
            .insert("retry-after", "3".parse().unwrap());
        response
    })
    .await;
    let url = format!("http://{addr}/v1/chat/completions");
    let response = service
        .oneshot(post(
            &url,
            chat_body(conversation(&big_log(3_000)), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["retry-after"], "3");
    assert_eq!(text, r#"{"error":{"message":"slow down"}}"#);
}
