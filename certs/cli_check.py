"""``edgesim pki lint`` and ``edgesim pki verify``: check files before they reach an edge.

``lint FILE`` runs :func:`certs.lint.lint_chain` on a certificate or chain file
(PEM, DER, PKCS#7; an empty file is reported as the ``empty`` finding) and exits 1
when any finding is an error, 0 otherwise (warnings alone pass).

``verify CERT --roots ROOTS`` runs :func:`certs.verify.verify_path`. ``CERT`` may
hold the device's whole chain (leaf first): the certificates after the leaf are
used as untrusted intermediates, as the edge would receive them in the handshake.
Exit 0 when the path is valid, 1 when it is not.

Unreadable files and files that are not certificates are
:class:`~certs.errors.CertsError` from :mod:`certs.bundle`, translated here into
:class:`~certs.cliutil.CliError` (exit 1, message naming the file); bad option
values are usage errors (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from certs.bundle import load_any_certificates, pem_blocks
from certs.cliutil import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    emit,
    int_at_least,
    iso_time,
)
from certs.errors import CertsError
from certs.lint import Finding, describe_certificate, has_errors, lint_chain
from certs.verify import verify_path

__all__ = ["register_check_verbs"]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _certificates(path: Path, *, allow_empty: bool = False) -> list[x509.Certificate]:
    data = _read(path)
    if allow_empty and not data.strip():
        return []
    try:
        certs = load_any_certificates(data, source=str(path))
    except CertsError as exc:
        raise CliError(str(exc)) from exc
    if not certs and not allow_empty:
        raise CliError(f"{path}: holds no certificate")
    return certs


def _crls(path: Path) -> list[x509.CertificateRevocationList]:
    data = _read(path)
    blocks = [block for label, block in pem_blocks(data) if label == "X509 CRL"]
    try:
        if blocks:
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise CliError(f"{path}: not a CRL (PEM 'X509 CRL' or DER): {exc}") from exc


# --- lint ------------------------------------------------------------------------


def _lint_text(path: Path, certs: list[x509.Certificate], findings: list[Finding]) -> str:
    lines = [
        f"  {position}. {cert.subject.rfc4514_string()}  (issuer: {cert.issuer.rfc4514_string()})"
        for position, cert in enumerate(certs, start=1)
    ]
    for finding in findings:
        lines.append(f"{finding.severity}: [{finding.code}] {finding.message}")
        lines.append(f"    hint: {finding.hint}")
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    verdict = "FAIL" if errors else "OK"
    lines.append(f"{verdict}: {path}: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


def _cmd_lint(args: argparse.Namespace) -> int:
    path: Path = args.file
    certs = _certificates(path, allow_empty=True)
    findings = lint_chain(
        certs,
        profile=args.profile,
        at=args.at,
        allow_sha1=args.allow_sha1,
        max_certificates=args.max_certificates,
    )
    report: dict[str, object] = {
        "file": str(path),
        "ok": not has_errors(findings),
        "certificates": [describe_certificate(c, i) for i, c in enumerate(certs, start=1)],
        "findings": [f.to_dict() for f in findings],
    }
    text = _lint_text(path, certs, findings)
    emit(report, as_json=args.json, human=lambda _: text)
    return EXIT_CHECK_FAILED if has_errors(findings) else EXIT_OK


# --- verify ----------------------------------------------------------------------


def _verify_text(report: dict[str, object]) -> str:
    if report["ok"]:
        return f"OK: {report['reason']}"
    lines = [
        f"FAILED [{report['code']}]: {report['reason']}",
        f"  the edge sends alert {report['alert']} (OpenSSL X509_V_ERR {report['openssl_code']})",
        f"  hint: {report['hint']}",
    ]
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    presented = _certificates(args.cert)
    leaf, sent_chain = presented[0], presented[1:]
    roots = [c for path in args.roots for c in _certificates(path)]
    untrusted = [*sent_chain, *(c for path in args.untrusted for c in _certificates(path))]
    crls = [crl for path in args.crl for crl in _crls(path)]
    try:
        result = verify_path(
            leaf,
            roots=roots,
            untrusted=untrusted,
            at=args.at,
            purpose=args.purpose,
            server_name=args.server_name,
            crls=crls,
            crl_check=args.crl_check,
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    report = {"file": str(args.cert), **result.to_dict()}
    emit(report, as_json=args.json, human=_verify_text)
    return EXIT_OK if result.ok else EXIT_CHECK_FAILED


# --- registration ------------------------------------------------------------------


def register_check_verbs(pki_verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lint`` and ``verify`` to the ``pki`` group's verbs."""
    lint = pki_verbs.add_parser(
        "lint",
        help="check a certificate or chain file for what makes it fail",
        description="Check a certificate/chain file: order, names, signatures, CA flags, "
        "path length, validity, weak hashes and keys, duplicates, clientAuth, root. "
        "Exit 1 when any error is found.",
    )
    lint.add_argument("file", type=Path, metavar="FILE")
    lint.add_argument(
        "--profile",
        choices=("chain", "ca-set"),
        default="chain",
        help="chain: one chain, leaf first (default); ca-set: CA certificates for upload",
    )
    lint.add_argument("--at", type=iso_time, help="check validity at this ISO 8601 time")
    lint.add_argument(
        "--allow-sha1", action="store_true", help="SHA-1 signatures are warnings, not errors"
    )
    lint.add_argument(
        "--max",
        dest="max_certificates",
        type=int_at_least(1),
        help="fail when the file holds more certificates than this",
    )
    lint.add_argument("--json", action="store_true", help="print one JSON document")
    lint.set_defaults(func=_cmd_lint)

    verify = pki_verbs.add_parser(
        "verify",
        help="validate a certificate path as the edge does, with the reason",
        description="Validate CERT (optionally followed by its chain) up to --roots at "
        "--at, with optional CRLs. Exit 0 when valid, 1 when not.",
    )
    verify.add_argument("cert", type=Path, metavar="CERT")
    verify.add_argument(
        "--roots", type=Path, action="append", required=True, help="trusted roots (repeatable)"
    )
    verify.add_argument(
        "--untrusted",
        type=Path,
        action="append",
        default=[],
        help="intermediates the peer would send (repeatable)",
    )
    verify.add_argument("--at", type=iso_time, help="validation time (ISO 8601; default now)")
    verify.add_argument("--purpose", choices=("client", "server", "any"), default="client")
    verify.add_argument("--server-name", help="with --purpose server: the hostname to match")
    verify.add_argument(
        "--crl", type=Path, action="append", default=[], help="CRL file (repeatable)"
    )
    verify.add_argument(
        "--crl-check",
        choices=("leaf", "chain"),
        default="leaf",
        help="with --crl: check the leaf only, as the edge does (default), or every level",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.set_defaults(func=_cmd_verify)
