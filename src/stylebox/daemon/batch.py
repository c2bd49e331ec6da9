"""``stylebox batch NAME``: a folder's images through the same journal and pipeline.

Inputs in the source folder are never moved; the journal remembers what is done, so a
scheduled run only does new images and a killed run continues where it stopped. The jobs
run in the :class:`~stylebox.daemon.jobloop.JobLoop` that ``serve`` uses, with the batch's
``workers`` at once, and the command returns when none is left.

With ``--ray`` (or ``engine = "ray"``) the same loop claims and settles the jobs here, and
the pipeline hands each claimed group to a Ray actor to run (``daemon/ray_engine.py``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType

from stylebox import logs
from stylebox.config import BatchConfig, LoadedConfig, load_config
from stylebox.daemon.files import make_folder
from stylebox.daemon.jobloop import JobLoop, stop_on_signals
from stylebox.daemon.journal import JobRow, Journal, journal_path
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.ray_engine import (
    RayExecutor,
    actors_wanted,
    connect,
    require_ray,
    shutdown,
)
from stylebox.daemon.runner import Reporter
from stylebox.daemon.sources import Source, build_sources
from stylebox.daemon.watcher import beside_a_result, is_ignored
from stylebox.errors import ConfigError, describe
from stylebox.images import DEFAULT_FORMATS, plainly_not_an_image
from stylebox.plugins.api import companion_kind
from stylebox.plugins.registry import discover
from stylebox.progress import StepLogReporter, count_bar

log = logging.getLogger("stylebox.batch")

_PLACE_SECONDS = 300.0
"""How long a Ray batch waits for the cluster to place and start its actors (a GPU node
may be coming up) before it gives up, saying what the cluster has."""


def source_problem(config: BatchConfig) -> str | None:
    """Why the batch cannot run as its source folder is now, or ``None``. Not a config
    error: a share may be mounted by the time the batch runs."""
    if config.source.is_dir():
        why = _unreadable(config.source)
        return None if why is None else f"[[batch]] {config.name}: source {config.source} {why}"
    why = "is not a folder" if config.source.exists() else "does not exist"
    return f"[[batch]] {config.name}: source {config.source} {why}"


def _unreadable(folder: Path) -> str | None:
    """Why the files of ``folder`` cannot be listed or looked at, or ``None`` (``glob``
    passes over a folder it cannot list without a word: its photos were left out and the
    batch ended 'finished'; one it lists but cannot enter broke the scan)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:  # listed, but maybe not entered (no x bit): one look in
                os.lstat(entry.path)
                break
        return None
    except OSError as exc:
        return _cannot_read(exc)


def _cannot_read(error: OSError) -> str:
    return f"cannot be read ({describe(error)})"


def scan(
    config: BatchConfig,
    others: list[Path] | None = None,
    formats: frozenset[str] = DEFAULT_FORMATS,
    links: list[Path] | None = None,
    companions: list[Path] | None = None,
    upstream: list[Path] | None = None,
    hidden: list[Path] | None = None,
    unreadable: list[tuple[Path, str]] | None = None,
) -> Iterator[Path]:
    """Candidate files of the source folder, in a stable order. Files kept beside the
    pictures (``notes.txt``, XMP sidecars: see :func:`plainly_not_an_image`, with the
    accepted ``formats``) are no candidates; they go to ``others``, if given. Symbolic
    links are not followed (to a file or a folder: a batch stays in its source); they go
    to ``links``, if given. A photo's companions (``photo.mask.png``), which its job reads
    from beside it, go to ``companions``, if given. Where the source is another inbox's or
    batch's outbox (:attr:`~stylebox.config.JobConfig.fed_by`), what that one writes
    beside its results (animations, snapshot folders) goes to ``upstream``, if given.
    Hidden and temporary names (:data:`~stylebox.plugins.api.IGNORED_PATTERNS`: files,
    or folders not looked into) go to ``hidden``, if given. Sub-folders whose files cannot
    be listed (their permissions) go to ``unreadable``, with why, if given."""
    if problem := source_problem(config):
        raise ConfigError(problem)
    pattern = "**/*" if config.recursive else "*"
    shut: list[Path] = []
    """Folders that cannot be read: what glob yields of them is not looked at."""
    for path in sorted(config.source.glob(pattern)):
        if any(path.is_relative_to(folder) for folder in shut):
            continue
        relative = path.relative_to(config.source)
        if any(is_ignored(part) for part in relative.parts):
            if hidden is not None and not any(is_ignored(part) for part in relative.parts[:-1]):
                hidden.append(path)
            continue
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # gone since it was listed
            continue
        except OSError as exc:  # its folder lists it but cannot be entered
            shut.append(path.parent)
            if unreadable is not None:
                unreadable.append((path.parent, _cannot_read(exc)))
            continue
        if config.fed_by and (
            beside_a_result(relative.name, folder=False)
            or any(beside_a_result(part, folder=True) for part in relative.parts[:-1])
        ):
            if upstream is not None and stat.S_ISREG(mode):
                upstream.append(path)
            continue
        if stat.S_ISLNK(mode):
            if links is not None:
                links.append(path)
            continue
        if config.recursive and stat.S_ISDIR(mode):
            if (why := _unreadable(path)) is not None:
                shut.append(path)
                if unreadable is not None:
                    unreadable.append((path, why))
            continue
        if not stat.S_ISREG(mode):
            continue
        if companion_kind(path.name) is not None:
            if companions is not None:
                companions.append(path)
            continue
        if plainly_not_an_image(path, formats):
            if others is not None:
                others.append(path)
            continue
        yield path


def _say_skipped(skipped: list[Path], source: Path, what: str) -> None:
    if not skipped:
        return
    names = [str(path.relative_to(source)) for path in skipped]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    log.info(
        "skipped %d %s: %s",
        len(names),
        what,
        shown,
        extra={"event": "skipped", "files": len(names)},
    )


def run_batch(config_path: Path, name: str, dry_run: bool = False, ray: str | None = None) -> int:
    """Run the ``[[batch]]`` ``name``; its exit status. ``ray``: run it on Ray, at this
    address (``""``: the batch's ``ray_address``, or this machine's Ray); ``None``: as the
    batch's ``engine`` says."""
    loaded = load_config(config_path)
    batch = loaded.job("batch", name)
    loaded.params_for("batch", name)  # refuses a batch whose plugin is broken, saying why
    assert isinstance(batch, BatchConfig)
    on_ray = ray is not None or batch.engine == "ray"
    if on_ray and not dry_run:
        require_ray()  # before any plugin loads: a missing Ray is said at once
    others: list[Path] = []
    links: list[Path] = []
    companions: list[Path] = []
    formats = frozenset(loaded.config.images.formats)
    upstream: list[Path] = []
    hidden: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    files = list(scan(batch, others, formats, links, companions, upstream, hidden, unreadable))
    for folder, why in unreadable:  # its photos are not run: the batch cannot end well
        log.warning(
            "folder %s %s: its photos are left out of the batch",
            folder.relative_to(batch.source),
            why,
            extra={"event": "unreadable", "folder": str(folder)},
        )
    _say_skipped(hidden, batch.source, "hidden or temporary name(s)")
    _say_skipped(others, batch.source, "file(s) that are not pictures")
    what = f"file(s) that {batch.fed_by} writes beside its results"
    _say_skipped(upstream, batch.source, what)
    photos = {(path.parent, path.stem) for path in files}
    read: list[Path] = []
    alone: list[Path] = []
    for path in companions:  # (each is one: scan put it here)
        _, stem = companion_kind(path.name) or ("", "")
        (read if (path.parent, stem) in photos else alone).append(path)
    _say_skipped(read, batch.source, "mask(s), which their photos' jobs read")
    _say_skipped(alone, batch.source, "mask(s) without their photo, which no job reads")
    _say_skipped(links, batch.source, "symbolic link(s), which a batch does not follow")
    if dry_run:
        return _dry_run(loaded, name, files, len(unreadable))
    make_folder("state_dir", loaded.config.state_dir)
    journal = Journal(journal_path(loaded.config.state_dir))
    key = f"batch:{name}"
    sources = _sources(loaded, name)
    source = sources[key]
    make_folder(f"batch {name!r} outbox", batch.outbox)
    executor: RayExecutor | None = None
    ray_module = connect(ray or batch.ray_address) if on_ray else None
    try:
        steps = StepLogReporter(loaded.config.daemon.progress_log_seconds)
        pipeline = Pipeline(loaded, sources, journal, reporter=steps)
        pipeline.adopt_renamed_batch(source, name)
        if ray_module is not None:
            executor = _ray_executor(ray_module, loaded, batch, source, pipeline.reporter)
            pipeline.executor = executor
        loop = JobLoop(pipeline, limits=loaded.config.daemon.workers)
        pipeline.on_queued = loop.wake
        loop.reclaim({key})
        began = time.time()
        for start in range(0, len(files), 500):
            pipeline.enqueue(source, files[start : start + 500])
        # This run's jobs: its files' that are to run or ended since it began, whoever runs
        # them (a daemon on the same state dir runs a batch's jobs too, even while later
        # files are still being queued), and any this command's loop runs.
        wanted = {str(path) for path in files}
        mine = {
            row.id
            for row in journal.jobs(key)
            if row.origin_path in wanted
            and (row.state in ("queued", "running") or (row.finished_at or 0) >= began)
        }
        counted: set[int] = set()
        """Those ended (done or failed): a retry waiting in the queue is not yet."""

        def ended(rows: list[JobRow]) -> None:
            """Those of ``rows`` that have ended (done or failed) and were not counted yet
            go on the progress bar, with how many of them failed."""
            mine.update(row.id for row in rows)
            states = {r.id: journal.get(r.id).state for r in rows if r.id not in counted}
            fresh = [job_id for job_id, state in states.items() if state in ("done", "failed")]
            counted.update(fresh)
            advance(len(fresh), sum(states[job_id] == "failed" for job_id in fresh))

        with count_bar("batch " + name, len(mine)) as advance, stop_on_signals(loop):
            loop.on_ran = ended
            loop.start(until_empty=True)
            loop.wait()
            # Those a daemon took: until they end (or this command is stopped). One whose
            # daemon died is taken back and run here, as one left queued.
            while not loop.stopping.is_set():
                ended([journal.get(job_id) for job_id in sorted(mine - counted)])
                if not mine - counted:
                    break
                if loop.reclaim({key}) or journal.queued({key}):
                    loop.run_until_empty({key})
                else:
                    time.sleep(0.5)
    finally:
        if ray_module is not None:
            shutdown(ray_module, executor)
    # This run's figures: a file that failed in an earlier run and is gone now is no
    # failure of this one.
    rows = [journal.get(job_id) for job_id in sorted(mine)]
    counts = {
        state: [row.state for row in rows].count(state) for state in ("done", "failed", "queued")
    }
    # The others had nothing to do: their bytes, with these settings, were done already,
    # in an earlier run or by another file of this one (said in a line each).
    counts["done_before"] = len(wanted - {row.origin_path for row in rows})
    if loop.stopping.is_set():
        log.info("batch stopped", extra={"batch": name, "files": len(files), **counts})
        left = counts["queued"] + [row.state for row in rows].count("running")
        print(
            f"stylebox: batch {name}: stopped with {left} image(s) left; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    counts["unreadable_folders"] = len(unreadable)
    log.info("batch finished", extra={"batch": name, "files": len(files), **counts})
    return 1 if counts["failed"] or unreadable else 0


def _sources(loaded: LoadedConfig, name: str) -> dict[str, Source]:
    """The sources with the batch ``name``'s, its plugin started, or a :class:`ConfigError`
    saying why it cannot run."""
    sources = build_sources(loaded, discover(), ("batch",), only=name)
    if f"batch:{name}" not in sources:
        raise ConfigError(f"[[batch]] {name!r} cannot run: {loaded.unavailable[('batch', name)]}")
    return sources


def _dry_run(loaded: LoadedConfig, name: str, files: list[Path], unreadable: int) -> int:
    """List the ``files`` of batch ``name`` that a run would run, changing nothing: the
    journal is read as it is (none yet: nothing is done), and where there is no state
    folder yet, the plugin's caches go to a scratch folder. It starts the plugin too: what
    is done depends on its settings and models (the params digest), as in the run."""
    existing = journal_path(loaded.config.state_dir)
    with tempfile.TemporaryDirectory(prefix="stylebox-dry-run-") as scratch:
        if not loaded.config.state_dir.exists():
            loaded.config.state_dir = Path(scratch)
        copy = Path(scratch) / existing.name
        if existing.exists():  # a copy: a renamed batch's jobs are taken over, as in a run
            original = Journal(existing, read_only=True)
            try:
                with closing(sqlite3.connect(copy)) as copy_db:
                    original.backup(copy_db)
            finally:
                original.close()
        journal = Journal(copy)
        try:
            sources = _sources(loaded, name)
            source = sources[f"batch:{name}"]
            left: Counter[str] = Counter()
            pipeline = Pipeline(loaded, sources, journal)
            pipeline.adopt_renamed_batch(source, name)
            todo = pipeline.would_run(source, files, left)
        finally:
            journal.close()
    for path in todo:
        # One a line: a line break in a name shown as \n, and so a backslash as \\ (a
        # name holding a backslash and an n is not one with a line break).
        print(logs.escaped(str(path).replace("\\", "\\\\")))
    why = "; ".join(f"{count} {reason}" for reason, count in sorted(left.items()))
    unread = f"; {unreadable} folder(s) that cannot be read, left out" if unreadable else ""
    print(
        f"{len(todo)} of {len(files)} image(s) would run"
        + (f" (not: {why})" if why else "")
        + unread,
        file=sys.stderr,
    )
    return 0


def _ray_executor(
    ray: ModuleType,
    loaded: LoadedConfig,
    batch: BatchConfig,
    source: Source,
    reporter: Reporter,
) -> RayExecutor:
    """The batch's actors, started and placed. Unless the batch sets ``workers``, one per
    GPU (or CPU) of the cluster; the job loop gets one lane per actor, so each is kept busy."""
    cuda = source.plugin.instance.device_kind == "cuda"
    explicit = batch.workers if "workers" in batch.model_fields_set else None
    actors = actors_wanted(ray, cuda, explicit)
    batch.workers = actors
    executor = RayExecutor(
        ray,
        source.plugin,
        loaded.runtime,
        loaded.config.images,
        batch.output,
        str(batch.outbox),
        actors,
        reporter,
    )
    try:
        placed = executor.wait_ready(timeout=_PLACE_SECONDS)
    except BaseException:
        shutdown(ray, executor)
        raise
    nodes = {where["node_id"]: where["node"] for where in placed}
    log.info(
        "%d Ray worker(s) (%s) on %d node(s): %s",
        len(placed),
        "1 GPU each" if cuda else "1 CPU each",
        len(nodes),
        ", ".join(sorted(set(nodes.values()))),
        extra={"event": "ray-workers", "batch": batch.name},
    )
    return executor
