"""What a model and its manifest must agree on, checked when the model is loaded.

Everything here reads the graph with ``onnx`` alone (no onnxruntime, no PyTorch), so
``stylebox config check`` runs it too. A mismatch is one :class:`.manifest.BadModel` line
naming the model, the manifest field, and what the model really has; without these checks
it would fail every job with onnxruntime's text, or write a wrong image.

The numeric probe (:func:`probe_problem`) needs the model run and lives beside them: the
plugin calls it when it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylebox.plugins.faststyle.manifest import BadModel, ExtraValue, ModelManifest

Dim = int | str | None

#: The element types an input may take, as onnx numbers them, with numpy's types.
NUMPY_TYPES: dict[int, type] = {
    1: np.float32,
    10: np.float16,
    11: np.float64,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
}
_FLOATS = (1, 10, 11, 16)
_TYPE_NAMES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32",
               7: "int64", 9: "bool", 2: "uint8", 3: "int8", 8: "string"}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    name: str
    elem_type: int
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{_TYPE_NAMES.get(self.elem_type, self.elem_type)} [{dims}]"

    @property
    def fixed(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class Signature:
    """A graph's real inputs (initializers left out) and outputs."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]


def signature(model: Path) -> Signature:
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise BadModel(f"{model}: not an ONNX model onnx can read ({exc})") from None
    graph = proto.graph
    constants = {tensor.name for tensor in graph.initializer}

    def tensor(value: Any) -> Tensor:
        kind = value.type.tensor_type
        dims: list[Dim] = []
        for dim in kind.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None)
        return Tensor(value.name, kind.elem_type, tuple(dims))

    inputs = {v.name: tensor(v) for v in graph.input if v.name not in constants}
    return Signature(inputs, {v.name: tensor(v) for v in graph.output})


@dataclass
class Checked:
    """What the checks found: the arrays for every input besides the image (the style
    vector's aside), typed and shaped as the model declares them."""

    model: Signature
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    predictor: Signature | None = None
    predictor_output: str | None = None
    #: The transformer's style input, and the shape it takes the vector in.
    style_shape: tuple[int, ...] | None = None


def check_model(
    model: Path, manifest: ModelManifest, inputs: dict[str, ExtraValue] | None = None
) -> Checked:
    """Check ``manifest`` (and a job's ``inputs``, which override its ``extra_inputs``)
    against the graph of ``model``; :class:`BadModel` on the first mismatch."""
    sig = signature(model)
    where = f"{model}: manifest"
    _named(where, "input", manifest.input, sig.inputs, "inputs")
    _named(where, "output", manifest.output, sig.outputs, "outputs")
    _image(where, manifest.input, sig.inputs[manifest.input], manifest.layout, manifest.size)
    out = sig.outputs[manifest.output]
    if out.elem_type not in _FLOATS:
        raise BadModel(f"{where} output {manifest.output!r} is {out.describe()}, not a float image")
    if len(out.shape) != 4:
        raise BadModel(
            f"{where} output {manifest.output!r}: the model gives {out.describe()}, not a 4-d image"
        )
    checked = Checked(sig)
    values = {**manifest.extra_inputs, **(inputs or {})}
    wanted = set(sig.inputs) - {manifest.input, manifest.style_input}
    unknown = sorted(set(values) - wanted)
    if unknown:
        field = "inputs" if set(unknown) & set(inputs or {}) else "extra_inputs"
        what = "the image input" if unknown[0] == manifest.input else "not an input"
        if unknown[0] == manifest.style_input:
            what = "the style vector's input (computed from the style)"
        raise BadModel(
            f"{where} {field} {unknown[0]!r} is {what}; the model's other inputs are "
            f"{_listing(sig.inputs, wanted)}"
        )
    missing = sorted(wanted - set(values))
    if missing:
        raise BadModel(
            f"{where} extra_inputs: the model's input {missing[0]!r} "
            f"({sig.inputs[missing[0]].describe()}) is fed by nothing; give it a value in "
            "extra_inputs, or in the inbox's params inputs"
        )
    for name, value in values.items():
        checked.feeds[name] = _shaped(where, name, value, sig.inputs[name])
    if manifest.style_predictor is not None and manifest.style_input is not None:
        _style_pair(model, manifest, sig, checked)
    return checked


def _style_pair(model: Path, manifest: ModelManifest, sig: Signature, checked: Checked) -> None:
    from stylebox.plugins.faststyle.manifest import predictor_path

    assert manifest.style_predictor is not None and manifest.style_input is not None
    where = f"{model}: manifest"
    _named(where, "style_input", manifest.style_input, sig.inputs, "inputs")
    target = sig.inputs[manifest.style_input]
    if target.elem_type not in _FLOATS:
        raise BadModel(f"{where} style_input {manifest.style_input!r} is {target.describe()}")
    spec = manifest.style_predictor
    path = predictor_path(model, manifest)
    assert path is not None
    if not path.is_file():
        raise BadModel(f"{where} style_predictor.model: {path} does not exist")
    predictor = signature(path)
    pwhere = f"{model}: manifest style_predictor ({path.name})"
    _named(pwhere, "input", spec.input, predictor.inputs, "inputs")
    others = sorted(set(predictor.inputs) - {spec.input})
    if others:
        raise BadModel(f"{pwhere} has inputs besides {spec.input!r}: {others}; it cannot be fed")
    _image(pwhere, spec.input, predictor.inputs[spec.input], spec.layout, spec.size)
    output = spec.output
    if output is None:
        if len(predictor.outputs) != 1:
            raise BadModel(f"{pwhere} output: name one of {sorted(predictor.outputs)}")
        output = next(iter(predictor.outputs))
    _named(pwhere, "output", output, predictor.outputs, "outputs")
    vector = predictor.outputs[output]
    size = _elements(vector.shape[1:]) if vector.shape else None
    want = _elements(target.shape[1:]) if target.shape else None
    if size is not None and want is not None and size != want:
        raise BadModel(
            f"{where} style_input {manifest.style_input!r} takes {target.describe()} but the "
            f"style predictor gives {output!r} {vector.describe()}: not the same pair"
        )
    checked.predictor, checked.predictor_output = predictor, output
    shape = tuple(d if isinstance(d, int) else 1 for d in target.shape)
    checked.style_shape = shape if target.shape else None


def _elements(dims: tuple[Dim, ...]) -> int | None:
    if not all(isinstance(d, int) for d in dims):
        return None
    return int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))


def _named(where: str, field: str, name: str, present: dict[str, Tensor], kind: str) -> None:
    if name not in present:
        raise BadModel(
            f"{where} {field} {name!r} is not among the model's {kind}: {_listing(present)}"
        )


def _listing(present: dict[str, Tensor], names: set[str] | None = None) -> str:
    chosen = sorted(present if names is None else names)
    return ", ".join(f"{n!r} ({present[n].describe()})" for n in chosen) or "none"


def _image(where: str, name: str, tensor: Tensor, layout: str, size: Any) -> None:
    """The image input: a float 4-d tensor with 3 channels where ``layout`` puts them, and
    a fixed size where the model has one."""
    if tensor.elem_type not in _FLOATS:
        raise BadModel(f"{where} input {name!r} is {tensor.describe()}, not a float image")
    if len(tensor.shape) != 4:
        raise BadModel(f"{where} input {name!r} is {tensor.describe()}, not a 4-d image")
    channel, other = (1, 3) if layout == "NCHW" else (3, 1)
    found = tensor.shape[channel]
    # A named (dynamic) dimension where the channels should be, with a 3 where the other
    # layout has them, is the other layout: fixed sides are never named.
    if found != 3 and (isinstance(found, int) or tensor.shape[other] == 3):
        better = "NHWC" if layout == "NCHW" else "NCHW"
        hint = (
            f'; its channels come where {better} has them: "layout": "{better}"'
            if (tensor.shape[other] == 3)
            else ""
        )
        raise BadModel(
            f"{where} layout {layout!r}: input {name!r} is {tensor.describe()}, with "
            f"{found} where {layout} has the 3 colour channels{hint}"
        )
    rows, columns = (2, 3) if layout == "NCHW" else (1, 2)
    height, width = tensor.shape[rows], tensor.shape[columns]
    if isinstance(height, int) and isinstance(width, int):
        if size == "dynamic":
            raise BadModel(
                f'{where} size "dynamic": input {name!r} is fixed at {width}x{height} '
                f'({tensor.describe()}); write "size": [{width}, {height}] ([width, height])'
            )
        if tuple(size) != (width, height):
            raise BadModel(
                f"{where} size {list(size)} ([width, height]): input {name!r} is fixed at "
                f"{width}x{height} ({tensor.describe()}); write [{width}, {height}]"
            )


def _shaped(where: str, name: str, value: ExtraValue, tensor: Tensor) -> np.ndarray:
    dtype = NUMPY_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise BadModel(f"{where} extra_inputs {name!r}: the model takes {tensor.describe()}, "
                       "a type stylebox cannot feed")  # fmt: skip
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError):
        raise BadModel(f"{where} extra_inputs {name!r}: not a number or a rectangular list "
                       "of numbers") from None  # fmt: skip
    if _fits(array.shape, tensor.shape):
        return array
    if tensor.fixed and array.ndim == 1:
        declared = tuple(int(d) for d in tensor.shape if isinstance(d, int))
        if array.size == int(np.prod(declared, dtype=np.int64)):
            return array.reshape(declared)
    raise BadModel(
        f"{where} extra_inputs {name!r}: a value of shape {list(array.shape)} for the "
        f"model's {tensor.describe()}; give {_elements(tensor.shape) or 'matching'} values"
    )


def _fits(shape: tuple[int, ...], declared: tuple[Dim, ...]) -> bool:
    if len(shape) != len(declared):
        return False
    return all(not isinstance(d, int) or d == s for s, d in zip(shape, declared, strict=True))


# -- the probe ------------------------------------------------------------------------------


def probe_image(width: int, height: int) -> np.ndarray:
    """Mid-grey with a gentle ramp across (96..160): uniform grey would give a uniform
    result from any sound network, so "constant" could not tell a wrong model."""
    ramp = np.linspace(96, 160, width, dtype=np.float32)
    return np.repeat(np.repeat(ramp[None, :, None], height, 0), 3, 2).round().astype(np.uint8)


def probe_problem(output: np.ndarray, manifest: ModelManifest) -> str | None:
    """What is wrong with the model's raw result (0..255 scale, unclipped) on the probe, if
    anything: mostly far out of 0..255, or the same everywhere."""
    values = np.asarray(output, dtype=np.float64)
    if not np.isfinite(values).all():
        return "gives NaN or infinity"
    outside = np.mean((values < -255) | (values > 510))
    if outside > 0.5:
        low, high = float(values.min()), float(values.max())
        return (
            f"gives {low:.4g}..{high:.4g} where 0..255 was expected "
            f"(value_range {manifest.value_range!r} is probably wrong)"
        )
    if float(values.max() - values.min()) < 0.5:
        level = float(values.mean())
        return (
            f"gives {level:.4g} everywhere, whatever the pixels (value_range "
            f"{manifest.value_range!r} is probably wrong, or the output is not the image)"
        )
    return None
