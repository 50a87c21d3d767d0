"""Checks for every block whatever its language: hard-coded secrets and path traversal
literals.

Secrets are matched by the shape of well-known tokens (AWS, GitHub, Slack, Stripe,
Google, OpenAI, Anthropic, private keys, JWTs, credentials in URLs) and by assignments
to secret-sounding names (``password = "..."``). Placeholders that models write on
purpose (``"your-api-key"``, ``"<token>"``, ``"changeme"``, ``AKIAIOSFODNN7EXAMPLE``,
``os.environ[...]``, ``"***"``) are not secrets. A finding says which kind of secret
and where; it never carries the value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from guarita.guard.codefindings import Confidence, Finding, Severity

_TOKENS: tuple[tuple[str, Severity, Confidence, str, str], ...] = (
    ("aws-access-key-id", "critical", "high", r"\b(AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
     "AWS access key id"),
    ("aws-secret-key", "critical", "high",
     r"(?i)aws_?secret_?(access_?)?key\w*[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}\b",
     "AWS secret access key"),
    ("private-key", "critical", "high",
     r"-----BEGIN (RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY( BLOCK)?-----"
     r"\s*\n\s*[A-Za-z0-9+/=]{40,}", "private key"),
    ("github-token", "critical", "high", r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{60,})",
     "GitHub token"),
    ("slack-token", "critical", "high", r"\bxox[abposr]-[0-9A-Za-z-]{10,}", "Slack token"),
    ("stripe-live-key", "critical", "high", r"\b[sr]k_live_[0-9A-Za-z]{20,}", "Stripe live key"),
    ("google-api-key", "high", "high", r"\bAIza[0-9A-Za-z_-]{35}\b", "Google API key"),
    ("openai-key", "critical", "high", r"\bsk-(proj-|svcacct-)?[A-Za-z0-9_-]{32,}",
     "OpenAI-style API key"),
    ("anthropic-key", "critical", "high", r"\bsk-ant-[A-Za-z0-9_-]{32,}", "Anthropic API key"),
    ("jwt", "medium", "medium",
     r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", "JSON web token"),
    ("url-credentials", "high", "medium",
     r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@\"'<>]+:(?P<value>[^\s:/@\"'<>${}]{3,})@[\w.-]+",
     "credentials in a connection URL"),
)  # fmt: skip

_ASSIGNED = re.compile(
    r"(?i)(?P<name>[\w.-]*(pass(word|wd)?|pwd|secret|api[_-]?key|apikey|access[_-]?key|"
    r"auth[_-]?token|token|private[_-]?key|client[_-]?secret)[\w-]*)[\"']?\s*"
    r"(?P<op>:=|=>|==|=|:)\s*[rbuf]?(?P<q>[\"'`])(?P<value>[^\"'`\n]{4,})(?P=q)"
)
_PLACEHOLDER = re.compile(
    r"(?i)^(x+|\*+|\.+|-+|_+)$|your|<[^>]*>|\{\{?[^}]*\}|\$\{|%[s(]|example|placeholder|"
    r"changeme|change[_-]?me|dummy|sample|redacted|replace|insert|todo|fixme|xxx|\.\.\.|"
    r"^(password|passwd|secret|token|test|demo|foo|bar|none|null|undefined|admin)$|"
    r"environ|getenv|env\(|process\.env|settings\.|config\["
)
_TRAVERSAL = re.compile(
    r"""["'`](\.\./|\.\.\\)+[^"'`]*["'`]\s*(\+|\.|,)\s*(?P<arg>[A-Za-z_$][\w.$\[\]'"]*)"""
)
_USER_INPUT = re.compile(
    r"(?i)req(uest)?\b|params|query|argv|input|\$_(GET|POST|REQUEST)|getParameter|FormValue|"
    r"user|name|file"
)


def entropy(text: str) -> float:
    """Shannon entropy per character: random keys are near 4-6, words near 2-3."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


@dataclass(frozen=True, slots=True)
class _Token:
    rule: str
    severity: Severity
    confidence: Confidence
    pattern: re.Pattern[str]
    kind: str


class SecretScanner:
    """Any-language checks; compiled once."""

    def __init__(self) -> None:
        self._tokens = tuple(
            _Token(rule, sev, conf, re.compile(pattern), kind)
            for rule, sev, conf, pattern, kind in _TOKENS
        )

    def scan(self, code: str) -> list[Finding]:
        findings = [*self._known_tokens(code), *self._assignments(code)]
        for match in _TRAVERSAL.finditer(code):
            if _USER_INPUT.search(match["arg"]):
                findings.append(
                    Finding(
                        "any.traversal-literal",
                        "path_traversal",
                        "medium",
                        "medium",
                        _line(code, match.start()),
                        "a ../ path joined with input: normalise and check it",
                    )
                )
        return findings

    def _known_tokens(self, code: str) -> list[Finding]:
        found = []
        for token in self._tokens:
            for match in token.pattern.finditer(code):
                value = match.groupdict().get("value") or match.group(0)
                if _PLACEHOLDER.search(value) or "EXAMPLE" in match.group(0):
                    continue
                found.append(
                    Finding(
                        f"secret.{token.rule}",
                        "hardcoded_secret",
                        token.severity,
                        token.confidence,
                        _line(code, match.start()),
                        f"hard-coded {token.kind}",
                    )
                )
        return found

    def _assignments(self, code: str) -> list[Finding]:
        found = []
        for match in _ASSIGNED.finditer(code):
            value = match["value"]
            if match["op"] == "==" or _PLACEHOLDER.search(value) or value.strip() != value:
                continue
            if " " in value and entropy(value) < 3.5:
                continue  # a sentence ("Enter your password"), not a secret
            strong = len(value) >= 16 and entropy(value) >= 3.5
            found.append(
                Finding(
                    "secret.assigned",
                    "hardcoded_secret",
                    "high",
                    "high" if strong else "medium",
                    _line(code, match.start()),
                    f"hard-coded value for {_kind(match['name'])}",
                )
            )
        return found


def _kind(name: str) -> str:
    lowered = name.lower()
    for word in ("password", "secret", "token", "key"):
        if word in lowered:
            return f"a {word}"
    return "a credential"


def _line(code: str, offset: int) -> int:
    return code.count("\n", 0, offset) + 1
