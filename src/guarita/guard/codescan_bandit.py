"""Bandit's checks run in-process on a code block held in memory.

Bandit is driven below its file-oriented manager: one :class:`BanditNodeVisitor` per
block over a ``BytesIO``, with the test set built once. Only the tests listed in
:data:`RULES` run; the flows the AST scanner of :mod:`codescan_python` judges better
(SQL reaching ``execute``, ``shell=True``, ``os.system``, ``eval``, pickle and YAML,
weak hashes, hard-coded passwords) are left out, so one flaw is not reported twice and
bandit's messages, which quote the matched password, never reach a finding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from guarita.guard.codefindings import Category, Confidence, Finding, Severity
from guarita.providers.base import missing_extra


@dataclass(frozen=True, slots=True)
class BanditRule:
    category: Category
    severity: Severity
    confidence: Confidence
    message: str


RULES: dict[str, BanditRule] = {
    "B104": BanditRule("insecure_config", "low", "medium", "server bound to all interfaces"),
    "B201": BanditRule("insecure_config", "high", "high",
                       "Flask run with debug=True: the debugger executes code remotely"),
    "B202": BanditRule("path_traversal", "medium", "medium",
                       "tar extraction without a member filter can write outside the target"),
    "B304": BanditRule("weak_crypto", "medium", "high", "broken cipher (DES, RC4, Blowfish...)"),
    "B305": BanditRule("weak_crypto", "medium", "high", "ECB cipher mode leaks patterns"),
    "B306": BanditRule("insecure_config", "low", "medium", "tempfile.mktemp is racy"),
    "B308": BanditRule("xss", "medium", "medium", "mark_safe disables HTML escaping"),
    "B312": BanditRule("insecure_config", "medium", "high", "telnet sends data in clear text"),
    "B313": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B314": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B315": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B316": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B317": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B318": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B319": BanditRule("xml_external_entity", "low", "medium", "XML parsed without defusedxml"),
    "B320": BanditRule("xml_external_entity", "medium", "medium",
                       "lxml parsing may resolve external entities"),
    "B323": BanditRule("insecure_config", "medium", "high", "TLS certificate checks disabled"),
    "B501": BanditRule("insecure_config", "medium", "high", "HTTPS request with verify=False"),
    "B502": BanditRule("insecure_config", "medium", "high", "obsolete SSL/TLS version"),
    "B503": BanditRule("insecure_config", "medium", "medium", "obsolete SSL/TLS version"),
    "B504": BanditRule("insecure_config", "low", "medium", "TLS version not pinned"),
    "B507": BanditRule("insecure_config", "medium", "high", "SSH host keys accepted unchecked"),
    "B601": BanditRule("command_injection", "medium", "medium",
                       "paramiko exec_command runs a shell command remotely"),
    "B604": BanditRule("command_injection", "medium", "low", "a call with shell=True"),
    "B608": BanditRule("sql_injection", "medium", "medium", "SQL assembled from strings"),
    "B609": BanditRule("command_injection", "low", "medium", "wildcard in a shell command"),
    "B610": BanditRule("sql_injection", "medium", "medium", "Django extra() with raw SQL"),
    "B611": BanditRule("sql_injection", "medium", "medium", "Django RawSQL"),
    "B614": BanditRule("insecure_deserialization", "medium", "high",
                       "torch.load unpickles arbitrary objects"),
    "B701": BanditRule("xss", "medium", "high", "Jinja2 environment with autoescape off"),
    "B702": BanditRule("xss", "medium", "medium", "Mako templates do not escape by default"),
    "B703": BanditRule("xss", "medium", "medium", "Django mark_safe disables escaping"),
}  # fmt: skip


class BanditRunner:
    """The selected bandit tests, loaded once (bandit's plugin discovery costs ~150 ms)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # bandit's extension loader passes stevedore an argument it deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from bandit.core import (  # type: ignore[import-untyped]
                    config,
                    meta_ast,
                    metrics,
                    node_visitor,
                    test_set,
                )
            except ImportError as error:  # pragma: no cover - the guard extra is installed
                raise missing_extra("bandit", "guard") from error
        self._visitor: Any = node_visitor.BanditNodeVisitor
        self._meta_ast: Any = meta_ast.BanditMetaAst
        self._metrics: Any = metrics.Metrics
        self._tests = test_set.BanditTestSet(config.BanditConfig(), {"include": set(RULES)})

    def scan(self, source: str) -> list[Finding]:
        """Findings for a block that :func:`ast.parse` already accepted."""
        data = source.encode()
        visitor = self._visitor(
            "./answer_block.py",  # "./": bandit names the module without a stat
            io.BytesIO(data),
            self._meta_ast(),
            self._tests,
            False,
            {},
            self._metrics(),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            visitor.process(data)
        findings = []
        for issue in visitor.tester.results:
            rule = RULES.get(issue.test_id)
            if rule is None:
                continue
            findings.append(
                Finding(
                    rule=f"bandit.{issue.test_id}",
                    category=rule.category,
                    severity=rule.severity,
                    confidence=rule.confidence,
                    line=int(issue.lineno),
                    message=rule.message,
                    engine="bandit",
                )
            )
        return findings
