"""Count a benchmark's instructions with callgrind: the runner ``connect_cost`` and ``message_cost`` share.

The benchmark re-runs itself (``python -m MODULE ARGS``) under ``valgrind
--tool=callgrind``, collecting only inside ``functools.reduce`` (each module sends
the calls it wants counted through it), with the environment variable ``marker``
set so that the child knows to measure. The child zeroes the counters with
:func:`control` ``("-z")`` after its warm-up and dumps them with ``("-d")`` after
the measured part: that dump's total is what :func:`count` returns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["available", "control", "count"]


def available() -> bool:
    """True when valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def control(marker: str, flag: str) -> None:
    """Zero (``-z``) or dump (``-d``) this process's counters; a no-op outside callgrind."""
    if os.environ.get(marker):
        subprocess.run(
            ["callgrind_control", flag, str(os.getpid())], check=True, capture_output=True
        )


def count(module: str, args: list[str], marker: str) -> int:
    """Run ``python -m module *args`` under callgrind; the instructions of its measured part.

    Raises :class:`RuntimeError` with the end of the child's stderr when it fails.
    """
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="edgesim-callgrind-") as tmp:
        out = Path(tmp)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out / 'callgrind.out'}",
            sys.executable,
            "-m",
            module,
            *args,
        ]
        env = dict(os.environ, **{marker: "1"})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace")[-3000:])
        # The dump requested after the measured part is the second file (.1): the
        # first (no suffix) is written when the process exits.
        for path in sorted(out.glob("callgrind.out.*")):
            if path.suffix == ".1":
                for line in path.read_text().splitlines():
                    if line.startswith("summary:"):
                        return int(line.split()[1])
        raise RuntimeError(f"no callgrind dump of the measured part in {out}")
