"""/v1/completions (the prompt API) through the in-process mesh, with the official SDK: a raw
prompt reaches the model with no chat template; batches, n, echo, logprobs, stream, and what
is refused. The instant backend generates (each token is " tok")."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.unit.mesh import API_KEY, MODEL, Mesh


@pytest.fixture
def sdk(mesh: Mesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http.base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_a_raw_prompt_gets_a_text_completion(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3)

    assert reply.object == "text_completion"
    assert reply.choices[0].text == " tok tok tok"
    assert reply.choices[0].finish_reason == "length"
    tokenizer = mesh.backend._tokenizer
    assert tokenizer is not None
    # No chat template around it: the model got exactly the prompt's tokens.
    assert mesh.backend.last_prompt_ids == tokenizer.encode_text("Once upon a time")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(mesh.backend.last_prompt_ids), 3)


async def test_the_default_max_tokens_is_openais_16(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.completions.create(model=MODEL, prompt="Hi")

    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


async def test_a_batch_with_n_numbers_choices_by_prompt(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.completions.create(model=MODEL, prompt=["a", "b", "c"], n=2, max_tokens=1, echo=True)

    assert [c.index for c in reply.choices] == list(range(6))
    assert [c.text for c in reply.choices] == ["a tok", "a tok", "b tok", "b tok", "c tok", "c tok"]


async def test_token_id_prompts_go_in_as_they_are(mesh: Mesh, sdk: openai.AsyncOpenAI) -> None:
    await sdk.completions.create(model=MODEL, prompt=[[1, 2, 3]], max_tokens=1)

    assert mesh.backend.last_prompt_ids == [1, 2, 3]


async def test_logprobs_in_the_completions_shape(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=2)

    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == [" tok", " tok"]
    assert logprobs.text_offset == [0, 4]
    assert logprobs.token_logprobs is not None
    assert len(logprobs.token_logprobs) == 2
    assert logprobs.top_logprobs is not None
    assert all(len(t) == 1 for t in logprobs.top_logprobs)


async def test_streaming_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.completions.create(
        model=MODEL, prompt=["p", "q"], max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage: Any = None
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        usage = chunk.usage or usage

    assert texts == {0: " tok tok", 1: " tok tok"}
    assert finish == {0: "length", 1: "length"}
    assert usage is not None
    assert usage.completion_tokens == 4


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": [[-1]]}, "prompt"),
    ],
)
async def test_what_it_cannot_do_is_a_400_naming_the_parameter(
    sdk: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.completions.create(model=MODEL, max_tokens=1, **extra)

    assert caught.value.body["param"] == param  # type: ignore[index]


async def test_an_unknown_model_is_a_404(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.completions.create(model="no-such-model", prompt="x", max_tokens=1)

    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
