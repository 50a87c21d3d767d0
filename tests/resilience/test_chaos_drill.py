"""The chaos drill (``bench/chaos_drill.py``) end to end, small: real fake upstreams, a real
``guarita serve`` (on PostgreSQL, Redis and Celery in scale-out mode, where the breakers'
state lives in Redis), real HTTP. Latency is reported by the drill, not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.chaos_drill import STATIC_REPLY, render_markdown, run_drill

pytestmark = pytest.mark.slow

REQUESTS = 120


def test_half_failing_primary_loses_no_request(tmp_path: Path) -> None:
    # a generous deadline: the deadline is not what this scenario is about
    report = run_drill("half", requests=REQUESTS, concurrency=10, deadline_s=10, workdir=tmp_path)
    print(render_markdown(report))
    assert report["answered"] == REQUESTS and report["lost"] == 0
    assert report["static_answers"] == 0
    assert set(report["by_level"]) <= {"primary", "model"}
    assert report["by_level"].get("model", 0) > 0  # the backup took over failed calls
    stats = report["upstream_stats"]
    assert stats["primary"]["failed"] > 0  # the fault injection did happen
    # every answer came from an upstream that answered: none invented, none counted twice
    assert stats["primary"]["answered"] + stats["backup"]["answered"] == REQUESTS


def test_both_upstreams_down_gives_static_answers_and_spares_them(tmp_path: Path) -> None:
    report = run_drill("down", requests=REQUESTS, concurrency=10, workdir=tmp_path)
    print(render_markdown(report))
    assert report["lost"] == 0
    # every response is the static answer, or an error in OpenAI's format
    assert report["static_answers"] + report["errors_in_openai_format"] == REQUESTS
    assert all(int(status) >= 500 for status in report["errors_by_status"])
    # the breakers opened and kept calls off the dead upstreams
    assert report["breaker_transitions"].get("primary: closed→open", 0) >= 1
    assert report["breakers_at_end"]["primary"] != "closed"
    assert report["upstream_calls"]["primary"] < 0.3 * REQUESTS
    assert report["upstream_calls"]["backup"] < 0.3 * REQUESTS
    assert STATIC_REPLY  # what the static answers were compared with
