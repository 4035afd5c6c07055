"""The suite's throw-away PKI: one root the device trusts, and a server chain per profile.

Everything is minted fresh for a run in a work directory (nothing is reused between
runs, so a clock-dependent profile is always relative to *now*):

- ``ca.pem``: the root the device must trust (``{ca}``); nothing else goes in it, so
  a chain missing its intermediate cannot be completed from the trust store;
- ``device.pem`` / ``device.key``: a client certificate for devices that send one
  (``{cert}``, ``{key}``), issued by the same root with clientAuth EKU;
- ``crl.pem``: CRLs of the intermediate and the root, the intermediate's listing the
  ``revoked`` profile's certificate (``{crl}``, for clients that take a CRL file);
- ``server-<profile>.pem`` / ``.key``: the chain and key the edge presents.

SHA-1 signatures and RSA-1024 keys are made with the ``openssl`` command, because
current ``cryptography`` refuses to make them (:class:`PkiError` says so when
``openssl`` is missing).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

from certs.authority import CertificateAuthority, IssuedCert, general_name, random_serial
from certs.bundle import pem_bundle
from certs.crl import build_crl
from certs.keys import generate_key, key_pem, write_secret
from testkit.suites.model import SuiteError

__all__ = ["HOSTS", "PkiError", "ServerMaterial", "SuitePki"]

#: Names the good server certificate is valid for: the device dials ``localhost``.
HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
_WRONG_HOST = "wrong-host.edgesim.invalid"
# A private-arc OID for the filler extension that makes the long chain long.
_FILLER_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")


class PkiError(SuiteError):
    """A profile's material could not be made (e.g. no ``openssl`` for SHA-1)."""


@dataclass(frozen=True)
class ServerMaterial:
    """What the edge presents for one profile."""

    profile: str
    chain_path: Path
    key_path: Path
    #: Size of the certificate chain in DER bytes (what the Certificate message carries).
    chain_der_bytes: int
    description: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class SuitePki:
    """Mints the suite's root, device identity and per-profile server chains in ``workdir``."""

    def __init__(self, workdir: Path, *, now: datetime | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.now = now or datetime.now(UTC)
        self.root = CertificateAuthority.create_root("edgesim suite root", now=self.now)
        self.intermediate = self.root.issue_intermediate("edgesim suite intermediate", now=self.now)
        self.ca_path = workdir / "ca.pem"
        self.ca_path.write_bytes(self.root.cert_pem)
        device = self.root.issue_device("suite-device", now=self.now)
        self.cert_path = workdir / "device.pem"
        self.key_path = workdir / "device.key"
        self.cert_path.write_bytes(device.fullchain_pem)
        write_secret(self.key_path, device.key_pem())
        self.crl_path = workdir / "crl.pem"
        self._revoked = self.intermediate.issue_server(HOSTS, now=self.now)
        crls = [
            build_crl(
                self.intermediate,
                [
                    (
                        self._revoked.cert.serial_number,
                        self.now - timedelta(hours=1),
                        "keyCompromise",
                    )
                ],
                crl_number=1,
                last_update=self.now - timedelta(minutes=5),
            ),
            build_crl(self.root, [], crl_number=1, last_update=self.now - timedelta(minutes=5)),
        ]
        self.crl_path.write_bytes(
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
        )
        self._made: dict[str, ServerMaterial] = {}

    def material(self, profile: str) -> ServerMaterial:
        """The chain and key for ``profile`` (made on first use)."""
        made = self._made.get(profile)
        if made is None:
            made = self._make(profile)
            self._made[profile] = made
        return made

    # -- profiles -------------------------------------------------------------------

    def _write(
        self,
        profile: str,
        leaf: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        key_pem_bytes: bytes,
        what: str,
    ) -> ServerMaterial:
        chain_path = self.workdir / f"server-{profile}.pem"
        key_path = self.workdir / f"server-{profile}.key"
        chain_path.write_bytes(pem_bundle((leaf, *chain)))
        write_secret(key_path, key_pem_bytes)
        size = sum(len(c.public_bytes(serialization.Encoding.DER)) for c in (leaf, *chain))
        return ServerMaterial(profile, chain_path, key_path, size, what)

    def _issued(
        self, profile: str, issued: IssuedCert, what: str, *, send_chain: bool = True
    ) -> ServerMaterial:
        chain = issued.chain if send_chain else ()
        return self._write(profile, issued.cert, chain, issued.key_pem(), what)

    def _make(self, profile: str) -> ServerMaterial:
        now = self.now
        inter = self.intermediate
        if profile == "good":
            return self._issued(
                profile, inter.issue_server(HOSTS, now=now), "EC P-256, valid, for localhost"
            )
        if profile in ("rsa2048", "rsa4096", "ec256", "ec384"):
            issued = inter.issue_server(HOSTS, key_type=profile, now=now)
            return self._issued(profile, issued, f"{profile} server key")
        if profile == "expired":
            issued = inter.issue_server(
                HOSTS, not_before=now - timedelta(days=60), not_after=now - timedelta(days=30)
            )
            return self._issued(profile, issued, "expired 30 days ago")
        if profile == "not_yet_valid":
            issued = inter.issue_server(
                HOSTS, not_before=now + timedelta(days=30), not_after=now + timedelta(days=60)
            )
            return self._issued(profile, issued, "valid from 30 days from now")
        if profile == "wrong_host":
            issued = inter.issue_server([_WRONG_HOST], now=now)
            return self._issued(profile, issued, f"SAN {_WRONG_HOST} only")
        if profile == "untrusted_root":
            other = CertificateAuthority.create_root("edgesim OTHER root (untrusted)", now=now)
            other_inter = other.issue_intermediate("edgesim OTHER intermediate", now=now)
            return self._issued(
                profile,
                other_inter.issue_server(HOSTS, now=now),
                "chain to a root the device does not trust",
            )
        if profile == "self_signed":
            return self._self_signed(profile)
        if profile == "missing_intermediate":
            return self._issued(
                profile,
                inter.issue_server(HOSTS, now=now),
                "leaf sent without its intermediate",
                send_chain=False,
            )
        if profile == "client_auth_eku":
            issued = inter.issue_server(HOSTS, eku=("clientAuth",), now=now)
            return self._issued(profile, issued, "EKU clientAuth only (no serverAuth)")
        if profile == "revoked":
            return self._issued(
                profile, self._revoked, "listed as revoked in the intermediate's CRL"
            )
        if profile == "chain4_large":
            return self._long_chain(profile)
        if profile == "sans1000":
            hosts = [
                *HOSTS,
                *(f"host-{i:04d}.sans.edgesim.invalid" for i in range(1000 - len(HOSTS))),
            ]
            return self._issued(profile, inter.issue_server(hosts, now=now), "1,000 SANs")
        if profile == "clock_recent":
            issued = inter.issue_server(
                HOSTS, not_before=now - timedelta(minutes=1), not_after=now + timedelta(days=30)
            )
            return self._issued(profile, issued, "valid from one minute ago")
        if profile == "clock_1970":
            issued = inter.issue_server(
                HOSTS,
                not_before=datetime(1970, 1, 1, tzinfo=UTC),
                not_after=datetime(2099, 12, 31, tzinfo=UTC),
            )
            return self._issued(profile, issued, "valid from 1970-01-01 to 2099")
        if profile in ("sha1", "rsa1024"):
            return self._openssl_leaf(profile)
        raise PkiError(f"unknown server certificate profile {profile!r}")

    def _self_signed(self, profile: str) -> ServerMaterial:
        key = generate_key("ec256")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(_name("localhost"))
            .public_key(key.public_key())
            .serial_number(random_serial())
            .not_valid_before(self.now - timedelta(minutes=5))
            .not_valid_after(self.now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([general_name(h) for h in HOSTS]), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        )
        cert = builder.sign(key, hashes.SHA256())
        return self._write(profile, cert, (), key_pem(key), "self-signed, for localhost")

    def _long_chain(self, profile: str) -> ServerMaterial:
        # Four intermediates below the trusted root, each carrying a 1.7 KiB filler
        # extension (non-critical, private OID) so the chain exceeds 8 KiB the way
        # real chains with long policies and big keys do.
        parent = self.root
        for depth in range(1, 5):
            ca = parent.issue_intermediate(
                f"edgesim suite long-chain CA {depth}", path_length=None, now=self.now
            )
            builder = (
                x509.CertificateBuilder()
                .subject_name(ca.cert.subject)
                .issuer_name(ca.cert.issuer)
                .public_key(ca.cert.public_key())
                .serial_number(ca.cert.serial_number)
                .not_valid_before(ca.cert.not_valid_before_utc)
                .not_valid_after(ca.cert.not_valid_after_utc)
            )
            for ext in ca.cert.extensions:
                builder = builder.add_extension(ext.value, ext.critical)
            builder = builder.add_extension(
                x509.UnrecognizedExtension(_FILLER_OID, b"\x04\x82\x06\xa0" + b"edgesim-" * 212),
                critical=False,
            )
            parent = CertificateAuthority(
                parent.sign(builder), ca.key, (parent.cert, *parent.chain)
            )
        issued = parent.issue_server(HOSTS, now=self.now)
        return self._issued(profile, issued, "4 intermediates, chain > 8 KiB")

    def _openssl_leaf(self, profile: str) -> ServerMaterial:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise PkiError(
                f"profile {profile!r} needs the openssl command (cryptography will not make "
                "SHA-1 or RSA-1024 certificates); install openssl"
            )
        d = self.workdir / f"openssl-{profile}"
        d.mkdir(exist_ok=True)
        ca_key = d / "issuer.key"
        ca_cert = d / "issuer.pem"
        write_secret(ca_key, self.intermediate.key_pem())
        ca_cert.write_bytes(self.intermediate.cert_pem)
        key = d / "server.key"
        csr = d / "server.csr"
        cert = d / "server.pem"
        ext = d / "ext.cnf"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
        )
        if profile == "rsa1024":
            newkey, digest, what = "rsa:1024", "-sha256", "RSA-1024 server key"
        else:
            newkey, digest, what = (
                "rsa:2048",
                "-sha1",
                "RSA-2048 key, signature sha1WithRSA/ecdsa-with-SHA1",
            )
        steps = [
            [openssl, "req", "-new", "-newkey", newkey, "-nodes", "-keyout", str(key),
             "-subj", "/CN=localhost", "-out", str(csr)],
            [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-set_serial", str(random_serial()), "-days", "30", digest, "-extfile", str(ext),
             "-out", str(cert)],
        ]  # fmt: skip
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise PkiError(
                    f"profile {profile!r}: {' '.join(argv[:2])} failed: {done.stderr.strip()}"
                )
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        if profile == "sha1":
            what = f"signed with {leaf.signature_algorithm_oid._name}"
        return self._write(profile, leaf, self.intermediate.send_chain, key.read_bytes(), what)
