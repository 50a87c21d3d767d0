"""What PII scanning and redaction cost per chat message.

Builds a few thousand synthetic but realistic chat messages (50-2000 characters of prose,
code, logs and numbers that are not PII — dates, prices, versions, order numbers — with a
fifth of them carrying an email, phone, card, IBAN, CPF, IP or key), then times
``PiiScanner.scan`` and ``Redactor.redact`` on each one. Reports the calling process's CPU
time per message (``time.process_time_ns``: what the gateway pays), p50/p95/p99 and mean,
for all messages and for those with and without PII.

    .venv/bin/python bench/guard_pii.py [--messages 3000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from guarita.guard.pii import PiiScanner, Redactor

WORDS = (  # noqa: SIM905 - a sentence reads better than 70 quoted words
    "the a to of and in is it you that for on with as this be are not can have please "
    "could would should agent order invoice refund shipping account password reset login "
    "error deploy server database query python function return value list table report "
    "meeting tomorrow customer support ticket status update thanks hello issue version "
    "build release branch commit review latency budget model prompt token cache request"
).split()

NOISE = [
    "2026-12-01T10:20:30Z",
    "on 12/01/2026 at 10:20",
    "$1,299.99",
    "R$ 4.111,11",
    "version 3.11.4",
    "Order #4111111111111112",
    "ticket 48213",
    "1733050000000",
    "550e8400-e29b-41d4-a716-446655440000",
    "commit 4f1c2a3b9d8e7f6a5b4c3d2e1f0a9b8c",
    "HTTP 502 after 1500 ms",
    "port 8080",
    "3 items",
    "tracking 1Z999AA10123456784",
    "10:20:30",
    "x = [1, 2, 3]",
]

PII = [
    "john.doe@example.com",
    "+1 650-253-0000",
    "(415) 555-2671",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "DE89 3704 0044 0532 0130 00",
    "CPF 123.456.789-09",
    "12.345.678/0001-95",
    "536-22-1234",
    "8.8.8.8",
    "2001:db8::1",
    "sk-proj-a1B2c3D4e5a1B2c3D4e5a1B2c3D4e5",
    "AKIAIOSFODNN7EXAMPLE",
]

CODE = """def total(items):
    return sum(i.price * i.qty for i in items)  # see #1234
"""


def message(rng: random.Random, with_pii: bool) -> str:
    size = int(min(2000, max(50, rng.lognormvariate(5.6, 0.8))))
    parts: list[str] = []
    length = 0
    while length < size:
        roll = rng.random()
        if roll < 0.08:
            piece = rng.choice(NOISE)
        elif roll < 0.1:
            piece = CODE
        else:
            piece = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + rng.choice(".,?!")
        parts.append(piece)
        length += len(piece) + 1
    if with_pii:
        for _ in range(rng.randint(1, 3)):
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(PII))
    return " ".join(parts)


def cpu_us(work: Callable[[str], object], texts: list[str]) -> list[float]:
    """CPU µs of ``work`` on each text, after one warm-up pass."""
    for text in texts[:200]:
        work(text)
    times: list[float] = []
    for text in texts:
        start = time.process_time_ns()
        work(text)
        times.append((time.process_time_ns() - start) / 1000)
    return times


def row(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=100)
    mean = statistics.fmean(times)
    return f"{name:<22}{len(times):>7}{q[49]:>9.1f}{q[94]:>9.1f}{q[98]:>9.1f}{mean:>9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    flags = [rng.random() < 0.2 for _ in range(args.messages)]
    texts = [message(rng, flag) for flag in flags]
    scanner = PiiScanner()
    found = sum(1 for text in texts if scanner.scan(text))
    chars = statistics.fmean(len(t) for t in texts)
    print(f"{len(texts)} messages, mean {chars:.0f} chars, {sum(flags)} with planted PII, ")
    print(f"{found} with at least one finding\n")
    print(f"{'CPU µs per message':<22}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}")
    scans = cpu_us(scanner.scan, texts)
    redacts = cpu_us(lambda text: Redactor(scanner).redact(text), texts)
    for name, times in (("scan", scans), ("redact", redacts)):
        print(row(f"{name} (all)", times))
        print(row(f"{name} (no PII)", [t for t, f in zip(times, flags, strict=True) if not f]))
        print(row(f"{name} (with PII)", [t for t, f in zip(times, flags, strict=True) if f]))


if __name__ == "__main__":
    main()
