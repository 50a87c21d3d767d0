"""Generated-code scanning: CPU time per answer, and precision/recall on our own corpus.

    .venv/bin/python bench/guard_codescan.py [--repeats 300]

Times :meth:`CodeScanner.scan` (process CPU time, so a busy machine's waiting for a core
is not counted) for answers without code, with one small block, with several blocks of
different languages, and one streamed in 8-character chunks; then scores every snippet
of ``tests/guard/data/codescan_corpus.jsonl`` and reports precision and recall of
``score >= 0.5`` per split. The corpus was written by the author of the scanners, after
the rules: its ``unit`` and ``holdout`` splits measure agreement with the author's own
idea of the categories, not recall on code models really write; the small ``hard``
split holds cases written to show known limits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.guard.codescan import CodeScanConfig, CodeScanner  # noqa: E402

CORPUS = ROOT / "tests/guard/data/codescan_corpus.jsonl"

PROSE = (
    "To reverse a list in Python you can use slicing or the reversed() built-in. Slicing "
    "creates a new list, while list.reverse() works in place and returns None.\n"
) * 8

SMALL = (
    PROSE
    + """
```python
def find(cur, name):
    cur.execute("SELECT * FROM users WHERE name = %s", (name,))
    return cur.fetchall()
```
"""
)

SEVERAL = (
    PROSE
    + """
```python
import subprocess
def ping(host):
    return subprocess.check_output(f"ping -c 1 {host}", shell=True)
```
Then the front end:
```javascript
const params = new URLSearchParams(location.search);
document.getElementById("out").innerHTML = params.get("q");
db.query("SELECT * FROM logs WHERE level = " + req.query.level);
```
And the deploy script:
```bash
#!/bin/bash
set -euo pipefail
curl -fsSL https://example.invalid/install.sh | sh
rm -rf "${BUILD_DIR:?}"/*
```
```sql
SELECT id, name FROM users WHERE created_at > $1 ORDER BY id;
```
"""
)


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1e3 for s in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):.3f} ms, p95 {p95:.3f} ms"


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    run()  # warm: first-use costs (regex caches, sqlglot's tokenizer tables)
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        samples.append(time.process_time() - started)
    return samples


def streamed(scanner: CodeScanner, text: str, size: int = 8) -> None:
    stream = scanner.stream()
    for start in range(0, len(text), size):
        stream.feed(text[start : start + size])
    stream.finish()


def corpus_figures(scanner: CodeScanner) -> None:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        answer = f"```{row['language']}\n{row['code']}```\n"
        flagged = scanner.scan(answer).score >= 0.5
        vulnerable = row["label"] == "vulnerable"
        outcome = {(True, True): "tp", (True, False): "fp", (False, True): "fn"}.get(
            (flagged, vulnerable), "tn"
        )
        for split in (row["split"], "all"):
            counts[split][outcome] += 1
    for split in ("unit", "holdout", "hard", "all"):
        c = counts[split]
        precision = c["tp"] / max(1, c["tp"] + c["fp"])
        recall = c["tp"] / max(1, c["tp"] + c["fn"])
        print(f"  {split:8s} n={sum(c.values()):3d}  precision {precision:.3f}  "
              f"recall {recall:.3f}  (tp {c['tp']}, fp {c['fp']}, "
              f"fn {c['fn']}, tn {c['tn']})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    started = time.process_time()
    scanner = CodeScanner()
    print(f"CodeScanner() built in {(time.process_time() - started) * 1e3:.1f} ms CPU")
    lean = CodeScanner(CodeScanConfig(use_bandit=False))
    cases = {
        "no code": PROSE,
        "one small block": SMALL,
        "several blocks (4)": SEVERAL,
    }
    for name, text in cases.items():
        print(f"{name:22s} ({len(text):5d} chars): "
              f"{percentiles(timed(lambda t=text: scanner.scan(t), args.repeats))}"
              f"  | without bandit: "
              f"{percentiles(timed(lambda t=text: lean.scan(t), args.repeats))}")  # fmt: skip
    chunks = percentiles(timed(lambda: streamed(scanner, SEVERAL), args.repeats))
    print(f"{'several, 8-char chunks':22s} ({len(SEVERAL):5d} chars): {chunks}")
    print(f"corpus {CORPUS.relative_to(ROOT)} (our own data), score >= 0.5:")
    corpus_figures(scanner)


if __name__ == "__main__":
    main()
