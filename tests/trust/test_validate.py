"""Every reason an upload is refused, with the message a user sees; nothing is stored."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from badcerts import pem as badcert_pem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from trustpki import NOW, build, chain, pem, root, rsa_key, sha1_signed

from edge.trust.errors import LimitError, RefusedError
from edge.trust.sqlite import SqliteTrustStore, StoreLimits


def refuse(store: SqliteTrustStore, data: bytes) -> RefusedError:
    """Upload ``data`` expecting a refusal; check nothing was stored; return the error."""
    before = store.list_sets()
    generation = store.generation()
    with pytest.raises(RefusedError) as info:
        store.upload("fleet", data)
    assert store.list_sets() == before
    assert store.generation() == generation
    assert info.value.findings, "a refusal always carries at least one finding"
    return info.value


def codes(exc: RefusedError) -> list[str]:
    return [f.code for f in exc.findings]


# -- the file is not PEM certificates ---------------------------------------


def test_der_certificate_is_refused_with_conversion_hint(store: SqliteTrustStore) -> None:
    der = root().cert.public_bytes(serialization.Encoding.DER)
    exc = refuse(store, der)
    assert codes(exc) == ["format-der-certificate"]
    assert "a DER (binary) certificate" in exc.findings[0].message
    assert "edgesim pki convert" in exc.findings[0].message


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_pkcs7_is_refused(store: SqliteTrustStore, encoding: serialization.Encoding) -> None:
    data = pkcs7.serialize_certificates([root().cert], encoding)
    exc = refuse(store, data)
    assert "PKCS#7" in exc.findings[0].message
    assert "edgesim pki convert" in exc.findings[0].message


def test_pkcs12_is_refused(store: SqliteTrustStore) -> None:
    ca = root()
    data = pkcs12.serialize_key_and_certificates(
        b"ca",
        ca.key,
        ca.cert,
        None,
        serialization.NoEncryption(),
    )
    exc = refuse(store, data)
    assert codes(exc) == ["format-der-pkcs12"]
    assert "PKCS#12" in exc.findings[0].message
    assert "edgesim pki convert" in exc.findings[0].message


def test_private_key_is_refused(store: SqliteTrustStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    exc = refuse(store, key)
    assert "private key" in exc.findings[0].message


def test_certificate_plus_private_key_is_refused(store: SqliteTrustStore) -> None:
    ca = root()
    exc = refuse(store, ca.cert_pem + ca.key_pem())
    assert "private key" in exc.findings[0].message


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "an empty file"),
        (b"   \n", "an empty file"),
        (b"hello, this is not a certificate\n", "a text file"),
        (b"\x00\x01\x02garbage\xff\xfe", "binary data"),
    ],
)
def test_empty_and_garbage_are_refused(store: SqliteTrustStore, data: bytes, what: str) -> None:
    exc = refuse(store, data)
    assert what in exc.findings[0].message
    assert "not PEM certificates" in exc.message


def test_broken_pem_block_is_refused(store: SqliteTrustStore) -> None:
    data = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    exc = refuse(store, data)
    assert "PEM block 1 is not a valid certificate" in exc.findings[0].message
    assert exc.message.startswith("upload refused: FILE: PEM block 1 is not a valid certificate")


@pytest.mark.parametrize("name", ["cert-subject-unparseable", "cert-name-bitstring-oid"])
def test_a_certificate_whose_names_do_not_parse_is_refused(
    store: SqliteTrustStore, name: str
) -> None:
    # Found by the atheris target `inspect`: cryptography parses names when first
    # asked, so these loaded and then raised in the linter (a 500 upstream).
    der = (Path(__file__).parents[1] / "fuzz" / "corpus" / "inspect" / name).read_bytes()
    exc = refuse(store, badcert_pem(der))
    assert exc.message.startswith("upload refused: FILE: PEM block 1 is not a valid certificate")
    assert codes(exc) == ["format-pem-certificate"]


# -- certificates the set must not hold -------------------------------------


def test_leaf_certificate_is_refused_naming_position_and_subject(
    store: SqliteTrustStore,
) -> None:
    ca = root()
    device = ca.issue_device("device-1", now=NOW)
    exc = refuse(store, device.cert_pem + ca.cert_pem)
    leaf = [f for f in exc.findings if f.code == "leaf-in-ca-set"]
    assert len(leaf) == 1
    assert leaf[0].position == 1
    assert leaf[0].subject == "CN=device-1"
    assert str(leaf[0]).startswith("certificate 1 (CN=device-1) is not a CA certificate")


def test_not_a_ca_is_refused(store: SqliteTrustStore) -> None:
    cert, _ = build("Not A CA", ca=False)
    exc = refuse(store, pem(cert))
    assert "leaf-in-ca-set" in codes(exc)


def test_expired_ca_is_refused(store: SqliteTrustStore) -> None:
    cert, _ = build(
        "Old Root", not_before=NOW - timedelta(days=800), not_after=NOW - timedelta(days=1)
    )
    exc = refuse(store, pem(cert))
    assert codes(exc) == ["expired"]
    assert exc.findings[0].subject == "CN=Old Root"


def test_not_yet_valid_ca_is_refused(store: SqliteTrustStore) -> None:
    cert, _ = build("Future Root", not_before=NOW + timedelta(days=2))
    exc = refuse(store, pem(cert))
    assert codes(exc) == ["not-yet-valid"]


def test_sha1_intermediate_is_refused_unless_allowed(store: SqliteTrustStore) -> None:
    top_key = rsa_key(2048)
    top, _ = build("SHA1 Root", key=top_key)
    inter = sha1_signed(build("SHA1 Inter", issuer=top, issuer_key=top_key)[0], top_key)
    exc = refuse(store, pem(inter, top))
    weak = [f for f in exc.findings if f.code == "weak-signature-hash"]
    assert weak[0].position == 1
    assert "sha1" in weak[0].message
    assert weak[0].hint is not None
    assert "--allow-sha1" in weak[0].hint
    info = store.upload("fleet", pem(inter, top), allow_sha1=True)
    assert info.allow_sha1
    assert [w.code for w in info.warnings] == ["weak-signature-hash"]
    assert store.snapshot().sets["fleet"].allow_sha1


def test_small_rsa_key_is_refused(store: SqliteTrustStore) -> None:
    cert, _ = build("RSA 1024 Root", key=rsa_key(1024))
    exc = refuse(store, pem(cert))
    assert codes(exc) == ["weak-rsa-key"]


def test_small_ec_key_is_refused(store: SqliteTrustStore) -> None:
    cert, _ = build("P-192 Root", key=ec.generate_private_key(ec.SECP192R1()))
    exc = refuse(store, pem(cert))
    assert "weak-ec-key" in codes(exc)


def test_duplicate_certificate_is_refused(store: SqliteTrustStore) -> None:
    ca = root()
    exc = refuse(store, ca.cert_pem + ca.cert_pem)
    duplicate = [f for f in exc.findings if f.code == "duplicate"]
    assert duplicate[0].position == 2


# -- the seed's three chain conditions --------------------------------------


def test_chain_out_of_order_is_refused(store: SqliteTrustStore) -> None:
    """Condition 1: each certificate is followed by its issuer's."""
    top, inter = chain(2)
    exc = refuse(store, pem(top.cert, inter.cert))
    assert "order" in codes(exc)


def test_issuer_name_mismatch_is_refused(store: SqliteTrustStore) -> None:
    """Condition 2: the issuer DN equals the next certificate's subject DN."""
    top, inter = chain(2)
    other = root("Unrelated Root")
    exc = refuse(store, pem(inter.cert, other.cert))
    assert "missing-root" in codes(exc)
    missing = next(f for f in exc.findings if f.code == "missing-root")
    assert missing.position == 1
    assert missing.subject == inter.cert.subject.rfc4514_string()
    assert top.cert.subject.rfc4514_string() in missing.message


def test_bad_signature_is_refused(store: SqliteTrustStore) -> None:
    """Condition 3: each signature verifies with the next certificate's public key."""
    top, _ = build("Signer Root")
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    inter, _ = build(
        "Forged Inter",
        key=ec.generate_private_key(ec.SECP256R1()),
        issuer=top,
        issuer_key=impostor_key,
    )
    exc = refuse(store, pem(inter, top))
    bad = next(f for f in exc.findings if f.code == "bad-signature")
    assert bad.position == 1
    assert bad.subject == "CN=Forged Inter"


def test_several_problems_are_all_named(store: SqliteTrustStore) -> None:
    ca = root()
    device = ca.issue_device("device-9", now=NOW)
    old, _ = build(
        "Old Root", not_before=NOW - timedelta(days=800), not_after=NOW - timedelta(days=1)
    )
    exc = refuse(store, device.cert_pem + ca.cert_pem + pem(old))
    assert {"leaf-in-ca-set", "expired"} <= set(codes(exc))
    assert exc.message.startswith("upload refused: ")


# -- limits -----------------------------------------------------------------


def test_more_than_300_certificates_is_refused(store: SqliteTrustStore) -> None:
    one = root("Many").cert
    roots = [build(f"Root {i}", key=ec.generate_private_key(ec.SECP256R1()))[0] for i in range(300)]
    assert store.upload("fleet", pem(*roots)).certificate_count == 300
    with pytest.raises(LimitError) as info:
        store.upload("fleet", pem(*roots, one))
    assert "too-many" in codes(info.value)
    assert "301 certificates" in info.value.message
    assert [v.version for v in store.versions("fleet")] == [1]


def test_small_certificate_limit(tmp_path: Path) -> None:
    with SqliteTrustStore(
        tmp_path / "small.db", clock=lambda: NOW, limits=StoreLimits(max_certificates=1)
    ) as small:
        top, inter = chain(2)
        with pytest.raises(LimitError):
            small.upload("s", pem(inter.cert, top.cert))
        assert small.list_sets() == []


def test_more_than_200_sets_is_refused(store: SqliteTrustStore) -> None:
    data = root().cert_pem
    for i in range(200):
        store.upload(f"set-{i:03d}", data)
    with pytest.raises(LimitError) as info:
        store.upload("one-too-many", data)
    assert codes(info.value) == ["too-many-sets"]
    assert "200" in info.value.findings[0].message
    assert len(store.list_sets()) == 200
    # A new version of an existing set is not a new set.
    assert store.upload("set-000", root("Another").cert_pem).version == 2


def test_oversized_upload_is_refused(tmp_path: Path) -> None:
    with SqliteTrustStore(
        tmp_path / "tiny.db", clock=lambda: NOW, limits=StoreLimits(max_upload_bytes=100)
    ) as tiny:
        with pytest.raises(LimitError) as info:
            tiny.upload("s", root().cert_pem)
        assert codes(info.value) == ["too-large"]


def test_identical_upload_is_refused_pointing_at_the_version(store: SqliteTrustStore) -> None:
    data = root().cert_pem
    store.upload("fleet", data, activate=False)
    exc = refuse(store, data)
    assert codes(exc) == ["duplicate-version"]
    assert exc.findings[0].hint == "activate it instead: 'edgesim trust activate fleet 1'"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é", "a/b"])
def test_bad_set_names_are_refused(store: SqliteTrustStore, name: str) -> None:
    with pytest.raises(RefusedError) as info:
        store.upload(name, root().cert_pem)
    assert info.value.findings[0].code == "bad-set-name"
    assert store.list_sets() == []
