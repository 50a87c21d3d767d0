"""Economy mode: what a budget does at 100 % when ``limits.budgets.action`` is ``economy``.

Instead of refusing, the calls charged to the used-up budget (a key's, an agent's, or the
total: its *scope*) go on in economy mode until the budget's period ends: the model is
swapped for its cheaper one (``limits.economy.models``), request, token and concurrency
limits are multiplied by ``limit_factor`` (halved by default), response-cache TTLs by
``cache_ttl_factor`` (``Call.economy`` tells the cache stage), and the used-up budget keeps
counting without refusing. Answers carry ``x-guarita-economy: <scope>``.

A process enters economy mode for a scope when its own admission finds the budget used up,
and tells the others (publish on the shared state), so the check on the hot path is a dict
lookup. An operator lifts it for the rest of the period (``guarita economy off``, or
``POST /admin/economy/off``): then calls are served as usual and the budget only counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import structlog

from guarita.settings import EconomySettings
from guarita.state import Broadcast
from guarita.state.listener import Listener
from guarita.types import Call

log = structlog.get_logger("guarita.economy")

CHANNEL = "economy"


def scopes_of(call: Call) -> list[str]:
    """The budget scopes a call is charged to (the names the budget counters carry)."""
    scopes = []
    if call.caller.key_id is not None:
        scopes.append(f"key:{call.caller.key_id}")
    if call.agent:
        scopes.append(f"agent:{call.agent}")
    scopes.append("total")
    return scopes


class EconomyMode:
    def __init__(
        self,
        settings: EconomySettings,
        broadcast: Broadcast,
        *,
        on_call: Callable[[str], None] = lambda scope: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._broadcast = broadcast
        self._on_call = on_call
        self._clock = clock
        self._economy: dict[str, float] = {}  # scope: until (epoch s)
        self._lifted: dict[str, float] = {}  # scope: until; an operator lifted it
        self._listener = Listener(broadcast, CHANNEL, self._on_message)

    async def start(self) -> None:
        await self._listener.start()

    def _on_message(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            log.warning("economy_message_malformed")
            return
        self._apply(message)

    def _apply(self, message: dict[str, object]) -> None:
        scope, until, kind = message.get("scope"), message.get("until"), message.get("kind")
        if not isinstance(scope, str) or not isinstance(until, int | float):
            return
        target = self._economy if kind == "enter" else self._lifted
        target[scope] = max(float(until), target.get(scope, 0.0))
        if kind == "lift":
            self._economy.pop(scope, None)

    def _live(self, table: dict[str, float], scope: str) -> bool:
        until = table.get(scope)
        if until is None:
            return False
        if until <= self._clock():
            del table[scope]  # the period is over
            return False
        return True

    def mode_for(self, call: Call) -> tuple[str | None, set[str]]:
        """The scope that puts the call in economy mode (or None), and the scopes whose
        budget only counts for it (in economy, or lifted)."""
        economy: str | None = None
        lenient: set[str] = set()
        for scope in scopes_of(call):
            if self._live(self._lifted, scope):
                lenient.add(scope)
            elif self._live(self._economy, scope):
                lenient.add(scope)
                economy = economy or scope
        return economy, lenient

    def apply(self, call: Call, scope: str) -> float:
        """Put ``call`` in economy mode; returns the factor for its limits."""
        cheaper = self.settings.models.get(call.model)
        if cheaper is not None:
            call.model = cheaper
        call.economy = True
        call.response_headers["x-guarita-economy"] = scope
        call.record.economy = scope
        self._on_call(scope)
        return self.settings.limit_factor

    async def enter(self, scope: str, until: float) -> None:
        """This process found ``scope``'s budget used up: economy until ``until``."""
        self._economy[scope] = until
        log.warning("economy_mode_entered", budget=scope, until=until)
        await self._tell({"kind": "enter", "scope": scope, "until": until})

    async def lift(self, scope: str, until: float) -> None:
        """An operator's decision: serve ``scope`` as usual until ``until``."""
        self._lifted[scope] = until
        self._economy.pop(scope, None)
        log.warning("economy_mode_lifted", budget=scope, until=until)
        await self._tell({"kind": "lift", "scope": scope, "until": until})

    async def _tell(self, message: dict[str, object]) -> None:
        try:
            await self._broadcast.publish(CHANNEL, orjson.dumps(message))
        except Exception as exc:  # noqa: BLE001 - the others find out at their next refusal
            log.warning("economy_publish_failed", error_type=type(exc).__name__)

    def report(self) -> dict[str, dict[str, float]]:
        """What this process knows: scopes in economy mode and lifted, with their ends."""
        now = self._clock()
        return {
            "economy": {s: u for s, u in self._economy.items() if u > now},
            "lifted": {s: u for s, u in self._lifted.items() if u > now},
        }

    async def aclose(self) -> None:
        await self._listener.aclose()
