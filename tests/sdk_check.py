#!/usr/bin/env python3
"""Checks what tower-ccr sent upstream and returned to clients against the official SDKs' types.

Usage: sdk_check.py <dir>   (the folder `cargo test --test sdk_conformance` writes:
target/tmp/sdk-conformance). Needs the PyPI packages openai, anthropic and google-genai.

Requests are validated against the SDKs' request parameter types (openai and anthropic TypedDicts,
through pydantic, every lazily validated iterable forced), Gemini requests field by field against
google-genai's models (which forbid unknown fields); responses the client got are parsed with
the SDKs' response models, as the SDKs themselves parse them. Exits 1 on the first mismatch.
"""

import collections.abc
import json
import sys
import types
import typing
from pathlib import Path

import typing_extensions

import pydantic
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from google.genai import types as genai
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming


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
RESPONSES = {
    "chat": ChatCompletion.model_validate,
    "responses": Response.model_validate,
    "anthropic": Message.model_validate,
    "gemini": genai.GenerateContentResponse.model_validate,
}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = sorted(Path(sys.argv[1]).glob("*.json"))
    if not files:
        sys.exit(f"no fixtures in {sys.argv[1]}: run cargo test --test sdk_conformance first")
    checked = {api: 0 for api in REQUESTS}
    for path in files:
        api, kind = path.stem.split("_", 2)[:2]
        body = json.loads(path.read_text())
        try:
            (REQUESTS if kind == "request" else RESPONSES)[api](body)
        except Exception as error:  # noqa: BLE001 - report any validation failure
            print(f"FAILED {path.name}: {error}")
            sys.exit(1)
        checked[api] += 1
    for api, count in checked.items():
        if count == 0:
            sys.exit(f"no fixtures for {api}")
    print(f"{len(files)} passed, 0 failed: sdk types accept every request and response ({checked})")


if __name__ == "__main__":
    main()
