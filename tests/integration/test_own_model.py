"""A user's own Hugging Face model folder needs one option (LLMMESH_INFERENCE_MODEL_PATH):
the inference service serves it under the folder's name and the router discovers it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

from llmmesh.common.v1 import chat_pb2 as common_pb2
from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.inference.model_store import prepare_default_model
from services.inference.settings import InferenceSettings
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

OWN_MODEL = "my-own-model"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def own_model_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder = tmp_path_factory.mktemp("models") / OWN_MODEL
    # Any Hugging Face folder will do; the converted embedded weights stand in for the user's.
    folder.symlink_to(prepare_default_model(InferenceSettings().cache_dir), target_is_directory=True)
    inference, router = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = (tmp_path_factory.getbasetemp() / "own-model.log").open("wb")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.inference"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **env,
                "LLMMESH_INFERENCE_MODEL_PATH": str(folder),
                "LLMMESH_INFERENCE_GRPC_PORT": inference.rsplit(":", 1)[1],
            },
        ),
        subprocess.Popen(
            [sys.executable, "-m", "services.router"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **env,
                "LLMMESH_ROUTER_GRPC_PORT": router.rsplit(":", 1)[1],
                "LLMMESH_ROUTER_INFERENCE_TARGET": inference,
            },
        ),
    ]
    try:
        yield inference, router
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        log.close()


def _wait_for_model(stub: router_pb2_grpc.RouterServiceStub, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    ids: list[str] = []
    while time.monotonic() < deadline:
        try:
            ids = [m.id for m in stub.ListModels(router_pb2.ListModelsRequest(), timeout=2).models]
        except grpc.RpcError:
            ids = []
        if OWN_MODEL in ids:
            return ids
        time.sleep(1.0)
    raise AssertionError(f"the router never listed {OWN_MODEL}; it listed {ids}")


def test_own_model_folder_is_served_and_routed(own_model_services: tuple[str, str]) -> None:
    inference_target, router_target = own_model_services
    with grpc.insecure_channel(router_target) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        ids = _wait_for_model(router, timeout_s=300)
        assert "smollm2-135m-instruct" not in ids  # only what the inference service really serves
        route = router.Route(
            router_pb2.RouteRequest(
                model=OWN_MODEL,
                messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")],
            )
        )
        assert route.backend_model == OWN_MODEL
    with grpc.insecure_channel(inference_target) as channel:
        inference = inference_pb2_grpc.InferenceServiceStub(channel)
        start = inference_pb2.StartGeneration(
            request_id="own-model",
            model=OWN_MODEL,
            messages=[common_pb2.ChatMessage(role="user", content="What is the capital of France?")],
            sampling=common_pb2.SamplingParams(temperature=0, max_tokens=16),
        )
        replies = list(inference.Generate(iter([inference_pb2.GenerateRequest(start=start)]), timeout=120))
        text = "".join(r.delta.text for r in replies if r.WhichOneof("event") == "delta")
        assert "Paris" in text
