#!/usr/bin/env python3
"""Checks what tower-ccr sent upstream and returned to clients against the official SDKs.

Usage: sdk_check.py <dir>   (the folder `cargo test --test sdk_conformance` writes:
target/tmp/sdk-conformance). Needs the PyPI packages openai, anthropic and google-genai.

Requests are validated against the SDKs' request parameter types (openai and anthropic TypedDicts,
through pydantic, every lazily validated iterable forced), Gemini requests field by field against
google-genai's models (which forbid unknown fields); responses the client got are parsed with
the SDKs' response models, as the SDKs themselves parse them. Streams the client got
(`*_stream_*.sse`) are fed to each SDK's own streaming client over a mock HTTP transport and
accumulated as the SDK's stream helpers do; an error stream must make the SDK raise. Exits 1 on
the first mismatch.
"""

import collections.abc
import json
import sys
import types
import typing
import warnings
from pathlib import Path

import httpx2 as httpx  # the HTTP client the SDKs use
import typing_extensions

import pydantic
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming, MessageCreateParamsStreaming
from google.genai import types as genai
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.responses import Response
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)


def check(kind, value, path="$"):
    """Checks `value` against a typing type as the SDK declares it: TypedDicts (required keys
    present, no unknown keys), unions (some arm fits), Literal, lists and iterables item by item,
    anything else through pydantic."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is typing.Any or kind is object:
        return
    if origin in (typing.Annotated, typing_extensions.Annotated):
        return check(args[0], value, path)
    if origin in (typing.Required, typing.NotRequired, typing_extensions.Required, typing_extensions.NotRequired):
        return check(args[0], value, path)
    if typing_extensions.is_typeddict(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object for {kind.__name__}, got {value!r:.80}")
        hints = typing_extensions.get_type_hints(kind, include_extras=True)
        missing = set(kind.__required_keys__) - set(value)
        if missing:
            raise ValueError(f"{path}: {kind.__name__} lacks {sorted(missing)}")
        for key, item in value.items():
            if key not in hints:
                raise ValueError(f"{path}: {kind.__name__} has no member {key!r}")
            check(hints[key], item, f"{path}.{key}")
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return check(arm, value, path)
            except (ValueError, pydantic.ValidationError) as error:
                errors.append(str(error).splitlines()[0])
        raise ValueError(f"{path}: no variant fits: {errors[:4]}")
    if origin in (typing.Literal, typing_extensions.Literal):
        if value not in args:
            raise ValueError(f"{path}: {value!r} is not one of {args}")
        return
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected an array, got {value!r:.80}")
        for index, item in enumerate(value):
            check(args[0] if args else typing.Any, item, f"{path}[{index}]")
        return
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object")
        return
    pydantic.TypeAdapter(kind).validate_python(value, strict=False)


def typed_dict(kind, body):
    check(kind, body)


def gemini_request(body):
    allowed = {"contents", "tools", "toolConfig", "systemInstruction", "generationConfig",
               "safetySettings", "cachedContent", "labels"}
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown request members {unknown}")
    for content in body["contents"]:
        genai.Content.model_validate(content)
    for tool in body.get("tools", []):
        genai.Tool.model_validate(tool)
    if "toolConfig" in body:
        genai.ToolConfig.model_validate(body["toolConfig"])
    if "systemInstruction" in body:
        genai.Content.model_validate(body["systemInstruction"])


REQUESTS = {
    "chat": lambda body: typed_dict(CompletionCreateParamsNonStreaming, body),
    "responses": lambda body: typed_dict(ResponseCreateParamsNonStreaming, body),
    "anthropic": lambda body: typed_dict(MessageCreateParamsNonStreaming, body),
    "gemini": gemini_request,
}
STREAM_REQUESTS = {
    "chat": lambda body: typed_dict(CompletionCreateParamsStreaming, body),
    "responses": lambda body: typed_dict(ResponseCreateParamsStreaming, body),
    "anthropic": lambda body: typed_dict(MessageCreateParamsStreaming, body),
    "gemini": gemini_request,
}
RESPONSES = {
    "chat": ChatCompletion.model_validate,
    "responses": Response.model_validate,
    "anthropic": Message.model_validate,
    "gemini": genai.GenerateContentResponse.model_validate,
}


def transport(stream):
    """An httpx client whose every request is answered with `stream` as an event stream."""
    def answer(request):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
    return httpx.Client(transport=httpx.MockTransport(answer))


def chat_stream(stream):
    import openai
    client = openai.OpenAI(api_key="x", base_url="http://upstream/v1", http_client=transport(stream), max_retries=0)
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "q"}]) as events:
        return events.get_final_completion().model_dump_json()


def responses_stream(stream):
    import openai
    client = openai.OpenAI(api_key="x", base_url="http://upstream/v1", http_client=transport(stream), max_retries=0)
    with client.responses.stream(model="gpt-4o", input="q") as events:
        return events.get_final_response().model_dump_json()


def anthropic_stream(stream):
    import anthropic
    client = anthropic.Anthropic(api_key="x", base_url="http://upstream", http_client=transport(stream), max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=1024,
                                messages=[{"role": "user", "content": "q"}]) as events:
        return events.get_final_message().model_dump_json()


def gemini_stream(stream):
    from google import genai as google_genai
    options = genai.HttpOptions(base_url="http://upstream", httpx_client=transport(stream))
    client = google_genai.Client(api_key="x", http_options=options)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="q"))
    # What a client reads of the stream: the text of every chunk, and every call.
    text = "".join(part.text or "" for chunk in chunks for part in chunk.candidates[0].content.parts or [])
    calls = [call.name for chunk in chunks for call in chunk.function_calls or []]
    return json.dumps({"text": text, "calls": calls, "chunks": [chunk.model_dump(mode="json") for chunk in chunks]})


STREAMS = {"chat": chat_stream, "responses": responses_stream, "anthropic": anthropic_stream, "gemini": gemini_stream}


def check_stream(api, case, stream):
    """Runs a stream the client got through the SDK's own streaming client."""
    if case == "error":
        try:
            STREAMS[api](stream)
        except Exception:  # noqa: BLE001 - any SDK error is the expected outcome
            return
        raise ValueError("the SDK read an error stream without raising")
    final = STREAMS[api](stream)
    if "ccr_retrieve" in final:
        raise ValueError(f"the client saw the retrieval tool: {final:.300}")
    expected = {"final": "The card was declined.", "mixed": "bash"}[case]
    if expected not in final:
        raise ValueError(f"{expected!r} not in what the SDK accumulated: {final:.600}")


def main():
    warnings.simplefilter("ignore", DeprecationWarning)  # model names in the fixtures age
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = sorted(Path(sys.argv[1]).glob("*.json"))
    if not files:
        sys.exit(f"no fixtures in {sys.argv[1]}: run cargo test --test sdk_conformance first")
    checked = {api: 0 for api in REQUESTS}
    for path in files:
        api, kind, case = path.stem.split("_", 2)
        body = json.loads(path.read_text())
        if kind == "request":
            checks = STREAM_REQUESTS if case.startswith("stream") else REQUESTS
        else:
            checks = RESPONSES
        try:
            checks[api](body)
        except Exception as error:  # noqa: BLE001 - report any validation failure
            print(f"FAILED {path.name}: {error}")
            sys.exit(1)
        checked[api] += 1
    streams = sorted(Path(sys.argv[1]).glob("*_stream_*.sse"))
    for path in streams:
        api, _, case = path.stem.split("_", 2)
        try:
            check_stream(api, case, path.read_bytes())
        except Exception as error:  # noqa: BLE001 - report any failure
            print(f"FAILED {path.name}: {error}")
            sys.exit(1)
        checked[api] += 1
    for api, count in checked.items():
        if count == 0:
            sys.exit(f"no fixtures for {api}")
    print(f"{len(files) + len(streams)} passed, 0 failed: the SDKs accept every request, response and stream ({checked})")


if __name__ == "__main__":
    main()
