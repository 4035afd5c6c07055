"""Nothing acknowledged is lost: a child edge killed with SIGKILL at random moments under load.

A few kills here (bounded in time); ``python -m bench.durability --kills 20`` runs the
long count the closing figures come from. The same count with persistence off finds
losses, so the check can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.durability import run_async


@pytest.mark.timeout(180)
async def test_no_acknowledged_message_is_lost_across_random_kills(tmp_path: Path) -> None:
    result = await run_async(3, seed=20261207, workdir=tmp_path, drain=10.0, min_s=0.2)
    assert result.kills == 3
    assert result.acknowledged > 50, result  # there was load (a busy machine is slow)
    assert result.sent >= result.acknowledged
    assert result.lost == 0, result
    assert result.delivered >= result.acknowledged


@pytest.mark.timeout(120)
async def test_the_count_finds_losses_when_persistence_is_off(tmp_path: Path) -> None:
    result = await run_async(
        1, seed=5, workdir=tmp_path, drain=2.0, synchronous="off", min_s=0.4, max_s=0.5
    )
    assert result.acknowledged > 0
    assert result.lost > 0, result


@pytest.mark.timeout(180)
async def test_no_qos2_message_acknowledged_by_pubrec_is_lost(tmp_path: Path) -> None:
    result = await run_async(2, seed=2, workdir=tmp_path, drain=10.0, qos=2, min_s=0.3)
    assert result.acknowledged > 20, result
    assert result.lost == 0, result
