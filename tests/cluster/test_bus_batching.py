"""The bus gathers session claims and events before they go to NATS (real nats-server).

One NATS message per connect woke nats-server and every other worker per connect;
the bus now sends claims at most once per ``CLAIM_WINDOW`` (the first at once) and
events once per ``EVENT_WINDOW``. These tests watch the subjects with a plain NATS
client and count the messages and what they carry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

nats = pytest.importorskip("nats")

from edge.cluster import bus as busmod  # noqa: E402
from edge.cluster.bus import CLAIM, EVENTS, NatsBus  # noqa: E402
from edge.cluster.natsserver import NatsServer  # noqa: E402
from edge.core.events import EventLog  # noqa: E402
from edge.core.hub import EdgeCore  # noqa: E402
from edge.core.policy import Policy  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class Watcher:
    """A plain NATS client that keeps every message on one subject."""

    def __init__(self, decode: Callable[[bytes], Any] = json.loads) -> None:
        self.messages: list[Any] = []
        self.arrived = asyncio.Event()
        self.decode = decode

    async def on_msg(self, msg: Any) -> None:
        self.messages.append(self.decode(msg.data))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async def reach() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(reach(), timeout)


async def _bus(server: NatsServer, events: EventLog, **kw: Any) -> NatsBus:
    core = EdgeCore(events, Policy.open())
    bus = NatsBus(core, [server.url], worker="n/0", events=events, **kw)
    await bus.start(sync_timeout=0.2)
    return bus


async def test_claims_in_one_window_go_as_one_message_and_the_first_at_once(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long window, so that the test does not race it: the first claim must still
    # go at once, the rest together when the window ends.
    monkeypatch.setattr(busmod, "CLAIM_WINDOW", 2.0)
    watcher = Watcher()
    nc = await nats.connect(server.url)
    await nc.subscribe(CLAIM, cb=watcher.on_msg)
    await nc.flush()
    bus = await _bus(server, EventLog(log_events=False))
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        bus.claim("dev-1", "c1")
        await watcher.wait_for(1)
        assert loop.time() - start < 1.5, "the first claim waited for the window"
        assert bus.nc is not None
        for i in range(2, 12):
            bus.claim(f"dev-{i}", f"c{i}")
            # Let the bus's sender run and NATS answer between claims: batching
            # within one loop iteration would not be enough.
            await bus.nc.flush()
        await watcher.wait_for(2)
        first, second = watcher.messages
        assert first[0] == bus.key
        assert first[1] == [["dev-1", "c1"]]
        assert second[0] == bus.key
        assert second[1] == [[f"dev-{i}", f"c{i}"] for i in range(2, 12)]
        # A claim made just before close goes out with the close.
        bus.claim("dev-last", "c-last")
        await bus.close()
        await watcher.wait_for(3)
        assert watcher.messages[2][1] == [["dev-last", "c-last"]]
        assert len(watcher.messages) == 3
    finally:
        await bus.close()
        await nc.close()


async def test_events_of_a_window_go_as_one_message_and_a_full_batch_at_once(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(busmod, "EVENT_WINDOW", 2.0)
    monkeypatch.setattr(busmod, "EVENT_BATCH", 5)

    def decode(data: bytes) -> list[dict[str, Any]]:
        # Each event as the admin worker will emit it: kind, outcome and fields.
        return [
            {"kind": kind, "outcome": outcome, **fields}
            for kind, outcome, fields in busmod._decode_events(data)
        ]

    watcher = Watcher(decode)
    nc = await nats.connect(server.url)
    await nc.subscribe(EVENTS, cb=watcher.on_msg)
    await nc.flush()
    events = EventLog(log_events=False)
    bus = await _bus(server, events, forward_events=True)
    try:
        assert bus.nc is not None
        for i in range(3):
            events.emit("probe.small", "info", n=i)
            await bus.nc.flush()  # the sender runs between events
        await watcher.wait_for(1)
        batch = watcher.messages[0]
        assert [e["n"] for e in batch] == [0, 1, 2]
        assert all(e["worker"] == "n/0" and e["kind"] == "probe.small" for e in batch)
        assert all("id" not in e for e in batch), "the local event id travelled"
        # EVENT_BATCH events go at once, without waiting for the window.
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(5):
            events.emit("probe.full", "info", n=i)
        await watcher.wait_for(2)
        assert loop.time() - start < 1.5, "a full batch waited for the window"
        assert [e["n"] for e in watcher.messages[1]] == [0, 1, 2, 3, 4]
        # What the window holds at close is sent, not dropped.
        events.emit("probe.late", "info", n=99)
        await bus.close()
        await watcher.wait_for(3)
        assert [e["kind"] for e in watcher.messages[2]] == ["probe.late"]
    finally:
        await bus.close()
        await nc.close()
