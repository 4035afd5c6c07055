"""EdgeCore: policy + router + handlers + events, as adapters use it."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from edge.core.events import EventLog
from edge.core.handlers import HandlerContext, HandlerRegistry
from edge.core.hub import EdgeCore
from edge.core.policy import Policy
from edge.core.router import Message
from edge.core.session import DeviceIdentity, SessionInfo

from .coresinks import Sink, message

SESSION = SessionInfo(identity=DeviceIdentity(namespace="fleet", name="dev-1"), peer="127.0.0.1:1")


msg = partial(message, origin="fleet/dev-1")


def test_denials_are_results_and_events() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.default())
    result = core.publish(msg("devices/dev-2/x"), SESSION)
    assert not result.allowed
    assert "no publish rule" in result.reason
    assert core.subscribe(Sink("s"), "#", 0, SESSION) is None
    denied = events.query(kind="policy.denied")
    assert [(e["action"], e["topic"], e["identity"]) for e in denied] == [
        ("publish", "devices/dev-2/x", "fleet/dev-1"),
        ("subscribe", "#", "fleet/dev-1"),
    ]
    assert core.metrics.snapshot()["publish_denied"] == 1
    assert core.check_client_id(SESSION, "nope") is not None


def test_publish_subscribe_and_retained() -> None:
    core = EdgeCore(EventLog(log_events=False), Policy.default())
    sink = Sink("s")
    core.publish(msg("devices/dev-1/state", b"on", qos=1, retain=True), SESSION)
    assert core.subscribe(sink, "devices/dev-1/#", 2, SESSION) == 2
    assert sink.got == [("devices/dev-1/state", b"on", 1, True)]
    assert core.publish(msg("devices/dev-1/t", qos=2), SESSION).delivered == 1
    assert sink.got[-1] == ("devices/dev-1/t", b"x", 2, False)
    retained = core.retained("devices/dev-1/state")
    assert retained is not None
    assert retained.payload == b"on"
    snapshot = core.snapshot()
    assert (snapshot["subscriptions"], snapshot["retained"], snapshot["messages_in"]) == (1, 1, 2)
    assert core.unsubscribe(sink, "devices/dev-1/#")
    assert core.publish(msg("devices/dev-1/t"), SESSION).delivered == 0
    # The edge itself (session None) is not subject to device policy.
    assert core.publish(msg("anywhere"), None).allowed
    assert core.publish(msg("$SYS/edge/x"), None).allowed


def test_dollar_namespace_is_the_edges_even_with_an_open_policy() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.open())
    result = core.publish(msg("$SYS/fake"), SESSION)
    assert result == (False, "the $ namespace is reserved for the edge", 0)
    assert events.query(kind="policy.denied")[0]["topic"] == "$SYS/fake"


@pytest.mark.timeout(5)
async def test_handlers_sync_async_failure_isolation_and_replies() -> None:
    events = EventLog(log_events=False)
    registry = HandlerRegistry()
    core = EdgeCore(events, Policy.default(), handlers=registry)
    seen: list[str] = []

    @registry.on("devices/+/ota/request")
    async def ota(ctx: HandlerContext, message: Message) -> None:
        await asyncio.sleep(0)
        await ctx.publish(f"devices/{ctx.identity.name}/ota/offer", b"v2:" + message.payload)

    @registry.on("devices/#", name="boom")
    def boom(ctx: HandlerContext, message: Message) -> None:
        seen.append(message.topic)
        raise RuntimeError("handler bug")

    @registry.on("devices/+/ota/#", name="async-boom")
    async def async_boom(ctx: HandlerContext, message: Message) -> None:
        raise ValueError("async bug")

    sink = Sink("s")
    core.subscribe(sink, "devices/dev-1/ota/offer", 0, SESSION)
    result = core.publish(msg("devices/dev-1/ota/request", b"v1"), SESSION)
    assert result.allowed
    await registry.drain()
    assert sink.got == [("devices/dev-1/ota/offer", b"v2:v1", 0, False)]
    failures = sorted(e["handler"] for e in events.query(kind="handler.failed"))
    # "boom" ran for the request and for the offer; "async-boom" for both as well.
    assert failures == ["async-boom", "async-boom", "boom", "boom"]
    assert seen == ["devices/dev-1/ota/request", "devices/dev-1/ota/offer"]
    assert core.metrics.handler_failures == 4
    assert registry.unregister("boom")
    assert not registry.unregister("boom")
    with pytest.raises(ValueError, match="not a valid topic filter"):
        registry.register("a/#/b", boom)


def test_repeated_denials_are_summarized() -> None:
    events = EventLog(log_events=False)
    core = EdgeCore(events, Policy.default())
    for _ in range(2500):
        core.publish(msg("devices/dev-2/x"), SESSION)
    core.publish(msg("devices/dev-3/x"), SESSION)
    counts = [(e["topic"], e["count"]) for e in events.query(kind="policy.denied")]
    assert counts == [
        ("devices/dev-2/x", 1),
        ("devices/dev-2/x", 1000),
        ("devices/dev-2/x", 2000),
        ("devices/dev-3/x", 1),
    ]
    assert core.metrics.publish_denied == 2501
