"""Streams one chat turn over gRPC through Envoy, as an internal client would.

.venv/bin/python examples/grpc_chat.py "What is the capital of France?"
.venv/bin/python examples/grpc_chat.py --target 127.0.0.1:8080 --session demo "Hello"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from llmmesh.common.v1 import chat_pb2 as common_pb2


async def stream_chat(target: str, model: str, prompt: str, session_id: str, api_key: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.StreamChatRequest(
            model=model,
            messages=[common_pb2.ChatMessage(role="user", content=prompt)],
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=128),
            session_id=session_id,
        )
        parts: list[str] = []
        async for reply in stub.StreamChat(request, metadata=(("authorization", f"Bearer {api_key}"),)):
            event = reply.WhichOneof("event")
            if event == "started":
                print(f"[request {reply.started.request_id}, agent {reply.started.agent}]", file=sys.stderr)
            elif event == "delta":
                parts.append(reply.delta.text)
                print(reply.delta.text, end="", flush=True)
            elif event == "finished":
                usage = reply.finished.usage
                print(
                    f"\n[finish {list(reply.finished.finish_reasons)}, "
                    f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]",
                    file=sys.stderr,
                )
        return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:8080", help="Envoy's public address")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--session", default="", help="keep the conversation under this session id")
    parser.add_argument("--api-key", default=os.environ.get("LLMMESH_API_KEY", ""), help="default: $LLMMESH_API_KEY")
    args = parser.parse_args()
    try:
        asyncio.run(stream_chat(args.target, args.model, args.prompt, args.session, args.api_key))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
