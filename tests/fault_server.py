"""A test-only HTTP server that plays a failing (or a trivially working) OpenAI-style backend
on loopback, so fallback, cooldown and cancellation run over real sockets and the real SDKs.

Modes (`FaultServer.mode`, changeable while it runs):
- ``ok``: a streamed chat completion, "Hello world", usage included;
- ``503`` / ``429``: that status with an OpenAI-shaped error body;
- ``stall``: reads the request and answers nothing;
- ``hang``: sends the headers and one token, then nothing;
- ``broken``: sends the headers and one token, then drops the connection.
It counts the requests it received and the connections still open (a client that closes
its stream shows as a connection closed), and keeps the last request's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

MODES = ("ok", "503", "429", "stall", "hang", "broken")


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "fault-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices}
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"


class FaultServer:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests = 0
        self.open_connections = 0
        self.last_headers: dict[str, str] = {}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()  # set while no connection is open
        self._idle.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed_connections(self, timeout_s: float = 5.0) -> None:
        """Returns once no connection is open (the client closed its stream)."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        self.last_headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }
        length = int(self.last_headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self._idle.clear()
        try:
            await self._read_request(reader)
            self.requests += 1
            await self._answer(self.mode, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self._idle.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode in ("503", "429"):
            body = json.dumps({"error": {"message": f"fault server says {mode}", "type": "x", "code": None}}).encode()
            writer.write(
                f"HTTP/1.1 {mode} Fault\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return
        if mode == "stall":
            await reader.read()  # until the client gives up
            return
        writer.write(_STREAM_HEAD + _chunk({"role": "assistant", "content": "Hello"}))
        await writer.drain()
        if mode == "hang":
            await reader.read()
            return
        if mode == "broken":
            transport = writer.transport
            transport.abort()
            return
        writer.write(_chunk({"content": " world"}) + _chunk({}, "stop"))
        writer.write(_chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}))
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


@contextlib.asynccontextmanager
async def fault_server(mode: str = "ok") -> AsyncIterator[FaultServer]:
    server = FaultServer(mode)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
