"""Issue 13, batches of photos: same-size photos optimised together, each with its own
L-BFGS state, ending as it would alone and on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import photo, pixels

from stylebox.errors import Cancelled
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.testing import RecordingContext

SETTINGS = {"size": 48, "steps": 8, "snapshot_every": 4, "require_progress": 0}


def _plugin(tmp_path: Path, style_file: Path, **params: object) -> GatysPlugin:
    settings = GatysParams(style=[style_file], **{**SETTINGS, **params})  # type: ignore[arg-type]
    return GatysPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))


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
        difference = np.abs(pixels(results[index]).astype(int) - pixels(single).astype(int))
        assert difference.max() <= 2, index  # float noise of a batched convolution
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
    difference = np.abs(pixels(results[other]).astype(int) - pixels(alone[other]).astype(int))
    assert difference.max() <= 2  # the other photo's steps went on as if alone

    # The stopped job resumes alone from its own checkpoint and ends as it would have.
    resumed = RecordingContext(tmp_path / "stopped")
    contexts = [RecordingContext(tmp_path / "x"), RecordingContext(tmp_path / "x")]
    contexts[lane] = resumed
    finished = plugin.process_batch(photos, contexts)
    assert resumed.facts["resumed_from_step"] == 4
    difference = np.abs(pixels(finished[lane]).astype(int) - pixels(alone[lane]).astype(int))
    assert difference.max() <= 2


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
