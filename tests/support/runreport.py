"""Print a run's counts in the test output, past pytest's output capture.

The external suites of the suite (sslyze, schemathesis, the Autobahn cases) print
what they ran and what passed, so that ``make test``'s log says it without ``-s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def print_counts(request: pytest.FixtureRequest, lines: Sequence[str]) -> None:
    """Write ``lines`` to the terminal now, whatever the capture mode."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        for line in lines:
            print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
