"""Device test suites: does the firmware refuse a bad server, and behave when the edge misbehaves?

A suite (TOML, :mod:`testkit.suites.loader`) is an ordered list of cases
(:mod:`testkit.suites.model`). The engine (:mod:`testkit.suites.engine`) serves one
endpoint (:mod:`testkit.suites.server`) that presents each case's server certificate
(:mod:`testkit.suites.pki`) and plays its behaviour (:mod:`testkit.suites.behaviour`);
each case takes the device's next connection(s) and gets a verdict with evidence
(:mod:`testkit.suites.verdicts`), reported as JSON, JUnit XML and HTML
(:mod:`testkit.suites.report`). ``edgesim suite list|run`` is :mod:`testkit.suites.cli`.

Errors::

    SuiteError        a suite file that cannot be used (names the file, case, field)
    └── PkiError      a server profile that cannot be minted (e.g. no openssl for
                      SHA-1); it becomes that case's ``error`` verdict, not a crash

A device that fails a case is not an error: it is a ``fail`` verdict.
"""

from __future__ import annotations

from testkit.suites.engine import RunOptions, SuiteReport, run_suite, run_suite_sync
from testkit.suites.loader import SuiteError, builtin_suites, load_suite, parse_suite
from testkit.suites.model import BackoffRule, Case, CaseResult, ServerProfile, Status, Suite

__all__ = [
    "BackoffRule",
    "Case",
    "CaseResult",
    "RunOptions",
    "ServerProfile",
    "Status",
    "Suite",
    "SuiteError",
    "SuiteReport",
    "builtin_suites",
    "load_suite",
    "parse_suite",
    "run_suite",
    "run_suite_sync",
]
