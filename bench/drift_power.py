"""Drift detection's false-alarm rate and power on real answers of the local models.

    .venv/bin/python bench/drift_power.py [--windows 10,20,30,50] [--resamples 200]

Reads the pools of ``bench/drift_pools.py`` (``bench/results/drift_pools.json``), embeds
them with WordLlama (the embedder drift uses), then for each window size n and each of
``--resamples`` seeded resamples:

* false alarm: two disjoint windows of n baseline answers, tested with
  :func:`guarita.ops.drift.compare` at the default thresholds; a warning or worse counts;
* power: n baseline answers against n answers of a shifted pool (``model_swap``,
  ``prompt_swap``); a warning or worse counts as detected (urgent reported too).

Each rate comes with its 95 % Wilson interval. The inputs (the user questions) are drawn
from the same 120 questions in every pool, so what differs is the answers alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.cache.embedder import WordLlamaEmbedder  # noqa: E402
from guarita.ops.drift import DriftLevel, compare  # noqa: E402

POOLS = ROOT / "bench" / "results" / "drift_pools.json"


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", default="10,20,30,50")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pools = json.loads(POOLS.read_text())
    embedder = WordLlamaEmbedder()
    vectors = {name: embedder.embed_now([row["output"] for row in pools[name]])
               for name in ("baseline", "model_swap", "prompt_swap")}  # fmt: skip
    print({name: len(v) for name, v in vectors.items()}, "answers;", pools["meta"])
    results = []
    for window in (int(w) for w in args.windows.split(",")):
        started = time.perf_counter()
        rng = np.random.default_rng(window)
        base = vectors["baseline"]
        alarms = 0
        detected = {"model_swap": [0, 0], "prompt_swap": [0, 0]}
        for i in range(args.resamples):
            order = rng.permutation(len(base))
            a, b = base[order[:window]], base[order[window : 2 * window]]
            level = compare(a, b, permutations=args.permutations, seed=i).level
            alarms += level >= DriftLevel.WARNING
            for name, counts in detected.items():
                shifted = vectors[name][rng.permutation(len(vectors[name]))[:window]]
                level = compare(a, shifted, permutations=args.permutations, seed=i).level
                counts[0] += level >= DriftLevel.WARNING
                counts[1] += level == DriftLevel.URGENT_ROLLBACK
        n = args.resamples
        per_test = (time.perf_counter() - started) / (3 * n) * 1000
        row = {"window": window, "resamples": n, "false_alarm": alarms / n,
               "power_model_swap": detected["model_swap"][0] / n,
               "urgent_model_swap": detected["model_swap"][1] / n,
               "power_prompt_swap": detected["prompt_swap"][0] / n,
               "urgent_prompt_swap": detected["prompt_swap"][1] / n,
               "ms_per_test": round(per_test, 1)}  # fmt: skip
        results.append(row)
        print(f"window {window}: false alarms {rate(alarms, n)}; "
              f"power model swap {rate(detected['model_swap'][0], n)} "
              f"(urgent {detected['model_swap'][1] / n:.3f}); "
              f"prompt swap {rate(detected['prompt_swap'][0], n)} "
              f"(urgent {detected['prompt_swap'][1] / n:.3f}); {per_test:.0f} ms a test",
              flush=True)  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
