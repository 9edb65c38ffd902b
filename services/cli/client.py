"""A small synchronous client of llmmesh's public HTTP API (OpenAI's chat completions plus
sessions and memories), shared by the ``llmmesh`` subcommands.

Every failure, whether the API answered with OpenAI's error shape or never answered, comes out
as one ``ApiError`` whose text is a single readable line.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

USER_AGENT = "llmmesh-cli/0.1"
_MAX_MESSAGE = 500  # characters of a non-JSON error body worth showing


class ApiError(Exception):
    """A failed API call: OpenAI's error fields when the API sent them."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_
        self.code = code
        self.param = param

    def __str__(self) -> str:
        details = [f"HTTP {self.status}"] if self.status is not None else []
        details += [part for part in (self.type, self.code) if part]
        if self.param:
            details.append(f"param {self.param}")
        text = " ".join(self.message.split()) or "request failed"
        return f"{text} ({', '.join(details)})" if details else text

    @classmethod
    def from_body(cls, status: int | None, body: object) -> ApiError:
        """From a decoded error body, OpenAI's ``{"error": {...}}`` or anything else."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(
                str(error.get("message") or "request failed"),
                status=status,
                type_=_text_or_none(error.get("type")),
                code=_text_or_none(error.get("code")),
                param=_text_or_none(error.get("param")),
            )
        if isinstance(error, str):  # some proxies answer {"error": "..."}
            return cls(error, status=status)
        return cls(json.dumps(body)[:_MAX_MESSAGE], status=status)

    @classmethod
    def from_response(cls, status: int, content: bytes) -> ApiError:
        try:
            return cls.from_body(status, json.loads(content))
        except ValueError:  # not JSON: a proxy's plain-text page, say
            text = content.decode("utf-8", errors="replace").strip()
            return cls(text[:_MAX_MESSAGE] or httpx.codes.get_reason_phrase(status), status=status)


def _text_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class ChatChunk:
    """What one streamed chat.completion.chunk says about the first choice."""

    text: str = ""
    finish_reason: str | None = None
    session_id: str | None = None


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """The JSON event of one ``data:`` line; None for comments, other fields and ``[DONE]``.

    Raises ApiError for an error event: once a stream has started, OpenAI (and llmmesh) send
    errors as a ``data:`` event of their own."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if not data or data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except ValueError:
        raise ApiError(f"unreadable event in the reply stream: {data[:_MAX_MESSAGE]}") from None
    if not isinstance(event, dict):
        raise ApiError(f"unexpected event in the reply stream: {data[:_MAX_MESSAGE]}")
    if "error" in event:
        raise ApiError.from_body(None, event)
    return event


def chunk_of(event: dict[str, Any]) -> ChatChunk:
    text, finish_reason = "", None
    for choice in event.get("choices") or ():
        if choice.get("index", 0) == 0:
            text = (choice.get("delta") or {}).get("content") or ""
            finish_reason = choice.get("finish_reason")
    return ChatChunk(text=text, finish_reason=finish_reason, session_id=event.get("session_id"))


def _segment(value: str) -> str:
    return quote(value, safe="")


class MeshClient:
    """The public HTTP API at ``base_url`` (ending in ``/v1``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _transport_error(self, exc: httpx.HTTPError) -> ApiError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ApiError(f"cannot reach {self.base_url}: {str(exc) or type(exc).__name__}")
        if isinstance(exc, httpx.TimeoutException):
            return ApiError(f"no answer from {self.base_url} within {self.timeout_s:g} s")
        if isinstance(exc, httpx.RemoteProtocolError):
            return ApiError(f"the connection to {self.base_url} broke off: {exc}")
        return ApiError(f"{type(exc).__name__}: {exc}")

    def request(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One JSON call; ``path`` is relative to the base URL ("sessions", not "/v1/sessions")."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise ApiError.from_response(response.status_code, response.content)
        try:
            out = response.json()
        except ValueError:
            raise ApiError(f"{method} {path} answered something other than JSON", status=response.status_code) from None
        if not isinstance(out, dict):
            raise ApiError(f"{method} {path} answered an unexpected shape", status=response.status_code)
        return out

    # -- sessions
    def create_session(self, system_prompt: str | None = None, user: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if system_prompt:
            body["system_prompt"] = system_prompt
        if user:
            body["user"] = user
        return self.request("POST", "sessions", body=body)

    def list_sessions(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        return self.request("GET", "sessions", params={"limit": limit, "after": after})

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self.request("GET", f"sessions/{_segment(session_id)}")

    def update_session(self, session_id: str, system_prompt: str) -> dict[str, Any]:
        return self.request("PATCH", f"sessions/{_segment(session_id)}", body={"system_prompt": system_prompt})

    def delete_session(self, session_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"sessions/{_segment(session_id)}")

    # -- memories
    def list_memories(self, session_id: str | None = None, user: str | None = None, limit: int = 100) -> dict[str, Any]:
        return self.request("GET", "memories", params={"session_id": session_id, "user": user, "limit": limit})

    def search_memories(
        self, query: str, session_id: str | None = None, user: str | None = None, top_k: int = 5
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "top_k": top_k}
        if session_id:
            body["session_id"] = session_id
        if user:
            body["user"] = user
        return self.request("POST", "memories/search", body=body)

    # -- chat
    def stream_chat(self, body: dict[str, Any]) -> Generator[ChatChunk, None, None]:
        """Streams a chat completion (``stream`` is forced on). Closing the iterator early
        closes the connection, which stops the generation on the server."""
        try:
            with self._http.stream("POST", "chat/completions", json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    raise ApiError.from_response(response.status_code, response.read())
                header_session = response.headers.get("x-session-id")
                if header_session:
                    yield ChatChunk(session_id=header_session)
                for line in response.iter_lines():
                    if line.startswith("data:") and line[len("data:") :].strip() == "[DONE]":
                        return
                    event = parse_sse_line(line)
                    if event is not None:
                        yield chunk_of(event)
            raise ApiError("the reply stream ended early (no [DONE])")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
