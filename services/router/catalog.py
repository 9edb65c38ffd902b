"""The models the inference service serves: its local engines and its other backends
(`<backend>/<model>`), discovered over gRPC, so a new model needs no router change."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from llmmesh.inference.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, stub: inference_pb2_grpc.InferenceServiceStub) -> None:
        self._stub = stub
        self._served: tuple[str, ...] = ()
        self._info: dict[str, inference_pb2.ModelInfo] = {}
        self._attempted = 0.0

    @property
    def served(self) -> tuple[str, ...]:
        """Model ids in the inference service's order (the first local one is `local`)."""
        return self._served

    async def refresh(self) -> bool:
        """Asks the inference service what it serves; keeps the last answer when it is away."""
        self._attempted = time.monotonic()
        try:
            reply = await self._stub.ListModels(inference_pb2.ListModelsRequest(), timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            log.debug("inference not reachable for discovery", extra={"code": exc.code().name})
            return False
        self._served = tuple(m.id for m in reply.models)
        self._info = {m.id: m for m in reply.models}
        return True

    def info(self, model: str) -> inference_pb2.ModelInfo:
        """What the inference service said of `model` (empty when it did not list it)."""
        return self._info.get(model) or inference_pb2.ModelInfo(id=model)

    async def refresh_if_older(self, seconds: float) -> None:
        """Refreshes unless the last attempt (successful or not) is more recent than `seconds`."""
        if time.monotonic() - self._attempted > seconds:
            await self.refresh()

    async def keep_fresh(self, interval_s: float) -> None:
        """Background loop: quick retries until the first answer, then every interval."""
        while True:
            ok = await self.refresh()
            await asyncio.sleep(interval_s if ok and self._served else 1.0)
