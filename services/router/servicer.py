"""RouterService RPCs over the live routing policy; proto <-> domain mapping lives here."""

from __future__ import annotations

import grpc

from llmmesh.common.v1 import chat_pb2
from llmmesh.router.v1 import router_pb2, router_pb2_grpc
from services.common.errors import InvalidArgumentError, MeshError
from services.router.config import Agent, ConfigError
from services.router.live import LivePolicy
from services.router.policy import NothingServedError, UnknownAgentError, UnknownModelError

AGENT_HEADER = "x-llmmesh-agent"

_MEMORY = {
    "stateless": router_pb2.MEMORY_POLICY_STATELESS,
    "history": router_pb2.MEMORY_POLICY_HISTORY,
    "history+recall": router_pb2.MEMORY_POLICY_HISTORY_RECALL,
}


def agent_message(agent: Agent) -> router_pb2.Agent:
    retrieval = agent.retrieval
    return router_pb2.Agent(
        name=agent.name,
        description=agent.description,
        system_prompt=agent.system_prompt,
        sampling_defaults=chat_pb2.SamplingParams(**agent.sampling.values()),
        memory_policy=_MEMORY[agent.memory],
        retrieval=router_pb2.Retrieval(enabled=True, collection=retrieval.collection, max_tokens=retrieval.max_tokens)
        if retrieval.enabled
        else router_pb2.Retrieval(),
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, live: LivePolicy) -> None:
        self._live = live

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        user_turns = [m.content for m in request.messages if m.role == "user"]
        try:
            plan = await self._live.route(request.model, request.agent, user_turns)
        except UnknownModelError:
            raise MeshError(
                grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist.", "model_not_found"
            ) from None
        except UnknownAgentError:
            raise InvalidArgumentError(
                f"The agent `{request.agent}` does not exist.", AGENT_HEADER, "agent_not_found"
            ) from None
        except NothingServedError as exc:
            raise MeshError(
                grpc.StatusCode.UNAVAILABLE,
                f"No model of the agent `{exc.agent}` is being served (its candidates: {', '.join(exc.chain)}).",
                "model_unavailable",
            ) from None
        return router_pb2.RouteResponse(
            backend_model=plan.candidates[0],
            candidates=plan.candidates,
            agent=agent_message(plan.agent),
            reason=plan.reason,
        )

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        models = self._live.policy.public_models(self._live.served)
        info = {m.backend_model: self._live.catalog.info(m.backend_model) for m in models}
        return router_pb2.ListModelsResponse(
            models=[
                router_pb2.Model(
                    id=m.id,
                    owned_by=m.owned_by,
                    backend_model=m.backend_model,
                    agent=m.agent,
                    description=m.description,
                    context_length=info[m.backend_model].context_length,
                    created=info[m.backend_model].created,
                )
                for m in models
            ]
        )

    async def ReloadConfig(
        self, request: router_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReloadConfigResponse:
        try:
            policy = await self._live.reload()
        except ConfigError as exc:
            raise MeshError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{exc}\nThe running config stays.", "invalid_config"
            ) from None
        return router_pb2.ReloadConfigResponse(
            agents=[a.name for a in policy.config.agents],
            path=str(self._live.path),
            examples_embedded=policy.semantic_ready,
        )
