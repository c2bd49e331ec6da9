"""``stylebox serve``: watched inboxes, workers, signals and the systemd protocol.

SIGTERM stops taking jobs, asks running ones to checkpoint, and exits within the drain
time; the next start resumes them. SIGHUP reloads the config: everything the new config
needs (plugin instances, folders, the watcher) is built first and swapped in only once all
of it worked; a new config that is bad, or that fails while it is built (whatever the
exception), is refused in one log line, the plugin instances made for it are closed, and
the old one keeps running. One that is applied goes to the pipeline as one
``Pipeline.reconfigure`` call (output names of unfinished jobs stay taken; plugin instances
no longer used are closed once no job runs them). Each inbox and batch has its own lane of
``workers`` threads that take only its jobs, so no inbox's jobs wait behind another's; a
reload starts and stops lanes and threads to match the new config. ``[daemon] workers``
limits the jobs that run at once per device type across lanes (read at start).
"""

from __future__ import annotations

import faulthandler
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any

from stylebox.config import LoadedConfig, load_config
from stylebox.daemon.journal import JobRow, Journal
from stylebox.daemon.locks import InboxLocks
from stylebox.daemon.notify import notify, watchdog_interval
from stylebox.daemon.pipeline import Pipeline, Source, build_sources, pid_alive
from stylebox.daemon.watcher import InboxWatcher, WatchedFolder
from stylebox.errors import ConfigError, StyleboxError
from stylebox.plugins.api import Plugin
from stylebox.plugins.registry import Registry, discover

log = logging.getLogger("stylebox.service")


def journal_path(state_dir: Path) -> Path:
    return state_dir / "journal.sqlite3"


class Service:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.registry = discover()
        self.loaded = load_config(config_path, self.registry)
        state_dir = self.loaded.config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        # Before the (slow) plugin start-up: a second daemon is refused at once.
        self._lock_file = _exclusive_lock(state_dir / "serve.lock")
        # And one daemon per inbox, whatever its state dir (see locks.py).
        self._inbox_locks = InboxLocks(state_dir)
        self._inbox_locks.acquire(self.loaded.config.inbox)
        self._instances: dict[tuple[str, str], Plugin[Any]] = {}
        self.sources = self._build(self.loaded, self.registry, self._instances)
        _log_disabled(self.loaded)
        self.journal = Journal(journal_path(state_dir), running_marker=True)
        self._wake = threading.Condition()
        self.pipeline = Pipeline(
            self.loaded, self.sources, self.journal, on_queued=self._notify_workers
        )
        self.watcher = self._watcher(self.loaded, self.sources)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._workers: dict[str, dict[int, threading.Thread]] = {}
        """Each inbox's and batch's lane: its worker threads by index."""
        self._slots = {
            device: threading.Semaphore(limit)
            for device, limit in self.loaded.config.daemon.workers.items()
        }
        """``[daemon] workers``: each limited device type's slots, read at start."""

    @staticmethod
    def _build(
        loaded: LoadedConfig, registry: Registry, instances: dict[tuple[str, str], Plugin[Any]]
    ) -> dict[str, Source]:
        """The sources of ``loaded``, then its folders. Plugin instances come from
        ``instances`` where equal ones exist; new ones are added to it, so that a caller
        that gives up can close exactly those."""
        sources = build_sources(loaded, registry, ("inbox", "batch"), instances=instances)
        for inbox in loaded.config.inbox:
            for folder in (inbox.path, inbox.outbox, inbox.processed_dir, inbox.failed_dir):
                folder.mkdir(parents=True, exist_ok=True)
        return sources

    def _watcher(self, loaded: LoadedConfig, sources: dict[str, Source]) -> InboxWatcher:
        folders = []
        for inbox in loaded.config.inbox:
            if f"inbox:{inbox.name}" not in sources:
                continue  # disabled: its files stay where they are
            reserved = {
                p.name for p in (inbox.processed_dir, inbox.failed_dir) if p.parent == inbox.path
            }
            folders.append(
                WatchedFolder(
                    name=inbox.name,
                    path=inbox.path,
                    settle_seconds=inbox.settle_seconds,
                    poll=inbox.watch == "poll",
                    poll_interval=inbox.poll_interval,
                    reserved=frozenset(reserved),
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
            if source is not None:
                self.pipeline.enqueue(source, paths)

        return InboxWatcher(folders, on_settled)

    def _notify_workers(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack
        reclaimed = self.journal.reclaim_dead(socket.gethostname(), pid_alive)
        reclaimed += self.journal.reclaim_expired()
        if reclaimed:
            log.info("resuming %d interrupted job(s)", reclaimed)
        self.watcher.start()
        self._start_workers()
        names = ", ".join(s.key for s in self.sources.values() if s.moves_inputs) or "none"
        log.info(
            "serving", extra={"inboxes": names, "state_dir": str(self.loaded.config.state_dir)}
        )
        notify("READY=1", f"STATUS=watching {names}")

        ping = watchdog_interval()
        lease = self.loaded.config.daemon.lease_seconds
        last_rescan = last_heartbeat = last_ping = last_status = time.monotonic()
        while not self._stop.wait(0.2):
            now = time.monotonic()
            self.watcher.check()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if now - last_rescan >= self.loaded.config.daemon.rescan_seconds:
                last_rescan = now
                self._inbox_locks.refresh()
                self.watcher.rescan()
            if now - last_heartbeat >= lease / 3:
                last_heartbeat = now
                self.pipeline.heartbeat()
            if ping is not None and now - last_ping >= ping and self.healthy():
                last_ping = now
                notify("WATCHDOG=1")
            if now - last_status >= 2.0:
                last_status = now
                notify(f"STATUS={self.status_line()}")
        return self.shutdown()

    def _start_workers(self) -> None:
        """Give each inbox and batch its own lane of ``workers`` threads, which take only its
        jobs, so that no inbox's jobs wait behind another's: at start, and after a reload,
        which starts the lanes of new inboxes and the threads an inbox's ``workers`` gained.
        A lane whose inbox is gone, or a thread beyond its count, stops after its job."""
        for key, source in sorted(self.sources.items()):
            lane = self._workers.setdefault(key, {})
            for index in range(source.config.workers):
                thread = lane.get(index)
                if thread is not None and thread.is_alive():
                    continue
                thread = threading.Thread(
                    target=self._work, args=(key, index), name=f"worker-{key}-{index}", daemon=True
                )
                lane[index] = thread
                thread.start()
        for device, limit in sorted(self.loaded.config.daemon.workers.items()):
            lanes = sum(s.config.workers for s in self.sources.values() if s.device_type == device)
            if limit < lanes:
                log.warning(
                    "[daemon] workers limits %s to %d job(s) at once for %d inbox worker(s): "
                    "an inbox's jobs can wait behind another's",
                    device,
                    limit,
                    lanes,
                    extra={"event": "device_limit"},
                )

    def _work(self, key: str, index: int) -> None:
        while not self._stop.is_set():
            source = self.sources.get(key)
            if source is None or index >= source.config.workers:
                return  # a reload removed its inbox, or lowered its workers
            slot = self._slots.get(source.device_type)
            if slot is not None and not slot.acquire(timeout=0.5):
                continue  # the device type is at its limit
            try:
                rows = self._claim(key)
                if rows:
                    self.pipeline.run(rows)
            finally:
                if slot is not None:
                    slot.release()
            if not rows:
                with self._wake:
                    self._wake.wait(timeout=0.5)

    def _claim(self, key: str) -> list[JobRow]:
        try:
            row = self.pipeline.claim({key})
        except Exception:
            log.exception("cannot claim from the journal")
            return []
        if row is None:
            return []
        try:
            return [row, *self.pipeline.claim_more(row)]
        except Exception:
            log.exception("cannot claim from the journal")
            return [row]

    def healthy(self) -> bool:
        """The watcher, and every worker thread the config asks for, alive."""
        wanted = [
            self._workers.get(key, {}).get(index)
            for key, source in self.sources.items()
            for index in range(source.config.workers)
        ]
        return self.watcher.healthy() and all(t is not None and t.is_alive() for t in wanted)

    def _all_workers(self) -> list[threading.Thread]:
        return [thread for lane in self._workers.values() for thread in lane.values()]

    def status_line(self) -> str:
        counts = self.journal.counts()
        queued = sum(c.get("queued", 0) for c in counts.values())
        done = sum(c.get("done", 0) for c in counts.values())
        failed = sum(c.get("failed", 0) for c in counts.values())
        running = self.pipeline.running_count()
        line = f"{running} running, {queued} queued, {done} done, {failed} failed"
        disabled = [f"{table}:{name}" for table, name in sorted(self.loaded.unavailable)]
        return line + (f"; disabled: {', '.join(disabled)}" if disabled else "")

    def reload(self) -> None:
        """Swap in a new config; one that is bad or cannot be applied is refused, and the
        old one keeps running untouched.

        Everything new is built before anything running changes: plugin instances (into a
        copy of the running ones, so the new config shares those with equal params),
        folders, the watcher. Any exception while building refuses the reload and closes
        the instances made for it. Only then is the old watcher stopped, the new one
        started, and the config swapped in.
        """
        instances = dict(self._instances)
        try:
            registry = discover()  # a mended plugin loads now
            loaded = load_config(self.config_path, registry)
            sources = self._build(loaded, registry, instances)
            watcher = self._watcher(loaded, sources)
            self._inbox_locks.acquire(loaded.config.inbox)  # a new inbox another daemon serves
        except Exception as exc:
            self._refuse_reload(exc, instances)
            return
        notify("RELOADING=1")
        self.watcher.stop()
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
        self.registry = registry
        self.loaded = loaded
        # Only the instances the new sources use are shared with the next reload; the
        # pipeline closes the others once no running job uses them.
        used = {id(source.plugin.instance) for source in sources.values()}
        self._instances = {k: p for k, p in instances.items() if id(p) in used}
        self.sources = sources
        self.pipeline.reconfigure(loaded, sources)
        self.watcher.rescan()  # what settled before the swap (see on_settled)
        self._inbox_locks.keep_only(loaded.config.inbox)
        _log_disabled(loaded)
        self._start_workers()
        notify("READY=1")
        log.info("config reloaded", extra={"inboxes": ", ".join(sorted(sources))})

    def _refuse_reload(self, exc: Exception, instances: dict[tuple[str, str], Plugin[Any]]) -> None:
        for key, plugin in instances.items():
            if self._instances.get(key) is not plugin:  # made for the refused config
                try:
                    plugin.close()
                except Exception:
                    log.exception("closing plugin %s failed", key[0])
        self._inbox_locks.keep_only(self.loaded.config.inbox)  # those taken for it
        reason = str(exc) if isinstance(exc, StyleboxError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "reload refused, keeping the running config: %s",
            _one_line(reason),
            extra={"event": "reload_refused"},
        )

    def shutdown(self) -> int:
        notify("STOPPING=1")
        log.info("stopping: no new jobs; running jobs checkpoint")
        self.pipeline.stopping.set()
        self.watcher.stop()
        self.pipeline.cancel_all()
        deadline = time.monotonic() + self.loaded.config.daemon.drain_seconds
        for thread in self._all_workers():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        left = [t.name for t in self._all_workers() if t.is_alive()]
        if left:
            log.warning("drain time over; %d job(s) resume at next start", len(left))
        for plugin in self._instances.values():
            plugin.close()
        self.journal.close()
        return 0


def _log_disabled(loaded: LoadedConfig) -> None:
    for (table, name), reason in sorted(loaded.unavailable.items()):
        log.error(
            "%s %s is disabled: %s; its files wait until the plugin is mended and the "
            "daemon reloaded (SIGHUP)",
            table,
            name,
            reason,
            extra={"event": "disabled", "source": f"{table}:{name}", "reason": reason},
        )


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
