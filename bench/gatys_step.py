"""Per-step cost and time-to-quality of the gatys engine, measured side by side.

Three loops run on the same photo, painting and objective (the plugin's default layers and
weights) at 256 px on this machine's CPU:

* **textbook**: a faithful transcription of the classic loop: Adam, and the content and
  style features (and style Grams) recomputed from the images at every step;
* **bare**: VGG19's forward and backward pass through the whole convolutional stack on the
  same image, with no loss at all: the floor any engine pays per step;
* **stylebox**: the ``gatys`` plugin itself, exactly as the daemon runs it.

It prints per-step times (median of interleaved rounds) and their ratios, then the wall
time each engine needs to reach the loss the textbook loop has after 100 steps.

    python bench/gatys_step.py [--size 256] [--rounds 3] [--photo PATH] [--style PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylebox.backbone import load_vgg19
from stylebox.errors import Cancelled
from stylebox.images import decode_image, resize_to_max_side
from stylebox.perceptual import gram, total_variation
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.plugins.gatys.losses import Objective
from stylebox.tensors import to_tensor
from stylebox.testing import RecordingContext

REPO = Path(__file__).resolve().parent.parent


def textbook_loop(
    network: Any,
    content: torch.Tensor,
    style: torch.Tensor,
    p: GatysParams,
    steps: int,
    lr: float,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The classic loop, transcribed: one feature model (VGG19 up to the deepest loss layer)
    runs the photo, the painting and the image at every step, then Adam updates the image."""
    x = content.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    layers = sorted({*p.content_layers, *p.style_layers})
    for step in range(steps):
        optimizer.zero_grad()
        content_features = network(content, layers)
        style_features = network(style, layers)
        features = network(x, layers)
        content_loss = sum(
            w * F.mse_loss(features[k], content_features[k]) for k, w in p.content_layers.items()
        )
        style_loss = sum(
            w * F.mse_loss(gram(features[k]), gram(style_features[k]))
            for k, w in p.style_layers.items()
        )
        loss = (
            p.content_weight * content_loss
            + p.style_weight * style_loss
            + p.tv_weight * total_variation(x)
        )
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    return x.detach()


def bare_step(network: Any, image: torch.Tensor) -> None:
    x = image.clone().requires_grad_(True)
    network(x, ["pool5"])["pool5"].sum().backward()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing round")
    parser.add_argument("--photo", type=Path, default=REPO / "examples" / "photos" / "kodim05.png")
    parser.add_argument("--style", type=Path, default=REPO / "styles" / "starry_night.jpg")
    parser.add_argument("--textbook-lr", type=float, default=0.02)
    args = parser.parse_args()

    torch.manual_seed(0)
    photo = resize_to_max_side(decode_image(args.photo).rgb, args.size)
    painting = resize_to_max_side(decode_image(args.style).rgb, args.size)
    content, style = to_tensor(photo), to_tensor(painting)
    network = load_vgg19()
    state = Path(tempfile.mkdtemp(prefix="stylebox-bench-"))
    runtime = Runtime(device="cpu", state_dir=state)
    base = {
        "style": [str(args.style)],
        "size": args.size,
        "snapshot_every": 0,
        "checkpoint_every": 0,
    }
    defaults = GatysParams.model_validate(base)

    print(
        f"gatys per-step cost at {photo.size[0]}x{photo.size[1]} on CPU "
        f"({torch.get_num_threads()} threads, torch {torch.__version__})"
    )

    def time_textbook() -> float:
        stamps: list[float] = []
        textbook_loop(
            network,
            content,
            style,
            defaults,
            args.steps + 1,
            args.textbook_lr,
            lambda _: stamps.append(time.perf_counter()),
        )
        return (stamps[-1] - stamps[0]) / args.steps

    def time_bare() -> float:
        bare_step(network, content)
        began = time.perf_counter()
        for _ in range(args.steps):
            bare_step(network, content)
        return (time.perf_counter() - began) / args.steps

    plugin = GatysPlugin(GatysParams.model_validate({**base, "steps": args.steps + 1}), runtime)

    def time_stylebox() -> float:
        with tempfile.TemporaryDirectory() as job:
            context = RecordingContext(Path(job))
            stamps: list[float] = []
            original = context.progress

            def stamped(step: int, total: int, **metrics: float) -> None:
                stamps.append(time.perf_counter())
                original(step, total, **metrics)

            context.progress = stamped  # type: ignore[method-assign]
            plugin.process(photo, context)
        return (stamps[-1] - stamps[0]) / args.steps

    timings: dict[str, list[float]] = {"textbook": [], "bare": [], "stylebox": []}
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits all alike
        timings["textbook"].append(time_textbook())
        timings["bare"].append(time_bare())
        timings["stylebox"].append(time_stylebox())
    per_step = {name: statistics.median(values) for name, values in timings.items()}
    for name, seconds in per_step.items():
        print(f"  {name:<9} {seconds * 1000:8.1f} ms/step")
    ours = per_step["stylebox"]
    print(f"  stylebox / textbook = {ours / per_step['textbook']:.3f}  (target <= 0.55)")
    print(f"  stylebox / bare     = {ours / per_step['bare']:.3f}  (target <= 1.15)")

    # -- time to quality ---------------------------------------------------------------------
    objective_params = defaults
    content_targets = {
        k: v.detach() for k, v in network(content, list(objective_params.content_layers)).items()
    }
    style_targets = {
        k: gram(v).detach() for k, v in network(style, list(objective_params.style_layers)).items()
    }
    objective = Objective(
        network,
        content_targets,
        style_targets,
        objective_params.content_layers,
        objective_params.style_layers,
        objective_params.content_weight,
        objective_params.style_weight,
        objective_params.tv_weight,
    )

    began = time.perf_counter()
    result = textbook_loop(network, content, style, defaults, 100, args.textbook_lr)
    textbook_seconds = time.perf_counter() - began
    with torch.no_grad():
        target = objective(result)[1]["loss"]
    print(f"\ntime to reach the textbook's loss after 100 steps ({target:.4g})")
    print(f"  textbook (Adam lr={args.textbook_lr}, 100 steps) {textbook_seconds:7.2f} s")

    def reach(label: str, **overrides: Any) -> float | None:
        params = GatysParams.model_validate({**base, "steps": 100, **overrides})
        engine = GatysPlugin(params, runtime)
        with tempfile.TemporaryDirectory() as job:
            context = RecordingContext(Path(job))
            reached: list[float] = []
            original = context.progress
            start = time.perf_counter()

            def watch(step: int, total: int, **metrics: float) -> None:
                original(step, total, **metrics)
                if metrics["size"] == photo_side and metrics["loss"] <= target and not reached:
                    reached.append(time.perf_counter() - start)
                    context.cancel()  # stop: the point is made

            context.progress = watch  # type: ignore[method-assign]
            with contextlib.suppress(Cancelled):  # raised once the target is reached
                engine.process(photo, context)
        seconds = reached[0] if reached else None
        shown = (
            f"{seconds:7.2f} s  ({seconds / textbook_seconds:.3f}x textbook)"
            if seconds
            else "not reached"
        )
        print(f"  {label:<40} {shown}")
        return seconds

    photo_side = float(max(photo.size))
    reached = [
        reach("stylebox L-BFGS", steps=100),
        reach(
            f"stylebox L-BFGS coarse-to-fine {args.size // 2}->{args.size}",
            scales=[args.size // 2],
            coarse_steps=30,
            steps=100,
        ),
        reach(
            "stylebox Adam (precomputed targets)", optimizer="adam", learning_rate=args.textbook_lr
        ),
    ]
    times = [seconds for seconds in reached if seconds is not None]
    if times:
        print(f"  best ratio {min(times) / textbook_seconds:.3f}  (target <= 0.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
