"""Loads the compiled connect path when it matches the sources (see :mod:`edge.compiled`).

Imported by ``edge/__init__.py`` before anything else of the edge, so it stays
small: standard library only, no build code.

The compiled modules come from one of two places:

- a source checkout: ``make compile`` builds them into ``.build/mypyc/`` with a
  manifest of the sources' digests, and a finder serves them only while that
  manifest matches the sources;
- an installed wheel: ``setup.py`` compiles them at wheel-build time and they sit
  beside their ``.py`` files, where Python's own import system prefers them. Here
  the loader only checks that all of them are present (never half compiled, half
  not) and, with ``EDGESIM_PURE_PYTHON=1``, serves the ``.py`` files instead.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["MODULES", "PURE_ENV", "activate", "build_dir", "is_compiled", "status"]

#: The modules every connect runs through, compiled as one mypyc group.
MODULES: tuple[str, ...] = (
    "edge.core.bus",
    "edge.core.deadlines",
    "edge.core.events",
    "edge.core.handlers",
    "edge.core.hub",
    "edge.core.metrics",
    "edge.core.policy",
    "edge.core.router",
    "edge.core.session",
    "edge.core.topics",
    "edge.identity",
    "edge.mqtt.broker",
    "edge.mqtt.codec",
    "edge.mqtt.properties",
    "edge.mqtt.protocol",
    "edge.mqtt.reasons",
    "edge.mux",
    "edge.tls.clienthello",
    "edge.tls.connection",
    "edge.tls.contexts",
    "edge.tls.peer",
    "edge.tls.session",
    "edge.tls.wire",
    "edge.trust.model",
)
#: The group's shared library: a top-level module the compiled modules import.
_GROUP = "edgesim_connect"
_MANIFEST = "manifest.json"
#: Set to 1 to run the sources even when a matching build exists.
PURE_ENV = "EDGESIM_PURE_PYTHON"

_ROOT = Path(__file__).resolve().parent.parent
_state = "not activated"


def build_dir(root: Path = _ROOT) -> Path:
    """Where the compiled modules of this Python live (``.build/mypyc/<tag>``)."""
    # ".cpython-311-x86_64-linux-gnu.so" -> "cpython-311-x86_64-linux-gnu"
    tag = _ext_suffix().strip(".").rsplit(".", 1)[0]
    return root / ".build" / "mypyc" / tag


def _source(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _digests(root: Path) -> dict[str, str]:
    return {m: hashlib.sha256(_source(root, m).read_bytes()).hexdigest() for m in MODULES}


def _ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _why_not(root: Path) -> tuple[str | None, dict[str, Path]]:
    """``(reason the build cannot be used or None, module -> compiled file)``."""
    where = build_dir(root)
    try:
        manifest = json.loads((where / _MANIFEST).read_text())
    except FileNotFoundError:
        return "no compiled build (run `make compile`)", {}
    except (OSError, ValueError) as exc:
        return f"unreadable compiled build manifest ({exc}); run `make compile`", {}
    if manifest.get("python") != sys.version or manifest.get("modules") != list(MODULES):
        return "the compiled build is for another Python or module list; run `make compile`", {}
    try:
        digests = _digests(root)
    except OSError as exc:
        return f"cannot read a compiled module's source ({exc})", {}
    changed = [m for m in MODULES if manifest.get("sources", {}).get(m) != digests[m]]
    if changed:
        return (
            f"the compiled build is older than {_source(root, changed[0]).relative_to(root)}"
            f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}; run `make compile`"
        ), {}
    suffix = _ext_suffix()
    files = {
        m: where.joinpath(*m.split(".")).with_name(m.rsplit(".", 1)[1] + suffix) for m in MODULES
    }
    files[f"{_GROUP}__mypyc"] = where / f"{_GROUP}__mypyc{suffix}"
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        return f"the compiled build is incomplete ({missing[0]} is missing); run `make compile`", {}
    return None, files


def _installed(root: Path) -> tuple[str | None, dict[str, Path]]:
    """``(state, module -> source file)`` of compiled modules installed beside their sources.

    ``state`` is None when no module is installed compiled (a source checkout, or a
    wheel built without a compiler), ``"all"`` when every one is, and a reason
    otherwise (some are: the sources must then serve every module).
    """
    suffix = _ext_suffix()
    sources = {m: _source(root, m) for m in MODULES}
    present = [m for m, src in sources.items() if src.with_name(src.stem + suffix).is_file()]
    group = (root / f"{_GROUP}__mypyc{suffix}").is_file()
    if not present and not group:
        return None, sources
    if len(present) == len(MODULES) and group:
        return "all", sources
    missing = sorted(set(MODULES) - set(present)) or [f"{_GROUP}__mypyc"]
    return f"the installed compiled modules are incomplete ({missing[0]} is missing)", sources


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Serves the ``.py`` files of modules that are also installed compiled."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.SourceFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


class _Finder(importlib.abc.MetaPathFinder):
    """Serves the compiled modules (and their group library) from the build directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def activate(root: Path = _ROOT) -> bool:
    """Load the compiled modules from now on if the build matches the sources; say if so.

    Must run before any of :data:`MODULES` is imported (``edge/__init__.py``
    calls it). Never raises: anything amiss means the sources run.
    """
    global _state
    if any(isinstance(f, _Finder | _SourceFinder) for f in sys.meta_path):
        return _state.startswith("compiled")
    installed, sources = _installed(root)
    pure = os.environ.get(PURE_ENV, "") not in ("", "0")
    if installed is not None:
        # A wheel's compiled modules load by themselves unless sources are put first.
        if pure or installed != "all":
            sys.meta_path.insert(0, _SourceFinder(sources))
            _state = f"pure Python ({PURE_ENV} is set)" if pure else f"pure Python: {installed}"
            return False
        _state = "compiled, installed"
        return True
    if pure:
        _state = f"pure Python ({PURE_ENV} is set)"
        return False
    already = [m for m in MODULES if m in sys.modules]
    if already:
        _state = f"pure Python ({already[0]} was imported before the compiled build was looked for)"
        return False
    reason, files = _why_not(root)
    if reason is not None:
        _state = f"pure Python: {reason}"
        return False
    sys.meta_path.insert(0, _Finder(files))
    _state = "compiled"
    return True


def status() -> str:
    """``compiled (mypyc, N modules ...)`` or ``pure Python: <why>``."""
    if _state == "compiled":
        return f"compiled (mypyc, {len(MODULES)} modules in {build_dir()})"
    if _state == "compiled, installed":
        return f"compiled (mypyc, {len(MODULES)} modules installed in {_ROOT})"
    return _state


def is_compiled(module: ModuleType) -> bool:
    """True when ``module`` was loaded from a compiled extension."""
    return str(getattr(module, "__file__", "")).endswith(_ext_suffix())
