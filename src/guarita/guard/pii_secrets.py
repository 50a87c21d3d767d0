"""What credentials look like: provider key formats, PEM private keys and JWTs.

Each format is data (a sub-kind, a regular expression, and the literal markers one of
which any match contains), so the scanner compiles them once and can skip the regular
expression entirely for the many messages that contain none of the markers. Key formats
are the ones the providers document or print in their consoles; a format that has no
fixed prefix (an AWS secret access key is 40 base64 characters) is only recognised next to
its name, because alone it cannot be told from any other base64 run.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SecretPattern:
    """One credential format. ``regex`` may contain one group named ``value``: the finding
    is then that group (the key after ``aws_secret_access_key=``), else the whole match."""

    subkind: str
    regex: str
    markers: tuple[str, ...]


_TOKEN = r"[A-Za-z0-9_-]"

# Order matters: at one position the first format that matches wins, so the specific
# ``sk-ant-`` and ``sk-proj-`` come before the generic ``sk-``.
SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern("anthropic", rf"sk-ant-(?:api|admin|oat)\d\d-{_TOKEN}{{20,}}", ("sk-ant-",)),
    SecretPattern("openai", rf"sk-(?:proj|svcacct|admin)-{_TOKEN}{{20,}}", ("sk-",)),
    SecretPattern("openai", r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}", ("T3BlbkFJ",)),
    SecretPattern("generic", rf"sk-{_TOKEN}{{20,}}", ("sk-",)),
    SecretPattern("aws", r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", ("AKIA", "ASIA", "ABIA", "ACCA")),
    SecretPattern(
        "aws",
        r"(?i:aws_?secret_?access_?key|secretaccesskey)[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
        r"(?P<value>[A-Za-z0-9/+]{40})",
        ("ecret_access_key", "ECRET_ACCESS_KEY", "ecretAccessKey", "ecretaccesskey"),
    ),
    SecretPattern(
        "github",
        r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    SecretPattern("github", r"github_pat_[A-Za-z0-9_]{22,255}", ("github_pat_",)),
    SecretPattern("slack", r"xox[abposr]-[A-Za-z0-9-]{10,250}", ("xox",)),
    SecretPattern("slack", r"xapp-\d-[A-Za-z0-9-]{10,250}", ("xapp-",)),
    SecretPattern(
        "slack",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}",
        ("hooks.slack.com",),
    ),
    SecretPattern("stripe", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,247}", ("_live_", "_test_")),
    SecretPattern("stripe", r"whsec_[A-Za-z0-9]{20,}", ("whsec_",)),
    SecretPattern("google", rf"AIza{_TOKEN}{{35}}", ("AIza",)),
    SecretPattern("google", rf"GOCSPX-{_TOKEN}{{28}}", ("GOCSPX-",)),
    SecretPattern("google", rf"ya29\.{_TOKEN}{{20,}}", ("ya29.",)),
    # header.payload.signature, or the five parts of a JWE; the header is checked after
    SecretPattern(
        "jwt",
        rf"eyJ{_TOKEN}{{8,}}\.{_TOKEN}{{2,}}\.{_TOKEN}*(?:\.{_TOKEN}+\.{_TOKEN}+)?",
        ("eyJ",),
    ),
)

# A PEM block whose label names a private key (PKCS#1, PKCS#8, EC, OpenSSH, encrypted,
# PGP). An unterminated block (a truncated paste) is taken up to the end of its base64.
PEM_PRIVATE_KEY = (
    r"-----BEGIN (?P<label>[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=label)-----|[A-Za-z0-9+/=\s:,-]*)"
)
PEM_MARKER = "-----BEGIN"


def is_jwt(token: str) -> bool:
    """Whether the first segment is base64url JSON naming an algorithm, as every JWS and
    JWE header does: an ``eyJ...`` run that decodes to anything else is left alone."""
    header = token.partition(".")[0]
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError):  # not base64, not UTF-8, not JSON
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "enc" in decoded)
