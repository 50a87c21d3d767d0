"""Time of one in-process error-budget evaluation (``SloEvaluator.evaluate``: one aggregate
query per agent and window, six windows by default) over a store holding a month of
records, on SQLite and PostgreSQL. Usage:

    .venv/bin/python bench/slo_eval.py [--records 300000] [--agents 3] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import insert  # noqa: E402

from guarita.ops.slo_service import SloEvaluator  # noqa: E402
from guarita.settings import Settings  # noqa: E402
from guarita.store.database import Database  # noqa: E402
from guarita.store.models import RequestRow  # noqa: E402
from guarita.store.records import normalize  # noqa: E402


def _rows(records: int, agents: int, now: datetime) -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = []
    for i in range(records):
        ok = rng.random() > 0.01
        rows.append({
            "request_id": f"r{i}", "endpoint": "chat", "model": "m", "agent": f"a{i % agents}",
            "status": "success" if ok else "error", "status_code": 200 if ok else 503,
            "latency_ms": 1.0, "quality": rng.random() if ok else None,
            "created_at": now - timedelta(seconds=rng.uniform(0, 31 * 86400)),
        })  # fmt: skip
    return rows


async def run(url: str, records: int, agents: int, repeats: int) -> None:
    settings = Settings(
        models={"m": {"provider": "scripted"}},
        agents={f"a{i}": {"model": "m"} for i in range(agents)},
        default_agent="a0",
    )
    db = Database(url)
    await db.migrate()
    now = datetime.now(UTC)
    rows = _rows(records, agents, now)
    async with db.engine.begin() as conn:
        for start in range(0, len(rows), 500):
            await conn.execute(
                insert(RequestRow.__table__), [normalize(r) for r in rows[start : start + 500]]
            )
    evaluator = SloEvaluator(settings, db)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        statuses = await evaluator.evaluate(now=now)
        times.append(time.perf_counter() - started)
    await db.aclose()
    queries = agents * len(evaluator.windows)
    backend = url.split(":", 1)[0]
    print(f"{backend}: {records} records, {agents} agents ({len(statuses)} SLOs), "
          f"{queries} queries: median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms per evaluation")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'slo.db'}"
        asyncio.run(run(url, args.records, args.agents, args.repeats))
    if args.postgres:
        asyncio.run(run(args.postgres, args.records, args.agents, args.repeats))


if __name__ == "__main__":
    main()
