from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
STYLES = REPO / "styles"


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A small synthetic photo: smooth gradients, a few shapes and some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / max(width, 1) * 3.1 + seed)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.4 * np.cos((x + y) / 9.0)
    array = np.stack([r, g, b], axis=-1)
    array[height // 4 : height // 2, width // 4 : width // 2] = (0.9, 0.8, 0.2)
    array += rng.normal(0, 0.03, array.shape)
    return Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    """An image's values as signed integers, so that differences do not wrap around."""
    return np.asarray(image, dtype=np.int16)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def corrupt_exif_jpeg(image: Image.Image) -> bytes:
    """``image`` as a JPEG whose EXIF block's first directory runs off its end: Pillow reads
    the photo, and warns "Corrupt EXIF data"."""
    jpeg = encoded(image, "JPEG", quality=90)
    app1 = b"Exif\0\0" + b"MM\0\x2a\0\0\0\x08" + b"\xff" * 40
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height``: a decompression bomb."""
    data = bytearray(encoded(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    crc = zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture
def photo_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    photo(64, 48).save(path)
    return path


@pytest.fixture
def style_file(tmp_path: Path) -> Path:
    path = tmp_path / "style.png"
    with Image.open(STYLES / "starry_night.jpg") as painting:
        painting.convert("RGB").resize((64, 51), Image.Resampling.LANCZOS).save(path)
    return path


def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of bad input, with a fragment its refusal must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = encoded(photo(64, 48))
    good_jpeg = encoded(photo(64, 48), "JPEG", quality=90)
    cases: dict[str, tuple[bytes | None, str, str]] = {
        "empty": (b"", "empty.jpg", "empty"),
        "text": (b"hello, this is not a picture\n" * 20, "notes.jpg", "not an image"),
        "truncated-png": (good_png[: len(good_png) // 2], "cut.png", "truncated"),
        "truncated-jpeg": (good_jpeg[: len(good_jpeg) // 2], "cut.jpg", "truncated"),
        "bomb": (png_claiming_size(40_000, 40_000), "bomb.png", "decompression bomb"),
        "format": (encoded(photo(16, 16), "PPM"), "photo.ppm", "not accepted"),
        "directory": (None, "x.jpg", "folder"),
    }
    made: dict[str, tuple[Path, str]] = {}
    for kind, (data, name, reason) in cases.items():
        path = folder / kind / name
        path.parent.mkdir()
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        made[kind] = (path, reason)
    return made


def rgb_icc_profile(swap_red_blue: bool = True) -> bytes:
    """A minimal ICC v2 matrix/TRC RGB profile (gamma 2.2); with ``swap_red_blue`` its red
    primary is sRGB's blue and vice versa, so a colour-managed decode visibly changes the
    pixels."""
    from stylebox.iccprofiles import matrix_trc_profile

    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    if swap_red_blue:
        red, blue = blue, red
    return matrix_trc_profile("test", (red, green, blue), 563 / 256)


def installed_site(folder: Path, name: str, entry_points: str, modules: dict[str, str]) -> Path:
    """A folder that, on sys.path or PYTHONPATH, looks like the installed distribution
    ``name``: its ``entry_points.txt`` text and its modules (relative path: source). Its
    ``.dist-info`` is named as pip names it (``stylebox_pencil-1.0``): importlib.metadata
    reads a distribution's name up to the folder name's first ``-``, and
    ``stylebox-pencil-1.0.dist-info`` would pass for stylebox itself."""
    site = folder / f"site-{name}"
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    for relative, source in modules.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(source)
    return site


# The broken plugin ``explodes`` (see broken_plugins_site), mended.
MENDED_EXPLODES = (
    "from stylebox.plugins.api import Plugin as Base, PluginParams\n"
    "class Plugin(Base):\n"
    "    name = 'explodes'\n"
    "    Params = PluginParams\n"
    "    def process(self, image, job):\n"
    "        return image\n"
)


def broken_plugins_site(folder: Path) -> Path:
    """An installed-looking distribution with three broken stylebox plugins (an import
    error, a ``Params`` that is not a model, a ``process`` that raises); put the returned
    folder on sys.path (or PYTHONPATH) to make them discoverable."""
    return installed_site(
        folder,
        "brokenplugins",
        "[stylebox.plugins]\n"
        "explodes = brokenplugins.explodes:Plugin\n"
        "notmodel = brokenplugins.notmodel:NotModel\n"
        "raises = brokenplugins.raises:Raises\n",
        {
            "brokenplugins/__init__.py": "",
            "brokenplugins/explodes.py": "raise RuntimeError('no GPU driver here')\n",
            "brokenplugins/notmodel.py": (
                "from stylebox.plugins.api import Plugin\n"
                "class NotModel(Plugin):\n"
                "    name = 'notmodel'\n"
                "    Params = dict\n"
                "    def process(self, image, job):\n"
                "        return image\n"
            ),
            "brokenplugins/raises.py": (
                "from stylebox.plugins.api import Plugin, PluginParams\n"
                "class Raises(Plugin):\n"
                "    name = 'raises'\n"
                "    Params = PluginParams\n"
                "    def process(self, image, job):\n"
                "        raise KeyError('lookup table missing')\n"
            ),
        },
    )


# The jobs table as the first journals were written: no eta_at column, no indexes.
EARLIER_JOBS_TABLE = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, origin_path TEXT NOT NULL,
    input_path TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, plugin TEXT NOT NULL,
    params_hash TEXT NOT NULL, unique_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, lease_owner TEXT, lease_expires REAL, stem TEXT,
    step INTEGER, total INTEGER, error_class TEXT, error_message TEXT,
    created_at REAL NOT NULL, started_at REAL, claimed_at REAL, finished_at REAL, seconds REAL
);
"""


def read_backs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every tensor method that reads a value back to Python (what makes a
    GPU wait for its queue), each time one is called, while ``monkeypatch`` holds."""
    import torch

    calls: list[str] = []
    for name in ("item", "tolist", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, name: str = name, original=original):
            calls.append(name)
            return original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls
