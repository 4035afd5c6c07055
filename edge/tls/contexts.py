"""Server ``ssl.SSLContext`` objects, one per (server certificate, active set version), cached.

A context costs about a millisecond and some tens of KiB to build, so it is built
once per set version and reused by every handshake. When the trust snapshot
changes, :meth:`ContextCache.apply` keeps the contexts of versions still active
and drops the rest; sessions already established keep the context they were
built with, new handshakes pick the new one.

Each context: the edge's certificate chain and key, ``CERT_REQUIRED``, the set's
CA certificates as the only trust anchors, the set's CRLs with
``VERIFY_CRL_CHECK_LEAF`` when it has any, the TLS profile's protocol versions,
cipher suites, key exchange groups and suite order (:mod:`edge.tls.profiles`:
Mozilla's modern, intermediate (the default) or old), ``num_tickets`` (0 by
default: a ticket costs server CPU on every full handshake and devices rarely
resume), no TLS 1.2 renegotiation, ALPN, and an optional key log for Wireshark.
All of it is set once per context, so a handshake pays nothing for the profile.
``VERIFY_X509_STRICT`` stays off. ``OP_IGNORE_UNEXPECTED_EOF`` is left off on
purpose: a device that drops TCP without close_notify is reported as such.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.tls.errors import TlsConfigError
from edge.tls.profiles import DEFAULT_PROFILE, TlsProfile, apply_profile, get_profile

__all__ = [
    "DEFAULT_ALPN",
    "ContextCache",
    "RouteLike",
    "ServerCertLike",
    "TlsSettings",
    "TrustSetLike",
    "parse_tls_version",
]

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


class SettingsLike(Protocol):
    """A server certificate's deployment settings (``edge.trust.model.ServerSettings``)."""

    @property
    def client_auth(self) -> str: ...
    @property
    def min_tls(self) -> str: ...
    @property
    def send_ca_names(self) -> bool: ...
    @property
    def identity_rule(self) -> str | None: ...


class ServerCertLike(Protocol):
    """A deployed server certificate (``edge.trust.model.DeployedCert``)."""

    @property
    def name(self) -> str: ...
    @property
    def deployment(self) -> int: ...
    @property
    def chain_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...
    @property
    def settings(self) -> SettingsLike: ...


class CaSetLike(TrustSetLike, Protocol):
    """A set version with its parsed CA certificates (for the CA names sent)."""

    @property
    def ca_certs(self) -> tuple[Any, ...]: ...


class RouteLike(Protocol):
    """What a handshake uses for one name (``edge.trust.model.Route``)."""

    @property
    def server(self) -> ServerCertLike | None: ...
    @property
    def active(self) -> CaSetLike | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How the edge's server contexts are built."""

    #: PEM file with the server certificate followed by its chain.
    cert_file: Path
    #: PEM file with the server private key.
    key_file: Path
    #: None: the profile's minimum (``[tls] profile``); a version may raise it, not lower it.
    minimum_version: ssl.TLSVersion | None = None
    maximum_version: ssl.TLSVersion | None = None
    num_tickets: int = 0
    alpn: tuple[str, ...] = DEFAULT_ALPN
    #: SSLKEYLOGFILE-style file for decrypting captures; None disables it.
    keylog_file: Path | None = None
    #: OpenSSL cipher string for TLS 1.2 (None: the profile's list).
    ciphers: str | None = None
    #: One of :data:`edge.tls.profiles.PROFILES`: Mozilla's modern, intermediate or old.
    profile: str = DEFAULT_PROFILE


class ContextCache:
    """Build and cache one server context per certificate set version."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        try:
            self._profile: TlsProfile = get_profile(settings.profile)
        except ValueError as exc:
            raise TlsConfigError(str(exc)) from None
        minimum = settings.minimum_version
        if minimum is None or minimum < self._profile.minimum_version:
            minimum = self._profile.minimum_version
        self._minimum: ssl.TLSVersion = minimum
        self._contexts: dict[tuple[str, int, str], ssl.SSLContext] = {}
        # id(set object) -> (the object, its context); holding the object keeps the id valid.
        self._by_object: dict[int, tuple[TrustSetLike, ssl.SSLContext]] = {}
        # The same for routes served with an uploaded server certificate.
        self._routes: dict[tuple[str, int, str, int, str], ssl.SSLContext] = {}
        self._by_route: dict[int, tuple[RouteLike, ssl.SSLContext]] = {}
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
        ctx = self._base(self._minimum)
        self._load_chain(ctx)
        self._trust(ctx, active)
        self._finish(ctx)
        return ctx

    def _base(self, minimum: ssl.TLSVersion) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if minimum < ssl.TLSVersion.TLSv1_2:
            # Only the old profile asks for TLS 1.0/1.1, knowingly: Python's
            # DeprecationWarning says what its choice already says.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = minimum
        else:
            ctx.minimum_version = minimum
        if s.maximum_version is not None:
            ctx.maximum_version = s.maximum_version
        ctx.num_tickets = s.num_tickets
        # A device has no reason to renegotiate a TLS 1.2 session; refusing it
        # closes a CPU-exhaustion vector (TLS 1.3 has no renegotiation at all).
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        apply_profile(ctx, self._profile, s.ciphers)
        return ctx

    @staticmethod
    def _trust(ctx: ssl.SSLContext, active: TrustSetLike) -> None:
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

    def _finish(self, ctx: ssl.SSLContext) -> None:
        s = self.settings
        if s.alpn:
            ctx.set_alpn_protocols(list(s.alpn))
        if s.keylog_file is not None:
            ctx.keylog_filename = str(s.keylog_file)

    @staticmethod
    def _route_key(route: RouteLike) -> tuple[str, int, str, int, str]:
        server = route.server
        assert server is not None
        active = route.active
        if active is None:
            return (server.name, server.deployment, "", 0, "")
        crl = hashlib.sha256(active.crl_pem).hexdigest()
        return (server.name, server.deployment, active.name, active.version, crl)

    def context_for_route(self, route: RouteLike) -> ssl.SSLContext:
        """Return the context of a route served with an uploaded server certificate.

        Cached per (certificate deployment, set version, CRLs); the fast path is
        one dict lookup by the route object of the current snapshot.
        """
        entry = self._by_route.get(id(route))
        if entry is not None and entry[0] is route:
            return entry[1]
        key = self._route_key(route)
        with self._lock:
            ctx = self._routes.get(key)
            if ctx is None:
                ctx = self.build_route(route)
                self._routes[key] = ctx
            self._by_route[id(route)] = (route, ctx)
        return ctx

    def build_route(self, route: RouteLike) -> ssl.SSLContext:
        """Build a fresh context for a server-certificate route (not cached)."""
        from edge.tls import canames

        server = route.server
        assert server is not None
        settings = server.settings
        minimum = ssl.TLSVersion.TLSv1_3 if settings.min_tls == "1.3" else self._minimum
        ctx = self._base(max(minimum, self._minimum))
        _load_chain_pem(ctx, server.name, server.chain_pem, server.key_pem)
        active = route.active
        if settings.client_auth == "none" or active is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            self._trust(ctx, active)
            if settings.send_ca_names and not canames.set_client_ca_names(ctx, active.ca_certs):
                raise TlsConfigError(
                    f"server certificate `{server.name}`: this Python's ssl cannot send CA "
                    "names; deploy it with send_ca_names off"
                )
        self._finish(ctx)
        return ctx

    def apply(self, active_sets: Sequence[TrustSetLike], routes: Sequence[RouteLike] = ()) -> None:
        """Forget the contexts of set versions, CRL states and routes no longer active."""
        keep = {(a.name, a.version, hashlib.sha256(a.crl_pem).hexdigest()) for a in active_sets}
        objects = {id(a) for a in active_sets}
        keep_routes = {self._route_key(r) for r in routes if r.server is not None}
        route_ids = {id(r) for r in routes}
        with self._lock:
            for rkey in list(self._routes):
                if rkey not in keep_routes:
                    del self._routes[rkey]
            for rid in list(self._by_route):
                if rid not in route_ids:
                    del self._by_route[rid]
            for key in list(self._contexts):
                if key not in keep:
                    del self._contexts[key]
            for oid in list(self._by_object):
                if oid not in objects:
                    del self._by_object[oid]

    def __len__(self) -> int:
        return len(self._contexts) + len(self._routes)


def _secret_file(data: bytes, label: str) -> tuple[int, str]:
    """A file descriptor and path holding ``data``, never on disk where possible.

    ``ssl`` loads certificates and keys from paths only. On Linux a memfd (an
    anonymous in-memory file, reachable as ``/proc/self/fd/N`` by this process
    only) keeps the private key off the disk; elsewhere a mode 0600 temporary
    file is used and removed at once.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create(f"edgesim-{label}", os.MFD_CLOEXEC)
        os.write(fd, data)
        return fd, f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="edgesim-", suffix=".pem")
    os.write(fd, data)
    return fd, path


def _load_chain_pem(ctx: ssl.SSLContext, name: str, chain_pem: bytes, key_pem: bytes) -> None:
    cert_fd, cert_path = _secret_file(chain_pem, "chain")
    key_fd, key_path = _secret_file(key_pem, "key")
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"server certificate `{name}`: cannot load its chain and key: {exc.reason or exc}"
        ) from None
    finally:
        for fd, path in ((cert_fd, cert_path), (key_fd, key_path)):
            os.close(fd)
            if not path.startswith("/proc/"):
                os.unlink(path)


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
