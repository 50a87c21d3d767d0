"""Test support: real server processes, real databases, polling with deadlines."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "GUARITA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("GUARITA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("GUARITA_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
UPSTREAM_KEY = "test-upstream-key"


def scale_out() -> bool:
    """Whether the suite runs in scale-out mode (``pytest --mode=scaleout``)."""
    return os.environ.get("GUARITA_TEST_MODE", "embedded") == "scaleout"


class Leftovers:
    """What scale-out servers create outside the test's temp dir, removed at session end."""

    databases: list[str] = []
    redis_prefixes: list[str] = []
    queues: list[str] = []


def scale_out_settings(tag: str) -> dict[str, Any]:
    """Settings that put a server on Redis and Celery (RabbitMQ), with names of its own."""
    prefix = f"guarita-test-{tag}:"
    queue = f"guarita-test-{tag}"
    Leftovers.redis_prefixes.append(prefix)
    Leftovers.queues.append(queue)
    return {
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "task_queue": "celery",
        "celery_broker_url": BROKER_URL,
        "tasks": {"queue": queue, "sweep_interval_s": 2},
    }


class FakeClock:
    """A clock the test moves by hand, for what reads ``time.time`` (breakers, state)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}: {last_error}")


async def wait_until_async(
    predicate: Callable[[], Any], *, within_s: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """:func:`wait_until` for a test on the event loop: what it waits for runs meanwhile."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within_s}s waiting for {what or predicate}")


def inside_one_minute(needed_s: float) -> None:
    """Rate windows are whole minutes on the clock (the same clock Redis ``TIME`` reads on
    this machine): if fewer than ``needed_s`` seconds are left in this one, wait for the
    next, so that a sequence of requests counted against a per-minute limit falls in one
    window. This aligns with the clock; it does not wait for a result."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


class Process:
    """A child process whose output goes to a file, stopped at the end of the test."""

    def __init__(
        self, args: list[str], *, env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARITA_")}
    env["GUARITA_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class GuaritaServer:
    """``guarita serve`` in its own process, with a config file written for the test.

    In scale-out mode it runs on PostgreSQL (a database of its own unless one is given),
    Redis and Celery over RabbitMQ, with a ``guarita worker`` process beside it.
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        store_url: str | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "guarita.yaml"
        cfg = dict(config)
        if scale_out():
            if store_url is None:
                name, store_url = create_pg_database()
                Leftovers.databases.append(name)
            for key, value in scale_out_settings(secrets.token_hex(4)).items():
                if isinstance(value, dict):
                    cfg[key] = {**value, **cfg.get(key, {})}
                else:
                    cfg.setdefault(key, value)
        if store_url:
            cfg.setdefault("store", {})["url"] = store_url
        self.store_url = store_url or f"sqlite+aiosqlite:///{workdir / 'data' / 'guarita.db'}"
        self.config = cfg
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.env = base_env(workdir / "data")
        self.env["GUARITA_CONFIG"] = str(self.config_path)
        self.env.update(env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = True  # the CA of an HTTPS server's certificate
        self.api_processes = workers
        self.process: Process | None = None
        self.worker: Process | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "guarita.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"guarita {' '.join(args)} failed: {result.stderr}")
        return result

    def create_key(self, name: str = "test", tier: str = "enterprise") -> str:
        """A key; enterprise by default: no request limits (free allows 10 a day)."""
        return self.cli("keys", "create", "--name", name, "--tier", tier).stdout.strip()

    def start_worker(self) -> Process:
        worker = Process(
            [sys.executable, "-m", "guarita.cli", "worker"],
            env=self.env,
            log_path=self.workdir / f"worker-{secrets.token_hex(3)}.log",
        )
        worker.start()
        return worker

    def start(self, *, ready: bool = True, timeout: float = 90.0) -> GuaritaServer:
        args = [sys.executable, "-m", "guarita.cli", "serve", "--port", str(self.port)]
        if self.api_processes > 1:
            args += ["--workers", str(self.api_processes)]
        self.process = Process(args, env=self.env, log_path=self.workdir / "server.log")
        self.process.start()
        if self.config.get("task_queue") == "celery" and (
            self.worker is None or not self.worker.running()
        ):
            self.worker = self.start_worker()
        path = "/ready" if ready else "/health"

        def up() -> bool:
            assert self.process is not None and self.process.proc is not None
            if self.process.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.process.output()}")
            response = httpx.get(self.base_url + path, timeout=2, verify=self.verify)
            return response.status_code == 200

        wait_until(up, timeout=timeout, what=f"{self.base_url}{path}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the API process(es); the worker goes too unless the API was killed (a crash)."""
        code = self.process.stop(sig) if self.process else None
        if self.worker is not None and sig != signal.SIGKILL:
            self.worker.stop(signal.SIGTERM, timeout=30)
            self.worker = None
        return code

    def logs(self) -> str:
        return self.process.output() if self.process else ""


class FakeUpstream:
    """One of the fake upstream servers in ``tests/fakes`` in its own process."""

    def __init__(self, module: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update(env or {})
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            [sys.executable, "-m", f"tests.fakes.{module}", "--port", str(self.port)],
            env=full_env,
            log_path=workdir / f"{module}.log",
            cwd=ROOT,
        )

    def start(self) -> FakeUpstream:
        self.process.start()
        wait_until(
            lambda: httpx.get(self.base_url + "/_health", timeout=2).status_code == 200,
            timeout=30,
            what=f"fake upstream on {self.port}",
        )
        return self

    def last_request(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.base_url + "/_last", timeout=5).json()
        return body

    def stop(self) -> None:
        self.process.stop()


# -- PostgreSQL -------------------------------------------------------------------------


def _pg_admin(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def create_pg_database() -> tuple[str, str]:
    """A fresh database for one test session: (name, SQLAlchemy async URL)."""
    name = "guarita_test_" + secrets.token_hex(6)
    _pg_admin(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def query(store_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query against a Guarita store, through SQLAlchemy like the server."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


def clean_leftovers() -> None:
    """Drop what scale-out servers created in PostgreSQL, Redis and RabbitMQ."""
    for name in Leftovers.databases:
        drop_pg_database(name)
    if Leftovers.redis_prefixes:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for prefix in Leftovers.redis_prefixes:
            for key in client.scan_iter(match=prefix + "*", count=1000):
                client.delete(key)
        for queue in Leftovers.queues:  # what a Redis broker leaves (kombu's own names)
            client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()
    if Leftovers.queues:
        from kombu import Connection

        with Connection(BROKER_URL) as conn:
            channel = conn.default_channel
            for queue in Leftovers.queues:
                channel.queue_delete(queue)
