"""Usage and cost per key, agent, model and day, read from the request records.

Every model call has exactly one row in ``requests`` (records are idempotent by
``record_id``), so one ``GROUP BY`` over that table is the whole report: no counters to
keep in step. The model a row counts for is ``served_by`` (the model that answered, after
fallbacks) where it is set, else ``model`` (the one asked for): a call that fell back to a
cheaper model is that model's usage and cost. Days are UTC days, on every store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, cast, get_args

from sqlalchemy import Date, Select, String, Table, case, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from guarita.store.database import Database
from guarita.store.models import RequestRow

Grouping = Literal["key", "agent", "model", "day"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)
FIELDS: dict[Grouping, str] = {"key": "key_id", "agent": "agent", "model": "model", "day": "day"}
"""The field that holds each grouping in a row's JSON form."""
DEFAULT_DAYS = 30

_TABLE: Table = RequestRow.__table__  # type: ignore[assignment]
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True, frozen=True, kw_only=True)
class UsageQuery:
    """Which records to count and how to group them; open ends are filled in by
    :meth:`window` at the time of the report."""

    since: datetime | None = None
    """Inclusive; default: ``days`` before ``until``. A naive time is taken as UTC."""
    until: datetime | None = None
    """Exclusive; default: now."""
    days: int = DEFAULT_DAYS
    key_id: str | None = None
    agent: str | None = None
    model: str | None = None
    """The model that answered (``served_by``, else ``model``), as in the grouping."""
    by: tuple[Grouping, ...] = GROUPINGS
    limit: int | None = None
    """At most this many rows (in grouping order); the total still counts every record."""

    def __post_init__(self) -> None:
        unknown = [g for g in self.by if g not in GROUPINGS]
        if unknown or not self.by:
            raise ValueError(f"by: group by one or more of {', '.join(GROUPINGS)}")
        if self.days < 1:
            raise ValueError("days: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be at least 1")
        object.__setattr__(self, "by", tuple(dict.fromkeys(self.by)))

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """``(since, until)`` in UTC, the defaults filled in from ``now``."""
        until = _utc(self.until) if self.until is not None else _utc(now)
        if self.since is not None:
            return _utc(self.since), until
        try:
            return until - timedelta(days=self.days), until
        except OverflowError:
            return _EARLIEST, until


@dataclass(slots=True, frozen=True)
class UsageCounts:
    requests: int = 0
    errors: int = 0
    """Calls that ended in an error (the caller was answered with one)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: UsageCounts) -> UsageCounts:
        return UsageCounts(
            self.requests + other.requests,
            self.errors + other.errors,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }


@dataclass(slots=True, frozen=True)
class UsageRow:
    """One group. A dimension the report is not grouped by is None; so is ``key_id`` for
    anonymous (local development) calls and ``agent`` for calls made to a model directly."""

    counts: UsageCounts
    key_id: str | None = None
    agent: str | None = None
    model: str | None = None
    day: date | None = None

    def dimension(self, grouping: Grouping) -> str | None:
        """This row's value for one grouping, as text (a day as ``2026-11-01``)."""
        if grouping == "key":
            return self.key_id
        if grouping == "agent":
            return self.agent
        if grouping == "model":
            return self.model
        return self.day.isoformat() if self.day else None


@dataclass(slots=True, frozen=True)
class UsageReport:
    since: datetime
    until: datetime
    by: tuple[Grouping, ...]
    rows: list[UsageRow] = field(default_factory=list)
    total: UsageCounts = field(default_factory=UsageCounts)
    truncated: bool = False
    """Whether ``limit`` left rows out (``total`` still counts them)."""

    def row_json(self, row: UsageRow) -> dict[str, Any]:
        """A row with the grouped dimensions only, then its counts: the form the CLI's
        ``--json`` and ``GET /admin/usage`` share."""
        dimensions = {FIELDS[g]: row.dimension(g) for g in self.by}
        return {**dimensions, **row.counts.to_json()}

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": list(self.by),
            "rows": [self.row_json(row) for row in self.rows],
            "total": self.total.to_json(),
            "truncated": self.truncated,
        }


async def usage_report(
    db: Database, query: UsageQuery, *, now: datetime | None = None
) -> UsageReport:
    """The usage ``query`` asks for: one grouped query, and a second for the total only
    when ``limit`` cut the rows short. A call counts for ``served_by`` (the model that
    answered, after fallbacks) where it is set, else for ``model``."""
    since, until = query.window(now or datetime.now(UTC))
    dimensions = _dimensions(db.engine.dialect.name)
    conditions = [_TABLE.c.created_at >= since, _TABLE.c.created_at < until]
    for column, stored_in, value in (
        (_TABLE.c.key_id, _TABLE.c.key_id, query.key_id),
        (_TABLE.c.agent, _TABLE.c.agent, query.agent),
        (dimensions["model"], _TABLE.c.served_by, query.model),
    ):
        if value is not None:
            conditions.append(column == _as_stored(value, stored_in))
    grouped = [dimensions[g].label(g) for g in query.by]
    statement: Select[Any] = (
        select(*grouped, *_counts())
        .where(*conditions)
        .group_by(*(dimensions[g] for g in query.by))
        .order_by(*(dimensions[g].asc().nulls_first() for g in query.by))
    )
    if query.limit is not None:
        statement = statement.limit(query.limit + 1)
    async with db.engine.connect() as conn:
        found = (await conn.execute(statement)).mappings().all()
        truncated = query.limit is not None and len(found) > query.limit
        total = None
        if truncated:
            found = found[: query.limit]
            total = _counts_of((await conn.execute(select(*_counts()).where(*conditions))).one())
    rows = [
        UsageRow(
            counts=_counts_of(row),
            key_id=row.get("key"),
            agent=row.get("agent"),
            model=row.get("model"),
            day=row.get("day"),
        )
        for row in found
    ]
    if total is None:
        total = sum((row.counts for row in rows), UsageCounts())
    return UsageReport(since, until, query.by, rows, total, truncated)


def _dimensions(dialect: str) -> dict[Grouping, ColumnElement[Any]]:
    c = _TABLE.c
    if dialect == "postgresql":
        # the UTC day whatever the session's TimeZone; a literal, not a bound parameter,
        # or PostgreSQL would not see the GROUP BY expression as the selected one
        day: ColumnElement[Any] = func.timezone(literal_column("'UTC'"), c.created_at).cast(Date)
    else:
        # SQLite holds the time as text, without its offset: the UTC wall time, as records
        # are made in UTC (and query bounds are converted to it, _utc)
        day = func.date(c.created_at, type_=Date)
    return {
        "key": c.key_id,
        "agent": c.agent,
        "model": func.coalesce(c.served_by, c.model),
        "day": day,
    }


def _counts() -> list[ColumnElement[Any]]:
    c = _TABLE.c
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(case((c.status != "success", 1), else_=0)), 0).label("errors"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(c.cost_usd), 0.0).label("cost_usd"),
    ]


def _counts_of(row: Any) -> UsageCounts:
    return UsageCounts(
        int(row.requests),
        int(row.errors),
        int(row.input_tokens),
        int(row.output_tokens),
        float(row.cost_usd),
    )


def _as_stored(value: str, column: Any) -> str:
    """A filter value as the record writer stores it (no NUL, clipped to the column), so
    that it matches what was stored and PostgreSQL, which refuses NUL, can take it."""
    length = column.type.length if isinstance(column.type, String) else None
    return value.replace("\x00", "")[:length]


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999, east or west of UTC
        return _EARLIEST if moment.year == 1 else _LATEST


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """A date (``2026-11-01``: its UTC midnight; with ``end_of_day``, the next one, so an
    ``until`` date includes that day) or an RFC 3339 date-time (UTC without an offset).
    Raises ValueError saying what it takes."""
    upper = text.upper()  # RFC 3339 allows a lower-case "t" and "z"
    try:
        if _DATE.fullmatch(upper):
            day = date.fromisoformat(upper)
            start = datetime.combine(day, time(), tzinfo=UTC)
            if not end_of_day:
                return start
            return _LATEST if day == date.max else start + timedelta(days=1)
        if _DATE_TIME.fullmatch(upper):
            return _utc(datetime.fromisoformat(upper))
    except ValueError:
        pass
    raise ValueError(
        f"{text!r} is not a date (2026-11-01) or a date-time (2026-11-01T12:00:00Z)"
    ) from None


def parse_grouping(text: str) -> tuple[Grouping, ...]:
    """``key,agent,model,day`` (any of them, in the order given). Raises ValueError."""
    names = text.split(",")
    unknown = [name for name in names if name not in GROUPINGS]
    if unknown:
        raise ValueError(
            f"{', '.join(map(repr, unknown))}: group by one or more of "
            f"{', '.join(GROUPINGS)}, separated by commas"
        )
    return tuple(dict.fromkeys(cast(list[Grouping], names)))
