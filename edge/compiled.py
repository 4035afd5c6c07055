"""The edge's connect path, compiled with mypyc, and the switch that loads it.

Every mTLS connect runs a few hundred lines of the edge's own Python (the
ClientHello reader, the handshake driver, identity, events, the MQTT codec and
broker). Interpreted, that work cost about a quarter of the edge's CPU per
connect next to OpenSSL's; compiled with mypyc (part of mypy, from the same
type-annotated sources) it costs a good deal less: measured side by side with
``python -m bench --only broker``. The sources stay the reference: without a
build, or with ``EDGESIM_PURE_PYTHON=1``, the edge runs them as they are.

``python -m edge.compiled build`` (run by ``make compile``, and so by ``make
test``, ``make demo`` and ``make bench``) compiles :data:`MODULES` into
``.build/mypyc/`` next to the packages, with a manifest of the SHA-256 of every
compiled source. :func:`activate`, called when :mod:`edge` is imported, loads the
compiled modules only when that manifest matches the sources on disk and the
running Python, all of them or none: an edited source is never shadowed by an
old build, and compiled and interpreted halves of one group never mix (a class
from one would not be the class of the other). :func:`status` says which one is
running and why; ``edgesim edge serve`` logs it at start.

``python -m edge.compiled status`` prints the same; ``build --force`` rebuilds.
A machine without a C compiler keeps running the sources: ``build`` says why it
could not compile and exits 0, unless ``--strict``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edge._loader import (
    _GROUP,
    _MANIFEST,
    _ROOT,
    MODULES,
    PURE_ENV,
    _digests,
    _source,
    _why_not,
    activate,
    build_dir,
    is_compiled,
    status,
)

#: Set to 1 (CI does) to make a failed build an error instead of a warning.
REQUIRE_ENV = "EDGESIM_REQUIRE_COMPILED"

__all__ = [
    "MODULES",
    "PURE_ENV",
    "REQUIRE_ENV",
    "activate",
    "build",
    "build_dir",
    "is_compiled",
    "main",
    "status",
]


def build(root: Path = _ROOT, *, force: bool = False) -> str:
    """Compile :data:`MODULES` into :func:`build_dir` unless an up-to-date build is there.

    Returns what it did, in words. Raises :class:`RuntimeError` (with the
    compiler's complaint) when compiling fails.
    """
    # Imported here: `import edge` runs activate(), which needs none of these.
    import shutil
    import sysconfig
    import tempfile

    where = build_dir(root)
    if not force and _why_not(root)[0] is None:
        return f"up to date: {where}"
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        raise RuntimeError(f"mypyc or setuptools is not installed ({exc})") from None
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler} not found; install gcc)")
    digests = _digests(root)
    where.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=where.parent))
    cwd = Path.cwd()
    try:
        # mypy reads pyproject.toml and resolves module names from the root.
        os.chdir(root)
        extensions = mypycify(
            [str(_source(Path("."), m)) for m in MODULES],
            opt_level="3",
            target_dir=str(work / "c"),
            group_name=_GROUP,
        )
        dist = Distribution({"name": "edgesim-compiled", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(work / "lib")
        cmd.build_temp = str(work / "tmp")
        cmd.ensure_finalized()
        cmd.run()
        lib = work / "lib"
        (lib / _MANIFEST).write_text(
            json.dumps(
                {"python": sys.version, "modules": list(MODULES), "sources": digests}, indent=1
            )
        )
        # Replace the old build whole: a reader sees the old one, none, or the new one.
        old = where.with_name(where.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if where.exists():
            where.rename(old)
        lib.rename(where)
        shutil.rmtree(old, ignore_errors=True)
    except SystemExit as exc:  # setuptools and mypy report errors by exiting
        raise RuntimeError(f"compiling failed ({exc})") from None
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    return f"compiled {len(MODULES)} modules into {where}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge.compiled build|status``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m edge.compiled", description=__doc__.split("\n\n")[0]
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("build", help="compile the connect path (skipped when up to date)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument(
        "--strict",
        action="store_true",
        help=f"exit 1 when compiling fails (default: warn, exit 0; {REQUIRE_ENV}=1 does the same)",
    )
    verbs.add_parser("status", help="say whether this Python runs the compiled modules, and why")
    args = parser.parse_args(argv)
    if args.verb == "status":
        print(status())
        return 0
    try:
        print(f"edge.compiled: {build(force=args.force)}", file=sys.stderr)
    except RuntimeError as exc:
        print(f"edge.compiled: not compiled, the edge runs its sources: {exc}", file=sys.stderr)
        strict = args.strict or os.environ.get(REQUIRE_ENV, "") not in ("", "0")
        return 1 if strict else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
