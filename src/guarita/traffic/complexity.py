"""Model tiering by prompt complexity: a cheap model for simple prompts, a strong one for
hard ones, chosen per call by a deterministic scorer (no model call, no randomness).

The score is a sum of points, read from the latest user message and the conversation
before it (docs/routing.md has the same table, with examples):

============  ===============================================  ============================
feature       points                                           why it predicts a hard task
============  ===============================================  ============================
length        estimated tokens (4 characters each) / 200,      more to read and get right
              at most 3
code          a fenced block or 3+ code-like lines: 2;         code and stack traces need a
              1-2 code-like lines: 1; only `inline code`: 0.5  model that reads code
reasoning     2 per strong cue (step by step, prove, derive,   a chain of reasoning is
              trade-offs, root cause, architecture, ...),      asked for, not a lookup
              1 per weak one (why, explain, compare, should
              I, difference between, ...); at most 5
math          1.5 for a formula (n^2, 3*4, y = 2x, \\frac, ∑)    symbolic work
              or a math word (equation, integral, ...)
questions     0.5 per question mark after the first, at most   several asks in one turn
              1.5
depth         0.25 per earlier exchange (two messages), at     the answer must track the
              most 1                                           conversation
============  ===============================================  ============================

The level is ``simple`` below ``medium_at`` (2.0), ``complex`` from ``complex_at`` (5.0)
and ``medium`` between; both are settings of the agent's ``routing``. System messages are
not scored: an agent's system prompt is the same on every call and would only shift every
score alike. Of a very long message only the first and last 8,000 characters are read
for cues (its length counts in full), which bounds a call's cost (docs/routing.md).

The ``ComplexityRouting`` stage sits before rate limits and accounting, so that limits,
price and request record all see the model really called; it answers with
``x-guarita-route`` (the level) and ``x-guarita-routed-model``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from guarita.pipeline import Next
from guarita.providers.common import message_text
from guarita.settings import RoutingSettings
from guarita.types import Call, Reply

Level = Literal["simple", "medium", "complex"]

MEDIUM_AT = 2.0
COMPLEX_AT = 5.0

_CHARS_PER_TOKEN = 4
_TOKENS_PER_POINT = 200
_MAX_LENGTH_POINTS = 3.0
_SCAN_CHARS = 8_000
"""From each end of a message: cues sit at the start (the ask) or the end (the question)."""
_MAX_CUE_POINTS = 5.0
_MATH_POINTS = 1.5
_POINTS_PER_QUESTION = 0.5
_MAX_QUESTION_POINTS = 1.5
_POINTS_PER_EXCHANGE = 0.25
_MAX_DEPTH_POINTS = 1.0
_SYSTEM_ROLES = frozenset({"system", "developer"})


class _Vocabulary:
    """Cue words and phrases, found as whole words in a prompt's lower-cased words."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = set(entries)
        self._words = frozenset(e for e in entries if " " not in e)
        self._phrases: dict[str, tuple[str, ...]] = {}
        for phrase in sorted(e for e in entries if " " in e):
            first = phrase.split(" ", 1)[0]
            self._phrases[first] = (*self._phrases.get(first, ()), f" {phrase} ")

    def found(self, words: str, known: set[str]) -> list[str]:
        """Entries in ``words`` (space-separated and padded), ``known`` being their set."""
        hits = list(self._words & known)
        for first in self._phrases.keys() & known:
            hits.extend(p.strip() for p in self._phrases[first] if p in words)
        return sorted(hits)


_STRONG_CUES = _Vocabulary(
    ("step by step", "prove", "proof", "derive", "derivation", "trade off", "trade offs",
     "tradeoff", "tradeoffs", "pros and cons", "root cause", "in depth", "architecture",
     "design a", "design an", "design the", "optimize", "optimise", "rigorous", "rigorously",
     "think through", "think it through")
)  # fmt: skip
_WEAK_CUES = _Vocabulary(
    ("why", "explain", "compare", "comparison", "contrast", "analyze", "analyse", "analysis",
     "evaluate", "justify", "difference between", "recommend", "should i", "which one",
     "which is better", "which is best", "debug", "refactor", "what if", "implication",
     "implications")
)  # fmt: skip
_MATH_WORDS = _Vocabulary(
    ("equation", "equations", "integral", "derivative", "theorem", "lemma", "matrix",
     "matrices", "eigenvalue", "eigenvalues", "eigenvector", "probability", "polynomial",
     "logarithm", "solve for")
)  # fmt: skip
_HOW_IT_WORKS = re.compile(r" how (?:does|do|would|could)(?: \w+){1,6} work ")
_MATH_CHAR = re.compile(r"[*^\u00d7÷=\\$∑∫√≤≥≠∞∂]")
_FORMULA = re.compile(
    r"(?:\d\s*[*^\u00d7÷]|[a-z]\s*\^)\s*\d|[a-z]\s*=\s*\d+[a-z]\b|[∑∫√≤≥≠∞∂]|\$\$"
    r"|\\(?:frac|sum|int|sqrt|lim|prod|begin\{)",
    re.IGNORECASE,
)
"""Looked for around each of the first ``_MATH_CHARS_CHECKED`` operators: a regex that
starts with a character class is slow over a whole prompt in Python's ``re``."""
_MATH_CHARS_CHECKED = 16
_PUNCTUATION = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\n\t"})
_CODE_STARTS = ("def ", "class ", "import ", "function ", "const ", "var ", "public ",
                "private ", "#include", "SELECT ", "INSERT INTO", ">>> ", "$ ",
                "Traceback (most recent", 'File "')  # fmt: skip
_CODE_ENDS = (";", "{", "}", "):")
_CODE_OPERATORS = ("=>", "->", "==", "!=", "&&", "||")
_ENOUGH_CODE_LINES = 3


@dataclass(frozen=True, slots=True)
class ComplexityScore:
    """A prompt's level, its points, and the features that gave them (``"code block +2"``)."""

    level: Level
    score: float
    reasons: tuple[str, ...]


def _scanned(text: str) -> str:
    if len(text) <= 2 * _SCAN_CHARS:
        return text
    return text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]


def _code_lines(text: str) -> int:
    """Lines that look like code, counted up to ``_ENOUGH_CODE_LINES``."""
    count = 0
    for line in text.splitlines():
        line = line.strip()
        if line and (
            line.startswith(_CODE_STARTS)
            or line.endswith(_CODE_ENDS)
            or any(op in line for op in _CODE_OPERATORS)
        ):
            count += 1
            if count == _ENOUGH_CODE_LINES:
                break
    return count


def _code_points(text: str) -> tuple[float, str]:
    if "```" in text or "~~~" in text:
        return 2.0, "code block"
    lines = _code_lines(text)
    if lines >= _ENOUGH_CODE_LINES:
        return 2.0, f"{lines}+ code lines"
    if lines:
        return 1.0, f"{lines} code line{'s' if lines > 1 else ''}"
    if text.count("`") >= 2:
        return 0.5, "inline code"
    return 0.0, ""


def _cue_points(words: str, known: set[str]) -> tuple[float, list[str]]:
    strong = _STRONG_CUES.found(words, known)
    weak = _WEAK_CUES.found(words, known)
    if "how" in known and "work" in known and _HOW_IT_WORKS.search(words):
        weak.append("how ... work")
    points = min(_MAX_CUE_POINTS, 2.0 * len(strong) + 1.0 * len(weak))
    return points, strong + weak


def _has_math(text: str, words: str, known: set[str]) -> bool:
    if _MATH_WORDS.found(words, known):
        return True
    for n, operator in enumerate(_MATH_CHAR.finditer(text)):
        if n == _MATH_CHARS_CHECKED:
            break
        at = operator.start()
        if _FORMULA.search(text, max(0, at - 4), at + 8):
            return True
    return False


def score(
    messages: Sequence[dict[str, Any]],
    *,
    medium_at: float = MEDIUM_AT,
    complex_at: float = COMPLEX_AT,
) -> ComplexityScore:
    """The complexity of a chat prompt (see the module docstring); pure and deterministic."""
    conversation = [m for m in messages if m.get("role") not in _SYSTEM_ROLES]
    last_user = next(
        (i for i in range(len(conversation) - 1, -1, -1) if conversation[i].get("role") == "user"),
        len(conversation) - 1,
    )
    text = message_text(conversation[last_user]) if conversation else ""
    reasons: list[str] = []
    total = 0.0

    def add(points: float, reason: str) -> None:
        nonlocal total
        if points >= 0.01:
            total += points
            reasons.append(f"{reason} +{round(points, 2):g}")

    tokens = len(text) // _CHARS_PER_TOKEN
    add(min(_MAX_LENGTH_POINTS, tokens / _TOKENS_PER_POINT), f"length {tokens} tokens")
    scanned = _scanned(text)
    split = scanned.lower().translate(_PUNCTUATION).split()
    words, known = " " + " ".join(split) + " ", set(split)
    code, what = _code_points(scanned)
    add(code, what)
    cues, found = _cue_points(words, known)
    add(cues, "reasoning: " + ", ".join(found))
    if _has_math(scanned, words, known):
        add(_MATH_POINTS, "math")
    questions = scanned.count("?") - scanned.count("??")
    add(min(_MAX_QUESTION_POINTS, _POINTS_PER_QUESTION * (questions - 1)), f"{questions} questions")
    exchanges = max(last_user, 0) // 2
    add(min(_MAX_DEPTH_POINTS, _POINTS_PER_EXCHANGE * exchanges), f"depth {exchanges} exchanges")
    total = round(total, 2)
    level: Level = "simple"
    if total >= complex_at:
        level = "complex"
    elif total >= medium_at:
        level = "medium"
    return ComplexityScore(level, total, tuple(reasons))


class ComplexityRouting:
    """The pipeline stage: for an agent with ``routing: {mode: complexity, ...}``, call the
    model of the prompt's level instead of the agent's own. Others pass untouched."""

    def __init__(self, agents: Mapping[str, RoutingSettings]) -> None:
        self._agents = dict(agents)

    async def __call__(self, call: Call, next: Next) -> Reply:
        routing = self._agents.get(call.agent) if call.agent is not None else None
        if routing is None or call.operation != "chat":
            return await next(call)
        result = score(call.messages, medium_at=routing.medium_at, complex_at=routing.complex_at)
        model = routing.model_for(result.level)
        # in place: Recording (outside) records the model called; the record keeps the asked one
        call.model = model
        call.response_headers["x-guarita-route"] = result.level
        call.response_headers["x-guarita-routed-model"] = model
        call.record.route = result.level
        call.record.complexity = result.score
        return await next(call)
