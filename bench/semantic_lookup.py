"""The semantic tier's lookup with 100,000 entries, the embedding excluded.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_lookup.py [--entries 100000]
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_lookup.py --judge --lookups 200
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_lookup.py --judge --encoded --lookups 500

Fills one group (the worst case: one namespace and one context holding every entry) with
WordLlama vectors of generated questions, then times :meth:`SemanticTier.find` (the HNSW
search, the verifier on the candidates above the threshold, the answer's lookup in the
in-process exact tier) for near repeats of indexed questions and for new ones, and
reports the wall time (what a busy machine adds: waiting for a core) and the CPU time of
each, and the embedder's time per text alone (one text per call, as a request does).
With ``--judge`` the candidates are judged (``judge: model``, the default) instead of
verified: the judge works on a thread of its own, so the CPU given is the process's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.cache.embedder import CachedEmbedder, WordLlamaEmbedder  # noqa: E402
from guarita.cache.exact import Entry, LocalEntries  # noqa: E402
from guarita.cache.index import SemanticEntry, VectorIndex  # noqa: E402
from guarita.cache.semantic import (  # noqa: E402
    WORDLLAMA_THRESHOLD,
    Probe,
    SemanticTier,
    embedding_text,
)
from guarita.types import Usage  # noqa: E402


def questions(n: int, seed: int = 3) -> list[str]:
    words = re.findall(r"[A-Za-z']+", (ROOT / "tests/cache/data/pairs.txt").read_text())
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, rng.integers(5, 15))) + "?" for _ in range(n)]


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1e3
    return (f"p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, "
            f"max {ms.max():.3f} ms")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--judge", action="store_true", help="judge: model instead of rules")
    parser.add_argument("--encoded", action="store_true",
                        help="with --judge: every text encoded by a first, untimed pass "
                        "(the lookup with the embedding excluded)")  # fmt: skip
    args = parser.parse_args()
    model = WordLlamaEmbedder()
    texts = questions(args.entries)
    started = time.perf_counter()
    vectors = model.embed_now([embedding_text(t) for t in texts])
    print(f"embedded {len(texts)} questions in batches: "
          f"{(time.perf_counter() - started) / len(texts) * 1e6:.0f} µs per text")  # fmt: skip
    singles = []
    for text in texts[: args.lookups]:
        t0 = time.perf_counter()
        model.embed_now([embedding_text(text) + " please"])
        singles.append(time.perf_counter() - t0)
    print(f"embedder, one text per call (on its thread in the server): {percentiles(singles)}")

    entries = LocalEntries(max_entries=args.entries + 10, max_bytes=1 << 34)
    index = VectorIndex(model.dims, max_entries=args.entries + 10)
    started = time.perf_counter()
    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        index.add("g", vector, SemanticEntry(text, f"k{i}", 1e12, 1e12))
        body = {"choices": [{"message": {"content": f"answer {i}"}}]}
        await entries.put(f"k{i}", Entry(body, Usage(1, 1), "m", 0, 1e12).encode(), 1e9)
    print(f"indexed {len(index)} entries in {time.perf_counter() - started:.1f} s")
    judge = None
    if args.judge:
        from guarita.cache.judge import PairJudge

        judge = PairJudge(model.embed_now)
        await judge.start()
    semantic = SemanticTier(embedder=CachedEmbedder(model), index=index,
                            threshold=WORDLLAMA_THRESHOLD, judge=judge)  # fmt: skip
    clock = time.process_time if args.judge else time.thread_time

    async def lookup(key: str) -> Entry | None:
        raw = await entries.get(key)
        return None if raw is None else Entry.decode(raw)

    repeats = model.embed_now([embedding_text(t.upper()) for t in texts[: args.lookups]])
    fresh = model.embed_now([embedding_text(t) for t in questions(args.lookups, seed=9)])
    for name, probes, originals in (("near repeats", repeats, texts), ("new questions", fresh,
                                                                      None)):  # fmt: skip
        times, cpu, hits = [], [], 0
        if args.judge and args.encoded:
            for i, vector in enumerate(probes):
                text = originals[i].upper() if originals else f"new question {i}"
                await semantic.find(Probe("g", text, vector), lookup)
        for i, vector in enumerate(probes):
            text = originals[i].upper() if originals else f"new question {i}"
            t0, c0 = time.perf_counter(), clock()
            found = await semantic.find(Probe("g", text, vector), lookup)
            cpu.append(clock() - c0)
            times.append(time.perf_counter() - t0)
            hits += found is not None
        print(f"find, {name}: wall {percentiles(times)}; CPU {percentiles(cpu)}; "
              f"served {hits} / {len(probes)}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
