"""Issue 12: nothing lost or mixed up under faults: a job's outputs appear together or not
at all."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import photo
from daemon_helpers import write_config
from stepper_plugin import Stepper, StepperParams, run

from stylebox.config import load_config
from stylebox.daemon.journal import Journal
from stylebox.daemon.outbox import Outbox
from stylebox.daemon.pipeline import Pipeline, Source
from stylebox.daemon.runner import PluginHandle
from stylebox.errors import PluginError
from stylebox.plugins.api import Runtime, params_digest

CONFIG = """
state_dir = "state"
[daemon]
retry_backoff_seconds = 0.01
[[inbox]]
name = "poster"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
max_attempts = {attempts}
params = {{ bits = 2 }}
"""

SNAPSHOTTING = {"steps": 4, "snapshot_every": 1}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    photo(24, 16).save(path)
    return path


def _disk_full_on(monkeypatch: pytest.MonkeyPatch, name: str, how: str) -> None:
    """Writing (``how="fsync"``) or renaming into place (``"rename"``) the output file
    ``name`` fails as on a full disk; every other file is written as usual."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if how == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            written = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if written.startswith(f".{name}.") and written.endswith(".tmp"):
                raise full
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        real_replace = os.replace

        def replace(source: os.PathLike[str] | str, target: os.PathLike[str] | str) -> None:
            if os.path.basename(target) == name:
                raise full
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)


def _listing(folder: Path) -> list[str]:
    """Everything under ``folder``, hidden files included, relative to it."""
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# -- A: all outputs or none -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["fsync", "rename"])
def test_a_disk_full_on_the_manifest_leaves_no_result_and_the_retry_writes_all(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    with monkeypatch.context() as patch:
        _disk_full_on(patch, "photo.json", how)
        with pytest.raises(PluginError, match="No space left on device"):
            run(image, out, work, SNAPSHOTTING)
    # Neither result nor animation nor any temp file is left; the snapshots stay for the
    # retry (they are watched while the job runs).
    snapshots = [f"photo.steps/{step:04d}.png" for step in range(5)]
    assert _listing(out) == ["photo.steps", *snapshots]

    manifest = run(image, out, work, SNAPSHOTTING).manifest
    assert _listing(out) == ["photo.gif", "photo.json", "photo.png", "photo.steps", *snapshots]
    assert manifest["output"]["animation"] == "photo.gif"


KILLED_BEFORE_THE_MANIFEST = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from stepper_plugin import run

real_replace = os.replace


def replace(source, target):
    if os.path.basename(target) == "photo.json":
        os.kill(os.getpid(), signal.SIGKILL)  # result and animation are in place already
    real_replace(source, target)


os.replace = replace
image, out, work, params = json.loads(sys.argv[1])
run(Path(image), Path(out), Path(work), params)
"""


def test_a_set_a_crash_left_without_its_manifest_goes_when_the_next_write_fails(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, work = tmp_path / "out", tmp_path / "state" / "job"
    script = KILLED_BEFORE_THE_MANIFEST.format(tests=str(Path(__file__).parent))
    arguments = json.dumps([str(image), str(out), str(work), SNAPSHOTTING])
    killed = subprocess.run([sys.executable, "-c", script, arguments], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert {"photo.png", "photo.gif"} <= set(_listing(out)) and "photo.json" not in _listing(out)

    with monkeypatch.context() as patch:  # the next run cannot write its manifest either
        _disk_full_on(patch, "photo.json", "fsync")
        with pytest.raises(PluginError):
            run(image, out, work, SNAPSHOTTING)
    # the killed run's result, animation and manifest temp file are gone with this run's
    assert [name for name in _listing(out) if "/" not in name] == ["photo.steps"]
    run(image, out, work, SNAPSHOTTING)
    assert {"photo.png", "photo.gif", "photo.json"} <= set(_listing(out))


def _pipeline(tmp_path: Path, params: dict, attempts: int = 1) -> tuple[Pipeline, Source]:
    """An inbox ``poster`` run by the stepper plugin, on a real journal."""
    loaded = load_config(write_config(tmp_path, CONFIG.format(attempts=attempts)))
    stepper = Stepper(StepperParams(**params), Runtime(state_dir=loaded.config.state_dir))
    inbox = loaded.config.inbox[0]
    source = Source(
        key="inbox:poster",
        config=inbox,
        plugin=PluginHandle("stepper", "1", stepper, stepper.params),
        outbox=Outbox(inbox.outbox, inbox.output),
        params_hash=params_digest(stepper.params),
        device_type="cpu",
    )
    journal = Journal(loaded.config.state_dir / "journal.sqlite3")
    return Pipeline(loaded, {source.key: source}, journal), source


def _run_until_settled(pipeline: Pipeline, source: Source) -> None:
    while pipeline.journal.jobs(source.key, "queued"):
        row = pipeline.claim({source.key})
        if row is not None:
            pipeline.run([row])


@pytest.mark.parametrize("fault", ["disk full on the manifest", "plugin fault"])
def test_a_job_that_fails_for_good_leaves_nothing_in_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    params = dict(SNAPSHOTTING)
    if fault == "plugin fault":
        params["fail_at"] = 3  # after snapshots 0 to 3
    else:
        _disk_full_on(monkeypatch, "photo.json", "fsync")
    pipeline, source = _pipeline(tmp_path, params, attempts=2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(24, 16).save(inbox / "photo.png")
    assert pipeline.enqueue(source, [inbox / "photo.png"]) == ["queued"]

    _run_until_settled(pipeline, source)
    (row,) = pipeline.journal.jobs(source.key)
    assert row.state == "failed" and row.attempts == 2
    assert _listing(tmp_path / "outbox") == []  # no result, animation, snapshots or temps
    assert _listing(inbox / "failed") == ["photo.png", "photo.png.error.txt"]
    assert not (tmp_path / "state" / "jobs" / str(row.id)).exists()
    pipeline.journal.close()
