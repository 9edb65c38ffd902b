"""Cost of the hops: the mesh with a benchmark-only instant backend in the inference service
(no model: tokens cost nothing), so what is measured is Envoy, the gateway, router, memory,
the gRPC hops and the token relay. Load comes from wrk (C, one thread), each request with a
fresh session_id so memory is read and written every time."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp

from bench.harness import Context, Report, Row, Target
from bench.procs import MODEL, CpuMeter, llmmesh_stack

CONCURRENCY = (1, 16, 64)
TOKENS = 16
LONG_STREAM_TOKENS = 20_000

_LUA = """
local counter = 0
local prefix = '{"model": "%(model)s", "max_tokens": %(tokens)d, "stream": %(stream)s, "session_id": "wrk-%(run)s-'
local suffix = '", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. counter .. suffix)
end
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) from `wrk --latency` output."""
    figures = {"req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    figures["requests"] = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    for pct, value in re.findall(r"^\s+(50|90|99)%\s+(\S+)$", output, flags=re.M):
        figures[f"p{pct}_ms"] = _ms(value)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["errors"] = float(errors.group(1)) if errors else 0.0
    return figures


def _script(path: Path, stream: bool, api_key: str) -> Path:
    """wrk's script for one run: every request a session of its own, named after the run (a
    session of an earlier run would come with its turns, and past the window with recall)."""
    fields = {"model": MODEL, "tokens": TOKENS, "stream": str(stream).lower(), "key": api_key}
    path.write_text(_LUA % {**fields, "run": uuid.uuid4().hex[:12]})
    return path


def _wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run; its raw output is kept next to the script (``wrk-<case>.txt``)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (make bench installs it with apt-get)")
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    script.with_suffix(".txt").write_text(out)
    return parse_wrk(out)


async def _relay(url: str, api_key: str, streams: int) -> float:
    """Tokens per second delivered end to end over `streams` concurrent long SSE streams."""
    body = {"model": MODEL, "max_tokens": LONG_STREAM_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "Tell me everything."}]}  # fmt: skip

    async def one(session: aiohttp.ClientSession) -> tuple[int, float, float]:
        # A chunk may carry several tokens when the relay coalesces: count the tokens.
        tokens, first, last = 0, 0.0, 0.0
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data: {") and b'"content":" tok' in line:
                    last = time.perf_counter()
                    first = first or last
                    tokens += line.count(b" tok")
        return tokens, first, last

    headers = {"Authorization": f"Bearer {api_key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), headers=headers) as session:
        results = await asyncio.gather(*(one(session) for _ in range(streams)))
    total = sum(r[0] for r in results)
    if total != LONG_STREAM_TOKENS * streams:
        raise RuntimeError(f"relayed {total} tokens, expected {LONG_STREAM_TOKENS * streams}")
    span = max(r[2] for r in results) - min(r[1] for r in results)
    return total / span


def run(ctx: Context) -> Report:
    seconds = 4 if ctx.quick else 10
    rows: list[Row] = []
    with llmmesh_stack(ctx.out_dir / "stack-hops", ctx.port_offset, LLMMESH_INFERENCE_BACKEND="instant") as stack:
        base, key = stack.settings.public_url, stack.api_key
        gateway = f"http://127.0.0.1:{8100 + ctx.port_offset}"
        meter = CpuMeter(stack.pid)
        for path_name, root in (("envoy", base), ("gateway-direct", gateway)):
            for stream in (False, True):
                for connections in CONCURRENCY:
                    if path_name == "gateway-direct" and connections != 16:
                        continue  # one point is enough to split Envoy's share off
                    case = f"{path_name} {'sse' if stream else 'json'} c={connections}"
                    script = _script(ctx.out_dir / f"wrk-{case.replace(' ', '-')}.lua", stream, key)
                    with meter.measure() as spent:
                        figures = _wrk(f"{root}/v1/chat/completions", script, connections, seconds)
                    rows.append(Row(case, figures, {"tokens": TOKENS, "seconds": seconds}))
                    if connections == 16:
                        per_request = {
                            f"cpu_us_per_req_{name}": s * 1e6 / max(figures["requests"], 1)
                            for name, s in spent.items()
                            if name != "load generator"  # wrk is its own process
                        }
                        per_request["cpu_us_per_req_all"] = sum(per_request.values())
                        rows.append(Row(f"{case}, CPU", per_request, {"requests": figures["requests"]}))
        relay_1 = asyncio.run(_relay(f"{base}/v1/chat/completions", key, 1))
        relay_4 = asyncio.run(_relay(f"{base}/v1/chat/completions", key, 4))
    rows.append(Row("relay 1 stream", {"tok_s": relay_1}, {"tokens": LONG_STREAM_TOKENS}))
    rows.append(Row("relay 4 streams", {"tok_s": relay_4}, {"tokens": LONG_STREAM_TOKENS}))
    by_case = {r.case: r.metrics for r in rows}
    json16, sse16 = by_case["envoy json c=16"], by_case["envoy sse c=16"]
    at1 = by_case["envoy json c=1"].get("p50_ms", math.nan)
    return Report(
        benchmark="hops",
        description=f"instant backend ({TOKENS} tokens/reply), memory + router on, wrk {seconds}s per point",
        rows=rows,
        targets=[
            *(
                Target(f"added latency {q} at 16 concurrent, {kind} (ms)", value, f"<= {goal} ms", value <= goal)
                for kind, figures in (("json", json16), ("sse", sse16))
                for q, goal in (("p50", 5), ("p99", 20))
                for value in (figures.get(f"{q}_ms", math.nan),)  # missing if wrk printed none
            ),
            Target("added latency p50 at 1 concurrent, json (ms)", at1, "<= 3 ms", at1 <= 3),
            Target("relayed tokens/s, one long stream", relay_1, ">= 20,000", relay_1 >= 20_000),
        ],
        notes=[
            "with an instant backend the whole latency is what the mesh adds",
            "wrk, Envoy, the gateway, router, memory, inference and Redis share the same cores",
        ],
        plot_metrics=["req_s", "p50_ms", "p99_ms", "tok_s"],
    )
