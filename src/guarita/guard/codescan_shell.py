"""Shell blocks: bashlex's parse tree for what a command does with its words, regexes for
the lines bashlex cannot parse (``[[ ]]``, ``case``, some heredocs).

From the tree: ``eval`` and ``sh -c`` of an expanded variable, ``curl``/``wget`` piped
into a shell or interpreter, destructive commands (``rm -r``, ``dd``, ``mkfs``...) on an
unquoted expansion or on ``/``, ``chmod 777``. ``eval "$(tool init)"`` (a constant
command's output, the usual setup idiom) is left alone, and so is a quoted ``"$VAR"``
guarded by ``${VAR:?}``. Prompts (``$ ``) are dropped before parsing; comments are not
code and are never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from guarita.guard.codefindings import Category, Confidence, Finding, Severity
from guarita.guard.codetext import CommentBlanker
from guarita.providers.base import missing_extra

INTERPRETERS = frozenset(
    {
        "sh",
        "bash",
        "zsh",
        "dash",
        "ksh",
        "python",
        "python3",
        "perl",
        "ruby",
        "node",
        "sudo",
        "source",
        ".",
    }
)
DESTRUCTIVE = frozenset(
    {"rm", "dd", "mkfs", "shred", "chown", "chmod", "mv", "find", "xargs", "rsync", "truncate"}
)
_PROMPT = re.compile(r"^\s*(\$|#|[\w@.-]+[$#%>])\s+(?=\S)")
_ROOTISH = re.compile(r"^(/|/\*|~|~/|\*|\.\*|/(bin|boot|etc|home|lib|usr|var)/?)$")

_LINE_RULES: tuple[tuple[str, Category, Severity, Confidence, str, str], ...] = (
    ("pipe-to-shell", "command_injection", "high", "medium",
     r"\b(curl|wget)\b[^|#\n]*\|\s*(sudo\s+)?(ba|z|da|k)?sh\b", "download piped into a shell"),
    ("eval-variable", "command_injection", "high", "medium",
     r"\beval\s+[\"']?\$(?!\()", "eval of an expanded variable"),
    ("rm-unquoted", "dangerous_command", "high", "medium",
     r"\brm\s+-[a-zA-Z]*[rf][a-zA-Z]*\s+\$\{?\w+\}?", "rm -rf on an unquoted variable"),
    ("chmod-world", "insecure_config", "medium", "high",
     r"\bchmod\s+(-R\s+)?(0?777|a\+rwx|o\+w)\b", "world-writable permissions"),
)  # fmt: skip


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for attr in ("parts", "list"):
        for child in getattr(node, attr, None) or ():
            yield from _walk(child)
    for attr in ("command", "output"):
        child = getattr(node, attr, None)
        if child is not None and hasattr(child, "kind"):
            yield from _walk(child)


class ShellScanner:
    languages = frozenset({"shell"})

    def __init__(self, blanker: CommentBlanker, max_parse_chars: int = 8192) -> None:
        self._max_parse_chars = max_parse_chars
        try:
            import bashlex  # type: ignore[import-untyped]
        except ImportError as error:  # pragma: no cover - the guard extra is installed
            raise missing_extra("bashlex", "guard") from error
        self._parse = bashlex.parse
        self._errors: tuple[type[BaseException], ...] = (
            bashlex.errors.ParsingError,
            NotImplementedError,
            AttributeError,
            IndexError,
            TypeError,
            ValueError,
            RecursionError,
        )
        self._blanker = blanker
        self._rules = tuple(
            (rule, cat, sev, conf, re.compile(pattern), message)
            for rule, cat, sev, conf, pattern, message in _LINE_RULES
        )

    def scan(self, code: str) -> list[Finding]:
        lines = self._blanker.blank(code, "shell").split("\n")
        lines = [_PROMPT.sub("", line) for line in lines]
        script = "\n".join(lines)
        if len(script) > self._max_parse_chars:
            # bashlex costs ~15 ms per KiB: a long script gets the line rules only
            return [f for n, line in enumerate(lines) for f in self._scan_line(line, n + 1)]
        trees = self._try_parse(script)
        if trees is not None:
            return self._scan_trees(trees, script, line_offset=0)
        findings: list[Finding] = []
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            trees = self._try_parse(line)
            if trees is None:
                findings.extend(self._scan_line(line, number + 1))
            else:
                findings.extend(self._scan_trees(trees, line, line_offset=number))
        return findings

    def _try_parse(self, script: str) -> list[Any] | None:
        if not script.strip():
            return []
        try:
            return list(self._parse(script))
        except self._errors:
            return None

    def _scan_line(self, line: str, number: int) -> list[Finding]:
        return [
            Finding(f"sh.{rule}", cat, sev, conf, number, message)
            for rule, cat, sev, conf, pattern, message in self._rules
            if pattern.search(line)
        ]

    def _scan_trees(self, trees: list[Any], script: str, line_offset: int) -> list[Finding]:
        findings: list[Finding] = []
        for tree in trees:
            for node in _walk(tree):
                line = script.count("\n", 0, node.pos[0]) + 1 + line_offset
                if node.kind == "pipeline":
                    findings.extend(self._pipeline(node, line))
                elif node.kind == "command":
                    findings.extend(self._command(node, script, line))
        return findings

    def _pipeline(self, node: Any, line: int) -> list[Finding]:
        commands = [p for p in node.parts if p.kind == "command"]
        names = [_command_name(c) for c in commands]
        for before, after in pairwise(names):
            if before in ("curl", "wget") and after in INTERPRETERS:
                return [
                    Finding(
                        "sh.pipe-to-shell",
                        "command_injection",
                        "high",
                        "medium",
                        line,
                        "a download piped straight into a shell or interpreter",
                        "bashlex",
                    )
                ]
        return []

    def _command(self, node: Any, script: str, line: int) -> list[Finding]:
        words = [p for p in node.parts if p.kind == "word"]
        if not words:
            return []
        name = words[0].word.rsplit("/", 1)[-1]
        args = words[1:]
        if name == "sudo" and args:
            name, args = args[0].word.rsplit("/", 1)[-1], args[1:]
        found: list[Finding] = []
        if name == "eval" and any(_expands_variable(a) for a in args):
            found.append(
                Finding(
                    "sh.eval-variable",
                    "command_injection",
                    "high",
                    "high",
                    line,
                    "eval of an expanded variable runs whatever it holds",
                    "bashlex",
                )
            )
        if name in INTERPRETERS and any(a.word == "-c" for a in args):
            after_c = args[[a.word for a in args].index("-c") + 1 :]
            if after_c and _expands_variable(after_c[0]):
                found.append(
                    Finding(
                        "sh.shell-c-variable",
                        "command_injection",
                        "high",
                        "medium",
                        line,
                        "a shell runs a command held in a variable",
                        "bashlex",
                    )
                )
        if name in DESTRUCTIVE:
            found.extend(self._destructive(name, args, script, line))
        return found

    def _destructive(self, name: str, args: list[Any], script: str, line: int) -> list[Finding]:
        flags = "".join(a.word for a in args if a.word.startswith("-"))
        operands = [a for a in args if not a.word.startswith("-")]
        if name == "chmod" and operands and operands[0].word in ("777", "0777", "a+rwx", "o+w"):
            return [
                Finding(
                    "sh.chmod-world",
                    "insecure_config",
                    "medium",
                    "high",
                    line,
                    "world-writable permissions",
                    "bashlex",
                )
            ]
        if name == "rm" and not re.search(r"[rRf]", flags):
            return []
        if name in ("chmod", "chown", "mv") and "R" not in flags and name != "mv":
            return []
        for operand in operands:
            source = script[operand.pos[0] : operand.pos[1]]
            if name == "rm" and _ROOTISH.match(operand.word):
                return [
                    Finding(
                        "sh.rm-root",
                        "dangerous_command",
                        "critical",
                        "high",
                        line,
                        "recursive delete of a root or home directory",
                        "bashlex",
                    )
                ]
            if not _expands_variable(operand):
                continue
            if _unquoted_expansion(source) or _unguarded_prefix(source):
                return [
                    Finding(
                        f"sh.{name}-unquoted",
                        "dangerous_command",
                        "high",
                        "medium",
                        line,
                        f"{name} on an unquoted or unguarded variable expansion",
                        "bashlex",
                    )
                ]
        return []


def _command_name(node: Any) -> str:
    for part in node.parts:
        if part.kind == "word":
            word: str = part.word
            return word.rsplit("/", 1)[-1]
    return ""


def _expands_variable(word: Any) -> bool:
    return any(
        sub.kind == "parameter"
        or (sub.kind == "commandsubstitution" and _substitutes_variable(sub))
        for sub in _walk(word)
        if sub is not word
    )


def _substitutes_variable(node: Any) -> bool:
    return any(sub.kind == "parameter" for sub in _walk(node) if sub is not node)


def _unquoted_expansion(source: str) -> bool:
    """A ``$`` outside double quotes (word splitting and globbing apply to it)."""
    quoted = False
    for index, char in enumerate(source):
        if char == '"' and (index == 0 or source[index - 1] != "\\"):
            quoted = not quoted
        elif char == "$" and not quoted:
            return True
    return False


def _unguarded_prefix(source: str) -> bool:
    """``"$DIR/"`` with no ``:?``: an empty ``DIR`` makes the path ``/``."""
    return bool(re.match(r'^"?\$\{?\w+\}?"?/', source)) and ":?" not in source
