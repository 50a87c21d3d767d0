"""Chaos drill: a real gateway between a client and two real upstreams that misbehave.

Processes (all local, all stopped in ``finally``):

* two fake OpenAI upstreams (``tests/fakes/openai_upstream.py``), steered through their
  ``POST /_control`` (failure rate, down) and read through ``GET /_stats`` (calls received);
* ``guarita serve`` (``tests.helpers.GuaritaServer``) with model ``primary`` on upstream 1,
  ``fallbacks: [backup]``, ``backup`` on upstream 2, a deadline, default breakers (only
  ``open_s`` shortened so that half-open probes happen during the drill) and a static reply.
  In scale-out mode (``--mode scaleout``) it runs on PostgreSQL, Redis and Celery, and the
  breakers' state lives in Redis.

Then N chat completions go out with bounded concurrency, and the report gives: the share
answered (2xx), answers by fallback level (``x-guarita-fallback-level``), p50/p99 latency,
errors by status, breaker transitions (``guarita_circuit_transitions_total`` from
``/metrics``), the breakers' states at the end (``/admin/breakers``) and the calls each
upstream received.

Scenarios:

``half``  primary fails 50% of calls (HTTP 500, seeded), backup healthy. Target: every
          request answered, none lost, p99 within the deadline.
``down``  both upstreams answer 503 to everything. Target: every request gets the static
          answer (or an OpenAI-format error) within the deadline, and the breakers keep
          calls off the dead upstreams (far fewer upstream calls than requests).

Run: ``.venv/bin/python bench/chaos_drill.py --scenario half --requests 500``
(``--scenario all`` runs both; ``--mode scaleout``; ``--json`` prints the raw report).
Importable: ``run_drill(scenario, requests=..., ...)`` returns the report as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``tests.helpers`` importable
    sys.path.insert(0, str(ROOT))

from tests.helpers import FakeUpstream, GuaritaServer, clean_leftovers, scale_out  # noqa: E402

STATIC_REPLY = "The shop assistant is busy right now; please try again in a minute."
SCENARIOS: dict[str, dict[str, dict[str, Any]]] = {
    "half": {"primary": {"fail_rate": 0.5}, "backup": {}},
    "down": {"primary": {"down": True}, "backup": {"down": True}},
}
_TRANSITION = re.compile(
    r"^guarita_circuit_transitions_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def gateway_config(
    primary_url: str, backup_url: str, *, deadline_s: float, open_s: float
) -> dict[str, Any]:
    def model(url: str, upstream: str, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "openai",
            "upstream": upstream,
            "base_url": url + "/v1",
            "timeout_s": deadline_s,
            "breaker": {"open_s": open_s},
            **extra,
        }

    return {
        "server": {"log_level": "warning"},
        "auth": {"enabled": False},
        "models": {
            "primary": model(primary_url, "drill-primary", fallbacks=["backup"]),
            "backup": model(backup_url, "drill-backup"),
        },
        "agents": {"shop": {"model": "primary"}},
        "default_agent": "shop",
        "resilience": {"deadline_s": deadline_s, "static_reply": STATIC_REPLY},
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def breaker_transitions(metrics_text: str) -> dict[str, float]:
    """``{"primary: closed→open": 1, ...}`` from a Prometheus exposition."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _TRANSITION.match(line.strip())
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        key = f"{labels['deployment']}: {labels['from_state']}→{labels['to_state']}"
        found[key] = found.get(key, 0.0) + float(match["value"])
    return dict(sorted(found.items()))


def is_openai_error(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "code"} <= set(error)


async def _fire(
    base_url: str, requests: int, concurrency: int, timeout_s: float
) -> list[dict[str, Any]]:
    """``requests`` chat completions, at most ``concurrency`` in flight; one result each."""
    results: list[dict[str, Any]] = []
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for index in next_index:
            body = {
                "model": "primary",
                "messages": [{"role": "user", "content": f"suggest a product, request {index}"}],
            }
            started = time.perf_counter()
            result: dict[str, Any] = {"index": index}
            try:
                response = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                result.update(status=None, lost=type(exc).__name__)
            else:
                result.update(
                    status=response.status_code,
                    level=response.headers.get("x-guarita-fallback-level"),
                    body=_json(response),
                )
            result["latency_ms"] = (time.perf_counter() - started) * 1000
            results.append(result)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _summarise(
    results: list[dict[str, Any]], *, static_reply: str, deadline_s: float
) -> dict[str, Any]:
    answered = [r for r in results if r["status"] is not None and 200 <= r["status"] < 300]
    errors = [r for r in results if r["status"] is not None and r["status"] >= 300]
    lost = [r for r in results if r["status"] is None]
    static = 0
    for r in answered:
        try:
            text = r["body"]["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            continue
        static += text == static_reply
    latencies = [r["latency_ms"] for r in results]
    statuses = [r["status"] for r in errors]
    return {
        "answered": len(answered),
        "answered_share": len(answered) / len(results) if results else 0.0,
        "static_answers": static,
        "by_level": dict(Counter(r["level"] or "none" for r in answered).most_common()),
        "errors_by_status": {
            str(status): count for status, count in sorted(Counter(statuses).items())
        },
        "errors_in_openai_format": sum(is_openai_error(r["body"]) for r in errors),
        "error_codes": dict(
            Counter(r["body"]["error"].get("code") for r in errors if is_openai_error(r["body"]))
        ),
        "lost": len(lost),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies, default=0.0), 1),
        },
        "over_deadline": sum(lat > deadline_s * 1000 for lat in latencies),
    }


def run_drill(
    scenario: str = "half",
    *,
    requests: int = 500,
    concurrency: int = 20,
    deadline_s: float = 2.0,
    open_s: float = 1.0,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run one scenario against fresh processes; the report as a dict."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    with tempfile.TemporaryDirectory(prefix="guarita-drill-") as tmp:
        base = workdir or Path(tmp)
        return _run(
            scenario,
            base,
            requests=requests,
            concurrency=concurrency,
            deadline_s=deadline_s,
            open_s=open_s,
            seed=seed,
        )


def _run(
    scenario: str,
    base: Path,
    *,
    requests: int,
    concurrency: int,
    deadline_s: float,
    open_s: float,
    seed: int,
) -> dict[str, Any]:
    upstreams = {
        "primary": FakeUpstream("openai_upstream", base / "upstream-primary"),
        "backup": FakeUpstream("openai_upstream", base / "upstream-backup"),
    }
    server: GuaritaServer | None = None
    try:
        for upstream in upstreams.values():
            upstream.start()
        config = gateway_config(
            upstreams["primary"].base_url,
            upstreams["backup"].base_url,
            deadline_s=deadline_s,
            open_s=open_s,
        )
        server = GuaritaServer(base / "gateway", config)
        server.start(ready=False)
        for name, upstream in upstreams.items():
            faults = {
                "fail_rate": 0.0,
                "down": False,
                "delay_ms": 0.0,
                "seed": seed,
                **SCENARIOS[scenario][name],
                "reset": True,
            }
            httpx.post(upstream.base_url + "/_control", json=faults, timeout=10).raise_for_status()
        started = time.perf_counter()
        results = asyncio.run(_fire(server.base_url, requests, concurrency, deadline_s + 30))
        wall_s = time.perf_counter() - started
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
        admin = httpx.get(server.base_url + "/admin/breakers", timeout=10).json()
        stats = {
            name: httpx.get(upstream.base_url + "/_stats", timeout=10).json()
            for name, upstream in upstreams.items()
        }
    finally:
        if server is not None:
            server.stop()
        for upstream in upstreams.values():
            upstream.stop()
    report: dict[str, Any] = {
        "scenario": scenario,
        "mode": "scaleout" if scale_out() else "embedded",
        "requests": requests,
        "concurrency": concurrency,
        "deadline_s": deadline_s,
        "open_s": open_s,
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(requests / wall_s, 1) if wall_s else 0.0,
        **_summarise(results, static_reply=STATIC_REPLY, deadline_s=deadline_s),
        "breaker_transitions": breaker_transitions(metrics),
        "breakers_at_end": {
            d["name"]: d["breaker"]["state"]
            for group in admin["models"].values()
            for d in group["deployments"]
            if d["breaker"] is not None
        },
        "upstream_calls": {name: s["calls"] for name, s in stats.items()},
        "upstream_stats": stats,
    }
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any]) -> dict[str, bool]:
    """Whether the scenario's targets were met (the latency one is the client's measure)."""
    n = report["requests"]
    if report["scenario"] == "half":
        return {
            "all answered (2xx)": report["answered"] == n,
            "none lost": report["lost"] == 0,
            "p99 within the deadline": report["latency_ms"]["p99"] <= report["deadline_s"] * 1000,
        }
    clear = report["static_answers"] + report["errors_in_openai_format"]
    return {
        "static answer or clear error for all": clear == n and report["lost"] == 0,
        "all within the deadline": report["over_deadline"] == 0,
        "dead upstreams spared (calls < 30% of requests)": all(
            calls < 0.3 * n for calls in report["upstream_calls"].values()
        ),
    }


def render_markdown(report: dict[str, Any]) -> str:
    n = report["requests"]
    lines = [
        f"### Scenario `{report['scenario']}` ({report['mode']} mode)",
        "",
        f"{n} requests, {report['concurrency']} concurrent, deadline {report['deadline_s']} s, "
        f"breaker open_s {report['open_s']} s; {report['wall_s']} s "
        f"({report['throughput_rps']} req/s).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| answered (2xx) | {report['answered']} / {n} ({report['answered_share']:.1%}) |",
        f"| of which static answers | {report['static_answers']} |",
        f"| answers by fallback level | {_pairs(report['by_level'])} |",
        f"| errors by status | {_pairs(report['errors_by_status']) or 'none'} |",
        f"| errors in OpenAI format | {report['errors_in_openai_format']} |",
        f"| lost (no HTTP response) | {report['lost']} |",
        f"| latency p50 / p99 / max | {report['latency_ms']['p50']} / "
        f"{report['latency_ms']['p99']} / {report['latency_ms']['max']} ms |",
        f"| over the deadline | {report['over_deadline']} |",
        f"| breaker transitions | {_pairs(report['breaker_transitions']) or 'none'} |",
        f"| breakers at the end | {_pairs(report['breakers_at_end'])} |",
        f"| calls reaching upstreams | {_pairs(report['upstream_calls'])} |",
        "",
        "Targets: "
        + "; ".join(
            f"{name}: {'met' if ok else 'MISSED'}" for name, ok in report["targets"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def _pairs(mapping: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in mapping.items()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="half")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--deadline-s", type=float, default=2.0)
    parser.add_argument("--open-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mode",
        choices=["embedded", "scaleout"],
        default=None,
        help="default: $GUARITA_TEST_MODE or embedded",
    )
    parser.add_argument("--json", action="store_true", help="print the raw reports too")
    args = parser.parse_args()
    if args.mode:
        os.environ["GUARITA_TEST_MODE"] = args.mode
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    missed = False
    try:
        for scenario in scenarios:
            report = run_drill(
                scenario,
                requests=args.requests,
                concurrency=args.concurrency,
                deadline_s=args.deadline_s,
                open_s=args.open_s,
                seed=args.seed,
            )
            print(render_markdown(report))
            if args.json:
                print("```json\n" + json.dumps(report, indent=2) + "\n```\n")
            missed = missed or not all(report["targets"].values())
    finally:
        if scale_out():
            clean_leftovers()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
