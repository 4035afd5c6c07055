"""Small helpers shared by every ``edgesim`` command group.

Conventions (the same for ``pki``, ``trust``, ``edge``, ``device`` and ``fleet``):

- data goes to stdout, messages to stderr;
- ``--json`` switches stdout to one JSON document;
- exit status 0 on success, 1 when a check failed, 2 on a usage error
  (argparse's own convention, which we keep for our own usage errors too).

Command handlers raise :class:`CliError` for anything the user must fix; the
dispatcher in :mod:`edge.cli` prints it as ``edgesim: error: ...`` without a
traceback and exits with its code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """An error the user must fix; printed without a traceback.

    ``code`` is the process exit status (1: a check failed or an input is bad,
    2: usage error).
    """

    def __init__(self, message: str, code: int = EXIT_CHECK_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def emit(data: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Write a command's result to stdout: JSON with ``as_json``, else ``human(data)``."""
    if as_json or human is None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    else:
        text = human(data)
        if text:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """Write a message for the person at the terminal to stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# --- argparse types: a bad value becomes argparse's usage error (exit 2) naming the flag


def iso_time(text: str) -> datetime:
    """argparse type: an ISO 8601 time (``2026-03-01T12:00:00Z``); naive means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (example: 2026-03-01T12:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse
