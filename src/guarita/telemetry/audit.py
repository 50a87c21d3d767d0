"""The audit log as the rest of Guarita writes to it: :class:`AuditLog` (``runtime.audit``)
and :func:`actor_of`, the one place that says who a caller is in it.

:meth:`AuditLog.record` never blocks and never raises: the entry is queued on an
:class:`~guarita.store.audit.AuditWriter` (batched, spooled to disk when the store is
away, flushed on close) and chained when written. Entries say who did what to what, and
how it ended; never a prompt, an answer, personal data or a key (a key is named by its id
or its short prefix).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from guarita.store.audit import AuditWriter
from guarita.store.database import Database
from guarita.types import Caller, new_record_id

log = structlog.get_logger("guarita.audit")

ANONYMOUS = "anonymous"
MISSING_KEY = "missing"


def actor_of(caller: Caller | None) -> str:
    """Who a caller is in the audit log: ``jwt:<sub>`` for a token's caller, its key id
    for a key's, else ``anonymous`` (auth off, or localhost development mode)."""
    if caller is None:
        return ANONYMOUS
    if caller.auth == "jwt" and caller.subject:
        return "jwt:" + caller.subject
    return caller.key_id or ANONYMOUS


def key_prefix(token: str | None) -> str:
    """A presented key as the audit log names it: a short prefix, never enough to use it
    (``gua_abc…``); ``missing`` when none was sent."""
    if not token:
        return MISSING_KEY
    token = "".join(ch for ch in token if ch.isprintable())
    return token[:7] + "…" if len(token) > 12 else "…"


def cli_actor() -> str:
    """The actor of a CLI command: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


_URL_PASSWORD = re.compile(r"(://[^/:@\s]*):[^@\s]*@")


def _without_passwords(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    if isinstance(value, list):
        return [_without_passwords(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_passwords(v) for k, v in value.items()}
    return value


def settings_digest(settings: Any) -> str:
    """A SHA-256 of the settings as loaded, to tell one configuration from another. API
    keys are never settings (only the names of the variables holding them), and a
    password in a URL (``store.url``, ``redis_url``) is masked before hashing."""
    dumped = _without_passwords(settings.model_dump(mode="json"))
    return hashlib.sha256(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)).hexdigest()


class AuditLog:
    """Records audit entries; with ``enabled`` false, records nothing."""

    def __init__(
        self,
        db: Database,
        *,
        spool_dir: Path,
        dead_letter_dir: Path | None = None,
        enabled: bool = True,
        batch_size: int = 100,
        flush_interval_s: float = 0.5,
        max_pending: int = 20_000,
        on_entry: Callable[[str, str], None] | None = None,
        on_dead_letter: Callable[[], None] | None = None,
    ) -> None:
        self.enabled = enabled
        self.writer = AuditWriter(
            db,
            spool_dir=spool_dir,
            dead_letter_dir=dead_letter_dir,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            max_pending=max_pending,
            on_dead_letter=on_dead_letter,
        )
        self._on_entry = on_entry
        self._started = False

    def record(
        self,
        category: str,
        action: str,
        actor: str,
        target: str | None,
        outcome: str,
        request_id: str | None = None,
        client_ip: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Queue one entry (``category``: access, data or change; ``outcome``: success,
        denied or failure). Never blocks."""
        if not self.enabled:
            return
        entry = {
            "entry_id": new_record_id(),
            "created_at": datetime.now(UTC),
            "category": category,
            "action": action,
            "actor": actor,
            "target": target,
            "outcome": outcome,
            "request_id": request_id,
            "client_ip": client_ip,
            "details": details,
        }
        try:
            self.writer.add(entry)
        except Exception as exc:  # noqa: BLE001 - auditing never fails the audited call
            log.error("audit_entry_not_queued", action=action, error_type=type(exc).__name__)
            return
        if self._on_entry is not None:
            self._on_entry(category, outcome)

    async def start(self) -> None:
        """Write in the background (and replay the spool); without it, entries are
        written by :meth:`flush` or :meth:`aclose` (the CLI)."""
        if self.enabled and not self._started:
            self._started = True
            await self.writer.start()

    async def flush(self) -> None:
        await self.writer.flush()

    async def aclose(self) -> None:
        """Write what is queued; what the store cannot take is spooled, never lost."""
        await self.writer.aclose()
