"""Rate limits: requests and tokens per minute and day, concurrent requests, the largest
``max_tokens`` and the models a tier (or one key) may use, and a per-address limit.

The ``RateLimits`` stage runs right inside Recording, so every refusal is recorded. A call
reserves what it may use on every counter that applies at once, all or none, through the
shared state (Redis in scale-out mode, so N processes admit exactly what one would): one
request on the request counters, its estimated tokens (prompt estimate + ``max_tokens``)
on the token counter, one slot on the concurrency counter. When the answer (or stream)
ends the reservation is settled with what was really used; a process killed meanwhile
leaks nothing, its holds expire. The counters' state after admission becomes OpenAI's
``x-ratelimit-*`` headers on the answer; a refusal is a 429 ``rate_limit_exceeded`` with
``Retry-After`` and the same headers.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog

from guarita.errors import (
    BudgetExceeded,
    InvalidRequest,
    ModelNotAllowed,
    RateLimited,
    RateLimitExceeded,
    ServiceUnavailable,
)
from guarita.pipeline import Next
from guarita.settings import BudgetSettings, LimitSettings, TierLimits
from guarita.state import (
    MAX_AMOUNT,
    UNITS_PER_ONE,
    Admission,
    Limit,
    Reservations,
    check_amount,
    to_units,
)
from guarita.telemetry.prices import FREE, Price
from guarita.traffic.alerts import BudgetAlerts
from guarita.traffic.economy import EconomyMode
from guarita.types import Call, Reply, Usage

log = structlog.get_logger("guarita.limits")

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_SUBMISSION_HOLD_S = 30.0
"""A task's submission settles at once; its hold only covers that moment."""


def estimate_prompt_tokens(call: Call) -> int:
    """A cheap upper-leaning estimate of the prompt (about 4 characters a token)."""
    if call.operation == "embeddings":
        return sum(len(text) // _CHARS_PER_TOKEN + 1 for text in call.inputs)
    total = 0
    for message in call.messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        total += len(str(content or "")) // _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE
    return total


def apply_max_tokens(call: Call, cap: int | None) -> int:
    """The call's ``max_tokens`` under the tier's cap. A caller asking for more gets a 400
    naming the field; otherwise the answer's room is capped (an agent's own
    ``max_tokens`` included) and the cap applies when none is set. Returns the room."""
    if call.operation != "chat":
        return 0
    body = call.body
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    current = body.get(field)
    if cap is None:
        return current if isinstance(current, int) else 0
    asked = call.requested_max_tokens
    if asked is not None and asked > cap:
        raise InvalidRequest(
            f"{field} is {asked}, above this key's limit of {cap} tokens per request",
            param=field,
            code="max_tokens_exceeded",
        )
    room = min(current, cap) if isinstance(current, int) else cap
    body[field] = room
    return room


@dataclass(frozen=True, slots=True)
class Plan:
    """What one call reserves: its limits, and which counter is which header."""

    limits: tuple[Limit, ...]
    requests: Limit | None
    tokens: Limit | None
    spend: tuple[Limit, ...] = ()
    """Budgets in USD, holding the call's maximum cost; settled with its real cost."""
    requests_at: int | None = None
    """Where ``requests`` and ``tokens`` are in ``limits`` (their counters in an answer)."""
    tokens_at: int | None = None
    spend_counters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.requests is not None and self.requests_at is None:
            object.__setattr__(self, "requests_at", self.limits.index(self.requests))
        if self.tokens is not None and self.tokens_at is None:
            object.__setattr__(self, "tokens_at", self.limits.index(self.tokens))
        if self.spend and not self.spend_counters:
            object.__setattr__(self, "spend_counters", tuple(s.counter for s in self.spend))

    def with_spend(self, spend: Sequence[Limit]) -> Plan:
        return Plan((*self.limits, *spend), self.requests, self.tokens, tuple(spend))


def budget_limits(
    call: Call, limits: TierLimits, budgets: BudgetSettings, max_cost: float,
    lenient: Collection[str] = (),
) -> list[Limit]:  # fmt: skip
    """The spend budgets a call must fit in: its key's (daily, monthly), its agent's and the
    total. Each counter holds the call's maximum cost until it is settled. The budgets of
    ``lenient`` scopes (in economy mode, or lifted) count without refusing."""
    scoped: list[tuple[str, float | None, float | None]] = []
    if call.caller.key_id is not None:
        scoped.append(
            (f"{{key:{call.caller.key_id}}}", limits.daily_budget_usd, limits.monthly_budget_usd)
        )
    agent = budgets.agents.get(call.agent or "")
    if agent is not None:
        scoped.append((f"{{agent:{call.agent}}}", agent.daily_usd, agent.monthly_usd))
    scoped.append(("{total}", budgets.total.daily_usd, budgets.total.monthly_usd))
    chosen = []
    for tag, daily, monthly in scoped:
        counts_only = tag.strip("{}") in lenient
        if daily is not None:
            cap = None if counts_only else daily
            chosen.append(Limit(f"{tag}:usd-day", cap, "day", amount=max_cost))
        if monthly is not None:
            cap = None if counts_only else monthly
            chosen.append(Limit(f"{tag}:usd-month", cap, "month", amount=max_cost))
    return chosen


def scaled(limits: TierLimits, factor: float) -> TierLimits:
    """Request, token and concurrency limits times ``factor`` (economy mode), at least 1."""
    fields = ("requests_per_minute", "requests_per_day", "tokens_per_minute",
              "concurrent_requests")  # fmt: skip
    changes = {
        name: max(1, int(value * factor))
        for name in fields
        if (value := getattr(limits, name)) is not None
    }
    return limits.model_copy(update=changes) if changes else limits


def plan_for(
    call: Call, limits: TierLimits, *, per_ip: int | None, ip_endpoints: Sequence[str],
    tokens: int,
) -> Plan:  # fmt: skip
    """The counters a call must fit in (hash-tagged by key, so a Redis Cluster keeps a
    key's counters together)."""
    key = call.caller.key_id
    chosen: list[Limit] = []
    requests = token_limit = None
    if key is not None:
        tag = f"{{key:{key}}}"
        if limits.requests_per_minute is not None:
            requests = Limit(f"{tag}:rpm", limits.requests_per_minute, "minute")
            chosen.append(requests)
        if limits.requests_per_day is not None:
            daily = Limit(f"{tag}:rpd", limits.requests_per_day, "day")
            requests = requests or daily
            chosen.append(daily)
        if limits.tokens_per_minute is not None:
            token_limit = Limit(f"{tag}:tpm", limits.tokens_per_minute, "minute", amount=tokens)
            chosen.append(token_limit)
        if limits.concurrent_requests is not None:
            chosen.append(Limit(f"{tag}:concurrent", limits.concurrent_requests, "concurrent"))
    if per_ip is not None and call.client_ip and call.endpoint in ip_endpoints:
        chosen.append(Limit(f"{{ip:{call.client_ip}}}:rpm", per_ip, "minute"))
    return Plan(tuple(chosen), requests, token_limit)


def _check_model(call: Call, limits: TierLimits) -> None:
    allowed = limits.models
    if allowed is not None and call.model not in allowed and call.agent not in allowed:
        raise ModelNotAllowed(f"this key may not use {call.agent or call.model!r}", param="model")


def _reset(seconds: float | None) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``1h2m3s``, ``250ms``."""
    if seconds is None:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_limit_headers(plan: Plan, admission: Admission) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-limit|remaining|reset-requests|tokens`` for the counters."""
    headers: dict[str, str] = {}
    for names, limit, at in ((_REQUEST_HEADERS, plan.requests, plan.requests_at),
                             (_TOKEN_HEADERS, plan.tokens, plan.tokens_at)):  # fmt: skip
        if limit is None or limit.capacity is None or at is None:
            continue
        state = admission.counter(at)
        headers[names[0]] = str(int(limit.capacity))
        headers[names[1]] = str(max(0, int(state.remaining)))
        headers[names[2]] = _reset(state.reset_after_s)
    return headers


_REQUEST_HEADERS = tuple(f"x-ratelimit-{part}-requests" for part in ("limit", "remaining", "reset"))
_TOKEN_HEADERS = tuple(f"x-ratelimit-{part}-tokens" for part in ("limit", "remaining", "reset"))


@dataclass(frozen=True, slots=True)
class _Template:
    """A key's plan, and where the call's own amounts go: its tokens at ``tokens_at``, its
    maximum cost on every limit from ``spend_from`` on (the others hold their own)."""

    plan: Plan
    base: tuple[int, ...]
    tokens_at: int | None
    spend_from: int

    @classmethod
    def of(cls, plan: Plan, spend_from: int) -> _Template:
        tokens_at = None if plan.tokens is None else plan.limits.index(plan.tokens)
        return cls(plan, tuple(limit.amount_units for limit in plan.limits), tokens_at,
                   spend_from)  # fmt: skip

    def amounts(self, tokens: int, max_cost: float) -> list[int]:
        """The units this call holds on each of the plan's limits."""
        amounts = list(self.base)
        if self.tokens_at is not None:
            check_amount(tokens, "the call's tokens")
            amounts[self.tokens_at] = tokens * UNITS_PER_ONE
        spend = len(amounts) - self.spend_from
        if spend:
            check_amount(max_cost, "the call's maximum cost")
            amounts[self.spend_from :] = [to_units(max_cost)] * spend
        return amounts


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[str]
) -> str | None:
    """The caller's address: the peer, or behind trusted proxies the right-most address of
    ``X-Forwarded-For`` that is not one of them (the left part is the client's to forge)."""
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if peer is None or not forwarded_for or not is_trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop):
            return hop
    return peer


class RateLimits:
    """The pipeline stage (see the module docstring)."""

    def __init__(
        self,
        state: Reservations,
        settings: LimitSettings,
        *,
        max_deadline_s: float,
        prices: Mapping[str, Price] | None = None,
        alerts: BudgetAlerts | None = None,
        economy: EconomyMode | None = None,
    ) -> None:
        self._state = state
        self._settings = settings
        self._margin = settings.hold_margin_s
        self._max_hold_s = max_deadline_s + self._margin
        self._prices = prices or {}
        self._alerts = alerts
        self._economy = economy if settings.budgets.action == "economy" else None
        self._ip_endpoints = tuple(settings.per_ip_endpoints)
        self._merged: dict[tuple[str, int], tuple[TierLimits, TierLimits]] = {}
        self._templates: dict[tuple[object, ...], tuple[TierLimits, _Template]] = {}

    def limits_for(self, call: Call) -> TierLimits | None:
        """The tier's limits with the key's own on top; None for a caller with no tier
        (auth off, or the anonymous localhost caller of development mode)."""
        tier = self._settings.tiers.get(call.caller.tier)
        own = call.caller.limits
        if tier is None or own is None:
            return tier or own
        # a key's limits object lives as long as its cached lookup: merge once per object
        cached = self._merged.get((call.caller.tier, id(own)))
        if cached is not None and cached[0] is own:
            return cached[1]
        if len(self._merged) > 10_000:
            self._merged.clear()
        merged = tier.merged(own)
        self._merged[(call.caller.tier, id(own))] = (own, merged)
        return merged

    async def __call__(self, call: Call, next: Next) -> Reply:
        if call.endpoint == "task":
            return await next(call)  # counted when it was accepted (``admit_submission``)
        limits = self.limits_for(call) or _NONE
        _check_model(call, limits)
        economy: str | None = None
        lenient: set[str] = set()
        if self._economy is not None:
            economy, lenient = self._economy.mode_for(call)
            if economy is not None:
                limits = scaled(limits, self._economy.apply(call, economy))
        room = apply_max_tokens(call, limits.max_tokens)
        prompt = estimate_prompt_tokens(call)
        max_cost = self._prices.get(call.model, FREE).cost(Usage(prompt, room))
        template = self._template(call, limits, lenient, cache=economy is None)
        plan = template.plan
        if not plan.limits:
            return await next(call)
        reservation = secrets.token_hex(16)
        amounts = template.amounts(prompt + room, max_cost)
        admission = await self._reserve(reservation, plan.limits, self._hold_s(call), amounts)
        headers = rate_limit_headers(plan, admission)
        if plan.spend and self._alerts is not None:  # refusals too: that is the 100 % one
            self._alerts.check(admission, template.spend_from)
        if not admission.allowed:
            scope = _budget_scope(admission.refused_by)
            if self._economy is not None and economy is None and scope is not None:
                # the budget is used up: economy mode for its scope until its period ends
                until = time.time() + (admission.retry_after_s or 0.0)
                await self._economy.enter(scope, until)
                return await self(call, next)
            raise self._refusal(admission, headers)
        call.response_headers.update(headers)
        if plan.spend:
            call.record.reserved_usd = max_cost
        try:
            reply = await next(call)
        except BaseException:
            self._settle(reservation, self._actual(plan, 0, 0.0))
            raise
        if reply.finished:  # a complete answer (its cost known): settle now
            self._settle(
                reservation, self._actual(plan, reply.billed_usage.total_tokens, reply.cost_usd)
            )
            return reply
        # a stream: Accounting's hook (registered first, inside) has priced it by then
        reply.on_finish(
            lambda done, _error: self._settle(
                reservation, self._actual(plan, done.billed_usage.total_tokens, done.cost_usd)
            )
        )
        return reply

    def _template(
        self, call: Call, limits: TierLimits, lenient: set[str], *, cache: bool
    ) -> _Template:
        """The counters of the call's key, agent and address, cached per limits object (a
        key's merged limits live as long as its cached lookup) unless in economy mode."""
        per_ip = self._settings.per_ip_per_minute
        ip = call.client_ip if per_ip is not None and call.endpoint in self._ip_endpoints else None
        key = (id(limits), call.caller.key_id, call.agent, ip, frozenset(lenient) or None)
        cached = self._templates.get(key) if cache else None
        if cached is not None and cached[0] is limits:
            return cached[1]
        plan = plan_for(call, limits, per_ip=per_ip, ip_endpoints=self._ip_endpoints, tokens=0)
        spend = budget_limits(call, limits, self._settings.budgets, 0.0, lenient)
        template = _Template.of(plan.with_spend(spend) if spend else plan, len(plan.limits))
        if cache:
            if len(self._templates) > 10_000:
                self._templates.clear()
            self._templates[key] = (limits, template)
        return template

    async def admit_submission(self, call: Call) -> dict[str, str]:
        """Count a task as one request of its caller (and, like an ``api.chat`` call, of its
        address) when it is accepted: a task refused later, inside a worker, would be a
        task lost. Returns the headers for the 202."""
        limits = self.limits_for(call) or _NONE
        _check_model(call, limits)
        requests_only = limits.model_copy(update={"tokens_per_minute": None,
                                                  "concurrent_requests": None})  # fmt: skip
        plan = plan_for(call, requests_only, per_ip=self._settings.per_ip_per_minute,
                        ip_endpoints=self._settings.per_ip_endpoints, tokens=0)  # fmt: skip
        if not plan.limits:
            return {}
        reservation = secrets.token_hex(16)
        admission = await self._reserve(reservation, plan.limits, _SUBMISSION_HOLD_S)
        headers = rate_limit_headers(plan, admission)
        if not admission.allowed:
            raise self._refusal(admission, headers)
        await self._state.settle(reservation)
        return headers

    async def _reserve(
        self,
        reservation: str,
        limits: Sequence[Limit],
        ttl_s: float,
        amounts: Sequence[int] | None = None,
    ) -> Admission:
        try:
            return await self._state.reserve(reservation, limits, ttl_s, amounts)
        except Exception as exc:  # whatever the shared state's client raises
            # limits that cannot be checked refuse (closed): an outage must not lift them
            raise ServiceUnavailable(
                "rate limits cannot be checked right now; retry shortly",
                retry_after=1,
                detail=f"shared state: {type(exc).__name__}: {exc}",
            ) from exc

    def _hold_s(self, call: Call) -> float:
        if call.deadline is None:
            return self._max_hold_s
        return max(1.0, call.deadline - time.monotonic() + self._margin)

    @staticmethod
    def _actual(plan: Plan, tokens: int, cost_usd: float) -> Mapping[str, float]:
        """What a call really used: its tokens and its cost (its requests count as 1)."""
        cost = min(max(cost_usd, 0.0), MAX_AMOUNT)
        actual: dict[str, float] = dict.fromkeys(plan.spend_counters, cost)
        if plan.tokens is not None:
            actual[plan.tokens.counter] = tokens
        return actual

    def _settle(self, reservation: str, actual: Mapping[str, float]) -> None:
        """Settle without waiting (``settle_soon``: no round trip of its own on Redis)."""
        try:
            self._state.settle_soon(reservation, actual)
        except Exception as exc:  # noqa: BLE001 - the hold then expires by itself
            log.warning("limit_settle_failed", error_type=type(exc).__name__)

    @staticmethod
    def _refusal(admission: Admission, headers: dict[str, str]) -> RateLimited:
        counter = admission.refused_by or ""
        if ":usd-" in counter:
            return _over_budget(admission, counter, headers)
        what = _DESCRIPTIONS.get(counter.rsplit(":", 1)[-1], "a limit")
        refused = next((c for c in admission.counters if c.limit.counter == counter), None)
        capacity = refused.limit.capacity if refused is not None else None
        limit = f" (limit {int(capacity)})" if capacity is not None else ""
        if admission.retry_after_s is None:
            return RateLimitExceeded(
                f"this request alone is larger than the {what}{limit}", headers=headers
            )
        return RateLimitExceeded(
            f"rate limit reached: {what}{limit}; retry after "
            f"{math.ceil(admission.retry_after_s)} s",
            retry_after=admission.retry_after_s,
            headers=headers,
        )

    async def aclose(self) -> None:
        """Send the settlements still waiting (at shutdown)."""
        try:
            await self._state.flush()
        except Exception as exc:  # noqa: BLE001 - the holds then expire by themselves
            log.warning("limit_settle_failed", error_type=type(exc).__name__)
        if self._alerts is not None:
            await self._alerts.aclose()


def _budget_scope(counter: str | None) -> str | None:
    """``key:k1`` for ``{key:k1}:usd-day``; None for a counter that is not a budget."""
    if counter is None or ":usd-" not in counter:
        return None
    return counter.rsplit(":usd-", 1)[0].strip("{}")


def _over_budget(admission: Admission, counter: str, headers: dict[str, str]) -> BudgetExceeded:
    scope, period = counter.rsplit(":usd-", 1)
    whose = {"{total}": "the total"}.get(scope) or scope.strip("{}").replace(":", " ")
    refused = next((c for c in admission.counters if c.limit.counter == counter), None)
    amount = f" of ${refused.limit.capacity:g}" if refused and refused.limit.capacity else ""
    when = "tomorrow (UTC)" if period == "day" else "next month (UTC)"
    return BudgetExceeded(
        f"the {'daily' if period == 'day' else 'monthly'} budget{amount} of {whose} is used "
        f"up; it renews {when}",
        retry_after=admission.retry_after_s,
        headers=headers,
    )


_NONE = TierLimits()

_DESCRIPTIONS = {
    "rpm": "requests per minute",
    "rpd": "requests per day",
    "tpm": "tokens per minute",
    "concurrent": "concurrent requests",
}
