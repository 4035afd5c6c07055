"""``edgesim trust check`` against NIST PKITS cases (valid path, bad signature, expired, revoked).

The PKITS data comes from the PKI toolkit's fixture module
(``tests/certs/pkits_fixtures.py``), which caches it outside the repository;
without network and without a cache the tests skip with its reason.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge.cli import main

_FIXTURES = Path(__file__).parents[1] / "certs" / "pkits_fixtures.py"


def _load_fixtures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trust_pkits_fixtures", _FIXTURES)
    if spec is None or spec.loader is None:
        pytest.skip(f"{_FIXTURES} is missing")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pkits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding set ``pkits`` = Good CA + Trust Anchor, with both CAs' CRLs.

    Returns the directory with ``store.db`` and every needed certificate as PEM.
    """
    fixtures = _load_fixtures()
    try:
        data = fixtures.ensure_pkits()
    except fixtures.PkitsUnavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("pkits")

    def cert(name: str) -> x509.Certificate:
        loaded: x509.Certificate = fixtures.load_certificate(data, name)
        return loaded

    for name in (
        "ValidCertificatePathTest1EE",
        "InvalidCASignatureTest2EE",
        "BadSignedCACert",
        "InvalidEEnotAfterDateTest6EE",
        "InvalidRevokedEETest3EE",
    ):
        (out / f"{name}.pem").write_bytes(cert(f"{name}.crt").public_bytes(Encoding.PEM))
    (out / "set.pem").write_bytes(
        cert("GoodCACert.crt").public_bytes(Encoding.PEM)
        + cert("TrustAnchorRootCertificate.crt").public_bytes(Encoding.PEM)
    )
    store = str(out / "store.db")
    assert main(["trust", "upload", "pkits", str(out / "set.pem"), "--store", store]) == 0
    for crl in ("TrustAnchorRootCRL.crl", "GoodCACRL.crl"):
        assert main(["trust", "crl", "pkits", str(data.crls / crl), "--store", store]) == 0
    return out


def check(
    pkits_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = main(
        [
            "trust",
            "check",
            "pkits",
            *argv,
            "--at",
            "2022-05-01T00:00:00Z",
            "--store",
            str(pkits_dir / "store.db"),
            "--json",
        ]
    )
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return code, result


def test_4_1_1_valid_signatures(pkits_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = check(pkits_dir, capsys, str(pkits_dir / "ValidCertificatePathTest1EE.pem"))
    assert (code, result["ok"], result["code"]) == (0, True, "ok")


def test_4_1_2_invalid_ca_signature(pkits_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = check(
        pkits_dir,
        capsys,
        str(pkits_dir / "InvalidCASignatureTest2EE.pem"),
        "--chain",
        str(pkits_dir / "BadSignedCACert.pem"),
    )
    assert (code, result["ok"], result["code"]) == (1, False, "bad-signature")
    assert result["alert"] == "decrypt_error"


def test_4_2_6_expired_end_entity(pkits_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = check(pkits_dir, capsys, str(pkits_dir / "InvalidEEnotAfterDateTest6EE.pem"))
    assert (code, result["ok"], result["code"]) == (1, False, "expired")


def test_4_4_3_revoked_end_entity(pkits_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = check(pkits_dir, capsys, str(pkits_dir / "InvalidRevokedEETest3EE.pem"))
    assert (code, result["ok"], result["code"]) == (1, False, "revoked")
    assert result["alert"] == "certificate_revoked"
