"""``llmmesh knowledge``: add, list and delete the documents agents with retrieval draw on.

An operator's tool like ``llmmesh keys``: it talks to the memory service's gRPC port directly
(``--memory-target`` or ``$LLMMESH_MEMORY_TARGET``), which the public API does not expose.
``add`` reads text and markdown files and sends them by the hundred (or by the megabyte); each
is stored under its file name, so adding a file again replaces it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import grpc

from llmmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from services.cli.client import MeshClient
from services.cli.output import error, one_line, say, table, utc
from services.cli.settings import DEFAULT_MEMORY_TARGET, CliSettings
from services.common.channels import insecure_channel
from services.common.errors import from_rpc_error

DEFAULT_TENANT = "default"
# One AddKnowledge call carries at most this many files, or this much text (a larger file goes
# alone, up to the service's limit): each call reports before the next is embedded.
FILES_PER_CALL = 100
BYTES_PER_CALL = 1024 * 1024

DESCRIPTION = """\
Manage the knowledge collections that agents with retrieval draw on (deploy/router.yaml:
retrieval.collection). Documents are cut into passages, embedded and stored per tenant; the
most relevant passages of an agent's collection go into its system prompt. This talks to the
memory service's gRPC port directly: run it where that port is reachable."""

Stub = memory_pb2_grpc.MemoryServiceStub
Action = Callable[[Stub, argparse.Namespace, float], Awaitable[int]]


def _name(text: str) -> str:
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _service_options() -> argparse.ArgumentParser:
    """``--memory-target`` and ``--tenant``, taken before or after the action's name (SUPPRESS:
    a later copy does not overwrite an earlier value)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--memory-target",
        default=argparse.SUPPRESS,
        help=f"the memory service, host:port (default: $LLMMESH_MEMORY_TARGET or {DEFAULT_MEMORY_TARGET})",
    )
    options.add_argument(
        "--tenant",
        type=_name,
        default=argparse.SUPPRESS,
        help=f"whose knowledge (default: {DEFAULT_TENANT}, the tenant of API keys given without one)",
    )
    return options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser) -> None:
    # `parent` holds the HTTP API's options, which do not apply here (`llmmesh --timeout S
    # knowledge ...` does: the seconds one call may take, embedding included).
    service = _service_options()
    parser = subparsers.add_parser(
        "knowledge",
        parents=[service],
        help="add, list and delete documents for retrieval (talks to the memory service directly)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(title="actions", dest="knowledge_action", metavar="<action>", required=True)

    add = actions.add_parser(
        "add", parents=[service], help="add text or markdown files to a collection (replacing same names)"
    )
    add.add_argument("--collection", type=_name, required=True, help="the collection (made by its first document)")
    add.add_argument("files", metavar="FILE", nargs="+", type=Path, help="UTF-8 text or markdown files")
    add.set_defaults(action=_add)

    listing = actions.add_parser("list", parents=[service], help="list collections and their documents")
    listing.add_argument("--collection", type=_name, default=None, help="only this collection")
    listing.set_defaults(action=_list)

    delete = actions.add_parser("delete", parents=[service], help="delete a collection or one document")
    delete.add_argument("--collection", type=_name, required=True, help="the collection")
    delete.add_argument("--document", type=_name, default=None, help="only this document (its file name)")
    delete.set_defaults(action=_delete)


def run(args: argparse.Namespace, client: MeshClient, settings: CliSettings) -> int:
    """Runs the action against the memory service; ``client`` (the HTTP API) is not used."""
    target = settings.memory_target
    action: Action = args.action
    try:
        return asyncio.run(_run_action(action, target, args, settings.timeout_s))
    except grpc.aio.AioRpcError as exc:
        failure = from_rpc_error(exc)
        if failure.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not failure.reason:
            return error(f"cannot reach the memory service at {target}: {one_line(failure.message)}")
        return error(one_line(failure.message))


async def _run_action(action: Action, target: str, args: argparse.Namespace, timeout_s: float) -> int:
    async with insecure_channel(target) as channel:
        return await action(memory_pb2_grpc.MemoryServiceStub(channel), args, timeout_s)


def _tenant(args: argparse.Namespace) -> str:
    tenant: str = getattr(args, "tenant", DEFAULT_TENANT)
    return tenant


def read_documents(files: Sequence[Path]) -> list[memory_pb2.KnowledgeDocument]:
    """The files as documents named by their file names; ValueError says which one is unfit."""
    documents: dict[str, memory_pb2.KnowledgeDocument] = {}
    for path in files:
        if path.name in documents:
            raise ValueError(f"two files are named {path.name} (a document's name is its file name)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        if "\x00" in text:
            raise ValueError(f"{path} is not text (it holds NUL bytes)")
        if not text.strip():
            raise ValueError(f"{path} is empty")
        documents[path.name] = memory_pb2.KnowledgeDocument(name=path.name, text=text)
    return list(documents.values())


def batches(documents: Sequence[memory_pb2.KnowledgeDocument]) -> Iterator[list[memory_pb2.KnowledgeDocument]]:
    batch: list[memory_pb2.KnowledgeDocument] = []
    size = 0
    for document in documents:
        length = len(document.text.encode())
        if batch and (len(batch) == FILES_PER_CALL or size + length > BYTES_PER_CALL):
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += length
    if batch:
        yield batch


async def _add(stub: Stub, args: argparse.Namespace, timeout_s: float) -> int:
    try:
        documents = read_documents(args.files)
    except ValueError as exc:
        return error(str(exc))
    tenant = _tenant(args)
    for batch in batches(documents):
        request = memory_pb2.AddKnowledgeRequest(tenant=tenant, collection=args.collection, documents=batch)
        reply = await stub.AddKnowledge(request, timeout=timeout_s)
        for added in reply.documents:
            replaced = f", {added.removed_chunks} old passages removed" if added.removed_chunks else ""
            say(f"added {one_line(added.name)}: {added.chunks} passages, {added.tokens} tokens{replaced}")
    say(f"collection {args.collection} of tenant {tenant}: {len(documents)} documents added")
    return 0


async def _list(stub: Stub, args: argparse.Namespace, timeout_s: float) -> int:
    tenant = _tenant(args)
    request = memory_pb2.ListKnowledgeRequest(tenant=tenant, collection=args.collection or "")
    reply = await stub.ListKnowledge(request, timeout=timeout_s)
    if not reply.collections:
        where = f"collection {args.collection}" if args.collection else "knowledge"
        say(f"no {where} for tenant {tenant}")
        return 0
    header = ("COLLECTION", "DOCUMENT", "PASSAGES", "TOKENS", "ADDED (UTC)")
    rows = [
        (one_line(c.name), one_line(d.name), str(d.chunks), str(d.tokens), utc(d.added_at))
        for c in reply.collections
        for d in c.documents
    ]
    say(table(header, rows))
    return 0


async def _delete(stub: Stub, args: argparse.Namespace, timeout_s: float) -> int:
    request = memory_pb2.DeleteKnowledgeRequest(
        tenant=_tenant(args), collection=args.collection, document=args.document or ""
    )
    reply = await stub.DeleteKnowledge(request, timeout=timeout_s)
    what = f"{args.document} from collection {args.collection}" if args.document else f"collection {args.collection}"
    say(f"deleted {what} ({reply.removed_chunks} passages)")
    return 0
