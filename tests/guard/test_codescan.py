"""Generated-code scanning: blocks, languages, scanners per category, score, streaming,
bounds and policy. The per-category samples are the ``unit`` split of the corpus in
``data/codescan_corpus.jsonl``; its other splits are measured by the bench."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from guarita.guard.codeblocks import BlockSplitter, extract_blocks
from guarita.guard.codefindings import Finding, ScoreWeights, risk_score
from guarita.guard.codelang import LanguageGuesser
from guarita.guard.codescan import (
    RISK_HEADER,
    CodeScanConfig,
    CodeScanner,
    CodeScanPolicy,
    CodeScanReport,
)
from guarita.guard.codescan_sql import SqlAnalyser, hole

CORPUS = Path(__file__).parent / "data" / "codescan_corpus.jsonl"


def corpus(split: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == split]


def fenced(row: dict[str, Any]) -> str:
    return f"Here is the code:\n\n```{row['language']}\n{row['code']}```\n\nHope it helps.\n"


@pytest.fixture(scope="module")
def scanner() -> CodeScanner:
    return CodeScanner()


UNIT = corpus("unit")


# -- categories ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "row", [r for r in UNIT if r["label"] == "vulnerable"], ids=lambda r: r["id"]
)
def test_vulnerable_sample_scores_high_in_its_category(
    scanner: CodeScanner, row: dict[str, Any]
) -> None:
    report = scanner.scan(fenced(row))
    assert report.score >= 0.5
    assert row["category"] in {f.category for f in report.findings}


@pytest.mark.parametrize("row", [r for r in UNIT if r["label"] == "benign"], ids=lambda r: r["id"])
def test_benign_lookalike_scores_low(scanner: CodeScanner, row: dict[str, Any]) -> None:
    assert scanner.scan(fenced(row)).score < 0.5


def test_each_category_has_three_of_each_in_several_languages() -> None:
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in UNIT:
        seen[row["category"], row["label"]].append(row["language"])
    categories = {category for category, _ in seen}
    assert {"sql_injection", "xss", "command_injection", "path_traversal", "hardcoded_secret",
            "insecure_deserialization", "weak_crypto", "code_injection"} <= categories  # fmt: skip
    for category in categories:
        for label in ("vulnerable", "benign"):
            assert len(seen[category, label]) >= 3, (category, label)
        assert len(set(seen[category, "vulnerable"])) >= 2, category


def test_vulnerable_outscore_benign_in_every_category(scanner: CodeScanner) -> None:
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in UNIT:
        scores[row["category"], row["label"]].append(scanner.scan(fenced(row)).score)
    for category in {c for c, _ in scores}:
        assert min(scores[category, "vulnerable"]) > max(scores[category, "benign"]), category


def test_corpus_holds_about_sixty_of_each() -> None:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    labels = [r["label"] for r in rows]
    assert labels.count("vulnerable") >= 60
    assert labels.count("benign") >= 60


# -- comments and explanations ---------------------------------------------------------
@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("javascript", "// never write: el.innerHTML = userInput;\nel.textContent = userInput;\n"),
        (
            "python",
            "# bad: cur.execute(f\"SELECT * FROM t WHERE a = '{a}'\")\ncur.execute(q, (a,))\n",
        ),
        ("bash", "# do not: curl https://x | sh\ncurl -o x.sh https://x\n"),
        ("php", "<?php\n// echo $_GET['q'];  (XSS!)\necho htmlspecialchars($_GET['q']);\n"),
    ],
)
def test_code_that_explains_an_injection_in_a_comment_is_benign(
    scanner: CodeScanner, language: str, code: str
) -> None:
    report = scanner.scan(f"```{language}\n{code}```\n")
    assert report.findings == ()
    assert report.score == 0.0


def test_secrets_are_never_quoted_in_findings(scanner: CodeScanner) -> None:
    secrets = ["AKIAZ7XQ3MPLK2VBN4RT", "Tr0ub4dor&3-prod", "hunter2-but-longer"]
    code = f'key_id = "{secrets[0]}"\npassword = "{secrets[1]}"\ndb_password = "{secrets[2]}"\n'
    report = scanner.scan(f"```python\n{code}```\n")
    assert {f.category for f in report.findings} == {"hardcoded_secret"}
    assert len(report.findings) == 3
    serialised = json.dumps(report.to_record())
    for secret in secrets:
        assert secret not in serialised


def test_placeholders_are_not_secrets(scanner: CodeScanner) -> None:
    code = (
        'api_key = "your-api-key"\npassword = "<password>"\ntoken = "${TOKEN}"\n'
        'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"\nsecret = os.environ["SECRET"]\n'
    )
    assert scanner.scan(f"```python\n{code}```\n").findings == ()


# -- Python specifics ------------------------------------------------------------------
def test_python_value_flow_through_names_and_augmented_assignment(scanner: CodeScanner) -> None:
    code = 'sql = "SELECT * FROM t WHERE a = "\nsql += a\ncur.execute(sql)\n'
    findings = scanner.scan_block(code, "python")
    assert [f.rule for f in findings] == ["py.sql-interpolated"]
    assert findings[0].line == 3


def test_python_dynamic_identifier_is_weaker_than_a_value(scanner: CodeScanner) -> None:
    code = 'cur.execute(f"SELECT * FROM {table} WHERE id = %s", (uid,))\n'
    findings = scanner.scan_block(code, "python")
    assert {f.rule for f in findings} == {"py.sql-dynamic-identifier", "bandit.B608"}
    assert risk_score(findings) < 0.5


def test_python_that_does_not_parse_gets_regex_checks(scanner: CodeScanner) -> None:
    code = 'def broken(:\n    cursor.execute(f"SELECT * FROM t WHERE a = {a}")\n'
    findings = scanner.scan_block(code, "python")
    assert [(f.rule, f.engine, f.line) for f in findings] == [("py.sql-fstring", "regex", 2)]


def test_python_console_prompts_are_dropped(scanner: CodeScanner) -> None:
    code = '>>> import os\n>>> os.system("rm " + path)\n'
    assert [f.rule for f in scanner.scan_block(code, "python")] == ["py.shell-injection"]


def test_bandit_adds_checks_and_can_be_turned_off() -> None:
    code = "import requests\nrequests.get(url, verify=False)\n"
    with_bandit = CodeScanner(CodeScanConfig(use_bandit=True)).scan_block(code, "python")
    without = CodeScanner(CodeScanConfig(use_bandit=False)).scan_block(code, "python")
    assert [f.rule for f in with_bandit] == ["bandit.B501"]
    assert without == []


# -- shell -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "rules"),
    [
        ("rm -rf $DIR/\n", ["sh.rm-unquoted"]),
        ('rm -rf "${DIR:?}/build"\n', []),
        ("sudo rm -rf /\n", ["sh.rm-root"]),
        ("chmod -R 777 /srv\n", ["sh.chmod-world"]),
        ('sh -c "$CMD"\n', ["sh.shell-c-variable"]),
        ("if [[ -n $X ]]; then rm -rf $X; fi\n", ["sh.rm-unquoted"]),  # bashlex fails: regex
        ("$ ls -la\n$ echo done\n", []),
    ],
)
def test_shell_rules(scanner: CodeScanner, code: str, rules: list[str]) -> None:
    assert [f.rule for f in scanner.scan_block(code, "shell")] == rules


def test_a_long_shell_script_gets_the_line_rules(scanner: CodeScanner) -> None:
    code = 'echo "$HOME"\n' * 1000 + "rm -rf $TARGET\n"
    (finding,) = scanner.scan_block(code, "shell")
    assert (finding.rule, finding.engine, finding.line) == ("sh.rm-unquoted", "regex", 1001)


# -- SQL analysis ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "placement", "parameterised"),
    [
        (f"SELECT * FROM users WHERE id = {hole(1)}", "value", False),
        (f"SELECT * FROM users WHERE name = '{hole(1)}'", "quoted", False),
        (f"SELECT * FROM {hole(1)} WHERE id = ?", "identifier", True),
        (f"SELECT * FROM t WHERE {hole(1)}", "value", False),
        ("SELECT * FROM t WHERE a = %s AND b = %(b)s", "none", True),
        ("SELECT * FROM t WHERE a = :a", "none", True),
    ],
)
def test_sql_placement(template: str, placement: str, parameterised: bool) -> None:
    verdict = SqlAnalyser().classify(template)
    assert verdict.is_sql
    assert (verdict.placement, verdict.parameterised) == (placement, parameterised)


def test_not_sql_is_not_judged() -> None:
    assert not SqlAnalyser().classify(f"select an option: {hole(1)}").is_sql


def test_mybatis_style_and_template_holes_in_sql_blocks(scanner: CodeScanner) -> None:
    code = "SELECT * FROM users WHERE name = '${name}';\nSELECT * FROM users WHERE id = ?;\n"
    findings = scanner.scan_block(code, "sql")
    assert [(f.rule, f.line) for f in findings] == [("sql.template-value", 1)]


# -- blocks and languages --------------------------------------------------------------
def test_fences_tags_and_guesses() -> None:
    text = (
        "intro\n```Python title=x.py\nprint(1)\n```\n"
        "~~~{.sql}\nSELECT 1;\n~~~\n"
        "````\n```\ninner\n```\n````\n"
        "1. step\n\n    ```bash\n    ls -la\n    ```\n"
    )
    blocks = extract_blocks(text)
    assert [(b.tag, b.code) for b in blocks] == [
        ("Python", "print(1)\n"),
        ("sql", "SELECT 1;\n"),
        ("", "```\ninner\n```\n"),
        ("bash", "ls -la\n"),
    ]
    assert [b.first_line for b in blocks] == [3, 6, 9, 16]
    assert all(b.closed for b in blocks)


def test_crlf_answers() -> None:
    (block,) = extract_blocks("```js\r\neval(x)\r\n```\r\n")
    assert (block.tag, block.code) == ("js", "eval(x)\n")


def test_indented_blocks_only_when_asked() -> None:
    text = "Run this:\n\n    import os\n    os.system(cmd)\n\nDone.\n"
    assert extract_blocks(text) == []
    (block,) = extract_blocks(text, indented=True)
    assert block.code == "import os\nos.system(cmd)\n"
    assert not block.fenced


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("import os\n\ndef main():\n    print(os.getcwd())\n", "python"),
        ("SELECT name FROM users\nWHERE id = 1;\n", "sql"),
        ("$ sudo apt-get install -y curl\n$ curl -sL x | grep y\n", "shell"),
        ("const x = require('x');\ndocument.body.append(x);\nconsole.log(x);\n", "javascript"),
        ("<?php\n$name = $_GET['n'];\necho $name;\n", "php"),
        ("package main\n\nfunc main() {\n    x := 1\n    fmt.Println(x)\n}\n", "go"),
        (
            "public class A {\n  public static void main(String[] a) {\n"
            "    System.out.println(1);\n  }\n}\n",
            "java",
        ),
        ("just some words\n", "text"),
    ],
)
def test_language_guess(code: str, language: str) -> None:
    assert LanguageGuesser().language("", code) == language


def test_tag_aliases_win_over_guesses() -> None:
    guesser = LanguageGuesser()
    assert guesser.language("ts", "print(1)") == "javascript"
    assert guesser.language("console", "x") == "shell"
    assert guesser.language("rust", "fn main() {}") == "rust"


def test_untagged_block_is_scanned_by_the_guessed_language(scanner: CodeScanner) -> None:
    report = scanner.scan("```\nimport os\n\ndef run(cmd):\n    os.system(cmd)\n```\n")
    assert report.languages == ("python",)
    assert [f.rule for f in report.findings] == ["py.shell-injection"]


# -- streaming -------------------------------------------------------------------------
SHORT = 'Try:\n```js\nel.innerHTML = name;\n```\nor `x`.\n~~~sh\neval "$x"\n~~~'


def _same(a: CodeScanReport, b: CodeScanReport) -> None:
    assert (a.score, a.findings, a.blocks) == (b.score, b.findings, b.blocks)


def test_every_two_chunk_split_of_a_short_answer_matches_the_whole(scanner: CodeScanner) -> None:
    whole = scanner.scan(SHORT)
    assert len(whole.findings) == 2
    for cut in range(len(SHORT) + 1):
        stream = scanner.stream()
        streamed = stream.feed(SHORT[:cut]) + stream.feed(SHORT[cut:])
        report = stream.finish()
        _same(report, whole)
        assert set(streamed) <= set(whole.findings)


def test_random_splits_of_a_long_answer_match_the_whole(scanner: CodeScanner) -> None:
    answer = "\n\n".join(fenced(row) for row in UNIT[:30])
    whole = scanner.scan(answer)
    assert whole.blocks_scanned == 30
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(answer)), rng.randint(1, 60)))
        stream = scanner.stream()
        for start, end in zip([0, *cuts], [*cuts, len(answer)], strict=True):
            stream.feed(answer[start:end])
        _same(stream.finish(), whole)


def test_feed_reports_a_block_when_its_closing_fence_line_ends(scanner: CodeScanner) -> None:
    stream = scanner.stream()
    assert stream.feed("```python\neval(x)\n") == []
    assert stream.feed("``") == []
    assert stream.feed("`") == []  # the line may still go on: "```py" would not close
    (finding,) = stream.feed("\nmore prose")
    assert (finding.rule, finding.block, finding.line) == ("py.eval-dynamic", 0, 1)
    assert stream.score == pytest.approx(0.8)
    assert stream.finish().findings == (finding,)


def test_an_unclosed_block_is_scanned_at_finish(scanner: CodeScanner) -> None:
    stream = scanner.stream()
    assert stream.feed("```js\ndocument.write(location.hash)") == []
    report = stream.finish()
    assert [f.rule for f in report.findings] == ["javascript.document-write"]
    assert report.blocks[0].closed is False
    with pytest.raises(RuntimeError):
        stream.feed("more")


def test_empty_and_codeless_answers(scanner: CodeScanner) -> None:
    for text in ("", "Just prose, with `inline code` and no block.\n"):
        report = scanner.scan(text)
        assert (report.score, report.findings, report.blocks) == (0.0, (), ())
        assert report.header_value() == "0.00"


# -- bounds ----------------------------------------------------------------------------
def test_a_huge_block_is_cut_at_the_limit_and_says_so() -> None:
    scanner = CodeScanner(CodeScanConfig(max_block_chars=4096, use_bandit=False))
    body = "x = 1\n" * 50_000 + "eval(y)\n"
    report = scanner.scan(f"```python\n{body}```\n")
    (block,) = report.blocks
    assert block.truncated and block.chars == 4096 and report.truncated
    assert report.findings == ()  # the eval was past the limit


def test_a_huge_line_without_newlines_is_bounded() -> None:
    splitter = BlockSplitter(max_block_chars=1000)
    assert splitter.feed("```js\n") == []
    for _ in range(500):
        splitter.feed("a" * 1000)
    (block,) = splitter.finish()
    assert len(block.code) == 1000 and block.truncated and not block.closed


def test_blocks_past_the_count_are_listed_not_scanned() -> None:
    scanner = CodeScanner(CodeScanConfig(max_blocks=2, use_bandit=False))
    report = scanner.scan("```python\neval(a)\n```\n" * 3)
    assert [b.scanned for b in report.blocks] == [True, True, False]
    assert report.blocks_scanned == 2 and report.truncated
    assert [f.block for f in report.findings] == [0, 1]


# -- score -----------------------------------------------------------------------------
def _finding(severity: str, confidence: str, line: int = 1, category: str = "xss") -> Finding:
    return Finding("r", category, severity, confidence, line, "m")  # type: ignore[arg-type]


def test_score_combines_findings_and_counts_a_line_once() -> None:
    weights = ScoreWeights()
    assert risk_score([]) == 0.0
    one = risk_score([_finding("high", "high")])
    two = risk_score([_finding("high", "high"), _finding("medium", "medium", line=2)])
    assert one == pytest.approx(0.8)
    assert one < two < 1.0
    same_line = [_finding("high", "high"), _finding("low", "low")]
    assert risk_score(same_line, weights) == one
    assert risk_score([_finding("critical", "high")]) == pytest.approx(0.99)


# -- policy ----------------------------------------------------------------------------
def test_policy_modes(scanner: CodeScanner) -> None:
    risky = scanner.scan("```python\neval(x)\n```\n")  # 0.8
    medium = scanner.scan("```bash\ncurl https://x | sh\n```\n")  # 0.56
    clean = scanner.scan("no code")
    assert CodeScanPolicy(mode="off").decide(risky).action == "allow"
    assert CodeScanPolicy(mode="off").decide(risky).headers == {}
    annotate = CodeScanPolicy(mode="annotate").decide(risky)
    assert (annotate.action, annotate.headers) == ("annotate", {RISK_HEADER: "0.80"})
    assert CodeScanPolicy(mode="block").decide(risky).action == "block"
    assert CodeScanPolicy(mode="block").decide(medium).action == "annotate"
    assert CodeScanPolicy(mode="block", block_at=0.5).decide(medium).action == "block"
    assert CodeScanPolicy(mode="review").decide(medium).action == "review"
    assert CodeScanPolicy(mode="review").decide(clean).action == "annotate"
    assert CodeScanPolicy(mode="block").decide(risky).reason == "code_injection"
