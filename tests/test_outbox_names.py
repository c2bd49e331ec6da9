"""Output names: every printable character of the input's name survives; only what is unsafe
as a file name (separators, controls, invisible characters, leading dots, excess length)
does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from stylebox.daemon.outbox import MAX_STEM_BYTES, NAME_MAX, Outbox, safe_folder, safe_stem

#: Emoji joined by zero-width joiners; a Persian word with a zero-width non-joiner in it.
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


@pytest.mark.parametrize(
    ("filename", "stem"),
    [
        ("東京 Straße ü.png", "東京 Straße ü"),
        ("Ελληνικά — ǅemal №5 (copy).JPG", "Ελληνικά — ǅemal №5 (copy)"),
        # combining marks, and the joiners that emoji and Persian are written with
        (f"e\u0301 {FAMILY} {PERSIAN}.webp", f"e\u0301 {FAMILY} {PERSIAN}"),
        ("\u3000全角\u00a0space.png", "\u3000全角\u00a0space"),  # spaces of any kind stay
        ("a:b*c?d<e>f|g\"h'.png", "a:b*c?d<e>f|g\"h'"),  # allowed on the file system
        ("photo.tar.gz", "photo.tar"),
        ("no extension", "no extension"),
    ],
)
def test_printable_characters_are_kept(filename: str, stem: str) -> None:
    assert safe_stem(filename) == stem


@pytest.mark.parametrize(
    ("filename", "stem"),
    [
        ("a/b.png", "a_b"),
        ("..\\..\\etc\\passwd", "_.._etc_passwd"),  # taken as data, never as a path
        ("dir\\v1.2\\photo", "dir_v1.2_photo"),  # a dot before a separator is no extension
        ("line\nbreak\ttab\r.png", "line_break_tab_"),
        ("nul\x00esc\x1bdel\x7fnel\x85.png", "nul_esc_del_nel_"),
        ("para\u2029line\u2028.png", "para_line_"),
        ("\u202egnp.exe", "_gnp"),  # a right-to-left override would disguise the name
        ("zero\u200bwidth\ufeff.png", "zero_width_"),
        (".hidden.png", "hidden"),
        ("...dots.png", "dots"),
        (".bashrc", "bashrc"),
        ("...png", "png"),
        (". .png", "image"),
        ("", "image"),
        ("..", "image"),
        ("   .png", "image"),
    ],
)
def test_separators_controls_and_leading_dots_are_not(filename: str, stem: str) -> None:
    assert safe_stem(filename) == stem


def test_long_names_are_cut_in_bytes_on_a_character_boundary() -> None:
    cjk = "東" * 200  # 600 bytes of UTF-8 in 200 characters
    stem = safe_stem(cjk + ".png")
    assert len(stem.encode()) <= MAX_STEM_BYTES
    assert stem == "東" * (MAX_STEM_BYTES // 3)  # whole characters only, as many as fit
    mixed = safe_stem("a" + "ü" * 300 + ".png")  # 1 + 2n bytes: a boundary falls mid-ü
    assert mixed == "a" + "ü" * ((MAX_STEM_BYTES - 1) // 2)
    assert safe_stem("x" * 1000) == "x" * MAX_STEM_BYTES
    assert safe_stem("ü" * 50) == "ü" * 50  # short names are whole


def test_every_file_named_after_a_long_stem_fits_the_file_system(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    name = "東京" * 100 + ".png"
    names = outbox.reserve(name)
    assert names.stem == safe_stem(name)
    longest = f".{names.stem}-99999.steps.XXXXXXXX.tmp"  # an atomic write's temp file
    assert len(longest.encode()) <= NAME_MAX
    with outbox.writing(names) as outputs:
        outputs.write_result(Image.new("RGB", (2, 2)), None)
        outputs.write_manifest({"ok": True})
    second = outbox.reserve(name)
    assert second.stem == f"{names.stem}-2"
    with outbox.writing(second) as outputs:
        outputs.write_result(Image.new("RGB", (2, 2)), None)
        outputs.write_manifest({"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{names.stem}.png", f"{names.stem}.json", f"{names.stem}-2.png", f"{names.stem}-2.json"]
    )


def test_a_unicode_name_reaches_the_outbox_whole(tmp_path: Path) -> None:
    names = Outbox(tmp_path).reserve("東京 Straße ü.png")
    assert names.result == tmp_path / "東京 Straße ü.png"
    assert names.manifest.name == "東京 Straße ü.json"
    assert names.steps.name == "東京 Straße ü.steps"


@pytest.mark.parametrize(
    ("relative", "folder"),
    [
        ("2024/june", "2024/june"),
        ("", ""),
        ("./a/../b", "a/b"),  # never out of the outbox
        ("Ünïcode dir/.hidden\tname", "Ünïcode dir/hidden_name"),
    ],
)
def test_sub_folders_are_made_safe_part_by_part(relative: str, folder: str) -> None:
    assert safe_folder(relative) == folder


def test_a_name_in_a_sub_folder_is_free_of_the_same_name_elsewhere(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out")
    assert outbox.reserve("a.png").stem == "a"
    first = outbox.reserve("a.png", "2024/june")
    assert first.stem == "2024/june/a" and first.home == tmp_path / "out" / "2024" / "june"
    assert first.result == first.home / "a.png" and first.home.is_dir()
    assert outbox.reserve("a.png", "2024/june").stem == "2024/june/a-2"
    # A job that fails for good takes its sub-folders with it, unless another's name is in one.
    outbox.discard("2024/june/a")
    assert first.home.is_dir()  # 2024/june/a-2 is still reserved there
    outbox.discard("2024/june/a-2")
    assert not (tmp_path / "out" / "2024").exists() and (tmp_path / "out").is_dir()


def test_a_sub_folder_another_process_emptied_away_is_made_again(tmp_path: Path) -> None:
    # A daemon and a batch on one outbox: one's discard removes a folder it sees empty,
    # where the other has reserved a name it has not written yet. The write must not fail.
    mine, theirs = Outbox(tmp_path / "out"), Outbox(tmp_path / "out")
    names = mine.reserve("a.png", "2024/june")
    theirs.reserve("b.png", "2024/june")
    theirs.discard("2024/june/b")
    assert not names.home.exists()
    with mine.writing(names) as pending:
        pending.write_result(Image.new("RGB", (8, 8)), None)
        pending.write_manifest({"input": {"name": "a.png"}})
    assert names.result.is_file() and names.manifest.is_file()
