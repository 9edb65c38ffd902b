"""Acceptance: the content choice on a labelled set of messages that are not among the agents'
examples (tests/unit/routing_labelled.yaml), with the real all-MiniLM-L6-v2 and the shipped
config, through the router's real gRPC Route. Prints the accuracy and the time routing adds
(`pytest -s`, or the summary line of a failure)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import yaml

from llmmesh.common.v1 import chat_pb2
from llmmesh.router.v1 import router_pb2
from services.inference.embedder import Embedder
from services.router.policy import routing_text
from tests.unit.router_mesh import router_mesh

LABELLED = Path(__file__).with_name("routing_labelled.yaml")
REQUIRED_ACCURACY = 0.90


def labelled() -> dict[str, list[tuple[str, str]]]:
    """Set name -> (message, agent) pairs."""
    raw = yaml.safe_load(LABELLED.read_text())
    return {
        name: [(text, agent) for agent, texts in by_agent.items() for text in texts] for name, by_agent in raw.items()
    }


def test_the_labelled_set_is_large_and_apart_from_the_examples() -> None:
    from services.router.config import load_config
    from tests.unit.router_mesh import SHIPPED_CONFIG

    examples = {e for a in load_config(SHIPPED_CONFIG).agents for e in a.examples}
    messages = [text for pairs in labelled().values() for text, _ in pairs]

    assert len(messages) >= 60
    assert len(set(messages)) == len(messages)
    assert not examples & set(messages)


async def test_routing_accuracy_and_added_latency(embedder: Embedder) -> None:
    sets = labelled()
    async with router_mesh(embedder) as mesh:
        assert mesh.live.policy.semantic_ready
        # Warm-up: the first calls pay for connections and the model's first pass.
        for _ in range(3):
            await mesh.router.Route(router_pb2.RouteRequest(model="llmmesh", messages=[_user("hello")]))
        results: dict[str, list[bool]] = {}
        misses: list[str] = []
        route_ms: list[float] = []
        for name, pairs in sets.items():
            for text, expected in pairs:
                started = time.perf_counter()
                reply = await mesh.router.Route(router_pb2.RouteRequest(model="llmmesh", messages=[_user(text)]))
                route_ms.append((time.perf_counter() - started) * 1000)
                results.setdefault(name, []).append(reply.agent.name == expected)
                if reply.agent.name != expected:
                    misses.append(f"  {expected} <- {reply.agent.name} ({reply.reason}): {text}")
        # The embedding alone, as the inference service computes it, for the same messages.
        embed_ms = []
        for pairs in sets.values():
            for text, _ in pairs:
                started = time.perf_counter()
                await embedder.aembed([routing_text([text], 2)])
                embed_ms.append((time.perf_counter() - started) * 1000)
        # The decision alone (no embedding, no RPC): what routing adds beyond the one embedding.
        policy = mesh.live.policy
        vectors, _ = embedder.embed([text for pairs in sets.values() for text, _ in pairs])
        decide_ms = []
        for (text, _), vector in zip([p for pairs in sets.values() for p in pairs], vectors, strict=True):
            query = np.asarray(vector, dtype=np.float32)
            started = time.perf_counter()
            target = policy.target("llmmesh", mesh.live.served)
            policy.plan(target, policy.choose(text, query), mesh.live.served)
            decide_ms.append((time.perf_counter() - started) * 1000)

    total = [ok for oks in results.values() for ok in oks]
    accuracy = sum(total) / len(total)
    lines = [f"routing accuracy {accuracy:.1%} on {len(total)} labelled messages"]
    lines += [f"  set {name}: {sum(oks) / len(oks):.1%} of {len(oks)}" for name, oks in results.items()]
    lines.append(
        f"Route RPC (embedding included) p50 {np.percentile(route_ms, 50):.1f} ms,"
        f" p95 {np.percentile(route_ms, 95):.1f} ms;"
        f" the embedding alone p95 {np.percentile(embed_ms, 95):.1f} ms;"
        f" the decision alone p95 {np.percentile(decide_ms, 95):.3f} ms"
    )
    lines += misses
    print("\n" + "\n".join(lines))
    assert accuracy >= REQUIRED_ACCURACY, "\n".join(lines)
    assert np.percentile(decide_ms, 95) < 2.0, "\n".join(lines)


def _user(text: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role="user", content=text)
