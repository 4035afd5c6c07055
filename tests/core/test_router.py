"""The router: fan-out, QoS downgrade, retained store, de-duplication."""

from __future__ import annotations

import pytest

from edge.core.router import Message, Router

from .coresinks import Sink, message


def test_fanout_downgrades_qos_and_dedupes_overlaps() -> None:
    router = Router()
    a, b = Sink("a"), Sink("b")
    router.subscribe(a, "t/+", 0)
    router.subscribe(a, "t/#", 2)
    router.subscribe(b, "t/x", 1)
    assert router.publish(message("t/x", qos=2)) == 2
    assert a.got == [("t/x", b"x", 2, False)]
    assert b.got == [("t/x", b"x", 1, False)]
    assert router.subscription_count == 3
    assert router.subscriptions("a") == {"t/+": 0, "t/#": 2}


def test_unsubscribe_and_unsubscribe_all() -> None:
    router = Router()
    a = Sink("a")
    router.subscribe(a, "t/1", 0)
    router.subscribe(a, "t/2", 0)
    assert router.unsubscribe(a, "t/1")
    assert not router.unsubscribe(a, "t/1")
    assert router.publish(message("t/1")) == 0
    assert router.unsubscribe_all(a) == 1
    assert router.publish(message("t/2")) == 0
    assert a.got == []


def test_retained_store_clear_and_delivery_on_subscribe() -> None:
    router = Router()
    router.publish(message("r/1", b"one", qos=1, retain=True))
    router.publish(message("r/2", b"two", qos=0, retain=True))
    router.publish(message("$SYS/r", b"sys", retain=True))
    assert router.retained_count == 3
    a = Sink("a")
    router.subscribe(a, "r/#", 2)
    assert router.deliver_retained(a, "r/#", 2) == 2
    assert a.got == [("r/1", b"one", 1, True), ("r/2", b"two", 0, True)]
    b = Sink("b")
    assert router.deliver_retained(b, "#", 2) == 2  # "$SYS/r" is not matched by "#"
    # An empty retained payload clears the topic and is still delivered live.
    assert router.publish(message("r/1", b"", retain=True)) == 1
    assert router.retained("r/1") is None
    assert router.deliver_retained(Sink("c"), "r/1", 0) == 0


class Broken:
    subscriber_id = "broken"

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        raise RuntimeError("adapter bug")


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()
    good = Sink("good")
    router.subscribe(Broken(), "t", 0)
    router.subscribe(good, "t", 0)
    assert router.publish(message("t")) == 1
    assert good.got == [("t", b"x", 0, False)]
    assert "subscriber broken failed" in caplog.text
