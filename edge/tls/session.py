"""A sans-I/O TLS server session over ``ssl.MemoryBIO``: bytes in, bytes out.

Why not ``loop.create_server(ssl=...)``: asyncio drops a failed handshake without
telling the server why and without sending the alert to the client. Driving an
``ssl.SSLObject`` over two memory BIOs keeps both: the alert OpenSSL writes lands
in :meth:`TlsServerSession.data_to_send`, and the failure becomes a
:class:`~edge.tls.verdict.HandshakeFailure`.

States::

    HANDSHAKING --(handshake ok)--> ESTABLISHED --(close_notify either way / EOF)--> CLOSED
         \\--(handshake failed: .failure set, alert queued)-----------------------> CLOSED

Usage: feed every received chunk to :meth:`~TlsServerSession.receive_data`
(``b""`` means the peer sent EOF), then write :meth:`~TlsServerSession.data_to_send`
to the socket; after the handshake, :meth:`~TlsServerSession.send` encrypts and
:meth:`~TlsServerSession.application_data` returns decrypted bytes. Nothing here
raises on what the peer sends.
"""

from __future__ import annotations

import contextlib
import enum
import ssl
from typing import Any, Protocol, cast

from edge.tls.clienthello import parse_server_hello
from edge.tls.verdict import HandshakeFailure, failure_from_ssl_error

__all__ = ["NativeSsl", "TlsServerSession", "TlsState"]

_READ_SIZE = 64 * 1024


class NativeSsl(Protocol):
    """The C object (``_ssl._SSLSocket``) that ``ssl.SSLObject`` wraps: the methods used here.

    ``ssl.SSLObject``'s methods are Python functions that call these one for one
    (``unwrap`` is ``shutdown``); the edge calls them directly, a dozen times per
    connect, and builds the ``ssl.SSLObject`` only for whoever asks for it
    (:attr:`TlsServerSession.ssl_object`).
    """

    def do_handshake(self) -> None: ...
    def read(self, size: int, /) -> bytes: ...
    def write(self, data: bytes | memoryview, /) -> int: ...
    def pending(self) -> int: ...
    def shutdown(self) -> Any: ...
    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def selected_alpn_protocol(self) -> str | None: ...
    def getpeercert(self, binary_form: bool = False, /) -> Any: ...


class TlsState(enum.Enum):
    """Where a :class:`TlsServerSession` is in its life."""

    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class TlsServerSession:
    """One server-side TLS connection, driven by the caller's bytes."""

    __slots__ = (
        "_app",
        "_close_sent",
        "_flight",
        "_held",
        "_in",
        "_out",
        "_ssl",
        "_wrapper",
        "close_reason",
        "failure",
        "peer_closed",
        "state",
    )

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        # What SSLContext.wrap_bio() wraps, without the wrapper (see NativeSsl).
        wrap_bio = context._wrap_bio  # type: ignore[attr-defined]
        self._ssl = cast(NativeSsl, wrap_bio(self._in, self._out, server_side=True))
        self._wrapper: ssl.SSLObject | None = None
        self._app = bytearray()
        self.state = TlsState.HANDSHAKING
        #: Set when the handshake failed; the alert (if any) is in data_to_send().
        self.failure: HandshakeFailure | None = None
        #: True once the peer sent close_notify or EOF.
        self.peer_closed = False
        #: Why the session closed after the handshake ("" while open).
        self.close_reason = ""
        self._close_sent = False
        # Our first flight (ServerHello...), kept until the handshake ends: the
        # version and suite it selects are read from it only when a failure needs them.
        self._flight: bytes | None = None
        # Bytes read from the outgoing BIO that data_to_send() has not returned yet.
        self._held = b""

    @property
    def handshake_done(self) -> bool:
        """True once the handshake succeeded (even if the session closed since)."""
        return self.failure is None and self.state is not TlsState.HANDSHAKING

    @property
    def cipher_suite(self) -> int:
        """The cipher suite our ServerHello selected: 0 before it is sent and once the handshake succeeded."""
        found = parse_server_hello(self._flight) if self._flight else None
        return found[1] if found else 0

    def _version_seen(self) -> str | None:
        # Python's ssl reports the version only after a successful handshake, but
        # the alert of a failure depends on it (TLS 1.3 has certificate_required,
        # TLS 1.2 does not): read it from our own ServerHello.
        found = parse_server_hello(self._flight) if self._flight else None
        return found[0] if found else None

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The ``ssl.SSLObject`` of this session (peer certificate, cipher, ALPN, version).

        Built on first use around :attr:`native`, as ``SSLObject._create`` would.
        """
        wrapper = self._wrapper
        if wrapper is None:
            wrapper = self._wrapper = ssl.SSLObject.__new__(ssl.SSLObject)
            wrapper._sslobj = self._ssl  # type: ignore[attr-defined]
        return wrapper

    @property
    def native(self) -> NativeSsl:
        """The C object under :attr:`ssl_object`, for the edge's own calls on the connect path."""
        return self._ssl

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the peer; ``b""`` signals EOF."""
        if self.state is TlsState.CLOSED:
            return
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        if self.state is TlsState.HANDSHAKING:
            self._handshake()
        if self.state is TlsState.ESTABLISHED:
            self._read_app()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            if self._flight is None and self._out.pending:
                # Taken out of the BIO now (data_to_send() hands it over) rather
                # than parsed now: most handshakes never need its contents.
                self._flight = self._held = self._out.read()
            if self._in.eof:
                self._fail_eof()
            return
        except ssl.SSLError as exc:
            outgoing = self._out.read() if self._out.pending else b""
            self.failure = failure_from_ssl_error(
                exc, tls_version=self._version() or self._version_seen(), outgoing=outgoing
            )
            self._held += outgoing
            self.state = TlsState.CLOSED
            return
        self._flight = None
        self.state = TlsState.ESTABLISHED

    def _fail_eof(self) -> None:
        self.failure = HandshakeFailure(
            alert="", library_reason="EOF", tls_version=self._version_seen()
        )
        self.state = TlsState.CLOSED

    def _version(self) -> str | None:
        try:
            return self._ssl.version()
        except (ssl.SSLError, ValueError):
            return None

    def _read_app(self) -> None:
        read = self._ssl.read
        # Checking the BIO first skips an exception per read in the common case
        # where every record received has been consumed.
        while self._in.pending or self._ssl.pending() or self._in.eof:
            try:
                chunk = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                if self._in.eof:
                    self._closed_by_peer("EOF without close_notify")
                return
            except ssl.SSLZeroReturnError:
                self._closed_by_peer("close_notify")
                return
            except ssl.SSLEOFError:
                self._closed_by_peer("EOF without close_notify")
                return
            except ssl.SSLError as exc:
                self._closed_by_peer(f"TLS error: {exc.reason or exc}")
                return
            if not chunk:
                # SSLObject.read returns b"" once the peer's close_notify arrived.
                self._closed_by_peer("close_notify")
                return
            self._app += chunk

    def _closed_by_peer(self, reason: str) -> None:
        self.peer_closed = True
        self.close_reason = reason
        if reason == "close_notify":
            # Answer with our own close_notify (RFC 8446 6.1): clients such as
            # asyncio's wait for it before they report the connection closed.
            self._send_close_notify()
        self.state = TlsState.CLOSED

    def _send_close_notify(self) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        # WantRead just means our close_notify is queued and we do not wait for the peer's.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.shutdown()

    def application_data(self) -> bytes:
        """Return (and forget) the plaintext received since the last call."""
        if not self._app:
            return b""
        out = bytes(self._app)
        self._app.clear()
        return out

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` for the peer (queued in :meth:`data_to_send`)."""
        if self.state is not TlsState.ESTABLISHED or not data:
            return
        view = memoryview(data)
        while view:
            # SSLObject.write takes at most one record's worth per call when
            # SSL_MODE_ENABLE_PARTIAL_WRITE is set; loop until everything is in.
            n = self._ssl.write(view)
            view = view[n:]

    def close(self, reason: str = "closed by the edge") -> None:
        """Queue close_notify and close the session (idempotent)."""
        if self.state is TlsState.CLOSED:
            return
        if self.state is TlsState.ESTABLISHED:
            self._send_close_notify()
        self.close_reason = self.close_reason or reason
        self.state = TlsState.CLOSED

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the socket."""
        held = self._held
        if held:
            self._held = b""
            return held + self._out.read() if self._out.pending else held
        if not self._out.pending:
            return b""
        return self._out.read()
