"""The generated Prometheus rules: the workbook's table, promtool's check, the deploy copy in
sync, and promtool's rule tests on replayed series: a 100% outage pages within the short
window (and stops within it after), a steady 2x burn does not page, and on the same records
the rules and the in-process evaluation (counting in the store) agree on every error
ratio, the remaining budget and every alert."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sqlalchemy import insert

from guarita.ops.slo import (
    Counts,
    Objective,
    alert_state,
    evaluation_windows,
    event_rules,
    objectives,
    window_alerts,
)
from guarita.ops.slo_rules import render, rule_groups
from guarita.ops.slo_service import SloEvaluator
from guarita.settings import Settings
from guarita.settings_slo import duration_s
from guarita.store.database import Database
from guarita.store.models import RequestRow
from guarita.store.records import normalize
from tests.deploy.test_deploy import needs_promtool, promtool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_RULES = ROOT / "deploy" / "prometheus" / "slo_rules.yml"
EVENTS = "guarita_slo_events_total"
ALERTS = {"page": "GuaritaErrorBudgetBurnPage", "ticket": "GuaritaErrorBudgetBurnTicket"}


def settings(**slo: Any) -> Settings:
    return Settings(
        models={"m": {"provider": "scripted"}},
        agents={"assistant": {"model": "m"}, "support": {"model": "m"}},
        default_agent="assistant",
        slo={"agents": {"support": {"availability": 0.999}}, **slo},
    )


def test_the_alerts_are_the_workbook_table() -> None:
    ((group,),) = [rule_groups(settings())["groups"]]
    assert group["name"] == "guarita-slo"  # one group: evaluated in order, no lag
    rules = group["rules"]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    page = alerts["GuaritaErrorBudgetBurnPage"]["expr"]
    for window, rate in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert f"guarita:slo_error_ratio:rate{window} > ({rate} * " in page
    assert page.count(" and\n") == 0 and page.count("\nand\n") == 2 and "\nor\n" in page
    ticket = alerts["GuaritaErrorBudgetBurnTicket"]["expr"]
    assert "rate3d > (1 * " in ticket and "rate6h > (1 * " in ticket
    assert all("for" not in a for a in alerts.values())  # the workbook's have none
    assert alerts["GuaritaErrorBudgetBurnPage"]["labels"] == {"severity": "page"}
    records = {r["record"] for r in rules if "record" in r}
    for window in ("5m", "30m", "1h", "6h", "3d", "30d"):
        assert f"guarita:slo_error_ratio:rate{window}" in records
    objectives_ = [r for r in rules if "labels" in r and "record" in r]
    assert {(r["labels"]["agent"], r["labels"]["slo"], r["expr"]) for r in objectives_} >= {
        ("support", "availability", "vector(0.999)"),
        ("assistant", "quality", "vector(0.95)"),
    }
    # configured windows replace the table
    custom = rule_groups(settings(windows=[{"severity": "page", "burn_rate": 10,
                                            "long_window": "2h", "short_window": "10m",
                                            "for": "2m"}]))  # fmt: skip
    (only,) = [r for r in custom["groups"][0]["rules"] if "alert" in r]
    assert "rate2h > (10 * " in only["expr"] and only["for"] == "2m"


@needs_promtool
def test_promtool_accepts_the_generated_rules(tmp_path: Path) -> None:
    path = tmp_path / "slo_rules.yml"
    path.write_text(render(settings()), encoding="utf-8")
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deploy_rule_file_is_generated_from_the_deploy_settings() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "guarita.yaml").read_text(encoding="utf-8"))
    expected = render(Settings(**config))
    assert DEPLOY_RULES.read_text(encoding="utf-8") == expected, (
        "regenerate: GUARITA_CONFIG=deploy/guarita.yaml guarita slo rules -o "
        "deploy/prometheus/slo_rules.yml"
    )
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert "slo_rules.yml" in prometheus["rule_files"]


# -- replayed series --------------------------------------------------------------------


def _cumulative(per_minute: Sequence[int]) -> str:
    """A counter sampled every minute from 0: value at minute i is the events of 1..i."""
    return " ".join(str(int(v)) for v in np.concatenate([[0], np.cumsum(per_minute)]))


def _window(per_minute: np.ndarray, minute: int, window: str) -> int:
    """Events in (minute - window, minute]: minute i's events happen in (i-1, i]."""
    start = max(0, minute - duration_s(window) // 60)
    return int(per_minute[start:minute].sum())


def _in_process(objective: Objective, good: np.ndarray, bad: np.ndarray, minute: int,
                s: Settings) -> dict[str, Counts]:  # fmt: skip
    return {
        w: Counts(_window(good, minute, w), _window(good, minute, w) + _window(bad, minute, w))
        for w in evaluation_windows(s.slo)
    }


def _alert_tests(
    rules_file: Path, expectations: list[tuple[int, dict[str, str], dict[str, bool]]]
) -> list[dict[str, Any]]:
    """``alert_rule_test`` entries: at each minute, for each alert, these labels fire or not."""
    groups = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["groups"]
    annotations = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    by_time: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for minute, labels, firing in expectations:
        for name, fires in firing.items():
            entry = by_time.setdefault((minute, name), [])
            if fires:
                rule = annotations[name]
                entry.append({
                    "exp_labels": {**labels, **rule["labels"]},
                    "exp_annotations": {
                        k: v.replace("{{ $labels.agent }}", labels["agent"]).replace(
                            "{{ $labels.slo }}", labels["slo"])
                        for k, v in rule["annotations"].items()
                    },
                })  # fmt: skip
    return [
        {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": alerts}
        for (minute, name), alerts in sorted(by_time.items())
    ]


def _run(tmp_path: Path, s: Settings, test: dict[str, Any]) -> None:
    rules = tmp_path / "slo_rules.yml"
    rules.write_text(render(s), encoding="utf-8")
    spec = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [test]}
    path = tmp_path / "slo_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000), encoding="utf-8")
    result = promtool("test", "rules", path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def _replay(
    tmp_path: Path, s: Settings, traffic: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    minutes: Sequence[int],
) -> dict[tuple[str, str], list[str]]:  # fmt: skip
    """Replay per-minute good and bad counts through promtool; at each of ``minutes`` the
    alerts must fire exactly as the in-process evaluation says. Returns the in-process
    alert state per (agent, slo) per minute of ``minutes``."""
    rules = tmp_path / "slo_rules.yml"
    rules.write_text(render(s), encoding="utf-8")
    objs = {(o.agent, o.slo): o for o in objectives(s)}
    series, expectations = [], []
    states: dict[tuple[str, str], list[str]] = {}
    for (agent, slo), (good, bad) in traffic.items():
        for outcome, counts in (("good", good), ("bad", bad)):
            labels = f'agent="{agent}",slo="{slo}",outcome="{outcome}"'
            series.append({"series": f"{EVENTS}{{{labels}}}", "values": _cumulative(counts)})
        for minute in minutes:
            counts_ = _in_process(objs[agent, slo], good, bad, minute, s)
            state = alert_state(window_alerts(s.slo.windows, counts_, objs[agent, slo].target))
            states.setdefault((agent, slo), []).append(state)
            firing = {
                ALERTS["page"]: state == "page",
                ALERTS["ticket"]: _ticket(counts_, s, objs[agent, slo]),
            }
            expectations.append((minute, {"agent": agent, "slo": slo}, firing))
    _run(tmp_path, s, {"interval": "1m", "input_series": series,
                       "alert_rule_test": _alert_tests(rules, expectations)})  # fmt: skip
    return states


def _ticket(counts: dict[str, Counts], s: Settings, objective: Objective) -> bool:
    rows = [r for r in window_alerts(s.slo.windows, counts, objective.target)
            if r.severity == "ticket"]  # fmt: skip
    return any(r.firing for r in rows)


@needs_promtool
def test_a_full_outage_pages_within_the_short_window_and_stops_after_it(
    tmp_path: Path,
) -> None:
    s = settings()
    minutes = 150
    good = np.full(minutes, 100)
    bad = np.zeros(minutes, dtype=int)
    good[60:80], bad[60:80] = 0, 100  # minutes 61-80: every call fails
    traffic = {("assistant", "availability"): (good, bad), ("support", "availability"): (good, bad)}
    states = _replay(tmp_path, s, traffic, range(1, minutes + 1))
    for agent, detection in (("support", 5), ("assistant", 9)):
        paged = [m for m, st in zip(range(1, minutes + 1), states[agent, "availability"],
                                    strict=True) if st == "page"]  # fmt: skip
        assert paged, agent
        # support (99.9%) pages within the 5m short window; assistant (99%) once its 1h
        # window passes 14.4% errors: 8.64 minutes of a full outage
        assert 60 < paged[0] <= 60 + detection, (agent, paged[0])
        # each row stops within its short window once the outage is over: the 14.4x row
        # within 5m, the 6x row (whose 6h window still burns) within 30m
        assert paged[-1] <= 80 + 30, (agent, paged[-1])
        assert paged == list(range(paged[0], paged[-1] + 1))


@needs_promtool
def test_a_steady_2x_burn_does_not_page_but_opens_a_ticket(tmp_path: Path) -> None:
    s = settings()
    minutes = 8 * 60
    good, bad = np.full(minutes, 98), np.full(minutes, 2)  # 2% errors: 2x a 1% budget
    traffic = {("assistant", "availability"): (good, bad)}
    evaluated = range(10, minutes + 1, 10)
    states = _replay(tmp_path, s, traffic, evaluated)
    assert set(states["assistant", "availability"]) == {"ticket"}


# -- the same records both ways -----------------------------------------------------------


def _records(rng: np.random.Generator, base: datetime, minutes: int) -> list[dict[str, Any]]:
    """Calls of two agents for ``minutes`` minutes: phases of health, a partial outage and
    low quality; a few callers that went away (499, not counted) and 4xx (good)."""
    rows = []
    for minute in range(1, minutes + 1):
        error_p = 0.3 if 120 < minute <= 150 else 0.002
        low_quality_p = 0.2 if 200 < minute <= 260 else 0.02
        for agent in ("assistant", "support"):
            for _ in range(int(rng.integers(5, 15))):
                roll = rng.random()
                code = 503 if roll < error_p else 499 if roll > 0.995 else (
                    429 if roll > 0.99 else 200)  # fmt: skip
                ok = code == 200
                quality = float(rng.uniform(0, 0.69) if rng.random() < low_quality_p
                                else rng.uniform(0.7, 1)) if ok else None  # fmt: skip
                at = base + timedelta(minutes=minute - 1, seconds=float(rng.uniform(1, 59)))
                rows.append({
                    "request_id": f"r{len(rows)}", "endpoint": "chat", "model": "m",
                    "agent": agent, "status": "success" if ok else "error",
                    "status_code": code, "latency_ms": 1.0, "created_at": at,
                    "quality": quality,
                })  # fmt: skip
    return rows


def _per_minute(rows: list[dict[str, Any]], base: datetime, minutes: int, s: Settings,
                objective: Objective) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    rules = event_rules(s.slo)
    good, bad = np.zeros(minutes, dtype=int), np.zeros(minutes, dtype=int)
    for row in rows:
        if row["agent"] != objective.agent:
            continue
        outcome = rules.outcome(objective, row)
        index = int((row["created_at"] - base).total_seconds() // 60)
        if outcome == "good":
            good[index] += 1
        elif outcome == "bad":
            bad[index] += 1
    return good, bad


@needs_promtool
async def test_the_rules_and_the_store_agree_on_the_same_records(
    store_url: str, tmp_path: Path
) -> None:
    s = settings()
    minutes = 6 * 60
    base = datetime(2026, 1, 5, tzinfo=UTC)
    rows = _records(np.random.default_rng(12), base, minutes)
    db = Database(store_url)
    await db.migrate()
    try:
        async with db.engine.begin() as conn:
            await conn.execute(insert(RequestRow.__table__), [normalize(r) for r in rows])
        evaluator = SloEvaluator(s, db)
        at = list(range(30, minutes + 1, 30))
        evaluated = {m: await evaluator.evaluate(now=base + timedelta(minutes=m)) for m in at}
    finally:
        await db.aclose()

    chosen = [o for o in objectives(s) if o.slo in ("availability", "quality")]
    series, exprs, expectations = [], [], []
    for o in chosen:
        good, bad = _per_minute(rows, base, minutes, s, o)
        for outcome, counts in (("good", good), ("bad", bad)):
            labels = f'agent="{o.agent}",slo="{o.slo}",outcome="{outcome}"'
            series.append({"series": f"{EVENTS}{{{labels}}}", "values": _cumulative(counts)})
    for minute, statuses in evaluated.items():
        for st in statuses:
            if st.slo not in ("availability", "quality"):
                continue
            labels = {"agent": st.agent, "slo": st.slo}
            selector = f'{{agent="{st.agent}",slo="{st.slo}"}}'
            for window, counts in st.windows.items():
                assert counts.total > 0
                exprs.append((minute, f"guarita:slo_error_ratio:rate{window}{selector}",
                              counts.bad / counts.total, labels))  # fmt: skip
            exprs.append((minute, f"guarita:slo_error_budget_remaining:ratio{selector}",
                          st.remaining, labels))  # fmt: skip
            ticket = any(a.firing for a in st.alerts if a.severity == "ticket")
            firing = {ALERTS["page"]: st.alert == "page", ALERTS["ticket"]: ticket}  # fmt: skip
            expectations.append((minute, labels, firing))
    states = {st.alert for sts in evaluated.values() for st in sts}
    assert {"ok", "page"} <= states  # the outage pages; the data is not all one state
    rules = tmp_path / "slo_rules.yml"
    rules.write_text(render(s), encoding="utf-8")
    promql = [
        {
            "expr": f"abs({expr} - {value!r}) < bool 1e-9",
            "eval_time": f"{minute}m",
            "exp_samples": [
                {
                    "labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                    "value": 1,
                }
            ],
        }
        for minute, expr, value, labels in exprs
    ]
    _run(tmp_path, s, {"interval": "1m", "input_series": series, "promql_expr_test": promql,
                       "alert_rule_test": _alert_tests(rules, expectations)})  # fmt: skip
