"""edgesim PKI toolkit: pure, synchronous, depends only on ``cryptography``.

Modules: :mod:`certs.keys` (generate/load/write keys), :mod:`certs.authority`
(issue roots, intermediates, server and device certificates),
:mod:`certs.bundle` (PEM/DER/PKCS#7/PKCS#12 files), :mod:`certs.quickstart`
(a whole test PKI in one call), :mod:`certs.opensslconf` (OpenSSL config files,
``openssl req -x509`` parity), :mod:`certs.crl` (revocation lists),
:mod:`certs.inspect` (describe any PKI file), :mod:`certs.cli` (``edgesim pki``).

The error tree (:mod:`certs.errors`)::

    CertsError
    ├── ConfigError          (.file, .line)
    ├── KeyLoadError
    │   └── PassphraseError
    ├── BundleError
    ├── IssueError
    └── CrlError
"""

from certs.authority import CertificateAuthority, IssuedCert
from certs.bundle import (
    detect_format,
    load_any_certificates,
    load_pem_certificates,
    pem_bundle,
    read_certificates,
)
from certs.errors import (
    BundleError,
    CertsError,
    ConfigError,
    CrlError,
    IssueError,
    KeyLoadError,
    PassphraseError,
)
from certs.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    key_description,
    load_private_key,
    read_private_key,
    write_private_key,
)
from certs.quickstart import QuickstartResult, quickstart

__all__ = [
    "BundleError",
    "CertificateAuthority",
    "CertsError",
    "ConfigError",
    "CrlError",
    "IssueError",
    "IssuedCert",
    "KeyLoadError",
    "KeyType",
    "PassphraseError",
    "PrivateKey",
    "QuickstartResult",
    "detect_format",
    "generate_key",
    "key_description",
    "load_any_certificates",
    "load_pem_certificates",
    "load_private_key",
    "pem_bundle",
    "quickstart",
    "read_certificates",
    "read_private_key",
    "write_private_key",
]
