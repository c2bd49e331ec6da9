"""Facts the README states about files in the repository, checked against those files."""

from __future__ import annotations

import json
import re

from conftest import REPO, STYLES


def test_the_readme_model_manifest_is_the_bundled_one() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Fast-style models", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None
    shown = json.loads(block.group(1))
    bundled = json.loads((STYLES / "starry_night_small.json").read_text())
    training = shown.pop("training")
    assert shown == {key: bundled[key] for key in shown}
    assert training["steps"] == bundled["training"]["steps"]


def test_the_readme_quotes_the_bundled_fp16_error() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())
    bundled = json.loads((STYLES / "starry_night_small.json").read_text())
    quoted = re.search(r"bundled model's variant differs by at most ([0-9.]+)", readme)
    assert quoted is not None
    assert float(quoted.group(1)) == round(bundled["training"]["fp16_max_abs_error"], 3)
