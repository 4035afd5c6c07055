"""Deadlines sharing one loop timer (handshake and MQTT connect timeouts)."""

from __future__ import annotations

import asyncio

import pytest

from edge.core.deadlines import Deadlines

pytestmark = pytest.mark.timeout(10)


async def test_deadlines_fire_in_order_never_early_and_cancelled_ones_never() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    fired: list[tuple[int, float]] = []
    done = loop.create_future()
    added: dict[int, float] = {}

    def make(i: int) -> None:
        def callback() -> None:
            fired.append((i, loop.time()))
            if i == 8 and not done.done():
                done.set_result(None)

        added[i] = loop.time()
        entry = deadlines.add(callback)
        if i % 3 == 0:
            entry.cancel()

    for i in range(10):
        make(i)
    await asyncio.wait_for(done, 5)
    assert [i for i, _ in fired] == [1, 2, 4, 5, 7, 8]
    for i, when in fired:
        assert when >= added[i] + 0.05


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.01)
    done = loop.create_future()

    def broken() -> None:
        raise RuntimeError("a bug in one connection")

    deadlines.add(broken)
    deadlines.add(lambda: done.set_result("second"))
    assert await asyncio.wait_for(done, 5) == "second"


async def test_deadlines_added_later_are_served_by_a_new_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.01)
    first = loop.create_future()
    deadlines.add(lambda: first.set_result(None))
    await asyncio.wait_for(first, 5)
    assert len(deadlines) == 0
    second = loop.create_future()
    deadlines.add(lambda: second.set_result(None))
    await asyncio.wait_for(second, 5)
