"""Comment blanking for the regex-level checks.

An answer that *explains* an injection (``// never do: el.innerHTML = userInput``) must
not score as one, so the regex checks read code with its comments blanked: replaced by
spaces, newlines kept, so that line numbers stay right. String literals are matched
first by the same pattern, which keeps a ``//`` or ``#`` inside a string from being
read as a comment. One C-level ``re.sub`` per block: no per-character Python loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DQ = r'"(?:\\.|[^"\\\n])*"'
_SQ = r"'(?:\\.|[^'\\\n])*'"
_BT = r"`(?:\\.|[^`\\])*`"
_TRIPLE = r'"""[\s\S]*?"""|' + r"'''[\s\S]*?'''"

_FAMILIES: dict[str, tuple[str, str]] = {
    # language: (string literals, comments)
    "c": (f"{_DQ}|{_SQ}|{_BT}", r"//[^\n]*|/\*[\s\S]*?\*/"),
    "hash": (f"{_TRIPLE}|{_DQ}|{_SQ}|{_BT}", r"#[^\n]*"),
    "php": (f"{_DQ}|{_SQ}", r"//[^\n]*|#(?!\[)[^\n]*|/\*[\s\S]*?\*/"),
    "sql": (f"{_SQ}|{_DQ}", r"--[^\n]*|/\*[\s\S]*?\*/"),
    "html": (f"{_DQ}|{_SQ}", r"<!--[\s\S]*?-->|//[^\n]*|/\*[\s\S]*?\*/"),
    "shell": (f"{_DQ}|{_SQ}", r"(?:(?<=\s)|^)#[^\n]*"),
}
_LANGUAGE_FAMILY: dict[str, str] = {
    "python": "hash", "ruby": "hash", "shell": "shell", "php": "php", "sql": "sql",
    "html": "html", "javascript": "c", "java": "c", "go": "c", "csharp": "c",
}  # fmt: skip


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


@dataclass(frozen=True, slots=True)
class CommentBlanker:
    """One compiled pattern per comment family; languages it does not know stay as is."""

    _patterns: dict[str, re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        compiled = {
            family: re.compile(f"(?P<s>{strings})|(?P<c>{comments})", re.MULTILINE)
            for family, (strings, comments) in _FAMILIES.items()
        }
        object.__setattr__(self, "_patterns", compiled)

    def blank(self, code: str, language: str) -> str:
        family = _LANGUAGE_FAMILY.get(language)
        if family is None:
            return code
        pattern = self._patterns[family]
        return pattern.sub(lambda m: m.group("s") or _blank(m.group("c")), code)
