"""Property tests of the other parsers that take bytes from a device or an admin.

- the ClientHello reader (edge.tls.clienthello): never raises, and reads the same
  in any fragmentation;
- the ``/ws`` JSON protocol (edge.ws.jsonproto): arbitrary text raises only
  ``WsError``; ops round-trip through their JSON;
- HTTP topic paths (edge.http.device): any valid topic, percent-encoded, reads
  back as itself; arbitrary paths give the topic or a 400 ``Problem``;
- the OpenSSL config parser (certs.opensslconf): arbitrary text raises only
  ``ConfigError``; generated sections and values read back;
- upload sniffing (certs.bundle): arbitrary bytes are classified without raising
  and load only as ``BundleError``; PEM, DER, PKCS#7 and PKCS#12 of real
  certificates load back to the same certificates.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from hypothesis import given
from hypothesis import strategies as st

from certs.authority import CertificateAuthority
from certs.bundle import FORMATS, detect_format, load_any_certificates
from certs.errors import BundleError, ConfigError, PassphraseError
from certs.opensslconf import parse_config
from edge.http import device
from edge.tls.clienthello import ClientFlightReader
from edge.ws.jsonproto import OpError, Publish, Subscribe, Unsubscribe, WsError, parse_op

# `make fuzz` (HYPOTHESIS_PROFILE=long) runs many more examples: a longer bound there.
pytestmark = pytest.mark.timeout(1800 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 120)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# -- ClientHello reader ----------------------------------------------------------


def _real_client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["mqtt", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="device.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = _real_client_hello()


def _read(chunks: list[bytes]) -> tuple[object, object]:
    reader = ClientFlightReader()
    for chunk in chunks:
        reader.receive_data(chunk)
    hello = reader.client_hello
    seen = (hello.sni, hello.alpn, hello.versions) if hello is not None else None
    # Not the reason's text: it quotes the first bytes seen, which depend on the pieces.
    return reader.problem, seen


@given(blob=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_client_hello_reader_never_raises_and_ignores_fragmentation(
    blob: bytes, cuts: list[int]
) -> None:
    assert _read(_split(blob, cuts)) == _read([blob])


@given(
    cuts=st.lists(st.integers(0, len(HELLO)), max_size=10),
    flips=st.lists(st.tuples(st.integers(0, len(HELLO) - 1), st.integers(1, 255)), max_size=3),
)
def test_a_mutated_client_hello_reads_the_same_in_any_fragmentation(
    cuts: list[int], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(HELLO)
    for at, xor in flips:
        data[at] ^= xor
    mutated = bytes(data)
    assert _read(_split(mutated, cuts)) == _read([mutated])
    if not flips:
        problem, seen = _read([mutated])
        assert problem is None
        assert seen is not None
        assert seen[0] == "device.example"


# -- /ws JSON --------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "publish", "nope"])},
    optional={
        "id": json_values,
        "topic": st.text(max_size=30) | json_values,
        "payload": st.text(max_size=30) | json_values,
        "encoding": st.sampled_from(["utf-8", "base64", "hex"]) | json_values,
        "qos": st.integers(-1, 3) | json_values,
        "retain": st.booleans() | json_values,
    },
)


@given(text=st.text(max_size=200) | json_values.map(json.dumps) | ops.map(json.dumps))
def test_ws_messages_raise_only_ws_errors(text: str) -> None:
    try:
        op = parse_op(text)
    except WsError:
        return
    assert isinstance(op, Subscribe | Unsubscribe | Publish)


topic_names = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Cn", "Co"), exclude_characters="+#"
    ),
    min_size=1,
    max_size=30,
)


@given(
    topic=topic_names,
    payload=st.binary(max_size=60),
    op_id=st.none() | st.integers(-(2**40), 2**40),
    retain=st.booleans(),
)
def test_ws_publish_round_trips(
    topic: str, payload: bytes, op_id: int | None, retain: bool
) -> None:
    import base64

    message = {
        "op": "publish",
        "topic": topic,
        "payload": base64.b64encode(payload).decode(),
        "encoding": "base64",
        "qos": 1,
        "retain": retain,
    }
    if op_id is not None:
        message["id"] = op_id
    try:
        op = parse_op(json.dumps(message))
    except OpError as exc:
        refused = exc.reason
    else:
        assert op == Publish(op_id, topic, payload, 1, retain)
        return
    # Only the topic may be refused (e.g. an empty level rule): never the rest.
    assert "topic" in refused


# -- HTTP topic paths -------------------------------------------------------------


def _topic_of(raw_path: str) -> str:
    app = web.Application()
    app[device.CONFIG] = device.DeviceApiConfig()
    request = make_mocked_request("GET", raw_path, app=app)
    return device._topic_from_path(request)


@given(topic=topic_names)
def test_a_percent_encoded_topic_path_reads_back(topic: str) -> None:
    path = "/topics/" + urllib.parse.quote(topic, safe="")
    try:
        read = _topic_of(path)
    except device.Problem as exc:
        status = exc.status
    else:
        assert read == topic
        return
    assert status == 400


@given(raw=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60))
def test_arbitrary_topic_paths_give_a_topic_or_a_400(raw: str) -> None:
    try:
        topic = _topic_of("/topics/" + raw.replace("?", "%3F").replace("#", "%23"))
    except device.Problem as exc:
        status = exc.status
    else:
        assert topic
        return
    assert status == 400


# -- OpenSSL config ----------------------------------------------------------------

conf_lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "[ req ]",
                "[ca]",
                "a = b",
                "x = $a",
                "y = ${req::a}",
                "z = ${ENV::HOME}",
                '"q" = "\\""',
                "w = a\\",
                ".include nowhere",
                ".pragma dollarid:on",
                "# c",
                "k = 'v # not a comment'",
                "s::n = 1",
                "$",
                "${",
                "[",
                "= v",
            ]
        ),
    ),
    max_size=12,
)


@given(lines=conf_lines)
def test_openssl_config_raises_only_config_error(lines: list[str]) -> None:
    with contextlib.suppress(ConfigError):
        parse_config("\n".join(lines), environ={"HOME": "/home/x"})


names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
values = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:/-_@", max_size=20
)


@given(sections=st.dictionaries(names, st.dictionaries(names, values, max_size=5), max_size=4))
def test_openssl_config_sections_and_values_read_back(sections: dict[str, dict[str, str]]) -> None:
    text = "".join(
        f"[ {section} ]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for section, entries in sections.items()
    )
    config = parse_config(text)
    for section, entries in sections.items():
        for name, value in entries.items():
            assert config.get(section, name) == value.strip()


# -- upload sniffing ----------------------------------------------------------------


def _certificates() -> list[x509.Certificate]:
    before = datetime.now(UTC) - timedelta(days=1)
    root = CertificateAuthority.create_root("Fuzz Root", not_before=before)
    leaf = root.issue_device("fuzz-device", not_before=before)
    return [
        x509.load_pem_x509_certificate(leaf.cert_pem),
        x509.load_pem_x509_certificate(root.cert_pem),
    ]


CERTS = _certificates()


@given(blob=st.binary(max_size=400))
def test_arbitrary_uploads_are_classified_and_refused_cleanly(blob: bytes) -> None:
    assert detect_format(blob) in FORMATS
    with contextlib.suppress(BundleError, PassphraseError):
        load_any_certificates(blob, source="upload")


@given(
    kind=st.sampled_from(["pem", "der", "pkcs7-pem", "pkcs7-der", "pkcs12"]),
    junk=st.binary(max_size=8),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=2),
)
def test_real_uploads_load_back_and_mutated_ones_fail_cleanly(
    kind: str, junk: bytes, flips: list[tuple[int, int]]
) -> None:
    leaf, root = CERTS
    if kind == "pem":
        data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in CERTS)
    elif kind == "der":
        data = leaf.public_bytes(serialization.Encoding.DER)
    elif kind.startswith("pkcs7"):
        encoding = serialization.Encoding.PEM if kind == "pkcs7-pem" else serialization.Encoding.DER
        data = pkcs7.serialize_certificates(CERTS, encoding)
    else:
        data = pkcs12.serialize_key_and_certificates(
            None, None, None, [leaf, root], serialization.NoEncryption()
        )
    if not flips and not junk:
        loaded = load_any_certificates(data, source="upload")
        assert set(loaded) == set(CERTS) if kind != "der" else loaded == [leaf]
        return
    mutated = bytearray(data + junk)
    for at, xor in flips:
        mutated[at % len(mutated)] ^= xor
    with contextlib.suppress(BundleError, PassphraseError):
        load_any_certificates(bytes(mutated), source="upload")
