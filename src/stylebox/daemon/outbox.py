"""The outbox: the only code that decides output names and writes them.

Per input stem ``S`` it holds ``S.<ext>`` (the result), ``S.steps/NNNN.png`` (snapshots),
``S.gif`` (the snapshots as an animation), ``S.loss.svg`` (the loss curves, for a job that
reports a loss) and ``S.json`` (the manifest). Snapshots appear as the job makes them;
result, animation, loss plot and manifest appear together or not at all (see
:meth:`Outbox.writing`), the manifest last, so a manifest's presence means the rest is
complete. A job that fails for good leaves nothing (:meth:`Outbox.discard`). Every file is
written atomically, and a second ``photo.jpg`` gets ``photo-2``: names never collide and
nothing is overwritten. A stem may lie in a sub-folder, ``2024/june/photo`` (a recursive
batch mirrors its source's folders): the job's files are then all in that sub-folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from stylebox.config import OutputConfig
from stylebox.images import (
    atomic_write_bytes,
    encode_image,
    fsync_dir,
    on_white,
    resize_to_max_side,
    write_temp,
)
from stylebox.jsonvalues import finite_or_null

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_ALL_SUFFIXES = (*_EXTENSIONS.values(), ".json", ".gif", ".steps", ".loss.svg")

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


def _safe_name(text: str) -> str:
    """``text`` with separators and invisible characters as ``_``, no leading dots (nothing
    hidden), cut to ``MAX_STEM_BYTES`` of UTF-8."""
    text = "".join("_" if _unsafe(char) else char for char in text).lstrip(".")
    return _truncate_utf8(text, MAX_STEM_BYTES)


def safe_folder(relative: str) -> str:
    """A sub-folder of the outbox from a relative folder of the input's (``2024/june``):
    each part made safe as a stem is, ``.`` and ``..`` parts dropped; ``""`` for none."""
    parts = [_safe_name(part) for part in relative.split("/") if part not in ("", ".", "..")]
    return "/".join(part if part.strip() else "_" for part in parts)


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
    stem = _safe_name(stem)
    return stem if stem.strip() else "image"


def same_folder(path: Path) -> Path:
    """A folder as the file system names it, so that two spellings of one compare equal."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


@dataclass(frozen=True)
class OutputNames:
    folder: Path
    stem: str
    extension: str

    @property
    def home(self) -> Path:
        """The folder the job's files are in: the outbox, or a sub-folder of it."""
        return (self.folder / self.stem).parent

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

    @property
    def loss_plot(self) -> Path:
        return self.folder / f"{self.stem}.loss.svg"


class Outbox:
    """One output folder and how results are written into it."""

    def __init__(self, folder: Path, output: OutputConfig | None = None) -> None:
        self.folder = folder
        self.output = output or OutputConfig()
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self, filename: str, under: str = "") -> OutputNames:
        """Claim a stem for ``filename`` that no existing or in-flight output uses; in the
        sub-folder ``under`` (``2024/june``, made safe by :func:`safe_folder`) if given."""
        folder = safe_folder(under)
        (self.folder / folder).mkdir(parents=True, exist_ok=True)
        base = f"{folder}/{safe_stem(filename)}" if folder else safe_stem(filename)
        extension = _EXTENSIONS[self.output.format]
        with self._lock:
            for n in range(1, 100_000):
                stem = base if n == 1 else f"{base}-{n}"
                if not self._taken(stem):
                    self._reserved.add(stem)
                    return OutputNames(self.folder, stem, extension)
        raise RuntimeError(f"no free output name for {filename} in {self.folder}")

    def reserve_stem(self, stem: str) -> OutputNames | None:
        """Claim exactly ``stem`` if no existing or in-flight output uses it (a failed job,
        retried, taking back the names it had), else ``None``."""
        (self.folder / stem).parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._taken(stem):
                return None
            self._reserved.add(stem)
        return self.names(stem)

    def share_reservations(self, earlier: Outbox) -> None:
        """Use the in-flight reservations of ``earlier``, an outbox of the same folder that a
        reload replaces, from now on: one set for both, so that a name ``earlier`` gave a
        queued or running job is never given again, and one that a job still holding
        ``earlier`` releases is free here too. Names reserved here before are kept."""
        with earlier._lock, self._lock:
            earlier._reserved.update(self._reserved)
            self._reserved = earlier._reserved
        self._lock = earlier._lock

    def names(self, stem: str) -> OutputNames:
        """The names of job ``stem``'s outputs, in this outbox's format (reserving nothing)."""
        return OutputNames(self.folder, stem, _EXTENSIONS[self.output.format])

    def _taken(self, stem: str) -> bool:
        # A result in any format counts, so one is never shadowed by another.
        return stem in self._reserved or any(
            os.path.lexists(self.folder / f"{stem}{suffix}") for suffix in _ALL_SUFFIXES
        )

    def claim(self, stem: str) -> OutputNames:
        """Take back a stem this job reserved before an interruption (its snapshots stay)."""
        (self.folder / stem).parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._reserved.add(stem)
        return self.names(stem)

    def remove_temporaries(self, names: OutputNames) -> None:
        """Delete temp files a killed writer left for these names (never complete files)."""
        own = f".{Path(names.stem).name}."
        for folder in (names.home, names.steps):
            if folder.is_dir():
                for temp in folder.glob(".*.tmp"):
                    if folder == names.steps or temp.name.startswith(own):
                        temp.unlink(missing_ok=True)

    def release(self, names: OutputNames) -> None:
        self.release_stem(names.stem)

    def release_stem(self, stem: str) -> None:
        """Forget an in-flight reservation (its files, if any, now speak for themselves)."""
        with self._lock:
            self._reserved.discard(stem)

    def write_snapshot(
        self, names: OutputNames, image: Image.Image, step: int, alpha: Image.Image | None = None
    ) -> Path:
        """Snapshot ``step`` as a PNG, with the photo's transparency ``alpha`` if any."""
        names.steps.mkdir(parents=True, exist_ok=True)
        path = names.steps / f"{step:04d}.png"
        atomic_write_bytes(path, encode_image(image, "png", alpha), sync_folder=False)
        return path

    @staticmethod
    def drop_snapshots(names: OutputNames, from_step: int) -> None:
        """Remove the job's snapshots of step ``from_step`` and later."""
        if names.steps.is_dir():
            for path in names.steps.glob("[0-9]*.png"):
                if path.stem.isdigit() and int(path.stem) >= from_step:
                    path.unlink(missing_ok=True)

    def holds_result(self, stem: str, sha256: str) -> bool:
        """Whether ``stem``'s manifest is there and records the input ``sha256``: a
        complete result of those bytes (the manifest is written last)."""
        manifest = OutputNames(self.folder, stem, "").manifest
        try:
            return json.loads(manifest.read_text())["input"]["sha256"] == sha256
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def result_seconds(self, stem: str) -> float:
        """The job's time as ``stem``'s manifest records it (0 where it cannot be read)."""
        manifest = OutputNames(self.folder, stem, "").manifest
        try:
            return float(json.loads(manifest.read_text())["timings"]["total_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def end_without_result(self, stem: str, sha256: str) -> None:
        """The job ``stem`` of the input ``sha256`` ends with no result of its own (failed,
        superseded): what it wrote (snapshots, a set a crash left without its manifest) is
        discarded, but a complete result of those bytes is kept; its names are free."""
        if self.holds_result(stem, sha256):
            self.release_stem(stem)
        else:
            self.discard(stem)

    def discard(self, stem: str) -> None:
        """Remove every output of the job ``stem``, which ends without a result: its temp
        files, result, animation and manifest (the manifest first, so that no reader sees it
        without the rest) and its snapshots, which are no result either; and forget its
        reservation. Best effort: a file that cannot be removed is left."""
        names = self.names(stem)
        with contextlib.suppress(OSError):
            self.remove_temporaries(names)
        for path in (names.manifest, names.result, names.animation, names.loss_plot):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        shutil.rmtree(names.steps, ignore_errors=True)
        with self._lock:
            self._reserved.discard(stem)
            # Sub-folders that held only this job's files, unless another job has a name
            # in them (its files may not be there yet).
            folder = names.home
            while folder != self.folder and not any(
                (self.folder / taken).is_relative_to(folder) for taken in self._reserved
            ):
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent

    @contextlib.contextmanager
    def writing(self, names: OutputNames) -> Iterator[PendingOutputs]:
        """Write a job's result, animation and manifest so that they appear together.

        Each goes to a hidden temp file and is fsynced as it is written; when the block ends
        they are renamed into place, the manifest last, and the folder is fsynced. If
        anything fails (a write, a rename, the block itself), every file of the set is
        removed, temp files and those already renamed alike, and the error goes on: a retry
        writes them all again. The snapshots folder is left to the job."""
        pending = PendingOutputs(self, names)
        try:
            self.remove_temporaries(names)  # a killed writer's: the job's plugin is done
            yield pending
            pending.commit()
        except BaseException:
            pending.abort()
            raise


class PendingOutputs:
    """A job's result, animation and manifest on their way into the outbox, each in a
    fsynced temp file until :meth:`commit` renames them all; see :meth:`Outbox.writing`."""

    def __init__(self, outbox: Outbox, names: OutputNames) -> None:
        self.outbox = outbox
        self.names = names
        self._temps: dict[Path, Path] = {}
        """Each final path, by the temp file holding its content until the commit."""
        self._placed = False

    def write_result(self, image: Image.Image, alpha: Image.Image | None) -> Path:
        data = encode_image(image, self.outbox.output.format, alpha)
        return self._stage(self.names.result, data)

    def write_animation(
        self,
        final: Image.Image,
        made: Mapping[str, Image.Image] | None = None,
        alpha: Image.Image | None = None,
    ) -> Path | None:
        """The snapshots, then the result, as a looping GIF; ``None`` without snapshots.
        ``made``: frames already made from snapshots (by file name), as the job's writer
        makes them while the job runs; the others (an earlier run's) are made here.
        ``alpha``: the photo's transparency, white in every frame (as in a JPEG)."""
        output, steps = self.outbox.output, self.names.steps
        if not output.animation or not steps.is_dir():
            return None
        snapshots = sorted(steps.glob("[0-9]*.png"), key=lambda p: int(p.stem))
        if not snapshots:
            return None
        size = resize_to_max_side(final, output.animation_max_side).size
        frames = []
        for path in snapshots:
            frame = (made or {}).get(path.name)
            if frame is None or frame.size != size:
                with Image.open(path) as snapshot:  # its own alpha, if the photo has one
                    frame = gif_frame(snapshot, size)
            frames.append(frame)
        frames.append(gif_frame(final, size, alpha))
        durations = [output.frame_ms] * (len(frames) - 1) + [output.frame_ms * 8]
        buffer = io.BytesIO()
        frames[0].save(
            buffer, "GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0
        )
        return self._stage(self.names.animation, buffer.getvalue())

    def write_loss_plot(self, svg: str | None) -> Path | None:
        """The job's loss curves (an SVG document, see :mod:`stylebox.lossplot`); ``None``
        for a job without any."""
        return None if svg is None else self._stage(self.names.loss_plot, svg.encode())

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        text = json.dumps(finite_or_null(manifest), indent=2, sort_keys=False, default=str)
        return self._stage(self.names.manifest, (text + "\n").encode())

    def _stage(self, path: Path, data: bytes) -> Path:
        earlier = self._temps.pop(path, None)
        if earlier is not None:
            earlier.unlink(missing_ok=True)
        # Its sub-folder was made when the name was reserved, but another process's
        # discard of an emptied one (a daemon and a batch on one outbox) cannot see that.
        path.parent.mkdir(parents=True, exist_ok=True)
        self._temps[path] = write_temp(path, data)
        return path

    def commit(self) -> None:
        """Rename every file into place, the manifest last, and make it all durable."""
        if self.names.steps.is_dir():
            fsync_dir(self.names.steps)  # the manifest lists the snapshots
        for path in sorted(self._temps, key=lambda path: path == self.names.manifest):
            os.replace(self._temps[path], path)
            self._placed = True  # from here on, an earlier set of these names is broken
            del self._temps[path]
        fsync_dir(self.names.home)

    def abort(self) -> None:
        """Remove the temp files, and the set's files in the outbox unless they are an
        earlier complete set that this one has not touched (its manifest is there)."""
        for temp in self._temps.values():
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        self._temps.clear()
        if self._placed or not self.names.manifest.exists():
            names = self.names
            for path in (names.manifest, names.result, names.animation, names.loss_plot):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)


def gif_frame(
    image: Image.Image, size: tuple[int, int], alpha: Image.Image | None = None
) -> Image.Image:
    """One frame of a job's animation: ``image`` at ``size``, in 255 colours; white where
    ``alpha`` (or the image's own alpha channel) says the photo is transparent."""
    if alpha is None and image.mode == "RGBA":
        alpha = image.getchannel("A")
    frame = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        frame = on_white(frame, alpha)
    return frame.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
