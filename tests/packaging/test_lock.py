"""uv.lock is the install: it matches pyproject.toml, and a stale one is refused.

``make venv`` (and so ``make test``, ``make demo`` and ``.ci/run``) installs with
``uv sync --locked``, which refuses a lock that no longer matches the project's
metadata. These tests run the same check uv makes, on the real files and on a copy
whose ``pyproject.toml`` gained a dependency the lock does not know.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
pytestmark = pytest.mark.timeout(300)


def _lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UV), "lock", "--check"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_committed_lock_matches_pyproject() -> None:
    done = _lock_check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_stale_lock_is_refused(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    marker = '    "hdrhistogram>=0.10,<0.11",\n'
    assert marker in text
    pyproject.write_text(text.replace(marker, marker + '    "six>=1.16",\n'))
    done = _lock_check(tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "needs to be updated" in done.stderr, done.stderr
