"""CPU cost on the request's path of the behaviour metrics and drift sampling.

    .venv/bin/python bench/behaviour_cost.py [--calls 20000]

Times, per finished chat answer, what the two stages' finish hooks do on the event loop:
:meth:`Behaviour.observe` (length, refusal pattern, confidence from 32 logprobs, the
metrics) and :class:`DriftSampling`'s hook at ``sample_rate`` 1 (a draw, the last user
message, a list append; embedding happens later, off the path). Medians of 5 runs, in
process CPU time (so that other processes on the machine do not count).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from guarita.ops.drift_service import DriftSampling  # noqa: E402
from guarita.pipeline.behaviour import Behaviour  # noqa: E402
from guarita.settings_drift import DriftSettings  # noqa: E402
from guarita.telemetry.metrics import Metrics  # noqa: E402
from guarita.types import Call, Caller, Completion, Reply, Usage  # noqa: E402

TEXT = "The capital of France is Paris, a city on the Seine known for its museums. " * 3


def reply() -> Reply:
    logprobs = [{"token": "x", "logprob": math.log(0.8)}] * 32
    body = {"choices": [{"message": {"content": TEXT}, "logprobs": {"content": logprobs},
                         "finish_reason": "stop"}]}  # fmt: skip
    return Reply.complete("bench", Completion(body=body, usage=Usage(10, 32), model="m"))


def per_call_us(run: object, calls: int) -> float:
    times = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            run()  # type: ignore[operator]
        times.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    messages = [{"role": "user", "content": "Tell me about Paris."}]
    call = Call(request_id="b", model="m", agent="a", caller=Caller.anonymous(),
                body={"messages": messages})  # fmt: skip
    done = reply()
    behaviour = Behaviour(Metrics())
    sink: list[object] = []
    sampling = DriftSampling(DriftSettings(enabled=True, sample_rate=1.0), ["a"], sink.extend)
    observe = per_call_us(lambda: behaviour.observe(call, done, None), args.calls)
    sample = per_call_us(lambda: sampling._sample(call, done, None), args.calls)
    print(f"Behaviour.observe: {observe:.2f} us a call; drift sampling hook (rate 1): "
          f"{sample:.2f} us a call")  # fmt: skip


if __name__ == "__main__":
    main()
