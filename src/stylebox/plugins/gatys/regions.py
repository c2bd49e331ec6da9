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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylebox.errors import BadInput, ConfigError
from stylebox.perceptual import gram
from stylebox.plugins.gatys.params import MAX_MASK_COLORS, Color, hex_color

#: A region smaller than this many feature pixels at a layer is absent there.
MIN_REGION = 0.5


#: Two mask colours closer than this (RGB distance, 0..255) are one colour saved lossily.
TWIN_DISTANCE = 16.0
#: A colour whose pixels lie on region edges at least this often, blended from two other
#: colours, is antialiasing, not a region (a region has an inside).
EDGE_SHARE = 0.8

_FIX = (
    "paint it with flat colours and no antialiasing and save it as PNG, or list its "
    "regions in mask_colors (each pixel then takes the nearest listed colour)"
)


def distinct_colors(mask: Image.Image, where: str, limit: int = MAX_MASK_COLORS) -> list[Color]:
    """The colours of a label image. One that is not a label image is refused, saying why
    and what to do: too many colours; two colours a few levels apart (a JPEG's noise about
    one colour); a colour found only along the edge between two others, as their blend
    (antialiasing, or a smooth resize)."""
    packed = _packed(mask)
    found, index = np.unique(packed, return_inverse=True)
    if len(found) > limit:
        raise BadInput(
            f"{where} has {len(found)} colours, more than the {limit} regions a mask may have: "
            f"it looks antialiased, blurred or saved as JPEG; {_FIX}"
        )
    colors = [_unpack(int(v)) for v in found]
    problem = _twins(colors) or _edge_blends(index.reshape(packed.shape), colors)
    if problem:
        raise BadInput(f"{where} {problem}; {_FIX}")
    return colors


def _twins(colors: list[Color]) -> str | None:
    palette = np.asarray(colors, dtype=np.float64)
    for i in range(len(colors)):
        for j in range(i + 1, len(colors)):
            if np.linalg.norm(palette[i] - palette[j]) < TWIN_DISTANCE:
                return (
                    f"has colours {hex_color(colors[i])} and {hex_color(colors[j])}, only a few "
                    "levels apart: it looks saved as JPEG or resized smoothly"
                )
    return None


def _edge_blends(index: np.ndarray, colors: list[Color]) -> str | None:
    count = len(colors)
    if count < 3:
        return None
    # Pixels with a 4-neighbour of another colour.
    edge = np.zeros(index.shape, dtype=bool)
    across = index[:, 1:] != index[:, :-1]
    down = index[1:] != index[:-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    pixels = np.bincount(index.ravel(), minlength=count)
    on_edges = np.bincount(index[edge], minlength=count)
    palette = np.asarray(colors, dtype=np.float64)
    for k in np.argsort(pixels):  # the smallest first: blends are thin
        if on_edges[k] < EDGE_SHARE * pixels[k]:
            continue
        for a in range(count):
            for b in range(a + 1, count):
                if k in (a, b) or min(pixels[a], pixels[b]) <= pixels[k]:
                    continue
                span = palette[b] - palette[a]
                t = float(np.dot(palette[k] - palette[a], span) / np.dot(span, span))
                off = np.linalg.norm(palette[a] + t * span - palette[k])
                if 0.02 < t < 0.98 and off < TWIN_DISTANCE:
                    return (
                        f"has colour {hex_color(colors[k])} only along the edges between "
                        f"{hex_color(colors[a])} and {hex_color(colors[b])}, as their blend: "
                        "it looks antialiased or resized smoothly"
                    )
    return None


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


def load_mask(path: Path, where: str) -> Image.Image:
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where} {path} cannot be read as an image: {exc}") from exc


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


def _packed(mask: Image.Image) -> np.ndarray:
    rgb = np.asarray(mask.convert("RGB"), dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(value: int) -> Color:
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
