"""Prompt-injection and jailbreak detection on user and tool content, offline and CPU-only.

Two layers give one score in 0-1. Fast rules (:mod:`~guarita.guard.injection_rules`) run
over the folded text and its decoded variants (:mod:`~guarita.guard.injection_normalise`);
a hashed n-gram logistic regression (:mod:`~guarita.guard.injection_model`) scores windows
of the text. The score is ``1 - (1 - rules) * (1 - classifier)`` and a message is flagged
at the threshold calibrated when the weights were trained (for at most 2% of benign
prompts flagged, hard negatives included), unless the config or the policy names another.

The weights ship inside the package and are read once, in the constructor: nothing is
downloaded, ever. Scoring holds no state, so one detector serves every request; it is
CPU-bound (about a millisecond for a short message, bounded for a long one by
``max_windows`` and ``max_chars``), so a pipeline stage may run it inline for short
content and hand long tool outputs to a worker thread.

A policy says per agent what a flag does: ``block`` (the caller answers 400 with code
:data:`ERROR_CODE`), ``flag`` (answer, record the verdict, send it in a header) or ``off``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from guarita.guard.injection_model import LinearModel, load_model
from guarita.guard.injection_normalise import normalise
from guarita.guard.injection_rules import SIGNAL_WEIGHTS, RuleHit, RuleSet, combine

__all__ = [
    "ERROR_CODE",
    "InjectionConfig",
    "InjectionDetector",
    "InjectionPolicy",
    "InjectionScreening",
    "InjectionVerdict",
    "Mode",
    "Role",
    "bundled_weights_path",
    "screen",
]

ERROR_CODE = "prompt_injection_detected"
WEIGHTS_FILE = "injection_weights.npz"

Mode = Literal["block", "flag", "off"]
Role = Literal["user", "tool", "system", "assistant"]

_TOKEN = re.compile(r"\S+")
# Decoded payloads the classifier reads too; ROT13 and reversed text only go to the rules,
# since the classifier has never seen what they make of ordinary prose.
_CLASSIFIED_VARIANTS = frozenset({"base64", "hex", "tags", "despaced", "leet"})
_MAX_CLASSIFIED_VARIANTS = 3
_REPORT_CLASSIFIER_AT = 0.5


def bundled_weights_path() -> Path:
    """The weights file shipped in the package (``guarita/guard/data``)."""
    return Path(str(resources.files("guarita.guard").joinpath("data", WEIGHTS_FILE)))


@dataclass(frozen=True, slots=True)
class InjectionConfig:
    """How the detector is built; the defaults are the calibrated, bundled ones.

    ``threshold`` None takes the one stored with the weights. A message longer than
    ``max_chars`` is scanned on its first three quarters and last quarter of that budget;
    the classifier reads windows of ``window_tokens`` whitespace tokens overlapping by
    ``window_overlap``, at most ``max_windows`` of them spread over the text.
    """

    weights_path: Path | None = None
    threshold: float | None = None
    use_rules: bool = True
    use_classifier: bool = True
    window_tokens: int = 512
    window_overlap: int = 64
    max_windows: int = 8
    max_chars: int = 65536

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.window_tokens < 16 or not 0 <= self.window_overlap < self.window_tokens:
            raise ValueError("window_tokens must be >= 16 and window_overlap in [0, window_tokens)")
        if self.max_windows < 1 or self.max_chars < 1024:
            raise ValueError("max_windows must be >= 1 and max_chars >= 1024")


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """The combined score, whether it reached the threshold, and why.

    ``reasons`` names each rule hit (``rule:ignore_previous``, ``rule:do_anything_now@base64``
    for a hit in a decoded form), each surface signal (``signal:unicode_tags``), and
    ``classifier`` when the model alone gave 0.5 or more; ``truncated`` says the text was
    longer than the scan budget.
    """

    score: float
    flagged: bool
    reasons: tuple[str, ...]
    rules_score: float = 0.0
    classifier_score: float = 0.0
    truncated: bool = False


class InjectionDetector:
    """Scores text for prompt injection and jailbreaks; build once, share everywhere."""

    def __init__(self, config: InjectionConfig | None = None) -> None:
        self.config = config or InjectionConfig()
        self._rules = RuleSet()
        self._model: LinearModel | None = None
        stored: float | None = None
        if self.config.use_classifier or self.config.threshold is None:
            model = load_model(self.config.weights_path or bundled_weights_path())
            stored = float(model.meta["threshold"])
            if self.config.use_classifier:
                self._model = model
        threshold = self.config.threshold if self.config.threshold is not None else stored
        assert threshold is not None
        self.threshold: float = threshold

    def score(self, text: str) -> InjectionVerdict:
        """Score one message's text; pure CPU, no I/O, deterministic."""
        scanned, truncated = self._bounded(text)
        normalised = normalise(scanned)
        reasons: list[str] = []
        rules_score = 0.0
        if self.config.use_rules:
            rules_score = self._rules_score(normalised.folded, normalised.variants, reasons)
            signal_weights = [SIGNAL_WEIGHTS[s] for s in sorted(normalised.signals)]
            reasons.extend(f"signal:{s}" for s in sorted(normalised.signals))
            rules_score = combine([rules_score, *signal_weights])
        classifier_score = 0.0
        if self._model is not None:
            classifier_score = self._classifier_score(
                self._model, normalised.folded, normalised.variants
            )
            if classifier_score >= _REPORT_CLASSIFIER_AT:
                reasons.append("classifier")
        score = combine([rules_score, classifier_score])
        return InjectionVerdict(
            score=score,
            flagged=score >= self.threshold,
            reasons=tuple(reasons),
            rules_score=rules_score,
            classifier_score=classifier_score,
            truncated=truncated,
        )

    def _bounded(self, text: str) -> tuple[str, bool]:
        limit = self.config.max_chars
        if len(text) <= limit:
            return text, False
        head = limit * 3 // 4
        return text[:head] + "\n" + text[len(text) - (limit - head) :], True

    def _rules_score(
        self, folded: str, variants: Sequence[tuple[str, str]], reasons: list[str]
    ) -> float:
        best: dict[str, RuleHit] = {}
        hits = self._rules.match(folded)
        for name, variant in variants:
            hits.extend(self._rules.match(variant, name))
        for hit in hits:
            if hit.rule_id not in best or hit.weight > best[hit.rule_id].weight:
                best[hit.rule_id] = hit
        for rule_id in sorted(best):
            hit = best[rule_id]
            where = "" if hit.variant == "plain" else f"@{hit.variant}"
            reasons.append(f"rule:{rule_id}{where}")
        return combine(hit.weight for hit in best.values())

    def _classifier_score(
        self, model: LinearModel, folded: str, variants: Sequence[tuple[str, str]]
    ) -> float:
        texts = self._windows(folded)
        extra = [v for name, v in variants if name in _CLASSIFIED_VARIANTS]
        texts.extend(extra[:_MAX_CLASSIFIED_VARIANTS])
        return max(model.probability(t) for t in texts)

    def _windows(self, folded: str) -> list[str]:
        size, overlap = self.config.window_tokens, self.config.window_overlap
        spans = [m.span() for m in _TOKEN.finditer(folded)]
        if len(spans) <= size:
            return [folded]
        stride = size - overlap
        starts = list(range(0, len(spans) - overlap, stride))
        wanted = self.config.max_windows
        if len(starts) > wanted:
            # Spread the windows over the text, keeping the first and the last: an
            # injection is often appended to a long document.
            step = (len(starts) - 1) / (wanted - 1) if wanted > 1 else 0.0
            starts = sorted({starts[round(i * step)] for i in range(wanted)})
        return [folded[spans[s][0] : spans[min(s + size, len(spans)) - 1][1]] for s in starts]


@dataclass(frozen=True, slots=True)
class InjectionPolicy:
    """One agent's choice: what a flag does, at which threshold, on which message roles."""

    mode: Mode = "flag"
    threshold: float | None = None
    roles: frozenset[Role] = field(default_factory=lambda: frozenset({"user", "tool"}))

    def __post_init__(self) -> None:
        if self.mode not in ("block", "flag", "off"):
            raise ValueError(f"mode must be block, flag or off, not {self.mode!r}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")

    def scans(self, role: str) -> bool:
        """Whether messages of ``role`` are scored at all under this policy."""
        return self.mode != "off" and role in self.roles


@dataclass(frozen=True, slots=True)
class InjectionScreening:
    """The outcome over a conversation: the action, the worst verdict and where it was."""

    action: Literal["allow", "flag", "block"]
    verdict: InjectionVerdict | None = None
    message_index: int | None = None

    def header_value(self) -> str:
        """A compact, header-safe summary, e.g. ``score=0.97; rule:ignore_previous``."""
        if self.verdict is None:
            return "score=0.00"
        return "; ".join([f"score={self.verdict.score:.2f}", *self.verdict.reasons])


def screen(
    detector: InjectionDetector,
    policy: InjectionPolicy,
    messages: Iterable[tuple[str, str]],
) -> InjectionScreening:
    """Score the ``(role, text)`` messages the policy covers and decide for the call.

    The worst-scoring message decides: ``block`` or ``flag`` (per the policy) when it
    reaches the policy's threshold, or the detector's when the policy names none.
    """
    if policy.mode == "off":
        return InjectionScreening(action="allow")
    threshold = policy.threshold if policy.threshold is not None else detector.threshold
    worst: InjectionVerdict | None = None
    worst_index: int | None = None
    for index, (role, text) in enumerate(messages):
        if not policy.scans(role) or not text:
            continue
        verdict = detector.score(text)
        if worst is None or verdict.score > worst.score:
            worst, worst_index = verdict, index
    if worst is None or worst.score < threshold:
        return InjectionScreening(action="allow", verdict=worst, message_index=worst_index)
    return InjectionScreening(action=policy.mode, verdict=worst, message_index=worst_index)
