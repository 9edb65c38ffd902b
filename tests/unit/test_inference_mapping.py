"""Inference service: proto <-> domain mapping and engine helpers that need no vLLM engine."""

from __future__ import annotations

import json

import grpc
import pytest

from llmmesh.common.v1 import chat_pb2
from llmmesh.inference.v1 import inference_pb2
from services.common.errors import InvalidArgumentError
from services.common.messages import to_openai as to_message
from services.inference.domain import (
    ChoiceEnd,
    Delta,
    End,
    GenerationJob,
    Sampling,
    Started,
    context_length_error,
    parse_schema,
)
from services.inference.engine import detect_devices
from services.inference.servicer import to_job, to_response, to_sampling

# ---------------------------------------------------------------- to_sampling


def test_to_sampling_unset_optionals_are_none_and_n_defaults_to_one() -> None:
    assert to_sampling(chat_pb2.SamplingParams()) == Sampling(
        temperature=None,
        top_p=None,
        max_tokens=None,
        seed=None,
        stop=[],
        n=1,
        presence_penalty=None,
        frequency_penalty=None,
        json_schema=None,
        json_object=False,
    )


def test_to_sampling_copies_set_values() -> None:
    params = chat_pb2.SamplingParams(
        temperature=0.5,
        top_p=0.25,
        max_tokens=32,
        seed=99,
        stop=["\n\n", "END"],
        n=3,
        presence_penalty=-0.5,
        frequency_penalty=1.25,
        json_schema='{"type": "object", "properties": {"a": {"type": "integer"}}}',
    )

    assert to_sampling(params) == Sampling(
        temperature=0.5,
        top_p=0.25,
        max_tokens=32,
        seed=99,
        stop=["\n\n", "END"],
        n=3,
        presence_penalty=-0.5,
        frequency_penalty=1.25,
        json_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
        json_object=False,
    )


def test_to_sampling_keeps_explicit_zeros() -> None:
    sampling = to_sampling(chat_pb2.SamplingParams(temperature=0.0, seed=0, presence_penalty=0.0))

    assert (sampling.temperature, sampling.seed, sampling.presence_penalty) == (0.0, 0, 0.0)


def test_to_sampling_json_object() -> None:
    sampling = to_sampling(chat_pb2.SamplingParams(json_object=True))

    assert (sampling.json_object, sampling.json_schema) == (True, None)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_to_sampling_invalid_json_schema_is_the_clients_fault(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="json_schema") as caught:
        to_sampling(chat_pb2.SamplingParams(json_schema=text))
    assert caught.value.param == "response_format.json_schema.schema"


# ---------------------------------------------------------------- to_message / to_job


def test_to_message_plain() -> None:
    assert to_message(chat_pb2.ChatMessage(role="user", content="hi")) == {"role": "user", "content": "hi"}


def test_to_message_tool_calls_json_round_trips_to_a_list() -> None:
    tool_calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]

    out = to_message(chat_pb2.ChatMessage(role="assistant", content="", tool_calls_json=json.dumps(tool_calls)))

    assert out == {"role": "assistant", "content": "", "tool_calls": tool_calls}
    assert isinstance(out["tool_calls"], list)


def test_to_message_name_and_tool_call_id() -> None:
    out = to_message(chat_pb2.ChatMessage(role="tool", content="42", name="calc", tool_call_id="call_1"))

    assert out == {"role": "tool", "content": "42", "name": "calc", "tool_call_id": "call_1"}


def test_to_job_maps_everything() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    start = inference_pb2.StartGeneration(
        request_id="req-1",
        model="smollm2-135m-instruct",
        messages=[chat_pb2.ChatMessage(role="system", content="s"), chat_pb2.ChatMessage(role="user", content="u")],
        sampling=chat_pb2.SamplingParams(max_tokens=8),
        tools_json=json.dumps(tools),
    )

    assert to_job(start) == GenerationJob(
        request_id="req-1",
        model="smollm2-135m-instruct",
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        sampling=Sampling(max_tokens=8),
        tools=tools,
    )


def test_to_job_fills_the_agents_defaults_and_remembers_which() -> None:
    start = inference_pb2.StartGeneration(
        model="m",
        messages=[chat_pb2.ChatMessage(role="user", content="u")],
        sampling=chat_pb2.SamplingParams(max_tokens=8),
        sampling_defaults=chat_pb2.SamplingParams(temperature=0.2, max_tokens=100),
    )

    job = to_job(start)

    assert job.sampling.temperature == pytest.approx(0.2)
    assert job.sampling.max_tokens == 8
    assert job.defaulted == {"temperature"}
    assert not job.asked("temperature")
    assert job.asked("max_tokens")


def test_to_job_without_request_id_or_tools() -> None:
    job = to_job(inference_pb2.StartGeneration(model="m", messages=[chat_pb2.ChatMessage(role="user", content="u")]))

    assert job.request_id == "anonymous"
    assert job.tools is None


def test_to_job_with_empty_messages_is_the_clients_fault() -> None:
    with pytest.raises(InvalidArgumentError, match="messages") as caught:
        to_job(inference_pb2.StartGeneration(request_id="r", model="m"))
    assert caught.value.param == "messages"


def test_to_job_propagates_an_invalid_schema() -> None:
    start = inference_pb2.StartGeneration(
        model="m",
        messages=[chat_pb2.ChatMessage(role="user", content="u")],
        sampling=chat_pb2.SamplingParams(json_schema="nope"),
    )

    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        to_job(start)


# ---------------------------------------------------------------- to_response


def test_to_response_maps_each_event() -> None:
    assert to_response(Started(12, "engine-0")) == inference_pb2.GenerateResponse(
        started=inference_pb2.GenerationStarted(prompt_tokens=12, engine="engine-0")
    )
    assert to_response(Delta(1, "hel", 2)) == inference_pb2.GenerateResponse(
        delta=inference_pb2.TextDelta(index=1, text="hel", tokens=2)
    )
    assert to_response(ChoiceEnd(0, "length")) == inference_pb2.GenerateResponse(
        choice_end=inference_pb2.ChoiceEnd(index=0, finish_reason="length")
    )
    end = to_response(End(12, 30)).end
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.total_tokens) == (12, 30, 42)
    assert end.cancelled is False


# ---------------------------------------------------------------- engine helpers


def test_context_length_error_with_max_tokens() -> None:
    error = context_length_error(3000, 1200, 4096)

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "context_length_exceeded"
    assert error.message == (
        "This model's maximum context length is 4096 tokens. However, you requested 4200 tokens "
        "(3000 in the messages, 1200 in the completion). Please reduce the length of the messages or completion."
    )
    assert str(error) == error.message


def test_context_length_error_without_max_tokens() -> None:
    error = context_length_error(5000, None, 4096)

    assert error.reason == "context_length_exceeded"
    assert error.message == (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(5000 in the messages). Please reduce the length of the messages or completion."
    )


def test_detect_devices_cpu() -> None:
    assert detect_devices("cpu") == ["cpu"]


@pytest.mark.parametrize(
    ("setting", "devices"),
    [("0", ["cuda:0"]), ("0,1", ["cuda:0", "cuda:1"]), (" 2 , 3 ,", ["cuda:2", "cuda:3"])],
)
def test_detect_devices_gpu_ids(setting: str, devices: list[str]) -> None:
    assert detect_devices(setting) == devices


def test_detect_devices_auto_is_never_empty() -> None:
    devices = detect_devices("auto")

    assert devices
    assert devices == ["cpu"] or all(d.startswith("cuda:") for d in devices)


def test_parse_schema() -> None:
    assert parse_schema("") is None
    assert parse_schema('{"type": "object"}') == {"type": "object"}


@pytest.mark.parametrize(
    ("text", "message"), [("{", "not valid JSON"), ("[]", "must be a JSON object"), ("1", "must be a JSON object")]
)
def test_parse_schema_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_schema(text)
