"""The bus between edge workers: the interface, and the in-process implementation.

One edge process routes every message itself (:class:`~edge.core.router.Router`).
Several processes (``edge serve --workers N``) or several machines (``--cluster``)
each route their own devices' messages locally and carry them to the others over a
bus: :class:`edge.cluster.bus.NatsBus` on core NATS. :class:`~edge.core.hub.EdgeCore`
calls the bus at these points and nowhere else:

- :meth:`Bus.forward` after a publish was routed to this worker's subscribers;
- :meth:`Bus.watch` / :meth:`Bus.unwatch` when this worker gains its first or loses
  its last subscriber on a filter (the bus subscribes by interest, filter by filter);
- :meth:`Bus.settle` before an MQTT SUBACK, which waits until the new
  subscriptions are in place on the bus;
- :meth:`Bus.claim` when an MQTT connection on this worker takes a client id, so a
  session with that id on any other worker is ended (MQTT 5: DISCONNECT 0x8E).

The in-process implementation is :data:`LOCAL`: no bus at all. ``EdgeCore.bus`` is
``None`` then, and each hook costs one attribute test, so single-process mode pays
nothing measurable for the cluster's existence (``python -m bench --only broker``).
:class:`LocalBus` is the same behaviour as an object, for code that wants one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edge.core.router import Message

__all__ = ["LOCAL", "Bus", "LocalBus"]


class Bus(Protocol):
    """What the core needs from a bus between workers (see the module text)."""

    def forward(self, message: Message) -> None:
        """Carry ``message``, already delivered on this worker, to the other workers.

        Never blocks and never raises: a bus that cannot send counts the loss.
        """
        ...

    def watch(self, topic_filter: str) -> None:
        """This worker has its first subscriber on ``topic_filter`` (``$share/...`` too)."""
        ...

    def unwatch(self, topic_filter: str) -> None:
        """This worker's last subscriber on ``topic_filter`` has gone."""
        ...

    def claim(self, identity: str, client_id: str) -> None:
        """A connection on this worker now holds ``client_id`` of device ``identity``."""
        ...

    def settle(self, done: Callable[[], None]) -> bool:
        """True if subscriptions are still on their way to the bus; ``done()`` follows then.

        MQTT holds its SUBACK until ``done`` runs, so a device acknowledged as
        subscribed gets what any worker publishes from then on.
        """
        ...


class LocalBus:
    """The in-process bus: there are no other workers, so every hook does nothing."""

    __slots__ = ()

    def forward(self, message: Message) -> None:
        """Nothing to carry: the router already delivered to every subscriber."""

    def watch(self, topic_filter: str) -> None:
        """No one else to tell."""

    def unwatch(self, topic_filter: str) -> None:
        """No one else to tell."""

    def claim(self, identity: str, client_id: str) -> None:
        """The broker already took the session over locally."""

    def settle(self, done: Callable[[], None]) -> bool:
        """Nothing is ever in flight: subscriptions are in place at once."""
        return False


#: The in-process bus as EdgeCore holds it: none (each hook is one ``is None`` test).
LOCAL: Bus | None = None
