"""edge.core: what every protocol adapter shares; no network library, no ``ssl``.

=====================  ==========================================================
:mod:`.session`        ``SessionInfo`` / ``DeviceIdentity``: who is connected
:mod:`.events`         ``EventLog``: handshakes, connections, policy decisions
:mod:`.topics`         topic matching, filter containment, ``TopicTree``
:mod:`.router`         ``Message``, the ``Subscriber`` protocol, ``Router``
:mod:`.policy`         ``Policy`` / ``PolicyConfig``: who may publish where
:mod:`.handlers`       ``HandlerRegistry``: edge services on topic filters
:mod:`.metrics`        ``Metrics``: hot-path counters
:mod:`.hub`            ``EdgeCore``: all of the above, handed to every adapter
=====================  ==========================================================

Errors::

    CoreError               root of edge.core (edge.core.errors)
    └── PolicyConfigError   an unusable [policy] table, naming the key

Decisions are not exceptions: a denied publish or subscribe is a result plus a
``policy.denied`` event; a failing handler is a ``handler.failed`` event.
"""
