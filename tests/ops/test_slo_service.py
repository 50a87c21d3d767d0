"""Error budgets on the real store (SQLite and PostgreSQL): the counting query follows the
event rules for records of every kind; budget states move once across processes (one
announcement, one audit entry) and the deploy freeze refuses rollouts of a frozen agent
unless the change is a security hotfix; the per-record counter follows the same rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import insert

from guarita.errors import DeployFrozen
from guarita.ops.slo import Counts, event_rules, objectives
from guarita.ops.slo_service import (
    BUDGET_WARNING,
    DEPLOY_FROZEN,
    DEPLOY_UNFROZEN,
    DeployFreeze,
    SloEvaluator,
    SloEventCounter,
)
from guarita.settings import Settings
from guarita.store.database import Database
from guarita.store.models import RequestRow
from guarita.store.records import normalize
from guarita.store.slo import SloCounts, SloStates
from tests.telemetry.support import assert_valid_event, make_validator

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def settings() -> Settings:
    return Settings(
        models={"m": {"provider": "scripted", "quality": {"min_score": 0.5}}},
        agents={"a": {"model": "m", "consistency": {"threshold": 0.8}}, "b": {"model": "m"}},
        default_agent="a",
        slo={"freeze": {"min_events": 10}},
    )


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.migrate()
    yield database
    await database.aclose()


def _row(i: int, **fields: Any) -> dict[str, Any]:
    base = {"request_id": f"r{i}", "endpoint": "chat", "model": "m", "agent": "a",
            "status": "success", "status_code": 200, "latency_ms": 1.0,
            "created_at": NOW - timedelta(minutes=10)}  # fmt: skip
    return {**base, **fields}


KINDS: list[dict[str, Any]] = [
    {}, {"quality": 0.5}, {"quality": 0.49}, {"quality": 1.0, "consistency": 0.8},
    {"consistency": 0.79}, {"status": "error", "status_code": 502},
    {"status": "error", "status_code": 504, "quality": 0.1},
    {"status": "error", "status_code": 408}, {"status": "error", "status_code": 400},
    {"status": "error", "status_code": 429}, {"status": "error", "status_code": 499},
    {"status": "error", "status_code": 500, "consistency": 0.99},
    {"agent": "b", "status": "error", "status_code": 503},
    {"created_at": NOW - timedelta(hours=2)},  # outside the hour counted
    {"created_at": NOW + timedelta(seconds=1)},  # after it
    {"created_at": NOW, "status_code": 503, "status": "error"},  # at its end: inside
]  # fmt: skip


async def test_the_counting_query_follows_the_event_rules(db: Database) -> None:
    s = settings()
    rows = [_row(i, **kind) for i, kind in enumerate(KINDS * 3)]
    async with db.engine.begin() as conn:
        await conn.execute(insert(RequestRow.__table__), [normalize(r) for r in rows])
    rules = event_rules(s.slo)
    since = NOW - timedelta(hours=1)
    for agent in ("a", "b"):
        objs = [o for o in objectives(s) if o.agent == agent]
        counted = await SloCounts(db, rules).count(agent, objs, since, NOW)
        for o in objs:
            inside = [r for r in rows if r["agent"] == agent and since < r["created_at"] <= NOW]
            outcomes = [rules.outcome(o, r) for r in inside]
            expected = Counts(
                outcomes.count("good"), outcomes.count("good") + outcomes.count("bad")
            )
            assert counted[o.slo] == expected, (agent, o.slo)
    assert (await SloCounts(db, rules).count("a", [], since, NOW)) == {}


class Recorder:
    """One process's event publisher and audit log; ``timeline`` is shared by the
    processes of a test, in the order things happened (which process wins a change is
    not fixed)."""

    def __init__(self, timeline: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.audit: list[tuple[Any, ...]] = []
        self.timeline = timeline if timeline is not None else []

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        self.timeline.append((kind, data))

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.audit.append(args)


async def _statuses(db: Database, s: Settings, bad: int, total: int) -> list[Any]:
    """Agent a's records for the budget: ``bad`` failures of ``total`` calls."""
    rows = [_row(i, **({"status": "error", "status_code": 503} if i < bad else {}),
                 request_id=f"x{i}-{bad}-{total}") for i in range(total)]  # fmt: skip
    async with db.engine.begin() as conn:
        await conn.execute(RequestRow.__table__.delete())
        await conn.execute(insert(RequestRow.__table__), [normalize(r) for r in rows])
    return [st for st in await SloEvaluator(s, db).evaluate("a", now=NOW)
            if st.slo == "availability"]  # fmt: skip


async def test_a_used_up_budget_freezes_once_across_processes_and_lifts(
    db: Database, store_url: str
) -> None:
    s = settings()
    other = Database(store_url)  # a second process's engine on the same store
    timeline: list[tuple[str, dict[str, Any]]] = []
    recorders = [Recorder(timeline), Recorder(timeline)]
    freezes = [
        DeployFreeze(s.slo, SloStates(d), objectives(s), audit=r.record, publish=r.publish)
        for d, r in zip((db, other), recorders, strict=True)
    ]
    try:
        warning = await _statuses(db, s, bad=17, total=2000)  # 85% consumed
        assert warning[0].budget == "warning"
        await asyncio.gather(*(f.update(warning) for f in freezes))
        exhausted = await _statuses(db, s, bad=25, total=2000)  # 125%
        assert exhausted[0].budget == "exhausted"
        won = await asyncio.gather(*(f.update(exhausted) for f in freezes))
        assert sorted(len(w) for w in won) == [0, 1]
        assert exhausted[0].frozen
        events = list(timeline)
        assert [kind for kind, _ in events] == [BUDGET_WARNING, DEPLOY_FROZEN]
        frozen = events[1][1]
        assert frozen["agent"] == "a" and frozen["slo"] == "availability"
        assert frozen["consumed"] == pytest.approx(1.25)
        audits = [a for r in recorders for a in r.audit]
        assert [(a[0], a[1], a[3]) for a in audits] == [("change", "deploy.frozen", "agent:a")]

        for action in ("start", "promote"):
            with pytest.raises(DeployFrozen) as refused:
                await freezes[1].check("a", "prompt_update", action)  # type: ignore[arg-type]
            message = refused.value.message
            assert "'a'" in message and "availability" in message and "125%" in message
            assert "1% of events over 30d" in message and action in message
            assert refused.value.status_code == 409 and refused.value.code == "deploy_frozen"
        await freezes[0].check("a", "security_hotfix", "start")  # exempt
        await freezes[0].check("b", "prompt_update", "promote")  # another agent

        healthy = await _statuses(db, s, bad=0, total=2000)
        won = await asyncio.gather(*(f.update(healthy) for f in freezes))
        assert sorted(len(w) for w in won) == [0, 1]
        events = list(timeline)
        assert [kind for kind, _ in events] == [BUDGET_WARNING, DEPLOY_FROZEN, DEPLOY_UNFROZEN]
        assert sorted(a[1] for r in recorders for a in r.audit) == [
            "deploy.frozen",
            "deploy.unfrozen",
        ]
        validator = make_validator()
        for kind, data in events:  # as the publisher sends them: valid per docs/events.md
            assert_valid_event(validator, {
                "specversion": "1.0", "id": "0" * 32, "type": kind, "source": "guarita/test",
                "time": NOW.isoformat(), "datacontenttype": "application/json", "data": data,
            })  # fmt: skip
        await freezes[1].check("a", "prompt_update", "promote")
    finally:
        await other.aclose()


async def test_a_disabled_freeze_lets_everything_through(db: Database) -> None:
    s = Settings(**{**settings().model_dump(exclude={"slo"}), "slo": {"freeze": {
        "enabled": False, "min_events": 10}}})  # fmt: skip
    freeze = DeployFreeze(s.slo, SloStates(db), objectives(s), audit=Recorder().record,
                          publish=Recorder().publish)  # fmt: skip
    exhausted = await _statuses(db, s, bad=50, total=100)
    await freeze.update(exhausted)
    assert not exhausted[0].frozen
    await freeze.check("a", "new_model", "start")


def test_the_counter_counts_each_record_by_the_same_rules() -> None:
    s = settings()
    counter = Counter("guarita_slo_events", "x", ["agent", "slo", "outcome"],
                      registry=CollectorRegistry())  # fmt: skip
    count = SloEventCounter(objectives(s), event_rules(s.slo), counter)
    for kind in KINDS:
        count(normalize(_row(0, **kind)))
    count({"agent": None, "status_code": 500})  # not an agent's call: not counted

    def value(agent: str, slo: str, outcome: str) -> float:
        return float(counter.labels(agent, slo, outcome)._value.get())

    rules = event_rules(s.slo)
    for o in objectives(s):
        outcomes = [rules.outcome(o, normalize(_row(0, **k))) for k in KINDS
                    if k.get("agent", "a") == o.agent]  # fmt: skip
        assert value(o.agent, o.slo, "good") == outcomes.count("good"), o
        assert value(o.agent, o.slo, "bad") == outcomes.count("bad"), o
    assert value("b", "consistency", "bad") == 0  # every series exists from the start
