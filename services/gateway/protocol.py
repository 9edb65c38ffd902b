"""OpenAI chat-completions wire types, and their conversion to the mesh's proto types."""

from __future__ import annotations

import json
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field

from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.gateway.errors import APIError

_INT32_MAX = 2**31 - 1  # max_tokens travels as a proto int32
# A session id is echoed in the X-Session-Id response header, so it must be a valid header
# value: ASCII letters, digits and `_.:-` only ("" is no session).
SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{0,256}$"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError.invalid(f"content parts of type {part.type!r} are not supported", "messages")
            parts.append(part.text)
        return "".join(parts)

    def to_proto(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(
            role=self.role,
            content=self.text(),
            name=self.name or "",
            tool_call_id=self.tool_call_id or "",
            tool_calls_json=json.dumps(self.tool_calls) if self.tool_calls else "",
        )


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    user: str | None = None
    # vLLM's extension: generate exactly max_tokens (benchmarks rely on it).
    ignore_eos: bool = False
    # llmmesh extension: keep the conversation server-side under this id.
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)

    def to_sampling(self) -> common_pb2.SamplingParams:
        sampling = common_pb2.SamplingParams(n=self.n, ignore_eos=self.ignore_eos)
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if len(stops) > 4:
                raise APIError.invalid("at most 4 stop sequences are allowed", "stop")
            sampling.stop[:] = stops
        if self.response_format is not None:
            if self.response_format.type == "json_object":
                sampling.json_object = True
            elif self.response_format.type == "json_schema":
                if self.response_format.json_schema is None:
                    raise APIError.invalid("response_format.json_schema is required", "response_format")
                schema = self.response_format.json_schema.schema_
                try:
                    Draft202012Validator.check_schema(schema)
                except SchemaError as exc:
                    raise APIError.invalid(
                        f"Invalid JSON schema: {exc.message}", "response_format.json_schema.schema"
                    ) from None
                sampling.json_schema = json.dumps(schema)
        return sampling

    def to_messages(self) -> list[common_pb2.ChatMessage]:
        return [m.to_proto() for m in self.messages]
