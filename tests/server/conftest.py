"""Fixtures for the edge server tests: a test PKI and a trust snapshot built from it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from testmodules import load_pkitools


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A fresh test PKI (root, intermediate, server certificate) in a temporary folder."""
    # OpenSSL validates against the system clock, so the certificates must too.
    return load_pkitools().Pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))
