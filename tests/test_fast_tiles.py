"""Large photos in tiles: one set of instance-norm statistics for all of them, from a
thumbnail of the photo (``faststyle/thumbnorm.py``). Real onnxruntime sessions of the
bundled model, a Kodak photo enlarged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import STYLES
from onnx import TensorProto, helper
from PIL import Image

from stylebox.errors import Cancelled
from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import plugin as fast
from stylebox.plugins.faststyle.thumbnorm import thumbnail_norm
from stylebox.testing import RecordingContext

DATA = Path(__file__).parent / "data"
MODEL = STYLES / "starry_night_small.onnx"


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_statistics_measured_on_an_image_give_back_the_models_own_result() -> None:
    model = onnx.load(str(MODEL))
    graphs = thumbnail_norm(model)
    assert graphs is not None and len(graphs.layers) == 11  # every instance norm
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 96, 128)).astype(np.float32)
    feed = {"input": image}
    (own,) = session(model).run(["output"], feed)
    statistics = session(graphs.measure).run(graphs.outputs, feed)
    (applied,) = session(graphs.apply).run(["output"], {**feed, **graphs.feeds(statistics)})
    assert np.abs(applied - own).max() < 1e-3 * np.abs(own).max()


def test_a_model_without_instance_norms_is_left_as_it_is() -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "h", "w"])],
    )
    assert thumbnail_norm(helper.make_model(graph)) is None


def enlarged() -> Image.Image:
    with Image.open(DATA / "kodim06-256.png") as opened:
        return opened.convert("RGB").resize((512, 340), Image.Resampling.LANCZOS)


def stylised(tmp_path: Path, tile_size: int, context: RecordingContext) -> np.ndarray:
    params = fast.FastParams(model=str(MODEL), tile_size=tile_size, tile_overlap=16)
    plugin = fast.FastPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))
    return np.asarray(plugin.process(enlarged(), context), dtype=np.float64)


def test_tiles_take_the_whole_photos_colours_not_each_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tile normalised by its own statistics showed the tile grid as blocks of colour
    (a 2304 x 1536 photo in 768 px tiles: 23 grey levels from the photo done whole, on
    average; with the thumbnail's, 9)."""
    whole = stylised(tmp_path, 1024, RecordingContext(tmp_path / "whole"))
    context = RecordingContext(tmp_path / "tiled")
    tiled = stylised(tmp_path, 128, context)
    assert context.facts["tile_statistics"] == "from a 157x104 thumbnail"  # a tile's pixels
    # The same tiles, each with its own statistics, as before.
    monkeypatch.setattr(fast, "thumbnorm_sessions_for", lambda *args: None)
    alone = RecordingContext(tmp_path / "own")
    own = stylised(tmp_path, 128, alone)
    assert alone.facts["tile_statistics"].startswith("each tile its own")
    ours, theirs = np.abs(tiled - whole).mean(), np.abs(own - whole).mean()
    assert ours < 0.6 * theirs, (ours, theirs)  # measured: 7.5 against 29 grey levels


def test_each_tile_is_a_step_and_a_stop_is_seen_between_tiles(tmp_path: Path) -> None:
    context = RecordingContext(tmp_path / "steps")
    stylised(tmp_path, 128, context)
    steps = [(step, total) for step, total, _ in context.progress_reports]
    assert steps == [(n, 15) for n in range(1, 16)]  # 5 x 3 tiles of 128 with 16 overlap
    stopped = RecordingContext(tmp_path / "stopped")
    stopped.cancel_at_step = 4
    with pytest.raises(Cancelled, match="stopped after 4 of 15 tiles"):
        stylised(tmp_path, 128, stopped)


def test_a_half_precision_models_statistics_are_taken_in_float32() -> None:
    # Squared in fp16, a value 256 from its mean overflows (on a GPU): an infinite variance
    # wiped its channel out (26 grey levels off on average, simulated).
    graphs = thumbnail_norm(onnx.load(str(STYLES / "starry_night_small.fp16.onnx")))
    assert graphs is not None
    typed = onnx.shape_inference.infer_shapes(graphs.measure)
    kinds = {value.name: value.type.tensor_type.elem_type for value in typed.graph.value_info}
    squares = [name for name in kinds if name.startswith("thumbnorm_squared")]
    assert len(squares) == 11 and {kinds[name] for name in squares} == {TensorProto.FLOAT}


def test_weights_listed_as_inputs_too_are_not_asked_for() -> None:
    # Exported with keep_initializers_as_inputs: every tiled photo failed, the applying
    # graph asking for the scale and bias it no longer used.
    model = onnx.load(str(MODEL))
    for tensor in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
        )
    graphs = thumbnail_norm(model)
    assert graphs is not None
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    statistics = session(graphs.measure).run(graphs.outputs, {"input": image})
    feeds = {"input": image, **graphs.feeds(statistics)}
    (applied,) = session(graphs.apply).run(["output"], feeds)
    (own,) = session(model).run(["output"], {"input": image})
    assert np.abs(applied - own).max() < 1e-3 * np.abs(own).max()


def test_a_thin_strip_is_not_cut_into_tiles_a_pixel_high(tmp_path: Path) -> None:
    # A 2000x3 strip ran in tiles (its long side over the tile size), normalised by a
    # 768x1 thumbnail: washed out to cyan and white, 95 grey levels from the strip in one
    # piece. Tiles are for photos of many pixels, and a thumbnail keeps some height.
    def run(strip: Image.Image, tile_size: int, name: str) -> tuple[np.ndarray, dict]:
        params = fast.FastParams(model=str(MODEL), tile_size=tile_size, tile_overlap=16)
        plugin = fast.FastPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))
        context = RecordingContext(tmp_path / name)
        result = np.asarray(plugin.process(strip, context), dtype=np.float64)
        return result, {**context.facts, "tiles": context.progress_reports[-1][1]}

    with Image.open(DATA / "kodim06-256.png") as opened:
        band = opened.convert("RGB").crop((0, 100, 256, 104))
    few = band.resize((2000, 3), Image.Resampling.LANCZOS)  # 6000 pixels: one piece
    _, facts = run(few, 128, "few")
    assert "tile_statistics" not in facts
    many = band.resize((2000, 10), Image.Resampling.LANCZOS)  # 20000 pixels: in tiles
    whole, _ = run(many, 8192, "whole")
    tiled, facts = run(many, 128, "tiled")
    assert facts["tile_statistics"] == "from a 1810x9 thumbnail"  # a tile's pixels at most
    assert facts["tiles"] == 2  # each the strip's height, 1636 long: not 16 of 128 x 10
    # Measured: 4.3 grey levels (in 128 x 10 tiles, 5.2; with a 128x1 thumbnail, 106).
    assert np.abs(tiled - whole).mean() < 10


def test_a_panoramas_thumbnail_is_as_large_as_a_tile_not_as_long() -> None:
    # As long as a tile, a 3000x250 panorama's thumbnail was 768x64: its tiles came out 17
    # grey levels from the panorama done whole; from a tile's pixels (2660x222), 4.
    assert fast.thumbnail_size((3000, 250), 768) == (2660, 222)
    assert fast.thumbnail_size((3072, 2048), 768) == (941, 627)
    assert fast.thumbnail_size((2000, 10), 128) == (1810, 9)
    assert fast.thumbnail_size((100, 50), 768) == (100, 50)  # never enlarged
