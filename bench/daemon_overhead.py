"""Throughput and per-file overhead of the daemon with a trivial plugin.

Starts a real ``stylebox serve`` on a temporary inbox whose plugin does next to nothing
(``posterize`` on 32x32 images), then:

* **burst**: moves N files into the inbox at once and reports files per second, from the
  first file queued to the last one done (the settle window is not counted: it is a wait,
  not work);
* **one at a time**: drops files singly and reports the median time from queued to done,
  i.e. the daemon's own cost per file: hashing, journal, decode, plugin, encode, manifest,
  fsyncs and the move to ``processed/``.

    python bench/daemon_overhead.py [--files 2000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_helpers import Daemon, wait_until, write_config
from PIL import Image

CONFIG = """
state_dir = "state"
[daemon]
workers = {{ cpu = {workers} }}
[[inbox]]
name = "trivial"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
settle_seconds = 0.05
params = {{ bits = 3 }}
[inbox.output]
animation = false
"""


def make_files(folder: Path, count: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        # Distinct bytes for every file: identical ones would be skipped as duplicates.
        image = Image.new(
            "RGB", (32, 32), (i % 256, (i // 256) % 256, 7 if prefix == "burst" else 9)
        )
        path = folder / f"{prefix}{i:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


def journal_times(state: Path) -> list[tuple[float, float]]:
    with sqlite3.connect(state / "journal.sqlite3") as db:
        return list(
            db.execute("SELECT created_at, finished_at FROM jobs WHERE state = 'done' ORDER BY id")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--single", type=int, default=40, help="files dropped one at a time")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="stylebox-daemon-bench-"))
    config = write_config(root, CONFIG.format(workers=args.workers))
    inbox, processed = root / "inbox", root / "inbox" / "processed"
    burst = make_files(root / "staging", args.files, "burst")
    single = make_files(root / "staging", args.single, "single")

    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for path in burst:
            os.rename(path, inbox / path.name)
        if not wait_until(lambda: len(os.listdir(processed)) >= args.files, 600):
            print("burst did not finish", file=sys.stderr)
            return 1
        times = journal_times(root / "state")
        span = max(f for _, f in times) - min(c for c, _ in times)
        print(f"daemon with a trivial plugin, {args.workers} worker(s), 32x32 PNGs")
        print(f"  burst of {args.files}: {args.files / span:7.1f} files/s  (target >= 200)")

        for path in single:
            os.rename(path, inbox / path.name)
            wait_until(lambda path=path: (processed / path.name).exists(), 30, interval=0.002)
        latencies = [f - c for c, f in journal_times(root / "state")[args.files :]]
        median = statistics.median(latencies) * 1000
        p90 = statistics.quantiles(latencies, n=10)[-1] * 1000
        print(f"  one at a time: median {median:5.1f} ms, p90 {p90:5.1f} ms per file, queued to"
              " done  (target <= 20 ms)")  # fmt: skip
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
