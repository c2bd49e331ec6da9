"""``stylebox serve``: watched inboxes, workers, signals and the systemd protocol.

SIGTERM stops taking jobs, asks running ones to checkpoint, and exits within the drain
time; the next start resumes them. SIGHUP reloads the config: everything the new config
needs (plugin instances, folders, the watcher) is built first and swapped in only once all
of it worked; a new config that is bad, or that fails while it is built (whatever the
exception), is refused in one log line, the plugin instances made for it are closed, and
the old one keeps running. One that is applied goes to the pipeline as one
``Pipeline.reconfigure`` call (output names of unfinished jobs stay taken; plugin instances
no longer used are closed once no job runs them). Jobs run in the :class:`JobLoop` that
``batch`` and ``run`` use too: each inbox and batch has its own lane of ``workers`` threads
that take only its jobs, so no inbox's jobs wait behind another's; a reload starts and
stops lanes and threads to match the new config. ``[daemon] workers`` limits the jobs that
run at once per device type across lanes (read at start).

With ``[http] listen`` set, the status page (``stylebox.web``) runs in a thread of the
daemon. It reads the journal, work folders and outboxes itself; the service gives it the
current sources and two actions, :meth:`Service.retry` and :meth:`Service.cancel`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from stylebox.config import InboxConfig, LoadedConfig, http_address, load_config
from stylebox.daemon import files, problems_file
from stylebox.daemon.jobloop import JobLoop
from stylebox.daemon.journal import JobRow, Journal, journal_path
from stylebox.daemon.locks import InboxLocks
from stylebox.daemon.notify import notify, watchdog_interval
from stylebox.daemon.pipeline import Pipeline, move_input
from stylebox.daemon.sources import Source, build_sources, close_plugin
from stylebox.daemon.watcher import InboxWatcher, WatchedFolder
from stylebox.errors import ConfigError, StyleboxError, describe
from stylebox.logs import shown
from stylebox.plugins.api import Plugin
from stylebox.plugins.registry import Registry, discover
from stylebox.progress import StepLogReporter
from stylebox.web.state import SourceInfo

if TYPE_CHECKING:
    from stylebox.web.server import HttpServer

log = logging.getLogger("stylebox.service")


class Service:
    def __init__(self, config_path: Path) -> None:
        # Absolute: a reload must find it again whatever the working directory is by then.
        self.config_path = config_path.absolute()
        self.registry = discover()
        self.loaded = load_config(config_path, self.registry)
        state_dir = self.loaded.config.state_dir
        files.make_folder("state_dir", state_dir)
        # Before the (slow) plugin start-up: a second daemon is refused at once.
        self._lock_file = _exclusive_lock(state_dir / "serve.lock")
        # And one daemon per inbox, whatever its state dir (see locks.py).
        self._inbox_locks = InboxLocks(state_dir)
        self._inbox_locks.acquire(self.loaded.config.inbox)
        self._instances: dict[tuple[str, str], Plugin[Any]] = {}
        self.sources = self._build(self.loaded, self.registry, self._instances)
        _log_disabled(self.loaded)
        self.journal = Journal(journal_path(state_dir), running_marker=True)
        self._steps = StepLogReporter(self.loaded.config.daemon.progress_log_seconds)
        self.pipeline = Pipeline(self.loaded, self.sources, self.journal, reporter=self._steps)
        # ``[daemon] workers``: each limited device type's slots, read at start.
        self.loop = JobLoop(self.pipeline, limits=self.loaded.config.daemon.workers)
        self._exit_status = 0
        """What :meth:`run` returns after the drain: 1 when the daemon stopped itself."""
        self.pipeline.on_queued = self.loop.wake
        self.watcher = self._watcher(self.loaded, self.sources)
        self._signals: list[int] = []
        """Signals received and not yet acted on, in order. The handlers only append here:
        a handler runs in the main thread between any two of its bytecodes, perhaps while
        it holds a lock (an Event's, inside a wait), so a handler that takes one can wait
        on itself for good."""
        self.http: HttpServer | None = None
        self._reload_refused: tuple[float, str] | None = None
        """When the last reload was refused and why, until one is applied."""
        self._http_kept: tuple[float, str] | None = None
        """When a reload's new ``[http] listen`` could not be listened on, and why: the
        page stays at its old address until one can."""
        self._problems: tuple[dict[str, Any], ...] = ()
        """What :meth:`problems` answers: made whole on this (the main) thread, between
        a reload's swaps and the watcher's restarts, which the web thread must not see
        halfway (a stopped watcher has every folder unwatched)."""
        self._published: tuple[dict[str, Any], ...] | None = None
        """The problems last written for ``stylebox status`` (see :meth:`_publish`)."""
        self._unpublished: tuple[dict[str, Any], ...] | None = None
        """Those whose write failed, said once."""

    @staticmethod
    def _build(
        loaded: LoadedConfig, registry: Registry, instances: dict[tuple[str, str], Plugin[Any]]
    ) -> dict[str, Source]:
        """The sources of ``loaded``, then its folders. Plugin instances come from
        ``instances`` where equal ones exist; new ones are added to it, so that a caller
        that gives up can close exactly those."""
        sources = build_sources(loaded, registry, ("inbox", "batch"), instances=instances)
        for inbox in loaded.config.inbox:
            for field in ("path", "outbox", "processed_dir", "failed_dir"):
                files.make_folder(f"inbox {inbox.name!r} {field}", getattr(inbox, field))
        return sources

    def _watcher(self, loaded: LoadedConfig, sources: dict[str, Source]) -> InboxWatcher:
        folders = []
        for inbox in loaded.config.inbox:
            if f"inbox:{inbox.name}" not in sources:
                continue  # disabled: its files stay where they are
            folders.append(
                WatchedFolder(
                    name=inbox.name,
                    path=inbox.path,
                    settle_seconds=inbox.settle_seconds,
                    poll=inbox.watch == "poll",
                    poll_interval=inbox.poll_interval,
                    reserved=inbox.reserved(),
                    fed=inbox.fed_by is not None,
                )
            )

        def on_settled(folder: WatchedFolder, paths: list[Path]) -> None:
            # During a reload the new watcher runs a moment before its sources are swapped
            # into the pipeline; files it settles then would reserve output names in
            # outboxes that do not know the queued jobs' names yet. They are left to the
            # rescan that follows the swap.
            if self.pipeline.sources is not sources:
                return
            source = sources.get(f"inbox:{folder.name}")
            if source is not None and not self._inbox_locks.lost(folder.path):
                self.pipeline.enqueue(source, paths)

        return InboxWatcher(folders, on_settled)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: self._signals.append(signum))
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack
        reclaimed = self.loop.reclaim()
        if reclaimed:
            log.info("resuming %d interrupted job(s)", reclaimed)
        self.pipeline.adopt_renamed()  # before the watcher's first scan sees their photos
        try:
            self._start_http()  # an address that cannot be listened on refuses the start
        except BaseException:
            self._close()  # a clean stop: the next start finds no unclean one to warn of
            raise
        self.watcher.start()
        problems_file.withdraw(self.loaded.config.state_dir)  # a killed daemon's, if left
        self._refresh_problems()
        self.loop.start()
        names = _inbox_names(self.sources)
        log.info(
            "serving", extra={"inboxes": names, "state_dir": str(self.loaded.config.state_dir)}
        )
        notify("READY=1", f"STATUS=watching {names}")

        ping = watchdog_interval()
        last_rescan = last_ping = last_status = time.monotonic()
        gone_looks = 0
        while True:
            time.sleep(0.2)
            received = []
            while self._signals:
                received.append(self._signals.pop(0))
            if signal.SIGTERM in received or signal.SIGINT in received:
                break
            now = time.monotonic()
            # Before the watcher watches a remade inbox folder again: its lock goes first,
            # or a second daemon could take the new folder's.
            self._inbox_locks.refresh()
            # Seen at five looks in a row (a second): not a network share's passing hiccup.
            gone = self.journal.gone()
            gone_looks = gone_looks + 1 if gone else 0
            if gone and gone_looks >= 5:
                log.error(
                    "%s while serving: stopping, for jobs written on would be lost; files "
                    "in the inboxes stay there for the next start",
                    gone,
                    extra={"event": "journal_gone"},
                )
                self._exit_status = 1
                break
            self.watcher.check()
            if signal.SIGHUP in received:
                self.reload()
            self._refresh_problems()
            if now - last_rescan >= self.loaded.config.daemon.rescan_seconds:
                last_rescan = now
                self.watcher.rescan()
            if ping is not None and now - last_ping >= ping and self.healthy():
                last_ping = now
                notify("WATCHDOG=1")
            if now - last_status >= 2.0:
                last_status = now
                notify(f"STATUS={self.status_line()}")
        return self.shutdown()

    def healthy(self) -> bool:
        """The watcher, the lease keeper and every worker thread the config asks for,
        alive."""
        http = self.http is None or self.http.healthy()
        return http and self.watcher.healthy() and self.loop.healthy()

    def status_line(self) -> str:
        counts = self.journal.counts()
        queued = sum(c.get("queued", 0) for c in counts.values())
        done = sum(c.get("done", 0) for c in counts.values())
        failed = sum(c.get("failed", 0) for c in counts.values())
        running = self.loop.running_count()
        line = f"{running} running, {queued} queued, {done} done, {failed} failed"
        # The problems the page lists, each kind in a few words (they are read there).
        problems = self._problems
        for kind, said in (("disabled", "disabled"), ("unwatched", "not watched")):
            if sources := [p["source"] for p in problems if p["kind"] == kind]:
                line += f"; {said}: {', '.join(sources)}"
        kinds = {p["kind"] for p in problems}
        if "http_kept" in kinds:
            line += "; status page at its old address (see the log)"
        if "reload_refused" in kinds:
            line += "; reload refused (see the log)"
        return line

    def problems(self) -> list[dict[str, Any]]:
        """What keeps the daemon from serving its config file as it is now, one line each
        for the status page: each inbox or batch disabled (its plugin cannot load), each
        inbox whose folder is not watched, the status page kept at its old address (a
        reload's new ``listen`` could not be taken), and the last reload refused (until one
        is applied: the running config is then older than the file). Safe from any
        thread."""
        return list(self._problems)

    def _refresh_problems(self) -> None:
        waits = problems_file.DISABLED_WAIT
        found: list[dict[str, Any]] = [
            {
                "kind": "disabled",
                "source": f"{table}:{name}",
                "since": None,
                "text": f"{table} {name} is disabled: {_one_line(reason)}; {waits}",
            }
            for (table, name), reason in sorted(self.loaded.unavailable.items())
        ]
        rescan = self.loaded.config.daemon.rescan_seconds
        for name, (path, problem) in sorted(self.watcher.unwatched().items()):
            # Gone or not a folder: nothing can arrive; otherwise the rescans still look.
            gone = not os.path.isdir(path)
            found.append({
                "kind": "unwatched",
                "source": f"inbox:{name}",
                "since": None,
                "text": f"inbox {name}: its folder {path} {problem}; "
                + ("nothing dropped there is seen until it is a folder again" if gone
                   else f"new files are found only by the rescan every {rescan:g} s"),
            })  # fmt: skip
        # Held until mended, each with when it began.
        listen = self.http.listen if self.http is not None else None
        held = (
            ("http_kept", self._http_kept,
             f"the status page stays at {listen}, not at the config's "
             f"{self.loaded.config.http.listen}: "),
            ("reload_refused", self._reload_refused,
             "reload refused, the config before it still runs: "),
        )  # fmt: skip
        for kind, since, said in held:
            if since is not None:
                when, reason = since
                found.append({"kind": kind, "source": None, "since": when, "text": said + reason})
        if tuple(found) != self._published:
            self._publish(found)
        self._problems = tuple(found)

    def _publish(self, found: list[dict[str, Any]]) -> None:
        """The problems for ``stylebox status`` (another process), each time they change;
        a write that failed (a full disk) is tried again at each look, and said once."""
        disabled = {f"{t}:{n}": reason for (t, n), reason in self.loaded.unavailable.items()}
        try:
            problems_file.publish(self.loaded.config.state_dir, found, disabled)
        except OSError as exc:  # the page still lists them
            if self._unpublished != tuple(found):
                log.warning("cannot tell stylebox status the daemon's problems: %s", describe(exc))
            self._unpublished = tuple(found)
            return
        self._published, self._unpublished = tuple(found), None

    def reload(self) -> None:
        """Swap in a new config; one that is bad or cannot be applied is refused, and the
        old one keeps running untouched.

        Everything new is built before anything running changes: plugin instances (into a
        copy of the running ones, so the new config shares those with equal params),
        folders, the watcher. Any exception while building refuses the reload and closes
        the instances made for it. Only then is the old watcher stopped, the new one
        started, and the config swapped in.
        """
        # An instance whose model or painting changed in place is not shared: the new
        # config's inboxes get a new one (the old one finishes its running jobs).
        instances = {key: p for key, p in self._instances.items() if not _outdated(p)}
        try:
            registry = discover()  # a mended plugin loads now
            loaded = load_config(self.config_path, registry)
            if loaded.config.state_dir.resolve() != self.loaded.config.state_dir.resolve():
                raise ConfigError(
                    f"state_dir: {loaded.config.state_dir} is not the running daemon's "
                    f"{self.loaded.config.state_dir}; a new state_dir needs a restart"
                )
            sources = self._build(loaded, registry, instances)
            watcher = self._watcher(loaded, sources)
            self._check_new_listen(loaded.config.http.listen)
            self._inbox_locks.acquire(loaded.config.inbox)  # a new inbox another daemon serves
        except Exception as exc:
            self._refuse_reload(exc, instances)
            return
        notify("RELOADING=1")
        self.watcher.stop()
        watcher.remember_said(self.watcher)
        try:
            watcher.start()
        except Exception as exc:
            watcher.stop()
            self._refuse_reload(exc, instances)
            self.watcher = self._watcher(self.loaded, self.sources)  # a stopped one is spent
            self.watcher.start()
            notify("READY=1")
            return
        self.watcher = watcher
        self._reload_refused = None
        self.registry = registry
        self.loaded = loaded
        self._steps.interval = loaded.config.daemon.progress_log_seconds
        # Only the instances the new sources use are shared with the next reload; the
        # pipeline closes the others once no running job uses them.
        used = {id(source.plugin.instance) for source in sources.values()}
        self._instances = {k: p for k, p in instances.items() if id(p) in used}
        self.sources = sources
        self.pipeline.reconfigure(loaded, sources)
        self.watcher.rescan()  # what settled before the swap (see on_settled)
        self._inbox_locks.keep_only(loaded.config.inbox)
        _log_disabled(loaded)
        self.loop.start()
        if self.http is None or self.http.listen != loaded.config.http.listen:
            self._restart_http()
        notify("READY=1", f"STATUS=watching {_inbox_names(sources)}")
        log.info("config reloaded", extra={"inboxes": _inbox_names(sources)})

    def _refuse_reload(self, exc: Exception, instances: dict[tuple[str, str], Plugin[Any]]) -> None:
        for key, plugin in instances.items():
            if self._instances.get(key) is not plugin:  # made for the refused config
                close_plugin(plugin)
        self._inbox_locks.keep_only(self.loaded.config.inbox)  # those taken for it
        reason = _one_line(str(exc) if isinstance(exc, StyleboxError) else describe(exc))
        self._reload_refused = (time.time(), reason)
        log.error(
            "reload refused, keeping the running config: %s",
            reason,
            extra={"event": "reload_refused"},
        )

    def shutdown(self) -> int:
        notify("STOPPING=1")
        log.info("stopping: no new jobs; running jobs checkpoint")
        if self.http is not None:
            self.http.stop()  # its event streams end at once
        self.loop.stop()
        self.watcher.stop()
        left = self.loop.drain(self.loaded.config.daemon.drain_seconds)
        if left:
            log.warning("drain time over; %d job(s) resume at next start", left)
        self._close()
        return self._exit_status

    def _close(self) -> None:
        for plugin in self._instances.values():
            close_plugin(plugin)
        self.journal.close()
        problems_file.withdraw(self.loaded.config.state_dir)

    # -- the status page -------------------------------------------------------------------

    def _start_http(self, listen: str | None = None) -> None:
        """The status page at ``listen`` (default: the config's ``[http] listen``)."""
        listen = listen or self.loaded.config.http.listen
        if listen is None:
            return
        from stylebox.web.server import HttpServer, check_listen  # uvicorn only if it is on

        # Tried first, so a taken port is refused in our one line, not after uvicorn's own.
        check_listen(listen)
        server = HttpServer(self, listen)
        server.start()
        self.http = server

    def _check_new_listen(self, listen: str | None) -> None:
        """A reload's new ``[http] listen`` that cannot be listened on (taken, not this
        machine's) refuses the reload, as any config that cannot be applied: the page
        stays where it is. (On the running page's own port only the host is tried, for the
        page holds the port until it moves.)"""
        if listen is None or (self.http is not None and self.http.listen == listen):
            return
        from stylebox.web.server import check_listen  # uvicorn only where the page is on

        same_port = self.http is not None and http_address(listen)[1] == self.http.port
        check_listen(listen, any_port=same_port)

    def _restart_http(self) -> None:
        """A reload changed ``[http] listen``. An address that cannot be listened on after
        all (on the page's own port, it could not be tried before the page let go of it)
        keeps the page where it was (logged); the jobs go on either way."""
        old = self.http.listen if self.http is not None else None
        self._http_kept = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        try:
            self._start_http()
        except ConfigError as exc:
            if old is not None:
                with contextlib.suppress(ConfigError):  # then the page is off
                    self._start_http(old)
            if self.http is not None:
                self._http_kept = (time.time(), _one_line(str(exc)))
                log.error("status page kept at %s: %s", old, exc, extra={"event": "http_refused"})
            else:
                log.error("status page off: %s", exc, extra={"event": "http_refused"})

    @property
    def journal_path(self) -> Path:
        return self.journal.path

    @property
    def state_dir(self) -> Path:
        return self.loaded.config.state_dir

    @property
    def token(self) -> str | None:
        return self.loaded.config.http.token

    def web_sources(self) -> Mapping[str, SourceInfo]:
        """The sources served now (a reload swaps the whole mapping at once)."""
        infos = {}
        waiting = self.pipeline.waiting_copies()
        for key, source in self.pipeline.sources.items():
            info = SourceInfo(source.outbox.folder, source.plugin.name)
            if isinstance(source.config, InboxConfig):
                config = source.config
                info = replace(
                    info,
                    inbox=config.path,
                    reserved=config.reserved(),
                    fed=config.fed_by is not None,
                    waiting=tuple(
                        (source.name_of(path), job) for path, job in sorted(waiting.get(key, []))
                    ),
                )
                latest, count = self.pipeline.set_aside(key)
                info = replace(info, set_aside=tuple(latest), set_aside_count=count)
            infos[key] = info
        return infos

    def retry(self, job_id: int) -> str:
        """Queue the failed job ``job_id`` again, as if its photo were dropped again: an
        inbox's photo goes back from ``failed/`` into the inbox (its reason note removed),
        a batch's is queued where it is. The pipeline's outcome (``"retry"``); raises
        ``KeyError`` for an unknown job, :class:`StyleboxError` for one that cannot be."""
        row = self.journal.get(job_id)
        if row.state != "failed":
            raise StyleboxError(f"job {job_id} is {row.state}, not failed")
        source = self.pipeline.sources.get(row.source)
        if row.hopeless is not None:
            raise StyleboxError(no_retry(row))
        if source is None:
            raise StyleboxError(f"job {job_id}'s {row.source} is not served now")
        path = Path(row.input_path)
        if not path.is_file() or path.is_symlink():
            raise StyleboxError(f"job {job_id}'s photo is no longer at {path}")
        if isinstance(source.config, InboxConfig):
            note = path.with_name(path.name + ".error.txt")
            path = move_input(path, source.config.path)  # its mask and sidecars with it
            note.unlink(missing_ok=True)
        outcome = self.pipeline.enqueue(source, [path])[0]
        log.info("retry asked", extra={"event": "retry_asked", "job": job_id, "outcome": outcome})
        return outcome

    def cancel(self, job_id: int) -> str:
        """Stop the job ``job_id``: a running one is asked to (``"cancelling"``), a queued
        one is claimed and failed at once (``"cancelled"``); either ends as failed, to be
        retried by hand. Raises ``KeyError`` for an unknown job, :class:`StyleboxError` for
        one that is neither (done, failed, or running elsewhere)."""
        row = self.journal.get(job_id)
        outcome = None
        if self.loop.cancel(job_id):
            outcome = "cancelling"
        elif row.state == "queued" and self.pipeline.cancel_queued(job_id):
            outcome = "cancelled"
        elif self.loop.cancel(job_id):  # claimed by a worker in between
            outcome = "cancelling"
        if outcome is None:
            raise StyleboxError(f"job {job_id} is {self.journal.get(job_id).state}, not "
                                "running in this daemon nor queued")  # fmt: skip
        log.info("cancel asked", extra={"event": "cancel_asked", "job": job_id, "outcome": outcome})
        return outcome


def no_retry(row: JobRow) -> str:
    """Why the failed job ``row``, whose failure a retry cannot help, is not retried, and
    what to do instead: said for the way its photo came (an inbox, a batch, a run)."""
    refused = (
        f"job {row.id} failed as {row.hopeless} ({row.reason}): a retry would fail the same way"
    )
    if row.hopeless == "superseded":  # its path holds another job's photo now
        return f"{refused}; its photo is that other job's now"
    table = row.source.partition(":")[0]
    if row.error_class == "MissingCompanion" and table == "inbox":
        mask = shown(f"{Path(row.origin_path).stem}.mask.png")
        return f"{refused}; drop its mask ({mask}) into the inbox: the photo comes back with it"
    again = {"inbox": "drop it into the inbox again", "batch": "run the batch again"}
    # Not always a damaged photo: a photo without the mask its inbox asks for, say.
    return (
        f"{refused}; mend what the reason says (a good copy of the photo, or what it lacks "
        f"beside it, such as its mask) and {again.get(table, 'run it again')}"
    )


def _log_disabled(loaded: LoadedConfig) -> None:
    for (table, name), reason in sorted(loaded.unavailable.items()):
        log.error(
            "%s %s is disabled: %s; %s",
            table,
            name,
            reason,
            problems_file.DISABLED_WAIT,
            extra={"event": "disabled", "source": f"{table}:{name}", "reason": reason},
        )


def _outdated(instance: Plugin[Any]) -> bool:
    try:
        changed = instance.outdated()
    except Exception:  # a plugin's bug: keep the instance, as before outdated() existed
        log.exception("plugin %s: outdated() failed", instance.name)
        return False
    if changed:
        log.info("plugin %s: files it loaded have changed; a new instance", instance.name)
    return changed


def _one_line(text: str) -> str:
    """A multi-line reason (a config error lists one problem a line) as one line."""
    first, *rest = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    return " ".join([first, "; ".join(rest)]) if rest else first


def serve(config_path: Path) -> int:
    return Service(config_path).run()


def _exclusive_lock(path: Path) -> IO[str]:
    """One ``serve`` per state dir: two would fight over the same inbox files."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{path.parent} is already served by {holder}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _inbox_names(sources: Mapping[str, Source]) -> str:
    """The watched inboxes, as the start and each reload log them (a batch's source, which
    a daemon serves too, is no inbox)."""
    return ", ".join(sorted(s.key for s in sources.values() if s.moves_inputs)) or "none"
