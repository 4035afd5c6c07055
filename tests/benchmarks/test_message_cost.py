"""The message-cost driver routes real messages through the broker (without callgrind)."""

from __future__ import annotations

import pytest

from bench import message_cost


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pair", ["4>4", "5>5", "5>4", "4>5"])
def test_the_driver_delivers_every_message_at_the_subscribers_level(pair: str) -> None:
    # The driver checks each subscriber's bytes against the size of the PUBLISH at
    # its level: a driver that no longer matches the broker raises here instead of
    # counting the wrong work under callgrind.
    message_cost._run(pair, messages=40, fanout=3, batch=10, warmup=10)


def test_a_batch_that_does_not_divide_the_messages_is_counted_as_run() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        message_cost._run("4>4", messages=25, fanout=1, batch=10, warmup=10)
