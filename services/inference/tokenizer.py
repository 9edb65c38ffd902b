"""The model's own tokenizer and chat template (Hugging Face), shared by every engine of a
model and by the instant backend's test runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgumentError
from services.inference.context import FittedPrompt
from services.inference.domain import GenerationJob
from services.inference.tools import render_hermes, template_renders_tools


class ChatTokenizer:
    """The model's own tokenizer and chat template, shared by every engine of the model."""

    def __init__(self, model_path: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_path)
        # A template that ignores tools gets them written into the messages (tools.py).
        self.renders_tools = template_renders_tools(self._tokenizer.chat_template)

    @property
    def hf(self) -> Any:
        """The Hugging Face tokenizer itself (tool parsers take it)."""
        return self._tokenizer

    def encode_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        if not self.renders_tools:
            messages, tools = render_hermes(messages, tools), None
        tool_schemas: Any = tools  # JSON tool schemas; transformers also accepts Python callables here
        try:
            rendered: Any = self._tokenizer.apply_chat_template(
                messages, tools=tool_schemas, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # a template that rejects the chat is the client's error
            raise InvalidArgumentError(
                f"the chat could not be rendered with the model's template: {exc}", "messages"
            ) from exc
        if isinstance(rendered, Mapping):  # a BatchEncoding, whatever return_dict said
            rendered = rendered["input_ids"]
        return [int(i) for i in rendered]

    def count_text(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_text(self, text: str) -> list[int]:
        """A raw prompt (the completions API), with the model's special tokens as vLLM adds them."""
        return [int(i) for i in self._tokenizer.encode(text)]

    def raw_prompt(self, job: GenerationJob) -> FittedPrompt:
        ids = list(job.prompt_ids) if job.prompt_ids else self.encode_text(job.prompt)
        return FittedPrompt(ids, [], 0, 0)
