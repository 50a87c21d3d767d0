"""A model's deployments behind one call: load balancing, retries, breakers, quality.

Deployments are ordered by the balancing policy (least outstanding requests, or weighted
random), skipping those whose breaker is open; each is tried with retries until one
gives a usable answer. The first deployment tried answers at level ``primary``, any
other at level ``deployment``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from guarita.errors import (
    CircuitOpen,
    DeadlineExceeded,
    GuaritaError,
    InvalidRequest,
    QualityRejected,
    UpstreamTimeout,
    UpstreamTruncated,
)
from guarita.providers.base import Provider
from guarita.resilience.breaker import CircuitBreaker
from guarita.resilience.quality import QualityPolicy, Scorer, judge
from guarita.resilience.retry import RetryBudget, RetryPolicy, backoff_delay, is_retryable
from guarita.settings import ModelSettings
from guarita.types import Call, Chunk, FallbackLevel, Reply


@dataclass
class Deployment:
    name: str
    provider: Provider
    weight: float = 1.0
    breaker: CircuitBreaker | None = None
    budget: RetryBudget = field(default_factory=lambda: RetryBudget(RetryPolicy()))
    outstanding: int = 0


def counts_against_breaker(exc: BaseException) -> bool:
    """Failures of the deployment, not of the request (a 400 says nothing about health)."""
    return isinstance(exc, GuaritaError) and not isinstance(exc, InvalidRequest | CircuitOpen)


@dataclass
class GroupObserver:
    """Where a group reports what it does (metrics); every hook is optional."""

    retry: Callable[[str], None] = lambda deployment: None
    budget_exhausted: Callable[[str], None] = lambda deployment: None
    quality_failure: Callable[[str, str], None] = lambda deployment, reason: None


class ModelGroup:
    def __init__(
        self,
        name: str,
        settings: ModelSettings,
        deployments: list[Deployment],
        *,
        observer: GroupObserver | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.deployments = deployments
        self._retry = RetryPolicy(**settings.retry.model_dump())
        self._quality = QualityPolicy(**settings.quality.model_dump())
        self._observer = observer or GroupObserver()
        self._scorer = scorer
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def primary(self) -> Deployment:
        return self.deployments[0]

    def order(self) -> list[Deployment]:
        """Deployments in the order to try them."""
        if len(self.deployments) == 1:
            return list(self.deployments)
        if self.settings.balancing == "weighted":
            remaining = list(self.deployments)
            ordered = []
            while remaining:
                pick = random.choices(remaining, weights=[d.weight for d in remaining])[0]
                ordered.append(pick)
                remaining.remove(pick)
            return ordered
        shuffled = random.sample(self.deployments, len(self.deployments))  # ties broken at random
        return sorted(shuffled, key=lambda d: d.outstanding / d.weight)

    async def __call__(self, call: Call) -> Reply:
        last_error: GuaritaError | None = None
        tried = 0
        for deployment in self.order():
            if deployment.breaker is not None and not await deployment.breaker.allow_request():
                last_error = last_error or CircuitOpen(
                    f"model {self.name!r}: deployment {deployment.name} is failing (circuit open)",
                    retry_after=5,
                )
                continue  # skipping an open breaker is balancing, not a fallback
            try:
                reply = await self._with_retries(deployment, call)
            except InvalidRequest:
                raise  # the request is at fault: another deployment would refuse it too
            except GuaritaError as exc:
                last_error = exc
                tried += 1
                continue
            reply.served_by = self.name
            reply.deployment = deployment.name
            reply.fallback_level = FallbackLevel.PRIMARY if tried == 0 else FallbackLevel.DEPLOYMENT
            return reply
        assert last_error is not None
        raise last_error

    async def _with_retries(self, deployment: Deployment, call: Call) -> Reply:
        deployment.budget.record_call()
        try:  # the first attempt goes direct: the retry machinery costs only when it is used
            return await self._once(deployment, call)
        except GuaritaError as exc:
            if self._retry.max_attempts < 2 or not self._worth_retrying(deployment, exc):
                raise
            first_error = exc
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts - 1),
            wait=lambda state: backoff_delay(
                state.attempt_number + 1,
                self._retry,
                state.outcome.exception() if state.outcome else None,
            ),
            retry=lambda state: self._retry_after_attempt(deployment, state),
            reraise=True,
        )
        await asyncio.sleep(backoff_delay(1, self._retry, first_error))
        reply: Reply | None = None
        async for attempt in retrying:
            with attempt:
                reply = await self._once(deployment, call)
        assert reply is not None
        return reply

    def _retry_after_attempt(self, deployment: Deployment, state: RetryCallState) -> bool:
        """Tenacity asks this before its stop check: after the last attempt there is no
        retry to count or to take from the budget."""
        error = state.outcome.exception() if state.outcome is not None else None
        if error is None or state.attempt_number + 1 >= self._retry.max_attempts:
            return False  # success, or the last attempt (+1: the direct first try) failed
        return self._worth_retrying(deployment, error)

    def _worth_retrying(self, deployment: Deployment, exc: BaseException) -> bool:
        if not is_retryable(exc):
            return False
        if isinstance(exc, GuaritaError) and (exc.retry_after or 0) > self._retry.max_delay_s:
            return False  # the upstream asks for a longer pause: pass its Retry-After on
        if deployment.budget.try_spend():
            self._observer.retry(deployment.name)
            return True
        self._observer.budget_exhausted(deployment.name)
        return False

    async def _once(self, deployment: Deployment, call: Call) -> Reply:
        started = time.monotonic()
        deployment.outstanding += 1
        try:
            if call.operation == "embeddings":
                reply = Reply.embedded(
                    deployment.provider.name, await deployment.provider.embed(call.inputs)
                )
            elif call.stream:
                reply = await self._open_stream(deployment, call)
            else:
                reply = Reply.complete(
                    deployment.provider.name, await deployment.provider.complete(call)
                )
        except BaseException as exc:
            deployment.outstanding -= 1
            if counts_against_breaker(exc):
                await self._record(deployment, ok=False)
            raise
        if reply.is_stream:
            reply.on_finish(
                lambda done, error: self._stream_finished(deployment, call, done, error, started)
            )
            return reply
        deployment.outstanding -= 1
        if reply.embeddings is not None:  # vectors have no text to judge
            await self._record(deployment, ok=True)
            return reply
        latency_ms = (time.monotonic() - started) * 1000
        verdict = judge(
            call, reply.text, reply.finish_reason, latency_ms, self._quality, self._scorer
        )
        if not verdict.ok:
            assert verdict.reason is not None
            self._observer.quality_failure(deployment.name, verdict.reason)
        await self._record(deployment, ok=verdict.ok)
        if verdict.reject:
            where = f"model {self.name!r} ({deployment.name})"
            raise QualityRejected(f"{where}: the answer failed a quality check: {verdict.reason}")
        return reply

    async def _open_stream(self, deployment: Deployment, call: Call) -> Reply:
        """Start the stream and wait for its first chunk: before any byte is sent, a
        failure can still be retried or fall back."""
        source = deployment.provider.stream(call)
        ttft = self.settings.ttft_timeout_s
        try:
            if ttft is not None:
                first = await asyncio.wait_for(anext(source), timeout=ttft)
            else:
                first = await anext(source)
        except TimeoutError:
            await source.aclose()  # type: ignore[attr-defined]
            raise UpstreamTimeout(
                f"model {self.name!r} ({deployment.name}): no first token in {ttft}s"
            ) from None
        except StopAsyncIteration:
            raise QualityRejected(
                f"model {self.name!r} ({deployment.name}) sent an empty stream"
            ) from None
        return Reply(model=call.model, provider=deployment.provider.name,
                     source=_bounded(first, source, call.deadline))  # fmt: skip

    def _stream_finished(self, deployment: Deployment, call: Call, reply: Reply,
                         error: BaseException | None, started: float) -> None:  # fmt: skip
        deployment.outstanding -= 1
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            return  # the caller went away: that says nothing about the deployment's health
        if error is not None:
            ok = not counts_against_breaker(error)
            if isinstance(error, UpstreamTruncated):
                self._observer.quality_failure(deployment.name, "truncated")
        else:
            latency_ms = (time.monotonic() - started) * 1000
            verdict = judge(
                call, reply.text, reply.finish_reason, latency_ms, self._quality, self._scorer
            )
            ok = verdict.ok
            if not ok and verdict.reason:
                self._observer.quality_failure(deployment.name, verdict.reason)
        task = asyncio.get_running_loop().create_task(self._record(deployment, ok=ok))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _record(deployment: Deployment, *, ok: bool) -> None:
        if deployment.breaker is None:
            return
        if ok:
            await deployment.breaker.record_success()
        else:
            await deployment.breaker.record_failure()


async def _bounded(
    first: Chunk, rest: AsyncIterator[Chunk], deadline: float | None
) -> AsyncIterator[Chunk]:
    """The stream, with every chunk read bounded by the call's deadline."""
    yield first
    try:
        while True:
            if deadline is None:
                chunk = await anext(rest)
            else:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(rest)
            yield chunk
    except StopAsyncIteration:
        return
    except TimeoutError:
        raise DeadlineExceeded("deadline exceeded while streaming") from None
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
