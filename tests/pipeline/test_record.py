"""The request record: made with its call, annotated by the stages, completed by Recording,
and the one source of the stored row, the event and the request's log line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from guarita.errors import UpstreamError
from guarita.pipeline import compose
from guarita.runtime import Runtime
from guarita.settings import load_settings
from guarita.store.models import RequestRow
from guarita.types import Call, Caller, Reply, RequestContext, RequestRecord
from tests.helpers import query

COMPLEX = (
    "Explain step by step why this recursive function is slow, then prove the bound:\n"
    "```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```\n"
    "Compare it with a memoised version and analyse the trade-offs."
)


def test_the_record_is_the_table() -> None:
    """Every column of ``requests`` (but the row id) is a field of the record, and every
    field but the log-only ones (the error's detail, a semantic hit's cosine) is a column:
    one definition of what a record holds."""
    columns = {c.name for c in RequestRow.__table__.columns} - {"id"}  # type: ignore[attr-defined]
    names = {f.name for f in fields(RequestRecord)}
    assert names - columns == {"error_detail", "cache_similarity"}
    assert columns - names == set()


def test_a_record_is_made_with_its_call() -> None:
    call = Call(request_id="r-1", model="m", body={}, caller=Caller("k1", "svc", "pro"),
                agent="a", stream=True, session_id="s")  # fmt: skip
    record = call.record
    assert (record.request_id, record.model, record.requested_model) == ("r-1", "m", "m")
    assert (record.key_id, record.agent, record.stream, record.session_id) == ("k1", "a", True, "s")
    assert record.created_at.tzinfo is not None and len(record.record_id) == 32
    other = Call(request_id="r-1", model="m", body={}, caller=Caller.anonymous())
    assert other.record.record_id != record.record_id  # a repeated request id is another call


ROUTING = {"mode": "complexity", "simple": "small", "medium": "small", "complex": "big"}


def settings_for(tmp_path: Path, store_url: str) -> Any:
    return load_settings(
        data_dir=tmp_path,
        store={"url": store_url},
        models={"small": {"provider": "scripted"}, "big": {"provider": "scripted"}},
        agents={"tiered": {"model": "small", "routing": ROUTING}},
        default_agent="tiered",
    )


async def test_routing_is_in_the_stored_row_and_the_log_line(
    tmp_path: Path, store_url: str
) -> None:
    runtime = Runtime(settings_for(tmp_path, store_url))
    await runtime.start()
    context = RequestContext("routed", key_id=None)
    try:
        call = Call(request_id="routed", model="small", agent="tiered", caller=Caller.anonymous(),
                    body={"messages": [{"role": "user", "content": COMPLEX}]},
                    context=context)  # fmt: skip
        await runtime.pipeline(call)
    finally:
        await runtime.aclose()
    rows = await query(store_url, "SELECT * FROM requests WHERE request_id = 'routed'")
    assert len(rows) == 1
    row = rows[0]
    assert (row["requested_model"], row["model"], row["route"]) == ("small", "big", "complex")
    assert row["complexity"] == pytest.approx(call.record.complexity)
    assert row["record_id"] == call.record.record_id and row["quality"] == pytest.approx(1.0)
    assert row["status"] == "success" and row["input_tokens"] > 0
    assert context.record is call.record
    line = context.log_fields()
    assert line["requested_model"] == "small" and line["model"] == "big"
    assert (
        line["route"] == "complex" and line["tokens"] == row["input_tokens"] + row["output_tokens"]
    )
    assert "reserved_usd" not in line and "economy" not in line  # only the notes that are set


async def test_a_failed_call_is_recorded_with_its_detail_in_the_log_only(
    tmp_path: Path, store_url: str
) -> None:
    runtime = Runtime(settings_for(tmp_path, store_url))
    await runtime.start()
    context = RequestContext("failed")
    detail = "HTTP 503 from http://10.0.0.7:8000/v1/chat/completions"

    async def upstream(call: Call) -> Reply:
        raise UpstreamError("the upstream failed", detail=detail)

    try:
        call = Call(request_id="failed", model="small", caller=Caller.anonymous(),
                    body={"messages": [{"role": "user", "content": "hi"}]},
                    context=context)  # fmt: skip
        with pytest.raises(UpstreamError):
            await compose([runtime.recording], upstream)(call)
    finally:
        await runtime.aclose()
    rows = await query(store_url, "SELECT * FROM requests WHERE request_id = 'failed'")
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["status_code"], rows[0]["error_type"]) == (
        "error", 502, UpstreamError.error_type)  # fmt: skip
    assert "error_detail" not in rows[0] and detail not in str(call.record.event())
    assert context.log_fields()["error_detail"] == detail
