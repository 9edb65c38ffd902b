"""Conversations over many turns: concurrent sessions with a growing history, two ways.

- llmmesh holds the history: the client sends only the new message with a `session_id`;
  the memory service keeps the turns and the inference service fits them to the context.
- vLLM's own OpenAI server is given the whole history by the client on every turn, as a
  client of a stateless API must.

Both run the same engine settings (the ones llmmesh chooses for this machine) with vLLM's
prefix caching on (its default), one after the other. Reported per side: TTFT p50/p99 over
all turns and over the last turn, prompt tokens per turn (from the usage the server counts),
and failures.

Then a long run past the context: long messages, so the history outgrows the context after a
few turns. The direct side fails from then on (counted, with the first failing turn); llmmesh
drops the oldest turns and keeps answering. Both sides serve the model with the same shorter
context (4,096 tokens, 2,048 in a quick run) than its own 8,192, so the run takes fewer and
cheaper prefills to get there; the normal run's prompts stay far below it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.harness import Context, Report, Row, Target, percentile
from bench.procs import MODEL, llmmesh_stack, vllm_server
from services.inference import sizing
from services.inference.model_store import prepare_default_model
from services.inference.settings import InferenceSettings

OUTPUT_TOKENS = 32
LONG_OUTPUT_TOKENS = 8
TOPICS = (
    "the water cycle", "how bridges carry load", "the history of tea", "why the sky is blue",
    "how vaccines train the immune system", "the rules of chess", "how a compiler works",
    "the migration of arctic terns", "why bread rises", "how glaciers shape valleys",
    "the life of honeybees", "how tides work", "the invention of the printing press",
    "how solar panels make electricity", "the origins of jazz", "how rainbows form",
)  # fmt: skip
# About 65 tokens: a paragraph repeated makes a long-run message; a seventh of the context each.
PARAGRAPH_TOKENS = 65
_PARAGRAPH = (
    "Here is a note from my field journal, day {turn}, entry {n}: the river was higher than "
    "last week, the willows along the bank had started to turn yellow, two herons stood in the "
    "shallows near the old mill, and the path past the orchard was muddy after the night's rain. "
)


@dataclass
class Turn:
    session: int
    turn: int
    ttft_ms: float = 0.0
    prompt_tokens: int = 0
    error: str = ""


@dataclass
class Side:
    name: str
    turns: list[Turn] = field(default_factory=list)

    @property
    def ok(self) -> list[Turn]:
        return [t for t in self.turns if not t.error]

    def row(self, last_turn: int) -> Row:
        ttft = [t.ttft_ms for t in self.ok]
        last = [t.ttft_ms for t in self.ok if t.turn == last_turn]
        prompts = [t.prompt_tokens for t in self.ok]
        last_prompts = [t.prompt_tokens for t in self.ok if t.turn == last_turn]
        return Row(
            self.name,
            {
                "ttft_p50_ms": percentile(ttft, 0.5),
                "ttft_p99_ms": percentile(ttft, 0.99),
                "last_turn_ttft_p50_ms": percentile(last, 0.5),
                "prompt_tokens_mean": sum(prompts) / max(len(prompts), 1),
                "last_turn_prompt_tokens": sum(last_prompts) / max(len(last_prompts), 1),
                "failed": float(len(self.turns) - len(self.ok)),
            },
            {"turns": len(self.turns)},
        )


def _question(session: int, turn: int) -> str:
    topic = TOPICS[(session + turn) % len(TOPICS)]
    return f"Question {turn}: in two sentences, what is one interesting thing about {topic}?"


def _long_message(session: int, turn: int, paragraphs: int) -> str:
    body = "".join(_PARAGRAPH.format(turn=turn, n=n) for n in range(paragraphs))
    return f"{body}\nSession {session}, turn {turn}: what did I see by the river?"


async def _ask(
    client: openai.AsyncOpenAI,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int,
    extra: dict[str, Any],
    turn: Turn,
) -> str:
    """One streamed turn: fills in TTFT and prompt tokens (or the error); returns the reply."""
    started = time.perf_counter()
    text: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not text:
                    turn.ttft_ms = (time.perf_counter() - started) * 1000
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                turn.prompt_tokens = chunk.usage.prompt_tokens
    except openai.APIError as exc:
        turn.error = getattr(exc, "code", None) or type(exc).__name__
    if not text and not turn.error:
        turn.error = "empty reply"
    return "".join(text)


async def _conversation(
    client: openai.AsyncOpenAI, session: int, turns: int, held: bool, long_paragraphs: int, side: Side
) -> None:
    """One session's turns in order. `held`: llmmesh keeps the history (only the new message
    is sent); otherwise the client resends the whole history."""
    history: list[ChatCompletionMessageParam] = []
    extra = {"session_id": f"bench-{uuid.uuid4().hex}"} if held else {}
    for number in range(1, turns + 1):
        content = _long_message(session, number, long_paragraphs) if long_paragraphs else _question(session, number)
        message: ChatCompletionMessageParam = {"role": "user", "content": content}
        turn = Turn(session, number)
        side.turns.append(turn)
        sent = [message] if held else [*history, message]
        max_tokens = LONG_OUTPUT_TOKENS if long_paragraphs else OUTPUT_TOKENS
        reply = await _ask(client, sent, max_tokens, extra, turn)
        history += [message, {"role": "assistant", "content": reply}]


async def _run_side(
    name: str, base_url: str, api_key: str, sessions: int, turns: int, held: bool, long_paragraphs: int = 0
) -> Side:
    side = Side(name)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600) as client:
        await asyncio.gather(*(_conversation(client, s, turns, held, long_paragraphs, side) for s in range(sessions)))
    return side


def _first_failure(side: Side) -> float:
    failed = [t.turn for t in side.turns if t.error]
    return float(min(failed)) if failed else float("nan")


def run(ctx: Context) -> Report:
    sessions, turns = (4, 3) if ctx.quick else (16, 12)
    context = 2048 if ctx.quick else 4096
    long_sessions, long_turns = (1, 8) if ctx.quick else (2, 12)
    paragraphs = context // 7 // PARAGRAPH_TOKENS
    folder = prepare_default_model(InferenceSettings().cache_dir)
    plan = sizing.plan_cpu_engine(sizing.Machine.detect())
    port = 8000 + ctx.port_offset
    results: dict[str, Side] = {}
    shorter = ["--max-model-len", str(context)]
    with vllm_server(folder, port, ctx.out_dir, plan.env(), "vllm-multiturn", shorter) as base:
        url = f"{base}/v1"
        results["direct"] = asyncio.run(_run_side("vllm, client sends history", url, "none", sessions, turns, False))
        results["direct-long"] = asyncio.run(
            _run_side("vllm, history past the context", url, "none", long_sessions, long_turns, False, paragraphs)
        )
    mesh_env = {"LLMMESH_INFERENCE_MAX_MODEL_LEN": str(context)}
    with llmmesh_stack(ctx.out_dir / "stack-multiturn", ctx.port_offset, **mesh_env) as stack:
        url, key = f"{stack.settings.public_url}/v1", stack.api_key
        results["mesh"] = asyncio.run(_run_side("llmmesh, session_id", url, key, sessions, turns, True))
        results["mesh-long"] = asyncio.run(
            _run_side("llmmesh, history past the context", url, key, long_sessions, long_turns, True, paragraphs)
        )
    rows = {key: side.row(long_turns if key.endswith("long") else turns) for key, side in results.items()}
    for key in ("direct-long", "mesh-long"):
        rows[key].metrics["first_failed_turn"] = _first_failure(results[key])
    by_turn = [
        Row(
            f"{side.name}, turn {number}",
            {
                "ttft_p50_ms": percentile([t.ttft_ms for t in side.ok if t.turn == number], 0.5),
                "prompt_tokens_mean": _mean([t.prompt_tokens for t in side.ok if t.turn == number]),
            },
        )
        for key in ("direct", "mesh")
        for side in (results[key],)
        for number in range(1, turns + 1)
    ]
    mesh, direct = rows["mesh"].metrics, rows["direct"].metrics
    return Report(
        benchmark="multiturn",
        description=(
            f"{sessions} concurrent sessions x {turns} turns ({OUTPUT_TOKENS} tokens per reply), then "
            f"{long_sessions} x {long_turns} turns of ~{paragraphs * PARAGRAPH_TOKENS} tokens past a {context}-token "
            f"context; engine settings on both sides: {plan.env()}, prefix caching on (vLLM's default)"
        ),
        rows=[*rows.values(), *by_turn],
        targets=[
            Target(
                "TTFT p50, llmmesh - direct (ms)",
                mesh["ttft_p50_ms"] - direct["ttft_p50_ms"],
                "informational",
                True,
            ),
            Target("turns failed, llmmesh (normal run)", mesh["failed"], "0", mesh["failed"] == 0),
            Target(
                "turns failed past the context, llmmesh",
                rows["mesh-long"].metrics["failed"],
                "0",
                rows["mesh-long"].metrics["failed"] == 0,
            ),
            Target(
                "turns failed past the context, direct",
                rows["direct-long"].metrics["failed"],
                "informational (the client must trim)",
                True,
            ),
        ],
        notes=[
            "prompt tokens are the server's own count (usage): llmmesh's include the history it adds",
            "per-turn rows: TTFT p50 and prompt tokens of each turn number across the sessions",
        ],
        plot_metrics=["ttft_p50_ms", "ttft_p99_ms", "prompt_tokens_mean", "failed"],
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
