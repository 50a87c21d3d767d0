"""Regex rules with a sense of "constant": the engine behind the checks for languages
without a parser here.

A rule's pattern ends where the value it cares about starts (the named group ``arg``,
empty); the engine reads that operand (brackets balanced, up to a ``,``, ``;`` or the
closing bracket) and fires only when it is not a constant: ``el.innerHTML = "<b>hi</b>"``
is fine, ``el.innerHTML = name`` is not. ``unless`` names a sanitiser that, on the same
operand, makes the value safe (``DOMPurify.sanitize(html)``). Comments are blanked
before any rule runs (:mod:`codetext`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from guarita.guard.codefindings import Category, Confidence, Finding, Severity

_CONSTANT = re.compile(
    r"""\s*(?:(?:"(?:\\.|[^"\\$])*"|'(?:\\.|[^'\\])*'|`(?:\\.|[^`\\$]|\$(?!\{))*`|\d+(?:\.\d+)?"""
    r"""|true|false|null|None|nil)\s*(?:[+.]\s*|$))+\s*$"""
)


@dataclass(frozen=True, slots=True)
class RegexRule:
    rule: str
    category: Category
    severity: Severity
    confidence: Confidence
    pattern: str
    message: str
    unless: str | None = None
    """On the operand (or the matched line when there is no operand): a sanitiser."""
    unless_in_block: str | None = None
    """Anywhere in the block: a check that covers the whole block (a path normalised)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    spec: RegexRule
    pattern: re.Pattern[str]
    unless: re.Pattern[str] | None
    unless_in_block: re.Pattern[str] | None


def operand(code: str, start: int) -> str:
    """The expression starting at ``start``, up to a separator at bracket depth 0."""
    depth = 0
    index = start
    quote = ""
    while index < len(code):
        char = code[index]
        if quote:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and char in ",;\n":
            break
        index += 1
    return code[start:index]


def is_constant(expression: str) -> bool:
    """A literal, or literals joined by ``+``/``.``, with no interpolation."""
    return bool(_CONSTANT.match(expression)) or not expression.strip()


class RuleSet:
    """A compiled list of rules; :meth:`scan` runs them over one (comment-blanked) block."""

    def __init__(self, prefix: str, rules: Iterable[RegexRule]) -> None:
        self._prefix = prefix
        self._rules = tuple(
            _Compiled(
                r,
                re.compile(r.pattern, re.MULTILINE),
                re.compile(r.unless) if r.unless else None,
                re.compile(r.unless_in_block) if r.unless_in_block else None,
            )
            for r in rules
        )

    def scan(self, code: str) -> list[Finding]:
        findings: list[Finding] = []
        for compiled in self._rules:
            spec = compiled.spec
            if compiled.unless_in_block is not None and compiled.unless_in_block.search(code):
                continue
            for match in compiled.pattern.finditer(code):
                has_arg = "arg" in compiled.pattern.groupindex
                checked = operand(code, match.end("arg")) if has_arg else _line(code, match)
                if has_arg and is_constant(checked):
                    continue
                if compiled.unless is not None and compiled.unless.search(checked):
                    continue
                line = code.count("\n", 0, match.start()) + 1
                findings.append(
                    Finding(
                        f"{self._prefix}.{spec.rule}",
                        spec.category,
                        spec.severity,
                        spec.confidence,
                        line,
                        spec.message,
                    )
                )
        return findings


def _line(code: str, match: re.Match[str]) -> str:
    start = code.rfind("\n", 0, match.start()) + 1
    end = code.find("\n", match.end())
    return code[start : end if end >= 0 else len(code)]
