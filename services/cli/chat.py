"""``llmmesh chat``: an interactive chat in the terminal, over the public HTTP API.

The server keeps the conversation (a session): each turn sends only the new user message with
the session's id, and the reply streams back as it is generated. Lines starting with ``/`` are
commands (``/help`` lists them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from services.cli.client import ApiError, MeshClient
from services.cli.settings import CliSettings

PROMPT = "you> "
REPLY_PREFIX = "assistant> "
RESUME_SHOWS = 6  # messages shown when switching to a session
LIST_TEXT_CHARS = 200  # a memory's text is cut to this in lists
QUIT_COMMANDS = frozenset({"quit", "exit"})

DESCRIPTION = """\
Chat with the llmmesh API in the terminal. The server keeps the conversation (a session):
each turn sends only the new message, and the reply streams in as it is generated.
Commands start with / (/help lists them); Ctrl-C stops a reply, Ctrl-D quits."""

HELP = """\
/new               start a new session
/system [prompt]   set this session's system prompt (without one: show it)
/sessions          list the sessions
/resume <id>       switch to a session and show its last messages
/memories          what is remembered from this session
/search <query>    search the memories of every session
/forget            delete this session (history and memories), then start a new one
/help              this list
/quit              leave (Ctrl-D too; Ctrl-C stops a reply)
A line starting with // is sent as a message starting with /."""


@dataclass(frozen=True)
class Command:
    name: str
    argument: str = ""


def parse_line(line: str) -> Command | str | None:
    """A typed line: a ``Command`` for ``/name [argument]``, the message text otherwise,
    None when there is nothing to do."""
    text = line.strip()
    if not text:
        return None
    if text.startswith("//"):
        return text[1:]
    if not text.startswith("/"):
        return text
    name, _, argument = text[1:].partition(" ")
    return Command(name.lower(), argument.strip())


@dataclass(frozen=True)
class ChatOptions:
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    # For the sessions this chat creates.
    system_prompt: str | None = None
    user: str | None = None
    # Resume this session instead of starting one.
    session_id: str | None = None


def _one_line(text: str, limit: int = LIST_TEXT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _when(unix_s: object) -> str:
    if not isinstance(unix_s, int | float) or unix_s <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_s))


class ChatRepl:
    """The read-send-print loop; ``read`` and the streams are injectable for tests."""

    def __init__(
        self,
        client: MeshClient,
        options: ChatOptions,
        *,
        read: Callable[[str], str] = input,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.session_id = ""
        self._read = read
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._commands: dict[str, Callable[[str], None]] = {
            "new": self._new,
            "system": self._system,
            "sessions": self._sessions,
            "resume": self._resume,
            "memories": self._memories,
            "search": self._search,
            "forget": self._forget,
            "help": self._help,
        }

    # -- output
    def say(self, text: str = "") -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def error(self, text: str) -> None:
        self._out.flush()
        self._err.write(f"error: {text}\n")
        self._err.flush()

    # -- the loop
    def run(self) -> int:
        try:
            if self.options.session_id:
                self._switch_to(self.options.session_id)
            else:
                self._start_session()
        except ApiError as exc:
            self.error(str(exc))
            return 1
        self.say(f"model {self.options.model}; /help lists the commands, Ctrl-D quits")
        while True:
            try:
                line = self._read(PROMPT)
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:  # at the prompt: drop the line, as shells do
                self.say()
                continue
            try:
                if not self.handle(line):
                    return 0
            except ApiError as exc:
                self.error(str(exc))
            except KeyboardInterrupt:  # during a command: drop it, stay in the chat
                self.say(" [cancelled]")

    def handle(self, line: str) -> bool:
        """One typed line; False: leave. Raises ApiError when the API fails."""
        parsed = parse_line(line)
        if parsed is None:
            return True
        if isinstance(parsed, str):
            self.send(parsed)
            return True
        if parsed.name in QUIT_COMMANDS:
            return False
        command = self._commands.get(parsed.name)
        if command is None:
            self.error(f"unknown command /{parsed.name}; /help lists the commands")
            return True
        command(parsed.argument)
        return True

    def send(self, text: str) -> None:
        """Sends one user message and prints the reply as it streams in."""
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": [{"role": "user", "content": text}],
            "session_id": self.session_id,
        }
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.user:
            body["user"] = self.options.user
        self._out.write(REPLY_PREFIX)
        self._out.flush()
        wrote, moved_to = False, ""
        try:
            with contextlib.closing(self.client.stream_chat(body)) as chunks:
                for chunk in chunks:
                    if chunk.session_id and chunk.session_id != self.session_id:
                        moved_to = self.session_id = chunk.session_id
                    if chunk.text:
                        self._out.write(chunk.text)
                        self._out.flush()
                        wrote = True
        except KeyboardInterrupt:  # closing the stream stops the generation on the server
            self._out.write(" [stopped]")
            wrote = True
        except ApiError:
            wrote = True  # the error line that follows says what happened
            raise
        finally:
            self._out.write("\n" if wrote else "(empty reply)\n")
            self._out.flush()
            if moved_to:  # the server answered in another session: follow it
                self.say(f"(the conversation continues in session {moved_to})")

    # -- sessions
    def _start_session(self) -> None:
        session = self.client.create_session(self.options.system_prompt, self.options.user)
        self.session_id = str(session["id"])
        self.say(f"session {self.session_id}")

    def _switch_to(self, session_id: str) -> None:
        session = self.client.get_session(session_id)
        self.session_id = str(session.get("id") or session_id)
        self.say(f"session {self.session_id} ({session.get('turns', 0)} turns)")
        if session.get("system_prompt"):
            self.say(f"system prompt: {_one_line(str(session['system_prompt']))}")
        messages = session.get("messages") or []
        if len(messages) > RESUME_SHOWS:
            self.say(f"… {len(messages) - RESUME_SHOWS} earlier messages")
        for message in messages[-RESUME_SHOWS:]:
            role = message.get("role", "?")
            prefix = {"user": PROMPT, "assistant": REPLY_PREFIX}.get(role, f"{role}> ")
            self.say(prefix + str(message.get("content") or ""))

    def _new(self, argument: str) -> None:
        self._start_session()

    def _system(self, argument: str) -> None:
        if not argument:
            prompt = self.client.get_session(self.session_id).get("system_prompt")
            self.say(f"system prompt: {prompt}" if prompt else "this session has no system prompt")
            return
        self.client.update_session(self.session_id, argument)
        self.say("system prompt set")

    def _sessions(self, argument: str) -> None:
        listing = self.client.list_sessions()
        sessions = listing.get("data") or []
        if not sessions:
            self.say("no sessions")
            return
        for session in sessions:
            mark = "*" if session.get("id") == self.session_id else " "
            turns, updated = session.get("turns", 0), _when(session.get("updated_at"))
            line = f"{mark} {session.get('id')}  {turns:>3} turns  updated {updated}"
            if session.get("system_prompt"):
                line += f"  system: {_one_line(str(session['system_prompt']), 60)}"
            self.say(line)
        if listing.get("has_more"):
            self.say("  … and more")

    def _resume(self, argument: str) -> None:
        if not argument:
            self.error("usage: /resume <session id> (/sessions lists them)")
            return
        self._switch_to(argument)

    def _forget(self, argument: str) -> None:
        forgotten = self.session_id
        self.client.delete_session(forgotten)
        self.say(f"forgot session {forgotten}: its history and memories are deleted")
        self._start_session()

    # -- memories
    def _memories(self, argument: str) -> None:
        listing = self.client.list_memories(session_id=self.session_id)
        memories = listing.get("data") or []
        if not memories:
            self.say("nothing remembered from this session yet (memories are saved a moment after each reply)")
            return
        self.say(f"remembered from session {self.session_id}:")
        for memory in memories:
            self.say(f"  [{memory.get('role', '?')}] {_one_line(str(memory.get('text', '')))}")
        if listing.get("has_more"):
            self.say("  … and more")

    def _search(self, argument: str) -> None:
        if not argument:
            self.error("usage: /search <query>")
            return
        found = self.client.search_memories(argument, user=self.options.user).get("data") or []
        if not found:
            self.say("no memory matches")
            return
        for memory in found:
            where = "this session" if memory.get("session_id") == self.session_id else memory.get("session_id")
            score = memory.get("score")
            shown = f"{score:.2f}" if isinstance(score, int | float) else "  - "
            self.say(f"  {shown}  [{memory.get('role', '?')}] {_one_line(str(memory.get('text', '')))}  ({where})")

    # -- the rest
    def _help(self, argument: str) -> None:
        self.say(HELP)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "chat",
        parents=[parent],
        help="chat in the terminal (the server keeps the history)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="model or agent to ask (default: $LLMMESH_MODEL or llmmesh)")
    parser.add_argument("--max-tokens", type=_positive_int, default=None, help="cap on each reply's tokens")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the server's)")
    parser.add_argument("--system", default=None, help="system prompt of the sessions this chat starts")
    parser.add_argument("--user", default=None, help="end-user id for the sessions and memories (OpenAI's `user`)")
    parser.add_argument("--session", default=None, help="resume this session instead of starting a new one")
    parser.set_defaults(handler=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace, client: MeshClient, settings: CliSettings) -> int:
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    options = ChatOptions(
        model=settings.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        system_prompt=args.system,
        user=args.user,
        session_id=args.session,
    )
    return ChatRepl(client, options).run()
