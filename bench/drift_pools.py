"""Pools of real answers from the packaged local models, for the drift power study.

    .venv/bin/python bench/drift_pools.py [--baseline 240] [--shifted 120] [--max-tokens 40]

Three pools, each answer to a user question drawn at random from the same 120 questions
(30 subjects x 4 asks), sampled at temperature 0.7 with a seed of its own:

* ``baseline``: the default agent as shipped (``smollm2-135m``, "You are a helpful
  assistant. Answer briefly.");
* ``model_swap``: the same agent served by ``gemma3-270m`` instead;
* ``prompt_swap``: ``smollm2-135m`` with another system prompt (a tutor who explains to a
  child), a change of tone rather than of model.

Written to ``bench/results/drift_pools.json`` (texts only, a few hundred kB); the power
study (``bench/drift_power.py``) reads it, so answers are generated once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.providers.llamacpp import LlamaCppProvider  # noqa: E402
from guarita.settings import LOCAL_MODEL, SMOLLM2_MODEL, Settings  # noqa: E402
from guarita.types import Call, Caller  # noqa: E402

OUT = ROOT / "bench" / "results" / "drift_pools.json"
SUBJECTS = [
    "the moon", "coffee", "volcanoes", "bicycles", "the internet", "bees", "rain",
    "chess", "bread", "electric cars", "the ocean", "sleep", "music", "trees", "money",
    "the heart", "snow", "computers", "dogs", "the sun", "gardening", "plastic",
    "football", "libraries", "earthquakes", "tea", "birds", "batteries", "maps", "salt",
]  # fmt: skip
ASKS = [
    "What is {s}?",
    "Tell me one interesting fact about {s}.",
    "Why is {s} important?",
    "Explain {s} in one sentence.",
]
QUESTIONS = [ask.format(s=s) for s in SUBJECTS for ask in ASKS]
BASELINE_PROMPT = "You are a helpful assistant. Answer briefly."
SWAPPED_PROMPT = "You are a patient tutor. Explain things to a curious eight-year-old."
CALLER = Caller(key_id=None, name="bench", tier="internal")


async def pool(
    model: str, system: str, count: int, max_tokens: int, seed: int, threads: int
) -> list[dict[str, str]]:
    settings = Settings()
    model_settings = settings.models[model].model_copy(
        update={"options": {**settings.models[model].options, "n_threads": threads}}
    )
    provider = LlamaCppProvider(model, model_settings)
    await provider.start()
    while not await provider.ready():  # noqa: ASYNC110 - readiness is polled
        await asyncio.sleep(0.1)
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    started = time.perf_counter()
    try:
        for i in range(count):
            question = rng.choice(QUESTIONS)
            call = Call(
                request_id=f"pool-{i}",
                model=model,
                body={
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                    "temperature": 0.7,
                    "max_tokens": max_tokens,
                    "seed": rng.randrange(2**31),
                },
                caller=CALLER,
            )
            completion = await provider.complete(call)
            rows.append({"input": question, "output": completion.text.strip()})
            if (i + 1) % 20 == 0:
                rate = (i + 1) / (time.perf_counter() - started)
                print(f"{model}: {i + 1}/{count} ({rate:.2f} answers/s)", flush=True)
    finally:
        await provider.aclose()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=int, default=240)
    parser.add_argument("--shifted", type=int, default=120)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    spec = {
        "baseline": (SMOLLM2_MODEL, BASELINE_PROMPT, args.baseline, 1),
        "prompt_swap": (SMOLLM2_MODEL, SWAPPED_PROMPT, args.shifted, 2),
        "model_swap": (LOCAL_MODEL, BASELINE_PROMPT, args.shifted, 3),
    }
    pools: dict[str, object] = {
        "meta": {
            "questions": len(QUESTIONS),
            "temperature": 0.7,
            "max_tokens": args.max_tokens,
            "baseline_prompt": BASELINE_PROMPT,
            "swapped_prompt": SWAPPED_PROMPT,
            "models": {name: s[0] for name, s in spec.items()},
        }
    }
    for name, (model, system, count, seed) in spec.items():
        pools[name] = await pool(model, system, count, args.max_tokens, seed, args.threads)
        args.out.write_text(json.dumps(pools, indent=1))  # partial results survive a stop
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
