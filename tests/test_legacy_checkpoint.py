"""Checkpoints of PyTorch's fast_neural_style example load into our network.

The checkpoints here are written from a table of the example's own key names and shapes,
not from our network class, and the expected result comes from a transcription of the
example's forward pass over those weights: a naming mismatch cannot hide behind our own
layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stylebox.errors import ConfigError
from stylebox.plugins.faststyle.export import load_checkpoint
from stylebox.plugins.faststyle.network import stylise

#: (name, input channels, output channels, kernel) of each convolution, in the example's
#: names: ConvLayer keeps its convolution in ``conv2d`` (its ReflectionPad2d has no weights),
#: UpsampleConvLayer (deconv1, deconv2) keeps its own ``conv2d``; deconv3 is a ConvLayer.
CONVOLUTIONS = [
    ("conv1", 3, 32, 9),
    ("conv2", 32, 64, 3),
    ("conv3", 64, 128, 3),
    *[(f"res{i}.conv{j}", 128, 128, 3) for i in range(1, 6) for j in (1, 2)],
    ("deconv1", 128, 64, 3),
    ("deconv2", 64, 32, 3),
    ("deconv3", 32, 3, 9),
]
#: (name, channels) of each affine InstanceNorm2d.
NORMS = [
    ("in1", 32),
    ("in2", 64),
    ("in3", 128),
    *[(f"res{i}.in{j}", 128) for i in range(1, 6) for j in (1, 2)],
    ("in4", 64),
    ("in5", 32),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Images this small gain nothing from threads, and on a busy machine waiting for them
    took 0.8 s per forward pass instead of 5 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def example_state(stale: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights named and shaped as the example saves them; ``stale`` adds the running
    statistics that its InstanceNorm layers saved under old PyTorch versions."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, c_in, c_out, kernel in CONVOLUTIONS:
        fan_in = c_in * kernel * kernel
        weight = torch.randn(c_out, c_in, kernel, kernel, generator=generator) / fan_in**0.5
        state[f"{name}.conv2d.weight"] = weight
        state[f"{name}.conv2d.bias"] = torch.randn(c_out, generator=generator) * 0.1
    for name, channels in NORMS:
        state[f"{name}.weight"] = 1 + 0.2 * torch.randn(channels, generator=generator)
        state[f"{name}.bias"] = 0.2 * torch.randn(channels, generator=generator)
        if stale:
            state[f"{name}.running_mean"] = torch.randn(channels, generator=generator)
            state[f"{name}.running_var"] = torch.rand(channels, generator=generator) + 0.5
            state[f"{name}.num_batches_tracked"] = torch.tensor(1000)
    return state


def example_forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The example's TransformerNet.forward, written out over its state dict."""

    def conv(name: str, y: torch.Tensor, stride: int = 1, upsample: bool = False):
        weight = w[f"{name}.conv2d.weight"]
        if upsample:
            y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.pad(y, [weight.shape[-1] // 2] * 4, mode="reflect")
        return F.conv2d(y, weight, w[f"{name}.conv2d.bias"], stride)

    def norm(name: str, y: torch.Tensor):
        return F.instance_norm(y, weight=w[f"{name}.weight"], bias=w[f"{name}.bias"])

    y = F.relu(norm("in1", conv("conv1", x)))
    y = F.relu(norm("in2", conv("conv2", y, stride=2)))
    y = F.relu(norm("in3", conv("conv3", y, stride=2)))
    for i in range(1, 6):
        residual = F.relu(norm(f"res{i}.in1", conv(f"res{i}.conv1", y)))
        y = y + norm(f"res{i}.in2", conv(f"res{i}.conv2", residual))
    y = F.relu(norm("in4", conv("deconv1", y, upsample=True)))
    y = F.relu(norm("in5", conv("deconv2", y, upsample=True)))
    return conv("deconv3", y)


def test_the_table_is_the_examples_size() -> None:
    count = sum(c_out * c_in * k * k + c_out for _, c_in, c_out, k in CONVOLUTIONS)
    count += sum(2 * channels for _, channels in NORMS)
    assert count == 1_679_235  # the 1.68 M parameters of the paper's network


@pytest.mark.parametrize(
    ("stale", "zipfile"),
    [(False, True), (True, True), (True, False)],  # zipfile=False: the pre-1.6 file format
    ids=["current", "stale-running-stats", "old-file-format"],
)
def test_an_example_checkpoint_loads_and_stylises_as_the_example_does(
    tmp_path: Path, stale: bool, zipfile: bool
) -> None:
    state = example_state(stale)
    path = tmp_path / "mosaic.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    network, record = load_checkpoint(path)
    assert record == {}  # a bare state dict has no training record
    assert network.preset == "full" and network.residual_blocks == 5
    assert torch.equal(network.conv1.conv.weight, state["conv1.conv2d.weight"])
    assert torch.equal(network.deconv1.conv.conv.weight, state["deconv1.conv2d.weight"])
    assert torch.equal(network.res3.in2.bias, state["res3.in2.bias"])

    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = example_forward(state, image)
        got = stylise(network, image)
    assert got.shape == expected.shape == (1, 3, 20, 24)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_an_incomplete_example_checkpoint_is_refused_in_its_own_names(tmp_path: Path) -> None:
    state = example_state(stale=True)
    del state["deconv3.conv2d.bias"]
    state["in4.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(tmp_path / "cut.pth")
    message = str(refused.value)
    assert "do not fit a full TransformerNet (missing: deconv3.conv2d.bias;" in message
    assert "wrong: in4.weight [7] where the network has [64])" in message
    assert "\n" not in message


def test_a_checkpoint_of_neither_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    foreign = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    foreign["classifier.6.weight"] = torch.zeros(1000, 4096)
    foreign["classifier.6.bias"] = torch.zeros(1000)
    torch.save(foreign, tmp_path / "vgg.pth")
    with pytest.raises(ConfigError) as refused:
        load_checkpoint(tmp_path / "vgg.pth")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'vgg.pth'}: not a fast-style network checkpoint")
    assert "neither stylebox's (conv1.conv.weight" in message
    assert "fast_neural_style example (conv1.conv2d.weight" in message
    assert "it holds classifier.6.bias, classifier.6.weight, features.0.bias and 1 more" in message
    assert "\n" not in message and "stylebox train" in message
