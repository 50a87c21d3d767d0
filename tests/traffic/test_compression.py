"""Prompt compression: whitespace, filler (never in code, quotes or negations), history
trimmed to a budget, tokens saved; the stage end to end through a Runtime and its store."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guarita.agents import estimate_tokens
from guarita.runtime import Runtime
from guarita.settings import CompressionSettings, load_settings
from guarita.traffic.compression import (
    DEFAULT_FILLER,
    FILLER_PHRASES,
    Filler,
    PromptCompression,
    collapse_whitespace,
    compress,
)
from guarita.types import Call, Caller, Completion, Reply, Usage
from tests.helpers import query

SYSTEM = {"role": "system", "content": "You answer support questions for Acme."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# -- whitespace -------------------------------------------------------------------------


def test_runs_of_whitespace_collapse_but_code_blocks_keep_theirs() -> None:
    code = "```python\ndef f(x):\n\n\n    return  x   # aligned\n```"
    text = f"  My   script\tfails:  \n\n\n\n{code}\n\n\n\nWhat   now?  "
    assert collapse_whitespace(text) == f"My script fails:\n\n{code}\n\nWhat now?"


def test_indented_lines_inline_code_and_unclosed_fences_are_kept() -> None:
    text = "Run `ls   -la`  here:\n    x  =  1\n\tnested   item\n~~~\nraw   tail"
    assert collapse_whitespace(text) == (
        "Run `ls   -la` here:\n    x  =  1\n\tnested   item\n~~~\nraw   tail"
    )


# -- filler -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("Please help me reset my password.", "Help me reset my password."),
        ("Hi, I was wondering if you could tell me my balance?", "Hi, tell me my balance?"),
        ("Basically, the app crashes on start.", "The app crashes on start."),
        ("It is, basically, broken.", "It is broken."),
        ("Could you kindly send the invoice, please?", "Could you send the invoice?"),
        ("I need help please, my card is blocked", "I need help, my card is blocked"),
        ("I just want a refund. Thanks in advance!", "I want a refund."),
        ("Is it actually free?", "Is it free?"),
        ("Hope this makes sense: we need 3 seats.", "We need 3 seats."),
        ("\u0130stanbul office: please send it.", "\u0130stanbul office: send it."),  # lower()
    ],
)
def test_filler_is_removed(before: str, after: str) -> None:
    assert DEFAULT_FILLER.remove(before) == after


@pytest.mark.parametrize(
    "kept",
    [
        "This is not just a billing issue.",  # "not just": part of what is negated
        "I don't actually want to cancel.",
        "I never just delete accounts.",
        "It is not basically the same.",
        "I logged in just now.",  # 'just' meaning 'recently', 'only', 'exactly'
        "It costs just 5 dollars.",
        "It was just about to ship.",
        "We fight for a just cause.",
        "Some customers are hard to please.",  # the verb
        "Treat them kindly.",  # the manner adverb
    ],
)
def test_meaning_words_are_kept(kept: str) -> None:
    assert DEFAULT_FILLER.remove(kept) == kept


def test_no_filler_phrase_holds_a_negation() -> None:
    """So that compression never changes how many 'not's a prompt has."""
    for phrase in FILLER_PHRASES:
        assert not set(phrase.replace("'", " ").split()) & {"not", "no", "never", "t", "nor"}


def test_filler_inside_code_quotes_and_urls_stays() -> None:
    text = (
        "The error says \"please just retry\" and the docs say 'just wait'.\n"
        "> please just do it\n"
        "Run `just build` or see https://example.com/please/just-help and plz@example.com.\n"
        "```\nplease just\n```"
    )
    assert DEFAULT_FILLER.remove(text) == text


def test_a_message_that_is_only_filler_is_kept() -> None:
    assert DEFAULT_FILLER.remove("Thanks in advance!") == "Thanks in advance!"
    assert DEFAULT_FILLER.remove("please") == "please"


def test_a_filler_list_of_ones_own() -> None:
    mine = Filler(["as per my last email"])
    assert mine.remove("As per my last email, the invoice is wrong.") == "The invoice is wrong."
    assert mine.remove("Please check.") == "Please check."


def test_filler_goes_from_user_turns_only() -> None:
    messages = [
        {"role": "system", "content": "Please   answer politely."},
        assistant("I can basically help."),
        user("Please  just check my order."),
    ]
    result = compress(messages)
    assert [m["content"] for m in result.messages] == [
        "Please answer politely.",
        "I can basically help.",
        "Check my order.",
    ]
    assert compress(messages, filler=None).messages[2]["content"] == "Please just check my order."


# -- history ----------------------------------------------------------------------------


def conversation(turns: int, size: int = 200) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        messages += [user(f"question {i} " + "x" * size), assistant(f"answer {i} " + "y" * size)]
    return [*messages, user("And my last question?")]


def tokens(messages: list[dict[str, Any]]) -> int:
    return sum(estimate_tokens(str(m["content"])) for m in messages)


def test_history_is_trimmed_to_the_budget_keeping_the_system_and_latest_turns() -> None:
    messages = conversation(10)
    result = compress(messages, 300)
    kept = result.messages
    assert kept[0] == SYSTEM and kept[-1] == messages[-1]
    assert tokens(kept) <= 300 and result.tokens_after == tokens(kept)
    assert kept[1:-1] == messages[-1 - len(kept[1:-1]) : -1]  # the newest, in order
    assert kept[1]["role"] == "user" and result.dropped == len(messages) - len(kept)


def test_a_budget_below_the_essentials_keeps_them() -> None:
    messages = conversation(3)
    assert compress(messages, 1).messages == [SYSTEM, messages[-1]]


def test_no_budget_keeps_every_turn_and_so_does_one_that_fits() -> None:
    messages = conversation(3)
    assert compress(messages).messages == messages
    assert compress(messages, 10_000).messages == messages


def test_the_kept_history_starts_with_a_user_turn_and_tool_results_keep_their_call() -> None:
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "t1", "type": "function",
                            "function": {"name": "order", "arguments": "{}"}}]}  # fmt: skip
    messages = [
        SYSTEM,
        user("old " + "x" * 400),
        call,
        {"role": "tool", "tool_call_id": "t1", "content": "shipped " + "z" * 80},
        assistant("It shipped."),
        user("Where is it now?"),
        assistant("In transit."),
        user("When will it arrive?"),
    ]
    kept = compress(messages, tokens(messages) - 50).messages
    assert kept == [SYSTEM, *messages[5:]]  # not a tool result or an answer without its ask


def test_tokens_saved_are_the_estimate_before_minus_after() -> None:
    messages = [SYSTEM, user("Hi,   I was wondering if you could please check my order.")]
    result = compress(messages)
    assert result.messages[1]["content"] == "Hi, check my order."
    assert result.tokens_before == tokens(messages)
    assert result.tokens_saved == tokens(messages) - tokens(result.messages) > 0


def test_the_input_is_left_unchanged_and_content_parts_are_compressed() -> None:
    messages = [user("x"), {"role": "user", "content": [
        {"type": "text", "text": "Please   look at this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]  # fmt: skip
    original = copy.deepcopy(messages)
    result = compress(messages)
    assert messages == original
    assert result.messages[1]["content"][0] == {"type": "text", "text": "Look at this"}
    assert result.messages[1]["content"][1] == original[1]["content"][1]


# -- the stage --------------------------------------------------------------------------


def chat_call(
    messages: list[dict[str, Any]], agent: str | None = "support", request_id: str = "c-1"
) -> Call:
    return Call(request_id=request_id, model="m", body={"messages": messages},
                caller=Caller.anonymous(), agent=agent)  # fmt: skip


async def answer(call: Call) -> Reply:
    return Reply.complete("p", Completion(body={}, usage=Usage(1, 1), model=call.model))


async def test_agents_without_compression_are_untouched() -> None:
    saved: list[tuple[str, int]] = []
    stage = PromptCompression(
        {"support": CompressionSettings(), "paused": CompressionSettings(enabled=False)},
        on_saved=lambda agent, n: saved.append((agent, n)),
    )
    messages = [user("Please   just   check.")]
    for agent in ("other", "paused", None):
        call = chat_call(list(messages), agent)
        await stage(call, answer)
        assert call.messages == messages and call.record.tokens_saved == 0
    call = chat_call(list(messages))
    await stage(call, answer)
    assert call.messages == [user("Check.")]
    assert saved == [("support", call.record.tokens_saved)]


async def test_a_long_prompt_is_compressed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[Callable[..., Any]] = []
    real = asyncio.to_thread

    async def to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        threads.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    stage = PromptCompression({"support": CompressionSettings()})
    text = "Please  check. " * 2000
    call = chat_call([user(text)])
    await stage(call, answer)
    assert threads == [compress]
    assert call.messages == compress([user(text)]).messages


async def test_the_stage_end_to_end_counts_and_records_the_saving(
    tmp_path: Path, store_url: str
) -> None:
    """Through a real Runtime: the provider gets the compressed prompt (the scripted one
    echoes it), the metric counts the saving and the stored record holds it."""
    settings = load_settings(
        data_dir=tmp_path,
        store={"url": store_url},
        models={"m": {"provider": "scripted"}},
        agents={
            "support": {
                "model": "m",
                "system_prompt": "You answer support questions.",
                "compression": {"history_budget_tokens": 120},
            },
            "plain": {"model": "m"},
        },
        default_agent="support",
    )
    runtime = Runtime(settings)
    await runtime.start()
    history = [user("old question " + "x" * 300), assistant("old answer " + "y" * 300)]
    last = user("Hi,   I was wondering if you could please tell me where my order is?")
    try:
        reply = await runtime.agents.chat(
            str(last["content"]), caller=Caller.anonymous(), request_id="compressed"
        )
        direct = chat_call([SYSTEM, *history, last])
        await runtime.pipeline(direct)
        plain = chat_call([SYSTEM, last], agent="plain", request_id="plain")
        await runtime.pipeline(plain)
    finally:
        await runtime.aclose()
    assert reply.response == "echo: Hi, tell me where my order is?"
    assert direct.messages == [SYSTEM, user("Hi, tell me where my order is?")]  # history gone
    in_chat = estimate_tokens(str(last["content"])) - estimate_tokens(reply.response[6:])
    assert in_chat == 10 and direct.record.tokens_saved == in_chat + tokens(history)
    saved = runtime.metrics.registry.get_sample_value(
        "guarita_tokens_saved_total", {"agent_name": "support"}
    )
    assert saved == in_chat + direct.record.tokens_saved
    rows = await query(store_url, "SELECT request_id, tokens_saved FROM requests")
    assert {r["request_id"]: r["tokens_saved"] for r in rows} == {
        "compressed": in_chat,
        "c-1": direct.record.tokens_saved,
        "plain": 0,
    }
