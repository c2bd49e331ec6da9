"""The style images and style masks a gatys config names, read and checked.

Without PyTorch: the plugin's ``check`` (``stylebox config check``) and its start read
them alike, so a config that check passes is one the daemon starts on.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from stylebox.errors import BadInput, ConfigError
from stylebox.images import decode_image
from stylebox.plugins.gatys.labels import distinct_colors, load_mask
from stylebox.plugins.gatys.params import Color, GatysParams


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


def read_style_files(params: GatysParams) -> StyleFiles:
    """Every style image and style mask of ``params``; a :class:`ConfigError` naming the
    file and what is wrong with it."""
    styles = []
    for path in params.style:
        try:
            decoded = decode_image(path)
        except BadInput as exc:
            raise ConfigError(f"gatys style image {path}: {exc}") from exc
        styles.append(StyleImage(decoded.rgb, decoded.sha256))
    masks: list[Image.Image | None] = []
    colors: set[Color] = set()
    for style, path in zip(styles, params.style_mask or [None] * len(styles), strict=True):
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
        if mask.size != style.image.size:  # the masks follow their image
            mask = mask.resize(style.image.size, Image.Resampling.NEAREST)
        masks.append(mask)
    return StyleFiles(styles, masks, colors)
