"""Chat messages between the mesh's proto type and OpenAI's JSON shape, and a request's sampling
parameters over an agent's defaults, in one place."""

from __future__ import annotations

import json
from typing import Any

from llmmesh.common.v1 import chat_pb2


def to_openai(message: chat_pb2.ChatMessage) -> dict[str, Any]:
    """OpenAI's message object: only the fields that are set; tool calls as JSON again."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls_json:
        out["tool_calls"] = json.loads(message.tool_calls_json)
    return out


def merge_sampling(request: chat_pb2.SamplingParams, defaults: chat_pb2.SamplingParams) -> chat_pb2.SamplingParams:
    """The client's values win; the agent's defaults fill what the client left unset."""
    merged = chat_pb2.SamplingParams()
    merged.CopyFrom(defaults)
    if request.stop:
        del merged.stop[:]  # MergeFrom would append the client's stops to the agent's
    merged.MergeFrom(request)
    return merged


def defaulted_fields(request: chat_pb2.SamplingParams, defaults: chat_pb2.SamplingParams) -> frozenset[str]:
    """The fields the merge takes from the defaults alone: the client did not ask for them."""
    asked = {field.name for field, _ in request.ListFields()}
    return frozenset(field.name for field, _ in defaults.ListFields() if field.name not in asked)
