"""The file digests plugins and the status page ask for: right, fresh, and bounded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stylebox import digests
from stylebox.filecache import FileCache


def test_a_digest_is_the_files_sha256_and_follows_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"one")
    assert digests.file_digest(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")
    os.utime(path, ns=(1, 2))  # another mtime as well as another size
    assert digests.file_digest(path) == hashlib.sha256(b"two!").hexdigest()


def test_only_the_files_last_asked_for_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "_digests", FileCache(entries=3))
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"photo{i}.png")
        paths[-1].write_bytes(bytes([i]))
    for path in paths[:3]:
        digests.file_digest(path)
    digests.file_digest(paths[0])  # asked again: the most recent
    for path in paths[3:]:
        digests.file_digest(path)
    kept = {Path(key[0]).name for key in digests._digests.kept()}
    assert kept == {"photo0.png", "photo3.png", "photo4.png"}


def test_a_budget_drops_the_least_recently_asked_for_and_keeps_the_newest() -> None:
    # The status page's previews: bounded by their bytes, not their count.
    cache: FileCache[bytes] = FileCache(budget=10, weigh=len)
    for name in ("a", "b", "c"):
        cache.put((name, 0, 0), b"1234")
    assert cache.get(("b", 0, 0)) == b"1234"  # now the most recent
    cache.put(("d", 0, 0), b"1234")
    assert [key[0] for key in cache.kept()] == ["b", "d"]
    cache.put(("e", 0, 0), b"x" * 20)  # over the budget alone: still kept, the rest go
    assert [key[0] for key in cache.kept()] == ["e"]
