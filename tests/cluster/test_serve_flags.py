"""``edge serve --workers/--cluster/--node-id``: bad values are refused by name, --help tells."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "edge", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--workers", "0"], "--workers: 0 is out of range 1-256"),
        (["--workers", "many"], "--workers: 'many' is not a number or 'auto'"),
        (["--cluster", "http://x:1"], "--cluster 'http://x:1': expected nats://HOST:PORT"),
        (["--cluster", ","], "--cluster: no URL given"),
    ],
)
def test_bad_values_are_usage_errors(args: list[str], named: str) -> None:
    result = _serve(*args)
    assert result.returncode == 2
    assert named in result.stderr


def test_help_tells_about_workers_and_cluster() -> None:
    result = _serve("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--workers N|auto" in text
    assert "--cluster nats://HOST:PORT[,...]" in text
    assert "--node-id ID" in text
    assert "--worker-index" not in text  # the supervisor's own flag
