//! The Compress → Cache → Retrieve loop on Gemini `generateContent`, against an in-process
//! scripted upstream that answers in the shape the Gemini API uses.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const GEMINI_URL: &str =
    "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent";
const VERTEX_URL: &str = "https://us-central1-aiplatform.googleapis.com/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent";
const SIGNATURE: &str = "CiQBcsjafE2bYWxsIHlvdXIgYmFzZQ==";

/// A POST with the API key in `x-goog-api-key`, as google-genai sends it.
fn gemini_post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-goog-api-key", "AIza-test-alice")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A conversation: user question, the model's `bash` call (with a thought signature), its
/// output in `response.output`.
fn gemini_conversation(output: &str) -> Value {
    json!([
        {"role": "user", "parts": [{"text": "Why did the payment fail?"}]},
        {"role": "model", "parts": [{"functionCall": {"id": "call_bash", "name": "bash",
            "args": {"cmd": "cat /var/log/app.log"}}, "thoughtSignature": SIGNATURE}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "call_bash", "name": "bash",
            "response": {"output": output, "exit_code": 0}}}]}
    ])
}

fn gemini_body(contents: Value, extra: Value) -> String {
    let mut body = json!({
        "contents": contents,
        "tools": [{"functionDeclarations": [{"name": "bash", "description": "Run a command",
            "parameters": {"type": "OBJECT", "properties": {"cmd": {"type": "STRING"}}}}]}],
        "generationConfig": {"temperature": 0.2}
    });
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

/// A response whose first candidate has `parts`.
fn model_response(parts: Value, prompt: u64, candidates: u64) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        json!({
            "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP",
                "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                "totalTokenCount": prompt + candidates,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1"
        })
        .to_string(),
    )
}

fn text_answer(text: &str, prompt: u64) -> Response<Full<Bytes>> {
    model_response(json!([{"text": text}]), prompt, 7)
}

/// A response with one `functionCall` part per `(id, name, args)`, the first one signed (as
/// the API signs parallel calls), after a thought.
fn function_calls(calls: &[(Option<&str>, &str, Value)]) -> Response<Full<Bytes>> {
    let mut parts = vec![json!({"text": "I should look at the log.", "thought": true})];
    for (index, (id, name, args)) in calls.iter().enumerate() {
        let mut call = json!({"name": name, "args": args});
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        let mut part = json!({"functionCall": call});
        if index == 0 {
            part["thoughtSignature"] = json!(SIGNATURE);
        }
        parts.push(part);
    }
    model_response(Value::Array(parts), 100, 10)
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

/// The view the upstream got in place of the `bash` output of `gemini_conversation`.
fn sent_view(sent: &Value) -> String {
    sent["contents"][2]["parts"][0]["functionResponse"]["response"]["output"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_small_output_passes_byte_identical() {
    let (upstream, log) = upstream(|_, _| text_answer("fine", 10));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let body = "{ \"contents\": [{\"parts\": [{\"text\": \"caf\\u00e9\"}], \"role\": \"user\"},\n {\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"bash\",\"response\":{\"output\":\"small output\"}}}]}], \"generationConfig\": {\"temperature\": 1.0e0}}";
    let response = layer
        .layer(upstream)
        .oneshot(gemini_post(GEMINI_URL, body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap()[0].text(), body);
    assert_eq!(handle.stats().await.outputs_compressed, 0);
}

#[tokio::test]
async fn a_large_function_response_is_compressed_and_every_other_byte_stays() {
    let (upstream, log) = upstream(|_, _| text_answer("The card was declined.", 500));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let output = big_log(2_000);
    let literal = serde_json::to_string(&output).unwrap();
    // Hand-written: odd spacing and key order, number forms, escapes, snake_case members.
    let body = format!(
        "{{\n  \"contents\" : [ {{\"parts\":[{{\"text\":\"caf\\u00e9 \\/ why did the payment fail?\"}}],\"role\":\"user\"}},\n    {{\"role\":\"model\",\"parts\":[{{\"functionCall\":{{\"name\":\"bash\",\"args\":{{\"cmd\":\"cat app.log\"}},\"id\":\"c1\"}},\"thoughtSignature\":\"Q2lR\"}}]}},\n    {{\"role\":\"user\",\"parts\":[{{\"functionResponse\":{{\"will_continue\": false, \"id\":\"c1\",\"name\":\"bash\",\"response\":{{\"exit_code\": 0, \"output\":{literal}, \"truncated\": false}}}}}}]}} ],\n  \"generationConfig\": {{\"temperature\": 0.50, \"seed\": 12345678901234567890, \"topP\": 1e-1}},\n  \"tools\": [ {{\"functionDeclarations\": [ {{\"name\":\"bash\",\"parameters\":{{\"type\":\"OBJECT\"}}}} ] }} ]\n}}\n"
    );
    let response = layer
        .layer(upstream)
        .oneshot(gemini_post(GEMINI_URL, body.clone()))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(text.contains("The card was declined."));

    let sent = log.lock().unwrap()[0].clone();
    assert!(sent.body.len() * 5 < body.len());
    assert_eq!(
        sent.headers["content-length"].to_str().unwrap(),
        sent.body.len().to_string()
    );
    let sent_json = sent.json();
    let view = sent_json["contents"][2]["parts"][0]["functionResponse"]["response"]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        view.contains("card_declined"),
        "the error line stays: {view}"
    );
    let hash = marker_hash(&view).expect("a marker");
    assert_eq!(
        handle.retrieve(&hash).await.unwrap().as_deref(),
        Some(output.as_str())
    );

    // The sent body is the client's body with the output replaced by the view, plus one
    // insertion: the retrieval tool, right after the client's declaration.
    let with_view = body.replacen(&literal, &serde_json::to_string(&view).unwrap(), 1);
    let sent_text = sent.text();
    let prefix = sent_text
        .bytes()
        .zip(with_view.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = sent_text
        .bytes()
        .rev()
        .zip(with_view.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(with_view.len() - prefix);
    assert_eq!(
        prefix + suffix,
        with_view.len(),
        "only an insertion differs"
    );
    assert!(
        with_view[..prefix]
            .trim_end()
            .ends_with(r#"{"name":"bash","parameters":{"type":"OBJECT"}}"#),
        "{}",
        &with_view[prefix.saturating_sub(80)..prefix]
    );
    let inserted = &sent_text[prefix..sent_text.len() - suffix];
    let declaration: Value = serde_json::from_str(inserted.strip_prefix(',').unwrap()).unwrap();
    assert_eq!(declaration["name"], "ccr_retrieve");
    assert_eq!(declaration["parameters"]["required"], json!(["hash"]));
    let declarations = sent_json["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap();
    assert_eq!(declarations.len(), 2);
    assert_eq!(sent_json["tools"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_model_retrieves_and_the_client_gets_only_the_final_answer() {
    let (upstream, log) = upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            function_calls(&[
                (
                    Some("r1"),
                    "ccr_retrieve",
                    json!({"hash": hash, "query": "payment refused"}),
                ),
                (Some("r2"), "ccr_retrieve", json!({"hash": hash})),
            ])
        }
        _ => text_answer("The gateway refused token tok_4242: card_declined.", 300),
    });
    let layer = CcrLayer::new().max_answer_bytes(1 << 20);
    let handle = layer.handle();
    let original = big_log(2_000);
    let response = layer
        .layer(upstream)
        .oneshot(gemini_post(
            GEMINI_URL,
            gemini_body(gemini_conversation(&original), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !text.contains("ccr_retrieve"),
        "the client never sees the tool: {text}"
    );
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        client_view["candidates"][0]["content"]["parts"][0]["text"],
        "The gateway refused token tok_4242: card_declined."
    );
    // Usage is summed over both rounds, the modality breakdown too.
    let usage = &client_view["usageMetadata"];
    assert_eq!(usage["promptTokenCount"], 400);
    assert_eq!(usage["candidatesTokenCount"], 17);
    assert_eq!(usage["totalTokenCount"], 417);
    assert_eq!(usage["promptTokensDetails"][0]["tokenCount"], 400);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    // The continuation extends the first request: the same bytes up to the end of `contents`.
    let first = log[0].text();
    let contents_end = first.find("],\"generationConfig\"").unwrap();
    assert!(log[1].text().starts_with(&first[..contents_end]));
    // The model's turn goes back, thought and signature included.
    let continuation = log[1].json();
    let contents = continuation["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 5);
    assert_eq!(contents[3]["role"], "model");
    assert_eq!(contents[3]["parts"][0]["thought"], true);
    assert_eq!(contents[3]["parts"][1]["thoughtSignature"], SIGNATURE);
    assert_eq!(contents[4]["role"], "user");
    let answers = function_outputs(&continuation, "ccr_retrieve");
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].0.as_deref(), Some("r1"));
    assert!(answers[0].1.contains("card_declined"));
    assert!(
        answers[0].1.len() < 2_000,
        "a query answer lists matches, not everything"
    );
    assert_eq!(answers[1], (Some("r2".to_owned()), original));
    // The tool is still declared, and nothing forbids calls yet.
    assert_eq!(
        continuation["tools"][0]["functionDeclarations"][1]["name"],
        "ccr_retrieve"
    );
    assert!(continuation.get("toolConfig").is_none());

    let stats = handle.stats().await;
    assert_eq!(stats.continuation_rounds, 1);
    assert_eq!(stats.retrievals.search, 1);
    assert_eq!(stats.retrievals.full, 1);
}

#[tokio::test]
async fn the_model_turn_is_replayed_byte_for_byte() {
    let round_0 = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let recorded = round_0.clone();
    let (upstream, log) = upstream(move |round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            // Pretty-printed, with unusual spacing, as a server might send it.
            let body = format!(
                "{{\n  \"candidates\": [\n    {{\n      \"content\": {{\n        \"parts\": [\n          {{\n            \"functionCall\": {{\n              \"name\": \"ccr_retrieve\",\n              \"args\": {{\n                \"hash\": \"{hash}\"\n              }}\n            }},\n            \"thoughtSignature\": \"{SIGNATURE}\"\n          }}\n        ],\n        \"role\": \"model\"\n      }},\n      \"finishReason\": \"STOP\",\n      \"index\": 0\n    }}\n  ],\n  \"usageMetadata\": {{\n    \"promptTokenCount\": 50,\n    \"candidatesTokenCount\": 5,\n    \"totalTokenCount\": 55\n  }}\n}}"
            );
            *recorded.lock().unwrap() = body.clone();
            json_response(StatusCode::OK, body)
        }
        _ => text_answer("ok", 60),
    });
    let original = big_log(1_500);
    let response = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .layer(upstream)
        .oneshot(gemini_post(
            GEMINI_URL,
            gemini_body(gemini_conversation(&original), json!({})),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["usageMetadata"]["totalTokenCount"], 122);
    let round_0 = round_0.lock().unwrap().clone();
    let start = round_0.find("{\n        \"parts\"").unwrap();
    let end = round_0.find(",\n      \"finishReason\"").unwrap();
    let model_turn = &round_0[start..end];
    let log = log.lock().unwrap().clone();
    let continuation = log[1].text();
    assert!(
        continuation.contains(&format!("{model_turn},{{\"role\":\"user\",\"parts\":[")),
        "{continuation}"
    );
    // A call without an id gets a response without one, paired by name.
    let answers = function_outputs(&log[1].json(), "ccr_retrieve");
    assert_eq!(answers, vec![(None, original)]);
    assert!(!continuation.contains("ccr_0"));
}

#[tokio::test]
async fn the_round_cap_forces_a_final_answer_with_mode_none() {
    let (upstream, log) = upstream(|round, request| {
        let mode = &request.json()["toolConfig"]["functionCallingConfig"]["mode"];
        if round < 10 && mode != "NONE" {
            let hash = marker_hash(request.text()).unwrap();
            function_calls(&[(
                Some(&format!("call_{round}")),
                "ccr_retrieve",
                json!({"hash": hash}),
            )])
        } else {
            text_answer("final", 50)
        }
    });
    let response = CcrLayer::new()
        .max_rounds(2)
        .layer(upstream)
        .oneshot(
            Request::post(VERTEX_URL)
                .header("content-type", "application/json")
                .header("authorization", "Bearer ya29.vertex-token")
                .body(Full::new(Bytes::from(gemini_body(
                    gemini_conversation(&big_log(1_500)),
                    json!({"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}),
                ))))
                .unwrap(),
        )
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value["candidates"][0]["content"]["parts"][0]["text"],
        "final"
    );
    assert_eq!(value["usageMetadata"]["promptTokenCount"], 250);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "the first request and two continuations");
    let mode =
        |index: usize| log[index].json()["toolConfig"]["functionCallingConfig"]["mode"].clone();
    assert_eq!(mode(0), "AUTO");
    assert_eq!(mode(1), "AUTO");
    assert_eq!(mode(2), "NONE");
    // Both answered rounds are in the last request.
    assert_eq!(
        function_outputs(&log[2].json(), "ccr_retrieve")
            .iter()
            .map(|(id, _)| id.clone().unwrap())
            .collect::<Vec<_>>(),
        ["call_0", "call_1"]
    );
}

#[tokio::test]
async fn a_model_that_ignores_the_cap_gets_its_retrieval_calls_stripped() {
    let (upstream, log) = upstream(|round, request| {
        let hash = marker_hash(request.text()).unwrap();
        function_calls(&[(
            Some(&format!("call_{round}")),
            "ccr_retrieve",
            json!({"hash": hash}),
        )])
    });
    let response = CcrLayer::new()
        .max_rounds(1)
        .layer(upstream)
        .oneshot(gemini_post(
            GEMINI_URL,
            gemini_body(gemini_conversation(&big_log(1_500)), json!({})),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    // Only the thought is left.
    let parts = value["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["thought"], true);
    assert_eq!(value["usageMetadata"]["promptTokenCount"], 200);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn mixed_calls_go_back_to_the_client_without_ours() {
    let (upstream, log) = upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        function_calls(&[
            (None, "ccr_retrieve", json!({"hash": hash})),
            (None, "bash", json!({"cmd": "ls"})),
        ])
    });
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(gemini_post(
            GEMINI_URL,
            gemini_body(gemini_conversation(&big_log(1_500)), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );
    let value: Value = serde_json::from_str(&text).unwrap();
    let parts = value["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(parts.len(), 2, "the thought and the client's call");
    assert_eq!(parts[1]["functionCall"]["name"], "bash");
    assert_eq!(parts[1]["functionCall"]["args"], json!({"cmd": "ls"}));
    // The signature of the first call stays on the first call the client gets.
    assert_eq!(parts[1]["thoughtSignature"], SIGNATURE);
    assert_eq!(value["candidates"][0]["finishReason"], "STOP");
    assert_eq!(value["usageMetadata"]["promptTokenCount"], 100);
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "no continuation for a mixed turn"
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_byte_identical() {
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        let error_body = r#"{
  "error": {
    "code": 429,
    "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED"
  }
}
"#;
        let (upstream, log) = upstream(move |_, _| {
            let mut response = json_response(status, error_body);
            response
                .headers_mut()
                .insert("retry-after", "7".parse().unwrap());
            response
        });
        let response = CcrLayer::new()
            .layer(upstream)
            .oneshot(gemini_post(
                GEMINI_URL,
                gemini_body(gemini_conversation(&big_log(1_500)), json!({})),
            ))
            .await
            .unwrap();
        let (parts, text) = body_text(response).await;
        assert_eq!(parts.status, status);
        assert_eq!(parts.headers["retry-after"], "7");
        assert_eq!(parts.headers["x-request-id"], "req_123");
        assert_eq!(text, error_body);
        assert!(marker_hash(log.lock().unwrap()[0].text()).is_some());
    }
}

#[tokio::test]
async fn an_error_during_a_continuation_passes_through() {
    let error_body =
        r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
    let (upstream, log) = upstream(move |round, request| match round {
        0 => function_calls(&[(
            Some("c"),
            "ccr_retrieve",
            json!({"hash": marker_hash(request.text()).unwrap()}),
        )]),
        _ => json_response(StatusCode::SERVICE_UNAVAILABLE, error_body),
    });
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(gemini_post(
            GEMINI_URL,
            gemini_body(gemini_conversation(&big_log(1_500)), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text, error_body);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn the_same_request_twice_sends_identical_bytes() {
    let (upstream, log) = upstream(|_, _| text_answer("ok", 10));
    let layer = CcrLayer::new();
    let body = gemini_body(gemini_conversation(&big_log(1_500)), json!({}));
    for _ in 0..2 {
        layer
            .layer(upstream.clone())
            .oneshot(gemini_post(GEMINI_URL, body.clone()))
            .await
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(log[0].body.len() * 5 < body.len(), "it was compressed");
    assert_eq!(log[0].body, log[1].body);
}

#[tokio::test]
async fn requests_the_layer_must_not_rewrite_pass_through_untouched() {
    let big = big_log(1_500);
    let valid = gemini_body(gemini_conversation(&big), json!({}));
    // Without alt=sse a stream is one JSON array in pieces: not read.
    let stream_url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let cases: Vec<(&str, String)> = vec![
        (stream_url, valid.clone()),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:countTokens",
            valid.clone(),
        ),
        (GEMINI_URL, valid[..valid.len() - 3].to_owned()),
        (
            GEMINI_URL,
            r#"{"prompt":"not a generateContent body"}"#.to_owned(),
        ),
        (
            GEMINI_URL,
            gemini_body(
                gemini_conversation(&big),
                json!({"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}),
            ),
        ),
        (
            GEMINI_URL,
            gemini_body(
                gemini_conversation(&big),
                json!({"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["bash"]}}}),
            ),
        ),
        (
            GEMINI_URL,
            gemini_body(
                gemini_conversation(&big),
                json!({"tools": [{"functionDeclarations": [{"name": "ccr_retrieve"}]}]}),
            ),
        ),
        (
            GEMINI_URL,
            gemini_body(
                gemini_conversation(&big),
                json!({"generationConfig": {"candidateCount": 2}}),
            ),
        ),
        (
            GEMINI_URL,
            json!({"contents": gemini_conversation(&big), "cachedContent": "cachedContents/c1"})
                .to_string(),
        ),
        (
            GEMINI_URL,
            json!({"contents": gemini_conversation(&big), "tools": [{"googleSearch": {}}]})
                .to_string(),
        ),
    ];
    for (url, body) in cases {
        let (upstream, log) = upstream(|_, _| text_answer("ok", 1));
        CcrLayer::new()
            .layer(upstream)
            .oneshot(gemini_post(url, body.clone()))
            .await
            .unwrap();
        assert_eq!(log.lock().unwrap()[0].text(), body, "{url}");
    }
}

#[tokio::test]
async fn a_large_array_becomes_a_string_with_a_marker_and_comes_back_whole() {
    let records: Vec<Value> = (0..400)
        .map(|i| {
            json!({"order": 88_000 + i, "status": if i == 123 { "card_declined" } else { "paid" },
                "amount_cents": 1_000 + i * 7, "customer": format!("customer-{}", i % 37)})
        })
        .collect();
    // Pretty-printed, so that the array's original text is the client's own bytes. A second
    // output, a log, runs in parallel: the layer looks at a request only when it holds a long
    // string literal (its cheap pre-filter), which an array of small records alone is not.
    let array_text = serde_json::to_string_pretty(&records).unwrap();
    let log_literal = serde_json::to_string(&big_log(1_500)).unwrap();
    let body = format!(
        r#"{{"contents": [
  {{"role": "user", "parts": [{{"text": "Which order was declined?"}}]}},
  {{"role": "model", "parts": [{{"functionCall": {{"name": "list_orders", "args": {{"day": "2026-11-23"}}}}}}, {{"functionCall": {{"name": "bash", "args": {{"cmd": "cat app.log"}}}}}}]}},
  {{"role": "user", "parts": [{{"functionResponse": {{"name": "list_orders",
    "response": {{"result": {array_text}, "next_page": null}}}}}}, {{"functionResponse": {{"name": "bash", "response": {{"output": {log_literal}}}}}}}]}}
]}}"#
    );
    let (upstream, log) = upstream(|_, _| text_answer("Order 88123.", 10));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    layer
        .layer(upstream)
        .oneshot(gemini_post(GEMINI_URL, body.clone()))
        .await
        .unwrap();
    let sent = log.lock().unwrap()[0].json();
    let response = &sent["contents"][2]["parts"][0]["functionResponse"]["response"];
    let view = response["result"]
        .as_str()
        .expect("the array became a string");
    assert!(view.contains("card_declined"), "{view}");
    assert_eq!(response["next_page"], Value::Null);
    let hash = marker_hash(view).unwrap();
    assert_eq!(
        handle.retrieve(&hash).await.unwrap().as_deref(),
        Some(array_text.as_str())
    );
    let log_view = sent["contents"][2]["parts"][1]["functionResponse"]["response"]["output"]
        .as_str()
        .unwrap();
    assert_ne!(marker_hash(log_view).unwrap(), hash);
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"],
        "ccr_retrieve"
    );
    assert_eq!(handle.stats().await.outputs_compressed, 2);
}

#[tokio::test]
async fn the_tenant_comes_from_the_key_header_or_query_parameter() {
    let layer = CcrLayer::new().secret("fixed");
    let output = big_log(1_500);
    let body = gemini_body(gemini_conversation(&output), json!({}));
    let mut hashes = Vec::new();
    for (url, header) in [
        (format!("{GEMINI_URL}?key=AIza-alice"), None),
        (format!("{GEMINI_URL}?key=AIza-bob"), None),
        (GEMINI_URL.to_owned(), Some("AIza-alice")),
    ] {
        let (upstream, log) = upstream(|_, _| text_answer("ok", 1));
        let mut request = gemini_post(&url, body.clone());
        request.headers_mut().remove("x-goog-api-key");
        if let Some(key) = header {
            request
                .headers_mut()
                .insert("x-goog-api-key", key.parse().unwrap());
        }
        layer.layer(upstream).oneshot(request).await.unwrap();
        hashes.push(marker_hash(log.lock().unwrap()[0].text()).unwrap());
    }
    assert_ne!(hashes[0], hashes[1], "two keys, two tenants");
    assert_eq!(hashes[0], hashes[2], "the same key, however it is sent");

    // Bob's model asks for Alice's hash (quoted in his conversation): unknown to him.
    let alice = hashes[0].clone();
    let (upstream, log) = upstream(move |round, _| match round {
        0 => function_calls(&[(Some("x"), "ccr_retrieve", json!({"hash": alice.clone()}))]),
        _ => text_answer("done", 1),
    });
    let mut contents = gemini_conversation(&big_log(1_200));
    contents[0]["parts"][0]["text"] = json!(format!("What is in hash={}?", hashes[0]));
    let mut request = gemini_post(
        &format!("{GEMINI_URL}?key=AIza-bob"),
        gemini_body(contents, json!({})),
    );
    request.headers_mut().remove("x-goog-api-key");
    layer.layer(upstream).oneshot(request).await.unwrap();
    let answers = function_outputs(&log.lock().unwrap()[1].json(), "ccr_retrieve");
    assert!(answers[0].1.contains("is unknown"), "{answers:?}");
}

#[tokio::test]
async fn the_view_is_the_same_whatever_comes_after_the_output() {
    // Determinism: a later turn carries the same bytes for an earlier output.
    let (upstream, log) = upstream(|_, _| text_answer("ok", 1));
    let layer = CcrLayer::new();
    let output = big_log(1_500);
    let first = gemini_conversation(&output);
    let mut later = first.clone();
    later.as_array_mut().unwrap().extend([
        json!({"role": "model", "parts": [{"text": "The log shows a declined card."}]}),
        json!({"role": "user", "parts": [{"text": "And the worker?"}]}),
    ]);
    for contents in [first, later] {
        layer
            .layer(upstream.clone())
            .oneshot(gemini_post(GEMINI_URL, gemini_body(contents, json!({}))))
            .await
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(sent_view(&log[0].json()), sent_view(&log[1].json()));
    assert!(marker_hash(&sent_view(&log[0].json())).is_some());
}
