"""Import helper modules that live next to tests in other folders.

Helpers such as ``tests/http/edgeharness.py`` are loaded from their file and kept in
``sys.modules`` under one stable name each, so every folder that uses a helper gets
the same module object (and ``dataclasses``, which look their module up by name while
a class is built, work). ``tests/tls/conftest.py`` loads ``pkitools`` under the same
name as :func:`load_pkitools`, so both share it too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: The ``tests`` folder.
TESTS = Path(__file__).resolve().parent.parent


def load_test_module(relative: str, name: str) -> ModuleType:
    """Import ``tests/<relative>`` as module ``name``, once (cached in ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name]
    path = TESTS / relative
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # A half-run module must not be handed out by the next call.
        del sys.modules[name]
        raise
    return module


def load_harness() -> ModuleType:
    """``tests/http/edgeharness.py``: a small edge (core + device frontend) and its PKI."""
    return load_test_module("http/edgeharness.py", "edgesim_tests_edgeharness")


def load_pkitools() -> ModuleType:
    """``tests/tls/pkitools.py``: a root, an intermediate and a server certificate."""
    return load_test_module("tls/pkitools.py", "edgesim_tests_pkitools")


def load_device_support(name: str = "test_device_support") -> ModuleType:
    """A helper module of ``tests/devices`` (by default its PKI, Mosquitto and servers)."""
    return load_test_module(f"devices/{name}.py", f"edgesim_tests_devices_{name}")
