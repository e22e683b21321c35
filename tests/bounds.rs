//! Every bound of the layer, enforced and at its documented default: body size (requests and
//! responses), size of one original, outputs compressed per request, the store's byte budget
//! under concurrent load, size of one retrieval answer, time budget of the continuation rounds.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};
use tower_ccr::store::Lookup;
use tower_ccr::{CcrLayer, MemoryStore};

/// A log whose every line names `tag`, so that outputs built from different tags differ.
fn tagged_log(tag: &str, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "2026-11-23T10:{:02}:{:02}Z INFO {tag} GET /api/items/{i} served in {}ms by worker-{}\n",
                i / 60 % 60,
                i % 60,
                3 + i % 17,
                i % 4
            )
        })
        .collect()
}

/// A conversation in which `bash` produced each of `outputs`, in order.
fn conversation_of(outputs: &[String]) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a helpful SRE assistant."}),
        json!({"role": "user", "content": "Why did the payment fail?"}),
    ];
    for (i, output) in outputs.iter().enumerate() {
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"),
            "type": "function", "function": {"name": "bash", "arguments": format!("{{\"cmd\":\"cat log{i}\"}}")}}]}));
        messages
            .push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": output}));
    }
    Value::Array(messages)
}

/// The tool messages' contents, in order.
fn tool_contents(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let layer = format!("{:?}", CcrLayer::new());
    for field in [
        "max_body_bytes: 33554432",
        "max_original_bytes: 8388608",
        "max_outputs_per_request: 256",
        "max_answer_bytes: 65536",
        "round_budget: 60s",
    ] {
        assert!(layer.contains(field), "{field} in {layer}");
    }
    assert_eq!(MemoryStore::new().max_bytes(), 256 * 1024 * 1024);
}

// ---------------------------------------------------------------------------------------------
// Body size

#[tokio::test]
async fn a_request_body_over_max_body_bytes_passes_through_even_when_its_length_lies() {
    let body = chat_body(conversation(&big_log(1_500)), json!({}));
    // Declared too large: not even buffered.
    let (upstream_1, log_1) = upstream(|_, _| answer("ok", 1));
    CcrLayer::new()
        .max_body_bytes(50_000)
        .layer(upstream_1)
        .oneshot(post(CHAT_URL, body.clone()))
        .await
        .unwrap();
    assert_eq!(log_1.lock().unwrap()[0].text(), body);
    // Declared small, but larger once read: forwarded as it came, not rewritten.
    let (upstream_2, log_2) = upstream(|_, _| answer("ok", 1));
    let mut request = post(CHAT_URL, body.clone());
    request
        .headers_mut()
        .insert("content-length", "100".parse().unwrap());
    CcrLayer::new()
        .max_body_bytes(50_000)
        .layer(upstream_2)
        .oneshot(request)
        .await
        .unwrap();
    let log_2 = log_2.lock().unwrap().clone();
    assert_eq!(log_2[0].text(), body);
    assert_eq!(log_2[0].headers["content-length"], "100");
    // Within the bound, the same request is compressed.
    let (upstream_3, log_3) = upstream(|_, _| answer("ok", 1));
    CcrLayer::new()
        .max_body_bytes(body.len())
        .layer(upstream_3)
        .oneshot(post(CHAT_URL, body.clone()))
        .await
        .unwrap();
    assert!(marker_hash(log_3.lock().unwrap()[0].text()).is_some());
}

#[tokio::test]
async fn a_response_over_max_body_bytes_goes_back_as_it_came() {
    let request = chat_body(conversation(&big_log(1_500)), json!({}));
    let long_answer = "All good. ".repeat(30_000);
    let upstream_body = answer(&long_answer, 10)
        .into_body()
        .collect()
        .await
        .unwrap();
    let upstream_body = upstream_body.to_bytes();
    assert!(upstream_body.len() > 2 * request.len());
    let script_body = upstream_body.clone();
    let (upstream, log) = upstream(move |_, _| {
        let mut response = json_response(StatusCode::OK, "");
        *response.body_mut() = Full::new(script_body.clone());
        response
    });
    let response = CcrLayer::new()
        .max_body_bytes(request.len() + 1_000)
        .layer(upstream)
        .oneshot(post(CHAT_URL, request))
        .await
        .unwrap();
    // The request was compressed, so the layer reads the response: too large, it streams back.
    assert!(marker_hash(log.lock().unwrap()[0].text()).is_some());
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(text.as_bytes(), upstream_body.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Size of one original

#[tokio::test]
async fn an_output_over_max_original_bytes_is_left_whole_and_not_stored() {
    let small = tagged_log("small", 400);
    let large = tagged_log("large", 2_000);
    assert!(small.len() < 64 * 1024 && large.len() > 64 * 1024);
    let (upstream, log) = upstream(|_, _| answer("ok", 1));
    let layer = CcrLayer::new().max_original_bytes(64 * 1024);
    let handle = layer.handle();
    layer
        .layer(upstream)
        .oneshot(post(
            CHAT_URL,
            chat_body(conversation_of(&[large.clone(), small.clone()]), json!({})),
        ))
        .await
        .unwrap();
    let sent = tool_contents(&log.lock().unwrap()[0].json());
    assert_eq!(sent[0], large, "left as it is");
    let hash = marker_hash(&sent[1]).expect("the small one is compressed");
    assert_eq!(
        handle.retrieve(&hash).await.unwrap().as_deref(),
        Some(&*small)
    );
    let stats = handle.stats().await;
    assert_eq!(stats.entries, 1, "only the small original is stored");
    assert!(stats.bytes < 64 * 1024, "{}", stats.bytes);
}

// ---------------------------------------------------------------------------------------------
// Outputs compressed per request

#[tokio::test]
async fn only_the_earliest_outputs_are_compressed_and_a_new_turn_keeps_their_bytes() {
    // The fifth output is the largest: the earliest are compressed all the same.
    let mut outputs: Vec<String> = (0..4)
        .map(|i| tagged_log(&format!("out{i}"), 300))
        .collect();
    outputs.push(tagged_log("out4", 3_000));
    let layer = CcrLayer::new().max_outputs_per_request(3);
    let handle = layer.handle();
    let send = |outputs: Vec<String>| {
        let layer = layer.clone();
        async move {
            let (upstream, log) = upstream(|_, _| answer("ok", 1));
            layer
                .layer(upstream)
                .oneshot(post(
                    CHAT_URL,
                    chat_body(conversation_of(&outputs), json!({})),
                ))
                .await
                .unwrap();
            log.lock().unwrap()[0].clone()
        }
    };
    let turn_1 = send(outputs.clone()).await;
    let sent_1 = tool_contents(&turn_1.json());
    for (i, (sent, output)) in sent_1.iter().zip(&outputs).enumerate() {
        assert_eq!(marker_hash(sent).is_some(), i < 3, "output {i}");
        if i >= 3 {
            assert_eq!(sent, output, "output {i} is left as it is");
        }
    }
    assert_eq!(handle.stats().await.outputs_compressed, 3);
    // The next turn adds an output: the earlier ones go out with the same bytes.
    let mut longer = outputs.clone();
    longer.push(tagged_log("out5", 300));
    let turn_2 = send(longer.clone()).await;
    let sent_2 = tool_contents(&turn_2.json());
    assert_eq!(sent_2[..5], sent_1[..]);
    assert_eq!(sent_2[5], longer[5]);
    let end_of_history = turn_1
        .text()
        .find(&serde_json::to_string(&outputs[4]).unwrap());
    let prefix = &turn_1.text()[..end_of_history.unwrap()];
    assert!(turn_2.text().starts_with(prefix));
}

// ---------------------------------------------------------------------------------------------
// Store budget under concurrent load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_the_store_stays_within_budget_and_every_marker_resolves() {
    const BUDGET: u64 = 2 * 1024 * 1024;
    const REQUESTS: usize = 400;
    let layer = CcrLayer::new().store(MemoryStore::builder().max_bytes(BUDGET).build());
    let handle = layer.handle();
    let original_of = |i: usize| tagged_log(&format!("request-{i}"), 300);
    assert!(original_of(0).len() > 20_000 && (REQUESTS * original_of(0).len()) as u64 > 4 * BUDGET);

    // The upstream checks, as each request arrives, that its marker's original is in the store;
    // then the model asks for it, and the continuation must carry it.
    let (missing_at_send, wrong_answers) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (missing, wrong, checker) = (
        missing_at_send.clone(),
        wrong_answers.clone(),
        handle.clone(),
    );
    let upstream = service_fn(move |request: Request<Full<Bytes>>| {
        let (missing, wrong, checker) = (missing.clone(), wrong.clone(), checker.clone());
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let index: usize = sent["messages"][1]["content"].as_str().unwrap()["request ".len()..]
                .parse()
                .unwrap();
            let answers = retrieval_answers(&sent, "c");
            if answers.is_empty() {
                let text = std::str::from_utf8(&body).unwrap();
                let hash = marker_hash(text).expect("a marker");
                if !matches!(checker.lookup(&hash).await.unwrap(), Lookup::Found(_)) {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
                return Ok::<_, Infallible>(tool_calls(&[(
                    "c",
                    "ccr_retrieve",
                    json!({"hash": hash}),
                )]));
            }
            if answers != [original_of(index)] {
                wrong.fetch_add(1, Ordering::Relaxed);
            }
            Ok(answer(&format!("done {index}"), 1))
        }
    });

    // Watch the store's bytes all along.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let monitor = tokio::spawn({
        let (done, peak, handle) = (done.clone(), peak.clone(), handle.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(handle.stats().await.bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let service = layer.layer(upstream.clone());
            let mut messages = conversation(&original_of(i));
            messages[1]["content"] = json!(format!("request {i}"));
            let request = post(CHAT_URL, chat_body(messages, json!({})));
            tokio::spawn(async move {
                let response = service.oneshot(request).await.unwrap();
                body_text(response).await.1.contains(&format!("done {i}"))
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += usize::from(task.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    monitor.await.unwrap();

    assert_eq!(answered, REQUESTS);
    assert_eq!(
        missing_at_send.load(Ordering::Relaxed),
        0,
        "a marker went out for an evicted original"
    );
    assert_eq!(wrong_answers.load(Ordering::Relaxed), 0);
    let stats = handle.stats().await;
    assert!(
        peak.load(Ordering::Relaxed) <= BUDGET,
        "peak {}",
        peak.load(Ordering::Relaxed)
    );
    assert!(stats.bytes <= BUDGET, "{}", stats.bytes);
    // The budget was really exercised: every original was admitted, most were evicted since.
    assert_eq!(stats.outputs_compressed, REQUESTS as u64);
    assert!(stats.entries < REQUESTS as u64 / 2, "{}", stats.entries);
    assert_eq!(stats.retrievals.full, REQUESTS as u64);
}

// ---------------------------------------------------------------------------------------------
// Size of one retrieval answer

/// The query the note of a paged answer names.
fn next_query(answer: &str) -> Option<String> {
    let note = answer.split_once("]\n")?.0;
    let rest = note.split_once("query \"")?.1;
    Some(rest[..rest.find('"')?].to_owned())
}

#[tokio::test]
async fn a_large_original_is_answered_in_pages_the_model_can_follow() {
    let original = tagged_log("paged", 4_000);
    assert!(original.len() > 4 * 64 * 1024);
    // Round 0: the whole original, please. Later rounds: the query the last answer named.
    let (upstream, log) = upstream(|round, request| {
        let sent = request.json();
        let call = |id: &str, arguments: Value| tool_calls(&[(id, "ccr_retrieve", arguments)]);
        match round {
            0 => call("p1", json!({"hash": marker_hash(request.text()).unwrap()})),
            1 => {
                let answer = &retrieval_answers(&sent, "p1")[0];
                let hash = marker_hash(request.text()).unwrap();
                call(
                    "p2",
                    json!({"hash": hash, "query": next_query(answer).unwrap()}),
                )
            }
            _ => answer("read", 1),
        }
    });
    let layer = CcrLayer::new();
    let handle = layer.handle();
    layer
        .layer(upstream)
        .oneshot(post(
            CHAT_URL,
            chat_body(conversation(&original), json!({})),
        ))
        .await
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3);
    let first = &retrieval_answers(&log[2].json(), "p1")[0];
    let second = &retrieval_answers(&log[2].json(), "p2")[0];
    let mut read = String::new();
    for page in [first, second] {
        assert!(page.len() <= 64 * 1024, "{}", page.len());
        assert!(page.starts_with("[Part of hash="), "{}", &page[..200]);
        read.push_str(page.split_once("]\n").unwrap().1);
    }
    assert!(
        first.contains(": lines 1-") && first.contains(" of 4000, bytes 1-"),
        "{}",
        &first[..300]
    );
    assert!(next_query(first).unwrap().starts_with("lines "));
    // Two pages, in order, with nothing lost between them.
    assert!(read.len() > 100 * 1024);
    assert!(original.starts_with(&read));
    let stats = handle.stats().await;
    assert_eq!((stats.retrievals.full, stats.retrievals.range), (1, 1));
}

#[tokio::test]
async fn a_query_answer_stays_within_max_answer_bytes() {
    let original = tagged_log("everything matches", 3_000);
    let (upstream, log) = upstream(|round, request| match round {
        0 => tool_calls(&[(
            "q",
            "ccr_retrieve",
            json!({"hash": marker_hash(request.text()).unwrap(), "query": "INFO everything matches served worker"}),
        )]),
        _ => answer("ok", 1),
    });
    CcrLayer::new()
        .max_answer_bytes(3_000)
        .layer(upstream)
        .oneshot(post(
            CHAT_URL,
            chat_body(conversation(&original), json!({})),
        ))
        .await
        .unwrap();
    let answer = &retrieval_answers(&log.lock().unwrap()[1].json(), "q")[0];
    assert!(answer.starts_with("Best matches for"), "{answer}");
    assert!(answer.len() <= 3_000, "{}", answer.len());
}

// ---------------------------------------------------------------------------------------------
// Time budget of the continuation rounds

/// An upstream whose model calls the tool at once, calls it again after `slow` in the first
/// continuation, then answers.
fn slow_upstream(
    slow: Duration,
) -> (
    impl tower::Service<
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
    let recorder = log.clone();
    let service = service_fn(move |request: Request<Full<Bytes>>| {
        let log = recorder.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            let round = {
                let mut log = log.lock().unwrap();
                log.push(Recorded {
                    headers: parts.headers,
                    body,
                });
                log.len() - 1
            };
            let hash = marker_hash(&text).unwrap();
            Ok::<_, Infallible>(match round {
                0 => tool_calls(&[("r0", "ccr_retrieve", json!({"hash": hash}))]),
                1 => {
                    tokio::time::sleep(slow).await;
                    tool_calls(&[(
                        "r1",
                        "ccr_retrieve",
                        json!({"hash": hash, "query": "worker"}),
                    )])
                }
                _ => answer("final", 1),
            })
        }
    });
    (service, log)
}

#[tokio::test]
async fn once_the_round_budget_is_spent_the_latest_response_goes_back_without_our_tool() {
    let body = chat_body(conversation(&big_log(1_500)), json!({}));
    // The first continuation takes longer than the budget: no second one.
    let (upstream, log) = slow_upstream(Duration::from_millis(300));
    let layer = CcrLayer::new().round_budget(Duration::from_millis(200));
    let handle = layer.handle();
    let response = layer
        .layer(upstream)
        .oneshot(post(CHAT_URL, body.clone()))
        .await
        .unwrap();
    let (parts, text) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2);
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert!(
        client_view["choices"][0]["message"]
            .get("tool_calls")
            .is_none(),
        "{text}"
    );
    let stats = handle.stats().await;
    assert_eq!(
        (stats.continuation_rounds, stats.round_budget_exhausted),
        (1, 1)
    );

    // With time to spare, the same exchange runs to the model's answer.
    let (upstream, log) = slow_upstream(Duration::from_millis(300));
    let response = CcrLayer::new()
        .round_budget(Duration::from_secs(30))
        .layer(upstream)
        .oneshot(post(CHAT_URL, body.clone()))
        .await
        .unwrap();
    assert!(body_text(response).await.1.contains("final"));
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_zero_round_budget_compresses_nothing_lossily() {
    let body = chat_body(conversation(&big_log(1_500)), json!({}));
    let (upstream, log) = upstream(|_, _| answer("ok", 1));
    CcrLayer::new()
        .round_budget(Duration::ZERO)
        .layer(upstream)
        .oneshot(post(CHAT_URL, body.clone()))
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap()[0].text(), body);
}

#[tokio::test]
async fn a_streamed_exchange_stops_continuing_once_the_round_budget_is_spent() {
    use common::streaming::*;
    let chunk = |delta: Value, finish: Option<&str>| {
        let chunk = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 7,
            "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    let calls = move |call_id: &str, hash: &str| {
        vec![
            chunk(json!({"role": "assistant", "content": null}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                    "function": {"name": "ccr_retrieve", "arguments": json!({"hash": hash}).to_string()}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            "data: [DONE]\n\n".to_owned(),
        ]
    };
    // The first continuation streams for longer than the budget, and calls the tool again.
    let (upstream, log) = sse_upstream(move |round, request| {
        let events = calls(
            &format!("call_{round}"),
            &marker_hash(request.text()).unwrap(),
        );
        if round == 0 {
            return sse_events(&events);
        }
        let (body, sender) = TestBody::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for event in events {
                let _ = sender.send(Ok(Bytes::from(event)));
            }
        });
        sse(body)
    });
    let layer = CcrLayer::new().round_budget(Duration::from_millis(200));
    let handle = layer.handle();
    let request = post(
        CHAT_URL,
        chat_body(conversation(&big_log(1_500)), json!({"stream": true})),
    );
    let response = layer.layer(upstream).oneshot(request).await.unwrap();
    let (parts, text, error) = read_stream(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(error.is_none());
    assert_eq!(log.lock().unwrap().len(), 2, "no second continuation");
    assert!(!text.contains("ccr_retrieve"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(handle.stats().await.round_budget_exhausted, 1);
}
