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
    """How many residual blocks a state dict (stylebox's or PyTorch's example's) holds."""
    keys = [str(key) for key in state]
    return len({key.split(".")[0] for key in keys if re.fullmatch(r"res\d+\..*", key)})


class LayoutError(ValueError):
    """Weights that do not fit the network, said in one line in the checkpoint's own names."""


class UnknownLayout(LayoutError):
    """Weights named neither as stylebox nor as PyTorch's example names them."""


#: Buffers that InstanceNorm layers of old PyTorch versions saved and ours do not have.
_STALE = re.compile(r"(?:^|\.)in\d+\.(?:running_mean|running_var|num_batches_tracked)$")


def example_key(key: str) -> str:
    """Our state-dict key -> the name PyTorch's ``fast_neural_style`` example gives the same
    tensor. Its ConvLayer calls the convolution ``conv2d`` where ours calls it ``conv``, and
    its UpsampleConvLayer holds that convolution itself where ours holds a ConvLayer:
    ``conv1.conv.weight`` is its ``conv1.conv2d.weight``, ``deconv1.conv.conv.weight`` its
    ``deconv1.conv2d.weight``; the instance norms (``in1.weight``...) are named alike."""
    return re.sub(r"(?:\.conv)?\.conv\.(weight|bias)$", r".conv2d.\1", key)


def _list(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} and {len(keys) - limit} more" if len(keys) > limit else shown


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def load_state(network: TransformerNet, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by stylebox or by PyTorch's ``fast_neural_style`` example.

    The example's names are mapped onto ours (:func:`example_key`), and the
    ``running_mean``/``running_var`` (and ``num_batches_tracked``) that its checkpoints
    from old PyTorch versions carry are dropped, as the example itself does. Anything else
    that does not fit, a key too many or too few or a tensor of the wrong shape, raises
    :class:`LayoutError` naming it as the checkpoint does.
    """
    own = network.state_dict()
    theirs = {example_key(key): key for key in own}
    cleaned = {str(key): value for key, value in state.items() if not _STALE.search(str(key))}
    # The instance norms are named alike in both: the convolutions tell the layouts apart.
    if any(key in theirs and key not in own for key in cleaned):
        names = theirs
    elif any(key in own for key in cleaned):
        names = {key: key for key in own}
    else:
        raise UnknownLayout(
            "its keys are neither stylebox's (conv1.conv.weight, in1.weight, ...) nor those "
            "of PyTorch's fast_neural_style example (conv1.conv2d.weight, in1.weight, ...): "
            f"it holds {_list(sorted(map(str, state))) or 'nothing'}"
        )
    missing = [key for key in names if key not in cleaned]
    unexpected = [key for key in cleaned if key not in names]
    wrong = [
        f"{key} {_shape(cleaned[key])} where the network has {_shape(own[names[key]])}"
        for key in names
        if key in cleaned and _shape(cleaned[key]) != _shape(own[names[key]])
    ]
    problems = [
        f"{label}: {_list(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong", wrong))
        if keys
    ]
    if problems:
        raise LayoutError("; ".join(problems))
    network.load_state_dict({names[key]: value for key, value in cleaned.items()})
