"""CORS, for browser clients, when LLMMESH_GATEWAY_CORS_ORIGINS names their origins: Starlette's
CORSMiddleware, outermost, so every answer (a 401 or a 429 included) carries it."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from services.common.context import REQUEST_ID_HEADER

# What a browser client may read of an answer besides the CORS-safelisted headers.
EXPOSED_HEADERS = [
    REQUEST_ID_HEADER,
    "x-session-id",
    "x-llmmesh-agent",
    "x-llmmesh-backend",
    "x-llmmesh-recall",
    "retry-after",
    *(f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")),
]


def install(app: FastAPI, origins: list[str]) -> None:
    """Allows `origins` (nothing is installed without any). Any request header is allowed: the
    key's (Authorization, x-api-key, api-key) and whatever the SDKs add (their x-stainless-*
    headers, anthropic-version). No cookies are involved, so no credentials mode."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
