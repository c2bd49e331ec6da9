"""Facts the README states about files in the repository, checked against those files."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def _blocks(section: str, language: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    text = readme.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_readme_pyproject_skeleton_is_the_example_packages() -> None:
    import tomllib

    shown = next(
        tomllib.loads(block)
        for block in _blocks("## Writing a plugin", "toml")
        if "[build-system]" in block
    )
    example = tomllib.loads((REPO / "examples/stylebox-posterize/pyproject.toml").read_text())
    assert shown["build-system"] == example["build-system"]
    assert shown["project"]["entry-points"] == example["project"]["entry-points"]
    assert "stylebox" in shown["project"]["dependencies"]
    assert shown["tool"] == {"hatch": example["tool"]["hatch"]}


def test_the_readme_example_test_passes(tmp_path) -> None:
    """The plugin author's example test in the README, run as an author would."""
    import subprocess
    import sys

    (example,) = [b for b in _blocks("### Proving it", "python") if "stylebox_context" in b]
    (tmp_path / "test_readme_example.py").write_text(example)
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout


def test_every_toml_example_in_the_readme_parses() -> None:
    """A reader copies them: each is valid TOML 1.0 (no inline table over two lines)."""
    import tomllib

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        tomllib.loads(block)


def test_the_published_schema_accepts_the_configs_stylebox_accepts() -> None:
    """An editor checks a config against `stylebox config schema`: the default config and
    the README's config examples pass it, as they pass stylebox (`style = "name"` alone
    included), and a style list that is empty does not."""
    import tomllib

    import jsonschema

    from stylebox.config import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    readme = (REPO / "README.md").read_text()
    configs = [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", readme, re.S)]
    configs = [c for c in configs if not {"project", "build-system"} & set(c)]  # plugins'
    configs.append(tomllib.loads((REPO / "config" / "stylebox.toml").read_text()))
    assert len(configs) >= 4
    for config in configs:
        assert not [error.message for error in validator.iter_errors(config)], config
    empty = {"inbox": [{"name": "a", "path": "a", "outbox": "b", "plugin": "gatys",
                        "params": {"style": []}}]}  # fmt: skip
    assert not validator.is_valid(empty)


def test_the_minimal_plugin_of_the_api_docstring_passes_the_contract_kit(tmp_path: Path) -> None:
    import textwrap

    from stylebox.plugins import api
    from stylebox.testing import ContractCase, check_plugin

    # Its Invert example blended by a float param: at 0.5, which its params allow, the
    # result was flat grey, which the kit and the daemon refuse; the kit warned that the
    # param took text.
    assert api.__doc__ is not None
    code = api.__doc__.split("A minimal plugin", 1)[1].split("::", 1)[1]
    code = code.split("registered in", 1)[0]
    namespace: dict = {}
    exec(  # the docstring's own names, imported as a plugin module would
        "from PIL import Image, ImageOps\nfrom pydantic import Field\n"
        "from stylebox.plugins.api import Plugin, PluginParams\n" + textwrap.dedent(code),
        namespace,
    )
    # Only found by name once its package is installed with the entry point shown.
    installed = {"discoverable": "the entry point is its package's, not this test's"}
    report = check_plugin(ContractCase(namespace["Posterize"], tmp_path), installed)
    assert report.ok, str(report)
    assert not [r.message for r in report.results if "warning:" in r.message], str(report)


def test_make_bench_runs_every_bench_script_and_the_readme_describes_each() -> None:
    scripts = {p.name for p in (REPO / "bench").glob("*.py")}
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"bench/(\w+\.py)", target)) == scripts
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^- `bench/(\w+\.py)`", section, re.M)) == scripts
    words = {8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
    assert f"`make bench` runs all {words[len(scripts)]}," in section


def test_make_test_runs_the_suite_as_the_readme_says() -> None:
    recipe = (REPO / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pytest -q -n 2 --dist loadfile" in recipe
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "runs on two pytest-xdist workers, each taking whole test files" in readme


def _section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def test_the_readme_param_tables_name_every_param_with_its_default() -> None:
    """The gatys and fast tables against the plugins' Params: every param has a row, and
    a default written as a value (a number, a TOML literal) or as "none" is the code's."""
    import tomllib

    from stylebox.plugins.faststyle import FastParams
    from stylebox.plugins.gatys.params import GatysParams

    unset = {"none", "equal", "config's", "= steps", "the masks' own"}
    for title, params in (("### gatys params", GatysParams), ("### fast params", FastParams)):
        rows = [line for line in _section(title).splitlines() if line.startswith("| `")]
        named: list[str] = []
        checked = 0
        for row in rows:
            first, default = (cell.strip() for cell in row.split("|")[1:3])
            names = re.findall(r"`(\w+)`", first)
            named += names
            shown = [re.sub(r"\s*\(.*?\)", "", d).strip() for d in default.split(", ")]
            if len(shown) != len(names):
                continue
            for name, text in zip(names, shown, strict=True):
                field = params.model_fields[name]
                if field.is_required():
                    continue
                code = field.get_default(call_default_factory=True)
                if text in unset:
                    assert code is None, (title, name, code)
                    checked += 1
                    continue
                literal = text.strip("`")
                if " " in literal and not literal.startswith(("{", "[")):
                    continue  # words ("768 on the CPU, 4096 on a GPU"), read by people
                try:
                    value = tomllib.loads(f"v = {literal}")["v"]
                except tomllib.TOMLDecodeError:
                    value = tomllib.loads(f'v = "{literal}"')["v"]  # a bare word: text
                assert value == code, (title, name, text, code)
                checked += 1
        assert sorted(named) == sorted(params.model_fields), title
        assert checked >= len(params.model_fields) - 4, (title, checked)


def test_the_readme_config_format_names_every_key() -> None:
    """ "The whole format": every key of every config table appears in it (set, or in a
    comment), so a reader who copies it misses none."""
    from pydantic import BaseModel

    from stylebox.config import StyleboxConfig

    readme = (REPO / "README.md").read_text()
    block = readme.split("The whole format", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    keys = set(re.findall(r"^#?\s*(\w+)\s*=", block, re.M))
    tables = set(re.findall(r"^\[+([\w.]+)\]+", block, re.M))

    def fields(model: type[BaseModel]) -> set[str]:
        found = set()
        for name, field in model.model_fields.items():
            found.add(name)
            inner = field.annotation
            for candidate in (inner, *getattr(inner, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    found |= fields(candidate)
        return found

    missing = fields(StyleboxConfig) - keys - {t.split(".")[-1] for t in tables}
    assert not missing, missing


def test_the_readme_layout_names_every_module() -> None:
    layout = _section("## Layout")
    missing = [
        str(path.relative_to(REPO))
        for path in (REPO / "src" / "stylebox").rglob("*.py")
        if path.name != "__init__.py" and not re.search(rf"\b{re.escape(path.name)}\b", layout)
    ]
    assert not missing, missing
