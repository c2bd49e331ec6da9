"""Issue 12, one job loop: claiming, leases, time limits and draining live in
:class:`JobLoop`, which serve, batch and run share. In-process tests drive a real journal
and pipeline with the stepper plugin; the command tests run the real CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Literal

import pytest
from conftest import encoded, photo
from daemon_helpers import gated_env, wait_until, write_config
from PIL import Image
from stepper_plugin import Stepper, StepperParams

from stylebox.config import load_config
from stylebox.daemon.jobloop import JobLoop
from stylebox.daemon.journal import JobRow, Journal, NewJob, journal_path
from stylebox.daemon.leases import Stop
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import PluginHandle
from stylebox.daemon.sources import Source, build_sources
from stylebox.daemon.status import print_status
from stylebox.errors import BadInput, Cancelled, ConfigError
from stylebox.plugins.api import Capabilities, JobContext, Runtime
from stylebox.plugins.registry import PluginInfo, Registry
from stylebox.web.state import _queued

CONFIG = """
state_dir = "state"
[daemon]
lease_seconds = {lease}
retry_backoff_seconds = 0.01
[[inbox]]
name = "steps"
path = "inbox"
outbox = "outbox"
plugin = "posterize"  # the loop runs the stepper (a test plugin) in its place
max_attempts = 1
{extra}
"""


def _loop(
    tmp_path: Path,
    params: dict,
    lease: float = 30,
    extra: str = "",
    plugin: type[Stepper] = Stepper,
) -> JobLoop:
    """A loop over one inbox ``steps`` run by the stepper plugin, with ``photo.png``
    queued in it."""
    loaded = load_config(write_config(tmp_path, CONFIG.format(lease=lease, extra=extra)))
    stepper = plugin(StepperParams(**params), Runtime(state_dir=loaded.config.state_dir))
    inbox = loaded.config.inbox[0]
    inbox.path.mkdir(exist_ok=True)  # a test may have put a companion there
    source = Source.of("inbox:steps", inbox, PluginHandle("stepper", "1", stepper, stepper.params))
    journal = Journal(journal_path(loaded.config.state_dir))
    pipeline = Pipeline(loaded, {source.key: source}, journal)
    photo(24, 16).save(inbox.path / "photo.png")
    assert pipeline.enqueue(source, [inbox.path / "photo.png"]) == ["queued"]
    return JobLoop(pipeline)


def _only_job(loop: JobLoop) -> JobRow:
    (row,) = loop.journal.jobs()
    return row


def test_the_lease_of_a_job_that_outlives_it_is_kept(tmp_path: Path) -> None:
    # A 4 s job under a 1.5 s lease: were the lease not renewed, another process's
    # reclaim would put the running job back in the queue, and it would run twice. (A
    # 0.6 s lease lapsed once beside another test run on a busy 2-core machine, the
    # heartbeat thread held up longer than its slack; and the reclaims here pause between
    # tries, as another process's would, rather than spin against that thread.)
    loop = _loop(tmp_path, {"steps": 40, "seconds_per_step": 0.1}, lease=1.5)
    loop.start(until_empty=True)
    reclaimed = 0
    while loop.running_count() or loop.journal.queued({"inbox:steps"}):
        reclaimed += loop.journal.reclaim_expired()
        time.sleep(0.01)
    loop.wait()
    row = _only_job(loop)
    assert reclaimed == 0 and row.state == "done" and row.attempts == 1


def test_a_start_with_the_old_process_id_reclaims_that_process_jobs(tmp_path: Path) -> None:
    # A container's daemon is its first process: restarted, it gets the same id, and the
    # job it was running, looking alive, would stay 'running' for good.
    loop = _loop(tmp_path, {"steps": 1})
    owner = f"{socket.gethostname()}:{os.getpid()}"
    claimed = loop.journal.claim(owner, 300)
    assert claimed is not None
    assert loop.reclaim() == 1
    assert (_only_job(loop).state, _only_job(loop).attempts) == ("queued", 0)


@pytest.mark.parametrize(
    ("lease", "steps"), [(0.6, 1000), (30, 300)], ids=["stopped-at-a-heartbeat", "ended-first"]
)
def test_a_run_whose_job_another_worker_took_records_nothing(
    tmp_path: Path, lease: float, steps: int
) -> None:
    # The lease lapsed (the machine slept) and another process's start reclaimed the job,
    # which a worker elsewhere claimed. This run stops at its next heartbeat (a 0.6 s lease
    # is renewed every 0.2 s), or ends before it (a 30 s one, every 10 s; the run takes 3 s):
    # either way the claim is checked before anything is recorded, and the job and its
    # photo are left to that worker.
    loop = _loop(tmp_path, {"steps": steps, "seconds_per_step": 0.01}, lease=lease)
    loop.start()
    assert wait_until(lambda: (_only_job(loop).step or 0) >= 5, 30)
    loop.journal.requeue(_only_job(loop).id, refund_attempt=True)
    assert loop.journal.claim("elsewhere:1", 300) is not None
    assert wait_until(lambda: loop.running_count() == 0, 30)
    row = _only_job(loop)
    assert (row.state, row.lease_owner) == ("running", "elsewhere:1")
    assert (tmp_path / "inbox" / "photo.png").is_file()
    if lease < 1:  # stopped before its end: it wrote no result either
        assert not (tmp_path / "outbox" / "photo.png").exists()
    loop.stop()


def test_a_cancel_does_not_wait_for_another_lanes_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = _loop(tmp_path, {"steps": 1000, "seconds_per_step": 0.01})
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    photo(24, 16, seed=9).save(inbox / "next.png")
    loop.pipeline.enqueue(source, [inbox / "next.png"])
    first = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    first.start()
    assert wait_until(lambda: loop.running_count() == 1, 30)
    running = next(iter(loop._stops))
    claim, claiming = loop.journal.claim, threading.Event()

    def slow_claim(*args: object, **kwargs: object) -> JobRow | None:
        claiming.set()
        time.sleep(2)  # a journal another process holds busy, say
        return claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop.journal, "claim", slow_claim)
    second = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    second.start()
    assert claiming.wait(10)
    began = time.monotonic()
    assert loop.cancel(running)
    assert time.monotonic() - began < 1
    first.join(30)
    second.join(60)
    assert loop.journal.get(running).error_message == "cancelled by request"


def test_a_job_claimed_again_by_its_own_process_runs_once(tmp_path: Path) -> None:
    # Reclaimed after its lease lapsed and claimed again by a second worker of the same
    # daemon (same owner): the first run stops and only the second one's end counts.
    loop = _loop(tmp_path, {"steps": 600, "seconds_per_step": 0.01})  # 6 s a run
    first = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    first.start()
    assert wait_until(lambda: (_only_job(loop).step or 0) >= 5, 30)
    loop.journal.requeue(_only_job(loop).id, refund_attempt=True)
    second = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    second.start()
    first.join(3)
    assert not first.is_alive() and second.is_alive()  # the first run has stopped
    second.join(60)
    row = _only_job(loop)
    assert (row.state, row.attempts) == ("done", 1), row.error_message
    assert (tmp_path / "outbox" / "photo.png").is_file()
    assert (tmp_path / "inbox" / "processed" / "photo.png").is_file()


def test_a_cancel_overrides_a_drain_or_a_timeout_and_a_lost_lease_overrides_all() -> None:
    for first, then, stands in [
        ("drain", "timeout", "drain"), ("timeout", "drain", "timeout"),
        ("drain", "cancel", "cancel"), ("timeout", "cancel", "cancel"),
        ("cancel", "drain", "cancel"), ("cancel", "lost", "lost"), ("lost", "cancel", "lost"),
    ]:  # fmt: skip
        stop = Stop()
        stop.stop(first)
        stop.stop(then)
        assert (stop.is_set(), stop.reason) == (True, stands), (first, then)


def test_drain_puts_a_running_job_back_without_spending_an_attempt(tmp_path: Path) -> None:
    loop = _loop(tmp_path, {"steps": 1000, "seconds_per_step": 0.01, "checkpoint_every": 5})
    loop.start()
    assert wait_until(lambda: (_only_job(loop).step or 0) >= 5, 30)
    assert loop.drain(30) == 0
    row = _only_job(loop)
    assert row.state == "queued" and row.attempts == 0
    checkpoint = tmp_path / "state" / "jobs" / str(row.id) / "checkpoint" / "state.json"
    assert json.loads(checkpoint.read_text())["step"] >= 5  # where the next start resumes
    loop.journal.close()


def test_a_time_limit_fails_the_job_that_runs_past_it(tmp_path: Path) -> None:
    loop = _loop(tmp_path, {"steps": 1000, "seconds_per_step": 0.01}, extra="timeout_seconds = 0.5")
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert row.state == "failed" and row.error_message is not None
    assert row.error_message.startswith("timed out after 0.5 s")
    assert (tmp_path / "inbox" / "failed" / "photo.png").is_file()


def test_a_job_cancelled_between_its_claim_and_its_start_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's cancel of a job a worker has just claimed: neither queued any more nor yet
    # running; it waits for the worker to make the job stoppable rather than saying no.
    loop = _loop(tmp_path, {"steps": 1000, "seconds_per_step": 0.01})
    job_id = _only_job(loop).id
    claimed = threading.Event()
    claim = loop.journal.claim

    def slow_claim(*args: object, **kwargs: object) -> JobRow | None:
        row = claim(*args, **kwargs)  # type: ignore[arg-type]
        claimed.set()
        time.sleep(0.5)  # the window between the claim and the stop flag
        return row

    monkeypatch.setattr(loop.journal, "claim", slow_claim)
    worker = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    worker.start()
    assert claimed.wait(10)
    assert loop.cancel(job_id)
    worker.join(30)
    row = _only_job(loop)
    assert (row.state, row.error_message) == ("failed", "cancelled by request")
    assert (row.step or 0) < 1000


class ReturnsWhenStopped(Stepper):
    """Breaks out of its loop when asked to stop and returns its unfinished image."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in range(1, self.params.steps + 1):
            if job.cancelled:
                break
            time.sleep(self.params.seconds_per_step)
            job.progress(step, self.params.steps)
        return image


def test_a_partial_result_returned_after_a_time_limit_is_no_result(tmp_path: Path) -> None:
    # It was recorded as done: a result from step 60 of 400, the photo moved to processed/.
    params = {"steps": 1000, "seconds_per_step": 0.01}
    loop = _loop(tmp_path, params, extra="timeout_seconds = 0.3", plugin=ReturnsWhenStopped)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert row.state == "failed" and row.error_message is not None
    assert "after being asked to stop; a stopped plugin raises Cancelled" in row.error_message
    assert row.error_message.startswith("timed out after 0.3 s (returned a result at step ")
    assert not (tmp_path / "outbox" / "photo.png").exists()
    assert (tmp_path / "inbox" / "failed" / "photo.png").is_file()


class Overwrites(Stepper):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.note(input="hijacked")
        return image


def test_a_fact_named_as_a_manifest_field_fails_the_job_rather_than_overwrite_it(
    tmp_path: Path,
) -> None:
    loop = _loop(tmp_path, {}, plugin=Overwrites)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert row.state == "failed" and row.error_message is not None
    assert "job.note(input=...): 'input' is one of the manifest's own fields" in (row.error_message)
    assert not (tmp_path / "outbox" / "photo.json").exists()


class NotesASet(Stepper):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.note(sizes={3, 5})
        return image


def test_a_fact_json_cannot_hold_fails_the_job_rather_than_become_its_text(
    tmp_path: Path,
) -> None:
    # It reached the manifest as "{3, 5}" (an object as "<object object at 0x...>").
    loop = _loop(tmp_path, {}, plugin=NotesASet)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert row.state == "failed" and row.error_message is not None
    assert "job.note(sizes=...) holds a value of type set, which the manifest (JSON) cannot " in (
        row.error_message
    )
    assert not (tmp_path / "outbox" / "photo.json").exists()


class ReturnsClosed(Stepper):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        result = image.copy()
        result.close()
        return result


def test_a_closed_result_image_is_named_as_such_and_not_tried_again(tmp_path: Path) -> None:
    # A plugin fault, it was retried: the same code closes it again.
    loop = _loop(tmp_path, {}, plugin=ReturnsClosed)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert (row.error_class, row.error_message) == (
        "PermanentFailure",
        "plugin stepper returned an image that cannot be read (Operation on closed image): "
        "do not close() the result (the plugin breaks its contract; another try would do the "
        "same)",
    )


class RefusesSilently(Stepper):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        raise BadInput()


def test_a_bad_input_raised_without_a_word_still_names_its_photo(tmp_path: Path) -> None:
    # It read "BadInput (raised without a message)": in a run of many, which photo?
    loop = _loop(tmp_path, {}, plugin=RefusesSilently)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert row.reason == "BadInput: photo.png: plugin stepper refused it, saying no reason"


class SizeUnknown(Stepper):
    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return {(640, 480): (320, 240)}[size]


def test_an_output_size_that_raises_is_the_plugins_fault_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Logged as "jobs [1] crashed" with the job loop's traceback; the job's reason named
    # neither the plugin nor output_size.
    loop = _loop(tmp_path, {}, plugin=SizeUnknown)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert (row.state, row.error_class, row.error_message) == (
        "failed",
        "PermanentFailure",  # the same code fails the same way: not tried again
        "plugin stepper's output_size() failed for a 24x16 input: KeyError: (24, 16)",
    )
    events = [getattr(record, "event", None) for record in caplog.records]
    assert "plugin_bug" in events
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


class GivesUp(Stepper):
    """Raises ``Cancelled`` though nothing asked it to stop."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        raise Cancelled("gave up")


def test_a_job_that_cancels_itself_is_a_fault_not_a_drain(tmp_path: Path) -> None:
    # Put back without spending an attempt, it would run again and again: it fails
    # (max_attempts = 1) saying what happened.
    loop = _loop(tmp_path, {}, plugin=GivesUp)
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.error_message == "cancelled itself: gave up"


class CancelledAsItReturns(Stepper):
    """Is cancelled (as by the page) just after its work is done, without looking again."""

    loop: JobLoop

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        assert self.loop.cancel(_only_job(self.loop).id)
        return image


def test_a_cancel_after_the_plugin_returned_keeps_the_result_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The page answered "cancelling"; the job then ends done: the log must not leave the
    # person wondering why the cancel did nothing.
    loop = _loop(tmp_path, {}, plugin=CancelledAsItReturns)
    CancelledAsItReturns.loop = loop
    with caplog.at_level("WARNING", logger="stylebox"):
        loop.run_until_empty({"inbox:steps"})
    assert _only_job(loop).state == "done"
    assert (tmp_path / "outbox" / "photo.png").is_file()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "the cancel came after the job had finished; its result is kept"
    ]


def test_a_job_whose_end_cannot_be_recorded_is_queued_again_not_left_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its input cannot be moved aside (a file stands where failed/ should be): the worker
    # goes on, and the job waits a minute to try again instead of staying 'running' with
    # no lease kept until the next start. Why it waits is kept for `stylebox status` (it
    # showed one more queued job) and said in one log line (it was a traceback a minute).
    loop = _loop(tmp_path, {}, plugin=GivesUp)  # fails at its first try (max_attempts = 1)
    inbox = tmp_path / "inbox"
    (inbox / "failed").write_text("a file where the folder should be")
    before = time.time()
    with caplog.at_level(logging.INFO, logger="stylebox.pipeline"):
        assert [row.id for row in loop.run_next({"inbox:steps"})] == [_only_job(loop).id]
    row = _only_job(loop)
    assert (row.state, row.attempts, row.lease_owner) == ("queued", 0, None)
    assert row.not_before >= before + 59
    assert (inbox / "photo.png").is_file()
    assert row.error_class == "FileExistsError"
    (unsettled,) = [r for r in caplog.records if "cannot record its end" in r.getMessage()]
    assert not unsettled.exc_info and "File exists" in unsettled.getMessage()

    config = tmp_path / "stylebox.toml"
    config.write_text(
        f'state_dir = "{loop.pipeline.state_dir}"\n[[inbox]]\nname = "steps"\n'
        f'path = "{inbox}"\noutbox = "{tmp_path / "outbox"}"\nplugin = "posterize"\n'
        f'failed_dir = "{tmp_path / "aside"}"\n'  # status, too, refuses a file for a folder
    )
    print_status(config)
    printed = capsys.readouterr().out
    assert f"  waiting #{row.id} photo.png: FileExistsError: [Errno 17] File exists" in printed
    assert "(tried again in 6" in printed or "(tried again in 5" in printed


def test_an_input_that_cannot_be_moved_is_a_storage_error_waited_out_not_the_plugins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was recorded as a PluginError (the plugin had done its part), with a traceback in
    # the log at each try; then as a StorageError, tried three times in 15 s and failed:
    # a full disk for a minute put every photo dropped meanwhile in failed/.
    loop = _loop(tmp_path, {"steps": 1})
    processed = tmp_path / "inbox" / "processed"
    processed.write_text("a file where the folder should be")
    before = time.time()
    with caplog.at_level(logging.INFO, logger="stylebox.pipeline"):
        for _ in range(4):  # more than max_attempts: no try is counted
            loop.run_next({"inbox:steps"})
            with closing(sqlite3.connect(loop.journal.path)) as db, db:
                db.execute("UPDATE jobs SET not_before = 0")  # its minute is up
    row = _only_job(loop)
    assert (row.state, row.error_class, row.attempts) == ("queued", "StorageError", 0)
    assert row.error_message.startswith("its input could not be moved: [Errno 17] File exists")
    assert (tmp_path / "inbox" / "photo.png").is_file()
    assert (tmp_path / "outbox" / "photo.json").is_file()  # its complete result stays
    assert not any(record.exc_info for record in caplog.records)
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting: ")]
    assert len(waits) == 4 and waits[0].endswith("; tried again in 60 s")
    loop.run_next({"inbox:steps"})
    assert loop.journal.get(row.id).not_before >= before + 59  # a minute, as said
    processed.unlink()  # mended: the next try completes it
    with closing(sqlite3.connect(loop.journal.path)) as db, db:
        db.execute("UPDATE jobs SET not_before = 0")
    loop.run_next({"inbox:steps"})
    assert loop.journal.get(row.id).state == "done"
    assert (processed / "photo.png").is_file()


def test_a_job_waiting_out_a_retrys_backoff_can_be_cancelled(tmp_path: Path) -> None:
    # The page lists it with a cancel button: "retry in 50 s" must not mean "wait for it".
    loop = _loop(tmp_path, {"steps": 1})
    job = _only_job(loop)
    assert loop.journal.claim("elsewhere", 60.0, ids={job.id}) is not None
    loop.journal.requeue(job.id, delay=60.0, error=RuntimeError("first try failed"))
    assert loop.run_next({"inbox:steps"}) == []  # not runnable before its backoff
    assert loop.pipeline.cancel_queued(job.id)
    row = _only_job(loop)
    assert (row.state, row.error_message) == ("failed", "cancelled by request")
    assert (tmp_path / "inbox" / "failed" / "photo.png").is_file()


def test_a_cancel_that_cannot_end_its_job_leaves_its_attempts_as_they_were(
    tmp_path: Path,
) -> None:
    # Claimed only to be ended, the job counted no attempt: put back, it must not gain one
    # (its count went to -1, an extra try).
    loop = _loop(tmp_path, {"steps": 1})
    job = _only_job(loop)
    (tmp_path / "inbox" / "failed").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        loop.pipeline.cancel_queued(job.id)
    row = _only_job(loop)
    assert (row.state, row.attempts) == ("queued", 0)


def test_a_processed_folder_on_another_file_system_takes_its_photos(tmp_path: Path) -> None:
    # A rename cannot cross file systems (EXDEV): every good photo ended as failed, retried
    # until then, with its complete result left in the outbox.
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    with tempfile.TemporaryDirectory(dir=shm) as elsewhere:
        loop = _loop(tmp_path, {"steps": 1}, extra=f'processed_dir = "{elsewhere}/done"')
        loop.run_next({"inbox:steps"})
        row = _only_job(loop)
        assert (row.state, row.error_message) == ("done", None)
        assert Path(row.input_path) == Path(elsewhere) / "done" / "photo.png"
        assert sorted(p.name for p in Path(elsewhere, "done").iterdir()) == ["photo.png"]
        assert not (tmp_path / "inbox" / "photo.png").exists()


_DIES_AT_THE_MOVE = """
import json, os, sys
sys.path[:0] = [sys.argv[1]]
from pathlib import Path
import test_jobloop
tmp = Path(sys.argv[2])
(tmp / "inbox").mkdir()
test_jobloop.photo(24, 16, seed=3).convert("L").save(tmp / "inbox" / "photo.mask.png")
loop = test_jobloop._loop(tmp, json.loads(sys.argv[3]))

def die(event, args):  # killed at the instant the input would leave the inbox
    if event == "os.rename" and Path(os.fsdecode(args[0])).parent.name == "inbox":
        os._exit(9)

sys.addaudithook(die)
loop.run_next({"inbox:steps"})
"""


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_a_crash_as_an_ended_jobs_input_is_moved_leaves_the_journal_right(
    tmp_path: Path, outcome: str
) -> None:
    # Moved first and recorded after, a crash between left a failed job 'running' with its
    # photo gone, and the next start recorded it as vanished (BadInput) whatever it failed of.
    script = [sys.executable, "-c", _DIES_AT_THE_MOVE, str(Path(__file__).parent), str(tmp_path)]
    # (a step longer than CRASH_MARGIN: the photo predates its job's end by more than it)
    params = {"steps": 1, "seconds_per_step": 0.6, "fail_at": 1 if outcome == "failed" else 0}
    died = subprocess.run([*script, json.dumps(params)], timeout=120)
    assert died.returncode == 9
    journal = Journal(journal_path(tmp_path / "state"))
    (row,) = journal.jobs()
    assert row.state == outcome and (tmp_path / "inbox" / "photo.png").is_file()
    folder = "processed" if outcome == "done" else "failed"
    assert row.input_path == str(tmp_path / "inbox" / folder / "photo.png")

    # The next start's rescan finds the photo in the inbox, and finishes the move.
    loaded = load_config(tmp_path / "stylebox.toml")
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=loaded.config.state_dir))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    source = Source.of("inbox:steps", loaded.config.inbox[0], handle)
    pipeline = Pipeline(loaded, {source.key: source}, journal)
    assert pipeline.enqueue(source, [tmp_path / "inbox" / "photo.png"]) == ["moved"]
    assert journal.get(row.id) == row
    assert Path(row.input_path).is_file() and not (tmp_path / "inbox" / "photo.png").exists()
    assert Path(row.input_path).with_suffix(".mask.png").is_file()  # its companion with it
    assert not (tmp_path / "inbox" / "photo.mask.png").exists()
    if outcome == "failed":
        note = Path(row.input_path + ".error.txt").read_text()
        assert note.startswith("PluginError: ") and f"job: {row.id}" in note

    # Dropped again later, the same photo is the usual duplicate, or (the failed one
    # still in failed/) a job of its own: not "moved".
    shutil.copy(row.input_path, tmp_path / "inbox" / "again.png")
    shutil.copy(
        Path(row.input_path).with_suffix(".mask.png"), tmp_path / "inbox" / "again.mask.png"
    )
    again = pipeline.enqueue(source, [tmp_path / "inbox" / "again.png"])
    assert again == (["duplicate"] if outcome == "done" else ["queued"])


_REFUSED_AT_THE_MOVE = """
import json, os, sys
sys.path[:0] = [sys.argv[1]]
from pathlib import Path
import test_jobloop
tmp = Path(sys.argv[2])
loop = test_jobloop._loop(tmp, json.loads(sys.argv[3]))
refused = []

def refuse(event, args):  # the input's first move fails (a folder not writable, say)
    if event == "os.rename" and Path(os.fsdecode(args[0])).parent.name == "inbox":
        if not refused:
            refused.append(1)
            raise PermissionError(13, "Permission denied")

sys.addaudithook(refuse)
loop.run_next({"inbox:steps"})
"""


def test_an_input_whose_move_fails_after_its_end_is_recorded_is_retried_as_it_was(
    tmp_path: Path,
) -> None:
    # The journal kept the end's input_path, a file that was never there: the retry failed
    # as "vanished from the inbox" (BadInput: no Retry on the page), beside a stray note.
    script = [sys.executable, "-c", _REFUSED_AT_THE_MOVE, str(Path(__file__).parent)]
    params = {"steps": 1, "fail_at": 1}
    done = subprocess.run([*script, str(tmp_path), json.dumps(params)], timeout=120)
    assert done.returncode == 0
    journal = Journal(journal_path(tmp_path / "state"))
    (row,) = journal.jobs()
    inbox = tmp_path / "inbox"
    assert (row.state, row.input_path, row.attempts) == ("queued", str(inbox / "photo.png"), 0)
    assert (inbox / "photo.png").is_file() and not list(inbox.glob("*/*.error.txt"))

    with closing(sqlite3.connect(journal.path)) as db, db:  # its wait to try again is over
        db.execute("UPDATE jobs SET not_before = 0")
    loaded = load_config(tmp_path / "stylebox.toml")
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=loaded.config.state_dir))
    handle = PluginHandle("stepper", "1", stepper, stepper.params)
    source = Source.of("inbox:steps", loaded.config.inbox[0], handle)
    JobLoop(Pipeline(loaded, {source.key: source}, journal)).run_until_empty({source.key})
    (row,) = journal.jobs()
    assert (row.state, row.error_class) == ("failed", "PluginError")
    assert row.input_path == str(inbox / "failed" / "photo.png")
    assert Path(row.input_path + ".error.txt").read_text().startswith("PluginError: ")


def test_a_done_jobs_input_whose_move_fails_waits_as_storage_with_its_result_kept(
    tmp_path: Path,
) -> None:
    script = [sys.executable, "-c", _REFUSED_AT_THE_MOVE, str(Path(__file__).parent)]
    done = subprocess.run([*script, str(tmp_path), json.dumps({"steps": 1})], timeout=120)
    assert done.returncode == 0
    (row,) = Journal(journal_path(tmp_path / "state")).jobs()
    # max_attempts = 1, and still not failed: no try counted
    assert (row.state, row.error_class, row.attempts) == ("queued", "StorageError", 0)
    assert row.input_path == str(tmp_path / "inbox" / "photo.png")
    assert Path(row.input_path).is_file() and (tmp_path / "outbox" / "photo.json").is_file()


def test_a_file_refused_on_sight_that_cannot_be_moved_aside_waits_its_turn(
    tmp_path: Path,
) -> None:
    # Its end undone when the move failed, it stayed 'running' under this process's lease,
    # which nothing reclaims before a restart.
    loop = _loop(tmp_path, {"steps": 1})
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    (inbox / "failed").write_text("a file where the folder should be")
    (inbox / "notes.png").write_text("not a picture")
    assert loop.pipeline.enqueue(source, [inbox / "notes.png"]) == ["error"]
    (row,) = [row for row in loop.journal.jobs() if row.name == "notes.png"]
    assert (row.state, row.lease_owner) == ("queued", None)
    assert (inbox / "notes.png").is_file()


def test_a_copy_waiting_for_a_cancelled_job_is_cancelled_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Woken, the copy would find its job failed and queue it again as a retry: the photo
    # the person cancelled would be stylised after all.
    loop = _loop(tmp_path, {"steps": 1})
    inbox, job = tmp_path / "inbox", _only_job(loop)
    shutil.copy(inbox / "photo.png", inbox / "again.png")
    source = loop.pipeline.sources["inbox:steps"]
    with caplog.at_level(logging.INFO, logger="stylebox"):
        assert loop.pipeline.enqueue(source, [inbox / "again.png"]) == ["waiting"]
    # Said of the file that waits (its "file" named the job's own, which runs).
    (waits,) = [r for r in caplog.records if getattr(r, "event", None) == "waiting"]
    assert waits.getMessage() == (
        "again.png: waiting for the job of the same bytes (photo.png), to be what its end makes it"
    )
    assert (waits.file, waits.same_as, waits.job) == ("again.png", "photo.png", job.id)
    assert loop.pipeline.cancel_queued(job.id)
    assert _only_job(loop).state == "failed" and not loop.journal.queued({"inbox:steps"})
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == [
        "again.png", "again.png.error.txt", "photo.png", "photo.png.error.txt"
    ]  # fmt: skip
    reason = (inbox / "failed" / "again.png.error.txt").read_text()
    assert reason.startswith("Cancelled: cancelled by request\nthe same photo as job")


def test_a_copy_whose_job_is_cancelled_as_it_is_queued_is_cancelled_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = _loop(tmp_path, {"steps": 1})
    inbox, job = tmp_path / "inbox", _only_job(loop)
    shutil.copy(inbox / "photo.png", inbox / "again.png")
    add = loop.journal.add

    def add_then_cancel(entries: list[NewJob]) -> list[tuple[JobRow, bool]]:
        added = add(entries)
        monkeypatch.setattr(loop.journal, "add", add)
        assert loop.pipeline.cancel_queued(job.id)  # the page's cancel lands now
        return added

    monkeypatch.setattr(loop.journal, "add", add_then_cancel)
    source = loop.pipeline.sources["inbox:steps"]
    assert loop.pipeline.enqueue(source, [inbox / "again.png"]) == ["gone"]
    assert loop.journal.get(job.id).state == "failed" and not loop.journal.queued({"inbox:steps"})
    assert (
        (inbox / "failed" / "again.png.error.txt")
        .read_text()
        .startswith("Cancelled: cancelled by request")
    )


def test_a_copy_whose_job_ends_as_it_is_queued_is_not_left_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journal says the job of its bytes is queued; before the copy is listed as waiting,
    # the job ends and wakes its (no) waiters. The copy must not wait for the next rescan.
    loop = _loop(tmp_path, {"steps": 1})
    inbox = tmp_path / "inbox"
    shutil.copy(inbox / "photo.png", inbox / "again.png")
    add = loop.journal.add

    def add_then_run(entries: list[NewJob]) -> list[tuple[JobRow, bool]]:
        added = add(entries)
        monkeypatch.setattr(loop.journal, "add", add)
        loop.run_next({"inbox:steps"})  # the job ends now
        return added

    monkeypatch.setattr(loop.journal, "add", add_then_run)
    source = loop.pipeline.sources["inbox:steps"]
    assert loop.pipeline.enqueue(source, [inbox / "again.png"]) == ["duplicate"]
    assert (inbox / "processed" / "again.png.duplicate.txt").is_file()


def test_a_file_whose_header_is_no_picture_fails_as_it_is_queued(tmp_path: Path) -> None:
    # It waited its turn (behind an hour of gatys jobs, say) to fail as the runner would.
    loop = _loop(tmp_path, {"steps": 1})
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    (inbox / "readme.jpg").write_text("not a picture\n")
    (inbox / "empty.png").write_bytes(b"")
    whole = encoded(photo(64, 48, seed=8), "PNG")
    (inbox / "cut.png").write_bytes(whole[: len(whole) // 2])
    paths = [inbox / "readme.jpg", inbox / "empty.png", inbox / "cut.png"]
    assert loop.pipeline.enqueue(source, paths) == ["queued"] * 3
    reasons = {p.name: p.read_text().splitlines()[0] for p in (inbox / "failed").glob("*.txt")}
    assert reasons == {
        "readme.jpg.error.txt": "BadInput: readme.jpg is not an image (no known image format "
        "recognised)",
        "empty.png.error.txt": "BadInput: empty.png is empty (0 bytes)",
    }
    # The photo queued first, and the one cut short (it may still grow), wait their turn.
    assert sorted(row.name for row in loop.journal.jobs("inbox:steps", "queued")) == [
        "cut.png",
        "photo.png",
    ]


def test_a_photo_cut_short_waits_for_the_rest_and_one_that_stays_cut_fails(
    tmp_path: Path,
) -> None:
    # A writer that closes the file between pauses longer than the settle time: its first
    # part is queued, cut short. It waits (ten settle times, here 1 s) for the rest, which
    # takes the job over, rather than failing and leaving the rest as a file of its own.
    loop = _loop(tmp_path, {"steps": 1}, extra="settle_seconds = 0.1")
    loop.run_until_empty({"inbox:steps"})  # photo.png
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    whole = encoded(photo(64, 48, seed=5), "PNG")
    parts = inbox / "parts.png"
    parts.write_bytes(whole[: len(whole) // 2])
    assert loop.pipeline.enqueue(source, [parts]) == ["queued"]
    (row,) = loop.run_next({"inbox:steps"})
    waiting = loop.journal.get(row.id)
    assert (waiting.state, waiting.attempts, waiting.error_class) == ("queued", 0, "Truncated")
    assert parts.is_file() and waiting.not_before > time.time()
    parts.write_bytes(whole)  # the rest arrives
    assert loop.pipeline.enqueue(source, [parts]) == ["queued"]
    loop.run_until_empty({"inbox:steps"})
    assert loop.journal.get(row.id).state == "done"
    assert (inbox / "processed" / "parts.png").read_bytes() == whole

    cut = inbox / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    year = time.time() + 365 * 86400
    os.utime(cut, (year, year))  # a share whose clock is ahead: not put off a year
    assert loop.pipeline.enqueue(source, [cut]) == ["queued"]
    began = time.monotonic()
    loop.run_until_empty({"inbox:steps"})
    assert time.monotonic() - began >= 0.5  # it waited
    reason = (inbox / "failed" / "cut.png.error.txt").read_text()
    assert reason.startswith("Truncated: cut.png is truncated: its PNG data ends before")


def test_a_photo_cut_short_inside_its_header_waits_for_the_rest_too(tmp_path: Path) -> None:
    # Taken for damaged, it was failed as it was queued: moved to failed/ while its writer
    # (a share, no lock) went on writing into it there.
    loop = _loop(tmp_path, {"steps": 1}, extra="settle_seconds = 0.1")
    loop.run_until_empty({"inbox:steps"})  # photo.png
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    whole = encoded(photo(64, 48, seed=5), "PNG")
    head = inbox / "head.png"
    head.write_bytes(whole[:40])
    assert loop.pipeline.enqueue(source, [head]) == ["queued"]
    (row,) = loop.run_next({"inbox:steps"})
    assert (loop.journal.get(row.id).state, loop.journal.get(row.id).error_class) == (
        "queued", "Truncated"
    )  # fmt: skip
    head.write_bytes(whole)
    assert loop.pipeline.enqueue(source, [head]) == ["queued"]
    loop.run_until_empty({"inbox:steps"})
    assert loop.journal.get(row.id).state == "done"


@pytest.mark.parametrize("earlier", ["done", "failed"])
def test_a_photo_cut_short_whose_rest_is_another_jobs_bytes_is_what_those_bytes_make_it(
    tmp_path: Path, earlier: str
) -> None:
    # The completed bytes are a photo done before: the file goes to processed/ as its
    # duplicate, and the job of the part ends then, naming the job that has the bytes (it
    # ran later and failed as 'vanished from the inbox'). Or they are a photo that failed,
    # still in failed/: the file is a copy of it, a job of its own, and the part's job
    # takes the whole bytes over, as a file replaced while queued.
    loop = _loop(tmp_path, {"steps": 1}, extra="settle_seconds = 0.1")
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    first = _only_job(loop)
    if earlier == "done":
        loop.run_until_empty({"inbox:steps"})
    else:
        assert loop.pipeline.cancel_queued(first.id)
    whole = (inbox / ("processed" if earlier == "done" else "failed") / "photo.png").read_bytes()
    late = inbox / "late.png"
    late.write_bytes(whole[: len(whole) // 2])
    assert loop.pipeline.enqueue(source, [late]) == ["queued"]
    (cut,) = loop.run_next({"inbox:steps"})
    assert loop.journal.get(cut.id).error_class == "Truncated"
    late.write_bytes(whole)  # the rest arrives
    taken = "duplicate" if earlier == "done" else "queued"
    assert loop.pipeline.enqueue(source, [late]) == [taken]
    ended = loop.journal.get(cut.id)
    if earlier == "done":
        assert (ended.state, ended.error_class) == ("failed", "InputChanged")
        assert ended.error_message == (
            f"late.png was replaced by other bytes before it was processed; those are job "
            f"{first.id}'s (done)"
        )
    else:
        assert (ended.state, ended.sha256) == ("queued", loop.journal.get(first.id).sha256)
    loop.run_until_empty({"inbox:steps"})
    assert loop.journal.get(first.id).state == earlier  # the failed one still in failed/
    assert loop.journal.get(cut.id).state == ("failed" if earlier == "done" else "done")
    assert (inbox / "processed" / "late.png").is_file()
    if earlier == "done":
        assert (inbox / "processed" / "late.png.duplicate.txt").is_file()
    assert not (inbox / "failed" / "late.png").exists()
    # The part's job's outputs are named after its file; a duplicate has none.
    outputs = {p.name.split(".")[0] for p in (tmp_path / "outbox").glob("late*")}
    assert outputs == (set() if earlier == "done" else {"late"})


def test_a_photo_cut_short_dropped_again_after_failing_gets_its_grace_again(
    tmp_path: Path,
) -> None:
    # Its retry kept the first run's start time, so it failed at once as Truncated
    # instead of waiting for the rest as a new arrival does.
    loop = _loop(tmp_path, {"steps": 1}, extra="settle_seconds = 0.1")
    loop.run_until_empty({"inbox:steps"})
    inbox, source = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    whole = encoded(photo(64, 48, seed=6), "PNG")
    cut = inbox / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    assert loop.pipeline.enqueue(source, [cut]) == ["queued"]
    loop.run_until_empty({"inbox:steps"})  # waits its grace (1 s), then fails
    assert (inbox / "failed" / "cut.png").is_file()
    time.sleep(1.1)  # longer than the grace since its first start
    again = inbox / "again.png"
    (inbox / "failed" / "cut.png").rename(again)  # moved back: its job tried again
    dropped = time.time()
    assert loop.pipeline.enqueue(source, [again]) == ["retry"]
    # The status page says it has waited since it was dropped again, not since the first.
    (retried,) = loop.journal.jobs("inbox:steps", "queued")
    queued = _queued(retried, 1)
    assert queued["queued_at"] >= dropped > queued["created_at"] + 1
    (row,) = loop.run_next({"inbox:steps"})
    waiting = loop.journal.get(row.id)
    assert (waiting.state, waiting.error_class) == ("queued", "Truncated")
    assert again.is_file() and waiting.not_before > time.time()
    again.write_bytes(whole)
    assert loop.pipeline.enqueue(source, [again]) == ["queued"]
    loop.run_until_empty({"inbox:steps"})
    assert loop.journal.get(row.id).state == "done"


def test_a_job_queued_before_a_reload_is_known_by_the_settings_it_ran_with(
    tmp_path: Path,
) -> None:
    # The inbox's params change (SIGHUP) while a photo is queued: it runs with the new
    # ones, and the same bytes dropped later with the old params are not its duplicate.
    loop = _loop(tmp_path, {"steps": 1})
    inbox, old = tmp_path / "inbox", loop.pipeline.sources["inbox:steps"]
    stepper = Stepper(StepperParams(steps=2), Runtime(state_dir=tmp_path / "state"))
    new = Source.of(old.key, old.config, PluginHandle("stepper", "1", stepper, stepper.params))
    assert new.params_hash != old.params_hash
    loop.pipeline.sources[old.key] = new  # as a reload does
    loop.run_until_empty({"inbox:steps"})
    row = _only_job(loop)
    assert (row.state, row.params_hash) == ("done", new.params_hash)
    shutil.copy(inbox / "processed" / "photo.png", inbox / "again.png")
    assert loop.pipeline.enqueue(new, [inbox / "again.png"]) == ["duplicate"]
    shutil.copy(inbox / "processed" / "photo.png", inbox / "older.png")
    loop.pipeline.sources[old.key] = old  # and back
    assert loop.pipeline.enqueue(old, [inbox / "older.png"]) == ["queued"]


def test_an_inbox_renamed_by_a_reload_takes_its_queued_jobs_along(tmp_path: Path) -> None:
    # Left under the old name, they waited for good, the rescan queued their files again
    # under the new one, and the results came out as photo-2.
    loop = _loop(tmp_path, {"steps": 1})
    old = loop.pipeline.sources["inbox:steps"]
    renamed = Source.of("inbox:renamed", old.config.model_copy(update={"name": "renamed"}),
                        old.plugin)  # fmt: skip
    loop.pipeline.reconfigure(loop.pipeline.loaded, {renamed.key: renamed})
    row = _only_job(loop)
    assert (row.source, row.state) == ("inbox:renamed", "queued")
    assert loop.pipeline.enqueue(renamed, [tmp_path / "inbox" / "photo.png"]) == ["known"]
    loop.run_until_empty({"inbox:renamed"})
    assert _only_job(loop).state == "done"
    assert (tmp_path / "outbox" / "photo.png").is_file()


def test_an_inbox_removed_by_a_reload_and_added_back_by_another_takes_its_jobs_along(
    tmp_path: Path,
) -> None:
    # Its queued job waited under the old name, the re-added inbox queued the photo again,
    # and a later rename back brought the two together: one photo run twice at once.
    loop = _loop(tmp_path, {"steps": 1})
    old = loop.pipeline.sources["inbox:steps"]
    empty = load_config(write_config(tmp_path, 'state_dir = "state"\n'))
    loop.pipeline.reconfigure(empty, {})
    assert _only_job(loop).source == "inbox:steps"  # nothing serves its folder now
    text = CONFIG.format(lease=30, extra="").replace('name = "steps"', 'name = "again"')
    loaded = load_config(write_config(tmp_path, text))
    again = Source.of("inbox:again", loaded.config.inbox[0], old.plugin)
    loop.pipeline.reconfigure(loaded, {again.key: again})
    row = _only_job(loop)
    assert (row.source, row.state) == ("inbox:again", "queued")
    assert loop.pipeline.enqueue(again, [tmp_path / "inbox" / "photo.png"]) == ["known"]


def test_a_renamed_inbox_takes_its_jobs_along_when_its_old_name_gets_another_folder(
    tmp_path: Path,
) -> None:
    loop = _loop(tmp_path, {"steps": 1})
    old = loop.pipeline.sources["inbox:steps"]
    renamed = Source.of("inbox:renamed", old.config.model_copy(update={"name": "renamed"}),
                        old.plugin)  # fmt: skip
    elsewhere = old.config.model_copy(update={"path": tmp_path / "other"})
    reused = Source.of("inbox:steps", elsewhere, old.plugin)
    loop.pipeline.reconfigure(loop.pipeline.loaded, {renamed.key: renamed, reused.key: reused})
    assert _only_job(loop).source == "inbox:renamed"


def test_an_inbox_renamed_while_stopped_takes_its_queued_jobs_along_at_start(
    tmp_path: Path,
) -> None:
    # The same as a reload, across a restart: the old name is in no config any more, so
    # the job's photo, in the renamed inbox's folder, tells where it belongs.
    loop = _loop(tmp_path, {"steps": 1})
    old = loop.pipeline.sources["inbox:steps"]
    loaded = load_config(write_config(tmp_path, CONFIG.format(lease=30, extra="").replace(
        'name = "steps"', 'name = "renamed"')))  # fmt: skip
    renamed = Source.of("inbox:renamed", loaded.config.inbox[0], old.plugin)
    elsewhere = tmp_path / "inbox" / "gone" / "elsewhere.png"
    loop.journal.add([NewJob(source="inbox:gone", input_path=elsewhere, sha256="x",
                             plugin="stepper", params_hash="p",
                             unique_key="x|inbox:gone|stepper|p", stem="elsewhere")])  # fmt: skip
    pipeline = Pipeline(loaded, {renamed.key: renamed}, loop.journal)
    assert pipeline.adopt_renamed() == 1
    moved, other = sorted(loop.journal.jobs(), key=lambda row: row.id)
    assert (moved.source, moved.state, moved.stem) == ("inbox:renamed", "queued", "photo")
    assert other.source == "inbox:gone"  # its photo is in no inbox served now
    assert pipeline.enqueue(renamed, [tmp_path / "inbox" / "photo.png"]) == ["known"]
    JobLoop(pipeline).run_until_empty({"inbox:renamed"})
    assert loop.journal.get(moved.id).state == "done"
    assert (tmp_path / "outbox" / "photo.png").is_file()


def test_jobs_moved_to_an_inbox_with_another_outbox_get_names_free_there(
    tmp_path: Path,
) -> None:
    loop = _loop(tmp_path, {"steps": 1})
    old = loop.pipeline.sources["inbox:steps"]
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "photo.png").write_bytes(b"another photo's result")
    moved = old.config.model_copy(update={"name": "moved", "outbox": tmp_path / "out2"})
    renamed = Source.of("inbox:moved", moved, old.plugin)
    loop.pipeline.reconfigure(loop.pipeline.loaded, {renamed.key: renamed})
    assert _only_job(loop).stem == "photo-2"
    loop.run_until_empty({"inbox:moved"})
    assert (tmp_path / "out2" / "photo.png").read_bytes() == b"another photo's result"


def test_a_loop_limited_to_some_jobs_claims_no_other(tmp_path: Path) -> None:
    loop = _loop(tmp_path, {"steps": 1})
    inbox = tmp_path / "inbox"
    photo(24, 16, seed=1).save(inbox / "other.png")
    source = loop.pipeline.sources["inbox:steps"]
    loop.pipeline.enqueue(source, [inbox / "other.png"])
    mine = {row.id for row in loop.journal.jobs() if row.name == "other.png"}
    JobLoop(loop.pipeline, jobs=mine).run_until_empty({"inbox:steps"})
    assert {row.name: row.state for row in loop.journal.jobs()} == {
        "photo.png": "queued",
        "other.png": "done",
    }


def test_each_job_claimed_with_others_ends_as_soon_as_its_outcome_is_known(
    tmp_path: Path,
) -> None:
    # Claimed together (a batching plugin takes up to batch_size), a photo that cannot be
    # read and a group of one size stayed 'running', their files in the inbox, until the
    # last group had run: minutes, behind a batch of gatys jobs.
    seen: dict[str, str] = {}

    class Watching(Stepper):
        def process(self, image: Image.Image, job: JobContext) -> Image.Image:
            if image.size == (32, 32):  # the second group: how the others stand meanwhile
                seen.update({row.name: row.state for row in loop.journal.jobs()})
                seen["moved aside"] = str((inbox / "failed" / "bad.png").is_file())
            return super().process(image, job)

    loop = _loop(tmp_path, {"steps": 1}, plugin=Watching)
    inbox = tmp_path / "inbox"
    # Damaged where only a decode sees it (a file no header opens fails as it is queued).
    damaged = bytearray(encoded(photo(24, 16, seed=1), "PNG"))
    damaged[damaged.index(b"IDAT") + 10] ^= 0xFF
    (inbox / "bad.png").write_bytes(bytes(damaged))
    photo(32, 32, seed=2).save(inbox / "big.png")
    photo(24, 16, seed=3).save(inbox / "gone.png")
    source = loop.pipeline.sources["inbox:steps"]
    loop.pipeline.enqueue(source, [inbox / n for n in ("bad.png", "big.png", "gone.png")])
    (inbox / "gone.png").unlink()  # known without running anything
    rows = [loop.journal.claim(loop.pipeline.owner, 30) for _ in range(4)]
    names = ["photo.png", "bad.png", "big.png", "gone.png"]
    assert [row.name for row in rows if row is not None] == names
    loop.pipeline.run([row for row in rows if row is not None])
    assert seen == {
        "photo.png": "done",
        "bad.png": "failed",
        "big.png": "running",
        "gone.png": "failed",
        "moved aside": "True",
    }
    assert {row.name: row.state for row in loop.journal.jobs()}["big.png"] == "done"


def test_a_job_that_ended_before_a_crash_keeps_its_time(tmp_path: Path) -> None:
    # Its outputs written, then killed before its end was recorded: the next run only
    # moves its photo, and recorded 0 s (the page showed "0.0 s" under its result).
    loop = _loop(tmp_path, {"steps": 2, "seconds_per_step": 0.2})
    loop.start(until_empty=True)
    loop.wait()
    row = _only_job(loop)
    assert row.state == "done" and row.seconds is not None and row.seconds >= 0.4
    with closing(sqlite3.connect(journal_path(tmp_path / "state"))) as db, db:
        db.execute("UPDATE jobs SET state = 'queued', seconds = NULL WHERE id = ?", (row.id,))
    inbox = tmp_path / "inbox"
    shutil.move(inbox / "processed" / "photo.png", inbox / "photo.png")
    again = loop.journal.claim(loop.pipeline.owner, 30)
    assert again is not None
    loop.pipeline.run([again])
    assert _only_job(loop).state == "done" and _only_job(loop).seconds == row.seconds


# -- the commands -----------------------------------------------------------------------------


def _stylebox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "-q", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_run_goes_through_the_journal_and_runs_only_the_files_it_was_given(
    tmp_path: Path,
) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3)):
        photo(24, 16, seed=seed).save(tmp_path / name)
    run = ["run", "--plugin", "posterize", "--out", str(out), "--state-dir", str(state)]
    assert _stylebox(*run, str(tmp_path / "a.png")).returncode == 0
    # What a run stopped before b.png's turn leaves behind: b.png's job, queued, its
    # output names taken.
    journal = Journal(journal_path(state))
    key = f"run:{out.resolve()}"
    ((stopped, _),) = journal.add(
        [NewJob(key, tmp_path / "b.png", "-", "posterize", "h", "stopped-b", stem="b")]
    )
    journal.close()

    done = _stylebox(*run, str(tmp_path / "c.png"))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(journal_path(state)) as db:
        rows = dict(db.execute("SELECT name, state FROM jobs WHERE source = ?", (key,)))
    assert rows == {"a.png": "done", "b.png": "queued", "c.png": "done"}
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "c.png"]
    config = write_config(tmp_path, 'state_dir = "state"\n')
    status = json.loads(_stylebox("status", "--json", "--config", str(config)).stdout)
    assert status["sources"][key]["done"] == 2 and status["sources"][key]["queued"] == 1

    resumed = _stylebox(*run, str(tmp_path / "b.png"))
    assert resumed.returncode == 0, resumed.stderr
    with sqlite3.connect(journal_path(state)) as db:
        (job,) = db.execute("SELECT id, state FROM jobs WHERE name = 'b.png'").fetchall()
    assert job == (stopped.id, "done")  # the stopped job, not a new one
    assert (out / "b.png").is_file()


def _gated_batch(
    tmp_path: Path, photos: int, workers: int
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``stylebox batch`` over ``photos`` photos with the gated plugin (each job waits at
    the gate), running; with the plugin's call record and its gate."""
    env, record, gate = gated_env(tmp_path)
    source = tmp_path / "photos"
    source.mkdir()
    for index in range(photos):
        photo(24, 16, seed=index).save(source / f"p{index}.png")
    config = write_config(
        tmp_path,
        'state_dir = "state"\n[[batch]]\nname = "all"\nsource = "photos"\noutbox = "out"\n'
        f'plugin = "gated"\nworkers = {workers}\n',
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "-q", "batch", "all", "--config", str(config)],
        env={**os.environ, **env},
    )
    return process, record, gate


def test_a_batch_runs_as_many_jobs_at_once_as_its_workers(tmp_path: Path) -> None:
    process, record, gate = _gated_batch(tmp_path, photos=3, workers=2)
    try:
        assert wait_until(lambda: record.exists() and record.read_text().count("run") == 2, 60)
        gate.touch()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "p0.png",
        "p1.png",
        "p2.png",
    ]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_stopped_batch_exits_130_and_its_job_waits_in_the_queue(
    tmp_path: Path, signal_name: str
) -> None:
    process, record, _ = _gated_batch(tmp_path, photos=1, workers=1)
    try:
        assert wait_until(lambda: record.exists() and "run" in record.read_text(), 60)
        process.send_signal(getattr(signal, signal_name))
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
    with sqlite3.connect(journal_path(tmp_path / "state")) as db:
        assert db.execute("SELECT state, attempts FROM jobs").fetchall() == [("queued", 0)]


# -- device kinds -----------------------------------------------------------------------------


class OnGpu(Stepper):
    """Declares that its jobs run on a GPU (whatever this machine has)."""

    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        return "cuda"


class SaysCudaSomewhere(Stepper):
    """Has a ``device`` attribute, as many plugins do, but declares nothing."""

    device = "cuda:0"


def test_jobs_are_scheduled_by_the_device_kind_a_plugin_declares(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG.format(lease=30, extra=""))
    inbox = load_config(config).config.inbox[0]
    kinds = {}
    for plugin in (Stepper, OnGpu, SaysCudaSomewhere):
        instance = plugin(StepperParams(), Runtime(state_dir=tmp_path))
        handle = PluginHandle("stepper", "1", instance, instance.params)
        kinds[plugin] = Source.of("inbox:steps", inbox, handle).device_type
    assert kinds == {Stepper: "cpu", OnGpu: "cuda", SaysCudaSomewhere: "cpu"}


class SaysGpu(Stepper):
    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        return "gpu"  # type: ignore[return-value]


def test_a_plugin_declaring_an_unknown_device_kind_disables_its_inbox(tmp_path: Path) -> None:
    # Under no [daemon] workers limit, its jobs ran beside any number of others unsaid.
    loaded = load_config(write_config(tmp_path, CONFIG.format(lease=30, extra="")))
    registry = Registry()
    registry.plugins["posterize"] = PluginInfo("posterize", SaysGpu, "1", "tests")
    assert build_sources(loaded, registry, ("inbox",)) == {}
    assert loaded.unavailable[("inbox", "steps")] == (
        "plugin 'posterize' failed to start: PluginError: its device_kind is 'gpu'; it must "
        "be 'cpu' or 'cuda'"
    )


class GpuOnlyOnCpu(Stepper):
    capabilities = Capabilities(gpu_only=True)  # and no check of the device it is given


def test_a_gpu_only_plugin_that_would_run_on_the_cpu_is_refused(tmp_path: Path) -> None:
    # It ran on the CPU, where it says it cannot run, with nothing said.
    loaded = load_config(write_config(tmp_path, CONFIG.format(lease=30, extra="")))
    registry = Registry()
    registry.plugins["posterize"] = PluginInfo("posterize", GpuOnlyOnCpu, "1", "tests")
    with pytest.raises(ConfigError) as refused:
        build_sources(loaded, registry, ("inbox",))
    assert str(refused.value).endswith(
        "plugin 'posterize' is gpu_only (its capabilities), and here it would run on the cpu "
        "(device = 'auto'): give it a CUDA device, or use another plugin"
    )


@pytest.mark.parametrize(("limit", "most_at_once"), [(1, 1), (None, 2)])
def test_a_device_kind_limit_holds_across_lanes(
    tmp_path: Path, limit: int | None, most_at_once: int
) -> None:
    extra = (
        '[[inbox]]\nname = "more"\npath = "more"\noutbox = "outbox-more"\nplugin = "posterize"\n'
    )
    loop = _loop(tmp_path, {"steps": 5, "seconds_per_step": 0.1}, extra=extra, plugin=OnGpu)
    pipeline = loop.pipeline
    first = pipeline.sources["inbox:steps"]
    more = pipeline.loaded.config.inbox[1]
    more.path.mkdir()
    pipeline.sources["inbox:more"] = Source.of("inbox:more", more, first.plugin)
    photo(24, 16, seed=5).save(more.path / "other.png")
    pipeline.enqueue(pipeline.sources["inbox:more"], [more.path / "other.png"])
    loop = JobLoop(pipeline, limits={} if limit is None else {"cuda": limit})
    loop.start(until_empty=True)
    seen = 0
    while loop.running_count() or loop.journal.queued(set(pipeline.sources)):
        seen = max(seen, loop.running_count())
        time.sleep(0.01)
    loop.wait()
    assert seen == most_at_once
    assert [row.state for row in loop.journal.jobs()] == ["done", "done"]


def test_two_quick_signals_still_stop_the_loop_and_either_kind_interrupts() -> None:
    """The second signal (of either kind) interrupts at once; the first still stops the
    loop, even when the second came before the watcher thread looked."""
    import os
    import signal
    import threading

    from stylebox.daemon.jobloop import stop_on_signals

    class Loop:
        def __init__(self) -> None:
            self.stopping = threading.Event()

        def stop(self) -> None:
            self.stopping.set()

    for second in (signal.SIGTERM, signal.SIGINT):
        loop = Loop()
        with pytest.raises(KeyboardInterrupt), stop_on_signals(loop):  # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), second)
        assert loop.stopping.is_set()


def test_a_copy_of_known_bytes_takes_no_output_name_from_a_new_photo_beside_it(
    tmp_path: Path,
) -> None:
    # The duplicate held the next name for a moment: the new photo queued with it became
    # photo-3, though photo-2 was free.
    loop = _loop(tmp_path, {"steps": 1})
    loop.start(until_empty=True)
    loop.wait()
    inbox = tmp_path / "inbox"
    shutil.copy(inbox / "processed" / "photo.png", inbox / "photo.tif")  # the same bytes
    photo(24, 16, seed=9).save(inbox / "photo.webp")  # new ones
    source = loop.pipeline.sources["inbox:steps"]
    outcomes = loop.pipeline.enqueue(source, [inbox / "photo.tif", inbox / "photo.webp"])
    assert outcomes == ["duplicate", "queued"]
    [new] = [row for row in loop.journal.jobs() if row.name == "photo.webp"]
    assert new.stem == "photo-2"


def test_status_names_a_source_the_config_dropped_and_counts_older_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stylebox status` listed an inbox a reload had removed as any other, its queued job
    waiting with nothing said; and 7 failed jobs as 5, with no word of the other 2."""
    loop = _loop(tmp_path, {"steps": 1})
    entries = [
        NewJob(source="inbox:steps", input_path=tmp_path / f"bad{n}.png", sha256=f"s{n}",
               plugin="stepper", params_hash="p", unique_key=f"s{n}|p", stem=f"bad{n}")
        for n in range(7)
    ]  # fmt: skip
    for row, _ in loop.journal.add(entries):
        loop.journal.finish(row.id, "failed", error=BadInput("not an image"))
    config = tmp_path / "stylebox.toml"
    print_status(config)
    printed = capsys.readouterr().out
    assert printed.count("  failed #") == 5
    assert "  and 2 earlier failed job(s) (--failed lists every one)" in printed
    assert "not in the config" not in printed
    print_status(config, all_failed=True)  # --failed
    printed = capsys.readouterr().out
    assert printed.count("  failed #") == 7 and "earlier failed" not in printed
    config.write_text(config.read_text().replace('name = "steps"', 'name = "renamed"'))
    print_status(config)
    printed = capsys.readouterr().out
    assert "inbox:steps: 1 queued" in printed
    assert "  not in the config: its queued jobs wait until an inbox of this name" in printed
