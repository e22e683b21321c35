#!/usr/bin/env python3
"""The official Python SDKs against the ccr-proxy binary in front of a local mock upstream.

Usage: proxy_sdk.py <path to the ccr-proxy binary>
Needs the PyPI packages openai, anthropic and google-genai (tests/sdk-requirements.txt); run by
`cargo test --features proxy --test proxy` (official_python_sdks_through_the_proxy_binary).

The mock upstream plays each API's model: when a request carries a compressed tool output
(a marker) and the retrieval tool, it calls the tool; otherwise it answers. Every SDK call,
streamed and not, must parse the proxy's response, get the model's final answer, and never
see the retrieval tool; the upstream must have seen the compressed request and one
continuation that carries the retrieved lines. Then /healthz, /metrics, and SIGTERM (the
process exits 0). Prints "N passed, 0 failed"; exits 1 on the first failure.
"""

import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import warnings

ANSWER = "The card was declined."
QUESTION = "Why did the payment fail?"
MARKER = re.compile(r"Retrieve more: hash=([0-9a-f]{24})")
TOOL = "ccr_retrieve"


def big_log(lines=3000):
    """A server log with one error line (the needle) in the middle, as tests/common builds it."""
    out = []
    for i in range(lines):
        if i == lines // 2:
            out.append("2026-11-23T10:00:00Z ERROR payment gateway refused card token=tok_4242 code=card_declined")
        else:
            out.append(f"2026-11-23T10:00:{i % 60:02}Z INFO GET /api/items/{i} served in {3 + i % 17}ms by worker-{i % 4}")
    return "\n".join(out) + "\n"


LOG = big_log()


# ---------------------------------------------------------------------------------------------
# The mock upstream: what each API's model says.

def sse(events):
    return "".join(events).encode()


def event(name, data):
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def data_only(data):
    return f"data: {json.dumps(data)}\n\n"


def chat(calls, stream):
    if not stream:
        message = {"role": "assistant", "content": None if calls else ANSWER, "refusal": None}
        if calls:
            message["tool_calls"] = [{"id": "call_r", "type": "function",
                                      "function": {"name": TOOL, "arguments": json.dumps(calls)}}]
        return "application/json", json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop", "logprobs": None,
                         "message": message}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}).encode()

    def chunk(delta, finish=None):
        return data_only({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                          "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})
    if calls:
        args = json.dumps(calls)
        events = [chunk({"role": "assistant", "content": None}),
                  chunk({"tool_calls": [{"index": 0, "id": "call_r", "type": "function",
                                         "function": {"name": TOOL, "arguments": args[:10]}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[10:]}}]}),
                  chunk({}, "tool_calls")]
    else:
        events = [chunk({"role": "assistant", "content": ""}), chunk({"content": ANSWER[:8]}),
                  chunk({"content": ANSWER[8:]}), chunk({}, "stop")]
    return "text/event-stream", sse(events + ["data: [DONE]\n\n"])


def responses_envelope(rid, output, status="completed"):
    return {"id": rid, "object": "response", "created_at": 1, "status": status, "model": "gpt-4o",
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def responses(calls, stream):
    rid = "resp_1" if calls else "resp_2"
    if calls:
        item = {"type": "function_call", "id": "fc_r", "call_id": "call_r", "name": TOOL,
                "arguments": json.dumps(calls), "status": "completed"}
    else:
        item = {"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
    if not stream:
        return "application/json", json.dumps(responses_envelope(rid, [item])).encode()
    events = []

    def push(data):
        data["sequence_number"] = len(events)
        events.append(event(data["type"], data))
    pending = responses_envelope(rid, [], "in_progress")
    pending["usage"] = None
    push({"type": "response.created", "response": pending})
    push({"type": "response.in_progress", "response": pending})
    if calls:
        push({"type": "response.output_item.added", "output_index": 0,
              "item": {**item, "arguments": "", "status": "in_progress"}})
        push({"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_r",
              "delta": item["arguments"]})
        push({"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_r",
              "arguments": item["arguments"]})
    else:
        push({"type": "response.output_item.added", "output_index": 0,
              "item": {**item, "content": [], "status": "in_progress"}})
        part = {"type": "output_text", "text": "", "annotations": []}
        push({"type": "response.content_part.added", "output_index": 0, "item_id": "msg_2", "content_index": 0,
              "part": part})
        push({"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_2", "content_index": 0,
              "delta": ANSWER, "logprobs": []})
        push({"type": "response.output_text.done", "output_index": 0, "item_id": "msg_2", "content_index": 0,
              "text": ANSWER, "logprobs": []})
        push({"type": "response.content_part.done", "output_index": 0, "item_id": "msg_2", "content_index": 0,
              "part": item["content"][0]})
    push({"type": "response.output_item.done", "output_index": 0, "item": item})
    push({"type": "response.completed", "response": responses_envelope(rid, [item])})
    return "text/event-stream", sse(events)


def anthropic_messages(calls, stream):
    mid = "msg_1" if calls else "msg_2"
    if not stream:
        content = ([{"type": "tool_use", "id": "toolu_r", "name": TOOL, "input": calls}] if calls
                   else [{"type": "text", "text": ANSWER}])
        return "application/json", json.dumps({
            "id": mid, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": content,
            "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 10}}).encode()
    events = [event("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 100, "output_tokens": 1}}})]
    if calls:
        args = json.dumps(calls)
        events.append(event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_r", "name": TOOL, "input": {}}}))
        for piece in (args[:10], args[10:]):
            events.append(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "input_json_delta", "partial_json": piece}}))
    else:
        events.append(event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}}))
        events.append(event("ping", {"type": "ping"}))
        for piece in (ANSWER[:8], ANSWER[8:]):
            events.append(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": piece}}))
    events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 10}}))
    events.append(event("message_stop", {"type": "message_stop"}))
    return "text/event-stream", sse(events)


def gemini(calls, stream):
    part = {"functionCall": {"name": TOOL, "args": calls}} if calls else {"text": ANSWER}
    body = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
            "modelVersion": "gemini-2.5-flash"}
    if stream:
        return "text/event-stream", f"data: {json.dumps(body)}\r\n\r\n".encode()
    return "application/json", json.dumps(body).encode()


def api_of(path):
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith(":generateContent") or path.endswith(":streamGenerateContent"):
        return "gemini"
    return None


MODELS = {"chat": chat, "responses": responses, "anthropic": anthropic_messages, "gemini": gemini}


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []  # (api, path, headers, body text)
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length", "0")))

    def do_POST(self):
        text = self.read_body().decode()
        path = self.path.split("?")[0]
        api = api_of(path)
        with Upstream.lock:
            Upstream.seen.append((api, self.path, dict(self.headers), text))
        if api is None:
            return self.reply(404, "application/json", b'{"error":{"message":"no such path"}}')
        request = json.loads(text)
        stream = bool(request.get("stream")) or path.endswith(":streamGenerateContent")
        marker = MARKER.search(text)
        # The model retrieves when it was given a marker and the tool, unless it already did.
        calls = None
        if marker and TOOL in text and not retrieval_answered(api, request):
            calls = {"hash": marker.group(1), "query": "payment refused"}
        content_type, body = MODELS[api](calls, stream)
        self.reply(200, content_type, body)

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def retrieval_answered(api, request):
    """Whether the request carries the answer to the mock model's retrieval call."""
    if api == "chat":
        return any(m.get("role") == "tool" and m.get("tool_call_id") == "call_r" for m in request["messages"])
    if api == "responses":
        items = request.get("input") if isinstance(request.get("input"), list) else []
        return any(i.get("type") == "function_call_output" and i.get("call_id") == "call_r" for i in items)
    if api == "anthropic":
        return any(isinstance(m.get("content"), list) and any(
            b.get("type") == "tool_result" and b.get("tool_use_id") == "toolu_r" for b in m["content"])
            for m in request["messages"])
    return any("functionResponse" in p and p["functionResponse"].get("name") == TOOL
               for c in request["contents"] for p in c.get("parts", []))


# ---------------------------------------------------------------------------------------------
# The SDK calls.

BASH = {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}


def chat_messages():
    return [{"role": "user", "content": QUESTION},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd":"cat app.log"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": LOG}]


CHAT_TOOLS = [{"type": "function", "function": {"name": "bash", "description": "Run", "parameters": BASH}}]


def openai_client(base):
    import openai
    return openai.OpenAI(base_url=f"{base}/v1", api_key="sk-sdk-test", max_retries=0, timeout=60)


def chat_plain(base):
    completion = openai_client(base).chat.completions.create(model="gpt-4o", messages=chat_messages(),
                                                             tools=CHAT_TOOLS)
    assert not completion.choices[0].message.tool_calls, completion
    return completion.choices[0].message.content, completion.model_dump_json()


def chat_stream(base):
    with openai_client(base).chat.completions.stream(model="gpt-4o", messages=chat_messages(),
                                                     tools=CHAT_TOOLS) as events:
        final = events.get_final_completion()
    assert not final.choices[0].message.tool_calls, final
    return final.choices[0].message.content, final.model_dump_json()


def responses_input():
    return [{"role": "user", "content": QUESTION},
            {"type": "function_call", "call_id": "call_1", "name": "bash", "arguments": '{"cmd":"cat app.log"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": LOG}]


RESPONSES_TOOLS = [{"type": "function", "name": "bash", "description": "Run", "parameters": BASH, "strict": False}]


def responses_plain(base):
    response = openai_client(base).responses.create(model="gpt-4o", input=responses_input(), tools=RESPONSES_TOOLS)
    return response.output_text, response.model_dump_json()


def responses_streamed(base):
    with openai_client(base).responses.stream(model="gpt-4o", input=responses_input(),
                                              tools=RESPONSES_TOOLS) as events:
        seen = [e.type for e in events]
        final = events.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed", seen
    return final.output_text, final.model_dump_json()


def anthropic_client(base):
    import anthropic
    return anthropic.Anthropic(base_url=base, api_key="sk-ant-sdk-test", max_retries=0, timeout=60)


def anthropic_messages_list():
    return [{"role": "user", "content": QUESTION},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash",
                                               "input": {"cmd": "cat app.log"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": LOG}]}]


ANTHROPIC_TOOLS = [{"name": "bash", "description": "Run", "input_schema": BASH}]


def anthropic_plain(base):
    message = anthropic_client(base).messages.create(model="claude-sonnet-4-5", max_tokens=1024,
                                                     messages=anthropic_messages_list(), tools=ANTHROPIC_TOOLS)
    assert message.stop_reason == "end_turn", message
    return "".join(b.text for b in message.content if b.type == "text"), message.model_dump_json()


def anthropic_streamed(base):
    with anthropic_client(base).messages.stream(model="claude-sonnet-4-5", max_tokens=1024,
                                                messages=anthropic_messages_list(), tools=ANTHROPIC_TOOLS) as events:
        final = events.get_final_message()
    assert final.stop_reason == "end_turn", final
    return "".join(b.text for b in final.content if b.type == "text"), final.model_dump_json()


def gemini_client(base):
    from google import genai
    from google.genai import types
    return genai.Client(api_key="AIza-sdk-test", http_options=types.HttpOptions(base_url=base)), types


def gemini_contents(types):
    return [types.Content(role="user", parts=[types.Part(text=QUESTION)]),
            types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(
                name="bash", args={"cmd": "cat app.log"}))]),
            types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
                name="bash", response={"output": LOG}))])]


def gemini_plain(base):
    client, types = gemini_client(base)
    response = client.models.generate_content(model="gemini-2.5-flash", contents=gemini_contents(types))
    assert not response.function_calls, response
    return response.text, response.model_dump_json()


def gemini_streamed(base):
    client, types = gemini_client(base)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=gemini_contents(types)))
    assert all(not chunk.function_calls for chunk in chunks), chunks
    return "".join(chunk.text or "" for chunk in chunks), json.dumps([c.model_dump(mode="json") for c in chunks])


CASES = [
    ("chat", chat_plain), ("chat", chat_stream),
    ("responses", responses_plain), ("responses", responses_streamed),
    ("anthropic", anthropic_plain), ("anthropic", anthropic_streamed),
    ("gemini", gemini_plain), ("gemini", gemini_streamed),
]


# ---------------------------------------------------------------------------------------------

def start_proxy(binary, upstream):
    command = [binary, "--listen", "127.0.0.1:0", "--log-format", "json", "--secret", "sdk-test",
               "--openai-base", upstream, "--anthropic-base", upstream, "--gemini-base", upstream]
    proxy = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={"RUST_LOG": "info"})
    logs = []
    for line in proxy.stderr:
        logs.append(json.loads(line))  # every line is one JSON object
        if logs[-1].get("message") == "listening":
            address = logs[-1]["addr"]
            break
    else:
        raise AssertionError(f"the proxy exited before listening: {logs}")
    reader = threading.Thread(target=lambda: logs.extend(json.loads(line) for line in proxy.stderr), daemon=True)
    reader.start()
    return proxy, f"http://{address}", logs, reader


def main():
    warnings.simplefilter("ignore", DeprecationWarning)
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    proxy, base, logs, reader = start_proxy(sys.argv[1], upstream)
    passed = 0
    try:
        for api, call in CASES:
            before = len(Upstream.seen)
            text, dumped = call(base)
            name = call.__name__
            assert text == ANSWER, f"{name}: {text!r}"
            assert TOOL not in dumped, f"{name}: the client saw the retrieval tool: {dumped[:400]}"
            rounds = Upstream.seen[before:]
            assert [r[0] for r in rounds] == [api, api], f"{name}: {[r[:2] for r in rounds]}"
            first, continuation = rounds[0][3], rounds[1][3]
            assert MARKER.search(first) and len(first) < len(LOG) / 5, f"{name}: not compressed"
            assert continuation.count("card_declined") > first.count("card_declined"), f"{name}: not retrieved"
            passed += 1
            print(f"ok {name}")

        with urllib.request.urlopen(f"{base}/healthz") as response:
            assert response.status == 200 and response.read() == b"ok\n"
        with urllib.request.urlopen(f"{base}/metrics") as response:
            metrics = response.read().decode()
        values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
        assert values["ccr_outputs_compressed_total"] == str(len(CASES)), metrics
        assert values["ccr_continuation_rounds_total"] == str(len(CASES)), metrics
        for api in ("openai-chat", "openai-responses", "anthropic", "gemini"):
            assert values[f'ccr_proxy_requests_total{{api="{api}",outcome="success"}}'] == "2", (api, metrics)
        passed += 1
        print("ok healthz and metrics")
    finally:
        proxy.send_signal(signal.SIGTERM)
        code = proxy.wait(timeout=60)
        reader.join(timeout=10)
        server.shutdown()
    assert code == 0, f"exit code {code} after SIGTERM: {logs[-5:]}"
    messages = [entry.get("message") for entry in logs]
    assert "shutdown requested" in messages and "every connection closed" in messages, messages
    requests = [entry for entry in logs if entry.get("message") == "request"]
    assert len(requests) == len(CASES) and all("?" not in entry["path"] for entry in requests), requests
    passed += 1
    print("ok SIGTERM: graceful exit, structured logs")
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
