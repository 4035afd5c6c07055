"""make demo's driver, small: the whole chain through the edgesim CLI, run twice in one folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices import demo


@pytest.mark.timeout(180)
def test_the_demo_passes_again_in_the_same_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second run makes a new PKI: a trust store kept from the first would still
    # hold the first run's CA (every device refused), and faulty certificates kept
    # from it would be refused as unknown_ca instead of expired or revoked.
    args = ["--out", str(tmp_path), "--devices", "12", "--ramp", "40/s", "--duration", "1s"]
    args += ["--faults", "expired=10%,revoked=10%,wrong-ca=10%"]
    for _ in range(2):
        assert demo.main(args) == 0, capsys.readouterr().out[-3000:]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["ok"] is True
        assert report["devices"] == 12
