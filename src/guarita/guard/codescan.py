"""Generated-code scanning: what the OutputGuard stage calls on an answer.

    scanner = CodeScanner(CodeScanConfig())          # once: parsers and patterns load here
    report = scanner.scan(answer_text)               # a whole answer
    stream = scanner.stream()                        # or per chunk of a streamed answer
    for chunk in chunks:
        stream.feed(chunk)                           # findings of blocks closed by chunk
    report = stream.finish()
    verdict = CodeScanPolicy(mode="block").decide(report)

Code blocks are found in the markdown (:mod:`codeblocks`), their language taken from
the fence tag or guessed (:mod:`codelang`), and each is read by the scanners registered
for its language plus the any-language checks for secrets and traversal:

==============  ==============================================================
python          ``ast`` visitor (SQL, shell, eval, pickle/YAML, paths, hashes),
                bandit in-process, regexes when the block does not parse
sql             sqlglot on template holes, dynamic ``EXEC``/``EXECUTE``
shell           bashlex parse tree, regexes for lines it cannot parse
javascript      XSS sinks, eval, child_process, paths; string-built SQL (sqlglot)
html            raw-output template syntaxes, plus the JavaScript checks
php/java/go/    the basics by regex; string-built SQL (sqlglot)
ruby/csharp
==============  ==============================================================

Scanning is CPU work of a few milliseconds per block: a pipeline stage should run it
on a worker thread for large answers rather than on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from guarita.guard.codeblocks import BlockSplitter, CodeBlock
from guarita.guard.codefindings import Finding, ScoreWeights, risk_score, strongest_per_line
from guarita.guard.codelang import LanguageGuesser
from guarita.guard.codescan_bandit import BanditRunner
from guarita.guard.codescan_other import (
    CSHARP_RULES,
    GO_RULES,
    JAVA_RULES,
    PHP_RULES,
    RUBY_RULES,
)
from guarita.guard.codescan_python import PythonScanner
from guarita.guard.codescan_rules import RegexRule, RuleSet
from guarita.guard.codescan_secrets import SecretScanner
from guarita.guard.codescan_shell import ShellScanner
from guarita.guard.codescan_sql import SqlAnalyser, SqlBlockScanner
from guarita.guard.codescan_strings import StringSqlScanner
from guarita.guard.codescan_web import HTML_RULES, JAVASCRIPT_RULES
from guarita.guard.codetext import CommentBlanker

RISK_HEADER = "x-guarita-code-risk"


class BlockScanner(Protocol):
    """Reads one block of one language; line numbers count from 1 in the block."""

    def scan(self, code: str) -> list[Finding]: ...


@dataclass(frozen=True, slots=True)
class CodeScanConfig:
    max_block_chars: int = 65536
    """Code kept and scanned per block; the rest is dropped and the block marked truncated."""
    max_blocks: int = 32
    """Blocks scanned per answer; later blocks are listed as not scanned."""
    indented_blocks: bool = False
    use_bandit: bool = True
    """Bandit adds checks (TLS, XML, Flask debug, tar, Jinja autoescape) for ~1 ms a block."""
    sql_dialect: str | None = None
    shell_parse_chars: int = 8192
    """Longer shell blocks get the line rules only: bashlex costs ~15 ms per KiB."""
    weights: ScoreWeights = field(default_factory=ScoreWeights)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    index: int
    language: str
    tag: str
    first_line: int
    chars: int
    closed: bool
    truncated: bool
    scanned: bool


@dataclass(frozen=True, slots=True)
class CodeScanReport:
    """The scan of one answer. ``findings`` keep one finding per (block, category, line)."""

    score: float
    findings: tuple[Finding, ...]
    blocks: tuple[BlockInfo, ...]

    @property
    def blocks_scanned(self) -> int:
        return sum(1 for b in self.blocks if b.scanned)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({b.language for b in self.blocks if b.scanned}))

    @property
    def truncated(self) -> bool:
        """Some code went unread: a block cut at the size limit, or blocks past the count."""
        return any(b.truncated or not b.scanned for b in self.blocks)

    def header_value(self) -> str:
        return f"{self.score:.2f}"

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready summary for the request record (no code, no secret values)."""
        return {
            "score": self.score,
            "blocks_scanned": self.blocks_scanned,
            "languages": list(self.languages),
            "truncated": self.truncated,
            "findings": [
                {
                    "rule": f.rule,
                    "category": f.category,
                    "severity": f.severity,
                    "confidence": f.confidence,
                    "block": f.block,
                    "line": f.line,
                    "message": f.message,
                    "engine": f.engine,
                }
                for f in self.findings
            ],
        }


class _RuleScanner:
    """Regex rules on the comment-blanked block, plus string-built SQL."""

    def __init__(
        self,
        language: str,
        rules: Sequence[RegexRule],
        blanker: CommentBlanker,
        strings: StringSqlScanner | None,
    ) -> None:
        self._language = language
        self._rules = RuleSet(language, rules)
        self._blanker = blanker
        self._strings = strings

    def scan(self, code: str) -> list[Finding]:
        text = self._blanker.blank(code, self._language)
        findings = self._rules.scan(text)
        if self._strings is not None:
            findings.extend(self._strings.scan(text, self._language))
        return findings


class CodeScanner:
    """Built once per process from a config: every parser and pattern is loaded here."""

    def __init__(self, config: CodeScanConfig | None = None) -> None:
        self.config = config or CodeScanConfig()
        blanker = CommentBlanker()
        sql = SqlAnalyser(self.config.sql_dialect)
        strings = StringSqlScanner(sql)
        bandit = BanditRunner() if self.config.use_bandit else None

        def rules(language: str, table: Sequence[RegexRule]) -> BlockScanner:
            return _RuleScanner(language, table, blanker, strings)

        self._guesser = LanguageGuesser()
        self._any = SecretScanner()
        self._by_language: Mapping[str, tuple[BlockScanner, ...]] = {
            "python": (PythonScanner(sql, bandit, blanker),),
            "sql": (SqlBlockScanner(sql, blanker),),
            "shell": (ShellScanner(blanker, self.config.shell_parse_chars),),
            "javascript": (rules("javascript", JAVASCRIPT_RULES),),
            "html": (rules("html", (*HTML_RULES, *JAVASCRIPT_RULES)),),
            "php": (rules("php", (*PHP_RULES, *HTML_RULES)),),
            "java": (rules("java", JAVA_RULES),),
            "go": (rules("go", GO_RULES),),
            "ruby": (rules("ruby", RUBY_RULES),),
            "csharp": (rules("csharp", CSHARP_RULES),),
        }

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with scanners of their own (any other gets the common checks)."""
        return tuple(sorted(self._by_language))

    def language_of(self, block: CodeBlock) -> str:
        return self._guesser.language(block.tag, block.code)

    def scan_block(self, code: str, language: str) -> list[Finding]:
        """Findings for one block of a known language (``block`` left at 0)."""
        findings = list(self._any.scan(code))
        for scanner in self._by_language.get(language, ()):
            findings.extend(scanner.scan(code))
        return findings

    def scan(self, text: str) -> CodeScanReport:
        """The report for a whole answer (the same as streaming it in any chunks)."""
        stream = self.stream()
        stream.feed(text)
        return stream.finish()

    def stream(self) -> StreamingCodeScanner:
        return StreamingCodeScanner(self)

    def report(self, findings: Sequence[Finding], blocks: Sequence[BlockInfo]) -> CodeScanReport:
        weights = self.config.weights
        kept = strongest_per_line(findings, weights)
        return CodeScanReport(risk_score(kept, weights), tuple(kept), tuple(blocks))


class StreamingCodeScanner:
    """Scans each block of a streamed answer once, when its closing fence line arrives.

    ``feed`` costs the chunk's length plus the scan of the blocks it completes; text
    outside code blocks is not kept. ``score`` is the running score, so a stage in
    ``block`` mode can stop a stream as soon as it crosses the line.
    """

    def __init__(self, scanner: CodeScanner) -> None:
        config = scanner.config
        self._scanner = scanner
        self._splitter = BlockSplitter(
            max_block_chars=config.max_block_chars, indented=config.indented_blocks
        )
        self._findings: list[Finding] = []
        self._blocks: list[BlockInfo] = []
        self._finished: CodeScanReport | None = None

    @property
    def score(self) -> float:
        return risk_score(self._findings, self._scanner.config.weights)

    @property
    def in_block(self) -> bool:
        """Inside a code block that is not complete yet (a stage that blocks holds the
        block's text back until it is scanned)."""
        return self._splitter.in_block

    def feed(self, chunk: str) -> list[Finding]:
        """The findings of the blocks that ``chunk`` completed."""
        if self._finished is not None:
            raise RuntimeError("feed() after finish()")
        return self._scan(self._splitter.feed(chunk))

    def finish(self) -> CodeScanReport:
        """The report, the block the answer ended inside (unclosed) included."""
        if self._finished is None:
            self._scan(self._splitter.finish())
            self._finished = self._scanner.report(self._findings, self._blocks)
        return self._finished

    def _scan(self, blocks: list[CodeBlock]) -> list[Finding]:
        new: list[Finding] = []
        for block in blocks:
            language = self._scanner.language_of(block)
            scanned = block.index < self._scanner.config.max_blocks
            self._blocks.append(
                BlockInfo(
                    block.index,
                    language,
                    block.tag,
                    block.first_line,
                    len(block.code),
                    block.closed,
                    block.truncated,
                    scanned,
                )
            )
            if scanned:
                found = self._scanner.scan_block(block.code, language)
                new.extend(replace(f, block=block.index) for f in found)
        self._findings.extend(new)
        return new


Action = Literal["allow", "annotate", "block", "review"]


@dataclass(frozen=True, slots=True)
class CodeScanVerdict:
    action: Action
    score: float
    headers: Mapping[str, str]
    reason: str


@dataclass(frozen=True, slots=True)
class CodeScanPolicy:
    """Per agent, as data. ``annotate``: always deliver, with the risk header and the
    record; ``block``: refuse at ``block_at`` and over; ``review``: deliver, and send to
    the review queue at ``review_at`` and over; ``off``: no scan."""

    mode: Literal["annotate", "block", "review", "off"] = "annotate"
    block_at: float = 0.8
    review_at: float = 0.5
    header: str = RISK_HEADER

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def decide(self, report: CodeScanReport) -> CodeScanVerdict:
        if self.mode == "off":
            return CodeScanVerdict("allow", report.score, {}, "code scanning off")
        headers = {self.header: report.header_value()}
        categories = sorted({f.category for f in report.findings})
        reason = ", ".join(categories) or "no finding"
        if self.mode == "block" and report.score >= self.block_at:
            return CodeScanVerdict("block", report.score, headers, reason)
        if self.mode == "review" and report.score >= self.review_at:
            return CodeScanVerdict("review", report.score, headers, reason)
        return CodeScanVerdict("annotate", report.score, headers, reason)
