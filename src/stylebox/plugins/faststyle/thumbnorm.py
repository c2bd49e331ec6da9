"""One set of instance-norm statistics for every tile of a large photo.

Instance normalisation (the feed-forward networks' ``InstanceNormalization`` layers)
rescales each channel by its own mean and spread over the image it sees. A photo cut
into tiles gives every tile statistics of its own: a tile of flat skin has its little
texture blown up, a tile of sky is shifted to another colour than its neighbour, and the
result shows the tile grid as blocks of colour (a 7680 x 5120 photo in 768 px tiles) that
no feathering of the seams can hide.

Chen et al.'s thumbnail instance normalisation ("Towards Ultra-Resolution Neural Style
Transfer via Thumbnail Instance Normalization", AAAI 2022) takes the statistics from a
thumbnail of the whole photo instead, once, and normalises every tile with them. Two graphs
are made from the model here:

* ``measure``: the model with each normalisation's input mean and variance over the image
  (``N, C, 1, 1``, float32) as extra outputs; run on the thumbnail.
* ``apply``: each ``InstanceNormalization(x, scale, bias)`` replaced by ``x * a + b``,
  with ``a = scale / sqrt(var + eps)`` and ``b = bias - mean * a`` given as inputs
  (:meth:`ThumbNorm.feeds` computes them): run on each tile.

Fed the statistics ``measure`` found on the same image, ``apply`` computes what the model
does (``tests/test_fast_tiles.py``). A model without such layers, or whose scale and bias
are not constants (a style-conditioned network), is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stylebox.plugins.faststyle.iograph import _all_names, _Names


@dataclass(frozen=True)
class _Layer:
    mean: str
    """The measure graph's output: the layer input's mean, (N, C, 1, 1) float32."""
    var: str
    """The measure graph's output: its (biased) variance, as the layer computes it."""
    a: str
    """The apply graph's input: what the layer multiplies by."""
    b: str
    """The apply graph's input: what it adds."""
    scale: np.ndarray
    bias: np.ndarray
    epsilon: float
    dtype: np.dtype


@dataclass(frozen=True)
class ThumbNorm:
    measure: onnx.ModelProto
    apply: onnx.ModelProto
    layers: tuple[_Layer, ...]

    @property
    def outputs(self) -> list[str]:
        """The measure graph's statistics, in the order :meth:`feeds` takes them."""
        return [name for layer in self.layers for name in (layer.mean, layer.var)]

    def feeds(self, statistics: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The apply graph's inputs for the statistics the measure graph gave."""
        feeds: dict[str, np.ndarray] = {}
        for index, layer in enumerate(self.layers):
            mean, var = statistics[2 * index], statistics[2 * index + 1]
            shape = (1, -1, 1, 1)
            a = layer.scale.astype(np.float32).reshape(shape) / np.sqrt(var + layer.epsilon)
            b = layer.bias.astype(np.float32).reshape(shape) - mean * a
            feeds[layer.a] = a.astype(layer.dtype)
            feeds[layer.b] = b.astype(layer.dtype)
        return feeds


def thumbnail_norm(model: onnx.ModelProto) -> ThumbNorm | None:
    """The measure and apply graphs of ``model`` (see the module), or ``None`` when it has
    no instance normalisation with constant scale and bias."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    norms = [i for i, n in enumerate(model.graph.node) if n.op_type == "InstanceNormalization"]
    if not norms or opset < 11:
        return None
    if any({model.graph.node[i].input[1], model.graph.node[i].input[2]} - set(constants)
           for i in norms):  # fmt: skip
        return None  # all or none: one layer left per tile would bring the blocks back
    names = _Names(_all_names(model.graph))
    layers: list[_Layer] = []
    measure_nodes: list[onnx.NodeProto] = []
    measure_outputs: list[onnx.ValueInfoProto] = []
    apply_nodes: dict[int, list[onnx.NodeProto]] = {}
    """The nodes that stand for the instance norm at each index of the graph."""
    apply_inputs: list[onnx.ValueInfoProto] = []
    extra_constants: list[TensorProto] = []
    axes = names.fresh("thumbnorm_axes")
    if opset >= 18:  # axes became an input
        extra_constants.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), axes))

    def mean_over_image(value: str, out: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [value, axes], [out], keepdims=1)
        return helper.make_node("ReduceMean", [value], [out], axes=[2, 3], keepdims=1)

    for index in norms:
        node = model.graph.node[index]
        x = node.input[0]
        scale = numpy_helper.to_array(constants[node.input[1]])
        bias = numpy_helper.to_array(constants[node.input[2]])
        epsilon = next((attr.f for attr in node.attribute if attr.name == "epsilon"), 1e-5)
        elem_type = constants[node.input[1]].data_type
        mean, var = names.fresh("thumbnorm_mean"), names.fresh("thumbnorm_var")
        wide, centred = names.fresh("thumbnorm_float"), names.fresh("thumbnorm_centred")
        squared = names.fresh("thumbnorm_squared")
        # In float32 whatever the model's type: in fp16 a value 256 from its mean squares
        # past 65504, and the variance, infinite, would wipe its channel out.
        measure_nodes += [
            helper.make_node("Cast", [x], [wide], to=TensorProto.FLOAT),
            mean_over_image(wide, mean),
            helper.make_node("Sub", [wide, mean], [centred]),
            helper.make_node("Mul", [centred, centred], [squared]),
            mean_over_image(squared, var),
        ]
        channels = ["N", int(scale.shape[0]), 1, 1]
        for name in (mean, var):
            measure_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, channels))
        a, b = names.fresh("thumbnorm_a"), names.fresh("thumbnorm_b")
        for name in (a, b):
            apply_inputs.append(helper.make_tensor_value_info(name, elem_type, [1, *channels[1:]]))
        scaled = names.fresh("thumbnorm_scaled")
        apply_nodes[index] = [
            helper.make_node("Mul", [x, a], [scaled]),
            helper.make_node("Add", [scaled, b], [node.output[0]]),
        ]
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        layers.append(_Layer(mean, var, a, b, scale, bias, float(epsilon), dtype))

    measure = onnx.ModelProto()
    measure.CopyFrom(model)
    measure.graph.node.extend(measure_nodes)
    measure.graph.output.extend(measure_outputs)
    measure.graph.initializer.extend(extra_constants)

    apply = onnx.ModelProto()
    apply.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(apply_nodes.get(index, [node]))
    del apply.graph.node[:]
    apply.graph.node.extend(nodes)
    apply.graph.input.extend(apply_inputs)
    # The layers' scale and bias are in a and b now; left, onnxruntime warns of each (and a
    # graph that lists its weights as inputs too would ask for them). Not where subgraphs
    # (If, Loop) might use a weight: those are not looked into.
    if not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in nodes for attr in node.attribute):  # fmt: skip
        used = {name for node in nodes for name in node.input}
        kept = [tensor for tensor in apply.graph.initializer if tensor.name in used]
        dropped = {tensor.name for tensor in apply.graph.initializer} - used
        inputs = [value for value in apply.graph.input if value.name not in dropped]
        del apply.graph.initializer[:], apply.graph.input[:]
        apply.graph.initializer.extend(kept)
        apply.graph.input.extend(inputs)
    try:
        onnx.checker.check_model(measure)
        onnx.checker.check_model(apply)
    except onnx.checker.ValidationError:  # a graph onnxruntime runs may not check: as it is
        return None
    return ThumbNorm(measure, apply, tuple(layers))
