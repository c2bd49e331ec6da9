"""The loss plot: ``<stem>.loss.svg`` beside every result whose plugin reports a loss (in the
manifest, part of the atomic set), and ``stylebox plot MANIFEST`` for older results."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import photo
from PIL import Image
from stepper_plugin import run

from stylebox.daemon.outbox import Outbox
from stylebox.daemon.runner import Job, PluginHandle, Runner
from stylebox.lossplot import render_svg
from stylebox.plugins.api import JobContext, Plugin, PluginParams, Runtime

SVG = "{http://www.w3.org/2000/svg}"

GATYS_LIKE = [
    {"step": s, "loss": 1e6 / s, "content": 1e3 / s, "style": 1e5 / s**2, "tv": 10.0, "eta": 3}
    for s in range(1, 31)
]


def _lines(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return {
        line.get("data-series", ""): [
            tuple(map(float, point.split(","))) for point in line.get("points", "").split()
        ]
        for line in root.iter(f"{SVG}polyline")
    }


def test_the_four_losses_are_drawn_per_step_on_a_log_scale() -> None:
    svg = render_svg(GATYS_LIKE, title="photo")
    assert svg is not None
    lines = _lines(svg)
    assert set(lines) == {"loss", "content", "style", "tv"}
    assert all(len(points) == 30 for points in lines.values())
    # Log scale: a tenfold fall is the same height wherever it is; the constant TV is flat.
    ys = [y for _, y in lines["loss"]]
    assert abs((ys[9] - ys[0]) - (ys[29] - ys[2])) < 0.2  # 1 -> 10 and 3 -> 30: one decade
    assert len({y for _, y in lines["tv"]}) == 1
    assert [x for x, _ in lines["loss"]] == sorted(x for x, _ in lines["loss"])
    assert ">1e6<" in svg and ">1e1<" in svg  # the decades of the range are labelled
    # Opened on its own, a browser's tab is named by it; the whole name, even where the
    # drawn title loses its middle.
    long = "IMG_20240612_154233_HDR_panorama_from_grandmas_ninetieth_birthday_party_final"
    for title in ("photo", long):
        drawn = render_svg(GATYS_LIKE, title=title, width=240)
        assert drawn is not None
        assert ET.fromstring(drawn).findtext(f"{SVG}title") == title


def test_a_start_far_below_its_curve_does_not_stretch_the_scale() -> None:
    # A gatys run starts at the photo: content 0, then 1.7, then ~1e5 on. Spanned, the scale
    # ran 1e0 to 1e8 and every curve sat in the top half.
    history = [{**entry, "content": 1e5 + entry["step"]} for entry in GATYS_LIKE]
    history[0]["content"], history[1]["content"] = 0.0, 1.7
    svg = render_svg(history)
    assert svg is not None
    labels = re.findall(r">1e(-?\d+)<", svg)
    assert min(map(int, labels)) == 1  # the TV's 10, not the content's 1.7
    bottom = max(y for line in _lines(svg).values() for _, y in line)
    assert _lines(svg)["content"][0][1] == bottom  # drawn on the lower edge
    # A fall is not a start below the curve: a loss from 1e5 to 10 in two steps is drawn
    # falling, over five decades.
    svg = render_svg([{"step": 1, "loss": 1e5}, {"step": 2, "loss": 10.0}])
    assert svg is not None and re.findall(r">1e(-?\d+)<", svg)[0] == "1"
    (first, last) = _lines(svg)["loss"]
    assert last[1] - first[1] > 100


def test_the_photo_presets_photorealism_term_is_drawn_too() -> None:
    # Left out, the total stood visibly above content + style with nothing to say why.
    history = [{**entry, "photo": 5.0 * (i + 1)} for i, entry in enumerate(GATYS_LIKE)]
    svg = render_svg(history, title="photo")
    assert svg is not None and "photo" in _lines(svg) and ">photorealism<" in svg


def test_a_history_without_a_loss_has_no_plot_and_bad_values_are_left_out() -> None:
    assert render_svg([{"step": 1, "its": 3.0}]) is None
    assert render_svg([]) is None
    svg = render_svg([{"step": 1, "loss": 5.0}, {"step": 2, "loss": float("nan")},
                      {"step": 3, "loss": 0.0}, {"step": 4, "loss": 2.0}])  # fmt: skip
    assert svg is not None
    assert [x for x, _ in _lines(svg)["loss"]] == sorted(x for x, _ in _lines(svg)["loss"])
    assert len(_lines(svg)["loss"]) == 2


def test_a_job_that_reports_a_loss_gets_its_plot_in_the_outbox_and_manifest(
    tmp_path: Path,
) -> None:
    image = tmp_path / "photo.png"
    photo(24, 16).save(image)
    out = tmp_path / "out"
    manifest = run(image, out, tmp_path / "state" / "job", {"steps": 6}).manifest
    assert manifest["output"]["loss_plot"] == "photo.loss.svg"
    svg = (out / "photo.loss.svg").read_text()
    assert svg == render_svg(manifest["history"], title="photo")
    assert len(_lines(svg)["loss"]) == 6


class _Plain(Plugin[PluginParams]):
    name = "plain"
    Params = PluginParams

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)  # steps, but no loss
        return image


def test_a_job_without_a_loss_writes_no_plot(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    photo(24, 16).save(image)
    plugin = _Plain(PluginParams(), Runtime(state_dir=tmp_path))
    handle = PluginHandle("plain", "1", plugin, plugin.params)
    result = Runner().execute(Job(image, tmp_path / "work"), handle, Outbox(tmp_path / "out"))
    assert result.manifest["output"]["loss_plot"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.json", "photo.png"]


def _stylebox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_plot_draws_an_older_results_curves_from_its_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "photo.json"
    # A result from before the plot existed: its manifest has the history, no loss_plot.
    manifest.write_text(json.dumps({"output": {"result": "photo.png"}, "history": GATYS_LIKE}))
    done = _stylebox("plot", str(manifest))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "photo.loss.svg")
    assert (tmp_path / "photo.loss.svg").read_text() == render_svg(GATYS_LIKE, title="photo")
    assert json.loads(manifest.read_text()) == {  # left as it was
        "output": {"result": "photo.png"}, "history": GATYS_LIKE
    }  # fmt: skip
    other = tmp_path / "elsewhere.svg"
    assert _stylebox("plot", str(manifest), "--out", str(other)).returncode == 0
    assert set(_lines(other.read_text())) == {"loss", "content", "style", "tv"}


def test_plot_refuses_what_it_cannot_draw_in_one_line(tmp_path: Path) -> None:
    cases = {
        "missing.json": None,
        "broken.json": "{not json",
        "other.json": json.dumps({"name": "x"}),
        "noloss.json": json.dumps({"history": [{"step": 1, "its": 2.0}]}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        done = _stylebox("plot", str(path))
        assert done.returncode == 2, (name, done)
        assert re.fullmatch(r"stylebox: bad input: [^\n]+\n", done.stderr), done.stderr
        assert not list(tmp_path.glob("*.svg"))


def test_a_long_title_loses_its_middle_not_the_edge_of_the_plot() -> None:
    name = "IMG_20240612_154233_HDR_panorama_from_grandmas_ninetieth_birthday_party_final"
    svg = render_svg(GATYS_LIKE, title=name, width=320, height=200)
    assert svg is not None
    (title,) = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text") if t.get("font-size") == "13"]
    assert title == "IMG_20240612_1542…thday_party_final"  # (320 - 64 - 8) // 7 characters
    assert len(title) == (320 - 64 - 8) // 7


def test_a_coarse_to_fine_runs_move_to_a_larger_size_is_marked() -> None:
    # Its losses jump where the 256 px pass ends and the 512 px one begins (a style loss
    # from 4e5 to 2e7): unmarked, the jump looked like the job going wrong.
    history = [{**entry, "size": 256 if entry["step"] <= 20 else 512} for entry in GATYS_LIKE]
    svg = render_svg(history)
    assert svg is not None
    root = ET.fromstring(svg)
    (marker,) = [line for line in root.iter(f"{SVG}line") if line.get("data-scale")]
    assert marker.get("data-scale") == "512"
    loss = dict(_lines(svg)["loss"])
    steps = sorted(loss)
    assert abs(float(marker.get("x1", "")) - steps[20]) < 0.2  # at step 21
    assert "512 px" in svg
    plain = render_svg(GATYS_LIKE)  # one size, or none reported: no marker
    assert plain is not None and "data-scale" not in plain
