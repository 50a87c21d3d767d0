"""The reasoning log's retention: every ``steps.purge_interval_s`` each API process deletes
the steps older than ``steps.retention_days`` (one DELETE by ``created_at``; two processes
running it at once delete nothing twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError

from guarita.aio import cancel_and_wait
from guarita.settings_steps import StepSettings
from guarita.store.database import Database
from guarita.store.steps import purge_steps

log = structlog.get_logger("guarita.steps")


class StepRetention:
    def __init__(
        self,
        db: Database,
        settings: StepSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.purged = 0

    async def purge_once(self) -> int:
        """Delete the steps past retention now; how many went."""
        cutoff = self._clock() - timedelta(days=self._settings.retention_days)
        deleted = await purge_steps(self._db, cutoff)
        self.purged += deleted
        if deleted:
            log.info("steps_purged", deleted=deleted, before=cutoff.isoformat())
        return deleted

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.purge_once()
            except (SQLAlchemyError, OSError) as exc:  # the store away: try again next time
                log.warning("steps_purge_failed", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(self._settings.purge_interval_s)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
