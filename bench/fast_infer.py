"""Per-image time of the fast engine on the CPU, side by side in one run.

For each size (256, 512, 1024 px squares) and preset, with the same weights:

* **ort**: bare ``session.run`` on a ready NCHW 0..255 array;
* **plugin**: the ``fast`` plugin end to end: decode a PNG file, stylise, encode the result;
* **codec**: decoding and encoding alone (what the plugin adds besides ``session.run``);
* **torch**: PyTorch eager, ``torch.no_grad``, on the same weights;
* **plain**: bare ``session.run`` of the network exported layer for layer as trained,
  without the export rewrite of ``faststyle/rewrite.py`` (``plain/ort`` is what it earns).

Then, for the small preset: one ``session.run`` on a batch of 8 same-size images against 8
single runs (why the plugin batches on GPUs only).

Weights are freshly initialised: speed does not depend on what the network learned.
``--profile`` adds onnxruntime's time per operator type for the small preset at 512 px,
both exports.

    python bench/fast_infer.py [--repeat 7] [--sizes 256 512 1024] [--profile]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stylebox.images import decode_bytes, encode_image
from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.plugins.faststyle.export import export_onnx
from stylebox.plugins.faststyle.manifest import ModelManifest
from stylebox.plugins.faststyle.network import TransformerNet
from stylebox.plugins.faststyle.session import session_for
from stylebox.testing import RecordingContext

REPO = Path(__file__).resolve().parent.parent


#: Runs before timing. PyTorch eager's first runs at a new size are up to twice as slow
#: (oneDNN primitives, allocator), and a single warm-up let them into the median.
WARM_UP = 3


def medians_ms(
    functions: dict[str, Callable[[], object]], repeat: int, warm: int = WARM_UP
) -> dict[str, float]:
    """Median milliseconds of each function, timed in interleaved rounds (one run of each
    per round) so that a noisy stretch of the shared machine falls on all of them alike;
    ``warm`` untimed runs of each first."""
    for function in functions.values():
        for _ in range(warm):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def measure(
    network: TransformerNet,
    session: Any,
    plain: Any,
    plugin: FastPlugin,
    photo: Image.Image,
    size: int,
    folder: Path,
    repeat: int,
) -> tuple[float, float, float, float, float]:
    """Milliseconds for bare ort, the plugin end to end, the codec alone, PyTorch eager and
    bare ort on the plain export."""
    image = photo.resize((size, size), Image.Resampling.LANCZOS)
    png = io.BytesIO()
    image.save(png, "PNG")
    data = png.getvalue()
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None].copy()
    tensor = torch.from_numpy(array)

    def bare() -> object:
        return session.run(["output"], {"input": array})

    def end_to_end() -> object:
        decoded = decode_bytes(data)
        result = plugin.process(decoded.rgb, RecordingContext(folder / "job"))
        return encode_image(result, "png")

    def bare_plain() -> object:
        return plain.run(["output"], {"input": array})

    def codec() -> object:
        return encode_image(decode_bytes(data).rgb, "png")

    def eager() -> object:
        with torch.no_grad():
            return network(tensor)

    ms = medians_ms(
        {"ort": bare, "plugin": end_to_end, "codec": codec, "torch": eager, "plain": bare_plain},
        repeat,
    )
    return ms["ort"], ms["plugin"], ms["codec"], ms["torch"], ms["plain"]


def profile(model: Path, size: int, folder: Path, runs: int = 10) -> dict[str, float]:
    """onnxruntime's own kernel times per operator type, in ms per run: the mean of ``runs``
    runs after a first one (allocations, kernel choices) that is left out."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / model.stem)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    array = np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32)
    for _ in range(runs + 1):
        session.run(["output"], {"input": array})
    events = json.loads(Path(session.end_profiling()).read_text())
    seen: set[str] = set()
    per_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if event["name"] not in seen:  # this node's first run
            seen.add(event["name"])
            continue
        op = event["args"]["op_name"]
        per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1000 / runs
    return dict(sorted(per_op.items(), key=lambda item: -item[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--profile", action="store_true", help="time per operator type")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="stylebox-fast-bench-"))
    photo = Image.open(REPO / "examples" / "photos" / "kodim05.png").convert("RGB")
    print(f"fast engine on CPU ({torch.get_num_threads()} torch threads), median of "
          f"{args.repeat} interleaved rounds after {WARM_UP} warm-up runs")  # fmt: skip
    print(f"{'preset':<6} {'size':>5} {'ort':>9} {'plugin':>9} {'codec':>8} {'torch':>9}"
          f" {'plain':>9}  plugin/(ort+codec)  ort/torch  plain/ort")  # fmt: skip
    for preset in ("full", "small"):
        network = TransformerNet(preset).eval()
        model = export_onnx(network, folder / f"{preset}.onnx")
        plain_model = export_onnx(network, folder / f"{preset}-plain.onnx", rewrite=False)
        ModelManifest(style="bench").write(model)
        ModelManifest(style="bench").write(plain_model)
        session = session_for(model, "cpu", folder / "trt")
        plain = session_for(plain_model, "cpu", folder / "trt")
        plugin = FastPlugin(
            FastParams(model=model, tile_size=4096), Runtime(device="cpu", state_dir=folder)
        )
        for size in args.sizes:
            timings = measure(network, session, plain, plugin, photo, size, folder, args.repeat)
            ort_ms, plugin_ms, codec_ms, torch_ms, plain_ms = timings
            print(f"{preset:<6} {size:>5} {ort_ms:8.1f}ms {plugin_ms:8.1f}ms {codec_ms:7.1f}ms "
                  f"{torch_ms:8.1f}ms {plain_ms:8.1f}ms  {plugin_ms / (ort_ms + codec_ms):17.2f}  "
                  f"{ort_ms / torch_ms:9.2f}  {plain_ms / ort_ms:9.2f}")  # fmt: skip
    print("targets: plugin <= 1.2x (ort + codec); ort <= 0.7x torch; small at 512 <= 130 ms")
    print(f"\nbatch of 8 vs 8 single session.run calls (small preset), median of {args.repeat}")
    for size in args.sizes:
        batch = np.random.default_rng(0).uniform(0, 255, (8, 3, size, size)).astype(np.float32)
        ms = medians_ms(
            {
                "together": lambda b=batch: session.run(["output"], {"input": b}),
                "alone": lambda b=batch: [
                    session.run(["output"], {"input": b[i : i + 1]}) for i in range(8)
                ],
            },
            args.repeat,
        )
        together, alone = ms["together"], ms["alone"]
        print(f"{size:>5} px: batch {together / 8:7.1f} ms/image, single {alone / 8:7.1f} "
              f"ms/image, batch/single {together / alone:5.2f}")  # fmt: skip
    if args.profile:
        print("\nonnxruntime kernel time per operator type, small preset at 512 px (ms/run)")
        both = {name: profile(folder / f"small{name}.onnx", 512, folder) for name in ("", "-plain")}
        ops = sorted({*both[""], *both["-plain"]}, key=lambda op: -both["-plain"].get(op, 0.0))
        print(f"{'operator':<22} {'export':>8} {'plain':>8}")
        for op in ops:
            print(f"{op:<22} {both[''].get(op, 0.0):8.2f} {both['-plain'].get(op, 0.0):8.2f}")
        print(f"{'total':<22} {sum(both[''].values()):8.2f} {sum(both['-plain'].values()):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
