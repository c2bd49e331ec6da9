"""Sidecar files (``IMG_0001.AAE``, ``photo.jpg.xmp``, ``photo.jpg:Zone.Identifier``) in an
inbox: never jobs, never failures; they go where their photo goes, renamed with it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import photo
from daemon_helpers import POSTERIZE_CONFIG, Daemon, wait_until, write_config

from stylebox.daemon.pipeline import move_input
from stylebox.daemon.sidecars import sidecar_of
from stylebox.daemon.watcher import left_alone


def test_sidecar_names_say_their_photo() -> None:
    aae = sidecar_of("IMG_0001.AAE")
    assert aae is not None and aae.belongs_to("IMG_0001.HEIC") and aae.belongs_to("IMG_0001.jpg")
    assert not aae.belongs_to("IMG_0002.HEIC")
    xmp = sidecar_of("photo.jpg.xmp")
    assert xmp is not None and xmp.belongs_to("photo.jpg") and not xmp.belongs_to("photo.png")
    zone = sidecar_of("photo.jpg:Zone.Identifier")
    assert zone is not None and zone.belongs_to("photo.jpg") and not zone.belongs_to("photo.png")
    takeout = sidecar_of("photo.jpg.supplemental-metadata.json")
    assert takeout is not None and takeout.belongs_to("photo.jpg")
    assert sidecar_of("photo.jpg.json") is not None
    # Takeout cuts its part short in long names; Windows marks a sidecar copied too.
    cut = sidecar_of("photo.jpg.supplemental-metadat.json")
    assert cut is not None and cut.belongs_to("photo.jpg")
    marked = sidecar_of("photo.jpg.xmp:Zone.Identifier")
    assert marked is not None and marked.belongs_to("photo.jpg")
    assert marked.renamed("photo.jpg", "photo-2.jpg") == "photo-2.jpg.xmp:Zone.Identifier"
    # Said as the photo it names: late.jpg.xmp is late.jpg's, lone.xmp any lone.*'s.
    assert [sidecar.named() for sidecar in (xmp, sidecar_of("lone.xmp"))] == [  # type: ignore[union-attr]
        "photo.jpg",
        "lone.*",
    ]
    # A JSON file is a sidecar only after a picture's whole name; nor is a picture one.
    for name in ("settings.json", "photo.json", "notes.txt.json", "photo.jpg", ".xmp", "a.txt"):
        assert sidecar_of(name) is None, name
    # Renamed with their photo, as their name says it.
    assert xmp.renamed("photo.jpg", "photo-2.jpg") == "photo-2.jpg.xmp"
    assert aae.renamed("IMG_0001.jpg", "IMG_0001-2.jpg") == "IMG_0001-2.AAE"
    assert zone.renamed("photo.jpg", "photo-2.jpg") == "photo-2.jpg:Zone.Identifier"


def test_sidecars_follow_their_photo_and_keep_their_name_form(tmp_path: Path) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    (done / "IMG_0001.jpg").write_bytes(b"an earlier photo of the name")
    for name in ("IMG_0001.jpg", "IMG_0001.AAE", "IMG_0001.jpg.xmp", "IMG_0001.png.xmp",
                 "IMG_0001.jpg:Zone.Identifier", "IMG_0001.mask.png"):  # fmt: skip
        (inbox / name).write_bytes(name.encode())
    moved = move_input(inbox / "IMG_0001.jpg", done)
    assert moved == done / "IMG_0001-2.jpg"
    assert sorted(p.name for p in done.iterdir()) == [
        "IMG_0001-2.AAE", "IMG_0001-2.jpg", "IMG_0001-2.jpg.xmp", "IMG_0001-2.jpg:Zone.Identifier",
        "IMG_0001-2.mask.png", "IMG_0001.jpg",
    ]  # fmt: skip
    assert (done / "IMG_0001-2.AAE").read_bytes() == b"IMG_0001.AAE"
    assert [p.name for p in inbox.iterdir()] == ["IMG_0001.png.xmp"]  # another photo's


def test_an_inbox_moves_sidecars_with_their_photo_and_leaves_a_lone_one_said_once(
    tmp_path: Path,
) -> None:
    # They failed one by one as "not an image", each with a note in failed/.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(32, 24).save(inbox / "IMG_0001.jpg")
    sidecars = ["IMG_0001.AAE", "IMG_0001.jpg.xmp", "IMG_0001.jpg.json",
                "IMG_0001.jpg:Zone.Identifier", "IMG_0001.jpg.xmp:Zone.Identifier"]  # fmt: skip
    for name in sidecars:
        (inbox / name).write_text("<x:xmpmeta/>\n")
    (inbox / "lone.xmp").write_text("<x:xmpmeta/>\n")
    daemon = Daemon(write_config(tmp_path, POSTERIZE_CONFIG.format(extra="")))
    try:
        daemon.wait_ready()
        processed = inbox / "processed"
        assert wait_until(lambda: (processed / "IMG_0001.jpg").exists(), 60), daemon.output()
        assert wait_until(lambda: len(list(processed.iterdir())) == 6, 10), daemon.output()
        assert sorted(p.name for p in processed.iterdir()) == sorted(["IMG_0001.jpg", *sidecars])
        left = sorted(p.name for p in inbox.iterdir() if p.name[0] != ".")
        assert left == ["failed", "lone.xmp", "processed"]
        assert list((inbox / "failed").iterdir()) == []
        assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
            "IMG_0001.json", "IMG_0001.png"
        ]  # fmt: skip
        manifest = json.loads((tmp_path / "outbox" / "IMG_0001.json").read_text())
        assert manifest["input"]["name"] == "IMG_0001.jpg"
    finally:
        daemon.stop()
    said = [line for line in daemon.output().splitlines() if "lone.xmp" in line]
    assert len(said) == 1, said  # at each rescan, but once
    why = (
        "lone.xmp is a sidecar of a photo named lone.* that is not here; it stays until its "
        "photo comes, and then goes where the photo goes (one done or failed before it came: "
        "move it to its photo in processed/ or failed/)"
    )
    assert why in said[0]
    assert left_alone(inbox, {"processed", "failed"}) == [why]
