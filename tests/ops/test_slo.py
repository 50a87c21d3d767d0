"""The arithmetic of error budgets on synthetic counts: budget, consumed and remaining
shares, burn rates, time to exhaustion, the workbook's alert rows, the budget state that
freezes deploys, and what counts as a good event of each SLO."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guarita.ops.slo import (
    Counts,
    EventRules,
    Objective,
    alert_state,
    budget_state,
    burn_rate,
    consumed,
    error_budget,
    evaluate,
    evaluation_windows,
    objectives,
    remaining,
    time_to_exhaustion_s,
    window_alerts,
)
from guarita.settings import Settings
from guarita.settings_slo import FreezeSettings, SloSettings, duration_s

DAY = 86400


def test_budget_consumed_remaining_and_burn_rate() -> None:
    assert error_budget(0.99) == pytest.approx(0.01)
    period = Counts(good=9_950, total=10_000)  # 50 bad of 100 allowed
    assert consumed(period, 0.99) == pytest.approx(0.5)
    assert remaining(period, 0.99) == pytest.approx(0.5)
    assert burn_rate(Counts(good=98, total=100), 0.99) == pytest.approx(2.0)
    assert burn_rate(Counts(good=0, total=0), 0.99) is None
    assert consumed(Counts(0, 0), 0.99) == 0.0
    overspent = Counts(good=9_700, total=10_000)
    assert remaining(overspent, 0.99) == pytest.approx(-2.0)


def test_time_to_exhaustion_extrapolates_the_burn_rate() -> None:
    # half the budget left, burning at 2x: a quarter of the 30-day period
    assert time_to_exhaustion_s(0.5, 2.0, 30 * DAY) == pytest.approx(7.5 * DAY)
    assert time_to_exhaustion_s(0.5, 0.0, 30 * DAY) is None
    assert time_to_exhaustion_s(0.5, None, 30 * DAY) is None
    assert time_to_exhaustion_s(-0.1, 3.0, 30 * DAY) == 0.0


def _counts(ratio_by_window: dict[str, float], total: int = 10_000) -> dict[str, Counts]:
    return {w: Counts(total - round(r * total), total) for w, r in ratio_by_window.items()}


def test_the_workbook_rows_need_both_windows() -> None:
    slo = SloSettings()
    quiet = dict.fromkeys(evaluation_windows(slo), 0.0)
    # 100% errors for a few minutes: the 5m window burns, the 1h one not yet (under 14.4%)
    blip = _counts({**quiet, "5m": 1.0, "1h": 0.10})
    assert alert_state(window_alerts(slo.windows, blip, 0.99)) == "ok"
    outage = _counts({**quiet, "5m": 1.0, "1h": 0.15})
    rows = window_alerts(slo.windows, outage, 0.99)
    assert [r.firing for r in rows] == [True, False, False]
    assert alert_state(rows) == "page"
    # an outage that ended: the long window still burns, the short one stopped
    over = _counts({**quiet, "5m": 0.0, "1h": 0.5, "30m": 0.0, "6h": 0.1})
    assert alert_state(window_alerts(slo.windows, over, 0.99)) == "ok"
    steady_2x = _counts(dict.fromkeys(evaluation_windows(slo), 0.02))
    assert alert_state(window_alerts(slo.windows, steady_2x, 0.99)) == "ticket"
    at_6x = _counts(dict.fromkeys(evaluation_windows(slo), 0.06))
    assert alert_state(window_alerts(slo.windows, at_6x, 0.99)) == "ticket"  # not above 6x
    above_6x = _counts(dict.fromkeys(evaluation_windows(slo), 0.0601))
    assert alert_state(window_alerts(slo.windows, above_6x, 0.99)) == "page"


def test_budget_state_warns_past_80_percent_and_freezes_when_used_up() -> None:
    freeze = FreezeSettings()
    assert budget_state(Counts(9_925, 10_000), 0.99, freeze) == "ok"  # 75%
    assert budget_state(Counts(9_915, 10_000), 0.99, freeze) == "warning"  # 85%
    assert budget_state(Counts(9_900, 10_000), 0.99, freeze) == "exhausted"  # 100%
    assert budget_state(Counts(0, 99), 0.99, freeze) == "ok"  # under min_events


def test_evaluate_puts_it_together() -> None:
    slo = SloSettings()
    counts = _counts({**dict.fromkeys(evaluation_windows(slo), 0.0), "30d": 0.005, "1h": 0.02})
    status = evaluate(Objective("a", "availability", 0.99), counts, slo)
    assert status.consumed == pytest.approx(0.5)
    assert status.burn_rates["1h"] == pytest.approx(2.0)
    # half of a 30-day budget left at 2x: 7.5 days
    assert status.time_to_exhaustion_s == pytest.approx(7.5 * DAY)
    assert status.alert == "ok" and status.budget == "ok"
    assert status.as_dict()["error_budget"] == pytest.approx(0.01)


RULES = EventRules(bad_status_codes=frozenset({408}), excluded_status_codes=frozenset({499}))


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(200, "good"), (400, "good"), (429, "good"), (408, "bad"), (500, "bad"), (502, "bad"),
     (503, "bad"), (504, "bad"), (499, None)],
)  # fmt: skip
def test_availability_events(code: int, outcome: str | None) -> None:
    record = {"status": "success" if code == 200 else "error", "status_code": code}
    assert RULES.outcome(Objective("a", "availability", 0.99), record) == outcome


def test_quality_and_consistency_events_need_a_value_and_a_success() -> None:
    quality = Objective("a", "quality", 0.95, threshold=0.7)
    assert RULES.outcome(quality, {"status": "success", "quality": 0.7}) == "good"
    assert RULES.outcome(quality, {"status": "success", "quality": 0.69}) == "bad"
    assert RULES.outcome(quality, {"status": "error", "quality": 0.1}) is None
    assert RULES.outcome(quality, {"status": "success", "quality": None}) is None
    consistency = Objective("a", "consistency", 0.9, threshold=0.95)
    assert RULES.outcome(consistency, {"status": "success", "consistency": 0.94}) == "bad"
    assert RULES.outcome(consistency, {"status": "success", "consistency": None}) is None


def test_objectives_from_settings_with_overrides_and_default_thresholds() -> None:
    settings = Settings(
        models={"m": {"provider": "scripted", "quality": {"min_score": 0.6}},
                "n": {"provider": "scripted"}},
        agents={"a": {"model": "m", "consistency": {"threshold": 0.97}}, "b": {"model": "n"}},
        default_agent="a",
        slo={"agents": {"b": {"availability": 0.999, "consistency": None}}},
    )  # fmt: skip
    found = {(o.agent, o.slo): o for o in objectives(settings)}
    assert found["a", "availability"].target == 0.99
    assert found["a", "quality"].threshold == 0.6  # the model's min_score
    assert found["a", "consistency"].threshold == 0.97  # the agent's own threshold
    assert found["b", "availability"].target == 0.999
    assert found["b", "quality"].threshold == 0.7
    assert ("b", "consistency") not in found
    off = Settings(slo={"enabled": False})
    assert objectives(off) == []


def test_settings_refuse_what_makes_no_sense() -> None:
    assert duration_s("3d") == 3 * DAY
    with pytest.raises(ValueError, match="duration"):
        duration_s("1w")
    with pytest.raises(ValidationError, match="shorter"):
        SloSettings(windows=[{"severity": "page", "burn_rate": 2, "long_window": "5m",
                              "short_window": "1h"}])  # fmt: skip
    with pytest.raises(ValidationError, match="longer than the period"):
        SloSettings(period="1d")  # the ticket row's 3d window
    with pytest.raises(ValidationError):
        SloSettings(defaults={"availability": 1.0})
    with pytest.raises(ValidationError, match="bad or excluded"):
        SloSettings(bad_status_codes=(499,))
