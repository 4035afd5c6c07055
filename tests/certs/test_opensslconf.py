"""OpenSSL config files: the parser (fed text) and init-root parity with ``openssl req -x509``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from certs.errors import ConfigError
from certs.keys import generate_key, read_private_key, write_private_key
from certs.opensslconf import (
    build_extensions,
    create_root_from_config,
    load_config,
    parse_config,
    subject_from_config,
)

from .seedconf import SEED_ROOT_CONF

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SEED = Path("/work/shared/seed/root.conf")

# A prompt-style DN with defaults, repeated fields, key usages and IP/URI SANs.
PROMPT_CONF = """\
[ req ]
distinguished_name = req_dn
x509_extensions    = v3_root
string_mask        = utf8only
default_md         = sha384

[ req_dn ]
countryName                     = Country Name (2 letter code)
countryName_default             = DE
countryName_min                 = 2
countryName_max                 = 2
0.organizationName              = Organization Name (eg, company)
0.organizationName_default      = Example GmbH
1.organizationName              = Second Organization Name
1.organizationName_default      = Example Devices
commonName                      = Common Name
commonName_default              = Example Device Root
emailAddress                    = Email Address (left empty)

[ v3_root ]
basicConstraints       = critical, CA:TRUE, pathlen:1
keyUsage               = critical, keyCertSign, cRLSign, digitalSignature
extendedKeyUsage       = serverAuth, clientAuth, 1.3.6.1.5.5.7.3.9
subjectAltName         = DNS:ca.example.com, IP:10.0.0.1, IP:::1, URI:spiffe://example/ca, email:copy
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
"""

# Multi-valued RDN, repeated OUs, variables, ENV, continuation and more extensions.
VARS_CONF = """\
dir     = /srv/ca
org     = Example Fleet
[ req ]
prompt             = no
distinguished_name = dn
x509_extensions    = ext
[ dn ]
0.DC = example
1.DC = com
O   = $org
1.OU = Devices
2.OU = "Edge #1"
CN  = ${org} Root
+UID = root-1
[ ext ]
basicConstraints      = critical,CA:true
keyUsage              = keyCertSign, \\
                        cRLSign
nsCertType            = sslCA, emailCA
nsComment             = "Generated for ${ENV::EDGESIM_TEST_OWNER}"
crlDistributionPoints = URI:http://crl.example.com/root.crl
authorityInfoAccess   = caIssuers;URI:http://ca.example.com/root.crt, OCSP;URI:http://ocsp.example.com
certificatePolicies   = 2.23.140.1.2.1, @pol
authorityKeyIdentifier = keyid,issuer
[ pol ]
policyIdentifier = 1.3.6.1.4.1.99999.1
CPS.1 = "http://ca.example.com/cps"
"""

# An EC root with name constraints and an explicit key id (a realistic private CA).
EC_CONF = """\
[req]
prompt = no
distinguished_name = dn
x509_extensions = v3
[dn]
C = US
O = Example
CN = Example EC Root
[v3]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
nameConstraints = critical, permitted;DNS:.example.com, permitted;IP:10.0.0.0/255.0.0.0, excluded;email:bad.example.com
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always, issuer
"""


# -- parser -------------------------------------------------------------------


def test_sections_comments_quotes_and_escapes() -> None:
    conf = parse_config(
        "top = 1\n[ s p ]\n".replace("s p", "sp")
        + 'a = "quoted # kept"  # comment\n'
        + "b = 'single' \"double\"\n"
        + "c = esc\\#aped\\ttab\n"
        + "d = one \\\n    two\n"
        + "e =   trailing spaces   \n"
        + "other::f = elsewhere\n",
        file="t.conf",
    )
    assert conf.get("sp", "a") == "quoted # kept"
    assert conf.get("sp", "b") == "single double"
    assert conf.get("sp", "c") == "esc#aped\ttab"
    assert conf.get("sp", "d") == "one     two"
    assert conf.get("sp", "e") == "trailing spaces"
    assert conf.get("other", "f") == "elsewhere"
    assert conf.get("sp", "top") == "1"  # falls back to the default section
    entry = conf.entry("sp", "b")
    assert entry is not None
    assert (entry.file, entry.line) == ("t.conf", 4)


def test_quoted_text_is_literal() -> None:
    # Checked against openssl req: CN = a"bnc x, O = qtz $p (no escape codes, no $).
    conf = parse_config('[s]\nq = "a\\"b\\nc" x\nr = \'q\\tz $p\'\n')
    assert conf.get("s", "q") == 'a"bnc x'
    assert conf.get("s", "r") == "qtz $p"


def test_variables() -> None:
    conf = parse_config(
        "base = /ca\n[a]\nx = 1\ny = $x-${x}-$(x)\nz = $base/$a::x/${ENV::HOME_X}\nw = 5\\$\n",
        environ={"HOME_X": "h"},
    )
    assert conf.get("a", "y") == "1-1-1"
    assert conf.get("a", "z") == "/ca/1/h"
    assert conf.get("a", "w") == "5$"


def test_repeated_name_replaces() -> None:
    conf = parse_config("[s]\na = 1\nb = 2\na = 3\n")
    assert [(e.name, e.value) for e in conf.entries("s")] == [("b", "2"), ("a", "3")]


def test_include_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "a.cnf").write_text("[x]\nfrom_dir = yes\n")
    (tmp_path / "inc" / "ignored.txt").write_text("[x]\nno = 1\n")
    (tmp_path / "one.conf").write_text("[y]\nfrom_file = yes\n")
    main = tmp_path / "main.conf"
    main.write_text(".include one.conf\n.include = inc\n.pragma dollarid:on\n[z]\nk = v\n")
    conf = load_config(main)
    assert conf.get("x", "from_dir") == "yes"
    assert conf.get("x", "no") is None
    assert conf.get("y", "from_file") == "yes"
    assert conf.get("z", "k") == "v"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[ok]\na = 1\n[broken\n", 3, "missing closing ']'"),
        ("[s]\njust words\n", 2, "expected 'name = value'"),
        ("[s]\na = $nothere\n", 2, r"variable \$nothere has no value"),
        ("[s]\na = ${ENV::EDGESIM_SURELY_UNSET}\n", 2, "has no value"),
        ('[s]\n\na = "open\n', 3, 'unterminated " quote'),
        ("[s]\na = ${x\n", 2, "unterminated variable reference"),
        ("[s]\na = cost $ 5\n", 2, r"'\$' not followed by a variable name"),
        (".include /nonexistent/edgesim.conf\n", 1, "cannot read"),
        ("[s] trailing\n", 1, "unexpected text after section header"),
    ],
)
def test_parse_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(text, file="bad.conf", environ={})
    assert info.value.file == "bad.conf"
    assert info.value.line == line
    assert str(info.value).startswith(f"bad.conf:{line}: ")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[req]\nprompt = no\n", 1, "has no distinguished_name"),
        ("[req]\nprompt = no\ndistinguished_name = dn\n", 3, r"section \[dn\].*does not exist"),
        (
            "[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nXX = y\n",
            5,
            "unknown distinguished name field 'XX'",
        ),
        ("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nC = USA\n", 5, "exactly 2 characters"),
        ("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\n", 3, "empty subject"),
    ],
)
def test_subject_errors(text: str, line: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        subject_from_config(parse_config(text, file="s.conf"))
    assert info.value.line == line


@pytest.mark.parametrize(
    ("ext", "message"),
    [
        ("basicConstraints = CA:maybe", "CA must be true or false"),
        ("basicConstraints = CA:false, pathlen:1", "pathlen is only allowed with CA:true"),
        ("keyUsage = signEverything", "unknown keyUsage 'signEverything'"),
        ("extendedKeyUsage = webAuth", "unknown extendedKeyUsage 'webAuth'"),
        (
            "subjectAltName = DNS:ok, otherName:1.2.3;UTF8:x",
            "unsupported general name type 'otherName'",
        ),
        ("subjectAltName = IP:300.1.1.1", "invalid IP name"),
        ("subjectAltName = @missing", r"section \[missing\]"),
        ("authorityKeyIdentifier = keyid:sometimes", "unknown option"),
        ("frobnicate = yes", "unsupported extension 'frobnicate'"),
        ('nsComment = "caf\u00e9"', "must be ASCII"),
    ],
)
def test_extension_errors_name_the_line(ext: str, message: str) -> None:
    text = f"[req]\nx509_extensions = e\n[e]\n{ext}\n"
    conf = parse_config(text, file="e.conf")
    ref = conf.entry("req", "x509_extensions")
    assert ref is not None
    key = generate_key()
    with pytest.raises(ConfigError, match=message) as info:
        build_extensions(conf, ref, subject=x509.Name([]), public_key=key.public_key(), serial=1)
    assert info.value.line == 4


def test_seed_without_openssl() -> None:
    key = generate_key("rsa2048")
    cert = create_root_from_config(
        parse_config(SEED_ROOT_CONF, file="root.conf"), key=key, days=1024, now=NOW
    )
    assert [a.oid for a in cert.subject] == [
        NameOID.COUNTRY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.EMAIL_ADDRESS,
        NameOID.COMMON_NAME,
    ]
    assert [e.oid for e in cert.extensions] == [
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.BASIC_CONSTRAINTS,
    ]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.authority_cert_serial_number == cert.serial_number
    assert aki.authority_cert_issuer == [x509.DirectoryName(cert.subject)]
    assert cert.not_valid_before_utc == NOW
    assert (cert.not_valid_after_utc - NOW).days == 1024


def test_unsupported_digest_names_default_md_line() -> None:
    text = SEED_ROOT_CONF.replace("default_md = sha256", "default_md = md5")
    with pytest.raises(ConfigError, match="unsupported digest 'md5'") as info:
        create_root_from_config(parse_config(text, file="r.conf"), key=generate_key(), now=NOW)
    assert info.value.line == 4


# -- parity with the openssl CLI ---------------------------------------------


def ext_view(cert: x509.Certificate) -> list[tuple[str, bool, bytes]]:
    return [(e.oid.dotted_string, e.critical, e.value.public_bytes()) for e in cert.extensions]


@pytest.mark.interop
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("name", "text", "key_type"),
    [
        ("seed", None, "rsa2048"),
        ("prompt", PROMPT_CONF, "rsa2048"),
        ("vars", VARS_CONF, "ec256"),
        ("ec", EC_CONF, "ec384"),
    ],
)
def test_init_root_matches_openssl(
    tmp_path: Path,
    openssl: OpenSSL,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    text: str | None,
    key_type: str,
) -> None:
    monkeypatch.setenv("EDGESIM_TEST_OWNER", "fleet-team")
    conf = tmp_path / f"{name}.conf"
    conf.write_text(SEED.read_text() if text is None else text)
    key_path = tmp_path / "rootCA.key"
    write_private_key(key_path, generate_key(key_type))
    theirs_path = tmp_path / "openssl.crt"
    openssl(
        "req",
        "-x509",
        "-config",
        conf,
        "-new",
        "-nodes",
        "-key",
        key_path,
        "-sha256" if name == "seed" else "-batch",
        "-days",
        "1024",
        "-out",
        theirs_path,
    )
    theirs = x509.load_pem_x509_certificate(theirs_path.read_bytes())
    key = read_private_key(key_path)
    ours = create_root_from_config(
        conf, key=key, days=1024, digest="sha256" if name == "seed" else None
    )
    assert ours.subject.public_bytes() == theirs.subject.public_bytes()
    assert ours.issuer.public_bytes() == theirs.issuer.public_bytes()
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    # The serial is random on both sides: AKI issuer+serial must name each one's own.
    for cert in (ours, theirs):
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except x509.ExtensionNotFound:
            continue
        if aki.authority_cert_serial_number is not None:
            assert aki.authority_cert_serial_number == cert.serial_number
    theirs_again = create_root_from_config(
        conf,
        key=key,
        days=1024,
        serial=theirs.serial_number,
        digest="sha256" if name == "seed" else None,
    )
    assert ext_view(theirs_again) == ext_view(theirs)
    assert (ours.not_valid_after_utc - ours.not_valid_before_utc).days == 1024
    text_out = openssl("x509", "-in", theirs_path, "-noout", "-text").stdout
    ours_path = tmp_path / "ours.crt"
    ours_path.write_bytes(ours.public_bytes(serialization.Encoding.PEM))
    assert "X509v3" in openssl("x509", "-in", ours_path, "-noout", "-text").stdout
    assert text_out


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_seed_command_with_des3_key_via_cli(
    tmp_path: Path, openssl: OpenSSL, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main

    key = tmp_path / "rootCA.key"
    openssl("genrsa", "-des3", "-passout", "pass:rootpw", "-out", key, "2048")
    pw = tmp_path / "pw"
    pw.write_text("rootpw\n")
    code = main(
        [
            "pki",
            "init-root",
            "--config",
            str(SEED),
            "--key",
            str(key),
            "--passphrase-file",
            str(pw),
            "--days",
            "1024",
            "--digest",
            "sha256",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    crt = tmp_path / "out" / "rootCA.crt"
    verified = openssl("verify", "-CAfile", crt, crt)
    assert verified.stdout.strip().endswith("OK")
    text = openssl("x509", "-in", crt, "-noout", "-subject").stdout
    assert "emailAddress = test@email.com" in text
    code = main(
        ["pki", "init-root", "--config", str(SEED), "--key", str(key), "--out", str(tmp_path)]
    )
    assert code == 1
    assert "rootCA.key: private key is encrypted" in capsys.readouterr().err


def test_inspect_names_netscape_extensions() -> None:
    from certs.inspect import describe_certificate

    conf = parse_config(VARS_CONF, file="vars.conf", environ={"EDGESIM_TEST_OWNER": "ops"})
    cert = create_root_from_config(conf, key=generate_key(), now=NOW)
    exts = {e["name"]: e["value"] for e in describe_certificate(cert)["extensions"]}
    # Inside quotes OpenSSL expands nothing (the openssl parity test pins this down).
    assert exts["nsComment"] == "Generated for ${ENV::EDGESIM_TEST_OWNER}"
    assert exts["nsCertType"] == "DER:03020106"
    assert exts["cRLDistributionPoints"] == "URI:http://crl.example.com/root.crl"
    # A multi-valued RDN is a DER SET: its members come out sorted, as OpenSSL writes them.
    assert describe_certificate(cert)["subject"] == (
        "DC=example, DC=com, O=Example Fleet, OU=Devices, OU=Edge #1, UID=root-1 + CN=Example Fleet Root"
    )
