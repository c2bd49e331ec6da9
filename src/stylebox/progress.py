"""Showing job progress to a person: a rich progress bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from stylebox import logs
from stylebox.daemon.runner import Job, JobResult
from stylebox.errors import StyleboxError

log = logging.getLogger("stylebox")


def _metrics_text(metrics: dict[str, float]) -> str:
    shown = [
        f"{k}={metrics[k]:.4g}" for k in ("loss", "content", "style", "tv", "photo") if k in metrics
    ]
    if "its" in metrics:
        shown.append(f"{metrics['its']:.2f} it/s")
    return " ".join(shown)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _NameColumn(ProgressColumn):
    """The job's name, cut from the left to ``width`` characters: the file name at its end
    is what tells jobs apart (``…starry/kodim05.png``)."""

    def __init__(self, width: int) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.width = width

    def render(self, task: Task) -> Text:
        name = task.description
        if len(name) > self.width:
            name = "…" + name[-(self.width - 1) :]
        return Text(name, style="bold")


class _StepColumn(ProgressColumn):
    """``12/300`` (padded, so the row keeps its layout), or ``starting`` until the plugin
    has reported its first step and with it the total."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("starting", style="progress.download")
        total = str(int(task.total))
        return Text(f"{int(task.completed):>{len(total)}}/{total}", style="progress.download")


class _MetricsColumn(ProgressColumn):
    """The metrics text. Its column is the one the table narrows first (with the bar), and
    the text is cut with an ellipsis rather than wrapped onto a second line."""

    def render(self, task: Task) -> Text:
        return Text(task.fields["metrics"], no_wrap=True, overflow="ellipsis")


class _EtaColumn(ProgressColumn):
    """Time left: the plugin's own estimate (its ``eta`` metric, counted down between
    reports) when its last report had one, else rich's estimate from the recent speed."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("eta_deadline")
        seconds: float | None
        if task.finished:
            seconds = 0
        elif deadline is not None:
            seconds = max(0, math.ceil(deadline - time.monotonic()))
        else:
            seconds = task.time_remaining
        shown = "-:--:--" if seconds is None else _clock(seconds)
        return Text(f"eta {shown}", style="progress.remaining")


def _eta_deadline(metrics: dict[str, float]) -> float | None:
    """When the plugin's ``eta`` metric says the job ends (monotonic clock), if it gave one."""
    eta = metrics.get("eta")
    if eta is None or not math.isfinite(eta):
        return None
    return time.monotonic() + max(0.0, eta)


class BarReporter:
    """A rich progress bar per job, for terminals.

    At 80 columns the row still shows the job, the step count, the elapsed time and the time
    left: the name is cut to 20 characters, and the bar and the metrics text narrow (the
    text cut with an ellipsis) to leave them room.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            _NameColumn(width=20),
            BarColumn(bar_width=20),  # narrowed first, with the metrics text (wrappable columns)
            _StepColumn(),
            _MetricsColumn(),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            _EtaColumn(),
            console=self.console,
        )
        self._tasks: dict[str, tuple[Job, TaskID]] = {}
        """Each job's bar, with the run it shows (a job claimed again while its lost run
        winds down has two runs; the newer one's bar is the one shown)."""

    def __rich__(self) -> Progress:
        """What the bars show now (for a test, or another console)."""
        return self._progress

    def __enter__(self) -> BarReporter:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def started(self, job: Job) -> None:
        older = self._tasks.get(job.name)
        if older is not None:  # a lost run's bar, which would stay frozen
            self._remove(older[0])
        # (A name's line break or escape shown as such: printed, it broke the bar's line.)
        task = self._progress.add_task(
            logs.shown(job.name), total=None, metrics="", eta_deadline=None
        )
        self._tasks[job.name] = (job, task)

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        shown, task = self._tasks.get(job.name, (None, None))
        if shown is not job or task is None:
            return
        self._progress.update(
            task,
            completed=step,
            total=total,
            metrics=_metrics_text(metrics),
            eta_deadline=_eta_deadline(metrics),
        )

    def finished(self, job: Job, result: JobResult) -> None:
        seconds = result.manifest["timings"]["total_seconds"]
        # A file name is text, not markup: "[/b]x.png" would raise MarkupError.
        line = logs.shown(f"{job.name} -> {result.names.result} ({seconds:.1f} s)")
        self.console.print(line, markup=False, highlight=False)
        # Its bar goes: drawn again below its done line, a full bar read as an empty one.
        self._remove(job)

    def failed(self, job: Job, error: StyleboxError) -> None:
        # The log says why and what comes next (a retry, failed/); a bar left behind would
        # sit frozen under the jobs still running, read as one still at work.
        self._remove(job)

    def _remove(self, job: Job) -> None:
        shown, task = self._tasks.get(job.name, (None, None))
        if shown is job and task is not None:  # not a newer run's bar
            del self._tasks[job.name]
            self._progress.remove_task(task)


def _log_step(
    job: Job,
    step: int,
    total: int,
    metrics: dict[str, float],
    fields: dict[str, object] | None = None,
) -> None:
    """The log line of a job's step: ``name: step 12/300 loss=... 0.38 it/s``."""
    text = _metrics_text(metrics)
    log.info("%s: step %d/%d%s", job.name, step, total, f" {text}" if text else "", extra=fields)


class StepLogReporter:
    """A daemon's or batch's running jobs in its log: each job's step, total and metrics at
    most once every ``interval`` seconds, for whoever reads the log rather than the status
    page (a 30-minute job logged only that it started and, at the end, was done). Its
    start and end are the pipeline's own lines; nothing when ``interval`` is 0."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}

    def started(self, job: Job) -> None:
        if job.job_id is not None:
            self._last[job.job_id] = time.monotonic()  # a first line an interval in

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if not self.interval or job.job_id is None or step >= total:
            return
        # (A job without an entry, dropped by a lost run of it that ended, starts anew.)
        if now - self._last.setdefault(job.job_id, now) < self.interval:
            return
        self._last[job.job_id] = now
        fields = {"event": "progress", "job": job.job_id, "step": step, "total": total}
        _log_step(job, step, total, metrics, fields)

    def finished(self, job: Job, result: JobResult) -> None:
        self._last.pop(job.job_id or 0, None)

    def failed(self, job: Job, error: StyleboxError) -> None:
        self._last.pop(job.job_id or 0, None)


class LogReporter:
    """Plain log lines, at most one progress line per ``interval`` seconds per job."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def __enter__(self) -> LogReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def started(self, job: Job) -> None:
        log.info("%s: started", job.name)

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if step < total and now - self._last.get(job.name, 0.0) < self.interval:
            return
        self._last[job.name] = now
        _log_step(job, step, total, metrics)

    def finished(self, job: Job, result: JobResult) -> None:
        seconds = result.manifest["timings"]["total_seconds"]
        log.info("%s: done -> %s (%.1f s)", job.name, result.names.result, seconds)
        self._last.pop(job.name, None)

    def failed(self, job: Job, error: StyleboxError) -> None:
        self._last.pop(job.name, None)  # the pipeline's log line says why


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} img/s" if speed else "- img/s", style="progress.data.speed")


@contextlib.contextmanager
def count_bar(label: str, total: int, lines: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A bar of items ended, with how many failed, the rate and the ETA, on a terminal;
    elsewhere, with ``lines``, a log line of the same every :data:`COUNT_LINE_SECONDS`.
    Yields ``advance(ended, failed)``: ``ended`` items more are done or failed, ``failed``
    of them failed."""
    if not sys.stderr.isatty():
        yield _count_lines(label, total) if lines else lambda ended, failed=0: None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed", style="red"),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(label, total=total, failed=0)

        def advance(ended: int, failed: int = 0) -> None:
            failed += progress.tasks[task].fields["failed"]
            progress.update(task, advance=ended, failed=failed)

        yield advance


#: Seconds between the count lines of a batch (or a training) whose stderr is no terminal.
COUNT_LINE_SECONDS = 30.0


def _count_lines(label: str, total: int) -> Callable[[int, int], None]:
    """:func:`count_bar`'s ``advance`` where there is no terminal: a log line as items end,
    at most each :data:`COUNT_LINE_SECONDS`, and at the last one, so that a long batch under
    journald shows it is going (it said nothing between its jobs' start and end lines)."""
    interval = COUNT_LINE_SECONDS
    began = time.monotonic()
    last = began
    counts = {"ended": 0, "failed": 0}
    lock = threading.Lock()  # workers' threads end jobs at once

    def advance(ended: int, failed: int = 0) -> None:
        nonlocal last
        with lock:
            counts["ended"] += ended
            counts["failed"] += failed
            now = time.monotonic()
            if not ended or (now - last < interval and counts["ended"] < total):
                return
            last = now
            done, failures, elapsed = counts["ended"], counts["failed"], now - began
        left = ""
        if 0 < done < total:
            left = f", about {_clock(elapsed / done * (total - done))} left"
        log.info(
            "%s: %d of %d ended (%d failed) in %s%s",
            label,
            done,
            total,
            failures,
            _clock(elapsed),
            left,
            extra={"event": "count", "ended": done, "total": total, "failed": failures},
        )

    return advance


def reporter_for_stream() -> BarReporter | LogReporter:
    return BarReporter() if sys.stderr.isatty() else LogReporter()
