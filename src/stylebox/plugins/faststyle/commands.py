"""The fast plugin's own commands: ``stylebox train``, ``stylebox export`` and
``stylebox models``.

Registered through the ``stylebox.commands`` entry-point group, so the host's CLI knows
nothing of TransformerNet, training or ONNX export. Importing this module is cheap: the
training and export code (and PyTorch) load when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stylebox.errors import ConfigError
from stylebox.images import atomic_write_bytes
from stylebox.plugins.api import path_argument

log = logging.getLogger("stylebox.train")

EXIT_OK = 0
EXIT_INTERRUPTED = 130


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """The first Ctrl-C or SIGTERM sets the event (training checkpoints at the end of its
    step and stops); a second interrupts at once (``KeyboardInterrupt``)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        for sig in signals:
            signal.signal(sig, signal.default_int_handler)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _WithDefaults(argparse.HelpFormatter):
    """Help that gives each option's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.required
        if not quiet and action.default is not argparse.SUPPRESS:
            text += " (default: %(default)s)"
        return text


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``train``, ``export`` and ``models`` to the ``stylebox`` command line."""
    train = commands.add_parser(
        "train",
        help="train a fast-style network and export it to ONNX",
        description="Train a TransformerNet on a folder of photos for one painting, writing "
        "checkpoints and sample stylisations to OUT.train/, then export OUT (.onnx) with its "
        "manifest. --resume continues a stopped run.",
        formatter_class=_WithDefaults,
    )
    train.add_argument("--style", required=True, help="style image path or bundled name")
    train.add_argument(
        "--content-dir", type=path_argument, required=True, help="photos to train on"
    )
    train.add_argument("--out", required=True, help="the model to write (.onnx)")
    train.add_argument(
        "--preset",
        choices=["full", "small"],
        default="full",
        help="full: the paper's network (for GPUs); small: half as wide, for CPUs",
    )
    train.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    train.add_argument("--image-size", type=int, default=256, help="training crop side")
    train.add_argument(
        "--style-size", type=int, help="longest side of the style image (default: its own)"
    )
    train.add_argument("--batch-size", type=int, default=4, help="crops per step")
    train.add_argument("--style-weight", type=float, help="style loss weight (default: 1)")
    train.add_argument("--content-weight", type=float, help="content loss weight (default: 1)")
    train.add_argument(
        "--tv-weight",
        type=float,
        help="total variation weight, on 0-255 pixels: evens out the output's finest grain "
        "(default: 1e-06, the bundled models')",
    )
    train.add_argument("--learning-rate", type=float, help="Adam's (default: 0.001)")
    train.add_argument("--seed", type=int, default=0, help="crops, flips and initial weights")
    train.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if any"
    )
    train.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(handler=_train)

    export = commands.add_parser(
        "export",
        help="export a training checkpoint to ONNX, verified against PyTorch",
        description="Export a checkpoint to MODEL.onnx with its manifest (MODEL.json), "
        "written under a hidden name and put in place only once onnxruntime matches "
        "PyTorch within 0.01 at three sizes: an earlier model there stays whole otherwise.",
    )
    export.add_argument(
        "checkpoint",
        type=path_argument,
        help="OUT.train/checkpoint.pt of `stylebox train`, or a state dict of PyTorch's "
        "fast_neural_style example",
    )
    export.add_argument(
        "--out", dest="out_given", metavar="MODEL", required=True, help="MODEL.onnx to write"
    )
    export.add_argument(
        "--style",
        default="",
        help="the style's name for the manifest (default: the name of the painting the "
        "checkpoint was trained on)",
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="also write MODEL.fp16.onnx for GPUs, kept only if it matches PyTorch within "
        "one grey level",
    )
    export.set_defaults(handler=_export)

    models = commands.add_parser(
        "models",
        help="list the bundled fast models (the names model = ... takes)",
        description="The ONNX models bundled in styles/, by the name the fast plugin's "
        "model param takes: the painting each was trained on, its file size, whether it has "
        "a verified fp16 variant, and how it was trained.",
    )
    models.set_defaults(handler=_models)


def _train(args: argparse.Namespace) -> int:
    import time

    from stylebox.plugins.faststyle.export import TRAINING_RECORD, export_with_manifest
    from stylebox.plugins.faststyle.train import CHECKPOINT, TrainingStopped, TrainParams, train
    from stylebox.progress import count_bar

    out = _model_out(args.out)
    chosen = {
        "style": args.style, "content_dir": args.content_dir, "preset": args.preset,
        "steps": args.steps, "image_size": args.image_size, "style_size": args.style_size,
        "batch_size": args.batch_size, "style_weight": args.style_weight,
        "content_weight": args.content_weight, "tv_weight": args.tv_weight,
        "learning_rate": args.learning_rate,
        "seed": args.seed, "device": args.device, "checkpoint_every": args.checkpoint_every,
    }  # fmt: skip
    try:
        params = TrainParams.model_validate(
            {k: v for k, v in chosen.items() if v is not None}, context={"base_dir": Path.cwd()}
        )
    except ValidationError as exc:
        from stylebox.config import field_errors

        raise ConfigError("; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in field_errors(exc)
        )) from None  # fmt: skip
    work = out.with_suffix(".train")
    if out.exists() and not args.resume and not work.exists():
        raise ConfigError(f"--out {out} exists: remove it or give another name")
    began = time.perf_counter()
    command = " ".join(["stylebox", *sys.argv[1:]])
    earlier: dict[str, Any] = {}
    if args.resume:
        with contextlib.suppress(OSError, ValueError):
            earlier = json.loads((work / TRAINING_RECORD).read_text())

    def record() -> dict[str, Any]:
        """How the run was made, over every session of it: its first command and those
        that resumed it, its time in all, the machine; kept beside its checkpoint, written
        with each (a run killed keeps its story to its last checkpoint)."""
        made = {
            "command": earlier.get("command", command),
            "seconds": round(earlier.get("seconds", 0) + time.perf_counter() - began, 1),
            "machine": _machine(params.device),
        }
        if args.resume:
            made["resumed_by"] = [*earlier.get("resumed_by", []), command]
        try:
            atomic_write_bytes(work / TRAINING_RECORD, json.dumps(made, indent=2).encode())
        except OSError as exc:  # the checkpoint matters more; the export keeps the record
            log.warning("cannot write %s: %s", work / TRAINING_RECORD, exc.strerror or exc)
        return made

    saved = 0

    def checkpointed(step: int) -> None:
        nonlocal saved
        saved = step
        record()

    # Without a terminal, training logs its own step lines (log_every).
    with count_bar("train", params.steps, lines=False) as advance, _stop_on_signals() as stop:
        try:
            train(
                params, work, resume=args.resume, on_step=lambda *_: advance(1), stop=stop,
                on_checkpoint=checkpointed,
            )  # fmt: skip
        except TrainingStopped as exc:
            record()
            print(
                f"stylebox: stopped at step {exc.step}, checkpointed in {work}; the same "
                "command with --resume continues",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:  # a second Ctrl-C: at once, back to the last checkpoint
            print(f"stylebox: interrupted; {_resumable(saved, work)}", file=sys.stderr)
            return EXIT_INTERRUPTED
    training = record()
    try:
        exported = export_with_manifest(work / CHECKPOINT, out, training=training)
    except KeyboardInterrupt:
        print(
            f"stylebox: stopped before {out} was written; the same command with --resume "
            "exports the finished run",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"{out}: exported (onnxruntime matches PyTorch within {exported.error:.2g})")
    return EXIT_OK


def _resumable(saved: int, work: Path) -> str:
    if not saved:
        return "no checkpoint was written in this session"
    return f"the checkpoint of step {saved} in {work} is whole: --resume continues from it"


def _model_out(given: str) -> Path:
    """The model file ``--out`` names: ``.onnx`` added where it is missing (``m.v2`` is
    ``m.v2.onnx``); a folder (``models/``, or one that exists) is refused."""
    if not given:
        raise ConfigError("--out is empty; name the model: MODEL.onnx")
    if Path(given).is_dir() or given.endswith(("/", "\\")):
        raise ConfigError(f"--out {given} is a folder; name the model: MODEL.onnx")
    path = Path(given)
    return path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")


def _machine(device: str) -> str:
    """What trained it, for its manifest: the CPU's model name, and the GPU's where one
    was used (platform.processor() is empty on Linux: it said only "x86_64")."""
    from stylebox.tensors import resolve_device

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = f"{line.partition(':')[2].strip()} ({platform.machine()})"
                break
    except OSError:
        pass
    used = resolve_device(device)
    if used.type == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(used)}; {cpu}"
    return cpu


def _export(args: argparse.Namespace) -> int:
    from stylebox.plugins.faststyle.export import export_with_manifest

    out = _model_out(args.out_given)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: {out.parent} is not a folder")
    exported = export_with_manifest(args.checkpoint, out, style=args.style, fp16=args.fp16)
    print(f"{exported.model}: exported (onnxruntime matches PyTorch within {exported.error:.2g})")
    if exported.fp16_variant:
        print(
            f"{exported.fp16_variant}: fp16 variant for GPUs, verified "
            f"(within {exported.fp16_error:.2g} of PyTorch fp32)"
        )
    elif exported.fp16_rejected:
        print(f"fp16 variant not kept: {exported.fp16_rejected}", file=sys.stderr)
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    import json

    from stylebox import bundled

    names = bundled.model_names()
    if not names:
        print("no bundled models", file=sys.stderr)
    for name in names:
        model = bundled.find_model(name)
        assert model is not None
        try:
            manifest = json.loads(model.with_suffix(".json").read_text())
        except (OSError, ValueError):
            manifest = {}
        training = manifest.get("training") or {}
        parts = [
            f"style {manifest.get('style') or 'unknown'}",
            f"{model.stat().st_size / 1e6:.1f} MB",
            "fp16 variant" if manifest.get("fp16_variant") else "no fp16 variant",
        ]
        if training.get("steps"):
            parts.append(f"trained {training['steps']} steps on {training.get('machine', '?')}")
        print(f"{name}: {', '.join(parts)}")
    return EXIT_OK
