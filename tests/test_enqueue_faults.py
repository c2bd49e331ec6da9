"""Issue 12, the enqueue path: files with names that are not UTF-8, files replaced while
queued, paths gone by the time they are queued, and output names that must not leak.
Through the real Pipeline, Runner and SQLite journal, with a tiny plugin."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import encoded, photo
from daemon_helpers import write_config
from PIL import Image

from stylebox.config import load_config
from stylebox.daemon import files
from stylebox.daemon.jobloop import JobLoop
from stylebox.daemon.journal import Journal
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import PluginHandle
from stylebox.daemon.sources import Source
from stylebox.daemon.status import print_status
from stylebox.errors import MissingCompanion, PluginError
from stylebox.plugins.api import JobContext, Plugin, PluginParams, Runtime

CONFIG = """
state_dir = "state"
[daemon]
retry_backoff_seconds = 0.01
[[inbox]]
name = "in"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
max_attempts = {attempts}
settle_seconds = 0.05
dedupe = {dedupe}
params = {{ bits = 2 }}
"""


class Flaky(Plugin[PluginParams]):
    """Returns the image as it is, after failing its first ``fails`` calls; ``during`` is
    called while it runs (a test's way to act on the inbox mid-job)."""

    name = "flaky"
    version = "1"
    Params = PluginParams

    def __init__(self, params: PluginParams, runtime: Runtime, fails: int = 0) -> None:
        super().__init__(params, runtime)
        self.fails = fails
        self.calls = 0
        self.during: Callable[[], None] | None = None

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        self.calls += 1
        if self.during is not None:
            self.during()
        if self.calls <= self.fails:
            raise PluginError(f"call {self.calls} fails")
        job.progress(1, 1)
        return image


def _pipeline(
    tmp_path: Path, fails: int = 0, attempts: int = 1, dedupe: bool = True
) -> tuple[Pipeline, Source, Flaky]:
    text = CONFIG.format(attempts=attempts, dedupe=str(dedupe).lower())
    loaded = load_config(write_config(tmp_path, text))
    plugin = Flaky(PluginParams(), Runtime(state_dir=loaded.config.state_dir), fails)
    inbox = loaded.config.inbox[0]
    for folder in (inbox.path, inbox.processed_dir, inbox.failed_dir):
        folder.mkdir(parents=True, exist_ok=True)
    source = Source.of("inbox:in", inbox, PluginHandle("flaky", "1", plugin, plugin.params))
    journal = Journal(loaded.config.state_dir / "journal.sqlite3")
    return Pipeline(loaded, {source.key: source}, journal), source, plugin


def _names(folder: Path) -> list[bytes]:
    return sorted(os.listdir(os.fsencode(folder)))


def _manifest_sha(outbox: Path, stem: str) -> str:
    return json.loads((outbox / f"{stem}.json").read_text())["input"]["sha256"]


# -- names that are not UTF-8 ----------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_processed_with_the_files_beside_it(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    paths = [inbox / f"good{n}.png" for n in range(3)]
    for n, path in enumerate(paths):
        photo(8, 8, seed=n).save(path)
    odd = Path(os.fsdecode(os.fsencode(inbox) + b"/caf\xe9.png"))  # Latin-1 e-acute
    photo(8, 8, seed=9).save(odd, "PNG")

    assert pipeline.enqueue(source, [*paths, odd]) == ["queued"] * 4
    (row,) = [row for row in pipeline.journal.jobs(source.key) if row.origin_path == str(odd)]
    assert row.name == "caf\ufffd.png"  # readable in logs and status
    JobLoop(pipeline).run_until_empty({source.key})

    assert [row.state for row in pipeline.journal.jobs(source.key)] == ["done"] * 4
    assert _names(inbox / "processed") == [b"caf\xe9.png", b"good0.png", b"good1.png", b"good2.png"]
    assert (tmp_path / "outbox" / "caf\ufffd.png").is_file()
    manifest = json.loads((tmp_path / "outbox" / "caf\ufffd.json").read_text())
    assert manifest["input"]["name"] == "caf\ufffd.png"  # readable, no lone surrogate
    assert Journal(pipeline.journal.path).get(row.id).input_path == os.fsdecode(
        os.fsencode(inbox) + b"/processed/caf\xe9.png"
    )  # the exact name, read back by another connection
    assert not source.outbox._reserved
    pipeline.journal.close()


def test_a_bad_image_with_a_name_that_is_not_utf8_fails_alone_with_its_reason(
    tmp_path: Path,
) -> None:
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "good.png")
    odd = Path(os.fsdecode(os.fsencode(inbox) + b"/notes\xff.png"))
    odd.write_bytes(b"not a picture\n" * 10)

    assert pipeline.enqueue(source, [inbox / "good.png", odd]) == ["queued"] * 2
    JobLoop(pipeline).run_until_empty({source.key})

    assert [row.state for row in pipeline.journal.jobs(source.key)] == ["done", "failed"]
    assert _names(inbox / "failed") == [b"notes\xff.png", b"notes\xff.png.error.txt"]
    reason = (inbox / "failed" / os.fsdecode(b"notes\xff.png.error.txt")).read_text()
    assert "notes\ufffd.png is not an image" in reason
    failed = pipeline.journal.jobs(source.key, "failed")[0]
    assert "notes\ufffd.png" in (failed.error_message or "")
    pipeline.journal.close()


def test_files_named_near_the_file_systems_limit_are_moved_aside_with_their_notes(
    tmp_path: Path,
) -> None:
    # A 235-byte name: its .error.txt (with the temp file it is written through) was over
    # 255 bytes, so the move failed and the job stayed 'running', retried every minute.
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    bad, good = "D" * 231 + ".png", "東" * 81 + ".png"  # 235 and 247 bytes
    (inbox / bad).write_bytes(b"not a picture\n" * 10)
    photo(8, 8).save(inbox / good)
    photo(8, 8, seed=5).convert("L").save(inbox / ("D" * 231 + ".mask.png"))  # its companion
    shutil.copy(inbox / good, inbox / ("E" * 240 + ".png"))
    outcomes = pipeline.enqueue(source, [inbox / bad, inbox / good, inbox / ("E" * 240 + ".png")])
    assert outcomes == ["queued", "queued", "waiting"]
    JobLoop(pipeline).run_until_empty({source.key})

    assert [row.state for row in pipeline.journal.jobs(source.key)] == ["failed", "done"]
    assert not list(inbox.glob("*.png"))
    failed = sorted(p.name for p in (inbox / "failed").iterdir())
    assert failed == [  # the mask keeps its kind, and so its photo
        "D" * 217 + ".mask.png", "D" * 217 + ".png", "D" * 217 + ".png.error.txt"
    ]  # fmt: skip
    processed = sorted(p.name for p in (inbox / "processed").iterdir())
    assert processed == ["E" * 217 + ".png", "E" * 217 + ".png.duplicate.txt", "東" * 72 + ".png"]
    assert all(len(os.fsencode(name)) <= files.MOVED_NAME_MAX + 14 for name in processed)
    pipeline.journal.close()


def test_a_failed_add_releases_every_output_name_it_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal refuses one entry of an arrival: the others are queued, and no output
    name stays reserved (the next photo.png is photo, not photo-2)."""
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    for seed, name in enumerate(("a.png", "refused.png", "b.png")):
        photo(8, 8, seed=seed).save(inbox / name)
    real_add = pipeline.journal.add

    def add(entries: list) -> list:
        if any(entry.input_path.name == "refused.png" for entry in entries):
            raise OSError("journal refuses this entry")
        return real_add(entries)

    monkeypatch.setattr(pipeline.journal, "add", add)
    outcomes = pipeline.enqueue(source, [inbox / "a.png", inbox / "refused.png", inbox / "b.png"])
    assert outcomes == ["queued", "error", "queued"]
    assert source.outbox._reserved == {"a", "b"}
    assert (inbox / "refused.png").exists()  # left for the next rescan

    monkeypatch.setattr(pipeline.journal, "add", real_add)
    assert pipeline.enqueue(source, [inbox / "refused.png"]) == ["queued"]
    assert pipeline.journal.jobs(source.key)[-1].stem == "refused"
    pipeline.journal.close()


# -- a file replaced while queued -------------------------------------------------------------


def test_a_file_replaced_while_queued_takes_over_its_job(tmp_path: Path) -> None:
    """The watcher sees the new bytes before the job starts: the queued job now stands for
    them (one job, its output name kept), and the old bytes are no duplicate of it."""
    pipeline, source, _ = _pipeline(tmp_path)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old, new = encoded(photo(8, 8, seed=1)), encoded(photo(8, 8, seed=2))
    (inbox / "photo.png").write_bytes(old)
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]
    (inbox / "replacement").write_bytes(new)
    os.replace(inbox / "replacement", inbox / "photo.png")
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]

    (row,) = pipeline.journal.jobs(source.key)
    assert row.stem == "photo" and row.sha256 == files.digest(inbox / "photo.png")
    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "done" and _manifest_sha(outbox, "photo") == row.sha256

    (inbox / "again.png").write_bytes(old)  # the old bytes: never processed, so not a duplicate
    assert pipeline.enqueue(source, [inbox / "again.png"]) == ["queued"]
    JobLoop(pipeline).run_until_empty({source.key})
    assert sorted(p.name for p in outbox.glob("*.json")) == ["again.json", "photo.json"]
    assert _manifest_sha(outbox, "again") == files.digest(inbox / "processed/again.png")
    pipeline.journal.close()


def test_a_file_replaced_unseen_before_its_job_starts_is_queued_for_its_new_bytes(
    tmp_path: Path,
) -> None:
    """No event for the new bytes (the runner is the first to read them): the job notices
    that the bytes it reads are not those it was queued for, and is queued again for them."""
    pipeline, source, _ = _pipeline(tmp_path)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old, new = encoded(photo(8, 8, seed=1)), encoded(photo(8, 8, seed=2))
    (inbox / "photo.png").write_bytes(old)
    pipeline.enqueue(source, [inbox / "photo.png"])
    (inbox / "photo.png").write_bytes(new)  # in place, as cp does

    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "done" and row.stem == "photo"
    assert row.sha256 == _manifest_sha(outbox, "photo")
    assert row.sha256 == files.digest(inbox / "processed" / "photo.png")

    (inbox / "again.png").write_bytes(old)
    assert pipeline.enqueue(source, [inbox / "again.png"]) == ["queued"]
    pipeline.journal.close()


def test_a_file_replaced_by_bytes_already_done_is_their_duplicate(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old, new = encoded(photo(8, 8, seed=1)), encoded(photo(8, 8, seed=2))
    (inbox / "first.png").write_bytes(new)
    pipeline.enqueue(source, [inbox / "first.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    (inbox / "photo.png").write_bytes(old)
    pipeline.enqueue(source, [inbox / "photo.png"])
    (inbox / "photo.png").write_bytes(new)  # unseen: found when the job starts

    JobLoop(pipeline).run_until_empty({source.key})
    first, replaced = pipeline.journal.jobs(source.key)
    assert first.state == "done"
    assert replaced.state == "failed" and replaced.error_class == "InputChanged"
    assert f"job {first.id}" in (replaced.error_message or "")
    assert sorted(p.name for p in outbox.glob("*.json")) == ["first.json"]
    note = inbox / "processed" / "photo.png.duplicate.txt"
    assert f"duplicate of job {first.id}" in note.read_text()
    assert not (inbox / "failed" / "photo.png").exists()
    pipeline.journal.close()


def test_a_file_replaced_while_its_job_runs_is_not_taken_for_the_job_input(
    tmp_path: Path,
) -> None:
    """The runner read the old bytes; the new ones arrive before it ends. The job's result
    is the old bytes', and the new file stays in the inbox, to be queued as a job of its own
    when it has settled, instead of being moved to processed/ as if done."""
    pipeline, source, plugin = _pipeline(tmp_path)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old, new = encoded(photo(8, 8, seed=1)), encoded(photo(8, 8, seed=2))
    (inbox / "photo.png").write_bytes(old)
    pipeline.enqueue(source, [inbox / "photo.png"])

    def replace() -> None:
        plugin.during = None
        (inbox / "photo.png").write_bytes(new)

    plugin.during = replace
    JobLoop(pipeline).run_until_empty({source.key})
    (first,) = pipeline.journal.jobs(source.key)
    assert first.state == "done" and (inbox / "photo.png").read_bytes() == new
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]  # as the watcher does
    JobLoop(pipeline).run_until_empty({source.key})
    first, second = pipeline.journal.jobs(source.key)
    assert (first.state, second.state) == ("done", "done")
    assert _manifest_sha(outbox, "photo") == first.sha256
    assert _manifest_sha(outbox, second.stem or "") == second.sha256 != first.sha256
    assert (inbox / "processed" / "photo.png").read_bytes() == new
    pipeline.journal.close()


# -- paths gone by the time they are queued ---------------------------------------------------


def test_a_path_gone_before_it_is_queued_is_skipped(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "here.png")
    (inbox / "folder.png").mkdir()  # a file replaced by a folder since it settled
    os.mkfifo(inbox / "pipe.png")
    paths = [inbox / name for name in ("gone.png", "here.png", "folder.png", "pipe.png")]
    assert pipeline.enqueue(source, paths) == ["gone", "queued", "gone", "queued"]
    # A folder is left where it is, as the watcher leaves one (it was journaled and moved
    # to failed/, mid-copy); a FIFO's job records its refusal.
    assert [row.name for row in pipeline.journal.jobs(source.key)] == ["here.png", "pipe.png"]
    assert source.outbox._reserved == {"here", "pipe"}
    assert (inbox / "folder.png").is_dir()
    pipeline.journal.close()


def test_a_file_done_while_it_was_being_queued_is_no_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A rescan sees a queued file and hashes it; its job ends and moves it to processed/
    before the rescan's add: that is the file's own job, not a duplicate."""
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "photo.png")
    pipeline.enqueue(source, [inbox / "photo.png"])
    real_digest = files.digest

    def digest_then_finish_the_job(path: Path) -> str:
        monkeypatch.setattr(files, "digest", real_digest)  # once: the job's own are real
        digest = real_digest(path)
        JobLoop(pipeline).run_until_empty({source.key})
        return digest

    monkeypatch.setattr(files, "digest", digest_then_finish_the_job)
    with caplog.at_level(logging.INFO, logger="stylebox"):
        assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["gone"]
    assert "duplicate" not in [getattr(r, "event", None) for r in caplog.records]
    assert not list((inbox / "processed").glob("*.duplicate.txt"))
    pipeline.journal.close()


@pytest.mark.parametrize("dedupe", [True, False])
def test_a_queued_file_seen_again_is_the_same_job(tmp_path: Path, dedupe: bool) -> None:
    pipeline, source, _ = _pipeline(tmp_path, dedupe=dedupe)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "photo.png")
    os.mkfifo(inbox / "fifo")
    assert pipeline.enqueue(source, [inbox / "photo.png", inbox / "fifo"]) == ["queued"] * 2
    assert pipeline.enqueue(source, [inbox / "photo.png", inbox / "fifo"]) == ["known"] * 2
    assert len(pipeline.journal.jobs(source.key)) == 2
    assert source.outbox._reserved == {"photo", "fifo"}
    pipeline.journal.close()


# -- output names after failures and retries --------------------------------------------------


def test_a_failed_job_releases_its_name_and_its_retry_keeps_it(tmp_path: Path) -> None:
    """imm1.png fails, is dropped again and fails again, then is dropped a third time and
    works: its result is imm1.png (not imm1-2.png), and the job kept its name throughout."""
    pipeline, source, plugin = _pipeline(tmp_path, fails=2)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    photo(8, 8).save(inbox / "imm1.png")
    for attempt in range(3):
        if attempt:
            os.rename(inbox / "failed" / "imm1.png", inbox / "imm1.png")
            (inbox / "failed" / "imm1.png.error.txt").unlink()
        pipeline.enqueue(source, [inbox / "imm1.png"])
        assert pipeline.journal.jobs(source.key)[0].stem == "imm1"
        JobLoop(pipeline).run_until_empty({source.key})
        if attempt < 2:
            assert not source.outbox._reserved  # released by the failure
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "done" and plugin.calls == 3
    assert sorted(p.name for p in outbox.iterdir()) == ["imm1.json", "imm1.png"]
    pipeline.journal.close()


def test_a_failed_job_whose_name_was_taken_meanwhile_gets_another(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path, fails=1)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    photo(8, 8, seed=1).save(inbox / "imm1.png")
    pipeline.enqueue(source, [inbox / "imm1.png"])
    JobLoop(pipeline).run_until_empty({source.key})  # fails: its name is free again
    photo(8, 8, seed=2).save(inbox / "imm1.png")  # another photo of that name takes it
    pipeline.enqueue(source, [inbox / "imm1.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    os.rename(inbox / "failed" / "imm1.png", inbox / "imm1.png")
    pipeline.enqueue(source, [inbox / "imm1.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    first, second = pipeline.journal.jobs(source.key)
    assert (first.state, first.stem, second.state, second.stem) == (
        "done",
        "imm1-2",
        "done",
        "imm1",
    )
    assert _manifest_sha(outbox, "imm1") == second.sha256
    assert _manifest_sha(outbox, "imm1-2") == first.sha256
    pipeline.journal.close()


def test_a_copy_of_a_queued_file_waits_for_its_job_to_end(tmp_path: Path) -> None:
    """other.png holds photo.png's bytes while photo.png's job is queued. Then photo.png is
    replaced: its job is for the new bytes now, so other.png must not be called a duplicate
    of it; other.png is processed on its own, and once a job is done, a copy is its
    duplicate."""
    pipeline, source, _ = _pipeline(tmp_path)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    old, new = encoded(photo(8, 8, seed=1)), encoded(photo(8, 8, seed=2))
    (inbox / "photo.png").write_bytes(old)
    (inbox / "other.png").write_bytes(old)
    assert pipeline.enqueue(source, [inbox / "photo.png", inbox / "other.png"]) == [
        "queued",
        "waiting",
    ]
    (inbox / "photo.png").write_bytes(new)
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]  # other.png queued too
    JobLoop(pipeline).run_until_empty({source.key})
    assert [row.state for row in pipeline.journal.jobs(source.key)] == ["done", "done"]
    assert _manifest_sha(outbox, "other") == files.digest(inbox / "processed/other.png")
    assert not list((inbox / "processed").glob("*.duplicate.txt"))

    (inbox / "copy.png").write_bytes(old)
    assert pipeline.enqueue(source, [inbox / "copy.png"]) == ["duplicate"]
    pipeline.journal.close()


def test_a_copy_of_a_file_whose_job_fails_is_a_job_of_its_own(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path, fails=1)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "photo.png")
    photo(8, 8).save(inbox / "copy.png")
    assert pipeline.enqueue(source, [inbox / "photo.png", inbox / "copy.png"]) == [
        "queued",
        "waiting",
    ]
    # photo.png fails; copy.png, a job of its own while photo.png is in failed/, works. It
    # was photo.png's job tried again, named copy.png and done: failed/photo.png was no
    # job's, its note naming a job listed done.
    JobLoop(pipeline).run_until_empty({source.key})
    failed, done = pipeline.journal.jobs(source.key)
    assert (failed.state, failed.name, failed.input_path) == (
        "failed",
        "photo.png",
        str(inbox / "failed" / "photo.png"),
    )
    assert (done.state, done.name, done.stem) == ("done", "copy.png", "copy")
    assert _names(inbox / "failed") == [b"photo.png", b"photo.png.error.txt"]
    assert _names(inbox / "processed") == [b"copy.png"]
    pipeline.journal.close()


def test_each_copy_of_failing_bytes_in_failed_is_a_failed_job_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three empty files were one failed job named after the last: status counted 1 failed
    # for 3 files in failed/. Moved back from failed/, a file is its own job tried again.
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    for name in ("a.png", "b.png", "a.png", "c.png"):  # a.png twice: its first is in failed/
        (inbox / name).write_bytes(b"")
        assert pipeline.enqueue(source, [inbox / name]) == ["queued"], name
        JobLoop(pipeline).run_until_empty({source.key})
    rows = pipeline.journal.jobs(source.key)
    assert [(row.state, row.name) for row in rows] == [
        ("failed", "a.png"), ("failed", "b.png"), ("failed", "a.png"), ("failed", "c.png")
    ]  # fmt: skip
    assert [Path(row.input_path).name for row in rows] == ["a.png", "b.png", "a-2.png", "c.png"]
    for row in rows:
        note = Path(f"{row.input_path}.error.txt").read_text()
        assert note.endswith(f"job: {row.id}\n"), note  # each file's note names its own job
    # status says which of the two a.png is which file: only their notes did.
    print_status(tmp_path / "stylebox.toml", all_failed=True)
    listed = [line for line in capsys.readouterr().out.splitlines() if "failed #" in line]
    assert [line.split(":")[0] for line in listed if " a.png" in line] == [
        f"  failed #{rows[2].id} a.png (as failed/a-2.png)",
        f"  failed #{rows[0].id} a.png",
    ]
    os.rename(inbox / "failed" / "b.png", inbox / "b.png")
    assert pipeline.enqueue(source, [inbox / "b.png"]) == ["retry"]
    assert pipeline.journal.get(rows[1].id).state == "queued"
    pipeline.journal.close()


@pytest.mark.parametrize("dedupe", [True, False])
def test_the_same_bytes_again_are_skipped_unless_dedupe_is_off(
    tmp_path: Path, dedupe: bool
) -> None:
    """README: the same bytes dropped twice with the same params are not stylised twice
    (the copy goes to processed/ with a .duplicate.txt note); dedupe = false turns it off."""
    pipeline, source, plugin = _pipeline(tmp_path, dedupe=dedupe)
    inbox = source.config.path
    for name in ("first.png", "again.png"):
        photo(24, 16).save(inbox / name)
        pipeline.enqueue(source, [inbox / name])
        JobLoop(pipeline).run_until_empty({source.key})
    rows = pipeline.journal.jobs(source.key)
    assert [row.state for row in rows] == ["done"] * (1 if dedupe else 2)
    assert plugin.calls == (1 if dedupe else 2)
    assert ((inbox / "processed" / "again.png.duplicate.txt").is_file()) == dedupe
    assert (inbox / "processed" / "again.png").is_file()


def test_the_same_photo_with_another_mask_is_another_job_not_a_duplicate(tmp_path: Path) -> None:
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"

    def drop(mask_seed: int) -> str:
        photo(8, 8, seed=1).save(inbox / "boat.png")
        Image.new("RGB", (8, 8), (mask_seed, 0, 0)).save(inbox / "boat.mask.png")
        (outcome,) = pipeline.enqueue(source, [inbox / "boat.png"])
        JobLoop(pipeline).run_until_empty({source.key})
        return outcome

    assert drop(200) == "queued"
    assert drop(90) == "queued"  # the mask changed: the result would too
    assert drop(90) == "duplicate"  # the same photo and mask as the job before
    done = [row for row in pipeline.journal.jobs(source.key) if row.state == "done"]
    assert len(done) == 2
    # Every mask went with its photo, the duplicate's too: none is left in the inbox.
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []
    masks = sorted(p.name for p in (inbox / "processed").glob("*.mask.png"))
    assert masks == ["boat-2.mask.png", "boat-3.mask.png", "boat.mask.png"]
    pipeline.journal.close()


class Masked(Flaky):
    """Needs a mask beside each photo, as gatys with ``style_mask`` does."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if "mask" not in job.companions:
            raise MissingCompanion("no mask", kind="mask")
        return super().process(image, job)


def test_a_copy_with_its_mask_of_a_photo_failed_for_want_of_one_leaves_that_failure_be(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The copy took the failed job over ("adopted"), and was done under it: failed/h.png
    # was named by no job. While h.png is in failed/, the copy is a job of its own.
    pipeline, source, _ = _pipeline(tmp_path)
    masked = Masked(PluginParams(), Runtime(state_dir=tmp_path / "state"))
    source = Source.of(
        "inbox:in", source.config, PluginHandle("masked", "1", masked, masked.params)
    )
    pipeline.sources = {source.key: source}
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "h.png")
    pipeline.enqueue(source, [inbox / "h.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    (failed,) = pipeline.journal.jobs(source.key)
    assert (failed.state, failed.error_class) == ("failed", "MissingCompanion")

    shutil.copy(inbox / "failed" / "h.png", inbox / "h.png")
    photo(8, 8, seed=7).save(inbox / "h.mask.png")
    caplog.clear()
    assert pipeline.enqueue(source, [inbox / "h.png"]) == ["queued"]
    JobLoop(pipeline).run_until_empty({source.key})
    first, done = pipeline.journal.jobs(source.key)
    assert (first.state, first.unique_key) == ("failed", failed.unique_key)  # left be
    assert (done.state, done.name) == ("done", "h.png")
    assert "adopted" not in [getattr(record, "event", None) for record in caplog.records]
    assert _names(inbox / "failed") == [b"h.png", b"h.png.error.txt"]
    assert _names(inbox / "processed") == [b"h.mask.png", b"h.png"]
    pipeline.journal.close()


def test_copies_of_a_failed_photo_are_one_job_of_their_own_then_its_duplicates(
    tmp_path: Path,
) -> None:
    # Each copy got a job of its own while the failed one was in failed/: two copies
    # dropped together both ran, and a third, after one was done, ran again.
    pipeline, source, plugin = _pipeline(tmp_path, fails=1)
    inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "a.png")
    pipeline.enqueue(source, [inbox / "a.png"])
    JobLoop(pipeline).run_until_empty({source.key})  # fails: a.png in failed/
    for name in ("copy.png", "copy2.png"):
        shutil.copy(inbox / "failed" / "a.png", inbox / name)
    assert pipeline.enqueue(source, [inbox / "copy.png", inbox / "copy2.png"]) == [
        "queued",
        "waiting",
    ]
    JobLoop(pipeline).run_until_empty({source.key})
    assert plugin.calls == 2  # the first try, and the copy's
    assert (inbox / "processed" / "copy2.png.duplicate.txt").is_file()
    shutil.copy(inbox / "failed" / "a.png", inbox / "copy3.png")
    assert pipeline.enqueue(source, [inbox / "copy3.png"]) == ["duplicate"]
    assert plugin.calls == 2
    states = [(row.state, row.name) for row in pipeline.journal.jobs(source.key)]
    assert states == [("failed", "a.png"), ("done", "copy.png")]
    pipeline.journal.close()


def test_a_copys_failed_job_moved_back_after_a_reload_is_adopted(tmp_path: Path) -> None:
    # The copy's job kept its own key part, so the moved-back file under new settings was
    # a new job beside it, and the copy's job stayed failed with no file in failed/.
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    for name in ("a.png", "b.png"):
        (inbox / name).write_bytes(b"")
        pipeline.enqueue(source, [inbox / name])
        JobLoop(pipeline).run_until_empty({source.key})
    first, copy = pipeline.journal.jobs(source.key)
    reloaded = replace(source, params_hash="other settings")
    pipeline.sources = {source.key: reloaded}
    os.rename(inbox / "failed" / "b.png", inbox / "b.png")
    assert pipeline.enqueue(reloaded, [inbox / "b.png"]) == ["retry"]
    assert [row.id for row in pipeline.journal.jobs(source.key)] == [first.id, copy.id]
    assert pipeline.journal.get(copy.id).state == "queued"
    pipeline.journal.close()


class MaskArrives(Masked):
    """Needs a mask; its first photo's mask is dropped into the inbox while it runs."""

    inbox: Path

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if "mask" not in job.companions:
            photo(8, 8, seed=7).save(self.inbox / "h.mask.png")
        return super().process(image, job)


def test_a_mask_dropped_while_its_photo_ran_without_it_is_run_with(tmp_path: Path) -> None:
    # The photo failed for want of it, and the mask went to failed/ with it: its note asked
    # for a mask that was there already, and nothing brought the photo back.
    pipeline, source, _ = _pipeline(tmp_path)
    masked = MaskArrives(PluginParams(), Runtime(state_dir=tmp_path / "state"))
    source = Source.of(
        "inbox:in", source.config, PluginHandle("masked", "1", masked, masked.params)
    )
    pipeline.sources = {source.key: source}
    inbox = masked.inbox = tmp_path / "inbox"
    photo(8, 8).save(inbox / "h.png")
    pipeline.enqueue(source, [inbox / "h.png"])
    JobLoop(pipeline).run_until_empty({source.key})
    (row,) = pipeline.journal.jobs(source.key)
    assert (row.state, row.attempts) == ("done", 1)  # the try without its mask not counted
    assert _names(inbox / "processed") == [b"h.mask.png", b"h.png"]
    assert _names(inbox / "failed") == []
    pipeline.journal.close()


def test_a_failed_photo_mended_and_moved_back_clears_its_failure(tmp_path: Path) -> None:
    # Mended in failed/ and moved back, it was a new job: the failed one stayed listed for
    # good, its note in failed/ beside no photo. Mended to bytes done before, the same.
    pipeline, source, _ = _pipeline(tmp_path)
    inbox = tmp_path / "inbox"
    photo(8, 8, seed=1).save(inbox / "done.png")
    for name in ("trunc.png", "gone.png", "again.png"):
        (inbox / name).write_bytes(b"")
    pipeline.enqueue(
        source, [inbox / n for n in ("done.png", "trunc.png", "gone.png", "again.png")]
    )
    JobLoop(pipeline).run_until_empty({source.key})
    done, trunc, gone, again = pipeline.journal.jobs(source.key)
    failed = inbox / "failed"

    photo(8, 8, seed=2).save(failed / "trunc.png")  # mended where it lies, then moved back
    os.rename(failed / "trunc.png", inbox / "trunc.png")
    assert pipeline.enqueue(source, [inbox / "trunc.png"]) == ["retry"]
    (failed / "gone.png").unlink()  # thrown away, and the name used again
    photo(8, 8, seed=3).save(inbox / "gone.png")
    assert pipeline.enqueue(source, [inbox / "gone.png"]) == ["retry"]
    shutil.copy(inbox / "processed" / "done.png", failed / "again.png")  # mended to done bytes
    os.rename(failed / "again.png", inbox / "again.png")
    assert pipeline.enqueue(source, [inbox / "again.png"]) == ["duplicate"]
    JobLoop(pipeline).run_until_empty({source.key})

    rows = {row.id: row for row in pipeline.journal.jobs(source.key)}
    assert len(rows) == 4  # no job beside them
    assert [rows[j.id].state for j in (done, trunc, gone)] == ["done", "done", "done"]
    assert (rows[again.id].error_class, rows[again.id].error_message) == (
        "InputChanged",
        f"again.png came back with other bytes, those of job {done.id} (done)",
    )
    assert _names(failed) == []  # no note left beside no photo
    pipeline.journal.close()
