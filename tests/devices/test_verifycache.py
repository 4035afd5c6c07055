"""devices.verifycache: a chain the edge sent is verified in full once, and only that chain.

In-memory handshakes (``ssl.MemoryBIO``) between a device context with the cache
attached and server contexts presenting good and bad chains: a good chain is
verified once and then reused; anything that differs (a broken signature, a missing
intermediate, another host name) is verified in full and refused as without it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from memtls import broken_signature, handshake

from certs.quickstart import quickstart
from devices.verifycache import VerifyCache

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = quickstart(tmp_path_factory.mktemp("pki"), devices=1).out
    broken_signature(out / "server.pem", out / "bad-server.pem")
    certs = x509.load_pem_x509_certificates((out / "server.pem").read_bytes())
    (out / "leaf-only.pem").write_bytes(certs[0].public_bytes(Encoding.PEM))
    return out


def _server(pki: Path, cert: str) -> ssl.SSLContext:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / cert, pki / "server.key")
    if cert != "leaf-only.pem":
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(pki / "ca-chain.pem")
    # else: no verify store, which OpenSSL would otherwise complete the sent chain from
    # (and no device certificate asked for: this case is about the device's side).
    return server


def _device(pki: Path) -> ssl.SSLContext:
    device = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    device.load_verify_locations(pki / "root-ca.pem")
    device.load_cert_chain(pki / "devices" / "dev-00000.pem", pki / "devices" / "dev-00000.key")
    return device


def test_a_good_chain_is_verified_once_then_reused(pki: Path) -> None:
    device, server = _device(pki), _server(pki, "server.pem")
    cache = VerifyCache()
    assert cache.attach(device)
    for _ in range(5):
        assert handshake(device, server) == "ok"
    assert (cache.misses, cache.hits) == (1, 4)


@pytest.mark.parametrize(
    ("cert", "hostname", "refusal"),
    [
        ("bad-server.pem", "localhost", "device: certificate signature failure"),
        ("leaf-only.pem", "localhost", "device: unable to get local issuer certificate"),
        (
            "server.pem",
            "elsewhere.example",
            "device: Hostname mismatch, certificate is not valid for 'elsewhere.example'.",
        ),
        # An IP literal is checked as an address (not a name): the key must hold it.
        (
            "server.pem",
            "127.0.0.2",
            "device: IP address mismatch, certificate is not valid for '127.0.0.2'.",
        ),
    ],
)
def test_what_differs_from_a_verified_chain_is_verified_in_full(
    pki: Path, cert: str, hostname: str, refusal: str
) -> None:
    device = _device(pki)
    cache = VerifyCache()
    assert cache.attach(device)
    good = _server(pki, "server.pem")
    # The good chain verified for the same kind of name as the case then asks for.
    verified_as = "127.0.0.1" if hostname[0].isdigit() else "localhost"
    assert handshake(device, good, verified_as) == "ok"
    assert handshake(device, good, verified_as) == "ok"
    assert cache.hits == 1
    other = _server(pki, cert)
    for _ in range(2):  # a refusal is never remembered
        assert handshake(device, other, hostname) == refusal
    assert cache.hits == 1
    assert cache.misses == 3
    assert handshake(device, good, verified_as) == "ok"  # still reused
    assert cache.hits == 2


def test_without_the_cache_every_handshake_is_verified(pki: Path) -> None:
    attached, plain = _device(pki), _device(pki)
    cache = VerifyCache()
    assert cache.attach(attached)
    server = _server(pki, "server.pem")
    for _ in range(3):
        assert handshake(plain, server) == "ok"
    # The cache is per context: another context's handshakes never touch it.
    assert (cache.misses, cache.hits) == (0, 0)
    bad = _server(pki, "bad-server.pem")
    assert handshake(plain, bad) == "device: certificate signature failure"
