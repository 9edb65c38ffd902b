"""``llmmesh keys``: create, list and revoke API keys, an operator's tool.

It talks to the Redis-protocol server the gateways keep their keys in, not to the HTTP API
(``--redis-url`` or ``$LLMMESH_REDIS_URL``). Only a key's SHA-256 is stored, so a key is shown
once, when it is created; ``list`` shows ids and hints, and ``revoke`` takes an id.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.cli.client import MeshClient
from services.cli.output import error as _error
from services.cli.output import one_line as _one_line
from services.cli.output import say as _say
from services.cli.output import table
from services.cli.output import utc as _utc
from services.cli.settings import DEFAULT_REDIS_URL, CliSettings
from services.common.keys import KeyInfo, KeyLimits, KeyStore

REDIS_TIMEOUT_S = 5.0

DESCRIPTION = """\
Manage the API keys the gateways accept, each bound to a tenant. This talks to the key store
(the Redis-protocol server the gateways share) directly: run it where that server is reachable.
Only a key's hash is kept, so a new key is shown once; list and revoke use its id."""

Action = Callable[[KeyStore, argparse.Namespace], Awaitable[int]]


def _name(text: str) -> str:
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (unlimited) or more")
    return value


def _store_options() -> argparse.ArgumentParser:
    """``--redis-url``, taken before or after the action's name (SUPPRESS: a later copy does not
    overwrite an earlier value)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help=f"the key store (default: $LLMMESH_REDIS_URL or {DEFAULT_REDIS_URL})",
    )
    return options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser) -> None:
    # `parent` holds the HTTP API's options, which do not apply here.
    store = _store_options()
    parser = subparsers.add_parser(
        "keys",
        parents=[store],
        help="create, list and revoke API keys (talks to the key store directly)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(title="actions", dest="keys_action", metavar="<action>", required=True)

    create = actions.add_parser("create", parents=[store], help="create a key for a tenant (shown once)")
    create.add_argument("--tenant", type=_name, required=True, help="the tenant the key's requests belong to")
    create.add_argument("--name", default="", help="a label for people (who or what uses the key)")
    limits = create.add_argument_group("limits (default: the gateway's LLMMESH_GATEWAY_DEFAULT_*; 0: unlimited)")
    limits.add_argument("--rpm", type=_limit, help="requests per minute")
    limits.add_argument("--tpm", type=_limit, help="prompt + completion tokens per minute")
    limits.add_argument("--max-streams", type=_limit, help="chat completions in flight at once")
    limits.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_name,
        default=[],
        help="a model the key may use (repeat for more; default: every model)",
    )
    create.set_defaults(action=_create)

    listing = actions.add_parser("list", parents=[store], help="list the keys (ids and hints, never the keys)")
    listing.add_argument("--tenant", type=_name, default=None, help="only this tenant's keys")
    listing.set_defaults(action=_list)

    revoke = actions.add_parser("revoke", parents=[store], help="revoke a key by id: it is refused at once")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (`llmmesh keys list` shows them)")
    revoke.set_defaults(action=_revoke)


def run(args: argparse.Namespace, client: MeshClient, settings: CliSettings) -> int:
    """Runs the action against the key store; ``client`` (the HTTP API) is not used."""
    url = settings.redis_url
    try:
        store = KeyStore.from_url(url, timeout_s=REDIS_TIMEOUT_S)
    except ValueError as exc:  # a URL redis cannot parse
        return _error(f"invalid Redis URL {_safe_url(url)}: {_one_line(str(exc))}")
    action: Action = args.action
    try:
        return asyncio.run(_run_action(action, store, args))
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        return _error(f"cannot reach the key store at {_safe_url(url)}: {_one_line(str(exc))}")
    except RedisError as exc:
        return _error(f"the key store at {_safe_url(url)} failed: {_one_line(str(exc))}")


async def _run_action(action: Action, store: KeyStore, args: argparse.Namespace) -> int:
    try:
        return await action(store, args)
    finally:
        await store.close()


async def _create(store: KeyStore, args: argparse.Namespace) -> int:
    limits = KeyLimits(args.rpm, args.tpm, args.max_streams, tuple(args.models))
    key, info = await store.create(args.tenant, args.name, limits)
    _say(f"key     {key}")
    _say(f"id      {info.id}")
    _say(f"tenant  {info.tenant}")
    if info.name:
        _say(f"name    {_one_line(info.name)}")
    if limits != KeyLimits():
        _say(f"limits  {_limits_line(info.limits)}")
    _say("Save the key now: it cannot be shown again (only its hash is kept).")
    return 0


async def _list(store: KeyStore, args: argparse.Namespace) -> int:
    found = await store.list(args.tenant or "")
    if not found:
        _say(f"no keys for tenant {args.tenant}" if args.tenant else "no keys")
        return 0
    _say(format_table(found))
    return 0


async def _revoke(store: KeyStore, args: argparse.Namespace) -> int:
    if not await store.revoke(args.key_id):
        return _error(f"no key with id {_one_line(args.key_id)} (`llmmesh keys list` shows the ids)")
    _say(f"revoked {args.key_id}: requests with it are refused from now on")
    return 0


def format_table(found: Sequence[KeyInfo]) -> str:
    """The keys as aligned columns: id, tenant, name, created (UTC), hint, and the key's own
    limits ("-": the gateway's default)."""
    header = ("ID", "TENANT", "NAME", "CREATED (UTC)", "HINT", "RPM", "TPM", "STREAMS", "MODELS")
    rows = [
        (
            info.id,
            _one_line(info.tenant),
            _one_line(info.name) or "-",
            _utc(info.created_at),
            f"{info.hint}…" if info.hint else "-",
            _limit_cell(info.limits.rpm),
            _limit_cell(info.limits.tpm),
            _limit_cell(info.limits.max_streams),
            ",".join(map(_one_line, info.limits.models)) or "all",
        )
        for info in found
    ]
    return table(header, rows)


def _limit_cell(value: int | None) -> str:
    if value is None:
        return "-"
    return "unlimited" if value == 0 else str(value)


def _limits_line(limits: KeyLimits) -> str:
    cells = (("rpm", limits.rpm), ("tpm", limits.tpm), ("max-streams", limits.max_streams))
    parts = [f"{name} {_limit_cell(value)}" for name, value in cells if value is not None]
    if limits.models:
        parts.append("models " + ", ".join(map(_one_line, limits.models)))
    return "; ".join(parts)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port is not None else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "(the given URL)"
