"""What a shadow candidate that hangs costs the live path, through real HTTP.

Steps (every child process is stopped in ``finally``):

1. write a config in a temp dir: a scripted stable model answering after ``--delay-ms``
   (an upstream's latency), a scripted candidate that never answers, one agent on the
   stable model, SQLite store, auth on; create a key and an operator key with the CLI; start
   ``guarita serve`` and wait for ``/ready``;
2. send ``--requests`` chats to ``/api/chat``, ``--concurrency`` at a time, after a warm-up:
   the live p50/p99 with no rollout;
3. start a shadow rollout of the hanging candidate (``POST /admin/rollouts``, change type
   ``new_model``: shadow first) mirroring every request (``sample_share`` 1.0) and send the
   same load again: the live p50/p99 while the mirrors hang; the shadow's dropped and
   pending mirrors are read from ``/metrics``.

    .venv/bin/python bench/shadow_latency.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def config(data_dir: Path, delay_s: float, queue_size: int) -> dict[str, object]:
    return {
        "data_dir": str(data_dir),
        "server": {"log_level": "warning"},
        "models": {
            "stable": {"provider": "scripted", "options": {"delay_s": delay_s}},
            "hangs": {"provider": "scripted", "options": {"delay_s": 3600}},
        },
        "agents": {"support": {"model": "stable", "system_prompt": "You help."}},
        "default_agent": "support",
        "rollouts": {
            "shadow": {"sample_share": 1.0, "self_similarity_share": 0.0, "concurrency": 2,
                       "queue_size": queue_size, "timeout_s": 30},
        },
    }  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    run = subprocess.run([PYTHON, "-m", "guarita.cli", *args], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return run.stdout.strip()


def cpu_s(pid: int) -> float:
    """utime + stime of the server process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(base: str, key: str, requests: int, concurrency: int) -> list[float]:
    """Latency in ms of each of ``requests`` chats, ``concurrency`` in flight."""
    latencies: list[float] = []
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=60) as client:  # fmt: skip
        left = iter(range(requests))

        async def worker() -> None:
            for i in left:
                started = time.perf_counter()
                r = await client.post("/api/chat", json={"message": f"Question {i}: hello?"})
                latencies.append((time.perf_counter() - started) * 1000)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def shadow_metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = {}
    for outcome, value in re.findall(r'guarita_shadow_runs_total\{[^}]*outcome="(\w+)"[^}]*\} '
                                     r"([0-9.e+]+)", text):  # fmt: skip
        found[outcome] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--queue-size", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guarita-shadow-") as tmp:
        work = Path(tmp)
        path = work / "guarita.yaml"
        path.write_text(yaml.safe_dump(config(work / "data", args.delay_ms / 1000,
                                              args.queue_size)))  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARITA_")}
        env["GUARITA_CONFIG"] = str(path)
        key = cli(env, "keys", "create", "--name", "bench", "--tier", "enterprise")
        operator = cli(env, "keys", "create", "--name", "ops", "--tier", "enterprise",
                       "--role", "operator")  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = (work / "server.log").open("w")
        server = subprocess.Popen([PYTHON, "-m", "guarita.cli", "serve", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"the server did not start: {(work / 'server.log').read_text()}")
                time.sleep(0.2)
            results: dict[str, list[float]] = {}
            cpu: dict[str, float] = {}

            def measure(name: str) -> None:
                before = cpu_s(server.pid)
                results[name] = asyncio.run(load(base, key, args.requests, args.concurrency))
                cpu[name] = (cpu_s(server.pid) - before) / args.requests * 1000

            asyncio.run(load(base, key, 200, args.concurrency))  # warm-up
            measure("no shadow")
            body = {"agent": "support", "change_type": "new_model", "candidate_model": "hangs"}
            started = httpx.post(base + "/admin/rollouts", json=body, timeout=10,
                                 headers={"authorization": f"Bearer {operator}"})  # fmt: skip
            started.raise_for_status()
            assert started.json()["state"] == "shadow", started.text
            time.sleep(1.1)  # every process routes by it within 1 s
            measure("shadow candidate hangs")
            shadow = shadow_metrics(base)
            aborted = httpx.post(
                f"{base}/admin/rollouts/{started.json()['id']}/abort",
                headers={"authorization": f"Bearer {operator}"},
                timeout=10,
            )
            aborted.raise_for_status()
            time.sleep(1.1)
            measure("no shadow again (aborted)")
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
    print(f"{args.requests} requests, {args.concurrency} at a time, upstream "
          f"{args.delay_ms:.0f} ms; shadow queue {args.queue_size}, 2 workers")  # fmt: skip
    print("| live path | p50 ms | p99 ms | mean ms | server CPU ms/request |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {percentile(values, 0.5):.1f} | {percentile(values, 0.99):.1f} | "
              f"{statistics.mean(values):.1f} | {cpu[name]:.2f} |")  # fmt: skip
    print(f"shadow mirrors by outcome: {shadow} (the rest still hang in the 2 workers)")


if __name__ == "__main__":
    main()
