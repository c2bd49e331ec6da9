from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import broken_plugins_site, installed_site, make_bad_inputs, photo
from PIL import Image

QUICK = ["--set", "size=64", "--set", "steps=4", "--set", "snapshot_every=2"]


def stylebox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def run_args(image: Path, out: Path, state: Path, style: Path, *extra: str) -> list[str]:
    return ["run", str(image), "--out", str(out), "--state-dir", str(state),
            "--set", f"style={style}", *QUICK, *extra]  # fmt: skip


def test_run_writes_result_snapshots_animation_and_manifest(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    out = tmp_path / "out"
    result = stylebox(*run_args(photo_file, out, tmp_path / "state", style_file))
    assert result.returncode == 0, result.stderr
    assert (out / "photo.png").is_file()
    assert sorted(p.name for p in (out / "photo.steps").iterdir()) == [
        "0000.png", "0002.png", "0004.png",
    ]  # fmt: skip
    with Image.open(out / "photo.gif") as animation:
        # Three snapshots, then the result, which equals the last snapshot and is merged into it.
        assert animation.n_frames == 3
    manifest = json.loads((out / "photo.json").read_text())
    assert manifest["plugin"]["name"] == "gatys"
    assert manifest["params"]["steps"] == 4
    # The device auto resolved to: this machine's GPU when it has one, else the CPU.
    import torch

    assert manifest["input"]["sha256"]
    assert manifest["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert manifest["timings"]["total_seconds"] > 0
    assert [entry["step"] for entry in manifest["history"]] == [1, 2, 3, 4]
    assert {"loss", "content", "style", "tv"} <= set(manifest["history"][0])
    assert "torch" in manifest["libraries"]
    assert manifest["output"]["snapshots"][0] == "photo.steps/0000.png"
    # Nothing half-written is left behind, and the job's work folder is gone.
    assert not [p for p in out.rglob(".*")]
    assert not list((tmp_path / "state" / "jobs").glob("*"))


def test_second_run_never_overwrites(tmp_path: Path, photo_file: Path, style_file: Path) -> None:
    out = tmp_path / "out"
    for _ in range(2):
        done = stylebox(*run_args(photo_file, out, tmp_path / "state", style_file))
        assert done.returncode == 0, done.stderr
    assert (out / "photo.png").is_file() and (out / "photo-2.png").is_file()
    assert (out / "photo-2.json").is_file() and (out / "photo-2.steps").is_dir()
    # The run's journal, read where it is: status read only the config's state_dir.
    status = stylebox("status", "--state-dir", str(tmp_path / "state"))
    assert status.stdout.splitlines() == [f"run:{out}: 0 queued, 0 running, 2 done, 0 failed"]


def test_status_reads_a_journal_while_the_config_does_not_load(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    # Right after a bad edit of the config (a reload refused), `status` failed on the
    # config even with --state-dir: the queue could not be seen when it was most wanted.
    from stylebox.daemon.status import collect

    out = tmp_path / "out"
    assert stylebox(*run_args(photo_file, out, tmp_path / "state", style_file)).returncode == 0
    report = collect(None, tmp_path / "state")
    assert report["sources"][f"run:{out}"]["done"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('state_dir = "state"\n[daemon]\nrescan_seconds = -1\n')
    refused = stylebox("status", "--config", str(bad))
    assert refused.returncode == 2 and "rescan_seconds" in refused.stderr
    assert "`stylebox status --state-dir DIR` reads a journal without the config" in (
        refused.stderr
    )


def test_alpha_survives_and_jpeg_output(tmp_path: Path, style_file: Path) -> None:
    source = photo(64, 48).convert("RGBA")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (10, 10, 50, 40))
    source.putalpha(mask)
    path = tmp_path / "cutout.png"
    source.save(path)
    out = tmp_path / "out"
    assert stylebox(*run_args(path, out, tmp_path / "s", style_file)).returncode == 0
    with Image.open(out / "cutout.png") as result:
        assert result.mode == "RGBA"
        assert result.getchannel("A").getpixel((0, 0)) == 0
    done = stylebox(*run_args(path, out, tmp_path / "s", style_file, "--format", "jpeg"))
    assert done.returncode == 0 and (out / "cutout-2.jpg").is_file()


@pytest.mark.parametrize(
    "kind", ["empty", "text", "truncated-png", "truncated-jpeg", "bomb", "format", "directory"]
)
def test_bad_images_exit_2_with_one_line(tmp_path: Path, style_file: Path, kind: str) -> None:
    path, reason = make_bad_inputs(tmp_path / "bad")[kind]
    result = stylebox(*run_args(path, tmp_path / "out", tmp_path / "state", style_file))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stylebox: bad input: ") and reason in lines[0]
    assert "Traceback" not in result.stderr
    assert path.exists()  # nothing is lost


def test_a_name_with_a_line_break_or_an_escape_is_printed_as_one_line(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    # Printed raw, the break forged a second "stylebox: ..." line, and the escape sequence
    # cleared the terminal.
    folder = tmp_path / "in"
    folder.mkdir()
    bad = folder / "x\x1b[2Jy\nstylebox: all fine.png"
    bad.write_text("not a picture")
    photo = folder / "tab\there.png"
    photo.write_bytes(photo_file.read_bytes())
    state = tmp_path / "state"
    args = run_args(bad, tmp_path / "out", state, style_file)
    result = stylebox(*args[:2], str(photo), *args[2:])
    assert result.returncode == 2, result.stderr
    assert "\x1b" not in result.stderr and "\t" not in result.stderr
    said = [line for line in result.stderr.splitlines() if "bad input" in line]
    assert len(said) == 1 and "x\\x1b[2Jy\\nstylebox: all fine.png" in said[0], said
    assert "tab\\there.png" in result.stderr  # its done line and log lines
    assert (tmp_path / "out" / "tab_here.png").is_file()  # its output named as before


@pytest.mark.parametrize(
    ("fmt", "width", "limit"), [("jpeg", 65501, 65500), ("webp", 16384, 16383)]
)
def test_a_result_too_wide_for_its_format_is_refused_before_it_runs(
    tmp_path: Path, fmt: str, width: int, limit: int
) -> None:
    # Found by the encoder after the whole stylisation: "broken data stream" (a JPEG, read
    # as a disk fault and tried again) or a WebP encoding error.
    strip = tmp_path / "strip.png"
    Image.new("RGB", (width, 2), (90, 120, 200)).save(strip)
    result = stylebox(
        "run", str(strip), "--plugin", "fast", "--set", "model=starry_night_small",
        "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), "--format", fmt,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"stylebox: bad input: strip.png: its result would be {width}x2, over the {limit} "
        f'pixels a side that {fmt.upper()} can hold; set the output format to "png" for it (or '
        "a size param that shrinks it)"
    ), result.stderr
    assert "Maximum supported" not in result.stderr and strip.exists()


def test_a_plugins_refusal_of_a_photo_names_the_photo(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    # "gatys has style_mask set but this photo has no mask": in a run of many photos it
    # said nothing of which.
    mask = tmp_path / "style.mask.png"
    halves = Image.new("RGB", (64, 51), (255, 0, 0))
    halves.paste((0, 0, 255), (0, 25, 64, 51))
    halves.save(mask)
    args = run_args(photo_file, tmp_path / "out", tmp_path / "state", style_file)
    result = stylebox(*args, "--set", f"style_mask={mask}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "stylebox: bad input: photo.png: gatys has style_mask set but this photo has no mask"
    ), result.stderr


def test_a_photos_mask_named_beside_it_is_read_by_its_job_not_run(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    # `run photos/*.png` named each photo's mask too: each failed as a photo without one.
    mask = photo_file.with_name("photo.mask.png")
    Image.new("RGB", (64, 48), "red").save(mask)
    out = tmp_path / "out"
    args = run_args(photo_file, out, tmp_path / "state", style_file)
    done = stylebox(*args[:2], str(mask), *args[2:])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["photo.png"]
    manifest = json.loads((out / "photo.json").read_text())
    assert manifest["mask"] == "photo.mask.png not used: style_mask is not set"
    # A mask whose photo is not named is no photo either: said, and nothing runs for it.
    orphan = tmp_path / "other.mask.png"
    Image.new("RGB", (64, 48), "red").save(orphan)
    alone = stylebox(*run_args(orphan, out, tmp_path / "state", style_file))
    assert alone.returncode == 2
    assert alone.stderr.strip() == (
        f"stylebox: bad input: {orphan} is the mask of a photo named other, not a photo: "
        "name the photo, and its mask is read from beside it"
    )
    # A mask named that is not there is said as any missing file (it passed in silence);
    # the photo runs, as the good files of a run do, and the exit status says one was bad.
    mask.unlink()
    gone = stylebox(*args[:2], str(mask), *args[2:])
    assert gone.returncode == 2 and (out / "photo-2.png").is_file()
    assert gone.stderr.splitlines()[0] == f"stylebox: bad input: {mask} does not exist"


def test_missing_file_and_bad_params_exit_2(tmp_path: Path, style_file: Path) -> None:
    missing = stylebox(*run_args(tmp_path / "nope.jpg", tmp_path / "o", tmp_path / "s", style_file))
    assert missing.returncode == 2 and "nope.jpg" in missing.stderr
    bad = stylebox(*run_args(tmp_path / "x.png", tmp_path / "o", tmp_path / "s", style_file,
                             "--set", "steps=-1"))  # fmt: skip
    assert bad.returncode == 2
    assert "gatys param steps" in bad.stderr and "Traceback" not in bad.stderr
    typo = stylebox(*run_args(tmp_path / "x.png", tmp_path / "o", tmp_path / "s", style_file,
                              "--set", "stlye_weight=2"))  # fmt: skip
    assert typo.returncode == 2
    assert "gatys param stlye_weight: unknown param; did you mean style_weight?" in typo.stderr
    # With nothing close, the advice names where params are listed (the config schema has none).
    far = stylebox(*run_args(tmp_path / "x.png", tmp_path / "o", tmp_path / "s", style_file,
                             "--set", "zzz=2"))  # fmt: skip
    advice = "(check the spelling; see `stylebox plugins`)"
    assert f"gatys param zzz: unknown param {advice}" in far.stderr
    # `--set` values are TOML values, taken as strictly as a config's: true is no number.
    flag = stylebox(*run_args(tmp_path / "x.png", tmp_path / "o", tmp_path / "s", style_file,
                              "--set", "tv_weight=true"))  # fmt: skip
    assert flag.returncode == 2
    assert "gatys param tv_weight: Input should be a valid number (got True)" in flag.stderr


def test_params_from_a_config_inbox(tmp_path: Path, photo_file: Path, style_file: Path) -> None:
    config = tmp_path / "stylebox.toml"
    config.write_text(
        f'state_dir = "state"\n[[inbox]]\nname = "mine"\npath = "in"\noutbox = "outbox"\n'
        f'plugin = "gatys"\nparams = {{ style = "{style_file.name}", size = 48, steps = 3 }}\n'
        "[inbox.output]\nanimation = false\n"
    )
    out = tmp_path / "out"
    done = stylebox("run", str(photo_file), "--config", str(config), "--out", str(out),
                    "--set", "steps=2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "photo.json").read_text())
    assert manifest["params"]["size"] == 48 and manifest["params"]["steps"] == 2
    assert manifest["output"]["animation"] is None and not (out / "photo.gif").exists()
    assert (tmp_path / "state" / "cache").is_dir()  # the config's state_dir was used
    # --set lies on what the inbox sets, not on its defaults filled in: Adam then gets its
    # own rate (it got the inbox's default 1.0, L-BFGS's, and failed).
    adam = stylebox("run", str(photo_file), "--config", str(config), "--out", str(out),
                    "--set", "steps=2", "--set", "optimizer=adam")  # fmt: skip
    assert adam.returncode == 0, adam.stderr
    params = json.loads((out / "photo-2.json").read_text())["params"]
    assert (params["optimizer"], params["learning_rate"], params["size"]) == ("adam", 0.02, 48)


def test_animation_size_and_frame_time_come_from_the_output_table(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    config = tmp_path / "stylebox.toml"
    config.write_text(
        f'state_dir = "state"\n[[inbox]]\nname = "mine"\npath = "in"\noutbox = "outbox"\n'
        f'plugin = "gatys"\nparams = {{ style = "{style_file.name}" }}\n'
        "[inbox.output]\nanimation_max_side = 40\nframe_ms = 70\n"
    )
    out = tmp_path / "out"
    done = stylebox("run", str(photo_file), "--config", str(config), "--out", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    with Image.open(out / "photo.png") as result:
        assert max(result.size) == 64
    with Image.open(out / "photo.gif") as animation:
        assert max(animation.size) == 40
        durations = []
        for frame in range(animation.n_frames):
            animation.seek(frame)
            durations.append(animation.info["duration"])
    # Each snapshot for frame_ms, then the result held eight times as long: it equals the
    # last snapshot, and the GIF merges the two into one frame of both times.
    assert durations == [70, 70, 70 + 8 * 70]


def test_killed_run_resumes_from_its_checkpoint(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    args = [sys.executable, "-m", "stylebox.cli", "-q", "run", str(photo_file), "--out", str(out),
            "--state-dir", str(state), "--set", f"style={style_file}", "--set", "size=64",
            "--set", "steps=80", "--set", "checkpoint_every=5",
            "--set", "snapshot_every=5"]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(state.glob("jobs/*/checkpoint/gatys.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "photo.png").exists()
    checkpoint = next(state.glob("jobs/*/checkpoint/gatys.pt"))
    assert checkpoint.is_file()

    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "photo.json").read_text())
    assert manifest["resumed_from_step"] >= 5
    assert [entry["step"] for entry in manifest["history"]] == list(range(1, 81))
    assert not (out / "photo-2.png").exists()  # the same output names were kept


def test_sigterm_checkpoints_and_says_how_to_resume(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    args = [sys.executable, "-m", "stylebox.cli", "run", str(photo_file), "--out",
            str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), "--set",
            f"style={style_file}", "--set", "size=64", "--set", "steps=5000"]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "state").glob("jobs/*/history.jsonl")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "run the same command again to resume" in stderr
    assert list((tmp_path / "state").glob("jobs/*/checkpoint/gatys.pt"))


def test_plugins_lists_gatys_with_params() -> None:
    listing = stylebox("plugins")
    assert listing.returncode == 0
    assert "gatys" in listing.stdout and "style_weight" in listing.stdout
    padded = [line for line in listing.stdout.splitlines() if line != line.rstrip()]
    assert not padded, padded[:2]  # rich padded each row to the table's width
    as_json = json.loads(stylebox("plugins", "--json").stdout)
    assert "steps" in as_json["plugins"]["gatys"]["params"]["properties"]
    # Types as a config writes them: they read 'Union', 'Optional', 'Literal', and a
    # list[float] lost its '[float]' to rich's markup.
    wide = stylebox("plugins", env={**os.environ, "COLUMNS": "200"}).stdout
    cells = [re.split(r"\s{2,}", line.strip()) for line in wide.splitlines()]
    types = {row[0]: row[1] for row in cells if len(row) > 2}  # gatys is listed after fast
    assert types["style_blend"] == "list[float] | None"
    assert types["color"] == "'none' | 'luminance' | 'histogram'"
    assert types["init"] == "'content' | 'noise' | 'style' | 'matched' | Path"
    assert types["scales"] == "list[int]" and types["style"] == "list[Path]"
    assert types["steps"] == "int > 0" and types["size"] == "int > 0, <= 8192"
    assert types["affine_fit_radius"] == "int 0 to 64"  # the range a value must be in


def test_broken_plugins_are_reported_and_the_others_still_load(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(broken_plugins_site(tmp_path))}
    env.pop("COLUMNS", None)
    listing = stylebox("plugins", env=env)
    assert listing.returncode == 0
    assert "gatys" in listing.stdout
    # Into a pipe, a line stays whole for grep (it was cut at 80 columns).
    (line,) = [line for line in listing.stdout.splitlines() if "explodes failed" in line]
    assert len(line) > 80 and "no GPU driver here" in line
    assert "notmodel failed to load" in listing.stdout and "not a pydantic model" in listing.stdout
    config = tmp_path / "broken.toml"
    config.write_text('[[inbox]]\nname = "a"\npath = "in"\noutbox = "out"\nplugin = "explodes"\n')
    check = stylebox("config", "check", str(config), env=env)
    assert check.returncode == 1
    assert "[[inbox]] a is disabled: plugin 'explodes'" in check.stderr


@pytest.mark.parametrize(("fmt", "pillow_name"), [("webp", "WEBP"), ("jpeg", "JPEG")])
def test_run_writes_the_result_format_asked_for(tmp_path: Path, fmt: str, pillow_name: str):
    transparent = photo(24, 16).convert("RGBA")
    transparent.paste((0, 0, 0, 0), (0, 0, 24, 4))  # a transparent strip
    transparent.save(tmp_path / "photo.png")
    result = stylebox(
        "run", str(tmp_path / "photo.png"), "--plugin", "posterize", "--set", "bits=2",
        "--format", fmt, "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    suffix = {"webp": ".webp", "jpeg": ".jpg"}[fmt]
    with Image.open(tmp_path / "out" / f"photo{suffix}") as written:
        assert written.format == pillow_name and written.size == (24, 16)
        assert written.mode == ("RGBA" if fmt == "webp" else "RGB")
    output = json.loads((tmp_path / "out" / "photo.json").read_text())["output"]
    assert output["format"] == fmt and output["alpha"] == (fmt == "webp")
    if fmt == "jpeg":  # said, not dropped in silence
        assert output["notes"] == [
            "the photo's transparency is laid on white: JPEG has none (use png or webp to keep it)"
        ]
        assert "transparency is laid on white" in result.stderr
        # White, not the colours that lay unseen under the transparency.
        with Image.open(tmp_path / "out" / "photo.jpg") as written:
            strip = np.asarray(written.convert("RGB"))[:3]
        assert strip.mean() > 248 and strip.min() > 220, strip  # JPEG rings at the edge
    else:
        assert output["notes"] == []


def test_run_says_every_bad_file_and_still_runs_the_good_ones(
    tmp_path: Path, photo_file: Path, style_file: Path
) -> None:
    # One bad file among several stopped the whole run naming only it (`run *.jpg`).
    bad = make_bad_inputs(tmp_path / "bad")
    (empty, empty_reason), (text, text_reason) = bad["empty"], bad["text"]
    args = run_args(photo_file, tmp_path / "out", tmp_path / "state", style_file)
    result = stylebox(*args[:2], str(empty), str(text), *args[2:])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert empty_reason in lines[0] and lines[0].startswith("stylebox: bad input: ")
    assert text_reason in lines[1] and lines[1].startswith("stylebox: bad input: ")
    assert (tmp_path / "out" / "photo.png").is_file()
    assert empty.exists() and text.exists()


def test_run_with_a_plugin_that_fails_to_start_says_so_in_one_line(tmp_path: Path) -> None:
    site = installed_site(
        tmp_path,
        "startfails",
        "[stylebox.plugins]\nstartfails = startfails:StartFails\n",
        {
            "startfails.py": (
                "from stylebox.plugins.api import Plugin, PluginParams\n"
                "class StartFails(Plugin):\n"
                "    name = 'startfails'\n"
                "    Params = PluginParams\n"
                "    def __init__(self, params, runtime):\n"
                "        raise RuntimeError('no licence server')\n"
                "    def process(self, image, job):\n"
                "        return image\n"
            )
        },
    )
    image = tmp_path / "photo.png"
    photo(24, 16).save(image)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "run", str(image), "--plugin", "startfails",
         "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "stylebox: failed: plugin startfails failed to start: RuntimeError: no licence server"
    )
    assert "Traceback" not in result.stderr and image.exists()


def test_a_plugin_that_prints_as_it_is_imported_leaves_the_json_on_stdout_whole(
    tmp_path: Path,
) -> None:
    site = installed_site(
        tmp_path,
        "chatty",
        "[stylebox.plugins]\nchatty = chatty:Chatty\n",
        {
            "chatty.py": (
                "from stylebox.plugins.api import Plugin, PluginParams\n"
                "print('chatty plugin loaded')\n"
                "class Chatty(Plugin):\n"
                "    name = 'chatty'\n"
                "    Params = PluginParams\n"
                "    def process(self, image, job):\n"
                "        return image\n"
            )
        },
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "config", "schema"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "chatty" in json.dumps(json.loads(result.stdout))  # whole, and the plugin's in it
    assert "chatty plugin loaded" in result.stderr


def test_run_names_an_image_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "kodim23.png"
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "run", str(missing), "--out", str(tmp_path),
         "--set", "style=starry_night"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"stylebox: bad input: {missing} does not exist"


def test_run_refuses_an_out_or_state_dir_that_cannot_be_a_folder(
    tmp_path: Path, photo_file: Path
) -> None:
    # They ended in a FileExistsError traceback, or 'plugin fast failed to start' (exit 1).
    taken = tmp_path / "result.png"
    taken.write_bytes(b"an earlier result")
    for option, folder, said in [
        ("--out", taken, "is a file, not a folder"),
        ("--out", taken / "sub", f"cannot be a folder: {taken} is a file"),
        ("--state-dir", taken, "is a file, not a folder"),
    ]:
        out = ["--out", str(tmp_path / "out")] if option != "--out" else []
        result = stylebox(
            "run", str(photo_file), "--plugin", "posterize", *out, option, str(folder)
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"stylebox: config error: {option} {folder} {said}"
        # A refused run makes no folders (its --out was made before its --state-dir failed).
        assert not (tmp_path / "out").exists()
    # Nor does one whose plugin refuses to start (a style that is no image).
    result = stylebox("run", str(photo_file), "--set", f"style={taken}", "--out",
                      str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert result.returncode == 2 and "is not an image" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()


def test_an_empty_path_is_refused_by_name_not_taken_for_the_working_folder(
    tmp_path: Path, photo_file: Path
) -> None:
    # Path("") is ".": `--out ""` wrote into the working folder, `--style ""` and a config's
    # `path = ""` were said as ".", `--config ""` could not read the folder ".".
    for args, said in [
        (["run", str(photo_file), "--out", ""], "stylebox run: error: argument --out: empty"),
        (["serve", "--config", ""], "stylebox serve: error: argument --config: empty"),
        (["run", str(photo_file), "--out", str(tmp_path / "o"), "--set", "style=''"],
         "stylebox: config error: gatys param style[0]: empty: give an image file or a "
         "bundled style's name (got '')"),
        (["train", "--style", "starry_night", "--content-dir", str(tmp_path), "--out", ""],
         "stylebox: config error: --out is empty; name the model: MODEL.onnx"),
    ]:  # fmt: skip
        result = stylebox(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(said), result.stderr
    config = tmp_path / "c.toml"
    config.write_text('[[inbox]]\nname = "a"\npath = ""\noutbox = "o"\nplugin = "posterize"\n')
    result = stylebox("config", "check", str(config))
    assert result.returncode == 2
    assert "[[inbox]] #1 (a).path: empty: give a path (got '')" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("module", ["stylebox.entry", "stylebox.cli"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_command_loads_is_one_line_and_exit_130(
    tmp_path: Path, sig: signal.Signals, module: str
) -> None:
    # In its first second (loading pydantic and the plugins' commands) a Ctrl-C printed
    # the imports' traceback and a SIGTERM ended a batch with 143, no word said (and
    # `python -m stylebox.cli`, as the tests and scripts start it, went round the guard).
    config = tmp_path / "c.toml"
    config.write_text('[[batch]]\nname = "b"\nsource = "."\noutbox = "out"\nplugin = "posterize"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", module, "batch", "b", "--config", str(config)],
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a shell
    )  # fmt: skip
    # The entry point has begun (its SIGTERM guard is in place), and the CLI is loading. A
    # signal sent earlier lands in Python's own start (its `site` import), not stylebox's.
    _wait_until_caught(process.pid, signal.SIGTERM)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "stylebox: interrupted", stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def _wait_until_caught(pid: int, sig: signal.Signals) -> None:
    """Wait until process ``pid`` has a handler of its own for ``sig``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)[1], 16)  # type: ignore[index]
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never caught {sig.name}")


def test_a_ctrl_c_between_the_cli_loading_and_the_commands_handler_is_one_line(
    tmp_path: Path,
) -> None:
    # A Ctrl-C that landed as the loaded CLI set its own SIGTERM handler, before the
    # command's handler took over, ended a batch with a traceback and -2. The moment is
    # made certain here: that second call to signal.signal is where the Ctrl-C lands.
    config = tmp_path / "c.toml"
    config.write_text('[[batch]]\nname = "b"\nsource = "."\noutbox = "out"\nplugin = "posterize"\n')
    script = f"""
import signal, sys
from stylebox import cli, entry
calls = []
real = signal.signal
def landing(signalnum, handler):
    calls.append(signalnum)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real(signalnum, handler)
signal.signal = landing
sys.exit(entry.main(["batch", "b", "--config", {str(config)!r}]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["stylebox: interrupted"], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_second_ctrl_c_while_interrupted_is_said_is_not_said_again() -> None:
    # The command's own "interrupted" let a second Ctrl-C in; the entry point's guard then
    # said it again. Here the second lands as the first is said, unless Ctrl-C is ignored.
    script = """
import argparse, signal, sys
from stylebox import cli, entry, logs
def stopped(args):
    raise KeyboardInterrupt  # the first Ctrl-C, in the command
real_say = logs.say
def say(message, **kwargs):
    real_say(message, **kwargs)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        raise KeyboardInterrupt  # as a second Ctrl-C landing here would
logs.say = say
def parser():
    made = argparse.ArgumentParser()
    made.add_argument("command")
    made.add_argument("-q", "--quiet", action="store_true")
    made.set_defaults(handler=stopped)
    return made
cli._parser = parser
status = entry.main(["batch"])
# Still deaf on the way out: the command's own SIGTERM handler was put back over it.
print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
sys.exit(status)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["stylebox: interrupted"], result.stderr
    assert result.stdout.strip() == "True"
