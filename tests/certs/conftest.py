"""Shared fixtures for the PKI toolkit tests: a fixed clock, CAs, an openssl runner."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs.authority import CertificateAuthority

#: Every test issues at this instant: results never depend on the real clock.
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

#: ``NOW`` plus one day as a Unix time, for ``openssl verify -attime``.
ATTIME = str(int(NOW.timestamp()) + 86400)

OpenSSL = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def now() -> datetime:
    """The fixed issuance time."""
    return NOW


@pytest.fixture(scope="session")
def root_ca() -> CertificateAuthority:
    """A root CA valid from :data:`NOW` (shared: issuing from it does not mutate it)."""
    return CertificateAuthority.create_root("Test Root CA", now=NOW)


@pytest.fixture(scope="session")
def intermediate_ca(root_ca: CertificateAuthority) -> CertificateAuthority:
    """An intermediate issued by :func:`root_ca`."""
    return root_ca.issue_intermediate("Test Intermediate CA", now=NOW)


@pytest.fixture
def openssl() -> OpenSSL:
    """Run the ``openssl`` CLI with a timeout; the result's text output is returned.

    ``check=False`` lets a test assert on a failure. Verification times are
    given explicitly (``-attime``) so nothing depends on the real clock.
    """
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl CLI not installed")

    def run(
        *args: str | Path,
        cwd: Path | None = None,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            input=input_text,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"openssl {' '.join(map(str, args))} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    return run
