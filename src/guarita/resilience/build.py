"""Turn model settings into model groups: one provider per deployment, wrapped in chaos
when configured, each with its breaker and retry budget, reporting to the metrics."""

from __future__ import annotations

from guarita.providers.base import Provider, ProviderRegistry
from guarita.providers.chaos import ChaosProvider
from guarita.resilience.breaker import BreakerPolicy, BreakerStore, CircuitBreaker
from guarita.resilience.group import Deployment, GroupObserver, ModelGroup
from guarita.resilience.quality import Scorer
from guarita.resilience.retry import RetryBudget, RetryPolicy
from guarita.settings import ModelSettings, Settings
from guarita.telemetry.metrics import Metrics


def deployment_settings(model: ModelSettings) -> list[tuple[str | None, float, ModelSettings]]:
    """(name, weight, settings) for each deployment; a model without ``deployments`` is one."""
    if not model.deployments:
        return [(None, 1.0, model)]
    result = []
    for dep in model.deployments:
        update: dict[str, object] = {
            "provider": dep.provider,
            "upstream": dep.upstream or model.upstream,
            "base_url": dep.base_url,
            "api_key_env": dep.api_key_env,
            "options": dep.options or model.options,
            "chaos": dep.chaos,
            "connect_timeout_s": dep.connect_timeout_s or model.connect_timeout_s,
            "timeout_s": dep.timeout_s or model.timeout_s,
            "deployments": [],
        }
        result.append((dep.name, dep.weight, model.model_copy(update=update)))
    return result


def build_groups(
    settings: Settings,
    registry: ProviderRegistry,
    breakers: BreakerStore,
    metrics: Metrics,
    *,
    scorer: Scorer | None = None,
) -> dict[str, ModelGroup]:
    """``scorer`` rates answers for ``quality.min_score`` (without one, that check is off)."""
    observer = GroupObserver(
        retry=lambda d: metrics.retries.labels(d).inc(),
        budget_exhausted=lambda d: metrics.retry_budget_exhausted.labels(d).inc(),
        quality_failure=lambda d, reason: metrics.quality_failures.labels(d, reason).inc(),
    )

    def on_transition(deployment: str, before: str, after: str) -> None:
        metrics.circuit_transitions.labels(deployment, before, after).inc()
        metrics.set_circuit_state(deployment, after)

    groups = {}
    for name, model in settings.models.items():
        deployments = []
        for index, (dep_name, weight, dep_settings) in enumerate(deployment_settings(model)):
            label = dep_name or (name if len(model.deployments) <= 1 else f"{name}#{index}")
            provider: Provider = registry.create(name, dep_settings)
            if dep_settings.chaos is not None:
                provider = ChaosProvider(
                    provider, dep_settings.chaos, timeout_s=dep_settings.timeout_s
                )
            breaker = None
            if model.breaker.enabled:
                policy = BreakerPolicy(**model.breaker.model_dump(exclude={"enabled"}))
                breaker = CircuitBreaker(label, breakers, policy, on_transition=on_transition)
                metrics.set_circuit_state(label, "closed")
            budget = RetryBudget(RetryPolicy(**model.retry.model_dump()))
            deployments.append(Deployment(label, provider, weight, breaker, budget))
        groups[name] = ModelGroup(name, model, deployments, observer=observer, scorer=scorer)
    return groups
