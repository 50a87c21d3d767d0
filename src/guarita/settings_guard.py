"""Settings of the guard stages (docs/guard.md): input, injection, PII, generated code."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guarita.settings_base import Strict as _Strict


class InputGuardSettings(_Strict):
    """What every chat message goes through first: cheap, always on."""

    max_message_chars: int = Field(
        default=10_000, gt=0, description="Longest message content; longer is a 400."
    )
    max_messages: int = Field(default=256, gt=0, description="Messages per request; more is a 400.")
    normalization: Literal["NFC", "NFKC", "off"] = Field(
        default="NFC",
        description="Unicode normal form of message text (NFKC also folds look-alike forms).",
    )
    strip_invisible: bool = Field(
        default=True,
        description="Remove bidirectional overrides, zero-width and tag characters (hidden "
        "text); control characters other than newline and tab are always removed.",
    )


class InjectionGuardSettings(_Strict):
    mode: Literal["block", "flag", "off"] = Field(
        default="off",
        description="block: 400 prompt_injection_detected; flag: answer, record and header.",
    )
    threshold: float | None = Field(
        default=None, gt=0, le=1, description="Default: the detector's calibrated one."
    )
    roles: tuple[Literal["user", "tool", "system", "assistant"], ...] = Field(
        default=("user", "tool"), description="Message roles scanned."
    )


PiiKindName = Literal[
    "email", "phone", "card", "iban", "cpf", "cnpj", "ssn", "ipv4", "ipv6", "secret"
]


class PiiGuardSettings(_Strict):
    mode: Literal["redact", "block", "off"] = Field(
        default="off",
        description="redact: placeholders to the provider, values restored in the answer; "
        "block: 400 pii_detected.",
    )
    kinds: tuple[PiiKindName, ...] | None = Field(default=None, description="Default: every kind.")
    phone_region: str | None = Field(
        default="US", description="How phone numbers without a +country code are read."
    )
    output: Literal["report", "mask", "off"] = Field(
        default="report",
        description="Personal data the model itself wrote in its answer: report (kinds in "
        "the record), mask (replaced by [KIND] before the caller sees it) or off.",
    )


class CodeGuardSettings(_Strict):
    mode: Literal["annotate", "block", "review", "off"] = Field(
        default="off",
        description="annotate: x-guarita-code-risk header and the record; block: the answer "
        "is cut (finish_reason content_filter) at block_at; review: recorded for review.",
    )
    block_at: float = Field(default=0.8, gt=0, le=1)
    review_at: float = Field(default=0.5, gt=0, le=1)
    bandit: bool = Field(
        default=True,
        description="Python blocks also go through bandit (TLS, XML, Flask debug, tar and "
        "template checks over the own AST checks): about 1.3 ms more per block.",
    )


class GuardSettings(_Strict):
    """Guardrails for every call; an agent's ``guard`` overrides any part of it."""

    input: InputGuardSettings = InputGuardSettings()
    injection: InjectionGuardSettings = InjectionGuardSettings()
    pii: PiiGuardSettings = PiiGuardSettings()
    code: CodeGuardSettings = CodeGuardSettings()


class AgentGuardSettings(_Strict):
    """An agent's own guard settings; an unset part is the global ``guard``'s."""

    input: InputGuardSettings | None = None
    injection: InjectionGuardSettings | None = None
    pii: PiiGuardSettings | None = None
    code: CodeGuardSettings | None = None
