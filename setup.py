"""Builds edgesim's wheel with the connect path compiled by mypyc, as black and mypy do.

Everything about the package is in ``pyproject.toml``; this file only adds the
compiled modules (``edge._loader.MODULES``, one mypyc group) to a wheel build.
They install beside their ``.py`` sources, and Python's import system prefers
them there (see ``edge/_loader.py``).

- An editable install (``uv sync``, ``pip install -e``) compiles nothing: a
  checkout compiles with ``make compile`` into ``.build/mypyc/``, which the
  loader uses only while it matches the sources.
- Without mypyc or a C compiler, or when compiling fails, the wheel is built
  from the sources alone (and says so), unless ``EDGESIM_REQUIRE_COMPILED=1``.
- ``EDGESIM_COMPILE=0`` builds the pure-Python wheel on purpose.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
REQUIRE = os.environ.get("EDGESIM_REQUIRE_COMPILED", "") not in ("", "0")


def _say(text: str) -> None:
    print(f"edgesim setup: {text}", file=sys.stderr)


def _loader_constant(name: str) -> Any:
    """A constant of ``edge/_loader.py``, read from its source, not imported.

    Importing ``edge`` would run its loader in the build's process.
    """
    tree = ast.parse((HERE / "edge" / "_loader.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    raise RuntimeError(f"edge/_loader.py defines no {name}")


def _fail_or_fall_back(why: str) -> list[Any]:
    if REQUIRE:
        raise SystemExit(f"edgesim setup: cannot compile the connect path: {why}")
    _say(f"building without the compiled connect path: {why}")
    return []


def _extensions() -> list[Any]:
    editable = any(arg in ("editable_wheel", "develop") for arg in sys.argv)
    building = any(arg in ("bdist_wheel", "build_ext", "build") for arg in sys.argv)
    if editable or not building:
        return []
    if os.environ.get("EDGESIM_COMPILE", "") == "0":
        _say("EDGESIM_COMPILE=0: building the pure-Python wheel")
        return []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return _fail_or_fall_back(f"no C compiler ({compiler} not found)")
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        return _fail_or_fall_back(f"mypyc is not installed ({exc})")
    paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in _loader_constant("MODULES")]
    cwd = Path.cwd()
    try:
        # mypy reads pyproject.toml's [tool.mypy] and resolves module names from here.
        os.chdir(HERE)
        return list(mypycify(paths, opt_level="3", group_name=str(_loader_constant("_GROUP"))))
    except SystemExit as exc:  # mypy reports type errors by exiting
        return _fail_or_fall_back(f"mypyc refused the sources ({exc})")
    finally:
        os.chdir(cwd)


class _BuildExt(build_ext):
    """build_ext that falls back to the sources when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, ...: the compiler's complaint
            if REQUIRE:
                raise
            _say(f"compiling failed, the wheel holds the sources only: {exc}")
            self.extensions = []


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
