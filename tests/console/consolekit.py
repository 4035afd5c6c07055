"""An edge whose admin listener speaks HTTPS and takes admin client certificates
(``[admin] client_ca``), for the certificate-login tests, API and browser alike."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from certs.authority import CertificateAuthority, IssuedCert
from edge.config import config_from_dict
from edge.server import EdgeServer, ServerThread


@dataclass
class AdminEdge:
    """An edge whose admin listener speaks HTTPS and takes admin client certificates."""

    handle: ServerThread
    base: str
    ca: CertificateAuthority
    folder: Path

    def client(self, cert: IssuedCert | None, name: str = "client") -> ssl.SSLContext:
        """A client context trusting the listener, presenting ``cert`` when given."""
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        if cert is not None:
            (self.folder / f"{name}.pem").write_bytes(cert.cert_pem)
            (self.folder / f"{name}.key").write_bytes(cert.key_pem())
            context.load_cert_chain(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return context

    @property
    def token(self) -> str:
        token = self.handle.server.admin_token
        assert token is not None
        return token


def start_admin_edge(folder: Path, client_cert: str = "optional") -> AdminEdge:
    # Real TLS validates against the real clock: these certificates start now.
    ca = CertificateAuthority.create_root("Admin CA")
    server = ca.issue_server(["127.0.0.1"])
    (folder / "admin.pem").write_bytes(server.cert_pem)
    (folder / "admin.key").write_bytes(server.key_pem())
    (folder / "admin-ca.pem").write_bytes(ca.cert_pem)
    config = config_from_dict(
        {
            "state_dir": "state",
            "listeners": {"mqtt": "127.0.0.1:0", "https": "", "admin": "127.0.0.1:0"},
            "admin": {
                "cert": "admin.pem",
                "key": "admin.key",
                "client_ca": "admin-ca.pem",
                "client_cert": client_cert,
            },
        },
        base=folder,
        source="edge.toml",
    )
    handle = EdgeServer.run_in_thread(config)
    return AdminEdge(handle, f"https://127.0.0.1:{handle.ports['admin']}", ca, folder)
