"""Finding plugins through the ``stylebox.plugins`` entry-point group.

A plugin that fails to import, or that breaks the contract's shape, is recorded with its
reason and left out; it never takes the other plugins down. So is a name that two installed
packages register: neither is loaded. A package registering a built-in plugin's name is
ignored, with a warning: the built-in keeps it.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from stylebox.errors import ConfigError, describe
from stylebox.plugins.api import Plugin

GROUP = "stylebox.plugins"
#: The distribution whose entry points are the built-in plugins (``gatys``, ``fast``).
BUILTIN_DIST = "stylebox"

log = logging.getLogger("stylebox.plugins")


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
    ignored: list[PluginFailure] = field(default_factory=list)
    """Entry points left unloaded because a built-in plugin has their name (each warned of)."""

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
        close = difflib.get_close_matches(name, [*self.plugins, *self.failures], n=1)
        hint = f"; did you mean {close[0]}?" if close else _misgrouped(name)
        raise ConfigError(f"no plugin named {name!r} is installed (installed: {known}){hint}")


def misgrouped(name: str | None = None) -> list[str]:
    """Each entry point (called ``name``, if given) registered in a group close to
    :data:`GROUP` (``stylebox.plugin``, say), said as what it is and what to do: a plugin
    never loaded, and never listed with the plugins that are."""
    groups = entry_points().groups - {GROUP}
    return [
        f"an entry point {entry_point.name!r} is registered"
        + (f" by {entry_point.dist.name}" if entry_point.dist else "")
        + f" in the group {group!r}, not {GROUP!r}: fix the group's name in its "
        "pyproject.toml and reinstall it"
        for group in sorted(difflib.get_close_matches(GROUP, groups, n=3, cutoff=0.8))
        for entry_point in entry_points(group=group)
        if name is None or entry_point.name == name
    ]


def _misgrouped(name: str) -> str:
    """Where an entry point called ``name`` is registered in a group close to
    :data:`GROUP`, what to do; else nothing."""
    said = misgrouped(name)
    return f"; {said[0]}" if said else ""


def params_problem(cls: type) -> str | None:
    """What is wrong with plugin class ``cls``'s ``Params``, which must be a pydantic
    model; ``None`` if nothing is."""
    params = getattr(cls, "Params", None)
    if inspect.isclass(params) and issubclass(params, BaseModel):
        return None
    said = "is not set" if params is None else f"is {params!r}, not a pydantic model"
    return (
        f"{cls.__name__}.Params {said}; give it a subclass of "
        "stylebox.plugins.api.PluginParams (Params = MyParams in the class)"
    )


def discover() -> Registry:
    """Load every plugin registered in the ``stylebox.plugins`` entry-point group."""
    registry = Registry()
    claims: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=GROUP):
        claims.setdefault(entry_point.name, []).append(entry_point)
    for name in sorted(claims):
        entry_point = _claimant(name, claims[name], registry)
        if entry_point is None:
            continue
        source = _describe(entry_point)
        try:
            loaded = load_quietly(entry_point)
        except BaseException as exc:  # a plugin's import may fail in any way at all
            if isinstance(exc, KeyboardInterrupt):
                raise
            reason = f"import failed: {describe(exc)}"
            registry.failures[name] = PluginFailure(name, source, reason)
            continue
        problem = contract_problem(name, loaded)
        if problem is not None:
            registry.failures[name] = PluginFailure(name, source, problem)
            continue
        version = str(getattr(loaded, "version", "") or "")
        if not version or version == "0":
            version = entry_point.dist.version if entry_point.dist else "unknown"
        registry.plugins[name] = PluginInfo(name, loaded, version, source)
    return registry


def _claimant(name: str, claims: list[EntryPoint], registry: Registry) -> EntryPoint | None:
    """The one entry point to load for ``name``, or ``None`` when packages clash over it.

    Picking one of several by install order would make which plugin an inbox runs depend on
    the order of sys.path; so a built-in keeps its name (a package that installs a plugin
    must not silently replace the one a config was written for), and a name two other
    packages register is loaded from neither, its failure naming both.
    """
    if len({ep.value for ep in claims}) == 1:  # one target, found twice on sys.path
        return claims[0]
    builtin = [ep for ep in claims if _is_builtin(ep)]
    if len(builtin) == 1:
        reason = (
            f"ignored: {name!r} is the name of a built-in plugin, which keeps it; "
            "rename this entry point and its class's name"
        )
        for other in claims:
            if other is not builtin[0]:
                registry.ignored.append(PluginFailure(name, _describe(other), reason))
                log.warning("plugin entry point %r (%s) is %s", name, _describe(other), reason)
        return builtin[0]
    claims = sorted(claims, key=lambda ep: (ep.dist.name if ep.dist else "", ep.value))
    source = " and ".join(_describe(ep) for ep in claims)
    packages = [ep.dist.name if ep.dist else ep.value for ep in claims]
    if len(claims) == 2:
        said = f"{packages[0]} and {packages[1]} both register this name, so neither"
        fix = "uninstall one, or rename the entry point and its class's name in the other"
    else:
        said = f"{', '.join(packages)} all register this name, so none"
        fix = "uninstall all but one, or rename the entry point and its class's name in the rest"
    reason = f"{said} is loaded: {fix}"
    registry.failures[name] = PluginFailure(name, source, reason)
    return None


def _is_builtin(entry_point: EntryPoint) -> bool:
    dist = entry_point.dist
    return dist is not None and dist.name.lower() == BUILTIN_DIST


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
        return (
            f"class {loaded.__name__} declares name {declared!r} but is registered as "
            f"{name!r}; make {loaded.__name__}.name and the entry point name the same"
        )
    if (problem := params_problem(loaded)) is not None:
        return problem
    if inspect.isabstract(loaded):
        missing = ", ".join(sorted(getattr(loaded, "__abstractmethods__", ())))
        return f"{loaded.__name__} does not implement {missing}"
    return None


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{entry_point.value}{where}"
