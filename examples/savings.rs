//! Savings report: `cargo run --release --example savings -- <corpus-dir> [--api API] [--out DIR] [--runs N]`
//!
//! Reads a corpus in format `ccr-corpus/1` (a folder with `cases.json`; each case names a file,
//! the tool call that produced it, the user's question and the needles an answer needs) and runs
//! every case through the real layer as a request of one API shape (`--api chat|responses|
//! anthropic|gemini`, default `chat`): system prompt, user question, the model's tool call, the
//! tool output with the file's content; against an in-process upstream that records what it
//! receives. Prints a table and writes it as Markdown, JSON and an
//! SVG bar chart (default folder `target/savings`).
//!
//! Per case: o200k tokens of the tool output before and after (after = the view the upstream
//! got, plus the injected tool definition when one was added), needles visible in the view,
//! needles returned by `retrieve(hash, query = question)` (the best matches; the whole original
//! when nothing matches, as the layer answers the model), and the time the layer took (median
//! of `--runs` runs).
//!
//! Exits non-zero when a `passthrough` case was changed or a needle is reachable neither way.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_ccr::CcrLayer;

/// o200k_base token count (tiktoken-rs embeds the encoding: no network).
fn count_tokens(text: &str) -> usize {
    static ENCODING: std::sync::OnceLock<tiktoken_rs::CoreBPE> = std::sync::OnceLock::new();
    ENCODING
        .get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base is embedded"))
        .encode_ordinary(text)
        .len()
}

/// How many best matches the layer returns for a query (as in its retrieval answers).
const SEARCH_LIMIT: usize = 20;

#[derive(Deserialize)]
struct Corpus {
    format: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    file: String,
    tool: String,
    call: String,
    question: String,
    needles: Vec<String>,
    expect: String,
}

#[derive(Serialize)]
struct Row {
    id: String,
    expect: String,
    tokens_before: usize,
    tokens_after: usize,
    saved_percent: f64,
    compressed: bool,
    changed: bool,
    needles: usize,
    needles_visible: usize,
    needles_returned: usize,
    needles_reachable: usize,
    compress_ms: f64,
    ok: bool,
}

#[derive(Serialize)]
struct Summary {
    corpus: String,
    api: &'static str,
    cases: usize,
    compress_cases_tokens_before: usize,
    compress_cases_tokens_after: usize,
    compress_cases_saved_percent: f64,
    compress_cases_median_saved_percent: f64,
    needles: usize,
    needles_visible: usize,
    needles_reachable: usize,
    median_compress_ms: f64,
    max_compress_ms: f64,
    failures: Vec<String>,
    rows: Vec<Row>,
}

struct Options {
    corpus: PathBuf,
    api: Api,
    out: PathBuf,
    runs: usize,
}

/// The API shape a case is sent as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

impl Api {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "chat" => Self::Chat,
            "responses" => Self::Responses,
            "anthropic" => Self::Anthropic,
            "gemini" => Self::Gemini,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Responses => "responses",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }

    fn url(self) -> &'static str {
        match self {
            Self::Chat => "http://127.0.0.1/v1/chat/completions",
            Self::Responses => "http://127.0.0.1/v1/responses",
            Self::Anthropic => "http://127.0.0.1/v1/messages",
            Self::Gemini => "http://127.0.0.1/v1beta/models/gemini-2.5-flash:generateContent",
        }
    }

    /// The request: question, the model's call of the case's tool, the tool output.
    fn body(self, case: &Case, output: &str) -> String {
        const SYSTEM: &str = "You are a coding and operations assistant. Use the tools to answer.";
        let arguments = json!({"command": case.call});
        let schema = json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]});
        let body = match self {
            Self::Chat => json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": case.question},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": case.tool, "arguments": arguments.to_string()}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": output}
                ],
                "tools": [{"type": "function", "function": {"name": case.tool, "description": "Run a command", "parameters": schema}}]
            }),
            Self::Responses => json!({
                "model": "gpt-4o",
                "instructions": SYSTEM,
                "input": [
                    {"role": "user", "content": case.question},
                    {"type": "function_call", "call_id": "call_1", "name": case.tool, "arguments": arguments.to_string()},
                    {"type": "function_call_output", "call_id": "call_1", "output": output}
                ],
                "tools": [{"type": "function", "name": case.tool, "description": "Run a command", "parameters": schema, "strict": false}]
            }),
            Self::Anthropic => json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "system": SYSTEM,
                "messages": [
                    {"role": "user", "content": case.question},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": case.tool, "input": arguments}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": output}]}
                ],
                "tools": [{"name": case.tool, "description": "Run a command", "input_schema": schema}]
            }),
            Self::Gemini => json!({
                "systemInstruction": {"parts": [{"text": SYSTEM}]},
                "contents": [
                    {"role": "user", "parts": [{"text": case.question}]},
                    {"role": "model", "parts": [{"functionCall": {"name": case.tool, "args": arguments}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": case.tool, "response": {"output": output}}}]}
                ],
                "tools": [{"functionDeclarations": [{"name": case.tool, "description": "Run a command", "parameters": schema}]}]
            }),
        };
        body.to_string()
    }

    /// The tool output as the upstream received it.
    fn view(self, sent: &Value) -> String {
        let view = match self {
            Self::Chat => &sent["messages"][3]["content"],
            Self::Responses => &sent["input"][2]["output"],
            Self::Anthropic => &sent["messages"][2]["content"][0]["content"],
            Self::Gemini => {
                &sent["contents"][2]["parts"][0]["functionResponse"]["response"]["output"]
            }
        };
        view.as_str().unwrap_or_default().to_owned()
    }

    /// The retrieval tool's definition when the layer added it (after the client's tool).
    fn injected_tool(self, sent: &Value) -> Option<String> {
        let tool = match self {
            Self::Gemini => &sent["tools"][0]["functionDeclarations"][1],
            _ => &sent["tools"][1],
        };
        (!tool.is_null()).then(|| tool.to_string())
    }
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut corpus = None;
    let mut api = Api::Chat;
    let mut out = PathBuf::from("target/savings");
    let mut runs = 5;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().ok_or("--out needs a folder")?.into(),
            "--api" => {
                api = args
                    .next()
                    .and_then(|name| Api::parse(&name))
                    .ok_or("--api takes chat, responses, anthropic or gemini")?
            }
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a positive number")?
            }
            "-h" | "--help" => return Err(String::new()),
            _ if corpus.is_none() => corpus = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Options {
        corpus: corpus.ok_or("missing <corpus-dir>")?,
        api,
        out,
        runs,
    })
}

fn marker_hash(view: &str) -> Option<&str> {
    let at = view.rfind("Retrieve more: hash=")? + "Retrieve more: hash=".len();
    view.get(at..at + 24)
}

async fn run_case(case: &Case, corpus: &Path, api: Api, runs: usize) -> Result<Row, BoxError> {
    let path = corpus.join(&case.file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let output = String::from_utf8_lossy(&bytes).into_owned();
    let body = api.body(case, &output);

    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let recorder = received.clone();
    let upstream = service_fn(move |request: Request<Full<Bytes>>| {
        let recorder = recorder.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            recorder.lock().unwrap().push(body);
            let answer = json!({"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]});
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer.to_string()))))
        }
    });
    // The view cache off: every run compresses, so the time is a first turn's, not a lookup's.
    let layer = CcrLayer::new().view_cache_bytes(0);
    let handle = layer.handle();
    let service = layer.layer(upstream);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let request = Request::post(api.url())
            .header("content-type", "application/json")
            .header("authorization", "Bearer savings-report")
            .body(Full::new(Bytes::from(body.clone())))?;
        let started = Instant::now();
        service.clone().oneshot(request).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let sent = received.lock().unwrap()[0].clone();
    let changed = sent != body.as_bytes();
    let sent: Value = serde_json::from_slice(&sent)?;
    let view = api.view(&sent);
    let injected_tool = api
        .injected_tool(&sent)
        .map_or(0, |tool| count_tokens(&tool));
    let tokens_before = count_tokens(&output);
    let tokens_after = count_tokens(&view) + injected_tool;

    let returned_text = match marker_hash(&view) {
        Some(hash) => match handle.search(hash, &case.question, SEARCH_LIMIT).await? {
            Some(result) if !result.hits.is_empty() => result
                .hits
                .iter()
                .map(|hit| hit.text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            // No match: the layer answers with the whole original.
            Some(_) => output.clone(),
            None => String::new(),
        },
        None => String::new(),
    };
    let needles = case.needles.len();
    let visible = case
        .needles
        .iter()
        .filter(|n| view.contains(n.as_str()))
        .count();
    let returned = case
        .needles
        .iter()
        .filter(|n| returned_text.contains(n.as_str()))
        .count();
    let reachable = case
        .needles
        .iter()
        .filter(|n| view.contains(n.as_str()) || returned_text.contains(n.as_str()))
        .count();
    times.sort_by(f64::total_cmp);
    let ok = reachable == needles && !(case.expect == "passthrough" && changed);
    Ok(Row {
        id: case.id.clone(),
        expect: case.expect.clone(),
        tokens_before,
        tokens_after,
        saved_percent: saved(tokens_before, tokens_after),
        compressed: marker_hash(&view).is_some() || changed,
        changed,
        needles,
        needles_visible: visible,
        needles_returned: returned,
        needles_reachable: reachable,
        compress_ms: times[times.len() / 2],
        ok,
    })
}

fn saved(before: usize, after: usize) -> f64 {
    if before == 0 {
        0.0
    } else {
        100.0 * (1.0 - after as f64 / before as f64)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn markdown(summary: &Summary) -> String {
    let mut out = format!(
        "# Savings on `{}` ({} API)\n\n| case | expect | o200k before | o200k after | saved | needles in view | needles by retrieve(query) | layer ms |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        summary.corpus, summary.api
    );
    for row in &summary.rows {
        out.push_str(&format!(
            "| {}{} | {} | {} | {} | {:.1}% | {}/{} | {}/{} | {:.2} |\n",
            row.id,
            if row.ok { "" } else { " ✗" },
            row.expect,
            row.tokens_before,
            row.tokens_after,
            row.saved_percent,
            row.needles_visible,
            row.needles,
            row.needles_returned,
            row.needles,
            row.compress_ms
        ));
    }
    out.push_str(&format!(
        "\n**`compress` cases: {} → {} tokens ({:.1}% fewer; median per case {:.1}%).** Needles visible without retrieval: {}/{}; reachable (visible or returned by one retrieve with the question): {}/{}. Layer time per case: median {:.2} ms, max {:.2} ms.\n",
        summary.compress_cases_tokens_before,
        summary.compress_cases_tokens_after,
        summary.compress_cases_saved_percent,
        summary.compress_cases_median_saved_percent,
        summary.needles_visible,
        summary.needles,
        summary.needles_reachable,
        summary.needles,
        summary.median_compress_ms,
        summary.max_compress_ms
    ));
    for failure in &summary.failures {
        out.push_str(&format!("\n- FAILED: {failure}"));
    }
    out
}

fn svg(summary: &Summary) -> String {
    let (label_width, bar_width, row_height, top) = (190.0, 520.0, 24.0, 40.0);
    let height = top + row_height * summary.rows.len() as f64 + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">tower-ccr: o200k tokens saved per case ({:.1}% over the compress cases)</text>\n",
        summary.compress_cases_saved_percent
    );
    for (index, row) in summary.rows.iter().enumerate() {
        let y = top + row_height * index as f64;
        let width = bar_width * row.saved_percent.clamp(0.0, 100.0) / 100.0;
        let color = match (row.ok, row.expect.as_str()) {
            (false, _) => "#c0392b",
            (true, "compress") => "#2e86c1",
            _ => "#95a5a6",
        };
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<rect x=\"{label_width}\" y=\"{}\" width=\"{width:.1}\" height=\"{}\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{}\">{:.1}%</text>\n",
            label_width - 8.0,
            y + 16.0,
            xml_escape(&row.id),
            y + 4.0,
            row_height - 8.0,
            label_width + width + 6.0,
            y + 16.0,
            row.saved_percent
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!(
                "usage: savings <corpus-dir> [--api chat|responses|anthropic|gemini] [--out DIR] [--runs N]"
            );
            std::process::exit(2);
        }
    };
    let cases_path = options.corpus.join("cases.json");
    let corpus: Corpus = serde_json::from_slice(
        &std::fs::read(&cases_path).map_err(|e| format!("{}: {e}", cases_path.display()))?,
    )?;
    if corpus.format != "ccr-corpus/1" {
        return Err(format!("unsupported corpus format {:?}", corpus.format).into());
    }
    let mut rows = Vec::new();
    for case in &corpus.cases {
        rows.push(run_case(case, &options.corpus, options.api, options.runs).await?);
    }

    let compress_rows = rows.iter().filter(|row| row.expect == "compress");
    let before: usize = compress_rows.clone().map(|row| row.tokens_before).sum();
    let after: usize = compress_rows.map(|row| row.tokens_after).sum();
    let mut times: Vec<f64> = rows.iter().map(|row| row.compress_ms).collect();
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    let mut failures = Vec::new();
    for row in &rows {
        if row.expect == "passthrough" && row.changed {
            failures.push(format!("{}: a passthrough case was changed", row.id));
        }
        if row.needles_reachable < row.needles {
            failures.push(format!(
                "{}: {} of {} needles unreachable",
                row.id,
                row.needles - row.needles_reachable,
                row.needles
            ));
        }
    }
    let summary = Summary {
        corpus: options.corpus.display().to_string(),
        api: options.api.name(),
        cases: rows.len(),
        compress_cases_tokens_before: before,
        compress_cases_tokens_after: after,
        compress_cases_saved_percent: saved(before, after),
        compress_cases_median_saved_percent: median(
            &mut rows
                .iter()
                .filter(|row| row.expect == "compress")
                .map(|row| row.saved_percent)
                .collect::<Vec<_>>(),
        ),
        needles: rows.iter().map(|row| row.needles).sum(),
        needles_visible: rows.iter().map(|row| row.needles_visible).sum(),
        needles_reachable: rows.iter().map(|row| row.needles_reachable).sum(),
        median_compress_ms: median(&mut times),
        max_compress_ms: max_ms,
        failures,
        rows,
    };

    let markdown = markdown(&summary);
    println!("{markdown}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("savings.md"), &markdown)?;
    std::fs::write(
        options.out.join("savings.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(options.out.join("savings.svg"), svg(&summary))?;
    println!(
        "\nwritten: {}/savings.{{md,json,svg}}",
        options.out.display()
    );
    if !summary.failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
