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
