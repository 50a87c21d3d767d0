"""Prompt compression on a sample of support conversations: what it saves, and that the
prompts keep their meaning.

Runs 20 realistic prompts (support questions with filler, pasted code and quotes, some
with long histories) through ``compress`` with an agent's typical settings (filler
removal on, a history budget of 400 tokens), prints each one's estimated tokens before
and after and its compressed user turns, and checks on every kept message what must not
change: negations ("not", "never", "n't", ...), numbers, code blocks and quoted text, the
system prompt and the last user message. Then it times ``compress`` and the complexity
scorer, and the two pipeline stages, per call (CPU time of this process). No model is
called.

    .venv/bin/python bench/compression_sample.py [--budget 400] [--full] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from typing import Any

from guarita.settings import CompressionSettings, RoutingSettings
from guarita.traffic.complexity import ComplexityRouting, score
from guarita.traffic.compression import PromptCompression, compress
from guarita.types import Call, Caller, Completion, Reply, Usage

SYSTEM = {
    "role": "system",
    "content": "You are the support assistant of Acme Cloud. Answer briefly, cite the help "
    "centre when you can, and never promise refunds the policy does not allow.",
}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def history(topic: str, turns: int) -> list[dict[str, str]]:
    """An earlier conversation of ``turns`` exchanges, as a session would hold it."""
    out = []
    for i in range(turns):
        out.append(
            user(
                f"Hi again,  I was just wondering about {topic}, basically part {i}. "
                "Could you please kindly check it for me?   Thanks in advance!"
            )
        )
        out.append(
            assistant(
                f"Sure. For {topic} (part {i}) the status is unchanged: it is "
                "queued and should complete within 24 hours."
            )
        )
    return out


SAMPLES: list[list[dict[str, Any]]] = [
    [SYSTEM, user("Hi, I was wondering if you could please tell me how to reset my password?")],
    [
        SYSTEM,
        user(
            "Please   kindly   cancel my subscription.   I do not want to be charged "
            "again next month.\n\n\n\nThanks in advance!"
        ),
    ],
    [
        SYSTEM,
        user(
            "I was charged twice for invoice #4821 ($49.00 each). I basically just want "
            "one of them refunded, not both. Could you please check?"
        ),
    ],
    [
        SYSTEM,
        user(
            "Hello,\n\nMy deploy fails with this error:\n\n```\nError: ENOENT: no such "
            "file or directory, open '/app/config.json'\n    at Object.openSync "
            "(node:fs:601:3)\n```\n\nI didn't change anything, I just pushed again. "
            "Please help!"
        ),
    ],
    [
        SYSTEM,
        *history("my data export", 8),
        user("It's still not done. Why is the export of project 'atlas-prod' taking so long?"),
    ],
    [
        SYSTEM,
        user(
            "If it's not too much trouble, could you explain the difference between the "
            "Team and Business plans? I'm not sure which one we need for 12 seats."
        ),
    ],
    [
        SYSTEM,
        user(
            'The dashboard says "Your trial has basically ended" but I just started it '
            "2 days ago. Is that actually right?"
        ),
    ],
    [
        SYSTEM,
        *history("the SSO setup", 12),
        user("We never received the SAML metadata email. Please resend it to admin@example.com."),
    ],
    [
        SYSTEM,
        user(
            "I was wondering whether you could increase our API rate limit from 600 to "
            "1,200 requests per minute? We don't want to hit 429s during the launch."
        ),
    ],
    [
        SYSTEM,
        user(
            "Kindly   note   that our billing address changed to:\n\n    Rua Augusta 12\n"
            "    1100-053 Lisboa\n\nPlease update it on all future invoices."
        ),
    ],
    [
        SYSTEM,
        *history("a failed payment", 5),
        user(
            "The card ending 4242 was declined again. It is not expired and has enough funds. "
            "What else could it be?"
        ),
    ],
    [
        SYSTEM,
        user(
            "Basically, when I run `acme deploy --region eu-west-1` it just hangs. Is "
            "there a way to see verbose logs?"
        ),
    ],
    [
        SYSTEM,
        user(
            "Hope this makes sense:   we need to move 3 projects from the old org to the "
            "new one without downtime. Can you actually do that for us, or do we have to "
            "do it ourselves?"
        ),
    ],
    [
        SYSTEM,
        *history("the GDPR deletion request", 10),
        user(
            "To be honest, I was expecting this to be done within 30 days as your policy says. "
            "It has been 41 days. Please escalate."
        ),
    ],
    [
        SYSTEM,
        user(
            "Could you please just confirm that backups are kept for 35 days and not 7? "
            "The docs page https://acme.example/docs/backups?just=1 says 35."
        ),
    ],
    [
        SYSTEM,
        user(
            "Our CI job is failing:\n```yaml\nsteps:\n  - run: acme login --token  $TOKEN"
            "\n  - run: acme deploy\n```\nIt says 'token invalid' but the token is just a "
            "day old. Why?"
        ),
    ],
    [
        SYSTEM,
        *history("the invoice in the wrong currency", 6),
        user("Thanks. So just to confirm, the next invoice will be in EUR, not USD?"),
    ],
    [
        SYSTEM,
        user(
            "i was wondering if you could pls help me, i cant log in since the update, "
            "it just says 'session expired' every time. i never had this before."
        ),
    ],
    [
        SYSTEM,
        user(
            "Needless to say, we are not happy: the outage on 2024-03-14 lasted 3 hours "
            "and we lost orders. Would you be so kind as to send the incident report?"
        ),
    ],
    [
        SYSTEM,
        *history("the storage quota", 15),
        user("OK. Please   increase the quota to 2 TB and tell me the new monthly price."),
    ],
]

_NEGATION = re.compile(r"\b(?:not|no|never|nor|without|cannot)\b|n['\u2019]t\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)
_QUOTED = re.compile(r"\"[^\"\n]*\"|(?<![\w'])'[^'\n]+'(?![\w'])")


def meaning_kept(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed that must not: negations, numbers, code, quoted text."""
    a, b = str(before["content"]), str(after["content"])
    problems = []
    for name, pattern in (
        ("negations", _NEGATION),
        ("numbers", _NUMBER),
        ("code", _CODE),
        ("quotes", _QUOTED),
    ):
        found_a = Counter(m.lower() for m in pattern.findall(a))
        found_b = Counter(m.lower() for m in pattern.findall(b))
        if name == "code":  # whitespace aside, code must be byte for byte the same
            found_a, found_b = Counter(pattern.findall(a)), Counter(pattern.findall(b))
        if found_a != found_b:
            problems.append(f"{name}: {sorted(found_a.elements())} -> {sorted(found_b.elements())}")
    return problems


def report(budget: int, full: bool) -> tuple[int, int, int]:
    total_before = total_after = failures = 0
    for n, messages in enumerate(SAMPLES, 1):
        result = compress(messages, budget)
        total_before += result.tokens_before
        total_after += result.tokens_after
        share = result.tokens_saved / result.tokens_before
        print(
            f"\n#{n:<2} {len(messages):>2} messages, {result.tokens_before:>4} -> "
            f"{result.tokens_after:>4} tokens ({share:>4.0%} saved, "
            f"{result.dropped} old messages dropped)"
        )
        kept = result.messages
        assert kept[0] == messages[0], "the system prompt changed"
        # the system prompt first, then a suffix of the conversation (oldest turns dropped)
        by_position = {len(messages) - len(kept) + i: m for i, m in enumerate(kept) if i}
        for index, after in by_position.items():
            before = messages[index]
            problems = meaning_kept(before, after)
            failures += bool(problems)
            for problem in problems:
                print(f"    MEANING CHANGED in message {index}: {problem}")
            if (full or index == len(messages) - 1) and before["role"] == "user":
                print(f"    before: {before['content']!r}")
                print(f"    after:  {after['content']!r}")
    return total_before, total_after, failures


def cpu_us(func: Any, repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        func()
    return (time.process_time() - start) / repeat * 1e6


async def stage_us(stage: Any, messages: list[dict[str, Any]], repeat: int) -> float:
    """CPU per call of ``stage`` in front of an instant answer, the harness's own cost (a
    ``Call`` built, the answer awaited) taken off."""

    async def answer(call: Call) -> Reply:
        return Reply.complete("p", Completion(body={}, usage=Usage(1, 1), model=call.model))

    async def bare(call: Call, next: Any) -> Reply:
        return await next(call)  # type: ignore[no-any-return]

    async def run(stage: Any) -> float:
        start = time.process_time()
        for _ in range(repeat):
            call = Call(
                request_id="r",
                model="m",
                body={"messages": list(messages)},
                caller=Caller.anonymous(),
                agent="support",
            )
            await stage(call, answer)
        return (time.process_time() - start) / repeat * 1e6

    return await run(stage) - await run(bare)


def timings(budget: int, repeat: int) -> None:
    short, longest = SAMPLES[0], max(SAMPLES, key=len)
    routing = RoutingSettings(simple="s", medium="m", complex="c")
    stages = {
        "PromptCompression stage": PromptCompression(
            {"support": CompressionSettings(history_budget_tokens=budget)}
        ),
        "ComplexityRouting stage": ComplexityRouting({"support": routing}),
        "either, agent without it": ComplexityRouting({}),
    }
    print(f"\nCPU per call (µs, mean of {repeat}):")
    print(f"  {'':26} {'1 turn':>8} {f'{len(longest)} messages':>13} {'mean of 20':>11}")
    rows = {
        "compress": lambda m: compress(m, budget),
        "compress, filler kept": lambda m: compress(m, budget, filler=None),
        "score": score,
    }
    for name, func in rows.items():
        one = cpu_us(lambda f=func: f(short), repeat)
        many = cpu_us(lambda f=func: f(longest), repeat)
        every = cpu_us(lambda f=func: [f(m) for m in SAMPLES], max(1, repeat // 20)) / 20
        print(f"  {name:26} {one:8.1f} {many:13.1f} {every:11.1f}")
    for name, stage in stages.items():
        one = asyncio.run(stage_us(stage, short, repeat))
        many = asyncio.run(stage_us(stage, longest, repeat))
        print(f"  {name:26} {one:8.1f} {many:13.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=400, help="history_budget_tokens")
    parser.add_argument("--full", action="store_true", help="print every compressed user turn")
    parser.add_argument("--repeat", type=int, default=2000, help="calls per timing")
    args = parser.parse_args()
    before, after, failures = report(args.budget, args.full)
    print(
        f"\nTotal: {before} -> {after} estimated prompt tokens: {before - after} saved "
        f"({(before - after) / before:.1%}); meaning checks failed on {failures} "
        f"message(s)"
    )
    edited = sum(compress(m).tokens_after for m in SAMPLES)
    print(
        f"Of which whitespace and filler alone (no history budget): {before - edited} "
        f"tokens ({(before - edited) / before:.1%}); the rest is old turns over the budget"
    )
    timings(args.budget, args.repeat)


if __name__ == "__main__":
    main()
