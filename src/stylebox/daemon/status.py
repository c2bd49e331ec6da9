"""``stylebox status``: what the journal says, readable while the daemon runs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from stylebox.config import LoadedConfig, load_config
from stylebox.daemon import problems_file
from stylebox.daemon.journal import JobRow, Journal, journal_path
from stylebox.daemon.leases import pid_alive
from stylebox.daemon.sidecars import follows_a_photo
from stylebox.daemon.sources import name_of
from stylebox.daemon.watcher import is_ignored, left_alone
from stylebox.logs import readable, shown

#: How many failed jobs a source's ``last_errors`` lists, the newest first, unless all are
#: asked for.
LATEST_FAILED = 5


def collect(
    config_path: Path | None, state_dir: Path | None = None, all_failed: bool = False
) -> dict[str, Any]:
    """The jobs of the journal in ``state_dir`` (default: the config's), by source: each
    inbox and batch of the config, and every other source the journal has (``run:``); with
    ``all_failed``, every failed job in ``last_errors``, not the latest few. Without a
    config (``None``), the journal of ``state_dir`` alone: it reads while the config file
    is being edited and does not load."""
    loaded = load_config(config_path) if config_path is not None else None
    if state_dir is not None:
        state_dir = state_dir.absolute()
    elif loaded is not None:
        state_dir = loaded.config.state_dir
    else:
        raise ValueError("collect needs a config or a state_dir")
    path = journal_path(state_dir)
    foreign = loaded is None or state_dir != loaded.config.state_dir
    sources: list[str] = []
    if loaded is not None and not foreign:  # else only what this journal holds
        sources = [f"inbox:{i.name}" for i in loaded.config.inbox]
        sources += [f"batch:{b.name}" for b in loaded.config.batch]
    # What the daemon serving this state dir says is wrong (an inbox it disabled when its
    # plugin failed to start: loading the config here does not start plugins).
    daemon = problems_file.read(state_dir)
    report: dict[str, Any] = {
        "journal": str(path),
        "journal_exists": path.exists(),
        "daemon_problems": [] if daemon is None else _sourceless(daemon["problems"]),
        "sources": {},
    }
    unavailable = loaded.unavailable.items() if loaded is not None else []
    disabled = {} if daemon is None else dict(daemon["disabled"])
    disabled.update((f"{table}:{name}", why) for (table, name), why in unavailable)
    if not path.exists():
        for key in [*sources, *(key for key in disabled if key not in sources)]:
            report["sources"][key] = {**_empty(), "disabled": disabled.get(key)}
        return _with_left_alone(report, loaded)
    journal = Journal(path, read_only=True)  # an older daemon may be using it
    counts = journal.counts()
    for key in sorted(set(sources) | set(counts) | set(disabled)):
        entry = _empty()
        entry.update(counts.get(key, {}))
        entry["disabled"] = disabled.get(key)
        # An inbox or batch the journal knows and the config no longer names (a reload
        # removed it): its queued jobs wait for it, or for an inbox on its folder.
        entry["configured"] = foreign or key in sources or key.startswith("run:")
        entry["running_jobs"] = [_running(row, loaded) for row in journal.jobs(key, "running")]
        # Held back after something went wrong (a retry's backoff, an input that cannot be
        # moved out of the inbox): the reason, else such a job looks like any other queued
        # one. One due now is just queued, whatever error an earlier try of it left.
        now = time.time()
        entry["waiting_jobs"] = [
            {
                "job": row.id,
                "file": _name(loaded, row),
                "error": row.reason,
                "retry_in_seconds": round(row.not_before - now, 1),
            }
            for row in journal.jobs(key, "queued")
            if row.error_class is not None and row.not_before > now
        ]
        # The newest failures: a job dropped again keeps its id, so by when they failed.
        failed = sorted(
            journal.jobs(key, "failed"), key=lambda r: (r.finished_at or 0.0, r.id), reverse=True
        )[: None if all_failed else LATEST_FAILED]
        entry["last_errors"] = [
            {"job": r.id, "file": _name(loaded, r), "error": r.reason, "kept_as": _kept_as(r)}
            for r in failed
        ]
        report["sources"][key] = entry
    journal.close()
    return _with_left_alone(report, loaded)


def _sourceless(problems: list[dict[str, Any]]) -> list[str]:
    """The daemon's problems other than a disabled source (said under the source): an inbox
    folder not watched, a reload refused, the status page kept at its old address."""
    return [problem["text"] for problem in problems if problem["kind"] != "disabled"]


def _name(loaded: LoadedConfig | None, row: JobRow) -> str:
    """The job ``row``'s file as its log lines name it: under its sub-folder in a recursive
    batch (two ``t.png`` of two folders were told apart by nothing), from the batch's
    config where it is still there (a job not yet given names has no sub-folder of them)."""
    table, _, name = row.source.partition(":")
    if (
        table == "batch"
        and loaded is not None
        and any(batch.name == name for batch in loaded.config.batch)
    ):
        return name_of(loaded.job("batch", name), Path(row.origin_path))
    return row.file


def _kept_as(row: JobRow) -> str | None:
    """Where an inbox's failed photo lies when its name there is not its own
    (``failed/trunc-2.jpg``: two failures of one name), else ``None``: only its note
    (``job: N``) told the two apart."""
    kept, origin = Path(row.input_path), Path(row.origin_path)
    if kept == origin or kept.name == origin.name:
        return None
    return f"{readable(kept.parent.name)}/{readable(kept.name)}"


def _with_left_alone(report: dict[str, Any], loaded: LoadedConfig | None) -> dict[str, Any]:
    """Each listed inbox's entries that no job takes (a folder, a mask without its photo),
    as the daemon's log and status page say them; and a disabled inbox's files, which wait
    in its folder with no job to count them."""
    for inbox in loaded.config.inbox if loaded is not None else []:
        entry = report["sources"].get(f"inbox:{inbox.name}")
        if entry is not None:
            entry["left_alone"] = left_alone(
                inbox.path, inbox.reserved(), fed=inbox.fed_by is not None
            )
            if entry["disabled"]:
                entry["files_waiting"] = _files_in(inbox.path)
    return report


def _files_in(folder: Path) -> int:
    """How many files the inbox ``folder`` holds for jobs (not the hidden ones, nor masks
    and sidecars, which go with their photo)."""
    try:
        with os.scandir(folder) as entries:
            return sum(
                1
                for e in entries
                if e.is_file(follow_symlinks=False)
                and not is_ignored(e.name)
                and not follows_a_photo(e.name)
            )
    except OSError:
        return 0


def _empty() -> dict[str, Any]:
    return {
        "queued": 0,
        "running": 0,
        "done": 0,
        "failed": 0,
        "configured": True,
        "running_jobs": [],
        "waiting_jobs": [],
        "last_errors": [],
        "left_alone": [],
        "files_waiting": 0,
    }


def _running(row: JobRow, loaded: LoadedConfig | None = None) -> dict[str, Any]:
    """A running job's progress and time left: by the plugin's own estimate (the ``eta``
    metric it reported with its last step) where it gave one, else linearly from the time
    per step so far."""
    now = time.time()
    eta, source = None, None
    if row.eta_at is not None:
        eta, source = round(max(0.0, row.eta_at - now), 1), "plugin"
    elif row.step and row.total and row.claimed_at:
        elapsed = now - row.claimed_at
        eta, source = round(elapsed / row.step * (row.total - row.step), 1), "linear"
    gone = _owner_gone(row.lease_owner)
    writing = not gone and writes_result(row.step, row.total)
    if gone or writing:
        eta, source = None, None  # nothing is counting down, or no step is left to count
    return {
        "job": row.id,
        "file": _name(loaded, row),
        "step": row.step,
        "total": row.total,
        "eta_seconds": eta,
        "eta_from": source,
        "writing": writing,
        "owner": row.lease_owner,
        "owner_gone": gone,
    }


def writes_result(step: int | None, total: int | None) -> bool:
    """Whether a running job at ``step`` of ``total`` has none left, and writes its result
    (a 48 MP PNG takes 20 s: "about 0 s left" stood there all that while)."""
    return bool(total and step is not None and step >= total)


def _owner_gone(owner: str | None) -> bool:
    """Whether the process running a job (``host:pid``) is on this machine and no longer
    exists: killed, its job waits for the next start to resume it (a process elsewhere
    cannot be seen from here, and counts as alive)."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


def print_status(
    config_path: Path | None,
    as_json: bool = False,
    state_dir: Path | None = None,
    all_failed: bool = False,
) -> int:
    report = collect(config_path, state_dir, all_failed)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0

    def say(line: str) -> None:
        print(shown(line))  # a file name may hold a line break or a terminal's escape

    if not report["journal_exists"]:  # a state_dir mistyped, or nothing run there yet
        say(f"no journal at {report['journal']}: no job has been queued with this state_dir")
    for problem in report["daemon_problems"]:
        say(f"daemon: {problem}")
    for key, entry in report["sources"].items():
        say(
            f"{key}: {entry['queued']} queued, {entry['running']} running, "
            f"{entry['done']} done, {entry['failed']} failed"
        )
        if entry["disabled"]:
            say(f"  DISABLED: {entry['disabled']}")
            if waiting := entry["files_waiting"]:
                say(f"  {waiting} file(s) wait in its folder until {problems_file.MENDED}")
        if not entry["configured"] and entry["queued"]:
            by = (
                "an inbox of this name, or one on its folder,"
                if key.startswith("inbox:")
                else "a batch of this name"
            )
            say(f"  not in the config: its queued jobs wait until {by} serves them")
        for job in entry["running_jobs"]:
            progress = f"step {job['step']}/{job['total']}" if job["total"] else "starting"
            if job["writing"]:
                progress += ", writing the result"
            eta = (
                f", about {job['eta_seconds']:.0f} s left" if job["eta_seconds"] is not None else ""
            )
            if job["owner_gone"]:
                eta = f"; its process ({job['owner']}) is gone: it resumes at the next start"
            say(f"  running #{job['job']} {job['file']}: {progress}{eta}")
        for job in entry["waiting_jobs"]:
            say(
                f"  waiting #{job['job']} {job['file']}: {job['error']} (tried again in "
                f"{job['retry_in_seconds']:.0f} s)"
            )
        for error in entry["last_errors"]:
            kept = f" (as {error['kept_as']})" if error["kept_as"] else ""
            say(f"  failed #{error['job']} {error['file']}{kept}: {error['error']}")
        if entry["failed"] > len(entry["last_errors"]):
            earlier = entry["failed"] - len(entry["last_errors"])
            say(f"  and {earlier} earlier failed job(s) (--failed lists every one)")
        for why in entry["left_alone"]:
            say(f"  left alone: {why}")
    return 0
