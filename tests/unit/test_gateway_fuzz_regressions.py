"""What the fuzz run against the stack (tests/integration/test_fuzz.py) found, kept here in the
fast tier on the in-process mesh, each a request that once got a 5xx or an error not in OpenAI's
shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.inference.embedder import Embedder
from services.inference.tokenizer import ChatTokenizer
from tests.unit.mesh import MODEL, Mesh, MeshOptions, in_process_mesh


@pytest.fixture(scope="module")
async def mesh(
    valkey_url: str, tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: ChatTokenizer, embedder: Embedder
) -> AsyncIterator[Mesh]:
    tmp_path = tmp_path_factory.mktemp("fuzz-regressions")
    async with in_process_mesh(valkey_url, tmp_path, smollm2_tokenizer, embedder, MeshOptions()) as running:
        yield running


def _openai_error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# The session id is echoed in the X-Session-Id response header: one that is no valid header
# value (not Latin-1, or a control character) failed the response after the answer was made:
# a 500, or a connection the gateway dropped (Envoy's plain-text 503).
UNFIT_SESSION_IDS = ["caf\u00e9", "\U00072be5", "a\r\nX-Injected: 1", "nul\x00byte", "tab\there", "x" * 257]


@pytest.mark.parametrize("session_id", UNFIT_SESSION_IDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_session_id_unfit_for_a_header_is_a_400_naming_it(mesh: Mesh, session_id: str, stream: bool) -> None:
    response = await mesh.chat("hi", session_id=session_id, stream=stream)

    assert response.status_code == 400
    assert _openai_error(response.json())["param"] == "session_id"


async def test_an_x_session_id_header_unfit_to_echo_is_a_400(mesh: Mesh) -> None:
    response = await mesh.http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={b"X-Session-Id": "caf\u00e9".encode("latin-1")},
    )

    assert response.status_code == 400
    assert "X-Session-Id" in str(_openai_error(response.json())["param"])


@pytest.mark.parametrize("session_id", ["caf\u00e9", "a b"])
async def test_a_session_cannot_be_created_under_an_id_unfit_for_a_header(mesh: Mesh, session_id: str) -> None:
    response = await mesh.http.post("/v1/sessions", json={"id": session_id})

    assert response.status_code == 400
    assert _openai_error(response.json())["param"] == "id"


async def test_a_fit_session_id_is_echoed_in_body_and_header(mesh: Mesh) -> None:
    session_id = "user-42:chat_1.a"

    plain = await mesh.chat("hi", session_id=session_id)
    streamed = await mesh.chat("hi", session_id=session_id, stream=True)
    created = await mesh.http.post("/v1/sessions", json={"id": "Made_By:client-7"})

    assert (plain.status_code, streamed.status_code, created.status_code) == (200, 200, 200)
    assert plain.json()["session_id"] == session_id
    assert plain.headers["x-session-id"] == streamed.headers["x-session-id"] == session_id
    assert created.json()["id"] == "Made_By:client-7"


async def test_usage_up_to_the_first_day_of_the_calendar_is_read_not_a_500(mesh: Mesh) -> None:
    # The default week before end_date reached past 0001-01-01: an OverflowError.
    response = await mesh.http.get("/v1/usage", params={"end_date": "0001-01-01"})

    assert response.status_code == 200
    assert [bucket["date"] for bucket in response.json()["data"]] == ["0001-01-01"]


async def test_a_top_k_beyond_int32_is_never_a_500(mesh: Mesh) -> None:
    # top_k travels as a proto int32: a larger one failed the conversion (a ValueError, a 500).
    response = await mesh.chat("hi", top_k=2**40)

    assert response.status_code < 500
    if response.status_code >= 400:
        assert _openai_error(response.json())["param"] == "top_k"
