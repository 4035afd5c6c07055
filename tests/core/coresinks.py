"""A recording subscriber and a message builder for the router and core tests."""

from __future__ import annotations

from edge.core.router import Message


class Sink:
    """A subscriber that records what it receives."""

    def __init__(self, name: str) -> None:
        self.subscriber_id = name
        self.got: list[tuple[str, bytes, int, bool]] = []

    def deliver(self, message: Message, qos: int, retained: bool) -> None:
        """Record ``(topic, payload, qos, retained)``."""
        self.got.append((message.topic, message.payload, qos, retained))


def message(
    topic: str,
    payload: bytes = b"x",
    qos: int = 0,
    retain: bool = False,
    *,
    origin: str = "s/dev",
) -> Message:
    """A message published by ``origin`` over a test protocol at time 0."""
    return Message(topic, payload, qos, retain, origin, "test", 0.0)
