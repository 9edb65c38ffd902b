"""`llmmesh chat` in a pseudo-terminal against the whole stack, through Envoy: two turns in one
server-kept session, `/memories`, then `/forget`, checked from the outside over HTTP."""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration

LLMMESH = Path(sys.executable).with_name("llmmesh")  # the console script `make setup` installs
PROMPT = "you> "
REPLY = "assistant> "
# Replies come from a CPU engine: seconds each, more under load. Generous on purpose.
REPLY_TIMEOUT_S = 180
MEMORY_WAIT_S = 90  # memories are indexed in the background, a moment after each turn
SESSION_LINE = re.compile(r"session (\S+)\r?\n")
FIRST = "My name is Ada and my favourite colour is teal."
SECOND = "What is my favourite colour?"


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url + "/", timeout=60, headers=stack.auth) as client:
        yield client


@pytest.fixture
def chat(stack: Stack) -> Iterator[pexpect.spawn]:
    assert LLMMESH.is_file(), f"{LLMMESH} is missing: `make setup` installs the project (pip install -e .)"
    env = {**os.environ, "LLMMESH_BASE_URL": stack.base_url, "LLMMESH_API_KEY": stack.api_key, "TERM": "dumb"}
    child = pexpect.spawn(
        str(LLMMESH),
        ["chat", "--model", MODEL, "--max-tokens", "24", "--temperature", "0"],
        env=env,
        encoding="utf-8",
        timeout=REPLY_TIMEOUT_S,
        dimensions=(50, 200),
    )
    child.logfile_read = io.StringIO()  # the whole screen, for failure messages
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)


def screen(child: pexpect.spawn) -> str:
    log = child.logfile_read
    return log.getvalue() if isinstance(log, io.StringIO) else ""


def turn(child: pexpect.spawn, message: str) -> str:
    """Sends one message; returns the reply's text as the terminal showed it."""
    child.sendline(message)
    child.expect_exact(REPLY)
    child.expect_exact(PROMPT)
    reply = str(child.before).strip()
    assert reply, f"no reply to {message!r}:\n{screen(child)}"
    assert "error:" not in reply, screen(child)
    assert reply != "(empty reply)", screen(child)
    return reply


def wait_for_memories(http: httpx.Client, session_id: str, text: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + MEMORY_WAIT_S
    while True:
        response = http.get("memories", params={"session_id": session_id, "limit": 100})
        response.raise_for_status()
        memories: list[dict[str, Any]] = response.json()["data"]
        if any(m["text"] == text for m in memories):
            return memories
        if time.monotonic() > deadline:
            raise AssertionError(f"no memory {text!r} in session {session_id} after {MEMORY_WAIT_S} s: {memories}")
        time.sleep(0.5)


def test_two_turns_memories_and_forget(chat: pexpect.spawn, http: httpx.Client) -> None:
    chat.expect(SESSION_LINE)
    session_id = chat.match.group(1)
    chat.expect_exact(PROMPT)

    turn(chat, FIRST)
    turn(chat, SECOND)
    assert "conversation continues in session" not in screen(chat)

    # Both turns went to the one session, each with only its new message: the server keeps the history.
    session = http.get(f"sessions/{session_id}").json()
    assert session["turns"] == 2, session
    assert [m["content"] for m in session["messages"] if m["role"] == "user"] == [FIRST, SECOND]
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]

    # "What do you remember?"
    wait_for_memories(http, session_id, FIRST)
    chat.sendline("/memories")
    chat.expect_exact(f"remembered from session {session_id}:")
    chat.expect_exact(f"[user] {FIRST}")
    chat.expect_exact(PROMPT)

    chat.sendline("/forget")
    chat.expect(r"forgot session (\S+):")
    assert chat.match.group(1) == session_id
    chat.expect(SESSION_LINE)
    new_session_id = chat.match.group(1)
    assert new_session_id != session_id
    chat.expect_exact(PROMPT)

    gone = http.get(f"sessions/{session_id}")
    assert gone.status_code == 404, gone.text
    assert set(gone.json()["error"]) >= {"message", "type", "param", "code"}
    assert http.get("memories", params={"session_id": session_id}).json()["data"] == []
    assert http.get(f"sessions/{new_session_id}").json()["turns"] == 0

    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0, screen(chat)
    assert "Traceback" not in screen(chat)
    http.delete(f"sessions/{new_session_id}")


def test_api_errors_are_one_line(chat: pexpect.spawn) -> None:
    chat.expect(SESSION_LINE)
    chat.expect_exact(PROMPT)
    chat.sendline("/resume sess_does_not_exist")
    chat.expect(r"error: ([^\r\n]+)\r?\n")
    assert "HTTP 404" in chat.match.group(1)
    chat.expect_exact(PROMPT)
    chat.sendeof()  # Ctrl-D
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0, screen(chat)
    assert "Traceback" not in screen(chat)
