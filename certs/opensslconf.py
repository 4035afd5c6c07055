"""OpenSSL configuration files, and ``openssl req -x509 -config`` in Python.

Two layers. :func:`parse_config` is a pure parser (text in, :class:`OpenSSLConfig`
out) for the syntax of OpenSSL's ``NCONF``: ``[ section ]`` headers (spaces
allowed), ``#`` comments, ``name = value``, single and double quotes (their
content is literal: no comments, no expansion; ``\\x`` keeps ``x``),
backslash escapes (``\\n``, ``\\t``, ``\\#``, ``\\$``...) and line
continuation, ``$var`` / ``${var}`` / ``$section::var`` / ``${ENV::NAME}``
expansion, ``section::name = value``,
``.include`` (file or directory) and ``.pragma`` (accepted, ignored).
Keys before the first section live in section ``default``, which ``$var``
falls back to. As in OpenSSL, repeating a name in a section replaces it.

On top of it, :func:`create_root_from_config` builds the self-signed
certificate ``openssl req -x509 -config FILE -new -key KEY`` builds with
OpenSSL 3.0, verified against the ``openssl`` CLI:

- the subject comes from ``distinguished_name``: with ``prompt = no`` each
  entry is a value; otherwise entries are prompts and ``field_default``
  supplies the value (what ``-batch`` does). ``N.field`` allows repeats, a
  leading ``+`` joins the previous RDN (multi-valued), order is kept;
- extensions come from ``x509_extensions`` only (``req_extensions`` is for
  CSRs and is ignored by ``-x509``), in file order; when a section is used and
  has no ``subjectKeyIdentifier``, ``hash`` is appended, as OpenSSL does;
- for a self-signed certificate ``authorityKeyIdentifier=keyid`` is omitted
  unless ``keyid:always``; ``issuer`` is added with ``issuer:always`` or when
  no key id is;
- the digest is the ``digest`` argument (``-sha256``), else ``default_md``.

Known differences: without any ``x509_extensions`` OpenSSL writes an X.509 v1
certificate; ``cryptography`` always writes v3 (with no extensions). DN
strings follow ``string_mask = utf8only`` (OpenSSL 3's default: UTF8String,
PrintableString for ``C``, IA5String for ``emailAddress``); older masks such
as ``nombstr`` are not reproduced. ``otherName`` SANs and ``ASN1:``/``DER:``
raw extensions are refused with a clear error.

Errors: every problem raises :class:`~certs.errors.ConfigError` with the file
and line (the line of the entry at fault, or of the reference to a missing
section).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier

from certs.errors import ConfigError, IssueError
from certs.keys import PrivateKey
from certs.names import field_oid

__all__ = [
    "ConfEntry",
    "OpenSSLConfig",
    "build_extensions",
    "create_root_from_config",
    "load_config",
    "parse_config",
    "subject_from_config",
]

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.;!,:\-+/@* ]+")
_VAR_CHARS = re.compile(r"[A-Za-z0-9_]+")
_ESCAPES = {"n": "\n", "r": "\r", "b": "\b", "t": "\t"}


@dataclass(frozen=True)
class ConfEntry:
    """One ``name = value`` entry with where it was written."""

    name: str
    value: str
    file: str
    line: int


@dataclass
class OpenSSLConfig:
    """A parsed configuration: ordered sections of :class:`ConfEntry`."""

    file: str
    sections: dict[str, list[ConfEntry]] = field(default_factory=dict)
    section_lines: dict[str, int] = field(default_factory=dict)

    def has_section(self, name: str) -> bool:
        """Whether section ``name`` exists."""
        return name in self.sections

    def entries(self, section: str) -> list[ConfEntry]:
        """The entries of ``section`` in file order (empty if absent)."""
        return list(self.sections.get(section, []))

    def entry(self, section: str, name: str) -> ConfEntry | None:
        """The entry ``name`` of ``section``, or ``None``."""
        for item in self.sections.get(section, []):
            if item.name == name:
                return item
        return None

    def get(self, section: str, name: str, default: str | None = None) -> str | None:
        """The value of ``name`` in ``section``, else in ``default``, else ``default``."""
        item = self.entry(section, name) or self.entry("default", name)
        return item.value if item is not None else default

    def require_section(self, name: str, referenced_by: ConfEntry | None) -> list[ConfEntry]:
        """The entries of ``name``; a :class:`ConfigError` at the reference if missing."""
        if name not in self.sections:
            where = referenced_by or ConfEntry("", "", self.file, 0)
            raise ConfigError(
                f"section [{name}] (referenced by {where.name!r}) does not exist",
                file=where.file,
                line=where.line or None,
            )
        return self.entries(name)

    def _add(self, section: str, entry: ConfEntry) -> None:
        items = self.sections.setdefault(section, [])
        # OpenSSL keeps one value per name: a repeat replaces (and moves to the end).
        items[:] = [e for e in items if e.name != entry.name]
        items.append(entry)


# -- parsing ------------------------------------------------------------------


class _Parser:
    def __init__(
        self, config: OpenSSLConfig, environ: Mapping[str, str], base_dir: Path | None
    ) -> None:
        self.config = config
        self.environ = environ
        self.base_dir = base_dir
        self.depth = 0

    def parse(self, text: str, file: str) -> None:
        section = "default"
        self.config.sections.setdefault("default", [])
        lines = text.splitlines()
        index = 0
        while index < len(lines):
            start = index + 1
            raw = lines[index]
            index += 1
            # A trailing unescaped backslash continues the line.
            while _continues(raw) and index < len(lines):
                raw = raw[:-1] + lines[index]
                index += 1
            if _continues(raw):
                raw = raw[:-1]
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("["):
                section = self._section(stripped, file, start)
                continue
            if stripped.startswith(".") and self._directive(stripped, file, start):
                continue
            self._assignment(stripped, section, file, start)

    def _section(self, text: str, file: str, line: int) -> str:
        close = text.find("]")
        if close < 0:
            raise ConfigError("missing closing ']' in section header", file=file, line=line)
        name = text[1:close].strip()
        rest = text[close + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(
                f"unexpected text after section header: {rest!r}", file=file, line=line
            )
        if not name or not _VAR_CHARS.fullmatch(
            name.replace(".", "_").replace("-", "_").replace(" ", "_")
        ):
            raise ConfigError(f"invalid section name {name!r}", file=file, line=line)
        self.config.sections.setdefault(name, [])
        self.config.section_lines.setdefault(name, line)
        return name

    def _directive(self, text: str, file: str, line: int) -> bool:
        match = re.match(r"\.(include|pragma)\b\s*(=\s*)?(.*)$", text)
        if match is None:
            return False
        if match.group(1) == "pragma":
            return True
        target = _strip_comment(match.group(3)).strip().strip("\"'")
        if not target:
            raise ConfigError(".include without a path", file=file, line=line)
        self._include(target, file, line)
        return True

    def _include(self, target: str, file: str, line: int) -> None:
        path = Path(os.path.expandvars(target))
        if not path.is_absolute():
            candidates = [Path(file).parent / path] if file != "<string>" else []
            if self.base_dir is not None:
                candidates.append(self.base_dir / path)
            candidates.append(path)
            path = next((p for p in candidates if p.exists()), candidates[0])
        if self.depth > 10:
            raise ConfigError(
                f".include {target}: includes nested too deeply", file=file, line=line
            )
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in (".cnf", ".conf") and p.is_file()
            )
        else:
            files = [path]
        for item in files:
            try:
                text = item.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f".include {target}: cannot read {item}: {exc.strerror or exc}",
                    file=file,
                    line=line,
                ) from exc
            self.depth += 1
            try:
                self.parse(text, str(item))
            finally:
                self.depth -= 1

    def _assignment(self, text: str, section: str, file: str, line: int) -> None:
        eq = _find_unquoted(text, "=")
        if eq < 0:
            raise ConfigError(
                f"expected 'name = value' or '[section]', got {text!r}", file=file, line=line
            )
        name = text[:eq].strip()
        if not name or not _NAME_CHARS.fullmatch(name):
            raise ConfigError(f"invalid name {name!r}", file=file, line=line)
        target = section
        if "::" in name:
            target, name = (part.strip() for part in name.split("::", 1))
        value = self._value(text[eq + 1 :], section, file, line)
        self.config._add(target, ConfEntry(name, value, file, line))

    def _value(self, text: str, section: str, file: str, line: int) -> str:
        out: list[str] = []
        # Unquoted trailing whitespace is dropped; quoted whitespace is kept.
        keep = 0
        i = 0
        text = text.lstrip()
        while i < len(text):
            ch = text[i]
            if ch == "#":
                break
            if ch in "\"'":
                end = i + 1
                piece: list[str] = []
                while end < len(text) and text[end] != ch:
                    # Inside quotes a backslash keeps the next character as is (no \n),
                    # and nothing else is special: no comments, no $ expansion.
                    if text[end] == "\\" and end + 1 < len(text):
                        end += 1
                    piece.append(text[end])
                    end += 1
                if end >= len(text):
                    raise ConfigError(f"unterminated {ch} quote", file=file, line=line)
                out.extend(piece)
                keep = len(out)
                i = end + 1
                continue
            if ch == "\\" and i + 1 < len(text):
                out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                keep = len(out)
                i += 2
                continue
            if ch == "$":
                value, i = self._expand(text, i, section, file, line)
                out.append(value)
                keep = len(out)
                continue
            out.append(ch)
            if not ch.isspace():
                keep = len(out)
            i += 1
        return "".join(out[:keep])

    def _expand(self, text: str, i: int, section: str, file: str, line: int) -> tuple[str, int]:
        j = i + 1
        closer = {"{": "}", "(": ")"}.get(text[j : j + 1])
        if closer:
            end = text.find(closer, j + 1)
            if end < 0:
                raise ConfigError(
                    f"unterminated variable reference {text[i:]!r}", file=file, line=line
                )
            ref = text[j + 1 : end]
            nxt = end + 1
        else:
            match = re.match(r"[A-Za-z0-9_]+(::[A-Za-z0-9_]+)?", text[j:])
            if match is None:
                raise ConfigError(
                    f"'$' not followed by a variable name in {text.strip()!r} (escape it as \\$)",
                    file=file,
                    line=line,
                )
            ref = match.group(0)
            nxt = j + match.end()
        sect, _, name = ref.rpartition("::")
        if sect == "ENV":
            if name in self.environ:
                return self.environ[name], nxt
        else:
            value = self.config.get(sect or section, name)
            if value is not None:
                return value, nxt
        raise ConfigError(f"variable ${ref} has no value", file=file, line=line)


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _find_unquoted(text: str, char: str) -> int:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == char:
            return i
    return -1


def _strip_comment(text: str) -> str:
    index = text.find("#")
    return text if index < 0 else text[:index]


def parse_config(
    text: str,
    *,
    file: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> OpenSSLConfig:
    """Parse OpenSSL configuration ``text`` (``file`` names it in errors).

    ``environ`` serves ``${ENV::NAME}`` (default: :data:`os.environ`);
    relative ``.include`` paths are tried next to ``file``, in ``base_dir``,
    then relative to the working directory.
    """
    config = OpenSSLConfig(file=file)
    _Parser(config, os.environ if environ is None else environ, base_dir).parse(text, file)
    return config


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> OpenSSLConfig:
    """Read and parse the configuration file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read configuration: {reason}", file=str(path)) from exc
    return parse_config(text, file=str(path), environ=environ)


# -- the subject --------------------------------------------------------------

_PROMPT_SUFFIXES = ("_default", "_min", "_max", "_value")


def _req_entry(config: OpenSSLConfig, name: str) -> ConfEntry | None:
    return config.entry("req", name) or config.entry("default", name)


def _dn_field(name: str) -> str:
    """``N.field``, ``N:field``, ``N,field`` allow repeats: OpenSSL skips past the first separator."""
    match = re.search(r"[.:,]", name)
    if match is None or match.end() == len(name):
        return name
    return name[match.end() :]


def subject_from_config(config: OpenSSLConfig) -> x509.Name:
    """The subject ``openssl req -batch`` builds from ``[req] distinguished_name``."""
    ref = _req_entry(config, "distinguished_name")
    if ref is None:
        raise ConfigError(
            "[req] has no distinguished_name (needed for the subject)",
            file=config.file,
            line=config.section_lines.get("req"),
        )
    entries = config.require_section(ref.value, ref)
    prompt_entry = _req_entry(config, "prompt")
    prompting = prompt_entry is None or prompt_entry.value.strip().lower() != "no"
    by_name = {e.name: e for e in entries}
    rdns: list[list[tuple[ObjectIdentifier, str, ConfEntry]]] = []
    for entry in entries:
        name = entry.name
        if prompting:
            if name.endswith(_PROMPT_SUFFIXES):
                continue
            default = by_name.get(name + "_default")
            if default is None or not default.value:
                continue  # -batch: a prompt without default is left empty
            value, source = default.value, default
        else:
            value, source = entry.value, entry
        join = name.startswith("+")
        base = _dn_field(name.lstrip("+"))
        if not value:
            continue
        try:
            oid = field_oid(base)
        except IssueError as exc:
            raise ConfigError(str(exc), file=source.file, line=source.line) from exc
        if oid == NameOID.COUNTRY_NAME and len(value) != 2:
            raise ConfigError(
                f"countryName {value!r} must be exactly 2 characters",
                file=source.file,
                line=source.line,
            )
        if join and rdns:
            rdns[-1].append((oid, value, source))
        else:
            rdns.append([(oid, value, source)])
    if not rdns:
        raise ConfigError(
            f"distinguished name section [{ref.value}] yields an empty subject",
            file=ref.file,
            line=ref.line,
        )
    built = []
    for rdn in rdns:
        attrs = []
        for oid, value, source in rdn:
            try:
                attrs.append(x509.NameAttribute(oid, value))
            except ValueError as exc:
                raise ConfigError(str(exc), file=source.file, line=source.line) from exc
        built.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(built)


# -- extensions ---------------------------------------------------------------

_KEY_USAGE_FLAGS = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}
_NS_CERT_TYPE_BITS = {
    "client": 0,
    "server": 1,
    "email": 2,
    "objsign": 3,
    "reserved": 4,
    "sslCA": 5,
    "emailCA": 6,
    "objCA": 7,
}
_TRUE = {"true", "y", "yes"}
_FALSE = {"false", "n", "no"}


@dataclass(frozen=True)
class _Ctx:
    config: OpenSSLConfig
    entry: ConfEntry
    subject: x509.Name
    public_key: object
    serial: int

    def error(self, message: str) -> ConfigError:
        return ConfigError(
            f"{self.entry.name}: {message}", file=self.entry.file, line=self.entry.line
        )


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _critical(value: str) -> tuple[bool, str]:
    parts = _split_list(value)
    if parts and parts[0].lower() == "critical":
        return True, ",".join(parts[1:])
    return False, value


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _ia5_der(text: str) -> bytes:
    data = text.encode("ascii")
    return b"\x16" + _der_length(len(data)) + data


def _bitstring_der(bits: set[int]) -> bytes:
    if not bits:
        return b"\x03\x01\x00"
    top = max(bits)
    nbytes = top // 8 + 1
    value = 0
    for bit in bits:
        value |= 1 << (nbytes * 8 - 1 - bit)
    unused = nbytes * 8 - 1 - top
    return b"\x03" + _der_length(nbytes + 1) + bytes([unused]) + value.to_bytes(nbytes, "big")


def _basic_constraints(ctx: _Ctx, value: str) -> x509.ExtensionType:
    ca = False
    path_length: int | None = None
    for part in _split_list(value):
        key, _, val = part.partition(":")
        key = key.strip()
        val = val.strip()
        if key.upper() == "CA":
            low = val.lower()
            if low not in _TRUE | _FALSE:
                raise ctx.error(f"CA must be true or false, got {val!r}")
            ca = low in _TRUE
        elif key.lower() == "pathlen":
            if not val.isdigit():
                raise ctx.error(f"pathlen must be a number, got {val!r}")
            path_length = int(val)
        else:
            raise ctx.error(f"unknown basicConstraints item {part!r} (use CA:true, pathlen:N)")
    if path_length is not None and not ca:
        raise ctx.error("pathlen is only allowed with CA:true")
    return x509.BasicConstraints(ca=ca, path_length=path_length)


def _key_usage(ctx: _Ctx, value: str) -> x509.ExtensionType:
    flags = dict.fromkeys(set(_KEY_USAGE_FLAGS.values()), False)
    for part in _split_list(value):
        attr = _KEY_USAGE_FLAGS.get(part)
        if attr is None:
            raise ctx.error(f"unknown keyUsage {part!r}; known: {', '.join(_KEY_USAGE_FLAGS)}")
        flags[attr] = True
    try:
        return x509.KeyUsage(**flags)
    except ValueError as exc:
        raise ctx.error(str(exc)) from exc


def _ext_key_usage(ctx: _Ctx, value: str) -> x509.ExtensionType:
    from certs.authority import EKU_NAMES

    oids = []
    for part in _split_list(value):
        if part in EKU_NAMES:
            oids.append(EKU_NAMES[part])
        elif re.fullmatch(r"\d+(\.\d+)+", part):
            oids.append(ObjectIdentifier(part))
        else:
            raise ctx.error(f"unknown extendedKeyUsage {part!r}; known: {', '.join(EKU_NAMES)}")
    return x509.ExtendedKeyUsage(oids)


def _general_names(ctx: _Ctx, value: str, allow_copy: bool = True) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for part in _split_list(value):
        if part.startswith("@"):
            sect = part[1:].strip()
            for entry in ctx.config.require_section(sect, ctx.entry):
                kind = re.split(r"[.:,]", entry.name)[0]
                sub = _Ctx(ctx.config, entry, ctx.subject, ctx.public_key, ctx.serial)
                names.extend(_general_name(sub, kind, entry.value, allow_copy))
            continue
        kind, sep, val = part.partition(":")
        if not sep:
            raise ctx.error(f"general name {part!r} lacks a type (DNS:, IP:, URI:, email:, RID:)")
        names.extend(_general_name(ctx, kind.strip(), val.strip(), allow_copy))
    return names


def _general_name(ctx: _Ctx, kind: str, value: str, allow_copy: bool) -> list[x509.GeneralName]:
    try:
        if kind == "DNS":
            return [x509.DNSName(value)]
        if kind == "IP":
            return [x509.IPAddress(ipaddress.ip_address(value))]
        if kind == "URI":
            return [x509.UniformResourceIdentifier(value)]
        if kind == "email":
            if value in ("copy", "move") and allow_copy:
                emails = ctx.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
                return [x509.RFC822Name(str(a.value)) for a in emails]
            return [x509.RFC822Name(value)]
        if kind == "RID":
            return [x509.RegisteredID(ObjectIdentifier(value))]
        if kind == "dirName":
            sect_entry = ConfEntry(ctx.entry.name, value, ctx.entry.file, ctx.entry.line)
            entries = ctx.config.require_section(value, sect_entry)
            rdns = []
            for entry in entries:
                base = _dn_field(entry.name.lstrip("+"))
                rdns.append(
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(field_oid(base), entry.value)]
                    )
                )
            return [x509.DirectoryName(x509.Name(rdns))]
    except (ValueError, IssueError) as exc:
        raise ctx.error(f"invalid {kind} name {value!r}: {exc}") from exc
    raise ctx.error(
        f"unsupported general name type {kind!r} (supported: DNS, IP, URI, email, RID, dirName)"
    )


def _subject_alt_name(ctx: _Ctx, value: str) -> x509.ExtensionType:
    names = _general_names(ctx, value)
    if not names:
        raise ctx.error("no names given")
    return x509.SubjectAlternativeName(names)


def _issuer_alt_name(ctx: _Ctx, value: str) -> x509.ExtensionType:
    parts = [p for p in _split_list(value) if p != "issuer:copy"]
    return x509.IssuerAlternativeName(_general_names(ctx, ",".join(parts)))


def _ski(ctx: _Ctx, value: str) -> x509.ExtensionType | None:
    if value.strip() == "none":
        return None
    if value.strip() == "hash":
        return x509.SubjectKeyIdentifier.from_public_key(ctx.public_key)  # type: ignore[arg-type]
    try:
        return x509.SubjectKeyIdentifier(bytes.fromhex(value.replace(":", "")))
    except ValueError as exc:
        raise ctx.error(f"expected hash, none or hex bytes, got {value!r}") from exc


def _aki(ctx: _Ctx, value: str) -> x509.ExtensionType | None:
    want_keyid = want_issuer = 0  # 0: no, 1: if useful, 2: always
    for part in _split_list(value):
        key, _, opt = part.partition(":")
        level = 2 if opt.strip() == "always" else 1
        if opt and opt.strip() not in ("always", "nonss"):
            raise ctx.error(f"unknown option {part!r}")
        if key.strip() == "keyid":
            want_keyid = level
        elif key.strip() == "issuer":
            want_issuer = level
        elif part.strip() == "none":
            return None
        else:
            raise ctx.error(f"unknown authorityKeyIdentifier item {part!r} (keyid, issuer)")
    # Self-signed (all req -x509 makes): OpenSSL 3.0 omits the key id unless "always",
    # and adds issuer+serial when "always" or when no key id went in.
    key_id = (
        x509.SubjectKeyIdentifier.from_public_key(ctx.public_key).digest  # type: ignore[arg-type]
        if want_keyid == 2
        else None
    )
    with_issuer = want_issuer == 2 or (want_issuer == 1 and key_id is None)
    if key_id is None and not with_issuer:
        return None
    return x509.AuthorityKeyIdentifier(
        key_identifier=key_id,
        authority_cert_issuer=[x509.DirectoryName(ctx.subject)] if with_issuer else None,
        authority_cert_serial_number=ctx.serial if with_issuer else None,
    )


def _ns_comment(ctx: _Ctx, value: str) -> x509.ExtensionType:
    try:
        return x509.UnrecognizedExtension(
            ObjectIdentifier("2.16.840.1.113730.1.13"), _ia5_der(value)
        )
    except UnicodeEncodeError as exc:
        raise ctx.error("nsComment must be ASCII (IA5String)") from exc


def _ns_cert_type(ctx: _Ctx, value: str) -> x509.ExtensionType:
    bits = set()
    for part in _split_list(value):
        if part not in _NS_CERT_TYPE_BITS:
            raise ctx.error(f"unknown nsCertType {part!r}; known: {', '.join(_NS_CERT_TYPE_BITS)}")
        bits.add(_NS_CERT_TYPE_BITS[part])
    return x509.UnrecognizedExtension(
        ObjectIdentifier("2.16.840.1.113730.1.1"), _bitstring_der(bits)
    )


def _crl_dp(ctx: _Ctx, value: str) -> x509.ExtensionType:
    points = []
    for name in _general_names(ctx, value, allow_copy=False):
        points.append(x509.DistributionPoint([name], None, None, None))
    return x509.CRLDistributionPoints(points)


def _aia(ctx: _Ctx, value: str) -> x509.ExtensionType:
    methods = {
        "OCSP": x509.oid.AuthorityInformationAccessOID.OCSP,
        "caIssuers": x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
    }
    descriptions = []
    for part in _split_list(value):
        method, sep, name = part.partition(";")
        if not sep or method.strip() not in methods:
            raise ctx.error(f"expected OCSP;URI:... or caIssuers;URI:..., got {part!r}")
        for general in _general_names(ctx, name.strip(), allow_copy=False):
            descriptions.append(x509.AccessDescription(methods[method.strip()], general))
    return x509.AuthorityInformationAccess(descriptions)


def _policies(ctx: _Ctx, value: str) -> x509.ExtensionType:
    infos = []
    for part in _split_list(value):
        if part.startswith("@"):
            entries = ctx.config.require_section(part[1:], ctx.entry)
            oid = next((e.value for e in entries if e.name == "policyIdentifier"), None)
            if oid is None:
                raise ctx.error(f"policy section [{part[1:]}] has no policyIdentifier")
            cps: list[str | x509.UserNotice] = [
                e.value for e in entries if e.name.startswith("CPS")
            ]
            infos.append(x509.PolicyInformation(_oid(ctx, oid), cps or None))
        elif part != "ia5org":
            infos.append(x509.PolicyInformation(_oid(ctx, part), None))
    return x509.CertificatePolicies(infos)


def _oid(ctx: _Ctx, text: str) -> ObjectIdentifier:
    named = {"anyPolicy": "2.5.29.32.0"}
    text = named.get(text, text)
    if not re.fullmatch(r"\d+(\.\d+)+", text):
        raise ctx.error(f"expected a dotted OID, got {text!r}")
    return ObjectIdentifier(text)


def _int_items(ctx: _Ctx, value: str, allowed: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for part in _split_list(value):
        key, _, val = part.partition(":")
        if key.strip() not in allowed or not val.strip().isdigit():
            raise ctx.error(f"expected {' / '.join(a + ':N' for a in allowed)}, got {part!r}")
        out[key.strip()] = int(val)
    return out


def _policy_constraints(ctx: _Ctx, value: str) -> x509.ExtensionType:
    items = _int_items(ctx, value, ("requireExplicitPolicy", "inhibitPolicyMapping"))
    return x509.PolicyConstraints(
        items.get("requireExplicitPolicy"), items.get("inhibitPolicyMapping")
    )


def _inhibit_any(ctx: _Ctx, value: str) -> x509.ExtensionType:
    if not value.strip().isdigit():
        raise ctx.error(f"expected a number, got {value!r}")
    return x509.InhibitAnyPolicy(int(value))


def _name_constraints(ctx: _Ctx, value: str) -> x509.ExtensionType:
    permitted: list[x509.GeneralName] = []
    excluded: list[x509.GeneralName] = []
    for part in _split_list(value):
        which, sep, name = part.partition(";")
        if not sep or which.strip() not in ("permitted", "excluded"):
            raise ctx.error(f"expected permitted;TYPE:value or excluded;TYPE:value, got {part!r}")
        kind, _, val = name.partition(":")
        target = permitted if which.strip() == "permitted" else excluded
        if kind.strip() == "IP":
            address, _, mask = val.strip().partition("/")
            try:
                network = ipaddress.ip_network(f"{address}/{mask}", strict=True)
            except ValueError as exc:
                raise ctx.error(f"invalid IP constraint {val!r}: {exc}") from exc
            target.append(x509.IPAddress(network))
        else:
            target.extend(_general_name(ctx, kind.strip(), val.strip(), allow_copy=False))
    return x509.NameConstraints(permitted or None, excluded or None)


_HANDLERS: dict[str, tuple[ObjectIdentifier, Callable[[_Ctx, str], x509.ExtensionType | None]]] = {
    "basicConstraints": (ExtensionOID.BASIC_CONSTRAINTS, _basic_constraints),
    "keyUsage": (ExtensionOID.KEY_USAGE, _key_usage),
    "extendedKeyUsage": (ExtensionOID.EXTENDED_KEY_USAGE, _ext_key_usage),
    "subjectAltName": (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, _subject_alt_name),
    "issuerAltName": (ExtensionOID.ISSUER_ALTERNATIVE_NAME, _issuer_alt_name),
    "subjectKeyIdentifier": (ExtensionOID.SUBJECT_KEY_IDENTIFIER, _ski),
    "authorityKeyIdentifier": (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, _aki),
    "nsComment": (ObjectIdentifier("2.16.840.1.113730.1.13"), _ns_comment),
    "nsCertType": (ObjectIdentifier("2.16.840.1.113730.1.1"), _ns_cert_type),
    "crlDistributionPoints": (ExtensionOID.CRL_DISTRIBUTION_POINTS, _crl_dp),
    "authorityInfoAccess": (ExtensionOID.AUTHORITY_INFORMATION_ACCESS, _aia),
    "certificatePolicies": (ExtensionOID.CERTIFICATE_POLICIES, _policies),
    "policyConstraints": (ExtensionOID.POLICY_CONSTRAINTS, _policy_constraints),
    "inhibitAnyPolicy": (ExtensionOID.INHIBIT_ANY_POLICY, _inhibit_any),
    "nameConstraints": (ExtensionOID.NAME_CONSTRAINTS, _name_constraints),
}


def build_extensions(
    config: OpenSSLConfig,
    section_ref: ConfEntry,
    *,
    subject: x509.Name,
    public_key: object,
    serial: int,
) -> list[x509.Extension[x509.ExtensionType]]:
    """The extensions of the section named by ``section_ref``, as OpenSSL 3.0 adds them.

    Self-signed semantics (see the module docstring), file order, and an
    appended ``subjectKeyIdentifier=hash`` when the section names none.
    """
    extensions: list[x509.Extension[x509.ExtensionType]] = []
    saw_ski = False
    for entry in config.require_section(section_ref.value, section_ref):
        handler = _HANDLERS.get(entry.name)
        if handler is None:
            raise ConfigError(
                f"unsupported extension {entry.name!r} (supported: {', '.join(_HANDLERS)})",
                file=entry.file,
                line=entry.line,
            )
        oid, build = handler
        critical, value = _critical(entry.value)
        ctx = _Ctx(config, entry, subject, public_key, serial)
        if oid == ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            saw_ski = True
        if any(ext.oid == oid for ext in extensions):
            raise ctx.error("extension given twice")
        ext_value = build(ctx, value)
        if ext_value is not None:
            extensions.append(x509.Extension(oid, critical, ext_value))
    if not saw_ski:
        extensions.append(
            x509.Extension(
                ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                False,
                x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            )
        )
    return extensions


# -- openssl req -x509 --------------------------------------------------------

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3-224": hashes.SHA3_224,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}


def _digest(name: str, where: ConfEntry | None, file: str) -> hashes.HashAlgorithm:
    key = name.strip().lower().lstrip("-")
    if key == "default":
        key = "sha256"
    algorithm = _DIGESTS.get(key)
    if algorithm is None:
        raise ConfigError(
            f"unsupported digest {name!r} (supported: {', '.join(_DIGESTS)})",
            file=where.file if where else file,
            line=where.line if where else None,
        )
    return algorithm()


def create_root_from_config(
    config_path: Path | str | OpenSSLConfig,
    *,
    key: PrivateKey,
    days: int = 30,
    now: datetime | None = None,
    digest: str | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """What ``openssl req -x509 -config FILE -new -key KEY [-DIGEST] [-days N]`` builds.

    ``digest`` is the command-line digest (e.g. ``"sha256"``), which wins over
    ``default_md``; ``days`` defaults to OpenSSL's 30. For Ed25519 keys no
    digest applies.
    """
    from certs.authority import random_serial

    config = config_path if isinstance(config_path, OpenSSLConfig) else load_config(config_path)
    subject = subject_from_config(config)
    serial = serial if serial is not None else random_serial()
    ext_ref = _req_entry(config, "x509_extensions")
    extensions = (
        build_extensions(
            config, ext_ref, subject=subject, public_key=key.public_key(), serial=serial
        )
        if ext_ref is not None
        else []
    )
    md_entry = _req_entry(config, "default_md")
    if digest is not None:
        algorithm: hashes.HashAlgorithm | None = _digest(digest, None, config.file)
    elif md_entry is not None:
        algorithm = _digest(md_entry.value, md_entry, config.file)
    else:
        algorithm = hashes.SHA256()
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = None
    start = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if days <= 0:
        raise IssueError(f"validity must be a positive number of days, got {days}")
    builder = (
        x509.CertificateBuilder(extensions=extensions)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )
    try:
        return builder.sign(key, algorithm)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot sign the certificate: {exc}", file=config.file) from exc
