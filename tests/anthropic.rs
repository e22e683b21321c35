//! The Compress → Cache → Retrieve loop on Anthropic Messages, against an in-process scripted
//! upstream.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const MESSAGES_URL: &str = "https://api.anthropic.com/v1/messages";

/// A request as an Anthropic SDK sends it, with an `x-api-key` credential.
fn post_messages(body: impl Into<Bytes>, api_key: &str) -> Request<Full<Bytes>> {
    Request::post(MESSAGES_URL)
        .header("content-type", "application/json")
        .header("x-api-key", api_key)
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(body.into()))
        .unwrap()
}

/// The client's tools.
fn client_tools() -> Value {
    json!([{"name": "bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}])
}

/// A conversation: question, the model's call of `bash`, its output in a `tool_result`.
fn messages(output: &str) -> Value {
    json!([
        {"role": "user", "content": "Why did the payment fail?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me read the log."},
            {"type": "tool_use", "id": "toolu_bash", "name": "bash", "input": {"cmd": "cat /var/log/app.log"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_bash", "content": output}
        ]}
    ])
}

/// A Messages request body in the SDK's key order.
fn messages_body(messages: Value, extra: Value) -> String {
    let mut body = json!({"max_tokens": 1024, "messages": messages, "model": "claude-sonnet-4-5",
        "system": "You are a helpful SRE assistant.", "tools": client_tools()});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

/// A Messages response: `content` blocks as JSON text (sent byte for byte), a stop reason and
/// usage numbers.
fn message(content: &str, stop_reason: &str, input_tokens: u64) -> http::Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        format!(
            r#"{{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":{content},"stop_reason":"{stop_reason}","stop_sequence":null,"usage":{{"input_tokens":{input_tokens},"cache_creation_input_tokens":3,"cache_read_input_tokens":1000,"cache_creation":{{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":0}},"output_tokens":7,"service_tier":"standard"}}}}"#
        ),
    )
}

fn final_answer(text: &str, input_tokens: u64) -> http::Response<Full<Bytes>> {
    message(
        &json!([{"type": "text", "text": text}]).to_string(),
        "end_turn",
        input_tokens,
    )
}

/// `tool_use` blocks: `(id, tool name, input)`.
fn tool_uses(calls: &[(&str, &str, Value)]) -> String {
    let blocks: Vec<Value> = calls
        .iter()
        .map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        )
        .collect();
    Value::Array(blocks).to_string()
}

/// The `tool_result` blocks answering `tool_use_id` in a request.
fn results_for(request: &Value, tool_use_id: &str) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user" && m["content"].is_array())
        .flat_map(|m| m["content"].as_array().unwrap().clone())
        .filter(|b| b["type"] == "tool_result" && b["tool_use_id"] == tool_use_id)
        .collect()
}

#[tokio::test]
async fn a_small_output_passes_byte_identical() {
    let (upstream, log) = upstream(|_, _| final_answer("fine", 10));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let body = "{\"max_tokens\":64,\n \"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9\"},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":\"small output\",\"cache_control\":{\"type\":\"ephemeral\"}}]}],\"model\":\"claude-x\", \"temperature\": 1.0e0}";
    let response = service
        .oneshot(post_messages(body, "sk-ant-alice"))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(text.contains("fine"));
    assert_eq!(log.lock().unwrap()[0].text(), body);
    assert_eq!(handle.stats().await.outputs_compressed, 0);
}

#[tokio::test]
async fn a_large_result_is_compressed_and_every_other_byte_stays() {
    let (upstream, log) = upstream(|_, _| final_answer("The card was declined.", 500));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let original = big_log(2_000);
    let literal = serde_json::to_string(&original).unwrap();
    // Hand-written: blocks with cache_control (on the system prompt, a client tool and the
    // result itself), is_error, a thinking block, odd spacing, unicode escapes and raw unicode.
    let head = concat!(
        "{\"max_tokens\": 2048,\n \"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Why did the payment fail? \\u00bfpor qu\u{e9}?\"}]},\n",
        "  {\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"Read the log.\",\"signature\":\"EqQBCkgIARAB\\/sig==\"},",
        "{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"bash\",\"input\":{\"cmd\":\"cat app.log\"}}]},\n",
        "  {\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\",\"is_error\":false,\"content\":"
    );
    let tail_before_tools = concat!(
        ",\"cache_control\":{\"type\":\"ephemeral\",\"ttl\":\"1h\"}},{\"type\":\"text\",\"text\":\"Be brief.\"}]}],\n",
        " \"model\":\"claude-sonnet-4-5\",\"system\":[{\"type\":\"text\",\"text\":\"You are an SRE.\",\"cache_control\":{\"type\":\"ephemeral\"}}],",
        "\"tools\":[{\"name\":\"bash\",\"input_schema\":{\"type\":\"object\"},\"cache_control\":{\"type\":\"ephemeral\"}}"
    );
    let tail_after_tools = "],\"tool_choice\":{\"type\":\"auto\"},\"top_k\":5}\n";
    let body = format!("{head}{literal}{tail_before_tools}{tail_after_tools}");
    let response = service
        .oneshot(post_messages(body.clone(), "sk-ant-alice"))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(text.contains("The card was declined."));

    let sent = log.lock().unwrap()[0].clone();
    let sent_text = sent.text();
    assert!(
        sent.body.len() * 5 < body.len(),
        "{} vs {}",
        sent.body.len(),
        body.len()
    );
    // Exactly two edits: the output's string literal, and our tool after the client's.
    assert!(
        sent_text.starts_with(head),
        "bytes before the output are identical"
    );
    let rest = &sent_text[head.len()..];
    let view_end = rest
        .find(tail_before_tools)
        .expect("bytes after the output are identical");
    let view: String = serde_json::from_str(&rest[..view_end]).unwrap();
    assert!(
        view.contains("card_declined"),
        "the error line stays in view: {view}"
    );
    let hash = marker_hash(&view).expect("a marker");
    let injected = &rest[view_end + tail_before_tools.len()..];
    assert!(
        injected.starts_with(",{\"name\":\"ccr_retrieve\","),
        "{injected}"
    );
    assert!(injected.ends_with(tail_after_tools));
    let tool: Value =
        serde_json::from_str(&injected[1..injected.len() - tail_after_tools.len()]).unwrap();
    assert_eq!(tool["input_schema"]["required"], json!(["hash"]));
    assert_eq!(
        sent.headers["content-length"].to_str().unwrap(),
        sent.body.len().to_string()
    );
    // Headers go upstream as they came.
    assert_eq!(sent.headers["x-api-key"], "sk-ant-alice");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");

    assert_eq!(
        handle.retrieve(&hash).await.unwrap().as_deref(),
        Some(original.as_str())
    );
    assert_eq!(handle.stats().await.outputs_compressed, 1);
}

#[tokio::test]
async fn text_blocks_of_a_result_are_compressed_one_by_one() {
    let (upstream, log) = upstream(|_, _| final_answer("ok", 10));
    let first = big_log(1_500);
    let second = big_log(1_200);
    let mut conversation = messages("");
    conversation[2]["content"][0]["content"] = json!([
        {"type": "text", "text": first},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "text", "text": "short note"},
        {"type": "text", "text": second}
    ]);
    conversation[2]["content"][0]["is_error"] = json!(true);
    CcrLayer::new()
        .layer(upstream)
        .oneshot(post_messages(messages_body(conversation, json!({})), "k"))
        .await
        .unwrap();
    let sent = log.lock().unwrap()[0].json();
    let result = &sent["messages"][2]["content"][0];
    assert_eq!(result["is_error"], true);
    let blocks = result["content"].as_array().unwrap();
    assert_eq!(blocks.len(), 4);
    let first_hash = marker_hash(blocks[0]["text"].as_str().unwrap()).unwrap();
    let second_hash = marker_hash(blocks[3]["text"].as_str().unwrap()).unwrap();
    assert_ne!(first_hash, second_hash);
    assert_eq!(blocks[1]["source"]["data"], "iVBORw0KGgo=");
    assert_eq!(blocks[2]["text"], "short note");
}

#[tokio::test]
async fn the_same_request_twice_sends_identical_bytes() {
    let (upstream, log) = upstream(|_, _| final_answer("ok", 10));
    let layer = CcrLayer::new();
    let body = messages_body(messages(&big_log(1_500)), json!({}));
    for _ in 0..2 {
        layer
            .layer(upstream.clone())
            .oneshot(post_messages(body.clone(), "sk-ant-alice"))
            .await
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(marker_hash(log[0].text()).is_some());
    assert_eq!(log[0].body, log[1].body);
}

#[tokio::test]
async fn the_model_retrieves_and_the_client_gets_only_the_final_answer() {
    // The first turn: thinking (with a signature holding escapes), text, two retrieval calls.
    let first_content = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let recorded_content = first_content.clone();
    let (upstream, log) = upstream(move |round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            let calls = tool_uses(&[
                (
                    "toolu_r1",
                    "ccr_retrieve",
                    json!({"hash": hash, "query": "payment refused"}),
                ),
                ("toolu_r2", "ccr_retrieve", json!({"hash": hash})),
            ]);
            let content = format!(
                r#"[{{"type":"thinking","thinking":"The view hides the middle.","signature":"ErUBCkYIBBgCIkB\/a+b\u002b=="}},{{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix\/Laf"}},{{"type":"text","text":"Let me see more.","citations":null}},{}]"#,
                &calls[1..calls.len() - 1]
            );
            *recorded_content.lock().unwrap() = content.clone();
            message(&content, "tool_use", 100)
        }
        _ => final_answer("The gateway refused token tok_4242: card_declined.", 300),
    });
    let layer = CcrLayer::new().max_answer_bytes(1 << 20);
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let original = big_log(2_000);
    let response = service
        .oneshot(post_messages(
            messages_body(
                messages(&original),
                json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}),
            ),
            "sk-ant-alice",
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !text.contains("ccr_retrieve"),
        "the client never sees the tool: {text}"
    );
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        client_view["content"],
        json!([{"type": "text", "text": "The gateway refused token tok_4242: card_declined."}])
    );
    assert_eq!(client_view["stop_reason"], "end_turn");
    // Usage is summed over both rounds, nested counts included.
    assert_eq!(
        client_view["usage"],
        json!({"input_tokens": 400, "cache_creation_input_tokens": 6, "cache_read_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 6, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 14, "service_tier": "standard"})
    );
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    // The continuation extends the first request: same bytes up to the end of its messages.
    let first = log[0].text();
    let messages_end = first.find("],\"model\"").unwrap();
    assert!(log[1].text().starts_with(&first[..messages_end]));
    // The model's turn goes back byte for byte (signatures, escapes, nulls), then the results.
    let replayed = format!(
        r#",{{"role":"assistant","content":{}}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_r1","content":"#,
        first_content.lock().unwrap()
    );
    assert!(
        log[1].text()[messages_end..].starts_with(&replayed),
        "{}",
        &log[1].text()[messages_end..messages_end + 400]
    );
    let continuation = log[1].json();
    let turn = &continuation["messages"].as_array().unwrap()[3..];
    assert_eq!(turn.len(), 2);
    assert_eq!(turn[0]["role"], "assistant");
    assert_eq!(turn[1]["role"], "user");
    let ids: Vec<&str> = turn[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tool_use_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["toolu_r1", "toolu_r2"]);
    let searched = results_for(&continuation, "toolu_r1");
    let searched = searched[0]["content"].as_str().unwrap();
    assert!(searched.contains("card_declined"));
    assert!(
        searched.len() < 2_000,
        "a query answer lists matches, not everything"
    );
    assert_eq!(
        results_for(&continuation, "toolu_r2")[0]["content"],
        original.as_str()
    );
    // The tools stay defined (the history now holds calls of ours).
    assert_eq!(continuation["tools"].as_array().unwrap().len(), 2);
    assert!(continuation.get("tool_choice").is_none());

    let stats = handle.stats().await;
    assert_eq!(stats.continuation_rounds, 1);
    assert_eq!(stats.retrievals.search, 1);
    assert_eq!(stats.retrievals.full, 1);
}

#[tokio::test]
async fn the_round_cap_forces_a_final_answer() {
    for client_choice in [json!({"tool_choice": {"type": "auto"}}), json!({})] {
        let (upstream, log) = upstream(|round, request| {
            if round < 10 && request.json()["tool_choice"] != json!({"type": "none"}) {
                let hash = marker_hash(request.text()).unwrap();
                message(
                    &tool_uses(&[(
                        &format!("toolu_{round}"),
                        "ccr_retrieve",
                        json!({"hash": hash}),
                    )]),
                    "tool_use",
                    10,
                )
            } else {
                final_answer("final", 50)
            }
        });
        let service = CcrLayer::new().max_rounds(2).layer(upstream);
        let response = service
            .oneshot(post_messages(
                messages_body(messages(&big_log(1_500)), client_choice.clone()),
                "k",
            ))
            .await
            .unwrap();
        let (_, text) = body_text(response).await;
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["content"][0]["text"], "final");
        assert_eq!(value["usage"]["input_tokens"], 70);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 3, "the first request and two continuations");
        assert_eq!(
            log[1].json().get("tool_choice"),
            client_choice.get("tool_choice")
        );
        assert_eq!(log[2].json()["tool_choice"], json!({"type": "none"}));
        // Both rounds' calls are answered in the last request.
        let last = log[2].json();
        assert_eq!(results_for(&last, "toolu_0").len(), 1);
        assert_eq!(results_for(&last, "toolu_1").len(), 1);
    }
}

#[tokio::test]
async fn a_model_that_ignores_the_cap_gets_its_calls_stripped() {
    let (upstream, log) = upstream(|round, request| {
        let hash = marker_hash(request.text()).unwrap();
        let calls = tool_uses(&[(
            &format!("toolu_{round}"),
            "ccr_retrieve",
            json!({"hash": hash}),
        )]);
        message(
            &format!(
                r#"[{{"type":"text","text":"More."}},{}]"#,
                &calls[1..calls.len() - 1]
            ),
            "tool_use",
            10,
        )
    });
    let service = CcrLayer::new().max_rounds(1).layer(upstream);
    let response = service
        .oneshot(post_messages(
            messages_body(messages(&big_log(1_500)), json!({})),
            "k",
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"));
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["stop_reason"], "end_turn");
    assert_eq!(value["content"], json!([{"type": "text", "text": "More."}]));
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn mixed_calls_go_back_to_the_client_without_ours() {
    let (upstream, log) = upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        let calls = tool_uses(&[
            ("toolu_a", "ccr_retrieve", json!({"hash": hash})),
            ("toolu_b", "bash", json!({"cmd": "ls"})),
        ]);
        message(
            &format!(
                r#"[{{"type":"thinking","thinking":"Both.","signature":"c2ln"}},{}]"#,
                &calls[1..calls.len() - 1]
            ),
            "tool_use",
            10,
        )
    });
    let service = CcrLayer::new().layer(upstream);
    let response = service
        .oneshot(post_messages(
            messages_body(messages(&big_log(1_500)), json!({})),
            "k",
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
    assert_eq!(
        value["content"],
        json!([{"type": "thinking", "thinking": "Both.", "signature": "c2ln"},
            {"type": "tool_use", "id": "toolu_b", "name": "bash", "input": {"cmd": "ls"}}])
    );
    // Still a valid tool turn: every call left is the client's.
    assert_eq!(value["stop_reason"], "tool_use");
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
        StatusCode::from_u16(529).unwrap(),
    ] {
        let error_body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011"}"#;
        let (upstream, _) = upstream(move |_, _| {
            let mut response = json_response(status, error_body);
            response
                .headers_mut()
                .insert("retry-after", "7".parse().unwrap());
            response
        });
        let service = CcrLayer::new().layer(upstream);
        let response = service
            .oneshot(post_messages(
                messages_body(messages(&big_log(1_500)), json!({})),
                "k",
            ))
            .await
            .unwrap();
        let (parts, text) = body_text(response).await;
        assert_eq!(parts.status, status);
        assert_eq!(parts.headers["retry-after"], "7");
        assert_eq!(parts.headers["x-request-id"], "req_123");
        assert_eq!(text, error_body);
    }
}

#[tokio::test]
async fn an_overload_during_a_continuation_passes_through() {
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let (upstream, log) = upstream(move |round, request| match round {
        0 => message(
            &tool_uses(&[(
                "toolu_c",
                "ccr_retrieve",
                json!({"hash": marker_hash(request.text()).unwrap()}),
            )]),
            "tool_use",
            10,
        ),
        _ => json_response(StatusCode::from_u16(529).unwrap(), overloaded),
    });
    let response = CcrLayer::new()
        .layer(upstream)
        .oneshot(post_messages(
            messages_body(messages(&big_log(1_500)), json!({})),
            "k",
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status.as_u16(), 529);
    assert_eq!(text, overloaded);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn foreign_and_unredeemable_requests_pass_through_untouched() {
    let big = big_log(1_500);
    let valid = messages_body(messages(&big), json!({}));
    let base = "https://api.anthropic.com/v1";
    let cases: Vec<(String, String)> = vec![
        (
            format!("{base}/messages"),
            messages_body(messages(&big), json!({"tool_choice": {"type": "none"}})),
        ),
        (
            format!("{base}/messages"),
            messages_body(messages(&big), json!({"tool_choice": {"type": "tool", "name": "bash"}})),
        ),
        (
            format!("{base}/messages"),
            messages_body(
                messages(&big),
                json!({"tools": [{"name": "ccr_retrieve", "input_schema": {"type": "object"}}]}),
            ),
        ),
        (format!("{base}/messages"), valid[..valid.len() - 2].to_owned()),
        (format!("{base}/messages/count_tokens"), valid.clone()),
        (format!("{base}/messages/batches"), valid.clone()),
        // OpenAI Assistants posts to `…/threads/{id}/messages` too.
        (
            "https://api.openai.com/v1/threads/thread_1/messages".to_owned(),
            json!({"role": "user", "content": big}).to_string(),
        ),
        (
            "https://api.openai.com/v1/threads/thread_1/messages".to_owned(),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": big}]})
                .to_string(),
        ),
    ];
    for (url, body) in cases {
        let (upstream, log) = upstream(|_, _| final_answer("ok", 1));
        let request = Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("x-api-key", "k")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        CcrLayer::new()
            .layer(upstream)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(log.lock().unwrap()[0].text(), body, "{url}");
    }
    // And the same valid request is rewritten: the cases above can fail.
    let (upstream, log) = upstream(|_, _| final_answer("ok", 1));
    CcrLayer::new()
        .layer(upstream)
        .oneshot(post_messages(valid.clone(), "k"))
        .await
        .unwrap();
    assert_ne!(log.lock().unwrap()[0].text(), valid);
}

#[tokio::test]
async fn the_x_api_key_is_the_tenant() {
    let layer = CcrLayer::new().max_answer_bytes(1 << 20);
    // Alice's output is stored under her key.
    let (upstream_a, log_a) = upstream(|_, _| final_answer("ok", 1));
    layer
        .layer(upstream_a)
        .oneshot(post_messages(
            messages_body(messages(&big_log(1_500)), json!({})),
            "sk-ant-ALICE",
        ))
        .await
        .unwrap();
    let alice_hash = marker_hash(log_a.lock().unwrap()[0].text()).unwrap();

    // A later conversation that quotes the marker asks for it, once with Bob's key and once
    // with Alice's.
    for (key, resolves) in [("sk-ant-BOB", false), ("sk-ant-ALICE", true)] {
        let hash = alice_hash.clone();
        let (upstream_b, log_b) = upstream(move |round, _| match round {
            0 => message(
                &tool_uses(&[("toolu_x", "ccr_retrieve", json!({"hash": hash.clone()}))]),
                "tool_use",
                1,
            ),
            _ => final_answer("done", 1),
        });
        let mut conversation = messages(&big_log(1_200));
        conversation[0]["content"] = json!(format!("What is in hash={alice_hash}?"));
        layer
            .layer(upstream_b)
            .oneshot(post_messages(messages_body(conversation, json!({})), key))
            .await
            .unwrap();
        let continuation = log_b.lock().unwrap()[1].json();
        let answer = results_for(&continuation, "toolu_x")[0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        if resolves {
            assert_eq!(answer, big_log(1_500), "{key}");
        } else {
            assert!(answer.contains("is unknown"), "{key}: {answer}");
        }
    }
}
