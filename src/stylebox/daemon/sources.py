"""Where jobs come from: each inbox, batch folder or ``stylebox run``, with its plugin
instance, params digest and outbox, built from the config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stylebox.config import BatchConfig, InboxConfig, JobConfig, LoadedConfig, RunConfig
from stylebox.daemon import files
from stylebox.daemon.journal import JobRow
from stylebox.daemon.outbox import Outbox, same_folder
from stylebox.daemon.runner import PluginHandle
from stylebox.errors import ConfigError, PluginError, StyleboxError, describe
from stylebox.plugins.api import Plugin, params_digest
from stylebox.plugins.registry import Registry

log = logging.getLogger("stylebox.pipeline")


def close_plugin(instance: Plugin[Any]) -> bool:
    """Close a plugin instance the host is done with; whether it closed. Its ``close``
    raising is its bug, logged with its traceback: the daemon's stop, a reload or a run's
    end goes on, its exit status unchanged (a SIGTERM ended ``serve`` with a traceback and
    1, its journal marked as stopped unclean)."""
    try:
        instance.close()
    except Exception:
        log.exception("plugin %s: close() failed", instance.name, extra={"event": "plugin_bug"})
        return False
    return True


@dataclass
class Source:
    """An inbox, a batch folder or the files of one ``stylebox run``, with its plugin
    instance ready."""

    key: str
    """``inbox:<name>``, ``batch:<name>`` or ``run:<outbox>``, as the journal stores it."""
    config: JobConfig
    plugin: PluginHandle
    outbox: Outbox
    params_hash: str
    device_type: str

    @property
    def moves_inputs(self) -> bool:
        return isinstance(self.config, InboxConfig)

    def subfolder(self, path: Path) -> str:
        """Where under the outbox the results of the input ``path`` go (see
        :func:`subfolder_of`)."""
        return subfolder_of(self.config, path)

    def file_name(self, row: JobRow) -> str:
        """How the job ``row``'s file is named to people: under its sub-folder where its
        results are in one (``2024/june/a.jpg``), else by its name."""
        return self.name_of(Path(row.origin_path))

    def name_of(self, path: Path) -> str:
        """How the file ``path`` of this source is named to people (see :meth:`file_name`)."""
        return name_of(self.config, path)

    def reserve_for(self, path: Path) -> str:
        """A free output stem for the input ``path``, in the sub-folder its results go to."""
        return self.outbox.reserve(files.readable(path.name), self.subfolder(path)).stem

    def reserve(self, row: JobRow) -> str:
        """A free output stem for the job ``row`` (its input where the journal says)."""
        return self.outbox.reserve(row.name, self.subfolder(Path(row.input_path))).stem

    def label(self, name: str) -> str:
        """How logs and progress bars name a job of this source's file ``name``: with the
        source, except in a ``stylebox run``, whose files are all there is."""
        return name if isinstance(self.config, RunConfig) else f"{self.key}/{name}"

    @classmethod
    def of(cls, key: str, config: JobConfig, plugin: PluginHandle) -> Source:
        """The source ``key`` of ``config``, run by ``plugin``."""
        return cls(
            key=key,
            config=config,
            plugin=plugin,
            outbox=Outbox(config.outbox, config.output),
            params_hash=params_digest(plugin.params, plugin.instance.identity),
            device_type=plugin.instance.device_kind,
        )


def build_sources(
    loaded: LoadedConfig,
    registry: Registry,
    tables: tuple[Literal["inbox", "batch"], ...] = ("inbox", "batch"),
    only: str | None = None,
    instances: dict[tuple[str, str], Plugin[Any]] | None = None,
) -> dict[str, Source]:
    """One :class:`Source` per inbox/batch; plugins with equal params share an instance.

    A plugin that fails to start with anything but a :class:`ConfigError` (a bad setting,
    which refuses the whole config) is broken: its inbox or batch is recorded in
    ``loaded.unavailable`` with the reason and left out, and the others run.
    """
    runtime = loaded.runtime
    shared: dict[tuple[str, str], Plugin[Any]] = instances if instances is not None else {}
    sources: dict[str, Source] = {}
    for table in tables:
        entries = loaded.config.inbox if table == "inbox" else loaded.config.batch
        for entry in entries:
            if only is not None and entry.name != only:
                continue
            if (table, entry.name) in loaded.unavailable:
                continue
            params = loaded.params[(table, entry.name)]
            digest = params_digest(params)
            key = (entry.plugin, digest)
            if key not in shared:
                try:
                    instance = registry.get(entry.plugin)(params, runtime)
                    kind = instance.device_kind
                    if kind not in ("cpu", "cuda"):  # it would run under no workers limit
                        close_plugin(instance)
                        raise PluginError(
                            f"its device_kind is {kind!r}; it must be 'cpu' or 'cuda'"
                        )
                    if instance.capabilities.gpu_only and kind != "cuda":
                        # It says it cannot run without a GPU, yet started on the CPU (its
                        # own check of the device missing): not run where it says it fails.
                        close_plugin(instance)
                        raise ConfigError(
                            f"plugin {entry.plugin!r} is gpu_only (its capabilities), and "
                            f"here it would run on the cpu (device = {runtime.device!r}): "
                            "give it a CUDA device, or use another plugin"
                        )
                    shared[key] = instance
                except ConfigError as exc:  # where, as for the config's own fields
                    where = f"{loaded.source}: " if loaded.source else ""
                    label = loaded.label(table, entry.name)
                    raise ConfigError(f"{where}{label}.params: {exc}") from None
                except Exception as exc:  # a plugin bug must not stop the other inboxes
                    if isinstance(exc, StyleboxError):  # said on purpose (a bad model): its words
                        log.error("plugin %s failed to start: %s", entry.plugin, exc)
                    else:  # a bug: its traceback says where
                        log.exception("plugin %s failed to start", entry.plugin)
                    loaded.unavailable[(table, entry.name)] = (
                        f"plugin {entry.plugin!r} failed to start: {describe(exc)}"
                    )
                    continue
            handle = PluginHandle(
                entry.plugin, registry.plugins[entry.plugin].version, shared[key], params
            )
            sources[f"{table}:{entry.name}"] = Source.of(f"{table}:{entry.name}", entry, handle)
    # Inboxes and batches that write into one folder give out its names from one set: two
    # photos of one name arriving together in two inboxes became one result, the second
    # written over the first, both jobs done.
    first: dict[Path, Outbox] = {}
    for source in sources.values():
        outbox = first.setdefault(same_folder(source.outbox.folder), source.outbox)
        if outbox is not source.outbox:
            source.outbox.share_reservations(outbox)
    return sources


def subfolder_of(config: JobConfig, path: Path) -> str:
    """Where under the outbox the results of the input ``path`` go: a recursive batch
    mirrors its source's sub-folders (``2024/june``); ``""``, the outbox itself, for
    everything else."""
    if not (isinstance(config, BatchConfig) and config.recursive):
        return ""
    try:
        relative = path.parent.relative_to(config.source)
    except ValueError:
        return ""
    return "" if relative == Path() else files.readable(relative.as_posix())


def name_of(config: JobConfig, path: Path) -> str:
    """How the file ``path`` of the inbox or batch ``config`` is named to people: under its
    sub-folder where its results are in one (``2024/june/a.jpg``), else by its name."""
    folder = subfolder_of(config, path)
    name = files.readable(path.name)
    return f"{folder}/{name}" if folder else name
