"""`stylebox batch`: the same journal and pipeline over a folder, run in the foreground."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import installed_site, photo
from daemon_helpers import Daemon, gated_env, wait_until, write_config
from PIL import Image

CONFIG = """
state_dir = "state"
[[batch]]
name = "nightly"
source = "library"
outbox = "stylised"
plugin = "{plugin}"
params = {params}
"""


def setup(tmp_path: Path, count: int, plugin: str = "posterize", params: str = "{ bits = 2 }"):
    library = tmp_path / "library"
    (library / "2026" / "june").mkdir(parents=True)
    for i in range(count):
        folder = library if i % 2 else library / "2026" / "june"
        photo(24, 16, seed=i).save(folder / f"img{i:03d}.png")
    (library / ".thumbs.db").write_bytes(b"ignored")
    config = tmp_path / "stylebox.toml"
    config.write_text(CONFIG.format(plugin=plugin, params=params))
    return config, library


def batch(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(("setting", "said"), [("stylised", "batch 'nightly' outbox"),
                                               ("state", "state_dir")])  # fmt: skip
def test_a_batch_whose_folders_cannot_be_made_is_refused_in_one_line(
    tmp_path: Path, setting: str, said: str
) -> None:
    config, _ = setup(tmp_path, 2)
    unmakeable = f"/sys/stylebox-test/{setting}"  # refused to root as well
    config.write_text(config.read_text().replace(f'"{setting}"', f'"{unmakeable}"'))
    result = batch(config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"stylebox: config error: {said} {unmakeable} cannot be made a folder: "
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_a_dry_run_lists_one_image_a_line_whatever_its_name(tmp_path: Path) -> None:
    # A name holding a line break was printed as it is: two lines, neither of them a path.
    config, library = setup(tmp_path, 1)
    photo(24, 16, seed=5).save(library / "two\nlines.png")
    photo(24, 16, seed=6).save(library / "one\\nline.png")  # a backslash, then an n
    dry = batch(config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.splitlines()) == [
        str(library / "2026" / "june" / "img000.png"),
        str(library / "one\\\\nline.png"),
        str(library / "two\\nlines.png"),
    ]


def test_batch_runs_once_leaves_inputs_and_skips_what_is_done(tmp_path: Path) -> None:
    config, library = setup(tmp_path, 6)
    dry = batch(config, "--dry-run")
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 6
    assert "6 of 6 image(s) would run" in dry.stderr

    first = batch(config)
    assert first.returncode == 0, first.stderr
    assert len(list((tmp_path / "stylised").rglob("*.json"))) == 6
    assert len(list(library.rglob("*.png"))) == 6  # the library is never touched

    photo(24, 16, seed=99).save(library / "new.png")
    assert batch(config, "--dry-run").stdout.splitlines() == [str(library / "new.png")]
    second = batch(config)
    assert second.returncode == 0
    manifests = list((tmp_path / "stylised").rglob("*.json"))
    assert len(manifests) == 7
    names = sorted(json.loads(m.read_text())["input"]["name"] for m in manifests)
    assert names == sorted([f"img{i:03d}.png" for i in range(6)] + ["new.png"])
    # The outbox mirrors the library's folders.
    assert sorted(str(m.relative_to(tmp_path / "stylised")) for m in manifests) == [
        "2026/june/img000.json", "2026/june/img002.json", "2026/june/img004.json",
        "img001.json", "img003.json", "img005.json", "new.json",
    ]  # fmt: skip


def test_a_result_not_in_the_outbox_is_made_again(tmp_path: Path) -> None:
    # The journal alone said what was done: a deleted result, a new outbox or a new format
    # gave nothing ("done_before": 16, exit 0, the new outbox never made).
    config, library = setup(tmp_path, 3)
    dry = batch(config, "--dry-run")
    assert "3 of 3 image(s) would run" in dry.stderr
    assert not (tmp_path / "state").exists()  # a dry run changes nothing, nor makes state
    assert batch(config).returncode == 0
    out = tmp_path / "stylised"
    (out / "img001.png").unlink()
    (out / "img001.json").unlink()
    assert batch(config, "--dry-run").stdout.splitlines() == [str(library / "img001.png")]
    again = batch(config)
    assert again.returncode == 0, again.stderr
    assert "queued again: nothing of its result is in the outbox" in again.stderr
    (finished,) = [json.loads(line) for line in again.stderr.splitlines() if "finished" in line]
    assert (finished["done"], finished["done_before"]) == (1, 2)
    assert (out / "img001.png").is_file() and not (out / "img001-2.png").exists()
    # A result taken away on its own (an inbox on the outbox, an archive) leaves its
    # manifest, which stands for it: it was made again each night, under a new name.
    (out / "img001.png").rename(tmp_path / "archived.png")
    assert batch(config, "--dry-run").stdout == ""

    config.write_text(config.read_text().replace('"stylised"', '"elsewhere"'))
    assert batch(config).returncode == 0
    assert sorted(p.name for p in (tmp_path / "elsewhere").rglob("*.png")) == [
        "img000.png", "img001.png", "img002.png"
    ]  # fmt: skip
    config.write_text(config.read_text() + '[batch.output]\nformat = "jpeg"\n')
    assert batch(config).returncode == 0  # the PNGs and their manifests keep their names
    assert sorted(p.name for p in (tmp_path / "elsewhere").glob("img001*")) == [
        "img001-2.jpg", "img001-2.json", "img001.json", "img001.png"
    ]  # fmt: skip
    assert batch(config, "--dry-run").stdout == ""


def test_a_folder_that_cannot_be_read_is_said_and_fails_the_batch(tmp_path: Path) -> None:
    """A sub-folder whose files cannot be listed: glob passed over it without a word, and
    the batch ended 'finished', exit 0, its photos never run. Run as a user without root's
    override of file permissions (``setpriv`` drops it), as the tests run as root."""
    config, library = setup(tmp_path, 2)
    locked = library / "locked"
    locked.mkdir()
    photo(24, 16, seed=9).save(locked / "x.png")
    peek = library / "peek"  # listed, but not to be entered (chmod -R 644): it broke the scan
    peek.mkdir()
    photo(24, 16, seed=8).save(peek / "y.png")
    locked.chmod(0)
    peek.chmod(0o644)
    try:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                   "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)]  # fmt: skip
        dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=300)
        assert dry.returncode == 0, dry.stderr
        assert "2 of 2 image(s) would run; 2 folder(s) that cannot be read, left out" in dry.stderr
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
        peek.chmod(0o755)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    said = [line["msg"] for line in lines if line.get("event") == "unreadable"]
    assert [text.split(" cannot be read (PermissionError: ")[0] for text in said] == [
        "folder locked",
        "folder peek",
    ], said
    assert all(text.endswith("): its photos are left out of the batch") for text in said), said
    (finished,) = [line for line in lines if line["msg"] == "batch finished"]
    assert (finished["done"], finished["unreadable_folders"]) == (2, 2)


def test_a_renamed_batch_keeps_its_jobs_and_runs_nothing_again(tmp_path: Path) -> None:
    # Renamed in the config, same source: every photo was stylised again, beside its
    # identical result (img000-2.png...), and the dry run said so.
    from stylebox.daemon.journal import Journal

    config, _ = setup(tmp_path, 3)
    assert batch(config).returncode == 0
    stylised = tmp_path / "stylised"
    before = sorted(p.relative_to(stylised) for p in stylised.rglob("*"))
    config.write_text(config.read_text().replace('name = "nightly"', 'name = "photos"'))
    command = [sys.executable, "-m", "stylebox.cli", "batch", "photos", "--config", str(config)]
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=300)
    assert "0 of 3 image(s) would run (not: 3 done before)" in dry.stderr, dry.stderr
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "batch:nightly is now batch:photos: its 3 job(s) go with it" in done.stderr
    assert sorted(p.relative_to(stylised) for p in stylised.rglob("*")) == before
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    assert [row.state for row in journal.jobs("batch:photos")] == ["done"] * 3
    assert journal.jobs("batch:nightly") == []
    journal.close()


def test_a_file_that_could_not_be_read_stays_one_failed_job_until_it_is_done(
    tmp_path: Path,
) -> None:
    """An unreadable file fails each run as one job (each run added one more), and once
    readable is done as that job: no failure left listed for a file that is done."""
    from stylebox.daemon.journal import Journal

    config, library = setup(tmp_path, 1)
    locked = library / "locked.png"
    photo(24, 16, seed=7).save(locked)
    locked.chmod(0)
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    command = [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)]
    try:
        for _ in range(2):
            run = subprocess.run(
                [*unprivileged, *command], capture_output=True, text=True, timeout=300
            )
            assert run.returncode == 1, run.stderr
    finally:
        locked.chmod(0o644)
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (failed,) = journal.jobs("batch:nightly", "failed")
    assert "cannot read locked.png" in (failed.error_message or ""), failed
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert journal.jobs("batch:nightly", "failed") == []
    assert journal.get(failed.id).state == "done"
    journal.close()
    assert (tmp_path / "stylised" / "locked.png").is_file()


def test_a_renamed_batch_inside_another_batchs_folder_keeps_its_jobs(tmp_path: Path) -> None:
    # Renamed, a batch over library/2026/june lost its jobs to a batch over the whole
    # library that ran first: the renamed one then stylised them again (a-2.png).
    from stylebox.daemon.journal import Journal

    config, _ = setup(tmp_path, 4)
    june = '[[batch]]\nname = "{}"\nsource = "library/2026/june"\noutbox = "out-june"\n'
    config.write_text(
        config.read_text()
        + june.format("juneold")
        + 'plugin = "posterize"\nparams = { bits = 3 }\n'
    )

    def run(name: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "stylebox.cli", "batch", name, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert run("juneold").returncode == 0
    config.write_text(config.read_text().replace('"juneold"', '"june"'))
    assert run("nightly").returncode == 0  # the whole library's batch: not its jobs
    assert "is now batch:nightly" not in run("nightly").stderr
    again = run("june")
    assert "batch:juneold is now batch:june: its 2 job(s) go with it" in again.stderr
    assert sorted(p.name for p in (tmp_path / "out-june").glob("*.png")) == [
        "img000.png",
        "img002.png",
    ]
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    assert [row.state for row in journal.jobs("batch:june")] == ["done", "done"]
    journal.close()


def test_a_recursive_batch_keeps_same_names_of_two_folders_apart(tmp_path: Path) -> None:
    config, library = setup(tmp_path, 0)
    for folder, seed in (("", 1), ("2025", 2), ("2025/.trash", 3), ("broken", 4)):
        (library / folder).mkdir(exist_ok=True)
        photo(24, 16, seed=seed).save(library / folder / "a.png")
    (library / "broken" / "a.png").write_bytes(b"not an image")
    done = batch(config)
    assert done.returncode == 1  # the broken one failed
    stylised = tmp_path / "stylised"
    results = sorted(str(p.relative_to(stylised)) for p in stylised.rglob("*") if p.is_file())
    assert results == ["2025/a.json", "2025/a.png", "a.json", "a.png"]
    assert not (stylised / "broken").exists()  # a failure leaves no empty folder
    manifest = json.loads((stylised / "2025" / "a.json").read_text())
    assert manifest["output"]["result"] == "a.png" and manifest["input"]["name"] == "a.png"
    # The log lines tell them apart too: each says where under the source its file is.
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {line["file"] for line in lines if line.get("event") == "done"} == {
        "a.png",
        "2025/a.png",
    }
    (failed,) = [line for line in lines if line.get("event") == "failed"]
    assert failed["file"] == "broken/a.png"


def test_a_photo_whose_bytes_another_file_of_the_batch_has_is_said_and_counted(
    tmp_path: Path,
) -> None:
    # The dry run said 3 would run, the run "files: 3, done: 2" and exit 0, the copy's only
    # trace a duplicate event naming the other file.
    config, library = setup(tmp_path, 2)
    shutil.copy(library / "img001.png", library / "2026" / "img001.png")
    dry = batch(config, "--dry-run")
    assert "2 of 3 image(s) would run (not: 1 the same bytes as another file)" in dry.stderr
    run = batch(config)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    (copy,) = [line for line in lines if line.get("event") == "duplicate"]
    assert (copy["file"], copy["same_as"]) == ("img001.png", "2026/img001.png")  # sorted first
    assert "not stylised again" in copy["msg"]
    (finished,) = [line for line in lines if line.get("msg") == "batch finished"]
    assert (finished["files"], finished["done"], finished["done_before"]) == (3, 2, 1)
    dry = batch(config, "--dry-run")  # it said "0 of 3" and nothing of why
    assert "0 of 3 image(s) would run (not: 2 done before; 1 the same bytes as another file)" in (
        dry.stderr
    )
    # Run again: each file finds its own earlier job, counted and not said (each was
    # called a copy of itself); the copy is said again.
    again = batch(config)
    lines = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    said = [(line["file"], line["same_as"]) for line in lines if line.get("event") == "duplicate"]
    assert said == [("img001.png", "2026/img001.png")]
    (finished,) = [line for line in lines if line.get("msg") == "batch finished"]
    assert (finished["files"], finished["done"], finished["done_before"]) == (3, 0, 3)


def test_a_dry_run_lists_what_the_run_would_do(tmp_path: Path) -> None:
    # A file changed in place, and then new settings: the journal's done paths are not
    # what decides, their bytes and settings are.
    config, library = setup(tmp_path, 3)
    assert batch(config).returncode == 0
    changed = library / "img001.png"
    photo(24, 16, seed=50).save(changed)
    assert batch(config, "--dry-run").stdout.splitlines() == [str(changed)]
    assert batch(config).returncode == 0
    assert batch(config, "--dry-run").stdout.splitlines() == []
    config.write_text(config.read_text().replace("bits = 2", "bits = 3"))
    dry = batch(config, "--dry-run")
    assert len(dry.stdout.splitlines()) == 3 and "3 of 3 image(s) would run" in dry.stderr


def test_files_kept_beside_the_pictures_are_skipped_not_failed(tmp_path: Path) -> None:
    # notes.txt and an XMP sidecar failed as 'not an image' on every run (exit 1 each
    # night); a picture under another name runs, a damaged one named .jpg still fails.
    config, library = setup(tmp_path, 1)
    (library / "notes.txt").write_text("shot on the 3rd\n")
    (library / "contact sheet.pdf").write_bytes(b"%PDF-1.4\n")  # Pillow writes PDFs, reads none
    (library / "clip.mpg").write_bytes(b"\x00\x00\x01\xb3" + bytes(12))  # Pillow knows MPEG
    (library / "2026" / "june" / "img000.xmp").write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    photo(24, 16, seed=7).save(library / "scan.dat", format="PNG")
    (library / "fake.jpg").write_text("not a picture")
    # Links are not followed (they were skipped without a word).
    (library / "link.png").symlink_to(library / "scan.dat")
    (library / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    # A photo's mask is read by its job, as in an inbox; it was a job of its own.
    Image.new("RGB", (24, 16), "red").save(library / "scan.mask.png")
    Image.new("RGB", (24, 16), "red").save(library / "gone.mask.png")
    (library / ".cache").mkdir()  # hidden and temporary names are said, folders not entered
    photo(24, 16, seed=8).save(library / ".cache" / "a.png")
    photo(24, 16, seed=9).save(library / "~$draft.png")
    dry = batch(config, "--dry-run")
    assert "3 of 3 image(s) would run" in dry.stderr, dry.stderr
    assert "skipped 3 hidden or temporary name(s): .cache, .thumbs.db, ~$draft.png" in dry.stderr
    assert "skipped 1 mask(s), which their photos' jobs read: scan.mask.png" in dry.stderr
    assert "skipped 1 mask(s) without their photo, which no job reads: gone.mask.png" in dry.stderr
    assert (
        "skipped 4 file(s) that are not pictures: 2026/june/img000.xmp, clip.mpg, "
        "contact sheet.pdf, notes.txt"
    ) in dry.stderr
    assert (
        "skipped 2 symbolic link(s), which a batch does not follow: elsewhere, link.png"
    ) in dry.stderr
    run = batch(config)
    assert run.returncode == 1, run.stderr  # fake.jpg
    (finished,) = [json.loads(line) for line in run.stderr.splitlines() if "batch finished" in line]
    assert (finished["files"], finished["done"], finished["failed"]) == (3, 2, 1)
    assert (tmp_path / "stylised" / "scan.png").is_file()


def test_a_batch_fed_by_another_batchs_outbox_takes_only_its_results(tmp_path: Path) -> None:
    # It stylised the upstream batch's animations and every snapshot, as an inbox did once.
    config, _ = setup(tmp_path, 0)
    config.write_text(
        config.read_text() + '\n[[batch]]\nname = "again"\nsource = "stylised"\noutbox = "twice"\n'
        'plugin = "posterize"\n'
    )
    upstream = tmp_path / "stylised"
    for seed, folder in enumerate((upstream, upstream / "2026")):  # as gatys writes them
        (folder / "a.steps").mkdir(parents=True)
        photo(24, 16, seed=seed).save(folder / "a.png")
        photo(24, 16, seed=seed + 2).save(folder / "a.steps" / "0025.png")
        photo(24, 16, seed=seed + 4).save(folder / "a.gif")
        (folder / "a.json").write_text("{}")
        (folder / "a.loss.svg").write_text("<svg/>")
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "again", "--config", str(config),
         "--dry-run"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.stdout.splitlines() == [str(upstream / "2026" / "a.png"), str(upstream / "a.png")]
    assert "2 of 2 image(s) would run" in result.stderr, result.stderr
    assert (
        "skipped 8 file(s) that [[batch]] nightly writes beside its results: 2026/a.gif, "
        "2026/a.json, 2026/a.loss.svg, 2026/a.steps/0025.png, a.gif and 3 more"
    ) in result.stderr, result.stderr


def test_each_file_of_failing_bytes_fails_on_its_own_in_every_run(tmp_path: Path) -> None:
    # Two empty files: the second took the first's failed job over, and from the next run on
    # one of them was "done before", its failure unsaid; status named both "zero.png".
    config, library = setup(tmp_path, 1)
    for folder in ("a", "b"):
        (library / folder).mkdir()
        (library / folder / "zero.png").write_bytes(b"")
    # A name that is not UTF-8 (no text for the journal's key).
    os.mkdir(library / "c")
    Path(os.fsdecode(bytes(library / "c") + b"/caf\xe9.png")).write_bytes(b"")
    (library / "d").mkdir()
    (library / "d" / "t.png").write_text("no picture\n")
    for run in range(2):
        result = batch(config)
        assert result.returncode == 1, result.stderr
        lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        (finished,) = [line for line in lines if line["msg"] == "batch finished"]
        failed = {line["file"] for line in lines if line["msg"] == "failed"}
        assert failed == {"a/zero.png", "b/zero.png", "c/caf\ufffd.png", "d/t.png"}
        assert (finished["failed"], finished["done_before"]) == (4, run)  # img000, once done
        dry = subprocess.run(  # as the run does: each of them again (paths as they are)
            [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config),
             "--dry-run"],
            capture_output=True, timeout=300,
        )  # fmt: skip
        assert b"4 of 5 image(s) would run" in dry.stderr, dry.stderr
        assert b"/caf\xe9.png\n" in dry.stdout
    status = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    said = [
        line.split(":")[0].split()[-1] for line in status.stdout.splitlines() if "failed #" in line
    ]
    assert sorted(said) == ["a/zero.png", "b/zero.png", "c/caf\ufffd.png", "d/t.png"]
    # A file renamed since takes its old job over: no failure is left without a file.
    (library / "d" / "t.png").rename(library / "d" / "renamed.png")
    assert batch(config).returncode == 1
    status = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "0 running, 1 done, 4 failed" in status.stdout, status.stdout
    assert "d/renamed.png" in status.stdout and "d/t.png" not in status.stdout
    # The batch dropped from the config: its failures still named under their sub-folders.
    config.write_text(config.read_text().replace('"nightly"', '"other"'))
    status = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "batch:nightly: 0 queued, 0 running, 1 done, 4 failed" in status.stdout, status.stdout
    said = [
        line.split(":")[0].split()[-1] for line in status.stdout.splitlines() if "failed #" in line
    ]
    assert sorted(said) == ["a/zero.png", "b/zero.png", "c/caf\ufffd.png", "d/renamed.png"]


def test_an_earlier_runs_failure_does_not_fail_the_next(tmp_path: Path) -> None:
    # Under a nightly timer, a bad file removed after its failure must not mark every
    # later run failed; the figures logged are this run's.
    config, library = setup(tmp_path, 2)
    (library / "notes.png").write_text("not an image")
    first = batch(config)
    assert first.returncode == 1, first.stderr
    (library / "notes.png").unlink()
    photo(24, 16, seed=60).save(library / "new.png")
    second = batch(config)
    assert second.returncode == 0, second.stderr
    (finished,) = [
        json.loads(line) for line in second.stderr.splitlines() if "batch finished" in line
    ]
    assert (finished["files"], finished["done"], finished["failed"]) == (3, 1, 0)
    assert finished["done_before"] == 2


def test_a_killed_batch_continues_where_it_stopped(tmp_path: Path) -> None:
    style = tmp_path / "style.png"
    photo(40, 40, seed=4).save(style)
    config, _ = setup(
        tmp_path, 6, "gatys", f'{{ style = "{style}", size = 48, steps = 40, snapshot_every = 0 }}'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    outputs = tmp_path / "stylised"
    assert wait_until(lambda: len(list(outputs.rglob("*.json"))) >= 2, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(outputs.rglob("*.json")))
    assert done_before < 6

    began = time.monotonic()
    rest = batch(config)
    assert rest.returncode == 0, rest.stderr
    assert len(list(outputs.rglob("*.json"))) == 6  # each image exactly once
    assert time.monotonic() - began < 120


def test_unknown_batch_name_is_a_config_error(tmp_path: Path) -> None:
    config, _ = setup(tmp_path, 1)
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "weekly", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "no [[batch]] named 'weekly'" in result.stderr


def test_a_deterministic_failure_is_not_retried(tmp_path: Path) -> None:
    """A gatys job that paints nothing fails at once: trying again would do the same."""
    from stylebox.daemon.journal import Journal

    style = tmp_path / "style.png"
    photo(40, 40, seed=4).save(style)
    params = f'{{ style = "{style}", size = 32, steps = 10, learning_rate = 1e-9 }}'
    config, _ = setup(tmp_path, 1, "gatys", params)
    result = batch(config)
    assert result.returncode == 1, result.stderr
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly", "failed")
    journal.close()
    assert row.attempts == 1 and row.error_class == "PermanentFailure"
    assert "loss fell only from" in (row.error_message or "")
    assert not list((tmp_path / "stylised").rglob("*.json"))


def test_a_photo_failed_under_earlier_params_is_that_job_tried_again(tmp_path: Path) -> None:
    """The params mended (the failure said how), the next run tries the failed job again
    under the new ones: one job for the photo, done, and no failure left in status (a new
    job ran beside it, and the old failure stayed listed and counted for good)."""
    from stylebox.daemon.journal import Journal

    style = tmp_path / "style.png"
    photo(40, 40, seed=4).save(style)
    mended = f'{{ style = "{style}", size = 32, steps = 10 }}'
    config, _ = setup(tmp_path, 1, "gatys", mended.replace(" }", ", learning_rate = 1e-9 }"))
    assert batch(config).returncode == 1
    config.write_text(CONFIG.format(plugin="gatys", params=mended))
    again = batch(config)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines if line.get("event") == "adopted"] == ["adopted"]
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly")
    journal.close()
    assert (row.id, row.state) == (1, "done")
    said = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "batch:nightly: 0 queued, 0 running, 1 done, 0 failed" in said, said


FLAKY = """
import time
from pathlib import Path

from stylebox.plugins.api import Cancelled, ConfigError, Plugin, PluginError, PluginParams

LOG = Path(__file__).with_name("attempts.log")


class Flaky(Plugin):
    name = "flaky"

    class Params(PluginParams):
        failures: int = 1
        hang: bool = False
        config_error: bool = False

    def process(self, image, job):
        with LOG.open("a") as log:
            log.write(f"{time.time()}\\n")
        if self.params.config_error:
            raise ConfigError("the lookup table is not where the params say")
        while self.params.hang:
            if job.cancelled:
                raise Cancelled("stopped before step 1")
            time.sleep(0.01)
        tries = len(LOG.read_text().splitlines())
        if tries <= self.params.failures:
            raise PluginError(f"flaky failure {tries}")
        return image
"""


def flaky_site(tmp_path: Path) -> Path:
    """A folder that, on PYTHONPATH, installs the ``flaky`` plugin."""
    entry = "[stylebox.plugins]\nflaky = flaky_plugin:Flaky\n"
    return installed_site(tmp_path, "flaky", entry, {"flaky_plugin.py": FLAKY})


def site_env(site: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }


def flaky_run(
    tmp_path: Path, params: str, settings: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[float]]:
    """One image through a plugin that fails its first ``failures`` tries (or with
    ``hang``, runs until cancelled), with max_attempts = 3 and a first retry 0.5 s later;
    returns the run and each try's start."""
    site = flaky_site(tmp_path)
    config, _ = setup(tmp_path, 1, "flaky", params)
    config.write_text(
        config.read_text()
        + f"max_attempts = 3\n{settings}\n[daemon]\nretry_backoff_seconds = 0.5\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=site_env(site),
    )  # fmt: skip
    starts = [float(line) for line in (site / "attempts.log").read_text().splitlines()]
    return result, starts


def test_a_plugin_fault_is_retried_and_the_retry_can_succeed(tmp_path: Path) -> None:
    from stylebox.daemon.journal import Journal

    result, starts = flaky_run(tmp_path, "{ failures = 1 }")
    assert result.returncode == 0, result.stderr
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly")
    journal.close()
    assert row.state == "done" and row.attempts == 2
    assert len(starts) == 2 and starts[1] - starts[0] >= 0.5


def test_the_bar_counts_a_job_when_it_ends_not_when_its_first_try_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    import stylebox.daemon.batch as batch_module

    monkeypatch.syspath_prepend(str(flaky_site(tmp_path)))
    config, _ = setup(tmp_path, 1, "flaky", "{ failures = 1 }")
    config.write_text(config.read_text() + "\n[daemon]\nretry_backoff_seconds = 0.1\n")
    advanced: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def bar(label: str, total: int) -> Any:
        yield lambda ended, failed=0: advanced.append((ended, failed))

    monkeypatch.setattr(batch_module, "count_bar", bar)
    assert batch_module.run_batch(config, "nightly") == 0
    assert sum(ended for ended, _ in advanced) == 1  # once, when its retry was done


def test_max_attempts_is_the_number_of_tries_with_doubling_backoff(tmp_path: Path) -> None:
    """max_attempts = 3: three tries in all, the second 0.5 s after the first, the third
    1 s after the second (retry_backoff_seconds * 2 ** (attempts - 1))."""
    from stylebox.daemon.journal import Journal

    result, starts = flaky_run(tmp_path, "{ failures = 99 }")
    assert result.returncode == 1, result.stderr
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly")
    journal.close()
    assert row.state == "failed" and row.attempts == 3
    assert row.error_message == "flaky failure 3"
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 0.5 and starts[2] - starts[1] >= 1.0
    # The journal's last backoff: set when the second try failed, 1 s on from then.
    assert 1.0 <= row.not_before - starts[1] < 1.5
    assert row.not_before <= starts[2]


def only_job(tmp_path: Path) -> Any:
    """The batch's one job, as the journal has it."""
    from stylebox.daemon.journal import Journal

    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly")
    journal.close()
    return row


def test_a_job_outliving_timeout_seconds_is_cancelled_and_counts_as_a_try(tmp_path: Path) -> None:
    """timeout_seconds cancels a job; unlike a stop (a drain), that counts as a failed try:
    retried with backoff, then failed with the reason."""

    result, starts = flaky_run(tmp_path, "{ hang = true }", "timeout_seconds = 0.3")
    assert result.returncode == 1, result.stderr
    row = only_job(tmp_path)
    assert row.state == "failed" and row.attempts == 3 and len(starts) == 3
    assert row.error_class == "PluginError"
    assert row.error_message == "timed out after 0.3 s (stopped before step 1)"


def test_a_config_error_raised_while_processing_is_retried_as_a_plugin_fault(
    tmp_path: Path,
) -> None:
    """Only a ConfigError before any work (config, plugin start-up) refuses the config."""

    result, starts = flaky_run(tmp_path, "{ config_error = true }")
    assert result.returncode == 1, result.stderr
    row = only_job(tmp_path)
    assert row.state == "failed" and row.attempts == 3 and len(starts) == 3
    assert row.error_class == "PluginError"
    assert row.error_message == "ConfigError: the lookup table is not where the params say"


def test_a_stopped_batch_exits_130_and_the_job_waits_uncounted(tmp_path: Path) -> None:
    from stylebox.daemon.journal import Journal

    site = flaky_site(tmp_path)
    config, _ = setup(tmp_path, 1, "flaky", "{ hang = true }")
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, env=site_env(site),
    )  # fmt: skip
    assert wait_until((site / "attempts.log").exists, 60)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    # It said "batch finished ... queued=1" and nothing of being stopped or how to go on.
    assert "batch finished" not in stderr
    assert stderr.rstrip().endswith(
        "stylebox: batch nightly: stopped with 1 image(s) left; run the same command again "
        "to resume"
    )
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    (row,) = journal.jobs("batch:nightly")
    journal.close()
    assert row.state == "queued" and row.attempts == 0


TORCH_BUSY = """
import os, time
import torch
from stylebox.plugins.api import Cancelled, Plugin, PluginParams

class TorchBusy(Plugin):
    name = "torchbusy"
    Params = PluginParams

    def process(self, image, job):
        a = torch.rand(384, 384)
        open(os.environ["BUSY_STARTED"], "w").close()
        while not job.cancelled:
            a = torch.mm(a, a).clamp(0, 1)
        end = time.monotonic() + 30  # a drain's last work (gatys: its checkpoint)
        while time.monotonic() < end:
            a = torch.mm(a, a).clamp(0, 1)
        raise Cancelled("stopped")
"""


def test_a_second_ctrl_c_during_a_drain_exits_130_at_once(tmp_path: Path) -> None:
    # The job's thread is inside PyTorch's thread pool when the command exits.
    site = installed_site(
        tmp_path, "torchbusy", "[stylebox.plugins]\ntorchbusy = torchbusy:TorchBusy\n",
        {"torchbusy.py": TORCH_BUSY},
    )  # fmt: skip
    config, _ = setup(tmp_path, 1, "torchbusy", "{}")
    started = tmp_path / "started"
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, env={**site_env(site), "BUSY_STARTED": str(started)},
    )  # fmt: skip
    assert wait_until(started.exists, 60)
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the first is seen: the job is cancelled and goes on with its drain
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.rstrip().endswith("stylebox: interrupted")
    row = only_job(tmp_path)  # left as a kill leaves it: the next run takes it up again
    assert row.state == "running" and row.finished_at is None, row


SLOW_BATCH = """
import time
from stylebox.plugins.api import Cancelled, Capabilities, Plugin, PluginParams

class Params(PluginParams):
    seconds: float = 0.6

class SlowBatch(Plugin):
    name = "slowbatch"
    Params = Params
    capabilities = Capabilities(batching=True)

    def process(self, image, job):
        began = time.monotonic()
        while time.monotonic() - began < self.params.seconds:
            if job.cancelled:
                raise Cancelled("stopped")
            time.sleep(0.01)
        return image
"""


def test_a_jobs_time_limit_starts_when_the_plugin_starts_on_it(tmp_path: Path) -> None:
    """Three jobs claimed together (batch_size 3) but of three sizes run one after the
    other, 0.6 s each, under timeout_seconds = 1: none is cut short for waiting its turn."""
    from stylebox.daemon.journal import Journal

    site = installed_site(
        tmp_path, "slowbatch", "[stylebox.plugins]\nslowbatch = slowbatch:SlowBatch\n",
        {"slowbatch.py": SLOW_BATCH},
    )  # fmt: skip
    library = tmp_path / "library"
    library.mkdir()
    for width in (20, 24, 28):
        photo(width, 16).save(library / f"w{width}.png")
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[daemon]\nbatch_size = 3\n'
        '[[batch]]\nname = "nightly"\nsource = "library"\noutbox = "stylised"\n'
        'plugin = "slowbatch"\ntimeout_seconds = 1.0\n'
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    rows = journal.jobs("batch:nightly")
    journal.close()
    assert [(row.state, row.attempts) for row in rows] == [("done", 1)] * 3


def test_recursive_false_takes_only_the_top_folder(tmp_path: Path) -> None:
    config, _ = setup(tmp_path, 4)  # img000 and img002 sit in 2026/june/
    config.write_text(
        config.read_text().replace(
            "params = { bits = 2 }", "params = { bits = 2 }\nrecursive = false"
        )
    )
    dry = batch(config, "--dry-run")
    assert sorted(Path(line).name for line in dry.stdout.splitlines()) == [
        "img001.png",
        "img003.png",
    ]
    assert batch(config).returncode == 0
    assert sorted(p.name for p in (tmp_path / "stylised").glob("*.json")) == [
        "img001.json",
        "img003.json",
    ]


SLEEPY = """
import time

from stylebox.plugins.api import Capabilities, Plugin, PluginParams


class Sleepy(Plugin):
    name = "sleepy"
    capabilities = Capabilities(batching=True)

    class Params(PluginParams):
        seconds: float = 1.0

    def process_batch(self, images, jobs):
        time.sleep(self.params.seconds)
        return images

    def process(self, image, job):
        return self.process_batch([image], [job])[0]
"""


def test_each_job_of_a_claim_is_timed_by_its_own_group(tmp_path: Path) -> None:
    """Two photos of each of two sizes claimed together run as two groups of a second
    each: every job's manifest and done event give its own group's time (half a second of
    the plugin each, about a second in all), not the wait for the group before it."""
    site = installed_site(
        tmp_path, "sleepy", "[stylebox.plugins]\nsleepy = sleepy:Sleepy\n", {"sleepy.py": SLEEPY}
    )
    config, library = setup(tmp_path, 2, "sleepy", "{ seconds = 1.0 }")
    for seed in (7, 8):
        photo(48, 32, seed=seed).save(library / f"large{seed}.png")
    config.write_text(
        config.read_text().replace("[[batch]]", "[daemon]\nbatch_size = 4\n[[batch]]")
    )
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=site_env(site),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = {}
    for line in result.stderr.splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "done":
            event = json.loads(line)
            done[event["file"]] = event["seconds"]
    stylised = tmp_path / "stylised"
    manifests = {m: json.loads(m.read_text()) for m in stylised.rglob("*.json")}
    assert len(manifests) == 4 and len(done) == 4, result.stderr
    for path, data in manifests.items():
        timings = data["timings"]
        assert data["batch"] == 2
        assert 0.45 <= timings["process_seconds"] < 0.8, timings
        assert 1.0 <= timings["total_seconds"] < 1.6, timings  # not 2 s and more
        name = (path.parent.relative_to(stylised) / data["input"]["name"]).as_posix()
        assert done[name] == round(timings["total_seconds"], 3)


def test_a_plugin_that_ignores_its_time_limit_is_named(tmp_path: Path) -> None:
    """A plugin that never looks at job.cancelled cannot be stopped from inside the
    process; at twice its time limit the log says so, naming the plugin."""
    site = installed_site(
        tmp_path, "sleepy", "[stylebox.plugins]\nsleepy = sleepy:Sleepy\n", {"sleepy.py": SLEEPY}
    )
    config, _ = setup(tmp_path, 1, "sleepy", "{ seconds = 1.5 }")
    config.write_text(config.read_text() + "timeout_seconds = 0.5\n")
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=site_env(site),
    )  # fmt: skip
    assert "has run twice its time limit (timeout_seconds = 0.5)" in result.stderr
    assert "plugin sleepy does not stop when job.cancelled turns true" in result.stderr
    # Its result, whole, is kept: said, and marked in its manifest (it read as any other).
    assert (
        "finished past its time limit (timeout_seconds = 0.5): plugin sleepy did not stop "
        "when asked; its result is whole and kept"
    ) in result.stderr
    (manifest,) = (tmp_path / "stylised").rglob("*.json")
    assert json.loads(manifest.read_text())["past_time_limit"] is True


def test_a_batch_counts_the_jobs_a_daemon_on_its_state_ran(tmp_path: Path) -> None:
    # The daemon runs a batch's jobs too. This command's worker is held at the gate on its
    # first photo while the daemon takes the others, the bad one among them: the command
    # waits for them and its exit status and figures count them.
    env, _, gate = gated_env(tmp_path)
    library = tmp_path / "library"
    library.mkdir()
    for i in range(3):
        photo(24, 16, seed=i).save(library / f"a{i}.png")
    (library / "zz-bad.png").write_text("not an image")
    config = write_config(tmp_path, """
state_dir = "state"
[[inbox]]
name = "idle"
path = "in"
outbox = "out"
plugin = "gated"
[[batch]]
name = "nightly"
source = "library"
outbox = "stylised"
plugin = "gated"
""")  # fmt: skip
    open_gate = tmp_path / "open"
    open_gate.touch()
    daemon = Daemon(config, env={**env, "GATE": str(open_gate)})
    try:
        daemon.wait_ready()
        command = subprocess.Popen(
            [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config)],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
        )  # fmt: skip

        def states() -> list[str]:
            with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
                return sorted(state for (state,) in db.execute("SELECT state FROM jobs"))

        assert wait_until(lambda: states() == ["done", "done", "failed", "running"], 60), (
            daemon.output()
        )
        gate.touch()
        _, stderr = command.communicate(timeout=60)
    finally:
        daemon.stop()
    assert command.returncode == 1, stderr
    (finished,) = [json.loads(line) for line in stderr.splitlines() if "batch finished" in line]
    assert (finished["files"], finished["done"], finished["failed"]) == (4, 3, 1)
