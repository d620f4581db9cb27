"""Circuit breakers, one per upstream target (an LPU's method for the per-LPU calls, the host
for the MKAB list), so that a dead hospital fails its LPU at once instead of holding three
connections per session until the call timeout or the session deadline.

closed: calls go through; `failures` consecutive failures (timeouts, connection errors) open
the circuit. open: calls fail at once for `cooldown` seconds. Then one probe call is let through
(half-open): a success closes the circuit, a failure opens it for another `cooldown`.
Only targets with recent failures hold state, in an LRU of `max_keys`: a forgotten target is
simply closed again. The LRU is an OrderedDict (C code) rather than cachetools' (Python): every
upstream call asks it twice, and nearly always finds nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

log = structlog.get_logger("gateway.breaker")


class _Circuit:
    __slots__ = ("failures", "opened_at", "probing")

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False


class Breakers:
    def __init__(
        self, failures: int, cooldown: float, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._max_keys = max_keys
        self._circuits: OrderedDict[str, _Circuit] = OrderedDict()

    def _get(self, key: str) -> _Circuit | None:
        circuit = self._circuits.get(key)
        if circuit is not None:
            self._circuits.move_to_end(key)
        return circuit

    def state(self, key: str) -> str:
        circuit = self._get(key)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        if circuit.probing or self._clock() - circuit.opened_at < self._cooldown:
            return "open"
        return "half_open"

    def open_count(self) -> int:
        """Circuits open now (half-open ones included): the console's upstream health."""
        return sum(1 for key in list(self._circuits) if self.state(key) != "closed")

    def allow(self, key: str) -> bool:
        """Whether a call to `key` may go now; in half-open state only the first caller may."""
        state = self.state(key)
        if state == "half_open":
            self._circuits[key].probing = True
        return state != "open"

    def record(self, key: str, ok: bool | None) -> None:
        """The outcome of an allowed call: True (the target answered), False (it failed in a way
        that counts), None (the call was cancelled: it proves nothing either way)."""
        circuit = self._get(key)
        if ok is None:
            if circuit is not None:
                circuit.probing = False
            return
        if ok:
            if circuit is not None:
                del self._circuits[key]
                if circuit.opened_at is not None:
                    log.info("circuit_closed", target=key)
            return
        if circuit is None:
            circuit = self._circuits[key] = _Circuit()
            if len(self._circuits) > self._max_keys:
                self._circuits.popitem(last=False)
        circuit.failures += 1
        was_probing, circuit.probing = circuit.probing, False
        if was_probing or (circuit.opened_at is None and circuit.failures >= self._threshold):
            if circuit.opened_at is None:
                log.warning("circuit_opened", target=key, failures=circuit.failures)
            circuit.opened_at = self._clock()
