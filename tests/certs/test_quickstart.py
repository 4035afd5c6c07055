"""quickstart: one call to a complete, verifiable PKI."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from certs.bundle import load_pem_certificates
from certs.errors import IssueError
from certs.quickstart import quickstart

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ATTIME = str(int(NOW.timestamp()) + 86400)


def test_layout_and_contents(tmp_path: Path) -> None:
    result = quickstart(tmp_path / "pki", devices=3, hosts=("edge.test", "localhost"), now=NOW)
    assert result.hosts == ("localhost", "127.0.0.1", "edge.test")
    chain = load_pem_certificates(result.ca_chain.read_bytes(), source="ca-chain.pem")
    assert chain == [result.intermediate.cert, result.root.cert]
    server = load_pem_certificates(result.server_cert.read_bytes(), source="server.pem")
    assert server[1] == result.intermediate.cert
    san = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "edge.test"]
    for key in (result.root_key, result.intermediate_key, result.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    rows = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["dev-00000", "dev-00001", "dev-00002"]
    assert (result.devices_dir / "dev-00002.key").exists()
    assert result.as_dict()["device_count"] == 3
    assert result.root.cert.not_valid_before_utc == NOW


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    quickstart(tmp_path, devices=0, now=NOW)
    with pytest.raises(IssueError, match="already holds a PKI"):
        quickstart(tmp_path, devices=0, now=NOW)
    again = quickstart(tmp_path, devices=0, now=NOW, force=True)
    assert again.manifest.read_text() == ""


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_openssl_accepts_quickstart(tmp_path: Path, openssl: OpenSSL) -> None:
    r = quickstart(tmp_path, devices=2, now=NOW)
    base = ["verify", "-attime", ATTIME, "-CAfile", r.root_cert]
    openssl(*base, "-untrusted", r.server_cert, "-purpose", "sslserver", r.server_cert)
    device = r.devices_dir / "dev-00001.pem"
    chain = r.devices_dir / "chain.pem"
    out = openssl(*base, "-untrusted", chain, "-purpose", "sslclient", device)
    assert out.stdout.strip().endswith("OK")
