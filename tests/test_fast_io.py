"""The fast plugin's pixel path: uint8 NHWC in and out of the graph, and I/O binding.

Every comparison runs real onnxruntime sessions, on models these tests export themselves
and on the bundled model, against the numpy float32 path the plugin used before
(:class:`PlainEngine`, kept as the fallback): the pixels must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import STYLES, photo, pixels
from onnx import TensorProto, helper
from PIL import Image
from test_fast import export_invert

from stylebox.errors import ConfigError
from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.plugins.faststyle.engine import GraphEngine, PlainEngine, engine_for
from stylebox.plugins.faststyle.export import export_onnx, fp16_path
from stylebox.plugins.faststyle.iograph import NotWrappable, uint8_io
from stylebox.plugins.faststyle.manifest import BadModel, ModelManifest
from stylebox.plugins.faststyle.network import TransformerNet
from stylebox.plugins.faststyle.plugin import TILE_CPU, chosen_model
from stylebox.testing import RecordingContext

BUNDLED = STYLES / "starry_night_small.onnx"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small-preset network with an fp16 variant, its last layer scaled so that outputs
    span well past 0..255: rounding and clipping are both exercised."""
    folder = tmp_path_factory.mktemp("fastio")
    torch.manual_seed(0)
    network = TransformerNet("small").eval()
    with torch.no_grad():
        network.deconv3.conv.weight.mul_(400.0)
        network.deconv3.conv.bias.add_(128.0)
    out = export_onnx(network, folder / "net.onnx")
    export_onnx(network, fp16_path(out), fp16=True)
    ModelManifest(precision="fp16").write(fp16_path(out))
    ModelManifest(fp16_variant=fp16_path(out).name).write(out)
    return out


def fast(tmp_path: Path, model: Path, **params: object) -> FastPlugin:
    settings = FastParams.model_validate({"model": str(model), **params})
    return FastPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))


def plain(plugin: FastPlugin, tmp_path: Path) -> FastPlugin:
    """The same plugin on the numpy float32 path (what it ran before the graph did)."""
    plugin.engine = engine_for(plugin.model, plugin.manifest, "cpu", tmp_path, io="plain")
    return plugin


def run(plugin: FastPlugin, image: Image.Image, tmp_path: Path) -> Image.Image:
    return plugin.process(image, RecordingContext(tmp_path / "job"))


def test_the_wrapped_graph_takes_and_gives_uint8_nhwc(model: Path) -> None:
    wrapped = uint8_io(onnx.load(model), ModelManifest.for_model(model))
    (image,) = wrapped.model.graph.input
    (styled,) = wrapped.model.graph.output
    for value in (image, styled):
        tensor = value.type.tensor_type
        assert tensor.elem_type == TensorProto.UINT8
        assert [d.dim_value or d.dim_param for d in tensor.shape.dim][3] == 3
    assert (wrapped.input, wrapped.output) == (image.name, styled.name) == ("pixels", "styled")
    # The model's own nodes are untouched; the conversions sit around them.
    ops = [node.op_type for node in wrapped.model.graph.node]
    assert ops[:2] == ["Transpose", "Cast"] and ops[-3:] == ["Clip", "Cast", "Transpose"]


@pytest.mark.parametrize("name", ["net", "net.fp16", "bundled", "bundled.fp16"])
def test_graph_and_numpy_paths_give_the_same_pixels(model: Path, tmp_path: Path, name: str) -> None:
    path = {
        "net": model,
        "net.fp16": fp16_path(model),
        "bundled": BUNDLED,
        "bundled.fp16": fp16_path(BUNDLED),
    }[name]
    new = fast(tmp_path, path)
    old = plain(fast(tmp_path, path), tmp_path)
    assert isinstance(new.engine, GraphEngine) and not new.engine.binding
    assert isinstance(old.engine, PlainEngine)
    # Odd sizes (padded to multiples of 4, then cropped), tiny ones (edge padding), an
    # alpha channel and a palette image: all become the same RGB pixels.
    rgba = photo(45, 31, seed=2).convert("RGBA")
    rgba.putalpha(90)
    images = [photo(70, 45), photo(1, 1), photo(17, 33), photo(300, 7), rgba]
    images.append(photo(40, 40, seed=3).convert("P"))
    for image in images:
        got, expected = run(new, image, tmp_path), run(old, image, tmp_path)
        assert got.size == image.size and got.mode == "RGB"
        assert got.tobytes() == expected.tobytes(), (name, image.size, image.mode)
    if name == "net":  # the scaled network really leaves 0..255 and lands between levels
        raw = old.engine.run(np.asarray(photo(64, 48))[None])
        assert raw.min() < 0 and raw.max() > 255 and (raw % 1).std() > 0.1


def test_a_batch_goes_through_the_graph_as_one_run_with_the_same_pixels(
    model: Path, tmp_path: Path
) -> None:
    new = fast(tmp_path, model)
    old = plain(fast(tmp_path, model), tmp_path)
    assert not new.batchable  # on the CPU images run one by one (measured faster)
    new.batchable = old.batchable = True  # the GPU's path: one run for the three
    images = [photo(41, 30, seed=s) for s in range(3)]
    contexts = [RecordingContext(tmp_path / f"j{i}") for i in range(3)]
    batched = new.process_batch(images, contexts)
    single = [run(new, image, tmp_path) for image in images]
    before = old.process_batch(images, contexts)
    for a, b, c in zip(batched, single, before, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_io_binding_gives_the_same_pixels_as_session_run(model: Path, tmp_path: Path) -> None:
    """The CUDA path's binding code, run for real on the CPU device."""
    manifest = ModelManifest.for_model(model)
    unbound = engine_for(model, manifest, "cpu", tmp_path)
    bound = engine_for(model, manifest, "cpu", tmp_path, binding=True)
    assert isinstance(bound, GraphEngine) and bound.binding
    assert (bound.device, bound.device_id) == ("cpu", 0)  # where the session runs
    assert bound.session is unbound.session  # one shared session, bound or not
    batch = np.stack([np.asarray(photo(36, 28, seed=s)) for s in range(2)])
    got, expected = bound.run(batch), unbound.run(batch)
    assert got.dtype == np.uint8 and got.shape == (2, 28, 36, 3)
    assert np.array_equal(got, expected)
    # Through the plugin too: a non-contiguous tile-like view, and a second, differently
    # sized photo on the same engine.
    plugin = fast(tmp_path, model)
    plugin.engine = bound
    reference = plain(fast(tmp_path, model), tmp_path)
    for image in (photo(70, 45), photo(33, 90, seed=4)):
        assert run(plugin, image, tmp_path).tobytes() == run(reference, image, tmp_path).tobytes()


def test_a_third_party_nhwc_unit_range_model_with_extra_inputs(tmp_path: Path) -> None:
    """NHWC, 0..1, an extra input, dynamic and fixed size: the wrapped graph needs no
    transposes but divides and multiplies by 255; binding feeds the extra input too."""
    for fixed in (False, True):
        path = export_invert(tmp_path / f"invert{fixed}.onnx", fixed=fixed)
        manifest: dict[str, object] = {
            "input": "pixels", "output": "styled", "layout": "NHWC", "value_range": "0-1",
            "extra_inputs": {"amount": 0.75}, "multiple": 1,
        }  # fmt: skip
        if fixed:
            manifest["size"] = [32, 32]
        path.with_suffix(".json").write_text(json.dumps(manifest))
        new = fast(tmp_path, path)
        assert isinstance(new.engine, GraphEngine)
        # The graph already uses "pixels" and "styled": the wrapper picks other names.
        assert new.engine.input != "pixels" and new.engine.output != "styled"
        old = plain(fast(tmp_path, path), tmp_path)
        image = photo(60, 40)
        assert run(new, image, tmp_path).tobytes() == run(old, image, tmp_path).tobytes()
        new.engine.binding = True
        assert run(new, image, tmp_path).tobytes() == run(old, image, tmp_path).tobytes()


def test_a_graph_that_cannot_take_the_conversions_runs_the_numpy_path(tmp_path: Path) -> None:
    """An opset-10 graph (Clip takes no bound inputs there): 255 - x, NCHW."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])
    full = helper.make_tensor("full", TensorProto.FLOAT, [], [255.0])
    node = helper.make_node("Sub", ["full", "input"], ["output"])
    graph = helper.make_graph([node], "negative", [x], [y], initializer=[full])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    proto.ir_version = 5
    path = tmp_path / "old.onnx"
    onnx.save(proto, path)
    ModelManifest(multiple=1).write(path)
    with pytest.raises(NotWrappable, match="opset 10"):
        uint8_io(proto, ModelManifest.for_model(path))
    plugin = fast(tmp_path, path)
    assert isinstance(plugin.engine, PlainEngine)
    image = photo(30, 20)
    assert np.array_equal(pixels(run(plugin, image, tmp_path)), 255 - pixels(image))
    with pytest.raises(ConfigError, match=r"cannot take uint8 pixels.*opset 10"):
        engine_for(path, ModelManifest.for_model(path), "cpu", tmp_path, io="uint8")


def test_tiles_blend_the_raw_values_as_before(model: Path, tmp_path: Path) -> None:
    """Tiles go through the model as exported (float out): the graph's clipped uint8
    would change the overlaps where a tile's value lies outside 0..255."""
    new = fast(tmp_path, model, tile_size=64, tile_overlap=16)
    old = plain(fast(tmp_path, model, tile_size=64, tile_overlap=16), tmp_path)
    image = photo(150, 100)
    assert run(new, image, tmp_path).tobytes() == run(old, image, tmp_path).tobytes()
    assert isinstance(new._tile_engine, PlainEngine)
    assert new._tile_engine.session is old.engine.session  # the shared session


def test_the_default_tile_size_follows_the_device(model: Path, tmp_path: Path) -> None:
    assert fast(tmp_path, model).tile_size == TILE_CPU == 768
    assert fast(tmp_path, model, tile_size=300).tile_size == 300
    with pytest.raises(ValueError, match="greater than or equal to 64"):
        FastParams.model_validate({"model": str(model), "tile_size": 8})


def test_auto_precision_picks_the_fp16_variant_on_gpus_only(model: Path, tmp_path: Path) -> None:
    manifest = ModelManifest.for_model(model)
    variant = fp16_path(model)
    assert chosen_model(model, manifest, "auto", "cuda") == variant
    assert chosen_model(model, manifest, "auto", "tensorrt") == variant
    assert chosen_model(model, manifest, "auto", "cpu") == model
    assert chosen_model(model, manifest, "fp32", "cuda") == model
    assert chosen_model(model, manifest, "fp16", "cpu") == variant
    # A model without a variant stays fp32 on a GPU; asking for fp16 says how to make one.
    bare = ModelManifest()
    assert chosen_model(model, bare, "auto", "cuda") == model
    with pytest.raises(BadModel, match="names no fp16_variant"):
        chosen_model(model, bare, "fp16", "cuda")
    # The variant itself is what it is.
    half = ModelManifest.for_model(variant)
    assert chosen_model(variant, half, "auto", "cpu") == variant
    # The bundled model names its variant, so a CUDA inbox on "auto" runs fp16.
    bundled = ModelManifest.for_model(BUNDLED)
    assert chosen_model(BUNDLED, bundled, "auto", "cuda") == fp16_path(BUNDLED)
    context = RecordingContext(tmp_path / "job")
    fast(tmp_path, model, precision="fp16").process(photo(20, 12), context)
    assert context.facts["precision"] == "fp16"


def test_cuda_n_runs_on_gpu_n(tmp_path: Path) -> None:
    """``device = "cuda:1"`` asks onnxruntime for GPU 1 (it ran on GPU 0 before), for CUDA
    and TensorRT alike; what the I/O binding then reads back from the session."""
    from stylebox.plugins.faststyle.session import providers

    def options(device: str) -> dict[str, dict[str, object]]:
        return {p[0]: p[1] for p in providers(device, tmp_path) if isinstance(p, tuple)}

    for device, index in (("cuda", 0), ("cuda:1", 1), ("cuda:3", 3)):
        assert options(device)["CUDAExecutionProvider"]["device_id"] == index
    assert options("tensorrt")["TensorrtExecutionProvider"]["device_id"] == 0
    assert providers("cpu", tmp_path) == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="unknown device 'cuda:x'"):
        providers("cuda:x", tmp_path)
