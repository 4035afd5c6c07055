"""NIST PKITS data for path-validation tests, fetched once into a cache outside the repo.

Two public packages hold what is needed, fetched with pip (the registry's ordinary
client) only when missing:

- the ``cryptography_vectors`` wheel (:data:`VECTORS_VERSION`):
  ``cryptography_vectors/x509/PKITS_data/{certs,crls}`` (DER certificates and CRLs);
- the ``pyhanko-certvalidator`` sdist: ``tests/fixtures/nist_pkits/pkits.json``, the
  test cases with their expected outcome (a case with an ``error`` key must fail).

The cache is ``$EDGESIM_CACHE/pkits`` (default ``~/.cache/edgesim/pkits``). When the
registry cannot be reached, :func:`ensure_pkits` raises :class:`PkitsUnavailable`
and the tests skip with that reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

CERTVALIDATOR_VERSION = "0.33.0"
#: A fixed release, not the installed cryptography's: the PKITS files are NIST's 2011
#: data and the same in every release, while a new cryptography can come out before
#: its vectors wheel does (51.0.1 did), which skipped these tests on a fresh machine.
VECTORS_VERSION = "50.0.2"
#: PKITS 2011 certificates are valid 2010-2030; the suite's own runner uses this date.
VALIDATION_TIME = dt.datetime(2022, 5, 1, tzinfo=dt.UTC)
_VECTORS_PREFIX = "cryptography_vectors/x509/PKITS_data/"
_CASES_SUFFIX = "tests/fixtures/nist_pkits/pkits.json"


class PkitsUnavailable(Exception):
    """The PKITS data is not cached and could not be fetched (the message says why)."""


@dataclass(frozen=True)
class PkitsData:
    """Where the extracted data lives."""

    certs: Path
    crls: Path
    cases: Path


@dataclass(frozen=True)
class PkitsCase:
    """One case of pkits.json."""

    id: str
    name: str
    cert: str
    other_certs: tuple[str, ...]
    crls: tuple[str, ...]
    expect_valid: bool
    has_policy_params: bool

    @property
    def section(self) -> str:
        """The PKITS section, e.g. ``4.4`` for id ``40419``."""
        return f"{self.id[0]}.{int(self.id[1:3])}"


def cache_dir() -> Path:
    """``$EDGESIM_CACHE/pkits`` or ``~/.cache/edgesim/pkits``."""
    base = os.environ.get("EDGESIM_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "edgesim"
    return root / "pkits"


def _pip_download(spec: str, dest: Path, *, wheel: bool) -> Path:
    formats = ["--only-binary", ":all:"] if wheel else ["--no-binary", ":all:"]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        *formats,
        "--dest",
        str(dest),
        spec,
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PkitsUnavailable(f"pip download {spec} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PkitsUnavailable(f"pip download {spec} failed: {' / '.join(tail)}")
    found = [p for p in dest.iterdir() if p.is_file()]
    if len(found) != 1:
        raise PkitsUnavailable(f"pip download {spec} left {len(found)} files in {dest}")
    return found[0]


def ensure_pkits() -> PkitsData:
    """Return the cached PKITS data, downloading and extracting it if missing."""
    version = VECTORS_VERSION
    target = cache_dir() / f"cryptography-{version}-certvalidator-{CERTVALIDATOR_VERSION}"
    data = PkitsData(certs=target / "certs", crls=target / "crls", cases=target / "pkits.json")
    if data.cases.is_file() and data.certs.is_dir() and data.crls.is_dir():
        return data
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "wheel").mkdir()
        (scratch / "sdist").mkdir()
        staging = scratch / "data"
        (staging / "certs").mkdir(parents=True)
        (staging / "crls").mkdir()
        wheel = _pip_download(f"cryptography_vectors=={version}", scratch / "wheel", wheel=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                for kind in ("certs", "crls"):
                    prefix = f"{_VECTORS_PREFIX}{kind}/"
                    if member.startswith(prefix) and not member.endswith("/"):
                        out = staging / kind / Path(member).name
                        out.write_bytes(archive.read(member))
        sdist = _pip_download(
            f"pyhanko-certvalidator=={CERTVALIDATOR_VERSION}", scratch / "sdist", wheel=False
        )
        with tarfile.open(sdist) as archive:
            info = next((m for m in archive.getmembers() if m.name.endswith(_CASES_SUFFIX)), None)
            extracted = archive.extractfile(info) if info is not None else None
            if extracted is None:
                raise PkitsUnavailable(f"{sdist.name} holds no {_CASES_SUFFIX}")
            (staging / "pkits.json").write_bytes(extracted.read())
        if not any((staging / "certs").iterdir()):
            raise PkitsUnavailable(f"{wheel.name} holds no {_VECTORS_PREFIX}certs/")
        if target.exists():
            shutil.rmtree(target)  # a half-written earlier attempt
        staging.rename(target)
    return data


def load_cases(data: PkitsData) -> list[PkitsCase]:
    """Every case of pkits.json, in file order."""
    raw = json.loads(data.cases.read_text(encoding="utf-8"))
    return [
        PkitsCase(
            id=str(case["id"]),
            name=str(case["name"]),
            cert=str(case["cert"]),
            other_certs=tuple(case.get("other_certs", ()))
            + tuple(case.get("path_intermediates", ())),
            crls=tuple(case.get("crls", ())),
            expect_valid="error" not in case,
            has_policy_params="params" in case,
        )
        for case in raw
    ]


def load_certificate(data: PkitsData, name: str) -> x509.Certificate:
    """A PKITS certificate by file name (``ValueError`` if cryptography cannot parse it)."""
    with warnings.catch_warnings():
        # PKITS has a negative serial on purpose; cryptography warns before it refuses.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate((data.certs / name).read_bytes())


def load_crl(data: PkitsData, name: str) -> x509.CertificateRevocationList:
    """A PKITS CRL by file name."""
    return x509.load_der_x509_crl((data.crls / name).read_bytes())
