"""The two packaged local models side by side on chat prompts: answers, latency, tokens/s.

    .venv/bin/python bench/local_models.py [--temperature 0] [--max-tokens 96] [--json OUT]

Each prompt goes to both models as the default agent sends it (its system prompt, then the
user message), through the llama.cpp provider, one call at a time on this machine's CPU.
The answers are printed so that a person can judge them; the figures are per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.ops.scorers import HeuristicScorer, ScoreInput  # noqa: E402
from guarita.providers.llamacpp import LlamaCppProvider  # noqa: E402
from guarita.settings import LOCAL_MODEL, SMOLLM2_MODEL, Settings  # noqa: E402
from guarita.types import Call, Caller  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "My order arrived broken. What should I do?",
    "Name two primary colours.",
    "What does HTTP stand for?",
    "Suggest a name for a friendly robot.",
]


async def run_model(
    name: str, settings: Settings, temperature: float, max_tokens: int
) -> list[dict[str, object]]:
    provider = LlamaCppProvider(name, settings.models[name])
    system = settings.agents["assistant"].system_prompt
    await provider.start()
    started = time.perf_counter()
    while not await provider.ready():  # noqa: ASYNC110 - readiness is polled
        await asyncio.sleep(0.1)
    load_s = time.perf_counter() - started
    rows: list[dict[str, object]] = []
    try:
        for prompt in PROMPTS:
            call = Call(
                request_id="bench",
                model=name,
                body={
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": prompt},
                    ],
                    "temperature": temperature,
                    "max_tokens": max_tokens,
                    "seed": 7,
                },
                caller=Caller(key_id=None, name="bench", tier="internal"),
            )
            t0 = time.perf_counter()
            completion = await provider.complete(call)
            elapsed = time.perf_counter() - t0
            text = completion.body["choices"][0]["message"]["content"] or ""
            out = completion.usage.output_tokens
            finish = completion.body["choices"][0].get("finish_reason")
            scored = ScoreInput(messages=call.messages, answer=text, finish_reason=finish)
            rows.append(
                {
                    "prompt": prompt,
                    "answer": text.strip(),
                    "latency_s": round(elapsed, 3),
                    "output_tokens": out,
                    "tokens_per_s": round(out / elapsed, 1) if elapsed else 0.0,
                    "heuristic": HeuristicScorer().score_now(scored),
                }
            )
    finally:
        await provider.aclose()
    print(f"\n== {name} (loaded in {load_s:.1f} s)")
    for row in rows:
        print(
            f"\n> {row['prompt']}\n{row['answer']}\n  [{row['latency_s']} s, "
            f"{row['output_tokens']} tokens, {row['tokens_per_s']} tok/s]"
        )
    latencies = [float(str(r["latency_s"])) for r in rows]
    speeds = [float(str(r["tokens_per_s"])) for r in rows]
    heuristic = statistics.mean(float(str(r["heuristic"])) for r in rows)
    print(
        f"\n{name}: mean heuristic score {heuristic:.2f}, "
        f"median latency {statistics.median(latencies):.2f} s, "
        f"median {statistics.median(speeds):.1f} tokens/s"
    )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settings = Settings()
    results = {}
    for name in (LOCAL_MODEL, SMOLLM2_MODEL):
        results[name] = await run_model(name, settings, args.temperature, args.max_tokens)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
