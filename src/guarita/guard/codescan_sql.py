"""Is this SQL string safe? sqlglot tells a constant or parameterised query from one
assembled out of interpolated pieces, and where in the query a piece lands.

Callers hand over a *template*: the query's constant text with each interpolated piece
replaced by a hole marker (:func:`hole`). sqlglot parses it; a hole that lands inside a
string literal or as a value (the right side of a comparison, ``IN (...)``, ``VALUES``,
``LIMIT``) is injection; a hole that lands as a table or column name is a dynamic
identifier, a weaker finding (often allow-listed by the caller). Placeholders (``?``,
``%s``, ``%(name)s``, ``:name``, ``$1``, ``@p``) are parameters, and a query whose only
variable parts are placeholders is safe.

A template that is not SQL (``"select an option: " + x``) does not parse and does not
look like a query, and gives no finding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from guarita.guard.codefindings import Category, Confidence, Finding, Severity
from guarita.providers.base import missing_extra

HOLE_PREFIX = "guarita_hole_"
_HOLE = re.compile(HOLE_PREFIX + r"\d+")
_LOOKS_SQL = re.compile(
    r"(?is)^\s*(\(\s*)?(select\b.+\bfrom\b|select\s+\S|insert\s+into\b|update\s+\S+\s+set\b|"
    r"delete\s+from\b|with\s+\w+\s+as\s*\(|replace\s+into\b|merge\s+into\b|"
    r"(create|drop|alter|truncate)\s+(table|database|index|view|schema|user)\b)"
)
_QUERY_CLAUSE = re.compile(r"(?i)\b(where|from|set|values|order\s+by|group\s+by|limit|and|or)\b")
_PYFORMAT = re.compile(r"%\((\w+)\)s|%[sd]")
_DYNAMIC_EXEC = re.compile(r"(?i)^\s*(exec(ute)?|sp_executesql|prepare\s+\w+\s+from)\b")

Placement = Literal["none", "value", "quoted", "identifier", "unknown"]


def hole(n: int) -> str:
    """The marker for the ``n``-th interpolated piece of a template."""
    return f"{HOLE_PREFIX}{n}"


def looks_like_sql(text: str) -> bool:
    """Whether a string starts like a query (cheap: decides whether to parse at all)."""
    return bool(_LOOKS_SQL.match(text))


@dataclass(frozen=True, slots=True)
class SqlVerdict:
    """``placement`` is the worst place any hole landed (``none``: no hole)."""

    is_sql: bool
    placement: Placement
    parameterised: bool


class SqlAnalyser:
    """Classifies query templates; built once (the sqlglot import and its dialect)."""

    def __init__(self, dialect: str | None = None) -> None:
        try:
            import sqlglot
            from sqlglot import exp
        except ImportError as error:  # pragma: no cover - the guard extra is installed in CI
            raise missing_extra("sqlglot", "guard") from error
        self._parse_one: Callable[..., Any] = sqlglot.parse_one
        self._exp = exp
        self._parse_error: type[Exception] = sqlglot.errors.ParseError
        self._dialect = dialect

    def classify(self, template: str) -> SqlVerdict:
        """Where the holes of ``template`` land in the query, if it is one."""
        holes = bool(_HOLE.search(template))
        if not looks_like_sql(template):
            return SqlVerdict(False, "none", False)
        text = _PYFORMAT.sub("?", template)
        tree = self._parse(text)
        if tree is None:
            placement: Placement = "unknown" if holes and _QUERY_CLAUSE.search(text) else "none"
            return SqlVerdict(placement != "none", placement, "?" in text)
        exp = self._exp
        parameterised = any(
            isinstance(node, exp.Placeholder | exp.Parameter) for node in tree.walk()
        )
        if not holes:
            return SqlVerdict(True, "none", parameterised)
        return SqlVerdict(True, self._worst_placement(tree, text), parameterised)

    def _parse(self, text: str) -> Any:
        if _DYNAMIC_EXEC.match(text):
            return None  # sqlglot keeps these as opaque commands (and logs a warning)
        try:
            return self._parse_one(text, read=self._dialect)
        except (self._parse_error, ValueError, RecursionError):
            return None

    def _worst_placement(self, tree: Any, text: str) -> Placement:
        exp = self._exp
        found: set[Placement] = set()
        for node in tree.walk():
            if isinstance(node, exp.Literal) and node.is_string and _HOLE.search(node.this):
                found.add("quoted")
            elif isinstance(node, exp.Identifier) and _HOLE.search(str(node.this)):
                found.add(self._identifier_placement(node))
        if not found:
            # the hole vanished into syntax sqlglot folded (comments, keywords): be wary
            return "unknown" if _HOLE.search(text) else "none"
        worst: Placement
        for worst in ("quoted", "value", "unknown", "identifier"):
            if worst in found:
                return worst
        return "identifier"

    def _identifier_placement(self, node: Any) -> Placement:
        exp = self._exp
        column = node.parent
        if not isinstance(column, exp.Column):
            return "identifier"
        parent = column.parent
        if isinstance(
            parent,
            exp.In | exp.Tuple | exp.Values | exp.Limit | exp.Offset | exp.Where | exp.Having,
        ):
            return "value"
        if isinstance(parent, exp.Between):
            return "value" if column is not parent.this else "identifier"
        if isinstance(parent, exp.Binary) and column is parent.expression:
            return "value"
        if isinstance(parent, exp.Binary) and isinstance(parent.expression, exp.Column):
            return "value"  # `a = b` with both unknown: either side may be the value
        return "identifier"


_TEMPLATE_HOLE = re.compile(
    r"\$\{[^}\n]*\}|\{\{[^}\n]*\}\}|\{\w+\}|'\s*(\+|\|\|)\s*@?\w+\s*(\+|\|\|)\s*'"
)
_DYNAMIC_CONCAT = re.compile(
    r"(?i)\b(exec(ute)?(\s+immediate)?|sp_executesql|set\s+@\w+\s*=|prepare\s+\w+\s+from)\b"
    r"[^;]*'[^']*'\s*(\+|\|\|)\s*(?!quote_literal|quote_ident|quotename)@?[a-z_]\w*"
)
_STATEMENT = re.compile(r"[^;]+")


class SqlBlockScanner:
    """SQL blocks: template holes written into a query (``'{name}'``, ``${id}``) and
    dynamic SQL run from concatenated strings (``EXEC('...' + @name)``, PL/pgSQL
    ``EXECUTE '...' || name``). A query with ``?``/``:name``/``$1``, ``format('%I')``
    or ``USING`` is fine."""

    languages = frozenset({"sql"})

    def __init__(self, sql: SqlAnalyser, blanker: Any) -> None:
        self._sql = sql
        self._blanker = blanker

    def scan(self, code: str) -> list[Finding]:
        text = self._blanker.blank(code, "sql")
        findings: list[Finding] = []
        for match in _DYNAMIC_CONCAT.finditer(text):
            findings.append(
                Finding(
                    "sql.dynamic-exec",
                    "sql_injection",
                    "high",
                    "medium",
                    text.count("\n", 0, match.start()) + 1,
                    "dynamic SQL assembled by concatenation: use parameters or quote_literal",
                    "regex",
                )
            )
        for statement in _STATEMENT.finditer(text):
            template = _with_holes(statement.group(0))
            if template == statement.group(0):
                continue
            verdict = self.classify_statement(template)
            if verdict is None:
                continue
            line = text.count("\n", 0, statement.start() + _leading(statement.group(0))) + 1
            findings.append(Finding(*verdict, line, _BLOCK_MESSAGES[verdict[0]], "sqlglot"))
        return findings

    def classify_statement(
        self, template: str
    ) -> tuple[str, Category, Severity, Confidence] | None:
        verdict = self._sql.classify(template)
        if not verdict.is_sql or verdict.placement == "none":
            return None
        if verdict.placement == "identifier":
            return ("sql.template-identifier", "sql_injection", "medium", "medium")
        return ("sql.template-value", "sql_injection", "high", "medium")


_BLOCK_MESSAGES = {
    "sql.template-identifier": "a template fills in a table or column name: allow-list it",
    "sql.template-value": "a template pastes a value into the query text: use parameters",
}


def _with_holes(statement: str) -> str:
    counter = iter(range(1, 1_000_000))
    return _TEMPLATE_HOLE.sub(lambda _: hole(next(counter)), statement)


def _leading(text: str) -> int:
    return len(text) - len(text.lstrip())
