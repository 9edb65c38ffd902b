"""ChatTokenizer.encode_chat with a real (tiny, built-in-test) Hugging Face tokenizer.

The tokenizer is written to a temporary folder and loaded the way the service loads a model's
tokenizer (AutoTokenizer.from_pretrained), so the real transformers code path runs. Importing
transformers takes a few seconds, which is why this lives in its own file.

Regression guard: in commit 1837295 the generation-prompt arguments of apply_chat_template had
slipped into a comment, and transformers 5's BatchEncoding (a UserDict, not a dict) made
encode_chat return ['input_ids', 'attention_mask'] instead of token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.errors import InvalidArgumentError
from services.inference.tokenizer import ChatTokenizer

GENERATION_PROMPT = "ASSISTANT_TURN"
# A ChatML-like template whose generation prompt is one distinctive word.
TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if tools %}TOOLS {% endif %}"
    "{% if add_generation_prompt %}" + GENERATION_PROMPT + "{% endif %}"
)
VOCAB = ["[UNK]", "<s>", "</s>", "system", "user", "assistant", "hi", "there", "TOOLS", GENERATION_PROMPT]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding only a tokenizer, laid out as on the Hugging Face Hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    raw.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"})
    )
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer_dir: Path) -> ChatTokenizer:
    return ChatTokenizer(tokenizer_dir)


def ids(*words: str) -> list[int]:
    return [VOCAB.index(w) for w in words]


def test_encode_chat_returns_token_ids_ending_with_the_generation_prompt(chat_tokenizer: ChatTokenizer) -> None:
    encoded = chat_tokenizer.encode_chat([{"role": "user", "content": "hi there"}])

    assert encoded == ids("<s>", "user", "hi", "there", "</s>", GENERATION_PROMPT)


def test_encode_chat_renders_tools(chat_tokenizer: ChatTokenizer) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    encoded = chat_tokenizer.encode_chat([{"role": "system", "content": "hi"}], tools)

    assert encoded == ids("<s>", "system", "hi", "</s>", "TOOLS", GENERATION_PROMPT)


def test_encode_chat_template_failure_is_the_clients_fault(tokenizer_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")

    message = "could not be rendered with the model's template: roles must alternate"
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        ChatTokenizer(tmp_path).encode_chat([{"role": "user", "content": "hi"}])
    assert caught.value.param == "messages"
