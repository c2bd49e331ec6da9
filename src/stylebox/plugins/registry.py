"""Finding plugins through the ``stylebox.plugins`` entry-point group.

A plugin that fails to import, or that breaks the contract's shape, is recorded with its
reason and left out; it never takes the other plugins down.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from stylebox.errors import ConfigError
from stylebox.plugins.api import Plugin

GROUP = "stylebox.plugins"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    cls: type[Plugin]
    version: str
    source: str
    """The entry point's target (``module:Class``) and the distribution providing it."""


@dataclass(frozen=True)
class PluginFailure:
    name: str
    source: str
    reason: str


@dataclass
class Registry:
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    failures: dict[str, PluginFailure] = field(default_factory=dict)

    def get(self, name: str) -> type[Plugin]:
        """The plugin class called ``name``, or a :class:`ConfigError` saying why not."""
        if name in self.plugins:
            return self.plugins[name].cls
        if name in self.failures:
            failure = self.failures[name]
            raise ConfigError(
                f"plugin {name!r} ({failure.source}) failed to load: {failure.reason}"
            )
        known = ", ".join(sorted(self.plugins)) or "none"
        raise ConfigError(f"no plugin named {name!r} is installed (installed: {known})")


def discover() -> Registry:
    """Load every plugin registered in the ``stylebox.plugins`` entry-point group."""
    registry = Registry()
    for entry_point in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        source = _describe(entry_point)
        try:
            loaded = load_quietly(entry_point)
        except BaseException as exc:  # a plugin's import may fail in any way at all
            if isinstance(exc, KeyboardInterrupt):
                raise
            reason = f"import failed: {type(exc).__name__}: {exc}"
            registry.failures[entry_point.name] = PluginFailure(entry_point.name, source, reason)
            continue
        problem = contract_problem(entry_point.name, loaded)
        if problem is not None:
            registry.failures[entry_point.name] = PluginFailure(entry_point.name, source, problem)
            continue
        version = str(getattr(loaded, "version", "") or "")
        if not version or version == "0":
            version = entry_point.dist.version if entry_point.dist else "unknown"
        registry.plugins[entry_point.name] = PluginInfo(entry_point.name, loaded, version, source)
    return registry


def load_quietly(entry_point: EntryPoint) -> Any:
    """The entry point's object, with anything its import prints sent to standard error:
    the commands' standard output is for what they answer (``status --json``, ``config
    schema``), which a plugin's stray ``print`` would make unreadable."""
    with contextlib.redirect_stdout(sys.stderr):
        return entry_point.load()


def contract_problem(name: str, loaded: object) -> str | None:
    """Why ``loaded`` cannot serve as the plugin ``name``, or ``None`` if it can."""
    if not (inspect.isclass(loaded) and issubclass(loaded, Plugin)):
        return f"{loaded!r} is not a subclass of stylebox.plugins.api.Plugin"
    declared = getattr(loaded, "name", None)
    if declared != name:
        return f"class {loaded.__name__} declares name {declared!r} but is registered as {name!r}"
    params = getattr(loaded, "Params", None)
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        return f"{loaded.__name__}.Params is {params!r}, not a pydantic model"
    if inspect.isabstract(loaded):
        missing = ", ".join(sorted(getattr(loaded, "__abstractmethods__", ())))
        return f"{loaded.__name__} does not implement {missing}"
    return None


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{entry_point.value}{where}"
