"""Jobs claimed together (a batching plugin takes up to ``batch_size``) end one by one, as
each outcome is known: a job that ends before the others may be queued and claimed again
at once, and then belongs to that claim alone (its cancel, its plugin instance)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import photo
from daemon_helpers import wait_until, write_config
from PIL import Image
from stepper_plugin import Stepper, StepperParams

from stylebox.config import load_config
from stylebox.daemon.jobloop import JobLoop
from stylebox.daemon.journal import Journal, journal_path
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import PluginHandle
from stylebox.daemon.sources import Source
from stylebox.errors import PluginError
from stylebox.plugins.api import Capabilities, JobContext, Runtime

CONFIG = """
state_dir = "state"
[daemon]
retry_backoff_seconds = {backoff}
batch_size = 4
[[inbox]]
name = "steps"
path = "inbox"
outbox = "outbox"
plugin = "posterize"  # run by the plugin below in its place
max_attempts = 3
{extra}
"""

SMALL, BIG = (24, 16), (32, 32)


class Gated(Stepper):
    """Batches; the small photo fails its first try (a retry is queued while the big one's
    group goes on), and each size then waits at its gate."""

    capabilities = Capabilities(batching=True)

    def __init__(self, params: StepperParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.gates = {SMALL: threading.Event(), BIG: threading.Event()}
        self.tries = {SMALL: 0, BIG: 0}
        self.closed = False

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        self.tries[image.size] += 1
        if image.size == SMALL and self.tries[SMALL] == 1:
            raise PluginError("flaky")
        assert self.gates[image.size].wait(30), "the test never opened the gate"
        assert not self.closed, "run on a closed instance"
        return super().process(image, job)

    def close(self) -> None:
        self.closed = True


def _pipeline(tmp_path: Path, backoff: float, extra: str = "") -> tuple[Pipeline, Gated]:
    loaded = load_config(write_config(tmp_path, CONFIG.format(backoff=backoff, extra=extra)))
    plugin = Gated(StepperParams(steps=1), Runtime(state_dir=loaded.config.state_dir))
    inbox = loaded.config.inbox[0]
    inbox.path.mkdir()
    source = Source.of("inbox:steps", inbox, PluginHandle("stepper", "1", plugin, plugin.params))
    pipeline = Pipeline(loaded, {source.key: source}, Journal(journal_path(tmp_path / "state")))
    photo(*SMALL).save(inbox.path / "small.png")
    photo(*BIG, seed=3).save(inbox.path / "big.png")
    queued = pipeline.enqueue(source, [inbox.path / "small.png", inbox.path / "big.png"])
    assert queued == ["queued", "queued"]
    return pipeline, plugin


def test_a_job_queued_again_while_its_claim_runs_on_is_cancelled_as_a_queued_job(
    tmp_path: Path,
) -> None:
    # Its old run's stop flag stayed registered: the cancel raised that flag, answered
    # 'cancelling', and the job stayed queued and ran again.
    pipeline, plugin = _pipeline(tmp_path, backoff=60)
    loop = JobLoop(pipeline)
    lane = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    lane.start()
    try:
        small = next(row for row in loop.journal.jobs() if row.name == "small.png")
        assert wait_until(lambda: loop.journal.get(small.id).error_class == "PluginError", 30)
        assert loop.journal.get(small.id).state == "queued"
        assert plugin.tries[BIG] == 1 and loop.running_count() == 1
        assert not loop.cancel(small.id)  # not running here: Service.cancel goes on to...
        assert pipeline.cancel_queued(small.id)  # ...the queued job's cancel
    finally:
        plugin.gates[BIG].set()
        lane.join(30)
    row = loop.journal.get(small.id)
    assert (row.state, row.error_class) == ("failed", "Cancelled")


def test_a_job_claimed_again_keeps_its_plugin_open_after_the_first_claim_ends(
    tmp_path: Path,
) -> None:
    # The first claim's end forgot the job's use of the instance, though a second claim
    # ran it: a reload then closed the instance under the running job.
    pipeline, plugin = _pipeline(tmp_path, backoff=0.01)
    journal, owner = pipeline.journal, pipeline.owner
    first = [journal.claim(owner, 30), journal.claim(owner, 30)]
    assert all(first)
    runs = [threading.Thread(target=pipeline.run, args=(first,))]
    runs[0].start()
    try:
        small = first[0]
        assert small is not None and small.name == "small.png"
        assert wait_until(lambda: journal.get(small.id).error_class == "PluginError", 30)
        claims: list = []  # another lane's claim, once the retry's backoff is over
        assert wait_until(lambda: claims.append(journal.claim(owner, 30)) or claims[-1], 5)
        again = claims[-1]
        runs.append(threading.Thread(target=pipeline.run, args=([again],)))
        runs[1].start()
        assert wait_until(lambda: plugin.tries[SMALL] == 2, 30)
        plugin.gates[BIG].set()
        runs[0].join(30)
        # A reload retires the instance: it is closed once no running job uses it.
        old = pipeline.sources["inbox:steps"]
        fresh = Gated(StepperParams(steps=2), plugin.runtime)
        handle = PluginHandle("stepper", "1", fresh, fresh.params)
        pipeline.reconfigure(pipeline.loaded, {old.key: Source.of(old.key, old.config, handle)})
        assert not plugin.closed
    finally:
        plugin.gates[SMALL].set()
        plugin.gates[BIG].set()
        for run in runs:
            run.join(30)
    assert journal.get(small.id).state == "done" and plugin.closed


def test_the_time_limit_of_a_job_that_ended_early_stops_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its timers ran on until the claim's last group ended: at twice the limit the log
    # said its plugin ignored job.cancelled, of a job no longer running (or since claimed
    # again by another run).
    pipeline, plugin = _pipeline(tmp_path, backoff=60, extra="timeout_seconds = 0.3")
    loop = JobLoop(pipeline)
    lane = threading.Thread(target=loop.run_next, args=({"inbox:steps"},))
    lane.start()
    try:
        small, big = sorted(loop.journal.jobs(), key=lambda row: row.name != "small.png")
        assert wait_until(lambda: loop.journal.get(small.id).error_class == "PluginError", 30)
        time.sleep(1.0)  # past twice the limit: the big photo's plugin holds on
    finally:
        plugin.gates[BIG].set()
        lane.join(30)
    overruns = [r.job for r in caplog.records if getattr(r, "event", None) == "overrun"]
    assert overruns == [big.id]


def _run_one_claim(tmp_path: Path, cls: type[Stepper], count: int, backoff: float = 0) -> Pipeline:
    """``count`` same-size photos queued in one arrival for a ``cls`` plugin, and one claim
    of them run (one batch, where ``cls`` batches)."""
    loaded = load_config(write_config(tmp_path, CONFIG.format(backoff=backoff, extra="")))
    plugin = cls(StepperParams(steps=1), Runtime(state_dir=loaded.config.state_dir))
    inbox = loaded.config.inbox[0]
    inbox.path.mkdir()
    source = Source.of("inbox:steps", inbox, PluginHandle("stepper", "1", plugin, plugin.params))
    pipeline = Pipeline(loaded, {source.key: source}, Journal(journal_path(tmp_path / "state")))
    paths = [inbox.path / f"p{seed}.png" for seed in range(1, count + 1)]
    for seed, path in enumerate(paths, 1):
        photo(*SMALL, seed=seed).save(path)
    pipeline.enqueue(source, paths)
    JobLoop(pipeline).run_next({"inbox:steps"})
    return pipeline


class DropsOne(Stepper):
    """Batches, and returns one result fewer than it was given images."""

    capabilities = Capabilities(batching=True)

    def process_batch(
        self, images: list[Image.Image], jobs: list[JobContext]
    ) -> list[Image.Image | Exception]:
        return list(images[1:])


def test_a_batch_of_the_wrong_length_fails_its_jobs_saying_what_was_returned(
    tmp_path: Path,
) -> None:
    pipeline = _run_one_claim(tmp_path, DropsOne, 2)
    messages = {row.error_message for row in pipeline.journal.jobs()}
    # It said "returned list for 2 images".
    assert messages == {
        "plugin stepper's process_batch returned 1 result(s) for 2 images; it must return "
        "one result or error per image, in order"
    }


class OutOfMemoryInBatch(Stepper):
    """Batches: the first job's place holds an error of its own, the second's a grey image."""

    capabilities = Capabilities(batching=True)

    def process_batch(
        self, images: list[Image.Image], jobs: list[JobContext]
    ) -> list[Image.Image | Exception]:
        for job in jobs:
            job.progress(1, 1)
        return [RuntimeError("CUDA out of memory"), images[1].convert("L")]


def test_what_a_batch_gives_in_a_jobs_place_is_a_fault_worth_a_retry(tmp_path: Path) -> None:
    # An error of the plugin's own in a job's place failed it at once, as "returned
    # RuntimeError, not an image (... another try would do the same)"; alone, the job may
    # well run. So may a job whose batch returned a result the contract refuses.
    pipeline = _run_one_claim(tmp_path, OutOfMemoryInBatch, 2, backoff=60)
    rows = sorted(pipeline.journal.jobs(), key=lambda row: row.name)
    assert [(row.state, row.reason) for row in rows] == [
        ("queued", "PluginError: plugin stepper failed: RuntimeError: CUDA out of memory"),
        ("queued", "PluginError: plugin stepper returned an L image, not RGB"),
    ]


class GreyAlways(Stepper):
    """Batches, and returns grey images whether batched or alone."""

    capabilities = Capabilities(batching=True)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return image.convert("L")


def test_a_retry_runs_alone_so_a_result_breaking_the_contract_is_judged_its_own(
    tmp_path: Path,
) -> None:
    # Each retry ran the same batch again: both jobs ended PluginError after every try,
    # never judged alone (a PermanentFailure at once) as the README says they may be.
    pipeline = _run_one_claim(tmp_path, GreyAlways, 2)
    assert [row.state for row in pipeline.journal.jobs()] == ["queued", "queued"]
    claimed = []
    loop = JobLoop(pipeline)
    while pipeline.journal.queued({"inbox:steps"}):
        time.sleep(0.02)  # the retries' backoff (0 s)
        claimed.append(len(loop.run_next({"inbox:steps"})))
    assert claimed == [1, 1]  # each alone
    rows = pipeline.journal.jobs()
    assert [(row.state, row.attempts, row.error_class) for row in rows] == [
        ("failed", 2, "PermanentFailure")
    ] * 2
    pipeline.journal.close()


class ReturnsAnError(Stepper):
    """Runs photos one at a time, and returns an exception where the image should be."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return RuntimeError("CUDA out of memory")  # type: ignore[return-value]


def test_an_exception_process_returns_is_a_result_that_breaks_the_contract(
    tmp_path: Path,
) -> None:
    # Only a batch's list holds errors in jobs' places; process raises its errors. One it
    # returns is a non-image, the same on every try: the job fails at once, not retried.
    pipeline = _run_one_claim(tmp_path, ReturnsAnError, 1)
    (row,) = pipeline.journal.jobs()
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.reason == (
        "PermanentFailure: plugin stepper returned RuntimeError, not an image (the plugin "
        "breaks its contract; another try would do the same)"
    )


def test_a_plugin_that_runs_photos_one_by_one_here_is_claimed_one_job_at_a_time(
    tmp_path: Path,
) -> None:
    # The fast plugin batches on a GPU only: on the CPU, the daemon claimed batch_size
    # jobs, which all showed as running while all but one waited in the claim.
    from stylebox.plugins.faststyle import FastParams, FastPlugin

    loaded = load_config(write_config(tmp_path, CONFIG.format(backoff=0, extra="")))
    runtime = Runtime(device="cpu", state_dir=loaded.config.state_dir)
    plugin = FastPlugin(FastParams(model="starry_night_small"), runtime)
    assert FastPlugin.capabilities.batching and not plugin.capabilities.batching
    inbox = loaded.config.inbox[0]
    inbox.path.mkdir()
    handle = PluginHandle("fast", "1", plugin, plugin.params)
    source = Source.of("inbox:steps", inbox, handle)
    pipeline = Pipeline(loaded, {source.key: source}, Journal(journal_path(tmp_path / "state")))
    for seed in range(3):
        photo(*SMALL, seed=seed).save(inbox.path / f"p{seed}.png")
    pipeline.enqueue(source, sorted(inbox.path.glob("p*.png")))
    assert len(JobLoop(pipeline).run_next({"inbox:steps"})) == 1
