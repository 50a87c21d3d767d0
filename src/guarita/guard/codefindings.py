"""What a code scanner reports, and how findings combine into one risk score.

A :class:`Finding` names a rule, never the matched text: a finding about a hard-coded
secret must not become a second copy of the secret in the request record or a header.

The score is ``1 - prod(1 - w)`` over the findings kept, with ``w`` the product of a
severity weight and a confidence weight (:class:`ScoreWeights`). It reads as the chance
that at least one finding is real if each were an independent witness: one strong
finding is enough to score high, several weak ones add up slowly, and no finding is 0.
Findings of the same category on the same line of the same block count once (the
strongest), because two engines seeing the same flaw is not twice the evidence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Category = Literal[
    "sql_injection",
    "xss",
    "command_injection",
    "code_injection",
    "path_traversal",
    "hardcoded_secret",
    "insecure_deserialization",
    "xml_external_entity",
    "weak_crypto",
    "insecure_config",
    "dangerous_command",
]
Severity = Literal["low", "medium", "high", "critical"]
Confidence = Literal["low", "medium", "high"]
Engine = Literal["ast", "bandit", "sqlglot", "bashlex", "regex"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspected flaw in one code block.

    ``line`` counts from 1 within the block; ``block`` is the block's index in the answer
    (set by the scanner that walks the answer, 0 for a block scanned alone).
    """

    rule: str
    category: Category
    severity: Severity
    confidence: Confidence
    line: int
    message: str
    engine: Engine = "regex"
    block: int = 0


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """How much one finding weighs. With the defaults a single high-severity finding of
    high confidence scores 0.8 and one of medium confidence 0.56 (over a 0.5 line), a
    medium/medium one 0.35 (under it): weak hints alone do not flag an answer."""

    severity: dict[str, float] = field(
        default_factory=lambda: {"low": 0.25, "medium": 0.55, "high": 0.8, "critical": 1.0}
    )
    confidence: dict[str, float] = field(
        default_factory=lambda: {"low": 0.4, "medium": 0.7, "high": 1.0}
    )
    cap: float = 0.99
    """No single finding is certain: the score of one finding stays below 1."""

    def weight(self, finding: Finding) -> float:
        raw = self.severity[finding.severity] * self.confidence[finding.confidence]
        return min(raw, self.cap)


def strongest_per_line(findings: Iterable[Finding], weights: ScoreWeights) -> list[Finding]:
    """One finding per (block, category, line): the heaviest, the first seen on a tie."""
    kept: dict[tuple[int, str, int], Finding] = {}
    for finding in findings:
        key = (finding.block, finding.category, finding.line)
        held = kept.get(key)
        if held is None or weights.weight(finding) > weights.weight(held):
            kept[key] = finding
    return sorted(kept.values(), key=lambda f: (f.block, f.line, f.category, f.rule))


def risk_score(findings: Iterable[Finding], weights: ScoreWeights | None = None) -> float:
    """The combined risk of ``findings`` in [0, 1] (see the module docstring)."""
    weights = weights or ScoreWeights()
    safe = 1.0
    for finding in strongest_per_line(findings, weights):
        safe *= 1.0 - weights.weight(finding)
    return round(1.0 - safe, 4)
