"""The places upstream calls take (gateway/upstream/slots.py): a Gate never lets more than its
limit through, hands freed places to waiters first come first served, and a wait that ends
(timed out or cancelled) leaves no place lost and no state behind."""

from __future__ import annotations

import asyncio

import pytest

from gateway.observability.metrics import Metrics
from gateway.upstream.slots import Gate, LpuSlots, NoSlot


async def test_a_gate_admits_its_limit_then_hands_places_over_in_arrival_order() -> None:
    gate = Gate(2)
    assert gate.take() and gate.take()
    assert not gate.take()  # full
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.wait(5.0)
        order.append(n)

    waiters = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)  # each is queued
    gate.release()
    gate.release()
    await asyncio.sleep(0)
    assert order == [0, 1]  # the first two, in the order they came
    # A newcomer does not jump the queue while someone waits.
    assert not gate.take()
    gate.release()  # waiter 0's place, to waiter 2
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert not gate.take()  # waiters 1 and 2 hold both places
    gate.release()
    gate.release()
    assert gate.idle and gate.take()


async def test_a_timed_out_wait_loses_no_place() -> None:
    gate = Gate(1)
    assert gate.take()
    with pytest.raises(TimeoutError):
        await gate.wait(0.01)
    gate.release()
    assert gate.idle  # the timed-out waiter left the queue: the place is free again
    assert gate.take()


async def test_a_wait_cancelled_as_it_is_handed_a_place_passes_it_on() -> None:
    gate = Gate(1)
    assert gate.take()
    first = asyncio.create_task(gate.wait(5.0))
    second = asyncio.create_task(gate.wait(5.0))
    await asyncio.sleep(0)
    gate.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1.0)  # the place went on to the next waiter
    gate.release()
    assert gate.idle


async def test_lpu_slots_keep_state_only_while_a_call_holds_or_waits() -> None:
    slots = LpuSlots(1, Metrics())
    assert slots.take("lpu")
    assert slots.tracked == 1
    with pytest.raises(NoSlot):
        await slots.wait("lpu", 0.01)
    assert slots.tracked == 1  # still held
    slots.release("lpu")
    assert slots.tracked == 0
    async with slots.hold("other", wait=1.0):
        assert slots.tracked == 1
    assert slots.tracked == 0
