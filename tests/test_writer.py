"""Issue 13, outputs off the critical path: what a job hands over while it runs is written
by its background writer, in order, with back-pressure, and a failure surfaces on the job."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import photo, pixels
from PIL import Image
from stepper_plugin import Stepper, StepperParams

from stylebox.daemon.outbox import Outbox, PendingOutputs, gif_frame
from stylebox.daemon.runner import Job, PluginHandle, Runner
from stylebox.daemon.writer import JobWriter
from stylebox.errors import Cancelled, PluginError, StorageError
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.testing import RecordingContext


def test_tasks_run_in_order_on_another_thread() -> None:
    writer = JobWriter("job")
    done: list[tuple[int, str]] = []
    for index in range(10):
        writer.submit(
            f"task {index}", lambda i=index: done.append((i, threading.current_thread().name))
        )
    writer.close()
    assert [index for index, _ in done] == list(range(10))
    assert {name for _, name in done} == {"writer-job"}


def test_a_full_queue_holds_the_job_back() -> None:
    writer = JobWriter("job", depth=2)
    gate = threading.Event()
    writer.submit("held", gate.wait)  # the thread takes it and waits
    time.sleep(0.1)
    writer.submit("one", lambda: None)
    writer.submit("two", lambda: None)  # the queue is full now
    blocked = threading.Thread(target=writer.submit, args=("three", lambda: None))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # back-pressure: the job waits for the disk
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    writer.close()


def test_the_first_error_surfaces_at_the_next_hand_over_and_the_rest_is_dropped() -> None:
    writer = JobWriter("job")
    ran: list[str] = []

    def fails() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer.submit("snapshot photo.steps/0002.png", fails)
    with pytest.raises(
        StorageError, match=r"writing snapshot photo.steps/0002.png failed: OSError"
    ):
        writer.flush()
    with pytest.raises(StorageError):
        writer.submit("later", lambda: ran.append("later"))
    with pytest.raises(StorageError):
        writer.close()
    assert ran == [] and isinstance(StorageError("x"), PluginError)  # retried like a fault


def test_a_failure_that_is_no_disks_is_not_called_storage() -> None:
    # A snapshot that cannot be encoded (or a bug) read as "stylebox could not write its
    # own files".
    writer = JobWriter("job")

    def cannot_encode() -> None:
        raise ValueError("cannot write mode I;16 as JPEG")

    writer.submit("snapshot photo.steps/0002.jpg", cannot_encode)
    with pytest.raises(PluginError) as raised:
        writer.flush()
    assert type(raised.value) is PluginError
    assert str(raised.value) == (
        "writing snapshot photo.steps/0002.jpg failed: ValueError: cannot write mode I;16 as JPEG"
    )
    with pytest.raises(PluginError):  # and again as the job closes it
        writer.close()


def _stepper(tmp_path: Path, **params: object) -> tuple[Stepper, PluginHandle]:
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=tmp_path / "state"))
    return stepper, PluginHandle("stepper", "1", stepper, stepper.params)


def _gatys(tmp_path: Path, style_file: Path, **params: object) -> PluginHandle:
    settings = GatysParams(style=[style_file], **params)  # type: ignore[arg-type]
    plugin = GatysPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))
    return PluginHandle("gatys", "1", plugin, settings)


def test_the_animation_made_while_the_job_ran_equals_one_made_from_the_snapshots(
    tmp_path: Path, style_file: Path
) -> None:
    source = tmp_path / "photo.png"
    photo(40, 30).save(source)
    handle = _gatys(tmp_path, style_file, size=40, steps=6, snapshot_every=2)
    out = Outbox(tmp_path / "out")
    result = Runner().execute(Job(source, tmp_path / "work", stem="photo"), handle, out)
    assert result.manifest["output"]["animation"] == "photo.gif"
    snapshots = sorted((tmp_path / "out" / "photo.steps").glob("*.png"))
    assert len(snapshots) == 4
    with Image.open(tmp_path / "out" / "photo.gif") as animation:
        # The result equals the last snapshot, and GIF merges equal frames into one.
        assert animation.n_frames == len(snapshots)
        for index, path in enumerate(snapshots):
            animation.seek(index)
            with Image.open(path) as snapshot:
                expected = gif_frame(snapshot, (40, 30)).convert("RGB")
            assert (pixels(animation.convert("RGB")) == pixels(expected)).all()


def test_where_the_photo_is_transparent_its_snapshots_are_and_its_animation_is_white(
    tmp_path: Path,
) -> None:
    # The snapshots and every GIF frame showed the fill the plugin is given there (the
    # nearest visible colour, smeared in streaks); the result alone was transparent.
    picture = photo(40, 30).convert("RGBA")
    hole = Image.new("L", (40, 30), 255)
    hole.paste(0, (0, 0, 14, 30))  # the left third transparent
    picture.putalpha(hole)
    source = tmp_path / "cutout.png"
    picture.save(source)
    _, handle = _stepper(tmp_path, steps=4, snapshot_every=2)
    Runner().execute(
        Job(source, tmp_path / "work", stem="cutout"), handle, Outbox(tmp_path / "out")
    )
    snapshots = sorted((tmp_path / "out" / "cutout.steps").glob("*.png"))
    assert snapshots
    for path in snapshots:
        with Image.open(path) as snapshot:
            assert snapshot.mode == "RGBA"
            alpha = pixels(snapshot.getchannel("A"))
            assert alpha[:, :12].max() == 0 and alpha[:, 16:].min() == 255
    with Image.open(tmp_path / "out" / "cutout.gif") as animation:
        for index in range(animation.n_frames):
            animation.seek(index)
            frame = pixels(animation.convert("RGB"))
            assert frame[:, :12].min() == 255  # white where nothing is seen
            assert frame[:, 16:].min() < 250  # the picture where it is


def test_a_snapshot_that_cannot_be_written_fails_the_job_and_leaves_no_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "photo.png"
    photo(24, 16).save(source)
    _, handle = _stepper(tmp_path, steps=6, snapshot_every=1)
    real = Outbox.write_snapshot

    def disk_full_at_step_3(
        self: Outbox, names: object, image: Image.Image, step: int, alpha: object = None
    ) -> Path:
        if step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, names, image, step, alpha)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "write_snapshot", disk_full_at_step_3)
    with pytest.raises(StorageError, match=r"writing snapshot photo.steps/0003.png failed"):
        Runner().execute(
            Job(source, tmp_path / "work", stem="photo"), handle, Outbox(tmp_path / "out")
        )
    assert not (tmp_path / "out" / "photo.png").exists()
    assert not (tmp_path / "out" / "photo.json").exists()


def test_a_result_that_cannot_be_written_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was a PluginError (fast) where a snapshot's was a WriterError (gatys): the plugin
    # was blamed, and one fault had two names in the failed list and the metrics.
    source = tmp_path / "photo.png"
    photo(24, 16).save(source)
    _, handle = _stepper(tmp_path, steps=2)

    def disk_full(self: PendingOutputs, image: Image.Image, alpha: Image.Image | None) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PendingOutputs, "write_result", disk_full)
    with pytest.raises(StorageError, match=r"^writing the outputs failed: \[Errno 28\] No space"):
        Runner().execute(
            Job(source, tmp_path / "work", stem="photo"), handle, Outbox(tmp_path / "out")
        )


class CountingContext(RecordingContext):
    """Counts the checkpoints a plugin hands over."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.checkpoints = 0

    def save_checkpoint(self, write: object) -> None:
        self.checkpoints += 1
        super().save_checkpoint(write)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "every", "expected"),
    [(1e-9, 0, 5), (3600, 2, 2)],
)
def test_gatys_checkpoints_by_elapsed_time_and_by_steps(
    tmp_path: Path, style_file: Path, seconds: float, every: int, expected: int
) -> None:
    params = GatysParams(
        style=[style_file],
        size=32,
        steps=6,
        snapshot_every=0,
        checkpoint_seconds=seconds,
        checkpoint_every=every,
        require_progress=0,
    )
    plugin = GatysPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))
    context = CountingContext(tmp_path / "job")
    plugin.process(photo(32, 24), context)
    # Never after the last step: the job is about to end with its result.
    assert context.checkpoints == expected


def test_a_stopped_gatys_job_has_its_checkpoint_on_disk_when_the_runner_returns(
    tmp_path: Path, style_file: Path
) -> None:
    source = tmp_path / "photo.png"
    photo(40, 30).save(source)
    handle = _gatys(tmp_path, style_file, size=40, steps=200, snapshot_every=5)
    cancel = threading.Event()
    work = tmp_path / "work"

    class Reporter:  # raises the job's stop flag at step 7, as a SIGTERM would
        def started(self, job: Job) -> None: ...

        def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
            if step >= 7:
                cancel.set()

        def finished(self, job: Job, result: object) -> None: ...

        def failed(self, job: Job, error: object) -> None: ...

    with pytest.raises(Cancelled, match="cancelled at step"):
        Runner(reporter=Reporter()).execute(
            Job(source, work, stem="photo"), handle, Outbox(tmp_path / "out"), cancel
        )
    checkpoint = work / "checkpoint" / "gatys.pt"
    assert checkpoint.is_file()  # written by the writer, and waited for
    history = [
        json.loads(line)["step"] for line in (work / "history.jsonl").read_text().splitlines()
    ]
    assert history == list(range(1, len(history) + 1)) and history[-1] >= 7
