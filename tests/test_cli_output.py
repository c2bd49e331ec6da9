"""The quick commands: what they import, and how they end when their reader goes away."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import corrupt_exif_jpeg, photo
from daemon_helpers import write_config

# The quick commands, each run by `main` in a fresh interpreter that then reports which of
# the heavy libraries got imported.
_IMPORTS = """
import sys
from stylebox.cli import main
status = main(sys.argv[1:])
heavy = sorted(name for name in ("torch", "onnxruntime") if name in sys.modules)
print("HEAVY", heavy, "STATUS", status, file=sys.stderr)
"""

_CONFIG = """
state_dir = "state"
[[inbox]]
name = "starry"
path = "inbox"
outbox = "outbox"
plugin = "gatys"
params = { style = "starry_night" }
[[inbox]]
name = "quick"
path = "quick"
outbox = "quick-out"
plugin = "fast"
params = { model = "starry_night_small" }
"""

# The same, with the gatys plugin's module replaced by a stand-in that imports nothing
# heavy (as its restructure will make it): whatever else loads torch on these paths shows.
_IMPORTS_WITHOUT_GATYS = (
    """
import sys, types
from stylebox.plugins.api import Plugin, PluginParams

class Params(PluginParams):
    style: str

class GatysPlugin(Plugin):
    name = "gatys"
    Params = Params

    def process(self, image, job):
        return image

stand_in = types.ModuleType("stylebox.plugins.gatys")
stand_in.GatysPlugin = GatysPlugin
sys.modules["stylebox.plugins.gatys"] = stand_in
"""
    + _IMPORTS
)


def _with_journal(tmp_path: Path) -> Path:
    """A config whose journal exists and holds a running job, so status reads all of it."""
    from stylebox.daemon.journal import Journal, NewJob

    config = write_config(tmp_path, _CONFIG)
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    journal.add([NewJob("inbox:starry", tmp_path / "a.png", "0" * 64, "gatys", "h", "k")])
    row = journal.claim("elsewhere:1", 60)
    assert row is not None
    journal.set_progress(row.id, 3, 10)
    journal.close()
    return config


def _arguments(command: list[str], config: Path) -> list[str]:
    """The command line for ``command`` on ``config``."""
    if command[0] == "status":
        return [*command, "--config", str(config)]
    if command == ["config", "check"]:
        return [*command, str(config)]
    return command


QUICK = [["status"], ["status", "--json"], ["config", "check"], ["config", "schema"]]
QUICK_IDS = ["status", "status-json", "config-check", "config-schema"]


@pytest.mark.parametrize("command", QUICK, ids=QUICK_IDS)
@pytest.mark.parametrize(
    "script", [_IMPORTS, _IMPORTS_WITHOUT_GATYS], ids=["as-installed", "gatys-stand-in"]
)
def test_quick_commands_do_not_import_torch_or_onnxruntime(
    tmp_path: Path, command: list[str], script: str
) -> None:
    """As installed; and with a stand-in for the gatys plugin's module, so that anything
    else that starts importing torch on these paths shows."""
    args = _arguments(command, _with_journal(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "STATUS 0" in result.stderr, result.stderr
    assert "HEAVY []" in result.stderr, result.stderr


def _into_a_closed_pipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command line with its standard output a pipe whose reader has already gone,
    as `stylebox ... | head` ends up once head exits: its first write meets a closed pipe."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "stylebox.cli", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=cwd,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "command",
    [["status", "--json"], ["status"], ["config", "schema"], ["config", "check"], ["plugins"]],
    ids=["status-json", "status", "config-schema", "config-check", "plugins"],
)
def test_a_closed_stdout_exits_141_without_a_traceback(tmp_path: Path, command: list[str]) -> None:
    result = _into_a_closed_pipe(*_arguments(command, _with_journal(tmp_path)), cwd=tmp_path)
    assert result.stderr == ""
    assert result.returncode == 141


def test_a_journal_that_is_not_a_database_is_said_in_one_line(tmp_path: Path) -> None:
    # sqlite3.DatabaseError's traceback came out of status, serve, run and batch alike.
    config = write_config(tmp_path, _CONFIG)
    (tmp_path / "state").mkdir()
    journal = tmp_path / "state" / "journal.sqlite3"
    journal.write_text("a file some tool left here\n" * 40)
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"stylebox: the journal {journal} cannot be used (file is not a database); move it "
        "aside and start again (the photos still in inboxes are queued anew, results already "
        "made are kept)\n"
    )


def test_a_librarys_warning_is_a_json_log_line_like_the_others(tmp_path: Path) -> None:
    # Pillow's "Corrupt EXIF data" warning on a photo it still reads came out as two raw
    # lines ("...TiffImagePlugin.py:982: UserWarning: ...", "  warnings.warn(...)") among
    # the JSON lines a log reader parses; then as a log line naming no photo, and only for
    # the first such photo (Python says a warning once for each line of code raising it).
    bad = corrupt_exif_jpeg(photo(32, 24))
    (tmp_path / "exif.jpg").write_bytes(bad)
    (tmp_path / "other.jpg").write_bytes(bad + b"\0")  # other bytes: a job of its own
    command = [sys.executable, "-m", "stylebox.cli", "run", str(tmp_path / "exif.jpg"),
               str(tmp_path / "other.jpg"), "--plugin", "posterize", "--out",
               str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # each one JSON
    warned = [line for line in lines if line["logger"] == "py.warnings"]
    started = {line["file"]: line["job"] for line in lines if line["msg"] == "started"}
    # One line a photo, as its job reads it (Pillow reads the EXIF twice), naming both.
    assert [(line["file"], line["job"]) for line in warned] == list(started.items())
    for line in warned:
        assert line["msg"].startswith("UserWarning: Corrupt EXIF data") and "\n" not in line["msg"]
        assert re.fullmatch(r".*/PIL/\w+\.py:\d+", line["where"]), line["where"]
