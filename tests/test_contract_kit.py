"""The contract kit's own tests: every check fails on a small plugin that breaks its rule.

``Good`` keeps every rule (it is only not installed, so ``discoverable`` is left out);
each bad plugin below changes one thing about it.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import multiprocessing
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from registry_sites import (
    BOTH_PENCILS,
    PENCIL_CLASH,
    ROGUE_IGNORED,
    forget_modules,
    misnamed_site,
    rival_pencil_sites,
    rogue_gatys_site,
)

from stylebox.errors import BadInput, Cancelled
from stylebox.plugins.api import Capabilities, JobContext, Plugin, PluginParams, Runtime
from stylebox.testing import (
    CHECKS,
    ContractCase,
    ContractFailure,
    ContractWarning,
    check_plugin,
    sample_image,
)
from stylebox.testing.checks import NOT_LOADED, CheckResult, ContractSkip, check_named

ROOT = Path(__file__).resolve().parents[1]


class GoodParams(PluginParams):
    level: int = Field(2, ge=1, le=8)


class Good(Plugin[GoodParams]):
    """Inverts, in a few cancellable steps, with snapshots; deterministic and batching."""

    name = "good"
    version = "1.0"
    Params = GoodParams
    capabilities = Capabilities(deterministic=True, batching=True, snapshots=True)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in range(1, 4):
            if job.cancelled:
                raise Cancelled("asked to stop")
            job.snapshot(ImageOps.invert(image), step)
            job.progress(step, 3, loss=1.0 / step)
        # Allowed: an atomic save in the checkpoint dir, a clean-up, a cache file.
        partial = job.checkpoint_dir / "state.tmp"
        partial.write_bytes(b"resume here")
        os.replace(partial, job.checkpoint_dir / "state.bin")
        (job.checkpoint_dir / "stale.bin").unlink(missing_ok=True)
        (self.runtime.cache_dir(self.name) / "lut.bin").write_bytes(b"cached")
        return ImageOps.posterize(ImageOps.invert(image), 9 - self.params.level)

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        return [self.process(image, job) for image, job in zip(images, jobs, strict=True)]


def run_check(name: str, plugin: type[Plugin[Any]], tmp_path: Path, **options: Any) -> None:
    check_named(name).run(ContractCase(plugin=plugin, workdir=tmp_path, **options))


def author_pytest(
    folder: Path, test_file: str, *options: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A plugin author's own pytest run of ``test_file`` in ``folder``, as they would run it,
    with this module's plugins importable."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, *options],
        cwd=folder,
        env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_good_plugin_passes_every_check_but_installation(tmp_path: Path) -> None:
    case = ContractCase(plugin=Good, workdir=tmp_path, effective_params=[{"level": 5}])
    report = check_plugin(case)
    outcomes = {result.check: result.status for result in report.results}
    assert outcomes.pop("discoverable") == "failed"
    assert set(outcomes.values()) == {"passed"}, str(report)
    assert set(outcomes) == {check.name for check in CHECKS} - {"discoverable"}


# -- one bad plugin per rule --------------------------------------------------------------


class IgnoresItsLevel(Good):
    """Documents a level, and never reads it."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return ImageOps.invert(image)


def test_params_take_effect_is_skipped_without_effective_params(tmp_path: Path) -> None:
    with pytest.raises(ContractSkip, match="no effective_params given"):
        run_check("params_take_effect", IgnoresItsLevel, tmp_path)
    # Values the kit's params already have prove nothing: said, rather than failed as
    # "process ignores level".
    with pytest.raises(ContractFailure, match=r"effective_params \{'level': 2\} leave the kit's"):
        run_check("params_take_effect", Good, tmp_path, effective_params=[{"level": 2}])
    with pytest.raises(ContractFailure, match=r"effective_params \{'level': 99\} are refused") as e:
        run_check("params_take_effect", Good, tmp_path, effective_params=[{"level": 99}])
    assert "level\n  Input should be less than or equal to" in str(e.value)  # pydantic's why
    # A plugin that is not deterministic, and differs run to run: no verdict either way.
    with pytest.raises(ContractSkip, match="other pixels at a second run"):
        run_check("params_take_effect", Noisy, tmp_path, effective_params=[{"level": 5}])


class Noisy(Good):
    """Adds fresh noise at every call."""

    capabilities = Capabilities()

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        noise = np.random.default_rng().integers(0, 255, (image.height, image.width, 3))
        return Image.fromarray(noise.astype(np.uint8), "RGB")


class NotInstalled(Good):
    name = "not_installed"


class NoneParams(Good):
    Params = dict  # type: ignore[assignment]


class UnsetParams(Good):
    Params = None  # type: ignore[assignment]  # as a class that never set it reads


class LaxParams(Good):
    class Params(BaseModel):  # pydantic ignores unknown keys by default
        level: int = 2


class AnyParams(Good):
    class Params(PluginParams):
        level: Any = 2


class SecretParams(Good):
    class Params(PluginParams):
        token: SecretStr = SecretStr("s3cret")  # dumps as '**********'


class FailsOnTiny(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if min(image.size) < 2:
            raise ValueError("need at least 2 pixels")
        return super().process(image, job)


class Crops(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return image.crop((0, 0, max(1, image.width // 2), image.height))


class ReturnsGrey(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return image.convert("L")


class PaintsBlack(Good):
    """A model whose output went NaN: cast to 8 bits, every pixel black."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return Image.new("RGB", image.size)


class PaintsOverInput(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        image.putpixel((0, 0), (1, 2, 3))
        return super().process(image, job)


class RawErrorOnFlat(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if np.asarray(image).std() == 0:
            raise ZeroDivisionError("contrast is zero")
        return super().process(image, job)


class SilentBadInput(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if np.asarray(image).std() == 0:
            raise BadInput("")
        return super().process(image, job)


class NoProgress(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return ImageOps.invert(image)


def reports_only(name: str, step: float, total: float) -> type[Good]:
    """A plugin whose only report is ``progress(step, total)``: no snapshots."""

    class ReportsOnly(Good):
        def process(self, image: Image.Image, job: JobContext) -> Image.Image:
            job.progress(step, total)  # type: ignore[arg-type]  # a float, for the kit to refuse
            return ImageOps.invert(image)

    ReportsOnly.__name__ = ReportsOnly.__qualname__ = name
    return ReportsOnly


ProgressPastTotal = reports_only("ProgressPastTotal", 5, 3)
NeverCompletes = reports_only("NeverCompletes", 1, 3)
NoSnapshots = reports_only("NoSnapshots", 1, 1)
ProgressOfNothing = reports_only("ProgressOfNothing", 0, 0)
ProgressInNumpy = reports_only("ProgressInNumpy", np.int64(3), np.int64(3))  # type: ignore[arg-type]


def test_progress_in_numpy_integers_is_whole_numbers(tmp_path: Path) -> None:
    run_check("progress_through_context", ProgressInNumpy, tmp_path)  # the runner takes them


ProgressInHalves = reports_only("ProgressInHalves", 0.5, 1.0)


class SnapshotsBackwards(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in (3, 2, 1):
            job.snapshot(image, step)
        job.progress(1, 1)
        return ImageOps.invert(image)


class WritesDebugFile(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        image.save("debug.png")  # relative: lands in the working directory
        return super().process(image, job)


class WritesTempFile(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        with tempfile.NamedTemporaryFile(suffix=".png") as handle:
            image.save(handle.name)
        return super().process(image, job)


class PhonesHome(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        # the discard port on this machine: refused, and that is not the point
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", 9), timeout=0.2).close()
        return super().process(image, job)


class RunsAProgram(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        subprocess.run(["true"], check=True)  # a program's writes are out of the kit's sight
        return super().process(image, job)


class IgnoresCancel(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in range(1, 41):
            time.sleep(0.05)
            job.progress(step, 40)
        return ImageOps.invert(image)


class CancelsWithRuntimeError(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 2)
        if job.cancelled:
            raise RuntimeError("stopped")
        job.progress(2, 2)
        return ImageOps.invert(image)


class Unseeded(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        noise = np.random.default_rng().integers(0, 3, (image.height, image.width, 3))
        job.progress(1, 1)
        return Image.fromarray((np.asarray(image) // 2 + noise).astype(np.uint8), "RGB")


class BatchReversed(Good):
    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        results = super().process_batch(images, jobs)
        results[:3] = results[2::-1]  # the three same-size images, out of order
        return results


class BatchStacks(Good):
    """Stacks its batch into one array, as a plugin may: the host gives it one size."""

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        stacked = 255 - np.stack([np.asarray(image) for image in images])
        for job in jobs:
            job.progress(1, 1)
        return [Image.fromarray(array, "RGB") for array in stacked]

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return self.process_batch([image], [job])[0]


def test_the_batch_check_gives_one_size_as_the_host_does(tmp_path: Path) -> None:
    # It gave three 40x32 images and one 24x48: a plugin stacking its batch failed there
    # ("all input arrays must have the same shape"), though the host never does that.
    run_check("batch", BatchStacks, tmp_path)


class ChecksTooMuch(Good):
    """Its check() refuses what its __init__ starts with."""

    @classmethod
    def check(cls, params: PluginParams, runtime: Runtime) -> None:
        raise FileNotFoundError("lut.cube")


class BatchRaises(Good):
    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        raise ValueError("shapes do not broadcast")


class BatchDropsOne(Good):
    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        return super().process_batch(images, jobs)[:1]


class BatchForgetsJobs(Good):
    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        return [ImageOps.invert(image) for image in images]


# What a third-party author found passing the kit: each below used to pass its check.

#: Events the plugins below wait on (threads left running, a process blocked): set after
#: each test, so that nothing they started outlives it.
_RELEASE: list[threading.Event] = []


def _release_event() -> threading.Event:
    event = threading.Event()
    _RELEASE.append(event)
    return event


@pytest.fixture(autouse=True)
def _release_what_plugins_left() -> Iterator[None]:
    yield
    while _RELEASE:
        _RELEASE.pop().set()


class ReturnsWhenCancelled(Good):
    """Polls the flag, but breaks out and returns its unfinished image."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        result = image.copy()
        for step in range(1, 11):
            if job.cancelled:
                break
            result = ImageOps.invert(result)
            job.progress(step, 10)
        return result


class LeavesAThread(Good):
    """Starts a non-daemon worker in __init__ that close() never stops."""

    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.worker = threading.Thread(target=_release_event().wait, name="kit-leftover")
        self.worker.start()


class LeavesADaemonThread(Good):
    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.worker = threading.Thread(
            target=_release_event().wait, name="kit-daemon-leftover", daemon=True
        )
        self.worker.start()


class StopsItsThread(LeavesAThread):
    """Stops and joins its worker in close(): passes."""

    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        self.stop = _release_event()
        Good.__init__(self, params, runtime)
        self.worker = threading.Thread(target=self.stop.wait, name="kit-stopped")
        self.worker.start()

    def close(self) -> None:
        self.stop.set()
        self.worker.join()


class ChangesDirectory(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        os.chdir(job.checkpoint_dir)
        return super().process(image, job)


class ChangesDirectoryAtStart(Good):
    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        os.chdir(runtime.state_dir.parent)


class SaysGpu(Good):
    @property
    def device_kind(self) -> Any:
        return "gpu"


class AllowsInfinity(Good):
    class Params(PluginParams):
        model_config = ConfigDict(allow_inf_nan=True)
        level: int = Field(2, ge=1, le=8)
        strength: float = Field(1.0, ge=0)  # nan >= 0 is false: only inf gets through


class PlainModelAllowsNan(Good):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        level: int = Field(2, ge=1, le=8)
        weights: list[float] = [1.0]


class ExplicitlyAllowsInfinity(Good):
    """Says so field by field: passes."""

    class Params(PluginParams):
        model_config = ConfigDict(strict=True)

        level: int = Field(2, ge=1, le=8)
        limit: float = Field(float("inf"), allow_inf_nan=True)


class PrintsInProcess(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        print("step done")
        return super().process(image, job)


class PrintsAtStart(Good):
    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        sys.stdout.write("model loaded\n")


class ReturnsNone(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        super().process(image, job)
        return None  # type: ignore[return-value]


class ReturnsClosedImage(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        result = super().process(image, job)
        result.close()
        return result


class KeepsStats(Good):
    """A SQLite database beside the state dir: outside the folders it is given."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        with contextlib.closing(sqlite3.connect(self.runtime.state_dir.parent / "stats.db")):
            pass
        with contextlib.closing(sqlite3.connect(":memory:")):  # no file: allowed
            pass
        return super().process(image, job)


class Forks(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return super().process(image, job)


def uses_multiprocessing(method: str) -> type[Good]:
    class UsesMultiprocessing(Good):
        def process(self, image: Image.Image, job: JobContext) -> Image.Image:
            worker = multiprocessing.get_context(method).Process(target=int)
            worker.start()
            worker.join()
            return super().process(image, job)

    UsesMultiprocessing.__name__ = UsesMultiprocessing.__qualname__ = f"Uses{method.title()}"
    return UsesMultiprocessing


class WritesLater(Good):
    """A thread writes 0.3 s after process returned."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        late = self.runtime.state_dir.parent / "late.txt"
        threading.Timer(0.3, late.write_text, args=("too late",)).start()
        return super().process(image, job)


class SpillsBigImages(Good):
    """Writes a file only for images over 100k pixels."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if image.width * image.height > 100_000:
            image.save(self.runtime.state_dir.parent / "spill.png")
        return super().process(image, job)


class BlocksOnTiny(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if image.size == (1, 1):
            _release_event().wait()  # forever, as far as the kit can tell
        return super().process(image, job)


class TextMetric(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1, stage="done")  # type: ignore[arg-type]
        return ImageOps.invert(image)


class NotesAManifestField(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.note(output=1)  # the manifest's own field: the runner refuses it in every job
        return ImageOps.invert(image)


class FailsToStart(Good):
    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        raise RuntimeError("no model file")


class ToneParams(PluginParams):
    level: int = Field(2, ge=1, le=8)
    tone: Literal["classic", "cool"] = "classic"
    strength: float = Field(1.0, ge=0, le=1)


class FailsOnAChoice(Good):
    """Its 'cool' tone is accepted by the model but missing from its table."""

    Params = ToneParams
    TINTS: ClassVar[dict[str, tuple[int, int, int]]] = {"classic": (112, 66, 20)}

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        tint = self.TINTS[self.params.tone]
        return Image.blend(image, Image.new("RGB", image.size, tint), 0.3)


class FailsAtItsDefault(Good):
    """Divides by zero at the default strength, which the kit's params never used."""

    Params = ToneParams

    def __init__(self, params: ToneParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.gain = 1 / (1 - params.strength)


BAD_PLUGINS = [
    ("discoverable", NotInstalled, {}, "no entry point named 'not_installed'"),
    ("params_model", NoneParams, {}, "Params is <class 'dict'>, not a pydantic model; give"),
    ("params_model", UnsetParams, {}, "Params is not set; give it a subclass of"),
    ("params_reject_unknown", LaxParams, {}, "accepted the unknown key"),
    ("params_reject_bad_values", AnyParams, {}, "level accepts anything"),
    ("params_reject_bad_values", Good, {"invalid_params": [{"level": 2}]}, "accepted the inv"),
    ("params_json_roundtrip", SecretParams, {}, "changed through JSON"),
    ("each_choice", FailsOnAChoice, {}, "with tone='cool', process failed on a 64x48 image: Key"),
    (
        "each_choice",
        FailsAtItsDefault,
        {"params": {"strength": 0.5}},
        "with strength left at its default, the plugin failed to start: ZeroDivisionError",
    ),
    (
        "params_take_effect",
        IgnoresItsLevel,
        {"params": {"level": 3}, "effective_params": [{"level": 6}]},
        r"with level=6 \(effective_params\) process returned the same pixels for a 64x48 "
        r"picture as with the kit's params \{'level': 3\}: process may ignore level \(read",
    ),
    ("accepts_image_kinds", FailsOnTiny, {}, "failed on a 1x1 image: ValueError"),
    ("accepts_image_kinds", Crops, {}, "but output_size\\(\\) documents 17x33"),
    ("accepts_image_kinds", ReturnsGrey, {}, "returned an L image"),
    ("accepts_image_kinds", PaintsOverInput, {}, "changed its input image"),
    (
        "accepts_image_kinds",
        PaintsBlack,
        {},
        r"returned one flat colour \(0, 0, 0\) for a 17x33 image, which has detail",
    ),
    (
        "errors_classified",
        RawErrorOnFlat,
        {},
        "black 48x40 image, process raised ZeroDivisionError",
    ),
    ("errors_classified", SilentBadInput, {}, "BadInput on a black 48x40 image without a"),
    ("progress_through_context", NoProgress, {}, "reported no progress"),
    ("progress_through_context", ProgressPastTotal, {}, "progress\\(5, 3\\) is out of range"),
    # It said "out of range: 0 <= step <= total", which 0 of 0 is in.
    (
        "progress_through_context",
        ProgressOfNothing,
        {},
        r"progress\(0, 0\) is out of range: 0 <= step <= total, and total > 0",
    ),
    # Recorded as step 0 of 1.
    (
        "progress_through_context",
        ProgressInHalves,
        {},
        r"progress\(0.5, 1.0\): step and total are whole numbers \(int\)",
    ),
    ("progress_through_context", NeverCompletes, {}, "last progress report is 1/3"),
    ("snapshots", NoSnapshots, {}, "sent none to job.snapshot"),
    ("snapshots", SnapshotsBackwards, {}, "out of order: \\[3, 2, 1\\]"),
    ("writes_only_where_given", WritesDebugFile, {}, "sandbox/debug.png"),
    ("writes_only_where_given", WritesTempFile, {}, "open /tmp/.*png"),
    ("no_network", PhonesHome, {}, "socket.connect \\('127.0.0.1', 9\\)"),
    ("no_programs", RunsAProgram, {}, "started a program"),
    ("cancellation", IgnoresCancel, {"cancel_within": 0.5}, "kept running 0.5 s after"),
    ("cancellation", CancelsWithRuntimeError, {}, "raised RuntimeError: stopped"),
    (
        "cancellation",
        ReturnsWhenCancelled,
        {},
        r"returned a result after job.cancelled turned true at step 1 of 10 .*raise Cancelled "
        "after checkpointing",
    ),
    ("threads_stopped", LeavesAThread, {}, "left a non-daemon thread, 'kit-leftover' running"),
    (
        "threads_stopped",
        LeavesADaemonThread,
        {},
        "left a daemon thread, .* at every reload, would leave one more",
    ),
    (
        "keeps_working_directory",
        ChangesDirectory,
        {},
        "changed the working directory to .*/checkpoint; the daemon resolves relative paths",
    ),
    ("keeps_working_directory", ChangesDirectoryAtStart, {}, "changed the working directory"),
    ("device_kind", SaysGpu, {}, "device_kind is 'gpu'; return 'cpu' or 'cuda'"),
    ("params_reject_bad_values", AllowsInfinity, {}, "Params.strength accepts inf; NaN and inf"),
    ("params_reject_bad_values", PlainModelAllowsNan, {}, r"Params.weights accepts \[nan\]"),
    ("no_stdout", PrintsInProcess, {}, "printed to stdout in process: 'step done'; use logging"),
    ("no_stdout", PrintsAtStart, {}, r"printed to stdout while starting \(__init__\): 'model"),
    ("accepts_image_kinds", ReturnsClosedImage, {}, "pixels cannot be read for a 1x1 image"),
    ("writes_only_where_given", KeepsStats, {}, r"sqlite3.connect /.*/stats\.db\n"),
    ("no_programs", Forks, {}, r"started a program:\n  os.fork \(a copy of this process\)"),
    ("no_programs", uses_multiprocessing("fork"), {}, "os.fork"),
    ("no_programs", uses_multiprocessing("spawn"), {}, "_posixsubprocess.fork_exec"),
    ("writes_only_where_given", WritesLater, {}, "open /.*/late.txt"),
    ("writes_only_where_given", SpillsBigImages, {}, "open /.*/spill.png"),
    (
        "accepts_image_kinds",
        BlocksOnTiny,
        {"time_limit": 0.5},
        "process did not return within 0.5 s on a 1x1 image",
    ),
    (
        "progress_through_context",
        TextMetric,
        {},
        "reported the metric stage='done', which is not a number",
    ),
    ("deterministic", Unseeded, {}, "different pixels twice from one instance"),
    # config check said its inbox was disabled; serve served it.
    (
        "check_agrees",
        ChecksTooMuch,
        {},
        r"^check\(\) refused the params __init__ starts with: FileNotFoundError: lut.cube; "
        "`stylebox config check` would say its inbox disabled, while `serve` runs it",
    ),
    ("batch", BatchReversed, {}, "batch item 0 differs"),
    ("batch", BatchForgetsJobs, {}, "batch item 0's job context got no progress"),
    # A count, not a list of Image reprs.
    ("batch", BatchDropsOne, {}, r"^process_batch returned 1 result for 4 images; return one"),
    # The kit's message, not a bare traceback through the kit's frames.
    (
        "batch",
        BatchRaises,
        {},
        r"^process_batch failed on 4 images of 40x32: ValueError: shapes do not broadcast; a ",
    ),
]


@pytest.mark.parametrize(
    ("check", "plugin", "options", "message"),
    BAD_PLUGINS,
    ids=[f"{check}-{plugin.__name__}" for check, plugin, _, _ in BAD_PLUGINS],
)
def test_each_check_fails_on_a_plugin_breaking_its_rule(
    check: str, plugin: type[Plugin[Any]], options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ContractFailure, match=message):
        run_check(check, plugin, tmp_path, **options)


class InvertsItsInput(Good):
    """Inverts the image it is given, in place, once its result is made: each run on the
    same image gets the last one's leavings (its batch, Good's, runs ``process`` on each)."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        result = super().process(image.copy(), job)
        image.paste(ImageOps.invert(image))
        return result


def test_a_plugin_that_changes_its_input_in_place_is_told_so_not_blamed_on_seeds(
    tmp_path: Path,
) -> None:
    # deterministic said "different pixels twice from one instance; seed every random
    # generator", and batch "results out of order?", of a plugin that writes on its input.
    report = check_plugin(ContractCase(plugin=InvertsItsInput, workdir=tmp_path))
    failed = {r.check: r.message for r in report.results if r.status == "failed"}
    assert set(failed) == {"discoverable", "accepts_image_kinds", "batch"}, str(report)
    assert failed["accepts_image_kinds"].startswith("process changed its input image (a ")
    assert failed["batch"] == (
        "process_batch changed its input image (batch item 0); work on a copy"
    )


class PrintsThenRaises(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        print("loading the lookup table")
        raise KeyError("lookup table missing")


def test_a_run_that_breaks_off_fails_one_check_of_the_run_not_every_one(tmp_path: Path) -> None:
    # A process that raised failed ten checks with one message: each check of the observed
    # run (no_network, no_stdout...) among them, though none had seen its rule broken.
    report = check_plugin(ContractCase(plugin=PrintsThenRaises, workdir=tmp_path))
    results = {r.check: r for r in report.results}
    failed = {name for name, result in results.items() if result.status == "failed"}
    assert failed == {
        "discoverable", "accepts_image_kinds", "errors_classified", "progress_through_context",
        "writes_only_where_given", "no_stdout", "cancellation", "batch",
    }, str(report)  # fmt: skip
    # What it did before it raised is still judged: it printed.
    printed = "printed to stdout in process: 'loading the lookup table'"
    assert printed in results["no_stdout"].message
    assert results["deterministic"].message == (
        "process failed on a 64x48 image, so there is nothing to compare; see "
        "progress_through_context"
    )
    said = results["writes_only_where_given"].message
    assert said.startswith("process failed on a 64x48 image: KeyError: 'lookup table missing'")
    for name in ("no_network", "no_programs", "keeps_working_directory", "threads_stopped"):
        assert results[name].status == "skipped", str(report)
        assert results[name].message == (
            "not watched to its end: process failed in the observed run; see "
            "writes_only_where_given"
        )


class FindsALibrary(Good):
    """Asks where a shared library is, as importing PyTorch does (``ldconfig -p``)."""

    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        self.libc = ctypes.util.find_library("c")


def test_looking_up_a_shared_library_is_not_starting_a_program(tmp_path: Path) -> None:
    # The first import of PyTorch in a process runs ldconfig -p: the gatys plugin, which
    # imports it in __init__, failed no_programs where no test had imported it before.
    run_check("no_programs", FindsALibrary, tmp_path)
    with pytest.raises(ContractFailure, match=r"subprocess.Popen \['ldconfig', '-p'\]"):
        run_check("no_programs", RunsLdconfig, tmp_path)
    # find_library's other way, gcc found on PATH (a plugin's own "gcc" first), counts.
    with pytest.raises(ContractFailure, match=r"subprocess.Popen \['/.*gcc', '-Wl,-t'"):
        run_check("no_programs", FindsALibraryWithGcc, tmp_path)


class FindsALibraryWithGcc(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        ctypes.util._findLib_gcc("stylebox_no_such_library")  # type: ignore[attr-defined]
        return super().process(image, job)


class RunsLdconfig(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        subprocess.run(["ldconfig", "-p"], capture_output=True, check=False)
        return super().process(image, job)


class FailsInASecondInstance(Good):
    """Works in the first instance only (a model a first instance holds, say)."""

    started = 0

    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        type(self).started += 1
        self.index = type(self).started

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if self.index > 1:
            raise RuntimeError("the model is held by another instance")
        return super().process(image, job)


def test_deterministic_skips_only_for_a_failure_another_check_says(tmp_path: Path) -> None:
    # A failure of a second run or instance is this check's alone to find: it skipped,
    # pointing at progress_through_context, which passed.
    with pytest.raises(ContractFailure, match="the model is held by another instance"):
        run_check("deterministic", FailsInASecondInstance, tmp_path)


def test_a_file_written_in_every_run_is_listed_once(tmp_path: Path) -> None:
    with pytest.raises(ContractFailure) as failed:
        run_check("writes_only_where_given", WritesDebugFile, tmp_path)
    listed = [line for line in str(failed.value).splitlines() if "debug.png" in line]
    assert len(listed) == 1, listed  # written by each of its runs, said once


def test_a_wrong_result_fails_the_checks_of_results_not_every_check(tmp_path: Path) -> None:
    # A grey result failed ten checks, no_network and threads_stopped among them, each
    # with the same message under a long traceback.
    report = check_plugin(ContractCase(plugin=ReturnsGrey, workdir=tmp_path))
    failed = {result.check for result in report.results if result.status == "failed"}
    # (It sends no snapshots either, though its capabilities say it does.)
    results, own = {"accepts_image_kinds", "errors_classified", "batch"}, {"snapshots"}
    assert failed == {"discoverable"} | results | own


@pytest.mark.parametrize(
    ("plugin", "returned"),
    [
        (ReturnsNone, "None, not an image"),
        (ReturnsClosedImage, "an image whose pixels cannot be read (ValueError: Operation on cl"),
    ],
)
def test_no_image_to_compare_skips_deterministic_and_params_take_effect(
    plugin: type[Good], returned: str, tmp_path: Path
) -> None:
    # deterministic broke off on AttributeError: 'NoneType' object has no attribute
    # 'tobytes' (a closed image: ValueError), beside the checks that say what is wrong;
    # params_take_effect failed with accepts_image_kinds's message.
    case = ContractCase(
        plugin=plugin, workdir=tmp_path, realistic_size=None, effective_params=[{"level": 5}]
    )
    report = check_plugin(case)
    failed = {result.check for result in report.results if result.status == "failed"}
    assert failed == {"discoverable", "accepts_image_kinds", "errors_classified", "batch"}
    for check in ("deterministic", "params_take_effect"):
        (result,) = [r for r in report.results if r.check == check]
        assert result.status == "skipped"
        assert result.message.startswith(f"process returned {returned}")
        assert result.message.endswith("so there is nothing to compare; see accepts_image_kinds")


def test_every_check_is_proven_by_a_bad_plugin() -> None:
    assert {check.name for check in CHECKS} == {check for check, *_ in BAD_PLUGINS}


# -- capabilities, GPU-only and expected failures -----------------------------------------


class Modest(Good):
    """Promises nothing beyond the basic contract."""

    capabilities = Capabilities()


class GpuOnly(Good):
    capabilities = Capabilities(gpu_only=True)


def test_checks_a_plugin_does_not_promise_are_skipped_with_the_reason(tmp_path: Path) -> None:
    report = check_plugin(ContractCase(plugin=Modest, workdir=tmp_path))
    skipped = {r.check: r.message for r in report.results if r.status == "skipped"}
    assert skipped == {
        "snapshots": "the plugin does not declare snapshots=True",
        "deterministic": "the plugin does not declare deterministic=True",
        "batch": "the plugin does not declare batching=True",
        "params_take_effect": (
            "no effective_params given: list changes to params that must change the picture "
            "(effective_params = [{'<param>': <value>}]) to have the kit prove that process "
            "reads them"
        ),
    }


def test_gpu_only_plugins_skip_running_checks_without_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stylebox.testing.checks.gpu_available", lambda: False)
    report = check_plugin(ContractCase(plugin=GpuOnly, workdir=tmp_path))
    statuses = {r.check: r.status for r in report.results}
    assert statuses["params_model"] == "passed"
    assert statuses["accepts_image_kinds"] == "skipped"
    assert "GPU-only" in next(r.message for r in report.results if r.check == "cancellation")


def test_expected_failures_are_strict(tmp_path: Path) -> None:
    expected = {"discoverable": "not installed in this test", "params_model": "wrongly listed"}
    report = check_plugin(ContractCase(plugin=Good, workdir=tmp_path), expected)
    statuses = {r.check: r.status for r in report.results}
    assert statuses["discoverable"] == "xfailed"
    assert statuses["params_model"] == "xpassed"
    assert not report.ok


class BlocksAlways(Good):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        _release_event().wait()  # forever, as far as the kit can tell
        return super().process(image, job)


def test_once_a_call_hangs_the_checks_after_it_are_skipped(tmp_path: Path) -> None:
    # Each check that called process waited out the limit again: eleven failures, and
    # twenty minutes at the default limit, for one plugin that blocks.
    began = time.monotonic()
    report = check_plugin(ContractCase(plugin=BlocksAlways, workdir=tmp_path, time_limit=0.3))
    assert time.monotonic() - began < 30
    failed = [r for r in report.results if r.status == "failed" and r.check != "discoverable"]
    (hung,) = failed
    assert "did not return within 0.3 s" in hung.message
    later = report.results[report.results.index(hung) + 1 :]
    assert later and all(r.status == "skipped" for r in later)
    assert {r.message for r in later if "did not return" in r.message} == {
        f"not run: a call into the plugin in {hung.check} did not return, and its thread "
        "still runs; fix that first"
    }


def test_pytest_base_class_reports_skips_xfails_and_failures(tmp_path: Path) -> None:
    """Run the base class the way a plugin author would, in a pytest of its own."""
    (tmp_path / "test_author.py").write_text(
        "from typing import ClassVar\n"
        "from test_contract_kit import BlocksOnTiny, Good, NoProgress, ReturnsNone\n"
        "from stylebox.testing import PluginContract\n\n"
        "class TestGood(PluginContract):\n"
        "    plugin = Good\n"
        "    expected_failures: ClassVar = {'discoverable': 'not installed here'}\n\n"
        "class TestNoProgress(PluginContract):\n"
        "    plugin = NoProgress\n"
        "    expected_failures: ClassVar = {'discoverable': 'not installed here'}\n\n"
        "class TestMissing(PluginContract):\n"
        "    plugin = 'no_such_plugin_xyz'\n\n"
        "class TestReturnsNone(PluginContract):\n"
        "    plugin = ReturnsNone\n"
        "    realistic_size = None\n"
        "    expected_failures: ClassVar = dict.fromkeys(\n"
        "        ['discoverable', 'accepts_image_kinds', 'errors_classified', 'batch'], 'None')\n\n"
        "class TestBlocks(PluginContract):\n"
        "    plugin = BlocksOnTiny\n"
        "    time_limit = 0.5\n"
        "    realistic_size = None\n"
        "    expected_failures: ClassVar = {'discoverable': 'not installed here',\n"
        "                                   'accepts_image_kinds': 'blocks on 1x1'}\n"
    )
    completed = author_pytest(tmp_path, "test_author.py", "-rA")
    out = completed.stdout
    assert completed.returncode == 1, out + completed.stderr
    assert "FAILED test_author.py::TestNoProgress::test_contract[progress_through_context]" in out
    assert "XFAIL test_author.py::TestGood::test_contract[discoverable] - not installed here" in out
    # NoProgress also fails snapshots and batch, which need progress reports too; a plugin
    # that does not load fails once, and the rest of its checks say why they skip
    assert "FAILED test_author.py::TestMissing::test_contract[discoverable]" in out
    assert "the plugin did not load; see the discoverable check" in out
    # time_limit reaches the case: a plugin blocked on a 1x1 image fails (and the blocked
    # thread does not keep pytest from exiting)
    assert "XFAIL test_author.py::TestBlocks::test_contract[accepts_image_kinds] - blocks" in out
    # a check that finds nothing to judge midway skips, saying why
    assert "process returned None, not an image, so there is nothing to compare" in out
    # and the checks after it skip: its thread still runs
    assert "not run: a call into the plugin in accepts_image_kinds did not return" in out
    assert "4 failed, 58 passed, 40 skipped, 8 xfailed" in out  # 5 classes, each_choice each


def test_a_failure_reads_the_finding_first_then_the_plugins_own_traceback(tmp_path: Path) -> None:
    """A check's failure in the author's pytest is what the kit found and what to do, with
    none of the kit's own frames (they came first, and buried it); where the plugin raised,
    its exception follows as Python prints it, from the plugin's own frame."""
    (tmp_path / "test_author.py").write_text(
        "from test_contract_kit import Good, NoProgress\n"
        "from stylebox.testing import PluginContract\n\n"
        "class Explodes(Good):\n"
        "    def process(self, image, job):\n"
        "        raise KeyError('lookup table missing')\n\n"
        "class TestExplodes(PluginContract):\n"
        "    plugin = Explodes\n\n"
        "class TestNoProgress(PluginContract):\n"
        "    plugin = NoProgress\n"
    )
    chosen = "TestExplodes and accepts_image_kinds or TestNoProgress and through_context"
    completed = author_pytest(tmp_path, "test_author.py", "-k", chosen)
    out = completed.stdout
    assert "2 failed" in out, out + completed.stderr
    assert "stylebox/testing/" not in out, out
    no_progress = out[out.index("TestNoProgress.test_contract[progress_through_context]") :]
    assert no_progress.split("\n")[1] == (
        "process reported no progress; call job.progress(step, total)"
    ), out
    explodes = out[out.index("TestExplodes.test_contract[accepts_image_kinds]") :]
    assert explodes.split("\n")[1].startswith("process failed on a 1x1 image: KeyError: "), out
    trace = explodes[explodes.index("Traceback (most recent call last):") :]
    assert trace.split("\n")[1].endswith(", in process"), out  # the plugin's frame first
    assert "KeyError: 'lookup table missing'" in trace


def test_a_slow_import_is_warned_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every command that lists plugins imports them all: a slow one made each take seconds.
    (tmp_path / "slow_plugin.py").write_text(
        "import time\nfrom test_contract_kit import Good\ntime.sleep(0.6)\n\n"
        "class Slow(Good):\n    name = 'slow'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("stylebox.testing.checks.IMPORT_WARN_SECONDS", 0.5)
    from slow_plugin import Slow  # type: ignore[import-not-found]

    said = r"importing the plugin took \d+\.\d s, and every command that loads the plugins"
    with (
        pytest.warns(ContractWarning, match=said) as caught,
        pytest.raises(ContractFailure, match="no entry point named 'slow'"),
    ):
        run_check("discoverable", Slow, tmp_path / "case")
    # Where its author looks: the plugin's class, not the kit's line that noticed it.
    (warned,) = [w for w in caught if issubclass(w.category, ContractWarning)]
    assert (Path(warned.filename).name, warned.lineno) == ("slow_plugin.py", 5)


def test_pytest_exits_when_a_plugin_left_a_thread_running_for_good(tmp_path: Path) -> None:
    # threads_stopped failed, pytest printed its summary, and then waited for the thread
    # at exit, for ever: to its author, a frozen terminal.
    (tmp_path / "test_leaks.py").write_text(
        "import threading\n"
        "from test_contract_kit import Good\n"
        "from stylebox.testing import PluginContract\n\n"
        "class Leaks(Good):\n"
        "    def __init__(self, params, runtime):\n"
        "        super().__init__(params, runtime)\n"
        "        threading.Thread(target=threading.Event().wait, name='forever').start()\n\n"
        "class TestLeaks(PluginContract):\n"
        "    plugin = Leaks\n"
    )
    completed = author_pytest(tmp_path, "test_leaks.py", "-k", "threads_stopped", timeout=120)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 failed" in completed.stdout
    assert completed.stderr.strip().endswith(
        "stylebox contract kit: exiting without waiting for 1 thread(s) a plugin left running "
        "(forever; see its threads_stopped failure)"
    )


# -- issue 18: what a plugin author could slip past ---------------------------------------


class IgnoresCancelButIsQuick(Good):
    """Ignores the flag, but its whole run takes a second: within ``cancel_within``."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in range(1, 21):
            time.sleep(0.05)
            job.progress(step, 20)
        return ImageOps.invert(image)


class TwoStepsThenStops(Good):
    """Finishes the step it was in and one more: within the grace steps."""

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        for step in range(1, 10):
            job.progress(step, 9)
            if job.cancelled and step >= 2:
                raise Cancelled("stopped")
        return ImageOps.invert(image)


class FreeColour(Good):
    class Params(PluginParams):
        model_config = ConfigDict(strict=True)

        level: int = Field(2, ge=1, le=8)
        colour: str = "red"


def test_a_program_started_by_a_plugin_is_caught(tmp_path: Path) -> None:
    with pytest.raises(ContractFailure, match=r"started a program:\n  subprocess.Popen \['true'\]"):
        run_check("no_programs", RunsAProgram, tmp_path)


def test_a_plugin_that_ignores_cancellation_is_caught_even_when_quick(tmp_path: Path) -> None:
    with pytest.raises(ContractFailure, match=r"went on for 19 more steps after job\.cancelled"):
        run_check("cancellation", IgnoresCancelButIsQuick, tmp_path)
    run_check("cancellation", TwoStepsThenStops, tmp_path / "grace")  # passes


def test_a_free_text_param_is_warned_of_unless_invalid_params_cover_it(tmp_path: Path) -> None:
    with pytest.warns(ContractWarning, match="FreeColour.Params|Params.colour accepts any text"):
        run_check("params_reject_bad_values", FreeColour, tmp_path)
    report = check_plugin(ContractCase(plugin=FreeColour, workdir=tmp_path / "r"))
    (result,) = [r for r in report.results if r.check == "params_reject_bad_values"]
    assert result.status == "passed" and "colour accepts any text" in result.message
    covered = {"invalid_params": [{"colour": "not a colour"}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContractWarning)
        with pytest.raises(ContractFailure, match="accepted the invalid params"):
            run_check("params_reject_bad_values", FreeColour, tmp_path, **covered)


def test_a_plugin_that_does_not_load_fails_once(tmp_path: Path) -> None:
    report = check_plugin(ContractCase(plugin="no_such_plugin_xyz", workdir=tmp_path))
    failed = [r for r in report.results if r.status == "failed"]
    assert [r.check for r in failed] == ["discoverable"]
    assert "no_such_plugin_xyz" in failed[0].message
    assert {r.message for r in report.results if r.status == "skipped"} == {
        "the plugin did not load; see the discoverable check"
    }


def test_sample_images_name_their_kinds(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="'flat'; the kinds are gradient, black, white, grey, noise"
    ):
        sample_image((4, 4), "flat")


# -- what a third-party author found passing the kit ---------------------------------------


def test_a_plugin_that_stops_its_threads_in_close_passes(tmp_path: Path) -> None:
    run_check("threads_stopped", StopsItsThread, tmp_path / "stops")
    # a thread that ends on its own soon after close() passes; the sandbox watches it until
    # then, and its late write is caught
    run_check("threads_stopped", WritesLater, tmp_path / "later")


def test_a_float_field_may_allow_infinity_explicitly(tmp_path: Path) -> None:
    run_check("params_reject_bad_values", ExplicitlyAllowsInfinity, tmp_path)


class SpillsBigImagesSlowly(SpillsBigImages):
    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        time.sleep(1.05)  # at 64x48: too slow for the realistic-size run
        return super().process(image, job)


def test_the_realistic_size_run_is_left_out_when_off_or_slow(tmp_path: Path) -> None:
    run_check("writes_only_where_given", SpillsBigImages, tmp_path / "off", realistic_size=None)
    run_check("writes_only_where_given", SpillsBigImagesSlowly, tmp_path / "slow")


def test_what_a_plugin_does_at_import_is_observed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing is not a job: the daemon (and ``stylebox status``) import every plugin."""
    from kit_prints_at_import import PrintsAtImport  # its print goes to pytest's capture

    printed = "printed to stdout at import: 'kit_prints_at_import: hello from the import'"
    with pytest.raises(ContractFailure, match=printed):
        run_check("no_stdout", PrintsAtImport, tmp_path / "class")
    # and through its entry point, as the daemon finds it
    dist = tmp_path / "site" / "kit_prints-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-prints\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[stylebox.plugins]\nkit_prints_at_import = kit_prints_at_import:PrintsAtImport\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ContractFailure, match=printed):
        run_check("no_stdout", "kit_prints_at_import", tmp_path / "entry-point")

    from kit_busy_at_import import BusyAtImport  # quiet here: $KIT_BUSY_AT_IMPORT is unset

    folder = tmp_path / "busy"
    folder.mkdir()
    monkeypatch.setenv("KIT_BUSY_AT_IMPORT", str(folder))
    for check, message in [
        ("writes_only_where_given", rf"\(at import\) open {re.escape(str(folder))}/imported.txt"),
        ("no_network", r"\(at import\) socket.connect \('127.0.0.1', 9\)"),
        ("no_programs", r"\(at import\) subprocess.Popen \['true'\]"),
        ("keeps_working_directory", rf"directory to {re.escape(str(folder))} \(at import\)"),
    ]:
        with pytest.raises(ContractFailure, match=message):
            run_check(check, BusyAtImport, tmp_path / check)


class BlocksAtStart(Good):
    def __init__(self, params: GoodParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        _release_event().wait()


class BlocksInClose(Good):
    def close(self) -> None:
        _release_event().wait()


def test_every_call_into_the_plugin_has_a_time_limit(tmp_path: Path) -> None:
    with pytest.raises(ContractFailure, match=r"starting the plugin \(__init__\) did not return "):
        run_check("accepts_image_kinds", BlocksAtStart, tmp_path / "start", time_limit=0.3)
    with pytest.raises(ContractFailure, match=r"close\(\) did not return within 0.3 s"):
        run_check("accepts_image_kinds", BlocksInClose, tmp_path / "close", time_limit=0.3)
    with pytest.raises(ContractFailure, match=r"process_batch did not return within 0.3 s on 4"):
        run_check("batch", BlocksInBatch, tmp_path / "batch", time_limit=0.3)


class BlocksInBatch(Good):
    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        _release_event().wait()
        return []


class BrokenOutputSize(Good):
    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        raise ValueError("no size")


def test_a_check_that_breaks_off_is_a_failure_in_the_report(tmp_path: Path) -> None:
    report = check_plugin(ContractCase(plugin=BrokenOutputSize, workdir=tmp_path))
    (result,) = [r for r in report.results if r.check == "accepts_image_kinds"]
    # It said "the check broke off on ValueError: no size", naming neither the method nor
    # the size, and pytest showed the kit's own frames.
    assert (result.status, result.message) == (
        "failed",
        "output_size(1, 1) failed: ValueError: no size; it must give the result's size for "
        "every input size",
    )


def test_a_plugin_that_fails_to_start_gets_a_report(tmp_path: Path) -> None:
    report = check_plugin(ContractCase(plugin=FailsToStart, workdir=tmp_path))
    failed = {r.check: r.message for r in report.results if r.status == "failed"}
    # (params_take_effect, given no effective_params, is skipped before it starts one)
    ran = {c.name for c in CHECKS if c.runs_plugin} - {"params_take_effect"}
    assert set(failed) == {"discoverable"} | ran
    del failed["discoverable"]
    for message in failed.values():
        assert "the plugin failed to start with the params {'level': 2}: RuntimeError: no " in (
            message
        )


def test_a_text_metric_is_a_failure_in_the_report(tmp_path: Path) -> None:
    report = check_plugin(ContractCase(plugin=TextMetric, workdir=tmp_path))
    (result,) = [r for r in report.results if r.check == "progress_through_context"]
    assert result.status == "failed"
    assert "metric stage='done', which is not a number" in result.message


def test_a_note_of_a_manifest_field_fails_as_it_does_in_every_real_job(tmp_path: Path) -> None:
    # The kit's context took the note, and passed a plugin that failed every job it ran.
    report = check_plugin(ContractCase(plugin=NotesAManifestField, workdir=tmp_path))
    failed = {r.check: r.message for r in report.results if r.status == "failed"}
    assert "accepts_image_kinds" in failed, failed
    assert "'output' is one of the manifest's own fields" in failed["accepts_image_kinds"]


# -- names another package registers too ----------------------------------------------------


@pytest.fixture
def clashing_modules() -> Iterator[None]:
    yield
    forget_modules()


def test_a_name_two_packages_register_fails_discoverable_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    # It failed with "entry point 'pencil' loads pencil2:OtherPencil, not stylebox_pencil.
    # Pencil" (or passed, by sys.path's order) and passed the other checks.
    for site in rival_pencil_sites(tmp_path):
        monkeypatch.syspath_prepend(str(site))
    said = f"plugin 'pencil' ({BOTH_PENCILS}) failed to load: {PENCIL_CLASH}"
    report = check_plugin(ContractCase(plugin="pencil", workdir=tmp_path / "by-name"))
    failed = [(r.check, r.message) for r in report.results if r.status == "failed"]
    assert failed == [("discoverable", said)]
    from pencil2 import OtherPencil  # type: ignore[import-not-found]
    from stylebox_pencil import Pencil  # type: ignore[import-not-found]

    for plugin in (Pencil, OtherPencil):
        with pytest.raises(ContractFailure) as failure:
            run_check("discoverable", plugin, tmp_path / plugin.__name__)
        assert str(failure.value) == said


def test_a_builtin_plugins_name_fails_discoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    monkeypatch.syspath_prepend(str(rogue_gatys_site(tmp_path)))
    from rogue_gatys import RogueGatys  # type: ignore[import-not-found]

    for plugin in (RogueGatys, "gatys"):  # by name, the kit found the built-in and passed
        case = ContractCase(plugin=plugin, workdir=tmp_path / str(plugin))
        with pytest.raises(ContractFailure) as failure:
            check_named("discoverable").run(case)
        assert str(failure.value) == ROGUE_IGNORED


def test_a_builtin_plugins_name_runs_no_check_on_the_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    # The author's plugin named "gatys" did not load: the other checks ran on stylebox's
    # own gatys and failed with "the sample params {...} are refused by GatysPlugin.Params".
    monkeypatch.syspath_prepend(str(rogue_gatys_site(tmp_path)))
    report = check_plugin(ContractCase(plugin="gatys", params={"strength": 0.8}, workdir=tmp_path))
    assert report.results[0] == CheckResult("discoverable", "failed", ROGUE_IGNORED)
    assert {(r.status, r.message) for r in report.results[1:]} == {("skipped", NOT_LOADED)}


def test_a_class_named_otherwise_than_its_entry_point_says_to_make_them_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    monkeypatch.syspath_prepend(str(misnamed_site(tmp_path)))
    report = check_plugin(ContractCase(plugin="pen", workdir=tmp_path))
    (result,) = [r for r in report.results if r.check == "discoverable"]
    assert result.status == "failed"
    assert result.message.endswith(
        "failed to load: class Pen declares name 'pencil' but is registered as 'pen'; make "
        "Pen.name and the entry point name the same"
    )


class StrictColour(Good):
    class Params(PluginParams):
        model_config = ConfigDict(strict=True)

        level: int = Field(2, ge=1, le=8)
        sharpen: bool = False
        colour: Literal["red", "blue"] = "red"


def test_number_and_truth_params_that_convert_text_are_warned_of(tmp_path: Path) -> None:
    # The kit's row said every field refuses values of the wrong type; a lax Params took
    # level = "2" and sharpen = "yes" from a config and said nothing.
    class LaxColour(StrictColour):
        class Params(PluginParams):
            level: int = Field(2, ge=1, le=8)
            sharpen: bool = False
            colour: Literal["red", "blue"] = "red"
            width: float | str = 2.0  # "2.0" stays text here: nothing converted

    with pytest.warns(
        ContractWarning,
        match=r"converts text to numbers or true/false \(level = '2', sharpen = 'false' passed\)",
    ):
        run_check("params_reject_bad_values", LaxColour, tmp_path, invalid_params=[{"width": [1]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContractWarning)
        run_check("params_reject_bad_values", StrictColour, tmp_path / "strict")


def test_every_setting_of_a_contract_case_is_a_class_attribute_of_plugin_contract(
    tmp_path: Path,
) -> None:
    """An author sets the kit up through PluginContract's attributes: each ContractCase
    setting has one, with the same default, and it reaches the case (batch_tolerance
    had none)."""
    import dataclasses

    from stylebox.testing import PluginContract
    from stylebox.testing.checks import ContractCase

    own = {"plugin", "workdir", "base_dir"}  # the class's plugin; the fixture's folders
    for setting in dataclasses.fields(ContractCase):
        if setting.name in own:
            continue
        assert hasattr(PluginContract, setting.name), setting.name
        default = (
            setting.default_factory()
            if setting.default_factory is not dataclasses.MISSING
            else setting.default
        )
        given = getattr(PluginContract, setting.name)
        # Sequences are lists on the class and tuples in the case: empty either way.
        assert given == default or (not given and not default and given is not None), setting

    class Loose(PluginContract):
        plugin = "posterize"
        batch_tolerance = 5
        device = "cuda:1"

    case = Loose.contract_case.__wrapped__(Loose(), tmp_path)  # the fixture's function
    assert (case.batch_tolerance, case.device) == (5, "cuda:1")


def test_a_misspelt_expected_failure_is_refused_naming_the_check_meant(tmp_path: Path) -> None:
    # {"cancelation": ...} expected nothing, said nothing, and the report was ok.
    said = (
        "expected_failures names no check: 'cancelation' (did you mean 'cancellation'?); "
        "the checks are discoverable, "
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        check_plugin(ContractCase(plugin=Good, workdir=tmp_path), {"cancelation": "slow"})
    (tmp_path / "test_misspelt.py").write_text(
        "from typing import ClassVar\n"
        "from test_contract_kit import Good\n"
        "from stylebox.testing import PluginContract\n\n"
        "class TestGood(PluginContract):\n"
        "    plugin = Good\n"
        "    expected_failures: ClassVar = {'cancelation': 'slow'}\n"
    )
    completed = author_pytest(tmp_path, "test_misspelt.py", "-k", "discoverable or batch")
    assert completed.returncode == 1, completed.stdout
    assert said in completed.stdout and "2 errors" in completed.stdout, completed.stdout


class ClosesBadly(Good):
    def close(self) -> None:
        raise RuntimeError("close broke")


class FastParams(GoodParams):
    fast: bool = False


class ClosesBadlyWhenFast(Good):
    Params = FastParams  # type: ignore[assignment]

    def close(self) -> None:
        if self.params.fast:  # type: ignore[attr-defined]
            raise RuntimeError("close broke")


def test_a_close_that_fails_only_off_the_kits_params_is_said_where_met(tmp_path: Path) -> None:
    # Skipped as "see threads_stopped", which closes an instance of the kit's params and
    # passed: the report was ok.
    report = check_plugin(ContractCase(plugin=ClosesBadlyWhenFast, workdir=tmp_path))
    failed = {r.check: r.message for r in report.results if r.status == "failed"}
    assert set(failed) == {"discoverable", "each_choice"}, str(report)
    assert "close() failed: RuntimeError: close broke" in failed["each_choice"]


def test_one_root_cause_fails_one_check_and_the_others_point_there(tmp_path: Path) -> None:
    # A close() that raised failed 13 checks, and sample params the model refused 16, each
    # with the same message and traceback.
    report = check_plugin(ContractCase(plugin=ClosesBadly, workdir=tmp_path))
    failed = {r.check: r.message for r in report.results if r.status == "failed"}
    assert set(failed) == {"discoverable", "threads_stopped"}, str(report)
    assert failed["threads_stopped"].startswith("close() failed: RuntimeError: close broke")
    pointed = {r.check for r in report.results if r.message.endswith("see threads_stopped")}
    assert {"accepts_image_kinds", "no_network", "batch"} <= pointed

    refused = check_plugin(ContractCase(plugin=Good, workdir=tmp_path, params={"level": 99}))
    failed = {r.check: r.message for r in refused.results if r.status == "failed"}
    assert set(failed) == {"discoverable", "params_model"}, str(refused)
    assert failed["params_model"].startswith("the sample params {'level': 99} are refused")
    skipped = [r.message for r in refused.results if r.status == "skipped"]
    assert (
        skipped.count(
            "not run: the kit's params are refused by the plugin's Params; see params_model"
        )
        >= 10
    )
    # So in an author's pytest.
    (tmp_path / "test_closes.py").write_text(
        "from typing import ClassVar\n"
        "from test_contract_kit import ClosesBadly\n"
        "from stylebox.testing import PluginContract\n\n"
        "class TestClosesBadly(PluginContract):\n"
        "    plugin = ClosesBadly\n"
    )
    completed = author_pytest(tmp_path, "test_closes.py", "-rs", "-k", "threads or network")
    assert "1 failed, 1 skipped" in completed.stdout, completed.stdout
    assert "not judged: close() failed; see threads_stopped" in completed.stdout
