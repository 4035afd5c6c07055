"""What differs between the cryptography releases edgesim supports (see pyproject.toml).

cryptography 51 deprecates DSA: loading a DSA public key, verifying with one, or
reading the ``dsa.DSAPublicKey`` class raises ``CryptographyDeprecationWarning``.
edgesim still has to *recognise* DSA keys, to refuse them by name (finding
``weak-dsa-key``, PKITS's DSA cases), so every place that loads a certificate's key
goes through :func:`certificate_public_key`, and DSA verifications run inside
:func:`dsa_deprecation_silenced`. Both touch the warning filters only when the key
is DSA, so the usual path is unchanged (and the filters, which are process-global,
are not swapped under other threads' feet).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeGuard, TypeVar

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import PublicKeyAlgorithmOID

if TYPE_CHECKING:
    # Annotations only: at run time the class is read once, by _dsa_public_key_class.
    from cryptography.hazmat.primitives.asymmetric import dsa
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

__all__ = [
    "certificate_public_key",
    "dsa_deprecation_silenced",
    "has_dsa_key",
    "is_dsa_key",
    "load_certificate",
    "read_names",
]


@contextlib.contextmanager
def dsa_deprecation_silenced() -> Iterator[None]:
    """Run a block that handles DSA keys without cryptography 51's deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning
        )
        yield


def has_dsa_key(cert: x509.Certificate) -> bool:
    """True when ``cert``'s subject public key is DSA (told from its OID, the key unloaded)."""
    return cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA


def certificate_public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """``cert.public_key()``, a DSA key included, without the deprecation warning."""
    if not has_dsa_key(cert):
        return cert.public_key()
    with dsa_deprecation_silenced():
        return cert.public_key()


def is_dsa_key(public: CertificatePublicKeyTypes) -> TypeGuard[dsa.DSAPublicKey]:
    """True for a DSA public key (which the linter and the verifier refuse by name)."""
    return _DSA_PUBLIC_KEY is not None and isinstance(public, _DSA_PUBLIC_KEY)


def _dsa_public_key_class() -> type | None:
    # A release may drop DSA altogether: then no key is DSA.
    try:
        from cryptography.hazmat.primitives.asymmetric import dsa as dsa_module
    except ImportError:
        return None
    with dsa_deprecation_silenced():
        found = getattr(dsa_module, "DSAPublicKey", None)
    return found if isinstance(found, type) else None


_DSA_PUBLIC_KEY = _dsa_public_key_class()


_Named = TypeVar("_Named", x509.Certificate, x509.CertificateRevocationList)


def read_names(loaded: _Named) -> _Named:
    """Return ``loaded`` (a certificate or CRL) once its names are known to parse.

    cryptography parses the subject and issuer (and a CRL's entries) when first
    asked, so damage there would raise later, wherever the object is used.
    Loaders call this to make it a loading error: ``ValueError``, as
    cryptography's own.
    """
    try:
        _ = loaded.issuer
        if isinstance(loaded, x509.Certificate):
            _ = loaded.subject
        else:
            for entry in loaded:
                _ = (entry.serial_number, entry.revocation_date_utc)
    except TypeError as exc:
        # e.g. "oid must be X500_UNIQUE_IDENTIFIER for BitString type": a name
        # attribute of a type its OID cannot have; as unreadable as the rest.
        raise ValueError(f"a name cannot be read: {exc}") from exc
    return loaded


def load_certificate(data: bytes, *, pem: bool) -> x509.Certificate:
    """Load one certificate (PEM or DER); whatever makes it unreadable is a ``ValueError``.

    cryptography raises ``x509.InvalidVersion``, no ``ValueError``, for a version
    field other than v1-v3 (OpenSSL reads and sends such a certificate), and
    parses names only when first asked (:func:`read_names`).
    """
    try:
        loaded = (x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate)(data)
    except x509.InvalidVersion as exc:
        raise ValueError(str(exc)) from exc
    return read_names(loaded)
