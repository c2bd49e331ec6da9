"""Perceptual losses on VGG19 features, shared by the gatys optimiser and fast-style training.

Small pieces that compose: :func:`gram` and :func:`total_variation` are the building
blocks, :class:`PerceptualLoss` weighs a content term, a Gram style term and a TV term
into one total. Each term is a mean, and Grams are divided by C*H*W, so the content and
style terms keep their balance across sizes (within 15 % between 256 and 512 px on a
photo). The TV term, a mean of squared neighbour differences, falls as the same picture
gets more pixels (to about a quarter from 256 to 512 px), so it smooths less at larger
sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


class _Gram(torch.autograd.Function):
    """G = F F^T / n with a backward of one matmul: dF = (dG + dG^T) F / n.

    Autograd's generic rule for ``bmm(F, F^T)`` spends two matmuls of the full feature
    size; the Grams are a tenth of each optimisation step, so this is worth having. Both
    passes run in fp32 with autocast off: under bf16 autocast ``bmm`` would otherwise make
    a bf16 Gram (sums over a whole feature map lose too much there) and meet fp32 features
    in the backward ("expected scalar type Float but found BFloat16").
    """

    @staticmethod
    def forward(ctx: Any, flat: torch.Tensor, n: float) -> torch.Tensor:
        ctx.save_for_backward(flat)
        ctx.n = n
        with torch.autocast(flat.device.type, enabled=False):
            return torch.bmm(flat, flat.transpose(1, 2)) / n

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (flat,) = ctx.saved_tensors
        with torch.autocast(flat.device.type, enabled=False):
            grad = grad.to(flat.dtype)
            return torch.bmm(grad + grad.transpose(1, 2), flat) / ctx.n, None


def gram(features: torch.Tensor) -> torch.Tensor:
    """Channel co-occurrence of a (B, C, H, W) map, normalised by C*H*W (at least fp32)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return _Gram.apply(flat, float(c * h * w))


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels; discourages high-frequency noise."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


@dataclass
class PerceptualLoss:
    """``content_weight * content + style_weight * style + tv_weight * tv``.

    ``style_targets`` are the painting's Grams per layer (batch 1: they broadcast over a
    batch of images); content targets come with each call, since training compares every
    batch with itself. Layers or terms of weight 0 are not computed.
    """

    content_layers: Mapping[str, float]
    style_layers: Mapping[str, float]
    style_targets: Mapping[str, torch.Tensor]
    content_weight: float
    style_weight: float
    tv_weight: float
    layers: list[str] = field(init=False)
    """Every VGG19 layer the loss reads: what to ask the network for."""

    def __post_init__(self) -> None:
        content, style = self.content_weight, self.style_weight
        self.content_layers = {k: w for k, w in self.content_layers.items() if w and content}
        self.style_layers = {k: w for k, w in self.style_layers.items() if w and style}
        self.layers = sorted({*self.content_layers, *self.style_layers})

    def __call__(
        self,
        image: torch.Tensor,
        features: Mapping[str, torch.Tensor],
        content_targets: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total (for backward) and its weighted parts (for reporting), for
        ``image`` whose VGG19 ``features`` were computed by the caller."""
        zero = image.new_zeros((), dtype=torch.float32)
        content = sum(
            (
                w * F.mse_loss(features[k].float(), content_targets[k].float())
                for k, w in self.content_layers.items()
            ),
            zero,
        )
        style = zero
        for k, w in self.style_layers.items():
            grams = gram(features[k])
            style = style + w * F.mse_loss(grams, self.style_targets[k].expand_as(grams))
        tv = total_variation(image.float()) if self.tv_weight else zero
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        parts = {
            "loss": float(total.detach()),
            "content": float(content.detach()) * self.content_weight,
            "style": float(style.detach()) * self.style_weight,
            "tv": float(tv.detach()) * self.tv_weight,
        }
        return total, parts
