"""Pixels in and out of the graph: a model wrapped to take and give uint8 NHWC images.

The manifest says how a model wants its image (NCHW or NHWC, 0..255 or 0..1, float); the
plain path converts a photo's uint8 pixels to that in numpy and back, touching every pixel
several times in float32 on the host. :func:`uint8_io` composes the same conversions onto
the model as graph nodes instead (at load time, so every existing model gets them), which
on a GPU moves them onto the device and makes the host-device copies a quarter of the size.

The conversions are the plain path's own arithmetic in its own order: uint8 to float
(exact), divided by 255 for 0..1 models; on the way out multiplied by 255 for 0..1 models,
plus 0.5, clipped to 0..255 and cast to uint8, which truncates (what numpy's ``astype``
does). Transposes run on the uint8 side, where they move a quarter of the bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stylebox.plugins.faststyle.manifest import ModelManifest

#: Clip takes its bounds as inputs from opset 11 on; older graphs keep the plain path.
MIN_OPSET = 11


class NotWrappable(ValueError):
    """The model cannot take the uint8 conversions (the plain path still runs it)."""


class Wrapped(NamedTuple):
    model: onnx.ModelProto
    #: The uint8 NHWC image input and output.
    input: str
    output: str


def uint8_io(model: onnx.ModelProto, manifest: ModelManifest) -> Wrapped:
    """A copy of ``model`` whose image input and output are uint8 NHWC tensors (named
    ``pixels`` and ``styled`` unless the graph uses those names); other inputs
    (``extra_inputs``) are left as they are."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise NotWrappable(f"opset {opset} (< {MIN_OPSET})")
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    inputs = {value.name: value for value in graph.input}
    outputs = {value.name: value for value in graph.output}
    if manifest.input not in inputs or manifest.output not in outputs:
        raise NotWrappable("the manifest's input or output is not in the graph")
    source, result = inputs[manifest.input], outputs[manifest.output]
    in_type, out_type = _elem_type(source), _elem_type(result)
    if in_type not in _FLOATS or out_type not in _FLOATS:
        raise NotWrappable("the image input or output is not a float tensor")
    nchw = manifest.layout == "NCHW"
    unit = manifest.value_range == "0-1"
    names = _Names(_all_names(graph))
    # The graph's own names stay inside, so its nodes are untouched: the new input feeds a
    # value named like the old input, and the new output reads the old output's value.
    new_in, new_out = names.fresh("pixels"), names.fresh("styled")
    constants: list[TensorProto] = []

    def constant(value: float, elem_type: int) -> str:
        name = names.fresh("stylebox_const")
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        constants.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    before: list[onnx.NodeProto] = []
    value = new_in
    if nchw:
        value = _node(before, names, "Transpose", [value], perm=[0, 3, 1, 2])
    target = manifest.input if not unit else names.fresh("stylebox_float")
    before.append(helper.make_node("Cast", [value], [target], to=in_type))
    if unit:
        before.append(helper.make_node("Div", [target, constant(255.0, in_type)], [manifest.input]))

    after: list[onnx.NodeProto] = []
    value = manifest.output
    if out_type != TensorProto.FLOAT:
        value = _node(after, names, "Cast", [value], to=TensorProto.FLOAT)
    if unit:
        value = _node(after, names, "Mul", [value, constant(255.0, TensorProto.FLOAT)])
    value = _node(after, names, "Add", [value, constant(0.5, TensorProto.FLOAT)])
    low, high = constant(0.0, TensorProto.FLOAT), constant(255.0, TensorProto.FLOAT)
    value = _node(after, names, "Clip", [value, low, high])
    if nchw:
        value = _node(after, names, "Cast", [value], to=TensorProto.UINT8)
        after.append(helper.make_node("Transpose", [value], [new_out], perm=[0, 2, 3, 1]))
    else:
        after.append(helper.make_node("Cast", [value], [new_out], to=TensorProto.UINT8))

    nodes = [*before, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    index = list(inputs).index(manifest.input)
    del graph.input[index]
    graph.input.insert(index, _image_info(new_in, source, nchw))
    del graph.output[:]
    graph.output.append(_image_info(new_out, result, nchw))
    try:
        onnx.checker.check_model(wrapped)
    except onnx.checker.ValidationError as exc:  # a graph onnxruntime takes may fail here
        raise NotWrappable(f"the wrapped graph does not check: {exc}") from exc
    return Wrapped(wrapped, new_in, new_out)


_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _elem_type(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def _image_info(name: str, like: onnx.ValueInfoProto, nchw: bool) -> onnx.ValueInfoProto:
    """A uint8 NHWC value with the dimensions of ``like`` (fixed sizes stay fixed)."""
    dims: list[int | str | None] = []
    for dim in like.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None)
    if len(dims) != 4:
        raise NotWrappable(f"{like.name} has {len(dims)} dimensions, not 4")
    if nchw:
        dims = [dims[0], dims[2], dims[3], dims[1]]
    return helper.make_tensor_value_info(name, TensorProto.UINT8, dims)


def _node(
    nodes: list[onnx.NodeProto], names: _Names, op: str, inputs: list[str], **attrs: object
) -> str:
    out = names.fresh(f"stylebox_{op.lower()}")
    nodes.append(helper.make_node(op, inputs, [out], **attrs))
    return out


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    names |= {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names |= {*node.input, *node.output, node.name}
    return names


class _Names:
    """Value names not yet used in the graph."""

    def __init__(self, taken: Iterable[str]) -> None:
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name
