"""Logging for `pgflow supervise`: text or JSON lines on stderr, passwords
masked in every record, handler records tagged with their task.

Executors are forked from the supervisor and inherit this configuration, so
what handlers log goes through the same handler, format and filters.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from executor.log_context import FIELDS, TaskContextFilter
from supervisor.redact import mask_password

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(task)s"


class MaskPasswords(logging.Filter):
    """Masks database passwords in the message (a re-exec logs its command line,
    a connection error its URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_password(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, message, the task's
    fields inside a handler, and exc (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = mask_password(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Replace the root logger's handlers with one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TaskContextFilter())
    handler.addFilter(MaskPasswords())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
