"""The style images, style masks and start image a gatys config names, read and checked.

Without PyTorch: the plugin's ``check`` (``stylebox config check``) and its start read
them alike, so a config that check passes is one the daemon starts on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageStat

from stylebox import logs
from stylebox.errors import BadInput, ConfigError, StyleboxError
from stylebox.images import decode_image
from stylebox.plugins.gatys.labels import (
    check_listed,
    check_shape,
    distinct_colors,
    load_mask,
    regions_present,
)
from stylebox.plugins.gatys.params import (
    MAX_MASK_COLORS,
    Color,
    GatysParams,
    hex_color,
    parse_color,
)

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
    styled: set[Color] | None
    """The regions the style masks have; ``None`` where every region is styled (no
    masks, or a style without one, which lends itself to every region)."""
    init: Image.Image | None = None
    """The image ``init`` names, when it names a file (decoded as inputs are)."""

    def region_colors(self, params: GatysParams, mask: Image.Image, where: str) -> list[Color]:
        """The regions' colours for a photo's ``mask``: ``mask_colors``, or those of the
        mask and the style masks, which must be label images (:class:`BadInput` if not)."""
        if params.mask_colors is not None:
            listed = [parse_color(text) for text in params.mask_colors]
            check_listed(mask, listed, where, BadInput)
            return listed
        # Checked as drawn: a resize could thin a region into what looks like an edge.
        colors = sorted(self.colors.union(distinct_colors(mask, where)))
        if len(colors) > MAX_MASK_COLORS:
            raise BadInput(
                f"{where} and the style masks have {len(colors)} colours together, more "
                f"than {MAX_MASK_COLORS}: use one colour per region in all of them, or "
                "list the regions in mask_colors"
            )
        return colors

    def unstyled(
        self, mask: Image.Image, colors: list[Color], where: str, error: type[StyleboxError]
    ) -> list[Color]:
        """The regions of a photo's ``mask`` that the style masks lack (they keep the
        photo's look). Where that is all of them, ``error``: the photo would come out as it
        went in, and be taken for done."""
        if self.styled is None:
            return []
        own = regions_present(mask, colors)
        unstyled = sorted(own - self.styled)
        if unstyled and len(unstyled) == len(own):
            raise error(
                f"{where} has no region the style masks have (its colours "
                f"{', '.join(map(hex_color, unstyled))}; theirs "
                f"{', '.join(map(hex_color, sorted(self.styled)))}): the photo would "
                "come out unstyled; paint each region in the colour the style mask gives it"
            )
        return unstyled


def read_style_files(params: GatysParams) -> StyleFiles:
    """Every style image and style mask of ``params``; a :class:`ConfigError` naming the
    file and what is wrong with it."""
    styles = []
    crops: list[tuple[tuple[int, int], tuple[int, int, int, int] | None]] = []
    for path in params.style:
        try:
            with logs.about(file=str(path)):  # a warning on it names it
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
            else:
                check_listed(mask, [parse_color(t) for t in params.mask_colors], where, BadInput)
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
    files = StyleFiles(
        styles, masks, colors, resized, _styled(params, masks, colors), _init_image(params)
    )
    _check_content_mask(params, files)
    return files


def _init_image(params: GatysParams) -> Image.Image | None:
    """The start image ``init`` names, read once at start: a file that is not an image is
    the config's fault, not each photo's."""
    if not isinstance(params.init, Path):
        return None
    try:
        return decode_image(params.init).rgb
    except BadInput as exc:
        raise ConfigError(f"gatys init {params.init}: {exc}") from exc


def _styled(
    params: GatysParams, masks: list[Image.Image | None], colors: set[Color]
) -> set[Color] | None:
    """See :attr:`StyleFiles.styled`."""
    if params.style_mask is None or any(mask is None for mask in masks):
        return None
    if params.mask_colors is None:  # each style pixel is its own colour's region
        return set(colors)
    listed = [parse_color(text) for text in params.mask_colors]
    return set().union(*(regions_present(mask, listed) for mask in masks if mask is not None))


def _check_content_mask(params: GatysParams, files: StyleFiles) -> None:
    """``content_mask``, the mask of every photo without its own, checked at start: what
    is wrong with it is wrong for them all."""
    path = params.content_mask
    if path is None or params.style_mask is None:
        return
    where = f"gatys content_mask {path}"
    mask = load_mask(path, where)
    try:
        colors = files.region_colors(params, mask, where)
    except BadInput as exc:
        raise ConfigError(str(exc)) from exc
    files.unstyled(mask, colors, where, ConfigError)


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
