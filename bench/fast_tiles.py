"""What tiles with the thumbnail's instance-norm statistics buy against tiles with their own,
and what the thumbnail pass costs.

For each bundled model, Kodak photos enlarged (as a phone photo is large): the mean
distance (grey levels) of the tiled result from the photo stylised in one piece, with each
tile normalised by its own statistics (as before) and by the thumbnail's (now); and the
seconds of each, interleaved, with their ratio, all measured in one run.

    python bench/fast_tiles.py [--photos DIR] [--names kodim03 kodim15] [--scale 3] [--tile 768]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import plugin as fast
from stylebox.testing.context import RecordingContext

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared/data/content"


def stylise(plugin: fast.FastPlugin, photo: Image.Image, folder: Path) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    out = plugin.process(photo, RecordingContext(folder))
    return np.asarray(out, dtype=np.float64), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--tile", type=int, default=768)
    parser.add_argument("--names", nargs="+", default=["kodim01", "kodim02", "kodim03", "kodim15"])
    args = parser.parse_args()
    thumbnail_sessions = fast.thumbnorm_sessions_for
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        runtime = Runtime(device="cpu", state_dir=folder / "state")
        print("model               photo    size        own stats  thumbnail  seconds own/thumb")
        for model in ("starry_night_small", "the_scream_small"):
            whole = fast.FastPlugin(fast.FastParams(model=model, tile_size=8192), runtime)
            tiled = fast.FastPlugin(fast.FastParams(model=model, tile_size=args.tile), runtime)
            for path in (args.photos / f"{name}.png" for name in args.names):
                with Image.open(path) as opened:
                    photo = opened.convert("RGB")
                size = (round(photo.width * args.scale), round(photo.height * args.scale))
                photo = photo.resize(size, Image.Resampling.LANCZOS)
                reference, _ = stylise(whole, photo, folder)
                distances: dict[str, float] = {}
                seconds: dict[str, float] = {"own": 0.0, "thumbnail": 0.0}
                stylise(tiled, photo, folder)  # warm-up: sessions and graphs made
                for _ in range(2):  # interleaved rounds
                    for kind in ("own", "thumbnail"):
                        fast.thumbnorm_sessions_for = (
                            (lambda *_: None) if kind == "own" else thumbnail_sessions
                        )
                        try:
                            result, took = stylise(tiled, photo, folder)
                        finally:
                            fast.thumbnorm_sessions_for = thumbnail_sessions
                        distances[kind] = float(np.abs(result - reference).mean())
                        seconds[kind] += took
                print(
                    f"{model:19} {path.stem:8} {size[0]}x{size[1]:<6} "
                    f"{distances['own']:9.1f}  {distances['thumbnail']:9.1f}  "
                    f"{seconds['own'] / 2:5.1f} / {seconds['thumbnail'] / 2:5.1f} = "
                    f"{seconds['own'] / seconds['thumbnail']:.2f}"
                )


if __name__ == "__main__":
    main()
