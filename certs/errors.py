"""The error tree of the PKI toolkit.

Every failure the toolkit reports is a :class:`CertsError`; callers that only
want "did the PKI operation work" catch that one class. Exceptions raised by
``cryptography`` (``ValueError``, ``TypeError``, ``UnsupportedAlgorithm``) and by
the operating system (``OSError``) are translated where they cross into this
package, so the message always names the file or the input at fault::

    CertsError                    root: anything the PKI toolkit refuses
    ├── ConfigError               an OpenSSL-style config file (.file, .line)
    ├── KeyLoadError              a private key cannot be read or parsed
    │   └── PassphraseError       the key is encrypted: passphrase missing or wrong
    ├── BundleError               a certificate file is not what was expected
    │                             (says what it is and how to convert it)
    ├── IssueError                issuance parameters are invalid
    └── CrlError                  a CRL cannot be read, built or updated
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CertsError",
    "ConfigError",
    "CrlError",
    "IssueError",
    "KeyLoadError",
    "PassphraseError",
]


class CertsError(Exception):
    """Root of every error raised by the :mod:`certs` package."""


class ConfigError(CertsError):
    """An OpenSSL-style configuration file is invalid or uses something unsupported.

    ``file`` is the path (or ``"<string>"``) and ``line`` the 1-based line number,
    or ``None`` when the problem is not tied to one line (e.g. a missing section).
    """

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.reason = message


class KeyLoadError(CertsError):
    """A private key could not be read or parsed (the message names the source)."""


class PassphraseError(KeyLoadError):
    """A private key is encrypted and the passphrase is missing or wrong."""


class BundleError(CertsError):
    """A certificate file does not hold what was expected.

    The message says what the file actually is (DER certificate, PKCS#7, PKCS#12,
    private key, CSR, CRL, empty, text) and how to convert it.
    """


class IssueError(CertsError):
    """Issuance parameters are invalid (bad template, validity, SAN, key type...)."""


class CrlError(CertsError):
    """A certificate revocation list could not be read, built or updated."""
