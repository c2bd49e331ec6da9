"""Log set-up: readable lines on a terminal, JSON lines elsewhere (journald, files)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import unicodedata
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is data.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_LIBRARY = frozenset({"color_message"})
#: Loggers shown by another name: uvicorn logs its start and stop to ``uvicorn.error``
#: (a name kept for history), and a search of the log for "error" found every start.
_LOGGER_NAMES = {"uvicorn.error": "uvicorn"}


def readable(text: str) -> str:
    """``text`` as people can read it: each byte of a file name that is not UTF-8 (which
    Python keeps as a lone surrogate, ``os.fsdecode``'s escape) becomes U+FFFD, as a file
    manager shows it. For logs, the journal's names and reasons, and output names; the path
    itself is kept exactly wherever a file is opened or moved."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to
        return text.encode("utf-8", "replace").decode("utf-8")


def shown(text: str) -> str:
    """``text`` safe to print on a line of a terminal: :func:`readable`, and each control
    character as its escape (``\\n``, ``\\x1b``). A file name may hold any of them:
    printed as they are, a line break forged a line of ``stylebox status`` and an escape
    sequence cleared the screen."""
    return escaped(readable(text))


def say(message: str, *, lines: bool = False) -> None:
    """``message`` on stderr as the command's own word (``stylebox: ...``), on one line: a
    file name's line break or escape shown, not obeyed. With ``lines``, each of its lines
    (a config's problems, one a line) so."""
    parts = message.split("\n") if lines else [message]
    said = "\n".join(shown(part) for part in parts)
    print(f"stylebox: {said}", file=sys.stderr)


def escaped(text: str) -> str:
    """``text`` with each control character as its escape, and nothing else changed (a
    name's bytes that are not UTF-8 stay as they are, for a script to find the file by)."""
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _CONTROLS
        else char
        for char in text
    )


#: Unicode categories of what a terminal obeys rather than shows: controls (C0, DEL, C1)
#: and the line and paragraph separators.
_CONTROLS = frozenset({"Cc", "Zl", "Zp"})


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
        record.message = _message(record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if extra:
            line += " " + " ".join(f"{k}={shown(str(v))}" for k, v in extra.items())
        if record.exc_info:
            trace = self.formatException(record.exc_info)
        if trace:
            line += "\n" + str(trace).rstrip("\n")
        return line


def _message(record: logging.LogRecord) -> str:
    """The record's message for a terminal: what its arguments bring in (a file name, an
    error naming one) with each control character shown as its escape, the message's own
    text as written (a few messages break their line on purpose)."""
    args = record.args
    if not args:
        return str(record.msg)

    def safe(value: object) -> object:
        if isinstance(value, str | os.PathLike | BaseException):
            return shown(str(value))
        return value  # a number for %d or %.1f: as it is

    if isinstance(args, Mapping):
        return str(record.msg) % {key: safe(value) for key, value in args.items()}
    return str(record.msg) % tuple(safe(value) for value in args)


@dataclass
class _About:
    """What this thread's log records are about (``job``, ``file``), and the warnings said
    about it so far; ``quiet``: a look whose warnings the real read says again."""

    fields: Mapping[str, object]
    quiet: bool = False
    said: set[str] = field(default_factory=set)


_about: ContextVar[_About | None] = ContextVar("stylebox_about", default=None)


@contextmanager
def about(**fields: object) -> Iterator[None]:
    """Records logged inside, in this thread, carry ``fields`` (``job``, ``file``) where
    they have none of their own: a library's warning on a photo (Pillow's "Corrupt EXIF
    data"), or a plugin's own line, then says which job it is about. A warning is said
    once inside, however often it is raised (Pillow reads a photo's EXIF twice)."""
    token = _about.set(_About(fields))
    try:
        yield
    finally:
        _about.reset(token)


@contextmanager
def unwarned() -> Iterator[None]:
    """Warnings raised inside, in this thread, are not said: a first look at a file, which
    its job's read says again, with the job named."""
    token = _about.set(_About({}, quiet=True))
    try:
        yield
    finally:
        _about.reset(token)


class _AboutFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        now = _about.get()
        for key, value in (now.fields if now else {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A library's warning as one log line (``UserWarning: Corrupt EXIF data...``), where
    it was raised as a field: ``logging.captureWarnings`` logged Python's two-line text,
    the warning's source line included."""
    text = f"{category.__name__}: {message}".strip()
    now = _about.get()
    if now is not None:
        if now.quiet or text in now.said:
            return
        now.said.add(text)
    logging.getLogger("py.warnings").warning(text, extra={"where": f"{filename}:{lineno}"})


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
    handler.addFilter(_AboutFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A library's warnings (Pillow's "Corrupt EXIF data" on a photo it still reads) are log
    # lines like any other, not raw text among the JSON lines.
    warnings.showwarning = _log_warning
    # Pillow's are about the photo read (its EXIF, its chunks): each photo's said, not only
    # the first one's (Python says a warning once for each line that raises it).
    # (UserWarning: a DecompressionBombWarning stays an error, as images.py makes it.)
    warnings.filterwarnings("always", category=UserWarning, module=r"PIL\.")
    # Libraries whose INFO lines are about their own internals (an ONNX export logs one per
    # optimiser pass): only their warnings. Plugins' own loggers keep ``level``.
    for name in ("watchdog", "onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
