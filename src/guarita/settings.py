"""Settings: one tree from ``guarita.yaml`` overlaid by ``GUARITA_*`` environment variables.

Precedence, highest first: keyword arguments, environment (``GUARITA_SERVER__PORT=9000``,
nested with ``__``), the YAML file (``GUARITA_CONFIG`` or ``./guarita.yaml``), defaults.
The defaults alone describe a working embedded install: SQLite in the data directory and
the local llama.cpp model behind one agent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from guarita.errors import ConfigError
from guarita.settings_auth import (  # re-exported: settings are read from here
    ROLES as ROLES,
)
from guarita.settings_auth import (
    AuthSettings as AuthSettings,
)
from guarita.settings_auth import (
    JwtAlgorithm as JwtAlgorithm,
)
from guarita.settings_auth import (
    JwtSettings as JwtSettings,
)
from guarita.settings_auth import (
    Role as Role,
)
from guarita.settings_base import Strict as _Strict
from guarita.settings_cache import CacheSettings as CacheSettings
from guarita.settings_cache import EmbeddingEndpoint as EmbeddingEndpoint
from guarita.settings_cache import SemanticCacheSettings as SemanticCacheSettings
from guarita.settings_cors import CorsSettings as CorsSettings
from guarita.settings_drift import DriftSettings
from guarita.settings_guard import (
    AgentGuardSettings as AgentGuardSettings,
)
from guarita.settings_guard import (
    CodeGuardSettings as CodeGuardSettings,
)
from guarita.settings_guard import (
    GuardSettings as GuardSettings,
)
from guarita.settings_guard import (
    InjectionGuardSettings as InjectionGuardSettings,
)
from guarita.settings_guard import (  # re-exported: settings are read from here
    InputGuardSettings as InputGuardSettings,
)
from guarita.settings_guard import (
    PiiGuardSettings as PiiGuardSettings,
)
from guarita.settings_guard import (
    PiiKindName as PiiKindName,
)
from guarita.settings_limits import (
    Budget as Budget,
)
from guarita.settings_limits import (
    BudgetSettings as BudgetSettings,
)
from guarita.settings_limits import (
    EconomySettings as EconomySettings,
)
from guarita.settings_limits import (
    LimitSettings as LimitSettings,
)
from guarita.settings_limits import (  # re-exported: settings are read from here
    TierLimits as TierLimits,
)
from guarita.settings_limits import (
    _default_tiers as _default_tiers,
)
from guarita.settings_quality import (  # re-exported: settings are read from here
    AgentQualitySettings as AgentQualitySettings,
)
from guarita.settings_quality import ConsistencySettings as ConsistencySettings
from guarita.settings_quality import QualityScoringSettings as QualityScoringSettings
from guarita.settings_quality import ScorerSettings as ScorerSettings
from guarita.settings_rollouts import (
    CanaryPolicy as CanaryPolicy,
)
from guarita.settings_rollouts import (
    ChangeTypeRule as ChangeTypeRule,
)
from guarita.settings_rollouts import (
    RolloutSettings as RolloutSettings,
)
from guarita.settings_rollouts import (
    ShadowPolicy as ShadowPolicy,
)
from guarita.settings_server import ServerSettings as ServerSettings
from guarita.settings_slo import SloSettings as SloSettings
from guarita.settings_steps import StepSettings as StepSettings

LOCAL_MODEL = "gemma3-270m"
SMOLLM2_MODEL = "smollm2-135m"
DEFAULT_AGENT_MODEL = SMOLLM2_MODEL
"""The default agent's: SmolLM2-135M-Instruct answers chat where the Gemma 3 270M base model
mostly repeats its prompt (docs/quality.md, bench/local_models.py)."""


class RetrySettings(_Strict):
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Calls per deployment, first included."
    )
    base_delay_s: float = Field(default=0.2, ge=0)
    max_delay_s: float = Field(default=5.0, ge=0)
    budget_ratio: float = Field(
        default=0.2, ge=0, le=1, description="Retries may add this share of calls."
    )
    budget_min_retries: int = Field(default=3, ge=0)
    budget_window_s: float = Field(default=10.0, gt=0)


class BreakerSettings(_Strict):
    enabled: bool = True
    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open it."
    )
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(
        default=20, ge=1, description="Calls in the window before the ratio counts."
    )
    window_s: float = Field(default=60.0, gt=0)
    open_s: float = Field(default=60.0, gt=0, description="Time open before half-open probes.")
    half_open_probes: int = Field(default=3, ge=1)


class QualitySettings(_Strict):
    max_latency_ms: float | None = Field(
        default=None, gt=0, description="Slower answers count as failures."
    )
    reject_empty: bool = True
    reject_truncated: bool = False
    reject_invalid_json: bool = True
    reject_refusals: bool = False
    min_score: float | None = Field(default=None, ge=0, le=1)


class ChaosSettings(_Strict):
    """Fault injection around a deployment, for drills and tests."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    truncate_rate: float = Field(default=0.0, ge=0, le=1, description="Streams cut off mid-way.")
    garbage_rate: float = Field(default=0.0, ge=0, le=1, description="Empty or nonsense answers.")
    latency_ms: tuple[float, float] = Field(
        default=(0.0, 0.0), description="Added latency, uniform [min, max]."
    )
    seed: int | None = None


class DeploymentSettings(_Strict):
    """One place a model is served from; several make a load-balanced group."""

    name: str | None = None
    provider: str
    upstream: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    weight: float = Field(default=1.0, gt=0)
    connect_timeout_s: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    chaos: ChaosSettings | None = None


class ResponseCachePolicy(_Strict):
    """The response cache for one model or agent (docs/cache.md)."""

    mode: Literal["off", "exact", "semantic"] = Field(
        default="off", description="exact: the same request; semantic: a verified similar one."
    )
    ttl_s: float = Field(
        default=3600.0, gt=0, le=366 * 86400, description="How long an answer stays fresh."
    )
    max_temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Cache only calls at or below this temperature (an absent temperature "
        "counts as 1.0); unset: any temperature.",
    )
    namespace: Literal["key", "agent"] = Field(
        default="key",
        description="Who shares entries: each API key its own (key), or every caller of the "
        "agent (agent; for an agent only).",
    )


class ModelSettings(_Strict):
    """One model callers can name, and the deployment(s) that serve it."""

    provider: str = Field(
        description="Registered provider name: llamacpp, openai, anthropic, scripted."
    )
    upstream: str | None = Field(default=None, description="The provider's own name for the model.")
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the upstream key (never the key)."
    )
    price_input_per_1m: float | None = Field(default=None, ge=0)
    price_output_per_1m: float | None = Field(default=None, ge=0)
    context_window: int = Field(default=8192, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(
        default=120.0, gt=0, description="Read timeout: longest wait for data."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Provider-specific options.")
    chaos: ChaosSettings | None = None
    deployments: list[DeploymentSettings] = Field(
        default_factory=list,
        description="Several deployments of this model; default: the fields above.",
    )
    balancing: Literal["least_outstanding", "weighted"] = "least_outstanding"
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    quality: QualitySettings = QualitySettings()
    fallbacks: list[str] = Field(
        default_factory=list, description="Models to try, in order, when this fails."
    )
    deadline_s: float | None = Field(default=None, gt=0)
    ttft_timeout_s: float | None = Field(
        default=None, gt=0, description="Streams: time to the first token."
    )
    cache: ResponseCachePolicy | None = Field(
        default=None, description="Cache direct calls of this model; unset: off."
    )

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError("must be the NAME of an environment variable, not a key")
        return value


class RoutingSettings(_Strict):
    """Model tiering by prompt complexity (docs/routing.md): each call goes to the model of
    its prompt's level, from a deterministic score."""

    mode: Literal["complexity"] = "complexity"
    simple: str = Field(description="The model for simple prompts (score below medium_at).")
    medium: str = Field(description="The model for prompts between the thresholds.")
    complex: str = Field(description="The model for complex prompts (score from complex_at).")
    medium_at: float = Field(default=2.0, gt=0, description="Lowest score of a medium prompt.")
    complex_at: float = Field(default=5.0, gt=0, description="Lowest score of a complex prompt.")

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> RoutingSettings:
        if self.complex_at <= self.medium_at:
            raise ValueError("complex_at must be above medium_at")
        return self

    def model_for(self, level: Literal["simple", "medium", "complex"]) -> str:
        return {"simple": self.simple, "medium": self.medium, "complex": self.complex}[level]


class CompressionSettings(_Strict):
    """Prompt compression (docs/routing.md): whitespace, filler phrases, and history over a
    token budget, removed before the call is limited, priced and sent."""

    enabled: bool = Field(default=True, description="False keeps the settings but stops it.")
    history_budget_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Trim the oldest turns until the prompt's estimated tokens fit; system "
        "messages and the last user message stay. Unset: no trimming.",
    )
    remove_filler: bool = Field(
        default=True, description="Drop filler phrases ('please', 'basically') from user turns."
    )


_PROMPT_REF = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}(@([1-9][0-9]*|[A-Za-z][A-Za-z0-9_.-]{0,99}))?$"
)
"""``guarita.ops.prompts.parse_ref``'s grammar (checked there again at resolution)."""


class AgentSettings(_Strict):
    """An agent declared in config: a model, a system prompt and sampling parameters."""

    model: str
    system_prompt: str = ""
    prompt: str | None = Field(
        default=None,
        description="A registry prompt instead of system_prompt: 'name', 'name@label' or "
        "'name@3' (docs/prompts.md).",
    )
    prompt_variables: dict[str, str] = Field(
        default_factory=dict, description="The values of the prompt's template variables."
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=256, gt=0)
    description: str = ""
    fallbacks: list[str] | None = Field(
        default=None, description="Overrides the model's fallbacks."
    )
    deadline_s: float | None = Field(default=None, gt=0)
    routing: RoutingSettings | None = Field(
        default=None, description="Pick the model per call by prompt complexity; unset: off."
    )
    compression: CompressionSettings | None = Field(
        default=None, description="Compress prompts before they are sent; unset: off."
    )
    cache: ResponseCachePolicy | None = Field(
        default=None, description="Cache this agent's answers; unset: off."
    )
    guard: AgentGuardSettings | None = Field(
        default=None, description="Guardrails of this agent over the global ones."
    )
    quality: AgentQualitySettings | None = Field(
        default=None, description="Score this agent's answers (docs/quality.md); unset: off."
    )
    consistency: ConsistencySettings | None = Field(
        default=None, description="Run N trials and score their agreement; unset: off."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> AgentSettings:
        if self.prompt is not None and self.system_prompt:
            raise ValueError("give prompt (a registry prompt) or system_prompt, not both")
        if self.prompt is not None and not _PROMPT_REF.fullmatch(self.prompt):
            raise ValueError(f"prompt {self.prompt!r}: not 'name', 'name@label' or 'name@3'")
        return self


class RuleSettings(_Strict):
    pattern: str = Field(
        min_length=1, description="A regular expression searched in the last user message."
    )
    reply: str


class ResilienceSettings(_Strict):
    deadline_s: float = Field(
        default=60.0, gt=0, description="Whole-call deadline, retries and fallbacks included."
    )
    min_deadline_s: float = Field(default=0.1, gt=0)
    max_deadline_s: float = Field(
        default=600.0, gt=0, description="Upper bound for x-guarita-deadline-ms."
    )
    rules: list[RuleSettings] = Field(
        default_factory=list, description="Rule-based answers, a fallback level."
    )
    static_reply: str | None = Field(
        default=None,
        description="The last fallback level, e.g. 'The service is busy, please try again.'; "
        "unset: callers get the error itself.",
    )


class StoreSettings(_Strict):
    url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default: SQLite in the data directory."
    )
    auto_migrate: bool = True
    record_batch_size: int = Field(default=500, gt=0, description="Records per insert.")
    record_flush_interval_s: float = Field(default=0.25, gt=0)
    record_queue_max: int = Field(
        default=20_000,
        gt=0,
        description="Records held in memory; past it they wait in spool files on disk, "
        "and /ready reports the writer as behind.",
    )


class AuditSettings(_Strict):
    """The audit log (docs/audit.md): access, data access and changes, hash-chained."""

    enabled: bool = Field(
        default=True,
        description="Record audit entries; false records none (verify and list still work).",
    )
    batch_size: int = Field(default=100, gt=0, description="Entries per chained append.")
    flush_interval_s: float = Field(
        default=0.5, gt=0, description="How often queued entries are written."
    )


class TaskSettings(_Strict):
    workers: int = Field(default=2, ge=1, le=256, description="Concurrent tasks per process.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts that ended, per task.")
    max_deliveries: int = Field(
        default=10,
        ge=1,
        description="Claims per task, attempts cut short by a dead worker included; past "
        "it the task fails (code task_abandoned).",
    )
    retry_backoff_s: float = Field(default=1.0, ge=0)
    lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A worker renews its claim this often (/3); a dead one's expires.",
    )
    visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Redis broker: redeliver an unacknowledged task after this.",
    )
    queue: str = Field(
        default="guarita-tasks", pattern=r"^[A-Za-z0-9_.\-]+$", description="Celery queue."
    )
    sweep_interval_s: float = Field(default=30.0, gt=0)
    stranded_after_s: float = Field(
        default=300.0, gt=0, description="Re-send tasks queued this long without being claimed."
    )


class BatchSettings(_Strict):
    """The Batch API (``/v1/files``, ``/v1/batches``): its limits and its pace."""

    concurrency: int = Field(
        default=10, ge=1, le=1000, description="Lines of one batch in flight at once."
    )
    max_lines: int = Field(default=50_000, ge=1, description="Lines per batch input file.")
    max_file_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest file `POST /v1/files` takes."
    )
    completion_windows: dict[str, float] = Field(
        default_factory=lambda: {"24h": 86400.0},
        description="The `completion_window` values accepted, each with its length in seconds.",
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often a running batch looks for a cancel."
    )
    max_retry_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="The longest one wait on a rate-limited line (its Retry-After, capped).",
    )

    @field_validator("completion_windows")
    @classmethod
    def _windows_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one completion window is needed")
        for name, seconds in value.items():
            if not seconds > 0:
                raise ValueError(f"{name}: a window must be longer than 0 s")
        return value


class SessionSettings(_Strict):
    ttl_s: float = Field(default=7 * 24 * 3600, gt=0, description="Redis: idle sessions expire.")
    max_turns: int = Field(default=200, gt=0, description="Turns kept per session.")


class EventSettings(_Strict):
    sink: Literal["none", "redis", "nats"] = "none"
    url: str | None = Field(
        default=None, description="Default: redis_url, or nats://127.0.0.1:4222."
    )
    stream: str = Field(default="guarita-events", pattern=r"^[A-Za-z0-9_\-]+$")
    max_queue: int = Field(
        default=10_000, gt=0, description="Events waiting beyond it are dropped."
    )


class TracingSettings(_Strict):
    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = Field(default=None, description="Default: the OTLP exporter's own.")
    service_name: str = "guarita"


def _default_models() -> dict[str, ModelSettings]:
    return {
        LOCAL_MODEL: ModelSettings(
            provider="llamacpp",
            upstream="gemma-3-270m-q4_k_m.gguf",
            price_input_per_1m=0.0,
            price_output_per_1m=0.0,
            context_window=4096,
            options={"instances": 1, "max_queue": 64},
            # a small base model often answers nothing: that is its quality, not an outage
            quality=QualitySettings(reject_empty=False),
        ),
        SMOLLM2_MODEL: ModelSettings(
            provider="llamacpp",
            upstream="SmolLM2-135M-Instruct.Q4_1.gguf",
            price_input_per_1m=0.0,
            price_output_per_1m=0.0,
            context_window=2048,
            options={"packaged": "smollm2", "instances": 1, "max_queue": 64},
            quality=QualitySettings(reject_empty=False),
        ),
    }


def _default_agents() -> dict[str, AgentSettings]:
    return {
        "assistant": AgentSettings(
            model=DEFAULT_AGENT_MODEL,
            system_prompt="You are a helpful assistant. Answer briefly.",
            temperature=0.7,
            max_tokens=128,
        )
    }


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "guarita"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GUARITA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    store: StoreSettings = StoreSettings()
    audit: AuditSettings = AuditSettings()
    tasks: TaskSettings = TaskSettings()
    batches: BatchSettings = BatchSettings()
    sessions: SessionSettings = SessionSettings()
    events: EventSettings = EventSettings()
    tracing: TracingSettings = TracingSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    cache: CacheSettings = CacheSettings()
    guard: GuardSettings = GuardSettings()
    rollouts: RolloutSettings = RolloutSettings()
    slo: SloSettings = SloSettings()
    drift: DriftSettings = DriftSettings()
    steps: StepSettings = StepSettings()
    redis_url: str | None = Field(
        default=None,
        description="Shared state (sessions, limits, breakers) in Redis; absent: in-process.",
    )
    redis_prefix: str = "guarita:"
    task_queue: Literal["local", "celery"] = "local"
    celery_broker_url: str | None = Field(default=None, description="Default: redis_url.")
    models: dict[str, ModelSettings] = Field(default_factory=_default_models)
    agents: dict[str, AgentSettings] = Field(default_factory=_default_agents)
    default_agent: str = "assistant"
    quality: QualityScoringSettings = Field(default_factory=QualityScoringSettings)

    @model_validator(mode="before")
    @classmethod
    def _default_agent_follows_models(cls, data: Any) -> Any:
        """A config that declares its own models but no agents gets one agent, ``assistant``,
        on its first model (rather than one pointing at a local model it left out)."""
        if isinstance(data, dict) and data.get("models") and "agents" not in data:
            models = data["models"]
            if isinstance(models, dict) and DEFAULT_AGENT_MODEL not in models:
                data = {**data, "agents": {"assistant": {"model": next(iter(models))}}}
                data.setdefault("default_agent", "assistant")
        return data

    @model_validator(mode="after")
    def _quality_references_resolve(self) -> Settings:
        for name, agent in self.agents.items():
            for scorer in agent.quality.scorers if agent.quality else ():
                if scorer not in self.quality.scorers:
                    raise ValueError(f"agents.{name}.quality.scorers: unknown scorer {scorer!r}")
        for name, scorer_settings in self.quality.scorers.items():
            if scorer_settings.model is not None and scorer_settings.model not in self.models:
                raise ValueError(
                    f"quality.scorers.{name}.model: unknown model {scorer_settings.model!r}"
                )
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        for name, agent in self.agents.items():
            if agent.model not in self.models:
                raise ValueError(f"agents.{name}.model: unknown model {agent.model!r}")
            for fallback in agent.fallbacks or ():
                if fallback not in self.models:
                    raise ValueError(f"agents.{name}.fallbacks: unknown model {fallback!r}")
        for name, model in self.models.items():
            for fallback in model.fallbacks:
                if fallback not in self.models or fallback == name:
                    raise ValueError(f"models.{name}.fallbacks: unknown model {fallback!r}")
        if self.agents and self.default_agent not in self.agents:
            raise ValueError(f"default_agent: unknown agent {self.default_agent!r}")
        if self.task_queue == "celery" and not (self.celery_broker_url or self.redis_url):
            raise ValueError("task_queue: celery needs celery_broker_url (or redis_url)")
        if self.events.sink == "redis" and not (self.events.url or self.redis_url):
            raise ValueError("events.url: the redis event sink needs a URL (or redis_url)")
        return self

    @model_validator(mode="after")
    def _budget_names_exist(self) -> Settings:
        for name in self.limits.budgets.agents:
            if name not in self.agents:
                raise ValueError(f"limits.budgets.agents.{name}: unknown agent {name!r}")
        for model, cheaper in self.limits.economy.models.items():
            for name in (model, cheaper):
                if name not in self.models:
                    raise ValueError(f"limits.economy.models.{model}: unknown model {name!r}")
        return self

    @model_validator(mode="after")
    def _cache_policies_make_sense(self) -> Settings:
        policies = [(f"models.{n}.cache", m.cache, False) for n, m in self.models.items()]
        policies += [(f"agents.{n}.cache", a.cache, True) for n, a in self.agents.items()]
        for where, policy, is_agent in policies:
            if policy is None:
                continue
            if (
                policy.mode == "semantic"
                and self.cache.semantic.threshold is None
                and self.cache.semantic.embedder != "wordllama"
            ):
                raise ValueError(f"{where}.mode: semantic with an endpoint embedder needs "
                                 "cache.semantic.threshold, calibrated for it (guarita "
                                 "cache calibrate)")  # fmt: skip
            if policy.namespace == "agent" and not is_agent:
                raise ValueError(f"{where}.namespace: agent is for an agent's cache; a "
                                 "model's entries are each key's own")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _routing_models_exist(self) -> Settings:
        for name, agent in self.agents.items():
            if agent.routing is None:
                continue
            for level in ("simple", "medium", "complex"):
                model = getattr(agent.routing, level)
                if model not in self.models:
                    raise ValueError(f"agents.{name}.routing.{level}: unknown model {model!r}")
        return self

    @model_validator(mode="after")
    def _auth_tiers_exist(self) -> Settings:
        known = ", ".join(sorted(self.limits.tiers))
        for tier in self.auth.tier_roles:
            if tier not in self.limits.tiers:
                raise ValueError(f"auth.tier_roles.{tier}: unknown tier {tier!r} (known: {known})")
        default = self.auth.jwt.default_tier
        if default is not None and default not in self.limits.tiers:
            raise ValueError(f"auth.jwt.default_tier: unknown tier {default!r} (known: {known})")
        return self

    @model_validator(mode="after")
    def _tier_models_exist(self) -> Settings:
        for tier, limits in self.limits.tiers.items():
            for name in limits.models or ():
                if name not in self.models and name not in self.agents:
                    raise ValueError(f"limits.tiers.{tier}.models: unknown model {name!r}")
        return self

    @property
    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{self.data_dir / 'guarita.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def config_path() -> Path | None:
    """The YAML file in use: ``GUARITA_CONFIG`` if set (it must exist), else ``./guarita.yaml``."""
    explicit = os.environ.get("GUARITA_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"GUARITA_CONFIG points to {explicit!r}, which is not a file")
        return path
    local = Path("guarita.yaml")
    return local if local.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one message that names each field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "settings"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
