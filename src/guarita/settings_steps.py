"""Settings of the reasoning log (docs/observability.md): what is captured of each chat
call's reasoning and tool steps, how long a step may be, and how long steps are kept."""

from __future__ import annotations

from pydantic import Field

from guarita.settings_base import Strict as _Strict


class StepSettings(_Strict):
    enabled: bool = True
    reasoning: bool = Field(
        default=True, description="Keep the answer's reasoning (reasoning_content, thinking)."
    )
    tools: bool = Field(
        default=True,
        description="Keep tool calls (the answer's, and the request's since its last user "
        "message) and tool results.",
    )
    max_chars: int = Field(
        default=8000, ge=100, le=1_000_000,
        description="A step's stored text is cut to this many characters (marked truncated).",
    )  # fmt: skip
    retention_days: float = Field(
        default=30, gt=0, description="Steps older than this are deleted by the purge."
    )
    purge_interval_s: float = Field(
        default=3600, gt=0, description="How often each API process runs the purge."
    )
