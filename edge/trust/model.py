"""The trust store's value types: what a set, a version, a binding and a snapshot are.

:class:`TrustSnapshot` and :class:`ActiveSet` are the contract with the TLS edge:
an immutable picture of every set's active version and of the hostname bindings,
which new handshakes use. The other records describe the store for the admin API
and the CLI; every one has ``to_dict()`` giving JSON-safe values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

__all__ = [
    "CLIENT_AUTH_CHOICES",
    "DEFAULT_HOST",
    "ActiveSet",
    "CrlInfo",
    "DeployedCert",
    "Finding",
    "Route",
    "RouteTable",
    "ServerSettings",
    "SetInfo",
    "TrustSnapshot",
    "VersionInfo",
    "build_routes",
    "normalize_host",
]

#: ``required``: the device must present a certificate that the set verifies;
#: ``none``: no certificate is requested (server-authenticated TLS only).
CLIENT_AUTH_CHOICES: tuple[str, ...] = ("required", "none")

#: The binding that covers connections without SNI or with an unbound hostname.
DEFAULT_HOST = "*"


def normalize_host(host: str) -> str:
    """Return ``host`` as bindings store it: lower case, no trailing dot.

    Accepts ``*`` (the default binding), a DNS name, or a wildcard ``*.example.com``
    (one leftmost label). Raises ``ValueError`` naming what is wrong otherwise.
    """
    name = host.strip().lower().rstrip(".")
    if name == DEFAULT_HOST:
        return name
    if not name:
        raise ValueError("hostname is empty (use '*' or --default for the default binding)")
    labels = name.split(".")
    for i, label in enumerate(labels):
        if label == "*" and i == 0 and len(labels) >= 3:
            continue
        if label == "*" or "*" in label:
            raise ValueError(
                f"hostname {host!r}: a wildcard must be the whole leftmost label of a name "
                "with at least three labels, like '*.example.com'"
            )
        if not label or len(label) > 63:
            raise ValueError(f"hostname {host!r}: empty or over-long label {label!r}")
        if not all(c.isalnum() or c in "-_" for c in label) or not label.isascii():
            raise ValueError(
                f"hostname {host!r}: label {label!r} may hold only letters, digits, '-' and '_'"
            )
    if len(name) > 253:
        raise ValueError(f"hostname {host!r} is longer than 253 characters")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One reason an upload was refused (``error``) or is worth a look (``warning``).

    ``position`` is the 1-based index of the certificate in the uploaded file and
    ``subject`` its subject DN, both ``None`` when the finding is about the whole
    file or set. Certificate findings come from :func:`certs.lint.lint_chain`,
    whose messages begin with ``certificate N (subject)``.
    """

    severity: str
    code: str
    message: str
    position: int | None = None
    subject: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the finding as a JSON-safe dict (the same keys the PKI linter uses)."""
        return {
            "severity": self.severity,
            "code": self.code,
            "position": self.position,
            "subject": self.subject,
            "message": self.message,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        # Certificate findings already start "certificate N (subject)" (the linter's wording).
        return f"{self.message} hint: {self.hint}" if self.hint else self.message


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveSet:
    """One set's active version, as edge workers use it."""

    name: str
    version: int
    ca_certs: tuple[x509.Certificate, ...]
    #: The uploaded PEM, for ``ssl.SSLContext.load_verify_locations(cadata=...)``.
    ca_pem: bytes
    crls: tuple[x509.CertificateRevocationList, ...]
    #: All CRLs as PEM (``b""`` when none).
    crl_pem: bytes
    allow_sha1: bool
    #: Close the set's live MQTT sessions (DISCONNECT 0x98) when a newly active CRL
    #: revokes their certificate or the set is deleted; off by default.
    disconnect_on_revoke: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """The deployment settings of one server certificate (the seed's "deployment settings").

    ``set_name`` is the certificate set that verifies devices (the seed's
    *Mutual Authentication* selection); ``None`` means "the set bound to the
    hostname", as direct bindings resolve. ``client_auth`` is one of
    :data:`CLIENT_AUTH_CHOICES`. ``min_tls`` is ``"1.2"`` or ``"1.3"``.
    ``send_ca_names`` puts the set's CA subjects in the CertificateRequest (TLS
    1.2 ``certificate_authorities`` list, TLS 1.3 extension), which devices with
    several client certificates use to pick one. ``identity_rule`` overrides the
    listener's identity rule (``cn``, ``san-dns``...) for this hostname.
    """

    set_name: str | None = None
    client_auth: str = "required"
    min_tls: str = "1.2"
    send_ca_names: bool = True
    identity_rule: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-safe dict (the keys the store and the API use)."""
        return {
            "set": self.set_name,
            "client_auth": self.client_auth,
            "min_tls": self.min_tls,
            "send_ca_names": self.send_ca_names,
            "identity_rule": self.identity_rule,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ServerSettings:
        """Inverse of :meth:`to_dict` (missing keys take the defaults)."""
        set_name = data.get("set")
        rule = data.get("identity_rule")
        return ServerSettings(
            set_name=str(set_name) if set_name is not None else None,
            client_auth=str(data.get("client_auth", "required")),
            min_tls=str(data.get("min_tls", "1.2")),
            send_ca_names=bool(data.get("send_ca_names", True)),
            identity_rule=str(rule) if rule is not None else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployedCert:
    """A server certificate's active deployment, as edge workers use it.

    ``key_pem`` is the decrypted private key (PKCS#8 PEM): it lives in memory
    only, is left out of ``repr`` and is never serialised by ``to_dict``.
    """

    name: str
    #: The certificate's version (each upload is a new version).
    version: int
    #: The deployment number (each ``cert deploy`` is a new one, store-wide).
    deployment: int
    #: SAN DNS names, lower case; wildcards as ``*.example.com``.
    hostnames: tuple[str, ...]
    #: The leaf followed by its chain, PEM.
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    settings: ServerSettings
    #: The leaf's notAfter, ISO 8601 UTC.
    not_after: str
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """What a handshake for one name uses: a server certificate (or the edge's own) and a set.

    ``server`` is ``None`` for a direct binding served with the edge's ``[tls]``
    certificate (the behaviour before server certificates existed). ``active`` is
    the set version verifying devices, ``None`` when the route requests no client
    certificate or when it cannot serve (then ``error`` says why).
    """

    host: str
    server: DeployedCert | None
    active: ActiveSet | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Per-snapshot lookup tables, precomputed so a handshake does one or two dict lookups.

    ``exact`` maps a hostname to its route; ``wildcard`` maps a parent domain
    (``example.com`` for ``*.example.com``) to its route; ``default`` serves
    connections without SNI or with an unmatched name.
    """

    exact: Mapping[str, Route]
    wildcard: Mapping[str, Route]
    default: Route | None

    def lookup(self, sni: str | None) -> Route | None:
        """Return the route for ``sni``: exact name, then wildcard (one label), then default."""
        if sni:
            host = sni.lower().rstrip(".")
            found = self.exact.get(host)
            if found is not None:
                return found
            _, dot, parent = host.partition(".")
            if dot and parent:
                found = self.wildcard.get(parent)
                if found is not None:
                    return found
        return self.default


def _binding_set(
    host: str, sets: Mapping[str, ActiveSet], bindings: Mapping[str, str]
) -> tuple[str | None, ActiveSet | None]:
    """The set a direct binding gives ``host`` (exact, wildcard, default): (name, active)."""
    name = bindings.get(host)
    if name is None and not host.startswith("*."):
        _, dot, parent = host.partition(".")
        if dot and parent:
            name = bindings.get("*." + parent)
    if name is None and host != DEFAULT_HOST:
        name = bindings.get(DEFAULT_HOST)
    if name is None:
        return None, None
    return name, sets.get(name)


def _server_route(
    host: str,
    cert: DeployedCert,
    sets: Mapping[str, ActiveSet],
    bindings: Mapping[str, str],
) -> Route:
    settings = cert.settings
    if settings.client_auth == "none":
        return Route(host=host, server=cert, active=None)
    if settings.set_name is not None:
        set_name: str | None = settings.set_name
        active = sets.get(settings.set_name)
    else:
        set_name, active = _binding_set(host, sets, bindings)
    if active is not None:
        return Route(host=host, server=cert, active=active)
    if set_name is None:
        error = (
            f"server certificate {cert.name!r} requires client certificates but names no "
            f"certificate set, and {host!r} has no binding; deploy it with "
            f"'edgesim cert deploy {cert.name} --set SET'"
        )
    else:
        error = (
            f"certificate set {set_name!r} (deployment settings of server certificate "
            f"{cert.name!r}) has no active version; activate one with "
            f"'edgesim trust activate {set_name} VERSION'"
        )
    return Route(host=host, server=cert, active=None, error=error)


def _binding_route(host: str, set_name: str, sets: Mapping[str, ActiveSet]) -> Route:
    active = sets.get(set_name)
    error = None
    if active is None:
        via = "the default binding" if host == DEFAULT_HOST else f"binding {host!r}"
        error = (
            f"certificate set {set_name!r} (via {via}) has no active version; "
            f"activate one with 'edgesim trust activate {set_name} VERSION'"
        )
    return Route(host=host, server=None, active=active, error=error)


def build_routes(
    sets: Mapping[str, ActiveSet],
    bindings: Mapping[str, str],
    server_certs: Mapping[str, DeployedCert],
    default_cert: str | None,
) -> RouteTable:
    """Precompute the routes of a snapshot (see the README's "How a hostname resolves").

    A name takes the server certificate whose SANs cover it (an exact SAN before a
    wildcard SAN; between two certificates with the same SAN the later deployment
    wins). A name no server certificate covers keeps its direct binding, served
    with the edge's ``[tls]`` certificate. The default route is the default server
    certificate, else the default binding ``*``.
    """
    cert_exact: dict[str, DeployedCert] = {}
    cert_wild: dict[str, DeployedCert] = {}
    for cert in sorted(server_certs.values(), key=lambda c: c.deployment):
        for name in cert.hostnames:
            if name.startswith("*."):
                cert_wild[name[2:]] = cert
            else:
                cert_exact[name] = cert
    exact: dict[str, Route] = {}
    wildcard: dict[str, Route] = {}
    for host, set_name in bindings.items():
        if host == DEFAULT_HOST:
            continue
        if host.startswith("*."):
            wildcard[host[2:]] = _binding_route(host, set_name, sets)
        else:
            exact[host] = _binding_route(host, set_name, sets)
    for parent, cert in cert_wild.items():
        wildcard[parent] = _server_route("*." + parent, cert, sets, bindings)
        # An exact binding under this wildcard is served by the certificate that
        # covers it (the binding's set still applies when the deployment names none).
        for host in list(exact):
            if exact[host].server is None and host.partition(".")[2] == parent:
                exact[host] = _server_route(host, cert, sets, bindings)
    for host, cert in cert_exact.items():
        exact[host] = _server_route(host, cert, sets, bindings)
    default: Route | None = None
    chosen = server_certs.get(default_cert) if default_cert is not None else None
    if chosen is not None:
        default = _server_route(DEFAULT_HOST, chosen, sets, bindings)
    elif DEFAULT_HOST in bindings:
        default = _binding_route(DEFAULT_HOST, bindings[DEFAULT_HOST], sets)
    return RouteTable(exact, wildcard, default)


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """An immutable picture of the trust configuration that new handshakes use.

    ``bindings`` maps a lower-case hostname (or ``*.example.com``, or ``*`` for the
    default binding) to a set name; a bound set without an active version is
    absent from ``sets``.
    """

    generation: int
    sets: Mapping[str, ActiveSet]
    bindings: Mapping[str, str]
    #: Deployed server certificates by name (their active deployment).
    server_certs: Mapping[str, DeployedCert] = field(default_factory=dict)
    #: The server certificate that serves unmatched names, if one is configured.
    default_cert: str | None = None
    #: Precomputed by the store (:func:`build_routes`); built per call when absent.
    routes: RouteTable | None = None

    def route(self, sni: str | None) -> Route | None:
        """Return the route a handshake with ``sni`` takes, or ``None`` (refuse it)."""
        table = self.routes
        if table is None:
            table = build_routes(self.sets, self.bindings, self.server_certs, self.default_cert)
        return table.lookup(sni)

    def explain_unrouted(self, sni: str | None) -> str:
        """Say why :meth:`route` returned ``None`` for ``sni`` (for events)."""
        if not self.server_certs:
            return self.explain_unbound(sni)
        if not sni:
            return (
                "the device sent no SNI and there is no default server certificate or "
                "default binding; deploy one with 'edgesim cert deploy NAME --default'"
            )
        return (
            f"hostname {sni.lower()!r} matches no server certificate's SANs and no binding, "
            "and there is no default server certificate or default binding; deploy a "
            "certificate covering it ('edgesim cert deploy NAME') or one with --default"
        )

    def binding_for(self, sni: str | None) -> tuple[str, str] | None:
        """Return ``(binding host, set name)`` covering ``sni``, or ``None``.

        The exact hostname wins, then a wildcard for its parent domain (one label
        deep, as in TLS), then the default binding ``*``.
        """
        if sni:
            host = sni.lower().rstrip(".")
            if host in self.bindings:
                return host, self.bindings[host]
            _, dot, parent = host.partition(".")
            if dot and parent:
                wildcard = "*." + parent
                if wildcard in self.bindings:
                    return wildcard, self.bindings[wildcard]
        if DEFAULT_HOST in self.bindings:
            return DEFAULT_HOST, self.bindings[DEFAULT_HOST]
        return None

    def resolve(self, sni: str | None) -> ActiveSet | None:
        """Return the active set that verifies devices connecting with ``sni``, or ``None``."""
        found = self.binding_for(sni)
        if found is None:
            return None
        return self.sets.get(found[1])

    def explain_unbound(self, sni: str | None) -> str:
        """Say why :meth:`resolve` returned ``None`` for ``sni`` (for events and alerts)."""
        found = self.binding_for(sni)
        if found is not None:
            host, name = found
            via = "the default binding" if host == DEFAULT_HOST else f"binding {host!r}"
            return (
                f"certificate set {name!r} (via {via}) has no active version; "
                f"activate one with 'edgesim trust activate {name} VERSION'"
            )
        if not sni:
            return (
                "the device sent no SNI and there is no default binding; "
                "bind a set with 'edgesim trust bind NAME --default'"
            )
        return (
            f"hostname {sni.lower()!r} is not bound to a certificate set and there is no "
            f"default binding; bind one with 'edgesim trust bind NAME --host {sni.lower()}'"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionInfo:
    """One uploaded version of a set (immutable once stored)."""

    set_name: str
    version: int
    created_at: str
    sha256: str
    certificate_count: int
    subjects: tuple[str, ...]
    activated_at: str | None
    active: bool
    allow_sha1: bool = False
    warnings: tuple[Finding, ...] = ()
    #: ``staged`` (never activated), ``active`` or ``inactive``; the service adds
    #: the propagation state of the active version.
    state: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the version as a JSON-safe dict."""
        return {
            "set": self.set_name,
            "version": self.version,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "certificate_count": self.certificate_count,
            "subjects": list(self.subjects),
            "activated_at": self.activated_at,
            "active": self.active,
            "allow_sha1": self.allow_sha1,
            "state": self.state,
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CrlInfo:
    """A CRL attached to a set."""

    set_name: str
    issuer: str
    sha256: str
    this_update: str
    next_update: str | None
    revoked_count: int
    added_at: str

    def to_dict(self) -> dict[str, Any]:
        """Return the CRL's description as a JSON-safe dict."""
        return {
            "set": self.set_name,
            "issuer": self.issuer,
            "sha256": self.sha256,
            "this_update": self.this_update,
            "next_update": self.next_update,
            "revoked_count": self.revoked_count,
            "added_at": self.added_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SetInfo:
    """A certificate set: its options, versions, bindings and CRLs."""

    name: str
    created_at: str
    active_version: int | None
    latest_version: int
    hosts: tuple[str, ...]
    crls: tuple[CrlInfo, ...] = field(default=())
    #: See :attr:`ActiveSet.disconnect_on_revoke`.
    disconnect_on_revoke: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the set as a JSON-safe dict."""
        return {
            "name": self.name,
            "created_at": self.created_at,
            "active_version": self.active_version,
            "latest_version": self.latest_version,
            "hosts": list(self.hosts),
            "crls": [c.to_dict() for c in self.crls],
            "disconnect_on_revoke": self.disconnect_on_revoke,
        }
