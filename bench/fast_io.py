"""The fast plugin's own cost over bare onnxruntime, on the CPU and (where present) CUDA.

For each device, preset and size (512x512 and 1920x1080), with the model the plugin picks
there (``precision = "auto"``: the fp16 variant on CUDA), milliseconds per image for:

* **bare**: ``session.run`` on a ready NCHW float32 array, the result back as numpy;
* **bound** (CUDA only): the same graph with input and output already on the GPU through
  I/O binding: the compute floor, no copies;
* **plugin**: ``FastPlugin.process`` on a PIL image (pixels in the graph as uint8, I/O
  binding on CUDA; what the plugin does now);
* **plain**: the same plugin with the numpy float32 conversions (what it did before).

Then plugin/bare, plain/bare, and the largest difference between the two plugins' pixels.
Photos are not tiled (``tile_size`` 4096, the GPU default), so both sides run the same
whole-image graph. Decoding and encoding are left
out (``bench/fast_infer.py`` has them). The bundled ``starry_night_small`` model is the
small preset; the full preset is a freshly initialised network, exported with its fp16
variant (speed does not depend on the weights); "identity" returns its input, which leaves
the conversions alone (plugin - bare and plain - bare are their cost).

    python bench/fast_io.py [--repeat 5] [--presets small full] [--cpu-only]

Without CUDA it says "no CUDA here" after the CPU table and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.plugins.faststyle.engine import engine_for
from stylebox.plugins.faststyle.export import export_onnx, fp16_path
from stylebox.plugins.faststyle.manifest import ModelManifest
from stylebox.plugins.faststyle.network import TransformerNet
from stylebox.testing import RecordingContext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_infer import medians_ms

REPO = Path(__file__).resolve().parent.parent
SIZES = ((512, 512), (1920, 1080))


def models(folder: Path, presets: list[str]) -> dict[str, Path]:
    found = {}
    for preset in presets:
        if preset == "small":
            found[preset] = REPO / "styles" / "starry_night_small.onnx"
            continue
        if preset == "identity":
            found[preset] = identity(folder / "identity.onnx")
            continue
        torch.manual_seed(0)
        network = TransformerNet(preset).eval()
        model = export_onnx(network, folder / f"{preset}.onnx")
        export_onnx(network, fp16_path(model), fp16=True)
        ModelManifest(style="bench", precision="fp16").write(fp16_path(model))
        ModelManifest(style="bench", fp16_variant=fp16_path(model).name).write(model)
        found[preset] = model
    return found


def identity(path: Path) -> Path:
    """A graph that returns its input: what is left is the pixel conversions alone."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, path)
    ModelManifest(style="identity").write(path)
    return path


def bound(session: Any, array: np.ndarray, device_id: int) -> Callable[[], object]:
    """``session.run`` with its input and output on the GPU: no copies at all."""
    import onnxruntime as ort

    binding = session.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(array, "cuda", device_id))
    binding.bind_output("output", "cuda", device_id)

    def run() -> object:
        session.run_with_iobinding(binding)
        return binding

    return run


def table(device: str, presets: dict[str, Path], repeat: int, warm: int, folder: Path) -> None:
    photo = Image.open(REPO / "examples" / "photos" / "kodim05.png").convert("RGB")
    print(f"\n{device}: median ms per image of {repeat} interleaved rounds after {warm} warm-up")
    print(f"{'preset':<6} {'size':>9} {'model':>5} {'bare':>8} {'bound':>8} {'plugin':>8} "
          f"{'plain':>8}  plugin/bare  plain/bare  max diff")  # fmt: skip
    for preset, model in presets.items():
        params = FastParams(model=model, tile_size=4096, device=device)  # type: ignore[arg-type]
        plugin = FastPlugin(params, Runtime(device=device, state_dir=folder / "state"))
        plain = FastPlugin(params, Runtime(device=device, state_dir=folder / "state"))
        plain.engine = engine_for(
            plain.model, plain.manifest, device, folder / "trt", io="plain", binding=False
        )
        for size in SIZES:
            row(preset, size, plugin, plain, device, photo, repeat, warm, folder)


def row(
    preset: str,
    size: tuple[int, int],
    plugin: FastPlugin,
    plain: FastPlugin,
    device: str,
    photo: Image.Image,
    repeat: int,
    warm: int,
    folder: Path,
) -> None:
    session = plain.engine.session  # the model as exported, as the plugin picked it
    image = photo.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None].copy()
    context = RecordingContext(folder / "job")
    functions: dict[str, Callable[[], object]] = {
        "bare": lambda: session.run(["output"], {"input": array}),
        "plugin": lambda: plugin.process(image, context),
        "plain": lambda: plain.process(image, context),
    }
    if device == "cuda":
        options = session.get_provider_options().get("CUDAExecutionProvider", {})
        functions["bound"] = bound(session, array, int(options.get("device_id", 0)))
    ms = medians_ms(functions, repeat, warm)
    new, old = (np.asarray(p.process(image, context), int) for p in (plugin, plain))
    worst = int(np.abs(new - old).max())
    print(f"{preset:<6} {'x'.join(map(str, size)):>9} {plugin.manifest.precision:>5} "
          f"{ms['bare']:8.1f} {ms.get('bound', float('nan')):8.1f} {ms['plugin']:8.1f} "
          f"{ms['plain']:8.1f}  {ms['plugin'] / ms['bare']:11.2f}  "
          f"{ms['plain'] / ms['bare']:10.2f}  {worst:8d}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm-up", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["identity", "small", "full"])
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    import onnxruntime as ort

    folder = Path(tempfile.mkdtemp(prefix="stylebox-fast-io-"))
    presets = models(folder, args.presets)
    table("cpu", presets, args.repeat, args.warm_up, folder)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    if args.cpu_only:
        return 0
    if not cuda:
        print("\nno CUDA here: the CUDA figures (plugin within 1.2x of bare; 1080p full preset "
              "<= 15 ms on an H100) are not measured")  # fmt: skip
        return 0
    print(f"CUDA device: {torch.cuda.get_device_name()}")
    table("cuda", presets, args.repeat + 15, args.warm_up + 3, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
