"""SQL assembled from strings in languages without a parser here (JavaScript, PHP, Java,
Go, Ruby, C#): a query string literal, what is concatenated to it or interpolated in it,
rebuilt as a template for :class:`~guarita.guard.codescan_sql.SqlAnalyser`.

The reading is lexical, not a grammar: string literals are found with one pattern, then
the chain of ``+`` / ``.`` / ``||`` pieces after each is followed; a piece that is not a
literal becomes a hole, and so do ``${...}``, ``#{...}``, PHP ``$var`` and C# ``{x}``
interpolations, and ``%s``/``%v``/``%d`` when the literal is the format of ``Sprintf``,
``String.format`` or ``sprintf``. A literal passed straight to a query call is surer
than one assigned first (the block is searched for a query call then).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from guarita.guard.codefindings import Confidence, Finding, Severity
from guarita.guard.codescan_sql import SqlAnalyser, hole

_LITERAL = re.compile(
    r'(?P<prefix>\$@?|@)?(?P<q>"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|`(?:\\.|[^`\\])*`)'
)
_SQL_START = re.compile(r"(?is)^\s*\(?\s*(select|insert|update|delete|with|replace|merge)\b")
_CONCAT = {
    "php": re.compile(r"\s*(\.(?!\d)|\.=)\s*"),
    "default": re.compile(r"\s*(\+|\|\||<<)\s*"),
}
_FORMAT_CALL = re.compile(r"(Sprintf|String\.format|sprintf|format|Format)\s*\(\s*$")
_FORMAT_VERB = re.compile(r"%[-+# 0]*\d*[svdqfx]")
_INTERPOLATION = {
    "javascript": re.compile(r"\$\{[^}]*\}"),
    "html": re.compile(r"\$\{[^}]*\}"),
    "ruby": re.compile(r"#\{[^}]*\}"),
    "php": re.compile(r"\{\$[^}]*\}|\$\w+(\[[^\]]*\]|->\w+)*"),
    "csharp": re.compile(r"\{[^{}]*\}"),
}
_SINK = re.compile(
    r"(?i)\b(query|execute|exec|executeQuery|executeUpdate|prepareStatement|createQuery|"
    r"createNativeQuery|raw|find_by_sql|where|QueryRow|QueryContext|ExecContext|"
    r"mysqli_query|mysql_query|pg_query|prepare|FromSqlRaw|ExecuteSqlRaw|SqlCommand|"
    r"run|all|get|select_all|select_value|unsafe)\s*\(\s*$"
)
_ANY_SINK = re.compile(
    r"\.(query|execute|exec|executeQuery|executeUpdate|prepareStatement|createQuery|"
    r"createNativeQuery|raw|find_by_sql|QueryRow|Query|Exec|run|all|prepare)\s*\(|"
    r"\b(mysqli_query|mysql_query|pg_query|SqlCommand|FromSqlRaw|ExecuteSqlRaw)\s*\("
)


@dataclass(frozen=True, slots=True)
class _Chain:
    template: str
    holes: int
    start: int


class StringSqlScanner:
    """Finds string-built SQL in a block of a C-like (or PHP, Ruby) language."""

    def __init__(self, sql: SqlAnalyser) -> None:
        self._sql = sql

    def scan(self, code: str, language: str) -> list[Finding]:
        findings: list[Finding] = []
        any_sink = bool(_ANY_SINK.search(code))
        position = 0
        while True:
            match = _LITERAL.search(code, position)
            if match is None:
                return findings
            position = match.end()
            body = match["q"][1:-1]
            if not _SQL_START.match(body):
                continue
            chain = self._chain(code, match, language)
            position = max(position, chain.start)
            if not chain.holes:
                continue
            verdict = self._sql.classify(chain.template)
            if not verdict.is_sql or verdict.placement == "none":
                continue
            findings.append(self._finding(code, match.start(), verdict.placement, any_sink))

    def _chain(self, code: str, literal: re.Match[str], language: str) -> _Chain:
        counter = [0]

        def gap(_: re.Match[str] | None = None) -> str:
            counter[0] += 1
            return hole(counter[0])

        text = self._interpolated(literal, language, gap)
        before = code[max(0, literal.start() - 40) : literal.start()]
        if _FORMAT_CALL.search(before):
            text = _FORMAT_VERB.sub(gap, text)
        concat = _CONCAT["php" if language == "php" else "default"]
        end = literal.end()
        while True:
            operator = concat.match(code, end)
            if operator is None:
                break
            end = operator.end()
            following = _LITERAL.match(code, end)
            if following is not None:
                text += self._interpolated(following, language, gap)
                end = following.end()
            else:
                text += gap()
                end = _skip_expression(code, end, language)
        return _Chain(text, counter[0], end)

    @staticmethod
    def _interpolated(
        literal: re.Match[str], language: str, gap: Callable[[re.Match[str]], str]
    ) -> str:
        quoted = literal["q"]
        body = quoted[1:-1]
        pattern = _INTERPOLATION.get(language)
        if language == "csharp" and not literal["prefix"]:
            return body
        if pattern is None or (language in ("php", "ruby") and quoted[0] == "'"):
            return body
        if language in ("javascript", "html") and quoted[0] != "`":
            return body
        return pattern.sub(gap, body)

    @staticmethod
    def _finding(code: str, start: int, placement: str, any_sink: bool) -> Finding:
        line = code.count("\n", 0, start) + 1
        if placement == "identifier":
            return Finding(
                "sql.dynamic-identifier",
                "sql_injection",
                "medium",
                "medium",
                line,
                "query with an interpolated table or column name: allow-list it",
                "sqlglot",
            )
        direct = bool(_SINK.search(code[max(0, start - 60) : start]))
        severity: Severity = "high" if direct or any_sink else "medium"
        confidence: Confidence = "high" if direct else "medium"
        return Finding(
            "sql.string-built",
            "sql_injection",
            severity,
            confidence,
            line,
            "SQL assembled from strings and variables: use bound parameters",
            "sqlglot",
        )


def _skip_expression(code: str, start: int, language: str) -> int:
    """The end of the operand starting at ``start``: balanced brackets, up to an
    operator, separator or closing bracket at depth 0."""
    depth = 0
    index = start
    stops = ",;)]}+\n" if language != "php" else ",;)]}\n"
    while index < len(code):
        char = code[index]
        if char in "([{":
            depth += 1
        elif depth and char in ")]}":
            depth -= 1
        elif depth == 0 and (char in stops or (language == "php" and code.startswith(" .", index))):
            return index
        elif char in "\"'`":
            literal = _LITERAL.match(code, index)
            if literal is not None:
                index = literal.end()
                continue
        index += 1
    return index
