"""The ``edgesim`` command line: noun, then verb.

Each command group lives next to the code it drives and exposes
``register(subparsers) -> None``; the group's verbs set ``func`` on their parser,
a callable ``func(args) -> int`` returning the exit status.

======  ===========================  ==========================
group   module                       what it does
======  ===========================  ==========================
pki     :mod:`certs.cli`             keys, CAs, certificates, lint, verify
trust   :mod:`edge.trust.cli`        certificate sets, bindings, status
cert    :mod:`edge.trust.cert_cli`   server certificates per hostname, deployments
edge    :mod:`edge.server_cli`       run the edge
device  :mod:`devices.cli`           one simulated device
fleet   :mod:`devices.cli`           a simulated fleet
suite   :mod:`testkit.suites.cli`    device test suites (bad servers, misbehaving edge)
======  ===========================  ==========================
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from certs.cliutil import EXIT_USAGE, CliError

#: (module, attribute) of every command group's ``register`` function, in help order.
GROUPS: tuple[tuple[str, str], ...] = (
    ("certs.cli", "register"),
    ("edge.trust.cli", "register"),
    ("edge.trust.cert_cli", "register"),
    ("edge.server_cli", "register"),
    ("devices.cli", "register_device"),
    ("devices.cli", "register_fleet"),
    ("testkit.suites.cli", "register"),
)


def version_text() -> str:
    """``edgesim X.Y.Z (connect path: compiled ...)``: what ``--version`` prints."""
    from importlib.metadata import PackageNotFoundError, version

    from edge._loader import status

    try:
        number = version("edgesim")
    except PackageNotFoundError:  # run from a checkout that was never installed
        number = "unknown (not installed)"
    return f"edgesim {number} (connect path: {status()})"


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``edgesim`` parser with every command group that is installed."""
    parser = argparse.ArgumentParser(
        prog="edgesim",
        description="A local IoT edge for mutual TLS, its PKI toolkit and a device-fleet simulator.",
        # Raw: keeps the one-line --version text (with its build path) unwrapped.
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print the version and whether the connect path is compiled, then exit",
    )
    sub = parser.add_subparsers(dest="group", metavar="GROUP")
    for module_name, attr in GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A group whose module is not written yet is simply absent from --help.
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        getattr(module, attr)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgesim`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # A group without a verb: show that group's help (or the top-level help).
        target = getattr(args, "group_parser", None) or parser
        target.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except CliError as exc:
        sys.stderr.write(f"edgesim: error: {exc.message}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
