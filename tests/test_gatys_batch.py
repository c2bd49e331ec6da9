"""Issue 13, batches of photos: same-size photos optimised together, each with its own
L-BFGS state, ending as it would alone and on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import photo, pixels

from stylebox.errors import Cancelled
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.plugins.gatys import engine as gatys_engine
from stylebox.testing import RecordingContext

SETTINGS = {"size": 48, "steps": 8, "snapshot_every": 4, "require_progress": 0}


@pytest.fixture(autouse=True)
def _batch_invariant_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN picks other kernels for a batch of 2 than for 1, and L-BFGS amplifies their
    float noise step by step (up to 9 levels at 10 steps on an AMD EPYC): PyTorch's own
    convolution runs a batch image by image, so that a lane must end as it does alone."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


def _plugin(tmp_path: Path, style_file: Path, **params: object) -> GatysPlugin:
    settings = GatysParams(style=[style_file], **{**SETTINGS, **params})  # type: ignore[arg-type]
    return GatysPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))


def assert_same_painting(batched: Any, alone: Any) -> None:
    difference = np.abs(pixels(batched).astype(int) - pixels(alone).astype(int))
    assert difference.max() <= 1, (difference.mean(), difference.max())


@pytest.mark.parametrize("extra", [{}, {"color": "luminance", "optimizer": "adam"}])
def test_a_batch_gives_each_photo_what_it_gets_alone(
    tmp_path: Path, style_file: Path, extra: dict[str, object]
) -> None:
    plugin = _plugin(tmp_path, style_file, **extra)
    photos = [photo(48, 36, seed=seed) for seed in (1, 2, 3)]
    together = [RecordingContext(tmp_path / f"b{i}") for i in range(3)]
    results = plugin.process_batch(photos, together)
    for index, image in enumerate(photos):
        alone = RecordingContext(tmp_path / f"s{index}")
        single = plugin.process(image, alone)
        assert_same_painting(results[index], single)
        # Each job's own story: its losses step by step, its own snapshots.
        batch_losses = np.array(together[index].metric("loss"))
        assert np.allclose(batch_losses, alone.metric("loss"), rtol=1e-3)
        assert [step for step, _ in together[index].snapshots] == [0, 4, 8]
    assert len({tuple(context.metric("loss")) for context in together}) == 3


@pytest.mark.parametrize("lane", [0, 1])
def test_a_job_stopped_in_a_batch_checkpoints_alone_and_the_others_finish(
    tmp_path: Path, style_file: Path, lane: int
) -> None:
    plugin = _plugin(tmp_path, style_file, steps=10)
    photos = [photo(48, 36, seed=seed) for seed in (1, 2)]
    contexts = [RecordingContext(tmp_path / "going"), RecordingContext(tmp_path / "going")]
    contexts[lane] = RecordingContext(tmp_path / "stopped", cancel_at_step=4)
    results = plugin.process_batch(photos, contexts)
    assert isinstance(results[lane], Cancelled)
    assert (tmp_path / "stopped" / "gatys.pt").is_file()
    other = 1 - lane
    assert results[other].size == (48, 36) and contexts[other].progress_reports[-1][0] == 10
    alone = [
        plugin.process(image, RecordingContext(tmp_path / f"alone{i}"))
        for i, image in enumerate(photos)
    ]
    assert_same_painting(results[other], alone[other])  # its steps went on as if alone

    # The stopped job resumes alone from its own checkpoint and ends as it would have.
    resumed = RecordingContext(tmp_path / "stopped")
    contexts = [RecordingContext(tmp_path / "x"), RecordingContext(tmp_path / "x")]
    contexts[lane] = resumed
    finished = plugin.process_batch(photos, contexts)
    assert resumed.facts["resumed_from_step"] == 4
    assert_same_painting(finished[lane], alone[lane])


def test_photos_of_other_sizes_in_one_call_are_run_in_groups(
    tmp_path: Path, style_file: Path
) -> None:
    plugin = _plugin(tmp_path, style_file, steps=3, snapshot_every=0)
    photos = [photo(48, 36, seed=1), photo(30, 40, seed=2), photo(48, 36, seed=3)]
    results = plugin.process_batch(photos, [RecordingContext(tmp_path / f"{i}") for i in range(3)])
    assert [result.size for result in results] == [(48, 36), (30, 40), (48, 36)]


def test_on_the_cpu_the_daemon_gets_no_batches(tmp_path: Path, style_file: Path) -> None:
    # One image fills the CPU's cores; a batch would only hold its jobs back.
    assert GatysPlugin.capabilities.batching
    assert not _plugin(tmp_path, style_file).capabilities.batching


def test_a_lane_stopped_after_its_plateau_checkpoints_where_it_ended(
    tmp_path: Path, style_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lane 0 ends at step 3 as a plateau ends it, and is stopped at step 7 while lane 1
    goes on: its checkpoint is its state at step 3 (the optimiser does not keep up the
    memory of a photo that no longer steps), as when it is stopped at step 3 alone."""
    plugin = _plugin(tmp_path, style_file, steps=10, snapshot_every=0)
    photos = [photo(48, 36, seed=seed) for seed in (1, 2)]
    contexts = [RecordingContext(tmp_path / "ended"), RecordingContext(tmp_path / "going")]
    stepped = gatys_engine.Engine._stepped

    def plateau_then_stop(self: gatys_engine.Engine, lane: Any, loss: float, *rest: Any) -> None:
        stepped(self, lane, loss, *rest)
        step = rest[2]
        if lane.job is contexts[0] and step == 3:
            lane.active = False  # what a plateau does
        if lane.job is contexts[1] and step == 7:
            contexts[0].cancel()

    monkeypatch.setattr(gatys_engine.Engine, "_stepped", plateau_then_stop)
    results = plugin.process_batch(photos, contexts)
    monkeypatch.undo()
    assert isinstance(results[0], Cancelled) and not isinstance(results[1], Cancelled)
    alone = RecordingContext(tmp_path / "alone", cancel_at_step=3)
    with pytest.raises(Cancelled):
        plugin.process(photos[0], alone)
    ended, stopped = (
        torch.load(folder / "gatys.pt", weights_only=True)
        for folder in (tmp_path / "ended", tmp_path / "alone")
    )
    assert ended["step"] == stopped["step"] == 3
    assert torch.allclose(ended["image"], stopped["image"], atol=2e-3)
    for name in ("rho", "trust", "boost", "quasi_newton", "refused"):
        assert torch.allclose(
            ended["optimizer"][name].float(), stopped["optimizer"][name].float(), rtol=1e-2
        ), name
