"""Issue 12: nothing lost or mixed up under faults. A job's outputs appear together or not
at all; a job's work folder is never used for another photo; a vanished input says so."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import photo, pixels
from daemon_helpers import write_config
from PIL import Image
from stepper_plugin import Stepper, StepperParams, run

from stylebox.config import load_config
from stylebox.daemon.jobloop import JobLoop
from stylebox.daemon.journal import Journal, NewJob
from stylebox.daemon.outbox import Outbox
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import Job, JobResult, PluginHandle, Runner
from stylebox.daemon.sources import Source
from stylebox.errors import Cancelled, PluginError, StyleboxError
from stylebox.plugins.api import Runtime
from stylebox.progress import StepLogReporter

CONFIG = """
state_dir = "state"
[daemon]
retry_backoff_seconds = 0.01
[[inbox]]
name = "poster"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
max_attempts = {attempts}
params = {{ bits = 2 }}
"""

SNAPSHOTTING = {"steps": 4, "snapshot_every": 1}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    photo(24, 16).save(path)
    return path


def _disk_full_on(
    monkeypatch: pytest.MonkeyPatch, name: str, how: str, code: int = errno.ENOSPC
) -> None:
    """Writing (``how="fsync"``) or renaming into place (``"rename"``) the output file
    ``name`` fails as on a full disk (or with another ``code``); every other file is
    written as usual."""
    full = OSError(code, os.strerror(code))
    if how == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            written = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if written.startswith(f".{name}.") and written.endswith(".tmp"):
                raise full
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        real_replace = os.replace

        def replace(source: os.PathLike[str] | str, target: os.PathLike[str] | str) -> None:
            if os.path.basename(target) == name:
                raise full
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)


def _listing(folder: Path) -> list[str]:
    """Everything under ``folder``, hidden files included, relative to it."""
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# -- A: all outputs or none -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["fsync", "rename"])
def test_a_disk_full_on_the_manifest_leaves_no_result_and_the_retry_writes_all(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    with monkeypatch.context() as patch:
        _disk_full_on(patch, "photo.json", how)
        with pytest.raises(PluginError, match="No space left on device"):
            run(image, out, work, SNAPSHOTTING)
    # Neither result nor animation nor any temp file is left; the snapshots stay for the
    # retry (they are watched while the job runs).
    snapshots = [f"photo.steps/{step:04d}.png" for step in range(5)]
    assert _listing(out) == ["photo.steps", *snapshots]

    manifest = run(image, out, work, SNAPSHOTTING).manifest
    # The stepper reports a loss: its curves are part of the set, gone with it above.
    listing = ["photo.gif", "photo.json", "photo.loss.svg", "photo.png", "photo.steps"]
    assert _listing(out) == [*listing, *snapshots]
    assert manifest["output"]["animation"] == "photo.gif"
    assert manifest["output"]["loss_plot"] == "photo.loss.svg"


KILLED_BEFORE_THE_MANIFEST = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from stepper_plugin import run

real_replace = os.replace


def replace(source, target):
    if os.path.basename(target) == "photo.json":
        os.kill(os.getpid(), signal.SIGKILL)  # result and animation are in place already
    real_replace(source, target)


os.replace = replace
image, out, work, params = json.loads(sys.argv[1])
run(Path(image), Path(out), Path(work), params)
"""


def test_a_set_a_crash_left_without_its_manifest_goes_when_the_next_write_fails(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    script = KILLED_BEFORE_THE_MANIFEST.format(tests=str(Path(__file__).parent))
    arguments = json.dumps([str(image), str(out), str(work), SNAPSHOTTING])
    killed = subprocess.run([sys.executable, "-c", script, arguments], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert {"photo.png", "photo.gif"} <= set(_listing(out)) and "photo.json" not in _listing(out)

    with monkeypatch.context() as patch:  # the next run cannot write its manifest either
        _disk_full_on(patch, "photo.json", "fsync")
        with pytest.raises(PluginError):
            run(image, out, work, SNAPSHOTTING)
    # the killed run's result, animation and manifest temp file are gone with this run's
    assert [name for name in _listing(out) if "/" not in name] == ["photo.steps"]
    run(image, out, work, SNAPSHOTTING)
    assert {"photo.png", "photo.gif", "photo.json"} <= set(_listing(out))


def test_a_failed_rewrite_that_placed_nothing_keeps_the_earlier_complete_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job redone over its own complete outputs (a run killed after its manifest but
    before it tidied up) whose first rename fails has broken nothing: the set stays."""
    outbox = Outbox(tmp_path)
    names = outbox.reserve("photo.png")
    with outbox.writing(names) as outputs:
        outputs.write_result(photo(8, 8), None)
        outputs.write_manifest({"first": True})
    with monkeypatch.context() as patch:
        _disk_full_on(patch, "photo.png", "rename")
        with pytest.raises(OSError), outbox.writing(names) as outputs:
            outputs.write_result(photo(8, 8, seed=1), None)
            outputs.write_manifest({"first": False})
    assert _listing(tmp_path) == ["photo.json", "photo.png"]
    assert json.loads(names.manifest.read_text()) == {"first": True}
    with pytest.raises(OSError), outbox.writing(names) as outputs:  # placed, then failed
        outputs.write_result(photo(8, 8, seed=1), None)
        outputs.write_manifest({"first": False})
        _disk_full_on(monkeypatch, "photo.json", "rename")
    assert _listing(tmp_path) == []


def _pipeline(tmp_path: Path, params: dict, attempts: int = 1) -> tuple[Pipeline, Source]:
    """An inbox ``poster`` run by the stepper plugin, on a real journal."""
    loaded = load_config(write_config(tmp_path, CONFIG.format(attempts=attempts)))
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=loaded.config.state_dir))
    inbox = loaded.config.inbox[0]
    source = Source.of("inbox:poster", inbox, PluginHandle("stepper", "1", stepper, stepper.params))
    journal = Journal(loaded.config.state_dir / "journal.sqlite3")
    return Pipeline(loaded, {source.key: source}, journal), source


def _inbox(
    tmp_path: Path, params: dict, *names: str, attempts: int = 1
) -> tuple[Pipeline, Source, Path]:
    """:func:`_pipeline`, with its inbox holding a photo of each of ``names`` (each
    other bytes), none queued yet."""
    pipeline, source = _pipeline(tmp_path, params, attempts)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for seed, name in enumerate(names, 1):
        photo(24, 16, seed=seed).save(inbox / name)
    return pipeline, source, inbox


def test_a_long_jobs_step_is_in_the_log_every_progress_log_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A 30-minute job logged that it started and, at the end, that it was done: nothing
    # between for whoever reads journald.
    loaded = load_config(
        write_config(
            tmp_path,
            CONFIG.format(attempts=1).replace(
                "[daemon]\n", "[daemon]\nprogress_log_seconds = 0.2\n"
            ),
        )
    )
    assert loaded.config.daemon.progress_log_seconds == 0.2
    params = StepperParams(steps=8, seconds_per_step=0.1)
    stepper = Stepper(params, Runtime(state_dir=loaded.config.state_dir))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    source = Source.of("inbox:poster", loaded.config.inbox[0], handle)
    journal = Journal(loaded.config.state_dir / "journal.sqlite3")
    steps = StepLogReporter(loaded.config.daemon.progress_log_seconds)
    pipeline = Pipeline(loaded, {source.key: source}, journal, reporter=steps)
    (tmp_path / "inbox").mkdir()
    photo(24, 16).save(tmp_path / "inbox" / "photo.png")
    pipeline.enqueue(source, [tmp_path / "inbox" / "photo.png"])
    with caplog.at_level(logging.INFO, logger="stylebox"):
        JobLoop(pipeline).run_until_empty({source.key})
    lines = [r for r in caplog.records if getattr(r, "event", None) == "progress"]
    assert 2 <= len(lines) <= 4, [r.getMessage() for r in lines]  # 0.8 s of steps, 0.2 s apart
    assert all(r.step < r.total == 8 and r.job == 1 for r in lines)  # type: ignore[attr-defined]
    assert lines[0].getMessage().startswith("inbox:poster/photo.png: step ")
    journal.close()
    default = load_config(write_config(tmp_path, CONFIG.format(attempts=1)))
    assert default.config.daemon.progress_log_seconds == 60


def test_a_job_that_fails_for_good_leaves_nothing_in_the_outbox(tmp_path: Path) -> None:
    params = {**SNAPSHOTTING, "fail_at": 3}  # a plugin fault after snapshots 0 to 3
    pipeline, source = _pipeline(tmp_path, params, attempts=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]

    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "failed" and row.attempts == 2
    assert _listing(tmp_path / "outbox") == []  # no result, animation, snapshots or temps
    assert _listing(inbox / "failed") == ["photo.png", "photo.png.error.txt"]
    assert not (tmp_path / "state" / "jobs" / str(row.id)).exists()
    pipeline.journal.close()


def test_an_inbox_job_whose_outputs_cannot_be_written_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk failed each job after its tries (15 s), and every photo dropped while
    it lasted went to failed/; now the job waits, tried each minute, counting no try."""
    pipeline, source = _pipeline(tmp_path, dict(SNAPSHOTTING), attempts=1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]
    loop = JobLoop(pipeline)
    with monkeypatch.context() as patch:
        _disk_full_on(patch, "photo.json", "fsync")
        for _ in range(2):  # more than max_attempts
            loop.run_next({source.key})
            (row,) = pipeline.journal.jobs(source.key)
            assert (row.state, row.error_class, row.attempts) == ("queued", "StorageError", 0)
            assert row.not_before > time.time() + 55
            with closing(sqlite3.connect(pipeline.journal.path)) as db, db:
                db.execute("UPDATE jobs SET not_before = 0")  # its minute is up
    # Nothing of the set but the snapshots, kept for the next try; the photo stays.
    assert [name for name in _listing(tmp_path / "outbox") if "/" not in name] == ["photo.steps"]
    assert (inbox / "photo.png").is_file() and not (inbox / "failed").exists()
    loop.run_until_empty({source.key})  # room again
    assert pipeline.journal.get(row.id).state == "done"
    assert (tmp_path / "outbox" / "photo.json").is_file()
    pipeline.journal.close()


def test_a_storage_error_that_stays_is_tried_as_a_fault_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name the file system refuses (EINVAL, ENAMETOOLONG: exFAT, eCryptfs) is the same at
    # every try: waited for, the job ran its plugin each minute for ever.
    pipeline, source = _pipeline(tmp_path, dict(SNAPSHOTTING), attempts=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]
    _disk_full_on(monkeypatch, "photo.json", "fsync", errno.ENAMETOOLONG)
    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.error_class, row.attempts) == ("failed", "StorageError", 2)
    assert (inbox / "failed" / "photo.png").is_file()
    pipeline.journal.close()


# -- B: a work folder belongs to one input ---------------------------------------------------


class _CancelAt:
    """A reporter that asks the job to stop once it has reported ``step``."""

    def __init__(self, step: int, cancel: threading.Event) -> None:
        self.step, self.cancel = step, cancel

    def started(self, job: Job) -> None:
        pass

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        if step >= self.step:
            self.cancel.set()

    def finished(self, job: Job, result: JobResult) -> None:
        pass

    def failed(self, job: Job, error: StyleboxError) -> None:
        pass


def test_a_work_folder_left_by_another_photo_is_not_resumed(
    tmp_path: Path, style_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a lost journal, photo B got photo A's job id, and with it A's work folder: B
    must come out as B, never as A resumed from A's checkpoint."""
    from stylebox.plugins.gatys import GatysParams, GatysPlugin

    settings = {"style": [str(style_file)], "size": 32, "steps": 6, "checkpoint_every": 1}
    params = GatysParams.model_validate({**settings, "snapshot_every": 0})
    plugin = GatysPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))
    handle = PluginHandle("gatys", "1", plugin, params)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    photo(32, 24, seed=1).save(a)
    Image.fromarray(255 - pixels(photo(32, 24, seed=2)).astype(np.uint8)).save(b)
    work = tmp_path / "state" / "jobs" / "1"

    cancel = threading.Event()
    with pytest.raises(Cancelled):
        Runner(reporter=_CancelAt(3, cancel)).execute(
            Job(a, work, stem="a", job_id=1), handle, Outbox(tmp_path / "out"), cancel
        )
    assert (work / "checkpoint" / "gatys.pt").is_file()

    with caplog.at_level(logging.WARNING, logger="stylebox"):
        mixed = Runner().execute(Job(b, work, stem="b", job_id=1), handle, Outbox(tmp_path / "out"))
    fresh_work = tmp_path / "state" / "jobs" / "fresh"
    fresh = Runner().execute(Job(b, fresh_work, stem="b"), handle, Outbox(tmp_path / "fresh"))

    assert "resumed_from_step" not in mixed.manifest
    assert [entry["step"] for entry in mixed.manifest["history"]] == list(range(1, 7))
    assert mixed.manifest["timings"]["runs"] == 1  # A's elapsed time is not B's either
    with Image.open(mixed.names.result) as got, Image.open(fresh.names.result) as want:
        assert np.array_equal(pixels(got), pixels(want))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "another input" in warning.getMessage() and "b.png" in warning.getMessage()


def test_a_work_folder_of_the_same_photo_is_resumed(tmp_path: Path, image: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    params = {"steps": 6, "checkpoint_every": 2}
    with pytest.raises(Cancelled):
        run(image, out, work, {**params, "cancel_at": 3})
    assert run(image, out, work, params).manifest["resumed_from_step"] == 3


def test_job_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)

    def add(key: str) -> int:
        ((row, new),) = journal.add([NewJob("inbox:x", Path(f"/in/{key}.png"), "0", "p", "h", key)])
        assert new
        return row.id

    assert [add("a"), add("b")] == [1, 2]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM jobs WHERE id = 2")
    db.close()
    assert add("c") == 3  # not 2: its work folder may still be on disk
    journal.close()


# -- D: a vanished input ----------------------------------------------------------------------


def test_an_input_deleted_while_queued_is_said_to_have_vanished(tmp_path: Path) -> None:
    pipeline, source = _pipeline(tmp_path, {"steps": 2})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    pipeline.enqueue(source, [inbox / "photo.png"])
    (inbox / "photo.png").unlink()

    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "failed" and row.error_class == "BadInput"
    assert row.error_message == "photo.png vanished from the inbox before it could be processed"
    pipeline.journal.close()


def test_a_photo_renamed_while_queued_is_its_jobs_under_the_new_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its job failed as 'vanished' (logged as an error), then ran again for the new name as
    # a retry, writing its outputs under the old name.
    pipeline, source, inbox = _inbox(tmp_path, {"steps": 2}, "alpha.png")
    assert pipeline.enqueue(source, [inbox / "alpha.png"]) == ["queued"]
    os.rename(inbox / "alpha.png", inbox / "beta.png")
    assert pipeline.enqueue(source, [inbox / "beta.png"]) == ["known"]  # as the watcher does

    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.name, row.stem) == ("done", "beta.png", "beta")
    assert {p.name.split(".")[0] for p in (tmp_path / "outbox").iterdir()} == {"beta"}
    assert (inbox / "processed" / "beta.png").is_file()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # A copy is not a rename: it waits for the job, and is its duplicate.
    photo(24, 16, seed=2).save(inbox / "one.png")
    assert pipeline.enqueue(source, [inbox / "one.png"]) == ["queued"]
    shutil.copy(inbox / "one.png", inbox / "two.png")
    assert pipeline.enqueue(source, [inbox / "two.png"]) == ["waiting"]
    JobLoop(pipeline).run_until_empty({source.key})
    assert (inbox / "processed" / "one.png").is_file()
    assert (inbox / "processed" / "two.png.duplicate.txt").is_file()
    pipeline.journal.close()


def test_a_photo_renamed_after_its_job_began_keeps_the_names_it_began_under(
    tmp_path: Path,
) -> None:
    # Renamed while waiting out a retry, it resumed from its checkpoint under the new name:
    # the first run's snapshots stayed under the old one for good, the GIF lacked them.
    params = {"steps": 4, "snapshot_every": 1, "checkpoint_every": 1, "fail_at": 2}
    pipeline, source, inbox = _inbox(tmp_path, params, "alpha.png", attempts=3)
    pipeline.enqueue(source, [inbox / "alpha.png"])
    loop = JobLoop(pipeline)
    loop.run_next({source.key})  # fails at step 2, to be tried again
    os.rename(inbox / "alpha.png", inbox / "beta.png")
    assert pipeline.enqueue(source, [inbox / "beta.png"]) == ["known"]
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.name, row.stem) == ("beta.png", "alpha")
    time.sleep(0.05)  # the retry's backoff
    loop.run_until_empty({source.key})
    assert pipeline.journal.get(row.id).state == "done"
    assert {p.name.split(".")[0] for p in (tmp_path / "outbox").iterdir()} == {"alpha"}
    assert (inbox / "processed" / "beta.png").is_file()
    pipeline.journal.close()


def test_a_photo_renamed_onto_a_queued_ones_name_supersedes_its_job(tmp_path: Path) -> None:
    # The job of the bytes the name held before was left queued: it ran after, found its
    # file moved away by the other's end, and failed as 'vanished' (an error).
    pipeline, source, inbox = _inbox(tmp_path, {"steps": 1}, "alpha.png", "beta.png")
    pipeline.enqueue(source, [inbox / "alpha.png", inbox / "beta.png"])
    os.rename(inbox / "alpha.png", inbox / "beta.png")
    assert pipeline.enqueue(source, [inbox / "beta.png"]) == ["known"]
    first, second = pipeline.journal.jobs(source.key)
    assert (second.state, second.error_class) == ("failed", "InputChanged")
    assert (first.state, first.name, first.stem) == ("queued", "beta.png", "beta")
    JobLoop(pipeline).run_until_empty({source.key})
    assert pipeline.journal.get(first.id).state == "done"
    pipeline.journal.close()


def test_a_renamed_photo_and_a_copy_of_it_queued_together_are_its_job_and_a_copy(
    tmp_path: Path,
) -> None:
    # Both followed the job (the journal's rows of one call are from before the first):
    # the renamed file was left with no job, and its name reserved for good.
    pipeline, source, inbox = _inbox(tmp_path, {"steps": 1}, "alpha.png")
    pipeline.enqueue(source, [inbox / "alpha.png"])
    os.rename(inbox / "alpha.png", inbox / "beta.png")
    shutil.copy(inbox / "beta.png", inbox / "gamma.png")
    assert pipeline.enqueue(source, [inbox / "beta.png", inbox / "gamma.png"]) == [
        "known",
        "waiting",
    ]
    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.name) == ("done", "beta.png")
    assert (inbox / "processed" / "beta.png").is_file()
    assert (inbox / "processed" / "gamma.png.duplicate.txt").is_file()
    assert source.outbox._reserved == set()  # no name held for a job that is not there
    pipeline.journal.close()


def test_a_renamed_photo_queued_by_two_calls_at_once_is_known_to_both(tmp_path: Path) -> None:
    # The watcher and a rescan (or a woken waiter) at once: the call whose follow came
    # second fell through, logging the file as waiting for its own job.
    pipeline, source, inbox = _inbox(tmp_path, {"steps": 1}, "alpha.png")
    pipeline.enqueue(source, [inbox / "alpha.png"])
    os.rename(inbox / "alpha.png", inbox / "beta.png")
    follow = pipeline.journal.follow
    inner: list[list[str]] = []

    def the_other_call_first(*args: Any, **kwargs: Any) -> Any:
        if not inner:  # the other call takes the job between this one's look and its follow
            pipeline.journal.follow = follow  # type: ignore[method-assign]
            inner.append(pipeline.enqueue(source, [inbox / "beta.png"]))
        return follow(*args, **kwargs)

    pipeline.journal.follow = the_other_call_first  # type: ignore[method-assign]
    assert pipeline.enqueue(source, [inbox / "beta.png"]) == ["known"]
    assert inner == [["known"]] and not pipeline._waiting
    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.name) == ("done", "beta.png")
    assert source.outbox._reserved == set()
    pipeline.journal.close()


def test_a_failed_photo_dropped_again_under_another_name_is_named_after_it(
    tmp_path: Path,
) -> None:
    pipeline, source, inbox = _inbox(tmp_path, {"steps": 2, "fail_at": 1}, "first.png")
    pipeline.enqueue(source, [inbox / "first.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    # Moved back under another name, with a copy beside it: each is the failed job's retry
    # (the failed file is gone from failed/), and the two race for it.
    shutil.copy(inbox / "failed" / "first.png", inbox / "third.png")
    os.rename(inbox / "failed" / "first.png", inbox / "second.png")
    retry_stem = pipeline._retry_stem
    other: list[list[str]] = []

    def the_other_first(*args: Any) -> str:  # the other file's retry comes in between
        stem = retry_stem(*args)
        if not other:
            pipeline._retry_stem = retry_stem  # type: ignore[method-assign]
            other.append(pipeline.enqueue(source, [inbox / "second.png"]))
        return stem

    pipeline._retry_stem = the_other_first  # type: ignore[method-assign]
    assert pipeline.enqueue(source, [inbox / "third.png"]) == ["waiting"]  # for that job
    assert other == [["retry"]]
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.name, row.stem) == ("queued", "second.png", "second")
    assert source.outbox._reserved == {"second"}  # not "third": that call queued nothing
    pipeline.journal.close()


def test_an_input_moved_away_while_its_job_ran_ends_done_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It ended done with nothing said, and no photo in processed/.
    pipeline, source = _pipeline(tmp_path, {"steps": 2})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    pipeline.enqueue(source, [inbox / "photo.png"])
    process = source.plugin.instance.process

    def moved_away(image: Image.Image, job: object) -> Image.Image:
        (inbox / "photo.png").rename(tmp_path / "kept.png")
        return process(image, job)  # type: ignore[arg-type]

    source.plugin.instance.process = moved_away  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="stylebox.pipeline"):
        JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "done" and (tmp_path / "outbox" / "photo.json").is_file()
    assert any(
        r.getMessage() == "input gone from the inbox while its job ran; nothing to move to "
        "processed/"
        for r in caplog.records
    )
    pipeline.journal.close()
