"""Sidecar files: what phones, cameras, editors and copies keep beside a photo.

An iPhone export has ``IMG_0001.AAE`` beside ``IMG_0001.HEIC``, an editor's edits are in
``photo.xmp`` or ``photo.jpg.xmp``, a Google Takeout archive has ``photo.jpg.json`` (or
``photo.jpg.supplemental-metadata.json``), and a file copied from Windows onto a Linux share
can bring ``photo.jpg:Zone.Identifier``. In an inbox such a file is never a job (it is no
picture, and failing it would say nothing useful): it goes where its photo goes, renamed
with it, and one whose photo is not there is left alone, said once.

A sidecar names its photo by the photo's whole name (``photo.jpg.xmp``) or, for XMP and
AAE, by its stem (``photo.xmp``, which a stem's first photo takes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from stylebox.images import picture_suffix
from stylebox.plugins.api import companion_kind, is_ignored

#: Sidecars by their ending (any case), named after their photo's stem or whole name.
_BY_STEM_OR_NAME = (".xmp", ".aae")
#: What Windows adds to any file copied from the internet, a sidecar's too.
_ZONE = ":zone.identifier"
#: Takeout's own part before ``.json``, which it cuts short in long names
#: (``photo.jpg.supplemental-metadat.json``).
_TAKEOUT = "supplemental-metadata"


@dataclass(frozen=True)
class Sidecar:
    """What a sidecar's name says of its photo."""

    photo: str
    """The photo's whole name (``photo.jpg``) or stem (``photo``) the sidecar begins with."""
    ending: str
    """The rest of the sidecar's name (``.xmp``, ``:Zone.Identifier``), as it is written."""
    by_stem: bool
    """Whether :attr:`photo` may be a stem (XMP, AAE) rather than only a whole name."""

    def named(self) -> str:
        """The photo it names, as people read it: ``photo.jpg``, or ``photo.*`` for a stem."""
        exact = not self.by_stem or picture_suffix(Path(self.photo).suffix)
        return self.photo if exact else f"{self.photo}.*"

    def belongs_to(self, name: str) -> bool:
        """Whether this is the sidecar of the photo named ``name``."""
        return name == self.photo or (self.by_stem and Path(name).stem == self.photo)

    def renamed(self, photo: str, moved: str) -> str:
        """This sidecar's name beside its photo ``photo`` once that is named ``moved``."""
        return (moved if self.photo == photo else Path(moved).stem) + self.ending


def sidecar_of(name: str) -> Sidecar | None:
    """What the file ``name`` is the sidecar of, or None for any other file. A JSON file is
    one only after a picture's whole name (``photo.jpg.json``), not ``settings.json``."""
    lowered = name.lower()
    if lowered.endswith(_ZONE):
        photo, ending = name[: -len(_ZONE)], name[-len(_ZONE) :]
        if picture_suffix(Path(photo).suffix) and Path(photo).stem:
            return Sidecar(photo, ending, by_stem=False)
        inner = sidecar_of(photo)  # a sidecar's own (photo.jpg.xmp:Zone.Identifier)
        return None if inner is None else replace(inner, ending=inner.ending + ending)
    for ending in _BY_STEM_OR_NAME:
        if lowered.endswith(ending) and len(name) > len(ending):
            return Sidecar(name[: -len(ending)], name[-len(ending) :], by_stem=True)
    if lowered.endswith(".json"):
        photo = name[: -len(".json")]
        before, _, last = photo.rpartition(".")
        if before and last and _TAKEOUT.startswith(last.lower()):
            photo = before  # photo.jpg.supplemental-metadata.json, or cut short
        if picture_suffix(Path(photo).suffix) and Path(photo).stem:
            return Sidecar(photo, name[len(photo) :], by_stem=False)
    return None


def follows_a_photo(name: str) -> bool:
    """Whether the file ``name`` is never a job but goes where its photo goes: a companion
    (``photo.mask.png``) or a sidecar (``photo.xmp``)."""
    return companion_kind(name) is not None or sidecar_of(name) is not None


def _file_names(folder: Path) -> list[str]:
    """The names of the files in ``folder`` now, sorted (none where it cannot be listed)."""
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    except OSError:
        return []


def photo_beside(companion: Path) -> bool:
    """Whether an input of the companion file's stem (``harbour.jpg`` for
    ``harbour.mask.png``) is beside it: not hidden or temporary, nor a companion or
    sidecar itself."""
    found = companion_kind(companion.name)
    return found is not None and any(
        Path(name).stem == found[1] and not is_ignored(name) and not follows_a_photo(name)
        for name in _file_names(companion.parent)
    )


def sidecars_of(path: Path) -> list[tuple[Path, Sidecar]]:
    """The sidecar files beside the photo ``path`` now, each with what its name says."""
    return [
        (path.parent / name, sidecar)
        for name in _file_names(path.parent)
        if (sidecar := sidecar_of(name)) is not None and sidecar.belongs_to(path.name)
    ]
