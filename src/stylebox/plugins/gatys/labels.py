"""Label images (masks): read and checked, without PyTorch (``config check`` uses them).

A label image names regions by flat colours. What is refused, and why: more colours than
regions may be; a colour found only along edges, a few levels from a colour it touches (a
JPEG's ringing) or as the blend of two it touches (antialiasing, a smooth resize).
:mod:`stylebox.plugins.gatys.regions` turns checked masks into the style loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stylebox.errors import BadInput, ConfigError, StyleboxError
from stylebox.plugins.gatys.params import MAX_MASK_COLORS, Color, hex_color

#: An edge colour closer than this (RGB distance, 0..255) to a colour it touches, or to the
#: line between two, is an artefact of that edge.
TWIN_DISTANCE = 16.0
#: A band of thin colours this close (RGB distance) to the line between two regions is
#: their blend: looser than a twin, for a JPEG's chroma at an edge strays further.
BAND_DISTANCE = 32.0
#: A colour whose pixels touch another colour at least this often has no inside.
EDGE_SHARE = 0.8

_FIX = (
    "paint it with flat colours and no antialiasing and save it as PNG, or list its "
    "regions in mask_colors (each pixel then takes the nearest listed colour)"
)


def distinct_colors(mask: Image.Image, where: str, limit: int = MAX_MASK_COLORS) -> list[Color]:
    """The colours of a label image. One that is not a label image is refused, saying why
    and what to do: too many colours, or a colour that is an artefact of the edges (see
    :func:`_artefact`)."""
    packed = _packed(mask)
    found, index = np.unique(packed, return_inverse=True)
    if len(found) > limit:
        raise BadInput(
            f"{where} has {len(found)} colours, more than the {limit} regions a mask may have: "
            f"it looks antialiased, blurred or saved as JPEG; {_FIX}"
        )
    colors = [_unpack(int(v)) for v in found]
    problem = _artefact(index.reshape(packed.shape), colors)
    if problem:
        raise BadInput(f"{where} {problem}; {_FIX}")
    return colors


def _artefact(index: np.ndarray, colors: list[Color]) -> str | None:
    """Why a colour of a label image (``index``: each pixel's colour number) is not a
    region but an artefact of its edges, or ``None``. An artefact lies along edges (at
    least :data:`EDGE_SHARE` of its pixels touch another colour; a region has an inside)
    and is either a near-twin of a colour it touches (a JPEG's ringing) or part of a band
    of such colours between two regions that it blends (antialiasing, a smooth resize, a
    JPEG's overshoot). Class numbers as colours (0, 1, 2...) are regions with insides, and
    a thin region of its own touches one side only or is no blend: both are accepted."""
    count = len(colors)
    if count < 2:
        return None
    edge = np.zeros(index.shape, dtype=bool)
    touching = np.zeros((count, count), dtype=bool)
    for first, second in (
        (index[:, 1:], index[:, :-1]),
        (index[1:], index[:-1]),
    ):
        differ = first != second
        touching[first[differ], second[differ]] = True
        touching[second[differ], first[differ]] = True
        if first.shape[1] != index.shape[1]:  # across: columns 1.. and ..-1
            edge[:, 1:] |= differ
            edge[:, :-1] |= differ
        else:
            edge[1:] |= differ
            edge[:-1] |= differ
    pixels = np.bincount(index.ravel(), minlength=count)
    thin = np.bincount(index[edge], minlength=count) >= EDGE_SHARE * pixels
    palette = np.asarray(colors, dtype=np.float64)
    for k in np.argsort(pixels):  # the smallest first: artefacts are thin
        if not thin[k]:
            continue
        for a in np.flatnonzero(touching[k]):
            if pixels[a] > pixels[k] and np.linalg.norm(palette[k] - palette[a]) < TWIN_DISTANCE:
                return (
                    f"has colour {hex_color(colors[k])} only along edges, a few levels from "
                    f"{hex_color(colors[a])}: it looks saved as JPEG or resized smoothly"
                )
        regions = [a for a in range(count) if not thin[a]]
        for a in regions:
            for b in regions:
                if b > a and _band(k, a, b, palette, thin, touching):
                    return (
                        f"has colour {hex_color(colors[k])} only along the edges between "
                        f"{hex_color(colors[a])} and {hex_color(colors[b])}, as their blend: "
                        "it looks antialiased, resized smoothly or saved as JPEG"
                    )
    return None


def _band(
    k: int, a: int, b: int, palette: np.ndarray, thin: np.ndarray, touching: np.ndarray
) -> bool:
    """Whether thin colour ``k`` is part of a band of thin colours on the line from ``a`` to
    ``b`` (their blends, and a JPEG's overshoot a little past either end) that touches
    both: what antialiasing or ringing leaves between two regions. A thin region of its
    own (a road between two fields) touches one side, or is off the line."""

    def on_line(c: int) -> bool:
        span = palette[b] - palette[a]
        t = float(np.dot(palette[c] - palette[a], span) / np.dot(span, span))
        off = float(np.linalg.norm(palette[a] + t * span - palette[c]))
        return -0.5 < t < 1.5 and off < BAND_DISTANCE

    if not on_line(k):
        return False
    band, frontier = {k}, [k]
    while frontier:
        c = frontier.pop()
        for d in np.flatnonzero(touching[c]):
            if d not in band and thin[d] and d not in (a, b) and on_line(d):
                band.add(int(d))
                frontier.append(int(d))
    return any(touching[c, a] for c in band) and any(touching[c, b] for c in band)


def load_mask(path: Path, where: str, error: type[StyleboxError] = ConfigError) -> Image.Image:
    """The label image at ``path``, as RGB; ``where`` names it in errors. One that cannot
    be read raises ``error``: a :class:`ConfigError` for a mask the config names, a
    :class:`BadInput` for a photo's own (a fault would be retried, and the mask is as
    unreadable at every try)."""
    try:
        with Image.open(path) as opened:
            if opened.has_transparency_data and opened.convert("RGBA").getextrema()[3][0] < 255:
                # The colour under a transparent pixel is unseen, yet it is the pixel's region.
                raise error(
                    f"{where} has transparent pixels: a mask's regions are its colours, and "
                    "what lies under transparency cannot be seen; paint every pixel opaque, "
                    "one colour per region"
                )
            return opened.convert("RGB")
    except UnidentifiedImageError as exc:
        raise error(f"{where} cannot be read as an image: not a format Pillow reads") from exc
    except (OSError, ValueError) as exc:
        # ``strerror`` where there is one: the whole text repeats the path ``where`` names.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise error(f"{where} cannot be read as an image: {reason}") from exc


def check_shape(
    mask: Image.Image, size: tuple[int, int], where: str, of: str, error: type[StyleboxError]
) -> None:
    """Refuse a mask that is not the shape of its image (``size``; ``of`` names it):
    stretched to fit, its regions would fall on other parts of the image (a mask drawn
    before the photo was rotated or cropped). Another scale of the same shape is resized
    (nearest); a pixel of rounding either way, or 1 % of the shape, is let through."""
    (mask_w, mask_h), (w, h) = mask.size, size
    off = abs(mask_h * w - mask_w * h)  # 0 for the same shape
    if off > max(w + h, 0.01 * mask_w * h):
        raise error(
            f"{where} is {mask_w}x{mask_h} but {of} is {w}x{h}: stretched to fit, its "
            "regions would land on other parts; draw it on the image as shown (at any scale)"
        )


#: A colour that covers at least this share of a mask is one of its regions (the others
#: are the blends at their edges, which mask_colors exist to take in).
REGION_SHARE = 0.01
#: How far (RGB distance) a region's colour may be from the mask_colors entry it goes to.
LISTED_NEAR = 64.0


def check_listed(
    mask: Image.Image, listed: Sequence[Color], where: str, error: type[StyleboxError]
) -> None:
    """Refuse (``error``) a mask with a region whose colour no ``mask_colors`` entry is
    near: its pixels would join the nearest listed region, another one, without a word
    (``["#ff0000"]`` for a red and blue mask made sea and sky one region). A blend of two
    listed colours (an antialiased or blurred edge) is near the line between them, and
    taken in as mask_colors mean it to be."""
    packed = _packed(mask)
    values, counts = np.unique(packed, return_counts=True)
    main = values[counts >= REGION_SHARE * packed.size].astype(np.int64)
    pixels = np.stack([(main >> 16) & 255, (main >> 8) & 255, main & 255], axis=1)
    palette = np.asarray(listed, dtype=np.float64)
    distance = np.sqrt(((pixels[:, None, :] - palette[None]) ** 2).sum(-1))
    for a in range(len(palette)):  # the distance to each blend of two listed colours
        for b in range(a + 1, len(palette)):
            direction = palette[b] - palette[a]
            t = ((pixels - palette[a]) @ direction / (direction @ direction)).clip(0, 1)
            blend = np.sqrt(((pixels - palette[a] - t[:, None] * direction) ** 2).sum(-1))
            distance = np.concatenate([distance, blend[:, None]], axis=1)
    for row, value in enumerate(main):
        nearest = int(distance[row, : len(palette)].argmin())
        if distance[row].min() > LISTED_NEAR:
            share = counts[values == value][0] / packed.size
            raise error(
                f"{where} has a region of {hex_color(_unpack(int(value)))} ({share:.0%} of "
                f"it) that no mask_colors entry is near: it would join "
                f"{hex_color(listed[nearest])}'s region; add its colour to mask_colors"
            )


def regions_present(mask: Image.Image, colors: Sequence[Color]) -> set[Color]:
    """The ``colors`` some pixel of ``mask`` is nearest to (as the style loss assigns
    pixels to regions): the regions it has."""
    values = np.unique(_packed(mask)).astype(np.int64)
    pixels = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], axis=1)
    palette = np.asarray(colors, dtype=np.int64)
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)
    return {colors[i] for i in np.unique(nearest)}


def _packed(mask: Image.Image) -> np.ndarray:
    rgb = np.asarray(mask.convert("RGB"), dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(value: int) -> Color:
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
