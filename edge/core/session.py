"""Who is on the other end of an authenticated connection.

The TLS layer (:mod:`edge.tls`) builds one :class:`SessionInfo` per accepted
handshake and hands it to the protocol adapter it selected (MQTT, HTTP,
WebSocket). Adapters and the core use it for policy, events and routing; nothing
here imports ``ssl`` or a network library.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

_connection_ids = itertools.count(1)


def next_connection_id() -> int:
    """Return a process-unique, increasing connection id."""
    return next(_connection_ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceIdentity:
    """A device's identity, namespaced by the certificate set that verified it.

    Equal common names under two different CAs (two sets) are two devices:
    ``namespace`` keeps them apart.
    """

    namespace: str
    name: str
    # "namespace/name", made once: events, sessions and routes all hold this text,
    # and one shared string per connected device is less memory than one each.
    _text: str = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", f"{self.namespace}/{self.name}")

    def __str__(self) -> str:
        return self._text


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCertificate:
    """The facts about a presented client certificate that events and policy use."""

    subject: str
    issuer: str
    serial: str
    sha256: str
    not_before: str
    not_after: str

    def as_dict(self) -> dict[str, str]:
        """The facts as a JSON-ready dict (what events carry)."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "sha256": self.sha256,
            "not_before": self.not_before,
            "not_after": self.not_after,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInfo:
    """An accepted, mutually authenticated connection, as protocol adapters see it."""

    identity: DeviceIdentity
    peer: str
    sni: str | None = None
    alpn: str | None = None
    tls_version: str = ""
    cipher: str = ""
    certificate: PeerCertificate | None = None
    set_name: str = ""
    set_version: int = 0
    connection_id: int = field(default_factory=next_connection_id)
