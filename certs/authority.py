"""The issuing authority: roots, intermediates, server and device certificates.

Correct by default, like trustme: every certificate gets a random 159-bit
serial, subjectKeyIdentifier and authorityKeyIdentifier, a critical
basicConstraints, a critical keyUsage (CAs: keyCertSign + cRLSign; leaves:
digitalSignature, plus keyEncipherment for RSA keys) and a subjectAltName for
leaves. Times are passed in (``now=``, ``not_before=``, ``not_after=``) so tests
never depend on the clock; naive datetimes are read as UTC.

Vocabulary: a CA's *chain* is the certificates above it, excluding the
self-signed root; :attr:`CertificateAuthority.send_chain` (this CA then its
chain) is what a leaf it issued must send after itself in a TLS handshake.

Errors: :class:`~certs.errors.IssueError` for invalid parameters (bad id
template, SAN, validity, key type, a CA key that does not match its
certificate); :class:`~certs.errors.KeyLoadError` /
:class:`~certs.errors.BundleError` from loading files.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, ObjectIdentifier

from certs.bundle import pem_bundle, read_certificates
from certs.errors import CertsError, IssueError
from certs.keys import PrivateKey, generate_key, key_pem, read_private_key, write_secret

__all__ = [
    "DEVICE_URN",
    "EKU_NAMES",
    "CertificateAuthority",
    "IssuedCert",
    "SignatureHash",
    "create_root_from_config",
    "general_name",
    "random_serial",
    "signing_hash",
]

#: Extended key usage names (OpenSSL spelling) to OIDs.
EKU_NAMES: dict[str, ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
    "ipsecIKE": ObjectIdentifier("1.3.6.1.5.5.7.3.17"),
    "msCodeInd": ObjectIdentifier("1.3.6.1.4.1.311.2.1.21"),
    "msCodeCom": ObjectIdentifier("1.3.6.1.4.1.311.2.1.22"),
    "msCTLSign": ObjectIdentifier("1.3.6.1.4.1.311.10.3.1"),
    "msEFS": ObjectIdentifier("1.3.6.1.4.1.311.10.3.4"),
    "anyExtendedKeyUsage": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}

#: The default device SAN (a URI), formatted with ``id``.
DEVICE_URN = "urn:edgesim:device:{id}"

_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*")


def random_serial() -> int:
    """A random positive serial of at most 159 bits (fits 20 DER bytes, never zero)."""
    return (int.from_bytes(os.urandom(20), "big") >> 1) or 1


#: The digests ``cryptography`` signs certificates with (``None`` for Ed25519).
SignatureHash = (
    hashes.SHA224
    | hashes.SHA256
    | hashes.SHA384
    | hashes.SHA512
    | hashes.SHA3_224
    | hashes.SHA3_256
    | hashes.SHA3_384
    | hashes.SHA3_512
    | None
)


def signing_hash(key: PrivateKey) -> SignatureHash:
    """The digest to sign with ``key``: SHA-384 for P-384+, none for Ed25519, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def general_name(value: str) -> x509.GeneralName:
    """A SAN entry from ``value``: an IP address, ``URI``-looking text, an email, else DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        if "://" in value or value.startswith(("urn:", "spiffe:")):
            return x509.UniformResourceIdentifier(value)
        if "@" in value:
            return x509.RFC822Name(value)
        return x509.DNSName(value)
    except ValueError as exc:
        raise IssueError(f"invalid subjectAltName entry {value!r}: {exc}") from exc


def _utc(value: datetime) -> datetime:
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


def _validity(
    now: datetime | None,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
) -> tuple[datetime, datetime]:
    start = _utc(not_before if not_before is not None else (now or datetime.now(UTC)))
    if not_after is not None:
        end = _utc(not_after)
    else:
        if days <= 0:
            raise IssueError(f"validity must be a positive number of days, got {days}")
        end = start + timedelta(days=days)
    if end <= start:
        raise IssueError(
            f"not_after ({end.isoformat()}) must be after not_before ({start.isoformat()})"
        )
    return start, end


def _eku(usages: Iterable[str | ObjectIdentifier]) -> list[ObjectIdentifier]:
    oids: list[ObjectIdentifier] = []
    for usage in usages:
        if isinstance(usage, ObjectIdentifier):
            oids.append(usage)
        elif usage in EKU_NAMES:
            oids.append(EKU_NAMES[usage])
        elif re.fullmatch(r"\d+(\.\d+)+", usage):
            oids.append(ObjectIdentifier(usage))
        else:
            raise IssueError(f"unknown extended key usage {usage!r}; known: {', '.join(EKU_NAMES)}")
    return oids


def _leaf_key_usage(rsa_key: bool) -> x509.KeyUsage:
    # keyEncipherment only makes sense (and is only expected) for RSA key transport.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa_key,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate, its private key and the chain it must send after itself."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def cert_pem(self) -> bytes:
        """The certificate alone, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted when ``passphrase`` is given."""
        return key_pem(self.key, passphrase)

    @property
    def chain_pem(self) -> bytes:
        """The intermediates to send after the certificate (root excluded), PEM."""
        return pem_bundle(self.chain)

    @property
    def fullchain_pem(self) -> bytes:
        """The certificate followed by :attr:`chain_pem`."""
        return self.cert_pem + self.chain_pem

    @property
    def serial_hex(self) -> str:
        """The serial number as lowercase hex (no separators)."""
        return format(self.cert.serial_number, "x")


class CertificateAuthority:
    """A CA certificate with its private key, able to issue certificates.

    ``chain`` holds the certificates above ``cert`` (nearest first); a
    self-signed root in it is kept for reference but never sent.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key: PrivateKey,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise IssueError(
                f"CA private key does not match the CA certificate {cert.subject.rfc4514_string()}"
            )
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise IssueError(
                f"certificate {cert.subject.rfc4514_string()} is not a CA (basicConstraints CA:FALSE or absent)"
            )
        self.cert = cert
        self.key = key
        self.chain: tuple[x509.Certificate, ...] = tuple(chain)
        self._hash = signing_hash(key)
        # Precomputed once: every issued certificate reuses them (bulk issuance speed).
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            # The CA's own key (checked above to match the certificate's): typed as one
            # that can sign, unlike the certificate's key.
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._send_chain = tuple(c for c in (cert, *self.chain) if not _is_self_signed(c))
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._leaf_cache: dict[
            tuple[tuple[str | ObjectIdentifier, ...], bool],
            list[x509.Extension[x509.ExtensionType]],
        ] = {}

    # -- construction -------------------------------------------------------

    @classmethod
    def create_root(
        cls,
        common_name: str,
        *,
        key_type: str = "ec256",
        key: PrivateKey | None = None,
        subject: x509.Name | None = None,
        days: int = 3650,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Create a self-signed root CA (no path length limit)."""
        key = key if key is not None else generate_key(key_type)
        name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start, end = _validity(now, days, not_before, not_after)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
        )
        return cls(builder.sign(key, signing_hash(key)), key)

    @classmethod
    def load(
        cls,
        cert_path: Path | str,
        key_path: Path | str,
        passphrase: bytes | None = None,
    ) -> CertificateAuthority:
        """Load a CA from files: the first certificate is the CA, the rest its chain."""
        certs = read_certificates(cert_path)
        key = read_private_key(key_path, passphrase)
        try:
            return cls(certs[0], key, certs[1:])
        except IssueError as exc:
            raise IssueError(f"{cert_path} / {key_path}: {exc}") from exc

    # -- properties ---------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        """This CA's certificate, PEM."""
        return self._cert_pem

    @property
    def send_chain(self) -> tuple[x509.Certificate, ...]:
        """This CA then its chain, without the self-signed root: what leaves send."""
        return self._send_chain

    @property
    def chain_pem(self) -> bytes:
        """:attr:`send_chain` as PEM (empty for a root CA)."""
        return pem_bundle(self._send_chain)

    @property
    def root(self) -> x509.Certificate | None:
        """The self-signed root above (or equal to) this CA, when known."""
        for cert in (self.cert, *self.chain):
            if _is_self_signed(cert):
                return cert
        return None

    @property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AKI every certificate and CRL this CA signs carries."""
        return self._aki

    def sign_tbs(self, tbs: bytes) -> bytes:
        """Sign raw TBS bytes the way this CA signs certificates (for fast bulk issuance)."""
        key = self.key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(tbs)
        if self._hash is None:  # pragma: no cover - only Ed25519 signs without a digest
            raise IssueError("no signature digest for this CA key")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(tbs, ec.ECDSA(self._hash))
        return key.sign(tbs, padding.PKCS1v15(), self._hash)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a prepared CRL builder with this CA's key and digest."""
        return builder.sign(self.key, self._hash)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """This CA's private key as PKCS#8 PEM, encrypted when ``passphrase`` is given."""
        return key_pem(self.key, passphrase)

    # -- issuance -----------------------------------------------------------

    def _builder(
        self,
        subject: x509.Name,
        public_key: object,
        start: datetime,
        end: datetime,
        serial: int | None = None,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial if serial is not None else random_serial())
            .not_valid_before(start)
            .not_valid_after(end)
        )

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a prepared builder with this CA's key and digest."""
        return builder.sign(self.key, self._hash)

    def issue_intermediate(
        self,
        common_name: str,
        *,
        path_length: int | None = 0,
        key: PrivateKey | None = None,
        key_type: str = "ec256",
        subject: x509.Name | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        days: int = 1825,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Issue a subordinate CA (``path_length=None`` for no limit)."""
        if path_length is not None and path_length < 0:
            raise IssueError(f"path length must be >= 0, got {path_length}")
        key = key if key is not None else generate_key(key_type)
        name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start, end = _validity(now, days, not_before, not_after)
        builder = (
            self._builder(name, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
        )
        return CertificateAuthority(self.sign(builder), key, (self.cert, *self.chain))

    def _leaf_extensions(
        self, eku: tuple[str | ObjectIdentifier, ...], rsa_key: bool
    ) -> list[x509.Extension[x509.ExtensionType]]:
        """The extensions every leaf with this EKU and key family shares (cached)."""
        cache_key = (eku, rsa_key)
        cached = self._leaf_cache.get(cache_key)
        if cached is None:
            cached = [
                x509.Extension(
                    ExtensionOID.BASIC_CONSTRAINTS,
                    True,
                    x509.BasicConstraints(ca=False, path_length=None),
                ),
                x509.Extension(ExtensionOID.KEY_USAGE, True, _leaf_key_usage(rsa_key)),
            ]
            eku_oids = _eku(eku)
            if eku_oids:
                cached.append(
                    x509.Extension(
                        ExtensionOID.EXTENDED_KEY_USAGE, False, x509.ExtendedKeyUsage(eku_oids)
                    )
                )
            cached.append(x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, self._aki))
            self._leaf_cache[cache_key] = cached
        return cached

    def issue_leaf(
        self,
        subject: x509.Name,
        sans: Sequence[x509.GeneralName],
        *,
        key: PrivateKey,
        eku: Iterable[str | ObjectIdentifier],
        start: datetime,
        end: datetime,
        serial: int | None = None,
    ) -> IssuedCert:
        """Issue an end-entity certificate with explicit subject, SANs, EKU and times."""
        public_key = key.public_key()
        extensions = [
            *self._leaf_extensions(tuple(eku), isinstance(public_key, rsa.RSAPublicKey)),
            x509.Extension(
                ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                False,
                x509.SubjectKeyIdentifier.from_public_key(public_key),
            ),
        ]
        if sans:
            extensions.append(
                x509.Extension(
                    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, x509.SubjectAlternativeName(sans)
                )
            )
        # Built from a ready extension list: add_extension() copies the builder each time.
        builder = (
            x509.CertificateBuilder(extensions=extensions)
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial if serial is not None else random_serial())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        return IssuedCert(self.sign(builder), key, self._send_chain)

    def issue_server(
        self,
        hosts: Sequence[str],
        *,
        common_name: str | None = None,
        key_type: str = "ec256",
        key: PrivateKey | None = None,
        eku: Iterable[str | ObjectIdentifier] = ("serverAuth",),
        days: int = 366,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
    ) -> IssuedCert:
        """Issue a TLS server certificate for ``hosts`` (DNS names and IP addresses)."""
        if not hosts and not common_name:
            raise IssueError("a server certificate needs at least one host or a common name")
        sans = [general_name(h) for h in hosts]
        cn = common_name or hosts[0]
        start, end = _validity(now, days, not_before, not_after)
        return self.issue_leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
            sans,
            key=key if key is not None else generate_key(key_type),
            eku=eku,
            start=start,
            end=end,
        )

    def issue_device(
        self,
        device_id: str,
        *,
        key_type: str = "ec256",
        key: PrivateKey | None = None,
        san_uri: str | None = None,
        san_dns: str | None = None,
        eku: Iterable[str | ObjectIdentifier] = ("clientAuth",),
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
        default_san: bool = True,
    ) -> IssuedCert:
        """Issue a device (TLS client) certificate with CN = ``device_id``.

        Without ``san_uri``/``san_dns`` the SAN is ``URI:urn:edgesim:device:<id>``
        (:data:`DEVICE_URN`), because RFC 5280 verifiers such as
        ``cryptography``'s client verifier require a SAN on every leaf;
        ``default_san=False`` leaves it out. ``eku=("serverAuth",)`` makes a
        deliberately wrong certificate for fault injection; ``eku=()`` omits
        the extension.
        """
        if not device_id:
            raise IssueError("device id must not be empty")
        sans = (
            _device_sans(device_id, san_uri, san_dns) if default_san or san_uri or san_dns else []
        )
        start, end = _validity(now, days, not_before, not_after)
        return self.issue_leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]),
            sans,
            key=key if key is not None else generate_key(key_type),
            eku=eku,
            start=start,
            end=end,
        )

    def issue_devices_bulk(
        self,
        out_dir: Path | str,
        *,
        count: int,
        id_template: str = "dev-{i:05d}",
        start: int = 0,
        jobs: int = 1,
        key_type: str = "ec256",
        san_uri: str | None = None,
        san_dns: str | None = None,
        eku: Sequence[str] = ("clientAuth",),
        days: int = 365,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
        chain_name: str = "chain.pem",
    ) -> Path:
        """Issue ``count`` device certificates into ``out_dir``; return the manifest path.

        Files: ``<id>.pem`` (the certificate), ``<id>.key`` (PKCS#8, mode 0600),
        ``chain.pem`` (the intermediates each device must send: this CA and its
        chain, root excluded; empty when this CA is the root) and
        ``manifest.jsonl``, one JSON object per device in id order:
        ``{"id", "cert", "key", "chain", "serial", "not_after"}`` with paths
        relative to the manifest, ``serial`` as lowercase hex and ``not_after``
        in ISO 8601. Templates (``id_template``, ``san_uri``, ``san_dns``) are
        :meth:`str.format` strings with ``{i}`` (the index) and, for the SANs,
        ``{id}``. ``jobs > 1`` spreads chunks over that many processes.
        """
        if count < 0:
            raise IssueError(f"count must be >= 0, got {count}")
        if jobs < 1:
            raise IssueError(f"jobs must be >= 1, got {jobs}")
        _validate_templates(id_template, start, count, san_uri, san_dns)
        _eku(eku)
        valid_from, valid_to = _validity(now, days, not_before, not_after)
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / chain_name).write_bytes(self.chain_pem)
        except OSError as exc:
            raise IssueError(f"{out}: cannot write: {exc.strerror or exc}") from exc
        plan = _BulkPlan(
            out=str(out),
            id_template=id_template,
            key_type=key_type,
            san_uri=san_uri,
            san_dns=san_dns,
            eku=tuple(eku),
            start=valid_from,
            end=valid_to,
            chain_name=chain_name,
        )
        indices = range(start, start + count)
        if jobs == 1 or count < 64:
            lines = _issue_chunk(self, plan, indices)
        else:
            lines = self._bulk_parallel(plan, indices, jobs)
        manifest = out / "manifest.jsonl"
        try:
            manifest.write_text("".join(lines), encoding="utf-8")
        except OSError as exc:
            raise IssueError(f"{manifest}: cannot write: {exc.strerror or exc}") from exc
        return manifest

    def _bulk_parallel(self, plan: _BulkPlan, indices: range, jobs: int) -> list[str]:
        # A few chunks per worker balances load without paying per-item IPC.
        chunk = max(32, -(-len(indices) // (jobs * 4)))
        chunks = [indices[i : i + chunk] for i in range(0, len(indices), chunk)]
        ca_blob = (
            self.cert_pem,
            self.key_pem(),
            pem_bundle(self.chain),
        )
        ctx: BaseContext
        methods = _start_methods()
        if "fork" in methods and threading.active_count() == 1:
            # A single-threaded parent forks safely, and workers start with the CA's
            # modules already imported (no interpreter start-up per pool).
            ctx = get_context("fork")
        elif "forkserver" in methods:
            # With threads around, fork could copy a held lock: fork from a clean server
            # that has this module preloaded instead.
            server = get_context("forkserver")
            server.set_forkserver_preload(["certs.authority"])
            ctx = server
        else:
            ctx = get_context("spawn")
        lines: list[str] = []
        try:
            with ProcessPoolExecutor(
                max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(ca_blob,)
            ) as pool:
                for part in pool.map(_worker_chunk, [plan] * len(chunks), chunks):
                    lines.extend(part)
        except BrokenProcessPool as exc:
            raise IssueError(
                f"bulk issuance worker process died ({exc}); retry with jobs=1 to see why"
            ) from exc
        return lines


def create_root_from_config(
    config_path: Path | str,
    *,
    key: PrivateKey,
    days: int = 30,
    now: datetime | None = None,
    digest: str | None = None,
) -> x509.Certificate:
    """Mirror ``openssl req -x509 -config FILE -new -key KEY -DIGEST -days N``.

    See :func:`certs.opensslconf.create_root_from_config` for what is matched.
    """
    # Imported here: the config module uses this module's EKU names and serials.
    from certs import opensslconf

    return opensslconf.create_root_from_config(
        config_path, key=key, days=days, now=now, digest=digest
    )


@dataclass(frozen=True)
class _BulkPlan:
    out: str
    id_template: str
    key_type: str
    san_uri: str | None
    san_dns: str | None
    eku: tuple[str, ...]
    start: datetime
    end: datetime
    chain_name: str


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _render(template: str, what: str, **values: object) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise IssueError(
            f"invalid {what} template {template!r}: {exc!r} "
            "(use {i} for the index, e.g. dev-{i:05d}; SAN templates may also use {id})"
        ) from exc


def _validate_templates(
    id_template: str, start: int, count: int, san_uri: str | None, san_dns: str | None
) -> None:
    first = _render(id_template, "device id", i=start)
    if not _ID_RE.fullmatch(first):
        raise IssueError(
            f"device id {first!r} from template {id_template!r} is not a safe file name "
            "(letters, digits, '.', '_', '-', '@'; not starting with '.')"
        )
    if count > 1 and _render(id_template, "device id", i=start + 1) == first:
        raise IssueError(f"device id template {id_template!r} gives every device the same id")
    if san_uri:
        _render(san_uri, "SAN URI", i=start, id=first)
    if san_dns:
        _render(san_dns, "SAN DNS", i=start, id=first)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(content)) + content


def _der_children(der: bytes) -> list[bytes]:
    """The TLVs inside the outer TLV of ``der`` (a minimal DER reader)."""
    pos = 1
    first = der[pos]
    pos += 1 + (first & 0x7F if first & 0x80 else 0)
    children = []
    while pos < len(der):
        start = pos
        pos += 1
        first = der[pos]
        pos += 1
        if first & 0x80:
            width = first & 0x7F
            length = int.from_bytes(der[pos : pos + width], "big")
            pos += width
        else:
            length = first
        pos += length
        children.append(der[start:pos])
    return children


def _header_len(tlv: bytes) -> int:
    """Length of the tag and length octets at the start of ``tlv``."""
    return 2 + (tlv[1] & 0x7F if tlv[1] & 0x80 else 0)


def _san_der(sans: Sequence[x509.GeneralName]) -> bytes:
    """DER of a SubjectAlternativeName; URI and DNS entries encoded directly."""
    body = b""
    for name in sans:
        if isinstance(name, x509.UniformResourceIdentifier):
            body += _tlv(0x86, name.value.encode("ascii"))
        elif isinstance(name, x509.DNSName):
            body += _tlv(0x82, name.value.encode("ascii"))
        else:
            return x509.SubjectAlternativeName(sans).public_bytes()
    return _tlv(0x30, body)


_OID_CN = bytes.fromhex("0603550403")
_SKI_OID = bytes.fromhex("0603551d0e")
_SAN_OID = bytes.fromhex("0603551d11")


class _DeviceTemplate:
    """Fast bulk issuance: a device certificate's TBS assembled from precomputed DER.

    ``cryptography``'s builder re-encodes the issuer, validity and shared
    extensions for every certificate; here they are taken once from a sample
    certificate the builder made (so the bytes are the builder's own), and
    only serial, subject, public key, SKI and SAN are encoded per device. Tests
    check the result is byte-identical to :meth:`CertificateAuthority.issue_leaf`.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        eku: tuple[str, ...],
        start: datetime,
        end: datetime,
        key_type: str = "ec256",
    ) -> None:
        # Same key family as the devices: keyUsage differs for RSA (keyEncipherment).
        sample_key = generate_key(key_type)
        sample = ca.issue_leaf(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sample")]),
            [],
            key=sample_key,
            eku=eku,
            start=start,
            end=end,
        ).cert
        parts = _der_children(sample.tbs_certificate_bytes)
        # TBSCertificate: version, serial, signature, issuer, validity, subject, spki, [3] exts
        self.version = parts[0]
        self.middle = b"".join(parts[2:5])
        ext_seq = _der_children(parts[7])[0]
        # The shared extensions come first in issue_leaf; SKI (and SAN) are per device.
        self.shared_exts = b"".join(
            e for e in _der_children(ext_seq) if not e[2:].startswith((_SKI_OID, _SAN_OID))
        )
        self.sig_alg = _der_children(sample.public_bytes(serialization.Encoding.DER))[1]
        self.ca = ca

    def certificate_der(
        self, device_id: str, key: PrivateKey, serial: int, sans: Sequence[x509.GeneralName]
    ) -> bytes:
        """The DER of the device certificate (signed by the CA)."""
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        cn = _tlv(0x0C, device_id.encode("utf-8"))
        subject = _tlv(0x30, _tlv(0x31, _tlv(0x30, _OID_CN + cn)))
        # RFC 5280 method 1 (what cryptography and OpenSSL use): SHA-1 of the key bits.
        bits = _der_children(spki)[1]
        ski = hashlib.sha1(bits[_header_len(bits) + 1 :]).digest()
        exts = self.shared_exts + _tlv(0x30, _SKI_OID + _tlv(0x04, _tlv(0x04, ski)))
        if sans:
            exts += _tlv(0x30, _SAN_OID + _tlv(0x04, _san_der(sans)))
        serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        tbs = _tlv(
            0x30,
            self.version
            + _tlv(0x02, serial_bytes)
            + self.middle
            + subject
            + spki
            + _tlv(0xA3, _tlv(0x30, exts)),
        )
        signature = self.ca.sign_tbs(tbs)
        return _tlv(0x30, tbs + self.sig_alg + _tlv(0x03, b"\x00" + signature))


def _pem(der: bytes, label: bytes = b"CERTIFICATE") -> bytes:
    b64 = base64.b64encode(der)
    body = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN " + label + b"-----\n" + body + b"\n-----END " + label + b"-----\n"


def _device_sans(
    device_id: str, san_uri: str | None, san_dns: str | None
) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    try:
        if san_uri:
            sans.append(x509.UniformResourceIdentifier(san_uri))
        if san_dns:
            sans.append(x509.DNSName(san_dns))
        if not sans:
            sans.append(x509.UniformResourceIdentifier(DEVICE_URN.format(id=device_id)))
    except ValueError as exc:
        raise IssueError(f"device {device_id}: invalid SAN: {exc}") from exc
    return sans


def _issue_chunk(ca: CertificateAuthority, plan: _BulkPlan, indices: Iterable[int]) -> list[str]:
    out = plan.out
    chain_rel = plan.chain_name
    not_after = plan.end.isoformat().replace("+00:00", "Z")
    template = _DeviceTemplate(ca, plan.eku, plan.start, plan.end, plan.key_type)
    lines: list[str] = []
    for i in indices:
        device_id = _render(plan.id_template, "device id", i=i)
        if not _ID_RE.fullmatch(device_id):
            raise IssueError(f"device id {device_id!r} (index {i}) is not a safe file name")
        san_uri = _render(plan.san_uri, "SAN URI", i=i, id=device_id) if plan.san_uri else None
        san_dns = _render(plan.san_dns, "SAN DNS", i=i, id=device_id) if plan.san_dns else None
        key = generate_key(plan.key_type)
        serial = random_serial()
        der = template.certificate_der(
            device_id, key, serial, _device_sans(device_id, san_uri, san_dns)
        )
        cert_name = device_id + ".pem"
        key_name = device_id + ".key"
        write_secret(os.path.join(out, key_name), key_pem(key))
        with open(os.path.join(out, cert_name), "wb") as fh:
            fh.write(_pem(der))
        lines.append(
            json.dumps(
                {
                    "id": device_id,
                    "cert": cert_name,
                    "key": key_name,
                    "chain": chain_rel,
                    "serial": format(serial, "x"),
                    "not_after": not_after,
                }
            )
            + "\n"
        )
    return lines


_WORKER_CA: CertificateAuthority | None = None


def _worker_init(blob: tuple[bytes, bytes, bytes]) -> None:
    """Process-pool initializer: rebuild the CA once per worker."""
    global _WORKER_CA
    from certs.bundle import load_pem_certificates
    from certs.keys import load_private_key

    cert_pem, key_bytes, chain_pem = blob
    chain = load_pem_certificates(chain_pem, source="<chain>") if chain_pem else []
    _WORKER_CA = CertificateAuthority(
        load_pem_certificates(cert_pem, source="<ca>")[0],
        load_private_key(key_bytes, source="<ca key>"),
        chain,
    )


def _worker_chunk(plan: _BulkPlan, indices: range) -> list[str]:
    if _WORKER_CA is None:  # pragma: no cover - the initializer always runs first
        raise CertsError("bulk issuance worker started without its CA")
    return _issue_chunk(_WORKER_CA, plan, indices)
