"""Training a TransformerNet with the perceptual loss of Johnson et al. on the shared VGG19.

All hyper-parameters live in :class:`TrainParams`. Checkpoints every ``checkpoint_every``
steps make ``resume`` continue exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from pydantic import ConfigDict, Field, PositiveInt

from stylebox import logs
from stylebox.backbone import BackboneSpec, fingerprint, load_vgg19
from stylebox.errors import BadInput, ConfigError, PluginError
from stylebox.images import atomic_write_bytes, decode_image, resize_to_max_side
from stylebox.jsonvalues import finite_or_null
from stylebox.perceptual import PerceptualLoss, gram
from stylebox.plugins.api import PathValue, PluginParams, StyleFile
from stylebox.plugins.faststyle.network import Preset, TransformerNet, residual_blocks_in
from stylebox.tensors import resolve_device, to_image, to_tensor

log = logging.getLogger("stylebox.train")

CHECKPOINT = "checkpoint.pt"

#: Settings a run may change when it resumes: how long it runs and how it reports; the
#: others decide what the network learns, and a resume keeps them.
RESUMABLE_CHANGES = frozenset(
    {"steps", "device", "amp", "checkpoint_every", "sample_every", "log_every"}
)


class TrainingStopped(Exception):
    """Training stopped when asked (Ctrl-C, SIGTERM), its checkpoint of ``step`` written."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


class TrainParams(PluginParams):
    """Everything that decides a training run."""

    model_config = ConfigDict(strict=True)  # "8" is no batch size

    style: StyleFile = Field(description="The painting to learn")
    content_dir: PathValue = Field(description="Folder of photos to train on")
    preset: Preset = Field(
        "full",
        description="full (the paper's net) or small (half width, 3 residual blocks, for CPUs)",
    )
    # The network halves a crop twice and VGG's relu4_3 sees it at 1/8: below 32 px the
    # deepest style layer has under 4x4 positions to take a Gram matrix of.
    # ... and halves it twice and doubles it twice: a side that is no multiple of 4 comes
    # back another size than it went in.
    image_size: int = Field(
        256, ge=32, multiple_of=4, description="Side of the square training crops"
    )
    style_size: int | None = Field(None, ge=32, description="Longest side of the style image")
    batch_size: PositiveInt = 4
    steps: PositiveInt = Field(2000, description="Optimisation steps")
    learning_rate: float = Field(1e-3, gt=0)
    content_weight: float = Field(1.0, ge=0)
    # 1, as the bundled model was trained: at 30 (the first default) a 300-step run on
    # The Scream left orange and black blobs and no buildings; at 1 it was styled and
    # recognisable.
    style_weight: float = Field(1.0, ge=0)
    tv_weight: float = Field(1e-6, ge=0, description="On the 0..255 output")
    content_layers: dict[str, float] = Field(default_factory=lambda: {"relu2_2": 1.0})
    style_layers: dict[str, float] = Field(
        default_factory=lambda: {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: PositiveInt = 100
    sample_every: PositiveInt = 100
    log_every: PositiveInt = 10


def load_photos(folder: Path, longest: int) -> tuple[list[Image.Image], str]:
    """Every readable photo of ``folder``, shrunk once so crops are cheap, and a digest of
    their bytes (a resumed run must learn from the same photos). A folder that is missing,
    unreadable or without a single readable photo is a :class:`ConfigError` naming it and
    saying which."""
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"content folder {folder} {why}")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"content folder {folder}: cannot list it ({exc.strerror})") from None
    photos = []
    digest = hashlib.sha256()
    for path in entries:
        if path.is_file() and not path.name.startswith("."):
            try:
                with logs.about(file=path.name):  # a warning on it names it
                    decoded = decode_image(path)
                photos.append(resize_to_max_side(decoded.rgb, longest))
                digest.update(decoded.sha256.encode())
            except Exception as exc:  # a bad file in a training folder is skipped, loudly
                log.warning("skipping %s: %s", path.name, exc)
    if not photos:
        raise ConfigError(
            f"content folder {folder} holds no photo stylebox can read "
            f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in it)"
        )
    return photos, digest.hexdigest()


def batches(
    photos: list[Image.Image], size: int, batch_size: int, rng: random.Random
) -> Iterator[torch.Tensor]:
    """Endless batches of random square crops with random horizontal flips, 0..255."""
    while True:
        crops = []
        for _ in range(batch_size):
            photo = rng.choice(photos)
            if min(photo.size) < size:
                photo = photo.resize(
                    (max(size, photo.width * size // min(photo.size)),
                     max(size, photo.height * size // min(photo.size))),
                    Image.Resampling.LANCZOS,
                )  # fmt: skip
            x = rng.randint(0, photo.width - size)
            y = rng.randint(0, photo.height - size)
            crop = photo.crop((x, y, x + size, y + size))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crops.append(to_tensor(crop) * 255.0)
        yield torch.cat(crops)


class TrainingDiverged(PluginError):
    """The loss became NaN or infinite: the weights are lost; the last checkpoint is not."""


def train(
    params: TrainParams,
    out_dir: Path,
    backbone: BackboneSpec | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop: threading.Event | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TransformerNet:
    """Train, writing checkpoints and samples to ``out_dir``; returns the trained network.

    ``out_dir`` must hold no run unless ``resume``, and then one started with the same
    settings (but those in :data:`RESUMABLE_CHANGES`), painting and photos. One process
    trains in it at a time. ``stop``, once set, ends the run at the end of a step with a
    checkpoint of it: :class:`TrainingStopped`. ``on_checkpoint(step)``: after each
    checkpoint. A loss that is no longer finite ends it (:class:`TrainingDiverged`), and a
    checkpoint that cannot be written is a :class:`PluginError`; either way the last
    checkpoint written stays whole."""
    # First: a style or content folder that cannot serve, or a run to lose, is refused
    # before anything slow or written.
    _no_run_to_lose(out_dir, resume)
    try:
        style = decode_image(params.style)
    except BadInput as exc:
        raise ConfigError(f"--style {params.style}: {exc}") from exc
    photos, photos_sha256 = load_photos(params.content_dir, max(params.image_size * 2, 512))
    device = resolve_device(params.device)  # no CUDA: refused before OUT.train is made
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot make {out_dir} ({exc.strerror or exc})") from None
    inputs = {"style_sha256": style.sha256, "photos_sha256": photos_sha256}
    with _only_run(out_dir):
        return _train(
            params, out_dir, style.rgb, photos, inputs, device, backbone or BackboneSpec(),
            resume, on_step, stop, on_checkpoint,
        )  # fmt: skip


def _no_run_to_lose(out_dir: Path, resume: bool) -> None:
    """Refuse a new run where ``out_dir`` holds one, and ``resume`` where it holds none."""
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.is_file() and not resume:
        raise ConfigError(
            f"{out_dir} holds a training run: add --resume to continue it, or remove it (or "
            "give another --out) to start again"
        )
    if resume and not checkpoint_path.is_file():
        raise ConfigError(
            f"--resume: {out_dir} holds no checkpoint to continue; without --resume a new "
            "run starts"
        )


@contextmanager
def _only_run(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for this process: two runs in one folder wrote each other's
    checkpoints over. The kernel lets the lock go however the process ends."""
    try:
        handle = open(out_dir / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 (held below)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write in {out_dir} ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"{out_dir} is in use by another `stylebox train` ({holder}): wait for it to "
                "end, or stop it (its checkpoint stays) and resume"
            ) from None
        except OSError as exc:  # a file system without locks: one run at a time is on you
            log.warning("cannot lock %s (%s): run one training in it at a time", out_dir, exc)
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
        yield


def _train(
    params: TrainParams,
    out_dir: Path,
    style_image: Image.Image,
    photos: list[Image.Image],
    inputs: dict[str, str],
    device: torch.device,
    backbone: BackboneSpec,
    resume: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
    stop: threading.Event | None,
    on_checkpoint: Callable[[int], None] | None,
) -> TransformerNet:
    """:func:`train`'s run, its settings checked and its folder held."""
    # Again, now that the folder is ours: a run that held it while this one loaded its
    # photos may have written a checkpoint since.
    _no_run_to_lose(out_dir, resume)
    checkpoint_path = out_dir / CHECKPOINT
    rng = random.Random(params.seed)
    state = None
    if resume:
        try:
            state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        except Exception as exc:  # torn, or not ours: said in one line
            raise ConfigError(
                f"--resume: cannot read {checkpoint_path} ({type(exc).__name__}: {exc})"
            ) from None
        _check_same_run(state.get("params", {}), params, out_dir)
        _check_same_inputs(state, inputs, params, out_dir)
    vgg = load_vgg19(backbone, device)
    # Seeded after the backbone: building one draws random numbers, a cached one none, and
    # the same seed must give the same network either way.
    torch.manual_seed(params.seed)
    # A run resumes with the network it started with, even if the preset changed since.
    blocks = residual_blocks_in(state["model"]) if state else None
    network = TransformerNet(params.preset, residual_blocks=blocks).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=params.learning_rate)
    step = 0
    history: list[dict[str, float]] = []
    if state:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if on_checkpoint is not None:
            on_checkpoint(step)  # the checkpoint this session resumes from
        if step >= params.steps:
            log.warning(
                "the run is at step %d already, --steps %d: nothing to train, it is exported "
                "as it is (a larger --steps trains on)",
                step,
                params.steps,
            )
        else:
            log.info("resuming at step %d", step)

    if params.style_size:
        style_image = resize_to_max_side(style_image, params.style_size)
    with torch.no_grad():
        features = vgg(to_tensor(style_image, device), list(params.style_layers))
        style_grams = {k: gram(v) for k, v in features.items()}
    samples = photos[:3]
    # A resumed run restored ``rng`` above, so it draws the crops an uninterrupted run would.
    data = batches(photos, params.image_size, params.batch_size, rng)
    perceptual = PerceptualLoss(
        params.content_layers,
        params.style_layers,
        style_grams,
        params.content_weight,
        params.style_weight,
        params.tv_weight,
    )
    amp = params.amp and device.type == "cuda"

    began = time.perf_counter()
    saved = step  # the step of the checkpoint on disk
    while step < params.steps:
        batch = next(data).to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = network(batch)
            # No clamp: it would zero the gradient of every pixel outside 0..255.
            out_features = vgg(output.float().div(255.0), perceptual.layers)
            with torch.no_grad():
                in_features = vgg(batch / 255.0, list(params.content_layers))
        # TV on the 0..255 output, as the network's recipe weighs it.
        loss, parts = perceptual(output, out_features, in_features)
        if not math.isfinite(parts["loss"]):  # every step from here would be NaN too
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: the loss is {parts['loss']}; "
                f"{_last_good(saved, out_dir)}; start again with a lower --style-weight or "
                "--learning-rate (another --out)"
            )
        loss.backward()
        optimizer.step()
        step += 1
        metrics = {"step": step, **parts, "seconds": time.perf_counter() - began}
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
        if step % params.log_every == 0:
            log.info("step %d/%d loss %.4g content %.4g style %.4g", step, params.steps,
                     metrics["loss"], metrics["content"], metrics["style"])  # fmt: skip
        if step % params.sample_every == 0 or step == params.steps:
            try:
                _write_samples(network, samples, out_dir / "samples", step, device)
            except OSError as exc:
                raise PluginError(
                    f"cannot write the samples of step {step} in {out_dir / 'samples'} "
                    f"({exc.strerror or exc}); {_kept(saved, out_dir)}"
                ) from None
        stopping = stop is not None and stop.is_set()
        if step % params.checkpoint_every == 0 or step == params.steps or stopping:
            # A step can turn the weights NaN with a finite loss: never over a good one.
            if not all(bool(torch.isfinite(p).all()) for p in network.parameters()):
                raise TrainingDiverged(
                    f"training diverged at step {step}: its weights hold NaN or infinity; "
                    f"{_last_good(saved, out_dir)}; start again with a lower --style-weight "
                    "or --learning-rate (another --out)"
                )
            try:
                _save(checkpoint_path, network, optimizer, step, history, rng, params, backbone,
                      inputs)  # fmt: skip
            except OSError as exc:
                raise PluginError(
                    f"cannot write the checkpoint of step {step} in {out_dir} "
                    f"({exc.strerror or exc}); {_kept(saved, out_dir)}"
                ) from None
            saved = step
            if on_checkpoint is not None:
                on_checkpoint(step)
        if stopping and step < params.steps:
            raise TrainingStopped(step)
    return network


def _check_same_run(started: dict[str, object], params: TrainParams, out_dir: Path) -> None:
    """Refuse to resume the run in ``out_dir`` (begun with ``started``) with settings that
    change what it learns: two styles' steps in one network, recorded as the second's."""
    now = params.model_dump(mode="json")

    def same(key: str, value: object) -> bool:
        if key in ("style", "content_dir") and isinstance(value, str):  # ./a is a
            return os.path.realpath(value) == os.path.realpath(str(now.get(key)))
        return now.get(key) == value

    changed = [
        f"--{key.replace('_', '-')} {now.get(key)} (it began with {value})"
        for key, value in started.items()
        if key not in RESUMABLE_CHANGES and not same(key, value)
    ]
    if changed:
        raise ConfigError(
            f"--resume: the run in {out_dir} began with other settings: {'; '.join(changed)}; "
            "resume it with its own, or give another --out for a new run"
        )


def _last_good(saved: int, out_dir: Path) -> str:
    """Where a diverged run's last good weights are (resuming them would diverge alike)."""
    if not saved:
        return "no checkpoint was written"
    return f"the checkpoint of step {saved} in {out_dir} is the last good one"


def _kept(saved: int, out_dir: Path) -> str:
    """What a run that ends in an error leaves to resume from."""
    if not saved:
        return "no checkpoint was written yet"
    return f"the checkpoint of step {saved} in {out_dir} is whole: --resume continues from it"


def _check_same_inputs(
    started: dict[str, object], inputs: dict[str, str], params: TrainParams, out_dir: Path
) -> None:
    """Refuse to resume with another picture, or other photos, at the paths the run began
    with (one network would learn two styles). A checkpoint from before the digests were
    kept is taken as it is."""
    changed = []
    if started.get("style_sha256") not in (None, inputs["style_sha256"]):
        changed.append(f"--style {params.style} holds another picture than it began with")
    if started.get("photos_sha256") not in (None, inputs["photos_sha256"]):
        changed.append(
            f"--content-dir {params.content_dir} holds other photos than it began with "
            "(added, removed or changed)"
        )
    if changed:
        raise ConfigError(
            f"--resume: the run in {out_dir}: {'; '.join(changed)}; resume it with its own, "
            "or give another --out for a new run"
        )


def _save(
    path: Path,
    network: TransformerNet,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, float]],
    rng: random.Random,
    params: TrainParams,
    backbone: BackboneSpec,
    inputs: dict[str, str],
) -> None:
    state = {
        "model": network.state_dict(),
        "preset": network.preset,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "history": history,
        "python_rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "params": params.model_dump(mode="json"),
        "backbone": fingerprint(backbone),
        **inputs,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    # A diverged loss is NaN, which JSON has not: null, so the file stays readable.
    history_json = json.dumps(finite_or_null(history[-1:]), indent=2).encode()
    atomic_write_bytes(path.parent / "history.json", history_json)


@torch.no_grad()
def _write_samples(
    network: TransformerNet,
    photos: list[Image.Image],
    folder: Path,
    step: int,
    device: torch.device,
) -> None:
    from stylebox.plugins.faststyle.network import stylise

    folder.mkdir(exist_ok=True)
    network.eval()
    for index, photo in enumerate(photos):
        small = resize_to_max_side(photo, 384)
        output = stylise(network, to_tensor(small, device) * 255.0) / 255.0
        to_image(output).save(folder / f"{index}-{step:05d}.png")
    network.train()
