"""This replica's session leases: which sessions it runs (or writes as targets of a run,
gateway/sessions/fanout.py), and the keeper that renews their leases in the store several times
per `lease_ttl` (a `Tasks.every` loop, gateway/tasks.py).

Another replica tells a running session from an orphaned one by its lease (docs/replicas.md,
"Ownership and takeover"). The keeper exists only while there is a lease to renew, so an idle
replica keeps no task at rest.
"""

from __future__ import annotations

import asyncio

import structlog

from gateway.store.base import SessionStore, StoreUnavailable
from gateway.tasks import Tasks

log = structlog.get_logger("gateway.leases")

GROUP = "lease_keeper"


class Leases:
    def __init__(self, store: SessionStore, tasks: Tasks, lease_ttl: float) -> None:
        self._store = store
        self._tasks = tasks
        self._lease_ttl = lease_ttl
        # Session guid → the task running its fan-out here.
        self._own: dict[str, asyncio.Task[None]] = {}
        # Sessions sharing a fan-out running here → that fan-out's task: their leases are renewed
        # while it runs, but losing one never stops it (it is another session's fan-out).
        self._shared: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None

    def hold(self, guid: str, task: asyncio.Task[None]) -> None:
        """`task` runs `guid`'s fan-out here; its lease (already taken) is renewed from now on."""
        self._own[guid] = task
        # Done, not the group's count: a keeper that has just stopped stays counted until its
        # done callback runs, and a hold() before that would be left without one.
        if self._keeper is None or self._keeper.done():
            self._keeper = self._tasks.every(self._lease_ttl / 3, self._renew, GROUP)

    def share(self, guid: str, task: asyncio.Task[None]) -> None:
        """Session `guid` is a target of the fan-out `task` (gateway/sessions/fanout.py, `Run`):
        its lease is renewed while that runs."""
        self._shared[guid] = task

    def holds(self, guid: str) -> bool:
        """Whether `guid`'s lease is renewed here (its own fan-out or one it is a target of)."""
        return guid in self._own or guid in self._shared

    def drop(self, guid: str, task: asyncio.Task[None] | None, shared: list[str]) -> None:
        """The fan-out `task` of `guid` ended: stop renewing its lease and its sharers'."""
        if self._own.get(guid) is task:
            del self._own[guid]
        for other in shared:
            self._shared.pop(other, None)

    async def _renew(self) -> object:
        """One tick of the keeper (`Tasks.every`, every lease_ttl / 3): renews the leases of the
        fan-outs running here; stops a fan-out whose lease another replica holds now, or whose
        session is gone. A tick that raises is logged and counted there, and renewals go on."""
        if not self._own and not self._shared:
            return Tasks.STOP  # idle: the next hold() starts a keeper again
        running = dict(self._own)
        try:
            lost = await self._store.renew_leases(running.keys() | self._shared.keys())
        except StoreUnavailable:
            return None  # logged by the store; a lease that lapses meanwhile is retaken or lost
        for guid in lost:
            log.warning("lease_lost", session=guid)
            if guid in running:
                running[guid].cancel()
            self._shared.pop(guid, None)
        return None

    def held(self) -> list[str]:
        return [*self._own, *self._shared]

    async def release(self, held: list[str]) -> None:
        """Stops renewing and gives up the leases `held` (taken before their fan-outs were
        cancelled, which drops them from here), so that another replica can take the sessions
        over at the next poll, not a lease later."""
        await self._tasks.cancel(GROUP)
        for guid in held:
            try:
                await self._store.release_lease(guid)
            except StoreUnavailable:
                break  # the leases lapse by themselves
