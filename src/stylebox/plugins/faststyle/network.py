"""TransformerNet: the feed-forward style network of Johnson, Alahi & Fei-Fei (2016).

With the usual improvements: instance normalisation (Ulyanov et al.), reflection padding,
and nearest-neighbour upsampling followed by a convolution instead of a transposed
convolution (no checkerboard artefacts). Input and output are RGB in 0..255.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Preset = Literal["full", "small"]


@dataclass(frozen=True)
class Shape:
    """Channel counts of the three resolution levels, and the residual blocks at the last."""

    c1: int
    c2: int
    c3: int
    residual_blocks: int


PRESETS: dict[Preset, Shape] = {
    "full": Shape(32, 64, 128, 5),  # the paper's network, 1.68 M parameters
    # Half width and three residual blocks, for CPUs: 124 ms at 512 px against 146 ms with
    # five (bench/fast_infer.py); the style still carries (styles/TRAINING.md).
    "small": Shape(16, 32, 64, 3),
}

#: Downsampling by 4 in total: inputs are padded to a multiple of this and cropped back.
MULTIPLE = 4


class ConvLayer(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour x2 upsampling, then a convolution."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = ConvLayer(channels_in, channels_out, kernel, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class TransformerNet(nn.Module):
    """``residual_blocks`` overrides the preset's count (checkpoints made with another)."""

    def __init__(self, preset: Preset = "full", residual_blocks: int | None = None) -> None:
        super().__init__()
        w = PRESETS[preset]
        self.preset: Preset = preset
        self.residual_blocks = residual_blocks or w.residual_blocks
        self.conv1 = ConvLayer(3, w.c1, 9, 1)
        self.in1 = nn.InstanceNorm2d(w.c1, affine=True)
        self.conv2 = ConvLayer(w.c1, w.c2, 3, 2)
        self.in2 = nn.InstanceNorm2d(w.c2, affine=True)
        self.conv3 = ConvLayer(w.c2, w.c3, 3, 2)
        self.in3 = nn.InstanceNorm2d(w.c3, affine=True)
        # Named res1, res2, ... like PyTorch's example, whose checkpoints load as they are.
        for i in range(1, self.residual_blocks + 1):
            self.add_module(f"res{i}", ResidualBlock(w.c3))
        self.deconv1 = UpsampleConvLayer(w.c3, w.c2, 3)
        self.in4 = nn.InstanceNorm2d(w.c2, affine=True)
        self.deconv2 = UpsampleConvLayer(w.c2, w.c1, 3)
        self.in5 = nn.InstanceNorm2d(w.c1, affine=True)
        self.deconv3 = ConvLayer(w.c1, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for i in range(1, self.residual_blocks + 1):
            y = getattr(self, f"res{i}")(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


#: The reflection paddings need at least this many pixels on each side.
MIN_SIDE = 8


def stylise(network: TransformerNet, image: torch.Tensor) -> torch.Tensor:
    """Any size in, same size out: pad to a multiple of 4 (and at least 8), run, crop back."""
    height, width = image.shape[-2:]
    pad_h = max(MIN_SIDE, height + -height % MULTIPLE) - height
    pad_w = max(MIN_SIDE, width + -width % MULTIPLE) - width
    if pad_h or pad_w:
        # Reflection needs more pixels than it pads; tiny images repeat their edge instead.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return network(image)[..., :height, :width]


def residual_blocks_in(state: dict[str, torch.Tensor]) -> int:
    """How many residual blocks a state dict holds."""
    return len({key.split(".")[0] for key in state if re.fullmatch(r"res\d+\..*", key)})


def load_state(network: TransformerNet, state: dict[str, torch.Tensor]) -> None:
    """Load weights, also from checkpoints of PyTorch's original example, whose old
    InstanceNorm layers saved ``running_mean``/``running_var`` that are not used."""
    cleaned = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var"))}
    network.load_state_dict(cleaned)
