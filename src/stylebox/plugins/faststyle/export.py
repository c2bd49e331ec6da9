"""Export a trained TransformerNet to ONNX with dynamic height and width, and prove it.

The exported graph takes NCHW 0..255 images whose sides are multiples of 4 (the plugin
pads and crops); onnxruntime running it must match the PyTorch network as trained within
:data:`TOLERANCE` at three sizes, which also proves the export rewrite exact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stylebox.errors import ConfigError, PluginError
from stylebox.images import fsync_dir, write_temp
from stylebox.plugins.faststyle.manifest import ModelManifest, manifest_path
from stylebox.plugins.faststyle.network import (
    MULTIPLE,
    PRESETS,
    LayoutError,
    TransformerNet,
    UnknownLayout,
    load_state,
    residual_blocks_in,
)
from stylebox.plugins.faststyle.rewrite import for_export

log = logging.getLogger("stylebox.export")

#: Largest allowed difference between onnxruntime and PyTorch, on the 0..255 scale.
TOLERANCE = 1e-2
#: The same for the half-precision variant: under one grey level of the 8-bit result.
FP16_TOLERANCE = 1.0
VERIFY_SIZES = ((64, 64), (96, 160), (224, 128))


def load_checkpoint(path: Path) -> tuple[TransformerNet, dict[str, Any]]:
    """A network from a training checkpoint of ours, or a bare state dict: ours, or one of
    PyTorch's ``fast_neural_style`` example (its ``.pth`` files, full preset), whose layer
    names :func:`~.network.load_state` maps onto ours.

    A missing, unreadable or foreign file is a :class:`ConfigError` saying which.
    """
    expected = (
        "give a checkpoint.pt written by `stylebox train` (in OUT.train/) or a state dict "
        "of PyTorch's fast_neural_style example"
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); {expected}") from None
    except Exception:  # RuntimeError, UnpicklingError, or anything a stray file raises
        # weights_only refuses anything but tensors and plain containers; its own message
        # suggests turning that off, which is not advice to pass on.
        raise ConfigError(
            f"{path}: not a PyTorch file of weights only (or a damaged one); {expected}"
        ) from None
    ours = isinstance(state, dict) and isinstance(state.get("model"), dict)
    weights = state["model"] if ours else state
    preset = state.get("preset", "full") if ours else "full"
    if not isinstance(weights, dict) or preset not in PRESETS:
        raise ConfigError(f"{path}: not a fast-style network checkpoint; {expected}")
    network = TransformerNet(preset, residual_blocks=residual_blocks_in(weights))
    try:
        load_state(network, weights)
    except UnknownLayout as exc:
        raise ConfigError(
            f"{path}: not a fast-style network checkpoint: {exc}; {expected}"
        ) from None
    except LayoutError as exc:
        raise ConfigError(
            f"{path}: its weights do not fit a {preset} TransformerNet ({exc}); {expected}"
        ) from None
    return network.eval(), state if ours else {}


class HalfPrecision(nn.Module):
    """Weights and activations in fp16 for GPUs, with float32 input and output so that the
    plugin feeds both variants alike."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def export_onnx(
    network: TransformerNet, out: Path, *, rewrite: bool = True, fp16: bool = False
) -> Path:
    """Write ``network`` as ONNX, by default in its export form (:mod:`.rewrite`): the same
    function arranged for onnxruntime's CPU kernels. ``rewrite=False`` writes the layers as
    trained (``bench/fast_infer.py`` measures the difference); ``fp16`` computes in half
    precision."""
    # Both forms are copies: the caller's network stays as it was (fp16 converts in place).
    network = (for_export(network) if rewrite else copy.deepcopy(network).eval()).cpu()
    if fp16:
        network = HalfPrecision(network).eval()
    example = torch.rand(1, 3, 64, 96) * 255
    # The exporter warns, once per operator, that torchvision (which stylebox does not use)
    # is missing: only its errors.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    quarter_h = torch.export.Dim("quarter_height", min=2, max=4096)
    quarter_w = torch.export.Dim("quarter_width", min=2, max=4096)
    program = torch.onnx.export(
        network,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={
            "x": {
                0: torch.export.Dim("batch", max=256),
                2: MULTIPLE * quarter_h,
                3: MULTIPLE * quarter_w,
            }
        },
        verbose=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    return out


def _partial(path: Path) -> Path:
    """A hidden name beside ``path`` to write it under until it is checked: not ``*.onnx``
    (the bundled models are listed by that), and this process's own."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextmanager
def _signals_noted() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM only noted while the block runs (in the list it yields), so that a
    model is never put in place without the manifest that describes it. A handler, not a
    signal mask: Python runs handlers in the main thread, whichever thread the kernel gave
    the signal to (onnxruntime's and PyTorch's threads are there by now)."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted  # the process's signals are the main thread's to take
        return
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: noted.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield noted
    finally:
        for sig, handler in previous.items():  # None: one not set from Python
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _synced(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def verify(
    network: TransformerNet, model: Path, tolerance: float = TOLERANCE, name: Path | None = None
) -> float:
    """Largest difference between onnxruntime and PyTorch (fp32, the network as trained)
    over :data:`VERIFY_SIZES`; ``name``: the model's in messages (``model`` is being
    written under another)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for height, width in VERIFY_SIZES:
        image = torch.rand(1, 3, height, width, generator=generator) * 255
        with torch.no_grad():
            expected = network(image).numpy()
        got = session.run(["output"], {"input": image.numpy()})[0]
        difference = float(np.abs(got - expected).max())
        if not math.isfinite(difference):  # max(0.0, nan) is 0.0: it passed as exact
            if not np.isfinite(expected).all():
                raise PluginError(
                    f"{name or model}: the network gives NaN or infinity (on a {width}x{height}"
                    " image): its training diverged; train again with a lower --style-weight "
                    "or --learning-rate"
                )
            raise PluginError(
                f"{name or model}: onnxruntime gives NaN or infinity where PyTorch does not "
                f"(on a {width}x{height} image; in fp16, values past its range)"
            )
        worst = max(worst, difference)
    if worst > tolerance:
        raise PluginError(
            f"{name or model}: onnxruntime differs from PyTorch by {worst:.3g} (> {tolerance})"
        )
    return worst


def fp16_path(model: Path) -> Path:
    return model.with_name(f"{model.stem}.fp16.onnx")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_with_manifest` wrote."""

    model: Path
    #: Largest difference between onnxruntime and PyTorch over :data:`VERIFY_SIZES`.
    error: float
    #: The fp16 variant, when asked for and accurate enough.
    fp16_variant: Path | None = None
    fp16_error: float | None = None
    #: Why an fp16 variant that was asked for was not kept.
    fp16_rejected: str | None = None


#: Beside a checkpoint: how ``stylebox train`` made it (its command, time and machine),
#: which every later export of the checkpoint (an fp16 variant, say) keeps in its manifest.
TRAINING_RECORD = "training.json"


def export_with_manifest(
    checkpoint: Path,
    out: Path,
    style: str = "",
    training: dict[str, Any] | None = None,
    fp16: bool = False,
) -> Exported:
    """Checkpoint -> ``out`` (.onnx) and its manifest, verified.

    With ``fp16``, also ``OUT.fp16.onnx``, kept (and named in the manifest for GPUs) only
    if it matches PyTorch's fp32 result within :data:`FP16_TOLERANCE`; an inaccurate one is
    deleted and the fp32 model is exported all the same. A variant left from an earlier
    export to ``out`` is deleted too: it belongs to other weights.
    """
    network, state = load_checkpoint(checkpoint)
    if not all(torch.isfinite(value).all() for value in network.state_dict().values()):
        raise PluginError(
            f"{checkpoint}: its weights hold NaN or infinity: the training diverged; train "
            "again with a lower --style-weight or --learning-rate"
        )
    if not style and state:  # the painting it was trained on, by its file's name
        style = Path(str((state.get("params") or {}).get("style") or "")).stem
    if training is None:  # as `stylebox train` recorded it beside its checkpoint
        try:
            training = json.loads((checkpoint.parent / TRAINING_RECORD).read_text())
        except (OSError, ValueError):
            training = None
    half = fp16_path(out)
    written: list[Path] = []  # under hidden names, until everything is written and checked
    try:
        model = _partial(out)
        written.append(model)
        export_onnx(network, model)
        _synced(model)
        worst = verify(network, model, TOLERANCE, name=out)
        variant, worst_half, rejected = None, None, None
        if fp16:
            model_half = _partial(half)
            written.append(model_half)
            export_onnx(network, model_half, fp16=True)
            _synced(model_half)
            try:
                worst_half = verify(network, model_half, FP16_TOLERANCE, name=half)
                variant = half
                log.info("fp16 variant %s (onnxruntime vs PyTorch fp32: %.2g)", half, worst_half)
            except PluginError as exc:
                rejected = str(exc)
                log.warning("fp16 variant not kept: %s", exc)
        record = dict(training or {})
        if state:
            history = state.get("history") or [{}]
            record.setdefault("steps", state.get("step"))
            record.setdefault("final_losses", {k: v for k, v in history[-1].items() if k != "step"})
            record.setdefault("params", state.get("params"))
            record.setdefault("backbone", state.get("backbone"))
            record.setdefault("preset", state.get("preset"))
        record["onnx_max_abs_error"] = worst
        # The files and the names they take, the variant before the manifest naming it.
        renames: list[tuple[Path, Path]] = []
        if variant:
            record["fp16_max_abs_error"] = worst_half
            half_manifest = ModelManifest(style=style, precision="fp16", training=record)
            written.append(write_temp(manifest_path(half), half_manifest.encoded()))
            renames += [(model_half, half), (written[-1], manifest_path(half))]
        manifest = ModelManifest(
            style=style, fp16_variant=variant.name if variant else None, training=record
        )
        written.append(write_temp(manifest_path(out), manifest.encoded()))
        renames += [(model, out), (written[-1], manifest_path(out))]
        # All written and checked: into place, all of them. A stop meanwhile is noted, not
        # acted on: the work it would stop is done a moment later.
        with _signals_noted() as stops:
            for temp, name in renames:
                os.replace(temp, name)
            if not variant:  # one left from an earlier export belongs to other weights
                for stale in (half, manifest_path(half)):
                    stale.unlink(missing_ok=True)
        if stops:
            log.info("a stop came as %s was put in place; it is in place, whole", out)
        try:
            fsync_dir(out.parent)
        except OSError as exc:  # some network file systems refuse it: the files are there
            log.warning("cannot sync the folder of %s (%s)", out, exc.strerror or exc)
    except OSError as exc:
        raise PluginError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    log.info("exported %s (onnxruntime vs PyTorch: %.2g)", out, worst)
    return Exported(out, worst, variant, worst_half, rejected)
