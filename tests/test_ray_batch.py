"""`stylebox batch NAME --ray`: the batch's jobs on Ray actors, on a real local Ray instance.

One Ray instance (2 CPUs, no dashboard, a small object store) serves the module; each test
runs the real command in a subprocess that joins it with ``--ray ADDRESS``, as a machine
joins a cluster. One test lets the command start its own local instance (``engine =
"ray"``, no address). Test plugins live in installed-looking folders on PYTHONPATH, which
the command forwards to the Ray workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import encoded, installed_site, photo
from daemon_helpers import wait_until

pytest.importorskip("ray")

HEAD = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         object_store_memory=80 * 1024 * 1024)
print(ray.get_runtime_context().gcs_address, flush=True)
for _ in sys.stdin:  # a test asks how many CPUs are free in the cluster, until the module ends
    print(int(ray.available_resources().get("CPU", 0)), flush=True)
ray.shutdown()
"""


# The module's Ray instance and the commands that join it use a token (Ray keeps it in
# ~/.ray), as a secured cluster does; Ray 2.59 on also protect any local instance so.
JOIN = {**os.environ, "RAY_AUTH_MODE": "token"}


class Head:
    """The module's Ray instance: its GCS address, and the CPUs free in its cluster."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.stdin, self.stdout = process.stdin, process.stdout
        self.address = self.stdout.readline().strip()
        assert self.address, "the Ray head did not start"

    def free_cpus(self) -> int:
        self.stdin.write("cpus?\n")
        self.stdin.flush()
        return int(self.stdout.readline())


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """A local Ray instance for the module's tests."""
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=JOIN,
    )  # fmt: skip
    yield Head(head)
    assert head.stdin is not None
    head.stdin.close()
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()


@pytest.fixture
def ray_address(ray_head: Head) -> str:
    """The GCS address of the module's Ray instance."""
    return ray_head.address


# A plugin that logs each call (pid, file names, batch size) to params.log; with a gate it
# waits for that file to exist (or for a stop, unless deaf); with seconds, it sleeps that
# long.
PROBE = """
import os, time
from pathlib import Path
from PIL import ImageOps
from stylebox.errors import Cancelled
from stylebox.plugins.api import Capabilities, Plugin, PluginParams

class Params(PluginParams):
    log: str
    gate: str = ""
    seconds: float = 0.0
    deaf: bool = False  # never looks at job.cancelled
    bug: bool = False  # raises a KeyError of its own
    hold: str = ""  # an actor's start waits for this file (the command's own instance not)

class Probe(Plugin):
    name = "probe"
    Params = Params
    capabilities = Capabilities(batching=True)

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        with open(params.log + ".init", "a") as log:
            log.write(f"{os.getpid()}\\n")
        with open(params.log + ".init") as log:
            first = int(log.readline())  # the command's: it starts the plugin before its actors
        while params.hold and os.getpid() != first and not Path(params.hold).exists():
            time.sleep(0.05)

    def process_batch(self, images, jobs):
        with open(self.params.log, "a") as log:
            names = ",".join(job.job.input_path.name for job in jobs)
            log.write(f"{os.getpid()} {names} {len(images)}\\n")
        if self.params.bug:
            raise KeyError("lookup table missing")
        began, step = time.monotonic(), 0
        while (self.params.gate and not Path(self.params.gate).exists()) or (
            time.monotonic() - began < self.params.seconds
        ):
            if any(job.cancelled for job in jobs) and not self.params.deaf:
                raise Cancelled("stopped")
            time.sleep(0.01)
            step += 1
            for job in jobs:
                job.progress(step, 100000, eta=3600.0)
        if self.params.deaf:  # it ends its work, whatever was asked
            for job in jobs:
                job.progress(100000, 100000)
        return [ImageOps.invert(image) for image in images]

    def process(self, image, job):
        return self.process_batch([image], [job])[0]
"""

CONFIG = """
state_dir = "state"
[daemon]
retry_backoff_seconds = 0.2
{daemon}
[[batch]]
name = "nightly"
source = "library"
outbox = "stylised"
plugin = "{plugin}"
params = {params}
{extra}
"""


def make_batch(
    folder: Path, count: int, plugin: str, params: str, extra: str = "", daemon: str = ""
) -> Path:
    library = folder / "library"
    library.mkdir(parents=True)
    for i in range(count):
        photo(24 + 4 * (i % 2), 16, seed=i).save(library / f"img{i}.png")
    config = folder / "stylebox.toml"
    config.write_text(CONFIG.format(plugin=plugin, params=params, extra=extra, daemon=daemon))
    return config


def probe_env(tmp_path: Path) -> dict[str, str]:
    site = installed_site(
        tmp_path, "probe", "[stylebox.plugins]\nprobe = probe:Probe\n", {"probe.py": PROBE}
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**JOIN, "PYTHONPATH": path}


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stylebox.cli", "batch", "nightly", "--config", str(config),
            *extra]  # fmt: skip


def batch(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(config, *extra), capture_output=True, text=True, timeout=180, env=env or JOIN
    )


def rows(folder: Path) -> list:
    from stylebox.daemon.journal import Journal

    journal = Journal(folder / "state" / "journal.sqlite3")
    try:
        return journal.jobs("batch:nightly")
    finally:
        journal.close()


def comparable(manifest: Path) -> dict:
    """A manifest less what differs between any two runs (times, versions, the host)."""
    data = json.loads(manifest.read_text())
    for key in ("timings", "started_at", "finished_at", "libraries", "device"):
        data.pop(key, None)
    return data


def outputs(folder: Path) -> dict[str, object]:
    """Every file under ``folder`` by relative name: images as their pixels (an encoded
    file carries its colour profile's creation time), manifests made comparable."""
    from PIL import Image

    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(folder))
        if path.suffix == ".json":
            found[relative] = comparable(path)
        else:
            with Image.open(path) as image:
                found[relative] = (image.format, image.mode, image.size, image.tobytes())
    return found


def test_a_ray_batch_writes_what_a_local_batch_writes_and_bad_images_fail_alike(
    tmp_path: Path,
) -> None:
    """posterize over good photos, a text file and an empty one: the same results (pixel
    for pixel), manifests and failures with the same reasons; ``--ray`` with no address
    starts a local Ray instance of its own."""
    runs = {}
    for engine in ("local", "ray"):
        folder = tmp_path / engine
        config = make_batch(folder, 4, "posterize", "{ bits = 2 }")
        (folder / "library" / "notes.jpg").write_text("hello, this is not a picture\n" * 20)
        (folder / "library" / "empty.png").write_bytes(b"")
        result = batch(config, *(["--ray"] if engine == "ray" else []), env=dict(os.environ))
        assert result.returncode == 1, result.stderr  # the two bad files failed
        # With no workers set, one actor per CPU of the instance (2 here).
        assert ("2 Ray worker(s) (1 CPU each)" in result.stderr) == (engine == "ray")
        runs[engine] = folder
    local, ray = runs["local"], runs["ray"]
    assert outputs(local / "stylised") == outputs(ray / "stylised")
    assert len(outputs(ray / "stylised")) == 8  # a result and a manifest per good photo

    def states(folder: Path) -> list[tuple[str, str, int, str | None]]:
        return sorted((r.name, r.state, r.attempts, r.error_message) for r in rows(folder))

    assert states(local) == states(ray)
    failed = [row for row in rows(ray) if row.state == "failed"]
    assert sorted(row.name for row in failed) == ["empty.png", "notes.jpg"]
    assert all(row.error_class == "BadInput" and row.attempts == 0 for row in failed)  # on sight


def test_gatys_on_ray_gives_the_layout_of_a_local_batch(
    tmp_path: Path, style_file: Path, ray_address: str
) -> None:
    """A tiny gatys job with snapshots: result, steps/, GIF and manifest, named and listed
    as a local batch names them (the bytes of an optimiser differ with thread counts)."""
    params = f'{{ style = "{style_file}", size = 32, steps = 4, snapshot_every = 2 }}'
    found = {}
    for engine in ("local", "ray"):
        folder = tmp_path / engine
        # One photo and one actor: each actor loads torch and VGG19, the slow part here.
        config = make_batch(folder, 1, "gatys", params, "workers = 1")
        extra = ("--ray", ray_address) if engine == "ray" else ()
        result = batch(config, *extra)
        assert result.returncode == 0, result.stderr
        stylised = folder / "stylised"
        manifests = {}
        for path in sorted(stylised.glob("*.json")):
            data = comparable(path)
            data.pop("history")  # losses: floating point of another thread count
            # Each actor has its own instance, so its first job computes the style.
            data.pop("style_cache")
            manifests[path.name] = data
        files = sorted(str(p.relative_to(stylised)) for p in stylised.rglob("*") if p.is_file())
        found[engine] = (files, manifests)
    assert found["local"] == found["ray"]
    files, _ = found["ray"]
    assert {"img0.png", "img0.gif", "img0.json", "img0.steps/0002.png"} <= set(files)


def test_a_worker_killed_mid_photo_costs_that_photo_one_retry(
    tmp_path: Path, ray_address: str
) -> None:
    """kill -9 of the actor process running a photo: that photo is tried again on a new
    actor, the others are not; each ends with exactly one result."""
    env = probe_env(tmp_path)
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    config = make_batch(
        tmp_path,
        4,
        "probe",
        f'{{ log = "{log}", gate = "{gate}" }}',
        "workers = 2",
        "batch_size = 1",  # one photo a call: the kill is of one photo's actor
    )
    process = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.PIPE, text=True
    )
    assert wait_until(lambda: log.exists() and log.read_text().strip(), 60)
    pid, victim, _ = log.read_text().splitlines()[0].split()
    os.kill(int(pid), signal.SIGKILL)
    time.sleep(1.0)  # the driver sees the actor die while the other photos still wait
    gate.touch()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    (retry,) = [json.loads(line) for line in stderr.splitlines() if '"event": "retry"' in line]
    assert retry["file"] == victim
    assert retry["error"].startswith(f"the Ray worker running it (pid {pid} on "), retry
    by_name = {row.name: row for row in rows(tmp_path)}
    assert all(row.state == "done" for row in by_name.values())
    assert by_name[victim].attempts == 2
    assert all(row.attempts == 1 for name, row in by_name.items() if name != victim)
    manifests = sorted(p.name for p in (tmp_path / "stylised").glob("*.json"))
    assert manifests == [f"img{i}.json" for i in range(4)]
    later = [line.split()[0] for line in log.read_text().splitlines() if victim in line][1:]
    assert later and pid not in later  # retried by a live actor


def test_more_workers_than_the_cluster_has_cpus_for_run_on_those_it_has(
    tmp_path: Path, ray_address: str
) -> None:
    """workers = 5 on two CPUs: the batch waited for three actors Ray could never place,
    without a word (five minutes, then failed)."""
    config = make_batch(tmp_path, 3, "posterize", "{ bits = 2 }", "workers = 5")
    began = time.monotonic()
    result = batch(config, "--ray", ray_address)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 90
    assert "workers = 5, but the Ray cluster has 2 CPU(s), 0 GPU(s): 2 worker(s) (1 CPU each)" in (
        result.stderr
    )
    assert "waiting for Ray to place" not in result.stderr
    assert [row.state for row in rows(tmp_path)] == ["done"] * 3


def test_a_batch_begins_with_the_workers_placed_and_the_others_join_later(
    tmp_path: Path, ray_address: str
) -> None:
    """One of the two CPUs held by another batch: the second of two actors cannot be
    placed; the batch begins with the first, saying so, and ends without waiting for it."""
    env = probe_env(tmp_path)
    holder = tmp_path / "holder"
    log, gate = holder / "calls.log", holder / "gate"
    config = make_batch(holder, 1, "probe", f'{{ log = "{log}", gate = "{gate}" }}', "workers = 1")
    holding = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(log.exists, 60)  # its actor is busy with its photo
        config = make_batch(tmp_path / "second", 2, "posterize", "{ bits = 2 }", "workers = 2")
        result = batch(config, "--ray", ray_address)
    finally:
        gate.touch()
        try:
            held = holding.wait(timeout=60)
        except subprocess.TimeoutExpired:  # its actor would hold a CPU of the instance
            holding.kill()
            holding.wait()
            raise
    assert result.returncode == 0, result.stderr
    assert "1 more Ray worker(s) join as they start (1 CPU each" in result.stderr, result.stderr
    assert "1 Ray worker(s) (1 CPU each) on 1 node(s)" in result.stderr
    assert [row.state for row in rows(tmp_path / "second")] == ["done"] * 2
    assert held == 0


def test_a_ray_batch_stopped_while_ray_starts_exits_130(tmp_path: Path) -> None:
    """SIGTERM while the batch starts its own local Ray instance (``ray.init``, whose own
    SIGTERM handler exited with status 15 without a word): exit 130 and one line."""
    env = probe_env(tmp_path)
    config = make_batch(tmp_path, 1, "probe", f'{{ log = "{tmp_path / "calls.log"}" }}')
    process = subprocess.Popen(command(config, "--ray"), env=env, stderr=subprocess.PIPE, text=True)

    def starting() -> bool:  # Ray's first server is up, its driver not yet connected
        for pid in children(process.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server":
                    return True
        return False

    try:
        assert wait_until(starting, 90, interval=0.01)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "stylebox: interrupted", stderr


def test_a_ray_batch_stopped_while_its_workers_start_exits_130(
    tmp_path: Path, ray_address: str
) -> None:
    """SIGTERM while the actors start their plugin: exit 130 and one line, nothing run (it
    was 143, or Ray's crash report and 1)."""
    env = probe_env(tmp_path)
    log, hold = tmp_path / "calls.log", tmp_path / "hold"
    config = make_batch(tmp_path, 1, "probe", f'{{ log = "{log}", hold = "{hold}" }}')
    process = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.PIPE, text=True
    )
    started = Path(f"{log}.init")
    try:
        assert wait_until(lambda: started.exists() and len(started.read_text().split()) >= 2, 90)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        hold.touch()  # a leaked actor would hold a CPU of the module's instance
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "stylebox: interrupted", stderr
    assert "SIGTERM received" not in stderr
    assert not log.exists()  # nothing ran


def children(pid: int) -> list[int]:
    listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True)
    return [int(field) for field in listed.stdout.split()]


def raylet_of(node: int) -> int | None:
    """The raylet that ``ray start`` (pid ``node``) started: the node itself."""
    for pid in children(node):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
    return None


def test_a_killed_ray_batch_resumes_and_does_nothing_twice(
    tmp_path: Path, ray_address: str
) -> None:
    """The command itself killed with SIGKILL mid-run: its actors go with it, and the
    next run does only what was not done."""
    env = probe_env(tmp_path)
    log = tmp_path / "calls.log"
    config = make_batch(tmp_path, 6, "probe", f'{{ log = "{log}", seconds = 0.4 }}', "workers = 2")
    process = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.DEVNULL
    )
    outbox = tmp_path / "stylised"
    assert wait_until(lambda: len(list(outbox.glob("*.json"))) >= 2, 60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    actors = {int(line.split()[0]) for line in log.read_text().splitlines()}

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_until(lambda: all(gone(pid) for pid in actors), 30)  # fate-shared
    done_before = {p.name for p in outbox.glob("*.json")}
    assert len(done_before) < 6
    calls_before = len(log.read_text().splitlines())

    result = batch(config, "--ray", ray_address, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outbox.glob("*.json")) == [f"img{i}.json" for i in range(6)]
    assert all(row.state == "done" for row in rows(tmp_path))
    again = {
        name
        for line in log.read_text().splitlines()[calls_before:]
        for name in line.split()[1].split(",")
    }
    assert not again & {name.replace(".json", ".png") for name in done_before}


def test_stopping_a_ray_batch_reaches_the_actor_and_requeues_uncounted(
    tmp_path: Path, ray_address: str
) -> None:
    """SIGTERM: the stop is passed to the actor, whose plugin sees job.cancelled; the job
    goes back to the queue without spending a try and the command exits 130."""
    env = probe_env(tmp_path)
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    config = make_batch(tmp_path, 1, "probe", f'{{ log = "{log}", gate = "{gate}" }}')
    process = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.DEVNULL
    )
    assert wait_until(log.exists, 60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    (row,) = rows(tmp_path)
    assert row.state == "queued" and row.attempts == 0


def test_a_result_past_its_time_limit_on_ray_says_so_in_its_manifest(
    tmp_path: Path, ray_address: str
) -> None:
    """The driver's timeout reaches the actor as a timeout: the manifest, written there,
    marks the result that came anyway (the actor's flag knew only that it was raised)."""
    env = probe_env(tmp_path)
    config = make_batch(
        tmp_path, 1, "probe", f'{{ log = "{tmp_path / "calls.log"}", seconds = 2.0, deaf = true }}',
        extra="timeout_seconds = 0.5",
    )  # fmt: skip
    result = batch(config, "--ray", ray_address, env=env)
    assert result.returncode == 0, result.stderr
    assert "finished past its time limit (timeout_seconds = 0.5)" in result.stderr
    (manifest,) = (tmp_path / "stylised").glob("*.json")
    assert json.loads(manifest.read_text())["past_time_limit"] is True


def test_a_running_ray_job_shows_its_step_in_status(tmp_path: Path, ray_address: str) -> None:
    """The actor's progress reaches the driver's journal: ``stylebox status`` shows the
    running job's step climbing and the plugin's time left, as for a local job."""
    env = probe_env(tmp_path)
    log, gate = tmp_path / "calls.log", tmp_path / "gate"
    config = make_batch(tmp_path, 1, "probe", f'{{ log = "{log}", gate = "{gate}" }}')
    process = subprocess.Popen(
        command(config, "--ray", ray_address), env=env, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(log.exists, 60)
        seen: list[int] = []

        def climbed() -> bool:
            (row,) = rows(tmp_path)
            if row.state == "running" and row.step:
                seen.append(row.step)
            return len(set(seen)) >= 2

        assert wait_until(climbed, 30), seen
        assert seen == sorted(seen)
        status = subprocess.run(
            [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "/100000" in status.stdout and "s left" in status.stdout, status.stdout
    finally:
        gate.touch()
        assert process.wait(timeout=60) == 0
    (row,) = rows(tmp_path)
    assert row.state == "done"


def test_same_size_photos_go_to_a_batching_plugin_together(
    tmp_path: Path, ray_address: str
) -> None:
    """``engine = "ray"`` and ``ray_address`` in the table: the batch joins that cluster;
    its one actor starts the plugin once and gets the three photos of each size as one
    ``process_batch``."""
    env = probe_env(tmp_path)
    log = tmp_path / "calls.log"
    table = f'workers = 1\nengine = "ray"\nray_address = "{ray_address}"'
    config = make_batch(tmp_path, 6, "probe", f'{{ log = "{log}" }}', table, "batch_size = 6")
    result = batch(config, env=env)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(call[2]) for call in calls) == [3, 3]  # one claim of six, two sizes
    (actor,) = {call[0] for call in calls}
    starts = Path(f"{log}.init").read_text().split()  # this command's, then the actor's
    assert starts.count(actor) == 1 and len(starts) == 2


def test_a_plugin_bug_on_a_ray_worker_is_logged_with_its_traceback_here(
    tmp_path: Path, ray_address: str
) -> None:
    # The traceback stayed on the worker, whose output Ray does not forward: the author
    # of a plugin that failed only on the cluster had no line to look at.
    env = probe_env(tmp_path)
    log = tmp_path / "calls.log"
    params = f'{{ log = "{log}", bug = true }}'
    config = make_batch(tmp_path, 3, "probe", params, "max_attempts = 1")  # sizes a, b, a
    cut = encoded(photo(24, 16))
    (tmp_path / "library" / "cut.png").write_bytes(cut[: len(cut) // 2])
    result = batch(config, "--ray", ray_address, env=env)
    assert result.returncode == 1, result.stderr
    lines = [json.loads(x) for x in result.stderr.splitlines() if '"plugin_bug"' in x]
    # One line per call that raised, naming the jobs it ended; none for the damaged photo,
    # whose reason is the photo's, not the plugin's.
    assert sorted(len(line["jobs"]) for line in lines) == [1, 2], lines
    for line in lines:
        assert line["msg"] == "plugin probe failed: KeyError: 'lookup table missing'"
        assert 'probe.py", line' in line["exception"] and "process_batch" in line["exception"]
    assert any("truncated" in (row.error_message or "") for row in rows(tmp_path))


def test_ray_missing_is_a_one_line_config_error(tmp_path: Path) -> None:
    """Where Ray is not installed (a ``ray`` that fails to import as a missing one does),
    a Ray batch refuses to start in one line that says how to install it."""
    missing = tmp_path / "no-ray" / "ray"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\")\n")
    config = make_batch(tmp_path, 1, "posterize", "{ bits = 2 }", 'engine = "ray"')
    env = {**os.environ, "PYTHONPATH": str(missing.parent)}
    result = batch(config, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "pip install 'stylebox[ray]'" in result.stderr
    assert "config error" in result.stderr


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-such-host.invalid:6379"])
def test_an_address_where_no_cluster_answers_is_refused_in_one_line_at_once(
    tmp_path: Path, address: str
) -> None:
    # Ray retries such an address for about 14 minutes, 61 lines of warnings, before it
    # gives up: a nightly timer's batch hung that long.
    config = make_batch(tmp_path, 1, "posterize", "{ bits = 2 }")
    began = time.monotonic()
    result = batch(config, "--ray", address)
    assert time.monotonic() - began < 60
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"stylebox: config error: cannot connect to {address}: ")


# Last: the lost node stays in the cluster's books (marked dead after missed heartbeats)
# for a while, and a test after it could wait for that.
def test_a_node_lost_mid_photo_costs_its_photo_one_retry(tmp_path: Path, ray_head: Head) -> None:
    """A second node (1 CPU) joins the module's Ray instance (2 CPUs), as ``ray start
    --address`` does on another machine; three actors fill both. The node's raylet and
    every process it started are killed with SIGKILL while its actor runs a photo: that
    photo is tried again on a remaining actor (the cluster has no room for a new one), and
    every photo ends once."""
    env = probe_env(tmp_path)
    ray_cli = Path(sys.executable).with_name("ray")
    ray_address = ray_head.address
    node = subprocess.Popen(
        [ray_cli, "start", "--address", ray_address, "--num-cpus", "1", "--block",
         "--disable-usage-stats", "--object-store-memory", str(80 * 1024 * 1024)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started: set[int] = set()
    try:
        assert wait_until(lambda: raylet_of(node.pid) is not None, 60)
        started.update(children(node.pid))
        raylet = raylet_of(node.pid)
        assert raylet is not None
        # Three actors fill the cluster only once the node is registered (slow under load:
        # the batch would start 2) and the actors of earlier tests' commands are gone.
        assert wait_until(lambda: ray_head.free_cpus() == 3, 60, interval=0.5), ray_head.free_cpus()
        log, gate = tmp_path / "calls.log", tmp_path / "gate"
        config = make_batch(
            tmp_path, 4, "probe", f'{{ log = "{log}", gate = "{gate}" }}', "workers = 3",
            "batch_size = 1",
        )  # fmt: skip
        process = subprocess.Popen(
            command(config, "--ray", ray_address), env=env, stderr=subprocess.PIPE, text=True
        )
        calls = lambda: [line.split() for line in log.read_text().splitlines()]  # noqa: E731
        if not wait_until(lambda: log.exists() and len(calls()) == 3, 60):
            process.kill()
            pytest.fail(f"not 3 photos running on 3 actors: {process.communicate()[1]}")
        on_node = [call for call in calls() if int(call[0]) in children(raylet)]
        assert len(on_node) == 1, (calls(), children(raylet))
        _, victim, _ = on_node[0]
        for pid in [*children(raylet), raylet]:  # the machine goes, with all it ran
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        gate.touch()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        retries = [json.loads(line) for line in stderr.splitlines() if '"event": "retry"' in line]
        assert [retry["file"] for retry in retries] == [victim]
        assert retries[0]["error"].startswith("the Ray worker running it (pid "), retries
        by_name = {row.name: row for row in rows(tmp_path)}
        assert all(row.state == "done" for row in by_name.values())
        assert by_name[victim].attempts == 2
        assert all(row.attempts == 1 for name, row in by_name.items() if name != victim)
        manifests = sorted(p.name for p in (tmp_path / "stylised").glob("*.json"))
        assert manifests == [f"img{i}.json" for i in range(4)]
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        for pid in started:  # what the node started and left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
