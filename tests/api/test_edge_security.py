"""The HTTP edge of a real ``guarita serve``: HTTPS with a certificate made here (trustme),
HSTS only over TLS, the security headers on every kind of answer, CORS closed unless an
origin is configured, the docs switch, and a start that stops at once on a bad TLS file."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from guarita.errors import ConfigError
from guarita.settings import load_settings
from tests.helpers import GuaritaServer, base_env

CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted", "options": {"reply": "hello over the edge"}}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
}
ORIGIN = "https://console.example.com"
OTHER_ORIGIN = "https://evil.example.net"
HSTS = "max-age=63072000; includeSubDomains"
KEY_PASSWORD = "correct horse battery staple"
API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The server's certificate chain and its private key, encrypted with a password."""
    where = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = where / "cert.pem", where / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    return certfile, keyfile


@pytest.fixture(scope="module")
def https_server(
    tmp_path_factory: pytest.TempPathFactory,
    cert_files: tuple[Path, Path],
    ca_context: ssl.SSLContext,
) -> Iterator[tuple[GuaritaServer, str]]:
    """TLS with a password-protected key, CORS open to one origin, docs off."""
    certfile, keyfile = cert_files
    config = {
        **CONFIG,
        "server": {
            "ssl_certfile": str(certfile),
            "ssl_keyfile": str(keyfile),
            "ssl_keyfile_password_env": "EDGE_TEST_KEY_PASSWORD",
            "cors": {"allow_origins": [ORIGIN], "max_age_s": 300},
            "docs": False,
        },
    }
    server = GuaritaServer(
        tmp_path_factory.mktemp("edge-https"),
        config,
        env={"EDGE_TEST_KEY_PASSWORD": KEY_PASSWORD},
    )
    server.base_url = f"https://127.0.0.1:{server.port}"
    server.verify = ca_context
    key = server.create_key("edge")
    server.start()
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuaritaServer, str]]:
    """Plain HTTP and the defaults: CORS closed, docs on."""
    server = GuaritaServer(tmp_path_factory.mktemp("edge-plain"), CONFIG)
    key = server.create_key("edge")
    server.start()
    yield server, key
    server.stop()


def client_for(server: GuaritaServer, key: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.base_url, verify=server.verify, headers=headers, timeout=30)


def assert_api_headers(response: httpx.Response) -> None:
    for name, value in API_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.status_code, response.headers)
    assert response.headers["x-request-id"]


# -- TLS --------------------------------------------------------------------------------------


def test_the_openai_sdk_talks_https_and_every_answer_has_hsts(
    https_server: tuple[GuaritaServer, str], ca_context: ssl.SSLContext
) -> None:
    server, key = https_server
    with httpx.Client(verify=ca_context) as http:
        sdk = openai.OpenAI(
            base_url=server.base_url + "/v1", api_key=key, http_client=http, max_retries=0
        )
        raw = sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "hello over the edge"
        assert raw.headers["strict-transport-security"] == HSTS
        stream = sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "hello over the edge"
    with client_for(server) as anonymous:
        for response in (
            anonymous.get("/v1/models"),  # 401
            anonymous.get("/no/such/route"),  # 404
            anonymous.get("/health"),
            anonymous.get("/metrics"),
        ):
            assert response.headers["strict-transport-security"] == HSTS, response.status_code
            assert_api_headers(response)


def test_the_tls_port_refuses_a_client_that_does_not_trust_the_certificate(
    https_server: tuple[GuaritaServer, str],
) -> None:
    server, _ = https_server
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.base_url + "/health", timeout=10)


def test_plain_http_has_no_hsts(plain_server: tuple[GuaritaServer, str]) -> None:
    server, key = plain_server
    with client_for(server, key) as client:
        for response in (client.get("/v1/models"), client.get("/health")):
            assert response.status_code == 200
            assert "strict-transport-security" not in response.headers
            assert_api_headers(response)


def _serve_fails(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "guarita.cli", "serve", "--port", "1", *args],
        env={**base_env(tmp_path / "data"), **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    return run.stderr


def test_a_missing_certificate_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    stderr = _serve_fails(tmp_path, "--ssl-certfile", str(tmp_path / "nowhere.pem"))
    assert "server.ssl_certfile" in stderr and "nowhere.pem" in stderr, stderr


def test_a_missing_key_stops_the_start_naming_the_setting(
    tmp_path: Path, cert_files: tuple[Path, Path]
) -> None:
    certfile, _ = cert_files
    stderr = _serve_fails(
        tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(tmp_path / "no.key")
    )
    assert "server.ssl_keyfile" in stderr and "no.key" in stderr, stderr


def test_an_unset_or_wrong_key_password_stops_the_start(
    tmp_path: Path, cert_files: tuple[Path, Path]
) -> None:
    certfile, keyfile = cert_files
    tls = ("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    stderr = _serve_fails(tmp_path, *tls, env={"GUARITA_SERVER__SSL_KEYFILE_PASSWORD_ENV": "PW"})
    assert "server.ssl_keyfile_password_env" in stderr and "$PW is not set" in stderr, stderr
    stderr = _serve_fails(
        tmp_path, *tls, env={"GUARITA_SERVER__SSL_KEYFILE_PASSWORD_ENV": "PW", "PW": "not-it-4711"}
    )
    assert "server.ssl_keyfile" in stderr and "do not load" in stderr, stderr
    assert "not-it-4711" not in stderr, stderr  # the password is not echoed


def test_a_key_of_another_certificate_stops_the_start(
    tmp_path: Path, ca: trustme.CA, cert_files: tuple[Path, Path]
) -> None:
    certfile, _ = cert_files
    other = tmp_path / "other.key"
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other))
    stderr = _serve_fails(tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(other))
    assert "server.ssl_keyfile" in stderr and "matching PEM pair" in stderr, stderr


# -- security headers -------------------------------------------------------------------------


def test_security_headers_on_every_kind_of_answer(plain_server: tuple[GuaritaServer, str]) -> None:
    server, key = plain_server
    with client_for(server, key) as client, client_for(server) as anonymous:
        ok = client.get("/v1/models")
        unauthorised = anonymous.post("/v1/chat/completions", json=CHAT)
        missing = client.get("/no/such/route")
        bad = client.post("/v1/chat/completions", content=b"{bad")
        metrics = anonymous.get("/metrics")
        too_big_head = anonymous.get("/health", headers={"x-big": "a" * 40_000})
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            stream_body = s.read().decode()
            stream = s
    assert [r.status_code for r in (ok, unauthorised, missing, bad, metrics, too_big_head)] == [
        200,
        401,
        404,
        400,
        200,
        431,
    ]
    for response in (ok, unauthorised, missing, bad, metrics, too_big_head, stream):
        assert_api_headers(response)
    # answers say how to cache them: API answers not at all, unless the endpoint says otherwise
    for response in (ok, unauthorised, missing, bad, metrics, too_big_head):
        assert response.headers["cache-control"] == "no-store", response.status_code
    assert stream.status_code == 200 and stream_body.rstrip().endswith("data: [DONE]")
    assert stream.headers["cache-control"] == "no-cache"  # the stream's own, not doubled
    assert stream.headers.get_list("cache-control") == ["no-cache"]


def test_the_docs_pages_get_a_policy_that_lets_them_load(
    plain_server: tuple[GuaritaServer, str],
) -> None:
    server, _ = plain_server
    with client_for(server) as anonymous:
        for path in ("/docs", "/redoc"):
            page = anonymous.get(path)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            policy = page.headers["content-security-policy"]
            assert "https://cdn.jsdelivr.net" in policy and "frame-ancestors 'none'" in policy
            assert "connect-src 'self'" in policy
            assert page.headers["x-frame-options"] == "DENY"
        schema = anonymous.get("/openapi.json")
        assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")
        assert_api_headers(schema)


# -- CORS -------------------------------------------------------------------------------------


def _preflight(client: httpx.Client, origin: str, method: str = "POST") -> httpx.Response:
    return client.options(
        "/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "authorization, content-type",
        },
    )


def test_cors_is_closed_by_default(plain_server: tuple[GuaritaServer, str]) -> None:
    server, key = plain_server
    with client_for(server, key) as client:
        simple = client.get("/v1/models", headers={"origin": ORIGIN})
        preflight = _preflight(client, ORIGIN)
    assert simple.status_code == 200
    assert not [name for name in simple.headers if name.startswith("access-control-")]
    assert preflight.status_code == 405, preflight.text
    assert preflight.json()["error"]["type"] == "invalid_request_error"
    assert not [name for name in preflight.headers if name.startswith("access-control-")]
    assert_api_headers(preflight)


def test_cors_opens_for_the_configured_origin_only(
    https_server: tuple[GuaritaServer, str],
) -> None:
    server, key = https_server
    with client_for(server, key) as client:
        allowed = _preflight(client, ORIGIN)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert allowed.headers["access-control-max-age"] == "300"
        assert_api_headers(allowed)

        refused = _preflight(client, OTHER_ORIGIN)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "cors_not_allowed"
        assert "origin" in refused.json()["error"]["message"]
        assert "access-control-allow-origin" not in refused.headers
        assert_api_headers(refused)

        wrong_method = _preflight(client, ORIGIN, method="PUT")
        assert wrong_method.status_code == 403, wrong_method.text
        assert "method" in wrong_method.json()["error"]["message"]

        simple = client.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"]
        other = client.post("/v1/chat/completions", json=CHAT, headers={"origin": OTHER_ORIGIN})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers


def test_cors_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="allow_credentials: not with '\\*'"):
        load_settings(server={"cors": {"allow_origins": ["*"], "allow_credentials": True}})
    with pytest.raises(ConfigError, match="is not an origin"):
        load_settings(server={"cors": {"allow_origins": ["console.example.com"]}})
    with pytest.raises(ConfigError, match="is not an origin"):
        load_settings(server={"cors": {"allow_origins": ["https://a.example/path"]}})
    with pytest.raises(ConfigError, match="unknown methods"):
        load_settings(server={"cors": {"allow_origins": [ORIGIN], "allow_methods": ["get"]}})
    with pytest.raises(ConfigError, match="needs ssl_certfile"):
        load_settings(server={"ssl_keyfile": "/k.pem"})
    opened = load_settings(server={"cors": {"allow_origins": ["*"]}})
    assert opened.server.cors.enabled and not load_settings().server.cors.enabled


# -- docs switch ------------------------------------------------------------------------------


def test_docs_off_is_404_on_all_three_paths(https_server: tuple[GuaritaServer, str]) -> None:
    server, _ = https_server
    with client_for(server) as anonymous:
        for path in ("/docs", "/redoc", "/openapi.json"):
            response = anonymous.get(path)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"]["type"] == "not_found_error"
            assert_api_headers(response)
