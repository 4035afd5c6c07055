"""Root of the test tree: puts ``tests/support`` on ``sys.path``.

Test folders are not packages (``--import-mode=importlib``, no ``__init__.py``), so a
helper shared by several folders cannot be imported by a relative name. pytest loads
this file before any folder's ``conftest.py`` and before any test module, whichever
tests are selected, so every one of them can ``import testmodules`` (and the other
modules in ``tests/support``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_SUPPORT = str(Path(__file__).with_name("support"))
if _SUPPORT not in sys.path:
    sys.path.insert(0, _SUPPORT)
