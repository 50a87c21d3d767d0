"""Code blocks out of a markdown answer, whole or as it streams.

:class:`BlockSplitter` reads the answer line by line and hands back each block when its
closing fence line is complete, so a stream is read once whatever its chunking: only the
unfinished last line and the lines of the open block are kept. :func:`extract_blocks`
is the same splitter fed the whole text at once, which is why a stream and the whole
answer give the same blocks by construction.

Fences are read more leniently than CommonMark, on purpose: a fence may be indented by
any amount (models put code fences inside list items at four spaces and more), ``~~~``
and backtick fences of three or more, closed by a fence of the same character at least
as long. Four-space indented blocks are read only when asked (``indented=True``): in
model answers they are more often a list item's continuation than code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_CLOSE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*$")
_LIST_ITEM = re.compile(r"^\s{0,3}([-*+]|\d{1,9}[.)])\s")
_LONGEST_FENCE_LINE = 1024
"""A longer line is never a fence: it goes to the open block (or is dropped) unsplit."""


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """One block as written: ``first_line`` is the answer's line of the block's first
    code line (1-based); ``closed`` is false for a block the answer ended inside."""

    index: int
    tag: str
    code: str
    first_line: int
    closed: bool = True
    truncated: bool = False
    fenced: bool = True


@dataclass(slots=True)
class _Open:
    tag: str
    fence: str
    indent: int
    first_line: int
    fenced: bool = True
    lines: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False


class BlockSplitter:
    """Incremental block extraction. ``feed`` returns the blocks its chunk completed.

    ``max_block_chars`` bounds the code kept per block (the rest is dropped and the block
    marked ``truncated``), so a huge or endless block costs bounded memory.
    """

    def __init__(self, *, max_block_chars: int = 65536, indented: bool = False) -> None:
        self._max = max_block_chars
        self._indented = indented
        self._partial: list[str] = []
        self._partial_size = 0
        self._overlong = False  # the unfinished line is past _LONGEST_FENCE_LINE
        self._line_no = 0
        self._open: _Open | None = None
        self._count = 0
        self._after_blank = True
        self._in_list = False

    @property
    def in_block(self) -> bool:
        """A block is open: its fence line ended and its closing one has not come yet."""
        return self._open is not None

    def feed(self, chunk: str) -> list[CodeBlock]:
        done: list[CodeBlock] = []
        pieces = chunk.split("\n")
        for piece in pieces[:-1]:
            self._append_partial(piece)
            self._end_line(done)
        self._append_partial(pieces[-1])
        return done

    def finish(self) -> list[CodeBlock]:
        """The last line, and the block the answer ended inside (``closed=False``)."""
        done: list[CodeBlock] = []
        if self._partial or self._overlong:
            self._end_line(done)
        if self._open is not None:
            done.append(self._emit(closed=not self._open.fenced))
        return done

    def _append_partial(self, piece: str) -> None:
        if not piece:
            return
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size > _LONGEST_FENCE_LINE:
            # no fence: the line so far is code (or prose) and need not be held
            text = "".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
            if self._open is not None:
                self._add_code(text, continues=self._overlong)
            self._overlong = True

    def _end_line(self, done: list[CodeBlock]) -> None:
        line = "".join(self._partial).removesuffix("\r")
        continues = self._overlong
        self._partial.clear()
        self._partial_size = 0
        self._overlong = False
        self._line_no += 1
        if continues:
            if self._open is not None:
                self._add_code(line, continues=True)
                self._add_code("\n", continues=True)
            self._after_blank = False
            return
        self._line(line, done)

    def _line(self, line: str, done: list[CodeBlock]) -> None:
        block = self._open
        if block is not None and block.fenced:
            closing = _CLOSE.match(line)
            if (
                closing
                and closing["fence"][0] == block.fence[0]
                and len(closing["fence"]) >= len(block.fence)
            ):
                done.append(self._emit(closed=True))
                return
            self._add_code(_dedent(line, block.indent) + "\n", continues=False)
            return
        if block is not None:  # an indented block: ends at a less indented text line
            if not line.strip() or _indent_width(line) >= block.indent:
                self._add_code(_dedent(line, block.indent) + "\n", continues=False)
                return
            done.append(self._emit(closed=True))
        self._outside(line)

    def _outside(self, line: str) -> None:
        opening = _OPEN.match(line)
        if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
            info = opening["info"].strip().lstrip("{.").rstrip("}")
            tag = info.split()[0] if info else ""
            self._open = _Open(tag, opening["fence"], len(opening["indent"]), self._line_no + 1)
            return
        needed = 8 if self._in_list else 4
        starts_indented = self._after_blank and line.strip() and _indent_width(line) >= needed
        if self._indented and starts_indented:
            self._open = _Open("", "", needed, self._line_no, fenced=False)
            self._add_code(_dedent(line, needed) + "\n", continues=False)
            return
        if line.strip():
            if _indent_width(line) < 4:
                self._in_list = bool(_LIST_ITEM.match(line))
            self._after_blank = False
        else:
            self._after_blank = True

    def _add_code(self, text: str, *, continues: bool) -> None:
        block = self._open
        assert block is not None
        if block.truncated:
            return
        room = self._max - block.size
        if len(text) > room:
            text = text[:room]
            block.truncated = True
        if continues and block.lines:
            block.lines[-1] += text
        else:
            block.lines.append(text)
        block.size += len(text)

    def _emit(self, *, closed: bool) -> CodeBlock:
        block = self._open
        assert block is not None
        self._open = None
        self._after_blank = not block.fenced
        code = "".join(block.lines)
        if not block.fenced:
            code = code.rstrip("\n") + "\n"
        emitted = CodeBlock(
            index=self._count,
            tag=block.tag,
            code=code,
            first_line=block.first_line,
            closed=closed,
            truncated=block.truncated,
            fenced=block.fenced,
        )
        self._count += 1
        return emitted


def _indent_width(line: str) -> int:
    stripped = line.lstrip(" \t")
    head = line[: len(line) - len(stripped)]
    return head.count(" ") + 4 * head.count("\t")


def _dedent(line: str, width: int) -> str:
    """``line`` less up to ``width`` columns of leading blanks (never its text)."""
    cut = 0
    column = 0
    while cut < len(line) and column < width and line[cut] in " \t":
        column += 4 if line[cut] == "\t" else 1
        cut += 1
    return line[cut:]


def extract_blocks(
    text: str, *, max_block_chars: int = 65536, indented: bool = False
) -> list[CodeBlock]:
    """Every code block of a whole answer, in order."""
    splitter = BlockSplitter(max_block_chars=max_block_chars, indented=indented)
    return [*splitter.feed(text), *splitter.finish()]
