from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import photo
from pydantic import ValidationError

from stylebox.errors import ConfigError
from stylebox.plugins.faststyle.network import (
    ConvLayer,
    Preset,
    TransformerNet,
    load_state,
    stylise,
)
from stylebox.plugins.faststyle.rewrite import PhaseConv, for_export
from stylebox.plugins.faststyle.train import CHECKPOINT, TrainingStopped, TrainParams, train


def train_refusal(*args: str) -> subprocess.CompletedProcess[str]:
    """``stylebox train ARGS`` run as a user would, expected to refuse (exit status 2)."""
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "train", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    return result


def test_full_preset_has_the_papers_size() -> None:
    count = sum(p.numel() for p in TransformerNet("full").parameters())
    assert 1.6e6 < count < 1.7e6
    assert sum(p.numel() for p in TransformerNet("small").parameters()) < count / 3


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (17, 33), (64, 48), (7, 101)])
def test_any_size_in_same_size_out(size: tuple[int, int]) -> None:
    network = TransformerNet("small").eval()
    width, height = size
    with torch.no_grad():
        out = stylise(network, torch.rand(1, 3, height, width) * 255)
    assert out.shape == (1, 3, height, width)


@pytest.mark.parametrize("preset", ["full", "small"])
def test_the_export_form_computes_the_same_function(preset: Preset) -> None:
    torch.manual_seed(0)
    network = TransformerNet(preset).eval()
    for layer in network.modules():  # trained-looking norms, not the identity they start as
        if isinstance(layer, torch.nn.InstanceNorm2d):
            torch.nn.init.normal_(layer.weight, 1.0, 0.3)
            torch.nn.init.normal_(layer.bias, 0.0, 0.3)
    rewritten = for_export(network)
    assert isinstance(rewritten.deconv3, PhaseConv)
    assert rewritten.deconv3.weight.shape[0] == 12  # the four phases of 3 channels
    for height, width in [(8, 8), (36, 20), (64, 96)]:
        image = torch.rand(1, 3, height, width) * 255
        with torch.no_grad():
            expected, got = network(image), rewritten(image)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
    assert isinstance(network.deconv3, ConvLayer)  # the trained network is left alone


def test_legacy_checkpoints_with_running_stats_load() -> None:
    state = TransformerNet("small").state_dict()
    legacy = dict(state)
    legacy["in1.running_mean"] = torch.zeros(16)
    legacy["in1.running_var"] = torch.ones(16)
    network = TransformerNet("small")
    load_state(network, legacy)
    assert torch.equal(network.conv1.conv.weight, state["conv1.conv.weight"])


def test_checkpoints_load_with_the_block_count_they_were_made_with(tmp_path: Path) -> None:
    from stylebox.plugins.faststyle.export import load_checkpoint

    assert TransformerNet("small").residual_blocks == 3
    assert TransformerNet("full").residual_blocks == 5
    five = TransformerNet("small", residual_blocks=5)  # the small preset until it had three
    torch.save({"model": five.state_dict(), "preset": "small"}, tmp_path / "ours.pt")
    torch.save(TransformerNet("full").state_dict(), tmp_path / "example.pth")  # bare state
    for name, blocks in [("ours.pt", 5), ("example.pth", 5)]:
        network, _ = load_checkpoint(tmp_path / name)
        assert network.residual_blocks == blocks and hasattr(network, "res5")
    image = torch.rand(1, 3, 32, 32) * 255
    loaded, _ = load_checkpoint(tmp_path / "ours.pt")
    with torch.no_grad():
        assert torch.equal(loaded(image), five.eval()(image))


def test_a_file_that_is_no_checkpoint_is_refused_with_the_reason(tmp_path: Path) -> None:
    from stylebox.errors import ConfigError
    from stylebox.plugins.faststyle.export import load_checkpoint

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    small = TransformerNet("small").state_dict()
    small["conv1.conv.weight"] = torch.zeros(1)
    torch.save({"model": small, "preset": "small"}, tmp_path / "shape.pt")
    torch.save({"model": small, "preset": "huge"}, tmp_path / "preset.pt")
    for name, reason in [
        ("missing.pt", "cannot read it .No such file"),
        ("garbage.pt", "not a PyTorch file of weights only"),
        ("other.pt", "not a fast-style network checkpoint: its keys are neither.*it holds a;"),
        ("shape.pt", r"do not fit a small TransformerNet .wrong: conv1.conv.weight \[1\] where"),
        ("preset.pt", "not a fast-style network checkpoint"),
    ]:
        with pytest.raises(ConfigError, match=reason) as refused:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(refused.value) and "stylebox train" in str(refused.value)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo(48, 40, seed=i).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("not a photo")  # skipped with a warning
    return folder


def params(photos: Path, style_file: Path, steps: int) -> TrainParams:
    return TrainParams(
        style=style_file, content_dir=photos, preset="small", image_size=32, batch_size=2,
        steps=steps, device="cpu", checkpoint_every=2, sample_every=100, log_every=100,
    )  # fmt: skip


def test_training_lowers_the_loss_and_writes_samples(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    losses: list[float] = []
    train(params(photos, style_file, 12), tmp_path / "run",
          on_step=lambda step, m: losses.append(m["loss"]))  # fmt: skip
    assert len(losses) == 12
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert len(list((tmp_path / "run" / "samples").glob("*-00012.png"))) == 3


def assert_same_weights(whole: TransformerNet, resumed: TransformerNet) -> None:
    for name, tensor in whole.state_dict().items():
        assert torch.allclose(tensor, resumed.state_dict()[name], atol=1e-6), name


def test_resume_continues_exactly(tmp_path: Path, photos: Path, style_file: Path) -> None:
    whole = train(params(photos, style_file, 4), tmp_path / "whole")
    train(params(photos, style_file, 2), tmp_path / "split")
    resumed = train(params(photos, style_file, 4), tmp_path / "split", resume=True)
    assert_same_weights(whole, resumed)


def test_resume_keeps_the_shape_the_run_started_with(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    """A run begun when the small preset had five residual blocks resumes with five."""
    train(params(photos, style_file, 2), tmp_path / "run")
    checkpoint = tmp_path / "run" / CHECKPOINT
    state = torch.load(checkpoint, weights_only=True)
    five = TransformerNet("small", residual_blocks=5)
    state["model"] = five.state_dict()
    state["optimizer"] = torch.optim.Adam(five.parameters()).state_dict()
    torch.save(state, checkpoint)
    resumed = train(params(photos, style_file, 3), tmp_path / "run", resume=True)
    assert resumed.residual_blocks == 5


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_content_dir_without_photos_is_a_one_line_config_error(tmp_path: Path, kind: str) -> None:

    folder = tmp_path / "photos"
    if kind == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "model.onnx"
    result = train_refusal(
        "--style", "starry_night", "--content-dir", str(folder), "--out", str(out),
        "--device", "cpu",
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    line = result.stderr.splitlines()[-1]  # after the warning that notes.txt is skipped
    reason = "does not exist" if kind == "missing" else "no photo stylebox can read"
    assert line.startswith("stylebox: config error: ") and str(folder) in line and reason in line
    assert not out.with_suffix(".train").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_checkpoints_train_and_exits_130(
    tmp_path: Path, photos: Path, sig: str
) -> None:
    # It stopped with no word of where (SIGTERM: 143, no message), keeping only the last
    # periodic checkpoint.
    import signal

    from daemon_helpers import wait_until

    out = tmp_path / "model.onnx"
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "train", "--style", "starry_night",
         "--content-dir", str(photos), "--out", str(out), "--device", "cpu",
         "--preset", "small", "--image-size", "32", "--steps", "100000", "--tv-weight", "0.5"],
        stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test run started in the background (`nohup ... &`) hands
        # its children SIGINT ignored, and Python then never turns it into Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert wait_until(out.with_suffix(".train").exists, 60)
    process.send_signal(getattr(signal, sig))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    last = stderr.splitlines()[-1]
    assert re.fullmatch(
        r"stylebox: stopped at step \d+, checkpointed in .*model\.train; the same command "
        r"with --resume continues",
        last,
    ), last
    assert "Traceback" not in stderr
    step = int(last.split()[4].rstrip(","))
    checkpoint = torch.load(out.with_suffix(".train") / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == step and checkpoint["params"]["tv_weight"] == 0.5
    # Its time so far is kept for the record a resume completes (which counted only the
    # last session's).
    record = json.loads((out.with_suffix(".train") / "training.json").read_text())
    assert record["command"].startswith("stylebox train --style starry_night")
    assert record["seconds"] > 0


def test_a_stopped_run_resumes_exactly_from_where_it_stopped(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    whole = train(params(photos, style_file, 5), tmp_path / "whole")
    stop = threading.Event()

    def stop_after_3(step: int, _: object) -> None:
        if step == 3:
            stop.set()  # between two periodic checkpoints (every 2)

    with pytest.raises(TrainingStopped, match="stopped at step 3"):
        train(params(photos, style_file, 5), tmp_path / "split", on_step=stop_after_3, stop=stop)
    resumed = train(params(photos, style_file, 5), tmp_path / "split", resume=True)
    assert_same_weights(whole, resumed)


def test_a_run_is_not_lost_nor_resumed_with_other_settings(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    # Run again without --resume, a 40-minute training was replaced without a word; resumed
    # on another style, two styles' steps were one model recorded as the second's.
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"holds no checkpoint to continue"):
        train(params(photos, style_file, 2), run, resume=True)
    train(params(photos, style_file, 2), run)
    with pytest.raises(ConfigError, match=r"holds a training run: add --resume to continue it"):
        train(params(photos, style_file, 4), run)
    changed = params(photos, style_file, 4).model_copy(update={"style_weight": 5.0})
    with pytest.raises(ConfigError, match=r"--style-weight 5.0 \(it began with 1.0\)"):
        train(changed, run, resume=True)
    longer = params(photos, style_file, 4).model_copy(update={"log_every": 1})
    train(longer, run, resume=True)  # more steps, other reporting: the same run
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 4


@pytest.mark.parametrize(("option", "value"), [("image_size", 34), ("style_size", 8)])
def test_sizes_the_network_cannot_take_are_refused(
    photos: Path, style_file: Path, option: str, value: int
) -> None:
    # 34: the network gave back 36 px and a shape error; 8: VGG's pooling failed.
    with pytest.raises(ValidationError, match=option):
        TrainParams(style=style_file, content_dir=photos, **{option: value})


def test_a_style_that_is_no_image_names_the_option_and_writes_nothing(
    tmp_path: Path, photos: Path
) -> None:

    notes = tmp_path / "notes.jpg"
    notes.write_text("not a painting")
    out = tmp_path / "model.onnx"
    result = train_refusal(
        "--style", str(notes), "--content-dir", str(photos), "--out", str(out), "--device", "cpu"
    )
    assert result.stderr.strip().startswith(f"stylebox: config error: --style {notes}: notes.jpg")
    assert not out.with_suffix(".train").exists()


def test_a_crop_too_small_to_learn_from_is_refused_naming_the_option(
    tmp_path: Path, photos: Path
) -> None:

    out = tmp_path / "model.onnx"
    result = train_refusal(
        "--style", "starry_night", "--content-dir", str(photos), "--out", str(out),
        "--image-size", "8",
    )  # fmt: skip
    assert result.stderr.strip() == (
        "stylebox: config error: --image-size: Input should be greater than or equal to 32"
    )
    assert not out.with_suffix(".train").exists()


def test_train_help_gives_the_defaults() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "train", "--help"],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    tv = TrainParams.model_fields["tv_weight"].default
    for default in ("(default: full)", "(default: 2000)", "(default: 256)", "(default: 0)"):
        assert default in shown, default
    assert f"(default: {tv:g}," in " ".join(shown.split()), shown
    assert "(default: None)" not in shown and "(default: False)" not in shown


def test_a_diverged_run_stops_and_its_weights_are_never_exported(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    # A loss gone to NaN trained on without a word; the NaN network was exported, "verified
    # within 0" (max(0.0, nan) is 0.0), exit 0; an inbox found it out at load.
    from stylebox.errors import PluginError
    from stylebox.plugins.faststyle.export import export_onnx, export_with_manifest, verify
    from stylebox.plugins.faststyle.train import TrainingDiverged

    huge = params(photos, style_file, 3).model_copy(update={"style_weight": 1e38})
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 1: the loss is inf"):
        train(huge, tmp_path / "huge")
    assert not (tmp_path / "huge" / CHECKPOINT).exists()
    # A step that turns the weights to infinity with its loss still finite: never
    # checkpointed (the next step found it, after the checkpoint held them).
    wild = params(photos, style_file, 3).model_copy(
        update={"learning_rate": 3e37, "checkpoint_every": 1}
    )
    with pytest.raises(
        TrainingDiverged, match=r"at step 1: its weights hold NaN or infinity; no checkpoint"
    ):
        train(wild, tmp_path / "wild")
    assert not (tmp_path / "wild" / CHECKPOINT).exists()

    run = tmp_path / "run"
    network = train(params(photos, style_file, 2), run)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    state = torch.load(run / CHECKPOINT, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first][0] = float("nan")
    torch.save(state, run / "nan.pt")
    with pytest.raises(PluginError, match=r"nan\.pt: its weights hold NaN or infinity"):
        export_with_manifest(run / "nan.pt", out)
    assert out.read_bytes() == b"an earlier export" and not out.with_suffix(".json").exists()
    # And the check against PyTorch takes a NaN for what it is.
    model = export_onnx(network, tmp_path / "good.onnx")
    with torch.no_grad():
        next(iter(network.parameters())).fill_(float("nan"))
    with pytest.raises(PluginError, match=r"good\.onnx: the network gives NaN or infinity"):
        verify(network, model)


def test_an_export_that_cannot_be_written_says_so_in_one_line(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    train(params(photos, style_file, 2), tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "export", str(tmp_path / "run" / CHECKPOINT),
         "--out", "/proc/model.onnx"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("stylebox: failed: cannot write /proc/model.onnx: ")
    assert "Traceback" not in result.stderr
    # The manifest names the painting it was trained on, without --style.
    subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "export", str(tmp_path / "run" / CHECKPOINT),
         "--out", str(tmp_path / "m.onnx")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text())["style"] == "style"  # style.png


def test_a_run_resumes_only_on_its_own_painting_and_photos_in_one_process(
    tmp_path: Path, photos: Path, style_file: Path
) -> None:
    # Another picture copied over the style's path, photos added: --resume trained on, one
    # network learning two styles; two runs in one folder wrote each other's checkpoints.
    import fcntl

    run = tmp_path / "run"
    train(params(photos, style_file, 2), run)
    original = style_file.read_bytes()
    photo(64, 51, seed=99).save(style_file)
    with pytest.raises(ConfigError, match=r"holds another picture than it began with"):
        train(params(photos, style_file, 4), run, resume=True)
    style_file.write_bytes(original)
    photo(48, 40, seed=42).save(photos / "added.png")
    with pytest.raises(ConfigError, match=r"holds other photos than it began with"):
        train(params(photos, style_file, 4), run, resume=True)
    (photos / "added.png").unlink()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"is in use by another `stylebox train`"):
            train(params(photos, style_file, 4), run, resume=True)
    train(params(photos, style_file, 4), run, resume=True)
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 4


def test_a_killed_run_keeps_its_story_to_its_last_checkpoint(tmp_path: Path, photos: Path) -> None:
    # training.json was written only at a stop or the end: after kill -9 and --resume, the
    # run's first command and its time were lost.
    import os
    import signal

    from daemon_helpers import wait_until

    out = tmp_path / "model.onnx"
    record = out.with_suffix(".train") / "training.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "stylebox.cli", "train", "--style", "starry_night",
         "--content-dir", str(photos), "--out", str(out), "--device", "cpu",
         "--preset", "small", "--image-size", "32", "--steps", "100000",
         "--checkpoint-every", "1"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(record.exists, 90)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    made = json.loads(record.read_text())
    assert made["command"].startswith("stylebox train --style starry_night")
    assert "resumed_by" not in made


def test_an_existing_folder_is_no_model_name(tmp_path: Path, photos: Path) -> None:
    result = train_refusal(
        "--style", "starry_night", "--content-dir", str(photos), "--out", str(tmp_path)
    )
    assert result.stderr.strip() == (
        f"stylebox: config error: --out {tmp_path} is a folder; name the model: MODEL.onnx"
    )
    # One that does not exist yet, named as a folder, is one too (not models/.onnx).
    new = f"{tmp_path}/models/"
    result = train_refusal("--style", "starry_night", "--content-dir", str(photos), "--out", new)
    assert result.stderr.strip() == (
        f"stylebox: config error: --out {new} is a folder; name the model: MODEL.onnx"
    )
    assert not (tmp_path / "models").exists()
