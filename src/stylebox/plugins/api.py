"""The plugin contract: what a plugin is given, what it must return, and how it reports.

A plugin is pure: it gets a decoded RGB image, its validated ``Params`` and a
:class:`JobContext`, and returns an RGB image. It never chooses paths, never moves inputs
and never writes files of its own; progress, snapshots and checkpoints all go through the
context, and the outbox decides every name.

A minimal plugin (it passes the contract kit, ``discoverable`` aside until installed)::

    class Posterize(Plugin):
        name = "posterize_lite"
        version = "1.0"

        class Params(PluginParams):
            bits: int = Field(2, ge=1, le=8, strict=True)  # strict: "3" is no number

        def process(self, image, job):
            result = ImageOps.posterize(image, self.params.bits)
            job.progress(1, 1)  # one step, done: what the progress bar and kit look for
            return result

registered in its package's ``pyproject.toml``::

    [project.entry-points."stylebox.plugins"]
    posterize_lite = "my_package:Posterize"
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

from PIL import Image
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationInfo

from stylebox import bundled
from stylebox.backbone_spec import BackboneSpec
from stylebox.digests import file_digest
from stylebox.errors import (
    BadInput,
    Cancelled,
    ConfigError,
    MissingCompanion,
    PermanentFailure,
    PluginError,
    StyleboxError,
)
from stylebox.jsonvalues import not_json

__all__ = [
    "COMPANION_KINDS",
    "MANIFEST_FIELDS",
    "BadInput",
    "Cancelled",
    "Capabilities",
    "ConfigError",
    "InputFile",
    "JobContext",
    "MissingCompanion",
    "ModelFile",
    "PathValue",
    "PermanentFailure",
    "Plugin",
    "PluginError",
    "PluginParams",
    "Runtime",
    "StyleFile",
    "StyleboxError",
    "check_facts",
    "companion_index",
    "companion_kind",
    "companions_of",
    "file_digest",
    "params_digest",
    "path_argument",
    "word_or_file",
]

JsonValue = Any  # anything json.dumps accepts


class PluginParams(BaseModel):
    """Base for a plugin's ``Params``: unknown keys are refused, values cannot change, and
    a float is never NaN or infinite (``nan`` in a config would make the manifest, which
    records the params, invalid JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir") or Path.cwd())


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = value.expanduser()
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path.resolve()


def not_found_text(value: Path, missing: str, kind: str, bundled: str, names: list[str]) -> str:
    """Why ``value`` names neither a file nor a bundled one: a bare name (``nosuch``) was
    meant as a bundled one, it seems; a path (``photos/nope.png``) as a file that is not
    there, ``missing`` saying where it was looked for."""
    known = ", ".join(names) or "none"
    if not value.suffix and len(value.parts) == 1:
        return f"{value} is not a {bundled} ({known}), nor {kind} ({missing})"
    return f"{missing} (nor is it a {bundled}: {known})"


def _bundled_or_file(
    find: Callable[[str], Path | None], names: Callable[[], list[str]], kind: str, bundled_kind: str
) -> Callable[[Path, ValidationInfo], Path]:
    """A validator taking a bare name from the bundled files first, else an existing path."""

    def validate(value: Path, info: ValidationInfo) -> Path:
        if not value.suffix and len(value.parts) == 1:
            found = find(str(value))
            if found is not None:
                return found
        try:
            return _existing_file(value, info)
        except ValueError as exc:
            raise ValueError(
                not_found_text(value, str(exc), kind, f"bundled {bundled_kind}", names())
            ) from None

    return validate


def word_or_file(words: Any) -> Callable[[Any, ValidationInfo], Any]:
    """A before-validator for a param that takes one of the words of ``Literal`` type
    ``words`` or a path to an existing file, so that a value that is neither gets one
    error naming both choices (a plain union would report each branch's failure)::

        Init = Literal["content", "noise"]
        init: Annotated[Init | Path, BeforeValidator(word_or_file(Init))] = "content"
    """
    choices = get_args(words)

    def validate(value: Any, info: ValidationInfo) -> Any:
        if value in choices:
            return value
        if isinstance(value, (str, Path)) and str(value):
            try:
                return _existing_file(Path(value), info)
            except ValueError as exc:
                reason = str(exc)
        else:
            reason = "not a path"
        names = ", ".join(choices)
        raise ValueError(f"must be one of {names} or an existing file ({reason})")

    return validate


def _not_empty(what: str) -> Callable[[Any], Any]:
    """A before-validator refusing an empty path, saying to give ``what``: ``Path("")`` is
    ``.``, which the errors then named."""

    def validate(value: Any) -> Any:
        if isinstance(value, str) and not value:  # " " is a name a file may have
            raise ValueError(f"empty: give {what}")
        return value

    return validate


def path_argument(text: str) -> Path:
    """An argparse ``type`` for a path argument of a command (the host's or a plugin's):
    an empty one is refused, where ``Path("")`` would stand for the working folder."""
    if not text:
        raise argparse.ArgumentTypeError("empty: give a path")
    return Path(text)


#: A path, given as a string (TOML has no path type), also where its model is strict.
PathValue = Annotated[Path, Strict(False), BeforeValidator(_not_empty("a path"))]
#: A path to an existing file; relative paths are taken from the config file's ``root``
#: (or the working directory on the command line).
InputFile = Annotated[PathValue, AfterValidator(_existing_file)]
#: Like :data:`InputFile`, but a bare name such as ``starry_night`` picks a bundled style.
StyleFile = Annotated[
    PathValue,
    # Before-validators run last-given first: this one's words win over PathValue's.
    BeforeValidator(_not_empty("an image file or a bundled style's name")),
    AfterValidator(
        _bundled_or_file(bundled.find_style, bundled.style_names, "an image file", "style")
    ),
]
#: Like :data:`InputFile`, but a bare name picks a bundled ONNX model.
ModelFile = Annotated[
    PathValue,
    BeforeValidator(_not_empty("an ONNX file or a bundled model's name")),
    AfterValidator(
        _bundled_or_file(bundled.find_model, bundled.model_names, "an ONNX file", "model")
    ),
]


def params_digest(params: BaseModel, identity: str = "") -> str:
    """A stable hash of a params model, for cache keys and idempotency; with a plugin's
    :attr:`Plugin.identity` mixed in when it has one (without, the hash is unchanged)."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    if identity:
        canonical += "|" + identity
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Runtime:
    """What the host gives every plugin instance: the machine-level settings."""

    device: str = "auto"
    """``auto | cpu | cuda | cuda:N`` from the config; a plugin's own device param wins."""
    state_dir: Path = field(default_factory=lambda: Path("var/state"))
    backbone: BackboneSpec = field(default_factory=BackboneSpec)

    def cache_dir(self, name: str) -> Path:
        """A persistent folder for one plugin's caches, created on demand."""
        path = self.state_dir / "cache" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


#: Names that are never inputs, in any case (Windows writes ``THUMBS.DB`` as readily as
#: ``Thumbs.db``): hidden files, partial downloads, editor and Office temps, and the
#: thumbnail caches and folder settings Windows leaves in a shared folder.
IGNORED_PATTERNS = (".*", "*.part", "*.tmp", "*.crdownload", "~$*", "*.partial", "*.swp",
                    "thumbs.db", "ehthumbs.db", "desktop.ini")  # fmt: skip


def is_ignored(name: str) -> bool:
    """Whether a file of ``name`` is never an input, nor a companion of one."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in IGNORED_PATTERNS)


#: Companion files: ``<stem>.<kind>.<ext>`` beside an input belongs to the input named
#: ``<stem>.<anything>`` (``photo.mask.png`` to ``photo.jpg``). It is never a job of its own;
#: the plugin gets it through :attr:`JobContext.companions`, and it is moved with its input.
COMPANION_KINDS: tuple[str, ...] = ("mask",)


def companion_kind(name: str) -> tuple[str, str] | None:
    """``(kind, stem of its input)`` for a companion file ``name`` (``("mask", "photo")``
    for ``photo.mask.png``), or None for any other name."""
    parts = name.rsplit(".", 2)
    if len(parts) == 3 and parts[0] and parts[1] in COMPANION_KINDS:
        return parts[1], parts[0]
    return None


def companion_index(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The companion files among a folder's ``names``: by the stem of their input, by kind,
    the first by name where several have one kind (see :func:`companion_clash`)."""
    return {
        stem: {kind: found[0] for kind, found in kinds.items()}
        for stem, kinds in companion_lists(names).items()
    }


def companion_lists(names: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """Every companion file among a folder's ``names``: by the stem of its input, by kind,
    by name; not one that is never an input (``photo.mask.png.part`` as it downloads, a
    ``.tmp``: see :func:`is_ignored`)."""
    index: dict[str, dict[str, list[str]]] = {}
    for name in sorted(names):
        companion = companion_kind(name)
        if companion is not None and not is_ignored(name):
            index.setdefault(companion[1], {}).setdefault(companion[0], []).append(name)
    return index


def _names_beside(path: Path) -> list[str]:
    try:
        return [entry.name for entry in path.parent.iterdir() if entry.is_file()]
    except OSError:
        return []


def companions_of(path: Path) -> dict[str, Path]:
    """The companion files beside the input ``path`` now, by kind (the first by name where
    several have one kind)."""
    found = companion_index(_names_beside(path)).get(path.stem, {})
    return {kind: path.parent / name for kind, name in found.items() if name != path.name}


def _every_companion(path: Path) -> dict[str, list[str]]:
    """The names of every companion file beside the input ``path`` now, by kind."""
    kinds = companion_lists(_names_beside(path)).get(path.stem, {})
    return {kind: [name for name in names if name != path.name] for kind, names in kinds.items()}


def all_companions_of(path: Path) -> list[tuple[str, Path]]:
    """Every companion file beside the input ``path`` now, with its kind: two of one kind
    too (``photo.mask.png`` and ``photo.mask.webp``), which go where the input goes."""
    return [
        (kind, path.parent / name)
        for kind, names in _every_companion(path).items()
        for name in names
    ]


def companion_clash(path: Path) -> str | None:
    """Why the input ``path``'s companions cannot be told apart: two or more of one kind
    beside it, of which a job would read only one (``photo.png has 2 masks beside it:
    ...``); ``None`` where each kind has one at most."""
    for kind, names in _every_companion(path).items():
        if len(names) > 1:
            return (
                f"{path.name} has {len(names)} {kind}s beside it ({', '.join(names)}), and "
                f"which one is meant cannot be told: keep one, and drop the photo again"
            )
    return None


#: The manifest's own fields, which ``job.note`` cannot set.
MANIFEST_FIELDS = frozenset(
    {"stylebox", "input", "plugin", "params", "output", "batch", "timings", "started_at",
     "finished_at", "history", "libraries"}
)  # fmt: skip


def check_facts(facts: dict[str, JsonValue]) -> None:
    """Refuse facts (``job.note``) that would overwrite the manifest's own fields, or that
    JSON cannot hold (a set, a Path, an object: written as their ``str()``, silently)."""
    taken = sorted(MANIFEST_FIELDS.intersection(facts))
    if taken:
        raise ValueError(
            f"job.note({taken[0]}=...): {taken[0]!r} is one of the manifest's own fields "
            f"({', '.join(sorted(MANIFEST_FIELDS))}); give the fact another name"
        )
    for name, value in facts.items():
        if wrong := not_json(value):
            where, what = wrong[0]
            at = "" if where == "(the value)" else f" at {where}"
            raise TypeError(
                f"job.note({name}=...) holds {what}{at}, which the manifest (JSON) cannot "
                "hold; note text, numbers, true/false, and lists or tables of them (str() a "
                "value whose text is what you mean)"
            )


def metric_value(step: int, name: str, value: object) -> float:
    """A metric given to ``job.progress`` as a float (a numpy or torch number included);
    a TypeError naming it where it is not a number (text is not taken for one)."""
    if not isinstance(value, str | bytes):
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"progress at step {step} reported the metric {name}={value!r}, which is not a "
        "number; metrics are numbers for the manifest's history (put text in job.note())"
    )


class JobContext(ABC):
    """The runner's side of one job, as a plugin sees it."""

    checkpoint_dir: Path
    """Plugin-private; survives a crash; deleted when the job ends."""

    @property
    def companions(self) -> dict[str, Path]:
        """The input's companion files by kind (see :data:`COMPANION_KINDS`): read them
        during the job; the host moves them with the input when it ends."""
        return {}

    @property
    @abstractmethod
    def cancelled(self) -> bool:
        """True once the job must stop. Poll between steps; then checkpoint and raise
        :class:`Cancelled`."""

    @abstractmethod
    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Report that ``step`` of ``total`` is done, with any numbers worth recording.

        Every metric goes into the manifest's history with its step. One is also read by
        stylebox itself: ``eta``, the plugin's own estimate of the seconds left, for plugins
        whose steps do not all take the same time (the progress bar and ``stylebox status``
        show it in place of their linear estimate from the time per step so far; a report
        without it goes back to that estimate)."""

    @abstractmethod
    def snapshot(self, image: Image.Image, step: int) -> None:
        """Hand over an intermediate result; the outbox stores it as ``<stem>.steps/NNNN``."""

    @abstractmethod
    def note(self, **facts: JsonValue) -> None:
        """Record facts for the manifest (the device used, a cache hit...); a fact named
        as one of the manifest's own fields (:data:`MANIFEST_FIELDS`) raises ValueError.
        numpy values are written as the numbers and lists they hold; a NaN or infinite
        number as ``null``, which the log says."""

    def save_checkpoint(self, write: Callable[[Path], None]) -> None:
        """Checkpoint without waiting for the disk: ``write(folder)`` saves the plugin's
        state into ``folder`` (:attr:`checkpoint_dir`). The runner calls it on the job's
        writer thread, after everything handed over before (snapshots, progress), while
        the plugin goes on; so ``write`` must save copies of the state taken when this is
        called, not objects the plugin keeps changing. A checkpoint handed over before
        raising :class:`Cancelled` is on disk before the job is put back in the queue; one
        that cannot be written fails the job. This default writes at once."""
        write(self.checkpoint_dir)


@dataclass(frozen=True)
class Capabilities:
    """What a plugin promises beyond the basic contract; the contract kit checks each promise
    that is made and says which checks a missing promise skips."""

    deterministic: bool = False
    """Same params, same input -> the same output bytes (on CPU)."""
    batching: bool = False
    """The host may give :meth:`Plugin.process_batch` several jobs of one inbox or batch
    folder at once (up to the daemon's ``batch_size``); it returns their images in order,
    matching single runs where the plugin is deterministic. Declared by a plugin for which
    batching can pay somewhere; the host reads it from the instance, which may turn it off
    where it does not pay (the fast plugin runs one batch on a GPU, but turns batching off
    on the CPU, where a batch is no faster: the daemon then claims its jobs one by one)."""
    snapshots: bool = False
    """Intermediate images are handed to :meth:`JobContext.snapshot` while it works."""
    gpu_only: bool = False
    """Cannot run without a GPU; checks that run it are skipped on machines without one."""


ParamsT = TypeVar("ParamsT", bound=BaseModel)


class Plugin(ABC, Generic[ParamsT]):
    """Base class of every plugin.

    Subclasses set :attr:`name`, :attr:`version` and :attr:`Params`, load their models in
    ``__init__`` (one instance serves many jobs, so stay warm) and implement
    :meth:`process`.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, params: ParamsT, runtime: Runtime) -> None:
        self.params = params
        self.runtime = runtime

    @abstractmethod
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        """Return the processed image. Raise :class:`BadInput` for inputs that can never
        work, :class:`PluginError` for failures worth a retry, and
        :class:`PermanentFailure` when the job ran but gave no usable result that another
        try would give either (it fails at once)."""

    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        """The kind of device this instance's jobs run on, as it was set up (a setting of
        ``auto`` resolved): the daemon runs them under that kind's ``[daemon] workers``
        limit. A plugin that runs on a GPU overrides this to say ``"cuda"``."""
        return "cpu"

    @property
    def identity(self) -> str:
        """What decides this instance's results beyond its params (the digests of the model
        files they name, say): the host mixes it into each job's params hash, so a file
        changed in place makes new jobs rather than duplicates. Empty by default."""
        return ""

    def outdated(self) -> bool:
        """Whether the files this instance loaded have changed since it started (its
        :attr:`identity` would differ now): a reload (SIGHUP) then starts a new instance
        for its inboxes rather than keeping this one. ``False`` by default."""
        return False

    @classmethod
    def check(cls, params: BaseModel, runtime: Runtime) -> None:
        """Cheap checks of ``params`` against the files they name, without starting the
        plugin or importing anything heavy. ``stylebox config check`` reports a
        :class:`ConfigError` this raises as the config error ``serve`` would refuse to start
        with, and anything else as its inbox or batch disabled. ``__init__`` must still
        refuse the same."""

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) :meth:`process` returns for an input of ``size``; the runner
        refuses a result of any other size. Override when the plugin resizes."""
        return size

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        """Several jobs at once; override where batching pays (same-size images). One
        image per job, in order; a job that failed or was stopped on its own may get its
        error (a :class:`StyleboxError` instance) in its place, the others still ending
        done."""
        return [self.process(image, job) for image, job in zip(images, jobs, strict=True)]

    def close(self) -> None:
        """Release what ``__init__`` acquired; called when the host drops the instance."""
