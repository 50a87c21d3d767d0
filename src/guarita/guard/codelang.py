"""Which language a code block is in: its fence tag when there is one, a guess when not.

The guess is a vote of a few telltale patterns per language, not a classifier: it only
has to pick the right scanner for the code a model writes in an answer, and a wrong
guess falls back to the checks that apply to any language (secrets, traversal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ALIASES: dict[str, str] = {
    "py": "python", "python": "python", "python3": "python", "py3": "python",
    "pycon": "python", "ipython": "python", "sage": "python",
    "sql": "sql", "mysql": "sql", "postgresql": "sql", "postgres": "sql", "psql": "sql",
    "plpgsql": "sql", "sqlite": "sql", "sqlite3": "sql", "tsql": "sql", "plsql": "sql",
    "mssql": "sql",
    "sh": "shell", "bash": "shell", "shell": "shell", "zsh": "shell", "ksh": "shell",
    "console": "shell", "shell-session": "shell", "shellsession": "shell", "terminal": "shell",
    "js": "javascript", "javascript": "javascript", "jsx": "javascript", "mjs": "javascript",
    "cjs": "javascript", "node": "javascript", "nodejs": "javascript", "ts": "javascript",
    "typescript": "javascript", "tsx": "javascript", "react": "javascript",
    "html": "html", "htm": "html", "xhtml": "html", "vue": "html", "svelte": "html",
    "ejs": "html", "erb": "html", "jinja": "html", "jinja2": "html", "django": "html",
    "handlebars": "html", "hbs": "html", "blade": "html", "twig": "html",
    "php": "php", "java": "java", "kotlin": "java", "kt": "java", "scala": "java",
    "go": "go", "golang": "go", "ruby": "ruby", "rb": "ruby", "rails": "ruby",
    "cs": "csharp", "csharp": "csharp", "c#": "csharp",
}  # fmt: skip
"""Fence tags to the canonical names the scanners register under."""

UNTAGGED = frozenset({"", "text", "txt", "plain", "plaintext", "code", "none"})

_VOTES: dict[str, tuple[str, ...]] = {
    "python": (
        r"^\s*def \w+\(.*\)\s*(->.*)?:\s*$", r"^\s*(from [\w.]+ )?import [\w., ]+$",
        r"^\s*(el)?if .*:\s*$", r"\bself\.", r"^\s*print\(", r"^\s*with .* as \w+:\s*$",
        r"^\s*class \w+(\(.*\))?:\s*$", r"\bNone\b|\bTrue\b|\bFalse\b", r"^\s*@\w+",
        r"^\s*return\b(?!.*;\s*$)",
    ),
    "sql": (
        r"(?i)^\s*select\b.*\bfrom\b", r"(?i)^\s*insert\s+into\b", r"(?i)^\s*update\s+\w+\s+set\b",
        r"(?i)^\s*delete\s+from\b", r"(?i)^\s*create\s+(table|index|view|procedure|function)\b",
        r"(?i)^\s*(where|group by|order by|join|left join)\b", r";\s*$",
    ),
    "shell": (
        r"^\s*\$ ", r"^#!/(usr/)?bin/(env )?(ba|z)?sh", r"^\s*(sudo|apt(-get)?|brew|yum|dnf)\b",
        r"^\s*(echo|export|cd|ls|rm|mkdir|chmod|chown|curl|wget|grep|tar|cp|mv)\b",
        r"\$\{?\w+\}?", r"\|\s*(sh|bash|grep|xargs|awk|sed)\b", r"^\s*(if|then|fi|do|done)\b",
    ),
    "javascript": (
        r"^\s*(const|let|var) \w+\s*=", r"^\s*function\s*\w*\s*\(", r"=>", r"\bdocument\.",
        r"\bconsole\.log\(", r"\brequire\(['\"]", r"^\s*(export|import) .*from ['\"]",
        r"\bwindow\.", r"\.then\(", r"===",
    ),
    "html": (r"<(html|head|body|div|span|script|form|input|p|a)\b", r"</\w+>", r"<!DOCTYPE"),
    "php": (r"<\?php", r"\$\w+\s*=", r"\$_(GET|POST|REQUEST|COOKIE)\b", r"->\w+\(", r"\becho\b"),
    "java": (
        r"\bpublic (static )?(class|void|final)\b", r"\bSystem\.out\.", r"\bnew \w+\(",
        r"^\s*import java\.", r"\bString\[\]", r"@Override",
    ),
    "go": (
        r"^\s*package \w+", r"^\s*func \w*\(", r":=", r"\bfmt\.\w+\(", r'^\s*import \(',
        r"\berr != nil\b",
    ),
    "ruby": (
        r"^\s*def \w+[?!]?(\(.*\))?\s*$", r"^\s*end\s*$", r"\bputs\b", r"^\s*require ['\"]",
        r"#\{", r"\bdo \|\w+\|",
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LanguageGuesser:
    """Compiled once: guessing costs a few regex searches per line of the block's head."""

    head_lines: int = 40
    """Only the first lines vote: enough to tell, and bounded for huge blocks."""
    _votes: dict[str, tuple[re.Pattern[str], ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        compiled = {
            name: tuple(re.compile(p, re.MULTILINE) for p in patterns)
            for name, patterns in _VOTES.items()
        }
        object.__setattr__(self, "_votes", compiled)

    def language(self, tag: str, code: str) -> str:
        """The canonical language for a block: its tag's, or the best guess."""
        tag = tag.strip().lower()
        if tag not in UNTAGGED:
            return ALIASES.get(tag, tag)
        return self.guess(code)

    def guess(self, code: str) -> str:
        """The language with the most matching telltales; ``text`` when none matches."""
        head = "\n".join(code.splitlines()[: self.head_lines])
        best, best_votes = "text", 0
        for name, patterns in self._votes.items():
            votes = sum(1 for p in patterns if p.search(head))
            if votes > best_votes:
                best, best_votes = name, votes
        return best
