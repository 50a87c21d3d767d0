"""``guarita cache warm FILE.jsonl``: send a file of requests through a running server so
that their answers are in the cache before the traffic that asks for them.

Each line is a chat request: the body of ``POST /v1/chat/completions`` (``{"model": …,
"messages": […]}``), or a line of the OpenAI Batch API's input format (``{"custom_id": …,
"method": "POST", "url": "/v1/chat/completions", "body": {…}}``), so a batch input file
warms as it is. Requests go through the whole pipeline of the server (its limits, costs
and cache apply, as for any caller), with the caller's key from ``GUARITA_API_KEY``: the
entries land in that key's namespace (or in the team's or agent's one it shares).

At most ``concurrency`` requests are in flight (10 by default, the source document's
figure for batches). A 429 or a 5xx is retried after its ``Retry-After`` (at most
``attempts`` times). Progress is appended to ``FILE.jsonl.warm`` as each line ends, so a
run that is stopped (Ctrl-C, a lost server) resumes where it was: a line whose answer is
stored or found is not sent again; a line that failed is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

CHAT_URL = "/v1/chat/completions"
DONE = frozenset({"stored", "cached", "uncached"})
"""Outcomes that end a line for good: its answer was stored, was already there, or the
server does not cache it (its model or agent has the cache off, or the temperature is not
cacheable): sending it again would change nothing."""
MAX_RETRY_AFTER_S = 30.0


class WarmFileError(ValueError):
    """The file is not a list of chat requests: names the line."""


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    """1-based, as an editor shows it."""
    body: dict[str, Any]


@dataclass(slots=True)
class Report:
    """What a run did: outcomes by name, the lines skipped as done by an earlier run, and
    the failures (line number and message)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)


def read_requests(path: Path) -> list[Line]:
    """Every non-blank line of ``path`` as a chat request body; :class:`WarmFileError`
    naming the first line that is not one (before anything is sent)."""
    lines = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise WarmFileError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise WarmFileError(f"line {number}: a JSON object is expected")
            body: Any = item
            if "body" in item or "url" in item:  # the Batch API's input format
                if item.get("url") != CHAT_URL:
                    raise WarmFileError(
                        f"line {number}: url must be {CHAT_URL!r}, not {item.get('url')!r}"
                    )
                body = item.get("body")
                if not isinstance(body, dict):
                    raise WarmFileError(f"line {number}: body must be a JSON object")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise WarmFileError(f"line {number}: messages must be a non-empty list")
            if not isinstance(body.get("model"), str):
                raise WarmFileError(f"line {number}: model must be a string")
            fields = {k: v for k, v in body.items() if k != "stream_options"}
            lines.append(Line(number, {**fields, "stream": False}))  # a stream's key is the same
    return lines


def progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".warm")


def done_lines(progress: Path) -> set[int]:
    """The lines an earlier run finished for good (a torn last line is ignored)."""
    done: set[int] = set()
    if not progress.exists():
        return done
    for raw in progress.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            entry = orjson.loads(raw)
            if entry["outcome"] in DONE:
                done.add(int(entry["line"]))
    return done


class Unauthorized(Exception):
    """The server refused the key: nothing else will pass either."""


class Unreachable(Exception):
    """Every recent try failed to reach the server: stop (progress is kept) rather than
    wait out each remaining line's retries."""


async def warm(
    url: str,
    lines: Iterable[Line],
    *,
    progress: Path,
    done: set[int],
    api_key: str | None,
    concurrency: int = 10,
    attempts: int = 3,
    timeout_s: float = 300.0,
    on_line: Callable[[int, str], None] | None = None,
) -> Report:
    """Send the lines not in ``done`` (:func:`done_lines` of ``progress``), ``concurrency``
    at a time; each one's outcome goes to ``progress`` as it ends. Raises
    :class:`Unauthorized` on a 401 or 403, and :class:`Unreachable` once
    ``concurrency * attempts`` tries in a row could not reach the server."""
    report = Report()
    misses = _Misses(max(1, concurrency) * attempts)
    todo: asyncio.Queue[Line] = asyncio.Queue()
    for line in lines:
        if line.number in done:
            report.skipped += 1
        else:
            todo.put_nowait(line)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=timeout_s
    ) as client:
        with progress.open("ab") as log:

            def finish(line: Line, outcome: str, message: str | None = None) -> None:
                report.outcomes[outcome] += 1
                if message is not None:
                    report.failures.append((line.number, message))
                entry: dict[str, Any] = {"line": line.number, "outcome": outcome}
                if message is not None:
                    entry["error"] = message
                log.write(orjson.dumps(entry) + b"\n")
                log.flush()
                if on_line is not None:
                    on_line(line.number, outcome)

            async def worker() -> None:
                while not todo.empty():
                    line = todo.get_nowait()
                    outcome, message = await _send(client, line, attempts, misses)
                    finish(line, outcome, message)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return report


class _Misses:
    """Tries in a row that did not reach the server, across the workers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


async def _send(
    client: httpx.AsyncClient, line: Line, attempts: int, misses: _Misses
) -> tuple[str, str | None]:
    """One line's outcome: ``stored``, ``cached``, ``uncached`` or ``failed`` (with why)."""
    message = ""
    for attempt in range(attempts):
        try:
            response = await client.post(CHAT_URL, json=line.body)
        except httpx.TransportError as exc:
            message = f"{type(exc).__name__}: {exc}"
            misses.count += 1
            if misses.count >= misses.limit:
                raise Unreachable(message) from None
            await asyncio.sleep(min(2.0**attempt, MAX_RETRY_AFTER_S))
            continue
        misses.count = 0
        if response.status_code in (401, 403):
            raise Unauthorized(_error_message(response))
        if response.status_code == 200:
            header = response.headers.get("x-guarita-cache")
            if header == "miss":
                return "stored", None
            if header in ("hit", "semantic-hit"):
                return "cached", None
            return "uncached", None
        message = f"{response.status_code}: {_error_message(response)}"
        if response.status_code != 429 and response.status_code < 500:
            return "failed", message  # the request itself is wrong: no retry
        await asyncio.sleep(_retry_after(response, attempt))
    return "failed", message


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 2.0**attempt
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
