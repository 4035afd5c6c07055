"""The asyncio side of the TLS edge: one plain TCP protocol per connection, driving TLS itself.

:class:`TlsEndpoint` holds what one listener shares (contexts, trust snapshot,
limits, protocol factories, counters). Its :meth:`~TlsEndpoint.protocol_factory`
goes to ``loop.create_server``. Each connection is an :class:`EdgeTlsProtocol`:

1. read the ClientHello (:class:`~edge.tls.clienthello.ClientFlightReader`);
   refuse plain TCP / garbage with an event, and no certificate set for the SNI
   with an ``unrecognized_name`` / ``handshake_failure`` alert;
2. run the handshake on :class:`~edge.tls.session.TlsServerSession` with the
   context of the set that the SNI resolves to; a failure sends OpenSSL's alert
   and becomes a ``tls.refused`` event with the reason and a hint;
3. on success: the device identity (:mod:`edge.identity`), a
   :class:`~edge.core.session.SessionInfo`, a ``tls.accepted`` event; then the
   application protocol chosen by :func:`edge.mux.select_protocol` (listener
   kind, ALPN, first bytes), created with ``factory(session_info)`` and handed a
   :class:`TlsTransport`; bytes that are neither MQTT nor HTTP, or nothing within
   the handshake timeout, are refused with a ``mux.refused`` event;
4. when it ends, a ``connection.closed`` event says why.

Handshakes have a deadline, and both concurrent handshakes and connections are
capped (a connection beyond a cap is closed at once, with a ``tls.refused`` event).
So that a flood from a few addresses cannot lock good devices out, each source
address is also capped: its unauthenticated connections (accepted, handshake
not yet finished) and its handshake rate (a token bucket). A cap that trips emits
a ``limit.tripped`` event (at most once per source, limit and ``TRIP_REPORT_EVERY``
seconds) besides the connection's ``tls.refused``. A refused connection lingers
briefly so that its alert arrives (see ``_linger_close``), but outside the
connection count, in a small budget of its own (``max_lingering``).
Nothing a peer sends raises out of here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from edge.core.deadlines import Deadline, Deadlines
from edge.core.events import EventLog
from edge.core.session import DeviceIdentity, PeerCertificate, SessionInfo
from edge.identity import IdentityRule, describe_certificate, inspect_certificate, parse_rule
from edge.mux import ListenerKind, MuxError, Selected, select_protocol
from edge.tls import verifiedchain
from edge.tls.clienthello import ClientFlightReader, ClientHello, FlightProblem
from edge.tls.contexts import ContextCache, RouteLike, TrustSetLike
from edge.tls.errors import IdentityError, TlsConfigError
from edge.tls.keylog import KeyLogTap, decrypt_client_certificates
from edge.tls.peer import fast_inspect
from edge.tls.session import TlsServerSession, TlsState
from edge.tls.verdict import HandshakeVerdict, alert_record, explain

__all__ = [
    "TRIP_REPORT_EVERY",
    "AppProtocolFactory",
    "EdgeTlsProtocol",
    "EndpointOptions",
    "ListenerKind",
    "SnapshotLike",
    "TlsEndpoint",
    "TlsTransport",
    "protocol_name",
]

log = logging.getLogger("edgesim.tls")

#: Seconds between two ``limit.tripped`` events for the same source and limit
#: (a flood would otherwise write one per refused connection).
TRIP_REPORT_EVERY = 10.0
#: Sources whose rate bucket or trip report is remembered before old ones are dropped.
_MAX_TRACKED_SOURCES = 10_000

#: Builds the application protocol of an accepted connection.
AppProtocolFactory = Callable[[SessionInfo], asyncio.Protocol]


class ActiveSetLike(TrustSetLike, Protocol):
    """What the edge reads from a certificate set's active version (contexts need less)."""

    @property
    def ca_certs(self) -> tuple[Any, ...]: ...


class EdgeRouteLike(RouteLike, Protocol):
    """A route as the connection reads it (see ``edge.trust.model.Route``)."""

    @property
    def active(self) -> ActiveSetLike | None: ...
    @property
    def error(self) -> str | None: ...


class SnapshotLike(Protocol):
    """What the edge reads from a trust snapshot (see ``edge.trust.model.TrustSnapshot``)."""

    @property
    def generation(self) -> int: ...
    def route(self, sni: str | None) -> EdgeRouteLike | None: ...
    def explain_unrouted(self, sni: str | None) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointOptions:
    """Limits and rules of one TLS listener."""

    kind: ListenerKind = "mqtt"
    #: Seconds from TCP accept to a finished handshake.
    handshake_timeout: float = 10.0
    max_handshakes: int = 2000
    max_connections: int = 50_000
    identity_rule: IdentityRule = IdentityRule.CN
    #: Seconds a refused connection stays half-open after the alert (see _linger_close).
    refusal_linger: float = 2.0
    #: Refused connections allowed to linger at once; they do not count against
    #: max_connections. Beyond this budget a refused connection is dropped at once
    #: (its device may then see a reset instead of the alert).
    max_lingering: int = 256
    #: Unauthenticated connections (handshake not finished) one source address may
    #: hold; ``None``: 5 % of max_connections, at least 8.
    max_unauthenticated_per_source: int | None = None
    #: Handshakes per second one source address may start (a token bucket holding
    #: one second's worth); 0 turns the limit off.
    handshake_rate_per_source: float = 2000.0

    def per_source_cap(self) -> int:
        """The effective cap on one source's unauthenticated connections."""
        cap = self.max_unauthenticated_per_source
        if cap is None:
            return max(8, self.max_connections // 20)
        return cap


class TlsEndpoint:
    """One listener's shared state: contexts, trust, factories, limits and counters."""

    def __init__(
        self,
        *,
        contexts: ContextCache,
        snapshot: Callable[[], SnapshotLike],
        factories: Mapping[str, AppProtocolFactory],
        events: EventLog,
        options: EndpointOptions | None = None,
        keylog: KeyLogTap | None = None,
    ) -> None:
        self.contexts = contexts
        #: Reads the key log of ``contexts`` (TLS 1.3 refusals name the certificate).
        self.keylog = keylog
        self.snapshot = snapshot
        self.factories = dict(factories)
        self.events = events
        self.options = options or EndpointOptions()
        #: Connections open now (any phase) and handshakes in progress now.
        self.connections = 0
        self.handshakes = 0
        self.open_protocols: set[EdgeTlsProtocol] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Connections refused by a limit, until their socket is closed.
        self.refused_early: set[EdgeTlsProtocol] = set()
        #: Refused connections lingering until their alert is read (their own budget).
        self.lingering: set[EdgeTlsProtocol] = set()
        #: Unauthenticated connections open now, by source address.
        self.unauthenticated: dict[str, int] = {}
        self.per_source_cap = self.options.per_source_cap()
        #: Handshake rate buckets by source address: [tokens, time of last refill].
        self._buckets: dict[str, list[float]] = {}
        #: When a limit last reported tripping, by (limit, source).
        self._trips: dict[tuple[str, str], float] = {}
        #: Handshake (and first-bytes) deadlines of this listener's connections.
        self.deadlines = Deadlines(self.options.handshake_timeout)
        #: Traffic of the connections closed so far, by protocol label
        #: (:func:`protocol_name`): ``[messages in, messages out, bytes in, bytes
        #: out]``. Open connections keep theirs (messages on their SessionInfo,
        #: bytes on the connection); the metrics report the sum of both, so a
        #: message costs no label lookup.
        self.closed_traffic: dict[str, list[int]] = {}

    def count_closed(self, conn: EdgeTlsProtocol) -> None:
        """Fold a closing connection's counters into :attr:`closed_traffic`."""
        protocol = protocol_name(conn)
        totals = self.closed_traffic.get(protocol)
        if totals is None:
            totals = self.closed_traffic[protocol] = [0, 0, 0, 0]
        info = conn.info
        if info is not None:
            totals[0] += info.messages_in
            totals[1] += info.messages_out
        totals[2] += conn.bytes_in
        totals[3] += conn.bytes_out

    def take_handshake_token(self, source: str, now: float) -> bool:
        """Spend one of ``source``'s handshake tokens; False when its rate is exhausted."""
        rate = self.options.handshake_rate_per_source
        if rate <= 0:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED_SOURCES:
                # Full buckets carry no state worth keeping: forget them first.
                self._forget_full_buckets(now)
            self._buckets[source] = [rate - 1.0, now]
            return True
        tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _forget_full_buckets(self, now: float) -> None:
        rate = self.options.handshake_rate_per_source
        for source in [s for s, b in self._buckets.items() if b[0] + (now - b[1]) * rate >= rate]:
            del self._buckets[source]
        if len(self._buckets) >= _MAX_TRACKED_SOURCES:
            self._buckets.clear()

    def report_trip(self, limit: str, source: str, now: float, detail: str) -> None:
        """Emit ``limit.tripped`` unless this source and limit reported one recently."""
        key = (limit, source)
        last = self._trips.get(key)
        if last is not None and now - last < TRIP_REPORT_EVERY:
            return
        if len(self._trips) >= _MAX_TRACKED_SOURCES:
            self._trips.clear()
        self._trips[key] = now
        self.events.emit("limit.tripped", "refused", limit=limit, source=source, reason=detail)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no connection is open (raises ``TimeoutError`` after ``timeout``)."""
        if self._idle():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._idle_waiters:
                self._idle_waiters.remove(waiter)

    def _idle(self) -> bool:
        return self.connections == 0 and not self.refused_early and not self.lingering

    def _released(self) -> None:
        if self._idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    def protocol_factory(self) -> EdgeTlsProtocol:
        """Make the protocol for one accepted TCP connection (for ``loop.create_server``)."""
        return EdgeTlsProtocol(self)

    def close_all(self, reason: str = "edge shutting down") -> None:
        """Close every open connection (close_notify after the handshake)."""
        for proto in list(self.open_protocols):
            proto.shutdown(reason)

    def abort_all(self) -> None:
        """Drop every open connection at once (when close_all's close_notify is not drained)."""
        for proto in list(self.open_protocols):
            if proto.raw is not None:
                proto.raw.abort()


_PHASE_HELLO = 0
_PHASE_HANDSHAKE = 1
_PHASE_SELECT = 2
_PHASE_APP = 3
_PHASE_CLOSED = 4
_PHASE_DRAIN = 5


class EdgeTlsProtocol(asyncio.Protocol):
    """One TCP connection: ClientHello, handshake, then an application protocol."""

    __slots__ = (
        "_active",
        "_close_reason",
        "_counted",
        "_in_handshake_slot",
        "_pending",
        "_phase",
        "_route",
        "_source",
        "_started",
        "_timer",
        "app",
        "bytes_in",
        "bytes_out",
        "endpoint",
        "hello",
        "info",
        "peer",
        "raw",
        "reader",
        "session",
        "transport",
    )

    def __init__(self, endpoint: TlsEndpoint) -> None:
        self.endpoint = endpoint
        self.raw: asyncio.Transport | None = None
        self.peer = ""
        #: Reads the cleartext flight; dropped after the handshake (memory per device).
        self.reader: ClientFlightReader | None = ClientFlightReader()
        self.hello: ClientHello | None = None
        self.session: TlsServerSession | None = None
        self.info: SessionInfo | None = None
        self.app: asyncio.Protocol | None = None
        self.transport: TlsTransport | None = None
        self._phase = _PHASE_HELLO
        # Bytes waiting for a decision (a ClientHello in pieces, the first application bytes).
        self._pending: bytes | bytearray = b""
        self._timer: asyncio.TimerHandle | Deadline | None = None
        self._counted = False
        self._in_handshake_slot = False
        self._active: ActiveSetLike | None = None
        self._route: EdgeRouteLike | None = None
        self._close_reason = ""
        self._started = 0.0
        #: Application bytes (decrypted) received from and sent to the device.
        self.bytes_in = 0
        self.bytes_out = 0
        #: The source address while it counts as unauthenticated, else "".
        self._source = ""

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection against the limits and start the handshake deadline."""
        # uvloop's TCPTransport does not subclass asyncio.Transport: no isinstance check.
        self.raw = cast(asyncio.Transport, transport)
        self._started = time.monotonic()
        peer = self.raw.get_extra_info("peername")
        if isinstance(peer, tuple):
            source = str(peer[0])
            self.peer = f"{source}:{peer[1]}"
        else:
            source = self.peer = str(peer)
        ep = self.endpoint
        opts = ep.options
        if ep.connections >= opts.max_connections:
            self._refuse_early(f"connection limit reached ({opts.max_connections} open)")
            return
        if ep.handshakes >= opts.max_handshakes:
            self._refuse_early(
                f"too many handshakes in progress ({opts.max_handshakes}); retry with backoff"
            )
            return
        held = ep.unauthenticated.get(source, 0)
        if held >= ep.per_source_cap:
            reason = f"too many unauthenticated connections from {source} ({held})"
            ep.report_trip("unauthenticated_per_source", source, self._started, reason)
            self._refuse_early(reason)
            return
        if not ep.take_handshake_token(source, self._started):
            rate = opts.handshake_rate_per_source
            reason = f"handshake rate from {source} over {rate:g} per second"
            ep.report_trip("handshake_rate_per_source", source, self._started, reason)
            self._refuse_early(reason)
            return
        ep.unauthenticated[source] = held + 1
        self._source = source
        ep.connections += 1
        ep.handshakes += 1
        self._counted = True
        self._in_handshake_slot = True
        ep.open_protocols.add(self)
        self._timer = ep.deadlines.add(self._on_timeout)

    def data_received(self, data: bytes) -> None:
        """Feed bytes to the phase the connection is in."""
        phase = self._phase
        if phase == _PHASE_APP:
            self._app_data(data)
        elif phase == _PHASE_HELLO:
            self._hello_data(data)
        elif phase == _PHASE_HANDSHAKE:
            self._handshake_data(data)
        elif phase == _PHASE_SELECT:
            self._app_data(data)

    def eof_received(self) -> bool | None:
        """The peer closed its side: end the TLS session and the connection."""
        if self._phase in (_PHASE_DRAIN, _PHASE_CLOSED):
            return False
        if self._phase == _PHASE_HELLO:
            reason = (
                "the client closed the connection before its ClientHello"
                if not self._pending
                else "the client closed the connection in the middle of its ClientHello"
            )
            self._refuse(reason, hint="", alert=None)
            return False
        if self._phase == _PHASE_HANDSHAKE:
            self._handshake_data(b"")
            return False
        if self.session is not None and self._phase in (_PHASE_APP, _PHASE_SELECT):
            self.session.receive_data(b"")
            self._after_app_input()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the slots, tell the application, emit ``connection.closed``."""
        self._release_handshake_slot()
        self._authenticated()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ep = self.endpoint
        if self._counted:
            ep.connections -= 1
            self._counted = False
            ep._released()
        elif self in ep.refused_early:
            ep.refused_early.discard(self)
            ep._released()
        elif self in ep.lingering:
            ep.lingering.discard(self)
            ep._released()
        ep.open_protocols.discard(self)
        if ep.keylog is not None and self.hello is not None:
            ep.keylog.forget(self.hello.random)
        phase = self._phase
        self._phase = _PHASE_CLOSED
        if phase == _PHASE_HANDSHAKE and self.session is not None and self.session.failure is None:
            # The socket died in the middle of the handshake (reset, not EOF).
            self._emit_refused(
                f"the connection was lost during the handshake ({exc or 'reset'})", "", None
            )
        elif phase == _PHASE_HELLO and exc is not None:
            self._emit_refused(f"the connection was lost before the ClientHello ({exc})", "", None)
        if self.info is not None:
            reason = self._close_reason or (f"connection lost: {exc}" if exc else "closed")
            if self.app is not None:
                try:
                    self.app.connection_lost(exc)
                except Exception:  # an application bug must not take the edge down
                    log.exception("application connection_lost failed")
            # After the application's own teardown, which may still count (a will).
            ep.count_closed(self)
            ep.events.emit(
                "connection.closed",
                "closed",
                identity=str(self.info.identity),
                peer=self.peer,
                connection_id=self.info.connection_id,
                reason=reason,
                duration=round(time.monotonic() - self._started, 3),
            )
        # The application and its transport point back here, and so may the
        # socket's transport: dropping all three ends the cycles, so reference
        # counting frees the connection (its SSL object, buffers, MQTT session)
        # now instead of the cycle collector later, which every connect fed.
        self.app = None
        self.transport = None
        self.raw = None

    def pause_writing(self) -> None:
        """The socket's buffer is full: tell the application."""
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        """The socket's buffer drained: tell the application."""
        if self.app is not None:
            self.app.resume_writing()

    # -- phases ---------------------------------------------------------------

    def _hello_data(self, data: bytes) -> None:
        reader = self.reader
        assert reader is not None
        reader.receive_data(data)
        if reader.problem is FlightProblem.NOT_TLS:
            self._refuse(
                reader.reason,
                hint="connect with TLS (mqtts:// or https://) and a client certificate",
                alert=None,
            )
            return
        if reader.problem is FlightProblem.MALFORMED:
            self._refuse(
                f"malformed ClientHello: {reader.reason}",
                hint="this is a bug in the device's TLS stack",
                alert="decode_error",
            )
            return
        hello = reader.client_hello
        if hello is None:
            if not self._pending:
                self._pending = (
                    bytearray()
                )  # appended in place: a hello in 1-byte pieces stays linear
            self._pending += data
            return
        self.hello = hello
        snapshot = self.endpoint.snapshot()
        # One or two dict lookups in the snapshot's precomputed route table.
        route = snapshot.route(hello.sni)
        if route is None:
            self._refuse(
                snapshot.explain_unrouted(hello.sni),
                hint="deploy a server certificate covering this hostname, bind a certificate "
                "set to it, or configure a default",
                alert="unrecognized_name" if hello.sni else "handshake_failure",
            )
            return
        active = route.active
        self._active = active
        self._route = route
        error = route.error
        if error is not None:
            self._refuse(
                error,
                hint="activate the set, or deploy the certificate with another set",
                alert="handshake_failure",
            )
            return
        try:
            if route.server is not None:
                context = self.endpoint.contexts.context_for_route(route)
            else:
                assert active is not None
                context = self.endpoint.contexts.context_for(active)
        except TlsConfigError as exc:
            self._refuse(str(exc), hint="re-upload the set or certificate", alert="internal_error")
            return
        self.session = TlsServerSession(context)
        self._phase = _PHASE_HANDSHAKE
        if self._pending:
            # The ClientHello came in pieces: OpenSSL gets them all at once.
            self._pending += data
            data = bytes(self._pending)
            self._pending = b""
        self._feed_handshake(data)

    def _handshake_data(self, data: bytes) -> None:
        reader = self.reader
        if reader is not None:
            reader.receive_data(data)  # kept, parsed only if the handshake is refused
        self._feed_handshake(data)

    def _feed_handshake(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        session.receive_data(data)
        if self.endpoint.keylog is not None:
            self.endpoint.keylog.handshake_step()
        self._flush()
        if session.failure is not None:
            self._handshake_failed()
        elif session.state is TlsState.ESTABLISHED:
            self._handshake_succeeded()

    def _handshake_failed(self) -> None:
        session = self.session
        assert session is not None
        assert session.failure is not None
        active = self._active
        cert = self._presented_certificate()
        verdict = explain(
            session.failure,
            set_name=active.name if active else None,
            set_version=active.version if active else None,
            certificate=cert,
            ca_subjects=_subjects(active),
        )
        self._emit_refused(verdict.reason, verdict.hint, verdict, certificate=cert)
        self._linger_close()

    def _handshake_succeeded(self) -> None:
        session = self.session
        active = self._active
        assert session is not None
        self._release_handshake_slot()
        self._authenticated()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        obj = session.native
        der = obj.getpeercert(True)
        cert: PeerCertificate | None = None
        if active is None:
            # A server certificate deployed with client_auth "none": no certificate was
            # requested, so the device is named by its address.
            self._accepted(obj, DeviceIdentity(namespace="anonymous", name=self.peer), None, "", 0)
            return
        try:
            if der is None:
                raise IdentityError("no peer certificate after a verified handshake")
            rule = self.endpoint.options.identity_rule
            route = self._route
            if route is not None and route.server is not None:
                chosen = route.server.settings.identity_rule
                if chosen is not None:
                    rule = parse_rule(chosen)
            # What OpenSSL already decoded is enough in the common case; the same
            # answer from the DER otherwise (edge.tls.peer).
            found = fast_inspect(obj.getpeercert(), der, namespace=active.name, rule=rule)
            if found is None:
                found = inspect_certificate(der, namespace=active.name, rule=rule)
            identity, cert = found
        except IdentityError as exc:
            cert = describe_certificate(der) if der else None
            session.close(str(exc))
            self._flush()
            self._emit_refused(
                str(exc),
                "issue the device a certificate with that field, or change identity.rule",
                None,
                certificate=cert,
            )
            self._linger_close()
            return
        self._accepted(obj, identity, cert, active.name, active.version)

    def _accepted(
        self,
        obj: Any,
        identity: DeviceIdentity,
        cert: PeerCertificate | None,
        set_name: str,
        set_version: int,
    ) -> None:
        cipher = obj.cipher()
        hello = self.hello
        # What the handshake needed is dropped: an idle device costs memory for
        # as long as it stays connected (the offered suites alone are ~2 KiB), and
        # the route would keep a rotated-out server key alive with it.
        self._route = None
        self.reader = None
        self.hello = None
        self._pending = b""
        if self.endpoint.keylog is not None and hello is not None:
            self.endpoint.keylog.forget(hello.random)
        self.info = SessionInfo(
            identity=identity,
            peer=self.peer,
            sni=hello.sni if hello else None,
            alpn=obj.selected_alpn_protocol(),
            tls_version=obj.version() or "",
            cipher=cipher[0] if cipher else "",
            certificate=cert,
            set_name=set_name,
            set_version=set_version,
        )
        self.endpoint.events.emit(
            "tls.accepted",
            "accepted",
            identity=str(identity),
            peer=self.peer,
            sni=self.info.sni,
            alpn=self.info.alpn,
            tls_version=self.info.tls_version,
            cipher=self.info.cipher,
            set=set_name,
            version=set_version,
            certificate=cert,
            connection_id=self.info.connection_id,
            handshake_ms=round((time.monotonic() - self._started) * 1000, 2),
        )
        self.transport = TlsTransport(self)
        self._phase = _PHASE_SELECT
        # The listener kind or ALPN decides at once; otherwise the first bytes
        # (maybe already here with the client's Finished: a pipelined CONNECT).
        self._after_app_input()

    def _select(self, plain: bytes) -> None:
        """Choose the application protocol with :func:`edge.mux.select_protocol`."""
        info = self.info
        assert info is not None
        if plain:
            if not self._pending:
                self._pending = bytearray()
            self._pending += plain
        first = bytes(self._pending)
        try:
            chosen = select_protocol(info.alpn, first, self.endpoint.options.kind)
        except MuxError as exc:
            self._refuse_protocol(exc.reason)
            return
        if chosen is None:
            if self._timer is None:
                # Until the first bytes decide, the handshake deadline applies again.
                self._timer = self.endpoint.deadlines.add(self._on_timeout)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = b""
        self._start_app(chosen, first)

    def _refuse_protocol(self, reason: str, kind: str = "mux.refused") -> None:
        info = self.info
        assert info is not None
        self._close_reason = reason
        self._pending = b""
        self.endpoint.events.emit(
            kind,
            "refused",
            identity=str(info.identity),
            peer=self.peer,
            sni=info.sni,
            alpn=info.alpn,
            reason=reason,
        )
        if self.transport is not None:
            self.transport.close()
        # Whatever still arrives is discarded until the socket closes.
        self._phase = _PHASE_DRAIN

    def _start_app(self, name: Selected, first: bytes) -> None:
        info = self.info
        transport = self.transport
        assert info is not None
        assert transport is not None
        factory = self.endpoint.factories.get(name)
        if factory is None:
            self._refuse_protocol(f"no {name} service on this listener", "connection.refused")
            return
        self._phase = _PHASE_APP
        try:
            self.app = factory(info)
            self.app.connection_made(transport)
            if first:
                self.app.data_received(first)
        except Exception as exc:
            log.exception("application protocol failed to start")
            self._close_reason = f"application error: {exc}"
            transport.abort()

    def _app_data(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        session.receive_data(data)
        self._after_app_input()

    def _after_app_input(self) -> None:
        session = self.session
        assert session is not None
        plain = session.application_data()
        self.bytes_in += len(plain)
        if self._phase == _PHASE_SELECT:
            self._select(plain)
            plain = b""
        if plain and self.app is not None and self._phase == _PHASE_APP:
            try:
                self.app.data_received(plain)
            except Exception as exc:
                log.exception("application protocol failed on data")
                self._close_reason = f"application error: {exc}"
                if self.transport is not None:
                    self.transport.abort()
                return
        self._flush()
        if session.peer_closed and self._phase in (_PHASE_APP, _PHASE_SELECT):
            self._close_reason = self._close_reason or (
                "the device sent close_notify"
                if session.close_reason == "close_notify"
                else f"the device closed the connection ({session.close_reason})"
            )
            if self.app is not None:
                try:
                    self.app.eof_received()
                except Exception:
                    log.exception("application eof_received failed")
            self._flush()
            self._close_raw()

    # -- refusals -------------------------------------------------------------

    def _refuse_early(self, reason: str) -> None:
        self._phase = _PHASE_CLOSED
        self._emit_refused(reason, "raise the edge's limits or spread devices' arrivals", None)
        self.endpoint.refused_early.add(self)
        assert self.raw is not None
        # abort, not close: a limit exists to free resources now.
        self.raw.abort()

    def _refuse(self, reason: str, *, hint: str, alert: str | None) -> None:
        self._emit_refused(reason, hint, None, alert=alert)
        if alert is not None and self.raw is not None:
            self.raw.write(alert_record(alert))
        self._linger_close()

    def _on_timeout(self) -> None:
        self._timer = None
        if self._phase == _PHASE_SELECT:
            timeout = self.endpoint.options.handshake_timeout
            self._refuse_protocol(f"no protocol bytes within {timeout:g} s")
            return
        if self._phase == _PHASE_HELLO:
            reason = f"no ClientHello within {self.endpoint.options.handshake_timeout:g} s"
        else:
            reason = f"handshake not finished within {self.endpoint.options.handshake_timeout:g} s"
        self._emit_refused(reason, "the device stalled; check its network and TLS stack", None)
        self._phase = _PHASE_CLOSED
        if self.raw is not None:
            self.raw.abort()

    def _emit_refused(
        self,
        reason: str,
        hint: str,
        verdict: HandshakeVerdict | None,
        *,
        alert: str | None = None,
        certificate: PeerCertificate | None = None,
    ) -> None:
        hello = self.hello
        active = self._active
        self.endpoint.events.emit(
            "tls.refused",
            "refused",
            peer=self.peer,
            sni=hello.sni if hello else None,
            alpn_offered=list(hello.alpn) if hello else [],
            versions_offered=list(hello.versions) if hello else [],
            certificate=certificate,
            set=active.name if active else None,
            version=active.version if active else None,
            tls_version=verdict.tls_version if verdict else None,
            verify_code=verdict.verify_code if verdict else None,
            verify_message=verdict.verify_message if verdict else "",
            alert=(verdict.alert if verdict else alert) or None,
            alert_from_client=verdict.alert_from_client if verdict else False,
            library_reason=verdict.library_reason if verdict else "",
            reason=reason,
            hint=hint,
            handshake_ms=round((time.monotonic() - self._started) * 1000, 2),
        )

    def _presented_certificate(self) -> PeerCertificate | None:
        # TLS 1.2 carries the client Certificate message in cleartext. TLS 1.3
        # encrypts it, and Python's ssl exposes no peer certificate after a failed
        # verification: ask OpenSSL for the chain it tried to verify
        # (edge.tls.verifiedchain), or else decrypt the client's flight with the
        # handshake secret from the key log tap (edge.tls.keylog), if there is one.
        reader = self.reader
        if reader is None:
            return None
        certs = reader.client_certificates
        session = self.session
        if certs or session is None:
            return describe_certificate(certs[0]) if certs else None
        der = verifiedchain.presented_certificate(session.ssl_object)
        if der is not None:
            return describe_certificate(der)
        tap = self.endpoint.keylog
        if tap is not None and self.hello is not None:
            secret = tap.pop(self.hello.random)
            if secret is not None and reader.encrypted_records:
                certs = decrypt_client_certificates(
                    secret, session.cipher_suite, reader.encrypted_records
                )
        return describe_certificate(certs[0]) if certs else None

    # -- output -----------------------------------------------------------------

    def _flush(self) -> None:
        session = self.session
        raw = self.raw
        if session is None or raw is None:
            return
        out = session.data_to_send()
        if out and not raw.is_closing():
            raw.write(out)

    def _linger_close(self) -> None:
        # Closing at once would make the kernel answer whatever the client sends
        # next (a TLS 1.3 client sends its CONNECT right after its Finished) with
        # a RST, and a RST makes the client's kernel drop the unread alert: the
        # device would see "connection reset" instead of "unknown ca". So: send
        # FIN after the alert, discard what still arrives, close on the client's
        # EOF or after refusal_linger seconds.
        self._release_handshake_slot()
        self._authenticated()
        self._phase = _PHASE_DRAIN
        raw = self.raw
        if raw is None or raw.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ep = self.endpoint
        if self._counted:
            # A refused connection holds no slot good devices need: it leaves the
            # connection count for the lingering budget, or goes at once.
            ep.connections -= 1
            self._counted = False
            if len(ep.lingering) >= ep.options.max_lingering:
                raw.abort()
                ep._released()
                return
            ep.lingering.add(self)
        if raw.can_write_eof():
            raw.write_eof()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.endpoint.options.refusal_linger, raw.abort)

    def _close_raw(self) -> None:
        self._release_handshake_slot()
        if self.raw is not None and not self.raw.is_closing():
            self.raw.close()

    def _release_handshake_slot(self) -> None:
        if self._in_handshake_slot:
            self.endpoint.handshakes -= 1
            self._in_handshake_slot = False

    def _authenticated(self) -> None:
        # The connection no longer counts against its source's unauthenticated cap
        # (authenticated, refused, or gone).
        source = self._source
        if source:
            self._source = ""
            counts = self.endpoint.unauthenticated
            left = counts[source] - 1
            if left:
                counts[source] = left
            else:
                del counts[source]

    # -- used by TlsTransport ---------------------------------------------------------

    def app_write(self, data: bytes) -> None:
        """Encrypt and send application data."""
        session = self.session
        if session is None or session.state is not TlsState.ESTABLISHED:
            return
        self.bytes_out += len(data)
        session.send(data)
        self._flush()

    def app_close(self, reason: str) -> None:
        """Send close_notify and close the socket once its buffer drains."""
        self._close_reason = self._close_reason or reason
        if self.session is not None:
            self.session.close(reason)
            self._flush()
        self._close_raw()

    def shutdown(self, reason: str) -> None:
        """Close this connection whatever its phase (edge shutdown)."""
        if self._phase in (_PHASE_APP, _PHASE_SELECT):
            self.app_close(reason)
        elif self.raw is not None:
            self.raw.abort()


def protocol_name(conn: EdgeTlsProtocol) -> str:
    """The label of what ``conn`` carries, for metrics and the device list.

    ``handshake`` until the handshake is accepted, ``tls`` until the application
    protocol is chosen, then the application's own ``protocol_name``: ``mqtt``,
    ``http``, ``ws`` (the ``/ws`` JSON protocol) or ``mqtt-ws`` (MQTT over
    WebSocket). A fixed set: metrics may use it as a label.
    """
    if conn.info is None:
        return "handshake"
    name = getattr(conn.app, "protocol_name", None)
    return name if isinstance(name, str) else "tls"


def _subjects(active: ActiveSetLike | None) -> tuple[str, ...]:
    if active is None:
        return ()
    out = []
    for cert in active.ca_certs:
        subject = getattr(cert, "subject", None)
        if subject is not None:
            out.append(subject.rfc4514_string())
    return tuple(out)


class TlsTransport(asyncio.Transport):
    """The transport an application protocol sees: writes are encrypted, close sends close_notify.

    Extra info: ``peername``, ``sockname``, ``socket`` (from the TCP transport),
    ``ssl_object``, ``peercert`` (the verified leaf, as ``getpeercert()``),
    ``sslcontext``, ``cipher``, ``edgesim.session`` (the :class:`SessionInfo`).
    """

    __slots__ = ("_closing", "_conn")

    def __init__(self, conn: EdgeTlsProtocol) -> None:
        # No super().__init__(): BaseTransport's only sets _extra (an empty dict per
        # connection), which nothing but its get_extra_info, overridden here, reads.
        self._conn = conn
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Return TLS and socket facts about the connection."""
        conn = self._conn
        session = conn.session
        if name == "edgesim.session":
            return conn.info
        if session is not None:
            if name == "ssl_object":
                return session.ssl_object
            if name == "peercert":
                return session.ssl_object.getpeercert()
            if name == "cipher":
                return session.ssl_object.cipher()
            if name == "sslcontext":
                return session.ssl_object.context
        if conn.raw is not None:
            return conn.raw.get_extra_info(name, default)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and queue it on the socket."""
        if self._closing:
            return
        self._conn.app_write(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        """Write several buffers as one TLS write."""
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        """TLS has no half-close."""
        return False

    def write_eof(self) -> None:
        """Unsupported: TLS has no half-close (close_notify closes both ways)."""
        raise NotImplementedError("TLS connections cannot half-close; use close()")

    def close(self) -> None:
        """Send close_notify, then close the socket after buffered data is sent."""
        if self._closing:
            return
        self._closing = True
        self._conn.app_close("closed by the edge")

    def abort(self) -> None:
        """Close the socket at once, dropping buffered data."""
        self._closing = True
        raw = self._conn.raw
        if raw is not None:
            raw.abort()

    def is_closing(self) -> bool:
        """True once close() or abort() was called or the socket is closing."""
        raw = self._conn.raw
        return self._closing or raw is None or raw.is_closing()

    def pause_reading(self) -> None:
        """Stop reading from the socket (TCP flow control reaches the device)."""
        if self._conn.raw is not None:
            self._conn.raw.pause_reading()

    def resume_reading(self) -> None:
        """Resume reading from the socket."""
        if self._conn.raw is not None:
            self._conn.raw.resume_reading()

    def is_reading(self) -> bool:
        """True unless reading is paused."""
        raw = self._conn.raw
        return raw is not None and raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the socket's write buffer limits (pause_writing/resume_writing thresholds)."""
        if self._conn.raw is not None:
            self._conn.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """Bytes (ciphertext) queued on the socket."""
        raw = self._conn.raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The socket's (low, high) write buffer limits."""
        raw = self._conn.raw
        return raw.get_write_buffer_limits() if raw is not None else (0, 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the application protocol (used by protocol upgrades such as WebSocket)."""
        assert isinstance(protocol, asyncio.Protocol)
        self._conn.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The application protocol."""
        assert self._conn.app is not None
        return self._conn.app
