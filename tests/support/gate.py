"""A gate in front of the sandbox's per-LPU answers: each LPU's calls wait there until the test
opens that LPU, so an answer is late or early because the test says so, not because of how
fast the machine runs the calls before it.

`UpstreamGate.middleware` goes on a sandbox app (tests/support/burst_upstream.py takes a gate);
the MKAB list and every LPU not `held` pass straight through. Shutdown opens every gate, so a
held call still ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from gateway.sandbox.app import SANDBOX

PER_LPU = ("/api/v2/visit", "/api/v2/calldoctor", "/api/v2/disp")


class UpstreamGate:
    def __init__(self, held: Iterable[str] = ()) -> None:
        self._gates = {guid: asyncio.Event() for guid in held}
        # Per LPU GUID: calls waiting at the gate now, and the most ever waiting at once.
        self.waiting: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.arrived = 0  # calls of held LPUs that reached the gate
        self.opened_at: dict[str, float] = {}  # time.time() each gate opened (for the report)

    def hold(self, *guids: str) -> None:
        for guid in guids:
            self._gates.setdefault(guid, asyncio.Event())

    def open(self, *guids: str) -> None:
        for guid in guids:
            gate = self._gates[guid]
            if not gate.is_set():
                self.opened_at[guid] = time.time()
                gate.set()

    def open_all(self) -> None:
        self.open(*self._gates)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        guid = request.query.get("lpuGuid", "")
        gate = self._gates.get(guid) if request.path in PER_LPU else None
        if gate is not None and not gate.is_set():
            self.arrived += 1
            self.waiting[guid] = self.waiting.get(guid, 0) + 1
            self.peak[guid] = max(self.peak.get(guid, 0), self.waiting[guid])
            shutdown = request.app[SANDBOX].release
            try:
                done = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(shutdown.wait())]
                try:
                    await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in done:
                        waiter.cancel()
            finally:
                self.waiting[guid] -= 1
        return await handler(request)
