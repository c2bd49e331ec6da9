"""A resumed job's manifest tells the whole job: every snapshot, every step's history, and
the time of every run as well as of the last."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import photo
from daemon_helpers import wait_until
from PIL import Image
from stepper_plugin import run

from stylebox.errors import Cancelled, PermanentFailure, PluginError

HELPER = Path(__file__).with_name("stepper_plugin.py")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    photo(24, 16).save(path)
    return path


def _steps(manifest: dict) -> list[int]:
    return [entry["step"] for entry in manifest["history"]]


def _snapshots(*steps: int) -> list[str]:
    return [f"photo.steps/{step:04d}.png" for step in steps]


def _killed_at(step: int, image: Path, out: Path, work: Path, params: dict) -> None:
    """A run of the job in another process, killed (SIGKILL) once it has done ``step``."""
    marker = work.parent / "holding"
    arguments = {**params, "hold_at": step, "marker": str(marker)}
    arguments.update(image=str(image), out=str(out), work=str(work))
    process = subprocess.Popen([sys.executable, str(HELPER), json.dumps(arguments)])
    try:
        assert wait_until(marker.exists, timeout=60)
    finally:
        process.kill()
        process.wait()


def test_a_job_killed_just_after_a_checkpoint_resumes_with_its_whole_story(
    tmp_path: Path, image: Path
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    params = {"steps": 10, "checkpoint_every": 4, "snapshot_every": 2, "seconds_per_step": 0.05}
    # The first run checkpoints at step 4, within its first second (while the runner keeps
    # the history in memory), and is killed there.
    _killed_at(4, image, out, work, params)

    manifest = run(image, out, work, params).manifest
    assert manifest["resumed_from_step"] == 4
    assert _steps(manifest) == list(range(1, 11))
    assert manifest["output"]["snapshots"] == _snapshots(0, 2, 4, 6, 8, 10)
    timings = manifest["timings"]
    assert timings["runs"] == 2
    # the killed run's four steps of 0.05 s, up to its checkpoint, count in the totals
    assert timings["job_process_seconds"] >= timings["process_seconds"] + 0.2
    assert timings["job_total_seconds"] >= timings["total_seconds"] + 0.2
    assert not work.exists()  # the job is done: its work folder, elapsed.json too, is gone


def test_a_cancelled_job_resumes_with_its_whole_story(tmp_path: Path, image: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    params = {"steps": 8, "checkpoint_every": 2, "snapshot_every": 2, "seconds_per_step": 0.05}
    with pytest.raises(Cancelled):
        run(image, out, work, {**params, "cancel_at": 5})  # checkpoints at 5 and stops

    manifest = run(image, out, work, params).manifest
    assert manifest["resumed_from_step"] == 5
    assert _steps(manifest) == list(range(1, 9))
    assert manifest["output"]["snapshots"] == _snapshots(0, 2, 4, 6, 8)
    timings = manifest["timings"]
    assert timings["runs"] == 2
    assert timings["job_process_seconds"] >= timings["process_seconds"] + 0.25
    assert timings["job_total_seconds"] >= timings["total_seconds"] + 0.25


@pytest.mark.parametrize(("stop", "error"), [("cancel_at", Cancelled), ("fail_at", PluginError)])
def test_a_run_ended_before_any_checkpoint_still_counts_its_time(
    tmp_path: Path, image: Path, stop: str, error: type[Exception]
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    params = {"steps": 6, "seconds_per_step": 0.05}
    with pytest.raises(error):
        run(image, out, work, {**params, stop: 3})
    assert not (work / "checkpoint").exists()  # its time was recorded as it ended:
    assert (work / "elapsed.json").is_file()

    manifest = run(image, out, work, params).manifest
    assert "resumed_from_step" not in manifest  # nothing to resume from: all redone
    assert _steps(manifest) == list(range(1, 7))
    timings = manifest["timings"]
    assert timings["runs"] == 2
    assert timings["job_total_seconds"] >= timings["total_seconds"] + 0.15


def test_a_job_in_one_run_has_equal_run_and_job_timings(tmp_path: Path, image: Path) -> None:
    params = {"steps": 4, "checkpoint_every": 2, "snapshot_every": 2}
    manifest = run(image, tmp_path / "out", tmp_path / "state" / "job", params).manifest
    timings = manifest["timings"]
    assert timings["runs"] == 1
    assert timings["job_process_seconds"] == timings["process_seconds"]
    assert timings["job_total_seconds"] == timings["total_seconds"]
    assert manifest["output"]["snapshots"] == _snapshots(0, 2, 4)


def test_a_run_killed_before_its_first_checkpoint_is_not_counted(
    tmp_path: Path, image: Path
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    params = {"steps": 6, "checkpoint_every": 4, "seconds_per_step": 0.05}
    _killed_at(3, image, out, work, params)

    manifest = run(image, out, work, params).manifest
    assert "resumed_from_step" not in manifest
    # it reached for its checkpoint folder when it started, so it counts as a run...
    assert manifest["timings"]["runs"] == 2
    # ...with the time up to then only, not its three steps
    earlier = manifest["timings"]["job_total_seconds"] - manifest["timings"]["total_seconds"]
    assert earlier < 0.15


def test_device_and_the_like_come_only_from_the_plugins_notes(tmp_path: Path, image: Path) -> None:
    """The runner's own manifest fields; the stepper notes nothing on an uninterrupted job."""
    manifest = run(image, tmp_path / "out", tmp_path / "state" / "job", {"steps": 2}).manifest
    own = {"input", "plugin", "params", "output", "timings", "history", "libraries"}
    assert own <= set(manifest)
    noted = {"device", "backbone", "style_cache", "resumed_from_step", "provider", "precision"}
    assert not noted & set(manifest)


def test_a_job_started_over_shows_only_the_snapshots_of_its_new_start(
    tmp_path: Path, image: Path
) -> None:
    # Stopped at step 7 with no checkpoint, then run with fewer steps (new params): the
    # first run's snapshot of step 6 was listed in the manifest and drawn into the GIF.
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    with pytest.raises(Cancelled):
        run(image, out, work, {"steps": 8, "snapshot_every": 2, "cancel_at": 7})
    assert (out / "photo.steps" / "0006.png").is_file()

    manifest = run(image, out, work, {"steps": 4, "snapshot_every": 2}).manifest
    assert manifest["output"]["snapshots"] == _snapshots(0, 2, 4)
    assert sorted(p.name for p in (out / "photo.steps").iterdir()) == [
        "0000.png", "0002.png", "0004.png"
    ]  # fmt: skip


def test_a_metric_that_is_not_a_number_is_null_in_a_manifest_that_stays_json(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A plugin's loss of NaN went into the manifest as `"loss": NaN`, which JSON has not:
    # JSON.parse and strict readers refused the whole manifest.
    result = run(image, tmp_path / "out", tmp_path / "state" / "job", {"steps": 3, "nan_at": 2})

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    manifest = json.loads(result.names.manifest.read_text(), parse_constant=refuse)
    assert [entry["loss"] for entry in manifest["history"]] == [1000.0, None, 1000.0 / 3]
    assert manifest["spread"] is None
    assert "the plugin reported loss=nan at step 2 (recorded as null)" in caplog.text


def test_a_step_past_the_total_is_said_once(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # progress(4, 3) went by unsaid: a bar past its end, "step 4/3" in the log. Said at
    # each of the three steps past the count here, it would be said three times.
    with caplog.at_level(logging.WARNING, logger="stylebox"):
        run(image, tmp_path / "out", tmp_path / "state" / "job", {"steps": 3, "past_total": True})
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "job photo.png: the plugin reported step 4 of 3; the contract asks 0 <= step <= "
        "total, total > 0 (the contract kit's progress check says so)"
    )


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        # A bare `raise Exception()` failed the job as "plugin stepper failed: Exception: ".
        (
            {"bare_at": 1},
            PluginError,
            "plugin stepper failed: Exception (raised without a message)",
        ),
        # It failed as "ValueError: could not convert string to float: 'high'", naming
        # neither the metric nor what to do.
        (
            {"text_metric": True},
            PluginError,
            "plugin stepper failed: TypeError: progress at step 1 reported the metric "
            "loss='high', which is not a number; metrics are numbers for the manifest's "
            "history (put text in job.note())",
        ),
        # A plugin that returns a grey image returns one at every try: it was retried
        # max_attempts times, each run spent again for the same refusal.
        (
            {"grey": True},
            PermanentFailure,
            "plugin stepper returned an L image, not RGB (the plugin breaks its contract; "
            "another try would do the same)",
        ),
    ],
    ids=["bare exception", "text metric", "grey result"],
)
def test_a_plugin_s_fault_is_said_as_what_it_was(
    tmp_path: Path, image: Path, params: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as failure:
        run(image, tmp_path / "out", tmp_path / "state" / "job", {"steps": 3, **params})
    assert type(failure.value) is error and str(failure.value) == message


def test_a_result_of_one_flat_colour_for_a_photo_with_detail_fails(
    tmp_path: Path, image: Path
) -> None:
    # A model whose output went NaN paints every pixel black: it ended as done, a black
    # square delivered in the outbox.
    out = tmp_path / "out"
    with pytest.raises(PermanentFailure) as failure:
        run(image, out, tmp_path / "state" / "job", {"steps": 2, "black": True})
    assert str(failure.value).startswith(
        "plugin stepper returned one flat colour (0, 0, 0) for a photo with detail"
    )
    assert not list(out.glob("*.png"))
    flat = tmp_path / "flat.png"
    Image.new("RGB", (24, 16), (0, 0, 0)).save(flat)  # black in, black out: a result
    assert run(flat, out, tmp_path / "state" / "flat", {"steps": 2}).names.result.is_file()


def test_a_fact_that_is_not_a_number_is_null_and_said(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A numpy NaN noted as a fact went into the manifest as the text "nan", unsaid.
    params = {"steps": 2, "odd_fact": True}
    result = run(image, tmp_path / "out", tmp_path / "state" / "job", params)
    manifest = json.loads(result.names.manifest.read_text())
    assert manifest["scores"] == [0.5, None]
    # numpy integers, booleans and arrays were written as their text ("2", "True", "[0 1]").
    assert (manifest["steps"], manifest["converged"], manifest["counts"]) == (2, True, [0, 1])
    assert "the plugin noted scores[1] as a number that is not finite (recorded as null)" in (
        caplog.text
    )
