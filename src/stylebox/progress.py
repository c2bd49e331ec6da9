"""Showing job progress to a person: a rich progress bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
import sys
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
from rich.text import Text

from stylebox.daemon.runner import Job, JobResult

log = logging.getLogger("stylebox")


def _metrics_text(metrics: dict[str, float]) -> str:
    shown = [f"{k}={metrics[k]:.4g}" for k in ("loss", "content", "style", "tv") if k in metrics]
    if "its" in metrics:
        shown.append(f"{metrics['its']:.2f} it/s")
    return " ".join(shown)


class BarReporter:
    """A rich progress bar per job, for terminals."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._tasks: dict[str, TaskID] = {}

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
        self._tasks[job.name] = self._progress.add_task(job.name, total=None, metrics="")

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        task = self._tasks[job.name]
        self._progress.update(task, completed=step, total=total, metrics=_metrics_text(metrics))

    def finished(self, job: Job, result: JobResult) -> None:
        seconds = result.manifest["timings"]["total_seconds"]
        self.console.print(f"{job.name} -> {result.names.result} ({seconds:.1f} s)")


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
        log.info("%s: step %d/%d %s", job.name, step, total, _metrics_text(metrics))

    def finished(self, job: Job, result: JobResult) -> None:
        seconds = result.manifest["timings"]["total_seconds"]
        log.info("%s: done -> %s (%.1f s)", job.name, result.names.result, seconds)


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} img/s" if speed else "- img/s", style="progress.data.speed")


@contextlib.contextmanager
def count_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of items done, with rate and ETA, on a terminal; yields ``advance(count)``."""
    if not sys.stderr.isatty():
        yield lambda count: None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda count: progress.advance(task, count)


def reporter_for_stream() -> BarReporter | LogReporter:
    return BarReporter() if sys.stderr.isatty() else LogReporter()
