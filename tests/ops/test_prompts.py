"""The prompt registry on the real store (SQLite and PostgreSQL): immutable versions, a
stable content hash, labels moved by compare-and-swap, the rendering sandbox, and label
moves seen by another process's cache through the shared state or the TTL backstop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from guarita.errors import Conflict, InvalidRequest, NotFound
from guarita.ops.prompt_render import ModelConfig, content_hash
from guarita.ops.prompts import PromptRegistry, parse_ref
from guarita.store.database import Database
from guarita.store.prompts import PromptStore
from tests.helpers import REDIS_URL, query, scale_out

MODELS = {"m", "big"}


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.migrate()
    yield database
    await database.aclose()


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.entries.append((*args, kwargs.get("details")))


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def registry(db: Database, audit: Audit) -> PromptRegistry:
    return PromptRegistry(PromptStore(db), models=MODELS, audit=audit)


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"not within {within_s}s: {what}")


async def test_versions_are_immutable_and_the_same_content_makes_no_new_one(
    registry: PromptRegistry, store_url: str
) -> None:
    text = "You help with {{ product }}."
    v1, created = await registry.push(
        "support", text, model={"temperature": 0.2}, author="ana", tags=["a"]
    )
    assert (v1.version, created, v1.variables) == (1, True, ("product",))
    again, created = await registry.push(
        "support", text, model={"temperature": 0.2}, message="no change"
    )
    assert (again.version, created, again.sha256) == (1, False, v1.sha256)
    v2, created = await registry.push("support", "You help kindly with {{ product }}.")
    assert (v2.version, created) == (2, True)
    assert v2.sha256 != v1.sha256
    stored = await registry.resolve("support@1")
    assert stored.template == [{"role": "system", "content": "You help with {{ product }}."}]
    assert stored.model_config == ModelConfig(temperature=0.2)
    assert (stored.author, stored.tags, stored.sha256) == ("ana", ("a",), v1.sha256)
    rows = await query(store_url, "SELECT version, sha256 FROM prompt_versions ORDER BY version")
    assert [(r["version"], r["sha256"]) for r in rows] == [(1, v1.sha256), (2, v2.sha256)]
    assert not hasattr(registry.store, "update"), "versions have no update path"


async def test_the_hash_is_of_the_canonical_content() -> None:
    template = [{"role": "system", "content": "Hi {{ name }}"}]
    a = content_hash(template, ModelConfig(temperature=0.5, max_tokens=10))
    b = content_hash([{"content": "Hi {{ name }}", "role": "system"}],
                     ModelConfig(max_tokens=10, temperature=0.5))  # fmt: skip
    assert a == b and len(a) == 64
    assert a != content_hash(template, ModelConfig(temperature=0.6, max_tokens=10))


async def test_refs_resolve_by_label_and_version(registry: PromptRegistry) -> None:
    await registry.push("faq", "one")
    await registry.push("faq", "two")
    with pytest.raises(NotFound) as missing:
        await registry.resolve("faq")  # no production label yet
    assert missing.value.code == "prompt_not_found"
    await registry.move_label("faq", "production", 1, actor="ops")
    await registry.move_label("faq", "staging", 2, actor="ops")
    assert (await registry.resolve("faq")).version == 1
    assert (await registry.resolve("faq@production")).version == 1
    assert (await registry.resolve("faq@staging")).version == 2
    assert (await registry.resolve("faq@2")).template[0]["content"] == "two"
    for ref in ("faq@3", "nope", "nope@staging"):
        with pytest.raises(NotFound):
            await registry.resolve(ref)
    for bad in ("", "faq@", "faq@0", "faq@-1", "a b", "faq@stag ing"):
        with pytest.raises(InvalidRequest):
            parse_ref(bad)


async def test_a_label_moves_by_compare_and_swap(registry: PromptRegistry, audit: Audit) -> None:
    for text in ("one", "two", "three"):
        await registry.push("cas", text)
    first = await registry.move_label("cas", "production", 1, expected=0, actor="ops")
    assert (first.version, first.revision) == (1, 1)
    with pytest.raises(Conflict) as stale:
        await registry.move_label("cas", "production", 2, expected=0, actor="ops")
    assert stale.value.code == "label_conflict" and stale.value.status_code == 409
    # concurrent moves that all saw version 1: exactly one wins
    outcomes = await asyncio.gather(
        *(registry.move_label("cas", "production", 2 + i % 2, expected=1, actor=f"op{i}")
          for i in range(8)),
        return_exceptions=True,
    )  # fmt: skip
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, Conflict) and o.code == "label_conflict" for o in lost)
    label = await registry.store.label("cas", "production")
    assert label is not None and (label.version, label.revision) == (won[0].version, 2)
    moves = [e for e in audit.entries if e[1] == "prompt.label_moved"]
    assert [e[4] for e in moves].count("success") == 2
    assert [e[4] for e in moves].count("failure") == 8
    assert moves[0][:5] == ("change", "prompt.label_moved", "ops", "cas@production", "success")
    assert moves[0][5]["version"] == 1 and moves[0][5]["previous"] is None
    with pytest.raises(NotFound):
        await registry.move_label("cas", "production", 9, actor="ops")
    pushes = [e for e in audit.entries if e[1] == "prompt.pushed"]
    assert len(pushes) == 3 and pushes[0][3] == "cas"


async def test_rendering_is_sandboxed_and_strict(registry: PromptRegistry) -> None:
    version, _ = await registry.push(
        "render", [{"role": "system", "content": "You are {{ persona }}."},
                   {"role": "user", "content": "Example: {{ example | upper }}"}],
    )  # fmt: skip
    assert version.variables == ("example", "persona")
    assert version.render({"persona": "kind", "example": "hi"}) == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Example: HI"},
    ]
    with pytest.raises(InvalidRequest) as missing:
        version.render({"persona": "kind"})
    assert missing.value.param == "prompt_variables" and "example" in missing.value.message
    escape, _ = await registry.push(
        "escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}", variables=[]
    )
    with pytest.raises(InvalidRequest) as refused:
        escape.render({})
    assert refused.value.param == "prompt_variables"
    globals_, _ = await registry.push("escape2", "{{ cycler.__init__.__globals__.os }}")
    with pytest.raises(InvalidRequest):
        globals_.render({})


async def test_bad_pushes_are_refused_clearly(registry: PromptRegistry) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "template": "{% if %}"}, "template"),
        ({"name": "x", "template": []}, "template"),
        ({"name": "x", "template": [{"role": "robot", "content": "hi"}]}, "template"),
        ({"name": "bad name", "template": "hi"}, "name"),
        ({"name": "x", "template": "hi", "model": {"model": "gpt-9"}}, "model"),
        ({"name": "x", "template": "hi", "model": {"temperature": 5}}, "model.temperature"),
        ({"name": "x", "template": "hi", "model": {"colour": "red"}}, "model"),
        ({"name": "x", "template": "{{ a }} {{ b }}", "variables": ["a"]}, "variables"),
    ]
    for fields, param in cases:
        with pytest.raises(InvalidRequest) as refused:
            await registry.push(**fields)
        assert refused.value.param == param, fields
    assert await registry.list() == []


async def test_a_version_naming_an_unconfigured_model_does_not_resolve(db: Database) -> None:
    wide = PromptRegistry(PromptStore(db), models={"m", "gone"})
    await wide.push("p", "hi", model={"model": "gone", "max_tokens": 7, "stop": ["\n"]})
    await wide.move_label("p", "production", 1)
    assert (await wide.resolve("p")).model_config.body_fields() == {"max_tokens": 7,
                                                                    "stop": ["\n"]}  # fmt: skip
    narrow = PromptRegistry(PromptStore(db), models={"m"})
    with pytest.raises(InvalidRequest) as refused:
        await narrow.resolve("p")
    assert refused.value.code == "prompt_model_unknown"


async def test_diff_shows_template_and_model_changes(registry: PromptRegistry) -> None:
    await registry.push("d", "Be brief.\nBe kind.", model={"temperature": 0.1})
    await registry.push("d", "Be brief.\nBe exact.", model={"temperature": 0.3})
    diff = await registry.diff("d", 1, 2)
    assert "--- d@1" in diff and "+++ d@2" in diff
    assert "-Be kind." in diff and "+Be exact." in diff
    assert '-  "temperature": 0.1' in diff and '+  "temperature": 0.3' in diff
    assert " Be brief." in diff


@pytest.mark.parametrize("announced", [True, False], ids=["broadcast", "ttl"])
async def test_another_process_uses_a_moved_label_within_one_second(
    db: Database, store_url: str, redis_prefix: str, announced: bool
) -> None:
    """Two registries on two connections to one store (two processes): a move by one is
    used by the other within 1 s, with the announcement (Redis in scale-out mode, else the
    in-process broadcast) or without it (the TTL backstop)."""
    from guarita.state.memory import MemorySharedState
    from guarita.state.redis import RedisSharedState

    if scale_out():
        here: Any = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
        there: Any = RedisSharedState.from_url(REDIS_URL, prefix=redis_prefix)
    else:
        here = there = MemorySharedState()
    other_db = Database(store_url)
    mover = PromptRegistry(PromptStore(db), broadcast=here if announced else None)
    # the reader's TTL is the runtime's (0.5 s)
    reader = PromptRegistry(PromptStore(other_db), broadcast=there if announced else None)
    await reader.start()
    try:
        await mover.push("live", "first")
        await mover.push("live", "second")
        await mover.move_label("live", "production", 1)
        assert (await reader.resolve("live")).version == 1  # cached now
        await mover.move_label("live", "production", 2)
        if announced:  # the announcement empties the reader's label cache by itself

            async def forgotten() -> bool:
                return not reader.cached_labels()

            await eventually(forgotten, within_s=1.0, what="the announcement to reach the reader")

        async def sees_version_2() -> bool:
            return (await reader.resolve("live")).version == 2

        await eventually(sees_version_2, within_s=1.0, what="the reader uses the moved label")
    finally:
        await reader.aclose()
        await other_db.aclose()
        await here.aclose()
        if there is not here:
            await there.aclose()
