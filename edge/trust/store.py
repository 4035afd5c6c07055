"""The interface every trust store backend implements.

Callers (the :class:`~edge.trust.propagation.TrustService`, the CLI) depend on
:class:`TrustStore` only, so a shared backend can replace the embedded SQLite
file (:class:`edge.trust.sqlite.SqliteTrustStore`) without touching them.

Semantics every backend keeps:

- every mutating call is one transaction: it happens entirely or not at all,
  and a refused upload changes nothing;
- versions are numbered 1, 2, ... per set and never change once stored;
- a set has at most one active version; ``activate`` switches it in one call;
- each change that alters what handshakes would use bumps :meth:`generation`.

Server certificates (``upload_server_cert``, ``deploy``, ``rollback_server_cert``,
``delete_server_cert``, ``server_certs``, ``get_server_cert``) are, for now, an
extension of :class:`~edge.trust.sqlite.SqliteTrustStore` outside this protocol;
the service checks for them and says so when a backend lacks them. Their
deployments are part of :meth:`snapshot` (``server_certs``, ``routes``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from cryptography import x509

from edge.trust.model import CrlInfo, SetInfo, TrustSnapshot, VersionInfo

__all__ = ["TrustStore"]


class TrustStore(Protocol):
    """Certificate sets, their versions, CRLs and hostname bindings."""

    def upload(
        self,
        name: str,
        data: bytes,
        *,
        activate: bool = True,
        allow_sha1: bool = False,
        source: str = "FILE",
    ) -> VersionInfo:
        """Validate ``data`` (one PEM file of CA certificates) and store it as a new version.

        Creates the set if needed; activates the new version unless ``activate`` is
        false. ``source`` names the file in messages. Raises
        :class:`~edge.trust.errors.RefusedError` (nothing stored).
        """
        ...

    def list_sets(self) -> list[SetInfo]:
        """Return every set, ordered by name."""
        ...

    def get_set(self, name: str) -> SetInfo:
        """Return one set; raises :class:`~edge.trust.errors.NotFoundError`."""
        ...

    def versions(self, name: str) -> list[VersionInfo]:
        """Return a set's versions, oldest first."""
        ...

    def version_pem(self, name: str, version: int | None = None) -> tuple[int, bytes, bool]:
        """Return ``(version, pem, allow_sha1)`` of a version (default: the active one)."""
        ...

    def activate(self, name: str, version: int) -> VersionInfo:
        """Make ``version`` the set's active version (a rollback is the same call)."""
        ...

    def rollback(self, name: str) -> VersionInfo:
        """Re-activate the version that was active before the current one."""
        ...

    def bind(self, name: str, host: str) -> str:
        """Bind ``host`` (``*`` = default binding) to set ``name``; returns the stored host."""
        ...

    def unbind(self, host: str) -> None:
        """Remove the binding of ``host``."""
        ...

    def bindings(self) -> dict[str, str]:
        """Return every binding: host -> set name."""
        ...

    def set_options(self, name: str, *, disconnect_on_revoke: bool) -> SetInfo:
        """Set a set's options (``disconnect_on_revoke``); returns the set."""
        ...

    def delete(self, name: str) -> None:
        """Delete a set with its versions, CRLs and bindings."""
        ...

    def add_crl(self, name: str, data: bytes) -> CrlInfo:
        """Attach a CRL (PEM or DER) signed by a CA of the set's active version."""
        ...

    def crls(self, name: str) -> list[CrlInfo]:
        """Return the CRLs attached to a set."""
        ...

    def crl_objects(self, name: str) -> list[x509.CertificateRevocationList]:
        """Return the CRLs attached to a set, parsed."""
        ...

    def status(self) -> dict[str, Any]:
        """Return the stored state's generation and each set's active version."""
        ...

    def generation(self) -> int:
        """Return a number that grows with every change affecting handshakes."""
        ...

    def snapshot(self) -> TrustSnapshot:
        """Return the active versions and bindings as an immutable snapshot."""
        ...

    def now(self) -> datetime:
        """Return the store's notion of the current time (UTC)."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...
