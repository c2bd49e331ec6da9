"""The outbox: the only code that decides output names and writes them.

Per input stem ``S`` it holds ``S.<ext>`` (the result), ``S.steps/NNNN.png`` (snapshots),
``S.gif`` (the snapshots as an animation) and ``S.json`` (the manifest, written last, so a
manifest's presence means the rest is complete). Every file is written atomically, and a
second ``photo.jpg`` gets ``photo-2``: names never collide and nothing is overwritten.
"""

from __future__ import annotations

import json
import os
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from stylebox.config import OutputConfig
from stylebox.images import (
    atomic_write_bytes,
    atomic_writer,
    encode_image,
    fsync_dir,
    resize_to_max_side,
)

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_ALL_SUFFIXES = (*_EXTENSIONS.values(), ".json", ".gif", ".steps")

#: Most copies of one name in a folder: ``reserve`` adds at most ``-99999``.
_MAX_COPIES = 99_999
#: Longest file name most file systems take (ext4, XFS, Btrfs, ZFS, NTFS...), in bytes.
NAME_MAX = 255
#: Longest stem, in UTF-8 bytes, such that every name made from it fits NAME_MAX: the longest
#: are the temp files of atomic writes, ``.STEM-99999.json.XXXXXXXX.tmp`` (images.py).
MAX_STEM_BYTES = NAME_MAX - len(f".-{_MAX_COPIES}{max(_ALL_SUFFIXES, key=len)}.XXXXXXXX.tmp")
#: Path separators here or on the file servers an outbox may live on.
_SEPARATORS = frozenset("/\\")
#: Invisible characters that scripts and emoji need: zero-width non-joiner and joiner.
_JOINERS = frozenset("\u200c\u200d")


def _unsafe(char: str) -> bool:
    """Separators and what would not show: controls, line breaks, invisible format marks
    (such as bidirectional overrides that disguise a name), surrogates, private-use and
    unassigned code points. Every space is kept, as is every letter, mark, digit, symbol
    and punctuation."""
    if char in _SEPARATORS:
        return True
    if char.isprintable() or char in _JOINERS:
        return False
    return unicodedata.category(char) != "Zs"


def _truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def safe_stem(filename: str) -> str:
    """A file-system-safe stem from an input's name, taken as data and never as a path.

    Every printable character is kept (``東京 Straße ü.png`` gives ``東京 Straße ü``); path
    separators, control and other invisible characters become ``_``; leading dots go, so
    that no result is hidden; and the stem is cut, on a character boundary, to
    :data:`MAX_STEM_BYTES` bytes of UTF-8 so that every file named after it fits the file
    system.
    """
    stem, dot, extension = filename.rpartition(".")
    if not (dot and stem.lstrip(".")) or _SEPARATORS.intersection(extension):
        stem = filename  # no extension: a leading dot only, or a dot in an earlier part
    stem = "".join("_" if _unsafe(char) else char for char in stem).lstrip(".")
    stem = _truncate_utf8(stem, MAX_STEM_BYTES)
    return stem if stem.strip() else "image"


@dataclass(frozen=True)
class OutputNames:
    folder: Path
    stem: str
    extension: str

    @property
    def result(self) -> Path:
        return self.folder / f"{self.stem}{self.extension}"

    @property
    def steps(self) -> Path:
        return self.folder / f"{self.stem}.steps"

    @property
    def animation(self) -> Path:
        return self.folder / f"{self.stem}.gif"

    @property
    def manifest(self) -> Path:
        return self.folder / f"{self.stem}.json"

    def all(self) -> tuple[Path, ...]:
        return (self.result, self.steps, self.animation, self.manifest)


class Outbox:
    """One output folder and how results are written into it."""

    def __init__(self, folder: Path, output: OutputConfig | None = None) -> None:
        self.folder = folder
        self.output = output or OutputConfig()
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self, filename: str) -> OutputNames:
        """Claim a stem for ``filename`` that no existing or in-flight output uses."""
        self.folder.mkdir(parents=True, exist_ok=True)
        base = safe_stem(filename)
        extension = _EXTENSIONS[self.output.format]
        with self._lock:
            for n in range(1, 100_000):
                stem = base if n == 1 else f"{base}-{n}"
                names = OutputNames(self.folder, stem, extension)
                # A result in any format counts, so one is never shadowed by another.
                taken = stem in self._reserved or any(
                    os.path.lexists(self.folder / f"{stem}{suffix}") for suffix in _ALL_SUFFIXES
                )
                if not taken:
                    self._reserved.add(stem)
                    return names
        raise RuntimeError(f"no free output name for {filename} in {self.folder}")

    def claim(self, stem: str) -> OutputNames:
        """Take back a stem this job reserved before an interruption (its snapshots stay)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._reserved.add(stem)
        return OutputNames(self.folder, stem, _EXTENSIONS[self.output.format])

    def remove_temporaries(self, names: OutputNames) -> None:
        """Delete temp files a killed writer left for these names (never complete files)."""
        for folder in (self.folder, names.steps):
            if folder.is_dir():
                for temp in folder.glob(".*.tmp"):
                    if folder == names.steps or temp.name.startswith(f".{names.stem}."):
                        temp.unlink(missing_ok=True)

    def release(self, names: OutputNames) -> None:
        self.release_stem(names.stem)

    def release_stem(self, stem: str) -> None:
        """Forget an in-flight reservation (its files, if any, now speak for themselves)."""
        with self._lock:
            self._reserved.discard(stem)

    def write_snapshot(self, names: OutputNames, image: Image.Image, step: int) -> Path:
        names.steps.mkdir(exist_ok=True)
        path = names.steps / f"{step:04d}.png"
        atomic_write_bytes(path, encode_image(image, "png"), sync_folder=False)
        return path

    def write_result(
        self, names: OutputNames, image: Image.Image, alpha: Image.Image | None
    ) -> Path:
        # No folder fsync here: the manifest, written last into the same folder, does it.
        atomic_write_bytes(
            names.result, encode_image(image, self.output.format, alpha), sync_folder=False
        )
        return names.result

    def write_animation(self, names: OutputNames, final: Image.Image) -> Path | None:
        """The snapshots, then the result, as a looping GIF; ``None`` without snapshots."""
        if not self.output.animation or not names.steps.is_dir():
            return None
        snapshots = sorted(names.steps.glob("[0-9]*.png"), key=lambda p: int(p.stem))
        if not snapshots:
            return None
        size = resize_to_max_side(final, self.output.animation_max_side).size
        frames = []
        for path in snapshots:
            with Image.open(path) as snapshot:
                frames.append(_gif_frame(snapshot, size))
        frames.append(_gif_frame(final, size))
        durations = [self.output.frame_ms] * (len(frames) - 1) + [self.output.frame_ms * 8]
        with atomic_writer(names.animation, sync_folder=False) as handle:
            frames[0].save(
                handle, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0
            )
        return names.animation

    def write_manifest(self, names: OutputNames, manifest: dict[str, Any]) -> Path:
        text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
        if names.steps.is_dir():
            fsync_dir(names.steps)
        atomic_write_bytes(names.manifest, text.encode())
        return names.manifest


def _gif_frame(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    frame = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return frame.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
