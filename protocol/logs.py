"""Log set-up shared by the broker's and the worker's command lines: ``--log-format text|json``.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``msg``,
plus ``job_id``, ``queue`` and ``task`` when the log call passed them as
``extra`` (:func:`job_extra`), and ``exc`` with the traceback of a logged
exception. One line per record, so a log shipper needs no multi-line rules.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "queue", "task")


def job_extra(job_id: str, queue: str | None = None, task: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about one job."""
    extra: dict[str, Any] = {"job_id": job_id}
    if queue is not None:
        extra["queue"] = queue
    if task is not None:
        extra["task"] = task
    return extra


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (a name) in ``log_format`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
