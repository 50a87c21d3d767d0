"""Prompt compression: fewer prompt tokens for the same meaning, before the call is limited,
priced and sent.

Three passes, each conservative (docs/routing.md shows a sample):

1. Whitespace, in every message: runs of spaces and tabs inside a line become one space,
   trailing spaces go, more than one blank line becomes one, the message's ends are
   stripped. Fenced code blocks and `inline code` are left byte for byte, and so are
   lines indented by a tab or four spaces (unfenced code, nested lists).
2. Filler, in user messages only: the phrases of ``FILLER_PHRASES`` ("please", "I was
   wondering if you could", "basically", ...). Never inside code, quotes ("...", '...',
   “...”, > quoted lines) or URLs; never right after a negation ("not just", "don't
   actually"), so no "not" loses its object; "just" is kept where it means "only" or
   "recently" ("just 5", "just now", "a just cause"); a message is never emptied.
3. History, when ``budget_tokens`` is set: the oldest turns are dropped until the prompt's
   estimate fits, keeping every system message and everything from the last user message
   on; the kept history starts with a user turn, and an assistant's tool calls go with
   their results.

Tokens are estimated like the agents' context budgeting (about 4 characters a token plus
4 per message), and the saving is the estimate before minus after.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guarita.agents import estimate_tokens
from guarita.pipeline import Next
from guarita.providers.common import message_text
from guarita.settings import CompressionSettings
from guarita.types import Call, Reply

FILLER_PHRASES: tuple[str, ...] = (
    # a request wrapped in a question about asking it
    "i was just wondering if you could",
    "i was wondering if you could",
    "i was wondering whether you could",
    "i was wondering if you can",
    "would you be so kind as to",
    # sign-offs and asides that add nothing to the request
    "thanks in advance",
    "thank you in advance",
    "thanks so much in advance",
    "hope this makes sense",
    "i hope this makes sense",
    "to be honest",
    "needless to say",
    # single words of politeness or emphasis
    "please",
    "pls",
    "plz",
    "kindly",
    "basically",
    "actually",
    "just",
)
"""Removed from user turns. Words that can carry meaning ("only", "really", "literally",
"honestly") are left out, and so is any phrase with a negation in it ("if you don't mind"),
so that compression never changes the count of "not"s in a prompt."""

_NEGATIONS = frozenset(
    {"not", "no", "never", "nor", "without", "hardly", "barely", "cannot", "dont", "cant",
     "wont", "isnt", "doesnt", "didnt", "only"}
)  # fmt: skip
"""A filler word right after one of these is part of what is negated ('not just')."""
_ADVERBS = frozenset({"kindly", "basically", "actually", "just"})
"""May describe the verb before them ('treat them kindly.'): removed only when they lead
into the next word, or open a sentence or an aside with a comma."""
_JUST_STAYS_BEFORE = frozenset({"now", "as", "about", "like", "enough", "once", "because",
                                "then", "fine", "right", "in", "the", "a", "an", "so"})  # fmt: skip
"""Where 'just' means 'only', 'exactly' or 'recently' ('just now', 'just a few')."""
_JUST_STAYS_AFTER = frozenset({"a", "an", "the", "most"})
"""Where 'just' is the adjective ('a just cause')."""
_SYSTEM_ROLES = frozenset({"system", "developer"})
_OFFLOAD_CHARS = 16_000
"""Prompts longer than this are compressed in a worker thread, off the event loop."""

_CODE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*(?:\n.*?^[ \t]*(?P=fence)[ \t]*$|.*\Z)|`[^`\n]+`",
    re.MULTILINE | re.DOTALL,
)
"""Fenced blocks (an unclosed fence runs to the end) and inline code."""
_PROTECTED = (
    (("`", "~~~"), _CODE),
    ((">",), re.compile(r"^[ \t]*>.*$", re.MULTILINE)),
    (('"',), re.compile(r'"[^"\n]*"')),
    (("\u201c",), re.compile(r"\u201c[^\u201d\n]*\u201d")),
    (("'",), re.compile(r"'(?<![\w'\u2019]')[^'\n]+'(?![\w'\u2019])")),
    (("://",), re.compile(r"[A-Za-z][\w+.-]*://\S+")),
    (("@",), re.compile(r"[^\s@]+@\S+")),
)
"""Where filler is never removed: code, quoted lines, quotes, URLs and e-mail addresses;
each pattern tried only on a text with its trigger (one combined pattern is several
times slower in Python's ``re``)."""
_INNER_RUN = re.compile(
    r"(?<=\S)(?:[ \t\u00a0\u2000-\u200a\u3000]{2,}|[\t\u00a0\u2000-\u200a\u3000])(?=\S)"
)
"""Two or more spaces between words, or one tab or unusual space, become one space."""
_LEADING_RUN = re.compile(r"^[ \t\u00a0]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
_INDENTED = re.compile(r"^(?:\t| {4})")
_WORD_EDGES = ".,!?;:\"'()[]\u201c\u201d"
_ODD_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u3000]")
_CLOSING = ".!?;:,)"
_CONTEXT = 60
"""Characters before a phrase looked at (for a negation, a sentence start)."""


def _protected_spans(text: str) -> list[tuple[int, int]]:
    spans = sorted(
        m.span()
        for triggers, pattern in _PROTECTED
        if any(t in text for t in triggers)
        for m in pattern.finditer(text)
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _phrase_pattern(phrases: Iterable[str], flags: int = 0) -> re.Pattern[str]:
    alternatives = sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True)
    body = "|".join(
        re.escape(p).replace(r"\ ", r"\s+").replace("'", "['\u2019]") for p in alternatives
    )
    return re.compile(
        rf"(?<![\w/\\.@'\u2019-])(?P<phrase>{body})(?![\w/\\@'\u2019-])(?P<comma>[ \t]*,)?[ \t]*",
        flags,
    )


class Filler:
    """A compiled list of filler phrases (``FILLER_PHRASES`` by default)."""

    def __init__(self, phrases: Iterable[str] = FILLER_PHRASES) -> None:
        self.phrases = tuple(phrases)
        # matched in the lower-cased text (twice as fast as IGNORECASE), unless lowering
        # changed its length (a few Unicode letters do)
        self._lower = _phrase_pattern(self.phrases)
        self._any_case = _phrase_pattern(self.phrases, re.IGNORECASE)
        # one word of each phrase: a text with none of them is let through unread
        self._keys = tuple({max(p.lower().split(), key=len) for p in self.phrases if p.strip()})

    def remove(self, text: str) -> str:
        """``text`` without its filler, outside code, quotes and URLs; never emptied."""
        lower = text.lower()
        if not any(key in lower for key in self._keys):
            return text
        if len(lower) == len(text):
            pattern = self._lower
        else:
            pattern, lower = self._any_case, text
        out: list[str] = []
        pos = 0
        for start, end in [*_protected_spans(text), (len(text), len(text))]:
            if start > pos:
                free = _Free(text, lower, pos, start)
                out.append(free.without(pattern))
            out.append(text[start:end])
            pos = end
        result = "".join(out).strip()
        return result if result else text


class _Free:
    """One stretch of free text (between protected spans) and its filler removal."""

    def __init__(self, text: str, lower: str, start: int, end: int) -> None:
        self.text, self.lower, self.start, self.end = text, lower, start, end

    def without(self, pattern: re.Pattern[str]) -> str:
        text = self.text
        out: list[str] = []
        head = text[max(0, self.start - _CONTEXT) : self.start]  # what is written so far
        pos = self.start
        capitalize = False
        for m in pattern.finditer(self.lower, self.start, self.end):
            if m.start() < pos:
                continue
            left = text[pos : m.start()]
            context = (head + left)[-_CONTEXT:]
            at_start = _at_sentence_start(context)
            if not self._removable(m, context, at_start):
                continue
            left, pos = self._join(head, left, m, at_start)
            if capitalize and left.strip():
                left, capitalize = _capitalized(left), False
            out.append(left)
            head = (head + left)[-_CONTEXT:]
            capitalize = capitalize or (at_start and text[m.start()].isupper())
        rest = text[pos : self.end]
        out.append(_capitalized(rest) if capitalize else rest)
        return "".join(out)

    def _removable(self, m: re.Match[str], context: str, at_start: bool) -> bool:
        phrase = m.group("phrase").lower()
        words = context[-30:].split()
        last = words[-1].strip(_WORD_EDGES).lower() if words else ""
        if last in _NEGATIONS or last.endswith(("n't", "n\u2019t")):
            return False
        if phrase == "please" and last == "to":
            return False  # 'hard to please' is the verb
        following = self.text[m.end() : self.end]
        if phrase in _ADVERBS and not following[:1].isalpha():
            comma_aside = m.group("comma") and (at_start or context.rstrip().endswith(","))
            if not comma_aside:
                return False
        if phrase == "just":
            next_word = following.split(None, 1)[0].lower().strip(_CLOSING) if following else ""
            if last in _JUST_STAYS_AFTER or next_word in _JUST_STAYS_BEFORE:
                return False
            if following[:1].isdigit() or following[:1] in "$€£¥#":
                return False
        return True

    def _join(self, head: str, left: str, m: re.Match[str], at_start: bool) -> tuple[str, int]:
        """The text before a removed phrase, its punctuation mended, and where to go on."""
        end = m.end()
        nxt = self.text[end : end + 1] if end < self.end else ""
        if m.group("comma"):
            aside = (head + left).rstrip().endswith(",")  # ', basically,' -> one comma less
            left = left.rstrip(" \t").removesuffix(",")
            if not at_start and not aside:
                left += ","  # the comma separated two parts: 'help please, my card'
        elif not nxt or nxt in _CLOSING:
            left = left.rstrip(" \t").removesuffix(",")
        ended = (head + left).rstrip()
        if nxt and (not ended or ended[-1] in ".!?"):  # the phrase opened a sentence
            if nxt in ".!?":
                end += 1  # 'Help me. Thanks in advance!' -> 'Help me.'
            elif nxt in ",;:":
                end += 1  # 'Hope this makes sense: we need' -> 'We need'
                while end < self.end and self.text[end] in " \t":
                    end += 1
        if left and not left[-1].isspace() and self.text[end : end + 1].isalnum():
            left += " "
        return left, end


def _at_sentence_start(context: str) -> bool:
    text = context.rstrip()
    if not text:
        return True
    return "\n" in context[len(text) :] or (text[-1] in ".!?" and len(text) < len(context))


def _capitalized(text: str) -> str:
    stripped = text.lstrip()
    word = stripped.split(None, 1)[0] if stripped else ""
    if not word or not word[0].isalpha() or not word.islower():
        return text
    lead = text[: len(text) - len(stripped)]
    return lead + stripped[0].upper() + stripped[1:]


DEFAULT_FILLER = Filler()


def collapse_whitespace(text: str) -> str:
    """Runs of spaces and blank lines collapsed, outside code and indented lines."""
    if not any(run in text for run in ("  ", "\t", " \n", "\n\n\n")) and not _ODD_SPACE.search(
        text
    ):
        return text.strip()
    out: list[str] = []
    pos = 0
    for span in _CODE.finditer(text):
        out.append(_collapse_free(text[pos : span.start()], pos > 0 and text[pos - 1] != "\n"))
        out.append(span.group(0))
        pos = span.end()
    out.append(_collapse_free(text[pos:], pos > 0 and text[pos - 1] != "\n"))
    return "".join(out).strip()


def _collapse_free(segment: str, mid_line: bool) -> str:
    """``mid_line``: the segment goes on from a code span on the same line."""
    lines = segment.split("\n")
    for i, line in enumerate(lines):
        if i < len(lines) - 1:  # the last one may go on in the code span that follows
            line = line.rstrip(" \t\u00a0")
        if i == 0 and mid_line:
            lines[i] = _LEADING_RUN.sub(" ", _INNER_RUN.sub(" ", line), count=1)
        else:
            lines[i] = line if _INDENTED.match(line) else _INNER_RUN.sub(" ", line)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines))


@dataclass(frozen=True, slots=True)
class Compressed:
    """The compressed messages, and the estimated prompt tokens before and after."""

    messages: list[dict[str, Any]]
    tokens_before: int
    tokens_after: int
    dropped: int = 0
    """Messages trimmed from the history."""

    @property
    def tokens_saved(self) -> int:
        return max(0, self.tokens_before - self.tokens_after)


def _message_tokens(message: dict[str, Any]) -> int:
    return estimate_tokens(message_text(message))


def _rewritten(message: dict[str, Any], rewrite: Callable[[str], str]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        new = rewrite(content)
        return message if new == content else {**message, "content": new}
    if isinstance(content, list):
        parts = [
            {**p, "text": rewrite(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def compress(
    messages: Sequence[dict[str, Any]],
    budget_tokens: int | None = None,
    *,
    filler: Filler | None = DEFAULT_FILLER,
) -> Compressed:
    """``messages`` compressed (see the module docstring); the input is left unchanged.
    ``filler=None`` keeps every word; ``budget_tokens=None`` keeps every turn."""

    def rewritten(message: dict[str, Any]) -> dict[str, Any]:
        message = _rewritten(message, collapse_whitespace)
        if filler is not None and message.get("role") == "user":
            message = _rewritten(message, filler.remove)
        return message

    before = sum(_message_tokens(m) for m in messages)
    roles = [m.get("role") for m in messages]
    last_user = max((i for i, r in enumerate(roles) if r == "user"), default=len(messages) - 1)
    kept = {
        i: rewritten(m)
        for i, m in enumerate(messages)
        if i >= last_user or roles[i] in _SYSTEM_ROLES
    }
    history = [i for i in range(last_user - 1, -1, -1) if i not in kept]  # newest first
    if budget_tokens is None:
        kept.update((i, rewritten(messages[i])) for i in history)
    else:
        room = budget_tokens - sum(_message_tokens(m) for m in kept.values())
        kept.update(_newest_within(messages, history, roles, room, rewritten))
    out = [kept[i] for i in sorted(kept)]
    after = sum(_message_tokens(m) for m in out)
    return Compressed(out, before, min(after, before), len(messages) - len(out))


def _newest_within(
    messages: Sequence[dict[str, Any]],
    history: Sequence[int],
    roles: Sequence[Any],
    room: int,
    rewritten: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[int, dict[str, Any]]:
    """The newest turns of ``history`` (indices, newest first) that fit in ``room`` tokens,
    compressed; older ones are dropped unread. The kept part starts with a user turn:
    providers such as Anthropic require it, and tool calls stay with their results."""
    kept: dict[int, dict[str, Any]] = {}
    for i in history:
        message = rewritten(messages[i])
        room -= _message_tokens(message)
        if room < 0:
            break
        kept[i] = message
    for i in sorted(kept):  # oldest kept first
        if roles[i] == "user":
            break
        del kept[i]
    return kept


class PromptCompression:
    """The pipeline stage: compress the prompts of agents with ``compression`` enabled, count
    the tokens saved (``on_saved(agent, tokens)``) and report them in the call's record."""

    def __init__(
        self,
        agents: Mapping[str, CompressionSettings],
        *,
        on_saved: Callable[[str, int], None] | None = None,
    ) -> None:
        self._agents = {name: c for name, c in agents.items() if c.enabled}
        self._on_saved = on_saved

    async def __call__(self, call: Call, next: Next) -> Reply:
        settings = self._agents.get(call.agent) if call.agent is not None else None
        if settings is None or call.operation != "chat" or not call.messages:
            return await next(call)
        filler = DEFAULT_FILLER if settings.remove_filler else None
        budget = settings.history_budget_tokens
        messages = call.messages
        if sum(len(message_text(m)) for m in messages) > _OFFLOAD_CHARS:
            result = await asyncio.to_thread(compress, messages, budget, filler=filler)
        else:
            result = compress(messages, budget, filler=filler)
        call.body["messages"] = result.messages
        call.record.tokens_saved = result.tokens_saved
        if result.tokens_saved and self._on_saved is not None:
            self._on_saved(call.agent or "", result.tokens_saved)
        return await next(call)
