"""The error tree of the trust store.

Every failure :mod:`edge.trust` reports is a :class:`TrustError`. ``sqlite3``
errors, ``cryptography``'s ``ValueError`` and the PKI toolkit's
:class:`certs.errors.CertsError` are translated where they cross into this
package, so callers (the admin API, the CLI, the edge) catch one class::

    TrustError                  root: anything the trust store refuses or cannot do
    ├── NotFoundError           a set, version, binding or CRL does not exist
    ├── ConflictError           the request contradicts the stored state
    │                           (set exists with other options, version already active...)
    ├── RefusedError            an upload (certificates or CRL) was refused;
    │   │                       ``findings`` names every offending certificate
    │   └── LimitError          a size limit (certificates per version, number of sets)
    ├── StoreError              the store file cannot be opened, read or migrated
    └── PropagationTimeout      a change did not become active in time
                                (also a ``TimeoutError``)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.trust.model import Finding

__all__ = [
    "ConflictError",
    "LimitError",
    "NotFoundError",
    "PropagationTimeout",
    "RefusedError",
    "StoreError",
    "TrustError",
]


class TrustError(Exception):
    """Root of every error raised by :mod:`edge.trust`."""


class NotFoundError(TrustError):
    """A certificate set, version, binding or CRL does not exist."""


class ConflictError(TrustError):
    """The request contradicts the stored state."""


class RefusedError(TrustError):
    """An upload was refused; nothing was stored.

    ``findings`` holds every reason, each naming the certificate at fault
    (position and subject) when there is one.
    """

    def __init__(self, message: str, findings: Sequence[Finding] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.findings: tuple[Finding, ...] = tuple(findings)


class LimitError(RefusedError):
    """An upload would exceed a limit (certificates per version, number of sets)."""


class StoreError(TrustError):
    """The store cannot be opened, read, written or migrated (the message names the file)."""


class PropagationTimeout(TrustError, TimeoutError):
    """A trust change did not become active on every worker in time."""
