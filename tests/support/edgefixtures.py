"""The ``harness`` and ``pki`` fixtures of the HTTP and WebSocket tests.

A folder's ``conftest.py`` imports them (and lists them in ``__all__``) to offer them
to its tests; each folder that does so gets its own session-wide PKI, as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import ModuleType

import pytest
from testmodules import load_harness


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    """The ``edgeharness`` module."""
    return load_harness()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, harness: ModuleType) -> object:
    """A root, the edge's server certificate and device certificates (real clock: OpenSSL)."""
    return harness.HarnessPki(tmp_path_factory.mktemp("http-pki"), datetime.now(UTC))
