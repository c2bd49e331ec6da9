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


def total_variation(image: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels; discourages high-frequency
    noise. ``per_image``: one value per image of the (B, C, H, W) batch."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    if per_image:
        return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)
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
        """The weighted total over the batch (for backward) and its weighted parts (for
        reporting), for ``image`` whose VGG19 ``features`` were computed by the caller."""
        terms = self.per_image(image, features, content_targets)
        total = terms["loss"].mean()
        parts = {name: float(values.detach().mean()) for name, values in terms.items()}
        return total, parts

    def per_image(
        self,
        image: torch.Tensor,
        features: Mapping[str, torch.Tensor],
        content_targets: Mapping[str, torch.Tensor],
        style_targets: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each image's weighted ``loss`` and its ``content``, ``style`` and ``tv`` parts,
        of shape (B,): an image's terms do not depend on the others in its batch, so a
        batch optimised together is each image optimised alone. ``style_targets``: in
        place of the loss's own (one set per image, or one for all)."""
        targets = self.style_targets if style_targets is None else style_targets
        zero = image.new_zeros(image.shape[0], dtype=torch.float32)
        content = sum(
            (
                w * _mean_squared(features[k].float(), content_targets[k].float())
                for k, w in self.content_layers.items()
            ),
            zero,
        )
        style = zero
        for k, w in self.style_layers.items():
            grams = gram(features[k])
            style = style + w * _mean_squared(grams, targets[k])
        tv = total_variation(image.float(), per_image=True) if self.tv_weight else zero
        content = self.content_weight * content
        style = self.style_weight * style
        tv = self.tv_weight * tv
        return {"loss": content + style + tv, "content": content, "style": style, "tv": tv}


def _mean_squared(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image (first axis) mean squared difference; ``targets`` may be one for all."""
    return (values - targets).pow(2).flatten(1).mean(1)
