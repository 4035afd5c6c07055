"""Fixtures for the trust store tests: a store on a temporary file with a fixed clock."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from trustpki import NOW

from edge.trust.sqlite import SqliteTrustStore, StoreLimits


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where the test's store file lives."""
    return tmp_path / "store.db"


@pytest.fixture
def store(store_path: Path) -> Iterator[SqliteTrustStore]:
    """An empty store with the real limits and the clock fixed at ``NOW``."""
    with SqliteTrustStore(store_path, clock=lambda: NOW, limits=StoreLimits()) as s:
        yield s
