"""Root of the test tree: puts ``tests/support`` on ``sys.path``; one autouse fixture.

Test folders are not packages (``--import-mode=importlib``, no ``__init__.py``), so a
helper shared by several folders cannot be imported by a relative name. pytest loads
this file before any folder's ``conftest.py`` and before any test module, whichever
tests are selected, so every one of them can ``import testmodules`` (and the other
modules in ``tests/support``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_SUPPORT = str(Path(__file__).with_name("support"))
if _SUPPORT not in sys.path:
    sys.path.insert(0, _SUPPORT)


@pytest.fixture(autouse=True)
def _fleet_key_methods_stay_in_their_test() -> object:
    """A fleet run in this process (``--tls-keys legacy``, its default) hands EC and RSA
    keys to OpenSSL's built-in methods process-wide (``devices.legacykeys``); the edge
    never does that. Give them back after each test, so an edge tested later in the
    same process runs on OpenSSL's default methods, as it does in production.
    """
    yield None
    from devices import legacykeys

    legacykeys.uninstall()
