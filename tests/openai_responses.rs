//! The Compress → Cache → Retrieve loop on OpenAI Responses, against an in-process scripted
//! upstream: full history in `input`, and history kept upstream (`previous_response_id`).

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

const RESPONSES_URL: &str = "https://api.example.com/v1/responses";

const ENCRYPTED: &str = "gAAAAABo-encrypted-reasoning==";

/// A Responses request body: `input` plus `extra` members.
fn responses_body(input: Value, extra: Value) -> String {
    let mut body = json!({"model": "gpt-5", "input": input});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

/// A conversation as the SDK sends it after a tool call: instructions, the user's question, the
/// model's reasoning and call of `bash`, and the tool's output.
fn items(output: &str) -> Value {
    json!([
        {"role": "developer", "content": "You are a helpful SRE assistant."},
        {"role": "user", "content": [{"type": "input_text", "text": "Why did the payment fail?"}]},
        {"type": "reasoning", "id": "rs_0", "summary": [], "encrypted_content": "gAAAAABo-earlier=="},
        {"type": "function_call", "id": "fc_0", "call_id": "call_bash", "name": "bash",
            "arguments": "{\"cmd\":\"cat /var/log/app.log\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_bash", "output": output}
    ])
}

fn bash_tool() -> Value {
    json!([{"type": "function", "name": "bash", "description": "Run a command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
        "strict": true}])
}

/// The `tools` a response echoes: the request's.
fn echoed_tools(request: &Recorded) -> Value {
    request.json().get("tools").cloned().unwrap_or(json!([]))
}

fn usage(input_tokens: u64) -> Value {
    json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": input_tokens + 7})
}

/// A final answer in Responses format.
fn answer_response(id: &str, text: &str, input_tokens: u64, request: &Recorded) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed",
        "error": null, "incomplete_details": null, "model": "gpt-5",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": request.json()["tool_choice"].clone(),
        "tools": echoed_tools(request), "usage": usage(input_tokens)
    })
}

/// A response in which the model reasons, then calls tools: `(call id, tool name, arguments)`.
fn calls_response(id: &str, calls: &[(&str, &str, Value)], request: &Recorded) -> Value {
    let mut output = vec![
        json!({"type": "reasoning", "id": format!("rs_{id}"), "summary": [],
        "encrypted_content": ENCRYPTED}),
    ];
    output.extend(calls.iter().enumerate().map(|(index, (call_id, name, arguments))| {
        json!({"type": "function_call", "id": format!("fc_{id}_{index}"), "call_id": call_id,
            "name": name, "arguments": arguments.to_string(), "status": "completed"})
    }));
    json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed",
        "error": null, "incomplete_details": null, "model": "gpt-5", "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": echoed_tools(request),
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 110}
    })
}

fn ok(value: Value) -> http::Response<Full<Bytes>> {
    json_response(StatusCode::OK, value.to_string())
}

/// The outputs answering `call_id` in a request's `input`.
fn outputs_for(request: &Value, call_id: &str) -> Vec<String> {
    request["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function_call_output" && item["call_id"] == call_id)
        .map(|item| item["output"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn small_outputs_pass_byte_identical() {
    let (upstream, log) = upstream(|_, request| ok(answer_response("resp_1", "fine", 10, request)));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    // Odd but valid formatting must survive untouched.
    let body = "{ \"model\":\"gpt-5\",\n \"temperature\": 1.0e0, \"input\":[{\"role\":\"user\",\"content\":\"caf\\u00e9\"},\n {\"type\":\"function_call_output\",\"call_id\":\"c\",\"output\":\"small output\"}]}";
    let response = service.oneshot(post(RESPONSES_URL, body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(log.lock().unwrap()[0].text(), body);
    assert_eq!(handle.stats().await.outputs_compressed, 0);
}

#[tokio::test]
async fn a_large_output_is_compressed_and_every_other_byte_kept() {
    let (upstream, log) = upstream(|_, request| ok(answer_response("resp_1", "ok", 10, request)));
    let layer = CcrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let output = big_log(1_000);
    let literal = serde_json::to_string(&output).unwrap();
    // Hand-written body: unusual spacing, key order, number forms and escapes.
    let body = format!(
        "{{\n  \"input\" : [ {{\"content\":\"caf\\u00e9 \\/ why did the payment fail?\",\"role\":\"user\"}},\n    {{\"type\":\"function_call\",\"call_id\":\"c1\",\"name\":\"bash\",\"arguments\":\"{{}}\"}},\n    {{\"output\":{literal}, \"type\":\"function_call_output\", \"call_id\":\"c1\" }} ],\n  \"model\": \"gpt-5\", \"temperature\": 0.50, \"seed\": 12345678901234567890, \"top_p\": 1e-1,\n  \"tools\": [ {{\"type\":\"function\",\"name\":\"bash\",\"parameters\":null,\"strict\":false}} ]\n}}\n"
    );
    service
        .oneshot(post(RESPONSES_URL, body.clone()))
        .await
        .unwrap();
    let sent = log.lock().unwrap()[0].clone();
    let text = sent.text();
    let at = body.find(&literal).unwrap();
    let prefix = &body[..at];
    assert!(
        text.starts_with(prefix),
        "bytes before the output are identical"
    );
    // After the output: the same bytes, except our tool inserted at the end of `tools`.
    let rest = &body[at + literal.len()..];
    let tools_end = rest.rfind(']').unwrap();
    let (middle, end) = rest.split_at(tools_end);
    assert!(text.ends_with(end), "{text}");
    let after_prefix = &text[prefix.len()..text.len() - end.len()];
    let view_end = after_prefix
        .find(middle)
        .expect("bytes after the output are identical");
    let view: String = serde_json::from_str(&after_prefix[..view_end]).unwrap();
    assert!(
        view.contains("card_declined"),
        "the error line stays: {view}"
    );
    let hash = marker_hash(&view).expect("a marker");
    let injected = &after_prefix[view_end + middle.len()..];
    assert!(injected.starts_with(",{\"type\":\"function\",\"name\":\"ccr_retrieve\""));
    assert!(
        text.len() * 5 < body.len(),
        "{} vs {}",
        text.len(),
        body.len()
    );

    // The retrieval tool comes after the client's, flat.
    let tools = sent.json()["tools"].as_array().unwrap().clone();
    assert_eq!(tools.len(), 2);
    assert_eq!(tools[0]["name"], "bash");
    assert_eq!(tools[1]["name"], "ccr_retrieve");
    assert_eq!(tools[1]["strict"], false);
    assert_eq!(tools[1]["parameters"]["required"], json!(["hash"]));
    assert_eq!(
        sent.headers["content-length"].to_str().unwrap(),
        sent.body.len().to_string()
    );
    assert_eq!(
        handle.retrieve(&hash).await.unwrap().as_deref(),
        Some(output.as_str())
    );
    assert_eq!(handle.stats().await.outputs_compressed, 1);
}

#[tokio::test]
async fn text_parts_of_an_output_are_compressed_each_and_images_kept() {
    let (upstream, log) = upstream(|_, request| ok(answer_response("resp_1", "ok", 10, request)));
    let service = CcrLayer::new().layer(upstream);
    let first = big_log(1_200);
    let second = big_log(900);
    let mut input = items("placeholder");
    input[4]["output"] = json!([
        {"type": "input_text", "text": first},
        {"type": "input_image", "image_url": "https://example.com/chart.png", "detail": "auto"},
        {"type": "input_text", "text": "short note"},
        {"type": "input_text", "text": second}
    ]);
    service
        .oneshot(post(RESPONSES_URL, responses_body(input, json!({}))))
        .await
        .unwrap();
    let sent = log.lock().unwrap()[0].json();
    let parts = sent["input"][4]["output"].as_array().unwrap();
    let first_view = parts[0]["text"].as_str().unwrap();
    let second_view = parts[3]["text"].as_str().unwrap();
    assert!(marker_hash(first_view).is_some(), "{first_view}");
    assert!(marker_hash(second_view).is_some(), "{second_view}");
    assert_ne!(marker_hash(first_view), marker_hash(second_view));
    assert_eq!(
        parts[1],
        json!({"type": "input_image", "image_url": "https://example.com/chart.png", "detail": "auto"})
    );
    assert_eq!(parts[2]["text"], "short note");
}

#[tokio::test]
async fn the_model_retrieves_with_the_full_history_and_the_client_gets_the_answer() {
    let (upstream, log) = upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            ok(calls_response(
                "resp_r0",
                &[
                    (
                        "call_r1",
                        "ccr_retrieve",
                        json!({"hash": hash, "query": "payment refused"}),
                    ),
                    ("call_r2", "ccr_retrieve", json!({"hash": hash})),
                ],
                request,
            ))
        }
        _ => ok(answer_response(
            "resp_final",
            "The gateway refused token tok_4242: card_declined.",
            300,
            request,
        )),
    });
    let layer = CcrLayer::new().max_answer_bytes(1 << 20);
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let original = big_log(2_000);
    let body = responses_body(
        items(&original),
        json!({"tools": bash_tool(), "include": ["reasoning.encrypted_content"]}),
    );
    let response = service.oneshot(post(RESPONSES_URL, body)).await.unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !text.contains("ccr_retrieve"),
        "the client never sees the tool: {text}"
    );
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(client_view["id"], "resp_final");
    assert_eq!(
        client_view["output"][0]["content"][0]["text"],
        "The gateway refused token tok_4242: card_declined."
    );
    assert_eq!(client_view["tools"].as_array().unwrap().len(), 1);
    // Usage is summed over both rounds, nested details too.
    assert_eq!(client_view["usage"]["input_tokens"], 400);
    assert_eq!(client_view["usage"]["output_tokens"], 17);
    assert_eq!(client_view["usage"]["total_tokens"], 417);
    assert_eq!(
        client_view["usage"]["output_tokens_details"]["reasoning_tokens"],
        7
    );
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    // The continuation extends the first request: same bytes up to the end of `input`.
    let first = log[0].text();
    let input_end = first.find("],\"model\"").unwrap();
    assert!(log[1].text().starts_with(&first[..input_end]));
    let continuation = log[1].json();
    let input = continuation["input"].as_array().unwrap();
    assert_eq!(input.len(), 5 + 3 + 2);
    // Every output item of the response, verbatim and in order, then the answers.
    assert_eq!(
        input[5],
        json!({"type": "reasoning", "id": "rs_resp_r0", "summary": [], "encrypted_content": ENCRYPTED})
    );
    assert_eq!(input[6]["type"], "function_call");
    assert_eq!(input[6]["id"], "fc_resp_r0_0");
    assert_eq!(input[6]["call_id"], "call_r1");
    assert_eq!(input[7]["call_id"], "call_r2");
    assert_eq!(input[8]["type"], "function_call_output");
    assert_eq!(input[8]["call_id"], "call_r1");
    let searched = outputs_for(&continuation, "call_r1");
    assert!(searched[0].contains("card_declined"));
    assert!(searched[0].len() < 2_000, "a query answer lists matches");
    assert_eq!(outputs_for(&continuation, "call_r2"), vec![original]);
    // The same tools, ours included; nothing chained.
    assert_eq!(continuation["tools"], log[0].json()["tools"]);
    assert!(continuation.get("previous_response_id").is_none());
    assert_eq!(
        continuation["include"],
        json!(["reasoning.encrypted_content"])
    );

    let stats = handle.stats().await;
    assert_eq!(stats.continuation_rounds, 1);
    assert_eq!(stats.retrievals.search, 1);
    assert_eq!(stats.retrievals.full, 1);
}

#[tokio::test]
async fn without_storage_reasoning_without_its_content_is_left_out() {
    // store: false, and reasoning without encrypted content (the client did not ask for it):
    // the server could not resolve its id, so it is left out of the history.
    let (upstream, log) = upstream(|round, request| match round {
        0 => {
            let mut response = calls_response(
                "resp_r0",
                &[(
                    "call_r1",
                    "ccr_retrieve",
                    json!({"hash": marker_hash(request.text()).unwrap()}),
                )],
                request,
            );
            response["output"][0]["encrypted_content"] = Value::Null;
            ok(response)
        }
        _ => ok(answer_response("resp_final", "done", 10, request)),
    });
    let service = CcrLayer::new().max_answer_bytes(1 << 20).layer(upstream);
    let original = big_log(1_500);
    let body = responses_body(items(&original), json!({"store": false}));
    service.oneshot(post(RESPONSES_URL, body)).await.unwrap();
    let log = log.lock().unwrap().clone();
    let continuation = log[1].json();
    let input = continuation["input"].as_array().unwrap();
    assert!(input.iter().all(|item| item["id"] != "rs_resp_r0"));
    assert_eq!(input[5]["type"], "function_call");
    assert_eq!(outputs_for(&continuation, "call_r1"), vec![original]);
    assert_eq!(continuation["store"], false);
}

#[tokio::test]
async fn with_previous_response_id_an_earlier_output_is_retrieved_from_the_store() {
    let layer = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .secret("responses-test");
    let earlier = big_log(1_500);

    // First request (stored): the output is compressed through the layer.
    let (upstream_1, log_1) =
        upstream(|_, request| ok(answer_response("resp_1", "Looking into it.", 10, request)));
    layer
        .layer(upstream_1)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                items(&earlier),
                json!({"store": true, "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let earlier_hash = marker_hash(log_1.lock().unwrap()[0].text()).unwrap();

    // Second request: chained on resp_1, with only a new tool output. The model asks for the
    // earlier one, which this request does not carry.
    let hash = earlier_hash.clone();
    let (upstream_2, log_2) = upstream(move |round, request| match round {
        0 => ok(calls_response(
            "resp_2a",
            &[("call_old", "ccr_retrieve", json!({"hash": hash.clone()}))],
            request,
        )),
        _ => ok(answer_response(
            "resp_2b",
            "The card was declined.",
            20,
            request,
        )),
    });
    let second = json!([
        {"type": "function_call_output", "call_id": "call_grep", "output": big_log(1_300)}
    ]);
    let response = layer
        .layer(upstream_2)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                second,
                json!({"previous_response_id": "resp_1", "store": true, "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(client_view["id"], "resp_2b");
    assert!(!text.contains("ccr_retrieve"));

    let log_2 = log_2.lock().unwrap().clone();
    assert_eq!(log_2.len(), 2);
    assert!(
        !log_2[0].text().contains(&earlier_hash),
        "no copy of it in the request"
    );
    let continuation = log_2[1].json();
    // Chained on the response that made the call; only the answer as input.
    assert_eq!(continuation["previous_response_id"], "resp_2a");
    let input = continuation["input"].as_array().unwrap();
    assert_eq!(input.len(), 1);
    assert_eq!(input[0]["type"], "function_call_output");
    assert_eq!(input[0]["call_id"], "call_old");
    assert_eq!(input[0]["output"], earlier.as_str());
    assert_eq!(continuation["tools"], log_2[0].json()["tools"]);
    assert_eq!(continuation["store"], true);
}

#[tokio::test]
async fn a_request_chained_on_a_turn_with_the_tool_keeps_it_without_any_new_output() {
    let layer = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .secret("responses-chain");
    let earlier = big_log(1_500);
    let (upstream_1, log_1) =
        upstream(|_, request| ok(answer_response("resp_1", "Looking into it.", 10, request)));
    layer
        .layer(upstream_1)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                items(&earlier),
                json!({"store": true, "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let earlier_hash = marker_hash(log_1.lock().unwrap()[0].text()).unwrap();

    // Chained on resp_1 with a short user message only: the tool is still there, and the
    // model's retrieval of the earlier output is answered from the store.
    let hash = earlier_hash.clone();
    let (upstream_2, log_2) = upstream(move |round, request| match round {
        0 => ok(calls_response(
            "resp_2a",
            &[("call_old", "ccr_retrieve", json!({"hash": hash.clone()}))],
            request,
        )),
        _ => ok(answer_response("resp_2b", "Declined.", 20, request)),
    });
    let short = json!([{"role": "user", "content": "And what exactly failed?"}]);
    let response = layer
        .layer(upstream_2)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                short.clone(),
                json!({"previous_response_id": "resp_1", "store": true, "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let log_2 = log_2.lock().unwrap().clone();
    assert_eq!(log_2.len(), 2);
    let tools = log_2[0].json()["tools"].clone();
    assert_eq!(
        tools,
        log_1.lock().unwrap()[0].json()["tools"],
        "the same tool bytes"
    );
    assert_eq!(outputs_for(&log_2[1].json(), "call_old"), vec![earlier]);

    // A chain the layer never added the tool to stays untouched.
    let (upstream_3, log_3) =
        upstream(|_, request| ok(answer_response("resp_9", "ok", 1, request)));
    let untouched = responses_body(
        short,
        json!({"previous_response_id": "resp_elsewhere", "store": true, "tools": bash_tool()}),
    );
    layer
        .layer(upstream_3)
        .oneshot(post(RESPONSES_URL, untouched.clone()))
        .await
        .unwrap();
    assert_eq!(log_3.lock().unwrap()[0].text(), untouched);
}

#[tokio::test]
async fn a_retrieval_call_stripped_from_a_stored_mixed_turn_is_answered_in_the_next_request() {
    let layer = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .secret("responses-unsettled");
    let original = big_log(1_500);
    let (upstream_1, log_1) = upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        ok(calls_response(
            "resp_mixed",
            &[
                ("call_a", "ccr_retrieve", json!({"hash": hash})),
                ("call_b", "bash", json!({"cmd": "ls"})),
            ],
            request,
        ))
    });
    let response = layer
        .layer(upstream_1)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&original), json!({"tools": bash_tool()})),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(
        !text.contains("ccr_retrieve") && text.contains("call_b"),
        "{text}"
    );
    assert_eq!(log_1.lock().unwrap().len(), 1);

    // The client answers its own call, chained on the stored response. The upstream still
    // holds call_a: the layer answers it too, ahead of the client's output.
    let (upstream_2, log_2) =
        upstream(|_, request| ok(answer_response("resp_next", "done", 5, request)));
    let next = json!([{"type": "function_call_output", "call_id": "call_b", "output": "a.txt"}]);
    layer
        .layer(upstream_2)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                next,
                json!({"previous_response_id": "resp_mixed", "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let sent = log_2.lock().unwrap()[0].json();
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 2, "{sent}");
    assert_eq!(input[0]["call_id"], "call_a");
    assert_eq!(input[0]["output"], original.as_str());
    assert_eq!(input[1]["call_id"], "call_b");
}

#[tokio::test]
async fn without_previous_response_id_an_id_foreign_to_the_request_is_unknown() {
    // The counterpart of the test above: the same retrieval in a request that carries its
    // whole history, which never mentions the id.
    let layer = CcrLayer::new().secret("responses-test");
    let (upstream_1, log_1) =
        upstream(|_, request| ok(answer_response("resp_1", "ok", 10, request)));
    layer
        .layer(upstream_1)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&big_log(1_500)), json!({})),
        ))
        .await
        .unwrap();
    let earlier_hash = marker_hash(log_1.lock().unwrap()[0].text()).unwrap();
    let hash = earlier_hash.clone();
    let (upstream_2, log_2) = upstream(move |round, request| match round {
        0 => ok(calls_response(
            "resp_2a",
            &[("call_old", "ccr_retrieve", json!({"hash": hash.clone()}))],
            request,
        )),
        _ => ok(answer_response("resp_2b", "ok", 20, request)),
    });
    layer
        .layer(upstream_2)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&big_log(1_300)), json!({})),
        ))
        .await
        .unwrap();
    let continuation = log_2.lock().unwrap()[1].json();
    let answer = &outputs_for(&continuation, "call_old")[0];
    assert!(answer.contains("is unknown"), "{answer}");
}

#[tokio::test]
async fn a_foreign_id_asked_again_in_a_stored_mixed_turn_stays_unknown_in_the_next_request() {
    // A stored original of this tenant, from another conversation.
    let layer = CcrLayer::new()
        .max_answer_bytes(1 << 20)
        .secret("responses-foreign");
    let original = big_log(1_500);
    let (upstream_1, log_1) =
        upstream(|_, request| ok(answer_response("resp_1", "ok", 10, request)));
    layer
        .layer(upstream_1)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&original), json!({})),
        ))
        .await
        .unwrap();
    let foreign = marker_hash(log_1.lock().unwrap()[0].text()).unwrap();

    // This conversation never mentions it; the model asks for it, is told it is unknown, then
    // asks again beside a call of the client's tool: a mixed turn the upstream stores.
    let hash = foreign.clone();
    let (upstream_2, log_2) = upstream(move |round, request| match round {
        0 => ok(calls_response(
            "resp_2a",
            &[("call_1", "ccr_retrieve", json!({"hash": hash.clone()}))],
            request,
        )),
        _ => ok(calls_response(
            "resp_2b",
            &[
                ("call_2", "ccr_retrieve", json!({"hash": hash.clone()})),
                ("call_b", "bash", json!({"cmd": "ls"})),
            ],
            request,
        )),
    });
    let response = layer
        .layer(upstream_2)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&big_log(1_300)), json!({"tools": bash_tool()})),
        ))
        .await
        .unwrap();
    let (_, text) = body_text(response).await;
    assert!(
        text.contains("call_b") && !text.contains("ccr_retrieve"),
        "{text}"
    );
    assert_eq!(log_2.lock().unwrap().len(), 2);

    // The client answers its call, chained on the stored turn: the layer answers call_2, which
    // the upstream still holds, with what it told the model the first time.
    let (upstream_3, log_3) =
        upstream(|_, request| ok(answer_response("resp_3", "done", 5, request)));
    let next = json!([{"type": "function_call_output", "call_id": "call_b", "output": "a.txt"}]);
    layer
        .layer(upstream_3)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(
                next,
                json!({"previous_response_id": "resp_2b", "tools": bash_tool()}),
            ),
        ))
        .await
        .unwrap();
    let sent = log_3.lock().unwrap()[0].json();
    let answers = outputs_for(&sent, "call_2");
    assert_eq!(answers.len(), 1, "{sent}");
    assert!(answers[0].contains("is unknown"), "{}", answers[0]);
    assert!(!answers[0].contains("code=card_declined"));
}

#[tokio::test]
async fn the_round_cap_forces_a_final_answer() {
    for chained in [false, true] {
        let (upstream, log) = upstream(|round, request| {
            if round < 10 && request.json()["tool_choice"] != "none" {
                let hash = marker_hash(request.text()).unwrap_or_else(|| "0".repeat(24));
                ok(calls_response(
                    &format!("resp_{round}"),
                    &[(
                        &format!("call_{round}"),
                        "ccr_retrieve",
                        json!({"hash": hash}),
                    )],
                    request,
                ))
            } else {
                ok(answer_response("resp_final", "final", 50, request))
            }
        });
        let service = CcrLayer::new().max_rounds(2).layer(upstream);
        let extra = if chained {
            json!({"tool_choice": "auto", "previous_response_id": "resp_client"})
        } else {
            json!({"tool_choice": "auto"})
        };
        let response = service
            .oneshot(post(
                RESPONSES_URL,
                responses_body(items(&big_log(1_500)), extra),
            ))
            .await
            .unwrap();
        let (_, text) = body_text(response).await;
        assert!(text.contains("final"));
        assert!(!text.contains("ccr_retrieve"));
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 3, "the first request and two continuations");
        assert_eq!(log[0].json()["tool_choice"], "auto");
        assert_eq!(log[1].json()["tool_choice"], "auto");
        assert_eq!(log[2].json()["tool_choice"], "none");
        if chained {
            assert_eq!(log[1].json()["previous_response_id"], "resp_0");
            assert_eq!(log[2].json()["previous_response_id"], "resp_1");
            assert_eq!(log[2].json()["input"].as_array().unwrap().len(), 1);
        } else {
            // Both rounds' items accumulate: 5 + (reasoning, call, output) × 2.
            assert_eq!(log[2].json()["input"].as_array().unwrap().len(), 11);
        }
    }
}

#[tokio::test]
async fn a_mixed_turn_goes_back_to_the_client_without_ours() {
    let (upstream, log) = upstream(|_, request| {
        let hash = marker_hash(request.text()).unwrap();
        ok(calls_response(
            "resp_mixed",
            &[
                ("call_a", "ccr_retrieve", json!({"hash": hash})),
                ("call_b", "bash", json!({"cmd": "ls"})),
            ],
            request,
        ))
    });
    let service = CcrLayer::new().layer(upstream);
    let response = service
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&big_log(1_500)), json!({"tools": bash_tool()})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    let output = value["output"].as_array().unwrap();
    assert_eq!(output.len(), 2);
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(output[1]["call_id"], "call_b");
    assert_eq!(value["status"], "completed");
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );
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
        let error_body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let (upstream, log) = upstream(move |_, _| {
            let mut response = json_response(status, error_body);
            response
                .headers_mut()
                .insert("retry-after", "7".parse().unwrap());
            response
        });
        let service = CcrLayer::new().layer(upstream);
        let response = service
            .oneshot(post(
                RESPONSES_URL,
                responses_body(items(&big_log(1_500)), json!({})),
            ))
            .await
            .unwrap();
        let (parts, text) = body_text(response).await;
        assert_eq!(parts.status, status);
        assert_eq!(parts.headers["retry-after"], "7");
        assert_eq!(parts.headers["x-request-id"], "req_123");
        assert_eq!(text, error_body);
        // The request was compressed: the error is not the layer passing through untouched.
        assert!(marker_hash(log.lock().unwrap()[0].text()).is_some());
    }
}

#[tokio::test]
async fn an_error_during_a_continuation_passes_through() {
    let (upstream, _) = upstream(|round, request| match round {
        0 => ok(calls_response(
            "resp_r0",
            &[(
                "c",
                "ccr_retrieve",
                json!({"hash": marker_hash(request.text()).unwrap()}),
            )],
            request,
        )),
        _ => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"message":"slow down"}}"#,
        ),
    });
    let service = CcrLayer::new().layer(upstream);
    let response = service
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(&big_log(1_500)), json!({})),
        ))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(text, r#"{"error":{"message":"slow down"}}"#);
}

#[tokio::test]
async fn the_same_request_twice_sends_identical_bytes() {
    let (upstream, log) = upstream(|_, request| ok(answer_response("resp_1", "ok", 10, request)));
    let layer = CcrLayer::new();
    let body = responses_body(items(&big_log(1_500)), json!({"tools": bash_tool()}));
    for _ in 0..2 {
        layer
            .layer(upstream.clone())
            .oneshot(post(RESPONSES_URL, body.clone()))
            .await
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(log[0].body.len() < body.len(), "compressed");
    assert_eq!(log[0].body, log[1].body);
}

#[tokio::test]
async fn requests_the_layer_must_not_touch_pass_through() {
    let big = big_log(1_500);
    let cases: Vec<(&str, String)> = vec![
        (
            RESPONSES_URL,
            responses_body(items(&big), json!({"tool_choice": "none"})),
        ),
        (
            RESPONSES_URL,
            responses_body(
                items(&big),
                json!({"tool_choice": {"type": "function", "name": "bash"}}),
            ),
        ),
        (
            RESPONSES_URL,
            responses_body(
                items(&big),
                json!({"tools": [{"type": "function", "name": "ccr_retrieve", "parameters": null, "strict": false}]}),
            ),
        ),
        (RESPONSES_URL, json!({"input": items(&big)}).to_string()),
        (
            "https://api.example.com/v1/responses/input_tokens",
            responses_body(items(&big), json!({})),
        ),
        (
            RESPONSES_URL,
            responses_body(json!(format!("Summarise this log:\n{big}")), json!({})),
        ),
    ];
    for (url, body) in cases {
        let (upstream, log) =
            upstream(|_, request| ok(answer_response("resp_1", "ok", 1, request)));
        let service = CcrLayer::new().layer(upstream);
        service.oneshot(post(url, body.clone())).await.unwrap();
        assert_eq!(log.lock().unwrap()[0].text(), body, "{url} {}", &body[..80]);
    }
}
