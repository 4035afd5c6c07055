"""Server certificates: validation of an upload, and private keys encrypted at rest.

Pure functions over bytes plus :class:`KeyVault`, the one place a server
certificate's private key is encrypted or decrypted. No storage here: the store
(:mod:`edge.trust.sqlite`) calls these inside its transactions.

What an upload must be (every problem is a :class:`~edge.trust.model.Finding`
inside a :class:`~edge.trust.errors.RefusedError`, nothing is stored):

- the certificate file: PEM, the server (leaf) certificate first, then its
  chain; the whole file is checked by :func:`certs.lint.lint_chain` with the
  ``chain`` profile, so the chain after the leaf gets the same findings as a
  certificate set (order, issuer DN, signature, validity, weak hashes...). The
  linter's device-only check (``no-client-auth``) is replaced by its server
  counterpart: an extendedKeyUsage without serverAuth is ``no-server-auth``;
- the key file: PEM or DER, possibly encrypted (the passphrase comes from the
  caller, as ``edgesim pki`` reads it); it must be the leaf's key
  (``key-mismatch`` otherwise);
- the leaf must name at least one DNS subjectAltName: those are the hostnames
  the certificate serves (``no-hostnames`` otherwise).

Keys at rest: :class:`KeyVault` encrypts each key with AES-256-GCM under a
256-bit key kept in a file of mode 0600 beside the store (``<store>.keys``, made
on first use like the admin token), with the certificate's name and version as
associated data, so a ciphertext copied onto another row does not decrypt.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.bundle import describe_format, detect_format, load_pem_certificates
from certs.errors import CertsError
from certs.keys import load_private_key
from certs.lint import extension_value, lint_chain
from edge.trust.errors import RefusedError, StoreError
from edge.trust.model import CLIENT_AUTH_CHOICES, Finding, ServerSettings, normalize_host

__all__ = [
    "DeploymentInfo",
    "KeyVault",
    "ServerCertInfo",
    "ServerCertVersion",
    "ValidatedServerCert",
    "days_left",
    "merge_settings",
    "validate_cert_name",
    "validate_server_cert",
    "validate_settings",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MIN_TLS = ("1.2", "1.3")
_RULES = ("cn", "san-dns", "san-uri", "san-email", "sha256", "subject")


def days_left(not_after: str, now: datetime) -> float:
    """Days from ``now`` to ``not_after`` (ISO 8601, ``Z``); negative when expired."""
    end = datetime.fromisoformat(not_after.replace("Z", "+00:00"))
    return (end - now.astimezone(UTC)).total_seconds() / 86400


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCertVersion:
    """One uploaded version of a server certificate (immutable; the key is never here)."""

    name: str
    version: int
    created_at: str
    sha256: str
    hostnames: tuple[str, ...]
    subject: str
    issuer: str
    not_after: str
    key_type: str
    warnings: tuple[Finding, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the version as a JSON-safe dict."""
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "hostnames": list(self.hostnames),
            "subject": self.subject,
            "issuer": self.issuer,
            "not_after": self.not_after,
            "key_type": self.key_type,
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentInfo:
    """One deployment: which version of a server certificate, with which settings."""

    id: int
    name: str
    version: int
    settings: ServerSettings
    created_at: str
    #: ``pending``, ``propagating`` or ``active`` (filled in by the trust service).
    state: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the deployment as a JSON-safe dict."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "settings": self.settings.to_dict(),
            "created_at": self.created_at,
            "state": self.state,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCertInfo:
    """A server certificate: its versions and its active deployment."""

    name: str
    created_at: str
    versions: tuple[ServerCertVersion, ...]
    deployment: DeploymentInfo | None
    previous_deployment: int | None
    default: bool

    @property
    def deployed_version(self) -> ServerCertVersion | None:
        """The version the active deployment serves, if deployed."""
        if self.deployment is None:
            return None
        for v in self.versions:
            if v.version == self.deployment.version:
                return v
        return None

    def to_dict(self, now: datetime | None = None, warn_days: float = 30.0) -> dict[str, Any]:
        """Return the certificate as a JSON-safe dict; with ``now``, its expiry facts too."""
        current = self.deployed_version or (self.versions[-1] if self.versions else None)
        out: dict[str, Any] = {
            "name": self.name,
            "created_at": self.created_at,
            "hostnames": list(current.hostnames) if current else [],
            "not_after": current.not_after if current else None,
            "latest_version": self.versions[-1].version if self.versions else 0,
            "deployment": self.deployment.to_dict() if self.deployment else None,
            "previous_deployment": self.previous_deployment,
            "default": self.default,
            "versions": [v.to_dict() for v in self.versions],
        }
        if now is not None and current is not None:
            left = days_left(current.not_after, now)
            out["days_left"] = round(left, 1)
            out["expiring"] = left <= warn_days
        return out


def validate_cert_name(name: str) -> None:
    """Refuse a server certificate name that is not 1-64 letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.fullmatch(name):
        raise RefusedError(
            f"invalid server certificate name {name!r}",
            [
                Finding(
                    severity="error",
                    code="bad-cert-name",
                    message=f"server certificate name {name!r} must be 1-64 characters: "
                    "letters, digits, '.', '_' or '-', starting with a letter or digit",
                )
            ],
        )


def merge_settings(current: ServerSettings, changes: Mapping[str, Any]) -> ServerSettings:
    """Return ``current`` with ``changes`` (keys of ``ServerSettings.to_dict``) applied.

    Refuses unknown keys and values of the wrong type, naming the setting.
    """
    merged = current.to_dict()
    kinds: dict[str, tuple[type, ...]] = {
        "set": (str, type(None)),
        "client_auth": (str,),
        "min_tls": (str,),
        "send_ca_names": (bool,),
        "identity_rule": (str, type(None)),
    }
    problems: list[Finding] = []
    for key, value in changes.items():
        if key not in kinds:
            problems.append(
                Finding(
                    severity="error",
                    code="bad-setting",
                    message=f"unknown deployment setting {key!r} (known: {', '.join(kinds)})",
                )
            )
        elif not isinstance(value, kinds[key]):
            problems.append(
                Finding(
                    severity="error",
                    code="bad-setting",
                    message=f"deployment setting {key!r} has the wrong type "
                    f"({type(value).__name__})",
                )
            )
        else:
            merged[key] = value
    if problems:
        raise RefusedError("deployment settings refused", problems)
    return ServerSettings.from_dict(merged)


def validate_settings(settings: ServerSettings) -> None:
    """Refuse deployment settings with an unknown value, naming the setting."""
    problems: list[Finding] = []
    if settings.client_auth not in CLIENT_AUTH_CHOICES:
        problems.append(
            Finding(
                severity="error",
                code="bad-setting",
                message=f"client_auth {settings.client_auth!r} is not one of "
                f"{', '.join(CLIENT_AUTH_CHOICES)}",
            )
        )
    if settings.min_tls not in _MIN_TLS:
        problems.append(
            Finding(
                severity="error",
                code="bad-setting",
                message=f"min_tls {settings.min_tls!r} is not one of {', '.join(_MIN_TLS)}",
            )
        )
    if settings.identity_rule is not None and settings.identity_rule not in _RULES:
        problems.append(
            Finding(
                severity="error",
                code="bad-setting",
                message=f"identity_rule {settings.identity_rule!r} is not one of "
                f"{', '.join(_RULES)}",
            )
        )
    if problems:
        raise RefusedError("deployment settings refused", problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatedServerCert:
    """An accepted upload: the chain as PEM, the key as unencrypted PKCS#8 PEM, facts."""

    chain_pem: bytes
    key_pem: bytes
    hostnames: tuple[str, ...]
    subject: str
    issuer: str
    not_after: datetime
    sha256: str
    key_type: str
    warnings: tuple[Finding, ...]


def _error(code: str, message: str, hint: str | None = None, **where: object) -> RefusedError:
    position = where.get("position")
    subject = where.get("subject")
    return RefusedError(
        f"upload refused: {message}",
        [
            Finding(
                severity="error",
                code=code,
                message=message,
                hint=hint,
                position=int(position) if isinstance(position, int) else None,
                subject=str(subject) if subject is not None else None,
            )
        ],
    )


def _hostnames(leaf: x509.Certificate, source: str) -> tuple[str, ...]:
    subject = leaf.subject.rfc4514_string()
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sans.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    out: list[str] = []
    for raw in names:
        try:
            host = normalize_host(raw)
        except ValueError as exc:
            raise _error(
                "bad-hostname",
                f"{source}: certificate 1 ({subject}): DNS name {raw!r} is not usable: {exc}",
                position=1,
                subject=subject,
            ) from None
        if host != "*" and host not in out:
            out.append(host)
    if not out:
        raise _error(
            "no-hostnames",
            f"{source}: certificate 1 ({subject}) has no DNS subjectAltName, so it serves "
            "no hostname (TLS clients ignore the common name)",
            "issue it with subjectAltName = DNS:your.host.name",
            position=1,
            subject=subject,
        )
    return tuple(out)


def _key_type(key: object) -> str:
    from certs.keys import key_description

    return key_description(key)


def validate_server_cert(
    cert_data: bytes,
    key_data: bytes,
    *,
    passphrase: bytes | None,
    at: datetime,
    cert_source: str = "CERT",
    key_source: str = "KEY",
) -> ValidatedServerCert:
    """Check an uploaded server certificate (leaf first, then chain) and its key.

    Raises :class:`RefusedError` with one finding per problem, each naming the file
    and the certificate (position, subject) it is about.
    """
    try:
        certs = load_pem_certificates(cert_data, source=cert_source)
    except CertsError as exc:
        kind = detect_format(cert_data)
        headline = (
            # PEM certificates, one of which does not parse: say which, and why.
            f"upload refused: {exc}"
            if kind == "pem-certificate"
            else f"upload refused: {cert_source} is {describe_format(kind)}, not PEM certificates"
        )
        raise RefusedError(
            headline,
            [Finding(severity="error", code=f"format-{kind}", message=str(exc))],
        ) from exc
    if not certs:
        raise _error("format-empty", f"{cert_source}: no certificate")
    findings = [
        Finding(
            severity=str(f.severity),
            code=str(f.code),
            message=f"{cert_source}: {f.message}",
            position=f.position,
            subject=f.subject,
            hint=f.hint,
        )
        for f in lint_chain(certs, profile="chain", at=at)
        # The chain profile is written for device chains: a server leaf needs
        # serverAuth instead (checked below), and a server sends its chain without
        # the root, which devices already hold, so "missing-root" is not a problem.
        if f.code not in ("no-client-auth", "missing-root")
    ]
    leaf = certs[0]
    subject = leaf.subject.rfc4514_string()
    # None also when the extensions cannot be parsed: lint's bad-extensions names that.
    eku = extension_value(leaf, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in list(eku):
        findings.append(
            Finding(
                severity="error",
                code="no-server-auth",
                message=f"{cert_source}: certificate 1 ({subject}) has an extendedKeyUsage "
                "without serverAuth; TLS clients refuse it as a server certificate",
                position=1,
                subject=subject,
                hint="re-issue it with extendedKeyUsage = serverAuth",
            )
        )
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        noun = "problem" if len(errors) == 1 else "problems"
        raise RefusedError(f"upload refused: {len(errors)} {noun}", errors)
    hostnames = _hostnames(leaf, cert_source)
    try:
        key = load_private_key(key_data, passphrase=passphrase, source=key_source)
    except CertsError as exc:
        raise _error(
            "bad-key", str(exc), "give the key's passphrase with --passphrase-file"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    theirs = key.public_key().public_bytes(serialization.Encoding.DER, public)
    if mine != theirs:
        raise _error(
            "key-mismatch",
            f"{key_source} is not the private key of certificate 1 ({subject}) in "
            f"{cert_source}: their public keys differ",
            "upload the key that was generated with this certificate's request",
            position=1,
            subject=subject,
        )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ValidatedServerCert(
        chain_pem=chain_pem,
        key_pem=key_pem,
        hostnames=hostnames,
        subject=subject,
        issuer=leaf.issuer.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        key_type=_key_type(key),
        warnings=tuple(f for f in findings if f.severity != "error"),
    )


class KeyVault:
    """Encrypts server private keys at rest under a key file of mode 0600.

    The file is created on first :meth:`encrypt` (never by :meth:`decrypt`: a
    missing file when keys exist is an error, not a reason to make a new one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._key: bytes | None = None

    def _load(self, *, create: bool) -> bytes:
        if self._key is not None:
            return self._key
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise StoreError(
                    f"key file {self.path} is missing: the server certificates' private keys "
                    "in the store cannot be decrypted without it"
                ) from None
            raw = b""
        except OSError as exc:
            raise StoreError(f"cannot read key file {self.path}: {exc}") from exc
        if raw:
            try:
                key = bytes.fromhex(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                key = b""
            if len(key) != 32:
                raise StoreError(f"key file {self.path} does not hold a 256-bit hex key")
        else:
            key = secrets.token_bytes(32)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # O_EXCL: two processes creating it at once must not each write their own.
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as out:
                    out.write(key.hex() + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            except FileExistsError:
                return self._load(create=False)
            except OSError as exc:
                raise StoreError(f"cannot write key file {self.path}: {exc}") from exc
        self._key = key
        return key

    def encrypt(self, key_pem: bytes, *, name: str, version: int) -> bytes:
        """Return ``nonce || ciphertext`` of ``key_pem``, bound to ``name`` and ``version``."""
        nonce = secrets.token_bytes(12)
        aad = f"{name}/{version}".encode()
        return nonce + AESGCM(self._load(create=True)).encrypt(nonce, key_pem, aad)

    def decrypt(self, blob: bytes, *, name: str, version: int) -> bytes:
        """Inverse of :meth:`encrypt`; :class:`StoreError` when the key file does not fit."""
        aad = f"{name}/{version}".encode()
        try:
            return AESGCM(self._load(create=False)).decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            raise StoreError(
                f"the private key of server certificate {name!r} v{version} does not decrypt "
                f"with key file {self.path} (was the file replaced?)"
            ) from None
