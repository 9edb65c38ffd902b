"""Tool calling: OpenAI's `tools` and `tool_choice` over any chat model.

How each `tool_choice` is honoured:

- ``none``: the model sees the tools and nothing is parsed; it answers in text.
- ``auto`` (the default with tools): the model decides; its text goes through the model's
  tool parser from vLLM (``hermes`` by default: ``<tool_call>{"name": .., "arguments": ..}
  </tool_call>``), which turns it into tool-call pieces as it streams.
- a named function: the output is constrained (structured output) to that function's
  parameter schema, so the whole output *is* the call's arguments, streamed as they come.
  Its finish reason stays ``stop``, as OpenAI's does.
- ``required``: the output is constrained to a JSON array of ``{"name", "parameters"}``
  (vLLM's schema for it, one item when parallel calls are off), parsed when it is complete.

Models whose chat template knows nothing of tools (SmolLM2's, for one) get them rendered by
llmmesh in the Hermes style the default parser reads: the tool list in the system message,
earlier calls as ``<tool_call>`` blocks, tool results as ``<tool_response>`` blocks. Without
that, a client's tools would silently never reach the model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.common.errors import InvalidArgumentError
from services.inference.domain import ChoiceEnd, Delta, GenerationJob, ToolCallPiece

Message = dict[str, Any]

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. "
    "Don't make assumptions about what values to plug into functions. Here are the available tools: "
    "<tools>{tools}</tools> For each function call return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags as follows:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-dict>}}\n</tool_call>'
)


def _invalid(message: str, param: str = "tools") -> InvalidArgumentError:
    return InvalidArgumentError(message, param)


def template_renders_tools(chat_template: str | None) -> bool:
    """Whether a chat template reads the `tools` it is given (else llmmesh renders them)."""
    return bool(chat_template) and "tools" in str(chat_template)


def render_hermes(messages: Sequence[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """The chat with tools, tool calls and tool results written into plain messages, for a
    template that would drop them (or fail on an assistant message without content)."""
    out: list[Message] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))})
                for c in message["tool_calls"]
            ]
            blocks = "".join(f"\n<tool_call>\n{c}\n</tool_call>" for c in calls)
            out.append({"role": "assistant", "content": (content + blocks).lstrip("\n")})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({**message, "content": content})
    if tools:
        described = " ".join(json.dumps(t, ensure_ascii=False) for t in tools)
        preamble = HERMES_SYSTEM.format(tools=described)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{preamble}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def _arguments(raw: Any) -> Any:
    """A call's arguments as an object when they are JSON text (as OpenAI sends them)."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


@dataclass
class ToolPlan:
    """What one request's tool choice means for generation and for its output."""

    mode: str  # "none", "auto", "function" or "required"
    name: str = ""
    single: bool = False
    # Structured output that enforces the choice ("function", "required").
    schema: dict[str, Any] | None = None
    # vLLM's parsed request and the parser class ("auto").
    request: Any = None
    parser_class: Any = None
    tokenizer: Any = None
    # Makes the id of a new call (vLLM's `chatcmpl-tool-<random>`).
    new_id: Callable[[], str] = field(default=lambda: "")

    def output(self) -> ChoiceToolOutput:
        return ChoiceToolOutput(self)


class ChoiceToolOutput:
    """Turns one choice's streamed text into content and tool-call pieces."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""
        self.calls = 0
        self._token_ids: list[int] = []
        self._content_sent = ""
        self._args_sent: dict[int, str] = {}
        # vLLM's parser (stateful, one per choice); only "auto" reads the text with it.
        self._parser: Any = plan.parser_class(plan.tokenizer, plan.request.tools) if plan.mode == "auto" else None

    @property
    def called(self) -> bool:
        return self.calls > 0

    def feed(self, text: str, token_ids: Sequence[int] = ()) -> tuple[str, list[ToolCallPiece]]:
        previous = self.text
        self.text += text
        mode = self.plan.mode
        if mode == "none":
            return text, []
        if mode == "function":
            if not self.calls:
                self.calls = 1
                return "", [ToolCallPiece(0, self.plan.new_id(), self.plan.name, text)]
            return "", [ToolCallPiece(0, arguments=text)] if text else []
        if mode == "required":
            return "", []  # one JSON array: parsed when complete
        previous_ids = list(self._token_ids)  # only a parser reads ids: copied for it alone
        self._token_ids.extend(token_ids)
        delta = self._parser.extract_tool_calls_streaming(
            previous, self.text, text, previous_ids, self._token_ids, list(token_ids), self.plan.request
        )
        if delta is None:
            return "", []
        pieces = []
        for call in delta.tool_calls or []:
            function = call.function if isinstance(call.function, dict) else call.function.model_dump()
            piece = ToolCallPiece(
                call.index, call.id or "", function.get("name") or "", function.get("arguments") or ""
            )
            if self.plan.single and piece.index > 0:
                continue
            self.calls = max(self.calls, piece.index + 1)
            self._args_sent[piece.index] = self._args_sent.get(piece.index, "") + piece.arguments
            pieces.append(piece)
        content = delta.content or ""
        self._content_sent += content
        return content, pieces

    def finish(self) -> tuple[str, list[ToolCallPiece]]:
        """What is left once the choice ended: held-back text, or calls only the complete
        output shows."""
        mode = self.plan.mode
        if mode == "required":
            return self._finish_required()
        if mode != "auto":
            return "", []
        final = self._parser.extract_tool_calls(self.text, self.plan.request)
        if not final.tools_called:
            rest = self.text[len(self._content_sent) :] if self.text.startswith(self._content_sent) else ""
            return rest, []
        pieces = []
        for index, call in enumerate(final.tool_calls[: 1 if self.plan.single else None]):
            sent = self._args_sent.get(index)
            if sent is None:
                pieces.append(
                    ToolCallPiece(index, call.id or self.plan.new_id(), call.function.name, call.function.arguments)
                )
            elif call.function.arguments.startswith(sent) and call.function.arguments != sent:
                pieces.append(ToolCallPiece(index, arguments=call.function.arguments[len(sent) :]))
        self.calls = max(self.calls, len(pieces))
        return "", pieces

    def _finish_required(self) -> tuple[str, list[ToolCallPiece]]:
        from partial_json_parser import Allow, loads

        try:
            # Cut short (max_tokens), the array still holds the calls that were complete.
            calls = loads(self.text, Allow.ARR)
        except Exception:  # noqa: BLE001 - not even the array's start: the output, as text
            return self.text, []
        if not isinstance(calls, list) or not calls:
            return self.text, []
        pieces = [
            ToolCallPiece(i, self.plan.new_id(), str(c.get("name", "")), json.dumps(c.get("parameters", {})))
            for i, c in enumerate(calls[: 1 if self.plan.single else None])
            if isinstance(c, dict)
        ]
        self.calls = len(pieces)
        return "", pieces


class ToolCalling:
    """Builds a request's ToolPlan with vLLM's protocol types, schemas and parsers (imported on
    first use: the benchmark-only instant backend runs without them otherwise)."""

    def __init__(self, parser: str, tokenizer: Any) -> None:
        self._parser_name = parser
        self._tokenizer = tokenizer

    def plan(self, tools: list[dict[str, Any]] | None, choice: str, name: str, single: bool) -> ToolPlan | None:
        if not tools:
            if choice in ("required", "function"):
                raise _invalid(f"tool_choice '{choice}' needs tools", "tool_choice")
            return None
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.renderers.chat_utils import make_tool_call_id
        from vllm.tool_parsers.utils import get_json_schema_from_tools

        mode = choice or "auto"
        if mode not in ("none", "auto", "required", "function"):
            raise _invalid(f"unknown tool_choice {choice!r}", "tool_choice")
        vllm_choice: Any = {"type": "function", "function": {"name": name}} if mode == "function" else mode
        try:
            request = ChatCompletionRequest(
                model="-",
                messages=[{"role": "user", "content": ""}],
                tools=tools,
                tool_choice=vllm_choice,
                parallel_tool_calls=not single,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise _invalid(f"invalid tools: {first.get('msg', 'invalid')}") from None
        plan = ToolPlan(
            mode, name=name, single=single, request=request, tokenizer=self._tokenizer, new_id=make_tool_call_id
        )
        if mode in ("function", "required"):
            try:
                forced: Any = request.tool_choice
                schema = get_json_schema_from_tools(
                    tool_choice=forced, tools=list(request.tools or []), parallel_tool_calls=not single
                )
            except ValueError as exc:  # a named function that is not among the tools
                raise _invalid(str(exc), "tool_choice") from None
            plan.schema = schema if isinstance(schema, dict) else json.loads(str(schema))
        elif mode == "auto":
            from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

            plan.parser_class = ToolParserManager.get_tool_parser(self._parser_name)
        return plan


async def parse_tool_calls(plan: ToolPlan, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The engine's events with each choice's text turned into content and tool-call pieces;
    a choice that called a tool (auto, required) finishes with ``tool_calls``."""
    outputs: dict[int, ChoiceToolOutput] = {}
    async for event in events:
        if isinstance(event, Delta):
            output = outputs.setdefault(event.index, plan.output())
            content, pieces = output.feed(event.text, event.token_ids)
            if content or pieces or event.logprobs:
                yield replace(event, text=content, tool_calls=pieces)
        elif isinstance(event, ChoiceEnd):
            output = outputs.setdefault(event.index, plan.output())
            content, pieces = output.finish()
            if content or pieces:
                yield Delta(event.index, content, 0, tool_calls=pieces)
            reason = event.finish_reason
            if output.called and plan.mode in ("auto", "required") and reason == "stop":
                reason = "tool_calls"
            yield ChoiceEnd(event.index, reason)
        else:
            yield event


def plan_tools(tools: ToolCalling, job: GenerationJob) -> ToolPlan | None:
    """The job's ToolPlan (None without tools); a forced choice constrains the output."""
    plan = tools.plan(job.tools, job.tool_choice, job.tool_name, job.single_tool_call)
    if plan is not None and plan.schema is not None:
        if job.sampling.json_schema is not None or job.sampling.json_object:
            raise InvalidArgumentError("response_format cannot be combined with a forced tool_choice", "tool_choice")
        job.sampling.json_schema = plan.schema
        job.sampling.compact_json = True
    return plan
