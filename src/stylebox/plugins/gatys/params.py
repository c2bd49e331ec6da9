"""Every knob of the Gatys optimiser, in one typed place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from stylebox.backbone_spec import LAYERS, Pooling
from stylebox.plugins.api import InputFile, PluginParams, StyleFile, word_or_file

DEFAULT_STYLE_LAYERS = {
    "relu1_1": 1.0,
    "relu2_1": 1.0,
    "relu3_1": 1.0,
    "relu4_1": 1.0,
    "relu5_1": 1.0,
}


#: More distinct colours than this in a mask without ``mask_colors`` is not a label image.
MAX_MASK_COLORS = 16
#: Adam's rate where none is set: the default 1.0 is L-BFGS's step scale, under which Adam
#: moves every pixel by the whole range at its first step and every job failed.
ADAM_LEARNING_RATE = 0.02

Color = tuple[int, int, int]

#: What a job starts from, besides an image file. ``matched``: the photo with each region's
#: colours moved to those of the style's same region (see ``color.recolour_regions``).
Init = Literal["content", "noise", "style", "matched"]


def parse_color(text: str) -> Color:
    """``#rrggbb`` (or ``rrggbb``) as an (r, g, b) triple."""
    value = text.strip().removeprefix("#")
    try:
        if len(value) != 6:
            raise ValueError
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    except ValueError:
        raise ValueError(f"mask colour {text!r} is not #rrggbb") from None


def hex_color(color: Color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


#: Named sets of defaults: ``preset = "photo"`` fills every knob listed here that the
#: config does not set itself (what the config sets always wins).
PRESETS: dict[str, dict[str, object]] = {
    # Luan et al. 2017: content at conv4_2, style at conv1_1..conv5_1 (pre-ReLU, as in the
    # paper), the photorealism regulariser on, no TV (the regulariser smooths where the
    # photo is smooth), starting from the photo recoloured region by region to the
    # reference's colours (from the photo as it is, the style loss moved them only a fifth
    # of the way for a sky, an eighth for a sea, in 100 steps; see README, "Photo to photo";
    # with a colour mode, which keeps the photo's colours, from the photo). The weights are
    # the paper's balance rescaled to stylebox's mean-normalised terms.
    "photo": {
        "content_layers": {"conv4_2": 1.0},
        "style_layers": {
            "conv1_1": 1.0,
            "conv2_1": 1.0,
            "conv3_1": 1.0,
            "conv4_1": 1.0,
            "conv5_1": 1.0,
        },
        "content_weight": 1.0,
        "style_weight": 1.0,
        "tv_weight": 0.0,
        # Luan et al.'s lambda = 1e4 on an unnormalised V^T L V at about 512 x 341 px is
        # 1e4 / 2 * 174592 / 5 here (per pixel, content weight 1 in place of their 5).
        "photorealism": 1.75e8,
        "init": "matched",
        "optimizer": "lbfgs",
        # The result refitted to the photo in 9 x 9 windows: drops the halos and grain
        # the regulariser left at edges (chosen by eye on kodim06 to kodim16 at 512 px).
        "affine_fit_radius": 4,
        # Started from a photo (matched or as it is), the loss is mostly style, and moving
        # one photo's look onto another need not halve it: kodim16 restyled as kodim06 at
        # 512 px from the photo itself fell to 0.55 of its start, clearly restyled (23 grey
        # levels), and the default 0.5 threw 22 minutes away; from the matched start kodim06
        # as kodim16 fell to 0.42. A 10 % fall still tells a run that did nothing; so does
        # the check that the result is not its start image.
        "require_progress": 0.9,
    },
}


def _check_layers(value: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(value).difference(LAYERS))
    if unknown:
        raise ValueError(f"unknown VGG19 layers {unknown}; use names like relu4_2 or conv1_1")
    if not value:
        raise ValueError("at least one layer is needed")
    if any(weight < 0 for weight in value.values()):
        raise ValueError("layer weights must not be negative")
    return value


def _one_or_many_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of a list field that also takes one value alone (see
    ``_one_or_many``): editors checking a config against ``stylebox config schema`` accept
    ``style = "starry_night"`` as stylebox does."""
    options = schema.pop("anyOf", None) or [
        {k: schema.pop(k) for k in ("type", "items", "minItems") if k in schema}
    ]
    array = next(option for option in options if option.get("type") == "array")
    items = array["items"]
    single = [o for o in items.get("anyOf", [items]) if o.get("type") != "null"]
    schema["anyOf"] = [*single, *options]


#: Where a decaying learning rate ends, as a fraction of the first, unless set.
LR_FINAL = 0.1


class GatysParams(PluginParams):
    """Parameters of the ``gatys`` plugin (Gatys, Ecker & Bethge, 2016)."""

    # Strict: "300" is no step count and true no weight (lax mode made numbers of them).
    model_config = ConfigDict(strict=True)

    preset: Literal["photo"] | None = Field(
        None,
        description="Named defaults: 'photo' sets Luan et al.'s layers and weights for "
        "photo-to-photo transfer (photorealism on); what the config sets still wins",
    )

    # What to paint with
    style: list[StyleFile] = Field(
        min_length=1,
        description="Style image(s): paths or bundled names such as 'starry_night'",
        json_schema_extra=_one_or_many_schema,
    )
    style_blend: list[float] | None = Field(
        None, description="One weight per style image (normalised to sum to 1); default equal"
    )
    style_scale: float = Field(
        1.0, gt=0, le=4, description="Style image size relative to the result's longest side"
    )

    # The objective
    content_weight: float = Field(1.0, ge=0, description="Weight of the content loss")
    style_weight: float = Field(20.0, ge=0, description="Weight of the style (Gram) loss")
    tv_weight: float = Field(1e5, ge=0, description="Weight of the total-variation smoothness loss")
    content_layers: dict[str, float] = Field(
        default_factory=lambda: {"relu4_2": 1.0}, description="Content layers and their weights"
    )
    style_layers: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_STYLE_LAYERS),
        description="Style layers and their weights",
    )
    photorealism: float = Field(
        0.0,
        ge=0,
        description="Weight of Luan et al.'s photorealism regulariser (the photo's matting "
        "Laplacian: the result stays locally an affine colour change of the photo); 0: off",
    )
    affine_fit_radius: int = Field(
        0,
        ge=0,
        le=64,
        description="After the last step, refit the result as a local affine colour change "
        "of the photo in windows of 2r+1 pixels (Luan et al.'s last step: keeps the new "
        "colours, drops edges and texture the photo lacks); 0: off",
    )
    # 1e-3 chosen by eye on kodim06 restyled as kodim16 at 512 px (1e-4 kept more of the
    # halos at the mast and the treeline).
    affine_fit_epsilon: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="Ridge of that fit on 0..1 colours: larger is smoother",
    )
    content_mask: InputFile | None = Field(
        None,
        description="Label image of the photo (flat colours: one per region); in an inbox, "
        "the photo's own <stem>.mask.png beside it wins",
    )
    style_mask: list[InputFile | None] | None = Field(
        None,
        json_schema_extra=_one_or_many_schema,
        description="Label image of the style image (same colours, same regions), or one per "
        "style image; a region the style lacks keeps the photo's look",
    )
    mask_colors: list[str] | None = Field(
        None,
        description="The regions' colours as #rrggbb; each mask pixel takes the nearest (for "
        "antialiased masks); default: the masks' own distinct colours (at most 16)",
    )
    pooling: Pooling = Field("max", description="VGG19 pooling: max, or avg for softer textures")

    # The optimiser
    optimizer: Literal["lbfgs", "adam"] = Field("lbfgs", description="L-BFGS or Adam")
    steps: PositiveInt = Field(300, description="Optimisation steps at the final size")
    coarse_steps: PositiveInt | None = Field(
        None, description="Steps at each coarser scale; default: same as steps"
    )
    learning_rate: float = Field(
        1.0,
        gt=0,
        description="L-BFGS step scale (1.0 is standard), or Adam's rate (default with "
        f"optimizer = 'adam': {ADAM_LEARNING_RATE})",
    )
    lr_schedule: Literal["constant", "cosine", "exponential"] = Field(
        "constant", description="Learning-rate decay over the steps of each scale (Adam only)"
    )
    lr_final: float = Field(
        LR_FINAL, gt=0, le=1, description="Final learning rate as a fraction of the first (decays)"
    )
    lbfgs_history: PositiveInt = Field(20, description="L-BFGS memory (pairs kept)")
    plateau_patience: int = Field(
        0, ge=0, description="Stop a scale early after this many steps without improvement (0: off)"
    )
    plateau_tolerance: float = Field(
        1e-3, ge=0, description="Relative loss improvement that counts as progress"
    )
    seed: int = Field(0, description="Seed for noise init; same seed + params = same output")
    require_progress: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Fail a job of 10 or more steps whose final loss is not below this "
        "fraction of its starting loss, or whose result equals its start image, instead of "
        "calling it done (0: off)",
    )

    # The image
    init: Annotated[Init | Path, BeforeValidator(word_or_file(Init))] = Field(
        "content",
        description="Start from the content, noise, the (first) style, the content with its "
        "colours matched to the style's (region by region with masks), or an image path",
    )
    size: PositiveInt = Field(512, le=8192, description="Longest side of the result, in pixels")
    scales: list[PositiveInt] = Field(
        default_factory=list,
        description="Coarser sizes to optimise first, e.g. [256]; each result seeds the next",
    )
    color: Literal["none", "luminance", "histogram"] = Field(
        "none",
        description="Colour control: keep the photo's colours (luminance-only transfer) or "
        "match the style's colours to the photo first (histogram)",
    )

    # Running
    device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Device; default: the config's top-level device"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CUDA only)")
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="Tensor layout VGG19 runs in; auto: channels_last on CUDA, contiguous on "
        "the CPU (where channels_last measured slower per step)",
    )
    snapshot_every: int = Field(25, ge=0, description="Snapshot every N steps (0: none)")
    report_every: int = Field(
        0,
        ge=0,
        description="Read the losses back from the device every N steps, for progress and "
        "the plateau guard (0: every step on the CPU, every 10 on CUDA, where a read-back "
        "makes the GPU wait for Python)",
    )
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="Checkpoint when this many seconds have passed since the last one, so a "
        "killed job resumes and loses at most about that much work (0: not by time); a job "
        "that is stopped always checkpoints",
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Also checkpoint every N steps (0: only by time)"
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        defaults = PRESETS.get(str(data["preset"]))
        if defaults is None:
            return data  # the field's own check says which presets exist
        if data.get("color", "none") != "none" and defaults.get("init") == "matched":
            # A colour mode keeps the photo's colours: the preset then starts from the photo.
            defaults = {**defaults, "init": "content"}
        return {**defaults, **data}

    @model_validator(mode="before")
    @classmethod
    def _adam_rate(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("optimizer") == "adam":
            return {"learning_rate": ADAM_LEARNING_RATE, **data}
        return data

    @field_validator("style", "style_mask", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("mask_colors")
    @classmethod
    def _colors(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        parsed = [hex_color(parse_color(text)) for text in value]
        if not parsed or len(set(parsed)) != len(parsed) or len(parsed) > MAX_MASK_COLORS:
            raise ValueError(
                f"mask_colors needs 1 to {MAX_MASK_COLORS} different colours, got {value}"
            )
        return parsed

    _check_content = field_validator("content_layers")(_check_layers)
    _check_style = field_validator("style_layers")(_check_layers)

    @model_validator(mode="after")
    def _consistent(self) -> GatysParams:
        if self.style_blend is not None:
            if len(self.style_blend) != len(self.style):
                raise ValueError(
                    f"style_blend has {len(self.style_blend)} weights for "
                    f"{len(self.style)} style images"
                )
            if any(w < 0 for w in self.style_blend) or sum(self.style_blend) <= 0:
                raise ValueError("style_blend weights must be non-negative with a positive sum")
        if self.style_mask is not None and len(self.style_mask) != len(self.style):
            raise ValueError(
                f"style_mask has {len(self.style_mask)} mask(s) for {len(self.style)} style "
                "images; give one per style image (null for a style without one)"
            )
        if self.style_mask is None:  # else the regions would be silently left out
            for name in ("content_mask", "mask_colors"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is set but style_mask is not: regions need the style "
                        f"image's label image too (set style_mask, or drop {name})"
                    )
        # Settings that would change nothing are refused, not silently ignored.
        if self.optimizer == "lbfgs" and self.lr_schedule != "constant":
            raise ValueError(
                f"lr_schedule = '{self.lr_schedule}' decays Adam's rate; L-BFGS finds its "
                "own step length: set optimizer = 'adam', or drop lr_schedule"
            )
        # (Told by its value, not by whether it was given: dumped params come back whole.)
        if self.lr_final != LR_FINAL and self.lr_schedule == "constant":
            raise ValueError(
                "lr_final is where lr_schedule's decay ends, and lr_schedule is 'constant': "
                "set lr_schedule = 'cosine' or 'exponential' (with optimizer = 'adam'), or "
                "drop lr_final"
            )
        if self.init == "matched" and self.color != "none":
            raise ValueError(
                f"init = 'matched' gives the photo the style's colours and color = "
                f"'{self.color}' keeps the photo's own: use one of them"
            )
        if any(b <= a for a, b in zip(self.scales, self.scales[1:], strict=False)):
            raise ValueError("scales must be increasing")
        if self.scales and self.scales[-1] >= self.size:
            raise ValueError(f"scales must all be smaller than size ({self.size})")
        return self

    @property
    def blend(self) -> list[float]:
        weights = self.style_blend or [1.0] * len(self.style)
        total = sum(weights)
        return [w / total for w in weights]
