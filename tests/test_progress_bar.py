"""The per-job progress bar on an 80-column terminal."""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import photo
from rich.console import Console

from stylebox.daemon.runner import Job
from stylebox.progress import BarReporter, LogReporter

GATYS_METRICS = {
    "loss": 123456.7,
    "content": 32100.5,
    "style": 81234.9,
    "tv": 11020.3,
    "size": 512.0,
    "its": 1.23,
}


def _lines(reporter: BarReporter) -> list[str]:
    console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
    console.print(reporter)
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def _reporter() -> BarReporter:
    return BarReporter(Console(width=80, file=io.StringIO(), force_terminal=True))


def test_step_count_and_eta_stay_visible_at_80_columns() -> None:
    reporter = _reporter()
    job = Job(Path("kodim05.png"), Path("unused"), label="inbox:starry/beach-kodim05.png")
    reporter.started(job)
    reporter.progress(job, 12, 300, {**GATYS_METRICS, "eta": 140.0})
    (line,) = _lines(reporter)
    assert len(line) <= 80
    assert "12/300" in line
    assert "eta 0:02:20" in line
    assert "0:00:0" in line  # the elapsed time
    assert line.startswith("…") and "beach-kodim05.png" in line  # a long name keeps its end
    assert "loss=1.235e+05" in line  # the metrics text is what gives way (with the bar)


def test_before_the_first_step_it_says_starting() -> None:
    reporter = _reporter()
    job = Job(Path("photo.png"), Path("unused"))
    reporter.started(job)
    (line,) = _lines(reporter)
    assert "photo.png" in line and "starting" in line
    assert "0/?" not in line
    assert "eta -:--:--" in line


def test_several_jobs_line_up_at_80_columns() -> None:
    reporter = _reporter()
    jobs = [
        Job(Path(name), Path("unused"), label=f"inbox:starry/{name}")
        for name in ("a.png", "a-much-longer-holiday-photo-name.jpeg")
    ]
    for job in jobs:
        reporter.started(job)
    reporter.progress(jobs[0], 7, 80, {**GATYS_METRICS, "eta": 3725.0})
    reporter.progress(jobs[1], 80, 80, GATYS_METRICS)
    first, second = _lines(reporter)
    assert len(first) <= 80 and len(second) <= 80
    assert " 7/80 " in first and "eta 1:02:05" in first
    assert "80/80" in second and "eta 0:00:00" in second
    assert second.startswith("…") and "photo-name.jpeg" in second


class _Terminal(io.StringIO):
    """A standard error that says it is a terminal, and keeps what is written to it."""

    def isatty(self) -> bool:
        return True


def test_a_batch_bar_counts_ended_photos_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    from stylebox.progress import count_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with count_bar("batch nightly", 10) as advance:
        advance(3, 1)
        advance(2)  # a retry that waits in the queue does not count: callers pass ended only
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    shown = [line for line in text.splitlines() if "batch nightly" in line][-1]
    assert "5/10" in shown and "1 failed" in shown
    assert "img/s" in shown


def test_without_a_terminal_a_batch_says_its_count_in_a_line_now_and_then(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Under journald a long batch said nothing between its jobs' start and end lines.
    import stylebox.progress as progress

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal
    caplog.set_level("INFO", logger="stylebox")
    with progress.count_bar("batch nightly", 10) as advance:
        advance(3, 1)  # the first line waits for COUNT_LINE_SECONDS
        advance(0)
        monkeypatch.setattr(progress, "COUNT_LINE_SECONDS", 0.0)
    with progress.count_bar("batch nightly", 10) as advance:
        advance(4, 1)
        advance(0)  # a retry queued: nothing ended, nothing said
        advance(6)
    with progress.count_bar("train", 10, lines=False) as advance:
        advance(10)  # training logs its own step lines
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("batch", "tr"))]
    assert len(said) == 2, said
    assert re.fullmatch(
        r"batch nightly: 4 of 10 ended \(1 failed\) in 0:00:00, about 0:00:00 left", said[0]
    ), said
    assert re.fullmatch(r"batch nightly: 10 of 10 ended \(1 failed\) in 0:00:00", said[1]), said


def test_a_log_line_is_printed_above_the_bar_not_across_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    from stylebox import logs
    from stylebox.progress import count_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    logs.setup(json_lines=False)
    with count_bar("batch nightly", 2) as advance:
        logging.getLogger("stylebox").info("started", extra={"file": "kodim01.png"})
        advance(1)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    lines = re.split(r"[\r\n]+", text)
    (logged,) = [line for line in lines if "file=kodim01.png" in line]
    assert "batch nightly" not in logged and logged.endswith("INFO started file=kodim01.png")


def test_the_photo_presets_loss_is_shown_with_the_others(caplog: pytest.LogCaptureFixture) -> None:
    # The photorealism term was in the manifest but not on the progress line.
    job = Job(Path("kodim05.png"), Path("work"), label="inbox:photo/kodim05.png")
    with caplog.at_level("INFO", logger="stylebox"):
        LogReporter().progress(job, 300, 300, {**GATYS_METRICS, "photo": 2048.25})
    assert "tv=1.102e+04 photo=2048 1.23 it/s" in caplog.text


def test_a_file_name_that_looks_like_markup_is_printed_as_it_is() -> None:
    # "[/b]" in a name raised rich's MarkupError as the photo's job ended; "[red]" vanished.
    from types import SimpleNamespace

    reporter = _reporter()
    for name in ("[b]odd.png", "[red]draft.png"):
        job = Job(Path(name), Path("unused"))
        reporter.started(job)
        names = SimpleNamespace(result=Path("out") / f"[/b]{name}")
        result = SimpleNamespace(manifest={"timings": {"total_seconds": 1.5}}, names=names)
        reporter.finished(job, result)  # type: ignore[arg-type]
        shown = reporter.console.file.getvalue()  # type: ignore[attr-defined]
        assert f"{name} -> out/[/b]{name} (1.5 s)" in shown
        # Its bar is gone: it was drawn again under the done line.
        assert _lines(reporter) == []


def test_a_step_without_metrics_ends_its_line_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job(Path("kodim05.png"), Path("work"))
    with caplog.at_level("INFO", logger="stylebox"):
        LogReporter().progress(job, 1, 1, {})
    assert caplog.messages == ["kodim05.png: step 1/1"]  # no trailing space


def test_a_failed_jobs_bar_goes_and_the_others_stay(tmp_path: Path) -> None:
    # A job that failed kept its bar, frozen at its last step under the jobs still running,
    # until the command ended: read as one still at work.
    from stepper_plugin import Stepper, StepperParams

    from stylebox.daemon.outbox import Outbox
    from stylebox.daemon.runner import PluginHandle, Runner
    from stylebox.errors import BadInput, PluginError
    from stylebox.plugins.api import Runtime

    reporter = _reporter()
    waiting = Job(Path("queued.png"), Path("unused"))
    reporter.started(waiting)  # another job's bar, which stays
    good = tmp_path / "good.png"
    photo(24, 16).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    stepper = Stepper(StepperParams(steps=4, fail_at=2), Runtime(state_dir=tmp_path / "state"))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    jobs = [Job(path, tmp_path / path.stem) for path in (truncated, good)]
    outcomes = Runner(reporter=reporter).execute_many(
        jobs, handle, Outbox(tmp_path / "out"), [threading.Event() for _ in jobs]
    )
    assert isinstance(outcomes[0], BadInput) and isinstance(outcomes[1], PluginError)
    (line,) = _lines(reporter)
    assert "queued.png" in line
    reporter.failed(waiting, PluginError("stopped"))
    assert _lines(reporter) == []


def test_a_job_that_raises_out_of_the_runner_after_its_start_loses_its_bar(
    tmp_path: Path,
) -> None:
    # A work folder that cannot be made (a full disk; here a file in its way) raised out of
    # the runner after the job's bar was drawn, and the bar stayed.
    from stepper_plugin import Stepper, StepperParams

    from stylebox.daemon.outbox import Outbox
    from stylebox.daemon.runner import PluginHandle, Runner
    from stylebox.plugins.api import Runtime

    reporter = _reporter()
    good = tmp_path / "good.png"
    photo(24, 16).save(good)
    (tmp_path / "in-the-way").write_text("a file where the work folder's parent should be")
    stepper = Stepper(StepperParams(steps=2), Runtime(state_dir=tmp_path / "state"))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    job = Job(good, tmp_path / "in-the-way" / "work")
    with pytest.raises(OSError):
        Runner(reporter=reporter).execute(job, handle, Outbox(tmp_path / "out"))
    assert _lines(reporter) == []


def test_a_lost_runs_end_leaves_the_newer_runs_bar_and_progress(tmp_path: Path) -> None:
    # A job claimed again in this process while its lost run wound down: the old run's end
    # took the new run's bar away and stopped its progress reaching the journal.
    from stylebox.daemon.journal import Journal, NewJob
    from stylebox.daemon.pipeline import _JournalReporter
    from stylebox.errors import Cancelled

    journal = Journal(tmp_path / "journal.sqlite3")
    ((row, _),) = journal.add([NewJob("inbox:a", tmp_path / "photo.png", "0", "p", "h", "k")])
    bar = _reporter()
    reporter = _JournalReporter(journal, bar)
    lost, again = (Job(tmp_path / "photo.png", tmp_path / "work", job_id=row.id) for _ in "ab")
    reporter.started(lost)
    reporter.started(again)
    assert len(_lines(bar)) == 1  # the lost run's bar went as the new one came
    reporter.failed(lost, Cancelled("its lease was lost"))
    reporter.progress(lost, 9, 10, {})  # the lost run's last word counts for nothing
    (line,) = _lines(bar)
    assert "starting" in line
    time.sleep(1.05)  # progress is written at most once a second
    reporter.progress(again, 2, 10, {})
    assert (journal.get(row.id).step, journal.get(row.id).total) == (2, 10)
    (line,) = _lines(bar)
    assert "2/10" in line
    journal.close()
