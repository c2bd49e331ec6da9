"""The plugin contract, as checks that each fail with a message saying what to fix.

Every check takes a :class:`ContractCase` (the plugin, sample params, a scratch folder) and
raises :class:`ContractFailure` when the plugin breaks its rule. The pytest base class
(:class:`stylebox.testing.PluginContract`) and :func:`check_plugin` both run these.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import io
import json
import math
import numbers
import os
import subprocess
import sys
import threading
import time
import types
import typing
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError

from stylebox.errors import describe
from stylebox.images import flat_result, mode_image
from stylebox.plugins.api import (
    BadInput,
    Cancelled,
    Capabilities,
    ConfigError,
    Plugin,
    PluginError,
    Runtime,
    metric_value,
)
from stylebox.plugins.registry import GROUP, Registry, discover, params_problem
from stylebox.testing.context import RecordingContext
from stylebox.testing.sandbox import sandboxed

#: Sizes the safe-image layer can hand over: tiny, odd, and extreme aspect ratios.
ODD_SIZES: tuple[tuple[int, int], ...] = ((1, 1), (17, 33), (33, 17), (64, 48), (300, 7), (7, 300))
#: Valid images that tempt a plugin into dividing by zero or normalising nothing.
EDGE_KINDS: tuple[str, ...] = ("black", "white", "grey", "noise")
#: What :func:`sample_image` draws.
SAMPLE_KINDS: tuple[str, ...] = ("gradient", *EDGE_KINDS)


class ContractFailure(AssertionError):
    """A plugin broke a rule of the contract; the message says which and what to do."""


class ProcessFailed(ContractFailure):
    """``process`` raised (its exception the ``__cause__``): the checks that only needed
    its run to judge something else leave the failure to one check that says it."""


class SaidOnce(ContractFailure):
    """A failure of one root cause that many checks meet (a plugin whose ``close`` raises,
    sample params its model refuses): the check named :attr:`owner` fails with it; every
    other check that meets it is skipped, pointing there (13 and 16 failures of one
    message, each with its traceback, buried it)."""

    owner: ClassVar[str]
    briefly: ClassVar[str]

    def elsewhere(self, check: str) -> str | None:
        """Why ``check`` is skipped for this failure; ``None`` for its owner."""
        return None if check == self.owner else f"{self.briefly}; see {self.owner}"


class CloseFailed(SaidOnce):
    owner = "threads_stopped"
    briefly = "not judged: close() failed"


class SampleParamsRefused(SaidOnce):
    owner = "params_model"
    briefly = "not run: the kit's params are refused by the plugin's Params"


class ContractWarning(UserWarning):
    """Not a broken rule, but worth a look (a param that accepts any text, say)."""


class ContractTimeout(ContractFailure):
    """A call into the plugin did not return in time. Its thread runs on, holding what it
    holds, so the checks after it are skipped (each would wait out the limit again: eleven
    checks of two minutes for one plugin that blocks)."""


class ContractSkip(Exception):
    """A check that cannot judge this plugin, found out while running it (a result that
    is no image to compare): skipped with the message, which names the check that fails."""


#: Progress reports a plugin may still make after ``job.cancelled`` turned true: the step
#: it was in, and one more. Past that, it ignores the flag, however quick its steps are.
CANCEL_GRACE_STEPS = 2
#: Seconds any one call into the plugin (starting it, ``process``, ``close``) may take by
#: default; the built-in plugins take seconds at most at the kit's small sizes.
TIME_LIMIT = 120.0
#: The realistic size at which the observed run (writes, network, programs, stdout...) also
#: processes a picture, for what a plugin does only with big images (tiling, spilling to
#: disk), when its 64x48 run took under :data:`REALISTIC_RUN_UNDER` seconds.
REALISTIC_SIZE = (512, 384)
#: Even a plugin whose time grows with the pixels then takes about a minute at
#: :data:`REALISTIC_SIZE` (64 times the pixels), well within :data:`TIME_LIMIT`.
REALISTIC_RUN_UNDER = 1.0
#: Seconds the threads a plugin started may take to end once ``close()`` has returned; the
#: sandbox keeps watching them meanwhile.
THREAD_GRACE = 1.0
#: Seconds importing a plugin may take before the kit warns: every stylebox command that
#: lists plugins (``plugins``, ``status``, ``config check``) imports each installed one.
IMPORT_WARN_SECONDS = 3.0

left_running: list[threading.Thread] = []
"""Non-daemon threads plugins left running after ``close()`` (see ``threads_stopped``):
the interpreter would wait for them at exit for good; the pytest plugin exits without."""


def sample_image(size: tuple[int, int], kind: str = "gradient", seed: int = 0) -> Image.Image:
    """A reproducible RGB test picture: ``gradient`` (smooth colour ramps with detail),
    ``noise``, or a flat ``black``, ``white`` or ``grey`` (see :data:`SAMPLE_KINDS`)."""
    if kind not in SAMPLE_KINDS:
        raise ValueError(
            f"unknown sample image kind {kind!r}; the kinds are {', '.join(SAMPLE_KINDS)}"
        )
    width, height = size
    if kind in ("black", "white", "grey"):
        level = {"black": 0, "white": 255, "grey": 128}[kind]
        return Image.new("RGB", size, (level, level, level))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= max(width - 1, 1)
    y /= max(height - 1, 1)
    channels = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * (x + y))], axis=-1) * 220
    channels += rng.normal(0, 12, channels.shape)
    return Image.fromarray(np.clip(channels, 0, 255).astype(np.uint8), "RGB")


@dataclass
class ContractCase:
    """One plugin under test, with params that keep each ``process`` call quick."""

    plugin: str | type[Plugin[Any]]
    """An entry-point name (looked up as the daemon would) or the plugin class."""
    workdir: Path
    """A scratch folder for state, checkpoints and the sandbox."""
    params: dict[str, Any] = field(default_factory=dict)
    """Params for quick runs: tiny sizes, few steps."""
    long_params: dict[str, Any] | None = None
    """Params for a run long enough to be cancelled midway; by default ``params``."""
    invalid_params: Sequence[dict[str, Any]] = ()
    """Further params that must be refused, beyond the kit's own wrong values."""
    effective_params: Sequence[dict[str, Any]] = ()
    """Changes to ``params`` each of which must change the result (``{"bits": 4}``)."""
    device: str = "cpu"
    base_dir: Path | None = None
    """Where relative paths in params are resolved; by default the working directory."""
    cancel_within: float = 10.0
    """Seconds a plugin may keep running once its job is cancelled."""
    batch_tolerance: int = 2
    """Largest per-pixel difference allowed between a batched and a single result."""
    time_limit: float = TIME_LIMIT
    """Seconds any one call into the plugin (starting it, ``process``, ``close``) may take."""
    realistic_size: tuple[int, int] | None = REALISTIC_SIZE
    """The size the observed run also processes when the plugin is quick enough (see
    :data:`REALISTIC_RUN_UNDER`); ``None`` leaves it out."""

    def __post_init__(self) -> None:
        self.base_dir = (self.base_dir or Path.cwd()).resolve()
        self._runs = 0
        self.sample_instances: weakref.WeakSet[Plugin[Any]] = weakref.WeakSet()
        """The instances :meth:`make` started with the kit's own params."""
        self.chdirs: list[str] = []
        """Working directories the plugin left behind after a call (and the kit undid)."""

    @functools.cached_property
    def cls(self) -> type[Plugin[Any]]:
        """The plugin class; a name is looked up once, as the daemon would."""
        if not isinstance(self.plugin, str):
            return self.plugin
        registry = discover()
        # A package's plugin under a built-in's name is not loaded: by that name the checks
        # would run on the built-in, and fail on the author's params in its words.
        _refuse_ignored(registry, self.plugin)
        try:
            return registry.get(self.plugin)
        except ConfigError as exc:
            raise ContractFailure(str(exc)) from None

    @property
    def capabilities(self) -> Capabilities:
        return getattr(self.cls, "capabilities", Capabilities())

    @property
    def runtime(self) -> Runtime:
        return Runtime(device=self.device, state_dir=self.workdir / "state")

    def _sample(self, params: dict[str, Any] | None) -> bool:
        """Whether ``params`` are the kit's own (``None``: the same), as most checks use."""
        return params is None or params == self.params

    def validated(self, params: dict[str, Any] | None = None) -> BaseModel:
        refused = SampleParamsRefused if self._sample(params) else ContractFailure
        params = self.params if params is None else params
        try:
            return self.cls.Params.model_validate(params, context={"base_dir": self.base_dir})
        except ValidationError as exc:
            raise refused(
                f"the sample params {params!r} are refused by {self.cls.__name__}.Params; "
                f"fix the params given to the kit:\n{exc}"
            ) from None

    def make(self, params: dict[str, Any] | None = None) -> Plugin[Any]:
        """A fresh plugin instance, as the daemon would create it; a plugin that fails to
        start (or takes more than :attr:`time_limit`) is a :class:`ContractFailure`."""
        validated = self.validated(params)
        runtime = self.runtime
        try:
            made = _within_limit(
                self, lambda: self.cls(validated, runtime), "starting the plugin (__init__)"
            )
            if self._sample(params):
                self.sample_instances.add(made)
            return made
        except ContractFailure:
            raise
        except (Exception, SystemExit) as exc:
            raise ContractFailure(
                f"the plugin failed to start with the params {validated.model_dump()!r}: "
                f"{_describe(exc)}; __init__ must succeed with the params given to the kit"
            ) from exc

    def checkpoint_dir(self) -> Path:
        """A new job's private folder."""
        self._runs += 1
        return self.workdir / "jobs" / str(self._runs) / "checkpoint"

    def context(self) -> RecordingContext:
        return RecordingContext(self.checkpoint_dir())


def _describe(error: BaseException) -> str:
    return describe(error)


_T = TypeVar("_T")
#: The threads the kit starts to call the plugin, which are not the plugin's.
_kit_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _within_limit(case: ContractCase, call: Callable[[], _T], doing: str, on: str = "") -> _T:
    """``call()``'s result (or exception), called in a thread of its own that is given
    ``case.time_limit`` seconds: a plugin that blocks fails ("``doing`` did not return
    within N s``on``": "process", " on a 1x1 image") rather than hangs the kit. A working
    directory the call changed is noted in ``case.chdirs`` and changed back."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        _like_a_host_thread()
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="stylebox-contract-call", daemon=True)
    _kit_threads.add(thread)
    cwd = _cwd()
    thread.start()
    thread.join(case.time_limit)
    if thread.is_alive():
        raise ContractTimeout(
            f"{doing} did not return within {case.time_limit:g} s{on}; every call must end "
            "in bounded time (or give the kit a larger time_limit)"
        )
    now = _cwd()
    if now != cwd and cwd is not None:
        case.chdirs.append(now or "a folder that no longer exists")
        os.chdir(cwd)
    error = outcome.pop("error", None)
    if error is not None:
        raise error
    return outcome["result"]


def _like_a_host_thread() -> None:
    """Called first in the kit's daemon threads that call the plugin (daemons, so that a
    plugin that never returns cannot keep the tests from exiting): the threads the plugin
    starts inherit the flag, and must inherit False, as from the daemon's threads. Only the
    flag's value changes; the interpreter registered the thread as a daemon at its start."""
    threading.current_thread()._daemonic = False  # type: ignore[attr-defined]


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # a folder since removed
        return None


def _close(case: ContractCase, plugin: Plugin[Any]) -> None:
    """``plugin.close()`` within the time limit. Its failure is :class:`CloseFailed` for an
    instance of the kit's own params (``threads_stopped`` closes one too, and fails with
    it), else the check's own failure; where the check is failing already (``_close`` in a
    ``finally``), that failure goes on, this one added to it as a note."""
    pending = sys.exc_info()[1]
    try:
        _within_limit(case, plugin.close, "close()")
    except ContractTimeout:
        raise
    except Exception as exc:
        said = f"close() failed: {_describe(exc)}; release what __init__ acquired without raising"
        if pending is not None:
            pending.add_note(said)
            return
        failure = CloseFailed if plugin in case.sample_instances else ContractFailure
        raise failure(said) from exc


def _check_result(
    plugin: Plugin[Any], image: Image.Image, result: object, what: str, doing: str = "process"
) -> None:
    """The result ``doing`` (``process``, ``process_batch``) returned for ``what``."""
    if not isinstance(result, Image.Image):
        allowed = (
            " (or, for a job that failed alone, its BadInput, PluginError or Cancelled)"
            if doing == "process_batch"
            else ""
        )
        raise ContractFailure(
            f"{doing} returned {type(result).__name__} for {what}; return an Image{allowed}"
        )
    if result.mode != "RGB":
        raise ContractFailure(
            f"{doing} returned {mode_image(result.mode)} for {what}; return mode RGB "
            "(the runner re-attaches any alpha itself)"
        )
    try:
        result.tobytes()  # its pixels, not only its size: the runner still has to save it
    except Exception as exc:
        raise ContractFailure(
            f"{doing} returned an image whose pixels cannot be read for {what} "
            f"({_describe(exc)}); return an open image: do not close() the result"
        ) from None
    try:
        expected = tuple(plugin.output_size(image.size))
    except Exception as exc:
        raise ContractFailure(
            f"output_size({image.width}, {image.height}) failed: {_describe(exc)}; it must "
            "give the result's size for every input size"
        ) from exc
    if result.size != expected:
        raise ContractFailure(
            f"{doing} returned {result.width}x{result.height} for {what}, but output_size() "
            f"documents {expected[0]}x{expected[1]}; make them agree (override output_size "
            "when the plugin resizes)"
        )
    flat = flat_result(image, result)
    if flat is not None:
        raise ContractFailure(
            f"{doing} returned {flat} for {what}, which has detail: a "
            "result of (nearly) nothing but one colour is a broken one (a NaN cast to 8 "
            "bits is black; a float image cast unscaled, 0s and 1s); check the model's "
            "output before it becomes pixels"
        )


def _process(
    case: ContractCase,
    plugin: Plugin[Any],
    image: Image.Image,
    context: RecordingContext,
    what: str,
    check: bool = True,
) -> Image.Image:
    """``plugin.process`` within the time limit, a failure said as what to fix; with
    ``check``, its result and its input are checked too (else that is another check's to
    say, not each check's that runs the plugin)."""
    before = image.tobytes()
    try:
        result = _within_limit(
            case, lambda: plugin.process(image, context), "process", f" on {what}"
        )
    except ContractFailure:
        raise
    except Exception as exc:
        raise ProcessFailed(
            f"process failed on {what}: {_describe(exc)}; every RGB image of any size "
            "from 1x1 up must give a result (neither a size nor a plain colour is a reason "
            "for BadInput: upscale tiny inputs internally; a 1x1 image is flat too)"
        ) from exc
    if check and image.tobytes() != before:
        raise ContractFailure(f"process changed its input image ({what}); work on a copy")
    if check:
        _check_result(plugin, image, result, what)
    return result


# -- the checks ----------------------------------------------------------------------------


def _warn(about: type, message: str) -> None:
    """A :class:`ContractWarning` located at ``about``'s own source (the plugin's class, its
    ``Params``), where its author looks, rather than at the kit's line that noticed it."""
    try:
        filename = inspect.getsourcefile(about) or ""
        lineno = inspect.getsourcelines(about)[1]
    except (OSError, TypeError):  # defined where no source is kept (a REPL, exec)
        warnings.warn(ContractWarning(message), stacklevel=3)
        return
    module = getattr(about, "__module__", "")
    warnings.warn_explicit(ContractWarning(message), ContractWarning, filename, lineno, module)


def check_discoverable(case: ContractCase) -> None:
    """Registered in the ``stylebox.plugins`` entry-point group under a name no other
    installed package registers, with a name and a version."""
    cls = case.cls
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ContractFailure(f"{cls.__name__} has no `name`; set a class attribute name = '...'")
    seconds = _observed_import(case).seconds
    if seconds > IMPORT_WARN_SECONDS:
        _warn(
            cls,
            f"importing the plugin took {seconds:.1f} s, and every command that loads the "
            "plugins (serve, run, batch, plugins, config check) imports every installed "
            "plugin, used or not; import heavy libraries and load models in __init__",
        )
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ContractFailure(
            f"no entry point named {name!r} in the {GROUP!r} group; add to pyproject.toml:\n"
            f'[project.entry-points."{GROUP}"]\n{name} = "your_module:{cls.__name__}"\n'
            "and reinstall the package"
        )
    # As the daemon finds it: another package registering the name is a failure here too,
    # in the registry's words (which name both), not a puzzling "loads another class".
    registry = discover()
    _refuse_ignored(registry, name)
    try:
        registered = registry.get(name)
    except ConfigError as exc:
        raise ContractFailure(str(exc)) from None
    if registered is not cls:
        raise ContractFailure(
            f"entry point {name!r} loads {registry.plugins[name].source}, "
            f"not {cls.__module__}.{cls.__qualname__}"
        )
    version = registry.plugins[name].version
    if not version or version == "unknown":
        raise ContractFailure(
            f"{cls.__name__} has no version; set `version = '1.0'` or give the distribution one"
        )


def _refuse_ignored(registry: Registry, name: str) -> None:
    """A :class:`ContractFailure` in the registry's words where it left an entry point
    named ``name`` unloaded (a package registering a built-in plugin's name)."""
    for ignored in registry.ignored:
        if ignored.name == name:
            raise ContractFailure(
                f"plugin entry point {name!r} ({ignored.source}) is {ignored.reason}"
            )


def check_params_model(case: ContractCase) -> None:
    """``Params`` is a pydantic model with a JSON schema, and the sample params validate."""
    if (problem := params_problem(case.cls)) is not None:
        raise ContractFailure(problem)
    params = case.cls.Params
    try:
        schema = params.model_json_schema()
        json.dumps(schema)
    except Exception as exc:
        raise ContractFailure(f"{params.__name__} has no JSON schema: {_describe(exc)}") from exc
    if schema.get("type") != "object":
        raise ContractFailure(f"{params.__name__}'s JSON schema is not an object: {schema!r}")
    case.validated()


def check_params_reject_unknown(case: ContractCase) -> None:
    """An unknown key (a misspelling in someone's config) is refused, naming the key."""
    key = "no_such_param_xyz"
    try:
        case.cls.Params.model_validate({**case.params, key: 1}, context={"base_dir": case.base_dir})
    except ValidationError as exc:
        if not any(key in map(str, error["loc"]) for error in exc.errors()):
            raise ContractFailure(
                f"the error for unknown key {key!r} does not name it:\n{exc}"
            ) from None
        return
    raise ContractFailure(
        f"{case.cls.Params.__name__} accepted the unknown key {key!r}; misspelt settings would "
        "be silently ignored. Subclass PluginParams or set model_config extra='forbid'"
    )


#: Values a TOML file can hold that fit no sensibly typed field; a field must refuse one.
_WRONG_VALUES: tuple[Any, ...] = ({"wrong": [1]}, [{"wrong": 1}], "\x00not a value", -1e300)


def check_params_reject_bad_values(case: ContractCase) -> None:
    """Every field refuses wrong values with an error naming it; so do ``invalid_params``."""
    model = case.cls.Params
    context = {"base_dir": case.base_dir}
    for name, info in model.model_fields.items():
        key = info.alias or name
        named = False
        for value in _WRONG_VALUES:
            try:
                model.model_validate({**case.params, key: value}, context=context)
            except ValidationError as exc:
                named = named or any(error["loc"][:1] == (key,) for error in exc.errors())
                if not named:
                    raise ContractFailure(
                        f"the error for a wrong {key!r} does not name the field:\n{exc}"
                    ) from None
        if not named:
            raise ContractFailure(
                f"{model.__name__}.{key} accepts anything ({', '.join(map(repr, _WRONG_VALUES))}); "
                "give it a real type and constraints"
            )
        _check_not_finite_refused(case, model, name, key)
    for params in case.invalid_params:
        try:
            model.model_validate(params, context=context)
        except ValidationError:
            continue
        raise ContractFailure(
            f"{model.__name__} accepted the invalid params {params!r}; declare the range on "
            "the field (Field(ge=..., le=..., gt=...)) or refuse it in a validator"
        )
    _warn_free_text(model, case)
    _warn_converted_text(model, case)


#: Floats a TOML file can hold (``nan``, ``inf``) that JSON cannot: the manifest records
#: the params, and one of these makes it invalid JSON.
_NOT_FINITE: tuple[float, ...] = (math.nan, math.inf, -math.inf)


def _check_not_finite_refused(
    case: ContractCase, model: type[BaseModel], name: str, key: str
) -> None:
    """A float field (or a list of floats) refuses NaN and infinity, unless the field itself
    says ``allow_inf_nan=True``."""
    info = model.model_fields[name]
    if any(getattr(meta, "allow_inf_nan", None) is True for meta in info.metadata):
        return  # allowed explicitly, field by field
    try:
        schema = model.model_json_schema().get("properties", {}).get(key, {})
    except Exception:
        return  # check_params_model says why
    variants = schema.get("anyOf", [schema])
    shapes: list[Callable[[float], Any]] = []
    if any(v.get("type") == "number" for v in variants):
        shapes.append(lambda value: value)
    if any(
        v.get("type") == "array"
        and any(
            i.get("type") == "number" for i in v.get("items", {}).get("anyOf", [v.get("items", {})])
        )
        for v in variants
    ):
        shapes.append(lambda value: [value])
    for shape in shapes:
        for value in _NOT_FINITE:
            try:
                model.model_validate(
                    {**case.params, key: shape(value)}, context={"base_dir": case.base_dir}
                )
            except ValidationError:
                continue
            raise ContractFailure(
                f"{model.__name__}.{key} accepts {shape(value)!r}; NaN and infinity make the "
                "manifest, which records the params, invalid JSON: subclass PluginParams "
                "(which refuses them) or set model_config allow_inf_nan=False"
            )


def _warn_free_text(model: type[BaseModel], case: ContractCase) -> None:
    """Warn of string fields that take any text (a colour as a free ``str``, say) when no
    ``invalid_params`` entry shows what they refuse: a typo in a config would pass."""
    tried = {key for params in case.invalid_params for key in params}
    properties = model.model_json_schema().get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        schema = properties.get(key, {})
        variants = schema.get("anyOf", [schema])
        free = [
            v for v in variants
            if v.get("type") == "string"
            and not {"enum", "const", "pattern", "format", "maxLength"} & v.keys()
        ]  # fmt: skip
        if free and key not in tried:
            _warn(
                model,
                f"{model.__name__}.{key} accepts any text; constrain it (a Literal, a "
                "pattern, a max_length) or give invalid_params with values it refuses",
            )


def _warn_converted_text(model: type[BaseModel], case: ContractCase) -> None:
    """Warn of number and true/false fields that take text and convert it (pydantic's lax
    mode): a config's ``bits = "3"`` would pass unsaid, where the built-in plugins refuse a
    value of another type."""
    params = case.validated()
    context = {"base_dir": case.base_dir}
    converted = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        value = getattr(params, name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            continue
        try:
            taken = model.model_validate({**case.params, key: text}, context=context)
        except ValidationError:
            continue
        if not isinstance(getattr(taken, name), str):  # kept as text: a field that takes text
            converted.append(f"{key} = {text!r}")
    if converted:
        _warn(
            model,
            f"{model.__name__} converts text to numbers or true/false ({', '.join(converted)} "
            "passed), so a wrong type in a config passes unsaid; refuse it as the built-in "
            "plugins do: Field(strict=True) on those fields, or model_config = "
            "ConfigDict(strict=True) where no field needs converting (an Enum, a tuple; "
            "stylebox.plugins.api.PathValue for paths)",
        )


def check_params_json_roundtrip(case: ContractCase) -> None:
    """Params survive JSON (the journal and manifests store them that way) unchanged."""
    params = case.validated()
    text = params.model_dump_json()
    try:
        again = type(params).model_validate_json(text, context={"base_dir": case.base_dir})
    except ValidationError as exc:
        raise ContractFailure(f"params dumped to JSON do not load again: {text}\n{exc}") from None
    if again != params:
        raise ContractFailure(f"params changed through JSON: {params!r} became {again!r}")


def _choices(annotation: Any) -> list[Any]:
    """The values a param's type offers as a choice: a ``Literal``'s, a ``bool``'s (inside
    ``Optional``, unions and ``Annotated`` too)."""
    if annotation is bool:
        return [False, True]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin is typing.Annotated:
        return _choices(args[0])
    if origin in (typing.Union, types.UnionType):
        return [value for arg in args for value in _choices(arg)]
    return []


def check_each_choice(case: ContractCase) -> None:
    """The plugin starts and processes a 64x48 picture with each value of each choice (a
    ``Literal`` or ``bool`` param) in turn, the kit's params otherwise; and starts with
    each param given to the kit left at its default. A value the params accept must work,
    or be refused by the model or with a one-line :class:`ConfigError` at start (a CUDA
    device on a machine without one, say); the kit's params alone would never show it."""
    model = case.cls.Params
    chosen = case.validated()
    _close(case, case.make())  # the kit's params first: one that fails there says so
    context = {"base_dir": case.base_dir}
    variants: list[tuple[str, dict[str, Any], bool]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        for value in _choices(info.annotation):
            if value != getattr(chosen, name):
                variants.append((f"{key}={value!r}", {**case.params, key: value}, True))
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    for key in case.params:
        if key in fields and not fields[key].is_required():
            rest = {k: v for k, v in case.params.items() if k != key}
            variants.append((f"{key} left at its default", rest, False))  # may be slow to run
    for what, params, run in variants:
        try:
            validated = model.model_validate(params, context=context)
        except ValidationError:
            continue  # a combination the model refuses, saying why
        _try_choice(case, what, validated, run)


def _try_choice(case: ContractCase, what: str, params: BaseModel, run: bool) -> None:
    """Start the plugin with ``params`` (``what`` says how they differ from the kit's)
    and, with ``run``, process a 64x48 picture; see :func:`check_each_choice`."""
    runtime = case.runtime
    advice = "a value the params accept must work, or be refused by the model, or with "
    try:
        plugin = _within_limit(case, lambda: case.cls(params, runtime), f"starting with {what}")
    except ConfigError:
        return  # refused at start, in one line
    except ContractFailure:
        raise
    except Exception as exc:
        raise ContractFailure(
            f"with {what}, the plugin failed to start: {_describe(exc)}; {advice}ConfigError"
        ) from exc
    try:
        if run:
            image, job = sample_image((64, 48)), case.context()
            try:
                _within_limit(case, lambda: plugin.process(image, job), f"process with {what}")
            except ContractFailure:
                raise
            except Exception as exc:
                raise ContractFailure(
                    f"with {what}, process failed on a 64x48 image: {_describe(exc)}; "
                    f"{advice}ConfigError at start"
                ) from exc
    finally:
        _close(case, plugin)


def check_params_take_effect(case: ContractCase) -> None:
    """Each entry of ``effective_params``, laid over the kit's params, changes the result
    for a 64x48 picture: a plugin that ignores a param it documents (never reads
    ``self.params.bits``) would pass every other check."""
    if not case.effective_params:
        raise ContractSkip(
            "no effective_params given: list changes to params that must change the picture "
            "(effective_params = [{'<param>': <value>}]) to have the kit prove that process "
            "reads them"
        )
    # Each entry is checked before anything runs: a refused one is named as such.
    for changes in case.effective_params:
        try:
            changed = case.validated({**case.params, **changes})
        except ContractFailure as exc:
            why = str(exc).partition("\n")[2]  # pydantic's own words, as for the params
            raise ContractFailure(
                f"effective_params {changes!r} are refused by {case.cls.__name__}.Params; "
                f"give values the params accept:\n{why}"
            ) from None
        if changed == case.validated():
            raise ContractFailure(
                f"effective_params {changes!r} leave the kit's params {case.params!r} as they "
                "are; give each param a value other than its value there"
            )
    image = sample_image((64, 48))

    def result_with(params: dict[str, Any], what: str) -> bytes:
        plugin = case.make(params)
        try:
            result = _process(case, plugin, image, case.context(), what, False)
        finally:
            _close(case, plugin)
        problem = _unreadable(result)
        if problem is not None:  # accepts_image_kinds fails it, saying so; once is enough
            raise ContractSkip(
                f"process returned {problem}, so there is nothing to compare; see "
                "accepts_image_kinds"
            )
        return result.tobytes()

    base = result_with(case.params, "a 64x48 image with the kit's params")
    if not case.capabilities.deterministic:
        again = result_with(case.params, "a 64x48 image with the kit's params, again")
        if again != base:
            raise ContractSkip(
                "the kit's params gave other pixels at a second run (the plugin does not "
                "declare deterministic=True), so a change cannot be told from chance"
            )
    for changes in case.effective_params:
        shown = ", ".join(f"{key}={value!r}" for key, value in changes.items())
        if result_with({**case.params, **changes}, f"a 64x48 image with {shown}") == base:
            raise ContractFailure(
                f"with {shown} (effective_params) process returned the same pixels for a "
                f"64x48 picture as with the kit's params {case.params!r}: process may ignore "
                f"{', '.join(changes)} (read each param from self.params); if it shows only "
                "on larger pictures or longer runs, list another change"
            )


def check_accepts_image_kinds(case: ContractCase) -> None:
    """RGB images of every odd size come back RGB, of the size ``output_size`` documents,
    with readable pixels, and the input is left untouched."""
    plugin = case.make()
    try:
        for size in ODD_SIZES:
            what = f"a {size[0]}x{size[1]} image"
            _process(case, plugin, sample_image(size), case.context(), what)
    finally:
        _close(case, plugin)


def check_device_kind(case: ContractCase) -> None:
    """``device_kind`` says ``"cpu"`` or ``"cuda"``: the daemon disables the inboxes of a
    plugin that says anything else, since it would run under no ``workers`` limit."""
    plugin = case.make()
    try:
        try:
            kind = plugin.device_kind
        except Exception as exc:
            raise ContractFailure(
                f"reading device_kind raised {_describe(exc)}; return 'cpu' or 'cuda'"
            ) from exc
    finally:
        _close(case, plugin)
    if not isinstance(kind, str) or kind not in ("cpu", "cuda"):
        raise ContractFailure(
            f"device_kind is {kind!r}; return 'cpu' or 'cuda' (the kind of device the jobs "
            "run on): the daemon disables the plugin's inboxes for any other value"
        )


def check_check_agrees(case: ContractCase) -> None:
    """``check(params, runtime)``, which ``stylebox config check`` calls, accepts the params
    ``__init__`` starts with: where the two disagree, ``config check`` says an inbox is
    disabled (or its config refused) that ``serve`` serves."""
    validated = case.validated()
    _close(case, case.make())  # __init__ starts with them (its failure is said there)
    try:
        _within_limit(case, lambda: case.cls.check(validated, case.runtime), "check()")
    except ContractFailure:
        raise
    except Exception as exc:
        said = "the config refused" if isinstance(exc, ConfigError) else "its inbox disabled"
        raise ContractFailure(
            f"check() refused the params __init__ starts with: {_describe(exc)}; `stylebox "
            f"config check` would say {said}, while `serve` runs it: make check() and "
            "__init__ refuse the same"
        ) from exc


def check_errors_classified(case: ContractCase) -> None:
    """Flat and noisy images either work or fail as ``BadInput``/``PluginError`` with a
    reason: the daemon moves a ``BadInput`` aside at once and retries a ``PluginError``."""
    plugin = case.make()
    try:
        for kind in EDGE_KINDS:
            what = f"a {kind} 48x40 image"
            image = sample_image((48, 40), kind)
            context = case.context()
            try:
                result = _within_limit(
                    case, lambda i=image, c=context: plugin.process(i, c), "process", f" on {what}"
                )
            except ContractFailure:
                raise
            except (BadInput, PluginError) as exc:
                if not str(exc).strip():
                    raise ContractFailure(
                        f"{type(exc).__name__} on {what} without a reason"
                    ) from None
                continue
            except Exception as exc:
                raise ContractFailure(
                    f"on {what}, process raised {_describe(exc)}; raise BadInput(reason) for "
                    "inputs that can never work and PluginError for faults worth a retry"
                ) from exc
            _check_result(plugin, image, result, what)
    finally:
        _close(case, plugin)


def _one_run(case: ContractCase) -> RecordingContext:
    """Process one 64x48 picture with a fresh instance; what the context recorded (the
    result is accepts_image_kinds' to judge)."""
    plugin = case.make()
    context = case.context()
    try:
        _process(case, plugin, sample_image((64, 48)), context, "a 64x48 image", False)
    finally:
        _close(case, plugin)
    return context


def check_progress_through_context(case: ContractCase) -> None:
    """Progress goes to the job context: steps within 0..total, ending at total; metrics
    are finite numbers."""
    context = _one_run(case)
    reports = context.progress_reports
    if not reports:
        raise ContractFailure("process reported no progress; call job.progress(step, total)")
    for step, total, metrics in reports:
        whole = all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in (step, total)
        )  # numpy's integers too, as the runner takes them
        if not whole:  # the history keeps whole steps: 0.5 of 1.0 was recorded as step 0
            raise ContractFailure(
                f"progress({step!r}, {total!r}): step and total are whole numbers (int)"
            )
        if not (total > 0 and 0 <= step <= total):
            raise ContractFailure(
                f"progress({step}, {total}) is out of range: 0 <= step <= total, and total > 0"
            )
        for name, value in metrics.items():
            try:
                metric_value(step, name, value)
            except TypeError as exc:
                raise ContractFailure(str(exc)) from None
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise ContractFailure(f"progress at step {step} reported non-finite metrics {bad}")
    step, total, _ = reports[-1]
    if step != total:
        raise ContractFailure(f"the last progress report is {step}/{total}; report completion")


def check_snapshots(case: ContractCase) -> None:
    """A plugin declaring ``snapshots`` hands RGB snapshots to the context, in step order."""
    try:
        context = _one_run(case)
    except ProcessFailed:  # the same run as progress_through_context's, which fails
        raise ContractSkip(
            "process failed on a 64x48 image, so it sent no snapshot to judge; see "
            "progress_through_context"
        ) from None
    if not context.snapshots:
        raise ContractFailure(
            "capabilities say snapshots=True but process sent none to job.snapshot(); "
            "send some, or declare snapshots=False"
        )
    steps = [step for step, _ in context.snapshots]
    if steps != sorted(steps):
        raise ContractFailure(f"snapshot steps are out of order: {steps}")
    for step, picture in context.snapshots:
        if not isinstance(picture, Image.Image) or picture.mode != "RGB":
            raise ContractFailure(f"the snapshot at step {step} is not an RGB image: {picture!r}")


class _Printed(io.TextIOBase):
    """Stands in for ``sys.stdout``: keeps what is written, with when (``phase``)."""

    def __init__(self) -> None:
        self.phase = ""
        self.printed: list[tuple[str, str]] = []
        self.buffer = _PrintedBytes(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if text:
            self.printed.append((self.phase, str(text)))
        return len(text)

    def first(self) -> tuple[str, str] | None:
        """The first phase that printed something, and what it printed (one line)."""
        for phase, _ in self.printed:
            text = "".join(t for p, t in self.printed if p == phase).strip()
            if text:
                line = text.splitlines()[0]
                return phase, line if len(line) <= 80 else line[:77] + "..."
        return None


class _PrintedBytes(io.RawIOBase):
    """``sys.stdout.buffer`` of :class:`_Printed`."""

    def __init__(self, text: _Printed) -> None:
        self.text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)


@dataclass
class Observation:
    """What creating, running and closing the plugin (and importing it) did."""

    writes: list[str]
    network: list[str]
    processes: list[str]
    stray: list[str]
    """Files that appeared in the working directory."""
    chdirs: list[str]
    printed: tuple[str, str] | None
    """When the plugin first printed to stdout, and what."""
    threads: list[threading.Thread]
    """Threads the plugin started that were still running after close() and a grace."""
    broke_off: ProcessFailed | None = None
    """How ``process`` failed, when it did: what it did up to then was still watched."""

    def watched_whole(self) -> None:
        """Each check of the run judges what it saw; once the run broke off, one that saw
        nothing wrong saw only part of it: it skips, and ``writes_only_where_given`` fails
        with why (ten checks failed with the one message)."""
        if self.broke_off is not None:
            raise ContractSkip(
                "not watched to its end: process failed in the observed run; see "
                "writes_only_where_given"
            )


def _observed_run(case: ContractCase) -> Observation:
    """Import the plugin (in a program of its own), then create it, run it on a 64x48
    picture (and at :attr:`ContractCase.realistic_size` where quick enough) and close it in a
    sandbox, watching until the threads it started end (at most :data:`THREAD_GRACE` s
    after close() returned)."""
    imported = _observed_import(case)
    contexts = [case.context(), case.context()]
    cache = case.runtime.state_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)  # the host's state dir exists already
    allowed = [context.checkpoint_dir for context in contexts] + [cache]
    before = set(threading.enumerate())
    printed = _Printed()
    with sandboxed(allowed, case.workdir / "sandbox") as box, contextlib.redirect_stdout(printed):
        printed.phase = "while starting (__init__)"
        plugin = case.make()
        broke_off = None
        try:
            printed.phase = "in process"
            started = time.monotonic()
            # What it returns is accepts_image_kinds' to judge: watched here is what it does.
            _process(case, plugin, sample_image((64, 48)), contexts[0], "a 64x48 image", False)
            quick = time.monotonic() - started < REALISTIC_RUN_UNDER
            if case.realistic_size is not None and quick:
                width, height = case.realistic_size
                image = sample_image(case.realistic_size)
                _process(case, plugin, image, contexts[1], f"a {width}x{height} image", False)
        except ProcessFailed as exc:  # what it did until then is still judged
            broke_off = exc
        finally:
            printed.phase = "in close()"
            _close(case, plugin)
        printed.phase = "from a thread after close()"
        threads = _await_threads(before, THREAD_GRACE)
        left_running.extend(thread for thread in threads if not thread.daemon)
    chdirs = list(dict.fromkeys(box.chdirs + case.chdirs))
    return Observation(
        writes=[f"(at import) {w}" for w in imported.writes] + box.writes,
        network=[f"(at import) {n}" for n in imported.network] + box.network,
        processes=[f"(at import) {p}" for p in imported.processes] + box.processes,
        stray=[f"(at import) {s}" for s in imported.stray] + box.stray_files(),
        chdirs=[f"{c} (at import)" for c in imported.chdirs] + chdirs,
        printed=imported.printed or printed.first(),
        threads=threads,
        broke_off=broke_off,
    )


def _await_threads(before: set[threading.Thread], grace: float) -> list[threading.Thread]:
    """The threads started since ``before`` (the kit's own and native ones aside) that are
    still running after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        started = [
            thread
            for thread in threading.enumerate()
            if thread not in before
            and thread not in _kit_threads
            and not isinstance(thread, threading._DummyThread)  # native: nothing to join
        ]
        left = deadline - time.monotonic()
        if not started or left <= 0:
            return started
        started[0].join(min(left, 0.05))


@dataclass(frozen=True)
class _Imported:
    writes: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    chdirs: list[str] = field(default_factory=list)
    printed: tuple[str, str] | None = None
    seconds: float = 0.0
    """How long the import took."""


#: What importing a plugin's module did, by (what was imported, sys.path): one import each.
_imports: dict[tuple[str, str, tuple[str, ...]], _Imported] = {}

#: Imports the plugin in a sandbox and writes what it saw as JSON (run by
#: :func:`_observed_import` in a fresh interpreter, where the module is not imported yet).
_IMPORT_SCRIPT = """
import contextlib, io, json, os, sys, time
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from stylebox.testing.sandbox import sandboxed

kind, target, group, workdir, report = sys.argv[1:]
printed = io.StringIO()
with sandboxed([], Path(workdir)) as box, contextlib.redirect_stdout(printed):
    began = time.perf_counter()
    try:
        if kind == "entry-point":
            for entry_point in entry_points(group=group, name=target):
                entry_point.load()
        else:
            import_module(target)
    except BaseException:
        pass  # not loading is the discoverable check's to say
    seconds = time.perf_counter() - began
Path(report).write_text(json.dumps({
    "seconds": seconds,
    "writes": box.writes, "network": box.network, "processes": box.processes,
    "stray": box.stray_files(), "chdirs": box.chdirs, "printed": printed.getvalue(),
}))
"""


def _observed_import(case: ContractCase) -> _Imported:
    """What importing the plugin's module did: the daemon imports every plugin it finds
    (``stylebox status`` too), outside any job. Observed once per module and process."""
    if isinstance(case.plugin, str):
        kind, target = "entry-point", case.plugin
    else:
        kind, target = "module", case.plugin.__module__
        if target == "__main__":
            return _Imported()  # not importable by name
    key = (kind, target, tuple(sys.path))
    if key in _imports:
        return _imports[key]
    folder = case.workdir / "import"
    workdir, report = folder / "sandbox", folder / "report.json"
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _IMPORT_SCRIPT, kind, target, GROUP, str(workdir), str(report)],
            cwd=workdir,
            env=environment,
            capture_output=True,
            timeout=case.time_limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ContractFailure(
            f"importing the plugin ({target}) did not return within {case.time_limit:g} s; "
            "keep the import light (load models in __init__)"
        ) from None
    try:
        seen = json.loads(report.read_text())
    except (OSError, ValueError):
        return _Imported()  # the import broke the interpreter: discoverable says more
    native = completed.stdout.decode("utf-8", "replace").strip()
    text = (seen["printed"].strip() or native).strip()
    line = text.splitlines()[0] if text else ""
    imported = _Imported(
        writes=seen["writes"],
        network=seen["network"],
        processes=seen["processes"],
        stray=seen["stray"],
        chdirs=seen["chdirs"],
        printed=("at import", line if len(line) <= 80 else line[:77] + "...") if line else None,
        seconds=seen["seconds"],
    )
    _imports[key] = imported
    return imported


def check_writes_only_where_given(case: ContractCase) -> None:
    """No file is written except in the job's checkpoint dir and the runtime's cache dirs,
    while importing, creating, running (also on a realistically sized picture) or closing
    the plugin, nor by its threads until they end; results and snapshots reach the disk only
    through the outbox."""
    seen = _observed_run(case)
    if seen.writes or seen.stray:
        # Each once, however many runs wrote it; a file left in the working directory that
        # an open above names is that write's.
        left = [s for s in seen.stray if not any(w.endswith(f"/{s}") for w in seen.writes)]
        found = seen.writes + [f"(in the working directory) {s}" for s in left]
        listed = "\n  ".join(dict.fromkeys(found))
        # The run's error too, where it broke off: the checks that skip point here.
        also = f"\nand then {seen.broke_off}" if seen.broke_off is not None else ""
        raise ContractFailure(
            "the plugin wrote outside job.checkpoint_dir and runtime.cache_dir():\n  "
            f"{listed}\nkeep caches under runtime.cache_dir(name) (from __init__, not at "
            "import) and a job's own files under job.checkpoint_dir; hand images to "
            f"job.snapshot() and return the result instead of saving them{also}"
        )
    if seen.broke_off is not None:  # said here once, for every check of the run
        raise seen.broke_off


def check_no_network(case: ContractCase) -> None:
    """Neither importing, creating nor running the plugin reaches for the network (daemons
    run offline; models and weights must come installed)."""
    seen = _observed_run(case)
    network = seen.network
    if network:
        raise ContractFailure(
            "the plugin tried to use the network:\n  "
            + "\n  ".join(network)
            + "\nship models with the package or take their path as a param"
        )
    seen.watched_whole()


def check_no_programs(case: ContractCase) -> None:
    """Neither importing, creating nor running the plugin starts a program (``os.fork`` and
    ``multiprocessing`` included): what a program writes or sends is out of the kit's sight
    (and of the daemon's promise to write only through the outbox)."""
    seen = _observed_run(case)
    processes = seen.processes
    if processes:
        raise ContractFailure(
            "the plugin started a program:\n  "
            + "\n  ".join(processes)
            + "\ndo the work in Python (or a library's native code) within process()"
        )
    seen.watched_whole()


def check_no_stdout(case: ContractCase) -> None:
    """Nothing is printed to ``sys.stdout`` while importing, creating, running or closing
    the plugin: standard output carries the CLI's answers (``stylebox status --json``)."""
    seen = _observed_run(case)
    printed = seen.printed
    if printed is not None:
        phase, text = printed
        raise ContractFailure(
            f"the plugin printed to stdout {phase}: {text!r}; use logging (stdout carries "
            "the CLI's answers, such as `stylebox status --json`)"
        )
    seen.watched_whole()


def check_keeps_working_directory(case: ContractCase) -> None:
    """Neither importing, creating nor running the plugin changes the working directory,
    which is the whole process's: the daemon resolves relative paths against it."""
    seen = _observed_run(case)
    chdirs = seen.chdirs
    if chdirs:
        raise ContractFailure(
            f"the plugin changed the working directory to {chdirs[0]}; the daemon resolves "
            "relative paths against it: leave it alone and use absolute paths"
        )
    seen.watched_whole()


def check_threads_stopped(case: ContractCase) -> None:
    """Threads the plugin starts have ended by the time ``close()`` has returned (give or
    take :data:`THREAD_GRACE` s): a non-daemon thread left running keeps the daemon (and
    pytest) from ever exiting, and each new instance would leave one more."""
    seen = _observed_run(case)
    threads = seen.threads
    if threads:
        thread = threads[0]
        target = getattr(thread, "_target", None)
        running = f" running {target.__qualname__}" if hasattr(target, "__qualname__") else ""
        kind = "a daemon thread" if thread.daemon else "a non-daemon thread"
        harm = (
            "each instance the daemon starts, at every reload, would leave one more, working "
            "on after its plugin was closed"
            if thread.daemon
            else "a non-daemon thread keeps the daemon and pytest from ever exiting"
        )
        others = f" (and {len(threads) - 1} more)" if len(threads) > 1 else ""
        raise ContractFailure(
            f"the plugin left {kind}, {thread.name!r}{running}{others}, running "
            f"{THREAD_GRACE:g} s after close() returned; stop and join its threads in close() "
            f"({harm})"
        )
    seen.watched_whole()


class _CancellingContext(RecordingContext):
    """Cancels at the first progress report or after ``delay`` seconds, and notes when."""

    def __init__(self, checkpoint_dir: Path, delay: float) -> None:
        super().__init__(checkpoint_dir)
        self.cancelled_at: float | None = None
        self.cancelled_step: tuple[int, int] | None = None
        """The last progress report (step, total) when the flag turned true."""
        self.after_cancel = 0
        """Progress reports made after the flag turned true."""
        self._timer = threading.Timer(delay, self.cancel)
        self._timer.daemon = True
        _kit_threads.add(self._timer)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.cancel()

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            reports = self.progress_reports
            self.cancelled_step = reports[-1][:2] if reports else None
        super().cancel()

    def progress(self, step: int, total: int, **metrics: float) -> None:
        super().progress(step, total, **metrics)
        if self.cancelled_at is not None:
            self.after_cancel += 1
        self.cancel()


def check_cancellation(case: ContractCase) -> None:
    """Once ``job.cancelled`` turns true, ``process`` raises ``Cancelled`` (or has finished:
    its last progress report at its total) within ``cancel_within`` seconds, and within
    :data:`CANCEL_GRACE_STEPS` progress reports: a plugin that ignores the flag is caught
    even when its run is short, and one that stops but returns its unfinished image too."""
    plugin = case.make(case.long_params)
    context = _CancellingContext(case.checkpoint_dir(), delay=0.5)
    outcome: dict[str, Any] = {}

    def work() -> None:
        _like_a_host_thread()
        try:
            outcome["result"] = plugin.process(sample_image((64, 48)), context)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="contract-cancellation", daemon=True)
    _kit_threads.add(thread)
    context.start()
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        if context.cancelled_at and time.monotonic() - context.cancelled_at > case.cancel_within:
            raise ContractFailure(
                f"process kept running {case.cancel_within:g} s after job.cancelled turned true; "
                "poll job.cancelled between steps and raise Cancelled"
            )
    context.stop()
    _close(case, plugin)
    error = outcome.get("error")
    if context.after_cancel > CANCEL_GRACE_STEPS:
        raise ContractFailure(
            f"process went on for {context.after_cancel} more steps after job.cancelled "
            "turned true; poll job.cancelled between steps and raise Cancelled"
        )
    if error is not None and not isinstance(error, Cancelled):
        raise ContractFailure(
            f"a cancelled process raised {_describe(error)}; raise stylebox.plugins.api.Cancelled"
        ) from error
    reports = context.progress_reports
    if "result" in outcome and context.cancelled_at is not None and reports:
        step, total, _ = reports[-1]
        if step < total:
            at = context.cancelled_step or (0, total)
            raise ContractFailure(
                f"process returned a result after job.cancelled turned true at step {at[0]} "
                f"of {at[1]} (its last progress report: {step}/{total}); raise Cancelled after "
                "checkpointing: the daemon takes such a result for a stopped job"
            )


def check_deterministic(case: ContractCase) -> None:
    """Same params, same input: the same pixels, from the same and from a new instance."""
    image = sample_image((64, 48))  # progress_through_context's: see below
    outputs = []
    first, second = case.make(), None
    try:
        second = case.make()
        for run, plugin in enumerate((first, first, second)):
            # Each run on its own copy: a plugin that changes its input in place gives
            # other pixels the next time, which is accepts_image_kinds's to say, not this.
            try:
                result = _process(
                    case, plugin, image.copy(), case.context(), "a 64x48 image", False
                )
            except ProcessFailed:
                if run > 0:  # a second run or instance failed: that is this check's to say
                    raise
                # A first run, on the picture progress_through_context runs on a new
                # instance too: that check fails with it; once is enough.
                raise ContractSkip(
                    "process failed on a 64x48 image, so there is nothing to compare; see "
                    "progress_through_context"
                ) from None
            problem = _unreadable(result)
            if problem is not None:  # accepts_image_kinds fails it, saying so; once is enough
                raise ContractSkip(
                    f"process returned {problem}, so there is nothing to compare; see "
                    "accepts_image_kinds"
                )
            outputs.append(result.tobytes())
    finally:
        _close(case, first)
        if second is not None:
            _close(case, second)
    if len(set(outputs)) != 1:
        same_instance = outputs[0] == outputs[1]
        raise ContractFailure(
            "capabilities say deterministic=True but the same input gave different pixels "
            + ("from a new instance" if same_instance else "twice from one instance")
            + "; seed every random generator from the params, or declare deterministic=False"
        )


def _unreadable(result: object) -> str | None:
    """What ``result`` is when it is not an image whose pixels can be read, else ``None``."""
    if not isinstance(result, Image.Image):
        return f"{_kind_of(result)}, not an image"
    try:
        result.tobytes()
    except Exception as exc:
        return f"an image whose pixels cannot be read ({_describe(exc)})"
    return None


def _kind_of(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def check_batch(case: ContractCase) -> None:
    """``process_batch`` returns one right-sized RGB image per input, in order (matching
    single runs where deterministic), and reports each job's progress to its own context."""
    plugin = case.make()
    # Of one size, as the host groups them: a plugin may stack them into one array.
    images = [sample_image((40, 32), seed=s) for s in (1, 2, 3, 4)]
    contexts = [case.context() for _ in images]
    given = [image.copy() for image in images]  # each run on its own copies, as below
    try:
        try:
            results = _within_limit(
                case,
                lambda: plugin.process_batch(given, contexts),
                "process_batch",
                f" on {len(images)} images of 40x32",
            )
        except ContractFailure:
            raise
        except Exception as exc:
            raise ContractFailure(
                f"process_batch failed on {len(images)} images of 40x32: {_describe(exc)}; "
                "a job that fails alone gets its error (BadInput, PluginError, Cancelled) "
                "in its place in the list, and the others their images"
            ) from exc
        singles = [
            _process(case, plugin, image.copy(), case.context(), "a batch image", False)
            for image in images
        ]
    finally:
        _close(case, plugin)
    for index, (image, copy) in enumerate(zip(images, given, strict=True)):
        if copy.tobytes() != image.tobytes():
            raise ContractFailure(
                f"process_batch changed its input image (batch item {index}); work on a copy"
            )
    # Counted, not shown: a list of Image reprs says nothing of what is wrong.
    if not isinstance(results, list):
        raise ContractFailure(
            f"process_batch returned {_kind_of(results)} for {len(images)} images; "
            "return a list of one image per job, in order"
        )
    if len(results) != len(images):
        counted = f"{len(results)} result" + ("" if len(results) == 1 else "s")
        raise ContractFailure(
            f"process_batch returned {counted} for {len(images)} images; return one per job, "
            "in order"
        )
    for index, (image, result, single, context) in enumerate(
        zip(images, results, singles, contexts, strict=True)
    ):
        _check_result(plugin, image, result, f"batch item {index}", "process_batch")
        if not context.progress_reports:
            raise ContractFailure(f"batch item {index}'s job context got no progress report")
        if not case.capabilities.deterministic:
            continue  # nothing to compare against
        difference = np.abs(np.asarray(result, np.int16) - np.asarray(single, np.int16)).max()
        if difference > case.batch_tolerance:
            raise ContractFailure(
                f"batch item {index} differs from the same image run alone by {difference} "
                f"levels (allowed {case.batch_tolerance}); results out of order?"
            )


# -- running checks -------------------------------------------------------------------------

Needs = Literal["deterministic", "batching", "snapshots"]


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[ContractCase], None]
    needs: Needs | None = None
    """The capability that makes the check apply; without it the check is skipped."""
    runs_plugin: bool = True
    """False for checks of the class alone, which run even where a GPU-only plugin cannot."""


CHECKS: tuple[Check, ...] = (
    Check("discoverable", check_discoverable, runs_plugin=False),
    Check("params_model", check_params_model, runs_plugin=False),
    Check("params_reject_unknown", check_params_reject_unknown, runs_plugin=False),
    Check("params_reject_bad_values", check_params_reject_bad_values, runs_plugin=False),
    Check("params_json_roundtrip", check_params_json_roundtrip, runs_plugin=False),
    Check("each_choice", check_each_choice),
    Check("params_take_effect", check_params_take_effect),
    Check("accepts_image_kinds", check_accepts_image_kinds),
    Check("device_kind", check_device_kind),
    Check("check_agrees", check_check_agrees),
    Check("errors_classified", check_errors_classified),
    Check("progress_through_context", check_progress_through_context),
    Check("snapshots", check_snapshots, needs="snapshots"),
    Check("writes_only_where_given", check_writes_only_where_given),
    Check("no_network", check_no_network),
    Check("no_programs", check_no_programs),
    Check("no_stdout", check_no_stdout),
    Check("keeps_working_directory", check_keeps_working_directory),
    Check("threads_stopped", check_threads_stopped),
    Check("cancellation", check_cancellation),
    Check("deterministic", check_deterministic, needs="deterministic"),
    Check("batch", check_batch, needs="batching"),
)


def check_named(name: str) -> Check:
    for check in CHECKS:
        if check.name == name:
            return check
    raise KeyError(f"no contract check named {name!r}; known: {[c.name for c in CHECKS]}")


def unknown_checks(names: Iterable[str]) -> str | None:
    """Why ``names`` (an ``expected_failures``' keys) are not all checks, or ``None``: a
    misspelt name expected nothing, and the check it meant was run as any other."""
    known = [check.name for check in CHECKS]
    wrong = [name for name in names if name not in known]
    if not wrong:
        return None
    said = []
    for name in wrong:
        close = difflib.get_close_matches(name, known, n=1)
        said.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"expected_failures names no check: {', '.join(said)}; the checks are {', '.join(known)}"


def skip_reason(check: Check, case: ContractCase) -> str | None:
    """Why ``check`` does not apply to the plugin, or ``None`` when it does."""
    if check.needs is not None:
        capabilities = case.capabilities
        if not getattr(capabilities, check.needs):
            return f"the plugin does not declare {check.needs}=True"
    if check.runs_plugin and case.capabilities.gpu_only and not gpu_available():
        return "the plugin is GPU-only and this machine has no GPU"
    return None


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return os.path.exists("/dev/nvidia0")
    return bool(torch.cuda.is_available())


Status = Literal["passed", "failed", "skipped", "xfailed", "xpassed"]

#: Why every other check is skipped when the plugin itself does not load.
NOT_LOADED = "the plugin did not load; see the discoverable check"


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    message: str = ""


@dataclass
class ContractReport:
    plugin: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.status not in ("failed", "xpassed") for r in self.results)

    def __str__(self) -> str:
        lines = [f"contract of plugin {self.plugin}:"]
        for r in self.results:
            lines.append(f"  {r.status:8} {r.check}" + (f": {r.message}" if r.message else ""))
        return "\n".join(lines)


def after_a_hang(check: str) -> str:
    """Why a check is skipped once an earlier one's call did not return."""
    return (
        f"not run: a call into the plugin in {check} did not return, and its thread still "
        "runs; fix that first"
    )


def check_plugin(
    case: ContractCase, expected_failures: dict[str, str] | None = None
) -> ContractReport:
    """Run every check outside pytest. ``expected_failures`` maps check names to reasons;
    such a check that passes is reported as ``xpassed`` (and makes the report not ok)."""
    expected = expected_failures or {}
    if (wrong := unknown_checks(expected)) is not None:
        raise ValueError(wrong)
    results = []
    try:
        case.cls  # noqa: B018 - a plugin that does not load fails once, not in every check
    except ContractFailure as exc:
        status: Status = "xfailed" if "discoverable" in expected else "failed"
        results.append(CheckResult("discoverable", status, str(exc)))
        results += [
            CheckResult(c.name, "skipped", NOT_LOADED) for c in CHECKS if c.name != "discoverable"
        ]
        return ContractReport(str(case.plugin), results)
    hung: str | None = None
    for check in CHECKS:
        reason = skip_reason(check, case) or (hung and after_a_hang(hung))
        if reason:
            results.append(CheckResult(check.name, "skipped", reason))
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContractWarning)
            try:
                check.run(case)
            except ContractSkip as exc:
                results.append(CheckResult(check.name, "skipped", str(exc)))
                continue
            except Exception as exc:
                if isinstance(exc, SaidOnce) and (why := exc.elsewhere(check.name)):
                    results.append(CheckResult(check.name, "skipped", why))
                    continue
                if isinstance(exc, ContractTimeout):
                    hung = check.name
                message = (
                    str(exc)
                    if isinstance(exc, ContractFailure)
                    else f"the check broke off on {_describe(exc)}"
                )
                status = "xfailed" if check.name in expected else "failed"
                results.append(CheckResult(check.name, status, message))
                continue
        status = "xpassed" if check.name in expected else "passed"
        notes = [expected.get(check.name, "")] + [
            f"warning: {w.message}" for w in caught if issubclass(w.category, ContractWarning)
        ]
        results.append(CheckResult(check.name, status, "; ".join(n for n in notes if n)))
    name = case.plugin if isinstance(case.plugin, str) else case.plugin.__name__
    return ContractReport(name, results)
