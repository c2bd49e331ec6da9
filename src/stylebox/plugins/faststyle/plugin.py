"""The ``fast`` plugin: a feed-forward style network run by onnxruntime.

Large photos are cut into overlapping tiles whose seams are feathered, so memory stays
bounded whatever the photo's size. Same-size images handed over together run as one batch
(one ``session.run``) on a GPU, where the model's batch dimension allows it; on the CPU,
where a batch is no faster, they run one by one. Pixels go to the model as uint8 and the
conversions to what it wants happen inside the graph (:mod:`.engine`, :mod:`.iograph`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, PositiveInt

from stylebox import __version__
from stylebox.errors import ConfigError
from stylebox.images import fit_within, resize_to_max_side
from stylebox.plugins.api import (
    Capabilities,
    JobContext,
    ModelFile,
    Plugin,
    PluginParams,
    Runtime,
)
from stylebox.plugins.faststyle.engine import Engine, PlainEngine, engine_for
from stylebox.plugins.faststyle.manifest import ModelManifest
from stylebox.plugins.faststyle.session import Device, resolve, used_by

LANCZOS = Image.Resampling.LANCZOS


#: Default tile sizes. On the CPU 768 px tiles keep memory near 1 GB for the full preset;
#: a GPU has the memory for a 4K photo in one piece (tiles add their overlaps' work).
TILE_CPU, TILE_GPU = 768, 4096


class FastParams(PluginParams):
    """Parameters of the ``fast`` plugin."""

    model: ModelFile = Field(description="ONNX model path, or a bundled model name")
    strength: float = Field(1.0, ge=0, le=1, description="Blend with the photo: 0 photo, 1 style")
    color: Literal["none", "luminance"] = Field(
        "none", description="luminance: keep the photo's colours"
    )
    max_size: PositiveInt | None = Field(None, description="Shrink photos to this longest side")
    tile_size: PositiveInt | None = Field(
        None,
        ge=64,
        description="Photos larger than this are stylised in tiles (memory grows with its "
        f"square); default {TILE_CPU} on the CPU, {TILE_GPU} on a GPU",
    )
    tile_overlap: PositiveInt = Field(64, description="Overlap of neighbouring tiles, feathered")
    device: Device | None = Field(
        None, description="auto, cpu, cuda or tensorrt; default: config's"
    )
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto",
        description="fp16: the model's verified half-precision variant (its manifest's "
        "fp16_variant); auto: that variant on GPUs when there is one, fp32 otherwise",
    )


class FastPlugin(Plugin[FastParams]):
    name = "fast"
    version = __version__
    description = "Feed-forward fast style (Johnson et al.) through onnxruntime"
    Params = FastParams
    capabilities = Capabilities(deterministic=True, batching=True)

    def __init__(self, params: FastParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        device = params.device or runtime.device
        self.device = "cuda" if device.startswith("cuda") else device
        manifest = ModelManifest.for_model(params.model)
        self.model = chosen_model(params.model, manifest, params.precision, resolve(self.device))
        if self.model != params.model:
            manifest = ModelManifest.for_model(self.model)
        self.manifest = manifest
        self.engine: Engine = engine_for(
            self.model, manifest, self.device, runtime.cache_dir("tensorrt")
        )
        # What the manifest records: where it really runs, not the setting ("auto").
        self.used_device, self.provider = used_by(self.engine.session)
        inputs = {i.name: i for i in self.engine.session.get_inputs()}
        batch = inputs[self.engine.input].shape[0]
        # On CPU onnxruntime runs a batch of 8 no faster than 8 single images (3-11 % slower
        # at 128-512 px, bench/fast_infer.py); a GPU fills its cores with one.
        on_cpu = self.provider == "CPUExecutionProvider"
        self.batchable = (not isinstance(batch, int) or batch > 1) and not on_cpu
        self.tile_size = params.tile_size or (TILE_CPU if on_cpu else TILE_GPU)
        self._runtime = runtime
        self._tile_engine: Engine | None = None

    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        # Where onnxruntime really runs it: "auto" on a machine without a GPU is the CPU.
        on_gpu = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return "cuda" if on_gpu else "cpu"

    # -- the contract ----------------------------------------------------------------------

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return fit_within(size, self.params.max_size)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return self.process_batch([image], [job])[0]

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        photos = [self._prepared(image) for image in images]
        results: list[Image.Image | None] = [None] * len(photos)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, photo in enumerate(photos):
            if max(photo.size) > self.tile_size and self.manifest.size == "dynamic":
                results[index] = self._tiled(photo)
            else:
                groups.setdefault(photo.size, []).append(index)
        for indices in groups.values():
            chunk = [photos[i] for i in indices] if self.batchable else None
            if chunk is not None and len(chunk) > 1:
                outputs = self._run([np.asarray(p) for p in chunk])
            else:
                outputs = [self._run([np.asarray(photos[i])])[0] for i in indices]
            for i, output in zip(indices, outputs, strict=True):
                results[i] = _to_image(output)
        finished = []
        for photo, result, job in zip(photos, results, jobs, strict=True):
            assert result is not None
            finished.append(self._finish(photo, result))
            job.note(
                device=self.used_device,
                provider=self.provider,
                precision=self.manifest.precision,
            )
            job.progress(1, 1)
        return finished

    # -- steps -----------------------------------------------------------------------------

    def _prepared(self, image: Image.Image) -> Image.Image:
        # An RGB photo is used as it is (nothing here writes to it): a copy of a 1080p
        # photo is milliseconds, a noticeable part of a GPU's time for it.
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.params.max_size:
            image = resize_to_max_side(image, self.params.max_size)
        return image

    def _finish(self, photo: Image.Image, result: Image.Image) -> Image.Image:
        if result.size != photo.size:
            result = result.resize(photo.size, Image.Resampling.LANCZOS)
        if self.params.color == "luminance":
            y = result.convert("YCbCr").getchannel("Y")
            _, cb, cr = photo.convert("YCbCr").split()
            result = Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
        if self.params.strength < 1:
            result = Image.blend(photo, result, self.params.strength)
        return result

    def _run(self, arrays: list[np.ndarray], engine: Engine | None = None) -> list[np.ndarray]:
        """HWC uint8 arrays of one size in, HWC arrays on 0..255 out: uint8 from the
        wrapped graph, float (unrounded, unclipped) from the plain path."""
        m = self.manifest
        height, width = arrays[0].shape[:2]
        if m.size == "dynamic":
            pad_h = max(8, height + -height % m.multiple) - height
            pad_w = max(8, width + -width % m.multiple) - width
            mode = "reflect" if pad_h < height and pad_w < width else "edge"
            if pad_h or pad_w:
                arrays = [np.pad(a, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode) for a in arrays]
        else:
            arrays = [_pixels(Image.fromarray(a).resize(m.size, LANCZOS)) for a in arrays]
        batch = np.stack(arrays) if len(arrays) > 1 else np.ascontiguousarray(arrays[0][None])
        output = (engine or self.engine).run(batch)
        if m.size == "dynamic":
            return [o[:height, :width] for o in output]
        return [_pixels(_to_image(o).resize((width, height), LANCZOS)) for o in output]

    def _tiled(self, photo: Image.Image) -> Image.Image:
        """Overlapping tiles, blended with linear ramps across each overlap."""
        tile = self.tile_size
        overlap = min(self.params.tile_overlap, tile // 4)
        width, height = photo.size
        source = _pixels(photo)
        # Tiles blend the network's raw values, as they always have: blending the uint8
        # results would clip each tile first and change the overlaps by up to ~40 levels
        # where a tile's value lies outside 0..255. Tiled photos are rare on a GPU.
        if self._tile_engine is None:
            self._tile_engine = (
                self.engine
                if isinstance(self.engine, PlainEngine)
                else engine_for(
                    self.model,
                    self.manifest,
                    self.device,
                    self._runtime.cache_dir("tensorrt"),
                    io="plain",
                )
            )
        total = np.zeros((height, width, 3), dtype=np.float32)
        weight = np.zeros((height, width, 1), dtype=np.float32)
        for top in _starts(height, tile, overlap):
            for left in _starts(width, tile, overlap):
                piece = source[top : top + tile, left : left + tile]
                out = self._run([piece], self._tile_engine)[0]
                h, w = piece.shape[:2]
                rows = _ramp(h, overlap, top > 0, top + h < height)
                columns = _ramp(w, overlap, left > 0, left + w < width)
                mask = np.outer(rows, columns)[..., None]
                total[top : top + h, left : left + w] += out * mask
                weight[top : top + h, left : left + w] += mask
        return _to_image(total / np.maximum(weight, 1e-6))


def chosen_model(
    model: Path,
    manifest: ModelManifest,
    precision: Literal["auto", "fp32", "fp16"],
    kind: Literal["cpu", "cuda", "tensorrt"],
) -> Path:
    """The model file itself, or its fp16 variant: asked for, or on "auto" where it runs on
    a GPU (``kind``, the resolved device) and the manifest names one. Not on the CPU: there
    the variant is slower (onnxruntime's CPU provider casts much of it back to fp32)."""
    wanted = precision
    if wanted == "auto":
        wanted = "fp16" if kind in ("cuda", "tensorrt") and manifest.fp16_variant else "fp32"
    if wanted == "fp32" or manifest.precision == "fp16":
        return model
    if not manifest.fp16_variant:
        raise ConfigError(
            f"{model}: precision 'fp16' was asked for but its manifest names no "
            "fp16_variant; export one with `stylebox export CHECKPOINT --out "
            f'{model.name} --fp16`, or use precision = "fp32"'
        )
    variant = model.with_name(manifest.fp16_variant)
    if not variant.is_file():
        raise ConfigError(f"{model}: its fp16 variant {variant} does not exist")
    return variant


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    ramp = np.ones(length, dtype=np.float32)
    edge = np.linspace(0.0, 1.0, overlap + 2, dtype=np.float32)[1:-1]
    if fade_in:
        ramp[:overlap] = edge
    if fade_out:
        ramp[-overlap:] = edge[::-1]
    return ramp


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _to_image(array: np.ndarray) -> Image.Image:
    if array.dtype == np.uint8:  # the wrapped graph's output, rounded and clipped already
        return Image.fromarray(array, "RGB")
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "RGB")
