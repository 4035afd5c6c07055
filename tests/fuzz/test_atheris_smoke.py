"""A short run of every atheris target (tests/fuzz/atheris_targets.py) on its seed corpus.

``make fuzz`` runs them for minutes; here each gets a few hundred inputs, enough
to show the target still starts, reads its corpus and finds nothing at once.
The corpus is copied: libFuzzer writes new inputs into its corpus directory.
Inputs that once crashed a target stay in its corpus (e.g. ``bundle/p7b-cert-version-126``),
so every run replays them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TARGETS = sorted(p.name for p in (HERE / "corpus").iterdir())

pytest.importorskip("atheris")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", TARGETS)
def test_the_target_runs_clean_on_its_corpus(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE / "corpus" / target, corpus)
    env = {**os.environ, "EDGESIM_PURE_PYTHON": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "atheris_targets.py"),
            target,
            "-runs=300",
            # A fixed seed: the same 300 inputs on every run, so that this test
            # passes or fails with the code, not the draw. Random exploration is
            # `make fuzz`'s job; what it finds goes into the corpus, replayed here.
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 300 runs" in done.stderr
