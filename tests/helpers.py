"""Test support: real server processes, real databases, polling with deadlines."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
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
UPSTREAM_KEY = "test-upstream-key"


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


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARITA_")}
    env["GUARITA_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class GuaritaServer:
    """``guarita serve`` in its own process, with a config file written for the test."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        store_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "guarita.yaml"
        cfg = dict(config)
        if store_url:
            cfg.setdefault("store", {})["url"] = store_url
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.env = base_env(workdir / "data")
        self.env["GUARITA_CONFIG"] = str(self.config_path)
        self.env.update(env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

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

    def create_key(self, name: str = "test", tier: str = "free") -> str:
        return self.cli("keys", "create", "--name", name, "--tier", tier).stdout.strip()

    def start(self, *, ready: bool = True, timeout: float = 90.0) -> GuaritaServer:
        self.process = Process(
            [sys.executable, "-m", "guarita.cli", "serve", "--port", str(self.port)],
            env=self.env,
            log_path=self.workdir / "server.log",
        )
        self.process.start()
        path = "/ready" if ready else "/health"

        def up() -> bool:
            assert self.process is not None and self.process.proc is not None
            if self.process.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.process.output()}")
            return httpx.get(self.base_url + path, timeout=2).status_code == 200

        wait_until(up, timeout=timeout, what=f"{self.base_url}{path}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.process.stop(sig) if self.process else None

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
