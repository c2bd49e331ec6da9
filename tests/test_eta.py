"""A plugin's own estimate of the time left (its ``eta`` metric): journal, status and bar."""

from __future__ import annotations

import importlib
import io
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import EARLIER_JOBS_TABLE, installed_site, photo
from daemon_helpers import write_config
from rich.console import Console

from stylebox.daemon import status
from stylebox.daemon.journal import Journal, NewJob
from stylebox.daemon.runner import Job
from stylebox.progress import BarReporter

POSTERIZE = """
state_dir = "state"
[[inbox]]
name = "poster"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
params = { bits = 2 }
"""

# The jobs table as the first journals were written, before the eta_at column.
OLD_SCHEMA = (
    EARLIER_JOBS_TABLE
    + """
CREATE INDEX jobs_by_state ON jobs (state, not_before);
CREATE INDEX jobs_by_source ON jobs (source, state);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO jobs (source, origin_path, input_path, name, sha256, plugin, params_hash,
                  unique_key, state, lease_owner, lease_expires, step, total, created_at,
                  claimed_at)
VALUES ('inbox:poster', '/in/a.png', '/in/a.png', 'a.png', 'x', 'posterize', 'h', 'k',
        'running', 'elsewhere:1', 1e12, 3, 10, 1, 1);
"""
)


def _running_job(journal_file: Path) -> int:
    journal = Journal(journal_file)
    journal.add([NewJob("inbox:poster", Path("/in/a.png"), "0" * 64, "posterize", "h", "k")])
    row = journal.claim("elsewhere:1", 60)
    assert row is not None
    journal.close()
    return row.id


def _only_running(report: dict) -> dict:
    (job,) = report["sources"]["inbox:poster"]["running_jobs"]
    return job


def test_status_says_when_its_state_dir_has_no_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, POSTERIZE)  # nothing run: a mistyped state_dir looks so
    assert status.print_status(config) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"no journal at {tmp_path / 'state' / 'journal.sqlite3'}: no job has been queued "
        "with this state_dir"
    )
    assert status.collect(config)["journal_exists"] is False


def test_status_lists_what_an_inbox_holds_that_no_job_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path, POSTERIZE)
    (tmp_path / "inbox" / "album").mkdir(parents=True)
    (tmp_path / "inbox" / "processed").mkdir()  # the inbox's own: no line
    assert status.print_status(config) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "inbox:poster: 0 queued, 0 running, 0 done, 0 failed",
        "  left alone: album/ is a folder, left where it is: only files in the inbox itself "
        "are taken (move its photos up, or run a [[batch]] over it)",
    ]
    assert status.collect(config)["sources"]["inbox:poster"]["left_alone"] == [lines[2][14:]]


def test_status_prefers_the_plugins_eta(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, POSTERIZE)
    journal_file = tmp_path / "state" / "journal.sqlite3"
    job_id = _running_job(journal_file)
    journal = Journal(journal_file)
    journal.set_progress(job_id, 3, 10, eta=140.0)

    job = _only_running(status.collect(config))
    assert job["step"] == 3 and job["total"] == 10
    assert job["eta_from"] == "plugin"
    assert 139 <= job["eta_seconds"] <= 140  # counted down from when it was reported

    assert status.print_status(config, as_json=True) == 0
    assert _only_running(json.loads(capsys.readouterr().out))["eta_from"] == "plugin"
    status.print_status(config)
    # 140 s as reported, counted down by however long a loaded machine took to get here.
    assert re.search(r"step 3/10, about 1(39|40) s left", capsys.readouterr().out)

    # A report without it goes back to the linear estimate.
    journal.set_progress(job_id, 4, 10)
    job = _only_running(status.collect(config))
    assert job["eta_from"] == "linear" and job["eta_seconds"] is not None
    journal.close()


def test_a_job_past_its_last_step_is_said_to_write_its_result(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # An 8000x6000 photo's job said "about 0 s left" for the 20 s its PNG took to write.
    config = write_config(tmp_path, POSTERIZE)
    journal_file = tmp_path / "state" / "journal.sqlite3"
    job_id = _running_job(journal_file)
    journal = Journal(journal_file)
    journal.set_progress(job_id, 9, 10, eta=5.0)
    assert _only_running(status.collect(config))["writing"] is False
    journal.set_progress(job_id, 10, 10, eta=0.0)
    job = _only_running(status.collect(config))
    assert (job["writing"], job["eta_seconds"], job["eta_from"]) == (True, None, None)
    status.print_status(config)
    assert "running #1 a.png: step 10/10, writing the result\n" in capsys.readouterr().out
    journal.close()


def test_an_old_journal_gains_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE)
    journal_file = tmp_path / "state" / "journal.sqlite3"
    journal_file.parent.mkdir()
    with sqlite3.connect(journal_file) as db:
        db.executescript(OLD_SCHEMA)

    # status only reads: it leaves the file as the (older) daemon using it wrote it
    job = _only_running(status.collect(config))
    assert (job["step"], job["total"], job["eta_from"]) == (3, 10, "linear")
    with sqlite3.connect(journal_file) as db:
        assert "eta_at" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}

    journal = Journal(journal_file)  # a writer adds it
    (row,) = journal.jobs()
    assert (row.name, row.step, row.eta_at) == ("a.png", 3, None)
    journal.set_progress(row.id, 4, 10, eta=60.0)
    assert journal.get(row.id).eta_at == pytest.approx(time.time() + 60, abs=5)
    journal.close()
    Journal(journal_file).close()  # opening it again changes nothing
    assert _only_running(status.collect(config))["eta_from"] == "plugin"


def test_a_new_claim_forgets_the_last_runs_eta(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.add([NewJob("inbox:poster", Path("/in/a.png"), "0" * 64, "posterize", "h", "k")])
    row = journal.claim("here:1", 60)
    assert row is not None
    journal.set_progress(row.id, 3, 10, eta=140.0)
    journal.requeue(row.id, refund_attempt=True)
    again = journal.claim("here:1", 60)
    assert again is not None and again.eta_at is None
    journal.close()


_ETA_PLUGIN = """
import threading, time
from stylebox.plugins.api import Plugin, PluginParams

reported = threading.Event()
release = threading.Event()


class EtaPlugin(Plugin):
    name = "reports-eta"
    Params = PluginParams

    def process(self, image, job):
        job.progress(1, 10, eta=500.0)
        time.sleep(1.1)  # the journal hears of progress at most once a second
        job.progress(2, 10, eta=140.0)
        reported.set()
        release.wait(60)
        job.progress(10, 10)
        return image
"""


def _eta_plugin_site(folder: Path) -> Path:
    entry = "[stylebox.plugins]\nreports-eta = etaplugin:EtaPlugin\n"
    return installed_site(folder, "etaplugin", entry, {"etaplugin.py": _ETA_PLUGIN})


def test_a_daemon_jobs_eta_reaches_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from stylebox.config import load_config
    from stylebox.daemon.jobloop import JobLoop
    from stylebox.daemon.journal import journal_path
    from stylebox.daemon.pipeline import Pipeline
    from stylebox.daemon.sources import build_sources
    from stylebox.plugins.registry import discover

    monkeypatch.syspath_prepend(str(_eta_plugin_site(tmp_path)))
    config = write_config(
        tmp_path, POSTERIZE.replace('"posterize"', '"reports-eta"').replace("{ bits = 2 }", "{}")
    )
    loaded = load_config(config)
    sources = build_sources(loaded, discover())
    journal = Journal(journal_path(loaded.config.state_dir))
    pipeline = Pipeline(loaded, sources, journal)
    (tmp_path / "inbox").mkdir()
    photo(16, 12).save(tmp_path / "inbox" / "a.png")
    pipeline.enqueue(sources["inbox:poster"], [tmp_path / "inbox" / "a.png"])
    plugin_module = importlib.import_module("etaplugin")
    worker = threading.Thread(target=JobLoop(pipeline).run_next, args=({"inbox:poster"},))
    worker.start()
    try:
        assert plugin_module.reported.wait(60)
        # The journal takes a report at most once a second, the latest when it is up.
        deadline = time.monotonic() + 5
        job = _only_running(status.collect(config))
        while (job["eta_seconds"] or 0) > 140 and time.monotonic() < deadline:
            time.sleep(0.1)
            job = _only_running(status.collect(config))
    finally:
        plugin_module.release.set()
        worker.join(60)
        journal.close()
    assert job["eta_from"] == "plugin"
    assert 135 <= job["eta_seconds"] <= 140


def _rendered(reporter: BarReporter) -> str:
    reporter.console.print(reporter)
    text = reporter.console.file.getvalue()  # type: ignore[attr-defined]
    reporter.console.file = io.StringIO()
    return text


def test_the_bar_shows_the_plugins_eta_and_counts_it_down(monkeypatch: pytest.MonkeyPatch):
    reporter = BarReporter(Console(width=80, file=io.StringIO(), color_system=None))
    job = Job(Path("photo.png"), Path("unused"))
    reporter.started(job)
    reporter.progress(job, 12, 300, {"loss": 1.5e5, "eta": 140.0})
    assert "eta 0:02:20" in _rendered(reporter)

    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 30)
    assert "eta 0:01:50" in _rendered(reporter)
    monkeypatch.undo()

    # A report without it: the estimate from the speed so far (rich's), not the old figure.
    time.sleep(0.05)
    reporter.progress(job, 14, 300, {"loss": 1.4e5})
    (task,) = reporter.__rich__().tasks
    linear = task.time_remaining
    assert linear is not None
    shown = _rendered(reporter)
    assert "0:02:20" not in shown
    minutes, seconds = divmod(int(linear), 60)
    assert f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}" in shown


def test_status_says_when_a_running_jobs_process_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A job whose process on this machine was killed still reads "running" in the journal
    until the next start reclaims it: status says so rather than counting down."""
    import socket
    import subprocess
    import sys

    config = write_config(tmp_path, POSTERIZE)
    journal_file = tmp_path / "state" / "journal.sqlite3"
    journal_file.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    journal = Journal(journal_file)
    journal.add([NewJob("inbox:poster", Path("/in/a.png"), "0" * 64, "posterize", "h", "k")])
    owner = f"{socket.gethostname()}:{dead.pid}"
    row = journal.claim(owner, 60)
    assert row is not None
    journal.set_progress(row.id, 3, 10, eta=140.0)
    journal.close()

    job = _only_running(status.collect(config))
    assert job["owner_gone"] and job["eta_seconds"] is None
    status.print_status(config)
    assert f"step 3/10; its process ({owner}) is gone: it resumes at the next start" in (
        capsys.readouterr().out
    )
    assert not status._owner_gone("elsewhere:1")  # a machine not seen from here: alive


def test_status_names_a_running_batch_job_under_its_sub_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Failed jobs were named so (failed #11 2025/zero.png); running ones only by their
    # file's name, so two photo07.jpg of two folders could not be told apart.
    config = write_config(
        tmp_path,
        'state_dir = "state"\n[[batch]]\nname = "nightly"\nsource = "library"\n'
        'outbox = "stylised"\nplugin = "posterize"\nparams = { bits = 2 }\n',
    )
    (tmp_path / "library" / "2026").mkdir(parents=True)
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    origin = tmp_path / "library" / "2026" / "photo07.jpg"
    journal.add([NewJob("batch:nightly", origin, "0" * 64, "posterize", "h", "k")])
    assert journal.claim("elsewhere:1", 60) is not None
    journal.close()
    (job,) = status.collect(config)["sources"]["batch:nightly"]["running_jobs"]
    assert job["file"] == "2026/photo07.jpg"
    status.print_status(config)
    assert "  running #1 2026/photo07.jpg: starting" in capsys.readouterr().out
