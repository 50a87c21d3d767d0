"""Migrations of processes that start together on one database."""

from __future__ import annotations

import asyncio

from guarita.store.database import Database
from tests.helpers import query


async def test_processes_migrating_at_once_all_start(store_url: str) -> None:
    """Replicas (or an API and its worker) starting together on PostgreSQL used to race on
    CREATE TABLE: all but one failed with a unique violation in pg_type, and restarted."""
    databases = [Database(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(db.migrate() for db in databases))
    finally:
        for db in databases:
            await db.aclose()
    rows = await query(store_url, "SELECT version_num FROM alembic_version")
    assert len(rows) == 1
