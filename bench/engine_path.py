"""Engine path: the same model and load, through vLLM's own OpenAI server and through
llmmesh (Envoy -> gateway -> memory + router -> inference), measured by vLLM's own serving
benchmark (`vllm.benchmarks.serve`) in one session."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import Any

from bench.harness import Context, Report, Row, Target
from bench.procs import MODEL, llmmesh_stack, vllm_server
from services.inference.model_store import prepare_default_model
from services.inference.settings import InferenceSettings

CONCURRENCY = 16
INPUT_LEN = 128
OUTPUT_LEN = 64


def _register_session_backend() -> str:
    """vLLM's chat client plus a fresh `session_id` per request: every request then really
    reads and writes the memory service, without one growing history skewing prompt sizes."""
    from vllm.benchmarks.lib import endpoint_request_func as funcs

    chat = funcs.async_request_openai_chat_completions

    async def with_session(request_func_input: Any, session: Any, pbar: Any = None) -> Any:
        extra = {**(request_func_input.extra_body or {}), "session_id": f"bench-{uuid.uuid4().hex}"}
        return await chat(replace(request_func_input, extra_body=extra), session, pbar)

    funcs.ASYNC_REQUEST_FUNCS["llmmesh-chat"] = with_session
    return "llmmesh-chat"


def _serve_benchmark(base_url: str, backend: str, model_path: str, prompts: int) -> dict[str, Any]:
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]
    serve.add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", backend, "--base-url", base_url, "--endpoint", "/v1/chat/completions",
            "--model", MODEL, "--tokenizer", model_path,
            "--dataset-name", "random", "--random-input-len", str(INPUT_LEN),
            "--random-output-len", str(OUTPUT_LEN), "--num-prompts", str(prompts),
            "--max-concurrency", str(CONCURRENCY), "--ignore-eos", "--seed", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        ]
    )  # fmt: skip
    result: dict[str, Any] = serve.main(args)
    return result


def _row(case: str, result: dict[str, Any]) -> Row:
    return Row(
        case,
        {
            "output_tok_s": float(result["output_throughput"]),
            "req_s": float(result["request_throughput"]),
            "ttft_p50_ms": float(result["median_ttft_ms"]),
            "ttft_p99_ms": float(result["p99_ttft_ms"]),
            "tpot_p50_ms": float(result["median_tpot_ms"]),
            "tpot_p99_ms": float(result["p99_tpot_ms"]),
            "failed": float(result.get("failed", 0)),
        },
        {"completed": result.get("completed")},
    )


def run(ctx: Context) -> Report:
    prompts = 32 if ctx.quick else 64
    folder = prepare_default_model(InferenceSettings().cache_dir)
    model_path = str(folder)
    backend = _register_session_backend()
    port = 8000 + ctx.port_offset
    with vllm_server(folder, port, ctx.out_dir) as direct_base:
        direct = _row("vllm-openai-server", _serve_benchmark(direct_base, "openai-chat", model_path, prompts))
    with llmmesh_stack(ctx.out_dir / "stack-engine", ctx.port_offset) as stack:
        # vLLM's benchmark client sends OPENAI_API_KEY as its Bearer key.
        saved = os.environ.get("OPENAI_API_KEY")
        os.environ["OPENAI_API_KEY"] = stack.api_key
        try:
            result = _serve_benchmark(stack.settings.public_url, backend, model_path, prompts)
        finally:
            if saved is None:
                os.environ.pop("OPENAI_API_KEY", None)
            else:
                os.environ["OPENAI_API_KEY"] = saved
        mesh = _row("llmmesh-via-envoy", result)
    ratio = mesh.metrics["output_tok_s"] / direct.metrics["output_tok_s"]
    ttft_delta = mesh.metrics["ttft_p50_ms"] - direct.metrics["ttft_p50_ms"]
    params = {"concurrency": CONCURRENCY, "input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "prompts": prompts}
    for row in (direct, mesh):
        row.params.update(params)
    return Report(
        benchmark="engine-path",
        description=f"{prompts} prompts, {INPUT_LEN} in / {OUTPUT_LEN} out tokens, {CONCURRENCY} concurrent",
        rows=[direct, mesh, Row("ratio mesh/direct", {"output_tok_s": ratio, "ttft_p50_ms": ttft_delta})],
        targets=[
            Target("output throughput, llmmesh / direct", ratio, ">= 0.95", ratio >= 0.95),
            Target("TTFT p50, llmmesh - direct (ms)", ttft_delta, "<= +50 ms", ttft_delta <= 50),
        ],
        notes=["the ratio row holds output_tok_s as a ratio and ttft_p50_ms as a difference (ms)"],
        plot_metrics=["output_tok_s", "ttft_p50_ms", "tpot_p50_ms"],
    )
