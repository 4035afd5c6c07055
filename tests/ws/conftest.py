"""Fixtures for the WebSocket tests: the edge harness and a test PKI."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest


def load_harness() -> ModuleType:
    """Import ``edgeharness.py`` next to this file (tests are not a package)."""
    name = "edgesim_tests_edgeharness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parent.parent / "http" / "edgeharness.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    """The ``edgeharness`` module."""
    return load_harness()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, harness: ModuleType) -> object:
    """A root, the edge's server certificate and device certificates (real clock: OpenSSL)."""
    return harness.HarnessPki(tmp_path_factory.mktemp("http-pki"), datetime.now(UTC))
