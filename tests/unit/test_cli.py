"""The `llmmesh` command without a server: argument parsing, slash commands, error lines, the
SSE reader, and `llmmesh chat`'s loop against an in-memory fake of the public HTTP API."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import pytest

from services.cli.chat import ChatOptions, ChatRepl, Command, parse_line
from services.cli.client import ApiError, ChatChunk, MeshClient, chunk_of, parse_sse_line
from services.cli.main import build_parser, main, resolve_settings
from services.cli.settings import DEFAULT_BASE_URL, DEFAULT_REDIS_URL
from services.common.keys import KeyLimits, KeyStore
from tests.unit.helpers import free_port

# -- arguments and settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMMESH_BASE_URL", "LLMMESH_API_KEY", "OPENAI_API_KEY", "LLMMESH_MODEL", "LLMMESH_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)


def test_chat_defaults() -> None:
    args = build_parser().parse_args(["chat"])
    settings = resolve_settings(args)
    assert settings.base_url == DEFAULT_BASE_URL == "http://127.0.0.1:8080/v1"
    assert settings.api_key is None
    assert settings.model == "llmmesh"
    assert settings.timeout_s == 300
    assert (args.max_tokens, args.temperature, args.system, args.session) == (None, None, None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--base-url", "http://h:1/v1", "--api-key", "k", "--timeout", "5", "chat"],
        ["chat", "--base-url", "http://h:1/v1", "--api-key", "k", "--timeout", "5"],
        ["--base-url", "http://h:1/v1", "chat", "--api-key", "k", "--timeout", "5"],
    ],
)
def test_connection_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    settings = resolve_settings(build_parser().parse_args(argv))
    assert (settings.base_url, settings.api_key, settings.timeout_s) == ("http://h:1/v1", "k", 5.0)


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMMESH_BASE_URL", "http://env:2/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    monkeypatch.setenv("LLMMESH_MODEL", "env-model")
    settings = resolve_settings(build_parser().parse_args(["chat"]))
    assert (settings.base_url, settings.api_key, settings.model) == ("http://env:2/v1", "openai-key", "env-model")

    monkeypatch.setenv("LLMMESH_API_KEY", "mesh-key")  # ours wins over the OpenAI SDK's variable
    assert resolve_settings(build_parser().parse_args(["chat"])).api_key == "mesh-key"

    flagged = resolve_settings(build_parser().parse_args(["chat", "--api-key", "flag-key", "--model", "m"]))
    assert (flagged.api_key, flagged.model, flagged.base_url) == ("flag-key", "m", "http://env:2/v1")


def test_chat_options_parse() -> None:
    args = build_parser().parse_args(
        ["chat", "--max-tokens", "16", "--temperature", "0", "--system", "be brief", "--session", "sess_1"]
    )
    assert (args.max_tokens, args.temperature, args.system, args.session) == (16, 0.0, "be brief", "sess_1")


@pytest.mark.parametrize("argv", [["chat", "--max-tokens", "0"], ["chat", "--timeout", "-1"], ["nope"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: llmmesh" in capsys.readouterr().err


def test_no_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: llmmesh" in err
    assert "chat" in err


def test_unreachable_api_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    assert main(["--base-url", "http://127.0.0.1:9/v1", "--timeout", "5", "chat"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot reach http://127.0.0.1:9/v1")
    assert "Traceback" not in captured.err + captured.out


# -- typed lines


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("", None),
        ("   ", None),
        ("hello there", "hello there"),
        ("  padded  ", "padded"),
        ("/new", Command("new")),
        ("/NEW", Command("new")),
        ("/system  You are a pirate. ", Command("system", "You are a pirate.")),
        ("/resume sess_abc", Command("resume", "sess_abc")),
        ("/search where do I live", Command("search", "where do I live")),
        ("/nonsense x", Command("nonsense", "x")),
        ("//etc/hosts is a file", "/etc/hosts is a file"),
        ("what about /new?", "what about /new?"),
    ],
)
def test_parse_line(line: str, parsed: Command | str | None) -> None:
    assert parse_line(line) == parsed


# -- error lines


def test_openai_error_shape_is_one_line() -> None:
    body = {
        "error": {
            "message": "No session found with id 'x'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "session_not_found",
        }
    }
    error = ApiError.from_response(404, json.dumps(body).encode())
    assert str(error) == "No session found with id 'x'. (HTTP 404, invalid_request_error, session_not_found)"
    assert (error.status, error.code, error.param) == (404, "session_not_found", None)


def test_error_with_param_and_multiline_message() -> None:
    body = {"error": {"message": "bad\n  value", "type": "invalid_request_error", "param": "max_tokens", "code": ""}}
    assert str(ApiError.from_body(400, body)) == "bad value (HTTP 400, invalid_request_error, param max_tokens)"


def test_non_json_error_body() -> None:
    error = ApiError.from_response(503, b"upstream connect error or disconnect/reset before headers\n")
    assert str(error) == "upstream connect error or disconnect/reset before headers (HTTP 503)"
    assert str(ApiError.from_response(502, b"")) == "Bad Gateway (HTTP 502)"


def test_other_error_bodies() -> None:
    assert str(ApiError.from_body(401, {"error": "no key"})) == "no key (HTTP 401)"
    assert str(ApiError.from_body(500, {"detail": "x"})) == '{"detail": "x"} (HTTP 500)'
    assert str(ApiError("plain")) == "plain"


# -- the SSE reader


def test_sse_lines() -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "session_id": "s1",
        "choices": [{"index": 0, "delta": {"content": "Hi"}}],
    }
    event = parse_sse_line("data: " + json.dumps(chunk))
    assert event is not None
    assert chunk_of(event) == ChatChunk(text="Hi", session_id="s1")
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("") is None
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    assert chunk_of(finish) == ChatChunk(finish_reason="length")
    assert chunk_of({"choices": [], "usage": {"total_tokens": 3}}) == ChatChunk()


def test_sse_error_event_raises() -> None:
    line = 'data: {"error": {"message": "engine gone", "type": "server_error", "param": null, "code": null}}'
    with pytest.raises(ApiError, match=r"^engine gone \(server_error\)$"):
        parse_sse_line(line)


# -- a fake of the public HTTP API


def sse(events: list[dict[str, Any]], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def not_found(what: str) -> httpx.Response:
    error = {"message": f"No {what} found.", "type": "invalid_request_error", "param": None, "code": "not_found"}
    return httpx.Response(404, json={"error": error})


class FakeApi:
    """Sessions, memories and streamed chat, kept in dicts; records every request."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, str]]] = {}
        self.requests: list[httpx.Request] = []
        self.chat_bodies: list[dict[str, Any]] = []
        self.reply = "Hello from the mesh."
        self.fail_chat_midway = False
        self._created = 0

    def client(self, api_key: str | None = None) -> MeshClient:
        return MeshClient("http://fake/v1", api_key, transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else {}
        if path == "/v1/sessions" and method == "POST":
            self._created += 1
            sid = f"sess_{self._created}"
            self.sessions[sid] = {
                "id": sid,
                "object": "session",
                "created_at": 1_700_000_000,
                "updated_at": 1_700_000_000,
                "system_prompt": body.get("system_prompt"),
                "metadata": {},
                "turns": 0,
                "user": body.get("user"),
            }
            self.messages[sid] = []
            return httpx.Response(200, json=self.sessions[sid])
        if path == "/v1/sessions" and method == "GET":
            data = list(self.sessions.values())
            return httpx.Response(200, json={"object": "list", "data": data, "has_more": False})
        if path.startswith("/v1/sessions/"):
            sid = path.rsplit("/", 1)[1]
            if sid not in self.sessions:
                return not_found("session")
            if method == "GET":
                return httpx.Response(200, json={**self.sessions[sid], "messages": self.messages[sid]})
            if method == "PATCH":
                self.sessions[sid].update(body)
                return httpx.Response(200, json=self.sessions[sid])
            if method == "DELETE":
                del self.sessions[sid], self.messages[sid]
                return httpx.Response(200, json={"id": sid, "object": "session.deleted", "deleted": True})
        if path == "/v1/memories" and method == "GET":
            sid = request.url.params.get("session_id")
            data = [
                {"id": f"m{i}", "object": "memory", "text": m["content"], "role": m["role"], "session_id": sid}
                for i, m in enumerate(self.messages.get(sid or "", []))
            ]
            return httpx.Response(200, json={"object": "list", "data": data, "has_more": False})
        if path == "/v1/memories/search" and method == "POST":
            data = [
                {"id": f"{sid}-{i}", "text": m["content"], "role": m["role"], "session_id": sid, "score": 0.87}
                for sid, messages in self.messages.items()
                for i, m in enumerate(messages)
                if body["query"].lower() in m["content"].lower()
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        if path == "/v1/chat/completions" and method == "POST":
            return self.chat(body)
        return not_found("route")

    def chat(self, body: dict[str, Any]) -> httpx.Response:
        self.chat_bodies.append(body)
        sid = body["session_id"]
        if sid not in self.sessions:
            return not_found("session")
        self.messages[sid] += [*body["messages"], {"role": "assistant", "content": self.reply}]
        self.sessions[sid]["turns"] += 1
        envelope = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "session_id": sid}
        words = self.reply.split(" ")
        events = [{**envelope, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        events += [
            {**envelope, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}}]}
            for i, w in enumerate(words)
        ]
        if self.fail_chat_midway:
            error = {"message": "the engine stopped", "type": "server_error", "param": None, "code": None}
            return httpx.Response(200, content=sse([*events[:2], {"error": error}]))
        events.append({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return httpx.Response(200, content=sse(events), headers={"X-Session-Id": sid})


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


class Console:
    """Feeds typed lines to the loop and collects what it prints."""

    def __init__(self, lines: list[str]) -> None:
        self._lines: Iterator[str] = iter(lines)
        self.out = io.StringIO()
        self.err = io.StringIO()

    def read(self, prompt: str) -> str:
        self.out.write(prompt)
        line = next(self._lines, None)
        if line is None:
            raise EOFError
        self.out.write(line + "\n")
        return line


def run_chat(api: FakeApi, lines: list[str], **options: Any) -> tuple[int, Console, ChatRepl]:
    console = Console(lines)
    repl = ChatRepl(
        api.client(), ChatOptions(model="llmmesh", **options), read=console.read, out=console.out, err=console.err
    )
    return repl.run(), console, repl


# -- the client against the fake


def test_bearer_token_only_when_given(api: FakeApi) -> None:
    api.client("secret").list_sessions()
    api.client(None).list_sessions()
    assert api.requests[0].headers["Authorization"] == "Bearer secret"
    assert "Authorization" not in api.requests[1].headers


def test_api_error_comes_out_as_api_error(api: FakeApi) -> None:
    with pytest.raises(ApiError) as raised:
        api.client().get_session("sess_missing")
    assert str(raised.value) == "No session found. (HTTP 404, invalid_request_error, not_found)"


def test_ids_are_quoted_into_the_path(api: FakeApi) -> None:
    with pytest.raises(ApiError):
        api.client().get_session("a/b c")
    assert api.requests[0].url.raw_path == b"/v1/sessions/a%2Fb%20c"


def test_stream_that_ends_without_done_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse([{"choices": [{"index": 0, "delta": {"content": "par"}}]}], done=False))

    client = MeshClient("http://fake/v1", transport=httpx.MockTransport(handler))
    chunks = client.stream_chat({"model": "m", "messages": []})
    assert next(chunks).text == "par"
    with pytest.raises(ApiError, match="ended early"):
        next(chunks)


def test_transport_failures_are_api_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    refused = MeshClient("http://fake/v1", transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError, match=r"^cannot reach http://fake/v1: connection refused$"):
        refused.list_sessions()
    stalled = MeshClient("http://fake/v1", timeout_s=7, transport=httpx.MockTransport(stall))
    with pytest.raises(ApiError, match=r"^no answer from http://fake/v1 within 7 s$"):
        list(stalled.stream_chat({"model": "m", "messages": []}))


# -- the chat loop against the fake


def test_two_turns_send_only_the_new_message_with_the_session(api: FakeApi) -> None:
    code, console, repl = run_chat(api, ["Hi there", "And again"], max_tokens=16, temperature=0.0)
    assert code == 0
    out = console.out.getvalue()
    assert out.count("assistant> Hello from the mesh.\n") == 2
    assert out.startswith("session sess_1\n")
    assert [b["messages"] for b in api.chat_bodies] == [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "user", "content": "And again"}],
    ]
    for body in api.chat_bodies:
        assert body["session_id"] == "sess_1"
        assert (body["stream"], body["max_tokens"], body["temperature"], body["model"]) == (True, 16, 0.0, "llmmesh")
    assert repl.session_id == "sess_1"
    assert console.err.getvalue() == ""


def test_follows_the_session_the_server_answers_in(api: FakeApi) -> None:
    class MovingClient(MeshClient):
        def stream_chat(self, body: dict[str, Any]) -> Generator[ChatChunk, None, None]:
            yield ChatChunk(session_id="sess_other")
            yield ChatChunk(text="Hi")

    console = Console(["Hi", "again"])
    client = MovingClient("http://fake/v1", transport=httpx.MockTransport(api.handle))
    repl = ChatRepl(client, ChatOptions(model="m"), read=console.read, out=console.out, err=console.err)
    assert repl.run() == 0
    assert repl.session_id == "sess_other"
    assert console.out.getvalue().count("(the conversation continues in session sess_other)") == 1


def test_unset_sampling_is_left_to_the_server(api: FakeApi) -> None:
    run_chat(api, ["Hi"])
    assert "max_tokens" not in api.chat_bodies[0]
    assert "temperature" not in api.chat_bodies[0]


def test_memories_then_forget(api: FakeApi) -> None:
    code, console, repl = run_chat(api, ["/memories", "My cat is called Miso", "/memories", "/forget", "/quit", "x"])
    assert code == 0
    out = console.out.getvalue()
    assert "nothing remembered from this session yet" in out
    assert "  [user] My cat is called Miso\n" in out
    assert "  [assistant] Hello from the mesh.\n" in out
    assert "forgot session sess_1" in out
    assert "session sess_2\n" in out
    assert "sess_1" not in api.sessions
    assert repl.session_id == "sess_2"
    assert len(api.chat_bodies) == 1  # /quit left before "x"


def test_new_system_sessions_resume(api: FakeApi) -> None:
    lines = ["first", "/new", "/system Answer in French.", "/system", "/sessions", "/resume sess_1"]
    code, console, repl = run_chat(api, lines, system_prompt="Be brief.")
    assert code == 0
    out = console.out.getvalue()
    assert api.sessions["sess_1"]["system_prompt"] == "Be brief."
    assert api.sessions["sess_2"]["system_prompt"] == "Answer in French."
    assert "system prompt set" in out
    assert "system prompt: Answer in French." in out
    assert "  sess_1    1 turns" in out
    assert "* sess_2    0 turns" in out
    # resuming shows the last messages
    assert out.endswith(
        "session sess_1 (1 turns)\nsystem prompt: Be brief.\nyou> first\nassistant> Hello from the mesh.\nyou> \n"
    )
    assert repl.session_id == "sess_1"


def test_resume_shows_only_the_last_messages(api: FakeApi) -> None:
    client = api.client()
    sid = client.create_session()["id"]
    for i in range(5):
        list(client.stream_chat({"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "session_id": sid}))
    code, console, _ = run_chat(api, [], session_id=sid)
    assert code == 0
    out = console.out.getvalue()
    assert "… 4 earlier messages\nyou> q2\n" in out
    assert "q1" not in out


def test_search(api: FakeApi) -> None:
    code, console, _ = run_chat(api, ["I live in Lyon", "/search lyon", "/search", "/search nowhere"])
    assert code == 0
    out, err = console.out.getvalue(), console.err.getvalue()
    assert "  0.87  [user] I live in Lyon  (this session)\n" in out
    assert "no memory matches" in out
    assert "error: usage: /search <query>" in err


def test_api_errors_are_one_line_and_the_loop_goes_on(api: FakeApi) -> None:
    code, console, repl = run_chat(api, ["/resume sess_404", "/bogus", "/resume", "still here"])
    assert code == 0
    assert console.err.getvalue().splitlines() == [
        "error: No session found. (HTTP 404, invalid_request_error, not_found)",
        "error: unknown command /bogus; /help lists the commands",
        "error: usage: /resume <session id> (/sessions lists them)",
    ]
    assert repl.session_id == "sess_1"
    assert "assistant> Hello from the mesh.\n" in console.out.getvalue()


def test_error_in_the_middle_of_a_reply(api: FakeApi) -> None:
    api.fail_chat_midway = True
    code, console, _ = run_chat(api, ["Hi", "/help"])
    assert code == 0
    assert "assistant> Hello\n" in console.out.getvalue()
    assert console.err.getvalue() == "error: the engine stopped (server_error)\n"
    assert "/forget" in console.out.getvalue()  # the help came after


def test_error_before_any_reply_text(api: FakeApi) -> None:
    code, console, repl = run_chat(api, ["/forget"])
    assert code == 0
    del api.sessions[repl.session_id]  # gone behind the chat's back
    with pytest.raises(ApiError, match="No session found"):  # the loop prints it
        repl.handle("Hi")
    assert console.out.getvalue().endswith("assistant> \n")  # not "(empty reply)"


def test_ctrl_c_during_a_command_keeps_the_chat(api: FakeApi) -> None:
    class SlowClient(MeshClient):
        def list_sessions(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
            raise KeyboardInterrupt

    console = Console(["/sessions", "Hi"])
    client = SlowClient("http://fake/v1", transport=httpx.MockTransport(api.handle))
    repl = ChatRepl(client, ChatOptions(model="m"), read=console.read, out=console.out, err=console.err)
    assert repl.run() == 0
    assert "you> /sessions\n [cancelled]\nyou> Hi\nassistant> Hello from the mesh.\n" in console.out.getvalue()


def test_resuming_a_missing_session_at_start_fails(api: FakeApi) -> None:
    code, console, _ = run_chat(api, ["never read"], session_id="sess_404")
    assert code == 1
    assert console.err.getvalue().startswith("error: No session found.")


def test_ctrl_c_at_the_prompt_keeps_going_and_ctrl_c_in_a_reply_stops_it(api: FakeApi) -> None:
    typed = iter(["KI", "Hi", "/quit"])

    def read(prompt: str) -> str:
        line = next(typed)
        if line == "KI":
            raise KeyboardInterrupt
        return line

    class InterruptingClient(MeshClient):
        def stream_chat(self, body: dict[str, Any]) -> Generator[ChatChunk, None, None]:
            yield ChatChunk(text="Hel")
            raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    client = InterruptingClient("http://fake/v1", transport=httpx.MockTransport(api.handle))
    assert ChatRepl(client, ChatOptions(model="m"), read=read, out=out, err=err).run() == 0
    assert "assistant> Hel [stopped]\n" in out.getvalue()


# -- llmmesh keys, against the real Redis-protocol server


async def _llmmesh(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs ``llmmesh argv`` (in a thread: it runs its own event loop); exit code, out, err."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(captured_err: str, out: str) -> str:
    lines = captured_err.strip().splitlines()
    assert len(lines) == 1, captured_err
    assert "Traceback" not in captured_err + out
    assert lines[0].startswith("error: ")
    return lines[0]


def test_keys_redis_url_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMMESH_REDIS_URL", raising=False)
    assert resolve_settings(build_parser().parse_args(["keys", "list"])).redis_url == DEFAULT_REDIS_URL
    assert DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"

    monkeypatch.setenv("LLMMESH_REDIS_URL", "redis://env:1/2")
    assert resolve_settings(build_parser().parse_args(["keys", "list"])).redis_url == "redis://env:1/2"
    for argv in (
        ["keys", "--redis-url", "redis://flag:3/0", "revoke", "key_1"],
        ["keys", "revoke", "key_1", "--redis-url", "redis://flag:3/0"],
    ):
        args = build_parser().parse_args(argv)
        assert resolve_settings(args).redis_url == "redis://flag:3/0"
        assert (args.keys_action, args.key_id) == ("revoke", "key_1")


@pytest.mark.parametrize(
    "argv",
    [["keys"], ["keys", "create"], ["keys", "create", "--tenant", " "], ["keys", "revoke"], ["keys", "rotate"]],
)
def test_keys_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: llmmesh keys" in capsys.readouterr().err


async def test_keys_create_list_revoke(valkey_url: str, tenant: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await _llmmesh(capsys, "keys", "create", "--redis-url", valkey_url, "--tenant", tenant)
    assert (code, err) == (0, "")
    fields = dict(line.split(maxsplit=1) for line in out.splitlines() if line.startswith(("key ", "id ", "tenant ")))
    key, key_id = fields["key"], fields["id"]
    assert fields["tenant"] == tenant
    assert "cannot be shown again" in out

    store = KeyStore.from_url(valkey_url)
    try:
        found = await store.lookup(key)
        assert found is not None
        assert (found.id, found.tenant, found.name) == (key_id, tenant, "")

        code, out, err = await _llmmesh(
            capsys, "keys", "--redis-url", valkey_url, "create", "--tenant", tenant, "--name", "ci runner"
        )
        assert code == 0
        named_id = dict(line.split(maxsplit=1) for line in out.splitlines() if line.startswith("id "))["id"]
        other_key, other = await store.create(tenant + "-other")

        code, out, err = await _llmmesh(capsys, "keys", "list", "--redis-url", valkey_url, "--tenant", tenant)
        assert (code, err) == (0, "")
        header, *rows = out.strip().splitlines()
        assert header.split() == ["ID", "TENANT", "NAME", "CREATED", "(UTC)", "HINT", "RPM", "TPM", "STREAMS", "MODELS"]
        by_id = {row.split()[0]: row for row in rows}  # keys made in the same second: any order
        assert set(by_id) == {key_id, named_id}
        assert by_id[key_id].split()[:3] == [key_id, tenant, "-"]
        assert "ci runner" in by_id[named_id]
        assert found.hint + "…" in by_id[key_id]
        assert key not in out
        assert other.id not in out

        code, out, err = await _llmmesh(capsys, "keys", "list", "--redis-url", valkey_url)  # every tenant
        assert code == 0
        assert key_id in out
        assert named_id in out
        assert other.id in out
        assert key not in out
        assert other_key not in out

        code, out, err = await _llmmesh(capsys, "keys", "revoke", key_id, "--redis-url", valkey_url)
        assert (code, err) == (0, "")
        assert key_id in out
        assert await store.lookup(key) is None
        assert await store.lookup(other_key) is not None

        code, out, err = await _llmmesh(capsys, "keys", "revoke", key_id, "--redis-url", valkey_url)
        assert (code, out) == (1, "")
        assert key_id in _one_error_line(err, out)

        code, out, err = await _llmmesh(capsys, "keys", "list", "--redis-url", valkey_url, "--tenant", tenant)
        assert code == 0
        assert key_id not in out
        assert named_id in out

        code, out, err = await _llmmesh(capsys, "keys", "list", "--redis-url", valkey_url, "--tenant", tenant + "-none")
        assert (code, out.strip()) == (0, f"no keys for tenant {tenant}-none")
    finally:
        await store.close()


async def test_keys_create_with_limits_and_list_them(
    valkey_url: str, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await _llmmesh(
        capsys,
        "keys",
        "create",
        "--redis-url",
        valkey_url,
        "--tenant",
        tenant,
        "--rpm",
        "60",
        "--tpm",
        "0",
        "--max-streams",
        "2",
        "--model",
        "smollm2-135m-instruct",
        "--model",
        "llmmesh",
    )
    assert (code, err) == (0, "")
    fields = dict(line.split(maxsplit=1) for line in out.splitlines() if line.startswith(("key ", "id ", "limits ")))
    assert fields["limits"] == "rpm 60; tpm unlimited; max-streams 2; models smollm2-135m-instruct, llmmesh"
    code, out, err = await _llmmesh(capsys, "keys", "create", "--redis-url", valkey_url, "--tenant", tenant)
    plain_id = dict(line.split(maxsplit=1) for line in out.splitlines() if line.startswith("id "))["id"]
    assert "limits" not in out

    store = KeyStore.from_url(valkey_url)
    try:
        found = await store.lookup(fields["key"])
        assert found is not None
        assert found.limits == KeyLimits(rpm=60, tpm=0, max_streams=2, models=("smollm2-135m-instruct", "llmmesh"))
    finally:
        await store.close()

    code, out, err = await _llmmesh(capsys, "keys", "list", "--redis-url", valkey_url, "--tenant", tenant)
    assert (code, err) == (0, "")
    rows = {row.split()[0]: row.split() for row in out.strip().splitlines()[1:]}
    assert rows[fields["id"]][-4:] == ["60", "unlimited", "2", "smollm2-135m-instruct,llmmesh"]
    assert rows[plain_id][-4:] == ["-", "-", "-", "all"]  # the gateway's defaults


@pytest.mark.parametrize("flags", [["--rpm", "-1"], ["--tpm", "lots"], ["--max-streams", "1.5"], ["--model", " "]])
def test_keys_create_refuses_bad_limits(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--tenant", "t", *flags])
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize("action", [["list"], ["create", "--tenant", "t"], ["revoke", "key_1"]])
async def test_keys_with_redis_down_is_one_line_and_exit_1(
    action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:secret-password@127.0.0.1:{free_port()}/0"
    code, out, err = await _llmmesh(capsys, "keys", "--redis-url", url, *action)
    assert (code, out) == (1, "")
    line = _one_error_line(err, out)
    assert line.startswith("error: cannot reach the key store at redis://:***@127.0.0.1:")
    assert "secret-password" not in err


async def test_keys_with_an_invalid_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await _llmmesh(capsys, "keys", "--redis-url", "http://127.0.0.1:6379", "list")
    assert (code, out) == (1, "")
    assert _one_error_line(err, out).startswith("error: invalid Redis URL http://127.0.0.1:6379")
