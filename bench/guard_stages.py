"""CPU per request of each guard: the InputGuard and OutputGuard stages around a terminal
that answers at once, one request at a time, in one process.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/guard_stages.py [--requests 400] [--rounds 5]

A request is a conversation of a system prompt and three earlier turns (about 1,900
characters) plus a new user message that differs on every request (so the injection
verdict cache never answers for it) and carries an email address; the answer is about
700 characters with one Python code block. "follow-up" resends the same history each time
(what a chat client does: the history's verdicts come from the cache), "fresh" makes every
message new. Each profile is measured in rounds, profiles alternating; the figure is the
median round's CPU time (``time.process_time``) per request, minus the same requests
through a pass-through stage.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from guarita.pipeline import Next, compose
from guarita.pipeline.guard import Guards, InputGuard, OutputGuard
from guarita.providers.common import chunk, completion_body
from guarita.settings import load_settings
from guarita.types import Call, Caller, Completion, Reply, Usage

SYSTEM = (
    "You are a support assistant for an online shop. Answer briefly and politely; when "
    "you show code, use fenced blocks with the language named. Never invent order data."
)
HISTORY = [
    (
        "user",
        "Hi, I ordered a kettle last week and it has not arrived. Order 58213, placed "
        "on the 24th. Can you tell me where it is? The tracking page says nothing since Friday.",
    ),
    (
        "assistant",
        "I'm sorry about the delay. Parcels from that warehouse were held for two "
        "days by the carrier; yours left on Monday and should arrive by Thursday. I have added "
        "a note to the order so that the courier calls before delivery.",
    ),
    (
        "user",
        "Thanks. Also, our team wants to pull our order history into a spreadsheet. Is "
        "there an export, or an API we can call from a small Python script? We use pandas.",
    ),
    (
        "assistant",
        "There is a CSV export under Account > Orders > Export, and an orders API "
        "with a personal token from Account > Developer. The API returns JSON pages of 100 "
        "orders; pandas can read each page with json_normalize and concatenate them.",
    ),
    (
        "user",
        "Great. Could you show the request for one page with the requests library, and "
        "how to pass the token? Our IT people prefer headers over query strings for tokens.",
    ),
    (
        "assistant",
        "Yes: send it as 'Authorization: Bearer <token>' and ask for ?page=1, "
        "then follow the 'next' link each answer gives until it is missing.",
    ),
]
ANSWER = (
    "Here is a small script that reads every page and builds one table:\n\n"
    "```python\nimport os\n\nimport pandas as pd\nimport requests\n\n"
    "def orders(token: str) -> pd.DataFrame:\n"
    "    url = 'https://shop.example/api/orders?page=1'\n"
    "    pages = []\n"
    "    while url:\n"
    "        answer = requests.get(url, headers={'Authorization': f'Bearer {token}'}, timeout=10)\n"
    "        answer.raise_for_status()\n"
    "        body = answer.json()\n"
    "        pages.append(pd.json_normalize(body['orders']))\n"
    "        url = body.get('next')\n"
    "    return pd.concat(pages, ignore_index=True)\n\n"
    "table = orders(os.environ['SHOP_TOKEN'])\n"
    "```\n\nKeep the token in an environment variable rather than in the script."
)
PROFILES: dict[str, dict[str, Any]] = {
    "pass-through (baseline)": {},
    "input (sanitise, limits)": {"guard": {}},
    "+ injection flag": {"guard": {"injection": {"mode": "flag"}}},
    "+ pii redact (+ output report)": {"guard": {"pii": {"mode": "redact"}}},
    "+ code annotate": {"guard": {"code": {"mode": "annotate"}}},
    "+ code annotate, no bandit": {"guard": {"code": {"mode": "annotate", "bandit": False}}},
    "all on": {
        "guard": {
            "injection": {"mode": "flag"},
            "pii": {"mode": "redact"},
            "code": {"mode": "annotate"},
        }
    },
}


async def _terminal(call: Call) -> Reply:
    if call.stream:
        return Reply(model="m", provider="p", source=_chunks())
    body = completion_body(cid="c", model="m", text=ANSWER, finish_reason="stop",
                           usage=Usage(500, 200))  # fmt: skip
    return Reply.complete("p", Completion(body=body, usage=Usage(500, 200), model="m"))


async def _chunks() -> AsyncIterator[dict[str, Any]]:
    yield chunk(cid="c", model="m", role="assistant", content="")
    for start in range(0, len(ANSWER), 12):  # about three tokens a chunk
        yield chunk(cid="c", model="m", content=ANSWER[start : start + 12])
    yield chunk(cid="c", model="m", finish_reason="stop")
    yield chunk(cid="c", model="m", usage=Usage(500, 200))


class _Pass:
    async def __call__(self, call: Call, next: Next) -> Reply:
        return await next(call)


def _pipeline(profile: dict[str, Any]) -> Next:
    if "guard" not in profile:
        return compose([_Pass(), _Pass()], _terminal)
    settings = load_settings(models={"m": {"provider": "scripted"}}, agents={},
                             guard=profile["guard"])  # fmt: skip
    guards = Guards(settings)
    return compose([InputGuard(guards), OutputGuard(guards)], _terminal)


def _messages(i: int, fresh: bool) -> list[dict[str, Any]]:
    tag = f" (case {i})" if fresh else ""
    out = [{"role": "system", "content": SYSTEM}]
    out += [{"role": r, "content": t + tag} for r, t in HISTORY]
    out.append({"role": "user", "content": f"One more thing{tag or f' #{i}'}: send the "
                "invoice for the kettle to jane.doe@example.com, and tell me how to "
                "filter the table to last month's orders only."})  # fmt: skip
    return out


async def _round(pipeline: Next, requests: int, stream: bool, fresh: bool, base: int) -> float:
    started = time.process_time()
    for i in range(requests):
        call = Call(request_id="r", model="m", body={"messages": _messages(base + i, fresh)},
                    caller=Caller.anonymous(), stream=stream)  # fmt: skip
        reply = await pipeline(call)
        if stream:
            async for _ in reply.chunks():
                pass
    return (time.process_time() - started) / requests


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pipelines = {name: _pipeline(p) for name, p in PROFILES.items()}
    cases = [("complete, follow-up", False, False), ("stream, follow-up", True, False),
             ("complete, fresh", False, True)]  # fmt: skip
    print(f"{args.requests} requests a round, {args.rounds} rounds, median round; µs per request")
    print("| profile | " + " | ".join(c[0] for c in cases) + " |")
    print("|---|" + "---|" * len(cases))
    results: dict[tuple[str, str], list[float]] = {}
    base = 0
    for _ in range(args.rounds):
        for case, stream, fresh in cases:
            for name, pipeline in pipelines.items():
                base += args.requests
                spent = await _round(pipeline, args.requests, stream, fresh, base)
                results.setdefault((name, case), []).append(spent)
    for name in PROFILES:
        cells = []
        for case, _, _ in cases:
            median = statistics.median(results[(name, case)])
            baseline = statistics.median(results[("pass-through (baseline)", case)])
            shown = median * 1e6 if name.startswith("pass") else (median - baseline) * 1e6
            cells.append(f"{shown:,.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
