"""Distinguished names: OpenSSL field names to OIDs, and building :class:`x509.Name`.

OpenSSL spells DN attributes by short name (``C``, ``ST``, ``CN``) or long name
(``commonName``, ``emailAddress``); both are accepted here, case-sensitively for
short names as OpenSSL does. String types follow OpenSSL 3's defaults
(``string_mask = utf8only``): PrintableString for ``C``/``serialNumber``/
``dnQualifier``, IA5String for ``emailAddress``/``DC``, UTF8String otherwise —
which is also ``cryptography``'s default, so subjects are byte-identical.

Errors: :class:`~certs.errors.IssueError` for unknown fields or bad subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from certs.errors import IssueError

__all__ = [
    "FIELD_OIDS",
    "build_name",
    "display_name",
    "field_oid",
    "parse_subject",
]

#: OpenSSL short and long names of DN attributes.
FIELD_OIDS: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "countryName": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "stateOrProvinceName": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "localityName": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "organizationName": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "commonName": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "domainComponent": NameOID.DOMAIN_COMPONENT,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "surname": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "givenName": NameOID.GIVEN_NAME,
    "title": NameOID.TITLE,
    "initials": NameOID.INITIALS,
    "pseudonym": NameOID.PSEUDONYM,
    "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
    "UID": NameOID.USER_ID,
    "userId": NameOID.USER_ID,
    "street": NameOID.STREET_ADDRESS,
    "streetAddress": NameOID.STREET_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
    "businessCategory": NameOID.BUSINESS_CATEGORY,
    "jurisdictionC": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionST": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "jurisdictionL": NameOID.JURISDICTION_LOCALITY_NAME,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
    "name": ObjectIdentifier("2.5.4.41"),
    "description": ObjectIdentifier("2.5.4.13"),
    "postalAddress": ObjectIdentifier("2.5.4.16"),
    "unstructuredName": NameOID.UNSTRUCTURED_NAME,
}


_SHORT_NAMES: dict[ObjectIdentifier, str] = {}
for _name, _oid in FIELD_OIDS.items():
    # The first spelling listed (the short one where OpenSSL has one) wins.
    _SHORT_NAMES.setdefault(_oid, _name)


def display_name(name: x509.Name) -> str:
    """``name`` the way ``openssl x509 -subject`` prints it: most significant first.

    ``C=US, O=Org, emailAddress=a@b, CN=x``; multi-valued RDNs are joined with ``+``.
    """
    rdns = []
    for rdn in name.rdns:
        rdns.append(
            " + ".join(f"{_SHORT_NAMES.get(a.oid, a.oid.dotted_string)}={a.value!s}" for a in rdn)
        )
    return ", ".join(rdns)


def field_oid(field: str) -> ObjectIdentifier:
    """The OID of an OpenSSL DN field name (short, long, or a dotted OID)."""
    oid = FIELD_OIDS.get(field)
    if oid is not None:
        return oid
    if field and all(part.isdigit() for part in field.split(".")) and "." in field:
        return ObjectIdentifier(field)
    raise IssueError(f"unknown distinguished name field {field!r}")


def build_name(rdns: Sequence[Sequence[tuple[str, str]]]) -> x509.Name:
    """Build a name from RDNs, each a list of ``(field, value)`` (several = multi-valued).

    Order is kept exactly as given (the first RDN is the most significant, as
    OpenSSL prints it). A ``C`` value must be two letters.
    """
    built: list[x509.RelativeDistinguishedName] = []
    for rdn in rdns:
        attrs: list[x509.NameAttribute[str]] = []
        for field, value in rdn:
            oid = field_oid(field)
            if oid == NameOID.COUNTRY_NAME and len(value) != 2:
                raise IssueError(f"country name {field}={value!r} must be exactly 2 letters")
            try:
                attrs.append(x509.NameAttribute(oid, value))
            except ValueError as exc:
                raise IssueError(f"invalid name attribute {field}={value!r}: {exc}") from exc
        if attrs:
            built.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(built)


def parse_subject(text: str) -> x509.Name:
    """Parse an OpenSSL ``-subj`` style subject: ``/C=US/O=Org/CN=name``.

    ``+`` joins attributes into one multi-valued RDN; ``\\/`` and ``\\+`` escape.
    A string without a leading slash is read as comma-separated ``CN=x,O=y``
    in the same most-significant-first order.
    """
    text = text.strip()
    if not text:
        raise IssueError("empty subject")
    sep = "/" if text.startswith("/") else ","
    body = text[1:] if sep == "/" else text
    rdns: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    token = ""
    escaped = False
    parts: list[tuple[str, str]] = []  # (token, terminator)
    for ch in body:
        if escaped:
            token += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in (sep, "+"):
            parts.append((token, ch))
            token = ""
        else:
            token += ch
    parts.append((token, sep))
    for token, terminator in parts:
        if "=" not in token:
            raise IssueError(f"subject component {token!r} in {text!r} lacks '='")
        field, value = token.split("=", 1)
        current.append((field.strip(), value.strip() if sep == "," else value))
        if terminator == sep:
            rdns.append(current)
            current = []
    return build_name(rdns)
