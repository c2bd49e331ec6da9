"""A job's background writer: what a job hands over while it runs (snapshots, the frames
of its animation, its history, checkpoints) is encoded and written on a thread of its
own, so the plugin's next step does not wait for PNG encoders, GIF quantisers or the disk.

Work runs in the order it was handed over, so a checkpoint lands after the history and
snapshots before it. The queue is bounded: a plugin that outruns the disk waits for it
(back-pressure) instead of piling images up in memory. The first error stops the writer
and surfaces on the job: at the next hand-over, and when the runner flushes the writer at
the end of the job, before any result is written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from stylebox.errors import PluginError, StorageError, describe

log = logging.getLogger("stylebox.writer")

#: Tasks waiting at most: enough to ride out a slow write, few enough that the images held
#: in memory stay small.
DEPTH = 4


class JobWriter:
    """Runs one job's write tasks in order on a background thread (started on first use)."""

    def __init__(self, label: str, depth: int = DEPTH) -> None:
        self.label = label
        self._tasks: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        self._error: PluginError | None = None

    def submit(self, what: str, task: Callable[[], None]) -> None:
        """Queue ``task`` (``what`` names it in an error); waits while the queue is full.
        Raises the writer's error if an earlier task failed."""
        self.raise_error()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"writer-{self.label}", daemon=True
            )
            self._thread.start()
        self._tasks.put((what, task))

    def flush(self) -> None:
        """Wait until every task handed over so far has run; raise the error of one that
        failed."""
        if self._thread is not None:
            self._tasks.join()
        self.raise_error()

    def close(self) -> None:
        """Flush, then end the thread. Raises like :meth:`flush`, after the thread ends."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._tasks.put(None)
                self._thread.join()
                self._thread = None

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            try:
                if item is None:
                    return
                what, task = item
                if self._error is None:  # after a failure, the rest is dropped
                    try:
                        task()
                    except Exception as exc:
                        # A disk's refusal is storage's; anything else (an image that
                        # cannot be encoded, a bug) is a fault like a plugin's, with its
                        # traceback: calling it storage sent people to check their disks.
                        message = f"writing {what} failed: {describe(exc)}"
                        if isinstance(exc, OSError):
                            error: PluginError = StorageError(message, exc)
                        else:
                            error = PluginError(message)
                            error.__cause__ = exc
                        self._error = error
                        log.warning(
                            "%s: %s", self.label, error, exc_info=not isinstance(exc, OSError)
                        )
            finally:
                self._tasks.task_done()
