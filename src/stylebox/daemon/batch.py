"""``stylebox batch NAME``: a folder's images through the same journal and pipeline.

Inputs in the source folder are never moved; the journal remembers what is done, so a
scheduled run only does new images and a killed run continues where it stopped. The jobs
run in the :class:`~stylebox.daemon.jobloop.JobLoop` that ``serve`` uses, with the batch's
``workers`` at once, and the command returns when none is left.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from stylebox.config import BatchConfig, load_config
from stylebox.daemon.jobloop import JobLoop, stop_on_signals
from stylebox.daemon.journal import Journal, journal_path
from stylebox.daemon.pipeline import Pipeline, build_sources
from stylebox.daemon.watcher import is_ignored
from stylebox.errors import ConfigError
from stylebox.plugins.registry import discover
from stylebox.progress import count_bar

log = logging.getLogger("stylebox.batch")


def scan(config: BatchConfig) -> Iterator[Path]:
    """Candidate files of the source folder, in a stable order; links are not followed."""
    if not config.source.is_dir():
        raise ConfigError(f"[[batch]] {config.name}: source {config.source} is not a folder")
    pattern = "**/*" if config.recursive else "*"
    for path in sorted(config.source.glob(pattern)):
        relative = path.relative_to(config.source)
        if any(is_ignored(part) for part in relative.parts) or path.is_symlink():
            continue
        if path.is_file():
            yield path


def run_batch(config_path: Path, name: str, dry_run: bool = False) -> int:
    loaded = load_config(config_path)
    batch = loaded.job("batch", name)
    loaded.params_for("batch", name)  # refuses a batch whose plugin is broken, saying why
    assert isinstance(batch, BatchConfig)
    files = list(scan(batch))
    journal = Journal(journal_path(loaded.config.state_dir))
    key = f"batch:{name}"
    if dry_run:
        done = {row.origin_path for row in journal.jobs(key, "done")}
        todo = [path for path in files if str(path) not in done]
        for path in todo:
            print(path)
        print(f"{len(todo)} of {len(files)} image(s) would run", file=sys.stderr)
        return 0

    sources = build_sources(loaded, discover(), ("batch",), only=name)
    source = sources.get(key)
    if source is None:
        raise ConfigError(f"[[batch]] {name!r} cannot run: {loaded.unavailable[('batch', name)]}")
    pipeline = Pipeline(loaded, sources, journal)
    loop = JobLoop(pipeline, limits=loaded.config.daemon.workers)
    pipeline.on_queued = loop.wake
    loop.reclaim()
    for start in range(0, len(files), 500):
        pipeline.enqueue(source, files[start : start + 500])
    with count_bar("batch " + name, journal.queued({key})) as advance, stop_on_signals(loop):
        loop.on_ran = lambda rows: advance(len(rows))
        loop.start(until_empty=True)
        loop.wait()
    counts = journal.counts().get(key, {})
    log.info("batch finished", extra={"batch": name, **counts})
    if loop.stopping.is_set():
        return 130
    return 0 if not counts.get("failed") else 1
