"""Log lines with the request id: `configure_logging` for ``cdd-serve --log-format text|json``.

Every record gets a ``request_id`` attribute (the current call's id, see `serving.request_context`, or
"-" outside a call). Text: ``time LEVEL logger [request_id]: message``. JSON: one object per line with
``time`` (UTC ISO 8601), ``level``, ``logger``, ``request_id``, ``message`` and ``exception`` when any.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from serving.request_context import current_request

__all__ = ["JsonFormatter", "RequestIdFilter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id``; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = current_request()
        record.request_id = call.request_id if call is not None else "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> logging.Handler:
    """Install one stderr handler in ``log_format`` ("text" or "json") on the root logger, replacing the
    one an earlier call installed (other handlers stay); returns it. Raises ValueError for another format."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name("cdd-serve")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "cdd-serve"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
