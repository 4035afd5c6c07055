"""Fixtures for the TLS tests: one test PKI per module, built around the current time."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest


def load_pkitools() -> ModuleType:
    """Import ``pkitools.py`` next to this file (tests are not a package)."""
    name = "edgesim_tests_pkitools"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("pkitools.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A fresh test PKI (root, intermediate, server certificate) in a temporary folder."""
    tools = load_pkitools()
    # OpenSSL validates against the system clock, so the certificates must too.
    return tools.Pki(tmp_path_factory.mktemp("pki"), datetime.now(UTC))
