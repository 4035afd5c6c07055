"""The error tree of :mod:`edge.core`.

::

    CoreError               root of edge.core
    └── PolicyConfigError   a [policy] table that cannot be used (names the key)

Routing, policy decisions and handler failures are not exceptions: a denied
publish is a :class:`~edge.core.hub.PublishResult` and a ``policy.denied`` event;
a failing handler becomes a ``handler.failed`` event.
"""

from __future__ import annotations


class CoreError(Exception):
    """Root of every error raised by :mod:`edge.core`."""


class PolicyConfigError(CoreError):
    """A policy configuration is invalid; the message names the key and the problem."""
