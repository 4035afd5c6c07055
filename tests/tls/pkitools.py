"""A small PKI for TLS tests: a root, an intermediate, the edge's server certificate, devices.

OpenSSL checks validity against the system clock during a real handshake, so the
certificates here are built around ``now`` passed in by the caller (expired ones
end a day before it); nothing else depends on the clock.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certs.authority import CertificateAuthority, IssuedCert


@dataclass
class DeviceFiles:
    """A device certificate written to disk, plus the objects."""

    issued: IssuedCert
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        """The leaf certificate, DER."""
        return self.issued.cert.public_bytes(serialization.Encoding.DER)


@dataclass
class FakeSet:
    """A certificate set as the trust store would hand it to the edge."""

    name: str
    version: int
    ca_pem: bytes
    crl_pem: bytes = b""
    ca_certs: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    allow_sha1: bool = False


@dataclass
class Pki:
    """Everything a TLS test needs, written under ``root_dir``."""

    root_dir: Path
    now: datetime
    root: CertificateAuthority = field(init=False)
    inter: CertificateAuthority = field(init=False)
    other: CertificateAuthority = field(init=False)
    server_cert: Path = field(init=False)
    server_key: Path = field(init=False)
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        d = self.root_dir
        d.mkdir(parents=True, exist_ok=True)
        before = self.now - timedelta(days=1)
        self.root = CertificateAuthority.create_root("Test Root", not_before=before, days=3650)
        self.inter = self.root.issue_intermediate("Test Devices CA", not_before=before)
        self.other = CertificateAuthority.create_root("Unknown Root", not_before=before)
        server = self.root.issue_server(["localhost", "127.0.0.1"], not_before=before)
        self.server_cert = d / "server.pem"
        self.server_key = d / "server.key"
        self.server_cert.write_bytes(server.fullchain_pem)
        self.server_key.write_bytes(server.key_pem())
        self.ca_file = d / "root-ca.pem"
        self.ca_file.write_bytes(self.root.cert_pem)

    def device(
        self,
        name: str,
        *,
        ca: CertificateAuthority | None = None,
        expired: bool = False,
        eku: tuple[str, ...] = ("clientAuth",),
        san_uri: str | None = None,
        san_dns: str | None = None,
    ) -> DeviceFiles:
        """Issue a device certificate (by the intermediate unless ``ca``) and write it."""
        ca = ca or self.inter
        if expired:
            start, end = self.now - timedelta(days=30), self.now - timedelta(days=1)
        else:
            start, end = self.now - timedelta(days=1), self.now + timedelta(days=30)
        issued = ca.issue_device(
            name, not_before=start, not_after=end, eku=eku, san_uri=san_uri, san_dns=san_dns
        )
        cert = self.root_dir / f"{name}.pem"
        key = self.root_dir / f"{name}.key"
        cert.write_bytes(issued.fullchain_pem)
        key.write_bytes(issued.key_pem())
        return DeviceFiles(issued, cert, key)

    def crl(self, ca: CertificateAuthority, revoked: list[IssuedCert]) -> bytes:
        """Return a PEM CRL by ``ca`` revoking ``revoked``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(self.now - timedelta(hours=1))
            .next_update(self.now + timedelta(days=7))
        )
        for item in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(item.cert.serial_number)
                .revocation_date(self.now - timedelta(hours=1))
                .build()
            )
        crl = builder.sign(ca.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def chain_set(self, name: str = "default", version: int = 1, crl_pem: bytes = b"") -> FakeSet:
        """The set holding intermediate + root (what a correct upload contains)."""
        return FakeSet(
            name=name,
            version=version,
            ca_pem=self.inter.cert_pem + self.root.cert_pem,
            crl_pem=crl_pem,
            ca_certs=(self.inter.cert, self.root.cert),
        )

    def client_context(
        self,
        device: DeviceFiles | None,
        *,
        version: ssl.TLSVersion | None = None,
        alpn: list[str] | None = None,
    ) -> ssl.SSLContext:
        """A device-side context trusting the edge's root, presenting ``device``."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.ca_file))
        if device is not None:
            ctx.load_cert_chain(str(device.cert), str(device.key))
        if version is not None:
            ctx.minimum_version = version
            ctx.maximum_version = version
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx
