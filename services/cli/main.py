"""``llmmesh``: the command line, a client of the public HTTP API; the operator's tools talk to
what the API does not expose directly instead: ``llmmesh keys`` to the key store (the
Redis-protocol server), ``llmmesh knowledge`` to the memory service's gRPC port.

Each subcommand is a module with ``register(subparsers, parent)``, which adds its parser and
sets ``handler`` to a ``run(args, client, settings) -> exit code`` (one that does not use the
API ignores ``client``); adding one means writing the module and listing it in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from pydantic import ValidationError

from services.cli import chat, keys, knowledge
from services.cli.client import MeshClient
from services.cli.settings import DEFAULT_BASE_URL, CliSettings

SUBCOMMANDS: tuple[ModuleType, ...] = (chat, keys, knowledge)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, before or after its name. They default to SUPPRESS so
    that a subcommand's copy does not overwrite a value given before the subcommand."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--base-url",
        default=argparse.SUPPRESS,
        help=f"the API, ending in /v1 (default: $LLMMESH_BASE_URL or {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="Bearer token (default: $LLMMESH_API_KEY or $OPENAI_API_KEY; none is sent without one)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        help="seconds to wait for an answer, or for the next piece of a streamed reply (default: 300)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    connection = _connection_options()
    parser = argparse.ArgumentParser(
        prog="llmmesh",
        description="Terminal clients of the llmmesh API (OpenAI-compatible chat with server-kept sessions).",
        parents=[connection],
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for module in SUBCOMMANDS:
        module.register(subparsers, connection)
    return parser


def resolve_settings(args: argparse.Namespace) -> CliSettings:
    """The environment's settings with the flags given on top."""
    flags = {
        "base_url": "base_url",
        "api_key": "api_key",
        "timeout": "timeout_s",
        "model": "model",
        "redis_url": "redis_url",
        "memory_target": "memory_target",
    }
    overrides = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None)}
    return CliSettings().model_copy(update=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = resolve_settings(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        parser.error(f"invalid setting in the environment: {problems}")
    try:
        with MeshClient(settings.base_url, settings.api_key, settings.timeout_s) as client:
            code: int = args.handler(args, client, settings)
            return code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
