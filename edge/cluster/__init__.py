"""Scaling out on NATS: edge workers on every core and edge nodes on several machines.

This package is the optional, NATS-backed side of three interfaces that the rest of
the edge defines with in-process defaults (see DESIGN.md, "Cluster"):

- the **bus** that carries publishes, retained messages, session ownership and events
  between workers and nodes;
- the **trust store** of certificate sets, versions, bindings and CRLs (JetStream KV,
  changed with compare-and-swap);
- the **propagator**, which makes a version active only once every live worker of every
  node has acknowledged applying it (heartbeats with a TTL judge liveness).

Single-process mode never imports this package, and only modules here import ``nats``
(the ``edgesim[cluster]`` extra). :mod:`edge.cluster.natsserver` starts local
nats-server processes for ``edge serve --workers N`` and for the tests.
"""
