"""Benchmark the gateway against a fake upstream, the way BENCHMARKS.md measured its peers.

Steps (every one bounded in time; every child process is stopped in ``finally``):

1. start ``fake_upstream.py`` (fixed delay, default 20 ms);
2. load the upstream alone with ``wrk`` at each connection count: the floor;
3. write a Guarita config in a temp dir (one ``openai`` model pointing at the fake
   upstream, auth on, SQLite store in the temp dir), create a key with the CLI, start
   ``guarita serve`` and wait for ``/ready``;
4. put the same loads on the gateway, with the key;
5. stop the gateway gracefully and count the rows of its ``requests`` table, which proves
   that store recording was on for every request measured.

Each load is a warm-up (not measured) and then the measured window. CPU time is read from
``/proc/<pid>/stat`` (utime + stime of the process and its live descendants) just before
and just after the measured window, so start-up and warm-up cost nothing; "CPU ms/req" is
that difference divided by the requests wrk completed in the window.

Run: ``.venv/bin/python bench/run_gateway.py`` (``--duration 5`` for a quick look;
``--profile 10`` adds a py-spy profile of the gateway under load; ``--quiet-wait 120`` first
waits for a shared machine to calm down). Needs ``wrk`` (``apt-get install -y wrk``).
Results go to ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
LUA_SCRIPT = BENCH / "chat.lua"
RESULTS = BENCH / "results"
MODEL = "bench-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG_TEMPLATE = """\
# Written by bench/run_gateway.py: one OpenAI-compatible model in front of the fake upstream.
server:
  log_level: info
auth:
  enabled: true
models:
  {model}:
    provider: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key_env: BENCH_UPSTREAM_KEY
    price_input_per_1m: 3
    price_output_per_1m: 15
# The built-in default agent names the local llama.cpp model, which this config leaves out.
agents:
  bench-agent:
    model: {model}
    system_prompt: "You are a benchmark."
default_agent: bench-agent
"""


# --- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, TimeoutError):
        return None


def wait_for(url: str, proc: subprocess.Popen[bytes], *, timeout: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log tail, if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def child(args: list[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session, output to ``log``, always stopped on exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGINT (graceful: uvicorn runs the shutdown, which flushes records), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


# --- /proc accounting ------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a uvicorn with workers, a helper process)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree rooted at ``pid``, in seconds."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between listing and reading
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, idle and iowait left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of our reaped children (wrk, once ``subprocess.run`` has waited for it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb(pid: int) -> float:
    """Sum of the peak resident set sizes (VmHWM) over the process tree, in MB."""
    kib = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                kib += int(line.split()[1])
    return kib / 1024


def wait_until_quiet(limit_s: float, *, threshold: float = 0.3, sample_s: float = 2.0) -> float:
    """Wait (at most ``limit_s``) until the machine's busy cores stay under ``threshold`` for
    one sample; return the last sample. On a shared machine, someone else's test run
    can take a whole core and halve the numbers."""
    deadline = time.monotonic() + limit_s
    while True:
        before = machine_busy_seconds()
        time.sleep(sample_s)
        busy = (machine_busy_seconds() - before) / sample_s
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        print(f"machine busy ({busy:.2f} cores used by others); waiting", flush=True)


# --- load ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """What wrk reported for one run (latencies in ms)."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(url: str, connections: int, seconds: float, *, api_key: str | None) -> Load:
    """One wrk run with chat.lua; parses the ``BENCH_JSON`` line its ``done()`` prints."""
    env = dict(os.environ, BENCH_MODEL=MODEL)
    env.pop("BENCH_API_KEY", None)
    if api_key:
        env["BENCH_API_KEY"] = api_key
    threads = min(2, connections)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    args += ["-s", str(LUA_SCRIPT), url]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 30)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise RuntimeError(
            f"wrk gave no summary (rc {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    latency = data["latency_us"]
    return Load(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors=sum(int(v) for v in data["errors"].values()),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
    )


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    connections: int
    load: Load
    cpu_ms_per_req: float
    rss_mb: float
    other_cores: float  # CPU used by processes other than ours and wrk, in cores
    warmup_requests: int = 0
    floor: Load | None = None  # the upstream alone at the same connection count
    backlog: int | None = None  # request records not yet stored when the window ended


def measure(
    target: str,
    url: str,
    connections: int,
    args: argparse.Namespace,
    *,
    pid: int,
    bystanders: tuple[int, ...] = (),
    api_key: str | None = None,
    metrics_url: str | None = None,
) -> Row:
    """Warm up, then load ``url`` for the measured window, charging ``pid``'s CPU time.
    With ``metrics_url``, also read how many request records were still waiting for the
    store when the window ended (a writer that keeps up has about a batch interval's).

    Also works out how busy the rest of the machine was during the window (everything
    but ``pid``, the ``bystanders`` we started and wrk): on a shared machine that is
    the first thing to check when a number looks off.
    """
    warmup = 0
    if args.warmup > 0:
        warmup = run_wrk(url, connections, args.warmup, api_key=api_key).requests
    ours = [cpu_seconds(p) for p in (pid, *bystanders)]
    machine, children = machine_busy_seconds(), children_cpu_seconds()
    load = run_wrk(url, connections, args.duration, api_key=api_key)
    backlog = records_backlog(metrics_url) if metrics_url else None
    ours = [cpu_seconds(p) - before for p, before in zip((pid, *bystanders), ours, strict=True)]
    wrk_cpu = children_cpu_seconds() - children
    others = (machine_busy_seconds() - machine - wrk_cpu - sum(ours)) / load.seconds
    per_request = ours[0] * 1000 / load.requests if load.requests else float("nan")
    row = Row(target, connections, load, per_request, peak_rss_mb(pid), max(0.0, others), warmup,
              backlog=backlog)  # fmt: skip
    print(
        f"  {target} @ {connections} conns: {load.rps:.0f} RPS, p50 {load.p50_ms:.2f} ms, "
        f"p99 {load.p99_ms:.2f} ms, {per_request:.3f} CPU ms/req, {load.errors} errors, "
        f"other processes {row.other_cores:.2f} cores"
        + (f", {backlog} records waiting" if backlog is not None else ""),
        flush=True,
    )
    return row


def records_backlog(metrics_url: str) -> int:
    """Records in memory plus in spool files, from the gateway's ``/metrics`` (summed over
    its processes)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("guarita_records_pending", "guarita_records_spooled"):
            total += float(value)
    return int(total)


# --- the gateway -----------------------------------------------------------------------


def gateway_env(tmp: Path, config: Path) -> dict[str, str]:
    """The caller's environment minus any GUARITA_* setting, plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARITA_")}
    env.update(
        GUARITA_CONFIG=str(config),
        GUARITA_DATA_DIR=str(tmp),
        BENCH_UPSTREAM_KEY="bench-upstream-key",
    )
    return env


# --limits: a key whose every counter is checked and settled on every request (limits far
# above what the load reaches, so nothing is refused and the figures stay comparable): every
# rate limit and a daily and a monthly budget of the key, so a call reserves and settles six
# counters; --limits all adds a daily and a monthly budget of its agent and of the total: ten
LIMITED_KEY = ["--rpm", "10000000", "--rpd", "100000000", "--tpm", "1000000000",
               "--concurrency", "100000", "--max-tokens", "4000",
               "--daily-budget-usd", "1000000", "--monthly-budget-usd", "10000000"]  # fmt: skip
GUARD_CONFIG = """\
guard:
  injection: {mode: flag}
  pii: {mode: redact}
  code: {mode: annotate}
"""

BUDGETS_CONFIG = """\
limits:
  budgets:
    total: {daily_usd: 1000000, monthly_usd: 10000000}
    agents: {bench-agent: {daily_usd: 1000000, monthly_usd: 10000000}}
"""


def create_key(env: dict[str, str], *, limits: bool = False) -> str:
    """``guarita keys create``; the secret is the last line it prints on stdout."""
    extra = LIMITED_KEY if limits else []
    done = subprocess.run(
        [
            str(VENV_BIN / "guarita"),
            "keys",
            "create",
            "--name",
            "bench",
            "--tier",
            "enterprise",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"keys create failed (rc {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return lines[-1].strip()


def source_of(env: dict[str, str]) -> str:
    """Which guarita code the gateway runs: its path, and the commit when it is this repo."""
    found = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import guarita; print(guarita.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    where = Path(found.stdout.strip()).parent.parent
    if where != ROOT / "src":
        return f"guarita from {where}"

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " with uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    return f"guarita at commit {git('rev-parse', '--short', 'HEAD') or '?'}{dirty}"


def recorded(db: Path) -> dict[str, int]:
    """Rows of the gateway's ``requests`` table, by status."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


# --- profile ---------------------------------------------------------------------------


def profile(
    url: str, pid: int, connections: int, seconds: float, *, api_key: str
) -> tuple[str, int]:
    """Sample the gateway with py-spy under load: (where the CPU went, requests completed).

    The raw (collapsed stacks) file is kept in ``bench/results/`` for flame graph tools.
    py-spy leaves idle threads out, so a sample is a moment the gateway was on the CPU.
    """
    spy = shutil.which("py-spy", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if spy is None:
        return "py-spy is not installed: .venv/bin/pip install py-spy", 0
    raw = RESULTS / "profile-raw.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    args = [spy, "record", "--format", "raw", "--output", str(raw), "--pid", str(pid)]
    args += ["--duration", f"{seconds:g}", "--rate", "200", "--gil"]
    with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spying:
        time.sleep(1.0)  # let py-spy attach before the load starts
        load = run_wrk(url, connections, seconds, api_key=api_key)
        _, err = spying.communicate(timeout=seconds + 60)
    if spying.returncode != 0 or not raw.exists():
        detail = err.decode(errors="replace")[-500:]
        return f"py-spy failed (rc {spying.returncode}): {detail}", load.requests
    summary = summarise_profile(raw)
    (RESULTS / "profile-summary.txt").write_text(summary + "\n")
    return summary, load.requests


def summarise_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, and self share per module."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    modules: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        module = _module(stack.split(";")[-1])
        modules[module] = modules.get(module, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(counts: dict[str, int]) -> list[str]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [f"{100 * n / total:6.2f}%  {name}" for name, n in best]

    return "\n".join(
        [
            f"{total} samples with the GIL held (raw stacks: {_relative(raw)})",
            "",
            "self time by module:",
            *ranked(modules),
            "",
            "self time by function:",
            *ranked(own),
            "",
            "inclusive time by function:",
            *ranked(inclusive),
        ]
    )


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``; line numbers merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_short(path)})"


def _module(frame: str) -> str:
    return _short(frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0])


def _short(path: str) -> str:
    """A path made readable: from the package root when it is in site-packages."""
    for marker in (
        "site-packages/",
        "/src/",
        f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/",
    ):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- report ----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """Markdown in the shape of BENCHMARKS.md, plus the gateway's added latency."""
    out = [
        "| target | connections | RPS | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU ms/req | RSS MB | errors | other load (cores) | records waiting |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (-r.connections, r.floor is not None)):
        load = row.load
        added = ("", "")
        if row.floor is not None:
            added = (
                f"{load.p50_ms - row.floor.p50_ms:+.2f}",
                f"{load.p99_ms - row.floor.p99_ms:+.2f}",
            )
        out.append(
            f"| {row.target} | {row.connections} | {load.rps:.0f} | {load.p50_ms:.2f} "
            f"| {load.p99_ms:.2f} | {added[0]} | {added[1]} | {row.cpu_ms_per_req:.3f} "
            f"| {row.rss_mb:.0f} | {load.errors} | {row.other_cores:.2f} "
            f"| {'' if row.backlog is None else row.backlog} |"
        )
    return "\n".join(out)


STORES = {True: "PostgreSQL + Redis", False: "embedded: SQLite, in-process state"}


def store_verdict(rows: int, completed: int, connections: int) -> str:
    # connections: summed over the levels measured
    """Rows must equal completed requests, up to the requests in flight when a wrk run
    stopped (answered and recorded by the gateway, not counted by wrk): one per
    connection per run at most."""
    extra = rows - completed
    if 0 <= extra <= 2 * connections:  # two wrk runs (warm-up, measured) per level
        return f"holds ({extra:+d}: requests in flight when wrk stopped)."
    return f"FAILS ({extra:+d} rows)."


def report(
    rows: list[Row], args: argparse.Namespace, records: dict[str, int], sent: int, source: str
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    recorded_total = sum(records.values())
    by_status = ", ".join(f"{k}: {v}" for k, v in sorted(records.items())) or "none"
    return "\n".join(
        [
            f"# Gateway benchmark, {when}",
            "",
            f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}. Fake upstream "
            f"delay {args.delay_ms:g} ms; wrk, POST /v1/chat/completions (non-streamed), "
            f"{args.warmup:g} s warm-up then {args.duration:g} s measured per row. Gateway: "
            f"`guarita serve{f' --workers {args.workers}' if args.workers > 1 else ''}` "
            f"({source}), auth, metrics, "
            "JSON access log and store recording on"
            + (
                (
                    ", every rate limit and budget (key, agent, total) checked and settled "
                    if args.limits == "all"
                    else ", every rate limit and budget of the key checked and settled "
                )
                if args.limits
                else (
                    ", the exact response cache on (every request after the first a hit) "
                    if args.cache == "hit"
                    else ", the exact response cache on, every request a bypass (a miss) "
                    if args.cache == "bypass"
                    else " "
                )
            )
            + ("every guard on (injection flag, PII redact, code annotate) " if args.guard else "")
            + f"({STORES[args.scale_out]}).",
            "",
            table(rows),
            "",
            "CPU ms/req: CPU time of the target's process tree during the measured window over "
            "the requests completed in it. Other load: CPU the rest of the machine used meanwhile "
            "(not ours, not wrk), in cores; well above 0 means the numbers are disturbed. "
            "Records waiting: request records not yet in the store (memory and spool) when "
            "the window ended: a writer that keeps up holds about a flush interval's worth.",
            "",
            f"Store check: {recorded_total} rows in `requests` ({by_status}) for {sent} "
            "requests wrk completed against the gateway (warm-ups included): "
            + store_verdict(recorded_total, sent, sum(int(c) for c in args.connections.split(","))),
            "",
        ]
    )


# --- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="fake upstream delay")
    parser.add_argument(
        "--connections", default="50,4", help="comma-separated connection counts (default 50,4)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (shared machines)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="run the gateway as 2 API processes on PostgreSQL + Redis (+ Celery queue settings)",
    )
    parser.add_argument(
        "--limits",
        nargs="?",
        const="key",
        choices=["key", "all"],
        default=None,
        help="the bench key has every rate limit and a daily and a monthly budget (never "
        "reached): limits and budgets on the hot path; `--limits all`: its agent and the "
        "total have budgets too",
    )
    parser.add_argument(
        "--cache",
        nargs="?",
        const="hit",
        choices=["hit", "bypass"],
        default=None,
        help="the bench model has the exact response cache on: wrk's one request is a miss "
        "once, then hits (compare its RPS with a run without); `--cache bypass`: every "
        "request sends `x-guarita-cache: bypass`, a miss that calls the upstream",
    )
    parser.add_argument(
        "--guard",
        action="store_true",
        help="every guard on for every call: injection flag, PII redact, code annotate",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (`serve --workers N`); default 1, or 2 with --scale-out",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "GUARITA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="--scale-out: an admin URL where the bench may create (and drop) a database",
    )
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/0", help="--scale-out: Redis URL"
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the measurements, profile the gateway with py-spy under load this long",
    )
    args = parser.parse_args()
    if args.workers is None:
        args.workers = 2 if args.scale_out else 1
    return args


def run(args: argparse.Namespace, tmp: Path) -> str:
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    upstream_port, gateway_port = free_port(), free_port()
    upstream_args = [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(upstream_port)]
    upstream_args += ["--delay-ms", f"{args.delay_ms:g}"]
    upstream_log = tmp / "upstream.log"
    with child(upstream_args, env=dict(os.environ), log=upstream_log) as upstream:
        base = f"http://127.0.0.1:{upstream_port}"
        wait_for(f"{base}/health", upstream, timeout=15, log=upstream_log)
        print(f"upstream alone ({base}):", flush=True)
        floors = {
            n: measure("upstream alone", f"{base}/v1/chat/completions", n, args, pid=upstream.pid)
            for n in connections
        }
        config = tmp / "guarita.yaml"
        text = CONFIG_TEMPLATE.format(model=MODEL, upstream_port=upstream_port)
        if args.cache:  # the same request every time: one miss, then hits
            prices = "    price_output_per_1m: 15\n"
            text = text.replace(prices, prices + "    cache: {mode: exact, ttl_s: 86400}\n")
        config.write_text(
            text
            + (BUDGETS_CONFIG if args.limits == "all" else "")
            + (GUARD_CONFIG if args.guard else "")
        )
        env = gateway_env(tmp, config)
        if args.scale_out:
            env.update(scale_out_env(args, tmp))
        key = create_key(env, limits=args.limits is not None)
        source = source_of(env)
        serve = [str(VENV_BIN / "guarita"), "serve", "--port", str(gateway_port)]
        if args.workers > 1:
            serve += ["--workers", str(args.workers)]
        gateway_log = tmp / "gateway.log"
        rows = list(floors.values())
        sent = 0
        with child(serve, env=env, log=gateway_log) as gateway:
            gw = f"http://127.0.0.1:{gateway_port}"
            wait_for(f"{gw}/ready", gateway, timeout=60, log=gateway_log)
            print(f"gateway ({gw}, pid {gateway.pid}, log {gateway_log}):", flush=True)
            for n in connections:
                row = measure(
                    "guarita",
                    f"{gw}/v1/chat/completions",
                    n,
                    args,
                    pid=gateway.pid,
                    bystanders=(upstream.pid,),
                    api_key=key,
                    metrics_url=f"{gw}/metrics",
                )
                rows.append(dataclasses.replace(row, floor=floors[n].load))
                sent += row.load.requests + row.warmup_requests
            if args.profile > 0:
                peak = max(connections)
                url = f"{gw}/v1/chat/completions"
                summary, profiled = profile(url, gateway.pid, peak, args.profile, api_key=key)
                sent += profiled
                print(f"profile, {peak} connections:\n{summary}", flush=True)
            code = stop(gateway)
            if code not in (0, -signal.SIGINT):
                print(f"warning: gateway exited with {code}:\n{tail(gateway_log)}", flush=True)
    records = (
        recorded_pg(env["GUARITA_STORE__URL"]) if args.scale_out else recorded(tmp / "guarita.db")
    )
    print(f"store: {sum(records.values())} rows in requests {records}", flush=True)
    if args.scale_out:
        drop_pg(args.postgres, env["GUARITA_STORE__URL"].rsplit("/", 1)[1])
    return report(rows, args, records, sent, source)


def _pg(admin_url: str, sql: str, database: str | None = None) -> str:
    url = admin_url if database is None else admin_url.rsplit("/", 1)[0] + "/" + database
    done = subprocess.run(["psql", url, "-Atc", sql], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr}")
    return done.stdout


def scale_out_env(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    """Settings for 2 API processes on PostgreSQL + Redis: a database and key prefix of its own."""
    name = "guarita_bench_" + tmp.name.replace("-", "_").lower()[-12:]
    _pg(args.postgres, f'CREATE DATABASE "{name}"')
    base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return {
        "GUARITA_STORE__URL": f"{base}/{name}",
        "GUARITA_REDIS_URL": args.redis,
        "GUARITA_REDIS_PREFIX": f"guarita-bench-{tmp.name}:",
        "GUARITA_TASK_QUEUE": "celery",
    }


def recorded_pg(store_url: str) -> dict[str, int]:
    admin = store_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    out = _pg(admin, "SELECT status, count(*) FROM requests GROUP BY status")
    return {line.split("|")[0]: int(line.split("|")[1]) for line in out.splitlines() if "|" in line}


def drop_pg(admin_url: str, name: str) -> None:
    _pg(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not (VENV_BIN / "guarita").exists():
        print(f"{VENV_BIN / 'guarita'} not found: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    if args.cache == "bypass":
        os.environ["BENCH_CACHE_BYPASS"] = "1"  # chat.lua sends x-guarita-cache: bypass
    if args.quiet_wait > 0:
        busy = wait_until_quiet(args.quiet_wait)
        print(f"starting with {busy:.2f} cores busy elsewhere", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="guarita-bench-"))
    try:
        text = run(args, tmp)
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
