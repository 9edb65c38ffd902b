"""OpenAI chat-completions wire types, and their conversion to the mesh's proto types."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.gateway.errors import APIError

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1  # max_tokens travels as a proto int32
# A session id is echoed in the X-Session-Id response header, so it must be a valid header
# value: ASCII letters, digits and `_.:-` only ("" is no session).
SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{0,256}$"
MAX_TOP_LOGPROBS = 20


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


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


def check_schema(schema: dict[str, Any], param: str) -> None:
    """A JSON schema the model's output is to follow must itself be valid (400 naming it)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise APIError.invalid(f"Invalid JSON schema: {exc.message}", param) from None


# OpenAI parameters llmmesh cannot honour: refused when set to anything but their no-op value.
_REFUSED: dict[str, tuple[Any, ...]] = {
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
}


class GenerationRequest(BaseModel):
    """What the chat and completions APIs share: the model, streaming, and sampling."""

    # Fields OpenAI does not define are accepted (as OpenAI's own API does) and logged.
    model_config = ConfigDict(extra="allow")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Sampling extras vLLM understands.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    # vLLM's extension: generate exactly max_tokens (benchmarks rely on it).
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _log_unknown(self) -> GenerationRequest:
        if self.model_extra:
            log.info("unknown request fields accepted and not used", extra={"fields": sorted(self.model_extra)})
        return self

    def base_sampling(self, max_tokens: int | None) -> common_pb2.SamplingParams:
        sampling = common_pb2.SamplingParams(n=self.n, ignore_eos=self.ignore_eos)
        names = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p")
        for name in (*names, "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if len(stops) > 4:
                raise APIError.invalid("at most 4 stop sequences are allowed", "stop")
            sampling.stop[:] = stops
        if self.logit_bias:
            sampling.logit_bias.update(parse_logit_bias(self.logit_bias))
        return sampling


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    metadata: dict[str, str] | None = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    store: Any = None
    service_tier: Any = None
    # llmmesh extension: keep the conversation server-side under this id.
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)

    @model_validator(mode="after")
    def _refuse(self) -> ChatCompletionRequest:
        for name, allowed in _REFUSED.items():
            if getattr(self, name) not in allowed:
                raise APIError.invalid(f"'{name}' is not supported by this server.", name, "unsupported_parameter")
        return self

    def tool_settings(self) -> tuple[str, str, str, bool]:
        """(tools as JSON, tool choice, named function, single call) for the inference service;
        a choice that names a function that is not among the tools is a 400."""
        if not self.tools:
            if self.tool_choice not in (None, "none", "auto"):
                raise APIError.invalid("'tool_choice' requires 'tools'.", "tool_choice")
            return "", "", "", False
        for i, tool in enumerate(self.tools):
            if tool.function.parameters is not None:
                check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
        choice, name = "function", ""
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {t.function.name for t in self.tools}:
                raise APIError.invalid(f"Tool '{name}' is not among 'tools'.", "tool_choice")
        else:
            choice = self.tool_choice or "auto"
        tools_json = json.dumps([t.model_dump(exclude_none=True) for t in self.tools])
        return tools_json, choice, name, self.parallel_tool_calls is False

    def to_sampling(self) -> common_pb2.SamplingParams:
        sampling = self.base_sampling(self.max_completion_tokens or self.max_tokens)
        if self.response_format is not None:
            if self.response_format.type == "json_object":
                sampling.json_object = True
            elif self.response_format.type == "json_schema":
                if self.response_format.json_schema is None:
                    raise APIError.invalid("response_format.json_schema is required", "response_format")
                schema = self.response_format.json_schema.schema_
                check_schema(schema, "response_format.json_schema.schema")
                sampling.json_schema = json.dumps(schema)
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError.invalid("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
        if self.logprobs:
            sampling.logprobs = self.top_logprobs or 0
        return sampling

    def to_messages(self) -> list[common_pb2.ChatMessage]:
        return [m.to_proto() for m in self.messages]


def parse_logit_bias(bias: dict[str, float]) -> dict[int, float]:
    """OpenAI's logit_bias: token ids (as JSON object keys) to a bias in -100..100."""
    parsed = {}
    for key, value in bias.items():
        if not key.strip().isdigit() or int(key) > INT32_MAX:
            raise APIError.invalid(f"logit_bias keys must be token ids, not {key!r}.", "logit_bias")
        if not -100 <= value <= 100:
            raise APIError.invalid(f"logit_bias values must be between -100 and 100, not {value}.", "logit_bias")
        parsed[int(key)] = value
    return parsed
