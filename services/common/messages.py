"""Chat messages between the mesh's proto type and OpenAI's JSON shape, in one place."""

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
