"""Companion files (``photo.mask.png`` beside ``photo.jpg``): never jobs of their own, waited
for within the settle window, handed to the plugin and moved with their photo."""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from pathlib import Path

from conftest import STYLES, photo
from daemon_helpers import Daemon, gatys_config, wait_until
from PIL import Image, ImageDraw

from stylebox.daemon.watcher import InboxWatcher, WatchedFolder
from stylebox.errors import BadInput, MissingCompanion
from stylebox.plugins.api import companion_kind, companions_of

SETTLE = 0.6


def two_bands(path: Path, size: tuple[int, int]) -> Path:
    mask = Image.new("RGB", size, (0, 0, 255))
    ImageDraw.Draw(mask).rectangle([0, 0, size[0], size[1] // 2 - 1], fill=(255, 0, 0))
    mask.save(path)
    return path


def masked_daemon(folder: Path, settle: float) -> Daemon:
    """A daemon whose gatys inbox has a style mask (a photo needs its own), tiny and quick."""
    style = folder / "reference.png"
    with Image.open(STYLES / "starry_night.jpg") as painting:
        painting.convert("RGB").resize((48, 38)).save(style)
    style_mask = two_bands(folder / "reference.mask.png", (48, 38))
    params = (
        f'style_mask = "{style_mask}", size = 48, steps = 3, photorealism = 1e6, '
        "snapshot_every = 0, require_progress = 0"
    )
    return Daemon(gatys_config(folder, style, params, settle=settle))


def poster_daemon(folder: Path) -> tuple[Daemon, Path]:
    """A daemon with one posterize inbox (no masks needed), and that inbox."""
    config = folder / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "poster"\npath = "inbox"\noutbox = "outbox"\n'
        'plugin = "posterize"\nsettle_seconds = 0.2\n'
    )
    inbox = folder / "inbox"
    inbox.mkdir()
    return Daemon(config), inbox


def test_companion_names() -> None:
    assert companion_kind("photo.mask.png") == ("mask", "photo")
    assert companion_kind("my.photo.mask.jpg") == ("mask", "my.photo")
    assert companion_kind("photo.png") is None and companion_kind("mask.png") is None
    assert companion_kind(".mask.png") is None


def test_companions_are_found_beside_their_photo(tmp_path: Path) -> None:
    for name in ("a.jpg", "a.mask.png", "ab.mask.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    assert companions_of(tmp_path / "a.jpg") == {"mask": tmp_path / "a.mask.png"}
    assert companions_of(tmp_path / "b.png") == {}


def test_a_photo_waits_for_a_mask_dropped_within_its_settle_window(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settled: list[tuple[str, float]] = []
    lock = threading.Lock()

    def record(folder: WatchedFolder, paths: list[Path]) -> None:
        with lock:
            settled.extend((path.name, time.monotonic()) for path in paths)

    watcher = InboxWatcher([WatchedFolder("a", inbox, SETTLE)], record)
    watcher.start()
    try:
        photo(32, 24).save(inbox / "harbour.png")
        time.sleep(SETTLE * 0.6)
        two_bands(inbox / "harbour.mask.png", (32, 24))
        mask_at = time.monotonic()
        assert wait_until(lambda: bool(settled), 10)
        time.sleep(SETTLE * 2)  # the mask never settles as a job of its own
    finally:
        watcher.stop()
    assert [name for name, _ in settled] == ["harbour.png"]
    assert settled[0][1] >= mask_at + SETTLE * 0.9  # its window restarted with the mask


def test_the_daemon_pairs_a_photo_with_a_mask_dropped_after_it(tmp_path: Path) -> None:
    daemon = masked_daemon(tmp_path, settle=1.5)
    try:
        daemon.wait_ready()
        inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
        photo(48, 36).save(inbox / "harbour.png")
        time.sleep(0.5)
        two_bands(inbox / "harbour.mask.png", (24, 18))  # half size: resized, noted
        processed = inbox / "processed"
        assert wait_until(lambda: (processed / "harbour.png").exists(), 120), daemon.output()
        assert wait_until(lambda: (processed / "harbour.mask.png").exists(), 10)
        assert not (inbox / "harbour.mask.png").exists()
        manifest = json.loads((outbox / "harbour.json").read_text())
        assert manifest["mask"] == "harbour.mask.png"
        assert manifest["mask_resized"] == "24x18 to the photo's 48x36 (nearest)"
        assert [entry for entry in manifest["history"] if "photo" in entry]
        assert not (outbox / "harbour.mask.json").exists()  # never a job of its own
    finally:
        daemon.stop()


def test_a_photo_with_two_masks_is_refused_and_both_go_with_it(tmp_path: Path) -> None:
    # One of them was used, the first by name, without a word; the other stayed in the
    # inbox, later said to be "the mask of a photo named dual.* that is not here".
    daemon, inbox = poster_daemon(tmp_path)
    try:
        daemon.wait_ready()
        # Done once with one mask; a partial download of another is no second mask.
        two_bands(inbox / "dual.mask.png", (32, 24))
        two_bands(tmp_path / "dual.mask.webp", (32, 24)).rename(inbox / "dual.mask.webp.part")
        photo(32, 24).save(tmp_path / "dual.png")
        (tmp_path / "dual.png").rename(inbox / "dual.png")
        processed = inbox / "processed"
        assert wait_until(lambda: (processed / "dual.png").exists(), 60), daemon.output()
        assert wait_until(lambda: (processed / "dual.mask.png").exists(), 10)  # after it
        # The same photo and mask again, with a second mask now: no duplicate of that job.
        (inbox / "dual.mask.webp.part").rename(inbox / "dual.mask.webp")
        two_bands(inbox / "dual.mask.png", (32, 24))
        photo(32, 24).save(tmp_path / "dual.png")
        (tmp_path / "dual.png").rename(inbox / "dual.png")
        failed = inbox / "failed"
        assert wait_until(lambda: (failed / "dual.png.error.txt").exists(), 60), daemon.output()

        def left() -> list[str]:
            return [p.name for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")]

        # Neither mask stays behind (they follow the photo, whose reason is written first).
        assert wait_until(lambda: left() == [], 10), left()
    finally:
        daemon.stop()
    assert sorted(p.name for p in failed.iterdir()) == [
        "dual.mask.png", "dual.mask.webp", "dual.png", "dual.png.error.txt"
    ]  # fmt: skip
    said = (failed / "dual.png.error.txt").read_text()
    assert (
        "dual.png has 2 masks beside it (dual.mask.png, dual.mask.webp), and which one is "
        "meant cannot be told: keep one, and drop the photo again"
    ) in said, said
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["dual.json", "dual.png"]


def test_a_mask_dropped_after_its_photo_failed_for_want_of_it_brings_the_photo_back(
    tmp_path: Path,
) -> None:
    # The photo failed for good: the mask, dropped a few seconds late, stayed in the inbox
    # said to be "the mask of a photo named harbour.* that is not here".
    daemon = masked_daemon(tmp_path, settle=0.3)
    try:
        daemon.wait_ready()
        inbox = tmp_path / "inbox"
        photo(48, 36).save(tmp_path / "harbour.png")
        (tmp_path / "harbour.png").rename(inbox / "harbour.png")
        (inbox / "harbour.png.xmp").write_text("<x:xmpmeta/>\n")
        note = inbox / "failed" / "harbour.png.error.txt"
        assert wait_until(note.exists, 60), daemon.output()
        said = note.read_text()
        assert "MissingCompanion: harbour.png: gatys has style_mask set but this photo" in said
        assert (
            "then: drop harbour.mask.png into the inbox, and this photo comes back from here "
            "to run with it"
        ) in said
        assert wait_until(lambda: (inbox / "failed" / "harbour.png.xmp").exists(), 10)

        two_bands(tmp_path / "harbour.mask.png", (48, 36)).rename(inbox / "harbour.mask.png")
        processed = inbox / "processed"
        assert wait_until(lambda: (processed / "harbour.png").exists(), 120), daemon.output()
        # Its mask, and its sidecar, which came back with it (they follow the photo).
        followers = [processed / "harbour.mask.png", processed / "harbour.png.xmp"]
        assert wait_until(lambda: all(path.exists() for path in followers), 10)
        assert sorted(p.name for p in (inbox / "failed").iterdir()) == []
        manifest = json.loads((tmp_path / "outbox" / "harbour.json").read_text())
        assert manifest["mask"] == "harbour.mask.png"
        with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
            jobs = db.execute("SELECT id, state, attempts FROM jobs").fetchall()
        assert [state for _, state, _ in jobs] == ["done"]  # the failed job, tried again
    finally:
        daemon.stop()
    came = [line for line in daemon.output().splitlines() if "came for" in line]
    assert len(came) == 1, daemon.output()
    assert (
        "harbour.mask.png came for harbour.png, which failed for want of its mask: back from "
        "failed/ to run with it"
    ) in came[0]


def test_a_lone_mask_brings_back_no_photo_that_failed_for_another_reason(tmp_path: Path) -> None:
    daemon, inbox = poster_daemon(tmp_path)
    try:
        daemon.wait_ready()
        (inbox / "dud.png").write_bytes(b"not a picture at all")
        assert wait_until(lambda: (inbox / "failed" / "dud.png.error.txt").exists(), 60)
        assert wait_until(lambda: not (inbox / "dud.png").exists(), 10)  # moved after its note
        two_bands(tmp_path / "dud.mask.png", (32, 24)).rename(inbox / "dud.mask.png")
        time.sleep(1.5)  # settled, and nothing to bring back
        assert (inbox / "failed" / "dud.png").exists() and (inbox / "dud.mask.png").exists()
    finally:
        daemon.stop()
    assert "came for" not in daemon.output()


def test_a_missing_companion_crosses_processes_as_itself() -> None:
    # Its (kind, message) signature did not unpickle, and a Ray batch's came back as a
    # PluginError, retried: a plugin's own BadInput of another signature too.
    from stylebox.daemon.ray_engine import _portable, _restored

    error = MissingCompanion("h.png: no mask", kind="mask")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.kind) == (MissingCompanion, "h.png: no mask", "mask")

    class Unreadable(BadInput):
        def __init__(self, message: str, page: int) -> None:
            super().__init__(message)

    outcomes: list = [error, Unreadable("p.png: page 3 is blank", 3)]
    restored = [_restored(item) for item in _portable(outcomes, [None, None])]  # type: ignore[list-item]
    assert [(type(r), str(r)) for r in restored] == [
        (MissingCompanion, "h.png: no mask"),
        (BadInput, "p.png: page 3 is blank"),
    ]
    assert restored[0].kind == "mask"  # type: ignore[union-attr]
