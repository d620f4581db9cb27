"""A fan-out run and its targets (gateway/sessions/fanout.py `Run`), and the lease keeper that
renews their leases (gateway/sessions/leases.py): a run on the in-process store against an
upstream whose answers the test releases one LPU at a time, so nothing depends on timing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import Config
from gateway.contract import COMPLETE, FAILED
from gateway.observability.metrics import Metrics
from gateway.sessions.fanout import Fanout, Run, dumps_kept
from gateway.sessions.leases import GROUP as KEEPER
from gateway.sessions.leases import Leases
from gateway.store.memory import MemoryStore
from gateway.store.session import Session, entry_state
from gateway.tasks import Tasks
from gateway.upstream.answers import AnswerCaps, CallFailure
from gateway.upstream.client import Caller
from tests.support.gateway import wait_until

LPUS = ("lpu-a", "lpu-b")
CALLER = Caller(authorization="Bearer t", request_id="r")


class GatedUpstream:
    """Each LPU answers its three calls once the test opens its gate: `[]`, or a 500 if failing."""

    def __init__(self) -> None:
        self.gates = {guid: asyncio.Event() for guid in LPUS}
        self.failing: set[str] = set()

    async def for_lpu(self, method: str, lpu_guid: str, caller: Caller) -> bytes:
        await self.gates[lpu_guid].wait()
        if lpu_guid in self.failing:
            raise CallFailure("status", 500)
        return b"[]"


@dataclass
class Rig:
    store: MemoryStore
    fanout: Fanout
    upstream: GatedUpstream
    tasks: Tasks
    crashes: list[str]  # groups whose task or tick raised

    async def session(self) -> Session:
        """A new session of the two LPUs, stored (which takes its lease here)."""
        now = time.time()
        lpus = tuple(dumps_kept({"guid": guid}) for guid in LPUS)
        session = Session(str(uuid.uuid4()), "hash", now, now + 30, lpus, LPUS)
        await self.store.create(session)
        return session

    async def results(self, guid: str) -> dict[int, str]:
        loaded = await self.store.load(guid)
        assert loaded is not None
        return {index: entry_state(entry) for index, entry in loaded.results.items()}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    config = Config().replace(redis={"lease_ttl": 0.3})
    crashes: list[str] = []
    metrics, tasks = Metrics(), Tasks(on_crash=crashes.append)
    store = MemoryStore(100, 60.0, metrics, lease_ttl=config.redis.lease_ttl)
    upstream = GatedUpstream()
    leases = Leases(store, tasks, config.redis.lease_ttl)
    caps = AnswerCaps(1000, 100, config.session.max_entry_bytes)
    fanout = Fanout(config.session, store, upstream, metrics, tasks, leases, caps, 6)  # type: ignore[arg-type]
    yield Rig(store, fanout, upstream, tasks, crashes)
    await fanout.close()
    await tasks.close()


async def run_to_end(run: Run) -> None:
    assert run.task is not None
    await run.task


async def test_a_target_receives_every_result_written_after_it_was_added(rig: Rig) -> None:
    source, early, late = await rig.session(), await rig.session(), await rig.session()
    run = rig.fanout.start(source, CALLER, range(2))
    task = run.task
    assert run.running and run.add_target(early.guid)
    rig.upstream.gates["lpu-a"].set()
    # Written to the source, then to the targets of that moment.
    await wait_until(lambda: rig.results(early.guid), what="the first LPU written to the target")
    assert run.add_target(late.guid)
    assert rig.fanout.runs_here(early.guid) and rig.fanout.runs_here(late.guid)
    rig.upstream.gates["lpu-b"].set()
    assert task is not None
    await task
    assert await rig.results(source.guid) == {0: COMPLETE, 1: COMPLETE}
    assert await rig.results(early.guid) == {0: COMPLETE, 1: COMPLETE}
    # What the run wrote before a target was added is the adder's to copy (the service does).
    assert await rig.results(late.guid) == {1: COMPLETE}
    assert not run.failed


async def test_an_ended_run_takes_no_target_and_holds_no_lease(rig: Rig) -> None:
    source, target, after = await rig.session(), await rig.session(), await rig.session()
    run = rig.fanout.start(source, CALLER, range(2))
    assert run.add_target(target.guid)
    for gate in rig.upstream.gates.values():
        gate.set()
    await run_to_end(run)
    assert not run.running and run.targets == []
    assert not run.add_target(after.guid), "nothing more will be written"
    assert not any(rig.fanout.runs_here(guid) for guid in (source.guid, target.guid, after.guid))


async def test_a_failed_lpu_marks_the_run_failed_and_reaches_its_targets(rig: Rig) -> None:
    source, target = await rig.session(), await rig.session()
    rig.upstream.failing.add("lpu-b")
    run = rig.fanout.start(source, CALLER, range(2))
    assert run.add_target(target.guid)
    for gate in rig.upstream.gates.values():
        gate.set()
    await run_to_end(run)
    assert run.failed
    assert await rig.results(target.guid) == {0: COMPLETE, 1: FAILED}


async def test_a_run_with_nothing_to_run_has_ended_at_once(rig: Rig) -> None:
    done: list[bool] = []
    run = rig.fanout.start(await rig.session(), CALLER, [], lambda: done.append(True))
    assert done == [True] and not run.running
    assert not run.add_target(str(uuid.uuid4()))
    assert rig.tasks.count(KEEPER) == 0, "no lease to renew, no keeper"


def count_renewals(rig: Rig, monkeypatch: pytest.MonkeyPatch, fail_first: bool = False) -> list[set[str]]:
    """The guids of each renewal the keeper makes from now on (the first raising, if asked)."""
    renewals: list[set[str]] = []
    renew = rig.store.renew_leases

    async def counted(guids: Any) -> set[str]:
        renewals.append(set(guids))
        if fail_first and len(renewals) == 1:
            raise RuntimeError("a bug in one renewal")
        return await renew(guids)

    monkeypatch.setattr(rig.store, "renew_leases", counted)
    return renewals


async def not_orphaned(rig: Rig, *guids: str) -> bool:
    loaded = [await rig.store.load(guid) for guid in guids]
    return all(session is not None and not session.orphaned for session in loaded)


async def test_the_keeper_renews_while_a_run_lasts_stops_when_idle_and_starts_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewals = count_renewals(rig, monkeypatch)
    source, target = await rig.session(), await rig.session()
    run = rig.fanout.start(source, CALLER, range(2))
    assert run.add_target(target.guid)
    assert rig.tasks.count(KEEPER) == 1
    # Past several lease periods (0.3 s) while the run waits, both leases are held.
    await wait_until(lambda: len(renewals) >= 4, what="four renewals")
    assert renewals[-1] == {source.guid, target.guid}
    assert await not_orphaned(rig, source.guid, target.guid)
    for gate in rig.upstream.gates.values():
        gate.set()
    await run_to_end(run)
    await wait_until(lambda: rig.tasks.count(KEEPER) == 0, what="the idle keeper stopped")
    second = rig.fanout.start(await rig.session(), CALLER, range(2))
    assert rig.tasks.count(KEEPER) == 1, "a new run starts a keeper again"
    await run_to_end(second)


async def test_a_renewal_that_raises_is_counted_and_the_keeper_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewals = count_renewals(rig, monkeypatch, fail_first=True)
    session = await rig.session()
    run = rig.fanout.start(session, CALLER, range(2))
    await wait_until(lambda: len(renewals) >= 3, what="renewals after the broken one")
    assert rig.crashes == [KEEPER] and rig.tasks.count(KEEPER) == 1
    assert await not_orphaned(rig, session.guid)
    for gate in rig.upstream.gates.values():
        gate.set()
    await run_to_end(run)
