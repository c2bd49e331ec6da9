"""What one connected status page costs the daemon's jobs (issue 17: under 2 %).

Starts a real ``stylebox serve`` with a gatys inbox and ``[http] listen``, then runs rounds
of jobs alternately with no client and with one client that does what the page does: reads
the event stream and, on each event, fetches the running job's newest snapshot and its loss
curve. Each round drops a few small photos (distinct, so none is a duplicate) and waits for
them; a job's cost is its ``process_seconds`` from its manifest (the plugin's time, which
is what a busy page could slow down). Alternating rounds in one run keeps drift in the
machine's load out of the comparison.

    python bench/web_overhead.py [--rounds 4] [--jobs 3] [--steps 30] [--size 128]
        [--snapshot-every 10]

The defaults are small jobs with the default inbox's snapshot cadence (every 10 steps); a
snapshot every step or two at 64 px is the worst case (``--size 64 --snapshot-every 2``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from daemon_helpers import Daemon, gatys_config, wait_until
from PIL import Image

STYLE = Path(__file__).resolve().parent.parent / "styles" / "starry_night.jpg"


class PageClient(threading.Thread):
    """One page: the event stream, and the images each event points at."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.events = 0
        self.fetches = 0
        self.stop = threading.Event()

    def _get(self, path: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", path)
        connection.getresponse().read()
        connection.close()
        self.fetches += 1

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/events")
        response = connection.getresponse()
        shown: dict[int, tuple[str | None, int]] = {}
        while not self.stop.is_set():
            line = response.readline()
            if not line:
                return
            if not line.startswith(b"data: "):
                continue
            self.events += 1
            report = json.loads(line[6:])
            for entry in report["sources"].values():
                for job in entry["running_jobs"]:
                    last = shown.get(job["job"], (None, -1))
                    if job["snapshot"] and job["snapshot"] != last[0]:
                        self._get(job["snapshot"])
                    step = max(job["step"] or 0, job["snapshot_step"] or 0)
                    if job["loss"] and step != last[1]:
                        self._get(f"{job['loss']}?step={step}")
                    shown[job["job"]] = (job["snapshot"], step)
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each kind")
    parser.add_argument("--jobs", type=int, default=3, help="photos per round")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--snapshot-every", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        style = folder / "style.png"
        with Image.open(STYLE) as painting:
            painting.convert("RGB").resize((96, 76)).save(style)
        port = free_port()
        params = f"size = {args.size}, steps = {args.steps}, snapshot_every = {args.snapshot_every}"
        config = gatys_config(folder, style, params, daemon="rescan_seconds = 30")
        config.write_text(config.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
        daemon = Daemon(config)
        daemon.wait_ready()
        times: dict[str, list[float]] = {"without": [], "with": []}
        seed = 0
        try:
            kinds = ["without", "with"] * args.rounds
            for index, kind in enumerate(["warm-up", *kinds]):
                client = PageClient(port) if kind == "with" else None
                if client is not None:
                    client.start()
                names = []
                for _ in range(1 if kind == "warm-up" else args.jobs):
                    seed += 1
                    name = f"photo{seed}.png"
                    staged = folder / f".{name}"
                    Image.effect_noise((96, 64), 40 + seed).convert("RGB").save(staged)
                    os.rename(staged, folder / "inbox" / name)
                    names.append(name)
                manifests = [folder / "outbox" / f"{Path(n).stem}.json" for n in names]
                assert wait_until(lambda m=manifests: all(p.exists() for p in m), 600)
                if client is not None:
                    client.stop.set()
                    print(f"  round {index}: {client.events} events, {client.fetches} fetches")
                if kind == "warm-up":
                    continue
                for path in manifests:
                    times[kind].append(json.loads(path.read_text())["timings"]["process_seconds"])
        finally:
            daemon.stop()

    without, with_client = (statistics.median(times[k]) for k in ("without", "with"))
    mean_without, mean_with = (statistics.fmean(times[k]) for k in ("without", "with"))
    print(
        f"gatys {args.size} px, {args.steps} steps, a snapshot every {args.snapshot_every}, "
        f"{len(times['with'])} jobs each way"
    )
    print(f"  per job, no client:   median {without:.3f} s, mean {mean_without:.3f} s")
    print(f"  per job, page open:   median {with_client:.3f} s, mean {mean_with:.3f} s")
    print(f"  overhead: median {100 * (with_client / without - 1):+.1f} %, "
          f"mean {100 * (mean_with / mean_without - 1):+.1f} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
