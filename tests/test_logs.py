"""Log lines: JSON elsewhere, readable on a terminal, a traceback in either."""

from __future__ import annotations

import json
import logging
import sys

from stylebox.logs import JsonFormatter, TextFormatter


def _record(exc_info: bool = False, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("stylebox.test-logs")
    try:
        raise KeyError("lookup")
    except KeyError:
        caught = sys.exc_info() if exc_info else None
    args = ("probe", "KeyError: 'lookup'")
    message = "plugin %s raised %s"
    return logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, message, args, caught, extra=extra
    )


def test_a_traceback_is_a_field_of_one_json_line() -> None:
    line = JsonFormatter().format(_record(exc_info=True, event="plugin_bug"))
    (entry,) = [json.loads(line)]
    assert entry["msg"] == "plugin probe raised KeyError: 'lookup'"
    assert entry["event"] == "plugin_bug" and "KeyError: 'lookup'" in entry["exception"]


def test_on_a_terminal_the_fields_stay_on_the_line_and_the_traceback_goes_below() -> None:
    # The fields came after the traceback, on its last line: "KeyError: 'lookup' event=...".
    first, *rest = TextFormatter().format(_record(exc_info=True, event="plugin_bug")).split("\n")
    assert first.endswith("ERROR plugin probe raised KeyError: 'lookup' event=plugin_bug")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "KeyError: 'lookup'"
    # A traceback that came as a field (from a Ray worker) is printed the same way.
    sent = "Traceback (most recent call last):\n  File \"probe.py\", line 3\nKeyError: 'x'\n"
    first, *rest = TextFormatter().format(_record(event="plugin_bug", exception=sent)).split("\n")
    assert first.endswith("raised KeyError: 'lookup' event=plugin_bug")
    assert rest == sent.rstrip("\n").split("\n")


def test_a_library_s_own_underscored_fields_are_left_out() -> None:
    # Ray's record factory stamps every record in a process where it has started; those
    # lines then ran past the terminal's width and the JSON carried Ray's bookkeeping.
    record = _record(event="plugin_bug")
    record._ray_timestamp_ns = 1796573788531540502  # as Ray's factory sets it, not as extra
    assert "_ray" not in TextFormatter().format(record)
    assert "_ray_timestamp_ns" not in json.loads(JsonFormatter().format(record))


def test_uvicorn_s_coloured_copy_of_its_message_is_left_out() -> None:
    # uvicorn logs each line with ``extra={"color_message": ...}``, the same text with
    # terminal colour codes; the JSON lines carried the escapes.
    record = _record(color_message="Started server process [\x1b[36m%d\x1b[0m]")
    assert "color_message" not in json.loads(JsonFormatter().format(record))
    assert "\x1b" not in TextFormatter().format(record)


def test_uvicorn_s_start_and_stop_are_not_logged_as_from_an_error_logger() -> None:
    # uvicorn logs "Started server process" to its logger "uvicorn.error": a search of the
    # daemon's log for "error" found each start and stop.
    logger = logging.getLogger("uvicorn.error")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "Shutting down", (), None)
    line = JsonFormatter().format(record)
    assert json.loads(line)["logger"] == "uvicorn" and "error" not in line


def test_on_a_terminal_a_name_s_line_break_or_escape_is_shown_not_obeyed() -> None:
    # A file name is data: its break forged a log line, its escape cleared the screen.
    logger = logging.getLogger("stylebox.test-logs")
    name = "x\x1b[2Jy\nz.png"
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "cannot read %s:\nsee below", (name,), None,
        extra={"file": name},
    )  # fmt: skip
    line = TextFormatter().format(record)
    assert line.endswith(
        "cannot read x\\x1b[2Jy\\nz.png:\nsee below file=x\\x1b[2Jy\\nz.png"
    )  # the message's own break kept
    assert json.loads(JsonFormatter().format(record))["file"] == name  # JSON escapes it
