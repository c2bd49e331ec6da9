"""Running the real daemon in a subprocess, speaking the systemd notify protocol to it."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import installed_site, photo

POSTERIZE_CONFIG = """
state_dir = "state"
[daemon]
rescan_seconds = 2
drain_seconds = 20
lease_seconds = 30
retry_backoff_seconds = 0.2
[[inbox]]
name = "poster"
path = "inbox"
outbox = "outbox"
plugin = "posterize"
settle_seconds = 0.2
params = {{ bits = 2 }}
{extra}
"""


GATYS_CONFIG = """
state_dir = "state"
[daemon]
{daemon}
[[inbox]]
name = "starry"
path = "inbox"
outbox = "outbox"
plugin = "gatys"
settle_seconds = {settle}
params = {{ style = "{style}", {params} }}
"""


def gatys_config(
    folder: Path, style: Path, params: str, daemon: str = "", settle: float = 0.1
) -> Path:
    """A config with one gatys inbox ``starry`` on ``inbox/`` -> ``outbox/``."""
    text = GATYS_CONFIG.format(daemon=daemon, settle=settle, style=style, params=params)
    return write_config(folder, text)


def write_config(folder: Path, text: str) -> Path:
    path = folder / "stylebox.toml"
    path.write_text(text)
    return path


class Daemon:
    """``stylebox serve`` as systemd would run it: NOTIFY_SOCKET set, signals to stop."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        """``cwd``: where it runs (``config`` may then be relative to it)."""
        self.config = config
        self.folder = (cwd / config).parent if cwd else config.parent
        self.socket_path = self.folder / f"notify-{time.monotonic_ns()}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.socket_path))
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.log = (self.folder / "daemon.log").open("ab")
        full_env = {**os.environ, "NOTIFY_SOCKET": str(self.socket_path), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(config)],
            stdout=self.log,
            stderr=self.log,
            env=full_env,
            cwd=cwd,
        )

    def receive(self, until: str, timeout: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(until in message for message in self.messages):
                return True
            exited = self.process.poll() is not None
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                if exited:
                    return False
                continue
            self.messages.extend(data.split("\n"))
        return False

    def wait_ready(self) -> None:
        assert self.receive("READY=1"), self.output()

    def output(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.close()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # its thread stacks go to the log
            time.sleep(1)
            self.kill()
            raise AssertionError(f"stylebox serve did not stop:\n{self.output()[-6000:]}") from None
        self.receive("STOPPING=1", 1)  # collect what it said on the way out
        self.close()
        return code

    def close(self) -> None:
        self.notify.close()
        self.socket_path.unlink(missing_ok=True)
        self.log.close()


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


GATED = """
import os, time
from stylebox.errors import Cancelled
from stylebox.plugins.api import Plugin, PluginParams

class Params(PluginParams):
    tag: str = "x"

def note(line):
    with open(os.environ["GATED_LOG"], "a") as log:
        log.write(line + "\\n")

class Gated(Plugin):
    name = "gated"
    Params = Params

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        note("start " + params.tag)

    def process(self, image, job):
        note("run " + self.params.tag)
        while not os.path.exists(os.environ["GATE"]):
            if job.cancelled:
                raise Cancelled("stopped at the gate")
            time.sleep(0.05)
        return image

    def close(self):
        note("close " + self.params.tag)
"""


def gated_env(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    site = installed_site(tmp_path, "gated", "[stylebox.plugins]\ngated = gated:Gated\n", {
        "gated.py": GATED
    })  # fmt: skip
    record, gate = tmp_path / "gated.log", tmp_path / "gate"
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "GATED_LOG": str(record),
        "GATE": str(gate),
    }
    return env, record, gate


def inbox(name: str, tag: str, plugin: str = "gated") -> str:
    return (
        f'[[inbox]]\nname = "{name}"\npath = "in-{name}"\noutbox = "out-{name}"\n'
        f'plugin = "{plugin}"\nsettle_seconds = 0.2\nparams = {{ tag = "{tag}" }}\n'
    )


def drop(tmp_path: Path, folder: str, name: str, seed: int, fmt: str = "PNG") -> None:
    staged = tmp_path / f"staged-{name}"
    photo(24, 16, seed=seed).save(staged, fmt)
    os.rename(staged, tmp_path / folder / name)


def states(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        return dict(db.execute("SELECT name, state FROM jobs"))
