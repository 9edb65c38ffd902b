"""GPU speed, simulated: the mesh through Envoy (memory and router on) in front of the instant
backend paced as a fast engine (TTFT, tokens/s per stream, stream slots), loaded with more and
more concurrent SSE streams. Each level reports what was offered and delivered, the latency the
mesh adds to the engine's own (TTFT, and every token's lateness against its paced schedule), and
the CPU each process spent per 1,000 tokens; the highest level the mesh sustains (>= 99% of the
offered tokens delivered, added inter-token latency p99 <= 50 ms) is the ceiling.

Each client starts its next stream when the last one ends; the clients' first streams are
spread evenly over one stream's length, as independent users arrive (started all at once, every
client would begin and end its streams in lockstep with the others, a burst no real load has).
What a level delivers is the sum of each client's own rate over its own running time.

The load generator (aiohttp, one process) shares the machine's cores with the whole mesh: its
row in the CPU table says how much of the machine it took.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

from bench.harness import Context, Report, Row, Target, percentile
from bench.procs import MODEL, CpuMeter, llmmesh_stack

RATE = 100.0  # tokens/s per stream, an H100-class engine's decode speed for one sequence
TTFT_MS = 20.0
TOKENS = 200  # per reply: 2 s of streaming at RATE
LEVELS = (4, 8, 16, 32, 64, 128, 256)
QUICK_LEVELS = (16, 64)
SUSTAIN_DELIVERED = 0.99
# One stream from the paced engine alone: its TTFT, then TOKENS at RATE.
STREAM_S = TTFT_MS / 1000 + TOKENS / RATE
# What it delivers per stream (a client starts its next stream when the last one ends), so 99%
# of it is reachable.
OFFERED_PER_STREAM = TOKENS / STREAM_S
SUSTAIN_ITL_P99_MS = 50.0


@dataclass
class _Level:
    streams: int
    seconds: float
    tokens: int = 0
    # Each client's tokens per second over its own running time.
    client_rates: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)

    @property
    def delivered(self) -> float:
        return sum(self.client_rates)


async def _stream(session: aiohttp.ClientSession, url: str, level: _Level) -> int:
    body = {
        "model": MODEL,
        "max_tokens": TOKENS,
        "stream": True,
        "session_id": f"paced-{uuid.uuid4().hex}",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    sent = time.perf_counter()
    first = 0.0
    received = 0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not (line.startswith(b"data: {") and b'"content":" tok' in line):
                continue
            now = time.perf_counter()
            if not first:
                first = now
                level.ttft_ms.append((now - sent) * 1000 - TTFT_MS)
            count = line.count(b" tok")
            # The last token of this chunk was due (received + count - 1) / RATE after the first.
            due = first + (received + count - 1) / RATE
            level.lateness_ms.append(max(0.0, (now - due) * 1000))
            received += count
    level.tokens += received
    return received


async def _run_level(url: str, api_key: str, streams: int, seconds: float) -> _Level:
    """`streams` clients, their first streams spread over one stream's length, each starting
    a new stream as soon as its last one ends, for `seconds` from its own start."""
    level = _Level(streams, seconds)
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = aiohttp.ClientTimeout(total=600)
    spacing = STREAM_S / streams
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def client(position: int) -> None:
            await asyncio.sleep(position * spacing)
            started = time.perf_counter()
            deadline = started + seconds
            tokens = 0
            while time.perf_counter() < deadline:
                tokens += await _stream(session, url, level)
            level.client_rates.append(tokens / (time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(streams)))
        level.seconds = time.perf_counter() - started
    return level


def run(ctx: Context) -> Report:
    levels = QUICK_LEVELS if ctx.quick else LEVELS
    seconds = 6.0 if ctx.quick else 12.0
    env = {
        "LLMMESH_INFERENCE_BACKEND": "instant",
        "LLMMESH_INFERENCE_INSTANT_TOKENS_PER_S": str(RATE),
        "LLMMESH_INFERENCE_INSTANT_TTFT_MS": str(TTFT_MS),
        "LLMMESH_INFERENCE_INSTANT_MAX_STREAMS": str(max(levels)),
    }
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    ceiling = 0.0
    with llmmesh_stack(ctx.out_dir / "stack-paced", ctx.port_offset, **env) as stack:
        url = f"{stack.settings.public_url}/v1/chat/completions"
        meter = CpuMeter(stack.pid)
        for streams in levels:
            with meter.measure() as spent:
                level = asyncio.run(_run_level(url, stack.api_key, streams, seconds))
            offered = streams * OFFERED_PER_STREAM
            delivered = level.delivered
            itl_p99 = percentile(level.lateness_ms, 0.99)
            sustained = delivered >= SUSTAIN_DELIVERED * offered and itl_p99 <= SUSTAIN_ITL_P99_MS
            if sustained:
                ceiling = max(ceiling, offered)
            rows.append(
                Row(
                    f"{streams} streams",
                    {
                        "offered_tok_s": offered,
                        "delivered_tok_s": delivered,
                        "delivered_share": delivered / offered,
                        "added_ttft_p50_ms": percentile(level.ttft_ms, 0.5),
                        "added_ttft_p99_ms": percentile(level.ttft_ms, 0.99),
                        "added_itl_p50_ms": percentile(level.lateness_ms, 0.5),
                        "added_itl_p99_ms": itl_p99,
                    },
                    {"streams": streams, "seconds": round(level.seconds, 1), "sustained": sustained},
                )
            )
            per_k = {f"cpu_ms_per_1k_{name}": s * 1e6 / max(level.tokens, 1) for name, s in spent.items()}
            cpu_rows.append(Row(f"{streams} streams, CPU", per_k, {"tokens": level.tokens}))
    busiest = max(cpu_rows[-1].metrics.items(), key=lambda item: item[1])
    return Report(
        benchmark="paced",
        description=(
            f"instant backend paced at {RATE:.0f} tok/s per stream, TTFT {TTFT_MS:.0f} ms, {TOKENS} tokens per reply, "
            f"memory + router on, through Envoy, {seconds:.0f} s per level"
        ),
        rows=[*rows, *cpu_rows],
        targets=[
            Target(
                "highest offered tok/s sustained (>= 99% delivered, added ITL p99 <= 50 ms)",
                ceiling,
                f"informational (256 streams offer {256 * OFFERED_PER_STREAM:,.0f})",
                True,
            ),
            Target(
                f"busiest process at {levels[-1]} streams, CPU ms per 1k tokens: {busiest[0]}",
                busiest[1],
                "informational",
                True,
            ),
        ],
        notes=[
            "added ITL: each token's lateness against its paced schedule from the stream's first token",
            "the load generator runs on the same cores as the mesh (its CPU row says how much)",
        ],
        plot_metrics=["delivered_tok_s", "added_itl_p99_ms", "added_ttft_p50_ms"],
    )
