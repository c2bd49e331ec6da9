"""The Gatys optimiser behind the ``gatys`` plugin: VGG19 losses, L-BFGS or Adam, scales.

Speed comes from doing each thing once: style Grams and content features are computed once
per scale (and Grams cached across jobs), the network stops at the deepest loss layer, and
L-BFGS with a coarse-to-fine schedule reaches a given loss in far fewer steps than Adam.

Right results come from two guards: the L-BFGS refuses blow-ups (see
:mod:`~stylebox.plugins.gatys.lbfgs`), and a job whose loss did not fall to
``require_progress`` of its start, or whose result equals its start image, fails with
that reason (:class:`~stylebox.errors.PermanentFailure`) instead of ending as done.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from stylebox.backbone import fingerprint, load_vgg19
from stylebox.errors import (
    BadInput,
    Cancelled,
    ConfigError,
    MissingCompanion,
    PermanentFailure,
    StyleboxError,
)
from stylebox.images import fit_within, resize_to_max_side
from stylebox.plugins.api import JobContext, Runtime, params_digest
from stylebox.plugins.gatys import color, photoreal
from stylebox.plugins.gatys.affine_fit import affine_fit
from stylebox.plugins.gatys.checkpoint import Checkpoint
from stylebox.plugins.gatys.labels import (
    check_shape,
    load_mask,
)
from stylebox.plugins.gatys.lbfgs import GuardedLBFGS
from stylebox.plugins.gatys.losses import Objective
from stylebox.plugins.gatys.params import (
    Color,
    GatysParams,
    hex_color,
)
from stylebox.plugins.gatys.photoreal import LaplacianCache
from stylebox.plugins.gatys.regions import RegionStyle, label_masks, region_masks
from stylebox.plugins.gatys.style_files import StyleImage, read_style_files
from stylebox.plugins.gatys.targets import StyleTargetCache
from stylebox.tensors import resolve_device, to_image, to_tensor

#: VGG19 halves the image four times before relu5_1; a shorter side leaves nothing to match.
MIN_SIDE = 32
#: Jobs shorter than this are not held to ``require_progress``: L-BFGS's first steps are
#: deliberately tiny, so a 3-step job has not had the chance to change the image.
MIN_GUARDED_STEPS = 10
#: A result within this mean distance (grey levels of 255) of its start image is unchanged.
UNCHANGED_GREY_LEVELS = 0.5
#: What each step reports of an image's loss, read back from the device once a step.
_PARTS = ("loss", "content", "style", "tv")

log = logging.getLogger("stylebox.gatys")

_caches: dict[Path, StyleTargetCache] = {}


def _shared_cache(folder: Path) -> StyleTargetCache:
    """One cache per state dir, shared by every gatys instance in the process."""
    return _caches.setdefault(folder, StyleTargetCache(folder))


@dataclass(frozen=True)
class _Scale:
    index: int
    size: int
    steps: int
    first_global_step: int
    pixels: int
    """Pixels optimised at this scale: a step's cost is about proportional to them."""


@dataclass
class _Run:
    """What the job-level guard needs to know about the whole optimisation."""

    start_loss: float | None = None
    last_loss: float = math.inf
    steps: int = 0
    """The last step run, counted over the whole job (a plateau may end it early)."""
    refused: int = 0
    saved_at: float = field(default_factory=time.monotonic)
    """When the job last checkpointed (or started), for ``checkpoint_seconds``."""


@dataclass
class _Lane:
    """One job of a batch optimised together: its own photo, optimiser state and guard.
    A job alone is a batch of one."""

    job: JobContext
    image: Image.Image
    work: Image.Image
    """The photo, stretched where VGG19 would see too little of it."""
    out_size: tuple[int, int]
    start_image: torch.Tensor
    checkpoint: Checkpoint | None
    run: _Run = field(default_factory=_Run)
    error: StyleboxError | None = None
    """Why the job ended early (stopped, no progress); its result is then this error."""
    mask: Image.Image | None = None
    """The photo's label image at the photo's size (region-wise style only)."""
    colors: list[Color] = field(default_factory=list)
    """The regions' colours, in the masks' order."""
    active: bool = True
    """Still stepping at this scale (a plateau ends its scale early)."""
    best: float = math.inf
    stale: int = 0


class _Clock:
    """Seconds left in a job: the pixel-steps left at this and every later scale, times the
    seconds per pixel-step measured so far (a 512 px step costs about 4x a 256 px one).

    Small sizes cost more per pixel (fixed overheads), so a scale this engine has already
    run is counted at its own measured seconds per step: from the second job on, the
    estimate of a coarse-to-fine job is right from its first step.
    """

    def __init__(self, scales: list[_Scale], known: dict[int, float]) -> None:
        self.scales = scales
        self.known = known
        """Seconds per step by pixel count, from earlier steps of this engine (shared)."""

    def tick(self, seconds: float, scale: _Scale, steps_done: int) -> float:
        previous = self.known.get(scale.pixels)
        # A running average smooths one-off costs and noise.
        current = seconds if previous is None else 0.8 * previous + 0.2 * seconds
        self.known[scale.pixels] = current
        per_pixel = current / scale.pixels
        left = (scale.steps - steps_done) * current
        for later in self.scales[scale.index + 1 :]:
            left += later.steps * self.known.get(later.pixels, per_pixel * later.pixels)
        return left


def compute_device(params: GatysParams, runtime: Runtime) -> torch.device:
    """The device jobs run on, or a :class:`ConfigError` saying why the params cannot run
    here (a CUDA device this machine lacks; bf16 anywhere but on CUDA)."""
    device = resolve_device(params.device or runtime.device)
    if params.precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"gatys precision 'bf16' needs a CUDA device, not {device}")
    return device


class Engine:
    """Gatys et al. style transfer: VGG19 content + Gram style + TV losses, L-BFGS or Adam."""

    def __init__(self, params: GatysParams, runtime: Runtime) -> None:
        self.params = params
        self.device = compute_device(params, runtime)
        # The style files before VGG19 (a second to load): a bad mask is said at once.
        self.style_files = files = read_style_files(params)
        spec = replace(runtime.backbone, pooling=params.pooling)
        self.network = load_vgg19(spec, self.device)
        self.backbone_id = fingerprint(spec)
        self.digest = params_digest(params)
        self.step_seconds: dict[int, float] = {}
        """Measured seconds per step by pixel count, for the ETA of later jobs."""
        self.styles: list[StyleImage] = files.styles
        self.style_masks: list[Image.Image | None] = files.masks
        self.style_masks_resized = files.resized
        # Made once the styles are read: a start refused for a bad style leaves no folders.
        self.cache = _shared_cache(runtime.cache_dir("gatys-style-targets"))
        self.laplacians = LaplacianCache()
        self.parts = (*_PARTS, "photo") if params.photorealism else _PARTS
        """The loss parts each step reports."""

    # -- the job ---------------------------------------------------------------------------

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        (outcome,) = self.process_many([image], [job])
        if isinstance(outcome, StyleboxError):
            raise outcome
        return outcome

    def process_many(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image | StyleboxError]:
        """Photos optimised together: those of one size as one batch, with one VGG19 pass a
        step for all, each photo with its own L-BFGS state, snapshots, checkpoints and
        guard, so each ends as it would alone (within float noise) and on its own: a job
        that is stopped or fails leaves the others running. A job with a checkpoint to
        resume from runs alone (its steps are not the others')."""
        lanes: list[_Lane | StyleboxError] = []
        for image, job in zip(images, jobs, strict=True):
            try:
                lanes.append(self._lane(image, job))
            except StyleboxError as exc:  # a bad mask, say: this job alone fails
                lanes.append(exc)
        # Photos of one size together (each with its own masks and matting Laplacian, if
        # any); each resumed job alone.
        groups: dict[object, list[_Lane]] = {}
        for lane in lanes:
            if isinstance(lane, _Lane):
                key = id(lane) if lane.checkpoint is not None else lane.work.size
                groups.setdefault(key, []).append(lane)
        outcomes: dict[int, Image.Image | StyleboxError] = {}
        for group in groups.values():
            outcomes.update(zip(map(id, group), self._run_lanes(group), strict=True))
        return [outcomes[id(lane)] if isinstance(lane, _Lane) else lane for lane in lanes]

    def _run_lanes(self, lanes: list[_Lane]) -> list[Image.Image | StyleboxError]:
        p = self.params
        scales = self._scales(lanes[0].work.size)
        total = scales[-1].first_global_step + scales[-1].steps
        resume = lanes[0].checkpoint if len(lanes) == 1 else None
        if resume is not None:
            lanes[0].job.note(
                resumed_from_step=scales[resume.scale].first_global_step + resume.step
            )
        clock = _Clock(scales, self.step_seconds)
        cache_outcomes: dict[str, int] = {}

        result: torch.Tensor | None = None
        content: torch.Tensor | None = None
        for scale in scales:
            if resume is not None and scale.index < resume.scale:
                continue
            photos = [resize_to_max_side(lane.work, scale.size) for lane in lanes]
            content = torch.cat([to_tensor(photo, self.device) for photo in photos])
            lum_content = color.luminance(content) if p.color == "luminance" else None
            target_content = lum_content if lum_content is not None else content
            objective = self._objective(target_content, content, cache_outcomes, lanes)

            if resume is not None and scale.index == resume.scale:
                start = resume.image.to(self.device)
            elif result is not None:
                start = F.interpolate(
                    result, size=content.shape[-2:], mode="bicubic", align_corners=False
                ).clamp(0, 1)
            else:
                start = torch.cat([lane.start_image for lane in lanes])
            here = resume if resume is not None and scale.index == resume.scale else None

            def show(x: torch.Tensor, index: int, base: torch.Tensor = content) -> Image.Image:
                x = x.detach().clamp(0, 1)
                if p.color == "luminance":
                    x = color.with_content_colour(x, base[index : index + 1])
                return to_image(x)

            result = self._optimise(scale, total, start, objective, here, lanes, show, clock)
            resume = None
            if all(lane.error is not None for lane in lanes):
                break
        for lane in lanes:
            lane.job.note(style_cache=cache_outcomes)
        assert result is not None and content is not None
        return [
            lane.error or self._finish(lane, result[i : i + 1], content[i : i + 1])
            for i, lane in enumerate(lanes)
        ]

    def _lane(self, image: Image.Image, job: JobContext) -> _Lane:
        p = self.params
        job.note(device=str(self.device), backbone=self.backbone_id)
        out_size = fit_within(image.size, p.size)
        work = image
        if min(out_size) < MIN_SIDE:  # stretched up to where VGG19 still sees something
            work = image.resize(
                (max(out_size[0], MIN_SIDE), max(out_size[1], MIN_SIDE)), Image.Resampling.LANCZOS
            )
            job.note(
                stretched=f"{out_size[0]}x{out_size[1]} is under VGG19's {MIN_SIDE} px: "
                f"optimised at {work.width}x{work.height}, then resized back"
            )
        first_size = self._scales(work.size)[0].size
        # The job's own seeded generator: noise is the same on every run and every thread,
        # and a resumed job needs no random state back.
        first = to_tensor(resize_to_max_side(work, first_size), self.device)
        mask, colors = self._photo_mask(image, job)
        start_image = self._initial(
            color.luminance(first) if p.color == "luminance" else first,
            torch.Generator().manual_seed(p.seed),
            mask,
            colors,
        )
        checkpoint = Checkpoint.load(job.checkpoint_dir, self.digest, image.size)
        run = _Run(start_loss=checkpoint.start_loss if checkpoint else None)
        return _Lane(
            job, image, work, out_size, start_image, checkpoint, run, mask=mask, colors=colors
        )

    def _photo_mask(
        self, image: Image.Image, job: JobContext
    ) -> tuple[Image.Image | None, list[Color]]:
        """The photo's label image (its companion ``<stem>.mask.*``, else ``content_mask``)
        at the photo's size, and the regions' colours; none without ``style_mask``."""
        p = self.params
        companion = job.companions.get("mask")
        if p.style_mask is None:
            if companion is not None:
                job.note(mask=f"{companion.name} not used: style_mask is not set")
                log.warning(
                    "%s beside the photo is not used: style_mask is not set (the regions "
                    "need the style image's label image too)",
                    companion.name,
                )
            return None, []
        if companion is not None and p.content_mask is not None:
            # The photo's own mask wins over the config's default one: said, not silent.
            job.note(content_mask_not_used=f"the photo's own mask {companion.name} is used")
            log.warning(
                "the photo's own mask %s is used, not content_mask %s",
                companion.name,
                p.content_mask,
            )
        path = companion or p.content_mask
        if path is None:
            raise MissingCompanion(
                "gatys has style_mask set but this photo has no mask: put its label image "
                "beside it as <photo stem>.mask.png, or set content_mask",
                kind="mask",
            )
        where = f"the photo's mask {path.name if companion is not None else path}"
        mask = load_mask(path, where, BadInput if companion is not None else ConfigError)
        job.note(mask=path.name)
        if self.style_masks_resized:
            job.note(style_mask_resized=self.style_masks_resized)
        colors = self.style_files.region_colors(p, mask, where)
        # This photo's fault even for the config's content_mask: the next photo may fit it.
        check_shape(mask, image.size, where, "the photo (as shown, after any EXIF turn)", BadInput)
        if unstyled := self.style_files.unstyled(mask, colors, where, BadInput):
            job.note(mask_regions_unstyled=[hex_color(color) for color in unstyled])
            log.warning(
                "%s: its regions %s are in no style mask, and keep the photo's look",
                where,
                ", ".join(map(hex_color, unstyled)),
            )
        if mask.size != image.size:
            job.note(
                mask_resized=f"{mask.width}x{mask.height} to the photo's "
                f"{image.width}x{image.height} (nearest)"
            )
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        job.note(mask_regions=[f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colors])
        return mask, colors

    def _finish(
        self, lane: _Lane, result: torch.Tensor, content: torch.Tensor
    ) -> Image.Image | StyleboxError:
        final = result.detach().clamp(0, 1)
        try:
            self._check_progress(lane.run, final, lane.start_image)
        except PermanentFailure as exc:
            return exc
        if self.params.color == "luminance":
            final = color.with_content_colour(final, content)
        if self.params.affine_fit_radius:
            final = affine_fit(
                content, final, self.params.affine_fit_radius, self.params.affine_fit_epsilon
            )
        picture = to_image(final)
        if picture.size == lane.out_size:
            return picture
        return picture.resize(lane.out_size, Image.Resampling.LANCZOS)

    def _check_progress(self, run: _Run, final: torch.Tensor, start_image: torch.Tensor) -> None:
        """Fail, rather than call done, a job that did not paint anything."""
        fraction, total = self.params.require_progress, run.steps
        if not fraction or total < MIN_GUARDED_STEPS or run.start_loss is None:
            return
        if not run.last_loss < fraction * run.start_loss:
            went = "rose" if run.last_loss > run.start_loss else "fell only"
            raise PermanentFailure(
                f"the loss {went} from {run.start_loss:.4g} to {run.last_loss:.4g} in "
                f"{total} steps (not below {fraction:g} of its start), so the result is not "
                "stylised; try more steps, another style_weight or learning_rate, or set "
                "require_progress = 0 to accept it"
            )
        shrunk = F.interpolate(final, size=start_image.shape[-2:], mode="area")
        distance = float((shrunk - start_image.clamp(0, 1)).abs().mean()) * 255
        if distance < UNCHANGED_GREY_LEVELS:
            raise PermanentFailure(
                f"the result equals its start image (mean difference {distance:.2f} grey "
                f"levels after {total} steps); try more steps or another style_weight"
            )

    def _scales(self, size: tuple[int, int]) -> list[_Scale]:
        p = self.params
        final = min(p.size, max(size))
        # Coarse scales that would shrink the short side below MIN_SIDE are skipped.
        sizes = [s for s in p.scales if s < final and min(size) * s / max(size) >= MIN_SIDE]
        sizes.append(final)
        scales, first = [], 0
        for index, s in enumerate(sizes):
            is_final = index == len(sizes) - 1
            steps = p.steps if is_final else (p.coarse_steps or p.steps)
            width, height = fit_within(size, s)
            scales.append(_Scale(index, s, steps, first, width * height))
            first += steps
        return scales

    def _initial(
        self,
        content: torch.Tensor,
        generator: torch.Generator,
        mask: Image.Image | None = None,
        colors: Sequence[Color] = (),
    ) -> torch.Tensor:
        init = self.params.init
        if init == "content":
            return content.clone()
        if init == "matched":
            return self._matched(content, mask, colors)
        if init == "noise":
            noise = torch.rand(content.shape, generator=generator)
            return noise.to(content.device)
        source = self.styles[0].image if init == "style" else self.style_files.init
        assert source is not None  # read_style_files read the file init names
        resized = source.resize((content.shape[-1], content.shape[-2]), Image.Resampling.LANCZOS)
        start = to_tensor(resized, content.device)
        return color.luminance(start) if self.params.color == "luminance" else start

    def _matched(
        self, content: torch.Tensor, mask: Image.Image | None, colors: Sequence[Color]
    ) -> torch.Tensor:
        """``content`` with each region's colours matched to the styles' same region (the
        whole photo to the whole styles without masks)."""
        height, width = content.shape[-2:]
        references = []
        for style, blend, style_mask in zip(
            self.styles, self.params.blend, self.style_masks, strict=True
        ):
            tensor, _, _ = self._style_tensor(style, content, content)
            h, w = tensor.shape[-2:]
            references.append((tensor.cpu(), region_masks(style_mask, colors, (w, h)), blend))
        photo_masks = region_masks(mask, colors, (width, height))
        matched = color.recolour_regions(content.cpu(), photo_masks, references)
        return matched.to(content.device)

    def _objective(
        self,
        content: torch.Tensor,
        colour_content: torch.Tensor,
        outcomes: dict[str, int],
        lanes: Sequence[_Lane] = (),
    ) -> Objective:
        """The loss for a batch of photos ``content``: their own content features, and the
        style's Grams: one set for all, or one per photo where the colour mode fits the
        painting to each photo. With masks or photorealism, each photo's (``lanes[i]``)
        region-wise style loss and matting Laplacian."""
        p = self.params
        regions: list[RegionStyle] = []
        laplacians: list[torch.Tensor] = []
        for i, lane in enumerate(lanes if p.style_mask is not None or p.photorealism else ()):
            if p.style_mask is not None:
                regions.append(self._regions(lane, content[i : i + 1], colour_content[i : i + 1]))
                # Region targets are made for each photo's mask, never cached: computed.
                outcomes["computed"] = outcomes.get("computed", 0) + len(self.styles)
            if p.photorealism:
                photo = colour_content[i : i + 1]
                photoreal.warm_up()  # the load of pymatting's code is no photo's build time
                began = time.perf_counter()
                laplacian, cached = self.laplacians.get(_tensor_digest(photo), photo)
                laplacians.append(laplacian)
                if not cached:
                    h, w = photo.shape[-2:]
                    seconds = round(time.perf_counter() - began, 3)
                    lane.job.note(**{f"laplacian_seconds_{w}x{h}": seconds})
        with torch.no_grad(), self._autocast():
            content_targets = {
                k: v.float() for k, v in self.network(content, list(p.content_layers)).items()
            }
        if regions:
            style_targets = {}
        elif p.color == "none":
            style_targets = self._style_targets(content[:1], colour_content[:1], outcomes)
        else:
            per_photo = [
                self._style_targets(content[i : i + 1], colour_content[i : i + 1], outcomes)
                for i in range(content.shape[0])
            ]
            style_targets = {k: torch.cat([t[k] for t in per_photo]) for k in per_photo[0]}
        return Objective(
            self.network,
            content_targets,
            style_targets,
            p.content_layers,
            p.style_layers,
            p.content_weight,
            p.style_weight,
            p.tv_weight,
            regions=regions,
            laplacians=laplacians,
            photorealism=p.photorealism,
        )

    def _regions(
        self, lane: _Lane, content: torch.Tensor, colour_content: torch.Tensor
    ) -> RegionStyle:
        """The region-wise style loss of ``lane``'s photo ``content`` (1, 3, H, W)."""
        p = self.params
        assert lane.mask is not None
        layers = [k for k, w in p.style_layers.items() if w]
        height, width = content.shape[-2:]
        masks = label_masks(lane.mask, lane.colors, (width, height)).to(self.device)
        styles = []
        with torch.no_grad(), self._autocast():
            own = self.network(content, layers)
            for style, blend, mask in zip(self.styles, p.blend, self.style_masks, strict=True):
                tensor, _, _ = self._style_tensor(style, content, colour_content)
                h, w = tensor.shape[-2:]
                # A style without a mask lends all of itself to each region.
                style_masks = region_masks(mask, lane.colors, (w, h))
                styles.append((self.network(tensor, layers), style_masks.to(self.device), blend))
            return RegionStyle.build(own, masks, styles)

    def _style_targets(
        self, content: torch.Tensor, colour_content: torch.Tensor, outcomes: dict[str, int]
    ) -> dict[str, torch.Tensor]:
        """The blended Grams of the style images, sized for ``content`` (one photo)."""
        p = self.params
        blended: dict[str, torch.Tensor] = {}
        for style, weight in zip(self.styles, p.blend, strict=True):
            tensor, style_id, size = self._style_tensor(style, content, colour_content)
            key = self.cache.key(style_id, size, list(p.style_layers), self.backbone_id)
            with self._autocast():
                grams, outcome = self.cache.grams(key, tensor, self.network, list(p.style_layers))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            for layer, g in grams.items():
                blended[layer] = blended.get(layer, 0) + weight * g.float()
        return blended

    def _style_tensor(
        self, style: StyleImage, content: torch.Tensor, colour_content: torch.Tensor
    ) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """A style image as the loss sees it beside ``content`` (one photo): sized, in the
        colour mode; with its cache identity and its size."""
        p = self.params
        longest = round(max(content.shape[-2:]) * p.style_scale)
        picture = resize_to_max_side(style.image, longest)
        # Small paintings are enlarged to the asked scale, and any painting to where
        # VGG19 still sees something.
        if max(picture.size) < longest or min(picture.size) < MIN_SIDE:
            factor = max(longest / max(picture.size), MIN_SIDE / min(picture.size))
            factor *= max(picture.size) / max(style.image.size)
            picture = style.image.resize(
                (
                    max(1, round(style.image.width * factor)),
                    max(1, round(style.image.height * factor)),
                ),
                Image.Resampling.LANCZOS,
            )
        tensor = to_tensor(picture, self.device)
        style_id = style.sha256
        if p.color == "luminance":
            tensor = color.match_luminance(color.luminance(tensor), content)
            style_id += f"|lum:{float(content.mean()):.6f}:{float(content.std()):.6f}"
        elif p.color == "histogram":
            tensor = color.match_colour(tensor.cpu(), colour_content.cpu()).to(self.device)
            style_id += f"|hist:{_tensor_digest(colour_content)}"
        return tensor, style_id, picture.size

    def _memory_format(self) -> torch.memory_format:
        chosen = self.params.memory_format
        if chosen == "auto":
            chosen = "channels_last" if self.device.type == "cuda" else "contiguous"
        return torch.channels_last if chosen == "channels_last" else torch.contiguous_format

    def _optimise(
        self,
        scale: _Scale,
        total: int,
        start: torch.Tensor,
        objective: Objective,
        resume: Checkpoint | None,
        lanes: list[_Lane],
        show: Callable[[torch.Tensor, int], Image.Image],
        clock: _Clock,
    ) -> torch.Tensor:
        """One scale of every lane's optimisation; the images at its end, as a batch.

        The photos are one batch: one VGG19 pass a step for those still stepping, and one
        optimiser whose state is each photo's own. Nothing waits for the device between
        read-backs: each step's losses stay on it and are read every ``report_every``
        steps (and before a snapshot, a checkpoint, a cancellation and the scale's end).
        Then every step since the last read-back is reported in order and the guards act,
        so a plateau is seen up to ``report_every - 1`` steps late (those steps stay in
        the image).
        """
        p = self.params
        layout = self._memory_format()
        # One contiguous leaf for the batch (L-BFGS flattens each photo); the network sees
        # a copy in the chosen layout.
        x = start.detach().clone().contiguous().requires_grad_(True)
        optimizer = self._optimizer(x)
        ended: dict[int, tuple[int, torch.Tensor, dict[str, Any]]] = {}
        """The step, image and optimiser state of each lane that stopped stepping, as they
        were then (a lane that stopped at a plateau may still be stopped and checkpointed)."""
        step = 0
        for lane in lanes:
            lane.active, lane.best, lane.stale = lane.error is None, math.inf, 0
        if resume is not None:
            optimizer.load_state_dict(resume.optimizer)
            step, lanes[0].best, lanes[0].stale = resume.step, resume.best_loss, resume.stale_steps
        elif scale.index == 0 and p.snapshot_every:
            for i, lane in enumerate(lanes):
                lane.job.snapshot(show(x[i : i + 1], i), 0)

        def row(i: int) -> tuple[int, torch.Tensor, dict[str, Any]]:
            """Lane ``i``'s step, image and optimiser state, copied on the device."""
            if isinstance(optimizer, GuardedLBFGS):
                state = optimizer.state_dict(i)
            else:
                state = _adam_row(optimizer.state_dict(), i)
            return step, x[i : i + 1].detach().clone(), state

        def end(i: int) -> None:
            lanes[i].active = False
            ended[i] = row(i)

        def save(i: int) -> None:
            # Written by the job's writer while the steps go on: the image and the
            # optimiser's state are copied now, on the device.
            lane = lanes[i]
            at, image, state = ended[i] if i in ended else row(i)
            checkpoint = Checkpoint(
                self.digest,
                lane.image.size,
                scale.index,
                at,
                image,
                state,
                lane.best,
                lane.stale,
                lane.run.start_loss,
            )
            lane.job.save_checkpoint(checkpoint.save)
            lane.run.saved_at = time.monotonic()

        pending: list[torch.Tensor] = []
        """Each unread step's [lanes stepping, parts] values, on the device."""
        pending_live: list[int] = []
        every = p.report_every or (10 if self.device.type == "cuda" else 1)
        since = time.perf_counter()

        def read_back() -> None:
            """Report the unread steps, in order, with one read from the device."""
            nonlocal since
            if not pending:
                return
            rows = torch.stack(pending).tolist()
            now = time.perf_counter()
            elapsed, since = (now - since) / len(rows), now
            first = step - len(rows) + 1
            for k, values in enumerate(rows):
                eta = clock.tick(elapsed, scale, first + k)
                for position, i in enumerate(pending_live):
                    if not lanes[i].active:  # ended at an earlier step of this read-back
                        continue
                    parts = dict(zip(self.parts, values[position], strict=True))
                    self._stepped(
                        lanes[i],
                        values[position][0],
                        parts,
                        scale,
                        scale.first_global_step + first + k,
                        total,
                        elapsed,
                        eta,
                    )
                    if not lanes[i].active:
                        end(i)
            pending.clear()

        rows_of: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        while step < scale.steps:
            cancelled = [
                i for i, lane in enumerate(lanes) if lane.error is None and lane.job.cancelled
            ]
            if cancelled:
                read_back()
                for i in cancelled:
                    if lanes[i].error is not None:  # it failed at a step just read back
                        continue
                    save(i)
                    lanes[i].error = Cancelled(
                        f"cancelled at step {scale.first_global_step + step}"
                    )
                    if lanes[i].active:
                        end(i)
            live = [i for i, lane in enumerate(lanes) if lane.active]
            if not live:
                break
            index = mask = None  # every lane steps
            if len(live) < len(lanes):
                if tuple(live) not in rows_of:
                    # Made once per set of lanes: a copy to the GPU waits for queued steps.
                    made = torch.tensor(live, device=self.device)
                    alive = torch.zeros(len(lanes), dtype=torch.bool, device=self.device)
                    rows_of[tuple(live)] = made, alive.index_fill_(0, made, True)
                index, mask = rows_of[tuple(live)]
            x.grad = None
            with self._autocast():
                batch = x if index is None else x.index_select(0, index)
                terms = objective.per_image(
                    batch.contiguous(memory_format=layout),
                    index,
                    None if index is None else live,
                )
            terms["loss"].sum().backward()
            values = torch.stack([terms[k].detach().float() for k in self.parts], 1)
            if isinstance(optimizer, GuardedLBFGS):
                assert x.grad is not None
                if index is None:
                    reported = optimizer.update(values[:, 0], x.grad)
                else:
                    losses = values.new_zeros(len(lanes)).index_copy_(0, index, values[:, 0])
                    reported = optimizer.update(losses, x.grad, mask).index_select(0, index)
                # Progress shows the accepted point: a refused blow-up is not the image's.
                values = torch.cat([reported[:, None], values[:, 1:]], 1)
            else:
                for group in optimizer.param_groups:
                    group["lr"] = p.learning_rate * self._decay(step, scale.steps)
                optimizer.step()
            pending.append(values)
            pending_live = live
            step += 1
            global_step = scale.first_global_step + step
            snapshot = bool(p.snapshot_every) and global_step % p.snapshot_every == 0
            due = [
                i
                for i in live
                if step < scale.steps and self._checkpoint_due(global_step, lanes[i].run)
            ]
            if snapshot or due or len(pending) >= every or step == scale.steps:
                read_back()
            for i in live:
                if lanes[i].error is not None:
                    continue
                if snapshot:
                    lanes[i].job.snapshot(show(x[i : i + 1], i), global_step)
                if lanes[i].active and i in due:
                    save(i)
        read_back()
        if isinstance(optimizer, GuardedLBFGS):
            for lane, refused in zip(lanes, optimizer.refused.tolist(), strict=True):
                if refused:
                    lane.run.refused += refused
                    lane.job.note(lbfgs_refused_steps=lane.run.refused)
        result = x.detach().clone()
        for i, (_, image, _) in ended.items():
            result[i : i + 1] = image
        return result

    def _stepped(
        self,
        lane: _Lane,
        loss: float,
        parts: dict[str, float],
        scale: _Scale,
        global_step: int,
        total: int,
        elapsed: float,
        eta: float,
    ) -> None:
        """Report one lane's step and keep its guard and plateau count; a loss that is not
        finite (Adam only: L-BFGS refuses such points) ends the lane with that reason."""
        p = self.params
        if not math.isfinite(loss):
            lane.error = PermanentFailure(
                f"the loss became {loss} at step {global_step}; lower learning_rate or style_weight"
            )
            lane.active = False
            return
        run = lane.run
        if run.start_loss is None:
            run.start_loss = loss
        run.last_loss, run.steps = loss, global_step
        parts["loss"] = loss
        lane.job.progress(
            global_step, total, **parts, size=scale.size, its=1.0 / max(elapsed, 1e-9), eta=eta
        )
        if loss < lane.best * (1 - p.plateau_tolerance):
            lane.best, lane.stale = loss, 0
        else:
            lane.best, lane.stale = min(lane.best, loss), lane.stale + 1
        if p.plateau_patience and lane.stale >= p.plateau_patience:
            lane.job.note(**{f"plateau_stop_scale{scale.index}": global_step})
            lane.active = False

    def _checkpoint_due(self, global_step: int, run: _Run) -> bool:
        p = self.params
        if p.checkpoint_every and global_step % p.checkpoint_every == 0:
            return True
        return bool(p.checkpoint_seconds) and (
            time.monotonic() - run.saved_at >= p.checkpoint_seconds
        )

    def _optimizer(self, x: torch.Tensor) -> GuardedLBFGS | torch.optim.Adam:
        p = self.params
        if p.optimizer == "adam":
            # Capturable: its step count stays on the GPU, not read back every step.
            return torch.optim.Adam([x], lr=p.learning_rate, capturable=self.device.type == "cuda")
        return GuardedLBFGS(x, lr=p.learning_rate, history_size=p.lbfgs_history)

    def _decay(self, step: int, steps: int) -> float:
        p = self.params
        t = step / max(1, steps - 1)
        if p.lr_schedule == "cosine":
            return p.lr_final + (1 - p.lr_final) * 0.5 * (1 + math.cos(math.pi * t))
        if p.lr_schedule == "exponential":
            return p.lr_final**t
        return 1.0

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.params.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def _adam_row(state: dict[str, Any], i: int) -> dict[str, Any]:
    """Adam's state for photo ``i`` of the batch alone (a resumed job runs alone)."""
    return {
        "state": {
            key: {
                name: value[i : i + 1].clone() if value.dim() > 0 else value.clone()
                for name, value in per_param.items()
            }
            for key, per_param in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
