"""Server ``ssl.SSLContext`` objects, one per (server certificate, active set version), cached.

A context costs about a millisecond and some tens of KiB to build, so it is built
once per set version and reused by every handshake. When the trust snapshot
changes, :meth:`ContextCache.apply` keeps the contexts of versions still active
and drops the rest; sessions already established keep the context they were
built with, new handshakes pick the new one.

Each context: the edge's certificate chain and key, ``CERT_REQUIRED``, the set's
CA certificates as the only trust anchors, the set's CRLs with
``VERIFY_CRL_CHECK_LEAF`` when it has any, a minimum protocol version (TLS 1.2 by
default), ``num_tickets`` (0 by default: a ticket costs server CPU on every full
handshake and devices rarely resume), no TLS 1.2 renegotiation, ALPN, and an
optional key log for Wireshark. The rest is OpenSSL 3.0's default, which is
already the cheap choice for devices: X25519 first for key exchange, the server's
suite order (AES-GCM, hardware-accelerated, before ChaCha20), no
``VERIFY_X509_STRICT``. ``OP_IGNORE_UNEXPECTED_EOF`` is left off on purpose: a
device that drops TCP without close_notify is reported as such.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge.tls.errors import TlsConfigError

__all__ = ["DEFAULT_ALPN", "ContextCache", "TlsSettings", "TrustSetLike", "parse_tls_version"]

#: ALPN identifiers the edge accepts, in its order of preference.
DEFAULT_ALPN: tuple[str, ...] = ("mqtt", "x-amzn-mqtt-ca", "http/1.1")

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def parse_tls_version(text: str) -> ssl.TLSVersion:
    """Parse ``"1.2"``, ``"TLSv1.2"`` or ``"tls1.3"`` into an ``ssl.TLSVersion``."""
    key = text.strip().lower().removeprefix("tlsv").removeprefix("tls")
    for name, version in _VERSIONS.items():
        if name.lower().removeprefix("tlsv") == key:
            return version
    raise ValueError(f"unknown TLS version {text!r} (use 1.2 or 1.3)")


class TrustSetLike(Protocol):
    """What the context builder needs from a certificate set's active version."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def ca_pem(self) -> bytes: ...
    @property
    def crl_pem(self) -> bytes: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How the edge's server contexts are built."""

    #: PEM file with the server certificate followed by its chain.
    cert_file: Path
    #: PEM file with the server private key.
    key_file: Path
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    maximum_version: ssl.TLSVersion | None = None
    num_tickets: int = 0
    alpn: tuple[str, ...] = DEFAULT_ALPN
    #: SSLKEYLOGFILE-style file for decrypting captures; None disables it.
    keylog_file: Path | None = None
    #: OpenSSL cipher string for TLS 1.2 (None keeps OpenSSL's default).
    ciphers: str | None = None


class ContextCache:
    """Build and cache one server context per certificate set version."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._contexts: dict[tuple[str, int, str], ssl.SSLContext] = {}
        # id(set object) -> (the object, its context); holding the object keeps the id valid.
        self._by_object: dict[int, tuple[TrustSetLike, ssl.SSLContext]] = {}
        self._lock = threading.Lock()
        # Fail at startup, not at the first handshake, if the server key is wrong.
        self._probe()

    def _probe(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._load_chain(ctx)

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        s = self.settings
        try:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
        except FileNotFoundError as exc:
            raise TlsConfigError(f"server certificate or key not found: {exc.filename}") from None
        except ssl.SSLError as exc:
            raise TlsConfigError(
                f"cannot load server certificate {s.cert_file} with key {s.key_file}: {exc.reason or exc}"
                " (is the key the certificate's, and both PEM?)"
            ) from None

    def context_for(self, active: TrustSetLike) -> ssl.SSLContext:
        """Return the context verifying clients against ``active`` (built on first use).

        The cache key is the set, its version and a digest of its CRLs: adding a
        CRL to a set does not make a new version, but needs a new context.
        """
        # Fast path, once per handshake: the same snapshot object as last time.
        entry = self._by_object.get(id(active))
        if entry is not None and entry[0] is active:
            return entry[1]
        key = (active.name, active.version, hashlib.sha256(active.crl_pem).hexdigest())
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = self.build(active)
                self._contexts[key] = ctx
            self._by_object[id(active)] = (active, ctx)
        return ctx

    def build(self, active: TrustSetLike) -> ssl.SSLContext:
        """Build a fresh server context for ``active`` (not cached)."""
        s = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = s.minimum_version
        if s.maximum_version is not None:
            ctx.maximum_version = s.maximum_version
        ctx.num_tickets = s.num_tickets
        # A device has no reason to renegotiate a TLS 1.2 session; refusing it
        # closes a CPU-exhaustion vector (TLS 1.3 has no renegotiation at all).
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        if s.ciphers:
            ctx.set_ciphers(s.ciphers)
        self._load_chain(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=active.ca_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise TlsConfigError(
                f"set `{active.name}` v{active.version}: cannot load its CA certificates: {exc}"
            ) from None
        if active.crl_pem:
            _load_crls(ctx, active)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if s.alpn:
            ctx.set_alpn_protocols(list(s.alpn))
        if s.keylog_file is not None:
            ctx.keylog_filename = str(s.keylog_file)
        return ctx

    def apply(self, active_sets: Sequence[TrustSetLike]) -> None:
        """Forget the contexts of set versions (and CRL states) that are no longer active."""
        keep = {(a.name, a.version, hashlib.sha256(a.crl_pem).hexdigest()) for a in active_sets}
        objects = {id(a) for a in active_sets}
        with self._lock:
            for key in list(self._contexts):
                if key not in keep:
                    del self._contexts[key]
            for oid in list(self._by_object):
                if oid not in objects:
                    del self._by_object[oid]

    def __len__(self) -> int:
        return len(self._contexts)


def _load_crls(ctx: ssl.SSLContext, active: TrustSetLike) -> None:
    # ``cadata`` accepts certificates only; OpenSSL's file lookup also reads CRLs,
    # so the CRLs go through a private temporary file that is removed at once.
    fd, path = tempfile.mkstemp(prefix="edgesim-crl-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(active.crl_pem)
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"set `{active.name}` v{active.version}: cannot load its CRLs: {exc}"
        ) from None
    finally:
        os.unlink(path)
