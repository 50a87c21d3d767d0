"""HTTPS for ``guarita serve``: the certificate and key from ``server.ssl_*``, checked
before anything listens so that a missing, unreadable or mismatched file stops the start
with a message naming its setting (uvicorn would fail later, in each worker, with a bare
``FileNotFoundError`` or ``SSLError``)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guarita.errors import ConfigError
from guarita.settings import ServerSettings


def uvicorn_tls_options(
    server: ServerSettings, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments for TLS (none when it is off), once checked."""
    if server.ssl_certfile is None:
        return {}
    environ = os.environ if environ is None else environ
    certfile = _readable("server.ssl_certfile", server.ssl_certfile)
    keyfile = None
    if server.ssl_keyfile is not None:
        keyfile = _readable("server.ssl_keyfile", server.ssl_keyfile)
    password = None
    if server.ssl_keyfile_password_env:
        password = environ.get(server.ssl_keyfile_password_env)
        if not password:
            raise ConfigError(
                f"server.ssl_keyfile_password_env: ${server.ssl_keyfile_password_env} is not set"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password)
    except ssl.SSLError as exc:
        where = "server.ssl_keyfile" if keyfile else "server.ssl_certfile"
        reason = f" (OpenSSL: {exc.reason})" if exc.reason else ""
        raise ConfigError(
            f"{where}: the certificate and private key do not load as a matching PEM pair; "
            f"a wrong file, or a wrong or missing password?{reason}"
        ) from None
    options: dict[str, Any] = {"ssl_certfile": certfile}
    if keyfile:
        options["ssl_keyfile"] = keyfile
    if password:
        options["ssl_keyfile_password"] = password
    return options


def _readable(setting: str, path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {str(path)!r}: {exc.strerror}") from None
    return str(path)
