from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import photo, pixels
from PIL import Image

from stylebox.errors import Cancelled, ConfigError
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.plugins.gatys import plugin as gatys_module
from stylebox.testing import RecordingContext


def make(tmp_path: Path, style_path: Path, **overrides: Any) -> GatysPlugin:
    settings: dict[str, Any] = {
        "style": [str(style_path)],
        "size": 64,
        "steps": 8,
        "snapshot_every": 0,
        "checkpoint_every": 0,
    }
    settings.update(overrides)
    params = GatysParams.model_validate(settings)
    return GatysPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))


def run(plugin: GatysPlugin, folder: Path, image: Image.Image | None = None, **kw: Any):
    context = RecordingContext(folder, **kw)
    result = plugin.process(image or photo(64, 48), context)
    return result, context


def test_losses_fall_and_the_image_changes(tmp_path: Path, style_file: Path) -> None:
    plugin = make(tmp_path, style_file, steps=15)
    content = photo(64, 48)
    result, context = run(plugin, tmp_path / "job", content)
    losses = context.metric("loss")
    assert len(losses) == 15
    assert losses[-1] < 0.5 * losses[0]
    assert context.metric("style")[-1] < context.metric("style")[0]
    assert result.size == content.size and result.mode == "RGB"
    assert np.abs(pixels(result) - pixels(content)).mean() > 3
    assert [step for step, _, _ in context.progress_reports] == list(range(1, 16))


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_both_optimisers_reduce_the_loss(tmp_path: Path, style_file: Path, optimizer: str) -> None:
    lr = 1.0 if optimizer == "lbfgs" else 0.05
    plugin = make(
        tmp_path, style_file, optimizer=optimizer, learning_rate=lr, lr_schedule="cosine", steps=10
    )
    _, context = run(plugin, tmp_path / "job")
    assert context.metric("loss")[-1] < context.metric("loss")[0]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_channels_last_gives_the_same_painting(
    tmp_path: Path, style_file: Path, optimizer: str
) -> None:
    """The layout CUDA runs in by default, checked here on the CPU: L-BFGS once refused
    channels-last images (it flattens the gradient with view())."""
    lr = 1.0 if optimizer == "lbfgs" else 0.05
    results = [
        run(
            make(tmp_path, style_file, optimizer=optimizer, learning_rate=lr, memory_format=f),
            tmp_path / f,
        )
        for f in ("contiguous", "channels_last")
    ]
    (plain, plain_context), (last, last_context) = results
    assert last_context.metric("loss")[-1] == pytest.approx(plain_context.metric("loss")[-1], 1e-3)
    difference = np.abs(pixels(plain) - pixels(last))  # float rounding, amplified by L-BFGS
    assert difference.mean() < 0.5 and difference.max() <= 8


def test_snapshots_go_through_the_context(tmp_path: Path, style_file: Path) -> None:
    plugin = make(tmp_path, style_file, steps=6, snapshot_every=2)
    _, context = run(plugin, tmp_path / "job")
    assert [step for step, _ in context.snapshots] == [0, 2, 4, 6]
    assert all(image.size == (64, 48) for _, image in context.snapshots)


def test_coarse_to_fine_runs_every_scale(tmp_path: Path, style_file: Path) -> None:
    plugin = make(
        tmp_path, style_file, size=96, scales=[48], coarse_steps=3, steps=4, snapshot_every=1
    )
    result, context = run(plugin, tmp_path / "job", photo(96, 72))
    sizes = context.metric("size")
    assert sizes == [48.0] * 3 + [96.0] * 4
    assert context.progress_reports[-1][:2] == (7, 7)
    assert result.size == (96, 72)
    assert {image.size for _, image in context.snapshots} == {(48, 36), (96, 72)}


def test_same_seed_same_output(tmp_path: Path, style_file: Path) -> None:
    first, _ = run(make(tmp_path, style_file, init="noise", seed=7), tmp_path / "a")
    second, _ = run(make(tmp_path, style_file, init="noise", seed=7), tmp_path / "b")
    third, _ = run(make(tmp_path, style_file, init="noise", seed=8), tmp_path / "c")
    assert np.array_equal(pixels(first), pixels(second))
    assert not np.array_equal(pixels(first), pixels(third))


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path: Path, style_file: Path) -> None:
    settings = {"size": 96, "scales": [48], "coarse_steps": 4, "steps": 6, "checkpoint_every": 1}
    content = photo(96, 72)
    whole, whole_context = run(make(tmp_path, style_file, **settings), tmp_path / "whole", content)

    job = tmp_path / "interrupted"
    # Stop once in the coarse scale and once in the fine one; each restart is a new instance.
    for stop in (2, 7):
        with pytest.raises(Cancelled):
            run(make(tmp_path, style_file, **settings), job, content, cancel_at_step=stop)
        assert (job / "gatys.pt").is_file()
    resumed, context = run(make(tmp_path, style_file, **settings), job, content)
    assert context.facts["resumed_from_step"] == 7
    assert [step for step, _, _ in context.progress_reports] == [8, 9, 10]
    assert np.array_equal(pixels(resumed), pixels(whole))
    assert context.metric("loss") == whole_context.metric("loss")[7:]


def test_checkpoint_of_other_params_is_ignored(tmp_path: Path, style_file: Path) -> None:
    job = tmp_path / "job"
    with pytest.raises(Cancelled):
        run(make(tmp_path, style_file, checkpoint_every=1), job, cancel_at_step=3)
    _, context = run(make(tmp_path, style_file, checkpoint_every=1, content_weight=2.0), job)
    assert "resumed_from_step" not in context.facts
    assert len(context.progress_reports) == 8


def test_cancellation_is_polled_between_steps(tmp_path: Path, style_file: Path) -> None:
    with pytest.raises(Cancelled, match="step 3"):
        run(make(tmp_path, style_file, steps=50), tmp_path / "job", cancel_at_step=3)


def test_style_targets_are_cached_in_memory_and_on_disk(tmp_path: Path, style_file: Path) -> None:
    gatys_module._caches.clear()
    plugin = make(tmp_path, style_file, steps=1)
    _, first = run(plugin, tmp_path / "a")
    _, second = run(plugin, tmp_path / "b", photo(64, 48, seed=3))
    assert first.facts["style_cache"] == {"computed": 1}
    assert second.facts["style_cache"] == {"memory": 1}
    gatys_module._caches.clear()  # as in a new process
    _, third = run(make(tmp_path, style_file, steps=1), tmp_path / "c")
    assert third.facts["style_cache"] == {"disk": 1}
    assert len(list((tmp_path / "state" / "cache" / "gatys-style-targets").glob("*.pt"))) == 1


def test_two_styles_blend(tmp_path: Path, style_file: Path) -> None:
    other = tmp_path / "other.png"
    photo(40, 40, seed=5).save(other)
    plugin = make(tmp_path, style_file, style=[str(style_file), str(other)], style_blend=[3, 1])
    assert plugin.params.blend == [0.75, 0.25]
    result, context = run(plugin, tmp_path / "job")
    assert context.facts["style_cache"] == {"computed": 2}
    assert result.size == (64, 48)


@pytest.mark.parametrize("colour", ["luminance", "histogram"])
def test_colour_control(tmp_path: Path, style_file: Path, colour: str) -> None:
    content = photo(64, 48)
    result, _ = run(make(tmp_path, style_file, color=colour, steps=6), tmp_path / "job", content)
    if colour == "luminance":
        # The photo's colours survive: the chrominance of result and photo agree closely.
        def chroma(image: Image.Image) -> np.ndarray:
            return np.asarray(image.convert("YCbCr"), dtype=float)[..., 1:]

        assert np.abs(chroma(result) - chroma(content)).mean() < 4
    assert result.size == content.size


@pytest.mark.parametrize("init", ["content", "noise", "style", "image"])
def test_init_modes(tmp_path: Path, style_file: Path, init: str) -> None:
    value = init
    if init == "image":
        value = str(tmp_path / "start.png")
        photo(30, 20, seed=9).save(value)
    result, _ = run(make(tmp_path, style_file, init=value, steps=2), tmp_path / "job")
    assert result.size == (64, 48)


def test_early_stop_on_plateau(tmp_path: Path, style_file: Path) -> None:
    plugin = make(tmp_path, style_file, steps=200, plateau_patience=2, plateau_tolerance=0.5)
    _, context = run(plugin, tmp_path / "job")
    assert len(context.progress_reports) < 200
    assert any(key.startswith("plateau_stop") for key in context.facts)


def test_small_images_are_not_enlarged(tmp_path: Path, style_file: Path) -> None:
    result, _ = run(make(tmp_path, style_file, size=512, steps=2), tmp_path / "job", photo(20, 12))
    assert result.size == (20, 12)


def test_bf16_needs_cuda(tmp_path: Path, style_file: Path) -> None:
    with pytest.raises(ConfigError, match="bf16"):
        make(tmp_path, style_file, precision="bf16")


def test_a_bad_style_image_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not really a jpeg")
    with pytest.raises(ConfigError, match="style image"):
        make(tmp_path, broken)


def test_params_refuse_inconsistent_values(style_file: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="style_blend has 2 weights for 1 style"):
        GatysParams(style=[style_file], style_blend=[1, 2])
    with pytest.raises(ValidationError, match="smaller than size"):
        GatysParams(style=[style_file], size=256, scales=[128, 256])
    with pytest.raises(ValidationError, match="unknown VGG19 layers"):
        GatysParams(style=[style_file], style_layers={"relu9_1": 1.0})
    assert GatysParams(style="starry_night").style[0].name == "starry_night.jpg"


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (300, 7), (5, 90)])
def test_tiny_and_extreme_images_keep_their_size(tmp_path: Path, style_file: Path, size) -> None:
    plugin = make(tmp_path, style_file, size=512, scales=[64], steps=2, coarse_steps=1)
    result, _ = run(plugin, tmp_path / "job", photo(*size))
    assert result.size == size and result.mode == "RGB"


def test_gram_backward_matches_numerical_gradient() -> None:
    import torch

    from stylebox.plugins.gatys.losses import gram

    features = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, 6, dtype=torch.float64)  # not symmetric: the general case
    assert torch.autograd.gradcheck(lambda f: (gram(f) * weights).sum(), (features,))
