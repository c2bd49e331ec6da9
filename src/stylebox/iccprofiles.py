"""ICC profiles Pillow cannot make (``ImageCms.createProfile`` knows sRGB, Lab and XYZ):
the matrix/TRC RGB profile of a colour space given by its primaries and gamma.

Used for camera JPEGs shot in Adobe RGB mode, which say so in their EXIF (DCF's colour
space ``Uncalibrated`` with the interoperability index ``R03``) instead of embedding a
profile: read as sRGB, their colours came out too saturated.
"""

from __future__ import annotations

import struct

XYZ = tuple[float, float, float]

#: The ICC profile connection space's white (D50), which the primaries below are adapted to.
D50: XYZ = (0.9642, 1.0, 0.8249)

#: Adobe RGB (1998): its primaries adapted to D50 (as its specification's profile has them)
#: and its gamma, 563/256.
ADOBE_RGB_PRIMARIES: tuple[XYZ, XYZ, XYZ] = (
    (0.60974, 0.31111, 0.01947),
    (0.20528, 0.62567, 0.06087),
    (0.14919, 0.06322, 0.74457),
)
ADOBE_RGB_GAMMA = 563 / 256


def _s15(value: float) -> bytes:
    """An ICC s15Fixed16Number."""
    return struct.pack(">i", round(value * 65536))


def _xyz(value: XYZ) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in value)


def _text(kind: bytes, text: str) -> bytes:
    if kind == b"desc":  # ICC v2 textDescriptionType: ASCII, then empty Unicode and Mac parts
        ascii_text = text.encode("ascii") + b"\0"
        empty = bytes(4 + 4 + 2 + 1 + 67)  # Unicode: language, count; ScriptCode: code, count, text
        return kind + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + empty
    return kind + bytes(4) + text.encode("ascii") + b"\0"


def matrix_trc_profile(description: str, primaries: tuple[XYZ, XYZ, XYZ], gamma: float) -> bytes:
    """An ICC v2 display profile of RGB with these D50-adapted ``primaries`` (red, green,
    blue, each as XYZ) and one pure ``gamma`` curve for the three channels."""
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    red, green, blue = primaries
    tags = [
        (b"desc", _text(b"desc", description)),
        (b"cprt", _text(b"text", "No copyright, use freely")),
        (b"wtpt", _xyz(D50)),
        (b"rXYZ", _xyz(red)),
        (b"gXYZ", _xyz(green)),
        (b"bXYZ", _xyz(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body))
        + b"lcms"  # the preferred CMM
        + bytes.fromhex("02100000")  # version 2.1
        + b"mntrRGB XYZ "  # a display profile of RGB, its connection space XYZ
        + bytes(12)  # date and time
        + b"acsp"
        + bytes(24)  # platform, flags, manufacturer, model, attributes
        + bytes(4)  # rendering intent: perceptual
        + b"".join(_s15(v) for v in D50)
        + bytes(4)  # creator
        + bytes(44)  # profile id and reserved
    )
    return header + struct.pack(">I", len(tags)) + table + body


ADOBE_RGB = matrix_trc_profile("Adobe RGB (1998)", ADOBE_RGB_PRIMARIES, ADOBE_RGB_GAMMA)
"""The Adobe RGB (1998) profile, for images that say they are in it without embedding one."""
