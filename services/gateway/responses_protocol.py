"""OpenAI's Responses API wire types, and their translation to and from the mesh's chat
messages: request fields (honoured, or refused with a 400 naming them), input items to chat
messages, stored chat messages back to items (the conversation items and a response's output).

Item ids derive from the stored turn and the message's position in it, so one message has the
same id as a response's output, in the response's input items and among its conversation's
items: ``msg_<turn>_<i>`` (a message), ``fc_<turn>_<i>_<j>`` (function call j of an assistant
message), ``fco_<turn>_<i>`` (a function call's output); system and developer messages of a
request (never stored in the turn) are ``msg_<turn>_s<k>``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmmesh.common.v1 import chat_pb2 as common_pb2
from services.gateway.errors import APIError
from services.gateway.protocol import INT32_MAX, MAX_TOP_LOGPROBS, check_schema

LOGPROBS_INCLUDE = "message.output_text.logprobs"
MAX_METADATA = 16
ITEM_ID = re.compile(r"^(msg|fc|fco)_([0-9a-f]{32})_(\d+)(?:_(\d+))?$")
_UNSUPPORTED_PARTS = ("input_image", "input_file", "input_audio")


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


class ConversationRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)


class ResponseRequest(BaseModel):
    """POST /v1/responses (and, without `stream`, /v1/responses/input_tokens). Unknown fields
    are a 400, never dropped."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[dict[str, Any]] = Field(default="")
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=MAX_METADATA)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    conversation: str | ConversationRef | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: Literal["auto", "default"] | None = None
    max_tool_calls: Any = None
    prompt: Any = None

    # --- what is refused ----------------------------------------------------------------

    def check(self) -> None:
        """400s for what llmmesh cannot honour, each naming its parameter."""
        if self.background:
            raise _unsupported("'background' responses are not supported yet; send background=false.", "background")
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            raise _unsupported("'reasoning' is not supported: the models served do not reason.", "reasoning")
        if self.max_tool_calls is not None:
            raise _unsupported("'max_tool_calls' is not supported.", "max_tool_calls")
        if self.prompt is not None:
            raise _unsupported("Prompt templates ('prompt') are not supported.", "prompt")
        if self.stream_options and set(self.stream_options) - {"include_obfuscation"}:
            raise _unsupported("Only 'include_obfuscation' is accepted in 'stream_options'.", "stream_options")
        for value in self.include or []:
            if value != LOGPROBS_INCLUDE:
                raise _unsupported(f"include value {value!r} is not supported.", "include")
        if self.conversation is not None and self.previous_response_id is not None:
            raise APIError.invalid(
                "'previous_response_id' and 'conversation' cannot be used together.", "previous_response_id"
            )
        check_metadata(self.metadata)
        if self.top_logprobs and not self.logprobs:
            raise APIError.invalid(f"'top_logprobs' requires include=['{LOGPROBS_INCLUDE}'].", "top_logprobs")

    @property
    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or [])

    @property
    def stores(self) -> bool:
        return self.store is not False

    @property
    def conversation_id(self) -> str:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation or ""

    # --- to the mesh --------------------------------------------------------------------

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for i, raw in enumerate(self.tools or []):
            kind = raw.get("type")
            if kind != "function":
                raise _unsupported(
                    f"Tools of type {kind!r} are not supported: only function tools are.", f"tools[{i}].type"
                )
            try:
                tool = FunctionTool.model_validate(raw)
            except ValueError as exc:
                raise APIError.invalid(f"Invalid function tool: {exc}", f"tools[{i}]") from None
            if tool.parameters is not None:
                check_schema(tool.parameters, f"tools[{i}].parameters")
            tools.append(tool)
        return tools

    def tool_settings(self) -> tuple[str, str, str, bool]:
        """(tools as chat JSON, tool choice, named function, single call) for the pipeline."""
        tools = self.function_tools()
        choice = self.tool_choice
        name = ""
        if isinstance(choice, dict):
            if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
                raise _unsupported(
                    f"tool_choice of type {choice.get('type')!r} is not supported: "
                    "use 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.",
                    "tool_choice",
                )
            name = choice["name"]
            if name not in {t.name for t in tools}:
                raise APIError.invalid(f"Tool '{name}' is not among 'tools'.", "tool_choice")
        if not tools:
            if choice not in (None, "none", "auto"):
                raise APIError.invalid("'tool_choice' requires 'tools'.", "tool_choice")
            return "", "", "", False
        chat_tools = [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})} for t in tools
        ]
        mode = "function" if name else (choice if isinstance(choice, str) else "auto")
        return json.dumps(chat_tools), mode, name, self.parallel_tool_calls is False

    def to_sampling(self) -> common_pb2.SamplingParams:
        sampling = common_pb2.SamplingParams(n=1)
        if self.temperature is not None:
            sampling.temperature = self.temperature
        if self.top_p is not None:
            sampling.top_p = self.top_p
        if self.max_output_tokens is not None:
            sampling.max_tokens = self.max_output_tokens
        form = self.text.format if self.text else None
        if form is not None and form.type == "json_object":
            sampling.json_object = True
        elif form is not None and form.type == "json_schema":
            if not form.name or form.schema_ is None:
                raise APIError.invalid("text.format of type json_schema needs 'name' and 'schema'.", "text.format")
            check_schema(form.schema_, "text.format.schema")
            sampling.json_schema = json.dumps(form.schema_)
        if self.logprobs:
            sampling.logprobs = self.top_logprobs or 0
        return sampling

    def to_messages(self) -> list[common_pb2.ChatMessage]:
        """The instructions (a system message, not carried to the next turn, as OpenAI's) and the input."""
        system = [common_pb2.ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        return [*system, *input_messages(self.input)]

    # --- echoed in the response object --------------------------------------------------

    def echoed(self) -> dict[str, Any]:
        form = self.text.format if self.text else None
        text_format: dict[str, Any] = {"type": "text"}
        if form is not None:
            text_format = form.model_dump(by_alias=True, exclude_none=True)
        tools = [t.model_dump() for t in self.function_tools()]
        choice: Any = self.tool_choice or "auto"
        if isinstance(choice, dict):
            choice = {"type": "function", "name": choice["name"]}
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": self.prompt_cache_key,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": self.safety_identifier,
            "service_tier": "default",
            "store": self.stores,
            "temperature": self.temperature if self.temperature is not None else 1.0,
            "text": {"format": text_format, "verbosity": "medium"},
            "tool_choice": choice,
            "tools": tools,
            "top_logprobs": self.top_logprobs or 0,
            "top_p": self.top_p if self.top_p is not None else 1.0,
            "truncation": self.truncation or "disabled",
            "user": self.user,
            "background": False,
        }


def check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's metadata limits (the count is the field's own): keys 64, values 512 characters."""
    for key, value in (metadata or {}).items():
        if len(key) > 64 or len(value) > 512:
            raise APIError.invalid("metadata keys are at most 64 characters, values at most 512.", "metadata")


def _unsupported(message: str, param: str) -> APIError:
    return APIError.invalid(message, param, "unsupported_parameter")


# --- items -> chat messages ---------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError.invalid("content must be a string or a list of parts.", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            raise _unsupported(f"Content parts of type {kind!r} are not supported: text only.", f"{where}[{j}].type")
        if kind not in ("input_text", "output_text") or not isinstance(part.get("text"), str):
            raise APIError.invalid(f"Content parts of type {kind!r} are not supported.", f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise APIError.invalid(f"Missing or invalid '{key}'.", f"{where}.{key}")
    return value


def input_messages(input_: str | list[dict[str, Any]], param: str = "input") -> list[common_pb2.ChatMessage]:
    """Input items as chat messages: messages, function calls (grouped into the assistant
    message they follow) and function call outputs (tool messages). Other items are a 400."""
    if isinstance(input_, str):
        if not input_:
            raise APIError.invalid("'input' must not be empty.", param)
        return [common_pb2.ChatMessage(role="user", content=input_)]
    out: list[common_pb2.ChatMessage] = []
    for i, item in enumerate(input_):
        where = f"{param}[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError.invalid(f"Invalid role {role!r}.", f"{where}.role")
            out.append(common_pb2.ChatMessage(role=role, content=_text_of(item.get("content"), f"{where}.content")))
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", where),
                "type": "function",
                "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)},
            }
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                calls = json.loads(last.tool_calls_json) if last.tool_calls_json else []
                last.tool_calls_json = json.dumps([*calls, call])
            else:
                out.append(common_pb2.ChatMessage(role="assistant", content="", tool_calls_json=json.dumps([call])))
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            call_id = _string(item, "call_id", where)
            out.append(common_pb2.ChatMessage(role="tool", content=content, tool_call_id=call_id))
        else:
            raise _unsupported(f"Input items of type {kind!r} are not supported.", f"{where}.type")
    if not out:
        raise APIError.invalid("'input' must not be empty.", param)
    return out


# --- chat messages -> items ---------------------------------------------------------------


def message_items(turn_id: str, index: int | str, message: common_pb2.ChatMessage) -> list[dict[str, Any]]:
    """The items of one stored message (none for a forgotten one)."""
    if not message.role:
        return []
    if message.role == "tool":
        return [
            {
                "id": f"fco_{turn_id}_{index}",
                "type": "function_call_output",
                "call_id": message.tool_call_id,
                "output": message.content,
                "status": "completed",
            }
        ]
    if message.role != "assistant":
        return [
            {
                "id": f"msg_{turn_id}_{index}",
                "type": "message",
                "role": message.role,
                "status": "completed",
                "content": [{"type": "input_text", "text": message.content}],
            }
        ]
    calls = json.loads(message.tool_calls_json) if message.tool_calls_json else []
    items: list[dict[str, Any]] = []
    if message.content or not calls:
        items.append(
            {
                "id": f"msg_{turn_id}_{index}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": message.content, "annotations": [], "logprobs": []}],
            }
        )
    for j, call in enumerate(calls):
        items.append(
            {
                "id": f"fc_{turn_id}_{index}_{j}",
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    return items


def turn_items(turn_id: str, messages: list[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    return [item for i, m in enumerate(messages) for item in message_items(turn_id, i, m)]


def request_input_items(turn_id: str, messages: list[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    """A request's input as items, with the ids its stored turn gives them (system messages
    are not stored: ``s<k>``)."""
    items: list[dict[str, Any]] = []
    stored = system = 0
    for m in messages:
        if m.role in ("system", "developer"):
            items += message_items(turn_id, f"s{system}", m)
            system += 1
        else:
            items += message_items(turn_id, stored, m)
            stored += 1
    return items


def parse_item_id(item_id: str) -> tuple[str, int] | None:
    """(turn id, message index) of an item id, or None for one llmmesh never made."""
    found = ITEM_ID.match(item_id)
    return (found.group(2), int(found.group(3))) if found else None
