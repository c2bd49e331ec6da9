"""Label images (masks): read and checked, without PyTorch (``config check`` uses them).

A label image names regions by flat colours. What is refused, and why: more colours than
regions may be; two colours a few levels apart (a JPEG's noise about one colour); a colour
found only along the edge between two others, as their blend (antialiasing, a smooth
resize). :mod:`stylebox.plugins.gatys.regions` turns checked masks into the style loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stylebox.errors import BadInput, ConfigError
from stylebox.plugins.gatys.params import MAX_MASK_COLORS, Color, hex_color

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


def load_mask(path: Path, where: str) -> Image.Image:
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where} {path} cannot be read as an image: {exc}") from exc


def _packed(mask: Image.Image) -> np.ndarray:
    rgb = np.asarray(mask.convert("RGB"), dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(value: int) -> Color:
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
