"""Bad input against a real ``guarita serve`` process: every malformed, mistyped, unknown,
oversized or unauthenticated request gets a 4xx in OpenAI's error format, with a message
that says what was wrong and the ``x-request-id`` header, never a 500.

The server runs only ``scripted`` models (no LLM needed) with a 64 KiB body limit; most
tests use the embedded SQLite store, the store-sensitive ones also PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import GuaritaServer, create_pg_database, drop_pg_database

MAX_BODY = 65_536
CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted"}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
    "server": {"max_body_bytes": MAX_BODY},
    # the body limit is what is tested: messages may be as long as a body
    "guard": {"input": {"max_message_chars": MAX_BODY}},
    # No key cache, so a revocation made with the CLI applies to the very next request.
    "auth": {"key_cache_ttl_s": 0},
}
JSON = {"content-type": "application/json"}

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
AGENT_CHAT = "/api/chat"
TASKS = "/api/tasks"
VALID_BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    EMBEDDINGS: {"model": "m", "input": "hi"},
    AGENT_CHAT: {"message": "hi"},
    TASKS: {"message": "hi"},
}
POSTS = list(VALID_BODIES)


def start_server(workdir: Path, store_url: str | None = None) -> tuple[GuaritaServer, str]:
    server = GuaritaServer(workdir, CONFIG, store_url=store_url)
    key = server.create_key("bad-input")
    server.start()
    return server, key


@pytest.fixture(scope="module")
def server_and_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuaritaServer, str]]:
    server, key = start_server(tmp_path_factory.mktemp("bad-input"))
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def server(server_and_key: tuple[GuaritaServer, str]) -> GuaritaServer:
    return server_and_key[0]


@pytest.fixture(scope="module")
def key(server_and_key: tuple[GuaritaServer, str]) -> str:
    return server_and_key[1]


@pytest.fixture(scope="module")
def client(server: GuaritaServer, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(server: GuaritaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


def assert_error(
    response: httpx.Response,
    status: int,
    error_type: str,
    *,
    code: str | None = None,
    param: str | None = None,
    says: str | None = None,
) -> dict[str, Any]:
    """The response is ``status`` with exactly OpenAI's error object and a request id."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert re.fullmatch(r"[!-~]{1,128}", response.headers.get("x-request-id", "")), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert error["type"] == error_type, error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    if says is not None:
        assert says.lower() in error["message"].lower(), error
    return error


def post_raw(client: httpx.Client, path: str, content: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=content, headers={**JSON, **headers})


# -- the baseline: the same server does answer good requests ------------------------------


@pytest.mark.parametrize("path", POSTS)
def test_valid_requests_succeed(client: httpx.Client, path: str) -> None:
    response = client.post(path, json=VALID_BODIES[path])
    assert response.status_code == (202 if path == TASKS else 200), response.text
    assert "x-request-id" in response.headers


# -- malformed and non-object JSON --------------------------------------------------------


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "raw",
    [b"{bad", b'{"model": "m",', b"{'message': 'single quotes'}", b'{"a": 1} trailing', b"nul"],
)
def test_malformed_json(client: httpx.Client, path: str, raw: bytes) -> None:
    assert_error(
        post_raw(client, path, raw),
        400,
        "invalid_request_error",
        code="invalid_body",
        says="invalid JSON body",
    )


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "an array"),
        (b'[{"message": "hi"}]', "an array"),
        (b'"hello"', "a string"),
        (b"null", "null"),
        (b"42", "a number"),
        (b"true", "a boolean"),
    ],
)
def test_non_object_json(client: httpx.Client, path: str, raw: bytes, kind: str) -> None:
    assert_error(
        post_raw(client, path, raw),
        400,
        "invalid_request_error",
        code="invalid_body",
        says=f"must be a JSON object, not {kind}",
    )


@pytest.mark.parametrize("path", POSTS)
def test_empty_body(client: httpx.Client, path: str) -> None:
    assert_error(
        post_raw(client, path, b""),
        400,
        "invalid_request_error",
        code="invalid_body",
        says="body is required",
    )


@pytest.mark.parametrize("path", POSTS)
def test_invalid_utf8(client: httpx.Client, path: str) -> None:
    raw = b'{"message": "\xff\xfe\xc3", "model": "m"}'
    assert_error(
        post_raw(client, path, raw), 400, "invalid_request_error", code="invalid_body", says="UTF-8"
    )


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("depth", [200, 20_000])
def test_deeply_nested_json(client: httpx.Client, path: str, depth: int) -> None:
    """Past the JSON parser's recursion limit, and past what encoders upstream accept."""
    raw = b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert_error(
        post_raw(client, path, raw),
        400,
        "invalid_request_error",
        code="invalid_body",
        says="nested",
    )


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        (
            CHAT,
            rb'{"model": "m", "messages": [{"role": "user", "content": "\ud800"}]}',
            "messages.0.content",
        ),
        (
            CHAT,
            rb'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ["\udfff"]}',
            "x.0",
        ),
        (
            CHAT,
            rb'{"model": "m", "messages": [{"role": "user", "name": "a\ud83d", "content": ""}]}',
            "messages.0.name",
        ),
        (EMBEDDINGS, rb'{"model": "m", "input": ["ok", "\ud800"]}', "input.1"),
        (AGENT_CHAT, rb'{"message": "\ud800"}', "message"),
        (TASKS, rb'{"message": "hi \udc00 there"}', "message"),
    ],
)
def test_unpaired_surrogates(client: httpx.Client, path: str, raw: bytes, param: str) -> None:
    """Escaped lone surrogates parse as JSON but are not Unicode: nothing can encode them."""
    assert_error(
        post_raw(client, path, raw),
        400,
        "invalid_request_error",
        code="invalid_body",
        param=param,
        says="not valid Unicode",
    )


def test_paired_surrogates_are_fine(client: httpx.Client) -> None:
    raw = rb'{"model": "m", "messages": [{"role": "user", "content": "smile \ud83d\ude00"}]}'
    response = post_raw(client, CHAT, raw)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: smile \U0001f600"


# -- content type ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_wrong_content_type(client: httpx.Client, path: str, content_type: str) -> None:
    raw = json.dumps(VALID_BODIES[path]).encode()
    error = assert_error(
        post_raw(client, path, raw, **{"content-type": content_type}),
        400,
        "invalid_request_error",
        code="invalid_body",
        says="Content-Type",
    )
    assert content_type in error["message"]


@pytest.mark.parametrize("path", POSTS)
def test_missing_content_type(client: httpx.Client, path: str) -> None:
    raw = json.dumps(VALID_BODIES[path]).encode()
    request = client.build_request("POST", path, content=raw)
    assert "content-type" not in request.headers  # httpx sets none for raw bytes
    assert_error(
        client.send(request), 400, "invalid_request_error", code="invalid_body", says="Content-Type"
    )


@pytest.mark.parametrize("path", POSTS)
def test_json_subtype_content_type_is_accepted(client: httpx.Client, path: str) -> None:
    raw = json.dumps(VALID_BODIES[path]).encode()
    response = post_raw(client, path, raw, **{"content-type": "application/json; charset=utf-8"})
    assert response.status_code in (200, 202), response.text


# -- wrong types and values -----------------------------------------------------------------

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "m", "messages": "hi"}, "messages", "valid list"),
        ({"model": "m", "messages": {"role": "user"}}, "messages", "valid list"),
        ({"model": "m", "messages": []}, "messages", "at least 1"),
        ({"model": "m", "messages": [None]}, "messages.0", None),
        ({"model": "m", "messages": ["hi"]}, "messages.0", None),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role", "required"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
            "'user'",
        ),
        ({"model": "m", "messages": [{"role": 1, "content": "hi"}]}, "messages.0.role", None),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, None, "messages.0.content"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            },
            None,
            "text",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            None,
            "type",
        ),
        ({"model": "m", "messages": USER_HI, "temperature": "hot"}, "temperature", "number"),
        ({"model": "m", "messages": USER_HI, "temperature": 2.5}, "temperature", "less than"),
        ({"model": "m", "messages": USER_HI, "temperature": -1}, "temperature", "greater than"),
        ({"model": "m", "messages": USER_HI, "top_p": 1.5}, "top_p", None),
        ({"model": "m", "messages": USER_HI, "stream": "yes"}, "stream", "boolean"),
        ({"model": "m", "messages": USER_HI, "stream": 1}, "stream", "boolean"),
        ({"model": "m", "messages": USER_HI, "max_tokens": -1}, "max_tokens", "greater than"),
        ({"model": "m", "messages": USER_HI, "max_tokens": 0}, "max_tokens", "greater than"),
        ({"model": "m", "messages": USER_HI, "max_tokens": 1.5}, "max_tokens", "integer"),
        ({"model": "m", "messages": USER_HI, "max_tokens": "ten"}, "max_tokens", "integer"),
        (
            {"model": "m", "messages": USER_HI, "max_completion_tokens": 0},
            "max_completion_tokens",
            None,
        ),
        ({"model": "m", "messages": USER_HI, "n": 0}, "n", None),
        ({"model": "m", "messages": USER_HI, "n": 11}, "n", None),
        ({"model": "m", "messages": USER_HI, "stop": 7}, None, "stop"),
        ({"model": "m", "messages": USER_HI, "seed": 2**70}, "seed", "64-bit"),
        ({"model": "m", "messages": USER_HI, "seed": "lucky"}, "seed", "integer"),
        (
            {"model": "m", "messages": USER_HI, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            None,
        ),
        ({"model": "m", "messages": USER_HI, "user": "u" * 300}, "user", "at most"),
        (
            {"model": "m", "messages": USER_HI, "some_extension": -(2**64)},
            "some_extension",
            "64-bit",
        ),
        ({"model": "", "messages": USER_HI}, "model", "at least 1"),
        ({"model": 42, "messages": USER_HI}, "model", "string"),
        ({"model": None, "messages": USER_HI}, "model", "string"),
        ({"messages": USER_HI}, "model", "required"),
        ({"model": "m"}, "messages", "required"),
        ({}, "model", "required"),
    ],
)
def test_chat_completions_wrong_types(
    client: httpx.Client, body: dict[str, Any], param: str | None, says: str | None
) -> None:
    error = assert_error(
        client.post(CHAT, json=body), 400, "invalid_request_error", code="invalid_body", says=says
    )
    if param is not None:
        assert error["param"] == param, error
        assert error["message"].startswith(param), error  # the message names the field


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": [1, 2, 3]}, "input"),
        ({"model": "m", "input": [["nested"]]}, "input"),
        ({"model": "m", "input": None}, "input"),
        ({"model": "m"}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": ["m"], "input": "hi"}, "model"),
        ({"model": "m", "input": "hi", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_embeddings_wrong_types(client: httpx.Client, body: dict[str, Any], says: str) -> None:
    assert_error(
        client.post(EMBEDDINGS, json=body),
        400,
        "invalid_request_error",
        code="invalid_body",
        says=says,
    )


@pytest.mark.parametrize("path", [AGENT_CHAT, TASKS])
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"message": ""}, "message"),
        ({"message": 5}, "message"),
        ({"message": ["hi"]}, "message"),
        ({"message": None}, "message"),
        ({"message": "a\u0000b"}, "message"),
        ({}, "message"),
        ({"msg": "hi"}, "message"),
        ({"message": "hi", "unexpected": 1}, "unexpected"),
        ({"message": "hi", "session_id": "not a valid id!"}, "session_id"),
        ({"message": "hi", "session_id": ""}, "session_id"),
        ({"message": "hi", "session_id": "s" * 65}, "session_id"),
        ({"message": "hi", "session_id": 7}, "session_id"),
        ({"message": "hi", "agent": ""}, "agent"),
        ({"message": "hi", "agent": 3}, "agent"),
    ],
)
def test_agent_api_wrong_types(
    client: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    response = client.post(path, json=body)
    error = assert_error(response, 400, "invalid_request_error", code="invalid_body", param=param)
    assert param in error["message"], error


# -- unknown model, agent, task -------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize("model", ["no-such-model", "M", "gpt-4o", "m ", "ünïcødé"])
def test_unknown_model(client: httpx.Client, path: str, model: str) -> None:
    body = {**VALID_BODIES[path], "model": model}
    error = assert_error(
        client.post(path, json=body), 404, "not_found_error", code="model_not_found", param="model"
    )
    assert repr(model) in error["message"], error


def test_unknown_model_streaming(client: httpx.Client) -> None:
    """A stream that cannot start fails with a plain JSON error, not an event stream."""
    body = {**VALID_BODIES[CHAT], "model": "no-such-model", "stream": True}
    assert_error(client.post(CHAT, json=body), 404, "not_found_error", code="model_not_found")


def test_agent_names_are_models(client: httpx.Client) -> None:
    """Agents are addressable as models; that is why an unknown one is a 404, not a 400."""
    response = client.post(CHAT, json={**VALID_BODIES[CHAT], "model": "a"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", [AGENT_CHAT, TASKS])
@pytest.mark.parametrize("agent", ["no-such-agent", "m", "A"])
def test_unknown_agent(client: httpx.Client, path: str, agent: str) -> None:
    error = assert_error(
        client.post(path, json={"message": "hi", "agent": agent}),
        404,
        "not_found_error",
        code="agent_not_found",
        param="agent",
    )
    assert repr(agent) in error["message"], error


@pytest.mark.parametrize(
    "task_id",
    [
        "task_000000000000000000000000",
        "nope",
        "x" * 3000,
        "%C3%A9t%C3%A9",
        "%FF%FE",
        "%00",
        "a%00b",
        "task_%20x",
        "%F0%9F%98%80",
    ],
)
def test_unknown_task(client: httpx.Client, task_id: str) -> None:
    assert_error(
        client.get(f"/api/tasks/{task_id}"),
        404,
        "not_found_error",
        code="task_not_found",
        param="task_id",
    )


def test_other_callers_task_is_not_found(server: GuaritaServer, client: httpx.Client) -> None:
    created = client.post(TASKS, json={"message": "mine"})
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    assert client.get(f"/api/tasks/{task_id}").status_code == 200
    other = server.create_key("someone-else")
    response = httpx.get(
        f"{server.base_url}/api/tasks/{task_id}",
        headers={"authorization": f"Bearer {other}"},
        timeout=30,
    )
    assert_error(response, 404, "not_found_error", code="task_not_found")


# -- oversized bodies -----------------------------------------------------------------------


def oversized(path: str) -> bytes:
    """A well-formed request of the endpoint whose text alone exceeds the limit."""
    body = dict(VALID_BODIES[path])
    filler = "x" * (MAX_BODY + 1024)
    if path == CHAT:
        body["messages"] = [{"role": "user", "content": filler}]
    elif path == EMBEDDINGS:
        body["input"] = filler
    else:
        body["message"] = filler
    return json.dumps(body).encode()


@pytest.mark.parametrize("path", POSTS)
def test_oversized_body_with_content_length(client: httpx.Client, path: str) -> None:
    raw = oversized(path)
    request = client.build_request("POST", path, content=raw, headers=JSON)
    assert request.headers["content-length"] == str(len(raw))
    error = assert_error(
        client.send(request), 413, "invalid_request_error", code="payload_too_large"
    )
    assert str(MAX_BODY) in error["message"]


@pytest.mark.parametrize("path", POSTS)
def test_oversized_body_chunked(client: httpx.Client, path: str) -> None:
    raw = oversized(path)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    request = client.build_request("POST", path, content=pieces(), headers=JSON)
    assert request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in request.headers
    error = assert_error(
        client.send(request), 413, "invalid_request_error", code="payload_too_large"
    )
    assert str(MAX_BODY) in error["message"]


def test_body_just_under_the_limit_is_served(client: httpx.Client) -> None:
    text = "y" * (MAX_BODY - 200)
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 3}
    raw = json.dumps(body).encode()
    assert len(raw) <= MAX_BODY

    def pieces() -> Iterator[bytes]:
        yield raw[: len(raw) // 2]
        yield raw[len(raw) // 2 :]

    for content in (raw, pieces()):
        response = client.post(CHAT, content=content, headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].startswith("echo: yyy")


def test_server_still_serves_after_oversized_bodies(client: httpx.Client) -> None:
    for _ in range(3):
        response = client.post(CHAT, content=iter([oversized(CHAT)]), headers=JSON)
        assert response.status_code == 413
        ok = client.post(CHAT, json=VALID_BODIES[CHAT])
        assert ok.status_code == 200, ok.text


# -- authentication -------------------------------------------------------------------------

AUTH_ROUTES = [("POST", p) for p in POSTS] + [("GET", "/v1/models"), ("GET", "/api/tasks/x")]


@pytest.mark.parametrize(("method", "path"), AUTH_ROUTES)
@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Bearer", "missing API key"),
        ("Token gua_abc", "missing API key"),
        ("Basic dXNlcjpwYXNz", "missing API key"),
        ("gua_no_scheme", "missing API key"),
        ("Bearer wrong", "invalid or revoked"),
        ("Bearer gua_" + "A" * 43, "invalid or revoked"),
    ],
)
def test_missing_or_invalid_key(
    anonymous: httpx.Client, method: str, path: str, authorization: str | None, says: str
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    body = VALID_BODIES.get(path)
    response = anonymous.request(method, path, json=body, headers=headers)
    assert_error(response, 401, "authentication_error", code="invalid_api_key", says=says)


def test_invalid_key_is_not_echoed(anonymous: httpx.Client) -> None:
    secret = "gua_" + "S3cr3t" * 7
    response = anonymous.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    error = assert_error(response, 401, "authentication_error")
    assert secret not in response.text and secret[:12] not in error["message"]


def test_revoked_key(server: GuaritaServer) -> None:
    created = server.cli("keys", "create", "--name", "to-revoke")
    secret = created.stdout.strip()
    found = re.search(r"created key (key_[0-9a-f]+)", created.stderr)
    assert found, created.stderr
    headers = {"authorization": f"Bearer {secret}"}
    before = httpx.post(
        server.base_url + CHAT, json=VALID_BODIES[CHAT], headers=headers, timeout=30
    )
    assert before.status_code == 200, before.text

    server.cli("keys", "revoke", found.group(1))
    for method, path in AUTH_ROUTES:
        response = httpx.request(
            method, server.base_url + path, json=VALID_BODIES.get(path), headers=headers, timeout=30
        )
        assert_error(response, 401, "authentication_error", code="invalid_api_key", says="revoked")


# -- routes and methods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/v1/completions"),
        ("GET", "/"),
        ("POST", "/api/chats"),
        ("GET", "/v1/chat/completions/extra"),
        ("GET", "/%00"),
        ("DELETE", "/v2/models"),
    ],
)
def test_unknown_route(client: httpx.Client, method: str, path: str) -> None:
    error = assert_error(client.request(method, path), 404, "not_found_error", code="unknown_url")
    assert method in error["message"]


def test_unknown_route_without_key_is_still_a_404(anonymous: httpx.Client) -> None:
    assert_error(anonymous.get("/v1/nope"), 404, "not_found_error")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", CHAT, "POST"),
        ("GET", EMBEDDINGS, "POST"),
        ("DELETE", AGENT_CHAT, "POST"),
        ("GET", TASKS, "POST"),
        ("DELETE", "/api/tasks/x", "GET"),
        ("POST", "/v1/models", "GET"),
        ("PATCH", "/health", "GET"),
    ],
)
def test_wrong_method(client: httpx.Client, method: str, path: str, allowed: str) -> None:
    response = client.request(method, path)
    error = assert_error(response, 405, "invalid_request_error", code="method_not_allowed")
    assert allowed in response.headers["allow"]
    assert method in error["message"] and allowed in error["message"]


# -- request ids on errors ------------------------------------------------------------------


def test_error_echoes_a_valid_request_id(client: httpx.Client) -> None:
    response = client.post(CHAT, content=b"{bad", headers={**JSON, "x-request-id": "req-abc.123"})
    assert_error(response, 400, "invalid_request_error")
    assert response.headers["x-request-id"] == "req-abc.123"


@pytest.mark.parametrize("request_id", ["has space", "x" * 129, "ünï", ""])
def test_error_replaces_an_invalid_request_id(client: httpx.Client, request_id: str) -> None:
    headers: dict[str, str | bytes] = {**JSON, "x-request-id": request_id.encode()}
    response = client.post(CHAT, content=b"{bad", headers=headers)
    assert_error(response, 400, "invalid_request_error")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


# -- the official OpenAI SDK sees typed errors ----------------------------------------------


@pytest.fixture(scope="module")
def sdk(server: GuaritaServer, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0) as c:
        yield c


def test_sdk_unknown_model(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "'no-such-model' does not exist" in caught.value.message
    assert caught.value.request_id


def test_sdk_unknown_embedding_model(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.embeddings.create(model="no-such-model", input="hi")
    assert caught.value.code == "model_not_found"


def test_sdk_unknown_model_streaming(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(
            model="no-such-model", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("api_key", ["wrong", "gua_" + "B" * 43])
def test_sdk_bad_key(server: GuaritaServer, api_key: str) -> None:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=api_key, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 401
        assert caught.value.type == "authentication_error"
        assert "invalid or revoked API key" in caught.value.message
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 50}, "n"),
    ],
)
def test_sdk_bad_request(sdk: openai.OpenAI, kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="m", **kwargs)
    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_body"
    assert says in caught.value.message
    assert caught.value.param == says


def test_sdk_bad_embedding_request(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="m", input=[])
    assert "input" in caught.value.message


# -- store-sensitive input, on PostgreSQL too -----------------------------------------------


@pytest.fixture(scope="module")
def pg_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    name, url = create_pg_database()
    try:
        server, key = start_server(tmp_path_factory.mktemp("bad-input-pg"), store_url=url)
        try:
            with httpx.Client(
                base_url=server.base_url, timeout=30, headers={"authorization": f"Bearer {key}"}
            ) as c:
                yield c
        finally:
            server.stop()
    finally:
        drop_pg_database(name)


@pytest.mark.parametrize("path", [AGENT_CHAT, TASKS])
@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (rb'{"message": "a\u0000b"}', 400, "message"),
        (rb'{"message": "\ud800"}', 400, "message"),
        (rb'{"message": "hi", "session_id": "\u0000"}', 400, "session_id"),
        (rb'{"message": "hi", "agent": "a\u0000"}', 404, "agent"),
    ],
)
def test_postgres_unstorable_text(
    pg_client: httpx.Client, path: str, raw: bytes, status: int, param: str
) -> None:
    """PostgreSQL text cannot hold NUL or lone surrogates: refused before reaching the store."""
    error_type = "invalid_request_error" if status == 400 else "not_found_error"
    assert_error(post_raw(pg_client, path, raw), status, error_type, param=param)
    ok = pg_client.post(path, json={"message": "still works"})
    assert ok.status_code in (200, 202), ok.text


@pytest.mark.parametrize("task_id", ["nope", "%C3%A9", "%FF", "x" * 3000])
def test_postgres_unknown_task(pg_client: httpx.Client, task_id: str) -> None:
    assert_error(
        pg_client.get(f"/api/tasks/{task_id}"), 404, "not_found_error", code="task_not_found"
    )


def test_postgres_task_id_with_nul(pg_client: httpx.Client) -> None:
    assert_error(pg_client.get("/api/tasks/a%00b"), 404, "not_found_error", code="task_not_found")
