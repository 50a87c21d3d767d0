"""The prompt registry's tables: prompts, their immutable versions and their labels.

A version is inserted once and never updated (there is no update path). A label moves by
compare-and-swap on its ``revision``: the update names the revision it read, so of two
concurrent moves one finds its revision gone and is refused (409 ``label_conflict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from guarita.errors import Conflict, NotFound
from guarita.ops.prompt_render import ModelConfig, PromptVersion
from guarita.store.database import Database
from guarita.store.models import Prompt, PromptLabel, PromptVersionRow

_PUSH_ATTEMPTS = 5
"""Concurrent pushes of one prompt race for the next version number; the loser retries."""


@dataclass(frozen=True, slots=True)
class LabelInfo:
    name: str
    label: str
    version: int
    revision: int
    updated_at: datetime
    updated_by: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "label": self.label, "version": self.version,
                "revision": self.revision, "updated_at": self.updated_at.isoformat(),
                "updated_by": self.updated_by}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PromptSummary:
    name: str
    latest: int
    created_at: datetime
    labels: dict[str, int]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _version(row: PromptVersionRow) -> PromptVersion:
    return PromptVersion(
        name=row.name, version=row.version, template=list(row.template),
        variables=tuple(row.variables), model_config=ModelConfig(**row.model_config_),
        author=row.author, tags=tuple(row.tags), message=row.message, sha256=row.sha256,
        created_at=_utc(row.created_at),
    )  # fmt: skip


def _label(row: PromptLabel) -> LabelInfo:
    return LabelInfo(row.name, row.label, row.version, row.revision, _utc(row.updated_at),
                     row.updated_by)  # fmt: skip


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} does not exist", code="prompt_not_found", param="prompt")


class PromptStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, name: str, template: list[dict[str, str]], variables: Sequence[str],
        model_config: ModelConfig, *, sha256: str, author: str | None, tags: Sequence[str],
        message: str | None,
    ) -> tuple[PromptVersion, bool]:  # fmt: skip
        """A new version, unless the newest has the same ``sha256`` (then that one, and
        False)."""
        for attempt in range(_PUSH_ATTEMPTS):
            try:
                async with self._db.sessions.begin() as session:
                    newest = await self._newest(session, name)
                    if newest is not None and newest.sha256 == sha256:
                        return _version(newest), False
                    now = datetime.now(UTC)
                    if newest is None and await session.get(Prompt, name) is None:
                        session.add(Prompt(name=name, created_at=now))
                        await session.flush()
                    row = PromptVersionRow(
                        name=name, version=(newest.version if newest else 0) + 1,
                        template=template, variables=list(variables),
                        model_config_=model_config.stored(), author=author, tags=list(tags),
                        message=message, sha256=sha256, created_at=now,
                    )  # fmt: skip
                    session.add(row)
                return _version(row), True
            except IntegrityError:
                if attempt == _PUSH_ATTEMPTS - 1:
                    raise Conflict(
                        f"prompt {name!r} is being pushed concurrently; try again",
                        code="prompt_conflict",
                    ) from None
        raise AssertionError("unreachable")

    @staticmethod
    async def _newest(session: AsyncSession, name: str) -> PromptVersionRow | None:
        result = await session.scalar(
            select(PromptVersionRow)
            .where(PromptVersionRow.name == name)
            .order_by(PromptVersionRow.version.desc())
            .limit(1)
        )
        return result

    async def version(self, name: str, version: int | None = None) -> PromptVersion:
        """That version (None: the newest); NotFound if there is none."""
        async with self._db.sessions() as session:
            if version is None:
                row = await self._newest(session, name)
            else:
                row = await session.scalar(
                    select(PromptVersionRow).where(
                        PromptVersionRow.name == name, PromptVersionRow.version == version
                    )
                )
        if row is None:
            raise not_found(f"prompt {name!r}" + (f" version {version}" if version else ""))
        return _version(row)

    async def versions(self, name: str) -> list[PromptVersion]:
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(PromptVersionRow)
                .where(PromptVersionRow.name == name)
                .order_by(PromptVersionRow.version)
            )
            found = [_version(row) for row in rows]
        if not found:
            raise not_found(f"prompt {name!r}")
        return found

    async def summaries(self) -> list[PromptSummary]:
        """Every prompt with its newest version and its labels, by name."""
        async with self._db.sessions() as session:
            result = await session.execute(
                select(PromptVersionRow.name, func.max(PromptVersionRow.version)).group_by(
                    PromptVersionRow.name
                )
            )
            latest: dict[str, int] = {name: int(newest) for name, newest in result.all()}
            prompts = list(await session.scalars(select(Prompt).order_by(Prompt.name)))
            labels: dict[str, dict[str, int]] = {}
            for row in await session.scalars(select(PromptLabel).order_by(PromptLabel.label)):
                labels.setdefault(row.name, {})[row.label] = row.version
        return [
            PromptSummary(p.name, latest.get(p.name, 0), _utc(p.created_at), labels.get(p.name, {}))
            for p in prompts
        ]

    async def label(self, name: str, label: str) -> LabelInfo | None:
        async with self._db.sessions() as session:
            row = await session.get(PromptLabel, (name, label))
        return _label(row) if row is not None else None

    async def labels(self, name: str) -> list[LabelInfo]:
        async with self._db.sessions() as session:
            rows = await session.scalars(
                select(PromptLabel).where(PromptLabel.name == name).order_by(PromptLabel.label)
            )
            return [_label(row) for row in rows]

    async def move_label(
        self, name: str, label: str, version: int, *, expected: int | None, actor: str
    ) -> tuple[LabelInfo, int | None]:
        """Point ``label`` at ``version`` (which must exist); ``expected``: the version the
        label must point at now (0: the label must not exist yet). Returns the label and the
        version it pointed at before. Refused with 409 ``label_conflict`` when the label is
        not at ``expected`` or another move won the race."""
        await self.version(name, version)  # NotFound first
        async with self._db.sessions.begin() as session:
            row = await session.get(PromptLabel, (name, label))
            current = row.version if row is not None else None
            if expected is not None and (current or 0) != expected:
                raise _conflict(name, label, f"it points at {current or 'nothing'}, "
                                f"not {expected or 'nothing'}")  # fmt: skip
            now = datetime.now(UTC)
            if row is None:
                session.add(PromptLabel(name=name, label=label, version=version, updated_at=now,
                                        updated_by=actor, revision=1))  # fmt: skip
                try:
                    await session.flush()
                except IntegrityError:
                    raise _conflict(name, label, "another move created it first") from None
                revision = 1
            else:
                revision = row.revision + 1
                result = await session.execute(
                    update(PromptLabel)
                    .where(PromptLabel.name == name, PromptLabel.label == label,
                           PromptLabel.revision == row.revision)
                    .values(version=version, updated_at=now, updated_by=actor, revision=revision)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip
                if getattr(result, "rowcount", 0) != 1:
                    raise _conflict(name, label, "another move changed it meanwhile")
        return LabelInfo(name, label, version, revision, now, actor), current


def _conflict(name: str, label: str, why: str) -> Conflict:
    return Conflict(f"label {label!r} of prompt {name!r} was not moved: {why}",
                    code="label_conflict", param="label")  # fmt: skip
