"""``stylebox batch NAME --ray``: a batch's jobs run on Ray actors, on one machine or many.

Only the *execution* of claimed jobs moves. The journal stays on the machine that runs the
command, whose :class:`~stylebox.daemon.jobloop.JobLoop` claims jobs, renews their leases
and settles what comes back through the same :class:`~stylebox.daemon.pipeline.Pipeline`
code as a local batch. :class:`RayExecutor` stands in for the pipeline's runner: each
claimed group goes to one actor, which owns a plugin instance (loaded once), a
:class:`~stylebox.daemon.runner.Runner` and an :class:`~stylebox.daemon.outbox.Outbox` of
the batch's folder, and writes the outputs there itself, atomically as ever. So the source
folder, the outbox and ``state_dir`` must be at the same paths on every node (a shared
file system).

A stop flag raised on the driver (a drain, a time limit) is passed on to the actor, whose
plugin sees ``job.cancelled``; the other way, the driver asks the actor for its jobs'
latest progress about once a second and reports it as a local run would (``stylebox
status`` shows a Ray job's step and time left). An actor that dies
(its process killed, its node lost) costs the jobs it ran a retryable
:class:`PluginError`; a new actor takes its place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from stylebox.config import ImagesConfig, OutputConfig
from stylebox.daemon import memory
from stylebox.daemon.leases import Stop, StopReason
from stylebox.daemon.outbox import Outbox
from stylebox.daemon.runner import Job, JobResult, PluginHandle, Reporter, Runner
from stylebox.errors import (
    BadInput,
    ConfigError,
    InputChanged,
    MissingCompanion,
    PluginError,
    StyleboxError,
)
from stylebox.plugins.api import Runtime

log = logging.getLogger("stylebox.ray")

INSTALL_HINT = "pip install 'stylebox[ray]'"

_POLL_SECONDS = 0.05
"""How often a waiting call looks for stop flags to pass on to its actor."""

_PROGRESS_SECONDS = 1.0
"""How often a waiting call asks its actor for the progress of its jobs."""

Progress = tuple[int, int, float | None]
"""A job's latest step, total steps and the plugin's ``eta`` (seconds left), if any."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    factory = logging.getLogRecordFactory()
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"a Ray batch needs Ray, which is not installed here ({exc}): {INSTALL_HINT}"
        ) from None
    # Importing Ray puts a field of its own on every log record: our JSON lines included.
    logging.setLogRecordFactory(factory)
    return ray


def connect(address: str | None) -> ModuleType:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine is part of); with
    none, the cluster ``RAY_ADDRESS`` names, else a new local Ray instance (never one a
    stale ``ray start`` left word of, which Ray would wait for without end).

    Plugins found through ``PYTHONPATH`` here are found on the workers too: the driver's
    ``PYTHONPATH`` goes with the job (its folders must exist on every node)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    options: dict[str, Any] = {
        # Workers' output would break the progress bar; their errors come back as results.
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env} if env else None,
    }
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and (why := _unreachable(address)):
        # Ray itself retries a cluster that does not answer for about 14 minutes.
        raise ConfigError(f"cannot connect to {address}: {why}")
    # Ray's core installs a crash reporter for SIGTERM in this process: the command's own
    # handling (a stop, exit 130) is put back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(address="local", include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if address and not os.environ.get("RAY_AUTH_MODE"):
            hint = (
                " (a cluster started with token authentication also needs RAY_AUTH_MODE=token here)"
            )
        raise ConfigError(f"cannot connect to {where}: {first}{hint}") from None
    except (KeyboardInterrupt, SystemExit) as exc:
        # A stop while Ray starts: what it started goes (its agents stayed on for a
        # minute), and Ray's own SIGTERM handler, which exits with status 15 without a
        # word, is a stop like any other (exit 130, "interrupted").
        with contextlib.suppress(Exception):
            ray.shutdown()
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        raise KeyboardInterrupt from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return ray


#: How long a cluster's address may take to answer before a batch gives up on it.
CONNECT_SECONDS = 5.0


def _unreachable(address: str, timeout: float = CONNECT_SECONDS) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``), or
    ``None``: it answers, or is of another form (``auto``), left to Ray."""
    target = address.removeprefix("ray://")
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except socket.gaierror as exc:
        return f"{host} is not a known host ({exc.strerror})"
    except TimeoutError:
        return f"nothing answered at {target} within {timeout:.0f} s"
    except OSError as exc:
        return f"{exc.strerror or exc} at {target}"
    return None


class _Worker:
    """The actor: one plugin instance, loaded once, running the groups it is given.

    Threaded (``max_concurrency`` 2), so that :meth:`cancel` runs while :meth:`execute`
    does."""

    def __init__(
        self,
        name: str,
        version: str,
        params: BaseModel,
        runtime: Runtime,
        images: ImagesConfig,
        output: OutputConfig,
        folder: str,
    ) -> None:
        from stylebox.plugins.registry import discover

        # Ray shows an actor the GPUs it was given as cuda:0.., whichever they are.
        if runtime.device.startswith("cuda:"):
            runtime = Runtime(device="cuda", state_dir=runtime.state_dir, backbone=runtime.backbone)
        instance = discover().get(name)(params, runtime)  # as installed on this node
        self.plugin = PluginHandle(name, version, instance, params)
        self._latest = _LatestProgress()
        self.runner = Runner(images, self._latest)
        self.outbox = Outbox(Path(folder), output)
        self._cancels: dict[int, Stop] = {}
        self._lock = threading.Lock()

    def ready(self) -> dict[str, Any]:
        """Where the actor runs, once its plugin has started."""
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "device_kind": self.plugin.instance.device_kind,
        }

    def execute(self, jobs: list[Job], keys: list[int]) -> list[Any]:
        events = [Stop() for _ in jobs]
        with self._lock:
            self._cancels.update(zip(keys, events, strict=True))
        try:
            outcomes = self.runner.execute_many(jobs, self.plugin, self.outbox, events)
        finally:
            with self._lock:
                for key in keys:
                    self._cancels.pop(key, None)
            for job in jobs:  # failed or cancelled ones too
                self._latest.forget(job)
        memory.give_back()  # the photos' buffers are gone: an idle worker holds none
        return _portable(outcomes, jobs)

    def cancel(self, reasons: dict[int, StopReason]) -> None:
        """Raise the stop flags of jobs ``reasons`` names, each with the driver's reason
        (a timeout is noted in the manifest of a result that comes anyway)."""
        with self._lock:
            for key, reason in reasons.items():
                event = self._cancels.get(key)
                if event is not None:
                    event.stop(reason)

    def progress(self) -> dict[int, Progress]:
        """The latest progress of each running job that reported any, by journal id."""
        return self._latest.snapshot()


class _LatestProgress:
    """The actor's reporter: keeps each running job's latest progress for the driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[int, Progress] = {}

    def started(self, job: Job) -> None:
        pass

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        if job.job_id is not None:
            with self._lock:
                self._latest[job.job_id] = (step, total, metrics.get("eta"))

    def finished(self, job: Job, result: JobResult) -> None:
        self.forget(job)

    def failed(self, job: Job, error: StyleboxError) -> None:
        self.forget(job)

    def forget(self, job: Job) -> None:
        if job.job_id is not None:
            with self._lock:
                self._latest.pop(job.job_id, None)

    def snapshot(self) -> dict[int, Progress]:
        with self._lock:
            return dict(self._latest)


class _ProgressWatch:
    """Asks an actor for its jobs' progress every :data:`_PROGRESS_SECONDS`, without
    waiting for the answer (the actor may be busy or gone), and reports each new step."""

    def __init__(
        self, ray: ModuleType, actor: Any, jobs: Sequence[Job], reporter: Reporter | None
    ) -> None:
        self.ray, self.actor, self.reporter = ray, actor, reporter
        self.jobs = {job.job_id: job for job in jobs if job.job_id is not None}
        self.asked: Any = None
        self.asked_at = time.monotonic()
        self.seen: dict[int, Progress] = {}

    def poll(self) -> None:
        if self.reporter is None or not self.jobs:
            return
        if self.asked is not None:
            if not self.ray.wait([self.asked], timeout=0)[0]:
                return
            try:
                latest: dict[int, Progress] = self.ray.get(self.asked)
            except self.ray.exceptions.RayError:  # the call itself says why, soon enough
                latest = {}
            self.asked = None
            for job_id, progress in latest.items():
                job = self.jobs.get(job_id)
                if job is not None and progress != self.seen.get(job_id):
                    self.seen[job_id] = progress
                    step, total, eta = progress
                    metrics = {} if eta is None else {"eta": eta}
                    self.reporter.progress(job, step, total, metrics)
        if time.monotonic() - self.asked_at >= _PROGRESS_SECONDS:
            self.asked, self.asked_at = self.actor.progress.remote(), time.monotonic()


def _portable(outcomes: list[JobResult | StyleboxError], jobs: list[Job]) -> list[Any]:
    """Outcomes as they can cross to the driver: exceptions whose ``__init__`` takes more
    than the message (:class:`InputChanged`) do not unpickle, so errors travel as parts.
    A plugin's own exception (:attr:`PluginError.plugin_bug`) carries its traceback, once
    for the jobs it ended (a batch's), which the driver logs as a local run does."""
    items: list[Any] = []
    traced: set[int] = set()
    for outcome in outcomes:
        if isinstance(outcome, JobResult):
            items.append(outcome)
            continue
        bug = None
        if isinstance(outcome, PluginError) and outcome.plugin_bug and id(outcome) not in traced:
            traced.add(id(outcome))
            ended = [job.job_id for job, o in zip(jobs, outcomes, strict=True) if o is outcome]
            bug = ("".join(traceback.format_exception(outcome.__cause__)), ended)
        # The second argument of the errors that take one: a sha256, a companion's kind.
        extra = getattr(outcome, "sha256", None) or getattr(outcome, "kind", None)
        items.append(("error", type(outcome), str(outcome), extra, bug))
    return items


def _restored(portable: Any) -> JobResult | StyleboxError:
    if isinstance(portable, JobResult):
        return portable
    _, cls, message, extra, bug = portable
    if bug is not None:  # as a local run logs it: for the plugin's author
        trace, jobs = bug
        log.error(message, extra={"event": "plugin_bug", "jobs": jobs, "exception": trace})
    if issubclass(cls, InputChanged | MissingCompanion):
        return cls(message, extra)
    try:
        return cls(message)
    except Exception:  # a plugin's own error class with another signature: its kind kept
        return BadInput(message) if issubclass(cls, BadInput) else PluginError(message)


class RayExecutor:
    """The pipeline's executor for a Ray batch: ``actors`` actors of one plugin, each
    running one claimed group at a time (so ``actors`` lanes keep them busy).

    ``num_gpus=1`` per actor where the plugin runs on CUDA, one CPU otherwise; actors are
    spread over the cluster's nodes. Progress the actors' plugins report goes to
    ``reporter`` (the pipeline's, which writes it to the journal)."""

    def __init__(
        self,
        ray: ModuleType,
        plugin: PluginHandle,
        runtime: Runtime,
        images: ImagesConfig,
        output: OutputConfig,
        folder: str,
        actors: int,
        reporter: Reporter | None = None,
    ) -> None:
        self.ray = ray
        self.reporter = reporter
        self.cuda = plugin.instance.device_kind == "cuda"
        options: dict[str, Any] = {
            "num_cpus": 1,
            "num_gpus": 1 if self.cuda else 0,
            "max_concurrency": 2,
            "scheduling_strategy": "SPREAD",
        }
        actor_class = ray.remote(_Worker).options(**options)
        # The handle's instance stays here: each actor starts its own from name and params.
        args = (plugin.name, plugin.version, plugin.params, runtime, images, output, folder)
        self._make = lambda: actor_class.remote(*args)
        self._idle: queue.Queue[Any] = queue.Queue()
        self._all: list[Any] = []
        """Every actor of the batch that has not died: idle, busy, or still starting."""
        self._where: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._broken: str | None = None
        """Why no actor is left to run anything, once that is so."""
        self._closed = False
        """Set by :meth:`close`: no actor is started or given work after it."""
        for _ in range(actors):
            self._add()  # idle once its plugin has started (wait_ready)

    def _add(self) -> Any | None:
        """A new actor, or ``None`` once the batch has ended (a job's failure may come back
        after :meth:`close`)."""
        with self._lock:
            if self._closed:
                return None
            actor = self._make()
            self._all.append(actor)
        return actor

    def _take(self) -> Any:
        """An idle actor, when there is one; ``None`` once none is left to wait for."""
        while True:
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                if self._broken is not None:
                    return None

    def wait_ready(self, timeout: float) -> list[dict[str, Any]]:
        """Wait until the first actors have started their plugin; where each runs. The
        batch begins with them, and each of the others joins once Ray places it and its
        plugin has started (one still loading a model, or waiting for a CPU that other work
        holds). While none has started it waits, saying so after 10 s, up to ``timeout``
        seconds; none by then, or a plugin that fails to start on every worker, is a
        :class:`ConfigError`. One that fails beside others that start is one worker less
        (a bad node's plugin fails before the others have loaded)."""
        with self._lock:
            actors = list(self._all)
        refs = [actor.ready.remote() for actor in actors]
        of = dict(zip(refs, actors, strict=True))
        need = "1 GPU" if self.cuda else "1 CPU"
        began = time.monotonic()
        said = False
        found: list[dict[str, Any]] = []
        failed: list[tuple[Any, BaseException]] = []

        def take(done: list[Any]) -> None:
            for ref in done:  # each on its own: one that fails is one worker less
                try:
                    where = self.ray.get(ref)
                except self.ray.exceptions.RayError as exc:
                    failed.append((ref, exc))
                    continue
                self._started(of[ref], where)
                found.append(where)

        pending = list(refs)
        while not found:
            # In short waits: a SIGTERM is acted on between them.
            done, pending = self.ray.wait(pending, num_returns=len(pending), timeout=1.0)
            take(done)
            waited = time.monotonic() - began
            if not found and not pending:  # every one failed: the plugin cannot start
                why = _line(failed[0][1])
                raise ConfigError(f"the plugin failed to start on a Ray worker: {why}")
            if not found and waited >= timeout:
                raise ConfigError(
                    f"Ray placed none of {len(refs)} worker(s) ({need} each) in {timeout:.0f} s;"
                    f" the cluster has {_resources(self.ray)}, in use by other work or too few"
                )
            if not found and not said and waited >= 10.0:
                said = True
                log.warning(
                    "waiting for Ray to place %d worker(s) (%s each); the cluster has %s",
                    len(refs),
                    need,
                    _resources(self.ray),
                )
        if pending:  # the others, started alike, are most likely a moment behind them
            more, pending = self.ray.wait(
                pending, num_returns=len(pending), timeout=min(5.0, time.monotonic() - began)
            )
            take(more)
        for ref, exc in failed:
            self._drop(of[ref], exc)
        if pending:
            log.info(
                "%d more Ray worker(s) join as they start (%s each; the cluster has %s)",
                len(pending),
                need,
                _resources(self.ray),
            )
        for ref in pending:
            self._join(of[ref], ref)
        return found

    def _started(self, actor: Any, where: dict[str, Any]) -> None:
        """``actor`` has started its plugin at ``where``: it takes work from now on (unless
        the batch has ended meanwhile)."""
        with self._lock:
            if self._closed or actor not in self._all:
                return
        self._where[id(actor)] = where
        if self.cuda and where["device_kind"] != "cuda":
            log.warning(
                "the plugin runs on CUDA here but on %s on the Ray worker at %s",
                where["device_kind"],
                where["node"],
            )
        self._idle.put(actor)

    def _join(self, actor: Any, ready: Any) -> None:
        """``actor`` takes work once its plugin has started (``ready`` answers), from a
        thread of its own: the batch goes on meanwhile. One whose plugin fails to start is
        dropped, and when no actor is left, jobs fail saying why."""

        def join() -> None:
            try:
                where = self.ray.get(ready)
            except Exception as exc:
                self._drop(actor, exc)
                return
            self._started(actor, where)

        threading.Thread(target=join, name="ray-join", daemon=True).start()

    def _drop(self, actor: Any, exc: BaseException) -> None:
        """``actor``'s plugin failed to start: the batch goes on without it, and once no
        actor is left, jobs fail saying why."""
        with self._lock:
            if actor not in self._all:
                return  # the batch ended and closed it
            self._all.remove(actor)
            left = len(self._all)
        log.error("a Ray worker failed to start its plugin: %s", _line(exc))
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)
        if left == 0:
            self._broken = f"the plugin failed to start on a Ray worker: {_line(exc)}"

    def execute_many(
        self,
        jobs: Sequence[Job],
        plugin: PluginHandle,
        outbox: Outbox,
        cancels: Sequence[threading.Event],
        on_process: Callable[[Job], None] | None = None,
        on_outcome: Callable[[int, JobResult | StyleboxError], None] | None = None,
    ) -> list[JobResult | StyleboxError]:
        """Run ``jobs`` on an idle actor; what :meth:`Runner.execute_many` returns. The
        actor hands every outcome back at once, so ``on_outcome`` is not called: the caller
        takes them all from the list."""
        if not jobs:
            return []
        actor = self._take()
        if actor is None:
            return [PluginError(f"no Ray worker is left to run it: {self._broken}")] * len(jobs)
        try:  # The actor starts on the group at once; the plugin's start is not seen here.
            for job in jobs:
                if on_process is not None:
                    on_process(job)
                if self.reporter is not None:
                    self.reporter.started(job)
        except BaseException:
            self._idle.put(actor)  # taken and never given back, it would be lost for good
            raise
        outcomes = self._call(actor, jobs, cancels)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, JobResult):
                outbox.release(outcome.names)  # the actor wrote them; the names are theirs
                if self.reporter is not None:
                    self.reporter.finished(job, outcome)
            elif self.reporter is not None:
                self.reporter.failed(job, outcome)
        return outcomes

    def _call(
        self, actor: Any, jobs: Sequence[Job], cancels: Sequence[threading.Event]
    ) -> list[JobResult | StyleboxError]:
        """``jobs`` run on ``actor``, passing on stop flags and progress while it works;
        each job's outcome, or one error for all where the call or the actor failed."""
        keys = list(range(len(jobs)))
        try:
            ref = actor.execute.remote(list(jobs), keys)
            passed: set[int] = set()
            watch = _ProgressWatch(self.ray, actor, jobs, self.reporter)
            while not self.ray.wait([ref], timeout=_POLL_SECONDS)[0]:
                raised = [key for key in keys if cancels[key].is_set() and key not in passed]
                if raised:
                    actor.cancel.remote({key: _reason(cancels[key]) for key in raised})
                    passed.update(raised)
                watch.poll()
            outcomes = [_restored(item) for item in self.ray.get(ref)]
        except self.ray.exceptions.RayActorError as exc:
            error = PluginError(f"{self._died(actor)}: {_line(exc)}")
            self._replace(actor)
            return [error] * len(jobs)
        except self.ray.exceptions.RayError as exc:  # the call itself failed: worth a retry
            self._idle.put(actor)
            return [PluginError(f"the Ray call failed: {_line(exc)}")] * len(jobs)
        except BaseException:
            self._idle.put(actor)
            raise
        self._idle.put(actor)
        return outcomes

    def _died(self, actor: Any) -> str:
        where = self._where.get(id(actor))
        if where is None:
            return "the Ray worker running it died"
        return f"the Ray worker running it (pid {where['pid']} on {where['node']}) died"

    def _replace(self, dead: Any) -> None:
        """Start a new actor in place of one that died. It joins the idle ones once its
        plugin has started: where the cluster has no room for it now (its node is gone),
        the others go on without it, and it joins when room appears. One whose plugin fails
        to start is dropped, and when no actor is left, jobs fail saying why."""
        with self._lock:
            if dead in self._all:
                self._all.remove(dead)
            self._where.pop(id(dead), None)
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(dead, no_restart=True)
        fresh = self._add()
        if fresh is None:
            return
        log.warning("a Ray worker died; starting another in its place")
        self._join(fresh, fresh.ready.remote())

    def actors(self) -> list[dict[str, Any]]:
        """Where each known actor runs (pid, node, device kind)."""
        return list(self._where.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            actors, self._all = list(self._all), []
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)


def actors_wanted(ray: ModuleType, cuda: bool, workers: int | None) -> int:
    """``workers`` actors if the batch sets it, but no more than the cluster has GPUs
    (CUDA plugins) or CPUs for (the others could never be placed: the batch waited for
    them without a word); else one per GPU or CPU of the cluster, so that a batch spreads
    over every machine by default."""
    resources = ray.cluster_resources()
    count = int(resources.get("GPU" if cuda else "CPU", 0))
    if cuda and count == 0:
        raise ConfigError(
            f"the plugin runs on CUDA but the Ray cluster has no GPU ({_resources(ray)})"
        )
    if workers is not None and workers > count > 0:
        log.warning(
            "workers = %d, but the Ray cluster has %s: %d worker(s) (1 %s each)",
            workers,
            _resources(ray),
            count,
            "GPU" if cuda else "CPU",
        )
        return count
    return workers if workers is not None else max(1, count)


def _resources(ray: ModuleType) -> str:
    resources = ray.cluster_resources()
    return f"{int(resources.get('CPU', 0))} CPU(s), {int(resources.get('GPU', 0))} GPU(s)"


def _line(exc: BaseException) -> str:
    """The gist of a Ray error, on one line (Ray's messages run to many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # An actor whose creation failed says so last, after Ray's own preamble.
    for line in reversed(lines):
        if "Error" in line and ":" in line and not line.startswith("File "):
            return line[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def shutdown(ray: ModuleType, executor: RayExecutor | None) -> None:
    """Kill the batch's actors and leave the cluster (a local instance stops with it)."""
    began = time.monotonic()
    if executor is not None:
        executor.close()
    ray.shutdown()
    log.debug("left Ray in %.1f s", time.monotonic() - began)


def _reason(flag: threading.Event) -> StopReason:
    """Why the driver raised a job's stop flag (a plain event: a cancel)."""
    if isinstance(flag, Stop) and flag.reason is not None:
        return flag.reason
    return "cancel"
