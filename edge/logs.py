"""Log formats for ``edgesim edge serve --log-format``: text (the default) or JSON lines.

In JSON mode every log record is one JSON object on one line. An event of the
edge's :class:`~edge.core.events.EventLog` (logged with ``-v``) carries exactly
the event's fields (``id``, ``time``, ``kind``, ``outcome``, ``identity``,
``reason``, ``hint``, ``alert``, ``certificate``, ``set``, ``version``...), the
same JSON the admin API's ``/v1/events`` returns, plus ``level`` and ``logger``.
Other records have ``time``, ``level``, ``logger`` and ``message`` (and
``exception`` with the traceback).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from edge.core.events import Event, EventLog

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "log_events_as_json"]

#: The values ``--log-format`` accepts.
LOG_FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_EVENTS = logging.getLogger("edgesim.events")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an event record is the event itself."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a line of JSON (no newline inside: JSON escapes them)."""
        event = getattr(record, "event", None)
        out: dict[str, Any]
        if isinstance(event, dict):
            out = dict(event)
            out.setdefault("level", record.levelname.lower())
            out.setdefault("logger", record.name)
        else:
            out = {
                "time": datetime.fromtimestamp(record.created, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info:
                out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(log_format: str, *, verbose: bool) -> None:
    """Set up the root logger: INFO with ``verbose`` (every event), else WARNING."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def log_events_as_json(events: EventLog) -> None:
    """Log every event of ``events`` whole (for :class:`JsonFormatter`), if INFO is on.

    The log's own text line is off then (``EventLog(log_events=False)``): each event
    is logged once, with all its fields.
    """
    if not _EVENTS.isEnabledFor(logging.INFO):
        return  # nothing would be written: no listener, no per-event copies

    def write(event: Event) -> None:
        _EVENTS.info("%s %s", event["kind"], event["outcome"], extra={"event": event})

    events.add_listener(write)
