"""devices.legacykeys: the fleet's EC/RSA keys on OpenSSL's built-in methods, every check kept.

In-memory handshakes (``ssl.MemoryBIO``) between a device context and a server
context, with the methods installed and without: the same verdicts for a good
chain, a broken signature on either side, a wrong name and an unknown CA.
"""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

import pytest
from memtls import broken_signature, handshake

from certs.quickstart import quickstart
from devices import legacykeys

pytestmark = pytest.mark.timeout(120)

OPENSSL_30 = ssl.OPENSSL_VERSION_INFO[:2] == (3, 0)


@pytest.fixture(scope="module", params=["ec256", "rsa2048"])
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    key_type = str(request.param)
    out = quickstart(tmp_path_factory.mktemp(key_type), devices=1, key_type=key_type).out
    broken_signature(out / "server.pem", out / "bad-server.pem")
    broken_signature(out / "devices" / "dev-00000.pem", out / "bad-device.pem")
    other = quickstart(tmp_path_factory.mktemp(f"{key_type}-other"), devices=0).out
    (out / "other-root.pem").write_bytes((other / "root-ca.pem").read_bytes())
    return out


def _handshake(
    pki: Path,
    *,
    server_cert: str = "server.pem",
    device_cert: str = "devices/dev-00000.pem",
    root: str = "root-ca.pem",
    hostname: str = "localhost",
) -> str:
    """Run one handshake in memory: "ok", or the side and reason that refused it."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / server_cert, pki / "server.key")
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(pki / "ca-chain.pem")
    device = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    device.load_verify_locations(pki / root)
    device.load_cert_chain(pki / device_cert, pki / "devices" / "dev-00000.key")
    return handshake(device, server, hostname)


CASES = {
    "good": ({}, "ok"),
    "server signature broken": (
        {"server_cert": "bad-server.pem"},
        "device: certificate signature failure",
    ),
    "device signature broken": (
        {"device_cert": "bad-device.pem"},
        "server: certificate signature failure",
    ),
    "wrong name": (
        {"hostname": "elsewhere.example"},
        "device: Hostname mismatch, certificate is not valid for 'elsewhere.example'.",
    ),
    "unknown CA": ({"root": "other-root.pem"}, "device: unable to get local issuer certificate"),
}


def _engine_for(nid: int) -> bool:
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    lib.ENGINE_get_pkey_meth_engine.restype = ctypes.c_void_p
    lib.ENGINE_get_pkey_meth_engine.argtypes = [ctypes.c_int]
    lib.ENGINE_finish.argtypes = [ctypes.c_void_p]
    engine = lib.ENGINE_get_pkey_meth_engine(nid)
    if engine:
        lib.ENGINE_finish(engine)
    return bool(engine)


def test_installed_on_openssl_30_else_says_why() -> None:
    status = legacykeys.install()
    if OPENSSL_30:
        assert status.startswith("legacy EC/RSA methods (3.0"), status
        assert legacykeys.active()
        assert all(_engine_for(nid) for nid in legacykeys.KEY_TYPES.values())
        assert legacykeys.install() == status  # idempotent
        legacykeys.uninstall()
        assert not legacykeys.active()
        assert not any(_engine_for(nid) for nid in legacykeys.KEY_TYPES.values())
    else:
        assert status.startswith("provider ("), status
        assert not legacykeys.active()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("methods", ["provider", "legacy"])
def test_every_check_is_still_made(pki: Path, case: str, methods: str) -> None:
    if methods == "legacy":
        if not OPENSSL_30:
            pytest.skip(f"installed on OpenSSL 3.0 only, this is {ssl.OPENSSL_VERSION}")
        assert legacykeys.install().startswith("legacy")
    else:
        legacykeys.uninstall()
    kwargs, expected = CASES[case]
    assert _handshake(pki, **kwargs) == expected
