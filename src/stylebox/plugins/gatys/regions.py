"""Semantic masks: the style loss region by region (Luan et al. 2017, section 3.2).

A mask is a label image: each flat colour names a region (sky, water, building...), and
the same colour in the photo's mask and the reference's means the same region. At every
style layer each region's mask is shrunk to the layer's size (area average), the features
are multiplied by it, and their Gram is divided by C times the region's area: a Gram of
that region alone. The photo's region k is pulled toward the reference's region k. A region
the reference lacks is pulled toward the photo's own Gram of it, so it keeps its look. Each
region's term is weighted by its share of the photo, so one region covering everything is
the plain Gram loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylebox.perceptual import gram
from stylebox.plugins.gatys.params import Color

#: A region smaller than this many feature pixels at a layer is absent there.
MIN_REGION = 0.5


def label_masks(mask: Image.Image, colors: Sequence[Color], size: tuple[int, int]) -> torch.Tensor:
    """One-hot (K, H, W) float masks of ``mask`` resized (nearest) to ``size`` (W, H): each
    pixel belongs to the listed colour nearest to its own."""
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    pixels = np.asarray(mask.convert("RGB"), dtype=np.int32)
    palette = np.asarray(colors, dtype=np.int32)
    distance = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    nearest = torch.from_numpy(distance.argmin(-1))
    return F.one_hot(nearest, len(colors)).permute(2, 0, 1).float()


def region_masks(
    mask: Image.Image | None, colors: Sequence[Color], size: tuple[int, int]
) -> torch.Tensor:
    """:func:`label_masks` of ``mask``; without one (a style image without a mask, a
    photo without regions), all of the image for each region (one region if none)."""
    if mask is None:
        return torch.ones(max(1, len(colors)), size[1], size[0])
    return label_masks(mask, colors, size)


def region_grams(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region Grams (K, C, C) of one image's (1, C, h, w) features under its (K, H, W)
    masks, and each region's area in feature pixels (K,)."""
    h, w = features.shape[-2:]
    shrunk = F.interpolate(masks[None], size=(h, w), mode="area")[0]  # (K, h, w)
    area = shrunk.flatten(1).sum(1)
    masked = features * shrunk[:, None]  # (K, C, h, w)
    # gram() divides by C*h*w; a region's Gram is over its own area instead.
    scale = (h * w) / area.clamp_min(MIN_REGION)
    return gram(masked) * scale[:, None, None], area


@dataclass
class RegionStyle:
    """The masked style loss of one photo: its masks and, per layer, a target Gram and a
    weight per region."""

    masks: torch.Tensor
    """(K, H, W) one-hot masks of the photo at the optimised size."""
    targets: Mapping[str, torch.Tensor]
    """Per layer, (K, C, C) target Grams."""
    weights: Mapping[str, torch.Tensor]
    """Per layer, (K,) share of the photo each region covers (regions it lacks: 0)."""

    @classmethod
    def build(
        cls,
        content_features: Mapping[str, torch.Tensor],
        content_masks: torch.Tensor,
        styles: Sequence[tuple[Mapping[str, torch.Tensor], torch.Tensor, float]],
    ) -> RegionStyle:
        """From the photo's features and masks and, for each style, its features, masks and
        blend weight: each region's target is the blend of the styles' Grams of it, a style
        lacking the region contributing the photo's own Gram instead."""
        targets: dict[str, torch.Tensor] = {}
        weights: dict[str, torch.Tensor] = {}
        for layer, features in content_features.items():
            own, area = region_grams(features.float(), content_masks)
            blended = torch.zeros_like(own)
            for style_features, style_masks, blend in styles:
                theirs, style_area = region_grams(style_features[layer].float(), style_masks)
                present = (style_area >= MIN_REGION)[:, None, None]
                blended = blended + blend * torch.where(present, theirs, own)
            targets[layer] = blended
            weights[layer] = torch.where(area >= MIN_REGION, area, 0) / area.sum()
        return cls(content_masks, targets, weights)

    def loss(
        self, features: Mapping[str, torch.Tensor], layers: Mapping[str, float]
    ) -> torch.Tensor:
        """The weighted sum over ``layers`` of each region's mean squared Gram difference,
        shape (1,)."""
        total = torch.zeros(1, device=self.masks.device)
        for layer, layer_weight in layers.items():
            grams, _ = region_grams(features[layer].float(), self.masks)
            per_region = (grams - self.targets[layer]).pow(2).flatten(1).mean(1)
            total = total + layer_weight * (self.weights[layer] * per_region).sum()
        return total
