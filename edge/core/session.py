"""Who is on the other end of an authenticated connection.

The TLS layer (:mod:`edge.tls`) builds one :class:`SessionInfo` per accepted
handshake and hands it to the protocol adapter it selected (MQTT, HTTP,
WebSocket). Adapters and the core use it for policy, events and routing; nothing
here imports ``ssl`` or a network library.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

_connection_ids = itertools.count(1)


def next_connection_id() -> int:
    """Return a process-unique, increasing connection id."""
    return next(_connection_ids)


# The records below are built on every connect. They are dataclasses (equality,
# hash, repr, fields(), replace()) with a hand-written __init__ and Final fields
# rather than frozen=True: compiled (edge.compiled), that __init__ is native
# and a field cannot be assigned at run time; frozen=True would generate an
# interpreted __init__ that sets each field through object.__setattr__, ten
# times slower. Interpreted, Final is enforced by mypy alone.


@dataclass(init=False, eq=True, unsafe_hash=True, slots=True)
class DeviceIdentity:
    """A device's identity, namespaced by the certificate set that verified it.

    Equal common names under two different CAs (two sets) are two devices:
    ``namespace`` keeps them apart. Immutable (see the note above).
    """

    namespace: Final[str]
    name: Final[str]
    # "namespace/name", made once: events, sessions and routes all hold this text,
    # and one shared string per connected device is less memory than one each.
    _text: str = field(init=False, repr=False, compare=False, hash=False)

    def __init__(self, *, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self._text = f"{namespace}/{name}"

    def __str__(self) -> str:
        return self._text


@dataclass(init=False, eq=True, unsafe_hash=True, slots=True)
class PeerCertificate:
    """The facts about a presented client certificate that events and policy use. Immutable."""

    subject: Final[str]
    issuer: Final[str]
    serial: Final[str]
    sha256: Final[str]
    not_before: Final[str]
    not_after: Final[str]

    def __init__(
        self,
        *,
        subject: str,
        issuer: str,
        serial: str,
        sha256: str,
        not_before: str,
        not_after: str,
    ) -> None:
        self.subject = subject
        self.issuer = issuer
        self.serial = serial
        self.sha256 = sha256
        self.not_before = not_before
        self.not_after = not_after

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


@dataclass(init=False, eq=True, unsafe_hash=True, slots=True)
class SessionInfo:
    """An accepted, mutually authenticated connection, as protocol adapters see it.

    Immutable but for two counters: ``messages_in`` (application messages the
    device published, counted by the core whether or not policy allowed them) and
    ``messages_out`` (messages handed to the device's connection: an MQTT PUBLISH
    written, a ``/ws`` or SSE message queued). They live here because every
    adapter holds this object: one attribute store per message, no lookup; the
    device list and the per-protocol metrics read them. They take no part in
    equality, hashing or ``repr``.

    ``connection_id`` defaults to the next process-unique id.
    """

    identity: Final[DeviceIdentity]
    peer: Final[str]
    sni: Final[str | None]
    alpn: Final[str | None]
    tls_version: Final[str]
    cipher: Final[str]
    certificate: Final[PeerCertificate | None]
    set_name: Final[str]
    set_version: Final[int]
    connection_id: Final[int]
    messages_in: int = field(init=False, default=0, repr=False, compare=False, hash=False)
    messages_out: int = field(init=False, default=0, repr=False, compare=False, hash=False)

    def __init__(
        self,
        *,
        identity: DeviceIdentity,
        peer: str,
        sni: str | None = None,
        alpn: str | None = None,
        tls_version: str = "",
        cipher: str = "",
        certificate: PeerCertificate | None = None,
        set_name: str = "",
        set_version: int = 0,
        connection_id: int | None = None,
    ) -> None:
        self.identity = identity
        self.peer = peer
        self.sni = sni
        self.alpn = alpn
        self.tls_version = tls_version
        self.cipher = cipher
        self.certificate = certificate
        self.set_name = set_name
        self.set_version = set_version
        self.connection_id = next_connection_id() if connection_id is None else connection_id
        self.messages_in = 0
        self.messages_out = 0
