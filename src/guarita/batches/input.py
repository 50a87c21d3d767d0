"""A batch input file: JSONL, one request a line, checked whole before anything runs.

Each line is ``{"custom_id": …, "method": "POST", "url": "/v1/chat/completions", "body":
{…}}``, as OpenAI's Batch API takes it. What makes the *file* unusable (not JSON, a field
missing, a duplicate ``custom_id``, another method, an unsupported or mixed ``url``, too
many lines) is an :class:`InputError` naming the line: a 400 at upload or at batch
creation. What makes one *request* fail (a model the key may not use, a body the route
would refuse) is left to the run: that line's error, in the batch's error file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from guarita.errors import InvalidRequest

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
"""The ``url`` (and batch ``endpoint``) values a batch may use."""


class InputError(InvalidRequest):
    """A batch input file that cannot run: the message names the line (1-based)."""

    code = "invalid_batch_input"


@dataclass(frozen=True, slots=True)
class BatchRequest:
    index: int
    """Its place among the file's requests, from 0: the key of its outcome."""
    line: int
    """Its line in the file, from 1, as an editor shows it."""
    custom_id: str
    url: str
    body: dict[str, Any]


def parse_input(
    content: bytes, *, max_lines: int, endpoint: str | None = None, param: str = "file"
) -> list[BatchRequest]:
    """Every request of ``content``, in order; :class:`InputError` for the first line that
    is wrong. With ``endpoint``, each line's ``url`` must be it; without, the lines must
    agree on one supported ``url``. Blank lines are skipped."""
    requests: list[BatchRequest] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(requests) == max_lines:
            raise InputError(
                f"the file has more than {max_lines} requests, the most a batch takes",
                param=param,
                code="too_many_requests",
            )
        request = _request(raw, number, len(requests), param)
        first = seen.setdefault(request.custom_id, number)
        if first != number:
            raise InputError(
                f"line {number}: custom_id {_short(request.custom_id)} is already used on "
                f"line {first}; each request needs its own",
                param=param,
                code="duplicate_custom_id",
            )
        expected = endpoint or (requests[0].url if requests else None)
        if expected is not None and request.url != expected:
            where = "the batch's endpoint" if endpoint else f"line {requests[0].line}'s url"
            raise InputError(
                f"line {number}: url {request.url!r} differs from {where} {expected!r}; "
                "a batch's requests all go to one endpoint",
                param=param,
                code="mismatched_endpoint",
            )
        requests.append(request)
    if not requests:
        raise InputError(
            "the file has no requests: one JSON object a line is expected",
            param=param,
            code="empty_file",
        )
    return requests


def _request(raw: bytes, number: int, index: int, param: str) -> BatchRequest:
    def wrong(message: str, code: str = "invalid_batch_line") -> InputError:
        return InputError(f"line {number}: {message}", param=param, code=code)

    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise wrong(f"not valid JSON ({exc.msg})", "invalid_json_line") from None
    if not isinstance(item, dict):
        raise wrong("must be a JSON object with custom_id, method, url and body")
    missing = [name for name in ("custom_id", "method", "url", "body") if name not in item]
    if missing:
        raise wrong(f"{', '.join(missing)} missing", "missing_required_parameter")
    custom_id, method, url, body = item["custom_id"], item["method"], item["url"], item["body"]
    if not isinstance(custom_id, str) or not custom_id:
        raise wrong("custom_id must be a non-empty string")
    if method != "POST":
        raise wrong(f"method must be 'POST', not {_short(method)}", "invalid_method")
    if url not in ENDPOINTS:
        known = " or ".join(repr(e) for e in ENDPOINTS)
        raise wrong(f"url must be {known}, not {_short(url)}", "invalid_url")
    if not isinstance(body, dict):
        raise wrong("body must be a JSON object (the request the url takes)")
    return BatchRequest(index, number, custom_id, url, body)


def _short(value: Any) -> str:
    """A value for a message: quoted, and cut so that a huge one does not fill it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
