"""``guarita cache warm``: a file of requests sent through a real server (real HTTP, the
CLI in its own process) fills the caller's namespace of the cache; a second run sends only
what is not done; a run stopped midway resumes; a bad file is refused naming the line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from guarita.cache.warm import done_lines
from tests.helpers import GuaritaServer, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuaritaServer]:
    config = {
        "models": {
            "cached": {"provider": "scripted", "cache": {"mode": "exact"}},
            "slow": {
                "provider": "scripted",
                "options": {"delay_s": 0.4},
                "cache": {"mode": "exact"},
            },
            "plain": {"provider": "scripted"},
        },
        "agents": {"a": {"model": "plain"}},
        "default_agent": "a",
    }
    gateway = GuaritaServer(Path(tmp_path_factory.mktemp("warm")), config)
    gateway.warm_key = gateway.create_key("warmer", "enterprise")  # type: ignore[attr-defined]
    gateway.other_key = gateway.create_key("other", "enterprise")  # type: ignore[attr-defined]
    gateway.start()
    yield gateway
    gateway.stop()


def chat(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def warm_command(server: GuaritaServer, path: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "guarita.cli", "cache", "warm", str(path),
            "--url", server.base_url, *options]  # fmt: skip


def run_warm(
    server: GuaritaServer, path: Path, *options: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "GUARITA_API_KEY": key or server.warm_key}  # type: ignore[attr-defined]
    return subprocess.run(warm_command(server, path, *options), env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def sdk(server: GuaritaServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def test_a_warmed_file_is_served_from_the_cache_of_its_namespace(
    server: GuaritaServer, tmp_path: Path
) -> None:
    questions = [f"warm question {i}" for i in range(6)]
    lines: list[object] = [chat("cached", q) for q in questions]
    lines += [  # the Batch API's input format warms too; these two repeat earlier lines
        {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": chat("cached", questions[i])}
        for i in (0, 1)
    ]  # fmt: skip
    lines += [chat("plain", "not cached"), chat("no-such-model", "fails")]
    path = write_jsonl(tmp_path / "requests.jsonl", lines)

    first = run_warm(server, path, "--concurrency", "4")
    assert first.returncode == 1, first.stderr  # one line failed
    summary = first.stdout
    stored = int(summary.split(" stored")[0])
    cached = int(summary.split(", ")[1].split()[0])
    assert stored + cached == 8 and stored >= 6, summary  # each question stored once at least
    assert "1 not cacheable, 1 failed, 0 done before" in summary
    assert "line 10:" in first.stderr and "not cacheable" in first.stderr
    assert len(done_lines(path.with_name("requests.jsonl.warm"))) == 9

    again = run_warm(server, path)  # only the failed line is sent again
    assert "0 stored, 0 already cached, 0 not cacheable, 1 failed, 9 done before" in again.stdout

    client = sdk(server, server.warm_key)  # type: ignore[attr-defined]
    raw = client.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": questions[3]}]
    )
    assert raw.headers["x-guarita-cache"] == "hit"
    assert raw.parse().choices[0].message.content
    stream = client.chat.completions.create(  # a stream of the same request is a hit too
        model="cached", messages=[{"role": "user", "content": questions[4]}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    other = sdk(server, server.other_key).chat.completions.with_raw_response.create(  # type: ignore[attr-defined]
        model="cached", messages=[{"role": "user", "content": questions[3]}]
    )
    assert other.headers["x-guarita-cache"] == "miss"  # another key's namespace is not warmed


def test_a_stopped_run_resumes_without_redoing_what_it_stored(
    server: GuaritaServer, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "slow.jsonl", [chat("slow", f"slow {i}") for i in range(16)])
    progress = path.with_name("slow.jsonl.warm")
    env = {**server.env, "GUARITA_API_KEY": server.warm_key}  # type: ignore[attr-defined]
    running = subprocess.Popen(warm_command(server, path, "--concurrency", "2"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(lambda: len(done_lines(progress)) >= 4, timeout=60, what="4 lines warmed")
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=30)
    before = len(done_lines(progress))
    assert 4 <= before < 16

    resumed = run_warm(server, path, "--concurrency", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert f"0 failed, {before} done before" in resumed.stdout
    stored = int(resumed.stdout.split(" stored")[0])
    cached = int(resumed.stdout.split(", ")[1].split()[0])
    assert stored + cached == 16 - before
    assert cached <= 2  # at most the lines in flight when it was killed were answered then
    assert len(done_lines(progress)) == 16


def test_a_bad_file_or_key_is_refused_before_anything_is_sent(
    server: GuaritaServer, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"model": "cached", "messages": [{"role": "user", "content": "x"}]}\n'
                    "\n"
                    '{"model": "cached", "messages": "not a list"}\n')  # fmt: skip
    bad = run_warm(server, path)
    assert bad.returncode == 2 and "line 3" in bad.stderr and "messages" in bad.stderr
    assert not path.with_name("bad.jsonl.warm").exists()
    url = write_jsonl(tmp_path / "url.jsonl", [{"url": "/v1/embeddings", "body": {}}])
    assert "line 1: url must be" in run_warm(server, url).stderr

    good = write_jsonl(tmp_path / "good.jsonl", [chat("cached", "x")])
    refused = run_warm(server, good, key="sk-not-a-key")
    assert refused.returncode == 1 and "GUARITA_API_KEY" in refused.stderr
    assert not done_lines(good.with_name("good.jsonl.warm"))


def test_an_unreachable_server_stops_the_run_and_keeps_the_progress(tmp_path: Path) -> None:
    """No server on the port: the run stops after the tries of the lines in flight (not
    the retries of every line of the file), names the URL, and a later run resumes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    path = write_jsonl(tmp_path / "many.jsonl", [chat("cached", f"q{i}") for i in range(200)])
    url = f"http://127.0.0.1:{port}"
    result = subprocess.run(
        [sys.executable, "-m", "guarita.cli", "cache", "warm", str(path), "--url", url,
         "--concurrency", "2", "--attempts", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot reach {url}" in result.stderr and "run again to resume" in result.stderr
    assert not done_lines(path.with_name("many.jsonl.warm"))


def test_the_progress_file_ignores_a_torn_last_line(tmp_path: Path) -> None:
    progress = tmp_path / "x.jsonl.warm"
    progress.write_bytes(b'{"line": 1, "outcome": "stored"}\n{"line": 2, "outcome": "failed"}\n'
                         b'{"line": 3, "outcome": "cac')  # fmt: skip
    assert done_lines(progress) == {1}  # a failed line is sent again, a torn one too
