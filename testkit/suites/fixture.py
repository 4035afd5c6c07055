"""The pytest ``suite`` fixture: run a device test suite, or one case, against a device command.

::

    def test_firmware_refuses_bad_servers(suite):
        report = suite.run("tls", device_cmd="./firmware-host --ca {ca} --port {port}",
                           cases=["expired", "wrong_host", "good"])
        report.assert_ok()          # fails the test naming every failed must case

    def test_one_case(suite):
        result = suite.case("tls", "expired", device_cmd="...")
        assert result.status == "pass", result.summary

``run`` blocks (the suite runs on its own event loop in a worker thread, so it works
from sync and async tests alike); ``await suite.run_async(...)`` runs on the test's loop.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Sequence
from pathlib import Path

from testkit.suites.engine import RunOptions, SuiteReport, run_suite, run_suite_sync
from testkit.suites.loader import load_suite
from testkit.suites.model import CaseResult

__all__ = ["SuiteRunner"]


class SuiteRunner:
    """What the ``suite`` fixture gives: runs suites with the test's temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._runs = 0
        #: The console output of the last run (one line per case).
        self.console = ""

    def _options(
        self,
        device_cmd: str,
        cases: Sequence[str],
        protocol: str | None,
        timeout_scale: float,
        console: io.StringIO,
    ) -> RunOptions:
        self._runs += 1
        return RunOptions(
            device_cmd=device_cmd,
            only=tuple(cases),
            protocol=protocol,
            timeout_scale=timeout_scale,
            workdir=self._workdir / f"run-{self._runs}",
            console=console,
        )

    def run(
        self,
        suite: str,
        *,
        device_cmd: str,
        cases: Sequence[str] = (),
        protocol: str | None = None,
        timeout_scale: float = 1.0,
    ) -> SuiteReport:
        """Run a built-in suite (by name) or a suite file; every case unless ``cases``."""
        loaded = load_suite(suite)
        console = io.StringIO()
        options = self._options(device_cmd, cases, protocol, timeout_scale, console)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            report = pool.submit(run_suite_sync, loaded, options).result()
        self.console = console.getvalue()
        return report

    async def run_async(
        self,
        suite: str,
        *,
        device_cmd: str,
        cases: Sequence[str] = (),
        protocol: str | None = None,
        timeout_scale: float = 1.0,
    ) -> SuiteReport:
        """:meth:`run` on the caller's event loop."""
        console = io.StringIO()
        options = self._options(device_cmd, cases, protocol, timeout_scale, console)
        report = await run_suite(load_suite(suite), options)
        self.console = console.getvalue()
        return report

    def case(
        self, suite: str, case_id: str, *, device_cmd: str, timeout_scale: float = 1.0
    ) -> CaseResult:
        """Run one case of ``suite`` and return its result."""
        report = self.run(
            suite, device_cmd=device_cmd, cases=[case_id], timeout_scale=timeout_scale
        )
        if not report.results:
            raise LookupError(f"suite {report.suite.name} has no case {case_id!r}")
        return report.results[0]
