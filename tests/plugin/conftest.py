"""Tests of the edgesim pytest plugin: example suites run by ``pytester``, and unit tests.

``pytester`` is enabled from ``pytest_configure`` rather than ``pytest_plugins``:
pytest refuses ``pytest_plugins`` in a conftest below the root when the whole tree
is collected.
"""

from __future__ import annotations

import pytest

#: The inner runs' configuration: the project's own strictness (warnings are errors,
#: importlib import mode, asyncio auto mode, a timeout on every test).
INNER_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
timeout = 60
addopts = -p no:cacheprovider --import-mode=importlib
"""


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory configured like this project."""
    pytester.makeini(INNER_INI)
    return pytester
