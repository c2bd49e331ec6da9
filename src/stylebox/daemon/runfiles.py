"""``stylebox run FILE...``: files named on the command line, through the same journal,
job loop and pipeline as ``serve`` and ``batch``, in the foreground.

Its source is ``run:<output folder>``. Inputs are never moved. Each run makes new results
(a file run twice gets ``photo.png`` and ``photo-2.png``); a run stopped by Ctrl-C,
SIGTERM or a kill leaves its jobs in the journal, and the same command given again
resumes them, with the output names they had.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stylebox import logs
from stylebox.config import LoadedConfig, OutputConfig, RunConfig, StyleboxConfig
from stylebox.daemon import files
from stylebox.daemon.jobloop import JobLoop, stop_on_signals
from stylebox.daemon.journal import JobRow, Journal, journal_path
from stylebox.daemon.pipeline import Pipeline
from stylebox.daemon.runner import PluginHandle
from stylebox.daemon.sources import Source
from stylebox.progress import reporter_for_stream

log = logging.getLogger("stylebox.run")

EXIT_OK, EXIT_FAILED, EXIT_BAD, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_files(
    paths: list[Path],
    plugin: PluginHandle,
    out: Path,
    output: OutputConfig,
    config: StyleboxConfig,
) -> int:
    """Stylise ``paths`` with ``plugin`` into ``out``; the command's exit status. Each file
    that did not end done gets one line on stderr saying why."""
    out = out.resolve()
    key = f"run:{out}"
    job_config = RunConfig(name="run", outbox=out, plugin=plugin.name, output=output)
    source = Source.of(key, job_config, plugin)
    # Links are followed here, where the user named them: the job reads the file itself.
    inputs = list(dict.fromkeys(path.resolve() for path in paths))
    loaded = LoadedConfig(config=config, source=None, root=Path.cwd())
    journal = Journal(journal_path(config.state_dir))
    try:
        with reporter_for_stream() as reporter:
            pipeline = Pipeline(loaded, {key: source}, journal, reporter=reporter)
            loop = JobLoop(pipeline)
            loop.reclaim({key})  # this command's jobs that a kill left running
            pipeline.enqueue(source, inputs)
            jobs = _jobs(journal, key, inputs)
            loop.jobs = {row.id for row in jobs.values() if row.state == "queued"}
            with stop_on_signals(loop):
                loop.run_until_empty({key})
        return _report(journal, key, inputs)
    finally:
        journal.close()


def _jobs(journal: Journal, key: str, inputs: list[Path]) -> dict[str, JobRow]:
    """The newest job of each input in this run's source."""
    wanted = {str(path) for path in inputs}
    return {row.origin_path: row for row in journal.jobs(key) if row.origin_path in wanted}


def _report(journal: Journal, key: str, inputs: list[Path]) -> int:
    """One line for each input that did not end done; the exit status: 130 for a stopped
    run, else 1 if a plugin failed, else 2 if an input was bad."""
    failed = bad = False
    jobs = _jobs(journal, key, inputs)
    for path in inputs:
        row = jobs.get(str(path))
        name = files.readable(path.name)
        if row is None:  # the journal refused it (logged): nothing ran
            logs.say(f"failed: {name} could not be queued; see the log above")
            failed = True
        elif row.hopeless is not None:
            logs.say(f"bad input: {row.error_message or row.reason}")
            bad = True
        elif row.state == "failed":
            logs.say(f"failed: {name}: {row.reason}")
            failed = True
        elif row.state == "queued":
            logs.say(f"{name}: stopped; run the same command again to resume")
            return EXIT_INTERRUPTED
        elif row.state == "running":
            logs.say(f"failed: {name} is being run by another stylebox ({row.lease_owner})")
            failed = True
    return EXIT_FAILED if failed else EXIT_BAD if bad else EXIT_OK
