"""``edgesim suite list`` and ``edgesim suite run NAME|FILE``.

``run`` exits 0 when every ``must`` case passed, 1 when one failed or errored, and 2
on a usage error (a suite that cannot be loaded is 1 with the file and field named).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from certs.cliutil import EXIT_CHECK_FAILED, EXIT_OK, CliError, emit
from testkit.suites.engine import RunOptions, run_suite_sync
from testkit.suites.loader import SuiteError, builtin_suites, load_suite
from testkit.suites.report import render_html, render_json, render_junit

__all__ = ["register"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``suite`` command group."""
    group = subparsers.add_parser(
        "suite", help="device test suites: does the firmware refuse a bad server?"
    )
    group.set_defaults(group_parser=group)
    verbs = group.add_subparsers(dest="verb", metavar="VERB")
    p = verbs.add_parser("list", help="list the built-in suites")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=_cmd_list)
    p = verbs.add_parser(
        "run",
        help="run a suite against a device",
        description=(
            "Serve one endpoint; each case takes the device's next connection(s). "
            "With --device-cmd the command runs once per case with {host} {port} {ca} "
            "{cert} {key} {crl} substituted; without it, reconnect the bench device when asked."
        ),
    )
    p.add_argument("suite", help="a built-in suite name (see 'suite list') or a suite TOML file")
    p.add_argument(
        "--device-cmd",
        help='command run once per case, e.g. "mosquitto_pub -h {host} -p {port} --cafile {ca} ..."',
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="listen address (default 127.0.0.1, a free port)",
    )
    p.add_argument(
        "--server-name",
        default="localhost",
        help="the name the device dials ({host}; default localhost)",
    )
    p.add_argument(
        "--protocol",
        choices=("mqtt", "mqtt5", "https"),
        help="what the device speaks (mqtt is 3.1.1): cases for another protocol are skipped",
    )
    p.add_argument(
        "--case", action="append", default=[], metavar="ID", help="run only this case (repeatable)"
    )
    p.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every case timeout (slow machines)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep the suite's certificates here (default: a temporary directory)",
    )
    p.add_argument("--report", type=Path, metavar="FILE", help="write the JSON report")
    p.add_argument(
        "--junit", type=Path, metavar="FILE", help="write JUnit XML (one testcase per case)"
    )
    p.add_argument("--html", type=Path, metavar="FILE", help="write the HTML report")
    p.set_defaults(func=_cmd_run)


def _cmd_list(args: argparse.Namespace) -> int:
    suites = {}
    for name, description in builtin_suites().items():
        suites[name] = {"description": description, "cases": [c.id for c in load_suite(name).cases]}
    emit(
        suites,
        as_json=args.json,
        human=lambda d: "\n".join(
            f"{n:<8} {len(v['cases']):3d} cases  {v['description']}" for n, v in d.items()
        ),
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        raise CliError(str(exc)) from exc
    unknown = set(args.case) - {c.id for c in suite.cases}
    if unknown:
        raise CliError(f"suite {suite.name}: no case(s) {', '.join(sorted(unknown))}", code=2)
    host, port = args.listen
    options = RunOptions(
        device_cmd=args.device_cmd,
        listen_host=host,
        listen_port=port,
        server_name=args.server_name,
        protocol=args.protocol,
        only=tuple(args.case),
        workdir=args.workdir,
        timeout_scale=args.timeout_scale,
        console=sys.stdout,
    )
    report = run_suite_sync(suite, options)
    doc = report.to_json()
    for path, text in (
        (args.report, render_json(doc)),
        (args.junit, render_junit(doc)),
        (args.html, render_html(doc)),
    ):
        if path is not None:
            path.write_text(text, encoding="utf-8")
    counts = ", ".join(f"{v} {k}" for k, v in report.counts().items() if v)
    sys.stdout.write(f"suite {suite.name}: {'OK' if report.ok else 'FAILED'} ({counts})\n")
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED
