"""The batch input file's checks, and the output and error files' assembly."""

from __future__ import annotations

import orjson
import pytest

from guarita.batches.input import InputError, parse_input
from guarita.batches.runner import assemble
from guarita.store.batches import LineOutcome, StoredOutcome


def line(custom_id: str, url: str = "/v1/chat/completions") -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    item = {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    return orjson.dumps(item)


def test_requests_keep_their_file_lines_and_blank_lines_are_skipped() -> None:
    content = line("a") + b"\n\n" + line("b") + b"\r\n" + line("c")
    requests = parse_input(content, max_lines=10)
    assert [(r.index, r.line, r.custom_id) for r in requests] == [
        (0, 1, "a"),
        (1, 3, "b"),
        (2, 4, "c"),
    ]


def test_too_many_lines_is_refused_at_the_first_line_past_the_limit() -> None:
    content = b"\n".join(line(str(i)) for i in range(4))
    assert len(parse_input(content, max_lines=4)) == 4
    with pytest.raises(InputError, match="more than 3 requests") as refused:
        parse_input(content, max_lines=3)
    assert refused.value.code == "too_many_requests"


def test_the_endpoint_given_must_be_every_line_url() -> None:
    content = line("a", "/v1/embeddings")
    assert parse_input(content, max_lines=5, endpoint="/v1/embeddings")[0].url == "/v1/embeddings"
    with pytest.raises(InputError, match="line 1: url '/v1/embeddings' differs") as refused:
        parse_input(content, max_lines=5, endpoint="/v1/chat/completions", param="input_file_id")
    assert (refused.value.code, refused.value.param) == ("mismatched_endpoint", "input_file_id")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe", "invalid_json_line"),
        (b'"text"', "invalid_batch_line"),
        (
            b'{"custom_id": "", "method": "POST", "url": "/v1/embeddings", "body": {}}',
            "invalid_batch_line",
        ),
        (
            b'{"custom_id": 7, "method": "POST", "url": "/v1/embeddings", "body": {}}',
            "invalid_batch_line",
        ),
        (b'{"custom_id": "x", "url": "/v1/embeddings"}', "missing_required_parameter"),
    ],
)
def test_each_wrong_line_has_its_code(raw: bytes, code: str) -> None:
    with pytest.raises(InputError, match=r"^line 2: ") as refused:
        parse_input(line("ok") + b"\n" + raw, max_lines=5)
    assert refused.value.code == code and refused.value.status_code == 400


def test_a_huge_value_is_cut_in_the_message() -> None:
    item = {"custom_id": "a", "method": "POST", "url": "/v1/" + "x" * 5000, "body": {}}
    with pytest.raises(InputError) as refused:
        parse_input(orjson.dumps(item), max_lines=5)
    assert len(refused.value.message) < 300


def test_outputs_and_errors_are_in_input_order_each_line_once() -> None:
    ok = LineOutcome(True, 200, "r", {"object": "chat.completion"})
    bad = LineOutcome(
        False,
        404,
        "r",
        {"error": {"code": "model_not_found"}},
        {"code": "model_not_found", "message": "no"},
    )
    stored = [
        StoredOutcome(0, "batch_req_0", "a", ok),
        StoredOutcome(1, "batch_req_1", "b", bad),
        StoredOutcome(3, "batch_req_3", "d", ok),
    ]
    expired = parse_input(
        line("a") + b"\n" + line("b") + b"\n" + line("c") + b"\n" + line("d"), max_lines=5
    )[2:3]
    output, errors = assemble(stored, expired)
    assert output is not None and errors is not None
    outputs = [orjson.loads(x) for x in output.splitlines()]
    failures = [orjson.loads(x) for x in errors.splitlines()]
    assert [o["custom_id"] for o in outputs] == ["a", "d"]
    assert outputs[0] == {
        "id": "batch_req_0",
        "custom_id": "a",
        "error": None,
        "response": {"status_code": 200, "request_id": "r", "body": {"object": "chat.completion"}},
    }
    assert [f["custom_id"] for f in failures] == ["b", "c"]
    assert failures[0]["response"]["status_code"] == 404
    assert failures[1]["response"] is None and failures[1]["error"]["code"] == "batch_expired"
    assert assemble([], []) == (None, None)
