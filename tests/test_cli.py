"""The ``guarita`` command, run as a user runs it: in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import GuaritaServer, base_env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guarita.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cost_projection_matches_the_source_document(tmp_path: Path) -> None:
    result = run(
        "cost",
        "project",
        "--daily-requests",
        "10000",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "500",
        "--model",
        "claude-3-5-sonnet",
        env=base_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "$0.0105" in result.stdout
    assert "$3,150.00" in result.stdout


def test_cost_projection_uses_configured_prices(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "mine": {
                        "provider": "scripted",
                        "price_input_per_1m": 3,
                        "price_output_per_1m": 15,
                    }
                },
                "agents": {},
                "default_agent": "x",
            }
        )
    )
    env = base_env(tmp_path) | {"GUARITA_CONFIG": str(cfg)}
    result = run("cost", "project", "--model", "mine", env=env)
    assert result.returncode == 0, result.stderr
    assert "$3,150.00" in result.stdout


def test_unknown_model_price_is_an_error(tmp_path: Path) -> None:
    result = run("cost", "project", "--model", "no-such-model", env=base_env(tmp_path))
    assert result.returncode == 2
    assert "no price for model 'no-such-model'" in result.stderr


def test_keys_lifecycle(store_url: str, tmp_path: Path) -> None:
    server = GuaritaServer(
        tmp_path,
        {
            "models": {"m": {"provider": "scripted"}},
            "agents": {"a": {"model": "m"}},
            "default_agent": "a",
        },
        store_url=store_url,
    )
    created = server.cli("keys", "create", "--name", "ci-bot", "--tier", "pro")
    secret = created.stdout.strip()
    assert secret.startswith("gua_") and len(secret) > 40
    key_id = created.stderr.split("created key ", 1)[1].split()[0]
    listing = server.cli("keys", "list").stdout
    assert key_id in listing and "ci-bot" in listing
    assert secret not in listing
    [entry] = [
        json.loads(line) for line in server.cli("keys", "list", "--json").stdout.splitlines()
    ]
    assert (entry["id"], entry["name"], entry["tier"], entry["revoked_at"]) == (
        key_id,
        "ci-bot",
        "pro",
        None,
    )
    assert "revoked" in server.cli("keys", "revoke", key_id).stdout
    again = server.cli("keys", "revoke", key_id, check=False)
    assert again.returncode == 1
    [entry] = [
        json.loads(line) for line in server.cli("keys", "list", "--json").stdout.splitlines()
    ]
    assert entry["revoked_at"] is not None


def test_invalid_config_fails_fast_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text("server:\n  port: not-a-port\n")
    result = run("serve", env=base_env(tmp_path) | {"GUARITA_CONFIG": str(cfg)})
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_missing_provider_key_fails_fast_naming_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "gpt": {"provider": "openai", "api_key_env": "GUARITA_TEST_NO_SUCH_KEY"}
                },
                "agents": {"a": {"model": "gpt"}},
                "default_agent": "a",
            }
        )
    )
    result = run("serve", env=base_env(tmp_path) | {"GUARITA_CONFIG": str(cfg)})
    assert result.returncode == 2
    assert "GUARITA_TEST_NO_SUCH_KEY" in result.stderr


@pytest.mark.parametrize("command", [("migrate",)])
def test_migrate_is_idempotent(store_url: str, tmp_path: Path, command: tuple[str, ...]) -> None:
    env = base_env(tmp_path) | {"GUARITA_STORE__URL": store_url}
    for _ in range(2):
        result = run(*command, env=env)
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
