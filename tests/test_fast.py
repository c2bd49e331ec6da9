"""The fast engine end to end: train, export, run through onnxruntime and the daemon."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, pixels
from daemon_helpers import Daemon, wait_until, write_config
from PIL import Image

from stylebox.errors import ConfigError, PluginError
from stylebox.plugins.api import Runtime
from stylebox.plugins.faststyle import FastParams, FastPlugin
from stylebox.plugins.faststyle.manifest import BadModel
from stylebox.testing import RecordingContext

#: A daemon with one inbox of the fast plugin, on the CPU.
QUICK_INBOX = """
state_dir = "state"
device = "cpu"
[[inbox]]
name = "quick"
path = "inbox"
outbox = "outbox"
plugin = "fast"
settle_seconds = 0.1
params = { model = "starry_night_small" }
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", *args],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few steps by `stylebox train`, exported with its manifest."""
    root = tmp_path_factory.mktemp("fast")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        photo(48, 40, seed=i).save(photos / f"p{i}.png")
    done = cli("train", "--style", "starry_night", "--content-dir", str(photos), "--out",
               str(root / "tiny"), "--preset", "small", "--steps", "3", "--image-size", "32",
               "--batch-size", "2", "--style-size", "64", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "tiny.onnx"


def plugin(tmp_path: Path, model: Path, **params: object) -> FastPlugin:
    settings = FastParams.model_validate({"model": str(model), **params})
    return FastPlugin(settings, Runtime(device="cpu", state_dir=tmp_path / "state"))


def run(p: FastPlugin, tmp_path: Path, image: Image.Image) -> Image.Image:
    return p.process(image, RecordingContext(tmp_path / "job"))


def test_train_writes_model_manifest_samples_and_checkpoint(trained: Path) -> None:
    manifest = json.loads(trained.with_suffix(".json").read_text())
    assert manifest["layout"] == "NCHW" and manifest["value_range"] == "0-255"
    assert manifest["size"] == "dynamic" and manifest["style"] == "starry_night"
    record = manifest["training"]
    assert record["steps"] == 3 and record["onnx_max_abs_error"] < 1e-2
    assert "stylebox train" in record["command"] and record["seconds"] > 0
    assert record["machine"] != platform.machine()  # the CPU's model name, not only "x86_64"
    assert {"loss", "content", "style"} <= set(record["final_losses"])
    assert (trained.parent / "tiny.train" / "checkpoint.pt").is_file()
    assert len(list((trained.parent / "tiny.train" / "samples").glob("*.png"))) == 3


def test_onnxruntime_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    from stylebox.plugins.faststyle.export import load_checkpoint
    from stylebox.plugins.faststyle.network import stylise
    from stylebox.tensors import to_tensor

    network, _ = load_checkpoint(trained.parent / "tiny.train" / "checkpoint.pt")
    image = photo(70, 45)
    # The plugin mirrors 8 px of the photo around it (edge_margin) and crops them off after.
    margin = FastParams.model_fields["edge_margin"].default
    mirrored = np.pad(np.asarray(image), ((margin,) * 2, (margin,) * 2, (0, 0)), mode="reflect")
    with torch.no_grad():
        out = stylise(network, to_tensor(Image.fromarray(mirrored)) * 255)[0]
    expected = out.permute(1, 2, 0).numpy()[margin:-margin, margin:-margin]
    got = np.asarray(run(plugin(tmp_path, trained), tmp_path, image), dtype=np.float32)
    assert np.abs(got - np.clip(expected, 0, 255)).max() <= 1.0


def test_any_size_batching_strength_and_colour(trained: Path, tmp_path: Path) -> None:
    fast = plugin(tmp_path, trained)
    for size in [(1, 1), (17, 33), (300, 7)]:
        assert run(fast, tmp_path, photo(*size)).size == size
    images = [photo(40, 30, seed=s) for s in range(3)]
    contexts = [RecordingContext(tmp_path / f"j{i}") for i in range(3)]
    assert not fast.batchable  # on CPU batches run image by image (measured faster)
    fast.batchable = True  # the GPU path: one session.run for the three
    batched = fast.process_batch(images, contexts)
    single = [run(fast, tmp_path, image) for image in images]
    for a, b in zip(batched, single, strict=True):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1
    original = photo(40, 30)
    assert (
        run(plugin(tmp_path, trained, strength=0.0), tmp_path, original).tobytes()
        == original.tobytes()
    )
    # Colour preservation: the result's light, the photo's colours (checked on a mid-grey
    # "stylisation", where every photo colour is reachable in RGB).
    luminance = plugin(tmp_path, trained, color="luminance")
    kept = luminance._finish(original, Image.new("RGB", original.size, (128, 128, 128)))
    chroma = lambda im: np.asarray(im.convert("YCbCr"), float)[..., 1:]  # noqa: E731
    assert np.abs(chroma(kept) - chroma(original)).mean() < 3


def test_max_size_shrinks_a_photo_to_its_longest_side_first(trained: Path, tmp_path: Path) -> None:
    shrinking = plugin(tmp_path, trained, max_size=50)
    assert shrinking.output_size((200, 120)) == (50, 30)
    assert run(shrinking, tmp_path, photo(200, 120)).size == (50, 30)
    assert run(shrinking, tmp_path, photo(40, 30)).size == (40, 30)  # never enlarged


class Invert(torch.nn.Module):
    """A stand-in for a model made elsewhere: NHWC, 0..1, with an extra input."""

    def forward(self, image: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
        return image + amount * (1.0 - 2.0 * image)


def export_invert(path: Path, fixed: bool) -> Path:
    example = (torch.rand(1, 32, 32, 3), torch.tensor(1.0))
    shapes = None
    if not fixed:
        h, w = torch.export.Dim("h", min=8, max=4096), torch.export.Dim("w", min=8, max=4096)
        shapes = {"image": {1: h, 2: w}, "amount": None}
    program = torch.onnx.export(
        Invert().eval(), example, dynamo=True, input_names=["pixels", "amount"],
        output_names=["styled"], dynamic_shapes=shapes,
    )  # fmt: skip
    program.save(str(path))
    return path


def test_a_third_party_fixed_size_nhwc_model_runs_from_its_manifest(tmp_path: Path) -> None:
    model = export_invert(tmp_path / "invert.onnx", fixed=True)
    with pytest.raises(BadModel, match=r"no manifest; write invert\.json"):
        plugin(tmp_path, model)
    model.with_suffix(".json").write_text(json.dumps({
        "input": "pixels", "output": "styled", "layout": "NHWC", "value_range": "0-1",
        "size": [32, 32], "extra_inputs": {"amount": 1.0}, "style": "negative",
    }))  # fmt: skip
    image = Image.new("RGB", (60, 40), (200, 50, 10))
    result = run(plugin(tmp_path, model), tmp_path, image)
    assert result.size == (60, 40)
    assert np.abs(np.asarray(result, int) - [55, 205, 245]).max() <= 2


def test_tiles_leave_no_seams(tmp_path: Path) -> None:
    model = export_invert(tmp_path / "dyn.onnx", fixed=False)
    model.with_suffix(".json").write_text(json.dumps({
        "input": "pixels", "output": "styled", "layout": "NHWC", "value_range": "0-1",
        "extra_inputs": {"amount": 1.0}, "multiple": 1,
    }))  # fmt: skip
    image = photo(300, 200)
    whole = run(plugin(tmp_path, model, tile_size=4096), tmp_path, image)
    tiled = run(plugin(tmp_path, model, tile_size=64, tile_overlap=16), tmp_path, image)
    assert np.abs(np.asarray(whole, int) - np.asarray(tiled, int)).max() <= 1


def test_an_fp16_variant_is_exported_verified_and_chosen_by_precision(
    trained: Path, tmp_path: Path
) -> None:
    from stylebox.plugins.faststyle.manifest import ModelManifest

    checkpoint = trained.parent / "tiny.train" / "checkpoint.pt"
    out = tmp_path / "half.onnx"
    done = cli("export", str(checkpoint), "--out", str(out), "--fp16")
    assert done.returncode == 0, done.stderr
    assert "fp16 variant" in done.stdout
    # Only stylebox's own lines: not one per exporter pass, nor torchvision's absence.
    loggers = {json.loads(line)["logger"] for line in done.stderr.splitlines() if line[:1] == "{"}
    assert loggers <= {"stylebox.export"} and "torchvision" not in done.stderr, done.stderr
    manifest = ModelManifest.for_model(out)
    assert manifest.fp16_variant == "half.fp16.onnx"
    variant = ModelManifest.for_model(tmp_path / "half.fp16.onnx")
    assert variant.precision == "fp16" and variant.training["fp16_max_abs_error"] < 1.0

    image = photo(70, 45)
    full = plugin(tmp_path, out)  # auto on the CPU: fp32
    half = plugin(tmp_path, out, precision="fp16")
    assert full.model == out and half.model == tmp_path / "half.fp16.onnx"
    context = RecordingContext(tmp_path / "job")
    difference = np.abs(pixels(half.process(image, context)) - pixels(run(full, tmp_path, image)))
    assert difference.max() <= 2
    assert context.facts["precision"] == "fp16"

    with pytest.raises(BadModel, match=r"names no fp16_variant.*--fp16"):
        plugin(tmp_path, trained, precision="fp16")
    (tmp_path / "half.fp16.onnx").unlink()
    with pytest.raises(BadModel, match="does not exist"):
        plugin(tmp_path, out, precision="fp16")


def test_an_inaccurate_fp16_variant_is_dropped_and_a_stale_one_removed(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylebox.plugins.faststyle import export
    from stylebox.plugins.faststyle.manifest import ModelManifest

    checkpoint = trained.parent / "tiny.train" / "checkpoint.pt"
    out = tmp_path / "m.onnx"
    kept = export.export_with_manifest(checkpoint, out, fp16=True)
    assert kept.fp16_variant == tmp_path / "m.fp16.onnx" and kept.fp16_variant.exists()
    # How `stylebox train` made it stays with every export of its checkpoint (the README's
    # fp16 step dropped its command, time and machine: "trained 80 steps on ?").
    training = ModelManifest.for_model(out).training or {}
    assert str(training.get("command", "")).startswith("stylebox train --style starry_night")
    assert training.get("seconds") and training.get("machine")

    # No fp16 network is exact: with no tolerance the variant fails its verification.
    monkeypatch.setattr(export, "FP16_TOLERANCE", 0.0)
    dropped = export.export_with_manifest(checkpoint, out, fp16=True)
    assert dropped.fp16_variant is None
    assert dropped.fp16_rejected and "differs from PyTorch" in dropped.fp16_rejected
    assert not (tmp_path / "m.fp16.onnx").exists() and not (tmp_path / "m.fp16.json").exists()
    assert ModelManifest.for_model(out).fp16_variant is None  # the fp32 model is complete
    assert run(plugin(tmp_path, out), tmp_path, photo(40, 36)).size == (40, 36)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # An export that fails its check leaves the earlier model and its manifest as they were
    # (the model was put in place before its manifest was written).
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    monkeypatch.setattr(export, "TOLERANCE", 0.0)
    with pytest.raises(PluginError, match=r"m\.onnx: onnxruntime differs from PyTorch by"):
        export.export_with_manifest(checkpoint, out, style="another")
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    monkeypatch.undo()
    export.export_with_manifest(checkpoint, out, fp16=True)
    export.export_with_manifest(checkpoint, out)  # re-exported without: the old variant goes
    assert not (tmp_path / "m.fp16.onnx").exists() and not (tmp_path / "m.fp16.json").exists()


def test_export_names_its_model_onnx_and_refuses_a_folder(trained: Path, tmp_path: Path) -> None:
    # --out e/ wrote a file named "e" beside e.json.
    checkpoint = str(trained.parent / "tiny.train" / "checkpoint.pt")
    (tmp_path / "models").mkdir()
    refused = cli("export", checkpoint, "--out", f"{tmp_path}/models/")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("is a folder; name the model: MODEL.onnx")
    done = cli("export", checkpoint, "--out", str(tmp_path / "models" / "mine"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["mine.json", "mine.onnx"]


CPU = ("cpu", "CPUExecutionProvider")


def auto_resolves_to() -> tuple[str, str]:
    """The device and onnxruntime provider that device "auto" runs on here."""
    return ("cuda", "CUDAExecutionProvider") if torch.cuda.is_available() else CPU


def test_the_manifest_records_the_device_and_provider_used_not_the_setting(
    trained: Path, tmp_path: Path
) -> None:
    for setting, expected in [("auto", auto_resolves_to()), ("cpu", CPU)]:
        context = RecordingContext(tmp_path / setting)
        plugin(tmp_path, trained, device=setting).process(photo(20, 12), context)
        assert (context.facts["device"], context.facts["provider"]) == expected, setting
        assert "providers" not in context.facts


def test_fast_jobs_run_under_the_limit_of_the_device_kind_they_really_run_on(
    trained: Path, tmp_path: Path
) -> None:
    # "auto" is the GPU's kind only where onnxruntime really runs the model on one.
    for setting, expected in [("auto", auto_resolves_to()[0]), ("cpu", "cpu")]:
        assert plugin(tmp_path, trained, device=setting).device_kind == expected


def test_a_gpu_that_did_not_load_is_an_error_not_a_slowdown(trained: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="fell back"):
        plugin(tmp_path, trained, device="cuda")
    # config check says it too, as the config error serve refuses to start with: it said
    # OK, and serve then refused.
    config = tmp_path / "gpu.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "gpu"\npath = "in"\noutbox = "out"\n'
        f'plugin = "fast"\nparams = {{ model = "{trained}", device = "cuda" }}\n'
    )
    check = cli("config", "check", str(config))
    assert check.returncode == 2, check.stdout
    assert "[[inbox]] #1 (gpu).params: " in check.stderr and "fell back" in check.stderr


def test_auto_runs_on_the_cpu_where_onnxruntime_cannot_use_the_gpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU PyTorch sees but onnxruntime's CUDA provider cannot load on (its libraries
    missing, as on this machine): "auto" refused to start the whole daemon."""
    from stylebox.plugins.faststyle import session

    if session.cuda_loads():
        pytest.skip("onnxruntime's CUDA provider loads here")
    monkeypatch.setattr(session, "_gpu_available", lambda: True)
    with caplog.at_level("WARNING", logger="stylebox.fast"):
        assert session.resolve("auto") == "cpu"
    assert "onnxruntime's CUDA provider does not load" in caplog.text
    assert session.resolve("cuda") == "cuda"  # named, it is refused where the session is made


def test_run_and_daemon_fast_inbox(tmp_path: Path) -> None:
    # The bundled model: one trained for 3 steps paints nearly black, which the runner
    # rightly fails as a broken result.
    source = tmp_path / "photo.png"
    photo(64, 48).save(source)
    done = cli("run", str(source), "--plugin", "fast", "--set", "model=starry_night_small",
               "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "s"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert manifest["plugin"]["name"] == "fast"
    assert (manifest["device"], manifest["provider"]) == auto_resolves_to()  # the default
    # One pass of a network: the result and its manifest, no snapshots, GIF or loss plot.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.json", "photo.png"]
    assert (manifest["output"]["snapshots"], manifest["output"]["animation"]) == ([], None)

    config = write_config(tmp_path, QUICK_INBOX)
    # Waiting when the daemon starts: four of one size, which go to the plugin as one batch
    # where it batches (a GPU); on the CPU, where it runs photos one by one, one at a time.
    (tmp_path / "inbox").mkdir()
    for index in range(4):
        photo(40, 32, seed=index).save(tmp_path / "inbox" / f"same{index}.png")
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        os.rename(source, tmp_path / "inbox" / "photo.png")
        assert wait_until(lambda: (tmp_path / "inbox" / "processed" / "photo.png").exists(), 60)
        assert (tmp_path / "outbox" / "photo.png").is_file()
        processed = tmp_path / "inbox" / "processed"
        assert wait_until(lambda: len(list(processed.glob("same*.png"))) == 4, 60)
    finally:
        daemon.stop()
    batches = [
        json.loads((tmp_path / "outbox" / f"same{i}.json").read_text()).get("batch")
        for i in range(4)
    ]
    together = 4 if auto_resolves_to()[0] == "cuda" else None
    assert batches == [together] * 4, daemon.output()[-3000:]


def test_a_stop_while_an_export_puts_its_files_in_place_is_noted_not_raised() -> None:
    # A signal mask held Ctrl-C from the main thread only: the kernel gave it to one of
    # onnxruntime's or PyTorch's threads, and the main thread was interrupted between
    # renames all the same (a model beside the old manifest).
    import signal
    import threading

    from stylebox.plugins.faststyle.export import _signals_noted

    stay = threading.Event()
    other = threading.Thread(target=stay.wait)  # a thread the kernel may pick
    other.start()
    try:
        with _signals_noted() as stops:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes, where Python runs signal handlers
                pass
        assert stops == [signal.SIGINT, signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    finally:
        stay.set()
        other.join()


def _resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_a_daemon_gives_back_the_memory_a_big_photo_took(tmp_path: Path) -> None:
    # onnxruntime's CPU arena kept what a photo's runs grew it by, and glibc's heap what
    # its buffers were freed into: a fast daemon idled at 2 GB after a few camera photos.
    config = write_config(tmp_path, QUICK_INBOX)
    inbox, processed = tmp_path / "inbox", tmp_path / "inbox" / "processed"
    inbox.mkdir()
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for name, (width, height) in [("small", (96, 64)), ("big", (2000, 1500))]:
            staged = tmp_path / f".{name}.png"
            photo(width, height, seed=1).save(staged)
            os.rename(staged, inbox / f"{name}.png")
            done = processed / f"{name}.png"
            assert wait_until(done.exists, 120), daemon.output()
            if name == "small":
                time.sleep(1)  # the job loop gives back once the job has ended
                idle = _resident_mb(daemon.process.pid)  # the model loaded, a job run

        def grown() -> float:
            return _resident_mb(daemon.process.pid) - idle

        # The job loop gives back once the photo is moved: waited for, on a loaded machine.
        kept = wait_until(lambda: grown() < 300, 30, interval=0.5)
        assert kept, f"the daemon kept {grown():.0f} MB more after a 2000x1500 photo"
    finally:
        daemon.stop()
