"""The manifest beside every fast-style ONNX model: how to feed it and what it is.

With a manifest, models made elsewhere run too (a fixed 224x224 NHWC 0..1 input, say).
A model without one is refused with a message saying what to write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from stylebox.errors import PermanentFailure, PluginError
from stylebox.images import atomic_write_bytes


class BadModel(PermanentFailure):
    """A model and its manifest do not fit together (or the manifest is missing). Not a
    :class:`ConfigError`: it disables the inbox that uses the model, not the whole config,
    and ``stylebox run`` ends with it at once (status 1)."""


#: An extra input's value: a number, or (nested) lists of numbers in the input's shape; a
#: flat list fills a fixed shape of as many elements (``[1, 1, 1, 100]`` from 100 values).
ExtraValue = float | int | list[Any]


class StylePredictor(BaseModel):
    """The style network of a two-model arbitrary-style pair (Ghiasi et al.): a style image
    in, the vector the transformer takes as its ``style_input`` out."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="ONNX file, relative to the manifest's folder")
    input: str = Field("style_image", description="Name of its image input")
    output: str | None = Field(None, description="Its vector output (default: its only one)")
    layout: Literal["NCHW", "NHWC"] = "NHWC"
    value_range: Literal["0-1", "0-255"] = "0-1"
    size: tuple[PositiveInt, PositiveInt] = Field(
        (256, 256), description="[width, height] the style image is cropped and resized to"
    )


class ModelManifest(BaseModel):
    """``MODEL.json`` beside ``MODEL.onnx``."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field("input", description="Name of the image input")
    output: str = Field("output", description="Name of the image output")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout of both")
    value_range: Literal["0-1", "0-255"] = Field("0-255", description="Pixel value range")
    size: Literal["dynamic"] | tuple[PositiveInt, PositiveInt] = Field(
        "dynamic", description="'dynamic', or the fixed [width, height] to resize to"
    )
    multiple: PositiveInt = Field(4, description="Dynamic sides must be multiples of this")
    resize: Literal["stretch", "pad"] = Field(
        "stretch",
        description="Fixed-size models: 'stretch' the photo to the size, or 'pad': scale it "
        "to fit, reflect-pad the rest and crop the result back (keeps the aspect ratio)",
    )
    extra_inputs: dict[str, ExtraValue] = Field(
        default_factory=dict, description="Other inputs and the values to feed them"
    )
    style_predictor: StylePredictor | None = Field(
        None,
        description="Arbitrary-style models: the network turning a style image into "
        "the vector fed to style_input",
    )
    style_input: str | None = Field(
        None, description="Arbitrary-style models: the input taking the style vector"
    )
    precision: Literal["fp32", "fp16"] = Field(
        "fp32", description="What the graph computes in (its input and output are float32)"
    )
    fp16_variant: str | None = Field(
        None,
        description="A verified half-precision variant beside this model, used on GPUs",
    )
    style: str = Field("", description="The style's name, for people")
    thumbnail: str | None = Field(None, description="Image file beside the model showing it")
    training: dict[str, Any] = Field(
        default_factory=dict, description="How it was trained: command, steps, losses, time"
    )

    @model_validator(mode="after")
    def _style_pair(self) -> ModelManifest:
        if (self.style_predictor is None) != (self.style_input is None):
            raise ValueError("style_predictor and style_input go together: set both or neither")
        return self

    @classmethod
    def for_model(cls, model: Path) -> ModelManifest:
        """The manifest beside ``model`` as it is named (a symbolic link's own manifest,
        not its target's)."""
        path = manifest_path(model)
        if not path.is_file():
            raise BadModel(
                f"{model} has no manifest; write {path.name} beside it, for example "
                '{"input": "input", "output": "output", "layout": "NCHW", '
                '"value_range": "0-255", "size": "dynamic"} '
                '(or "size": [224, 224] for a fixed-size model)'
            )
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            detail = (
                "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(manifest)'}: {e['msg']}"
                    for e in exc.errors()
                )
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            raise BadModel(f"{path}: invalid model manifest: {detail}") from None

    def encoded(self) -> bytes:
        """The manifest file's bytes."""
        return (self.model_dump_json(indent=2) + "\n").encode()

    def write(self, model: Path) -> Path:
        path = manifest_path(model)
        try:  # whole or not at all: a model's manifest half written disables its inboxes
            atomic_write_bytes(path, self.encoded())
        except OSError as exc:
            raise PluginError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path


def manifest_path(model: Path) -> Path:
    return model.with_suffix(".json")


def predictor_path(model: Path, manifest: ModelManifest) -> Path | None:
    """The style predictor's file, beside the manifest (of a link: beside the link)."""
    if manifest.style_predictor is None:
        return None
    return (model.parent / manifest.style_predictor.model).absolute()
