"""The job loop: who runs which journal job, and when. The one loop behind ``serve``,
``batch`` and ``run``, which differ only in the sources that queue their jobs.

A :class:`JobLoop` owns everything between the journal and the pipeline: it reclaims the
jobs of processes that died, claims jobs under a lease (with their batch mates, for
plugins that batch), keeps the leases of running jobs alive, starts each job's time limit
when the plugin starts on it, and drains: stopping, it asks running jobs to checkpoint and
puts them back in the queue. What happens to a job once claimed is the pipeline's.

Each source (inbox, batch, run) has its own *lane* of ``workers`` threads that take only
its jobs, so no source's jobs wait behind another's; ``limits`` caps the jobs that run at
once per device type across lanes. The daemon's lanes run until it stops; a batch's or a
run's end when their jobs are all done.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from stylebox.daemon import memory
from stylebox.daemon.journal import JobRow
from stylebox.daemon.leases import Stop, pid_alive
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import Job

log = logging.getLogger("stylebox.jobloop")


class JobLoop:
    """Claims journal jobs and runs them through ``pipeline``.

    ``limits``: at most this many jobs at once per device type (``"cpu"``, ``"cuda"``),
    across all lanes. ``jobs``: claim only these job ids (a ``stylebox run`` runs the files
    it was given, not other queued jobs of its outbox). ``on_ran(rows)`` is called from the
    worker thread after each claimed group has ended (a progress bar's advance)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        limits: Mapping[str, int] | None = None,
        jobs: set[int] | None = None,
        on_ran: Callable[[list[JobRow]], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.journal = pipeline.journal
        self.jobs = jobs
        self.on_ran = on_ran or (lambda rows: None)
        self.stopping = threading.Event()
        """Set by :meth:`stop`: no job is claimed from then on."""
        self.limits = dict(limits or {})
        self._slots = {device: threading.Semaphore(n) for device, n in self.limits.items()}
        self._stops: dict[int, Stop] = {}
        """The stop flag of each job this loop is running."""
        self._lanes: dict[str, dict[int, threading.Thread]] = {}
        self._until_empty = False
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._cancel_on_claim: dict[int, float] = {}
        """Jobs cancelled (when) after this process claimed them and before their stop flags
        were in ``_stops``: stopped as soon as they are, if that claim came before the
        cancel (a later claim, of a job retried by hand, is not the one cancelled)."""
        self._heartbeat: threading.Thread | None = None

    # -- one job at a time ------------------------------------------------------------------

    def reclaim(self, sources: set[str] | None = None) -> int:
        """Put the running jobs of dead processes back in the queue; how many. Called at
        start, before :meth:`start` (serve, batch, run). On this
        host at once (this very process's too, while it runs none: a restart that got the
        old process id, as a container's first process does); elsewhere when their lease
        runs out, only among ``sources`` when given (a batch or a run leaves the jobs of
        a daemon whose lease lapsed while the machine slept to that daemon)."""
        with self._lock:
            idle = not self._stops
        me = os.getpid()

        def alive(pid: int) -> bool:
            return not (pid == me and idle) and pid_alive(pid)

        return self.journal.reclaim_dead(
            socket.gethostname(), alive
        ) + self.journal.reclaim_expired(sources)

    def run_next(self, keys: set[str]) -> list[JobRow]:
        """Claim the oldest runnable job of ``keys`` (with queued jobs of its source to run
        beside it, for a plugin that batches) and run them to their end; the rows run,
        ``[]`` when none was runnable."""
        if self.stopping.is_set():
            return []
        rows = self._claim(keys)
        if not rows:
            return []
        stops = {row.id: Stop(row.claimed_at) for row in rows}
        with self._lock:
            for job_id, stop in stops.items():
                if (earlier := self._stops.get(job_id)) is not None:
                    earlier.stop("lost")  # its lease lapsed, and here it is again
                asked = self._cancel_on_claim.pop(job_id, None)
                if asked is not None and (stop.claimed_at or 0.0) <= asked:
                    stop.stop("cancel")
            self._stops.update(stops)
        if self.stopping.is_set():  # stopped between the claim and now: back to the queue
            for stop in stops.values():
                stop.stop("drain")
        source = self.pipeline.sources.get(rows[0].source)
        timeout = source.config.timeout_seconds if source is not None else None
        timers: dict[int, list[threading.Timer]] = {}

        def start_clock(job: Job) -> None:
            # A job's time limit runs from when the plugin starts on it, not from the claim:
            # claimed together, the later jobs of a batch wait for the earlier ones.
            if timeout and job.job_id in stops:
                # At the limit the job is asked to stop; at twice it, if it has not, its
                # plugin is not looking at job.cancelled, and the lane is held: say so.
                late = (job.job_id, timeout, source.plugin.name if source else "?")
                for delay, action, args in (
                    (timeout, stops[job.job_id].stop, ("timeout",)),
                    (2 * timeout, _overrun, late),
                ):
                    timer = threading.Timer(delay, action, args=args)
                    timer.daemon = True
                    timer.start()
                    timers.setdefault(job.job_id, []).append(timer)

        def ended(row: JobRow) -> None:
            # Its end is recorded: it may be queued or running again, in another claim, and
            # a cancel or a heartbeat must find that one, not this run's flag.
            for timer in timers.pop(row.id, []):
                timer.cancel()
            with self._lock:
                if self._stops.get(row.id) is stops[row.id]:
                    del self._stops[row.id]

        try:
            self.pipeline.run(rows, stops, start_clock, ended)
        finally:
            for row in rows:
                ended(row)
            memory.give_back()  # what the jobs' photos took, the daemon idles without
        self.on_ran(rows)
        return rows

    def run_until_empty(self, keys: set[str]) -> None:
        """Run jobs of ``keys`` in this thread until none is queued (retries waiting out
        their backoff included) or the loop stops."""
        while not self.stopping.is_set() and self.journal.queued(keys, self.jobs):
            if not self.run_next(keys):
                with self._wake:
                    self._wake.wait(timeout=0.2)  # only retries in their backoff are left

    def _claim(self, keys: set[str]) -> list[JobRow]:
        daemon = self.pipeline.loaded.config.daemon
        owner, lease = self.pipeline.owner, daemon.lease_seconds
        try:
            row = self.journal.claim(owner, lease, keys, self.jobs)
        except Exception:
            log.exception("cannot claim from the journal")
            return []
        if row is None:
            return []
        source = self.pipeline.sources.get(row.source)
        size = daemon.batch_size
        if source is None or size < 2 or not source.plugin.instance.capabilities.batching:
            return [row]
        if row.attempts > 1:
            # A retry runs alone: a fault of its batch is not had again, and a result that
            # breaks the contract is judged as the job's own (failed at once, not retried).
            return [row]
        try:
            return [row, *self.journal.claim_many(owner, lease, row.source, size - 1, self.jobs)]
        except Exception:
            log.exception("cannot claim from the journal")
            return [row]

    # -- lanes ------------------------------------------------------------------------------

    def start(self, until_empty: bool = False) -> None:
        """Start the lease keeper and a lane for each of the pipeline's sources.

        ``until_empty``: each lane ends when its source has no queued job left (a batch, a
        run); otherwise lanes run until :meth:`stop` (the daemon). Called again after a
        reload, it starts the lanes of new sources and the threads a source's ``workers``
        gained; a lane whose source is gone, or a thread beyond its count, ends after its
        job."""
        self._until_empty = until_empty
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._keep_leases, name="leases", daemon=True)
            self._heartbeat.start()
        for key, source in sorted(self.pipeline.sources.items()):
            lane = self._lanes.setdefault(key, {})
            for index in range(source.config.workers):
                thread = lane.get(index)
                if thread is not None and thread.is_alive():
                    continue
                thread = threading.Thread(
                    target=self._work, args=(key, index), name=f"worker-{key}-{index}", daemon=True
                )
                lane[index] = thread
                thread.start()
        self._warn_limits()

    def _warn_limits(self) -> None:
        for device, limit in sorted(self.limits.items()):
            sources = self.pipeline.sources.values()
            lanes = sum(s.config.workers for s in sources if s.device_type == device)
            if limit < lanes:
                inboxes = any(s.moves_inputs for s in sources if s.device_type == device)
                log.warning(
                    "[daemon] workers limits %s to %d job(s) at once for %d %s worker(s): %s",
                    device,
                    limit,
                    lanes,
                    "inbox" if inboxes else "batch",
                    "an inbox's jobs can wait behind another's"
                    if inboxes
                    else "fewer of its jobs run at once than its workers say",
                    extra={"event": "device_limit"},
                )

    def _work(self, key: str, index: int) -> None:
        while not self.stopping.is_set():
            source = self.pipeline.sources.get(key)
            if source is None or index >= source.config.workers:
                return  # a reload removed its source, or lowered its workers
            if self._until_empty and not self.journal.queued({key}, self.jobs):
                return
            slot = self._slots.get(source.device_type)
            if slot is not None and not slot.acquire(timeout=0.5):
                continue  # the device type is at its limit
            try:
                rows = self.run_next({key})
            finally:
                if slot is not None:
                    slot.release()
            if not rows:
                with self._wake:
                    self._wake.wait(timeout=0.5)

    def wake(self) -> None:
        """New jobs are queued: idle lanes look now, not at their next poll."""
        with self._wake:
            self._wake.notify_all()

    def wait(self) -> None:
        """Until every lane has ended (``start(until_empty=True)``), or the loop stopped
        and its running jobs are back in the queue. Waits in short steps, so that this
        (main) thread still runs signal handlers."""
        for thread in self._threads():
            while thread.is_alive():
                thread.join(timeout=0.2)

    def _keep_leases(self) -> None:
        """Renew the lease of every job this loop runs, three times a lease. A job whose
        lease is no longer its run's (it lapsed, the machine asleep, and another worker
        claimed the job) is stopped: two runs of one job would write the same files."""
        while True:
            lease = self.pipeline.loaded.config.daemon.lease_seconds
            time.sleep(lease / 3)
            with self._lock:
                running = list(self._stops.items())
            for job_id, stop in running:
                try:
                    kept = self.journal.heartbeat(
                        job_id, self.pipeline.owner, lease, stop.claimed_at
                    )
                except Exception:  # the next beat tries again; the lease has slack for it
                    log.exception("cannot renew the lease of job %s", job_id)
                    continue
                if not kept:
                    stop.stop("lost")  # over any other reason: the job is not ours to end

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Claim nothing more, and ask every running job to checkpoint and stop; they go
        back to the queue, to resume at the next start."""
        self.stopping.set()
        with self._lock:
            for flag in self._stops.values():
                flag.stop("drain")
        self.wake()

    def cancel(self, job_id: int) -> bool:
        """Ask the running job ``job_id`` to stop; it ends as failed (see :class:`Stop`).
        ``False`` if this loop is not running it. A job this process has claimed but not
        yet started is stopped as it starts (the claim and the stop flag are not one step,
        and the journal is not read under the loop's lock)."""
        with self._lock:
            stop = self._stops.get(job_id)
        if stop is None:
            row = self.journal.get(job_id)
            if row.state != "running" or row.lease_owner != self.pipeline.owner:
                return False
            with self._lock:
                stop = self._stops.get(job_id)
                if stop is None:
                    self._cancel_on_claim[job_id] = time.time()
                    return True
        stop.stop("cancel")
        return True

    def drain(self, seconds: float) -> int:
        """:meth:`stop`, then wait up to ``seconds`` for the running jobs to be back in the
        queue; the number of worker threads still busy after that."""
        self.stop()
        deadline = time.monotonic() + seconds
        for thread in self._threads():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self._threads())

    # -- looking on -------------------------------------------------------------------------

    def running_count(self) -> int:
        with self._lock:
            return len(self._stops)

    def healthy(self) -> bool:
        """The lease keeper, and every worker thread the sources ask for, alive."""
        wanted = [
            self._lanes.get(key, {}).get(index)
            for key, source in self.pipeline.sources.items()
            for index in range(source.config.workers)
        ]
        keeper = self._heartbeat is not None and self._heartbeat.is_alive()
        return keeper and all(t is not None and t.is_alive() for t in wanted)

    def _threads(self) -> list[threading.Thread]:
        return [thread for lane in self._lanes.values() for thread in lane.values()]


def _overrun(job_id: int | None, timeout: float, plugin: str) -> None:
    log.warning(
        "job %s has run twice its time limit (timeout_seconds = %g) and goes on: plugin %s "
        "does not stop when job.cancelled turns true, so its lane waits until it returns",
        job_id,
        timeout,
        plugin,
        extra={"event": "overrun", "job": job_id},
    )


@contextmanager
def stop_on_signals(loop: JobLoop) -> Iterator[None]:
    """For a command in the foreground (``batch``, ``run``): the first Ctrl-C or SIGTERM
    stops ``loop``, so running jobs checkpoint and go back to the queue, to resume when the
    command is given again; a second one interrupts at once (``KeyboardInterrupt``)."""

    received: list[int] = []
    ended = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # No lock here (stop() takes several): the main thread may hold one of them where
        # the signal interrupted it, and would wait on itself. A watcher thread stops.
        received.append(signum)
        for sig in signals:  # a second one of either kind interrupts
            signal.signal(sig, signal.default_int_handler)

    def watch() -> None:
        while not ended.wait(0.05):
            if received:
                loop.stop()
                return

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    watcher = threading.Thread(target=watch, name="signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        ended.set()
        watcher.join()
        if received and not loop.stopping.is_set():  # a second signal came before the watcher
            loop.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
