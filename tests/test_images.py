from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import encoded, make_bad_inputs, photo, pixels, png_claiming_size, rgb_icc_profile
from PIL import Image, ImageCms

from stylebox.errors import BadInput, Truncated
from stylebox.images import (
    atomic_write_bytes,
    decode_bytes,
    decode_image,
    encode_image,
    resize_to_max_side,
)

BAD = make_bad_inputs  # the table is shared with the command-line tests


@pytest.mark.parametrize(
    "kind", ["empty", "text", "truncated-png", "truncated-jpeg", "bomb", "format", "directory"]
)
def test_every_bad_input_is_refused_with_a_reason(tmp_path: Path, kind: str) -> None:
    path, reason = BAD(tmp_path)[kind]
    with pytest.raises(BadInput) as refused:
        decode_image(path)
    message = str(refused.value)
    assert reason in message
    assert "\n" not in message
    assert path.name in message


def test_pixel_limit_is_configurable() -> None:
    data = encoded(photo(40, 40))
    with pytest.raises(BadInput, match=r"images\.max_pixels"):
        decode_bytes(data, max_pixels=1000)
    assert decode_bytes(data, max_pixels=1600).size == (40, 40)


def test_pillow_bomb_warning_is_an_error_even_below_our_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadInput, match=r"over the limit of 0\.0 MP \(Pillow's MAX_IMAGE"):
        decode_bytes(encoded(photo(40, 30)), max_pixels=10**9)


def test_a_header_past_pillows_own_guard_names_the_configured_limit() -> None:
    """Pillow refuses a 100000 x 100000 header as it opens it, in its own words; the
    refusal says the image's size and the limit the config sets."""
    with pytest.raises(BadInput) as refused:
        decode_bytes(png_claiming_size(100_000, 100_000), name="huge.png")
    assert str(refused.value) == (
        "huge.png is 10000.0 MP, over the limit of 80.0 MP (images.max_pixels); refusing a "
        "possible decompression bomb"
    )


def test_a_jpeg_with_damaged_coded_data_is_refused_though_pillow_decodes_it(
    tmp_path: Path,
) -> None:
    """2000 bytes of a JPEG's coded data overwritten: Pillow decodes garbled blocks without
    a word; libjpeg's warning refuses it. Junk before the end marker, which some cameras
    write, is no damage."""
    import random

    with Image.open(Path(__file__).parent / "data" / "kodim06-256.png") as kodak:
        data = encoded(kodak.convert("RGB"), "JPEG", quality=90)
    for seed in range(20):  # most overwrites Pillow decodes without a word; some it refuses
        damaged = bytearray(data)
        damaged[len(data) // 3 : len(data) // 3 + 2000] = random.Random(seed).randbytes(2000)
        try:
            Image.open(io.BytesIO(damaged)).load()
        except OSError:
            continue
        break
    else:
        pytest.fail("Pillow refused every damaged copy: nothing silent to test with")
    path = tmp_path / "photo.jpg"
    path.write_bytes(bytes(damaged))
    with pytest.raises(BadInput, match=r"^photo\.jpg is a damaged JPEG: Corrupt JPEG data: "):
        decode_image(path)
    path.write_bytes(data[:-2] + b"\x00\x12\x34" + data[-2:])
    assert decode_image(path).size == (256, 171)


def test_a_jpeg_scan_thrown_out_of_step_is_refused_by_the_bytes_it_leaves_over(
    tmp_path: Path,
) -> None:
    # 20 bytes zeroed mid-file: libjpeg only warns of bytes left before the end marker,
    # which was taken for a camera's padding, and the garbled result ended done.
    with Image.open(Path(__file__).parent / "data" / "kodim06-256.png") as kodak:
        data = encoded(kodak.convert("RGB"), "JPEG", quality=90)
    reasons = []
    for start in range(len(data) // 3, len(data) * 2 // 3, 97):
        damaged = bytearray(data)
        damaged[start : start + 20] = bytes(20)
        path = tmp_path / "photo.jpg"
        path.write_bytes(bytes(damaged))
        try:
            decode_image(path)
        except BadInput as exc:
            reasons.append(str(exc))
    assert any(re.search(r"\d+ extraneous bytes before marker 0xd9$", r) for r in reasons)
    assert all(r.startswith("photo.jpg is a damaged JPEG: Corrupt JPEG data: ") for r in reasons)


def _float_rgb_tiff(width: int, height: int) -> bytes:
    """A valid uncompressed TIFF of 32-bit float RGB pixels (SampleFormat 3), which
    Pillow opens but cannot hold."""
    return _rgb_tiff(np.full((height, width, 3), 0.5, "<f4"), sample_format=3)


def _rgb_tiff(pixels: np.ndarray, sample_format: int = 1) -> bytes:
    """A valid uncompressed little-endian TIFF of RGB ``pixels`` (their dtype's bits a
    sample; SampleFormat 1 unsigned, 3 float), which Pillow does not write itself."""
    height, width = pixels.shape[:2]
    data = pixels.tobytes()
    tags = [  # (tag, type, count, value or offset): SHORT 3, LONG 4
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, 0), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, height),
        (279, 4, 1, len(data)), (284, 3, 1, 1), (339, 3, 3, 0),
    ]  # fmt: skip
    extra_at = 8 + 2 + 12 * len(tags) + 4
    bits = struct.pack("<3H", *[pixels.dtype.itemsize * 8] * 3)
    formats = struct.pack("<3H", *[sample_format] * 3)
    data_at = extra_at + len(bits) + len(formats)
    offsets = {258: extra_at, 273: data_at, 339: extra_at + len(bits)}
    entries = b""
    for tag, kind, count, value in tags:
        value = offsets.get(tag, value)
        packed = (
            struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        )
        entries += struct.pack("<HHI", tag, kind, count) + packed
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bits + formats + data


def test_refusals_name_what_the_file_is_rather_than_call_it_damaged() -> None:
    with pytest.raises(BadInput, match=r"^image is a TIFF in a pixel format that cannot be read"):
        decode_bytes(_float_rgb_tiff(4, 2))
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)
    with pytest.raises(BadInput, match=r"^image is a HEIC/HEIF image, which is not accepted"):
        decode_bytes(heic)
    ico = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ico, "ICO")
    with pytest.raises(BadInput, match=r"^image is an ICO image, which is not accepted"):
        decode_bytes(ico.getvalue())


def test_format_allowlist_can_be_narrowed() -> None:
    with pytest.raises(BadInput, match="is a PNG image, which is not accepted"):
        decode_bytes(encoded(photo(8, 8)), formats=frozenset({"JPEG"}))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    image = photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_bytes(encoded(image, fmt, exif=exif.tobytes()))
    assert decoded.size == (20, 40)
    # What was done to the input is said in the manifest's input.notes.
    assert decoded.notes == ("turned upright as its EXIF orientation (6) says",)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("L", "PNG"),
        ("1", "PNG"),
        ("P", "GIF"),
        ("P", "PNG"),
        ("YCbCr", "JPEG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
    ],
)
def test_colour_modes_become_8bit_rgb(mode: str, fmt: str) -> None:
    source = photo(24, 16).convert(mode)
    decoded = decode_bytes(encoded(source, fmt))
    assert decoded.rgb.mode == "RGB"
    assert decoded.size == (24, 16)
    assert decoded.alpha is None
    cmyk = "CMYK without an ICC profile, converted to RGB as plain ink amounts"
    assert decoded.notes == ((cmyk,) if mode == "CMYK" else ())


def test_16bit_colour_is_said_to_be_read_as_8_bits() -> None:
    # Recorded as plain RGB before, as if nothing had been dropped.
    # Pillow writes no 16-bit colour PNG: one by hand (IHDR: 6 x 4, depth 16, RGB).
    rows = b"".join(b"\0" + np.full((6, 3), 40000, dtype=">u2").tobytes() for _ in range(4))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rgb16 = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 4, 16, 2, 0, 0, 0))
    rgb16 += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    decoded = decode_bytes(rgb16)
    assert decoded.mode == "RGB"
    assert decoded.notes == ("16-bit RGB pixels read as 8 bits",)
    assert abs(int(np.asarray(decoded.rgb)[0, 0, 0]) - 40000 * 255 // 65535) <= 1
    # (Pillow writes no 16-bit grey and alpha either: the same by hand, colour type 4.)
    rows = b"".join(b"\0" + np.full((6, 2), 40000, dtype=">u2").tobytes() for _ in range(4))
    la16 = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6, 4, 16, 4, 0, 0, 0))
    la16 += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    assert decode_bytes(la16).notes == ("16-bit grey and alpha pixels read as 8 bits",)
    # A 48-bit TIFF too (said of the PNG alone).
    decoded = decode_bytes(_rgb_tiff(np.full((4, 6, 3), 40000, "<u2")))
    assert (decoded.format, decoded.mode) == ("TIFF", "RGB")
    assert decoded.notes == ("16-bit RGB pixels read as 8 bits",)
    assert abs(int(np.asarray(decoded.rgb)[0, 0, 0]) - 40000 * 255 // 65535) <= 1


def test_16bit_grey_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 32 * 8).reshape(8, 32)).astype(np.uint16)
    grey16 = Image.fromarray(ramp)
    assert grey16.mode == "I;16"
    decoded = decode_bytes(encoded(grey16))
    values = np.asarray(decoded.rgb)[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 100  # a real ramp, not a clipped step
    assert decoded.notes == ("I;16 pixels scaled to 8 bits",)


def test_alpha_is_kept_aside_and_reattached() -> None:
    rgba = photo(32, 24).convert("RGBA")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 6, 24, 18))
    rgba.putalpha(mask)
    for source in (rgba, rgba.convert("LA")):
        decoded = decode_bytes(encoded(source, "PNG"))
        assert decoded.rgb.mode == "RGB"
        assert decoded.alpha is not None
        assert np.array_equal(np.asarray(decoded.alpha), np.asarray(mask))
    result = encode_image(decoded.rgb.resize((64, 48)), "png", decoded.alpha)
    reopened = Image.open(io.BytesIO(result))
    assert reopened.mode == "RGBA" and reopened.size == (64, 48)
    assert reopened.getchannel("A").getpixel((0, 0)) == 0
    assert reopened.getchannel("A").getpixel((32, 24)) == 255


def test_palette_transparency_becomes_alpha() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))
    decoded = decode_bytes(encoded(image, "PNG", transparency=0))
    assert decoded.alpha is not None
    assert decoded.alpha.getpixel((9, 9)) == 0 and decoded.alpha.getpixel((0, 0)) == 255


def test_a_colour_key_becomes_alpha() -> None:
    # A PNG's tRNS colour key on an RGB or grey image was dropped: the keyed band came back
    # opaque, stylised green.
    picture = photo(40, 30, seed=2)
    picture.paste((0, 255, 0), (0, 0, 40, 10))
    grey = picture.convert("L")
    grey.paste(7, (0, 0, 40, 10))
    for image, key in ((picture, (0, 255, 0)), (grey, 7)):
        decoded = decode_bytes(encoded(image, "PNG", transparency=key))
        assert decoded.alpha is not None
        hidden = np.asarray(decoded.alpha) == 0
        assert hidden[:10].all() and not hidden[10:].any()
        assert "fully transparent" in " ".join(decoded.notes)


def _keyed_png(rows: list[bytes], width: int, depth: int, colour: int, key: bytes) -> bytes:
    """A PNG written by hand: Pillow writes neither 16-bit RGB nor 1-4-bit grey with a key."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, len(rows), depth, colour, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        chunk(kind, body)
        for kind, body in [(b"IHDR", header), (b"tRNS", key), (b"IDAT", pixels), (b"IEND", b"")]
    )


def test_a_colour_key_is_matched_in_the_file_s_own_units() -> None:
    # Grey of 1-4 bits is read scaled to 0-255 and 16-bit grey unscaled as I;16: their keys
    # were lost. A 16-bit RGB photo is read as 8 bits: its black key (0, 0, 0) hid every
    # pixel darker than 1/256, so it is not applied, and that is said.
    hidden = {}
    one_bit = _keyed_png([bytes([0b01010000])], 4, 1, 0, struct.pack(">H", 1))
    two_bit = _keyed_png([bytes([0b00011011])], 4, 2, 0, struct.pack(">H", 1))
    sixteen = np.array([[0x1234, 0x1299, 0, 0xFFFF]], dtype=">u2").tobytes()
    grey16 = _keyed_png([sixteen], 4, 16, 0, struct.pack(">H", 0x1234))
    for name, data in (("1-bit", one_bit), ("2-bit", two_bit), ("16-bit", grey16)):
        decoded = decode_bytes(data)
        assert decoded.alpha is not None, name
        hidden[name] = list(np.asarray(decoded.alpha)[0] == 0)
    assert hidden == {
        "1-bit": [False, True, False, True],
        "2-bit": [False, True, False, False],
        "16-bit": [True, False, False, False],
    }
    dark = np.array([[[0, 0, 0], [0x00FF, 0x00FF, 0x00FF], [0x8000, 0x4000, 0x2000]]], ">u2")
    decoded = decode_bytes(_keyed_png([dark.tobytes()], 3, 16, 2, bytes(6)))
    assert decoded.alpha is None
    assert "its 16-bit colour key ignored: its pixels are read as 8 bits" in decoded.notes


def test_32_bit_integers_past_16_bits_take_their_largest_value_as_white() -> None:
    # Scaled as 16-bit, values up to 255000 came out 87 % white.
    ramp = (np.linspace(0, 255000, 32 * 8).reshape(8, 32)).astype(np.int32)
    decoded = decode_bytes(encoded(Image.fromarray(ramp, "I"), "TIFF"))
    values = np.asarray(decoded.rgb)[..., 0]
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) > 100
    said = "I pixels scaled to 8 bits, its largest value (255000) taken as white"
    assert decoded.notes == (said,)


def test_what_lies_under_transparent_pixels_is_not_handed_to_the_plugin() -> None:
    # A palette's key colour (green here) was stylised with the rest, and its filters
    # carried it into the visible pixels around the hole: a green fringe.
    picture = photo(40, 30, seed=4)
    image = picture.quantize(255)
    image.putpalette([*image.getpalette()[: 255 * 3], 0, 255, 0])
    image.paste(255, (10, 8, 30, 22))  # a hole of the key colour
    decoded = decode_bytes(encoded(image, "PNG", transparency=255))
    assert decoded.alpha is not None and decoded.alpha.getpixel((20, 15)) == 0
    rgb = np.asarray(decoded.rgb)
    visible = np.asarray(image.convert("RGB"))
    assert not (rgb == [0, 255, 0]).all(-1).any()  # no key colour left
    assert np.array_equal(rgb[15, 10], visible[15, 9])  # the nearest visible colour
    assert np.array_equal(rgb[7], visible[7]) and np.array_equal(rgb[:, 9], visible[:, 9])
    assert decoded.notes == ("280 fully transparent pixels given their nearest visible colour",)


def test_fully_opaque_alpha_is_dropped() -> None:
    decoded = decode_bytes(encoded(photo(8, 8).convert("RGBA")))
    assert decoded.alpha is None


def test_icc_profile_is_converted_to_srgb() -> None:
    red = Image.new("RGB", (8, 8), (220, 10, 10))
    tagged = decode_bytes(encoded(red, "PNG", icc_profile=rgb_icc_profile(swap_red_blue=True)))
    untagged = decode_bytes(encoded(red, "PNG"))
    assert tagged.notes == ("converted to sRGB from its ICC profile 'test'",)
    assert untagged.rgb.getpixel((4, 4)) == (220, 10, 10)
    r, _, b = tagged.rgb.getpixel((4, 4))
    assert b > 150 and r < 100  # the profile says those numbers mean blue


def test_a_camera_jpeg_in_adobe_rgb_mode_is_read_as_adobe_rgb() -> None:
    # A camera set to Adobe RGB says so in its EXIF (colour space "uncalibrated",
    # interoperability index R03) and embeds no profile: read as sRGB, its colours came
    # out too saturated.
    from PIL import ExifTags

    from stylebox.iccprofiles import ADOBE_RGB

    with Image.open(Path(__file__).parent / "data" / "kodim06-256.png") as opened:
        kodak = opened.convert("RGB")

    def jpeg(colour_space: int | None, index: str | None, icc: bytes | None = None) -> bytes:
        exif = Image.Exif()
        if colour_space is not None:
            exif.get_ifd(ExifTags.IFD.Exif)[0xA001] = colour_space
        if index is not None:
            exif.get_ifd(ExifTags.IFD.Exif)[0xA005] = {0x0001: index}
        options = {"icc_profile": icc} if icc else {}
        return encoded(kodak, "JPEG", quality=95, exif=exif.tobytes(), **options)

    camera = decode_bytes(jpeg(0xFFFF, "R03"))
    assert camera.notes == (
        "converted to sRGB from Adobe RGB (1998), as its EXIF says (no ICC profile)",
    )
    embedded = decode_bytes(jpeg(None, None, ADOBE_RGB))  # the same, said by a profile
    assert np.abs(pixels(camera.rgb) - pixels(embedded.rgb)).max() <= 1
    as_srgb = decode_bytes(jpeg(1, "R98"))
    assert as_srgb.notes == ()
    assert np.abs(pixels(camera.rgb) - pixels(as_srgb.rgb)).mean() > 1  # it changes colours
    for colour_space, index in ((0xFFFF, None), (0xFFFF, "R98"), (1, "R03")):
        assert decode_bytes(jpeg(colour_space, index)).notes == ()  # nothing said: sRGB


def test_srgb_tagged_image_is_unchanged() -> None:
    image = photo(16, 16)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = decode_bytes(encoded(image, "PNG", icc_profile=srgb))
    difference = np.abs(np.asarray(tagged.rgb, int) - np.asarray(image, int))
    assert difference.max() <= 2


def test_a_lab_tiff_tagged_with_its_lab_profile_converts_without_a_note() -> None:
    # Its profile describes the Lab numbers, which the Lab conversion has already used: it
    # was then applied to the RGB result and "ignored" with a note, the colours right.
    red = Image.new("RGB", (8, 8), (200, 60, 30))
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(red, to_lab)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    decoded = decode_bytes(encoded(lab, "TIFF", icc_profile=profile))
    assert decoded.notes == ()
    assert np.abs(np.subtract(decoded.rgb.getpixel((4, 4)), (200, 60, 30))).max() <= 3


def test_broken_icc_profile_is_noted_not_fatal() -> None:
    decoded = decode_bytes(encoded(photo(16, 16), "PNG", icc_profile=b"garbage" * 20))
    assert decoded.rgb.mode == "RGB"
    assert any("ICC" in note for note in decoded.notes)


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_bytes(buffer.getvalue())
    assert decoded.rgb.getpixel((5, 5))[0] > 200  # red, the first frame
    assert decoded.notes == ("the first of its 3 frames",)
    pages = io.BytesIO()
    frames[0].save(pages, "TIFF", save_all=True, append_images=frames[1:])
    assert decode_bytes(pages.getvalue()).notes == ("the first of its 3 pages",)


def test_decoded_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "p.png"
    path.write_bytes(encoded(photo(8, 8)))
    assert decode_image(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resize_to_max_side_never_enlarges() -> None:
    assert resize_to_max_side(photo(60, 30), 30).size == (30, 15)
    assert resize_to_max_side(photo(20, 10), 100).size == (20, 10)


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_write_failure_leaves_the_old_file(tmp_path: Path) -> None:
    from stylebox.images import atomic_writer

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def _png_chunks(data: bytes) -> dict[bytes, int]:
    """Where each chunk's data starts in PNG ``data``, by chunk type (the first of a type)."""
    starts: dict[bytes, int] = {}
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        starts.setdefault(data[position + 4 : position + 8], position + 8)
        position += 12 + length
    return starts


def _with_damaged_chunk(chunk: bytes) -> bytes:
    """A PNG with a text chunk before its pixels, one byte of its ``chunk``'s data altered:
    the chunk's CRC no longer matches."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "a photo")
    data = bytearray(encoded(photo(16, 12), pnginfo=text))
    data[_png_chunks(bytes(data))[chunk] + 1] ^= 0x10
    return bytes(data)


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_a_png_with_a_wrong_chunk_crc_is_called_damaged_naming_the_chunk(
    tmp_path: Path, chunk: bytes
) -> None:
    """A chunk of the image itself damaged: Pillow says it cannot identify the file (a
    header chunk) or that its data stream broke (pixel data)."""
    path = tmp_path / "photo.png"
    path.write_bytes(_with_damaged_chunk(chunk))
    with pytest.raises(BadInput) as refused:
        decode_image(path)
    assert str(refused.value) == f"photo.png is a damaged PNG: CRC error in chunk {chunk.decode()}"


def test_a_png_whose_damage_changes_its_look_is_refused() -> None:
    # A damaged transparency chunk was left out as text is (the transparent pixels shown
    # opaque), and a flipped bit in PLTE's type (pLTE) made the palette "ancillary":
    # dropped, every blue pixel read as black.
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    data = bytearray(encoded(palette, transparency=0))
    chunks = _png_chunks(bytes(data))
    trns = bytearray(data)
    trns[chunks[b"tRNS"]] ^= 0x01
    with pytest.raises(BadInput, match=r"^image is a damaged PNG: CRC error in chunk tRNS$"):
        decode_bytes(bytes(trns))
    plte = bytearray(data)
    plte[chunks[b"PLTE"] - 4] ^= 0x20  # the type's first letter: PLTE -> pLTE
    with pytest.raises(BadInput, match=r"^image is a damaged PNG: CRC error in chunk pLTE$"):
        decode_bytes(bytes(plte))


def test_a_png_whose_text_chunk_is_damaged_is_read_without_it(tmp_path: Path) -> None:
    """A damaged text chunk before the pixels was refused ("damaged PNG: CRC error in chunk
    tEXt"), a file that every viewer shows: libpng drops such a chunk, and so do we."""
    path = tmp_path / "photo.png"
    path.write_bytes(_with_damaged_chunk(b"tEXt"))
    decoded = decode_image(path)
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(photo(16, 12)))
    assert decoded.notes == ("its damaged tEXt chunk(s) left out (CRC error), as libpng does",)
    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # of the file
    # Cut short as well: a partial copy, said so with the file's own size.
    cut = path.read_bytes()[:-30]
    path.write_bytes(cut)
    with pytest.raises(Truncated, match=rf"\({len(cut)} bytes; a partial copy or download\?\)"):
        decode_image(path)


def test_a_png_whose_damaged_pixel_data_still_decodes_is_refused(tmp_path: Path) -> None:
    """Damage to the compressed pixels can leave a stream that inflates without error into
    other pixels (a flipped byte in a full-size Kodak PNG does so about one time in
    twenty): Pillow decodes it, the IDAT chunk's CRC does not match. Made here for sure:
    one photo's chunk CRC over another photo's pixel stream."""
    first, second = encoded(photo(64, 48, seed=0)), encoded(photo(64, 48, seed=1))
    at_first, at_second = _png_chunks(first)[b"IDAT"], _png_chunks(second)[b"IDAT"]
    first_length = int.from_bytes(first[at_first - 8 : at_first - 4], "big")
    second_length = int.from_bytes(second[at_second - 8 : at_second - 4], "big")
    stream = second[at_second - 8 : at_second + second_length]  # length, type, data
    damaged = (
        first[: at_first - 8]
        + stream
        + first[at_first + first_length : at_first + first_length + 4]  # the old CRC
        + first[at_first + first_length + 4 :]
    )
    decoded = Image.open(io.BytesIO(damaged))
    decoded.load()  # Pillow sees nothing wrong
    assert np.array_equal(np.asarray(decoded), np.asarray(photo(64, 48, seed=1)))
    path = tmp_path / "photo.png"
    path.write_bytes(damaged)
    with pytest.raises(BadInput, match=r"^photo\.png is a damaged PNG: CRC error in chunk IDAT$"):
        decode_image(path)


def test_a_damaged_header_says_what_its_reader_found() -> None:
    """A PNG header that is whole but impossible (bit depth 3) is a damaged PNG."""
    good = encoded(photo(8, 8), "PNG")
    header = struct.pack(">IIBBBBB", 8, 8, 3, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(BadInput, match=r"^clip\.png is a damaged PNG: \S") as refused:
        decode_bytes(good[:8] + ihdr + good[8 + 25 :], name="clip.png")
    assert not isinstance(refused.value, Truncated)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow, on a cut TIFF
@pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning")
def test_a_file_cut_short_in_its_header_is_truncated_not_damaged(fmt: str) -> None:
    # A writer that pauses inside the header: refused as damaged, it was failed as it was
    # queued (moved to failed/ while its writer went on) instead of given time to grow.
    data = encoded(photo(64, 48), fmt)
    for size in (20, 40, 100):
        with pytest.raises(Truncated, match=r"^a\.img is truncated: its \w+ data ends before"):
            decode_bytes(data[:size], name="a.img")


def test_garbled_pixel_data_is_damaged_not_cut_short() -> None:
    # Its zlib stream is garbled, its checksums made right: no wait makes it whole.
    data = encoded(photo(64, 48), "PNG")
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    body = bytearray(data[start + 8 : start + 8 + length])
    body[10:40] = bytes(b ^ 0x5A for b in body[10:40])
    chunk = b"IDAT" + bytes(body)
    garbled = data[: start + 4] + chunk + struct.pack(">I", zlib.crc32(chunk))
    garbled += data[start + 12 + length :]
    with pytest.raises(BadInput, match=r"^a\.png is a damaged PNG: ") as refused:
        decode_bytes(garbled, name="a.png")
    assert not isinstance(refused.value, Truncated)
    # A whole GIF whose LZW data is garbled: its decoder's last block read is short, as
    # every whole file's is, which made it "cut short".
    gif = bytearray(encoded(photo(64, 48), "GIF"))
    gif[len(gif) // 2 : len(gif) // 2 + 100] = b"\xff" * 100
    with pytest.raises(BadInput, match=r"^a\.gif is a damaged GIF: ") as refused:
        decode_bytes(bytes(gif), name="a.gif")
    assert not isinstance(refused.value, Truncated)


def test_a_file_deleted_before_it_is_read_is_said_to_be_gone(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^photo\.png no longer exists \(moved or deleted\)$"):
        decode_image(tmp_path / "photo.png")


def test_phone_mpo_and_avif_photos_are_accepted() -> None:
    """The README lists MPO (phones' multi-picture JPEG: the first picture is the photo)
    and AVIF among the accepted formats."""
    first, second = photo(24, 16, seed=1), photo(24, 16, seed=2)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)
    mpo = decode_bytes(buffer.getvalue())
    assert mpo.format == "MPO" and mpo.size == (24, 16)
    assert np.abs(np.asarray(mpo.rgb, float) - np.asarray(first, float)).mean() < 8
    avif = decode_bytes(encoded(first, "AVIF", quality=90))
    assert avif.format == "AVIF" and avif.rgb.mode == "RGB" and avif.size == (24, 16)


def test_a_name_taken_in_processed_or_failed_gets_a_suffix(tmp_path: Path) -> None:
    """Nothing is ever overwritten: a second photo.jpg moved aside becomes photo-2.jpg."""
    from stylebox.daemon.files import move_unique

    target = tmp_path / "processed"
    target.mkdir()
    for content in (b"first", b"second", b"third"):
        (tmp_path / "photo.jpg").write_bytes(content)
        move_unique(tmp_path / "photo.jpg", target)
    names = sorted(path.name for path in target.iterdir())
    assert names == ["photo-2.jpg", "photo-3.jpg", "photo.jpg"]
    assert (target / "photo.jpg").read_bytes() == b"first"


def test_oddities_that_decode_whole_are_not_called_damage(tmp_path: Path) -> None:
    """libjpeg warns of stray bytes before a marker and of a JFIF version it does not
    know, and a text chunk after the pixels may have a wrong CRC: the picture is whole
    (Pillow and libpng read it), so it is accepted."""
    data = encoded(photo(40, 30), "JPEG", quality=90)
    dqt = data.index(b"\xff\xdb")
    stray = data[:dqt] + b"\x00\x00\x00" + data[dqt:]
    assert data[6:11] == b"JFIF\x00"
    version = data[:11] + b"\x02\x01" + data[13:]
    png = bytearray(encoded(photo(40, 30)))
    end = png.index(b"IEND") - 4
    text = b"tEXt" + b"Comment\x00a photo"
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text) ^ 1)
    late_text = bytes(png[:end]) + chunk + bytes(png[end:])
    for name, damaged in [("a.jpg", stray), ("b.jpg", version), ("c.png", late_text)]:
        path = tmp_path / name
        path.write_bytes(damaged)
        assert decode_image(path).size == (40, 30), name


def test_a_flat_result_counts_as_broken_only_for_a_photo_with_detail_and_at_a_real_size() -> None:
    from stylebox.images import flat_result

    detailed, black = photo(64, 48), Image.new("RGB", (64, 48))
    assert flat_result(detailed, black) == "one flat colour (0, 0, 0)"
    assert flat_result(detailed, photo(64, 48, seed=1)) is None  # a picture
    assert flat_result(Image.new("RGB", (64, 48), (9, 9, 9)), black) is None  # flat in
    assert flat_result(detailed, Image.new("RGB", (1, 1))) is None  # size = 1 asks one pixel
    assert flat_result(photo(8, 8), Image.new("RGB", (8, 8))) is None  # a few pixels


def test_a_nearly_flat_result_counts_as_broken_too() -> None:
    # A float image in 0..1 cast to bytes unscaled: 0s and a few 1s, which passed as done.
    from stylebox.images import flat_result

    with Image.open(Path(__file__).parent / "data" / "kodim06-256.png") as opened:
        kodak = opened.convert("RGB")
    slipped = Image.fromarray((pixels(kodak) / 255).astype(np.uint8))
    assert 0 < np.count_nonzero(pixels(slipped)) < pixels(slipped).size  # not all one colour
    assert flat_result(kodak, slipped) == (
        "nearly one flat colour, (0, 0, 0) within 2 levels at 99.9 % of its pixels"
    )
    # A dark picture, three quarters black, with detail in the rest, is a picture.
    dark = pixels(kodak) // 4
    dark[: dark.shape[0] * 3 // 4] = 0
    assert flat_result(kodak, Image.fromarray(dark.astype(np.uint8))) is None
    # A star field, nearly black with a few bright specks: as flat a result is faithful.
    stars = np.zeros_like(pixels(kodak), dtype=np.uint8)
    stars[::40, ::40] = 255
    assert flat_result(Image.fromarray(stars), Image.fromarray(stars)) is None
    # A few stray pixels (a NaN's) do not make a flat result a picture.
    stray = np.zeros_like(pixels(kodak), dtype=np.uint8)
    stray[0, :20] = 255  # under 0.1 % of 256 x 171
    assert flat_result(kodak, Image.fromarray(stray)).startswith("nearly one flat colour")


@pytest.mark.parametrize(
    ("top", "peak", "said"),
    [
        (1.0, 1.0, ""),
        (1.0, 1.0001, ", read as 0 to 1 with values over 1 (up to 1.0001) clipped to white"),
        (1.5, 1.5, ", read as 0 to 1 with values over 1 (up to 1.5) clipped to white"),
        (255.0, 255.0, ""),
        (4095.0, 4095.0, ", its largest value (4095) taken as white"),
    ],
)
def test_float_grey_is_read_by_its_range(top: float, peak: float, said: str) -> None:
    # 0..1 data one pixel of which overshot (1.0001) was read as 0..255: black, and done.
    ramp = np.linspace(0, 1, 32 * 8, dtype=np.float32).reshape(8, 32)
    values = ramp * np.float32(top)
    values[0, 0] = peak
    decoded = decode_bytes(encoded(Image.fromarray(values, "F"), "TIFF"))
    grey = np.asarray(decoded.rgb)[..., 0].astype(int)
    white = 1.0 if top <= 1.5 else top  # what reads as 255
    expected = np.clip(ramp * top / white * 255 + 0.5, 0, 255).astype(int)
    assert np.abs(grey - expected)[1:].max() <= 1  # (row 0 holds the peak)
    assert decoded.notes == (f"F pixels scaled to 8 bits{said}",)


def test_a_dark_float_picture_in_0_to_255_is_not_read_as_0_to_1() -> None:
    # A star field, text on black: its median 0, it was taken for 0..1 and came out white.
    values = np.zeros((64, 64), dtype=np.float32)
    values[:20] = np.linspace(0, 255, 64, dtype=np.float32)
    values[40, 40] = 300.0  # one hot pixel: clipped, not taken as white
    decoded = decode_bytes(encoded(Image.fromarray(values, "F"), "TIFF"))
    grey = np.asarray(decoded.rgb)[..., 0].astype(int)
    assert np.abs(grey[:20] - np.clip(values[:20] + 0.5, 0, 255).astype(int)).max() <= 1
    assert grey[20:40].max() == 0 and grey[40, 40] == 255
    said = "F pixels scaled to 8 bits, read as 0 to 255 with values over 255 (up to 300) clipped"
    assert decoded.notes == (said,)


def test_float_grey_that_is_not_a_number_reads_as_black() -> None:
    values = np.full((4, 6), 0.5, dtype=np.float32)
    values[0, :3] = [np.nan, np.inf, -np.inf]
    decoded = decode_bytes(encoded(Image.fromarray(values, "F"), "TIFF"))
    grey = np.asarray(decoded.rgb)[..., 0]
    assert list(grey[0, :4]) == [0, 0, 0, 128] and grey[1:].min() == 128
    said = "F pixels scaled to 8 bits, 3 values that are not numbers read as black"
    assert decoded.notes == (said,)


def test_a_cmyk_photo_whose_profile_does_not_fit_is_not_said_to_have_none() -> None:
    # Its notes said "embedded ICC profile ignored", then "CMYK without an ICC profile".
    buffer = io.BytesIO()
    photo(24, 16).convert("CMYK").save(buffer, "JPEG", icc_profile=rgb_icc_profile())
    notes = decode_bytes(buffer.getvalue()).notes
    assert len(notes) == 2 and notes[0].startswith("embedded ICC profile ignored: ")
    said = "CMYK with an ICC profile that cannot be used, converted to RGB as plain ink amounts"
    assert notes[1] == said
