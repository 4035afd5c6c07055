"""OpenSSL's verified chain read through ctypes: in-memory handshakes, no sockets."""

from __future__ import annotations

import ssl
import types
from typing import Any

import pytest

from edge.tls import verifiedchain
from tests.tls.test_session import connect

pytestmark = pytest.mark.timeout(30)


def test_available_on_this_python() -> None:
    # CI runs CPython linked to a shared OpenSSL: the reader must work there, or
    # every refused TLS 1.3 device would fall back to the key log tap unnoticed.
    assert verifiedchain.available()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_refused_device_certificate_is_read_after_the_failure(
    pki: Any, version: ssl.TLSVersion
) -> None:
    device = pki.device("dev-refused-chain", ca=pki.other)
    wire = connect(pki, device, version=version)
    wire.client_read()
    assert wire.server.failure is not None
    assert wire.server.failure.alert == "unknown_ca"
    assert verifiedchain.presented_certificate(wire.server.ssl_object) == device.der


def test_expired_device_certificate_is_the_leaf_not_its_issuers(pki: Any) -> None:
    # The chain OpenSSL built reaches the trusted root here; the leaf comes first.
    device = pki.device("dev-expired-chain", expired=True)
    wire = connect(pki, device, version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    assert wire.server.failure is not None
    assert wire.server.failure.alert == "certificate_expired"
    assert verifiedchain.presented_certificate(wire.server.ssl_object) == device.der


def test_accepted_device_certificate_matches_getpeercert(pki: Any) -> None:
    wire = connect(pki, pki.device("dev-accepted-chain"), version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    obj = wire.server.ssl_object
    assert wire.server.failure is None
    der = obj.getpeercert(binary_form=True)
    assert der is not None
    assert verifiedchain.presented_certificate(obj) == der


def test_no_certificate_gives_none(pki: Any) -> None:
    wire = connect(pki, None, version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    assert wire.server.failure is not None
    assert wire.server.failure.alert == "certificate_required"
    assert verifiedchain.presented_certificate(wire.server.ssl_object) is None


def test_before_any_handshake_gives_none() -> None:
    obj = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True
    )
    assert verifiedchain.presented_certificate(obj) is None


def test_an_object_that_is_not_an_ssl_object_is_never_read() -> None:
    # The type check comes before any memory is read: no crash, just no answer.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for inner in (object(), (1, 2, 3), types.SimpleNamespace(a=1, b=2, c=ctx)):
        fake = types.SimpleNamespace(_sslobj=inner, context=ctx)
        assert verifiedchain.presented_certificate(fake) is None  # type: ignore[arg-type]


def test_an_object_of_another_context_is_refused(pki: Any) -> None:
    # The layout check: the context word must be the object's own context.
    wire = connect(pki, pki.device("dev-other-ctx", ca=pki.other), version=ssl.TLSVersion.TLSv1_3)
    wire.client_read()
    obj = wire.server.ssl_object
    stranger = types.SimpleNamespace(
        _sslobj=obj._sslobj,  # type: ignore[attr-defined]
        context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
    )
    assert verifiedchain.presented_certificate(stranger) is None  # type: ignore[arg-type]
