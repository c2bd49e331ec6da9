"""Plugins bring their own subcommands through the ``stylebox.commands`` entry points."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import installed_site

SRC = Path(__file__).parents[1] / "src" / "stylebox"


def command_site(folder: Path) -> Path:
    """An installed-looking distribution with one working and one broken command plugin."""
    return installed_site(
        folder,
        "hellocommands",
        "[stylebox.commands]\n"
        "hello = hellocommands:register\n"
        "broken = hellocommands.missing:register\n",
        {
            "hellocommands.py": (
                "def register(commands):\n"
                "    hello = commands.add_parser('hello', help='say hello')\n"
                "    hello.add_argument('name')\n"
                "    hello.set_defaults(handler=lambda args: print(f'hello {args.name}') or 0)\n"
                "    commands.add_parser('bare', help='sets no handler')\n"
                "    def oops(args):\n"
                "        if args.config:\n"
                "            from stylebox.errors import ConfigError\n"
                "            raise ConfigError('no such preset')\n"
                "        raise KeyError('lut')\n"
                "    fails = commands.add_parser('oops', help='raises')\n"
                "    fails.add_argument('--config', action='store_true')\n"
                "    fails.set_defaults(handler=oops)\n"
            )
        },
    )


def stylebox(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "stylebox.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_a_plugins_command_runs_and_a_broken_one_is_left_out(tmp_path: Path) -> None:
    site = command_site(tmp_path)
    result = stylebox(site, "hello", "world")
    assert result.returncode == 0 and result.stdout == "hello world\n"
    assert "plugin commands 'broken' (hellocommands.missing:register) left out" in result.stderr
    assert "ModuleNotFoundError" in result.stderr and "Traceback" not in result.stderr
    listing = stylebox(site, "--help")
    assert all(name in listing.stdout for name in ("hello", "train", "export", "status"))


def test_a_plugins_command_without_a_handler_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    # AttributeError: 'Namespace' object has no attribute 'handler', from stylebox's cli.
    result = stylebox(command_site(tmp_path), "bare")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "stylebox: the command 'bare' has no handler: the plugin that adds it must call "
        "set_defaults(handler=...) on its parser"
    )
    assert "Traceback" not in result.stderr
    # A handler's own error in one line; its bug with its traceback, for its author.
    said = stylebox(command_site(tmp_path / "again"), "oops", "--config")
    assert (said.returncode, said.stderr.splitlines()[-1]) == (
        2,
        "stylebox: config error: no such preset",
    )
    bug = stylebox(command_site(tmp_path / "more"), "oops")
    assert bug.returncode == 1 and "Traceback" in bug.stderr
    assert bug.stderr.splitlines()[-1] == "KeyError: 'lut'"


def test_the_fast_plugin_brings_train_export_and_models(tmp_path: Path) -> None:
    result = stylebox(tmp_path, "export", "--help")
    assert result.returncode == 0 and "--fp16" in result.stdout
    listed = stylebox(tmp_path, "models")
    assert listed.returncode == 0, listed.stderr
    # The shipped models; a clone's own models in styles/ (as the README's
    # recipes put them) are listed too.
    lines = {line.split(":")[0]: line for line in listed.stdout.splitlines()}
    assert {"starry_night_small", "the_scream_small"} <= set(lines)
    first = lines["starry_night_small"]
    assert first.startswith("starry_night_small: style starry_night, ")
    assert "fp16 variant" in first and "trained 1600 steps on" in first


def test_the_host_cli_imports_no_plugin_internals() -> None:
    tree = ast.parse((SRC / "cli.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    inside = sorted(
        name
        for name in imported
        if name.startswith("stylebox.plugins.")
        and name not in ("stylebox.plugins.api", "stylebox.plugins.registry")
    )
    assert inside == []
