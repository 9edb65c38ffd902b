"""Every benchmark `make bench` knows. A new one is a module with `run(ctx) -> Report` and a line here."""

from __future__ import annotations

from bench import engine_path, hops, memory, multiturn, paced, recall
from bench.harness import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    "engine-path": Benchmark(
        "engine-path", "llmmesh vs vLLM's own OpenAI server, same model and load", engine_path.run
    ),
    "hops": Benchmark("hops", "what Envoy, gateway, router, memory and the gRPC hops cost", hops.run),
    "memory": Benchmark("memory", "long-term memory: indexing, recall latency, embedding", memory.run),
    "recall": Benchmark(
        "recall", "long-term memory recall on long conversations: hit@5/@10 per kind of question", recall.run
    ),
    "paced": Benchmark("paced", "the mesh in front of a simulated GPU-speed engine, ramped", paced.run),
    "multiturn": Benchmark(
        "multiturn", "sessions over many turns: llmmesh holding the history vs the client resending it", multiturn.run
    ),
}
