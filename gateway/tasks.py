"""The app's background tasks, owned in one place: fan-outs, the lease keeper, shadow compares,
the flags watcher and the Redis probe are all started with `Tasks.spawn` (a periodic one with
`Tasks.every`, the one interval loop of the package), named, and cancelled
and awaited by `cancel` (a component's own group, when it closes) or `close` (whatever is left,
when the app's cleanup context ends). A task that dies of an exception is logged with its
traceback and counted by group; it never dies silently.

Imports nothing of the package but what it is given: the count goes through `on_crash`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("gateway.tasks")


class Tasks:
    def __init__(self, on_crash: Callable[[str], None] | None = None) -> None:
        self._groups: dict[str, set[asyncio.Task[Any]]] = {}
        self._on_crash = on_crash

    def spawn(self, coro: Coroutine[Any, Any, Any], group: str) -> asyncio.Task[Any]:
        """Runs `coro` as a task of `group` (a fixed word: it names the task and labels the count)."""
        task = asyncio.get_running_loop().create_task(coro, name=group)
        self._groups.setdefault(group, set()).add(task)
        task.add_done_callback(lambda done: self._done(group, done))
        return task

    def every(
        self,
        interval: float | Callable[[], float],
        tick: Callable[[], Awaitable[Any]],
        group: str,
        *,
        wake: asyncio.Event | None = None,
    ) -> asyncio.Task[Any]:
        """Runs `tick` every `interval` seconds (a callable is read before each wait, so a tick
        may change it) as a task of `group`, until the group is cancelled or `tick` returns
        `Tasks.STOP`. Setting `wake` runs the next tick at once (it is cleared before the tick).
        A tick that raises is logged and counted like a crashed task, and the loop goes on: one
        bad tick must not end the renewals, probes or flushes that every later request needs."""
        return self.spawn(self._every(interval, tick, group, wake), group)

    STOP: Any = object()

    async def _every(
        self,
        interval: float | Callable[[], float],
        tick: Callable[[], Awaitable[Any]],
        group: str,
        wake: asyncio.Event | None,
    ) -> None:
        while True:
            seconds = interval() if callable(interval) else interval
            if wake is None:
                await asyncio.sleep(seconds)
            else:
                try:
                    async with asyncio.timeout(seconds):
                        await wake.wait()
                except TimeoutError:
                    pass
                wake.clear()
            try:
                if await tick() is Tasks.STOP:
                    return
            except Exception as exc:
                log.error("background_tick_failed", task=group, error=type(exc).__name__, exc_info=exc)
                if self._on_crash is not None:
                    self._on_crash(group)
            # A cancel that lands in a tick may be swallowed by a library that finishes its call
            # instead of raising (redis-py does, to keep its connection usable): the loop would
            # go on and `cancel` would wait for it forever. The request is still on the task.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError

    def _done(self, group: str, task: asyncio.Task[Any]) -> None:
        self._groups[group].discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background_task_failed", task=group, error=type(exc).__name__, exc_info=exc)
            if self._on_crash is not None:
                self._on_crash(group)

    def count(self, group: str) -> int:
        return len(self._groups.get(group, ()))

    async def cancel(self, group: str) -> int:
        """Cancels the group's tasks and waits for them to end; returns how many there were."""
        tasks = list(self._groups.get(group, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def close(self) -> None:
        """Cancels and awaits every task still running, whatever its group."""
        for group in list(self._groups):
            await self.cancel(group)
