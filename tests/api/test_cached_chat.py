"""The response cache's lean path (``api/cached_chat.py``) against the usual route, end to
end: a real ``guarita serve``, the official ``openai`` SDK and plain HTTP as clients.

A request the cache may answer is served without FastAPI's machinery; everything it
answers must be what the route answers: headers, body, request record, log line,
metrics, rate limits and errors. ``direct`` is the same scripted model without a cache, so
its requests take the route and show what the lean path must match.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from guarita.api.cached_chat import CachedChatPath
from guarita.runtime import Runtime
from guarita.settings import load_settings
from tests.helpers import GuaritaServer, inside_one_minute, query

SCRIPTED = {"provider": "scripted", "options": {"reply": "Paris is the capital of France."},
            "price_input_per_1m": 3.0, "price_output_per_1m": 15.0}  # fmt: skip
CONFIG = {
    "models": {
        "cached": {**SCRIPTED, "cache": {"mode": "exact"}},
        "cool": {**SCRIPTED, "cache": {"mode": "exact", "max_temperature": 0.3}},
        "direct": SCRIPTED,
    },
    "agents": {"a": {"model": "direct", "max_tokens": 64}},
    "default_agent": "a",
}
NOT_COMPARED = {"date", "x-request-id", "content-length", "x-guarita-cache"}
"""Headers whose values differ between any two answers (or that only the cache adds)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    gateway = GuaritaServer(tmp_path_factory.mktemp("cached-chat"), CONFIG)
    gateway.key = gateway.create_key("cached-chat")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def key_of(server: GuaritaServer) -> str:
    key: str = server.key  # type: ignore[attr-defined]
    return key


def post(
    server: GuaritaServer, body: Any, *, key: str | None = None, **headers: str
) -> httpx.Response:
    sent = {"authorization": f"Bearer {key or key_of(server)}", **headers}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    sent.setdefault("content-type", "application/json")
    return httpx.post(server.base_url + "/v1/chat/completions", content=content, headers=sent)


def question(model: str, text: str | None = None, **extra: Any) -> dict[str, Any]:
    text = text or f"What is the capital of France? {secrets.token_hex(4)}"
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def record_of(server: GuaritaServer, request_id: str) -> dict[str, Any]:
    for _ in range(200):
        rows = await query(server.store_url, "SELECT * FROM requests WHERE request_id = :rid",
                           rid=request_id)  # fmt: skip
        if rows:
            assert len(rows) == 1
            return rows[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no record for {request_id}")


def log_line(server: GuaritaServer, request_id: str) -> dict[str, Any]:
    for line in server.logs().splitlines():
        if request_id in line and '"event":"request"' in line:
            found: dict[str, Any] = orjson.loads(line)
            return found
    raise AssertionError(f"no log line for {request_id}")


def metric(server: GuaritaServer, name: str, **labels: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_hit_answers_as_the_route_would(server: GuaritaServer) -> None:
    """Headers, body, record, log line and metrics of a hit are those of an answer of the
    usual route, with ``x-guarita-cache: hit``, no tokens, no cost and the cost saved."""
    ask = question("cached")
    route = "/v1/chat/completions"
    answered = metric(server, "guarita_http_request_duration_seconds_count", route=route,
                      method="POST", status="200")  # fmt: skip
    hits = metric(server, "guarita_cache_lookups_total", result="hit")
    miss = post(server, ask, **{"x-request-id": "lean-miss-" + secrets.token_hex(4)})
    hit = post(server, ask, **{"x-request-id": "lean-hit-" + secrets.token_hex(4)})
    plain = post(
        server, {**ask, "model": "direct"}, **{"x-request-id": "direct-" + secrets.token_hex(4)}
    )
    assert [miss.status_code, hit.status_code, plain.status_code] == [200, 200, 200]
    assert miss.headers["x-guarita-cache"] == "miss" and hit.headers["x-guarita-cache"] == "hit"
    assert "x-guarita-cache" not in plain.headers
    for answer in (miss, hit):
        assert {k: v for k, v in answer.headers.items() if k not in NOT_COMPARED} == {
            k: v for k, v in plain.headers.items() if k not in NOT_COMPARED
        }
        assert answer.headers["x-request-id"] == answer.request.headers["x-request-id"]
    first, again, usual = miss.json(), hit.json(), plain.json()
    assert again.keys() == first.keys() == usual.keys()
    assert again["id"] != first["id"] and again["id"].startswith("chatcmpl-")
    assert again["choices"] == first["choices"] == usual["choices"]
    assert again["usage"] == first["usage"]

    missed = await record_of(server, miss.headers["x-request-id"])
    served = await record_of(server, hit.headers["x-request-id"])
    routed = await record_of(server, plain.headers["x-request-id"])
    assert missed["cache"] == "miss" and missed["cost_usd"] > 0 and missed["input_tokens"] > 0
    assert served["cache"] == "hit" and served["status"] == "success"
    assert served["cost_usd"] == 0 and served["input_tokens"] == served["output_tokens"] == 0
    assert served["cache_saved_usd"] == pytest.approx(missed["cost_usd"])
    same = ("endpoint", "key_id", "status", "status_code", "fallback_level", "quality", "stream")
    assert {k: served[k] for k in same} == {k: routed[k] for k in same}
    assert served["model"] == served["requested_model"] == "cached"

    line, usual_line = (
        log_line(server, served["request_id"]),
        log_line(server, routed["request_id"]),
    )
    assert line["cache"] == "hit" and line["status"] == 200 and line["key_id"] == served["key_id"]
    assert line["cache_saved_usd"] == pytest.approx(missed["cost_usd"])
    assert set(line) - {"cache", "cache_saved_usd"} == set(usual_line)
    after = metric(server, "guarita_http_request_duration_seconds_count", route=route,
                   method="POST", status="200")  # fmt: skip
    assert after - answered == 3
    assert metric(server, "guarita_cache_lookups_total", result="hit") - hits == 1


def test_a_streamed_hit_is_a_stream_the_sdk_reads(server: GuaritaServer) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key_of(server), max_retries=0)
    ask = question("cached")
    answer = client.chat.completions.create(**ask)
    with client.chat.completions.with_streaming_response.create(
        **ask, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-guarita-cache"] == "hit"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        answer.choices[0].message.content
    )
    assert chunks[-1].usage is not None and answer.usage is not None
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens


def test_hits_count_against_rate_limits_as_requests(server: GuaritaServer) -> None:
    created = server.cli(
        "keys", "create", "--name", "lean-rpm", "--tier", "enterprise", "--rpm", "3"
    )
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=created.stdout.strip(),
                           max_retries=0)  # fmt: skip
    ask = question("cached")
    inside_one_minute(20)
    seen = []
    for left in (2, 1, 0):  # a miss, then two hits
        raw = client.chat.completions.with_raw_response.create(**ask)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(left)
        seen.append(raw.headers["x-guarita-cache"])
    assert seen == ["miss", "hit", "hit"]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**ask)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_bypass_headers_skip_the_lookup(server: GuaritaServer) -> None:
    ask = question("cached")
    assert post(server, ask).headers["x-guarita-cache"] == "miss"
    for headers in ({"cache-control": "no-cache"}, {"x-guarita-cache": "bypass"}):
        fresh = post(server, ask, **headers)
        assert fresh.status_code == 200 and fresh.headers["x-guarita-cache"] == "bypass"
        record = await record_of(server, fresh.headers["x-request-id"])
        assert record["cache"] == "bypass" and record["cost_usd"] > 0
    assert post(server, ask).headers["x-guarita-cache"] == "hit"


def test_what_the_cache_leaves_out_takes_the_route(server: GuaritaServer) -> None:
    """A model without a cache, or a temperature above the policy's, is not cached."""
    for ask in (question("direct"), question("cool", temperature=0.9), question("a")):
        for _ in range(2):
            answer = post(server, ask)
            assert answer.status_code == 200 and "x-guarita-cache" not in answer.headers
    cool = question("cool", temperature=0.2)
    assert [post(server, cool).headers["x-guarita-cache"] for _ in range(2)] == ["miss", "hit"]


ASK = b'{"model": "MODEL", "messages": [{"role": "user", "content": "x"}]'
"""A good body to the model ``MODEL``, without its closing brace."""
BAD_BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("not JSON", b'{"model": "MODEL", "messages": [', {}),
    ("an array", b'[{"model": "MODEL"}]', {}),
    ("no messages", b'{"model": "MODEL"}', {}),
    ("a string temperature", ASK + b', "temperature": "0.5"}', {}),
    ("a lone surrogate", ASK.replace(b'"x"', b'"\\ud800"') + b"}", {}),
    ("a 70-bit integer", ASK + b', "seed": 1180591620717411303424}', {}),
    ("NaN", ASK + b', "temperature": NaN}', {}),
    ("text/plain", ASK + b"}", {"content-type": "text/plain"}),
    ("a bad deadline", ASK + b"}", {"x-guarita-deadline-ms": "soon"}),
    ("no key", ASK + b"}", {"authorization": ""}),
    ("a wrong key", ASK + b"}", {"authorization": "Bearer gk_not-a-key-at-all"}),
]


@pytest.mark.parametrize(("case", "body", "headers"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_gets_the_routes_errors(
    server: GuaritaServer, case: str, body: bytes, headers: dict[str, str]
) -> None:
    """The same bad request to the cached model and to the plain one: the same error."""
    answers = [post(server, body.replace(b"MODEL", m), **headers) for m in (b"cached", b"direct")]
    lean, usual = answers
    assert 400 <= usual.status_code < 500, (case, usual.text)
    assert lean.status_code == usual.status_code, (case, lean.text, usual.text)
    assert lean.json() == usual.json(), case
    for name in ("www-authenticate", "retry-after", "x-request-id"):
        assert (name in lean.headers) == (name in usual.headers), (case, name)


def test_an_unknown_model_and_a_body_too_large_get_the_routes_errors(server: GuaritaServer) -> None:
    unknown = post(server, question("nope"))
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    huge = question("cached", "x" * (5 * 1024 * 1024))
    too_large = post(server, huge)
    assert too_large.status_code == 413 and too_large.json()["error"]["type"]


def test_a_body_seen_again_gets_its_own_copy_of_what_validation_gave(tmp_path: Path) -> None:
    """The kept validation of a body: the same request and target, and a provider body of
    its own each time (a stage may change the one it got)."""
    settings = load_settings(data_dir=tmp_path, models=CONFIG["models"], agents=CONFIG["agents"],
                             default_agent="a")  # fmt: skip
    path = CachedChatPath(lambda *_: None, Runtime(settings))  # type: ignore[arg-type,return-value]
    scope = {"type": "http", "headers": [(b"content-type", b"application/json")]}
    body = orjson.dumps(question("cached", "same", temperature=0, max_tokens=16))
    first, second = path._cacheable(scope, body), path._cacheable(scope, body)
    assert first is not None and second is not None
    (payload, (model, agent, call_body)), (again, (model2, agent2, body2)) = first, second
    assert again is payload and (model2, agent2) == (model, agent) == ("cached", None)
    assert body2 == call_body and body2 is not call_body
    assert body2["messages"] is not call_body["messages"]
    call_body["messages"].append({"role": "assistant", "content": "changed by a stage"})
    third = path._cacheable(scope, body)
    assert third is not None and third[1][2] == body2
    assert path._cacheable(scope, orjson.dumps(question("direct", "same"))) is None
