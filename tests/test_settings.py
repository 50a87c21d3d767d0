"""Settings: defaults that work with no file, YAML overlaid by environment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guarita.errors import ConfigError
from guarita.settings import DEFAULT_AGENT_MODEL, LOCAL_MODEL, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("GUARITA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./guarita.yaml


def test_defaults_describe_the_embedded_install() -> None:
    settings = load_settings()
    assert settings.models[LOCAL_MODEL].provider == "llamacpp"
    assert settings.agents[settings.default_agent].model == DEFAULT_AGENT_MODEL
    assert settings.store_url.startswith("sqlite+aiosqlite:///")
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.auth.enabled and not settings.auth.allow_unauthenticated_localhost


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 9001, "host": "0.0.0.0"},
                "models": {"m": {"provider": "scripted", "price_input_per_1m": 1}},
                "agents": {"a": {"model": "m", "system_prompt": "hi"}},
                "default_agent": "a",
            }
        )
    )
    monkeypatch.setenv("GUARITA_CONFIG", str(path))
    monkeypatch.setenv("GUARITA_SERVER__PORT", "9002")
    monkeypatch.setenv("GUARITA_STORE__URL", "postgresql+asyncpg://u@h/db")
    settings = load_settings()
    assert settings.server.port == 9002  # environment wins
    assert settings.server.host == "0.0.0.0"  # from the file
    assert settings.store_url == "postgresql+asyncpg://u@h/db"
    assert list(settings.models) == ["m"]


def test_local_guarita_yaml_is_found(tmp_path: Path) -> None:
    (tmp_path / "guarita.yaml").write_text("server:\n  port: 9100\n")
    assert load_settings().server.port == 9100


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"server": {"port": 70000}}, "server.port"),
        (
            {"models": {"m": {"provider": "openai", "api_key_env": "sk-abc123!"}}},
            "models.m.api_key_env",
        ),
        ({"agents": {"a": {"model": "nope"}}, "default_agent": "a"}, "agents.a.model"),
        ({"default_agent": "ghost"}, "default_agent"),
        ({"tasks": {"workers": 0}}, "tasks.workers"),
        ({"serverr": {}}, "serverr"),
        (
            {"models": {"m": {"provider": "scripted", "cache": {"mode": "always"}}}},
            "models.m.cache.mode",
        ),
        (
            {"models": {"m": {"provider": "scripted", "cache": {"mode": "exact", "ttl_s": -1}}}},
            "models.m.cache.ttl_s",
        ),
        (
            {
                "models": {
                    "m": {"provider": "scripted", "cache": {"mode": "exact", "namespace": "agent"}}
                }
            },
            "models.m.cache.namespace",
        ),
        (
            {
                "models": {"m": {"provider": "scripted", "cache": {"mode": "semantic"}}},
                "cache": {"semantic": {"embedder": {"base_url": "http://e/v1", "model": "x"}}},
            },
            "models.m.cache.mode",
        ),
        ({"cache": {"max_entries": 0}}, "cache.max_entries"),
        ({"cache": {"semantic": {"threshold": 1.5}}}, "cache.semantic.threshold"),
    ],
)
def test_invalid_config_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, object], field: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("GUARITA_CONFIG", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert field in str(caught.value)


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARITA_CONFIG", "/nonexistent/guarita.yaml")
    with pytest.raises(ConfigError, match="GUARITA_CONFIG"):
        load_settings()


def test_own_models_without_agents_get_a_default_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "only-models.yaml"
    path.write_text(yaml.safe_dump({"models": {"gpt": {"provider": "scripted"}}}))
    monkeypatch.setenv("GUARITA_CONFIG", str(path))
    settings = load_settings()
    assert settings.agents["assistant"].model == "gpt"
    assert settings.default_agent == "assistant"


def _doc_section(heading: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize(
    ("heading", "model"),
    [
        ("## `auth`", "AuthSettings"),
        ("### `auth.jwt`", "JwtSettings"),
        ("## `audit` (see [audit.md](audit.md))", "AuditSettings"),
    ],
)
def test_the_configuration_reference_names_every_setting(heading: str, model: str) -> None:
    """docs/configuration.md has a row for each field of these settings, and no row for a
    field that does not exist."""
    import re

    from guarita import settings

    fields = set(getattr(settings, model).model_fields)
    section = _doc_section(heading)
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.M))
    nested = {"jwt"} if model == "AuthSettings" else set()
    assert documented == fields - nested
