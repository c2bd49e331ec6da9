"""Issue 13's figures, side by side in one run: how close stylebox keeps a GPU to its floor.

* **gatys per step**: the plugin's L-BFGS step against the bare floor (VGG19's forward and
  backward pass through the deepest loss layer, nothing else), at each ``--sizes``;
  target: within 1.3x at 512 px;
* **gatys job**: a default job (``--steps``, a snapshot every 25 steps, checkpoints, GIF,
  manifest) through the runner, against the same optimisation with no outputs at all;
  target: within 1.5x;
* **gatys batch**: ``--batch`` same-size photos optimised together against one by one:
  images per second, and the largest pixel difference between the two; target: 3x;
* **bf16**: the per-step time under bf16 autocast against fp32 (CUDA only);
* **fast**: ``bench/fast_io.py`` (the plugin against bare onnxruntime).

Without CUDA it says so and exits 0. ``--device cpu`` runs every measurement on the CPU
(with small ``--sizes`` and ``--steps``, to check the script where there is no GPU).

    python bench/gpu.py [--device cuda] [--sizes 512 1024] [--steps 300] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylebox.daemon.outbox import Outbox
from stylebox.daemon.runner import Job, PluginHandle, Runner
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.tensors import to_tensor
from stylebox.testing import RecordingContext

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "content"


def photos(count: int, size: int) -> list[Image.Image]:
    """Kodak photos (the first ``count``), cropped to one size: a batch is same-size."""
    paths = sorted(PHOTOS.glob("kodim*.png"))[:count]
    if len(paths) < count:
        raise SystemExit(f"needs {count} photos in {PHOTOS}")
    shot = [Image.open(path).convert("RGB").crop((0, 0, 768, 512)) for path in paths]
    return [image.resize((size, size * 2 // 3), Image.Resampling.LANCZOS) for image in shot]


def synced(device: str) -> Callable[[], float]:
    """A clock that waits for the GPU first."""

    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def plugin(state: Path, device: str, **params: object) -> GatysPlugin:
    settings = GatysParams.model_validate({"style": ["starry_night"], **params})
    return GatysPlugin(settings, Runtime(device=device, state_dir=state))


def per_step(state: Path, device: str, size: int, steps: int, **params: object) -> float:
    """The plugin's median seconds per step (its own ``its`` metric, averaged over each
    read-back's steps), no outputs."""
    job = plugin(
        state, device, size=size, steps=steps, snapshot_every=0, checkpoint_seconds=0,
        require_progress=0, **params,
    )  # fmt: skip
    context = RecordingContext(Path(tempfile.mkdtemp(prefix=f"step-{size}-", dir=state)))
    job.process(photos(1, size)[0], context)
    return statistics.median(1.0 / its for its in context.metric("its")[2:])


def bare_step(state: Path, device: str, size: int, rounds: int) -> float:
    """VGG19 forward and backward through the default loss's deepest layer: the floor."""
    engine = plugin(state, device, size=size).engine
    layers = sorted({*engine.params.content_layers, *engine.params.style_layers})
    x = to_tensor(photos(1, size)[0], engine.device).requires_grad_(True)
    now, times = synced(device), []
    for _ in range(rounds + 2):
        began = now()
        features = engine.network(x, layers)
        sum(f.sum() for f in features.values()).backward()  # type: ignore[union-attr]
        times.append(now() - began)
    return statistics.median(times[2:])


def job_against_bare(state: Path, device: str, size: int, steps: int) -> tuple[float, float]:
    """Wall seconds of a default job through the runner, and of its bare optimisation."""
    image = photos(1, size)[0]
    path = state / "photo.png"
    image.save(path)
    bare = plugin(state, device, size=size, steps=steps, snapshot_every=0, checkpoint_seconds=0)
    now = synced(device)
    bare.process(image, RecordingContext(state / "warm"))
    began = now()
    bare.process(image, RecordingContext(state / "bare"))
    bare_seconds = now() - began
    full = plugin(state, device, size=size, steps=steps)
    handle = PluginHandle("gatys", "bench", full, full.params)
    began = now()
    Runner().execute(Job(path, state / "work", stem="photo"), handle, Outbox(state / "out"))
    return now() - began, bare_seconds


def batch_against_singles(
    state: Path, device: str, size: int, steps: int, count: int
) -> tuple[float, float, str]:
    """Images per second optimised together and one by one, and how far apart their
    results are (float rounding differs in a batched convolution, and grows over steps)."""
    job = plugin(state, device, size=size, steps=steps, snapshot_every=0, checkpoint_seconds=0)
    images = photos(count, size)
    now = synced(device)
    job.process(images[0], RecordingContext(state / "warm-batch"))
    batched = [RecordingContext(state / f"b{i}") for i in range(count)]
    began = now()
    together = job.process_batch(images, batched)
    batch_rate = count / (now() - began)
    single = [RecordingContext(state / f"s{i}") for i in range(count)]
    began = now()
    alone = [job.process(image, context) for image, context in zip(images, single, strict=True)]
    single_rate = count / (now() - began)
    differences = [
        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        for a, b in zip(together, alone, strict=True)
    ]
    losses = [
        abs(b.metric("loss")[-1] / s.metric("loss")[-1] - 1)
        for b, s in zip(batched, single, strict=True)
    ]
    apart = (
        f"largest difference {max(int(d.max()) for d in differences)} grey levels, mean "
        f"{max(float(d.mean()) for d in differences):.2f}, final losses within "
        f"{max(losses) * 100:.2f} %"
    )
    return batch_rate, single_rate, apart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA here: the GPU figures of issue 13 are not measured on this machine")
        return 0
    state = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "the CPU"
    print(f"on {name}, torch {torch.__version__}")

    for size in args.sizes:
        floor = bare_step(state, args.device, size, args.rounds)
        step = per_step(state, args.device, size, max(args.rounds, 50))
        synced_step = per_step(state, args.device, size, max(args.rounds, 50), report_every=1)
        print(
            f"gatys per step at {size} px: stylebox {step * 1e3:.2f} ms, bare VGG19 "
            f"{floor * 1e3:.2f} ms, ratio {step / floor:.2f} (target <= 1.3 at 512 px); "
            f"losses read back every step: {synced_step * 1e3:.2f} ms"
        )
    size = args.sizes[0]
    job, bare = job_against_bare(state, args.device, size, args.steps)
    print(
        f"gatys job at {size} px, {args.steps} steps, default outputs: {job:.2f} s, bare "
        f"{bare:.2f} s, ratio {job / bare:.2f} (target <= 1.5)"
    )
    together, alone, apart = batch_against_singles(
        state, args.device, size, min(args.steps, 50), args.batch
    )
    print(
        f"gatys batch of {args.batch} at {size} px: {together:.2f} images/s, one by one "
        f"{alone:.2f} images/s, ratio {together / alone:.2f} (target >= 3 on a GPU); {apart}"
    )
    if args.device.startswith("cuda"):
        bf16 = per_step(state, args.device, size, max(args.rounds, 50), precision="bf16")
        fp32 = per_step(state, args.device, size, max(args.rounds, 50))
        print(f"bf16 per step at {size} px: {bf16 * 1e3:.2f} ms, fp32 {fp32 * 1e3:.2f} ms")
    else:
        print("bf16: CUDA only (gatys refuses it on the CPU)")
    print("fast plugin against bare onnxruntime:", flush=True)
    fast = [sys.executable, str(REPO / "bench" / "fast_io.py")]
    if not args.device.startswith("cuda"):  # a check of the script: the quickest table
        fast += ["--cpu-only", "--presets", "identity", "--repeat", "1"]
    return subprocess.run(fast, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
