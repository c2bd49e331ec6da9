"""Safe image decoding and atomic encoding, shared by every entry point.

Everything a plugin sees went through :func:`decode_image`: an 8-bit sRGB ``RGB`` image with
EXIF orientation applied, and any alpha channel kept aside so :func:`encode_image` can put
it back on the result. Every refusal is a :class:`~stylebox.errors.BadInput` whose message
is one human sentence.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from stylebox import logs
from stylebox.errors import BadInput, Truncated
from stylebox.iccprofiles import ADOBE_RGB

#: Formats accepted by default (JPEG includes multi-picture MPO files from phones).
#: Everything else is refused before a single pixel is decoded.
DEFAULT_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "AVIF", "TIFF", "BMP", "GIF"})
#: Default pixel limit (width x height); 6000x4000 camera photos pass with room to spare.
DEFAULT_MAX_PIXELS = 80_000_000
#: Where Pillow itself refuses to open an image (its warning is an error here): the
#: highest images.max_pixels can be.
PILLOW_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS

OutputFormat = Literal["png", "jpeg", "webp"]

Image.init()  # register every format plugin, so the allowlist can name MPO, TIFF...
# Pillow only *warns* between its limit and twice its limit; a bomb must never decode.
warnings.simplefilter("error", Image.DecompressionBombWarning)
# A truncated file must be refused, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_SRGB_BYTES: bytes = _SRGB.tobytes()
_ADOBE_RGB = ImageCms.ImageCmsProfile(io.BytesIO(ADOBE_RGB))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class DecodedImage:
    """An input, decoded and normalised to what plugins expect."""

    rgb: Image.Image
    """8-bit sRGB, mode ``RGB``, orientation applied."""
    alpha: Image.Image | None
    """The transparency mask (mode ``L``) kept aside, or ``None`` for opaque images."""
    format: str
    """The container format Pillow recognised (``JPEG``, ``PNG``...)."""
    mode: str
    """The colour mode the file was stored in, before conversion."""
    sha256: str
    """Hex digest of the file's bytes."""
    notes: tuple[str, ...] = field(default=())
    """Things worth recording that did not stop the decode (a broken ICC profile...)."""

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def decode_image(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> DecodedImage:
    """Read ``path`` and decode it fully, or raise :class:`BadInput` saying why not."""
    try:
        if not path.is_file():
            if not os.path.lexists(path):
                raise BadInput(f"{path.name} no longer exists (moved or deleted)")
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise BadInput(f"{path.name} is {kind}, not an image file")
        data = path.read_bytes()
    except FileNotFoundError as exc:  # gone between the check and the read
        raise BadInput(f"{path.name} no longer exists (moved or deleted)") from exc
    except OSError as exc:
        raise BadInput(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return decode_bytes(data, name=path.name, max_pixels=max_pixels, formats=formats)


#: Files up to this size that no accepted format opens are decoded as they are queued, for
#: the reason they will be refused; a bigger one waits for its turn (a decode reads it all).
SIGHT_BYTES = 8 * 1024 * 1024


def refused_on_sight(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> BadInput | None:
    """Why :func:`decode_image` will refuse ``path``, where no accepted format opens its
    header (empty, not an image, a format not accepted, a damaged header): known when it
    is queued, rather than when its turn comes, behind hours of other jobs. ``None`` for
    one whose header opens (only its full decode can tell), one cut short
    (:class:`Truncated`: in an inbox it gets time to grow), one over :data:`SIGHT_BYTES`,
    and anything but a regular file. Its warnings (a damaged EXIF block) are its job's
    read's to say, naming the job."""
    with logs.unwarned():
        return _refused_on_sight(path, max_pixels, formats)


def _refused_on_sight(path: Path, max_pixels: int, formats: frozenset[str]) -> BadInput | None:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return None  # a link, a folder, a FIFO (which would block the open): said in turn
        with Image.open(path, formats=sorted(formats)):
            return None  # its header is fine: the rest is the decode's to judge
    except UnidentifiedImageError:
        pass
    except Exception:  # a header Pillow refuses otherwise (a bomb, say): said in its turn
        return None
    if info.st_size > SIGHT_BYTES:
        return None
    try:
        decode_image(path, max_pixels=max_pixels, formats=formats)
    except Truncated:
        return None
    except BadInput as exc:
        return exc
    except Exception:
        return None
    return None


def decode_bytes(
    data: bytes,
    *,
    name: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = DEFAULT_FORMATS,
) -> DecodedImage:
    """Decode an image held in memory; see :func:`decode_image`."""
    if not data:
        raise BadInput(f"{name} is empty (0 bytes)")
    digest, size = hashlib.sha256(data).hexdigest(), len(data)
    notes: list[str] = []
    if data.startswith(_PNG_SIGNATURE) and "PNG" in formats:
        data = _png_checked(data, name, notes)
    stream = _Reads(data)
    image = _open(stream, name, formats, max_pixels, size)
    width, height = image.size
    if width < 1 or height < 1:
        raise BadInput(f"{name} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _too_many_pixels(name, f"{width}x{height} = {width * height / 1e6:.1f}", max_pixels)
    original_format = image.format or "unknown"
    original_mode = image.mode
    # A TIFF's tags are its first frame's, and gone once it is turned upright: read now.
    tiff_bits = image.tag_v2.get(_BITS_PER_SAMPLE) if original_format == "TIFF" else None
    try:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            unit = "pages" if image.format == "TIFF" else "frames"
            notes.append(f"the first of its {frames} {unit}")
        image.seek(0)  # animations and multi-page files: the first frame
        # A TIFF's orientation tag is readable only before its load; a PNG's eXIf chunk
        # after its pixels only after.
        orientation = image.getexif().get(_ORIENTATION, 1)
        image.load()
        orientation = image.getexif().get(_ORIENTATION, orientation)
        if orientation in range(2, 9):
            notes.append(f"turned upright as its EXIF orientation ({orientation}) says")
        image = ImageOps.exif_transpose(image) or image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInput(f"{name} refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # (Not a short read, here: a decoder reads in blocks, and the last block of a
        # whole file is short too. Run out of data, Pillow says "truncated".)
        if isinstance(exc, EOFError) or "truncated" in str(exc) or stream.declared_longer:
            raise _cut_short(name, original_format, size) from exc
        # Its decoder refused what it read: damage, which more bytes won't mend.
        raise BadInput(f"{name} is a damaged {original_format}: {exc}") from exc
    if original_format in ("JPEG", "MPO") and (damage := _jpeg_damage(data)):
        raise BadInput(f"{name} is a damaged JPEG: {damage}")
    if original_format == "PNG" and data[24:25] == b"\x10" and original_mode in ("RGB", "RGBA"):
        # IHDR's bit depth and colour type: 16 bits a channel, which Pillow reads as 8 (grey
        # alone it opens as I;16, scaled here and noted as such).
        kind = {4: "grey and alpha", 6: "RGBA"}.get(data[25], "RGB")
        notes.append(f"16-bit {kind} pixels read as 8 bits")
    if isinstance(tiff_bits, tuple) and 16 in tiff_bits and original_mode in ("RGB", "RGBA"):
        notes.append(f"16-bit {original_mode} pixels read as 8 bits")  # as Pillow reads them
    keyed = None
    if original_format == "PNG" and "transparency" in image.info and image.mode != "P":
        keyed = _colour_key(image, data[24], notes)
    rgb, alpha = _to_srgb(image, notes, keyed)
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        format=original_format,
        mode=original_mode,
        sha256=digest,
        notes=tuple(notes),
    )


def _too_many_pixels(name: str, size: str, max_pixels: int) -> BadInput:
    limit, which = max_pixels, "images.max_pixels"
    if Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS:
        limit, which = Image.MAX_IMAGE_PIXELS, "Pillow's MAX_IMAGE_PIXELS"
    return BadInput(
        f"{name} is {size} MP, over the limit of {limit / 1e6:.1f} MP ({which}); refusing "
        "a possible decompression bomb"
    )


def _open(
    stream: _Reads, name: str, formats: frozenset[str], max_pixels: int, size: int
) -> Image.Image:
    """Pillow's image of ``stream``'s data (``size`` bytes in the file), or a
    :class:`BadInput` saying what it is instead."""
    data = stream.getvalue()
    try:
        return Image.open(stream, formats=sorted(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard refuses before the size is ours to see; its message carries
        # the pixel count. images.max_pixels is capped at its limit.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found:
            raise _too_many_pixels(name, f"{int(found[1]) / 1e6:.1f}", max_pixels) from exc
        raise BadInput(f"{name} refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        damage = _damage(data, formats)
        if damage and damage[2]:
            raise _cut_short(name, damage[0], size) from exc
        raise BadInput(f"{name} has a corrupt image header: {exc}") from exc
    # Name the format if Pillow knows it at all, so the refusal says what to do.
    try:
        with Image.open(io.BytesIO(data)) as probe:
            found = probe.format
    except Exception:  # any failure here just means "not an image"
        found = None
    found = found or _unreadable_kind(data)
    if found:
        # As it is spoken: "an ICO", "an MPO" (a letter), "a HEIC/HEIF" (a word).
        spelt = len(found) <= 3 and found[0] in "FHLMNRSX"
        article = "an" if found[0] in "AEIOU" or spelt else "a"
        raise BadInput(
            f"{name} is {article} {found} image, which is not accepted "
            f"(accepted formats: {', '.join(sorted(formats))})"
        )
    damage = _damage(data, formats)
    if damage:
        fmt, reason, ran_out = damage
        if ran_out:
            raise _cut_short(name, fmt, size)
        if reason == "unknown pixel mode":  # a valid file whose pixels Pillow cannot hold
            raise BadInput(f"{name} is a {fmt} in a pixel format that cannot be read ({reason})")
        raise BadInput(f"{name} is a damaged {fmt}: {reason}")
    raise BadInput(f"{name} is not an image (no known image format recognised)")


#: The TIFF tag of the bits of each sample (16, 16, 16 for 48-bit RGB).
_BITS_PER_SAMPLE = 258
#: The EXIF tag of a photo's orientation (1: as stored; 2 to 8: mirrored and/or turned).
_ORIENTATION = 0x0112
#: EXIF's colour space tag (1: sRGB; 0xFFFF: uncalibrated) and DCF's interoperability
#: index ("R98": sRGB, "R03": Adobe RGB), which cameras in Adobe RGB mode write instead
#: of embedding a profile.
_COLOR_SPACE, _UNCALIBRATED, _INTEROP_INDEX = 0xA001, 0xFFFF, 0x0001


def _exif_says_adobe_rgb(image: Image.Image) -> bool:
    """Whether ``image``'s EXIF marks it Adobe RGB as a camera does (colour space
    uncalibrated, interoperability index R03)."""
    try:
        exif = image.getexif()
        if exif.get_ifd(ExifTags.IFD.Exif).get(_COLOR_SPACE) != _UNCALIBRATED:
            return False
        index = exif.get_ifd(ExifTags.IFD.Interop).get(_INTEROP_INDEX, "")
    except Exception:  # EXIF a camera or editor wrote badly: no colour space said
        return False
    return str(index).strip("\0 ") == "R03"


#: ISO media brands of HEIF pictures (a phone's HEIC photos), which Pillow cannot read.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


#: Picture formats a photo folder may hold that stylebox does not accept by default: such
#: a file is taken as an image, to fail saying what it is, not skipped as some other file.
#: (Pillow knows more formats than pictures: MPEG video, PDF, EPS, FITS... are skipped.)
_OTHER_PICTURE_FORMATS = frozenset({"PSD", "JPEG2000", "TGA", "ICO", "MPO"})
#: Extensions of phone and camera pictures Pillow does not read or register.
_OTHER_PICTURE_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".cr2", ".nef", ".arw", ".dng"})


def picture_suffix(suffix: str, formats: frozenset[str] = DEFAULT_FORMATS) -> bool:
    """Whether a name ending in ``suffix`` (``.jpg``, any case) is a picture's: of a format
    accepted (``formats``) or common (``.heic``, ``.psd``), not just one Pillow reads (PDF)."""
    Image.init()  # every format's extensions, not just those of the formats used so far
    suffix = suffix.lower()
    found = Image.registered_extensions().get(suffix)
    return found in formats | _OTHER_PICTURE_FORMATS or suffix in _OTHER_PICTURE_EXTENSIONS


def plainly_not_an_image(path: Path, formats: frozenset[str] = DEFAULT_FORMATS) -> bool:
    """Whether ``path`` is some other file kept beside pictures (``notes.txt``, an XMP
    sidecar, a PDF, a video): neither its extension nor its first bytes are a picture
    format, accepted (``formats``) or common. A damaged picture is not such a file; nor is
    one that cannot be read (its job says why)."""
    pictures = formats | _OTHER_PICTURE_FORMATS
    if picture_suffix(path.suffix, formats):
        return False
    try:
        with Image.open(path) as opened:  # reads the header only
            return opened.format not in pictures
    except UnidentifiedImageError:
        pass
    except Exception:  # some picture it cannot open, or unreadable: not ours to judge
        return False
    try:
        with path.open("rb") as file:
            return _unreadable_kind(file.read(16)) is None
    except OSError:
        return False


def _unreadable_kind(data: bytes) -> str | None:
    """The kind of a common picture format Pillow cannot read at all, by its signature."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIC/HEIF"
    return None


#: libjpeg's words for coded data that is damaged (its other warnings, such as stray bytes
#: before a marker, odd scan parameters or an unknown JFIF version, are about files that
#: decode whole, which some cameras write).
_JPEG_DAMAGE = (
    "bad Huffman code",
    "bad arithmetic code",
    "premature end of data segment",
    "instead of RST",
    "Unsupported marker type",
    "Premature end of JPEG file",
)


#: Fewer bytes than this before the end-of-image marker are padding, not damage.
_JPEG_STRAY_BYTES = 16


def _jpeg_damage(data: bytes) -> str | None:
    """What libjpeg-turbo finds damaged in JPEG data that Pillow decoded anyway, or ``None``.

    Pillow's decoder drops libjpeg's warnings, so a JPEG with a stretch of its coded data
    overwritten decodes to garbled blocks without a word. simplejpeg's strict decode raises
    them; at 1/8 scale it still reads every coded byte but spends little on the inverse
    DCT (under a millisecond at 768 x 512). Only warnings that mean damaged coded data
    refuse the file (:data:`_JPEG_DAMAGE`)."""
    import simplejpeg

    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        wanted = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "RGB")
        simplejpeg.decode_jpeg(data, wanted, strict=True, min_factor=8)
    except ValueError as exc:
        message = str(exc).strip()
        if any(words in message for words in _JPEG_DAMAGE):
            return message
        # Bytes left over before the end-of-image marker: a scan thrown out of step by
        # damage (hundreds of them); a camera's padding is a byte or two.
        left = re.search(r"(\d+) extraneous bytes before marker 0xd9", message)
        if left and int(left.group(1)) >= _JPEG_STRAY_BYTES:
            return message
        # A warning about a file that decodes whole: read on past it, as Pillow did.
        return None
    return None


def _damage(data: bytes, formats: frozenset[str]) -> tuple[str, str, bool] | None:
    """For data that starts like an accepted format but that Pillow cannot open: that
    format, its reader's own reason, and whether the reader ran out of data (the file ends
    inside its header: a copy still being written, say). ``Image.open`` tries every format
    and says only that it cannot identify the file, so the format whose signature the data
    bears is asked again, alone."""
    prefix = data[:16]
    for fmt in sorted(formats):
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None or accept is None:
            continue  # no signature to go by: it could claim anything
        claimed = accept(prefix)
        if not claimed or isinstance(claimed, str):
            continue
        stream = _Reads(data)
        try:
            with factory(stream, ""):
                continue  # it opens after all: not what went wrong
        except Exception as exc:  # the reader's reason, whatever it raises
            return fmt, str(exc) or type(exc).__name__, stream.ran_out
    return None


class _Reads(io.BytesIO):
    """An image's bytes that notice a header reader asking for more than is left: its
    file ends inside its header (cut short), rather than holding a header no reader makes
    sense of (damaged). A header is read in pieces of the sizes its fields have, so a short
    read means the end came first."""

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and len(chunk) < size:
            self._short = True
        return chunk

    @property
    def ran_out(self) -> bool:
        return getattr(self, "_short", False) or self.declared_longer

    @property
    def declared_longer(self) -> bool:
        """Whether the file says it is longer than it is: a WebP, read whole at once, by
        its RIFF header's length."""
        data = self.getbuffer()
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return int.from_bytes(data[4:8], "little") + 8 > len(data)
        return False


def _cut_short(name: str, fmt: str, size: int) -> Truncated:
    return Truncated(
        f"{name} is truncated: its {fmt} data ends before the image does ({size} bytes; a "
        "partial copy or download?)"
    )


#: The PNG chunks (their types in capitals) that a damaged copy of refuses the file: those
#: the picture is made of, and the ancillary ones that change how it looks (transparency,
#: colour, orientation).
_PNG_NEEDED_CHUNKS = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
    | {b"TRNS", b"ICCP", b"SRGB", b"GAMA", b"CHRM", b"CICP", b"SBIT", b"EXIF", b"MDCV", b"CLLI"}
)


def _png_checked(data: bytes, name: str, notes: list[str]) -> bytes:
    """PNG ``data`` with each chunk's CRC checked: a damaged chunk of the picture itself
    (IHDR, PLTE, IDAT, IEND), or of how it looks (tRNS, iCCP, gAMA, eXIf...), refuses
    it, naming the chunk; any other damaged one (text, a timestamp, the resolution) costs
    nothing of the picture and is left out, said in ``notes``, as libpng leaves it out.
    Pillow checks only the chunks before the pixel data, and refused a file with a damaged
    text chunk there as one it cannot identify (which every viewer shows); it checks none
    of the pixel data's own, where a flipped bit can still inflate. A chunk is known by its
    type in any case: the damaged bit may be the one that makes ``PLTE`` read ``pLTE``. The
    rest of a file cut short is kept as it is, for its truncation to be told. About 1 ms a
    megabyte."""
    view = memoryview(data)
    position = len(_PNG_SIGNATURE)
    kept: list[memoryview] = [view[:position]]
    dropped: list[str] = []
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 8 + length + 4
        kind = bytes(view[position + 4 : position + 8])
        if end > len(data) or not kind.isalpha():
            break  # cut short, or a damaged length: no chunk to name
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[position + 4 : end - 4]) == crc:
            kept.append(view[position:end])
        elif kind.upper() in _PNG_NEEDED_CHUNKS:
            raise BadInput(f"{name} is a damaged PNG: CRC error in chunk {kind.decode('ascii')}")
        else:
            dropped.append(kind.decode("ascii"))
        position = end
        if kind.upper() == b"IEND":
            break
    if not dropped:
        return data
    notes.append(f"its damaged {', '.join(dropped)} chunk(s) left out (CRC error), as libpng does")
    return b"".join([*kept, view[position:]])


def _colour_key(image: Image.Image, depth: int, notes: list[str]) -> Image.Image | None:
    """The alpha a PNG's colour key (tRNS on a grey or RGB image of ``depth`` bits a sample)
    makes: pixels of exactly that value are transparent. The key is in the file's units,
    which are not always the pixels' as Pillow reads them: grey of 1, 2 or 4 bits is
    scaled to 0-255; RGB of 16 bits is read as 8, which of its pixels match is unknown."""
    key = image.info.pop("transparency")
    if image.mode == "RGB" and depth == 16:
        notes.append("its 16-bit colour key ignored: its pixels are read as 8 bits")
        return None
    pixels = np.asarray(image)
    if image.mode == "1":
        match = pixels == bool(key)
    elif image.mode == "L" and depth < 8:
        match = pixels == key * 255 // (2**depth - 1)
    elif image.mode == "RGB":
        match = (pixels == np.asarray(key)).all(axis=-1)
    else:  # 8-bit grey, 16-bit grey (I;16, in the key's units)
        match = pixels == key
    return Image.fromarray(np.where(match, 0, 255).astype(np.uint8), mode="L")


def _to_srgb(
    image: Image.Image, notes: list[str], alpha: Image.Image | None = None
) -> tuple[Image.Image, Image.Image | None]:
    """Convert any Pillow mode to 8-bit sRGB RGB, splitting off alpha (or keeping the
    ``alpha`` a colour key made)."""
    icc = image.info.get("icc_profile")
    mode = image.mode

    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "1":
        image = image.convert("L")
    elif mode.startswith("I") or mode == "F":
        image, how = _high_depth_to_l(image)
        notes.append(f"{mode} pixels scaled to 8 bits{how}")
    elif mode in ("YCbCr", "HSV"):
        image = image.convert("RGB")
    elif mode == "LAB":  # CIE Lab is absolute: its profile, if any, says no more than that
        image, icc = _lab_to_rgb(image), None

    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        image = image.convert(image.mode[:-1])
    if alpha is not None and alpha.getextrema() == (255, 255):
        alpha = None  # fully opaque: nothing worth re-attaching
    if alpha is not None:
        image = _fill_hidden(image, alpha, notes)

    if not icc and image.mode == "RGB" and _exif_says_adobe_rgb(image):
        image = ImageCms.profileToProfile(
            image, _ADOBE_RGB, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
        notes.append("converted to sRGB from Adobe RGB (1998), as its EXIF says (no ICC profile)")
    if icc and image.mode in ("RGB", "L", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            image = ImageCms.profileToProfile(
                image, source, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
            )
            described = ImageCms.getProfileDescription(source).strip() or "unnamed"
            if "srgb" not in described.lower():  # sRGB to sRGB is no news
                notes.append(f"converted to sRGB from its ICC profile {described!r}")
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            notes.append(f"embedded ICC profile ignored: {exc}")
    if image.mode == "CMYK":  # no profile, or one that does not fit (said above)
        without = "with an ICC profile that cannot be used" if icc else "without an ICC profile"
        notes.append(f"CMYK {without}, converted to RGB as plain ink amounts")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, alpha


def _fill_hidden(image: Image.Image, alpha: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` with each fully transparent pixel given the colour of the nearest visible
    one. What lies under them is arbitrary (a palette's key colour, black): a plugin sees
    it, and its filters and statistics would carry it into the visible pixels beside (a
    green fringe around a hole); the alpha re-attached to the result hides them again."""
    hidden = np.asarray(alpha) == 0
    if not hidden.any() or hidden.all():
        return image
    from scipy import ndimage  # here: most inputs have no transparency, and it takes a while

    # For each pixel, the index of the nearest visible one.
    rows, cols = ndimage.distance_transform_edt(hidden, return_distances=False, return_indices=True)
    pixels = np.asarray(image)
    notes.append(f"{int(hidden.sum())} fully transparent pixels given their nearest visible colour")
    return Image.fromarray(pixels[rows, cols], mode=image.mode)


def _high_depth_to_l(image: Image.Image) -> tuple[Image.Image, str]:
    """16-bit, 32-bit and float greyscale to 8-bit, scaling rather than clipping; with how,
    where the file's values said nothing of their white (said in the input's notes)."""
    array = np.asarray(image, dtype=np.float64)
    how = ""
    if image.mode == "F":
        return _float_to_l(array)
    largest = float(array.max(initial=0.0))
    if largest > 65535:
        # 32-bit integers past any 16-bit range: no white level is known, so the largest
        # value is taken as white (a 16-bit white would leave most pixels blown out).
        scale = 255.0 / largest
        how = f", its largest value ({largest:.0f}) taken as white"
    elif image.mode.startswith("I;16") or largest > 255:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    pixels = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L"), how


#: Float grey whose largest value is at most this is read as 0..1 with highlights over 1
#: (HDR): read as 0..255 it would be black, its brightest pixel at 6 % grey.
FLOAT_HIGHLIGHTS_MAX = 16.0


def _float_to_l(array: np.ndarray) -> tuple[Image.Image, str]:
    """Float grey to 8-bit, by its range: 0..1 (white 1.0) where all but a few of its
    pixels (0.1 %) are at most 1, or its largest value is at most
    :data:`FLOAT_HIGHLIGHTS_MAX`, values over 1 clipped to white (said); 0..255 where all
    but as few are at most 255 (the others clipped); else scaled by its largest value. NaN
    and infinities read as black. (0..1 data with one pixel at 1.0001 was read as 0..255:
    black. A 0..255 star field, its median 0, is not 0..1.)"""
    how = ""
    finite = np.isfinite(array)
    if not finite.all():
        how += f", {int((~finite).sum())} values that are not numbers read as black"
        array = np.where(finite, array, 0.0)
    largest = float(array.max(initial=0.0))
    nearly_all = float(np.percentile(array, 99.9)) if array.size else 0.0
    if nearly_all <= 1.0 or largest <= FLOAT_HIGHLIGHTS_MAX:
        scale = 255.0
        if largest > 1.0:
            how += f", read as 0 to 1 with values over 1 (up to {largest:.6g}) clipped to white"
    elif nearly_all <= 255.5:
        scale = 1.0
        if largest > 255.5:
            how += f", read as 0 to 255 with values over 255 (up to {largest:.6g}) clipped"
    else:
        scale = 255.0 / largest
        how += f", its largest value ({largest:.4g}) taken as white"
    pixels = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L"), how


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), _SRGB, "LAB", "RGB")
    return ImageCms.applyTransform(image, transform) or image


#: A result counts as flat when all but this share of its pixels lie within
#: :data:`FLAT_LEVELS` grey levels of one colour in every channel (a float image cast to
#: bytes unscaled gives 0 and a few 1s; a NaN gives a few stray pixels).
FLAT_SHARE_OFF = 0.001
FLAT_LEVELS = 2


def flat_result(source: Image.Image, result: Image.Image) -> str | None:
    """What ``result`` is, where it is (nearly) one flat colour although ``source`` has
    detail (``"one flat colour (0, 0, 0)"``), else ``None``: taken for a broken result (a
    model whose output went NaN paints every pixel black). Nearly: in each channel, all but
    :data:`FLAT_SHARE_OFF` of its pixels within :data:`FLAT_LEVELS` levels of the colour.
    Both must have 256 pixels or more and ``source`` 64 grey levels between its darkest
    and lightest in a channel, and not be nearly flat itself (a star field, a blank scan
    with a speck, whose faithful result is as flat); a flat photo, or a result a few
    pixels in size, may well give one colour."""
    if source.width * source.height < 256 or result.width * result.height < 256:
        return None
    found = _one_colour(result)  # first: most results are pictures, and end it here
    if found is None:
        return None
    photo = source.convert("RGB")
    ranges = [high - low for low, high in photo.getextrema()]
    if max(ranges) < 64 or _one_colour(photo) is not None:
        return None
    colour, exact = found
    if exact:
        return f"one flat colour {colour}"
    return (
        f"nearly one flat colour, {colour} within {FLAT_LEVELS} levels at "
        f"{100 * (1 - FLAT_SHARE_OFF):g} % of its pixels"
    )


def _one_colour(image: Image.Image) -> tuple[tuple[int, ...], bool] | None:
    """The colour ``image`` nearly is (its median, channel by channel), and whether every
    pixel has it; ``None`` where it is no near-flat picture."""
    pixels = image.width * image.height
    histogram = np.asarray(image.histogram()).reshape(-1, 256)  # one row a band
    colour, exact = [], True
    for counts in histogram:
        median = int(np.searchsorted(np.cumsum(counts), pixels / 2))
        near = counts[max(0, median - FLAT_LEVELS) : median + FLAT_LEVELS + 1].sum()
        if near < pixels * (1 - FLAT_SHARE_OFF):
            return None
        colour.append(median)
        exact = exact and counts[median] == pixels
    return tuple(colour), exact


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size ``size`` shrinks to (never enlarges) so its longer side is at most
    ``max_side``, keeping the aspect; ``None`` keeps it."""
    width, height = size
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return size
    scale = max_side / longest
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def resize_to_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) so the longer side is at most ``max_side``, keeping the aspect."""
    size = fit_within(image.size, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def mode_image(mode: str) -> str:
    """``"an RGBA image"``, ``"a P image"``: a Pillow mode with its article, as the letter
    is said."""
    return f"{'an' if mode[:1] in tuple('AEFHILMNORSX') else 'a'} {mode} image"


#: The longest side each output format can hold: libjpeg's limit, and WebP's 14 bits.
MAX_SIDE: dict[OutputFormat, int] = {"png": 2**31 - 1, "jpeg": 65500, "webp": 16383}


def too_large_for(fmt: OutputFormat, size: tuple[int, int]) -> str | None:
    """Why a result of ``size`` cannot be written as ``fmt``; ``None`` if it can. Known
    before the plugin runs: the encoder found it only after the whole stylisation, and
    failed with "broken data stream" (JPEG), read as a disk fault and tried again."""
    if max(size) <= MAX_SIDE[fmt]:
        return None
    return (
        f"its result would be {size[0]}x{size[1]}, over the {MAX_SIDE[fmt]} pixels a side "
        f'that {fmt.upper()} can hold; set the output format to "png" for it (or a size '
        "param that shrinks it)"
    )


def on_white(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """RGB ``image`` laid on white where ``alpha`` (resized to fit) is transparent: for a
    format without partial transparency (a JPEG, a GIF frame)."""
    white = Image.new("RGB", image.size, "white")
    return Image.composite(image, white, _fitted(alpha, image.size))


def _fitted(alpha: Image.Image, size: tuple[int, int]) -> Image.Image:
    return alpha if alpha.size == size else alpha.resize(size, Image.Resampling.LANCZOS)


def encode_image(
    image: Image.Image, fmt: OutputFormat = "png", alpha: Image.Image | None = None
) -> bytes:
    """Encode a result, re-attaching ``alpha`` (resized to fit) where the format can hold
    it; a JPEG, which cannot, gets the result laid on white where the photo was transparent
    (what lay there unseen, the fill under the transparency, is no part of the picture)."""
    image = image.convert("RGB")
    if alpha is not None:
        if fmt == "jpeg":
            image = on_white(image, alpha)
        else:
            image = image.copy()
            image.putalpha(_fitted(alpha, image.size))
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", icc_profile=_SRGB_BYTES, compress_level=6)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", icc_profile=_SRGB_BYTES, quality=92, subsampling=0)
    else:
        image.save(buffer, "WEBP", icc_profile=_SRGB_BYTES, quality=92, method=4)
    return buffer.getvalue()


@contextlib.contextmanager
def atomic_writer(path: Path, sync_folder: bool = True) -> Iterator[BinaryIO]:
    """Write ``path`` all at once or not at all.

    The data goes to a hidden temp file in the same folder (so the rename cannot cross file
    systems and watchers ignore it), is flushed and fsynced, then renamed over ``path``; the
    folder is fsynced so the rename itself survives a power cut (``sync_folder=False`` leaves
    that to a later write into the same folder).
    """
    fd, temp = _hidden_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, sync_folder: bool = True) -> None:
    """Atomically replace ``path`` with ``data``; see :func:`atomic_writer`."""
    with atomic_writer(path, sync_folder) as handle:
        handle.write(data)


def write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new hidden temp file beside ``path``, fsynced, named as
    :func:`atomic_writer` names its own; the caller renames it over ``path`` (with other
    files, for a set that appears together) or removes it. Nothing is left if this fails."""
    fd, temp = _hidden_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _hidden_temp(path: Path) -> tuple[int, Path]:
    """An open descriptor and the name of a new ``.<name>.XXXXXXXX.tmp`` beside ``path``."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        Path(temp_name).unlink(missing_ok=True)
        raise
    return fd, Path(temp_name)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
