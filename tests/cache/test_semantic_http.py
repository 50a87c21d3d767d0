"""The semantic tier through a real server and the OpenAI SDK (both run modes): a near
repeat or a rewording the judge accepts is a ``semantic-hit``, complete or streamed; a
trap and another key's namespace are misses; in scale-out mode an entry one API process
indexed is a hit on another within a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import GuaritaServer, scale_out, wait_until

CONFIG = {
    "models": {"sem": {"provider": "scripted", "cache": {"mode": "semantic", "ttl_s": 600}}},
    "agents": {"a": {"model": "sem"}},
    "default_agent": "a",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    gateway = GuaritaServer(Path(tmp_path_factory.mktemp("semantic")), CONFIG)
    gateway.key = gateway.create_key("one", "enterprise")  # type: ignore[attr-defined]
    gateway.other = gateway.create_key("two", "enterprise")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def sdk(server: GuaritaServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, text: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model="sem", messages=[{"role": "user", "content": text}], temperature=0
    )
    return raw.headers["x-guarita-cache"], raw.parse().choices[0].message.content or ""


def test_a_near_repeat_is_served_and_a_trap_is_not(server: GuaritaServer) -> None:
    client = sdk(server, server.key)  # type: ignore[attr-defined]
    outcome, first = ask(client, "How do I update my shipping address?")
    assert outcome == "miss" and first
    assert ask(client, "how do i update my shipping address?") == ("semantic-hit", first)
    assert ask(client, "How do I update my shipping address?") == ("hit", first)
    assert ask(client, "I need to update my shipping address. How?") == ("semantic-hit", first)
    assert ask(client, "How do I not update my shipping address?")[0] == "miss"
    assert ask(client, "How do I update my billing address?")[0] == "miss"
    other = sdk(server, server.other)  # type: ignore[attr-defined]
    assert ask(other, "how do i update my shipping address?")[0] == "miss"


def test_a_streamed_semantic_hit_is_a_stream_the_sdk_reads(server: GuaritaServer) -> None:
    client = sdk(server, server.key)  # type: ignore[attr-defined]
    outcome, answer = ask(client, "What are your opening hours on weekends?")
    assert outcome == "miss"
    with client.chat.completions.with_streaming_response.create(
        model="sem", stream=True, stream_options={"include_usage": True}, temperature=0,
        messages=[{"role": "user", "content": "what are your opening hours on weekends?"}],
    ) as response:  # fmt: skip
        assert response.headers["x-guarita-cache"] == "semantic-hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_admin_cache_reports_the_semantic_tier(server: GuaritaServer) -> None:
    client = sdk(server, server.key)  # type: ignore[attr-defined]
    ask(client, "Do you ship to Norway?")
    assert ask(client, "do you ship to norway?")[0] == "semantic-hit"
    admin = server.create_key("admin", "admin")
    stats = httpx.get(server.base_url + "/admin/cache",
                      headers={"Authorization": f"Bearer {admin}"}).json()  # fmt: skip
    assert stats["semantic"]["embedder"] == "wordllama-l2_supercat-256"
    assert stats["semantic"]["judge"] == "judge-minilm-l6-v2+wordllama-hgb"
    assert stats["semantic"]["indexed"] >= 1
    metrics = httpx.get(server.base_url + "/metrics").text
    assert "guarita_cache_semantic_entries" in metrics
    assert 'guarita_cache_lookups_total{result="semantic-hit"}' in metrics


@pytest.mark.skipif(not scale_out(), reason="entries are shared between processes in scale-out")
def test_an_entry_indexed_by_one_process_is_a_hit_on_another(
    server: GuaritaServer, tmp_path: Path
) -> None:
    """A second API process on the same Redis and store (its own port): what the first
    indexed is a semantic hit there within a second of being answered."""
    second = GuaritaServer(tmp_path / "second", server.config, store_url=server.store_url)
    second.start()
    admin = server.create_key("admin2", "admin")
    try:
        before = indexed(second, admin)
        client = sdk(server, server.key)  # type: ignore[attr-defined]
        outcome, answer = ask(client, "Can I change the delivery date of my order?")
        assert outcome == "miss"
        wait_until(lambda: indexed(second, admin) > before, timeout=5,
                   what="the entry indexed by the second process")  # fmt: skip
        elsewhere = sdk(second, server.key)  # type: ignore[attr-defined]
        assert ask(elsewhere, "can i change the delivery date of my order?") == (
            "semantic-hit", answer)  # fmt: skip
    finally:
        second.stop()


def indexed(server: GuaritaServer, admin: str) -> int:
    stats = httpx.get(server.base_url + "/admin/cache",
                      headers={"Authorization": f"Bearer {admin}"}).json()  # fmt: skip
    return int(stats["semantic"]["indexed"])
