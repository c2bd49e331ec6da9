from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stylebox.config import json_schema, load_config
from stylebox.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

GOOD = """
state_dir = "state"

[[inbox]]
name = "starry"
path = "in/starry"
outbox = "out/starry"
plugin = "gatys"
params = { style = "starry_night", size = 128, steps = 10 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stylebox.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text))
    return str(refused.value)


def test_good_config_resolves_paths_from_its_folder(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, GOOD))
    inbox = loaded.config.inbox[0]
    assert inbox.path == tmp_path / "in" / "starry"
    assert loaded.config.state_dir == tmp_path / "state"
    params = loaded.params[("inbox", "starry")]
    assert params.steps == 10 and params.style[0].name == "starry_night.jpg"


def test_root_moves_the_base_of_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "s.toml"
    path.write_text('root = ".."\n' + GOOD)
    assert load_config(path).config.state_dir == tmp_path / "state"


def test_bad_plugin_param_names_file_table_and_field(tmp_path: Path) -> None:
    message = refusal(tmp_path, GOOD.replace("steps = 10", "steps = -5"))
    assert str(tmp_path / "stylebox.toml") in message
    assert "[[inbox]] #1 (starry).params.steps" in message
    assert "greater than 0" in message and "-5" in message


def test_unknown_keys_are_refused_everywhere(tmp_path: Path) -> None:
    # Each names the key it is closest to, as `--set` does.
    assert "stat_dir: unknown key; did you mean state_dir?" in refusal(tmp_path, "stat_dir = 'x'\n")
    message = refusal(tmp_path, GOOD.replace('plugin = "gatys"', 'plugin = "gatys"\nwatchh = 1'))
    assert "[[inbox]] #1 (starry).watchh: unknown key; did you mean watch?" in message
    message = refusal(tmp_path, GOOD.replace("steps = 10", "stepz = 10"))
    assert "params.stepz: unknown key; did you mean steps?" in message
    message = refusal(tmp_path, GOOD + "[daemon]\nbatch_sise = 2\n[http]\nqwerty = 1\n")
    assert "daemon.batch_sise: unknown key; did you mean batch_size?" in message
    assert "http.qwerty: unknown key (check the spelling; see `stylebox config schema`)" in message


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    assert "device" in refusal(tmp_path, 'device = "gpu"\n')
    assert "images.max_pixels" in refusal(tmp_path, "[images]\nmax_pixels = 0\n")
    assert "images.formats" in refusal(tmp_path, '[images]\nformats = ["JPEG", "NOPE"]\n')
    assert "[[inbox]] #1 (starry).path: Field required" in refusal(
        tmp_path, GOOD.replace('path = "in/starry"\n', "")
    )


def test_unknown_plugin_and_missing_style_are_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, GOOD.replace('plugin = "gatys"', 'plugin = "nope"'))
    assert "[[inbox]] #1 (starry).plugin" in message and "no plugin named 'nope'" in message
    message = refusal(tmp_path, GOOD.replace('"starry_night"', '"missing.jpg"'))
    assert "params.style[0]" in message and "missing.jpg" in message
    # A required field left out says what to give it (its description), not only that.
    message = refusal(tmp_path, GOOD.replace('style = "starry_night", ', ""))
    assert (
        "[[inbox]] #1 (starry).params.style: Field required: style image(s): paths or "
        "bundled names such as 'starry_night'"
    ) in message
    message = refusal(tmp_path, GOOD.replace('path = "in/starry"\n', ""))
    assert "[[inbox]] #1 (starry).path: Field required: the folder people drop photos into" in (
        message
    )
    message = refusal(tmp_path, GOOD.replace('"gatys"', '"fast"').replace(
        'style = "starry_night", size = 128, steps = 10', ""))  # fmt: skip
    assert "params.model: Field required: ONNX model path, or a bundled model name" in message


def test_duplicate_inbox_names_are_refused(tmp_path: Path) -> None:
    twice = GOOD + GOOD.split("\n", 2)[2]
    assert "two [[inbox]] tables are named 'starry'" in refusal(tmp_path, twice)


def test_a_refused_secret_is_named_but_never_repeated(tmp_path: Path) -> None:
    # A refused reload shows its reason on the status page, which anyone who can reach it
    # reads: "(got 'MyNewSecret99')" gave the new token away.
    message = refusal(tmp_path, GOOD + '[http]\nlisten = "8765"\ntoken = "MyNewSecret99"\n')
    assert "MyNewSecret99" not in message
    assert (
        "http.token: String should have at least 16 characters (its value not shown: a secret)"
        in message
    )


def test_invalid_toml_says_where(tmp_path: Path) -> None:
    message = refusal(tmp_path, "state_dir = \n")
    assert "not valid TOML" in message and "line 1" in message


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "stylebox.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(path).config.inbox[0].name == "starry"


def test_a_value_the_error_names_already_is_not_repeated(tmp_path: Path) -> None:
    # "... /srv/nope.png is neither an image file ... (got '/srv/nope.png')": said twice.
    message = refusal(tmp_path, GOOD.replace('style = "starry_night"', 'style = "nope.png"'))
    assert message.endswith(
        f"[[inbox]] #1 (starry).params.style[0]: file not found: {tmp_path / 'nope.png'} (nor "
        "is it a bundled style: starry_night, the_scream)"
    ), message
    assert "(got" not in message
    # A value that only happens to appear in the words is still given.
    message = refusal(tmp_path, GOOD.replace("steps = 10", 'steps = "valid"'))
    assert "steps: Input should be a valid integer (got 'valid')" in message


def test_values_of_another_type_are_refused_not_converted(tmp_path: Path) -> None:
    # Lax validation took "8" as a batch size, "yes" as true and true as an edge margin
    # of 1: a config that says something else than it does.
    text = GOOD.replace("steps = 10", 'steps = "10", style_weight = true') + (
        'dedupe = "yes"\n[daemon]\nbatch_size = "8"\ndrain_seconds = "30"\n'
    )
    message = refusal(tmp_path, text)
    for line in (
        "daemon.batch_size: Input should be a valid integer (got '8')",
        "daemon.drain_seconds: Input should be a valid number (got '30')",
        "[[inbox]] #1 (starry).dedupe: Input should be a valid boolean (got 'yes')",
        "[[inbox]] #1 (starry).params.steps: Input should be a valid integer (got '10')",
        "[[inbox]] #1 (starry).params.style_weight: Input should be a valid number (got True)",
    ):
        assert line in message
    # What TOML writes as it is still reads: paths as strings, whole numbers as floats.
    good = GOOD.replace("steps = 10", "steps = 10, style_weight = 20") + (
        "[daemon]\ndrain_seconds = 30\n"
    )
    loaded = load_config(write(tmp_path, good))
    assert loaded.params[("inbox", "starry")].style_weight == 20.0
    assert loaded.config.daemon.drain_seconds == 30.0


def test_a_third_party_params_model_may_be_as_strict_with_pathvalue_for_its_paths() -> None:
    from pydantic import ConfigDict, ValidationError

    from stylebox.plugins.api import PathValue, PluginParams

    class StrictParams(PluginParams):
        model_config = ConfigDict(strict=True)
        folder: PathValue
        level: int = 1

    assert StrictParams.model_validate({"folder": "somewhere"}).folder == Path("somewhere")
    with pytest.raises(ValidationError, match="valid integer"):
        StrictParams.model_validate({"folder": "somewhere", "level": "2"})


def test_a_word_or_file_param_says_both_in_one_line(tmp_path: Path) -> None:
    message = refusal(tmp_path, GOOD.replace("steps = 10", 'init = "nois"'))
    [line] = [line for line in message.splitlines() if "params.init" in line]
    assert "one of content, noise, style, matched or an existing file" in line
    assert str(tmp_path / "nois") in line and "literal" not in message
    (tmp_path / "start.png").write_bytes(b"")  # any existing file: read when the job runs
    loaded = load_config(write(tmp_path, GOOD.replace("steps = 10", 'init = "start.png"')))
    assert loaded.params[("inbox", "starry")].init == tmp_path / "start.png"
    loaded = load_config(write(tmp_path, GOOD.replace("steps = 10", 'init = "noise"')))
    assert loaded.params[("inbox", "starry")].init == "noise"


def test_schema_includes_each_plugins_params() -> None:
    schema = json_schema()
    assert "gatys_params" in schema["$defs"]
    assert "steps" in schema["$defs"]["gatys_params"]["properties"]
    conditions = schema["$defs"]["InboxConfig"]["allOf"]
    plugins = {c["if"]["properties"]["plugin"]["const"] for c in conditions}
    assert {"gatys", "fast", "posterize"} <= plugins


def test_embedded_default_config_is_valid() -> None:
    loaded = load_config(REPO / "config" / "stylebox.toml")
    assert loaded.config.state_dir == REPO / "var" / "state"
    assert [inbox.plugin for inbox in loaded.config.inbox] == ["gatys", "fast"]
    assert loaded.config.http is not None and loaded.config.http.listen == "127.0.0.1:8765"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_config_check_command(tmp_path: Path) -> None:
    ok = cli("config", "check", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = cli("config", "check", str(write(tmp_path, GOOD.replace("steps = 10", "steps = 0"))))
    assert bad.returncode == 2
    assert bad.stderr == (  # one problem, one line
        f"stylebox: config error: {tmp_path / 'stylebox.toml'}: [[inbox]] #1 (starry).params."
        "steps: Input should be greater than 0 (got 0)\n"
    )
    two = GOOD.replace("steps = 10", "steps = 0").replace("size = 128", "size = -1")
    worse = cli("config", "check", str(write(tmp_path, two))).stderr.splitlines()
    assert worse[0] == f"stylebox: config error: {tmp_path / 'stylebox.toml'} is invalid:"
    assert sorted(line.split(":")[0] for line in worse[1:]) == [
        "  [[inbox]] #1 (starry).params.size",
        "  [[inbox]] #1 (starry).params.steps",
    ]
    # What only the device can refuse is refused here too, as serve refuses it (it said OK).
    bf16 = cli(
        "config",
        "check",
        str(
            write(
                tmp_path,
                GOOD.replace("steps = 10", 'steps = 10, precision = "bf16", device = "cpu"'),
            )
        ),
    )
    assert bf16.returncode == 2 and bf16.stderr.strip().endswith(
        "[[inbox]] #1 (starry).params: gatys precision 'bf16' needs a CUDA device, not cpu"
    ), bf16.stderr


def test_config_check_says_a_batch_whose_source_is_missing_cannot_run(tmp_path: Path) -> None:
    # It said OK, and the batch then refused to start. A missing source is no config
    # error (a share may be mounted later), so serve still starts; check says it.
    batch = '\n[[batch]]\nname = "nightly"\nsource = "library"\noutbox = "out/nightly"\n'
    batch += 'plugin = "gatys"\nparams = { style = "starry_night", size = 128, steps = 10 }\n'
    config = write(tmp_path, GOOD + batch)
    result = cli("config", "check", str(config))
    assert result.returncode == 1, result.stdout
    assert "valid, but a batch cannot run" in result.stdout
    assert result.stderr.strip() == (
        f"[[batch]] nightly: source {tmp_path / 'library'} does not exist; "
        "stylebox batch refuses it until it is a folder it can read"
    )
    (tmp_path / "library").write_text("a file\n")
    assert "library is not a folder" in cli("config", "check", str(config)).stderr
    (tmp_path / "library").unlink()
    (tmp_path / "library").mkdir()
    ok = cli("config", "check", str(config))
    assert ok.returncode == 0 and "OK" in ok.stdout and not ok.stderr


def test_config_schema_command() -> None:
    result = cli("config", "schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "StyleboxConfig"


def test_folders_that_cannot_be_folders_are_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    message = refusal(tmp_path, GOOD.replace('path = "in/starry"', 'path = "afile/inbox"'))
    inbox = tmp_path / "afile" / "inbox"
    assert f"[[inbox]] #1 (starry).path: {inbox} cannot be a folder" in message
    assert f"{tmp_path / 'afile'} is a file" in message
    assert ".processed_dir" not in message  # inside the inbox: its problem is said once

    message = refusal(tmp_path, GOOD.replace('outbox = "out/starry"', 'outbox = "afile"'))
    assert f"[[inbox]] #1 (starry).outbox: {tmp_path / 'afile'} is a file, not a folder" in message
    message = refusal(tmp_path, GOOD.replace('state_dir = "state"', 'state_dir = "afile/x/y"'))
    assert f"state_dir: {tmp_path / 'afile' / 'x' / 'y'} cannot be a folder" in message
    failed = GOOD.replace('plugin = "gatys"', f'plugin = "gatys"\nfailed_dir = "{tmp_path}/afile"')
    assert "[[inbox]] #1 (starry).failed_dir" in refusal(tmp_path, failed)
    processed = GOOD.replace('plugin = "gatys"', 'plugin = "gatys"\nprocessed_dir = "done"')
    (tmp_path / "in" / "starry").mkdir(parents=True)
    (tmp_path / "in" / "starry" / "done").write_bytes(b"")
    assert "[[inbox]] #1 (starry).processed_dir" in refusal(tmp_path, processed)


def test_config_check_refuses_an_inbox_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    config = write(tmp_path, GOOD.replace('path = "in/starry"', 'path = "afile/inbox"'))
    result = cli("config", "check", str(config))
    assert result.returncode == 2, result.stdout
    assert "[[inbox]] #1 (starry).path" in result.stderr and "afile" in result.stderr
    assert "Traceback" not in result.stderr


def test_outboxes_that_feed_their_results_back_are_refused(tmp_path: Path) -> None:
    """An inbox writing into its own folder, or a loop of inboxes, would take every result
    as a new photo without end; a chain that ends is fine; a batch's outbox in its source
    would be scanned by its next run."""
    message = refusal(tmp_path, GOOD.replace('outbox = "out/starry"', 'outbox = "in/starry/"'))
    assert "[[inbox]] #1 (starry).outbox:" in message and "inbox's own folder" in message

    second = """
[[inbox]]
name = "quick"
path = "in/quick"
outbox = "{outbox}"
plugin = "gatys"
params = {{ style = "starry_night" }}
"""
    looped = GOOD.replace('outbox = "out/starry"', 'outbox = "in/quick"')
    message = refusal(tmp_path, looped + second.format(outbox="in/starry"))
    assert "[[inbox]] #1 (starry).outbox" in message and "[[inbox]] #2 (quick).outbox" in message
    assert "starry -> quick -> starry" in message
    load_config(write(tmp_path, looped + second.format(outbox="out/quick")))  # a chain
    shared = second.replace('path = "in/quick"', 'path = "in/starry"')
    message = refusal(tmp_path, GOOD + shared.format(outbox="out/quick"))
    assert (
        "[[inbox]] #2 (quick).path:" in message and "also the folder of inbox 'starry'" in message
    )

    batch = """
[[batch]]
name = "nightly"
source = "library"
outbox = "{outbox}"
plugin = "gatys"
{extra}
params = {{ style = "starry_night" }}
"""
    message = refusal(tmp_path, GOOD + batch.format(outbox="library/stylised", extra=""))
    assert "[[batch]] #1 (nightly).outbox" in message and "recursive = false" in message
    message = refusal(tmp_path, GOOD + batch.format(outbox="library", extra=""))
    assert "is the batch's source" in message
    flat = batch.format(outbox="library/stylised", extra="recursive = false")
    load_config(write(tmp_path, GOOD + flat))
    # A batch's outbox that is an inbox whose results end in the batch's source.
    fed = GOOD.replace('outbox = "out/starry"', 'outbox = "library/styled"')
    message = refusal(tmp_path, fed + batch.format(outbox="in/starry", extra=""))
    assert (
        "[[batch]] #1 (nightly).outbox: " in message
        and "is the folder of inbox 'starry', and" in message
    )
    assert "(through starry)" in message
    load_config(write(tmp_path, GOOD + batch.format(outbox="in/starry", extra="")))  # a chain


def test_a_processed_or_failed_folder_an_inbox_watches_is_refused(tmp_path: Path) -> None:
    """Moved there, a finished photo would be taken again: by its own inbox, or by another
    (whose own finished photos may come back the same way)."""
    message = refusal(
        tmp_path, GOOD.replace('plugin = "gatys"', 'plugin = "gatys"\nprocessed_dir = "."')
    )
    assert "[[inbox]] #1 (starry).processed_dir: " in message
    assert "in/starry is the inbox's own folder" in message
    second = """
[[inbox]]
name = "quick"
path = "in/quick"
outbox = "out/quick"
plugin = "gatys"
failed_dir = "../starry"
params = { style = "starry_night" }
"""
    message = refusal(tmp_path, GOOD + second)
    assert "[[inbox]] #2 (quick).failed_dir: " in message
    assert "starry is the folder of inbox 'starry', so" in message
    load_config(write(tmp_path, GOOD + second.replace("../starry", "../starry/failed")))


def test_max_pixels_above_pillows_own_limit_is_refused(tmp_path: Path) -> None:
    """Pillow refuses larger images itself, so a higher limit would be a false promise."""
    message = refusal(tmp_path, GOOD + "\n[images]\nmax_pixels = 200_000_000\n")
    assert "images.max_pixels: Input should be less than or equal to 89478485" in message


def test_config_check_reads_the_style_files_as_serve_does(tmp_path: Path) -> None:
    """A style image that is no image, or a style mask that is no label image, is the
    config error serve would refuse to start with, said by check first."""
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    config = write(tmp_path, GOOD.replace('style = "starry_night"', 'style = "notes.jpg"'))
    result = cli("config", "check", str(config))
    assert result.returncode == 2, result.stdout
    assert "[[inbox]] #1 (starry).params: gatys style image" in result.stderr
    assert "notes.jpg is not an image" in result.stderr and "Traceback" not in result.stderr

    from PIL import Image

    mask = Image.new("RGB", (32, 32), (255, 0, 0))
    mask.putpixel((3, 3), (254, 0, 0))
    mask.save(tmp_path / "style.mask.png")
    masked = GOOD.replace("steps = 10", 'steps = 10, style_mask = "style.mask.png"')
    result = cli("config", "check", str(write(tmp_path, masked)))
    assert result.returncode == 2, result.stdout
    assert "style.mask.png has colour #fe0000 only along edges" in result.stderr

    # Both at once, each where it is, as serve would refuse the first of them.
    second = masked.replace('name = "starry"', 'name = "masked"').replace("in/starry", "in/m")
    second = second.replace("out/starry", "out/m").replace('state_dir = "state"', "")
    both = GOOD.replace('style = "starry_night"', 'style = "notes.jpg"') + second
    result = cli("config", "check", str(write(tmp_path, both)))
    assert result.returncode == 2, result.stdout
    lines = result.stderr.splitlines()
    assert lines[1].startswith("  [[inbox]] #1 (starry).params: gatys style image")
    assert lines[2].startswith("  [[inbox]] #2 (masked).params: ")
    assert "only along edges" in lines[2]


def test_config_check_refuses_what_serve_would_refuse_to_start_with(tmp_path: Path) -> None:
    """A start image that is no image failed every photo as a bad input, and a missing
    VGG19 weights file was named as the first inbox's param: check said OK to both."""
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    config = write(tmp_path, GOOD.replace("steps = 10", 'steps = 10, init = "notes.jpg"'))
    result = cli("config", "check", str(config))
    assert result.returncode == 2, result.stdout
    assert "[[inbox]] #1 (starry).params: gatys init " in result.stderr
    assert "notes.jpg is not an image" in result.stderr

    weights = GOOD + '\n[backbone]\nweights = "vgg19.pth"\n'
    message = refusal(tmp_path, weights)
    assert f"backbone.weights: {tmp_path / 'vgg19.pth'} does not exist" in message
    assert "[[inbox]]" not in message  # the config's own field, not an inbox's
    # Only a config whose jobs load it reads it (status on a fast-only config, say).
    fast = weights.replace('plugin = "gatys"', 'plugin = "fast"').replace(
        'style = "starry_night", size = 128, steps = 10', 'model = "starry_night_small"'
    )
    assert load_config(write(tmp_path, fast)).config.inbox[0].plugin == "fast"
    (tmp_path / "vgg19.pth").write_bytes(b"")  # found from the config's folder
    assert load_config(write(tmp_path, weights)).runtime.backbone.weights == str(
        tmp_path / "vgg19.pth"
    )


def test_an_inbox_on_another_inbox_or_batch_outbox_knows_what_feeds_it(tmp_path: Path) -> None:
    """A chain: the inbox takes the results only, not the manifests and GIFs beside them."""
    text = GOOD.replace('outbox = "out/starry"', 'outbox = "mid"') + (
        '[[inbox]]\nname = "second"\npath = "mid"\noutbox = "out/second"\n'
        'plugin = "posterize"\n'
        '[[inbox]]\nname = "third"\npath = "mid2"\noutbox = "out/third"\n'
        'plugin = "posterize"\n'
        '[[batch]]\nname = "nightly"\nsource = "lib"\noutbox = "mid2"\nplugin = "posterize"\n'
    )
    inboxes = {i.name: i for i in load_config(write(tmp_path, text)).config.inbox}
    assert inboxes["starry"].fed_by is None
    assert inboxes["second"].fed_by == "starry"
    assert inboxes["third"].fed_by == "[[batch]] nightly"


def test_every_bad_field_is_named_at_once(tmp_path: Path) -> None:
    """A bad daemon or inbox setting does not hide a bad plugin param behind it."""
    text = GOOD.replace('plugin = "gatys"', 'plugin = "gatys"\nmax_attempts = 0')
    message = refusal(tmp_path, text.replace("steps = 10", "steps = 0"))
    assert "[[inbox]] #1 (starry).max_attempts: Input should be greater than 0" in message
    assert "[[inbox]] #1 (starry).params.steps: Input should be greater than 0" in message
    message = refusal(tmp_path, GOOD.replace('plugin = "gatys"', 'plugin = ["gatys"]'))
    assert "[[inbox]] #1 (starry).plugin: Input should be a valid string" in message


def test_nan_and_infinity_are_refused_in_plugin_params(tmp_path: Path) -> None:
    # Layer weights and blends had no bound that NaN fails: a NaN loss, and a manifest
    # (which records the params) that is not valid JSON.
    for params in ("content_layers = { relu4_2 = nan }", "style_blend = [inf]",
                   "style_layers = { relu1_1 = -inf }"):  # fmt: skip
        message = refusal(tmp_path, GOOD.replace("steps = 10", f"steps = 10, {params}"))
        assert "[[inbox]] #1 (starry).params." in message
        assert "finite number" in message, message
    message = refusal(
        tmp_path, GOOD.replace('plugin = "gatys"', 'plugin = "gatys"\ntimeout_seconds = inf')
    )
    assert "[[inbox]] #1 (starry).timeout_seconds" in message and "finite number" in message


def test_a_value_every_branch_of_a_union_refuses_is_one_error_in_the_validators_words(
    tmp_path: Path,
) -> None:
    # The fast plugin's style (a file, a list of files, or none): a missing file gave three
    # errors under locations like style.function-after[validate(), lax-or-strict[...]].
    from typing import Literal

    from pydantic import BaseModel, PositiveInt, ValidationError

    from stylebox.config import field_errors
    from stylebox.plugins.api import StyleFile

    class Params(BaseModel):
        style: StyleFile | list[StyleFile] | None = None

    def errors(value: object) -> list[tuple[tuple[int | str, ...], str]]:
        with pytest.raises(ValidationError) as refused:
            Params.model_validate({"style": value}, context={"base_dir": tmp_path})
        return [(error["loc"], error["msg"]) for error in field_errors(refused.value)]

    [(loc, message)] = errors("nosuch.jpg")
    assert loc == ("style",)
    # A path that is not there is said to be so, where it was looked for (it read as a file
    # that is no image); a bare name, as meant for a bundled one.
    assert message == (
        f"file not found: {tmp_path / 'nosuch.jpg'} (nor is it a bundled style: "
        "starry_night, the_scream)"
    )
    [(_, message)] = errors("nosuch")
    assert message == (
        "nosuch is not a bundled style (starry_night, the_scream), nor an image file (file "
        f"not found: {tmp_path / 'nosuch'})"
    )
    (tmp_path / "a.jpg").write_bytes(b"")
    assert errors(["a.jpg", 3]) == [(("style", 1), "expected a path (text)")]

    class Steps(BaseModel):
        steps: PositiveInt | Literal["auto"] = "auto"

    with pytest.raises(ValidationError) as refused:
        Steps.model_validate({"steps": -1})
    assert [(e["loc"], e["msg"]) for e in field_errors(refused.value)] == [
        (("steps",), "Input should be greater than 0")
    ]


def test_a_key_written_with_a_dash_is_named_as_unknown(tmp_path: Path) -> None:
    # A dash for an underscore, the typo TOML invites: the error named no key once branch
    # tags such as constrained-int were dropped by their shape.
    config = tmp_path / "stylebox.toml"
    config.write_text(
        '[[inbox]]\nname = "a"\npath = "in"\noutbox = "out"\nplugin = "gatys"\nsettle-seconds = 3\n'
    )
    with pytest.raises(ConfigError, match=r"\(a\)\.settle-seconds: unknown key"):
        load_config(config)
