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
    "DEFAULT_HOST",
    "ActiveSet",
    "CrlInfo",
    "Finding",
    "SetInfo",
    "TrustSnapshot",
    "VersionInfo",
    "normalize_host",
]

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

    def to_dict(self) -> dict[str, Any]:
        """Return the set as a JSON-safe dict."""
        return {
            "name": self.name,
            "created_at": self.created_at,
            "active_version": self.active_version,
            "latest_version": self.latest_version,
            "hosts": list(self.hosts),
            "crls": [c.to_dict() for c in self.crls],
        }
