"""An equivalent, cheaper form of TransformerNet's last layer, used for the ONNX export.

The last 9x9 convolution has only 3 output channels, and onnxruntime's blocked (NCHWc) CPU
convolution pads output channels to blocks of 16, so that one layer did five times its
arithmetic: 48 of 178 ms for a half-width network at 512 px (``bench/fast_infer.py
--profile``).
:class:`PhaseConv` computes the same function as a stride-2 convolution whose 12 output
channels are the four phases of every 2x2 output block, followed by depth-to-space: 16
computed channels now hold 12 useful ones, and the layer takes 15 ms.

Exact up to float rounding; ``export.verify`` compares the exported graph with the network
as trained at three sizes. The network itself (``network.py``) stays the paper's: training
and PyTorch inference use it unchanged.

Two rewrites of the upsampling layers (nearest x2, then a 3x3 convolution) were measured
and left out. Phases as channels plus depth-to-space, as here, was no faster: it keeps all
the arithmetic, and depth-to-space of a full-size tensor costs what the upsampling and
padding it replaces did. A 4x4, stride-2 transposed convolution of the edge-padded small
image (exact, with 4/9 of the multiply-adds) saved only 2-4 % of the network, nothing for
the small preset at 512 px: onnxruntime spends the saving in its col2im scatter.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stylebox.plugins.faststyle.network import ConvLayer, TransformerNet


class PhaseConv(nn.Module):
    """A stride-1, odd-kernel ``ConvLayer`` computed as one stride-2 convolution whose
    output channels are the four phases of each 2x2 output block, then depth-to-space.

    Phase ``(a, b)`` is the original kernel shifted by ``(a, b)`` inside a ``k + 1`` window;
    ``4 * C_out`` outputs fill onnxruntime's 16-channel blocks where ``C_out = 3`` did not.
    """

    def __init__(self, layer: ConvLayer) -> None:
        super().__init__()
        conv = layer.conv
        (k, k_w), stride = conv.kernel_size, conv.stride
        if k != k_w or k % 2 == 0 or stride != (1, 1):
            raise ValueError("only square, odd, stride-1 convolutions are rewritten")
        self.pad = k // 2
        channels_out, channels_in = conv.out_channels, conv.in_channels
        weight = torch.zeros(channels_out, 2, 2, channels_in, k + 1, k + 1)
        for a in range(2):
            for b in range(2):
                weight[:, a, b, :, a : a + k, b : b + k] = conv.weight.detach()
        self.weight = nn.Parameter(weight.reshape(channels_out * 4, channels_in, k + 1, k + 1))
        self.bias = nn.Parameter(conv.bias.detach().repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.pixel_shuffle(F.conv2d(padded, self.weight, self.bias, stride=2), 2)


def for_export(network: TransformerNet) -> TransformerNet:
    """A copy of ``network`` computing the same function with the rewritten layers.

    Inputs must have even sides (the plugin pads to multiples of 4 anyway).
    """
    rewritten = copy.deepcopy(network).eval()
    rewritten.deconv3 = PhaseConv(network.deconv3)  # type: ignore[assignment]
    return rewritten.requires_grad_(False)
