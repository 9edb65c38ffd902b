"""Anthropic Messages wire types (requests), strict, and their translation to the mesh's proto
types. What llmmesh cannot honour is refused with a 400 that names it, never ignored: unknown
fields, image and document blocks, server tools, extended thinking, assistant prefill."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.gateway.errors import APIError
from services.gateway.protocol import INT32_MAX, check_schema

# Tool-call ids the mesh makes (vLLM's `chatcmpl-tool-<hex>`) go out as `toolu_llmmesh_<hex>`
# and come back in as they were: a session's stored call and the client's result keep one id.
# Ids from anywhere else (the client's own, an external backend's) pass through unchanged.
_MESH_ID = "chatcmpl-tool-"
_WIRE_ID = "toolu_llmmesh_"


def wire_tool_id(call_id: str) -> str:
    return _WIRE_ID + call_id.removeprefix(_MESH_ID) if call_id.startswith(_MESH_ID) else call_id


def mesh_tool_id(wire_id: str) -> str:
    return _MESH_ID + wire_id.removeprefix(_WIRE_ID) if wire_id.startswith(_WIRE_ID) else wire_id


class _Strict(BaseModel):
    """Unknown fields are refused; `refused` names the fields Anthropic defines that llmmesh
    cannot honour, each accepted only absent or at its no-op values."""

    model_config = ConfigDict(extra="forbid")
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="after")
    def _refuse_what_cannot_be_honoured(self) -> Self:
        for name, allowed in self.refused.items():
            if getattr(self, name) not in allowed:
                raise APIError.invalid(f"'{name}' is not supported by this server.", name, "unsupported_parameter")
        return self


class CacheControl(_Strict):
    """Accepted: the engines cache prompt prefixes on their own, marked or not."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {"citations": (None, [])}

    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None


class ToolUseBlock(_Strict):
    # `caller`: programmatic tool calling (from a code execution tool), which llmmesh has not.
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {"caller": (None, {"type": "direct"}), "toolset_name": (None,)}

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


class ToolResultBlock(_Strict):
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {"toolset_name": (None,)}

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = None

    def text(self) -> str:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(block.text for block in content)
        # The chat templates have no error flag for a tool's answer: the model reads it in the text.
        return f"Error: {text}" if self.is_error else text


Block = TextBlock | ToolUseBlock | ToolResultBlock
# Block types by role; any other (image, document, thinking, server tool results...) is refused.
_BLOCKS = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use")}


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def to_proto(self) -> list[common_pb2.ChatMessage]:
        """A user message is its tool results (as `tool` messages) and its text, in order; an
        assistant message is one message with its text and tool calls."""
        if isinstance(self.content, str):
            return [common_pb2.ChatMessage(role=self.role, content=self.content)]
        if self.role == "assistant":
            calls = [
                {
                    "id": mesh_tool_id(b.id),
                    "type": "function",
                    "function": {"name": b.name, "arguments": json.dumps(b.input)},
                }
                for b in self.content
                if isinstance(b, ToolUseBlock)
            ]
            text = "".join(b.text for b in self.content if isinstance(b, TextBlock))
            return [
                common_pb2.ChatMessage(
                    role="assistant", content=text, tool_calls_json=json.dumps(calls) if calls else ""
                )
            ]
        out: list[common_pb2.ChatMessage] = []
        for block in self.content:
            if isinstance(block, ToolResultBlock):
                out.append(
                    common_pb2.ChatMessage(
                        role="tool", content=block.text(), tool_call_id=mesh_tool_id(block.tool_use_id)
                    )
                )
            elif isinstance(block, TextBlock):
                if out and out[-1].role == "user":
                    out[-1].content += "\n" + block.text
                else:
                    out.append(common_pb2.ChatMessage(role="user", content=block.text))
        return out


class ToolParam(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    # `strict`: a schema-exact call whatever the choice; only a forced `tool` choice is held to it.
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {"strict": (None, False)}

    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(item) for item in value)
    return False


def _refuse_blocks(data: Any) -> None:
    """400s naming what cannot be honoured, before the fields are parsed (a union's own error
    would list every block type instead of naming the one that is wrong)."""
    if not isinstance(data, dict):
        return
    for i, message in enumerate(data.get("messages") or []):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            continue
        allowed = _BLOCKS.get(message.get("role", ""), ())
        for j, block in enumerate(message["content"]):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and allowed and kind not in allowed:
                raise APIError.invalid(
                    f"Content blocks of type '{kind}' are not supported in {message['role']} messages by this "
                    f"server (supported: {', '.join(allowed)}).",
                    f"messages.{i}.content.{j}.type",
                    "unsupported_content",
                )
            inner = block.get("content") if kind == "tool_result" else None
            for k, part in enumerate(inner if isinstance(inner, list) else []):
                if isinstance(part, dict) and part.get("type") != "text":
                    raise APIError.invalid(
                        f"Tool results with '{part.get('type')}' blocks are not supported by this server (text only).",
                        f"messages.{i}.content.{j}.content.{k}.type",
                        "unsupported_content",
                    )
    for i, tool in enumerate(data.get("tools") or []):
        if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
            raise APIError.invalid(
                f"Tools of type '{tool['type']}' (server tools) are not supported by this server: only custom "
                "tools (name, description, input_schema).",
                f"tools.{i}.type",
                "unsupported_tool",
            )


class PromptRequest(_Strict):
    """What /v1/messages and /v1/messages/count_tokens share: the model and the prompt."""

    refused: ClassVar[dict[str, tuple[Any, ...]]] = {
        "thinking": (None, {"type": "disabled"}),
        "mcp_servers": (None, []),
        "context_management": (None,),
    }

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Any = None
    mcp_servers: Any = None
    context_management: Any = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_content(cls, data: Any) -> Any:
        if _lone_surrogate(data):  # JSON may escape one (\ud800); no proto string can carry it
            raise APIError.invalid("The request contains text that is not valid Unicode (a lone surrogate).")
        _refuse_blocks(data)
        return data

    @model_validator(mode="after")
    def _refuse_prefill(self) -> PromptRequest:
        if self.messages[-1].role != "user":
            # The chat template would open a new assistant turn: the answer could not continue it.
            raise APIError.invalid(
                "The last message must be a user message: assistant prefill is not supported by this server.",
                f"messages.{len(self.messages) - 1}.role",
            )
        return self

    def to_messages(self) -> list[common_pb2.ChatMessage]:
        system = self.system if isinstance(self.system, str) else "\n\n".join(b.text for b in self.system or [])
        out = [common_pb2.ChatMessage(role="system", content=system)] if system else []
        for message in self.messages:
            out.extend(message.to_proto())
        return out

    def tool_settings(self) -> tuple[str, str, str, bool]:
        """(tools as OpenAI function tools in JSON, tool choice, named tool, single call) for the
        inference service, as chat completions hands them over."""
        choice = self.tool_choice
        single = bool(choice and choice.disable_parallel_tool_use)
        if choice is not None and (choice.type == "tool") != (choice.name is not None):
            raise APIError.invalid("'tool_choice.name' is required with type 'tool', and only then.", "tool_choice")
        if not self.tools:
            if choice is not None and choice.type in ("any", "tool"):
                raise APIError.invalid(f"tool_choice '{choice.type}' requires 'tools'.", "tool_choice")
            return "", "", "", False
        for i, tool in enumerate(self.tools):
            check_schema(tool.input_schema, f"tools.{i}.input_schema")
        functions = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description is not None else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in self.tools
        ]
        name = ""
        if choice is None or choice.type == "auto":
            mode = "auto"
        elif choice.type == "any":
            mode = "required"
        elif choice.type == "none":
            mode = "none"
        else:
            mode, name = "function", choice.name or ""
            if name not in {t.name for t in self.tools}:
                raise APIError.invalid(f"Tool '{name}' is not among 'tools'.", "tool_choice.name")
        return json.dumps(functions), mode, name, single


class MessagesRequest(PromptRequest):
    refused: ClassVar[dict[str, tuple[Any, ...]]] = {
        **PromptRequest.refused,
        "container": (None,),
        "output_config": (None,),
        "output_format": (None,),
        "inference_geo": (None,),
        "service_tier": (None, "auto", "standard_only"),
        "speed": (None, "standard"),
    }

    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=INT32_MAX)
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: Any = None
    container: Any = None
    output_config: Any = None
    output_format: Any = None
    inference_geo: Any = None
    speed: Any = None
    # Automatic prompt caching: accepted, as the engines cache prefixes anyway (see CacheControl).
    cache_control: CacheControl | None = None

    def to_sampling(self) -> common_pb2.SamplingParams:
        sampling = common_pb2.SamplingParams(n=1, max_tokens=self.max_tokens)
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        if self.stop_sequences:
            if any(not stop for stop in self.stop_sequences):
                raise APIError.invalid("Stop sequences must not be empty.", "stop_sequences")
            sampling.stop[:] = self.stop_sequences
        return sampling

    @property
    def user(self) -> str:
        return (self.metadata.user_id if self.metadata else None) or ""


class CountTokensRequest(PromptRequest):
    @model_validator(mode="after")
    def _no_tools(self) -> CountTokensRequest:
        # The inference service counts messages only; a count without the tools would be wrong.
        if self.tools:
            raise APIError.invalid("Counting tokens with 'tools' is not supported by this server.", "tools")
        return self
