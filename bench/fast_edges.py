"""What the fast plugin's mirrored edge margin (``edge_margin``) buys, and what it costs.

A feed-forward network sees zeros past a photo's edges (its convolutions' padding) and
paints a band there. For each bundled model and margin, on the Kodak photos: the mean
distance (grey levels) of the outer 3 px of a result from the same pixels stylised inside a
wider photo (the photo with 12 px more of itself around it: what the network paints there
given real context); the same distance for the interior, which the margin should leave
alone; and the seconds per photo, as a ratio to no margin, all measured in one run.

    python bench/fast_edges.py [--photos DIR] [--margins 0 8 16 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.testing.context import RecordingContext

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared/data/content"
#: The Kodak photos' own 2-3 px grey frame is cut off first; the context is 12 px more.
FRAME, CONTEXT, RIM = 4, 12, 3


def stylise(plugin: FastPlugin, pixels: np.ndarray, folder: Path) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    out = plugin.process(Image.fromarray(pixels), RecordingContext(folder))
    return np.asarray(out, dtype=np.float64), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--margins", type=int, nargs="+", default=[0, 8, 16, 32])
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.png"))
    if not photos:
        raise SystemExit(f"no PNG photos in {args.photos}")
    folder = Path(tempfile.mkdtemp(prefix="fast-edges-"))
    print(f"{len(photos)} photos from {args.photos}; rim {RIM} px, context {CONTEXT} px")
    print(f"{'model':<20} {'margin':>6} {'rim dist':>9} {'inner dist':>10} {'s/photo':>8} "
          f"{'time ratio':>10}")  # fmt: skip
    for model in ("starry_night_small", "the_scream_small"):
        plugins = {
            margin: FastPlugin(
                FastParams(model=model, edge_margin=margin),
                Runtime(device="cpu", state_dir=folder / "state"),
            )
            for margin in args.margins
        }
        bare = FastPlugin(
            FastParams(model=model, edge_margin=0), Runtime(device="cpu", state_dir=folder / "s")
        )
        rim: dict[int, list[float]] = {m: [] for m in args.margins}
        inner: dict[int, list[float]] = {m: [] for m in args.margins}
        seconds: dict[int, list[float]] = {m: [] for m in args.margins}
        for path in photos:
            full = np.asarray(Image.open(path).convert("RGB"))[FRAME:-FRAME, FRAME:-FRAME]
            wide, _ = stylise(bare, full, folder)  # its context is real pixels
            reference = wide[CONTEXT:-CONTEXT, CONTEXT:-CONTEXT]
            photo = full[CONTEXT:-CONTEXT, CONTEXT:-CONTEXT]
            for margin, plugin in plugins.items():  # side by side, photo by photo
                stylise(plugin, photo, folder)  # warm: the first run of a size plans it
                out, took = stylise(plugin, photo, folder)
                distance = np.abs(out - reference).mean(axis=2)
                edge = np.ones(distance.shape, dtype=bool)
                edge[RIM:-RIM, RIM:-RIM] = False
                rim[margin].append(float(distance[edge].mean()))
                inner[margin].append(float(distance[20:-20, 20:-20].mean()))
                seconds[margin].append(took)
        base = float(np.mean(seconds[args.margins[0]]))
        for margin in args.margins:
            mean = float(np.mean(seconds[margin]))
            print(f"{model:<20} {margin:>6} {np.mean(rim[margin]):>9.1f} "
                  f"{np.mean(inner[margin]):>10.2f} {mean:>8.3f} {mean / base:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
