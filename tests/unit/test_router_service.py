"""RouterService over real gRPC: the routing plan, the public catalog, errors, the embedding
model going away, and config reloads (RPC and SIGHUP) that keep the old config when the new one
is invalid and drop no request."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_status import rpc_status

from llmmesh.common.v1 import chat_pb2
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.errors import from_rpc_error
from services.inference.embedder import Embedder
from services.router.embeddings import FALLBACKS
from tests.unit.helpers import free_port
from tests.unit.router_mesh import LOCAL_MODEL, REPO, SHIPPED_CONFIG, RouterMesh, router_mesh

EXTERNAL = "openai/gpt-4o-mini"
CODE = "Can you check this Python function for an off-by-one error?"
SPORT = "How do I train for a 10k race in eight weeks?"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    shutil.copy(SHIPPED_CONFIG, path)
    return path


@pytest.fixture
async def mesh(embedder: Embedder, config_path: Path) -> AsyncIterator[RouterMesh]:
    async with router_mesh(embedder, config_path, served=[LOCAL_MODEL, EXTERNAL]) as running:
        yield running


def user(text: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role="user", content=text)


async def route(mesh: RouterMesh, model: str = "llmmesh", text: str = "", agent: str = "") -> router_pb2.RouteResponse:
    reply: router_pb2.RouteResponse = await mesh.router.Route(
        router_pb2.RouteRequest(model=model, messages=[user(text)] if text else [], agent=agent)
    )
    return reply


def counted(cause: str) -> float:
    return float(FALLBACKS.labels(cause)._value.get())


# ---------------------------------------------------------------- the plan


async def test_llmmesh_picks_the_agent_from_the_content(mesh: RouterMesh) -> None:
    coder = await route(mesh, text=CODE)
    coach = await route(mesh, text=SPORT)

    assert coder.agent.name == "code-reviewer"
    assert coder.reason.startswith(("semantic:", "keyword:"))
    assert list(coder.candidates) == [LOCAL_MODEL, EXTERNAL]  # `local` resolved; an unserved model left out
    assert coder.backend_model == LOCAL_MODEL
    assert coder.agent.memory_policy == router_pb2.MEMORY_POLICY_HISTORY
    assert coder.agent.sampling_defaults.temperature == pytest.approx(0.2)
    assert "reviewing code" in coder.agent.system_prompt
    assert coach.agent.name == "sports-coach"
    assert coach.agent.retrieval == router_pb2.Retrieval(enabled=True, collection="sports-coach", max_tokens=400)


async def test_the_latest_user_turns_decide(mesh: RouterMesh) -> None:
    messages = [user(SPORT), chat_pb2.ChatMessage(role="assistant", content="Sure."), user(CODE)]

    reply = await mesh.router.Route(router_pb2.RouteRequest(model="llmmesh", messages=messages))

    assert reply.agent.name == "code-reviewer"


async def test_text_close_to_no_agent_goes_to_the_default_agent(mesh: RouterMesh) -> None:
    assert (await route(mesh, text="qwv zzkx plof")).agent.name == "general"
    assert (await route(mesh)).reason == "default"  # no user turn at all


async def test_a_pinned_agent_and_a_backend_model(mesh: RouterMesh) -> None:
    pinned = await route(mesh, "llmmesh-sports-coach", CODE)
    direct = await route(mesh, EXTERNAL, SPORT)

    assert (pinned.agent.name, pinned.reason, list(pinned.candidates)) == (
        "sports-coach",
        "pinned",
        [LOCAL_MODEL, EXTERNAL],
    )
    assert (direct.agent.name, direct.reason, list(direct.candidates)) == ("general", "model", [EXTERNAL])
    assert direct.backend_model == EXTERNAL


async def test_the_header_wins_over_content_and_pinning(mesh: RouterMesh) -> None:
    by_header = await route(mesh, text=SPORT, agent="code-reviewer")
    over_pinned = await route(mesh, "llmmesh-general", SPORT, agent="sports-coach")
    over_model = await route(mesh, LOCAL_MODEL, "hi", agent="sports-coach")
    embeds = mesh.inference.embed_calls

    assert (by_header.agent.name, by_header.reason) == ("code-reviewer", "header")
    assert (over_pinned.agent.name, over_pinned.reason) == ("sports-coach", "header")
    assert (over_model.agent.name, list(over_model.candidates)) == ("sports-coach", [LOCAL_MODEL])
    await route(mesh, text=SPORT, agent="general")
    assert mesh.inference.embed_calls == embeds  # no embedding when the header decides


async def test_only_llmmesh_costs_an_embedding(mesh: RouterMesh) -> None:
    before = mesh.inference.embed_calls
    await route(mesh, "llmmesh-code-reviewer", CODE)
    await route(mesh, LOCAL_MODEL, CODE)
    assert mesh.inference.embed_calls == before
    await route(mesh, text=CODE)
    assert mesh.inference.embed_calls == before + 1


async def test_unknown_model_and_agent_are_client_errors(mesh: RouterMesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as model:
        await route(mesh, "gpt-5", "hi")
    with pytest.raises(grpc.aio.AioRpcError) as agent:
        await route(mesh, text="hi", agent="poet")

    missing_model, missing_agent = from_rpc_error(model.value), from_rpc_error(agent.value)
    assert (missing_model.code, missing_model.reason) == (grpc.StatusCode.NOT_FOUND, "model_not_found")
    assert missing_model.message == "The model `gpt-5` does not exist."
    assert (missing_agent.code, missing_agent.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "agent_not_found")
    assert missing_agent.param == "x-llmmesh-agent"


async def test_an_agent_with_nothing_served_is_unavailable(embedder: Embedder, config_path: Path) -> None:
    async with router_mesh(embedder, config_path, served=["anthropic/claude-x"]) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await route(mesh, "llmmesh-general", "hi")
        listed = await mesh.router.ListModels(router_pb2.ListModelsRequest())

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "No model of the agent `general` is being served" in (caught.value.details() or "")
    assert [m.id for m in listed.models] == ["anthropic/claude-x"]


# ---------------------------------------------------------------- the catalog


async def test_list_models_is_exactly_the_public_names(mesh: RouterMesh) -> None:
    listed = (await mesh.router.ListModels(router_pb2.ListModelsRequest())).models

    assert [m.id for m in listed] == [
        "llmmesh",
        "llmmesh-general",
        "llmmesh-code-reviewer",
        "llmmesh-sports-coach",
        LOCAL_MODEL,
        EXTERNAL,
    ]
    by_id = {m.id: m for m in listed}
    assert (by_id["llmmesh-code-reviewer"].agent, by_id["llmmesh-code-reviewer"].backend_model) == (
        "code-reviewer",
        LOCAL_MODEL,
    )
    assert (by_id[EXTERNAL].owned_by, by_id[EXTERNAL].agent) == ("openai", "general")


# ---------------------------------------------------------------- the embedding model away


async def test_with_the_embedding_model_down_keywords_and_the_default_agent_route(
    embedder: Embedder, config_path: Path
) -> None:
    async with router_mesh(embedder, config_path, embed_pause_s=60) as mesh:
        mesh.inference.embed_down = True
        unavailable, paused, calls = counted("unavailable"), counted("paused"), mesh.inference.embed_calls

        started = time.perf_counter()
        keyword = await route(mesh, text="my python script is slow")
        plain = await route(mesh, text="How do I train for a 10 km race?")
        elapsed = time.perf_counter() - started

        assert (keyword.agent.name, keyword.reason) == ("code-reviewer", "keyword:python")
        assert (plain.agent.name, plain.reason) == ("general", "default")
        assert list(plain.candidates) == [LOCAL_MODEL]
        # One failed call, then no more asking during the pause (no timeout paid per request).
        assert mesh.inference.embed_calls == calls + 1
        assert (counted("unavailable"), counted("paused")) == (unavailable + 1, paused + 1)
        assert elapsed < 1.0


async def test_examples_not_yet_embedded_route_by_keywords_until_they_are(
    embedder: Embedder, config_path: Path
) -> None:
    async with router_mesh(embedder, config_path, embed_down=True) as mesh:  # e.g. inference still loading
        assert not mesh.live.policy.semantic_ready
        pending = counted("examples_pending")

        assert (await route(mesh, text="how is my squat form")).reason == "keyword:squat"
        assert counted("examples_pending") == pending + 1

        mesh.inference.embed_down = False
        assert await mesh.live.embed_examples()
        assert (await route(mesh, text=SPORT)).reason.startswith(("semantic:", "keyword:"))


async def test_a_new_embedding_model_gets_the_examples_embedded_again(mesh: RouterMesh) -> None:
    # As if the examples had been embedded by a model with other dimensions.
    stale = {text: [1.0, 0.0, 0.0] for text in mesh.live.policy.example_texts}
    mesh.live.policy = mesh.live.policy.with_vectors(stale)
    changed = counted("model_changed")

    assert (await route(mesh, text="my python script is slow")).reason == "keyword:python"
    assert counted("model_changed") == changed + 1
    assert not mesh.live.policy.semantic_ready
    assert await mesh.live.embed_examples()
    assert (await route(mesh, text=SPORT)).agent.name == "sports-coach"


# ---------------------------------------------------------------- reloads


def edit(path: Path, change: dict[str, object]) -> None:
    raw = yaml.safe_load(path.read_text())
    raw.update(change)
    path.write_text(yaml.safe_dump(raw))


def with_agent(path: Path, name: str) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["agents"].append({"name": name, "description": "Poems.", "examples": ["Write me a sonnet about love."]})
    path.write_text(yaml.safe_dump(raw))


async def test_reload_applies_a_valid_config(mesh: RouterMesh) -> None:
    with_agent(mesh.config_path, "poet")
    before = mesh.inference.embed_calls

    reply = await mesh.router.ReloadConfig(router_pb2.ReloadConfigRequest())

    assert list(reply.agents) == ["general", "code-reviewer", "sports-coach", "poet"]
    assert (reply.path, reply.examples_embedded) == (str(mesh.config_path), True)
    assert mesh.inference.embed_calls == before + 1  # only the new example was embedded
    assert (await route(mesh, text="Compose a short sonnet about the moon")).agent.name == "poet"
    assert "llmmesh-poet" in [m.id for m in (await mesh.router.ListModels(router_pb2.ListModelsRequest())).models]


async def test_an_invalid_config_is_refused_and_the_old_one_stays(mesh: RouterMesh) -> None:
    edit(mesh.config_path, {"default_agent": "nobody"})

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.router.ReloadConfig(router_pb2.ReloadConfigRequest())

    error = from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "invalid_config")
    assert "default_agent 'nobody' is not one of the agents" in error.message
    assert error.message.endswith("The running config stays.")
    assert rpc_status.from_call(caught.value) is not None
    assert (await route(mesh, text=CODE)).agent.name == "code-reviewer"
    assert mesh.live.policy.semantic_ready


async def test_reloads_drop_no_request(mesh: RouterMesh) -> None:
    good = mesh.config_path.read_text()
    with_agent(mesh.config_path, "poet")
    with_poet = mesh.config_path.read_text()
    edit(mesh.config_path, {"agents": []})
    broken = mesh.config_path.read_text()

    async def reload_forever() -> list[grpc.StatusCode]:
        outcomes = []
        for text in [with_poet, broken, good] * 4:
            mesh.config_path.write_text(text)
            try:
                await mesh.router.ReloadConfig(router_pb2.ReloadConfigRequest())
                outcomes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code())
        return outcomes

    reloading = asyncio.create_task(reload_forever())
    replies = await asyncio.gather(*(route(mesh, text=(CODE, SPORT)[i % 2]) for i in range(120)))

    assert await reloading == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OK] * 4
    assert {r.agent.name for r in replies} == {"code-reviewer", "sports-coach"}
    assert all(r.candidates for r in replies)


async def test_sighup_reloads_the_config_of_a_running_router(embedder: Embedder, config_path: Path) -> None:
    async with router_mesh(embedder, config_path) as mesh:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.router",
            cwd=REPO,
            env={
                **os.environ,
                "LLMMESH_ROUTER_CONFIG_PATH": str(config_path),
                "LLMMESH_ROUTER_GRPC_PORT": str(port),
                "LLMMESH_ROUTER_METRICS_PORT": "0",
                "LLMMESH_ROUTER_INFERENCE_TARGET": mesh.inference_target,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                router = router_pb2_grpc.RouterServiceStub(channel)
                await _until(lambda names: "llmmesh-sports-coach" in names, router)
                with_agent(config_path, "poet")
                proc.send_signal(signal.SIGHUP)
                await _until(lambda names: "llmmesh-poet" in names, router)
                edit(config_path, {"agents": "not a list"})  # invalid: refused, the poet stays
                proc.send_signal(signal.SIGHUP)
                assert proc.stdout is not None
                await asyncio.wait_for(_line_with(proc.stdout, "config reload refused; the running config stays"), 30)
                assert "llmmesh-poet" in await _names(router)
                assert proc.returncode is None
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), 15)


async def _line_with(stream: asyncio.StreamReader, text: str) -> None:
    while line := await stream.readline():
        if text in line.decode():
            return
    raise AssertionError(f"the router's log never said {text!r}")


async def _names(router: router_pb2_grpc.RouterServiceStub) -> list[str]:
    reply = await router.ListModels(router_pb2.ListModelsRequest(), timeout=2, wait_for_ready=True)
    return [m.id for m in reply.models]


async def _until(
    check: Callable[[list[str]], bool], router: router_pb2_grpc.RouterServiceStub, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    names: list[str] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):  # still starting
            names = await _names(router)
            if check(names):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached in {timeout_s} s; the router lists {names}")
