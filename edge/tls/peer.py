"""The identity and event facts of a verified peer, from what OpenSSL already decoded.

After a successful handshake OpenSSL has parsed the client certificate;
``SSLObject.getpeercert()`` hands its subject, issuer, serial and dates over as a
dict (about 25 us on a fresh connection, mostly OpenSSL decoding extensions),
where parsing the DER again with ``cryptography`` and formatting both names
cost about 70 us on every accepted connection.
:func:`fast_inspect` turns that dict into exactly what
:func:`edge.identity.inspect_certificate` returns, for the common case: names
made of the attributes ``cryptography`` writes with a short name (CN, O, OU, ...)
in plain ASCII, one attribute per RDN, and the ``cn``, ``subject`` and ``sha256``
identity rules. Anything else returns ``None``, and the caller uses
:func:`~edge.identity.inspect_certificate` on the DER: the output never differs,
only the cost.

Pure: no ``ssl`` import, no I/O, nothing raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.core.session import DeviceIdentity, PeerCertificate
from edge.identity import IdentityRule, sha256_hex

__all__ = ["fast_inspect"]

# OpenSSL's long attribute names -> the short names cryptography's RFC 4514 output
# uses (cryptography.x509.name._NAMEOID_TO_NAME); other attributes fall back.
_SHORT_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
# Characters RFC 4514 escapes anywhere in a value; such values fall back.
_SPECIAL = frozenset('\\"+,;<>\0')
_MONTHS = {
    m: f"{i + 1:02d}"
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}
_FAST_RULES = (IdentityRule.CN, IdentityRule.SUBJECT, IdentityRule.SHA256)


def fast_inspect(
    decoded: Mapping[str, Any] | None, der: bytes, *, namespace: str, rule: IdentityRule
) -> tuple[DeviceIdentity, PeerCertificate] | None:
    """Return what ``inspect_certificate(der, ...)`` would, from ``getpeercert()``'s dict.

    ``None`` when the certificate is outside the common case (see the module
    docstring) or ``decoded`` is not what ``getpeercert()`` returns.
    """
    if decoded is None or rule not in _FAST_RULES:
        return None
    try:
        subject_rdns = decoded["subject"]
        subject = _rfc4514(subject_rdns)
        issuer = _rfc4514(decoded["issuer"])
        serial = _serial(decoded["serialNumber"])
        not_before = _iso_date(decoded["notBefore"])
        not_after = _iso_date(decoded["notAfter"])
    except (KeyError, TypeError, ValueError):
        return None
    if subject is None or issuer is None or serial is None:
        return None
    if not_before is None or not_after is None:
        return None
    sha256 = sha256_hex(der)
    if rule is IdentityRule.CN:
        name = next((v for ((k, v),) in subject_rdns if k == "commonName"), "")
    elif rule is IdentityRule.SUBJECT:
        name = subject
    else:
        name = sha256
    if not name:
        return None  # inspect_certificate raises IdentityError naming the certificate
    facts = PeerCertificate(
        subject=subject,
        issuer=issuer,
        serial=serial,
        sha256=sha256,
        not_before=not_before,
        not_after=not_after,
    )
    return DeviceIdentity(namespace=namespace, name=name), facts


def _rfc4514(rdns: Any) -> str | None:
    parts = []
    for rdn in rdns:
        if len(rdn) != 1:
            return None  # a multi-valued RDN: cryptography's order rules apply
        ((long_name, value),) = rdn
        short = _SHORT_NAMES.get(long_name)
        if (
            short is None
            or not isinstance(value, str)
            or not value
            or not value.isascii()
            or value[0] in "# "
            or value[-1] == " "
            or not _SPECIAL.isdisjoint(value)
        ):
            return None
        parts.append(f"{short}={value}")
    # RFC 4514 writes the last RDN first.
    parts.reverse()
    return ",".join(parts)


def _serial(text: str) -> str | None:
    # OpenSSL writes upper-case hex padded to whole bytes; cryptography lower-case, unpadded.
    if not text or text.startswith("-"):
        return None
    int(text, 16)  # ValueError: not what getpeercert() writes
    return text.lower().lstrip("0") or "0"


def _iso_date(text: str) -> str | None:
    # ASN1_TIME_print: "Nov  7 14:06:19 2026 GMT" -> "2026-11-07T14:06:19+00:00".
    # Fixed width for four-digit years without fractions of a second; anything
    # else falls back to the full parse.
    if len(text) != 24 or text[20:] != " GMT" or text[3] != " " or text[6] != " ":
        return None
    month = _MONTHS.get(text[:3])
    day = text[4:6].replace(" ", "0")
    year = text[16:20]
    if month is None or not day.isdigit() or not year.isdigit() or text[15] != " ":
        return None
    return f"{year}-{month}-{day}T{text[7:15]}+00:00"
