"""One edge worker of a cluster: what ``edge serve --worker-index I`` adds to a plain edge.

A worker is an ordinary :class:`~edge.server.EdgeServer` with three differences:

- its device listeners bind with ``SO_REUSEPORT``, so the workers of one machine share
  the public ports and the kernel spreads connections over them;
- its core has a :class:`~edge.cluster.bus.NatsBus`, started before any listener
  binds (and so before the ready file is written);
- its MQTT 5 CONNACKs name it (user property ``edgesim-worker: node/index``).

Its certificate sets come from the cluster's store in NATS JetStream KV
(:func:`edge.cluster.trust.cluster_trust_source`): a change is active once every live
worker of every node has acknowledged it, and handshakes use the worker's own copy.
A caller may pass another :data:`edge.server.TrustSource`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge.server import BusFactory, EdgeServer, TrustSource

__all__ = ["worker_label", "worker_server_options"]


def worker_label(node: str, index: int) -> str:
    """A worker's name: ``node/index``."""
    return f"{node}/{index}"


def worker_server_options(
    servers: Sequence[str],
    *,
    node: str,
    index: int,
    trust_source: TrustSource | None = None,
    local: bool = False,
) -> dict[str, Any]:
    """The :class:`EdgeServer` keyword arguments that make an edge worker ``index`` of ``node``.

    ``local``: the bus is this machine's own (no other node reads events).
    """
    label = worker_label(node, index)

    async def start_bus(server: EdgeServer) -> Any:
        from edge.cluster.bus import NatsBus

        assert server.core is not None
        admin = server.config.listeners.admin is not None
        bus = NatsBus(
            server.core,
            servers,
            worker=label,
            events=server.events,
            broker=server.broker,
            admin=admin,
            forward_events=not (admin and local),
        )
        try:
            await bus.start()
        except BaseException:
            await bus.close()
            raise
        return bus

    factory: BusFactory = start_bus
    if trust_source is None:
        from edge.cluster.trust import cluster_trust_source

        trust_source = cluster_trust_source(list(servers), node=node, worker=str(index))
    return {"reuse_port": True, "bus": factory, "worker": label, "trust_source": trust_source}
