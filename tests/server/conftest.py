"""Fixtures for the edge server tests: a test PKI and a trust snapshot built from it."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest


def load_pkitools() -> ModuleType:
    """Import ``tests/tls/pkitools.py`` (tests are not a package)."""
    name = "edgesim_tests_pkitools"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).parent.parent / "tls" / "pkitools.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A fresh test PKI (root, intermediate, server certificate) in a temporary folder."""
    # OpenSSL validates against the system clock, so the certificates must too.
    return load_pkitools().Pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))
