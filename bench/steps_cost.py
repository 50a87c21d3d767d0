"""CPU cost of the reasoning log's capture per chat call (masking, cutting, queueing):
``python bench/steps_cost.py``. The writer's queue is a list here; the store is not timed."""

from __future__ import annotations

import time
from typing import Any

from guarita.pipeline.steps import StepCapture
from guarita.settings_steps import StepSettings
from guarita.types import Call, Caller, Reply


class _Queue(list[dict[str, Any]]):
    def add(self, row: dict[str, Any]) -> None:
        self.append(row)


def main(n: int = 2000) -> None:
    capture = StepCapture(StepSettings(), _Queue())  # type: ignore[arg-type]
    plain = [{"role": "user", "content": "What is the capital of France? " * 4}]
    follow = [
        *plain,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "capital of France"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Paris is the capital. " * 20},
    ]
    reply = Reply(
        model="m",
        provider="p",
        finished=True,
        reasoning="Let me think. " * 40,
        tool_calls=[
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "x"}'},
            }
        ],
    )
    for label, messages, answer in (("plain chat", plain, Reply(model="m", provider="p")),
                                    ("4 steps", follow, reply)):  # fmt: skip
        call = Call(
            request_id="r",
            model="m",
            body={"messages": messages},
            caller=Caller(key_id=None, name="bench", tier="pro"),
        )
        start = time.process_time()
        for _ in range(n):
            capture.capture(call, answer)
        print(f"{label}: {(time.process_time() - start) / n * 1e6:.1f} µs CPU per call")


if __name__ == "__main__":
    main()
