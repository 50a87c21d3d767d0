"""Property-based fuzz of the HTTP API against a real ``guarita serve`` process.

Whatever the body, the headers or the path, the server answers below 500; every 4xx is
OpenAI's ``{"error": {...}}`` with a message; every success has its endpoint's shape.
Inputs: arbitrary JSON (lone surrogates, NaN, huge numbers, control characters, deep
nesting), structurally mutated valid requests, random bytes under random content types,
random ``x-request-id`` values and random task ids. Only ``scripted`` models: no LLM.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import GuaritaServer

MAX_BODY = 65_536
CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted"}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
    "server": {"max_body_bytes": MAX_BODY},
}
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
AGENT_CHAT = "/api/chat"
TASKS = "/api/tasks"
POSTS = [CHAT, EMBEDDINGS, AGENT_CHAT, TASKS]
JSON = {"content-type": "application/json"}
ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
FIELDS = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "stream",
    "stream_options",
    "include_usage",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "seed",
    "user",
    "input",
    "encoding_format",
    "message",
    "session_id",
    "agent",
    "tools",
    "image_url",
]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server_and_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuaritaServer, str]]:
    server = GuaritaServer(tmp_path_factory.mktemp("fuzz"), CONFIG)
    key = server.create_key("fuzz")
    server.start()
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def server(server_and_key: tuple[GuaritaServer, str]) -> GuaritaServer:
    return server_and_key[0]


@pytest.fixture(scope="module")
def client(server_and_key: tuple[GuaritaServer, str]) -> Iterator[httpx.Client]:
    server, key = server_and_key
    with httpx.Client(
        base_url=server.base_url, timeout=30, headers={"authorization": f"Bearer {key}"}
    ) as c:
        yield c


# -- strategies -----------------------------------------------------------------------------

# Every code point, lone surrogates and control characters included.
any_char = st.characters(exclude_categories=[])
texts = st.one_of(
    st.text(max_size=20),
    st.text(any_char, max_size=8),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\u2028",
            "\ufeff",
            "\ud800",
            "\udfff",
            "a\u0000b",
            "\U0001f600",
            "m",
            "a",
            "user",
            "null",
            "NaN",
            "<script>",
            "x" * 300,
        ]
    ),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(
        [
            0,
            -1,
            1,
            2**31,
            2**53 + 1,
            2**63 - 1,
            2**63,
            2**64 - 1,
            2**64,
            -(2**63) - 1,
            10**30,
            -(10**30),
        ]
    ),
    st.floats(),  # NaN and infinities too: Python's JSON writes NaN/Infinity, and reads them
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, 2.0, 1.0000001]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
keys = st.one_of(st.sampled_from(FIELDS), texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
# Deep nesting, past what encoders upstream take (orjson: 255 levels); deeper than Python's
# JSON parser recursion limit is in test_bad_input (it cannot be written with json.dumps).
deep_values = st.tuples(st.integers(min_value=100, max_value=600), scalars).map(
    lambda t: functools.reduce(
        lambda inner, i: [inner] if i % 2 else {"k": inner}, range(t[0]), t[1]
    )
)
edits = st.one_of(json_values, json_values, json_values, deep_values)


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON text: escaped (``\\ud800``) or raw UTF-8 (surrogates then become invalid bytes)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


content_parts = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["text", "image_url", "input_audio"]), texts)},
    optional={"text": st.one_of(texts, json_values), "image_url": json_values},
)
contents = st.one_of(st.none(), texts, st.lists(content_parts, max_size=3), json_values)
messages = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), texts, json_values)},
    optional={
        "content": contents,
        "name": st.one_of(texts, json_values),
        "tool_calls": json_values,
        "tool_call_id": texts,
    },
)
wild_chat_requests = st.fixed_dictionaries(
    {
        "model": st.one_of(st.sampled_from(["m", "a"]), texts, json_values),
        "messages": st.one_of(st.lists(messages, max_size=4), json_values),
    },
    optional={
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"include_usage": st.one_of(st.booleans(), scalars)}
            ),
            json_values,
        ),
        "temperature": st.one_of(numbers, json_values),
        "top_p": numbers,
        "max_tokens": st.one_of(numbers, json_values),
        "max_completion_tokens": numbers,
        "n": numbers,
        "stop": st.one_of(texts, st.lists(texts, max_size=3), json_values),
        "seed": numbers,
        "user": st.one_of(texts, json_values),
        "tools": json_values,
        "response_format": json_values,
    },
)
# Well-formed requests (any Unicode but lone surrogates), for the mutations to start from:
# with no mutation drawn they must succeed, so the success paths are fuzzed too.
plain_text = st.text(max_size=40)
good_messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(ROLES),
        "content": st.one_of(
            plain_text,
            st.none(),
            st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": plain_text}), max_size=3
            ),
        ),
    },
    optional={"name": st.text(min_size=1, max_size=10)},
)
good_chat_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m", "a"]),
        "messages": st.lists(good_messages, min_size=1, max_size=4),
    },
    optional={
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0, max_value=1),
        "max_tokens": st.integers(min_value=1, max_value=1_000_000),
        "n": st.integers(min_value=1, max_value=10),
        "stop": st.one_of(plain_text, st.lists(plain_text, max_size=3)),
        "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "user": st.text(max_size=50),
        "metadata": st.dictionaries(st.text(max_size=8), plain_text, max_size=3),
    },
)
chat_requests = st.one_of(good_chat_requests, good_chat_requests, wild_chat_requests)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A request, then a few structural edits: drop, replace or add fields at any depth."""
    body = draw(base)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        containers = list(_containers(body))
        target = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if isinstance(target, dict):
            if action == "add" or not target:
                target[draw(keys)] = draw(edits)
            else:
                name = draw(st.sampled_from(sorted(target, key=repr)))
                if action == "drop":
                    del target[name]
                else:
                    target[name] = draw(edits)
        elif action == "add" or not target:
            target.append(draw(edits))
        else:
            index = draw(st.integers(min_value=0, max_value=len(target) - 1))
            if action == "drop":
                del target[index]
            else:
                target[index] = draw(edits)
    return body


def _containers(value: Any) -> Iterator[dict[str, Any] | list[Any]]:
    if isinstance(value, dict | list):
        yield value
        for item in value.values() if isinstance(value, dict) else value:
            yield from _containers(item)


wild_agent_requests = st.fixed_dictionaries(
    {},
    optional={
        "message": st.one_of(st.text(min_size=1, max_size=50), texts, json_values),
        "session_id": st.one_of(
            st.from_regex(r"[A-Za-z0-9_\-.:]{1,64}", fullmatch=True), texts, json_values
        ),
        "agent": st.one_of(st.just("a"), texts, json_values),
    },
)
good_agent_requests = st.fixed_dictionaries(
    {"message": st.text(min_size=1, max_size=50)},
    optional={
        "session_id": st.from_regex(r"[A-Za-z0-9_\-.:]{1,64}", fullmatch=True),
        "agent": st.just("a"),
    },
)
agent_requests = st.one_of(good_agent_requests, good_agent_requests, wild_agent_requests)
wild_embedding_requests = st.fixed_dictionaries(
    {
        "model": st.one_of(st.sampled_from(["m", "a"]), texts),
        "input": st.one_of(texts, st.lists(texts, max_size=3), json_values),
    },
    optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64"]), texts)},
)
good_embedding_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["m", "a"]),
        "input": st.one_of(
            st.text(min_size=1, max_size=40), st.lists(plain_text, min_size=1, max_size=3)
        ),
    },
    optional={"encoding_format": st.sampled_from(["float", "base64"])},
)
embedding_requests = st.one_of(good_embedding_requests, wild_embedding_requests)


# -- the property ---------------------------------------------------------------------------


def check(server: GuaritaServer, path: str, sent: Any, response: httpx.Response) -> None:
    """Below 500; 4xx in OpenAI's error format; successes in the endpoint's shape."""
    where = f"{path} {sent!r:.400} -> {response.status_code} {response.text[:400]}"
    event(f"status {response.status_code}")  # the spread shows with --hypothesis-show-statistics
    if response.status_code >= 500:
        raise AssertionError(
            f"server error: {where}\n--- server log tail ---\n{server.logs()[-4000:]}"
        )
    assert re.fullmatch(r"[!-~]{1,128}", response.headers.get("x-request-id", "")), where
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), where
        body = response.json()
        assert set(body) == {"error"}, where
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, where
        assert isinstance(error["message"], str) and error["message"].strip(), where
        assert isinstance(error["type"], str) and error["type"], where
        assert error["param"] is None or isinstance(error["param"], str), where
        assert error["code"] is None or isinstance(error["code"], str), where
        return
    if path == CHAT:
        _check_chat(response, where)
    elif path == EMBEDDINGS:
        assert response.status_code == 200, where
        data = response.json()["data"]
        assert data and all("embedding" in item for item in data), where
    elif path == AGENT_CHAT:
        assert response.status_code == 200, where
        body = response.json()
        assert isinstance(body["response"], str) and body["session_id"], where
    elif path == TASKS:
        assert response.status_code == 202, where
        assert response.json()["task_id"].startswith("task_"), where
    else:
        raise AssertionError(f"unexpected success: {where}")


def _check_chat(response: httpx.Response, where: str) -> None:
    assert response.status_code == 200, where
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: ") :] for line in response.text.split("\n\n") if line]
        assert events and events[-1] == "[DONE]", where
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks and all("choices" in c for c in chunks), where
        return
    body = response.json()
    assert isinstance(body["choices"], list) and body["choices"], where
    assert isinstance(body["choices"][0]["message"]["content"], str), where


# -- the fuzz -------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(POSTS), value=json_values, ascii_only=st.booleans())
def test_any_json_value(
    server: GuaritaServer, client: httpx.Client, path: str, value: Any, ascii_only: bool
) -> None:
    raw = encode(value, ascii_only)
    check(server, path, raw, client.post(path, content=raw, headers=JSON))


@FUZZ
@given(body=mutated(chat_requests), ascii_only=st.booleans())
def test_mutated_chat_requests(
    server: GuaritaServer, client: httpx.Client, body: dict[str, Any], ascii_only: bool
) -> None:
    raw = encode(body, ascii_only)
    response = client.post(CHAT, content=raw, headers=JSON)
    check(server, CHAT, raw, response)
    if response.status_code == 200:
        # What succeeded was well-formed: a known model and at least one valid message.
        assert body["model"] in ("m", "a")
        assert body["messages"] and all(m["role"] in ROLES for m in body["messages"])
        assert sound(body), body
        assert not any(
            isinstance(v, float) and math.isnan(v)
            for v in (body.get("temperature"), body.get("top_p"))
        )


def sound(value: Any) -> bool:
    """What a provider can be sent: valid Unicode, 64-bit integers (no lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return all(sound(k) and sound(v) for k, v in value.items())
    if isinstance(value, list):
        return all(sound(v) for v in value)
    return True


@FUZZ
@given(body=mutated(embedding_requests), ascii_only=st.booleans())
def test_mutated_embedding_requests(
    server: GuaritaServer, client: httpx.Client, body: dict[str, Any], ascii_only: bool
) -> None:
    raw = encode(body, ascii_only)
    response = client.post(EMBEDDINGS, content=raw, headers=JSON)
    check(server, EMBEDDINGS, raw, response)
    if response.status_code == 200:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        assert len(response.json()["data"]) == len(inputs)
        assert sound(body), body


@FUZZ
@given(
    path=st.sampled_from([AGENT_CHAT, TASKS]),
    body=mutated(agent_requests),
    ascii_only=st.booleans(),
)
def test_agent_api_bodies(
    server: GuaritaServer,
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    ascii_only: bool,
) -> None:
    raw = encode(body, ascii_only)
    response = client.post(path, content=raw, headers=JSON)
    check(server, path, raw, response)
    if response.status_code < 300:
        assert isinstance(body.get("message"), str) and body["message"], body
        assert "\x00" not in body["message"]
        assert set(body) <= {"message", "session_id", "agent"}
        assert sound(body), body
    if path == TASKS and response.status_code == 202:
        task_id = response.json()["task_id"]
        polled = client.get(f"/api/tasks/{task_id}")
        assert polled.status_code == 200, polled.text
        assert polled.json()["task_id"] == task_id


@FUZZ
@given(
    path=st.sampled_from(POSTS),
    content_type=st.sampled_from(
        [
            None,
            "",
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/vnd.api+json",
            "application/octet-stream",
            "application/jso",
            "json",
            "application/json; charset=latin-1",
        ]
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"{}",
                b"[]",
                b"{",
                b"}",
                b"\xef\xbb\xbf{}",
                b"\x00",
                b"NaN",
                b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
                b'{"message": "hi"}',
                b'{"model": "m", "input": "hi"}',
            ]
        ),
    ),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
)
def test_random_bytes(
    server: GuaritaServer,
    client: httpx.Client,
    path: str,
    content_type: str | None,
    body: bytes,
    flips: list[tuple[int, int]],
) -> None:
    raw = bytearray(body)
    for position, byte in flips:  # corrupt a few bytes of the (often valid) body
        if raw:
            raw[position % len(raw)] = byte
    headers = {} if content_type is None else {"content-type": content_type}
    check(server, path, bytes(raw), client.post(path, content=bytes(raw), headers=headers))


# Header values a client can send: tab, space, visible ASCII and obs-text bytes.
header_bytes = st.binary(max_size=140).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)


@FUZZ
@given(
    request_id=st.one_of(header_bytes, st.from_regex(rb"[!-~]{1,140}", fullmatch=True)),
    route=st.sampled_from(
        [
            ("GET", "/v1/models", None),
            ("POST", CHAT, b"{bad"),
            ("GET", "/no/such/route", None),
            ("GET", "/health", None),
            ("POST", AGENT_CHAT, b'{"message": "hi"}'),
            ("PUT", TASKS, None),
        ]
    ),
)
def test_request_id_header(
    server: GuaritaServer,
    client: httpx.Client,
    request_id: bytes,
    route: tuple[str, str, bytes | None],
) -> None:
    method, path, body = route
    response = client.request(
        method, path, content=body, headers={**JSON, "x-request-id": request_id}
    )
    assert response.status_code < 500, response.text
    echoed = response.headers["x-request-id"]
    if 0 < len(request_id) <= 128 and all(33 <= c < 127 for c in request_id):
        assert echoed == request_id.decode()
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), (request_id, echoed)
    if response.status_code >= 400:
        check(server, path, body, response)


@FUZZ
@given(
    task_id=st.one_of(
        st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="/"),
            min_size=1,
            max_size=80,
        ).map(lambda t: quote(t, safe="")),
        st.binary(min_size=1, max_size=40).map(lambda b: quote_from_bytes(b, safe="")),
    ).filter(lambda t: t not in (".", "..") and "%2F" not in t),
)
def test_task_ids(server: GuaritaServer, client: httpx.Client, task_id: str) -> None:
    response = client.get(f"/api/tasks/{task_id}")
    check(server, "/api/tasks/{id}", task_id, response)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "task_not_found", response.text
