"""Log set-up: readable lines on a terminal, JSON lines elsewhere (journald, files)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is data.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_LIBRARY = frozenset({"color_message"})
#: Loggers shown by another name: uvicorn logs its start and stop to ``uvicorn.error``
#: (a name kept for history), and a search of the log for "error" found every start.
_LOGGER_NAMES = {"uvicorn.error": "uvicorn"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's data fields. Names with a leading underscore are left out: libraries
    stamp their own bookkeeping on every record (Ray adds ``_ray_timestamp_ns`` once it
    has started in the process), and that is not ours to print; nor is uvicorn's
    ``color_message``, its message again with terminal colour codes."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k not in _LIBRARY and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": _LOGGER_NAMES.get(record.name, record.name),
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The line and its fields first, then any traceback below them (a traceback sent
        # as a field, from a Ray worker, too).
        extra = _fields(record)
        trace = extra.pop("exception", None)
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            trace = self.formatException(record.exc_info)
        if trace:
            line += "\n" + str(trace).rstrip("\n")
        return line


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a line is logged. While a progress bar is
    drawn, rich puts its own writer there, which prints the line above the bar; a stream
    kept from start-up would write it across the bar."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]  # an attribute in the stubs
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def setup(level: int = logging.INFO, json_lines: bool | None = None) -> None:
    """Log to stderr; JSON lines unless stderr is a terminal (or ``json_lines`` says)."""
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A library's warnings (Pillow's "Corrupt EXIF data" on a photo it still reads) are log
    # lines like any other, not raw text among the JSON lines.
    logging.captureWarnings(True)
    # Libraries whose INFO lines are about their own internals (an ONNX export logs one per
    # optimiser pass): only their warnings. Plugins' own loggers keep ``level``.
    for name in ("watchdog", "onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
