"""The ``edgesim`` dispatcher: help, usage errors and exit codes."""

from __future__ import annotations

import pytest

from edge.cli import main


def test_no_group_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: edgesim" in capsys.readouterr().err


def test_unknown_group_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-group"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
