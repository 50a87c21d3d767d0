"""A process appending audit entries (``python -m tests.store.audit_appender URL TAG N``):
one of several run at once against the same store by tests/store/test_audit.py."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from guarita.store.audit import AuditWriter
from guarita.store.database import Database


async def main(url: str, tag: str, count: int) -> None:
    db = Database(url)
    with tempfile.TemporaryDirectory() as spool:
        writer = AuditWriter(db, spool_dir=Path(spool), batch_size=5, flush_interval_s=0.01)
        await writer.start()
        for i in range(count):
            writer.add({"category": "access", "action": "test.append", "actor": tag,
                        "target": f"{tag}-{i}", "outcome": "success"})  # fmt: skip
            if i % 3 == 0:
                await asyncio.sleep(0)
        await writer.aclose()
        left = await asyncio.to_thread(lambda: list(Path(spool).iterdir()))
        assert not left, "spooled: the store was away?"
    await db.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
