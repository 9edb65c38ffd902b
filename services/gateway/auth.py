"""Who is calling: a Bearer API key (HTTP `Authorization` header, or gRPC `authorization`
metadata) resolved to its tenant. Every tenant-scoped call takes the tenant from here, never
from the request body."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import redis.asyncio as redis

from services.common.errors import MeshError
from services.gateway.keys import KeyInfo, KeyStore, parse_seed
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG = "Incorrect API key provided."


def _unauthenticated(message: str) -> MeshError:
    return MeshError(grpc.StatusCode.UNAUTHENTICATED, message, "invalid_api_key")


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` value; "" when there is none."""
    if not authorization:
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its tenant, and the key it used (None: a keyless request,
    allowed only when keys are not required)."""

    tenant: str
    key: KeyInfo | None = None

    @property
    def key_id(self) -> str:
        """The key's id; "" for a keyless request."""
        return self.key.id if self.key is not None else ""


class Authenticator:
    def __init__(self, settings: GatewaySettings, keys: KeyStore) -> None:
        self._settings = settings
        self._keys = keys

    async def seed(self) -> int:
        """Stores the keys given in LLMMESH_API_KEYS (hashed); returns how many."""
        entries = parse_seed(self._settings.api_keys.get_secret_value(), self._settings.default_tenant)
        for key, tenant in entries:
            await self._keys.add(key, tenant, name="seeded")
        if entries:
            log.info("API keys seeded", extra={"keys": len(entries)})
        return len(entries)

    async def tenant(self, authorization: str | None) -> str:
        return (await self.caller(authorization)).tenant

    async def caller(self, authorization: str | None, api_key: str | None = None) -> Caller:
        """The caller. Without required keys, a request with no key is the default tenant's;
        a key that is given is always checked. `api_key`: Anthropic's `x-api-key` header, used
        when there is no Bearer token."""
        token = bearer_token(authorization) or (api_key or "").strip()
        if not token:
            if self._settings.require_api_key:
                raise _unauthenticated(_MISSING)
            return Caller(self._settings.default_tenant)
        try:
            info = await self._keys.lookup(token)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("key store unreachable", extra={"error": type(exc).__name__})
            raise MeshError(
                grpc.StatusCode.UNAVAILABLE, "Authentication is unavailable; retry shortly.", "auth_unavailable"
            ) from None
        if info is None:
            raise _unauthenticated(_WRONG)
        return Caller(info.tenant, info)
