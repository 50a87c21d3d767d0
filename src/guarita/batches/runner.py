"""A batch, run as one durable task (``kind="batch"``) on the task workers.

A run takes the lines that have no stored outcome yet, at most ``batches.concurrency``
at a time, and stores each outcome as it ends; a run after a crash (the task's lease ran
out, another worker claimed it) therefore only runs what is left, and no line is answered
twice in the output. A cancel (status ``cancelling``, seen within
``batches.poll_interval_s``) or the end of the completion window stops new lines from
starting; lines in flight finish. Then the output and error files are assembled from the
stored outcomes, in input order, and the batch ends (completed, cancelled, expired).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from guarita.batches.input import BatchRequest, InputError, parse_input
from guarita.batches.lines import LineRunner, failed
from guarita.errors import AuthenticationFailed, GuaritaError
from guarita.settings import BatchSettings
from guarita.store.batches import (
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINAL,
    BatchInfo,
    BatchStore,
    FileStore,
    LineOutcome,
    StoredOutcome,
)
from guarita.store.keys import KeyStore
from guarita.store.tasks import TaskInfo
from guarita.types import Caller

log = structlog.get_logger("guarita.batches")

LineListener = Callable[[str, bool], None]
"""Told of each stored line: the batch's endpoint and whether the line succeeded."""
EndListener = Callable[[BatchInfo], None]
"""Told of each batch that ended, once, by the process that ended it."""

_EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


class BatchRunner:
    def __init__(
        self,
        batches: BatchStore,
        files: FileStore,
        keys: KeyStore,
        lines: LineRunner,
        settings: BatchSettings,
        *,
        on_line: LineListener | None = None,
        on_end: EndListener | None = None,
    ) -> None:
        self._batches = batches
        self._files = files
        self._keys = keys
        self._lines = lines
        self._settings = settings
        self._on_line = on_line
        self._on_end = on_end

    async def run(self, task: TaskInfo) -> dict[str, Any]:
        """Run (or go on with) the batch of a task; its result is the batch's status."""
        batch_id = str(task.payload["batch_id"])
        batch = await self._batches.get(batch_id)
        if batch is None or batch.status in FINAL:
            return {"batch_id": batch_id, "status": batch.status if batch else "deleted"}
        content = await self._files.content(batch.input_file_id)
        if content is None:
            error = {
                "code": "file_not_found",
                "line": None,
                "param": "input_file_id",
                "message": f"the input file {batch.input_file_id!r} was deleted",
            }
            return await self._fail(batch, error)
        try:
            requests = parse_input(
                content,
                max_lines=self._settings.max_lines,
                endpoint=batch.endpoint,
                param="input_file_id",
            )
        except InputError as exc:  # checked at creation: only a changed setting gets here
            error = {"code": exc.code, "line": None, "param": exc.param, "message": exc.message}
            return await self._fail(batch, error)
        caller = await self._caller(batch)
        await self._batches.start(batch_id)
        ended_by = await self._run_lines(batch, requests, caller)
        return await self._finalize(batch, requests, ended_by)

    async def _caller(self, batch: BatchInfo) -> Caller | None:
        """Who the lines run as: the batch's key with its tier and limits as they are now;
        None if the key was revoked (each line then fails with 401)."""
        if batch.key_id is None:
            return Caller.anonymous()
        key = await self._keys.get(batch.key_id)
        if key is None:
            return None
        return Caller(key_id=key.id, name=key.name, tier=key.tier, limits=key.limits)

    async def _run_lines(
        self, batch: BatchInfo, requests: list[BatchRequest], caller: Caller | None
    ) -> str:
        """Run every line without an outcome; the status the batch goes on to."""
        done = await self._batches.done_lines(batch.id)
        pending = deque(r for r in requests if r.index not in done)
        stop = asyncio.Event()
        ended_by = COMPLETED

        def stop_for(status: str) -> None:
            nonlocal ended_by
            if not stop.is_set():
                ended_by = status
                stop.set()

        async def work() -> None:
            while pending and not stop.is_set():
                request = pending.popleft()
                outcome = await self._line(batch, request, caller, stop)
                if outcome is None:
                    continue
                saved = await self._batches.save(
                    batch.id, request.index, request.custom_id, outcome
                )
                if saved and self._on_line is not None:
                    self._on_line(batch.endpoint, outcome.succeeded)

        watch = asyncio.create_task(self._watch(batch, stop_for))
        try:
            workers = min(self._settings.concurrency, len(pending))
            await asyncio.gather(*(work() for _ in range(workers)))
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        return ended_by

    async def _line(
        self, batch: BatchInfo, request: BatchRequest, caller: Caller | None, stop: asyncio.Event
    ) -> LineOutcome | None:
        request_id = f"{batch.id}-{request.index + 1}"
        if caller is None:
            return failed(AuthenticationFailed("the batch's API key was revoked"), None)
        try:
            return await self._lines.run(request, caller, request_id=request_id, stop=stop)
        except Exception as exc:  # a bug on one line must not fail every rerun of the batch
            log.exception(
                "batch_line_crashed",
                batch_id=batch.id,
                request_id=request_id,
                error_type=type(exc).__name__,
            )
            crash = GuaritaError("internal error; see the server log for this request id")
            return failed(crash, request_id)

    async def _watch(self, batch: BatchInfo, stop_for: Callable[[str], None]) -> None:
        """Stop the run at the end of the completion window, or when a cancel comes."""
        poll = self._settings.poll_interval_s
        while True:
            left = (batch.expires_at - datetime.now(UTC)).total_seconds()
            if left <= 0:
                stop_for(EXPIRED)
                return
            status = await self._batches.status(batch.id)
            if status is None or status == CANCELLING:
                stop_for(CANCELLING)
                return
            await asyncio.sleep(min(poll, left))

    async def _finalize(
        self, batch: BatchInfo, requests: list[BatchRequest], ended_by: str
    ) -> dict[str, Any]:
        if ended_by == COMPLETED:
            await self._batches.finalizing(batch.id)
        stored = await self._batches.outcomes(batch.id)
        expired: list[BatchRequest] = []
        if ended_by == EXPIRED:
            answered = {o.line for o in stored}
            expired = [r for r in requests if r.index not in answered]
        output, errors = assemble(stored, expired)
        status = EXPIRED if ended_by == EXPIRED else COMPLETED  # a cancel: cancelled
        ended = await self._batches.finish(
            batch.id, status, output=output, errors_file=errors, extra_failed=len(expired)
        )
        return self._ended(batch, ended)

    async def _fail(self, batch: BatchInfo, error: dict[str, Any]) -> dict[str, Any]:
        ended = await self._batches.finish(
            batch.id,
            FAILED,
            output=None,
            errors_file=None,
            errors={"object": "list", "data": [error]},
        )
        return self._ended(batch, ended)

    def _ended(self, batch: BatchInfo, ended: tuple[BatchInfo, bool] | None) -> dict[str, Any]:
        if ended is None:
            return {"batch_id": batch.id, "status": "deleted"}
        info, changed = ended
        if changed:
            log.info(
                "batch_ended",
                batch_id=info.id,
                status=info.status,
                total=info.total,
                completed=info.completed,
                failed=info.failed,
            )
            if self._on_end is not None:
                self._on_end(info)
        return {"batch_id": info.id, "status": info.status}

    async def abandon(self, batch_id: str, message: str) -> None:
        """Fail a batch whose task failed for good (its workers kept dying, or the store
        kept refusing), so that it does not show ``in_progress`` for ever."""
        batch = await self._batches.get(batch_id)
        if batch is not None and batch.status not in FINAL:
            error = {"code": "batch_failed", "line": None, "param": None, "message": message}
            await self._fail(batch, error)


def assemble(
    stored: list[StoredOutcome], expired: list[BatchRequest]
) -> tuple[bytes | None, bytes | None]:
    """The output file (answered lines) and the error file (failed lines, then the lines
    the completion window left unrun), each in input order; None for an empty one."""
    output: list[bytes] = []
    errors: list[tuple[int, bytes]] = []
    for item in stored:
        o = item.outcome
        response = None
        if o.status_code is not None:
            response = {"status_code": o.status_code, "request_id": o.request_id, "body": o.body}
        line = {
            "id": item.id,
            "custom_id": item.custom_id,
            "response": response,
            "error": None if o.succeeded else o.error,
        }
        if o.succeeded:
            output.append(orjson.dumps(line))
        else:
            errors.append((item.line, orjson.dumps(line)))
    for request in expired:
        line = {
            "id": f"batch_req_expired_{request.index}",
            "custom_id": request.custom_id,
            "response": None,
            "error": _EXPIRED_ERROR,
        }
        errors.append((request.index, orjson.dumps(line)))
    errors.sort(key=lambda pair: pair[0])

    def jsonl(lines: list[bytes]) -> bytes | None:
        return b"".join(line + b"\n" for line in lines) if lines else None

    return jsonl(output), jsonl([line for _, line in errors])
