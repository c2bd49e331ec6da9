"""The plugin contract, as checks that each fail with a message saying what to fix.

Every check takes a :class:`ContractCase` (the plugin, sample params, a scratch folder) and
raises :class:`ContractFailure` when the plugin breaks its rule. The pytest base class
(:class:`stylebox.testing.PluginContract`) and :func:`check_plugin` both run these.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError

from stylebox.plugins.api import (
    BadInput,
    Cancelled,
    Capabilities,
    ConfigError,
    Plugin,
    PluginError,
    Runtime,
)
from stylebox.plugins.registry import GROUP, contract_problem, discover
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


class ContractWarning(UserWarning):
    """Not a broken rule, but worth a look (a param that accepts any text, say)."""


#: Progress reports a plugin may still make after ``job.cancelled`` turned true: the step
#: it was in, and one more. Past that, it ignores the flag, however quick its steps are.
CANCEL_GRACE_STEPS = 2


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
    device: str = "cpu"
    base_dir: Path | None = None
    """Where relative paths in params are resolved; by default the working directory."""
    cancel_within: float = 10.0
    """Seconds a plugin may keep running once its job is cancelled."""
    batch_tolerance: int = 2
    """Largest per-pixel difference allowed between a batched and a single result."""

    def __post_init__(self) -> None:
        self.base_dir = (self.base_dir or Path.cwd()).resolve()
        self._runs = 0

    @functools.cached_property
    def cls(self) -> type[Plugin[Any]]:
        """The plugin class; a name is looked up once, as the daemon would."""
        if not isinstance(self.plugin, str):
            return self.plugin
        try:
            return discover().get(self.plugin)
        except ConfigError as exc:
            raise ContractFailure(str(exc)) from None

    @property
    def capabilities(self) -> Capabilities:
        return getattr(self.cls, "capabilities", Capabilities())

    @property
    def runtime(self) -> Runtime:
        return Runtime(device=self.device, state_dir=self.workdir / "state")

    def validated(self, params: dict[str, Any] | None = None) -> BaseModel:
        params = self.params if params is None else params
        try:
            return self.cls.Params.model_validate(params, context={"base_dir": self.base_dir})
        except ValidationError as exc:
            raise ContractFailure(
                f"the sample params {params!r} are refused by {self.cls.__name__}.Params; "
                f"fix the params given to the kit:\n{exc}"
            ) from None

    def make(self, params: dict[str, Any] | None = None) -> Plugin[Any]:
        """A fresh plugin instance, as the daemon would create it."""
        return self.cls(self.validated(params), self.runtime)

    def checkpoint_dir(self) -> Path:
        """A new job's private folder."""
        self._runs += 1
        return self.workdir / "jobs" / str(self._runs) / "checkpoint"

    def context(self) -> RecordingContext:
        return RecordingContext(self.checkpoint_dir())


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _check_result(plugin: Plugin[Any], image: Image.Image, result: object, what: str) -> None:
    if not isinstance(result, Image.Image):
        raise ContractFailure(
            f"process returned {type(result).__name__} for {what}; return an Image"
        )
    if result.mode != "RGB":
        raise ContractFailure(
            f"process returned a {result.mode} image for {what}; return mode RGB "
            "(the runner re-attaches any alpha itself)"
        )
    expected = tuple(plugin.output_size(image.size))
    if result.size != expected:
        raise ContractFailure(
            f"process returned {result.width}x{result.height} for {what}, but output_size() "
            f"documents {expected[0]}x{expected[1]}; make them agree (override output_size "
            "when the plugin resizes)"
        )


def _process(
    plugin: Plugin[Any], image: Image.Image, context: RecordingContext, what: str
) -> Image.Image:
    before = image.tobytes()
    try:
        result = plugin.process(image, context)
    except Exception as exc:
        raise ContractFailure(
            f"process failed on {what}: {_describe(exc)}; every RGB image of any size "
            "from 1x1 up must give a result (a size is never a reason for BadInput: "
            "upscale tiny inputs internally)"
        ) from exc
    if image.tobytes() != before:
        raise ContractFailure(f"process changed its input image ({what}); work on a copy")
    _check_result(plugin, image, result, what)
    return result


# -- the checks ----------------------------------------------------------------------------


def check_discoverable(case: ContractCase) -> None:
    """Registered in the ``stylebox.plugins`` entry-point group, with a name and a version."""
    cls = case.cls
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ContractFailure(f"{cls.__name__} has no `name`; set a class attribute name = '...'")
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ContractFailure(
            f"no entry point named {name!r} in the {GROUP!r} group; add to pyproject.toml:\n"
            f'[project.entry-points."{GROUP}"]\n{name} = "your_module:{cls.__name__}"\n'
            "and reinstall the package"
        )
    loaded = found[0].load()
    if loaded is not cls:
        raise ContractFailure(
            f"entry point {name!r} loads {found[0].value}, not {cls.__module__}.{cls.__qualname__}"
        )
    problem = contract_problem(name, cls)
    if problem is not None:
        raise ContractFailure(problem)
    registry = discover()
    version = registry.plugins[name].version if name in registry.plugins else ""
    if not version or version == "unknown":
        raise ContractFailure(
            f"{cls.__name__} has no version; set `version = '1.0'` or give the distribution one"
        )


def check_params_model(case: ContractCase) -> None:
    """``Params`` is a pydantic model with a JSON schema, and the sample params validate."""
    params = getattr(case.cls, "Params", None)
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        raise ContractFailure(
            f"{case.cls.__name__}.Params is {params!r}; it must be a pydantic model "
            "(subclass stylebox.plugins.api.PluginParams)"
        )
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
    for params in case.invalid_params:
        try:
            model.model_validate(params, context=context)
        except ValidationError:
            continue
        raise ContractFailure(f"{model.__name__} accepted the invalid params {params!r}")
    _warn_free_text(model, case)


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
            warnings.warn(
                ContractWarning(
                    f"{model.__name__}.{key} accepts any text; constrain it (a Literal, a "
                    "pattern, a max_length) or give invalid_params with values it refuses"
                ),
                stacklevel=2,
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


def check_accepts_image_kinds(case: ContractCase) -> None:
    """RGB images of every odd size come back RGB, of the size ``output_size`` documents,
    and the input is left untouched."""
    plugin = case.make()
    try:
        for size in ODD_SIZES:
            _process(plugin, sample_image(size), case.context(), f"a {size[0]}x{size[1]} image")
    finally:
        plugin.close()


def check_errors_classified(case: ContractCase) -> None:
    """Flat and noisy images either work or fail as ``BadInput``/``PluginError`` with a
    reason: the daemon moves a ``BadInput`` aside at once and retries a ``PluginError``."""
    plugin = case.make()
    try:
        for kind in EDGE_KINDS:
            what = f"a {kind} 48x40 image"
            try:
                result = plugin.process(sample_image((48, 40), kind), case.context())
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
            _check_result(plugin, sample_image((48, 40), kind), result, what)
    finally:
        plugin.close()


def _one_run(case: ContractCase) -> RecordingContext:
    """Process one 64x48 picture with a fresh instance; what the context recorded."""
    plugin = case.make()
    context = case.context()
    try:
        _process(plugin, sample_image((64, 48)), context, "a 64x48 image")
    finally:
        plugin.close()
    return context


def check_progress_through_context(case: ContractCase) -> None:
    """Progress goes to the job context: steps within 0..total, ending at total."""
    context = _one_run(case)
    reports = context.progress_reports
    if not reports:
        raise ContractFailure("process reported no progress; call job.progress(step, total)")
    for step, total, metrics in reports:
        if not (total > 0 and 0 <= step <= total):
            raise ContractFailure(f"progress({step}, {total}) is out of range: 0 <= step <= total")
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise ContractFailure(f"progress at step {step} reported non-finite metrics {bad}")
    step, total, _ = reports[-1]
    if step != total:
        raise ContractFailure(f"the last progress report is {step}/{total}; report completion")


def check_snapshots(case: ContractCase) -> None:
    """A plugin declaring ``snapshots`` hands RGB snapshots to the context, in step order."""
    context = _one_run(case)
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


def _observed_run(case: ContractCase) -> tuple[list[str], list[str], list[str], list[str]]:
    """Create and run the plugin in a sandbox: (writes, network uses, stray files,
    programs started)."""
    context = case.context()
    allowed = [context.checkpoint_dir, case.runtime.state_dir / "cache"]
    allowed[-1].mkdir(parents=True, exist_ok=True)  # the host's state dir exists already
    with sandboxed(allowed, case.workdir / "sandbox") as box:
        plugin = case.make()
        try:
            _process(plugin, sample_image((64, 48)), context, "a 64x48 image")
        finally:
            plugin.close()
    return box.writes, box.network, box.stray_files(), box.processes


def check_writes_only_where_given(case: ContractCase) -> None:
    """No file is written except in the job's checkpoint dir and the runtime's cache dirs;
    results and snapshots reach the disk only through the outbox."""
    writes, _, stray, _ = _observed_run(case)
    if writes or stray:
        listed = "\n  ".join(writes + [f"(in the working directory) {s}" for s in stray])
        raise ContractFailure(
            "the plugin wrote outside job.checkpoint_dir and runtime.cache_dir():\n  "
            f"{listed}\nhand images to job.snapshot() and return the result instead"
        )


def check_no_network(case: ContractCase) -> None:
    """Neither creating the plugin nor running it reaches for the network (daemons run
    offline; models and weights must come installed)."""
    _, network, _, _ = _observed_run(case)
    if network:
        raise ContractFailure(
            "the plugin tried to use the network:\n  "
            + "\n  ".join(network)
            + "\nship models with the package or take their path as a param"
        )


def check_no_programs(case: ContractCase) -> None:
    """Neither creating the plugin nor running it starts a program: what a program writes
    or sends is out of the kit's sight (and of the daemon's promise to write only through
    the outbox)."""
    _, _, _, processes = _observed_run(case)
    if processes:
        raise ContractFailure(
            "the plugin started a program:\n  "
            + "\n  ".join(processes)
            + "\ndo the work in Python (or a library's native code) within process()"
        )


class _CancellingContext(RecordingContext):
    """Cancels at the first progress report or after ``delay`` seconds, and notes when."""

    def __init__(self, checkpoint_dir: Path, delay: float) -> None:
        super().__init__(checkpoint_dir)
        self.cancelled_at: float | None = None
        self.after_cancel = 0
        """Progress reports made after the flag turned true."""
        self._timer = threading.Timer(delay, self.cancel)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        super().cancel()

    def progress(self, step: int, total: int, **metrics: float) -> None:
        super().progress(step, total, **metrics)
        if self.cancelled_at is not None:
            self.after_cancel += 1
        self.cancel()


def check_cancellation(case: ContractCase) -> None:
    """Once ``job.cancelled`` turns true, ``process`` raises ``Cancelled`` (or has finished)
    within ``cancel_within`` seconds, and within :data:`CANCEL_GRACE_STEPS` progress
    reports: a plugin that ignores the flag is caught even when its run is short."""
    plugin = case.make(case.long_params)
    context = _CancellingContext(case.checkpoint_dir(), delay=0.5)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = plugin.process(sample_image((64, 48)), context)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="contract-cancellation", daemon=True)
    context.start()
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        if context.cancelled_at and time.monotonic() - context.cancelled_at > case.cancel_within:
            raise ContractFailure(
                f"process kept running {case.cancel_within:g} s after job.cancelled turned true; "
                "poll job.cancelled between steps and raise Cancelled"
            )
    plugin.close()
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


def check_deterministic(case: ContractCase) -> None:
    """Same params, same input: the same pixels, from the same and from a new instance."""
    image = sample_image((64, 48), seed=3)
    outputs = []
    for plugin in (first := case.make(), first, case.make()):
        outputs.append(_process(plugin, image, case.context(), "a 64x48 image").tobytes())
    first.close()
    if len(set(outputs)) != 1:
        same_instance = outputs[0] == outputs[1]
        raise ContractFailure(
            "capabilities say deterministic=True but the same input gave different pixels "
            + ("from a new instance" if same_instance else "twice from one instance")
            + "; seed every random generator from the params, or declare deterministic=False"
        )


def check_batch(case: ContractCase) -> None:
    """``process_batch`` returns one right-sized RGB image per input, in order (matching
    single runs where deterministic), and reports each job's progress to its own context."""
    plugin = case.make()
    images = [sample_image((40, 32), seed=s) for s in (1, 2, 3)] + [sample_image((24, 48), seed=4)]
    contexts = [case.context() for _ in images]
    try:
        results = plugin.process_batch(images, contexts)
        singles = [_process(plugin, im, case.context(), "a batch image") for im in images]
    finally:
        plugin.close()
    if not isinstance(results, list) or len(results) != len(images):
        raise ContractFailure(f"process_batch returned {results!r} for {len(images)} images")
    for index, (image, result, single, context) in enumerate(
        zip(images, results, singles, contexts, strict=True)
    ):
        _check_result(plugin, image, result, f"batch item {index}")
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
    Check("accepts_image_kinds", check_accepts_image_kinds),
    Check("errors_classified", check_errors_classified),
    Check("progress_through_context", check_progress_through_context),
    Check("snapshots", check_snapshots, needs="snapshots"),
    Check("writes_only_where_given", check_writes_only_where_given),
    Check("no_network", check_no_network),
    Check("no_programs", check_no_programs),
    Check("cancellation", check_cancellation),
    Check("deterministic", check_deterministic, needs="deterministic"),
    Check("batch", check_batch, needs="batching"),
)


def check_named(name: str) -> Check:
    for check in CHECKS:
        if check.name == name:
            return check
    raise KeyError(f"no contract check named {name!r}; known: {[c.name for c in CHECKS]}")


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


def check_plugin(
    case: ContractCase, expected_failures: dict[str, str] | None = None
) -> ContractReport:
    """Run every check outside pytest. ``expected_failures`` maps check names to reasons;
    such a check that passes is reported as ``xpassed`` (and makes the report not ok)."""
    expected = expected_failures or {}
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
    for check in CHECKS:
        reason = skip_reason(check, case)
        if reason is not None:
            results.append(CheckResult(check.name, "skipped", reason))
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ContractWarning)
            try:
                check.run(case)
            except ContractFailure as exc:
                status = "xfailed" if check.name in expected else "failed"
                results.append(CheckResult(check.name, status, str(exc)))
                continue
        status = "xpassed" if check.name in expected else "passed"
        notes = [expected.get(check.name, "")] + [
            f"warning: {w.message}" for w in caught if issubclass(w.category, ContractWarning)
        ]
        results.append(CheckResult(check.name, status, "; ".join(n for n in notes if n)))
    name = case.plugin if isinstance(case.plugin, str) else case.plugin.__name__
    return ContractReport(name, results)
