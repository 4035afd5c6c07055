"""One call to a working PKI: root, intermediate, server certificate and devices.

Layout written under ``out``::

    root-ca.pem            the self-signed root (what devices and the edge trust)
    root-ca.key            its key (PKCS#8, mode 0600, unencrypted: a test PKI)
    intermediate-ca.pem    the intermediate, issued by the root (path length 0)
    intermediate-ca.key
    ca-chain.pem           intermediate then root (what a certificate set uploads)
    server.pem             the server leaf followed by the intermediate
    server.key
    devices/manifest.jsonl one JSON object per device (see
                           :meth:`CertificateAuthority.issue_devices_bulk`)
    devices/<id>.pem, devices/<id>.key, devices/chain.pem

Errors: :class:`~certs.errors.IssueError` (the directory already holds a PKI
and ``force`` is false, or it cannot be written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from certs.authority import CertificateAuthority
from certs.errors import IssueError
from certs.keys import write_private_key, write_secret

__all__ = ["DEFAULT_HOSTS", "QuickstartResult", "quickstart"]

#: Hosts the server certificate always covers.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True, kw_only=True)
class QuickstartResult:
    """Every path :func:`quickstart` wrote, and the two CAs loaded."""

    out: Path
    root_cert: Path
    root_key: Path
    intermediate_cert: Path
    intermediate_key: Path
    ca_chain: Path
    server_cert: Path
    server_key: Path
    devices_dir: Path
    manifest: Path
    device_count: int
    hosts: tuple[str, ...]
    root: CertificateAuthority
    intermediate: CertificateAuthority

    def as_dict(self) -> dict[str, object]:
        """The paths and counts as JSON-ready values (for ``--json``)."""
        return {
            "out": str(self.out),
            "root_cert": str(self.root_cert),
            "root_key": str(self.root_key),
            "intermediate_cert": str(self.intermediate_cert),
            "intermediate_key": str(self.intermediate_key),
            "ca_chain": str(self.ca_chain),
            "server_cert": str(self.server_cert),
            "server_key": str(self.server_key),
            "devices_dir": str(self.devices_dir),
            "manifest": str(self.manifest),
            "device_count": self.device_count,
            "hosts": list(self.hosts),
        }


def quickstart(
    out: Path,
    *,
    devices: int = 10,
    hosts: Sequence[str] = (),
    now: datetime | None = None,
    key_type: str = "ec256",
    jobs: int = 1,
    force: bool = False,
) -> QuickstartResult:
    """Create a complete test PKI under ``out`` (see the module docstring for the layout).

    Refuses to overwrite an existing ``root-ca.pem`` unless ``force`` is true,
    so a second run never silently invalidates certificates already handed out.
    """
    out = Path(out)
    root_cert = out / "root-ca.pem"
    if root_cert.exists() and not force:
        raise IssueError(
            f"{out} already holds a PKI ({root_cert} exists); pass --force (force=True) to replace it"
        )
    if devices < 0:
        raise IssueError(f"device count must be >= 0, got {devices}")
    all_hosts = tuple(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    root = CertificateAuthority.create_root("edgesim Root CA", key_type=key_type, now=now)
    inter = root.issue_intermediate(
        "edgesim Intermediate CA", path_length=0, key_type=key_type, now=now
    )
    server = inter.issue_server(all_hosts, key_type=key_type, now=now)
    paths = {
        "root_key": out / "root-ca.key",
        "intermediate_cert": out / "intermediate-ca.pem",
        "intermediate_key": out / "intermediate-ca.key",
        "ca_chain": out / "ca-chain.pem",
        "server_cert": out / "server.pem",
        "server_key": out / "server.key",
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        root_cert.write_bytes(root.cert_pem)
        write_private_key(paths["root_key"], root.key)
        paths["intermediate_cert"].write_bytes(inter.cert_pem)
        write_private_key(paths["intermediate_key"], inter.key)
        paths["ca_chain"].write_bytes(inter.cert_pem + root.cert_pem)
        paths["server_cert"].write_bytes(server.fullchain_pem)
        write_secret(paths["server_key"], server.key_pem())
    except OSError as exc:
        raise IssueError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    devices_dir = out / "devices"
    manifest = inter.issue_devices_bulk(
        devices_dir, count=devices, key_type=key_type, jobs=jobs, now=now
    )
    return QuickstartResult(
        out=out,
        root_cert=root_cert,
        devices_dir=devices_dir,
        manifest=manifest,
        device_count=devices,
        hosts=all_hosts,
        root=root,
        intermediate=inter,
        **paths,
    )
