"""Fault injection: which devices of a fleet are made faulty, how, and what the edge must say.

A fault mix is written ``expired=1%,wrong-ca=1%,no-cert=0.5%,revoked=0.5%,wrong-eku=3``
(a percentage of the fleet, or an absolute count). :func:`select_faults` turns it into
an exact, seeded assignment: 1 % of 1000 devices is exactly 10 devices, and the same
seed picks the same devices on every machine, which is what lets ``--shard K/N``
runs agree on the fault plan without talking to each other.

Each kind lists the TLS alerts an edge may legitimately answer with
(:data:`EXPECTED`). They are what OpenSSL 3.0 sends as a server, which both
Mosquitto and the edge use (``ssl_x509err2alert`` in ``ssl/statem/statem_lib.c``):

==========  =====================================  ==========================================
kind        certificate the device presents        alert
==========  =====================================  ==========================================
expired     ``notAfter`` a day in the past         ``certificate_expired``
wrong-ca    issued by a throw-away root            ``unknown_ca``
no-cert     none                                   ``certificate_required`` (TLS 1.3),
                                                   ``handshake_failure`` (TLS 1.2)
revoked     valid, serial listed in the CRL        ``certificate_revoked`` (the edge needs the CRL)
wrong-eku   extendedKeyUsage serverAuth only       ``unsupported_certificate``
                                                   (``X509_V_ERR_INVALID_PURPOSE``)
==========  =====================================  ==========================================

:class:`FaultMaker` issues the defective certificates through :mod:`certs` and
writes the CRL that revokes the ``revoked`` ones.

Errors::

    FaultError          a fault mix is malformed (names the item), asks for more devices
                        than the fleet has, or the faulty material cannot be issued
                        (certs' own errors and OSError are translated to it)
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from certs.authority import CertificateAuthority, IssuedCert, signing_hash
from certs.errors import CertsError

#: The acceptable results per fault kind; ``"none"`` is a healthy device.
EXPECTED: Mapping[str, tuple[str, ...]] = {
    "none": ("connected",),
    "expired": ("certificate_expired",),
    "wrong-ca": ("unknown_ca",),
    "no-cert": ("certificate_required", "handshake_failure"),
    "revoked": ("certificate_revoked",),
    "wrong-eku": ("unsupported_certificate",),
}

#: Fault kinds in the order devices are assigned to them.
KINDS: tuple[str, ...] = ("expired", "wrong-ca", "no-cert", "revoked", "wrong-eku")

#: Fault kinds whose material needs the issuing CA's key.
NEEDS_CA: frozenset[str] = frozenset({"expired", "revoked", "wrong-eku"})


class FaultError(Exception):
    """A fault mix is malformed or its faulty material cannot be made."""


@dataclass(frozen=True, slots=True)
class FaultShare:
    """One item of a fault mix: a kind and either a fraction of the fleet or a count."""

    kind: str
    fraction: Fraction | None = None
    count: int | None = None

    def devices(self, fleet_size: int) -> int:
        """The exact number of devices this share takes from a fleet of ``fleet_size``."""
        if self.count is not None:
            return self.count
        assert self.fraction is not None
        # Round half up on exact arithmetic: 0.5 % of 1000 is 5, never 4.999...
        return int(self.fraction * fleet_size + Fraction(1, 2))

    def __str__(self) -> str:
        if self.count is not None:
            return f"{self.kind}={self.count}"
        assert self.fraction is not None
        return f"{self.kind}={float(self.fraction * 100):g}%"


# Faults whose certificate the devices' own CA issues (wrong-ca uses a rogue root).
_ISSUED_BY_THE_CA = frozenset({"expired", "revoked", "wrong-eku"})
_ITEM = re.compile(r"^\s*([a-z-]+)\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*(%?)\s*$")


def parse_faults(text: str) -> tuple[FaultShare, ...]:
    """Parse ``kind=P%`` / ``kind=N`` items separated by commas (empty text: no faults)."""
    shares: list[FaultShare] = []
    seen: set[str] = set()
    for i, item in enumerate(t for t in text.split(",") if t.strip()):
        m = _ITEM.match(item)
        if m is None:
            raise FaultError(
                f"faults item {i + 1} {item.strip()!r}: expected KIND=PERCENT% or KIND=COUNT"
            )
        kind, number, pct = m.groups()
        if kind not in KINDS:
            raise FaultError(
                f"faults item {i + 1} {item.strip()!r}: unknown kind {kind!r} "
                f"(known: {', '.join(KINDS)})"
            )
        if kind in seen:
            raise FaultError(f"faults item {i + 1}: {kind!r} is given twice")
        seen.add(kind)
        if pct:
            fraction = Fraction(number) / 100
            if fraction > 1:
                raise FaultError(f"faults item {i + 1} {item.strip()!r}: more than 100 %")
            shares.append(FaultShare(kind, fraction=fraction))
        else:
            if "." in number:
                raise FaultError(f"faults item {i + 1} {item.strip()!r}: a count is a whole number")
            shares.append(FaultShare(kind, count=int(number)))
    return tuple(shares)


def select_faults(shares: Sequence[FaultShare], fleet_size: int, seed: int) -> dict[int, str]:
    """Assign fault kinds to device indexes: exact counts, chosen by ``seed``.

    Returns ``{index: kind}`` for the faulty devices only.
    """
    counts = [(s.kind, s.devices(fleet_size)) for s in shares]
    total = sum(n for _, n in counts)
    if total > fleet_size:
        raise FaultError(
            f"faults ask for {total} faulty devices but the fleet has {fleet_size} "
            f"({', '.join(f'{k}={n}' for k, n in counts)})"
        )
    # One draw for the whole mix, then slices per kind: kinds never overlap and the
    # choice depends only on (seed, fleet size, mix), not on the process or shard.
    chosen = random.Random(seed).sample(range(fleet_size), total)
    plan: dict[int, str] = {}
    pos = 0
    for kind, n in counts:
        for index in chosen[pos : pos + n]:
            plan[index] = kind
        pos += n
    return plan


@dataclass(frozen=True, slots=True)
class Material:
    """The files a device authenticates with (``cert`` and ``key`` None: no certificate)."""

    cert: Path | None
    key: Path | None
    chain: Path | None


class FaultMaker:
    """Issues defective certificates for faulty devices and the CRL for revoked ones.

    ``ca_cert``/``ca_key`` are the PEM files of the CA that issues the healthy devices
    (the one the edge trusts); ``now`` is the issuing time (tests pass it in).
    """

    def __init__(
        self, *, ca_cert: Path | None, ca_key: Path | None, out_dir: Path, now: datetime
    ) -> None:
        self._ca_cert = ca_cert
        self._ca_key = ca_key
        self._out = out_dir
        self._now = now
        self._ca: CertificateAuthority | None = None
        self._rogue: CertificateAuthority | None = None
        self._revoked: list[int] = []

    @property
    def revoked_serials(self) -> tuple[int, ...]:
        """Serial numbers of the certificates issued for ``revoked`` devices so far."""
        return tuple(self._revoked)

    def _authority(self) -> CertificateAuthority:
        if self._ca is None:
            if self._ca_cert is None or self._ca_key is None:
                raise FaultError(
                    "faults expired, revoked and wrong-eku need the issuing CA: "
                    "give --pki DIR or --ca-cert and --ca-key"
                )
            try:
                self._ca = CertificateAuthority.load(self._ca_cert, self._ca_key)
            except (CertsError, OSError, ValueError) as exc:
                raise FaultError(f"cannot load the issuing CA {self._ca_cert}: {exc}") from exc
        return self._ca

    def _rogue_root(self) -> CertificateAuthority:
        if self._rogue is None:
            # A root the edge has never seen: same look, different key.
            self._rogue = CertificateAuthority.create_root(
                "edgesim rogue root", now=self._now, key_type="ec256"
            )
        return self._rogue

    def _paths(self, kind: str, device_id: str) -> tuple[Path, Path, Path]:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", device_id)
        base = self._out / kind
        return base / f"{safe}.crt", base / f"{safe}.key", base / f"{safe}.chain.pem"

    def _reuse(self, kind: str, device_id: str) -> Material | None:
        """Material a previous run (``--prepare``) left in the work directory, if any.

        Reusing it keeps the serials the edge's CRL already lists, so a CRL loaded
        at the edge's start-up stays right for later runs.
        """
        cert, key, chain = self._paths(kind, device_id)
        if not (cert.is_file() and key.is_file()):
            return None
        if kind in _ISSUED_BY_THE_CA:
            try:
                found = x509.load_pem_x509_certificate(cert.read_bytes())
            except (OSError, ValueError) as exc:
                raise FaultError(f"{cert}: cannot reuse this {kind} certificate: {exc}") from exc
            if not self._issued_by_current_ca(found):
                # Left by a run against another PKI: the edge would refuse it as
                # unknown_ca instead of for the fault it stands for. Issue anew.
                return None
            if kind == "revoked":
                self._revoked.append(found.serial_number)
        return Material(cert, key, chain if chain.is_file() else None)

    def _issued_by_current_ca(self, cert: x509.Certificate) -> bool:
        issuer = self._authority().cert
        if cert.issuer != issuer.subject:
            return False
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def make(self, kind: str, device_id: str) -> Material:
        """The faulty material of ``kind`` for ``device_id``: reused, or issued and written."""
        if kind == "no-cert":
            return Material(None, None, None)
        reused = self._reuse(kind, device_id)
        if reused is not None:
            return reused
        try:
            if kind == "wrong-ca":
                issued = self._rogue_root().issue_device(device_id, now=self._now)
            elif kind == "expired":
                issued = self._authority().issue_device(
                    device_id,
                    not_before=self._now - timedelta(days=30),
                    not_after=self._now - timedelta(days=1),
                )
            elif kind == "wrong-eku":
                issued = self._authority().issue_device(
                    device_id, eku=("serverAuth",), now=self._now
                )
            elif kind == "revoked":
                issued = self._authority().issue_device(device_id, now=self._now)
                self._revoked.append(int(issued.cert.serial_number))
            else:
                raise FaultError(f"unknown fault kind {kind!r}")
        except FaultError:
            raise
        except (CertsError, ValueError) as exc:
            raise FaultError(f"cannot issue a {kind} certificate for {device_id}: {exc}") from exc
        return self._write(kind, device_id, issued)

    def _write(self, kind: str, device_id: str, issued: IssuedCert) -> Material:
        cert, key, chain_path = self._paths(kind, device_id)
        try:
            cert.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(issued.key_pem())
            key.chmod(0o600)
            chain: Path | None = None
            if issued.chain:
                chain = chain_path
                chain.write_bytes(issued.chain_pem)
            # The certificate last: its presence marks the material complete for reuse.
            cert.write_bytes(issued.cert_pem)
        except OSError as exc:
            raise FaultError(f"cannot write {kind} material under {cert.parent}: {exc}") from exc
        return Material(cert, key, chain)

    def write_crl(self, path: Path) -> Path:
        """Write the CRL (PEM) revoking every ``revoked`` device, signed by the issuing CA.

        The CRL is valid from a day before ``now`` for 30 days, so that an edge whose
        clock is a little behind still accepts it.
        """
        ca = self._authority()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(self._now - timedelta(days=1))
            .next_update(self._now + timedelta(days=30))
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        for serial in self._revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(self._now - timedelta(days=1))
                .build()
            )
        try:
            crl = builder.sign(ca.key, signing_hash(ca.key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(crl.public_bytes(Encoding.PEM))
        except (OSError, ValueError, TypeError) as exc:
            raise FaultError(f"cannot write the CRL {path}: {exc}") from exc
        return path
