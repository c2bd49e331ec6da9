"""`stylebox batch`: the same journal and pipeline over a folder, run in the foreground."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import photo
from daemon_helpers import wait_until

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


def test_batch_runs_once_leaves_inputs_and_skips_what_is_done(tmp_path: Path) -> None:
    config, library = setup(tmp_path, 6)
    dry = batch(config, "--dry-run")
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 6
    assert "6 of 6 image(s) would run" in dry.stderr

    first = batch(config)
    assert first.returncode == 0, first.stderr
    assert len(list((tmp_path / "stylised").glob("*.json"))) == 6
    assert len(list(library.rglob("*.png"))) == 6  # the library is never touched

    photo(24, 16, seed=99).save(library / "new.png")
    assert batch(config, "--dry-run").stdout.splitlines() == [str(library / "new.png")]
    second = batch(config)
    assert second.returncode == 0
    manifests = list((tmp_path / "stylised").glob("*.json"))
    assert len(manifests) == 7
    names = sorted(json.loads(m.read_text())["input"]["name"] for m in manifests)
    assert names == sorted([f"img{i:03d}.png" for i in range(6)] + ["new.png"])


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
    assert wait_until(lambda: len(list(outputs.glob("*.json"))) >= 2, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(list(outputs.glob("*.json")))
    assert done_before < 6

    began = time.monotonic()
    rest = batch(config)
    assert rest.returncode == 0, rest.stderr
    assert len(list(outputs.glob("*.json"))) == 6  # each image exactly once
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
    assert not list((tmp_path / "stylised").glob("*.json"))
