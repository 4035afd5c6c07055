"""The dry run: would a device certificate be accepted by a certificate set?

Path validation is the PKI toolkit's (:func:`certs.verify.verify_path`, with
the set's CA certificates as roots and its CRLs); this module picks the version
and CRLs from the store and translates unreadable input into
:class:`~edge.trust.errors.RefusedError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography import x509

from certs.bundle import load_pem_certificates
from certs.errors import CertsError
from certs.verify import verify_path
from edge.trust.errors import RefusedError
from edge.trust.model import Finding
from edge.trust.store import TrustStore

__all__ = ["check_device", "check_in_store"]


def check_device(
    leaf_pem: bytes,
    *,
    cas: Sequence[x509.Certificate],
    chain_pem: bytes = b"",
    crls: Sequence[x509.CertificateRevocationList] = (),
    at: datetime | None = None,
) -> dict[str, Any]:
    """Would a device presenting ``leaf_pem`` (plus ``chain_pem``) be accepted?

    Verifies with the set's CAs as roots and its CRLs; returns the verifier's
    result as a dict (``ok``, ``code``, ``reason``, ``hint``, ``chain``...).
    Raises :class:`RefusedError` when the certificate files cannot be read.
    """
    try:
        certs = load_pem_certificates(leaf_pem, source="DEVICE_CERT")
        chain = load_pem_certificates(chain_pem, source="--chain") if chain_pem.strip() else []
    except CertsError as exc:
        raise RefusedError(
            str(exc), [Finding(severity="error", code="format", message=str(exc))]
        ) from exc
    if not certs:
        raise RefusedError(
            "DEVICE_CERT holds no certificate",
            [Finding(severity="error", code="format-empty", message="no certificate")],
        )
    # Certificates after the first in the device file are its chain, as devices send them.
    result = verify_path(
        certs[0],
        roots=list(cas),
        untrusted=[*certs[1:], *chain],
        at=at,
        purpose="client",
        crls=list(crls),
    )
    out: dict[str, Any] = dict(result.to_dict())
    return out


def check_in_store(
    store: TrustStore,
    name: str,
    leaf_pem: bytes,
    *,
    chain_pem: bytes = b"",
    version: int | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Dry run: would a device presenting ``leaf_pem`` be accepted by set ``name``?

    Uses ``version`` (default: the active one) with the set's CRLs whose issuer
    is in that version. Returns the verifier's result plus ``set`` and ``version``.
    """
    number, pem, _ = store.version_pem(name, version)
    cas = x509.load_pem_x509_certificates(pem)
    subjects = {c.subject for c in cas}
    crls = [crl for crl in store.crl_objects(name) if crl.issuer in subjects]
    result = check_device(leaf_pem, cas=cas, chain_pem=chain_pem, crls=crls, at=at or store.now())
    return {"set": name, "version": number, **result}
