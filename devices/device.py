"""One simulated device: identity, protocol client and the handshake sequence, timed.

:func:`run_device` connects once and records every step the device sees, relative to
its *scheduled* start (the fleet passes the time it meant to start, so a late start
shows up as time spent instead of vanishing: no coordinated omission)::

    tcp_connect          TCP three-way handshake
    client_hello         what the device offered (SNI, ALPN, versions)
    server_hello         the version and suite the server chose
    server_certificate   the server's certificate and the device's verdict on it
    certificate_request  whether the edge asked for a client certificate
    client_certificate   what the device sent
    tls_handshake        the device's side of the handshake finished
    <ack>                the protocol's acknowledgement: mqtt_connack, http_status,
                         ws_accept (with TLS 1.3 the edge's verdict on the device
                         certificate only arrives now, as an alert or as this answer)
    edge_verdict         accepted, or refused with the alert's name
    subscribe, publish, message   the topic actions, one step each
    mqtt_disconnect      an MQTT 5 server ended the session with DISCONNECT: its
                         reason code, Reason String and properties

:func:`connected_device` is the long-lived form for fleets: connect, then publish and
receive until the ``async with`` block ends; it keeps no trace, to stay small.

Errors are those of :mod:`devices.tlsclient` (root :class:`DeviceError`) and
:class:`devices.protocols.ProtocolError`; :func:`run_device` never raises them, it
folds them into :class:`DeviceResult` (``outcome`` and ``reason``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from devices.identity import Identity
from devices.protocols import Ack, Message, ProtocolError, ProtocolSession, Refused
from devices.protocols.mqtt import (
    MqttOptions,
    MqttSession,
    ServerDisconnect,
    disconnect_detail,
    properties_dict,
)
from devices.tlsclient import (
    AlertReceived,
    CertificateRequest,
    ClientCertificateSent,
    ClientHelloSent,
    ConnectFailed,
    ConnectionClosed,
    ConnectionLost,
    DeviceError,
    DeviceTimeout,
    HandshakeComplete,
    ServerCertificateRejected,
    ServerCertificateSeen,
    ServerHelloReceived,
    TlsAlert,
    TlsEvent,
    TlsFailure,
    TlsStream,
    certificate_summary,
    make_device_context,
    open_tls,
)
from edge.mqtt.properties import Properties

__all__ = [
    "Action",
    "ConnectedDevice",
    "DeviceError",
    "DeviceResult",
    "DeviceSpec",
    "MqttOptions",
    "Publish",
    "Receive",
    "Step",
    "Subscribe",
    "Target",
    "connected_device",
    "context_for",
    "run_device",
]

Clock = Callable[[], float]
Outcome = Literal["connected", "refused", "error"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSpec:
    """Who the device is: its id and certificate material (files or PEM bytes).

    ``chain`` holds intermediates sent after the leaf. ``expect`` is what the test or
    fleet expects: ``"accept"`` or a refusal reason (``"unknown_ca"``...). Without a
    certificate the device connects anonymously (to see ``certificate_required``).
    """

    id: str
    cert_path: str | None = None
    cert_pem: bytes | None = None
    key_path: str | None = None
    key_pem: bytes | None = None
    chain_path: str | None = None
    chain_pem: bytes | None = None
    expect: str = "accept"
    client_id: str | None = None

    def material(self) -> tuple[bytes | None, bytes | None]:
        """(leaf + chain PEM, key PEM), reading files; ``DeviceError`` names a bad path."""
        cert = self.cert_pem if self.cert_pem is not None else _read(self.cert_path, "certificate")
        chain = self.chain_pem if self.chain_pem is not None else _read(self.chain_path, "chain")
        key = self.key_pem if self.key_pem is not None else _read(self.key_path, "key")
        if cert is None:
            return None, None
        if key is None:
            # One PEM file may hold the certificate and its key together.
            key = cert
        return cert + (b"\n" + chain if chain else b""), key


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DeviceError(f"device {what} file {path}: {exc.strerror}", reason="bad-input") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where to connect: ``mqtts://``, ``https://`` or ``wss://HOST:PORT/mqtt|/ws``.

    ``ca_pem`` holds the roots the device trusts for the server certificate; ``sni``
    overrides the name sent and checked (default: the URL's host); ``tls_max``
    (``"1.2"`` or ``"1.3"``) caps the version the device offers. ``mqtt`` says how
    MQTT is spoken (``mqtts://`` and ``wss://.../mqtt``): the version and the MQTT 5
    CONNECT properties; ``None`` is MQTT 3.1.1.
    """

    url: str
    ca_pem: str
    sni: str | None = None
    tls_max: str | None = None  # "1.2" to see TLS 1.2's cleartext handshake
    mqtt: MqttOptions | None = None
    #: Skip the server hostname check (the chain is still verified), as
    #: ``mosquitto_pub --insecure`` does: for showing what a device suite catches.
    insecure: bool = False

    def parts(self) -> tuple[str, str, int, str]:
        """(scheme, host, port, path); ``DeviceError`` names what is wrong with the URL."""
        # Parsed once per URL: a fleet device asked about six times per connect, and
        # urlsplit cost about 0.1 ms of each connect's CPU.
        return _url_parts(self.url, self.tls_max)

    @property
    def server_name(self) -> str:
        """The name sent in SNI and checked against the server certificate."""
        return self.sni or self.parts()[1]


@functools.lru_cache(maxsize=256)
def _url_parts(url: str, tls_max: str | None) -> tuple[str, str, int, str]:
    """:meth:`Target.parts` of ``url`` (``tls_max`` is checked along with it)."""
    split = urlsplit(url)
    scheme = split.scheme.lower()
    defaults = {"mqtts": 8883, "https": 443, "wss": 443}
    if scheme not in defaults:
        raise DeviceError(f"URL {url!r}: scheme must be mqtts, https or wss", reason="bad-input")
    if not split.hostname:
        raise DeviceError(f"URL {url!r}: no host", reason="bad-input")
    try:
        port = split.port or defaults[scheme]
    except ValueError as exc:
        raise DeviceError(f"URL {url!r}: bad port", reason="bad-input") from exc
    path = split.path or ""
    if scheme == "wss" and path not in ("/mqtt", "/ws"):
        raise DeviceError(f"URL {url!r}: wss path must be /mqtt or /ws", reason="bad-input")
    if tls_max not in (None, *_TLS_VERSIONS):
        raise DeviceError(
            f"TLS version {tls_max!r}: expected one of {', '.join(_TLS_VERSIONS)}",
            reason="bad-input",
        )
    return scheme, split.hostname, port, path


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``topic_filter`` at ``qos``."""

    topic_filter: str
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` to ``topic`` (``properties``: MQTT 5 PUBLISH properties)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties | None = None


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait for ``count`` messages (within the device's overall timeout)."""

    count: int = 1


Action = Subscribe | Publish | Receive


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Step:
    """One step of the sequence; times in seconds from the device's scheduled start."""

    name: str
    t_start: float
    duration: float
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in milliseconds, 3 decimals)."""
        return {
            "name": self.name,
            "t_start_ms": round(self.t_start * 1000, 3),
            "duration_ms": round(self.duration * 1000, 3),
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(slots=True)
class DeviceResult:
    """What happened to one device."""

    id: str
    outcome: Outcome
    reason: str
    protocol: str
    steps: list[Step] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0
    delivery_latencies: list[float] = field(default_factory=list)
    expected: str = "accept"
    message: str = ""

    @property
    def as_expected(self) -> bool:
        """True when the outcome matches ``expected`` (``"accept"`` or a reason)."""
        if self.expected == "accept":
            return self.outcome == "connected"
        return self.reason == self.expected

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "protocol": self.protocol,
            "expected": self.expected,
            "as_expected": self.as_expected,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "delivery_latencies_ms": [round(x * 1000, 3) for x in self.delivery_latencies],
            "steps": [s.to_dict() for s in self.steps],
        }


# --------------------------------------------------------------------------- contexts

#: The ALPN protocols a device offers, by URL scheme.
ALPN: dict[str, tuple[str, ...]] = {
    "mqtts": ("mqtt",),
    "https": ("http/1.1",),
    "wss": ("http/1.1",),
}
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_contexts: dict[tuple[str, ...], ssl.SSLContext] = {}


def context_for(
    spec: DeviceSpec,
    target: Target,
    *,
    keylog_filename: str | None = None,
    cache: bool = True,
) -> ssl.SSLContext:
    """The device's TLS context, one per (CA, certificate, key, protocol), cached.

    Devices sharing a certificate share a context; a fleet of distinct devices
    still needs one context each, since a context holds its certificate.
    """
    cert, key = spec.material()
    scheme = target.parts()[0]
    digest = hashlib.sha256
    key_id = (
        digest(target.ca_pem.encode()).hexdigest(),
        digest(cert or b"").hexdigest(),
        digest(key or b"").hexdigest(),
        scheme,
        keylog_filename or "",
        target.tls_max or "",
        "insecure" if target.insecure else "",
    )
    if cache and key_id in _contexts:
        return _contexts[key_id]
    ctx = make_device_context(
        ca_pem=target.ca_pem,
        cert_pem=cert,
        key_pem=key,
        alpn=ALPN[scheme],
        keylog_filename=keylog_filename,
        max_version=_TLS_VERSIONS[target.tls_max] if target.tls_max else None,
        check_hostname=not target.insecure,
    )
    if cache:
        _contexts[key_id] = ctx
    return ctx


# --------------------------------------------------------------------------- recorder


class _Recorder:
    """Turns TLS events and protocol answers into :class:`Step` records."""

    def __init__(self, clock: Clock, start: float, device_cert: bytes | None) -> None:
        self.clock = clock
        self.start = start
        self.steps: list[Step] = []
        self.device_cert = device_cert
        self._hello_t: float | None = None
        self._tls: dict[str, Step] = {}
        self._server_chain: tuple[bytes, ...] = ()
        self._server_chain_t: float | None = None
        self._tls_flushed = False

    def rel(self, t: float) -> float:
        return t - self.start

    def add(
        self,
        name: str,
        t0: float,
        t1: float,
        ok: bool,
        extra: dict[str, Any] | None = None,
        **detail: Any,
    ) -> Step:
        if extra:
            detail.update(extra)
        step = Step(name, self.rel(t0), max(0.0, t1 - t0), ok, detail)
        self.steps.append(step)
        return step

    def tcp(self, t0: float, t1: float, peer: str) -> None:
        self.add("tcp_connect", t0, t1, True, peer=peer)

    # TLS facts are kept until the handshake ends, then written in the order a
    # reader expects (TLS 1.3 sends CertificateRequest before Certificate).
    def on_tls(self, event: TlsEvent, t: float) -> None:
        if isinstance(event, ClientHelloSent):
            self._hello_t = t
            self._tls["client_hello"] = Step(
                "client_hello",
                self.rel(t),
                0.0,
                True,
                {
                    "sni": event.sni,
                    "alpn": list(event.alpn),
                    "versions": list(event.versions),
                    "bytes": event.size,
                },
            )
        elif isinstance(event, ServerHelloReceived):
            self._tls["server_hello"] = Step(
                "server_hello",
                self.rel(t),
                t - (self._hello_t or t),
                True,
                {
                    "version": event.version,
                    "cipher_suite": event.cipher_suite,
                    "hello_retry": event.hello_retry,
                },
            )
        elif isinstance(event, ServerCertificateSeen):
            self._server_chain = event.chain
            self._server_chain_t = t
        elif isinstance(event, CertificateRequest):
            self._tls["certificate_request"] = Step(
                "certificate_request",
                self.rel(t),
                0.0,
                True,
                {"requested": event.requested, "how": event.how, "ca_names": event.ca_names},
            )
        elif isinstance(event, ClientCertificateSent):
            detail: dict[str, Any] = {"certificates": event.count, "how": event.how}
            if self.device_cert is not None:
                detail["subject"] = _pem_subject(self.device_cert)
            ok = event.count is None or event.count > 0 or self.device_cert is None
            self._tls["client_certificate"] = Step(
                "client_certificate", self.rel(t), 0.0, ok, detail
            )
        elif isinstance(event, HandshakeComplete):
            self._server_verdict(t, ok=True, peer=event.peer_certificate)
            self._tls["tls_handshake"] = Step(
                "tls_handshake",
                self.rel(self._hello_t or t),
                t - (self._hello_t or t),
                True,
                {"version": event.version, "cipher": event.cipher, "alpn": event.alpn},
            )
            self.flush_tls()
        elif isinstance(event, TlsAlert):
            if event.sent_by == "device":
                self._server_verdict(t, ok=False, message=event.verify_message, reason=event.reason)
                self.flush_tls()
            else:
                if self._server_chain:
                    # The edge judged the device, so the device had accepted the server.
                    self._server_verdict(t, ok=True)
                self.flush_tls()
                self.add("edge_verdict", t, t, False, alert=event.name)
        elif isinstance(event, ConnectionClosed):
            self.flush_tls()

    def _server_verdict(
        self,
        t: float,
        *,
        ok: bool,
        peer: dict[str, Any] | None = None,
        message: str = "",
        reason: str = "",
    ) -> None:
        if "server_certificate" in self._tls:
            return
        detail: dict[str, Any] = {}
        if self._server_chain:
            detail = certificate_summary(self._server_chain[0])
            detail["chain_length"] = len(self._server_chain)
        elif peer:
            detail = _peer_summary(peer)
        if ok:
            detail["verdict"] = "trusted: chain, hostname and validity verified"
        else:
            detail["verdict"] = message
            detail["reason"] = reason
        t0 = self._server_chain_t if self._server_chain_t is not None else t
        self._tls["server_certificate"] = Step(
            "server_certificate", self.rel(t0), t - t0, ok, detail
        )

    def flush_tls(self) -> None:
        if self._tls_flushed:
            return
        self._tls_flushed = True
        for name in (
            "client_hello",
            "server_hello",
            "server_certificate",
            "certificate_request",
            "client_certificate",
            "tls_handshake",
        ):
            if name in self._tls:
                self.steps.append(self._tls[name])

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.steps)


def _pem_subject(pem: bytes) -> str:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
    except ValueError:
        return "(unparseable)"


def _peer_summary(peer: dict[str, Any]) -> dict[str, Any]:
    def name(rdns: Any) -> str:
        return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn)

    return {
        "subject": name(peer.get("subject", ())),
        "issuer": name(peer.get("issuer", ())),
        "not_before": peer.get("notBefore", ""),
        "not_after": peer.get("notAfter", ""),
        "san": [v for _k, v in peer.get("subjectAltName", ())],
    }


# --------------------------------------------------------------------------- sessions


def _make_session(
    stream: TlsStream,
    *,
    spec: DeviceSpec,
    target: Target,
    context: ssl.SSLContext,
    clock: Clock,
    settle: float,
    keepalive: int,
    identity: Identity | None = None,
) -> ProtocolSession:
    """The protocol session for ``target``'s scheme over ``stream``, already handshaken.

    A session that needs a fresh connection later (HTTPS after the edge closes one)
    reconnects with the same context, silently: only the first connection is traced.
    """
    scheme, _host, _port, path = target.parts()

    async def reconnect() -> TlsStream:
        return await _open_stream(target, context, clock, None, False, settle, identity=identity)

    client_id = spec.client_id or spec.id
    if scheme == "mqtts":
        return MqttSession(
            stream, client_id=client_id, clock=clock, keepalive=keepalive, options=target.mqtt
        )
    if scheme == "https":
        from devices.protocols.https import HttpsSession

        host = target.parts()[1]
        return HttpsSession(stream, host=host, clock=clock, reconnect=reconnect)
    from devices.protocols.wss import WssSession

    return WssSession(
        stream,
        url=target.url,
        path=path,
        client_id=client_id,
        clock=clock,
        keepalive=keepalive,
        mqtt_options=target.mqtt,
    )


def protocol_label(target: Target) -> str:
    """The protocol a result names: ``mqtt``, ``https``, ``wss``; MQTT 5 adds ``5``.

    ``mqtt5`` (``mqtts://``) and ``wss-mqtt5`` (``wss://.../mqtt``) keep the two MQTT
    versions apart in a fleet report's per-protocol counts and latencies.
    """
    scheme, _host, _port, path = target.parts()
    base = _PROTOCOL[scheme]
    if target.mqtt is not None and target.mqtt.version == 5:
        if scheme == "mqtts":
            return "mqtt5"
        if path == "/mqtt":
            return "wss-mqtt5"
    return base


_ACK_STEP = {"mqtts": "mqtt_connack", "https": "http_status", "wss": "ws_accept"}
_PROTOCOL = {"mqtts": "mqtt", "https": "https", "wss": "wss"}


async def _open_stream(
    target: Target,
    context: ssl.SSLContext,
    clock: Clock,
    rec: _Recorder | None,
    inspect: bool,
    settle: float,
    marks: dict[str, float] | None = None,
    *,
    identity: Identity | None = None,
) -> TlsStream:
    """Open TCP + TLS to ``target``; ``rec`` traces every step, ``marks`` only gets the
    clock times ``tcp_start``, ``tcp_end`` and ``tls_end`` (cheap, for held devices).
    ``identity``: the device's certificate and key, set on this connection of a
    shared ``context`` (see :mod:`devices.identity`)."""
    _scheme, host, port, _path = target.parts()

    def on_tcp(t0: float, t1: float) -> None:
        if rec is not None:
            rec.tcp(t0, t1, f"{host}:{port}")
        if marks is not None:
            marks["tcp_start"] = t0
            marks["tcp_end"] = t1

    t0 = clock()
    try:
        stream = await open_tls(
            host,
            port,
            context,
            server_hostname=target.server_name,
            clock=clock,
            sink=rec.on_tls if rec is not None else None,
            inspect=inspect,
            on_tcp=on_tcp,
            identity=identity,
        )
    except ConnectFailed as exc:
        if rec is not None:
            rec.add("tcp_connect", t0, clock(), False, peer=f"{host}:{port}", error=str(exc))
        raise
    await stream.wait_handshake()
    if marks is not None:
        marks["tls_end"] = clock()
    if settle > 0 and stream.tls.ssl_object.version() == "TLSv1.3":
        t0 = clock()
        heard = await stream.wait_edge_after_handshake(settle)
        if rec is not None:
            rec.add(
                "edge_after_handshake",
                t0,
                clock(),
                True,
                heard=heard,
                note=(
                    "the edge sent its first record (session tickets): it accepted the certificate"
                    if heard
                    else f"nothing within {settle:g} s (an edge without session tickets)"
                ),
            )
    return stream


async def run_device(
    spec: DeviceSpec,
    target: Target,
    *,
    actions: Sequence[Action] = (),
    clock: Clock = time.perf_counter,
    start: float | None = None,
    timeout: float = 10.0,
    inspect: bool = False,
    keylog_filename: str | None = None,
    context: ssl.SSLContext | None = None,
    settle: float = 0.0,
    identity: Identity | None = None,
) -> DeviceResult:
    """Connect once, run ``actions``, and return the timed trace. Never raises DeviceError.

    ``start`` is the scheduled start on ``clock`` (default: now). ``inspect`` decrypts
    the TLS 1.3 handshake from ``keylog_filename`` to show the CertificateRequest.
    ``settle``: with TLS 1.3, how long to wait for the edge's first record before the
    first request (see :meth:`TlsStream.wait_edge_after_handshake`). 0 (the default,
    for fleets) skips it: an edge without session tickets would cost every device the
    full wait. The CLI waits, so that a Mosquitto refusal keeps its alert.
    ``identity`` goes with a shared ``context``: the device's own certificate and key,
    set on each of its connections (:mod:`devices.identity`).
    """
    start = clock() if start is None else start
    try:
        scheme = target.parts()[0]
        cert, _key = spec.material()
        if context is None:
            context = context_for(spec, target, keylog_filename=keylog_filename)
    except DeviceError as exc:
        return DeviceResult(
            spec.id, "error", exc.reason, "", expected=spec.expect, message=str(exc)
        )
    rec = _Recorder(clock, start, cert)
    result = DeviceResult(spec.id, "error", "", protocol_label(target), expected=spec.expect)
    result.steps = rec.steps  # the same list: steps recorded until the very end count
    session: ProtocolSession | None = None
    stream: TlsStream | None = None
    ack_started: float | None = None
    try:
        async with asyncio.timeout(timeout):
            stream = await _open_stream(
                target, context, clock, rec, inspect, settle, identity=identity
            )
            session = _make_session(
                stream,
                spec=spec,
                target=target,
                context=context,
                clock=clock,
                settle=settle,
                identity=identity,
                # One run never outlives its timeout: no ping is due before it ends.
                keepalive=max(1, int(timeout) * 2),
            )
            ack_started = clock()
            ack = await session.open()
            t = clock()
            rec.add(_ACK_STEP[scheme], ack_started, t, ack.ok, ack.detail, summary=ack.summary)
            ack_started = None
            # Any protocol answer means the edge accepted the certificate.
            rec.add("edge_verdict", t, t, True, verdict="accepted")
            if not ack.ok:
                result.outcome, result.reason = "refused", ack.reason
                return result
            result.outcome = "connected"
            await _run_actions(session, actions, rec, result)
    except TimeoutError:
        result.outcome, result.reason = "error", "timeout"
        result.message = f"no answer within {timeout:g} s"
        rec.flush_tls()
        rec.add("timeout", clock(), clock(), False, after_s=timeout)
    except ServerCertificateRejected as exc:
        result.outcome, result.reason, result.message = "refused", exc.reason, str(exc)
    except AlertReceived as exc:
        # An alert once connected ends a session the edge had accepted: an error.
        outcome: Outcome = "error" if result.outcome == "connected" else "refused"
        result.outcome, result.reason, result.message = outcome, exc.alert, str(exc)
        _close_ack(rec, ack_started, scheme, exc.alert)
    except ConnectionLost as exc:
        # Before the acknowledgement the edge dropping us is its verdict; after it,
        # it is a failure of the session.
        if result.outcome == "connected":
            result.outcome = "error"
        else:
            result.outcome = "refused"
            rec.flush_tls()
            _close_ack(rec, ack_started, scheme, None)
            t = clock()
            rec.add("edge_verdict", t, t, False, verdict="connection closed without an alert")
        result.reason, result.message = exc.reason, str(exc)
    except ConnectFailed as exc:
        result.outcome, result.reason, result.message = "error", exc.reason, str(exc)
    except (TlsFailure, ProtocolError) as exc:
        result.outcome, result.reason, result.message = "error", exc.reason, str(exc)
        rec.flush_tls()
        if isinstance(exc, ServerDisconnect):
            # The server said why it ended the session (MQTT 5): a step of its own.
            t = clock()
            rec.add("mqtt_disconnect", t, t, False, disconnect_detail(exc))
    except DeviceError as exc:
        result.outcome, result.reason, result.message = "error", exc.reason, str(exc)
    finally:
        if session is not None:
            session.close()
        elif stream is not None:
            stream.close()
    return result


def _close_ack(rec: _Recorder, ack_started: float | None, scheme: str, alert: str | None) -> None:
    """Record the protocol step that an alert or a close cut short."""
    if ack_started is None:
        return
    t = rec.clock()
    rec.steps.insert(
        len(rec.steps) - (1 if alert is not None and rec.has("edge_verdict") else 0),
        Step(
            _ACK_STEP[scheme],
            rec.rel(ack_started),
            t - ack_started,
            False,
            {"summary": "no acknowledgement: the edge refused the device after the handshake"},
        ),
    )


async def _run_actions(
    session: ProtocolSession,
    actions: Sequence[Action],
    rec: _Recorder,
    result: DeviceResult,
) -> None:
    clock = rec.clock
    sent_at: dict[tuple[str, bytes], float] = {}
    for action in actions:
        t0 = clock()
        if isinstance(action, Subscribe):
            ack = await session.subscribe(action.topic_filter, action.qos)
            rec.add(
                "subscribe",
                t0,
                clock(),
                ack.ok,
                ack.detail,
                filter=action.topic_filter,
                requested_qos=action.qos,
                summary=ack.summary,
            )
        elif isinstance(action, Publish):
            sent_at[(action.topic, action.payload)] = t0
            if action.properties is None:
                ack = await session.publish(action.topic, action.payload, action.qos, action.retain)
            else:
                ack = await session.publish(
                    action.topic, action.payload, action.qos, action.retain, action.properties
                )
            result.messages_sent += 1
            rec.add(
                "publish",
                t0,
                clock(),
                ack.ok,
                ack.detail,
                topic=action.topic,
                bytes=len(action.payload),
                summary=ack.summary,
            )
        else:
            for _ in range(action.count):
                message = await session.next_message()
                result.messages_received += 1
                sent = sent_at.get((message.topic, message.payload))
                if sent is not None:
                    result.delivery_latencies.append(message.received_at - sent)
                extra: dict[str, Any] | None = None
                if message.properties is not None:
                    extra = {"properties": properties_dict(message.properties)}
                rec.add(
                    "message",
                    t0,
                    message.received_at,
                    True,
                    extra,
                    topic=message.topic,
                    payload=_show(message.payload),
                    qos=message.qos,
                    retain=message.retain,
                )
                t0 = clock()
            continue
        if not ack.ok:
            result.outcome, result.reason = "refused", ack.reason
            result.message = ack.summary
            return


def _show(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.hex()
    return text if len(text) <= 200 else text[:200] + "..."


# --------------------------------------------------------------------------- held mode


class ConnectedDevice:
    """A device that stays connected: publish, subscribe, read messages.

    ``timings`` holds the clock times at which its connection passed each step:
    ``tcp_start``, ``tcp_end``, ``tls_end`` (handshake done on the device's side) and
    ``ack_end`` (the protocol's acknowledgement), for per-step latencies. ``ack`` is
    that acknowledgement (under MQTT 5 the CONNACK's reason code and properties).
    """

    __slots__ = ("_session", "ack", "id", "messages_sent", "timings")

    def __init__(
        self,
        device_id: str,
        session: ProtocolSession,
        timings: dict[str, float] | None = None,
        ack: Ack | None = None,
    ) -> None:
        self.id = device_id
        self._session = session
        self.messages_sent = 0
        self.timings = timings if timings is not None else {}
        self.ack = ack

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> Ack:
        """Publish and wait for the QoS flow to complete (``properties``: MQTT 5 only)."""
        if properties is None:
            ack = await self._session.publish(topic, payload, qos, retain)
        else:
            ack = await self._session.publish(topic, payload, qos, retain, properties)
        self.messages_sent += 1
        return ack

    async def subscribe(self, topic_filter: str, qos: int = 0) -> Ack:
        """Subscribe and return the edge's answer."""
        return await self._session.subscribe(topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> Ack:
        """Unsubscribe (MQTT only) and return the edge's answer."""
        if not isinstance(self._session, MqttSession):
            raise ProtocolError("unsubscribe needs MQTT over mqtts://", reason="bad-input")
        return await self._session.unsubscribe(topic_filter)

    async def next_message(self) -> Message:
        """The next delivered message (raises the connection's failure once it is gone)."""
        return await self._session.next_message()

    async def messages(self) -> AsyncIterator[Message]:
        """Delivered messages until the connection ends."""
        while True:
            try:
                yield await self._session.next_message()
            except DeviceError:
                return


@contextlib.asynccontextmanager
async def connected_device(
    spec: DeviceSpec,
    target: Target,
    *,
    clock: Clock = time.perf_counter,
    timeout: float = 10.0,
    keepalive: int = 60,
    context: ssl.SSLContext | None = None,
    settle: float = 0.0,
    identity: Identity | None = None,
) -> AsyncIterator[ConnectedDevice]:
    """Connect (TLS + protocol acknowledgement) and hold the connection for the block.

    ``identity`` goes with a shared ``context``, as for :func:`run_device`.

    Raises :class:`DeviceError` subclasses when the connection is refused; its
    ``reason`` is the same word :func:`run_device` would report.
    """
    target.parts()  # a bad URL is reported before anything is opened
    if context is None:
        context = context_for(spec, target)
    session: ProtocolSession | None = None
    stream: TlsStream | None = None
    marks: dict[str, float] = {}
    try:
        async with asyncio.timeout(timeout):
            stream = await _open_stream(
                target, context, clock, None, False, settle, marks, identity=identity
            )
            session = _make_session(
                stream,
                spec=spec,
                target=target,
                context=context,
                clock=clock,
                settle=settle,
                identity=identity,
                keepalive=keepalive,
            )
            ack = await session.open()
            marks["ack_end"] = clock()
            if not ack.ok:
                raise Refused(f"refused: {ack.summary}", ack)
    except TimeoutError as exc:
        if session is not None:
            session.close()
        elif stream is not None:
            stream.close()
        raise DeviceTimeout(f"no acknowledgement within {timeout:g} s") from exc
    except BaseException:
        if session is not None:
            session.close()
        elif stream is not None:
            stream.close()
        raise
    try:
        yield ConnectedDevice(spec.id, session, marks, ack)
    finally:
        session.close()
