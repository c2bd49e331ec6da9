"""The manifest beside every fast-style ONNX model: how to feed it and what it is.

With a manifest, models made elsewhere run too (a fixed 224x224 NHWC 0..1 input, say).
A model without one is refused with a message saying what to write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from stylebox.errors import ConfigError


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
    extra_inputs: dict[str, float | int | list[float]] = Field(
        default_factory=dict, description="Other inputs and the values to feed them"
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

    @classmethod
    def for_model(cls, model: Path) -> ModelManifest:
        path = manifest_path(model)
        if not path.is_file():
            raise ConfigError(
                f"{model} has no manifest; write {path.name} beside it, for example "
                '{"input": "input", "output": "output", "layout": "NCHW", '
                '"value_range": "0-255", "size": "dynamic"} '
                '(or "size": [224, 224] for a fixed-size model)'
            )
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{path}: invalid model manifest: {exc}") from exc

    def write(self, model: Path) -> Path:
        path = manifest_path(model)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def manifest_path(model: Path) -> Path:
    return model.with_suffix(".json")
