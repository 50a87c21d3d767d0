"""The usage report, against real SQLite and PostgreSQL stores: grouping, filters, totals,
UTC days across midnight, and the model that answered (``served_by``) counting the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from guarita.store.database import Database
from guarita.store.records import RecordWriter, new_record_id
from guarita.store.usage import (
    UsageCounts,
    UsageQuery,
    UsageReport,
    parse_grouping,
    parse_time,
    usage_report,
)

NOV_1 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOVEMBER = {"since": datetime(2026, 11, 1, tzinfo=UTC), "until": datetime(2026, 12, 1, tzinfo=UTC)}


def record(at: datetime, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "record_id": new_record_id(),
        "request_id": new_record_id(),
        "created_at": at,
        "key_id": "key_a",
        "endpoint": "chat.completions",
        "agent": "support",
        "model": "big",
        "provider": "scripted",
        "status": "success",
        "status_code": 200,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": 0.5,
        "latency_ms": 1.0,
    }
    row.update(changes)
    return row


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.migrate()
    yield database
    await database.aclose()


async def store(db: Database, tmp_path: Path, *rows: dict[str, Any]) -> None:
    writer = RecordWriter(db, spool_dir=tmp_path / "spool", flush_interval_s=60)
    for row in rows:
        writer.add(row)
    await writer.flush()
    assert writer.written == len(rows)


async def report(db: Database, **query: Any) -> UsageReport:
    return await usage_report(db, UsageQuery(**{**NOVEMBER, **query}))


def table(result: UsageReport) -> list[dict[str, Any]]:
    return [result.row_json(row) for row in result.rows]


async def test_groups_by_key_agent_model_and_day(db: Database, tmp_path: Path) -> None:
    await store(
        db,
        tmp_path,
        record(NOV_1),
        record(NOV_1 + timedelta(hours=1), input_tokens=20, cost_usd=0.25),
        record(NOV_1, key_id="key_b", status="error", status_code=502, output_tokens=0),
        record(NOV_1, agent=None, model="small", cost_usd=0.125),
        record(NOV_1 + timedelta(days=1), key_id=None),
    )
    result = await report(db)
    assert table(result) == [
        {"key_id": None, "agent": "support", "model": "big", "day": "2026-11-02",
         "requests": 1, "errors": 0, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5},
        {"key_id": "key_a", "agent": None, "model": "small", "day": "2026-11-01",
         "requests": 1, "errors": 0, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.125},
        {"key_id": "key_a", "agent": "support", "model": "big", "day": "2026-11-01",
         "requests": 2, "errors": 0, "input_tokens": 30, "output_tokens": 10, "cost_usd": 0.75},
        {"key_id": "key_b", "agent": "support", "model": "big", "day": "2026-11-01",
         "requests": 1, "errors": 1, "input_tokens": 10, "output_tokens": 0, "cost_usd": 0.5},
    ]  # fmt: skip
    assert result.total == UsageCounts(5, 1, 60, 20, 1.875)
    assert result.rows[0].day == date(2026, 11, 2)
    assert not result.truncated


async def test_fewer_groupings_add_up_and_keep_their_order(db: Database, tmp_path: Path) -> None:
    await store(
        db,
        tmp_path,
        record(NOV_1, key_id="key_b"),
        record(NOV_1, key_id="key_a", model="small"),
        record(NOV_1 + timedelta(days=3), key_id="key_a"),
    )
    by_model_then_key = await report(db, by=("model", "key", "model"))
    assert by_model_then_key.by == ("model", "key")
    assert [(r["model"], r["key_id"], r["requests"]) for r in table(by_model_then_key)] == [
        ("big", "key_a", 1),
        ("big", "key_b", 1),
        ("small", "key_a", 1),
    ]
    assert set(table(by_model_then_key)[0]) == {
        "model", "key_id", "requests", "errors", "input_tokens", "output_tokens", "cost_usd",
    }  # fmt: skip
    by_day = await report(db, by=("day",))
    assert [(r["day"], r["requests"]) for r in table(by_day)] == [
        ("2026-11-01", 2),
        ("2026-11-04", 1),
    ]
    assert by_day.total == by_model_then_key.total == UsageCounts(3, 0, 30, 15, 1.5)


async def test_the_model_that_answered_counts_the_call(db: Database, tmp_path: Path) -> None:
    await store(
        db,
        tmp_path,
        record(NOV_1, model="big"),
        record(NOV_1, model="big", served_by="small", fallback_level="model", cost_usd=0.125),
        record(NOV_1, model="small", served_by="small", cost_usd=0.125),
        record(NOV_1, model="big", served_by="big", fallback_level="static", cost_usd=0.0),
    )
    result = await report(db, by=("model",))
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in table(result)] == [
        ("big", 2, 0.5),
        ("small", 2, 0.25),
    ]
    # the filter means the same model as the grouping
    small = await report(db, by=("model",), model="small")
    assert [(r["model"], r["requests"]) for r in table(small)] == [("small", 2)]
    assert small.total.requests == 2


async def test_days_are_utc_days_across_midnight(db: Database, tmp_path: Path) -> None:
    midnight = datetime(2026, 11, 2, tzinfo=UTC)
    await store(
        db,
        tmp_path,
        record(midnight - timedelta(microseconds=1)),
        record(midnight),
        record(midnight + timedelta(hours=23, minutes=59, seconds=59)),
    )
    result = await report(db, by=("day",))
    assert [(r["day"], r["requests"]) for r in table(result)] == [
        ("2026-11-01", 1),
        ("2026-11-02", 2),
    ]


async def test_days_do_not_follow_the_sessions_time_zone(
    db: Database, tmp_path: Path, store_url: str
) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite has no session time zone")
    # 14 hours east of UTC: 2026-11-01 12:00 UTC is 2026-11-02 there
    name = store_url.rsplit("/", 1)[1]
    async with db.engine.begin() as conn:
        await conn.execute(text(f"ALTER DATABASE \"{name}\" SET TimeZone = 'Pacific/Kiritimati'"))
    await db.engine.dispose()  # new connections take the database's setting
    await store(db, tmp_path, record(NOV_1))
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SHOW TimeZone"))).scalar() == "Pacific/Kiritimati"
    result = await report(db, by=("day",))
    assert [(r["day"], r["requests"]) for r in table(result)] == [("2026-11-01", 1)]


async def test_filters_and_the_window(db: Database, tmp_path: Path) -> None:
    start = datetime(2026, 11, 10, tzinfo=UTC)
    await store(
        db,
        tmp_path,
        record(start - timedelta(microseconds=1)),
        record(start, key_id="key_b"),
        record(start + timedelta(days=1), agent="sales"),
        record(start + timedelta(days=2)),
    )
    window = {"since": start, "until": start + timedelta(days=2), "by": ("key", "agent")}
    # since is inclusive, until exclusive
    assert (await report(db, **window)).total.requests == 2
    assert [r["key_id"] for r in table(await report(db, **window, key_id="key_b"))] == ["key_b"]
    assert [r["agent"] for r in table(await report(db, **window, agent="sales"))] == ["sales"]
    assert (await report(db, **window, agent="nobody")).rows == []
    assert (await report(db, **window, agent="nobody")).total == UsageCounts()
    # other offsets and naive times (taken as UTC) mean the same instants
    east = datetime(2026, 11, 10, 2, tzinfo=timezone(timedelta(hours=2)))
    naive = (start + timedelta(days=2)).replace(tzinfo=None)
    assert (await report(db, since=east, until=naive)).total.requests == 2
    # a NUL, which PostgreSQL refuses in text, is dropped as the record writer drops it
    assert (await report(db, agent="sales\x00")).total.requests == 1


async def test_the_default_window_is_the_last_30_days(db: Database, tmp_path: Path) -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    await store(
        db,
        tmp_path,
        record(now - timedelta(days=30, seconds=1)),
        record(now - timedelta(days=29)),
        record(now - timedelta(seconds=1)),
    )
    result = await usage_report(db, UsageQuery(), now=now)
    assert (result.since, result.until) == (now - timedelta(days=30), now)
    assert result.total.requests == 2
    week = await usage_report(db, UsageQuery(days=7), now=now)
    assert week.total.requests == 1
    until = await usage_report(db, UsageQuery(until=now - timedelta(days=10)), now=now)
    assert until.since == now - timedelta(days=40)
    assert until.total.requests == 2


async def test_a_limit_cuts_the_rows_not_the_total(db: Database, tmp_path: Path) -> None:
    await store(db, tmp_path, *(record(NOV_1, key_id=f"key_{i}") for i in range(5)))
    result = await report(db, by=("key",), limit=2)
    assert [r["key_id"] for r in table(result)] == ["key_0", "key_1"]
    assert result.truncated
    assert result.total == UsageCounts(5, 0, 50, 25, 2.5)
    exact = await report(db, by=("key",), limit=5)
    assert len(exact.rows) == 5 and not exact.truncated


def test_times_are_dates_or_rfc3339_date_times() -> None:
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01", end_of_day=True) == datetime(2026, 11, 2, tzinfo=UTC)
    assert parse_time("2026-11-01T12:30:00Z") == datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    assert parse_time("2026-11-01t12:30:00.5z") == datetime(2026, 11, 1, 12, 30, 0, 500_000, UTC)
    assert parse_time("2026-11-01T12:30:00-03:00") == datetime(2026, 11, 1, 15, 30, tzinfo=UTC)
    assert parse_time("2026-11-01T12:30:00") == datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    # the ends of the calendar clamp rather than fail
    assert parse_time("0001-01-01T00:00:00+01:00") == datetime.min.replace(tzinfo=UTC)
    assert parse_time("9999-12-31", end_of_day=True) == datetime.max.replace(tzinfo=UTC)
    for bad in ("", "yesterday", "2026-13-01", "2026-02-30", "2026-11-01 12:00:00", "2026-11-1",
                "2026-11-01T12:30Z", "2026-11-01T25:00:00Z", "2026-11-01T12:00:00+24:00",
                "\uff12\uff10\uff12\uff16-11-01"):  # fmt: skip
        with pytest.raises(ValueError, match="is not a date"):
            parse_time(bad)


def test_groupings_are_named() -> None:
    assert parse_grouping("day,key,day") == ("day", "key")
    for bad in ("", "key,", "week", "key, day", "KEY"):
        with pytest.raises(ValueError, match="group by one or more of key, agent, model, day"):
            parse_grouping(bad)
    with pytest.raises(ValueError, match="by"):
        UsageQuery(by=())
    with pytest.raises(ValueError, match="days"):
        UsageQuery(days=0)
