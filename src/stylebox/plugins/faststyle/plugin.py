"""The ``fast`` plugin: a feed-forward style network run by onnxruntime.

Large photos are cut into overlapping tiles whose seams are feathered, so memory stays
bounded whatever the photo's size. Same-size images handed over together run as one batch
(one ``session.run``) on a GPU, where the model's batch dimension allows it; on the CPU,
where a batch is no faster, they run one by one. Pixels go to the model as uint8 and the
conversions to what it wants happen inside the graph (:mod:`.engine`, :mod:`.iograph`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    ValidationInfo,
    model_validator,
)

from stylebox import __version__, bundled
from stylebox.digests import file_digest
from stylebox.errors import BadInput, Cancelled, ConfigError
from stylebox.images import decode_image, fit_within, resize_to_max_side
from stylebox.plugins.api import (
    Capabilities,
    JobContext,
    PathValue,
    Plugin,
    PluginParams,
    Runtime,
    StyleFile,
    not_found_text,
)
from stylebox.plugins.faststyle.checks import (
    Checked,
    check_model,
    probe_image,
    probe_problem,
)
from stylebox.plugins.faststyle.engine import Engine, PlainEngine, engine_for
from stylebox.plugins.faststyle.manifest import (
    BadModel,
    ExtraValue,
    ModelManifest,
    StylePredictor,
    manifest_path,
    predictor_path,
)
from stylebox.plugins.faststyle.session import (
    Device,
    cuda_loads,
    fell_back,
    resolve,
    run_options,
    session_for,
    thumbnorm_sessions_for,
    used_by,
)

log = logging.getLogger("stylebox.fast")

LANCZOS = Image.Resampling.LANCZOS


#: Default tile sizes. On the CPU 768 px tiles keep memory near 1 GB for the full preset;
#: a GPU has the memory for a 4K photo in one piece (tiles add their overlaps' work).
TILE_CPU, TILE_GPU = 768, 4096
#: Default mirrored margin. A network sees zeros past a photo's edges and paints a band
#: there (starry_night_small: a dark dotted line along the bottom). 8 px of the photo
#: mirrored around it bring the outer 3 px a third closer to what the network paints there
#: inside a wider photo (bench/fast_edges.py, 16 Kodak photos: 28.5 -> 18.7 grey levels for
#: starry_night_small, 12.1 -> 8.5 for the_scream_small; 16 and 32 px do no better), for
#: 4-13 % more time per photo.
EDGE_MARGIN = 8


def _model_file(value: Path, info: ValidationInfo) -> Path:
    """A bundled model's name, or an existing file made absolute but not resolved: a
    symbolic link keeps its own name, so the manifest beside the link is the one used."""
    if not value.suffix and len(value.parts) == 1:
        found = bundled.find_model(str(value))
        if found is not None:
            return found
    path = value.expanduser()
    if not path.is_absolute():
        context = info.context if isinstance(info.context, dict) else {}
        path = Path(context.get("base_dir") or Path.cwd()) / path
    if not path.is_file():
        missing = f"file not found: {path}"
        raise ValueError(
            not_found_text(value, missing, "an ONNX file", "bundled model", bundled.model_names())
        )
    return path.absolute()


ModelPath = Annotated[PathValue, AfterValidator(_model_file)]


class FastParams(PluginParams):
    """Parameters of the ``fast`` plugin."""

    # Strict: "0.5" is no number and true no edge margin (lax mode made 1 of it).
    model_config = ConfigDict(strict=True)

    model: ModelPath = Field(description="ONNX model path, or a bundled model name")
    style: StyleFile | list[StyleFile] | None = Field(
        None,
        description="Arbitrary-style models (a manifest with a style_predictor): the style "
        "image(s), paths or bundled names; no training needed",
    )
    style_blend: list[NonNegativeFloat] | None = Field(
        None, description="Weights of several styles (one each; default equal), normalised"
    )
    inputs: dict[str, ExtraValue] = Field(
        default_factory=dict,
        description="Values for the model's other inputs, over its manifest's extra_inputs "
        "(e.g. { style_weights = [...] }); checked against the model when it loads",
    )
    strength: float = Field(
        1.0,
        ge=0,
        le=1,
        description="0 photo, 1 style: a blend with the photo; for arbitrary-style models, "
        "between the photo's own style vector and the style's",
    )
    color: Literal["none", "luminance"] = Field(
        "none", description="luminance: keep the photo's colours"
    )
    max_size: PositiveInt | None = Field(None, description="Shrink photos to this longest side")
    tile_size: PositiveInt | None = Field(
        None,
        ge=64,
        description="Photos of more pixels than its square are stylised in tiles of this side "
        f"(memory grows with the square); default {TILE_CPU} on the CPU, {TILE_GPU} on a GPU",
    )
    tile_overlap: PositiveInt = Field(64, description="Overlap of neighbouring tiles, feathered")
    edge_margin: int = Field(
        EDGE_MARGIN,
        ge=0,
        le=256,
        description="Pixels of the photo mirrored around it before the network and cropped "
        "after (any-size models): the network's own zero padding painted a band along the "
        "photo's edges; 0: off",
    )
    device: Device | None = Field(
        None, description="auto, cpu, cuda or tensorrt; default: config's"
    )
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto",
        description="fp16: the model's verified half-precision variant (its manifest's "
        "fp16_variant); auto: that variant on GPUs when there is one, fp32 otherwise",
    )

    @model_validator(mode="after")
    def _blend_matches(self) -> FastParams:
        styles = self.styles
        if self.style_blend is not None:
            if len(self.style_blend) != len(styles):
                raise ValueError(
                    f"style_blend has {len(self.style_blend)} weights for {len(styles)} styles"
                )
            if sum(self.style_blend) <= 0:
                raise ValueError("style_blend: the weights add up to 0")
        return self

    @property
    def styles(self) -> list[Path]:
        if self.style is None:
            return []
        return list(self.style) if isinstance(self.style, list) else [self.style]


class FastPlugin(Plugin[FastParams]):
    name = "fast"
    version = __version__
    description = "Feed-forward fast style (Johnson et al.) through onnxruntime"
    Params = FastParams
    capabilities = Capabilities(deterministic=True, batching=True)

    @classmethod
    def check(cls, params: Any, runtime: Runtime) -> None:
        """The manifest read and checked against the graph (onnx only, nothing run), and
        the style images read, as the start reads them; and so is the fp16 variant a start
        on a GPU would choose (precision fp16, or auto and the manifest names one), on any
        machine: a missing one disables the inbox there. Where precision is auto and this
        machine runs the model on the CPU (which takes the fp32 model), a bad variant is
        logged as a warning instead: a start here runs, and said "disabled" it misled."""
        _checked(params.model, ModelManifest.for_model(params.model), params)
        for style in params.styles:
            _style_image(style)
        device = params.device or runtime.device
        if device.startswith("cuda") and not cuda_loads():
            raise fell_back(str(params.model), device, ["CPUExecutionProvider"])
        if params.precision == "fp32":
            return
        try:
            variant, manifest = _model_for(params, "cuda")
            if variant != params.model:
                _checked(variant, manifest, params)
        except BadModel as exc:
            if params.precision == "fp16" or resolve(device) != "cpu":
                raise
            log.warning(
                "%s; here it runs its fp32 model on the CPU, but a start on a GPU (where "
                'precision "auto" chooses the fp16 variant) would disable it',
                exc,
            )

    def __init__(self, params: FastParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        device = params.device or runtime.device
        self.device = device  # "cuda:N" keeps its N: the session runs on that GPU
        self.model, manifest = _model_for(params, resolve(self.device))
        self.manifest = manifest
        self.checked: Checked = _checked(self.model, manifest, params)
        self.engine: Engine = engine_for(
            self.model,
            manifest,
            self.device,
            runtime.cache_dir("tensorrt"),
            feeds=self.checked.feeds,
        )
        self._runtime = runtime
        self._tile_engine: Engine | None = None
        self._predictor: Any = None
        self._style_vector: np.ndarray | None = None
        self._digests = self._file_digests()
        if manifest.style_predictor is not None:
            path = predictor_path(self.model, manifest)
            assert path is not None
            # The predictor runs once per style (and per photo when strength < 1): the CPU
            # does that well enough, and it keeps the GPU's memory for the transformer.
            self._predictor = session_for(path, "cpu", runtime.cache_dir("tensorrt"))
            self._style_vector = self._blended_style()
        self._probe()
        # What the manifest records: where it really runs, not the setting ("auto").
        self.used_device, self.provider = used_by(self.engine.session)
        inputs = {i.name: i for i in self.engine.session.get_inputs()}
        batch = inputs[self.engine.input].shape[0]
        # On CPU onnxruntime runs a batch of 8 no faster than 8 single images (3-11 % slower
        # at 128-512 px, bench/fast_infer.py); a GPU fills its cores with one.
        on_cpu = self.provider == "CPUExecutionProvider"
        # An arbitrary-style model's vector may differ per photo (strength < 1): one by one.
        self.batchable = (
            (not isinstance(batch, int) or batch > 1) and not on_cpu and self._predictor is None
        )
        if not self.batchable:
            # Photos run one at a time here: a daemon that claimed several at once would
            # show them all running (8 on the status page) while 7 wait in the claim.
            self.capabilities = replace(type(self).capabilities, batching=False)
        self.tile_size = params.tile_size or (TILE_CPU if on_cpu else TILE_GPU)

    @property
    def identity(self) -> str:
        """The model's, its manifest's, the style predictor's and the style images'
        digests: a file changed in place makes new jobs, not duplicates."""
        return ";".join(f"{name}={digest}" for name, digest in sorted(self._digests.items()))

    def outdated(self) -> bool:
        try:
            return self._file_digests() != self._digests
        except OSError:  # a file gone: a new instance says what is missing
            return True

    def _file_digests(self) -> dict[str, str]:
        files = {"model": self.model, "manifest": manifest_path(self.model)}
        if self.model != self.params.model:  # its fp16 variant runs: the chosen one's too
            files["requested_model"] = self.params.model
            files["requested_manifest"] = manifest_path(self.params.model)
        predictor = predictor_path(self.model, self.manifest)
        if predictor is not None:
            files["style_predictor"] = predictor
        for index, style in enumerate(self.params.styles):
            files[f"style{index}"] = style
        return {name: file_digest(path) for name, path in files.items()}

    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        # Where onnxruntime really runs it: "auto" on a machine without a GPU is the CPU.
        on_gpu = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return "cuda" if on_gpu else "cpu"

    # -- the contract ----------------------------------------------------------------------

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return fit_within(size, self.params.max_size)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        (result,) = self.process_batch([image], [job])
        if isinstance(result, Cancelled):  # stopped between two tiles
            raise result
        return result

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        photos = [self._prepared(image) for image in images]
        results: list[Image.Image | Cancelled | None] = [None] * len(photos)
        groups: dict[tuple[int, int], list[int]] = {}
        tiled: set[int] = set()
        for index, (photo, job) in enumerate(zip(photos, jobs, strict=True)):
            feeds = self._style_feeds(photo) if self._predictor is not None else None
            if needs_tiles(photo.size, self.tile_size) and self.manifest.size == "dynamic":
                try:
                    results[index] = self._tiled(photo, job, feeds)
                except Cancelled as stopped:  # this job alone: the others run on
                    results[index] = stopped
                tiled.add(index)
            elif feeds is not None:
                results[index] = _to_image(self._run([np.asarray(photo)], feeds=feeds)[0])
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
        finished: list[Any] = []  # images, and a stopped job's Cancelled in its place
        for index, (photo, result, job) in enumerate(zip(photos, results, jobs, strict=True)):
            assert result is not None
            if isinstance(result, Cancelled):
                finished.append(result)
                continue
            finished.append(self._finish(photo, result))
            job.note(
                device=self.used_device,
                provider=self.provider,
                precision=self.manifest.precision,
                model=str(self.model),
                **{f"{name}_sha256": digest for name, digest in self._digests.items()},
            )
            for kind, path in job.companions.items():  # moved with the photo: say why unused
                job.note(**{kind: f"{path.name} not used: the fast plugin takes no {kind}"})
            if index not in tiled:  # a tiled photo reported each tile, the last one too
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
        if self.params.strength < 1 and self._predictor is None:  # else in the style vector
            result = Image.blend(photo, result, self.params.strength)
        return result

    # -- arbitrary style -------------------------------------------------------------------

    def _style_feeds(self, photo: Image.Image) -> dict[str, np.ndarray]:
        """The style vector for ``photo``: the styles' blend, moved towards the photo's own
        vector as strength falls (what the network does for less style)."""
        assert self._style_vector is not None and self.manifest.style_input is not None
        vector = self._style_vector
        strength = self.params.strength
        if strength < 1:
            vector = strength * vector + (1 - strength) * self._vector_of(photo)
        return {self.manifest.style_input: vector.astype(np.float32)}

    def _blended_style(self) -> np.ndarray:
        styles = self.params.styles
        if not styles:
            raise BadModel(
                f"{self.model}: an arbitrary-style model (its manifest names a "
                "style_predictor): set the style param to a painting, e.g. "
                'style = "painting.jpg"'
            )
        weights = np.asarray(self.params.style_blend or [1.0] * len(styles), dtype=np.float64)
        weights /= weights.sum()
        vectors = [self._cached_vector(path) for path in styles]
        blend = np.zeros_like(vectors[0])
        for weight, vector in zip(weights, vectors, strict=True):
            blend += np.float32(weight) * vector
        return blend

    def _cached_vector(self, style: Path) -> np.ndarray:
        """A style's vector: from memory, else from the disk cache, else computed (once)."""
        spec = self.manifest.style_predictor
        assert spec is not None
        key = hashlib.sha256(
            f"{self._digests['style_predictor']}|{spec.model_dump_json()}|"
            f"{file_digest(style)}".encode()
        ).hexdigest()
        with _vectors_lock:
            if key in _vectors:
                return _vectors[key]
        path = self._runtime.cache_dir("fast") / "style-vectors" / f"{key}.npy"
        vector: np.ndarray | None = None
        if path.is_file():
            try:
                vector = np.load(path)
            except (OSError, ValueError):  # a damaged cache file: computed again
                vector = None
        if vector is None or vector.shape != self.checked.style_shape:
            vector = self._vector_of(_style_image(style))
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_suffix(".tmp.npy")
            np.save(temp, vector)
            temp.replace(path)
        with _vectors_lock:
            _vectors[key] = vector
        return vector

    def _vector_of(self, image: Image.Image) -> np.ndarray:
        spec = self.manifest.style_predictor
        assert spec is not None and self.checked.predictor_output is not None
        feed = {spec.input: _style_pixels(image, spec)}
        vector = self._predictor.run([self.checked.predictor_output], feed)[0]
        return np.asarray(vector, np.float32).reshape(self.checked.style_shape or vector.shape)

    def _probe(self) -> None:
        """Run the model once on a small mid-grey probe through the numpy path (raw values,
        unclipped) and refuse it when the result cannot be an image on 0..255."""
        m = self.manifest
        width, height = (16, 16) if m.size == "dynamic" else m.size
        feeds: dict[str, np.ndarray] = {}
        if self._predictor is not None and m.style_input is not None:
            assert self._style_vector is not None
            feeds = {m.style_input: self._style_vector.astype(np.float32)}
        engine = self._plain_engine()
        try:
            output = self._run([probe_image(width, height)], engine, feeds)[0]
        except Exception as exc:  # onnxruntime's text is long: its first line says enough
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BadModel(f"{self.model}: fails on a {width}x{height} probe: {first}") from None
        problem = probe_problem(output, m)
        if problem:
            raise BadModel(f"{self.model}: on a mid-grey probe the model {problem}")

    def _plain_engine(self) -> Engine:
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
                    feeds=self.checked.feeds,
                )
            )
        return self._tile_engine

    def _run(
        self,
        arrays: list[np.ndarray],
        engine: Engine | None = None,
        feeds: dict[str, np.ndarray] | None = None,
        give_back: bool = False,
    ) -> list[np.ndarray]:
        """HWC uint8 arrays of one size in, HWC arrays on 0..255 out: uint8 from the
        wrapped graph, float (unrounded, unclipped) from the plain path."""
        m = self.manifest
        height, width = arrays[0].shape[:2]
        output = (engine or self.engine).run(self._batch(arrays), feeds, give_back=give_back)
        if m.size == "dynamic":
            margin = self.params.edge_margin
            return [o[margin : margin + height, margin : margin + width] for o in output]
        if m.resize == "pad":
            inner_w, inner_h = _fitted((width, height), m.size)
            output = [o[:inner_h, :inner_w] for o in output]
        return [_resized(o, (width, height)) for o in output]

    def _batch(self, arrays: list[np.ndarray]) -> np.ndarray:
        """HWC uint8 arrays of one size as the (N, H, W, 3) batch the model takes: mirrored
        round by the edge margin and padded to its multiple, or fitted to its fixed size."""
        m = self.manifest
        height, width = arrays[0].shape[:2]
        if m.size == "dynamic":
            margin = self.params.edge_margin
            pad_h = max(8, height + 2 * margin + -(height + 2 * margin) % m.multiple) - height
            pad_w = max(8, width + 2 * margin + -(width + 2 * margin) % m.multiple) - width
            if pad_h or pad_w:  # the margin all round, then up to the model's multiple
                pads = ((margin, pad_h - margin), (margin, pad_w - margin), (0, 0))
                arrays = [np.pad(a, pads, mode="reflect") for a in arrays]
        elif m.resize == "pad":
            arrays = [_padded(a, m.size) for a in arrays]
        else:
            arrays = [_pixels(Image.fromarray(a).resize(m.size, LANCZOS)) for a in arrays]
        return np.stack(arrays) if len(arrays) > 1 else np.ascontiguousarray(arrays[0][None])

    def _tiled(
        self, photo: Image.Image, job: JobContext, feeds: dict[str, np.ndarray] | None = None
    ) -> Image.Image:
        """Overlapping tiles, blended with linear ramps across each overlap, all normalised
        with the statistics of the photo's thumbnail (see :mod:`.thumbnorm`) where the
        model allows; each tile done is reported as a step."""
        tile = self.tile_size
        width, height = photo.size
        tile_width, tile_height = tile_shape(photo.size, tile)
        overlap_x = min(self.params.tile_overlap, tile_width // 4)
        overlap_y = min(self.params.tile_overlap, tile_height // 4)
        source = _pixels(photo)
        # Tiles blend the network's raw values, as they always have: blending the uint8
        # results would clip each tile first and change the overlaps by up to ~40 levels
        # where a tile's value lies outside 0..255. Tiled photos are rare on a GPU.
        tile_engine = self._plain_engine()
        thumb = thumbnorm_sessions_for(self.model, self.device, self._runtime.cache_dir("tensorrt"))
        if job.cancelled:  # before the thumbnail pass, on a GPU a tile's worth of work
            raise Cancelled("stopped before its first tile")
        if thumb is not None:
            graphs, measure, apply = thumb
            thumbnail = _pixels(photo.resize(thumbnail_size(photo.size, tile), LANCZOS))
            plain = PlainEngine(measure, self.manifest, self.checked.feeds)
            inputs = plain.feed(self._batch([thumbnail]), feeds)
            # A run as large as a tile, once a photo: its memory handed back at once.
            statistics = measure.run(graphs.outputs, inputs, run_options(measure, True))
            tile_engine = PlainEngine(apply, self.manifest, self.checked.feeds)
            feeds = {**(feeds or {}), **graphs.feeds(statistics)}
            job.note(tile_statistics=f"from a {thumbnail.shape[1]}x{thumbnail.shape[0]} thumbnail")
        else:
            job.note(tile_statistics="each tile its own: the model's norms cannot be shared")
        starts = [(top, left) for top in _starts(height, tile_height, overlap_y)
                  for left in _starts(width, tile_width, overlap_x)]  # fmt: skip
        total = np.zeros((height, width, 3), dtype=np.float32)
        weight = np.zeros((height, width, 1), dtype=np.float32)
        for done, (top, left) in enumerate(starts, 1):
            if job.cancelled:
                raise Cancelled(f"stopped after {done - 1} of {len(starts)} tiles")
            piece = source[top : top + tile_height, left : left + tile_width]
            # The last tile hands back the memory the tiles took: a daemon idled at 2 GB
            # after a few camera photos, where it holds a small photo's few hundred MB.
            out = self._run([piece], tile_engine, feeds, give_back=done == len(starts))[0]
            h, w = piece.shape[:2]
            rows = _ramp(h, overlap_y, top > 0, top + h < height)
            columns = _ramp(w, overlap_x, left > 0, left + w < width)
            mask = np.outer(rows, columns)[..., None]
            total[top : top + h, left : left + w] += out * mask
            weight[top : top + h, left : left + w] += mask
            job.progress(done, len(starts))
        return _to_image(total / np.maximum(weight, 1e-6))


def needs_tiles(size: tuple[int, int], tile: int) -> bool:
    """Whether a photo of ``size`` runs in tiles of ``tile`` px: memory grows with its
    pixels, so one of more pixels than a tile does, a long thin strip of few does not (its
    tiles, and its thumbnail, would be a pixel or two high)."""
    return size[0] * size[1] > tile * tile


def tile_shape(size: tuple[int, int], tile: int) -> tuple[int, int]:
    """The width and height of the tiles of a photo of ``size``: ``tile`` square, or, for a
    photo narrower than a tile, as wide or high as the photo and long enough to hold a
    tile's pixels (a panorama 200 px high in 2948 x 200 tiles, not 768 x 200 ones: fewer
    seams, each tile the whole height)."""
    width, height = size
    if min(size) >= tile:
        return tile, tile
    # A multiple of 4, as the square tiles are: the network halves the size twice, and a
    # tile of another length came out 9.8 levels from the photo done whole, not 4.3.
    long = tile * tile // min(size)
    long -= long % 4
    if height < width:
        return min(width, long), height
    return width, min(height, long)


def thumbnail_size(size: tuple[int, int], tile: int) -> tuple[int, int]:
    """The size of the thumbnail whose statistics a tiled photo of ``size`` takes: as
    large as a tile's pixels allow, in the photo's shape. A thumbnail as long as a tile
    was a pixel high for a strip (its tiles came out washed to cyan and white) and a
    sliver for a panorama."""
    width, height = size
    scale = min(1.0, tile / math.sqrt(width * height))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _model_for(
    params: FastParams, kind: Literal["cpu", "cuda", "tensorrt"]
) -> tuple[Path, ModelManifest]:
    """The model file a plugin with ``params`` runs on a ``kind`` device, with its
    manifest (see :func:`chosen_model`)."""
    manifest = ModelManifest.for_model(params.model)
    model = chosen_model(params.model, manifest, params.precision, kind)
    if model != params.model:
        manifest = ModelManifest.for_model(model)
    return model, manifest


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
        raise BadModel(
            f"{model}: precision 'fp16' was asked for but its manifest names no "
            "fp16_variant; export one with `stylebox export CHECKPOINT --out "
            f'{model.name} --fp16`, or use precision = "fp32"'
        )
    variant = model.with_name(manifest.fp16_variant)
    if not variant.is_file():
        raise BadModel(f"{model}: its fp16 variant {variant} does not exist")
    return variant


_vectors_lock = threading.Lock()
#: Style vectors by (predictor, style image) digest, shared by every instance.
_vectors: dict[str, np.ndarray] = {}


def _checked(model: Path, manifest: ModelManifest, params: FastParams) -> Checked:
    checked = check_model(model, manifest, params.inputs)
    if params.style is not None and manifest.style_predictor is None:
        raise BadModel(
            f"{model}: the style param needs an arbitrary-style model, and its manifest "
            "names no style_predictor; remove style, or use such a model"
        )
    return checked


def _style_image(path: Path) -> Image.Image:
    """A style image of an arbitrary-style model; one that cannot be read is the config's
    fault (:class:`ConfigError`), not the photo's."""
    try:
        return decode_image(path).rgb
    except BadInput as exc:
        raise ConfigError(f"fast style image {path}: {exc}") from exc


def _style_pixels(image: Image.Image, spec: StylePredictor) -> np.ndarray:
    """The style image as the predictor takes it: centre-cropped to its aspect and resized
    (no padding: the style is texture, and padding would add some of its own)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    want_w, want_h = spec.size
    width, height = image.size
    scale = min(width / want_w, height / want_h)
    crop_w, crop_h = round(want_w * scale), round(want_h * scale)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize(spec.size, LANCZOS)
    array = np.asarray(image, dtype=np.float32)
    if spec.value_range == "0-1":
        array = array / 255.0
    if spec.layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array[None])


def _fitted(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to fit ``box``, keeping its aspect ratio."""
    scale = min(box[0] / size[0], box[1] / size[1])
    return (
        min(box[0], max(1, round(size[0] * scale))),
        min(box[1], max(1, round(size[1] * scale))),
    )


def _padded(array: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """The photo scaled to fit ``box`` ([width, height]) and reflect-padded on the right and
    bottom to fill it, so the model sees it undistorted; the result is cropped back."""
    height, width = array.shape[:2]
    inner_w, inner_h = _fitted((width, height), box)
    small = _pixels(Image.fromarray(array).resize((inner_w, inner_h), LANCZOS))
    pad_h, pad_w = box[1] - inner_h, box[0] - inner_w
    if not pad_h and not pad_w:
        return small
    # numpy reflects repeatedly when the pad is longer than the side; a 1-pixel side has
    # nothing to reflect.
    mode = "reflect" if min(inner_w, inner_h) > 1 else "edge"
    return np.pad(small, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _resized(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if output.shape[1] == size[0] and output.shape[0] == size[1]:
        return output
    return _pixels(_to_image(output).resize(size, LANCZOS))


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
