"""The OpenAPI document as the gateway really answers: every error in OpenAI's shape with the
status it is given (400 for a bad request, never FastAPI's 422), and the API key's headers
(Bearer, x-api-key, api-key)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from services.gateway.auth import API_KEY_HEADERS


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error object."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error object: the Messages API's routes answer errors in it."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_WHY = {
    "400": "The request is invalid; `param` names what is wrong.",
    "401": "No API key, or not a valid one.",
    "403": "The API key may not use this model.",
    "404": "No such model, session or memory (for this tenant).",
    "409": "A session with this id already exists.",
    "413": "The request body is larger than the limit.",
    "429": "A limit of the API key was reached; `Retry-After` says when to retry.",
    "500": "A bug; the message carries no internals.",
    "503": "A dependency is down; `Retry-After` says when to retry.",
}
_GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/messages")
_SSE = {
    "schema": {
        "type": "string",
        "description": "With `stream: true`: `data: <chunk JSON>` events, an error event in OpenAI's shape "
        "if the generation fails after the first byte, then `data: [DONE]`.",
    }
}


_ANTHROPIC_SSE = {
    "schema": {
        "type": "string",
        "description": "With `stream: true`: `event: <type>` / `data: <event JSON>` frames in Anthropic's order "
        "(message_start, content blocks, message_delta, message_stop), or an `error` event if the generation "
        "fails after the first byte.",
    }
}


def _statuses(path: str, method: str) -> list[str]:
    statuses = ["400", "401", "500", "503"]
    if method in ("post", "patch"):
        statuses.append("413")
    if path in _GENERATION:
        statuses += ["403", "404", "429"]
    elif "{" in path or path in ("/v1/embeddings", "/v1/memories/search"):
        statuses.append("404")
    if path == "/v1/sessions" and method == "post":
        statuses.append("409")
    return sorted(statuses)


def install(app: FastAPI) -> None:
    """Replaces the app's OpenAPI generator with one that declares the real error responses."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schemas["ErrorResponse"].pop("$defs", {}))
            anthropic = AnthropicErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(anthropic.pop("$defs", {}))
            schemas["AnthropicErrorResponse"] = anthropic
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            # The key in any of the headers auth.py reads: each scheme is an alternative.
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                **{name: {"type": "apiKey", "in": "header", "name": name} for name in API_KEY_HEADERS},
            }
            doc["security"] = [{"bearer": []}, *({name: []} for name in API_KEY_HEADERS)]
            for path, operations in doc["paths"].items():
                for method, operation in operations.items():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    shape = "ErrorResponse"
                    if path.startswith("/v1/messages"):  # Anthropic's API: its error shape, its key header
                        shape = "AnthropicErrorResponse"
                        operation["security"] = [{"x-api-key": []}, {"bearer": []}]
                    error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}
                    for status in _statuses(path, method):
                        responses[status] = {"description": _WHY[status], "content": error}
                    if path in _GENERATION:
                        sse = _ANTHROPIC_SSE if path.startswith("/v1/messages") else _SSE
                        responses["200"].setdefault("content", {})["text/event-stream"] = sse
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
