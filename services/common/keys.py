"""API keys, each bound to a tenant, in the Redis-protocol server every gateway replica shares.
The gateway checks them; the CLI (`llmmesh keys`) and the local stack write them: the stored
record is their contract, so the store lives here, below every service.

Only a key's SHA-256 is stored, never the key: ``llmmesh:apikey:<sha256>`` is a hash with the
key's id, tenant, name, creation time, a short prefix for people to recognise it by, and its own
limits (see ``KeyLimits``), and ``llmmesh:apikeys`` maps ids to digests for listing and revoking.
A revoked key is deleted, so the next request with it is refused at once. The record is read on
every request, so whatever it says applies from the next request on.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

from services.common.redis_client import redis_client

KEY_PREFIX = "llm-"
_RECORD = "llmmesh:apikey:"
_INDEX = "llmmesh:apikeys"


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits. None: not set, the gateway's default applies
    (LLMMESH_GATEWAY_DEFAULT_RPM, ...); 0: unlimited."""

    # Requests per minute.
    rpm: int | None = None
    # Prompt + completion tokens per minute.
    tpm: int | None = None
    # Chat completions in flight at once (streamed or not).
    max_streams: int | None = None
    # The models the key may ask for by name; empty: every model.
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_streams"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 (unlimited) or more")
        if any(not model for model in self.models):
            raise ValueError("an allowed model needs a name")

    def fields(self) -> dict[str, str | int]:
        """The hash fields that store these limits (an unset limit has none)."""
        stored: dict[str, str | int] = {
            name: value for name in ("rpm", "tpm", "max_streams") if (value := getattr(self, name)) is not None
        }
        if self.models:
            stored["models"] = json.dumps(list(self.models))
        return stored

    @classmethod
    def from_fields(cls, raw: Any) -> KeyLimits:
        def number(name: str) -> int | None:
            return int(raw[name]) if name in raw else None

        return cls(
            rpm=number("rpm"),
            tpm=number("tpm"),
            max_streams=number("max_streams"),
            models=tuple(json.loads(raw["models"])) if raw.get("models") else (),
        )


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    name: str = ""
    created_at: int = 0
    # The first characters of the key, for people to tell keys apart.
    hint: str = ""
    limits: KeyLimits = KeyLimits()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _hint(key: str) -> str:
    """At most a quarter of the key (a short seeded key would otherwise be stored whole)."""
    return key[: min(8, len(key) // 4)]


def parse_seed(entries: str, default_tenant: str) -> list[tuple[str, str]]:
    """``key`` or ``key:tenant`` entries, comma-separated (LLMMESH_API_KEYS)."""
    seeded = []
    for raw in entries.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, _, tenant = entry.partition(":")
        if not key.strip():
            raise ValueError("LLMMESH_API_KEYS holds an entry without a key")
        seeded.append((key.strip(), tenant.strip() or default_tenant))
    return seeded


def _info(raw: Any) -> KeyInfo:
    return KeyInfo(
        id=raw["id"],
        tenant=raw["tenant"],
        name=raw.get("name", ""),
        created_at=int(raw.get("created_at", 0)),
        hint=raw.get("hint", ""),
        limits=KeyLimits.from_fields(raw),
    )


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A client of the Redis-protocol server the gateway keeps its keys, limits and usage in."""
    return redis_client(url, timeout_s)


class KeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> KeyStore:
        return cls(connect(url, timeout_s))

    async def close(self) -> None:
        await self._redis.aclose()

    async def add(self, key: str, tenant: str, name: str = "", limits: KeyLimits = KeyLimits()) -> KeyInfo:
        """Stores `key` (hashed) for `tenant`; adding a key that exists keeps its record."""
        if not key or not tenant:
            raise ValueError("a key and a tenant are required")
        key_digest = digest(key)
        info = KeyInfo(
            id="key_" + key_digest[:16], tenant=tenant, name=name, created_at=int(time.time()), hint=_hint(key)
        )
        record: dict[str, str | int] = {
            "id": info.id,
            "tenant": info.tenant,
            "name": info.name,
            "created_at": info.created_at,
            "hint": info.hint,
            **limits.fields(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(_INDEX, info.id, key_digest)
            for field, value in record.items():
                pipe.hsetnx(_RECORD + key_digest, field, value)
            await pipe.execute()
        stored = await self.lookup(key)
        assert stored is not None
        return stored

    async def create(self, tenant: str, name: str = "", limits: KeyLimits = KeyLimits()) -> tuple[str, KeyInfo]:
        """A new random key for `tenant`: the key itself is returned once and never stored."""
        key = new_key()
        return key, await self.add(key, tenant, name, limits)

    async def lookup(self, key: str) -> KeyInfo | None:
        raw = await self._redis.hgetall(_RECORD + digest(key))
        return _info(raw) if raw else None

    async def list(self, tenant: str = "") -> list[KeyInfo]:
        digests: dict[str, str] = await self._redis.hgetall(_INDEX)  # type: ignore[assignment]
        found = []
        for key_digest in digests.values():
            raw = await self._redis.hgetall(_RECORD + key_digest)
            if raw and (not tenant or raw.get("tenant") == tenant):
                found.append(_info(raw))
        return sorted(found, key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str) -> bool:
        key_digest: str | None = await self._redis.hget(_INDEX, key_id)  # type: ignore[assignment]
        if key_digest is None:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_RECORD + key_digest)
            pipe.hdel(_INDEX, key_id)
            await pipe.execute()
        return True
