"""The style images and style masks a gatys config names, read and checked.

Without PyTorch: the plugin's ``check`` (``stylebox config check``) and its start read
them alike, so a config that check passes is one the daemon starts on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageStat

from stylebox.errors import BadInput, ConfigError
from stylebox.images import decode_image
from stylebox.plugins.gatys.labels import check_shape, distinct_colors, load_mask
from stylebox.plugins.gatys.params import Color, GatysParams

log = logging.getLogger("stylebox.gatys")


@dataclass(frozen=True)
class StyleImage:
    image: Image.Image
    """Decoded as inputs are (8-bit sRGB, orientation applied)."""
    sha256: str
    """Of the file's bytes."""


@dataclass(frozen=True)
class StyleFiles:
    styles: list[StyleImage]
    masks: list[Image.Image | None]
    """Each style image's label image at that image's size (nearest), or ``None``."""
    colors: set[Color]
    """The style masks' colours (empty with ``mask_colors``, which name the regions)."""
    resized: list[str]
    """The style masks resized to their image, each as ``"name: WxH to WxH (nearest)"``."""


def read_style_files(params: GatysParams) -> StyleFiles:
    """Every style image and style mask of ``params``; a :class:`ConfigError` naming the
    file and what is wrong with it."""
    styles = []
    crops: list[tuple[tuple[int, int], tuple[int, int, int, int] | None]] = []
    for path in params.style:
        try:
            decoded = decode_image(path)
        except BadInput as exc:
            raise ConfigError(f"gatys style image {path}: {exc}") from exc
        painting, box = _painted_part(decoded.rgb, decoded.alpha, path)
        styles.append(StyleImage(painting, decoded.sha256))
        crops.append((decoded.rgb.size, box))
    masks: list[Image.Image | None] = []
    colors: set[Color] = set()
    resized: list[str] = []
    for (size, box), path in zip(crops, params.style_mask or [None] * len(styles), strict=True):
        if path is None:
            masks.append(None)
            continue
        where = f"gatys style_mask {path}"
        try:
            mask = load_mask(path, where)
            if params.mask_colors is None:
                colors.update(distinct_colors(mask, where))
        except BadInput as exc:
            raise ConfigError(str(exc)) from exc
        check_shape(mask, size, where, "its style image", ConfigError)
        if mask.size != size:  # the masks follow their image
            resized.append(
                f"{Path(path).name}: {mask.width}x{mask.height} to its style image's "
                f"{size[0]}x{size[1]} (nearest)"
            )
            mask = mask.resize(size, Image.Resampling.NEAREST)
        masks.append(mask.crop(box) if box else mask)
    return StyleFiles(styles, masks, colors, resized)


def _painted_part(
    rgb: Image.Image, alpha: Image.Image | None, path: object
) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """What a style image shows: an image with transparency (a cut-out painting) is cropped
    to its visible part, and what is still see-through there takes the mean colour of the
    rest; the colour a file keeps under its transparent pixels (often black) is not part of
    the painting, and would weigh in its statistics. With the crop box, or ``None``."""
    if alpha is None or alpha.getextrema()[0] == 255:
        return rgb, None
    seen = alpha.point(lambda a: 255 if a > 0 else 0)
    box = seen.getbbox()
    if box is None:
        raise ConfigError(f"gatys style image {path}: it is transparent all over")
    mean = tuple(round(v) for v in ImageStat.Stat(rgb, mask=seen).mean)
    painting = Image.composite(rgb, Image.new("RGB", rgb.size, mean), alpha).crop(box)
    log.info(
        "style image %s has transparent parts: its visible part (%dx%d) is the painting",
        path,
        painting.width,
        painting.height,
    )
    return painting, box
