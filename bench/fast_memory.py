"""The memory a daemon keeps after big photos, and what giving it back costs in time.

Each variant runs in processes of its own, interleaved round by round: the ``fast`` plugin
(starry_night_small, on the CPU) decodes, stylises and encodes Kodak photos enlarged to
phone size (in 768 px tiles), then Kodak photos as they are (768x512, whole), as a
daemon's job loop would. Printed for each: the median seconds a big photo and
milliseconds a small one, the process's peak memory, and its memory once idle after them.

* **kept**: as before: onnxruntime's CPU arena and glibc's heap keep what the jobs took;
* **trimmed**: glibc's free heap pages handed back after each job (``daemon/memory.py``);
* **every run**: that, and the arena shrunk at the end of every run (each tile's);
* **now**: glibc's pages handed back, and the arena shrunk by a photo's last tile.

    python bench/fast_memory.py [--scale 3] [--rounds 3] [--photos kodim12 kodim15]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared/data/content"
VARIANTS = ("kept", "trimmed", "every run", "now")
SMALL = 6


def _memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def child(variant: str, names: list[str], scale: float) -> None:
    """Run the photos as ``variant`` and print one JSON line of figures."""
    from PIL import Image

    from stylebox.daemon import memory
    from stylebox.images import decode_bytes, encode_image
    from stylebox.plugins.api import Runtime
    from stylebox.plugins.faststyle import FastParams, FastPlugin, engine, plugin
    from stylebox.testing import RecordingContext

    shrink = engine.run_options
    if variant in ("kept", "trimmed"):  # as before: every run with the default options
        engine.run_options = plugin.run_options = lambda session, give_back: None  # type: ignore[assignment]
    elif variant == "every run":
        engine.run_options = lambda session, give_back: shrink(session, True)  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        runtime = Runtime(device="cpu", state_dir=folder)
        fast = FastPlugin(FastParams(model="starry_night_small"), runtime)
        files = []
        for name in names:
            with Image.open(PHOTOS / f"{name}.png") as photo:
                size = (round(photo.width * scale), round(photo.height * scale))
                big = photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            encoded = io.BytesIO()
            big.save(encoded, "JPEG", quality=92)
            files.append(encoded.getvalue())
        for index in range(1, SMALL + 1):
            small = io.BytesIO()
            Image.open(PHOTOS / f"kodim{index:02d}.png").convert("RGB").save(small, "JPEG")
            files.append(small.getvalue())
        seconds = []
        for data in files:
            began = time.perf_counter()
            decoded = decode_bytes(data)
            result = fast.process(decoded.rgb, RecordingContext(folder / "job"))
            encode_image(result, "png")
            del decoded, result
            if variant != "kept":
                memory.give_back()
            seconds.append(time.perf_counter() - began)
        print(json.dumps({
            "seconds": seconds[: len(names)],
            "small": seconds[len(names) + 1 :],  # the first warms their size up
            "peak_mb": _memory_mb("VmHWM"),
            "idle_mb": _memory_mb("VmRSS"),
        }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", nargs="+", default=["kodim12", "kodim15"])
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.photos, args.scale)
        return
    figures: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    command = [sys.executable, __file__, "--scale", str(args.scale), "--photos", *args.photos]
    for _ in range(args.rounds):
        for variant in VARIANTS:
            ran = subprocess.run(
                [*command, "--child", variant], capture_output=True, text=True, check=True
            )
            figures[variant].append(json.loads(ran.stdout.strip().splitlines()[-1]))
    side = f"{768 * args.scale:.0f}x{512 * args.scale:.0f}"
    print(f"{len(args.photos)} Kodak photos at {side}, then {SMALL} at 768x512 (the first not "
          f"timed); {args.rounds} round(s)")  # fmt: skip
    print(f"{'variant':<10} {'s big':>6} {'ms small':>9} {'peak MB':>8} {'idle MB':>8} "
          f"{'big / kept':>11} {'small / kept':>13}")  # fmt: skip
    kept = statistics.median(s for run in figures["kept"] for s in run["seconds"])
    kept_small = statistics.median(s for run in figures["kept"] for s in run["small"])
    for variant, runs in figures.items():
        seconds = statistics.median(s for run in runs for s in run["seconds"])
        small = statistics.median(s for run in runs for s in run["small"])
        peak = statistics.median(run["peak_mb"] for run in runs)
        idle = statistics.median(run["idle_mb"] for run in runs)
        print(f"{variant:<10} {seconds:6.2f} {small * 1000:9.0f} {peak:8.0f} {idle:8.0f} "
              f"{seconds / kept:11.2f} {small / kept_small:13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
