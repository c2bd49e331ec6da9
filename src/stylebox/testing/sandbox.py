"""Watching what a plugin touches: file writes, network use and programs started,
observed, not trusted.

Python's audit hooks (PEP 578) see every ``open`` for writing, every rename, removal and
``mkdir``, every SQLite database opened, every socket connection or name lookup, every change
of the working directory and every program started (``subprocess``, ``os.system``,
``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``os.fork``) made from Python, in any thread
and in any library. ``multiprocessing``'s ``spawn`` and ``forkserver`` start their programs
through ``_posixsubprocess.fork_exec``, which raises no audit event: the sandbox wraps it
while active. Writes by native code that bypass Python are caught only in the working
directory, which the sandbox points at an empty folder and inspects afterwards; a program
started is reported as such, since what it writes is out of sight.
"""

from __future__ import annotations

import _posixsubprocess
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: Events that change a path: (index of the path, index of its ``dir_fd`` or None), as
#: the arguments are listed in Python's audit events table.
_PATH_EVENTS: dict[str, tuple[int, int | None]] = {
    "os.remove": (0, 1),
    "os.rmdir": (0, 1),
    "os.mkdir": (0, 2),
    "os.chmod": (0, 2),
    "os.chown": (0, 3),
    "os.utime": (0, 3),
    "os.truncate": (0, None),
    "os.symlink": (1, 2),
    "os.link": (1, 3),
    "shutil.rmtree": (0, 1),
    "shutil.copyfile": (1, None),
    "shutil.copytree": (1, None),
    "shutil.move": (1, None),
    "tempfile.mkstemp": (0, None),
    "tempfile.mkdtemp": (0, None),
}
#: Events that start a program, with the index of what names it (the program and its
#: arguments).
_PROCESS_EVENTS: dict[str, int] = {
    "subprocess.Popen": 1,
    "os.system": 0,
    "os.exec": 1,
    "os.spawn": 2,
    "os.posix_spawn": 1,
}
#: Events that copy this process (``multiprocessing``'s ``fork`` start method among them):
#: a program of its own, whose writes are out of sight.
_FORK_EVENTS = {"os.fork", "os.forkpty"}
#: SQLite databases that are no file.
_MEMORY_DATABASES = {"", ":memory:", "file::memory:"}
#: Events that reach for the network whatever their arguments.
_NETWORK_EVENTS = {
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.sendto",
    "urllib.Request",
    "http.client.connect",
    "ftplib.connect",
    "smtplib.connect",
}


@dataclass
class Sandbox:
    """Records writes outside ``allowed`` folders, any network use, any program started
    and any change of the working directory while active."""

    allowed: list[Path]
    workdir: Path
    """An empty folder that becomes the working directory while the sandbox is active."""
    writes: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    chdirs: list[str] = field(default_factory=list)
    """Folders the working directory was changed to (``os.chdir``, ``os.fchdir``)."""

    def observe(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (
                any(c in mode for c in "wax+")
                if isinstance(mode, str)
                else bool(flags & _WRITE_FLAGS)
            )
            if writing:
                self._write(event, path)
        elif event == "os.rename":
            self._write(event, args[0], args[2])
            self._write(event, args[1], args[3])
        elif event in _PATH_EVENTS:
            path_index, fd_index = _PATH_EVENTS[event]
            self._write(event, args[path_index], None if fd_index is None else args[fd_index])
        elif event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple):  # AF_INET/AF_INET6; AF_UNIX paths are local
                self.network.append(f"{event} {address!r}")
        elif event in _NETWORK_EVENTS:
            self.network.append(f"{event} {args[0]!r}")
        elif event in _PROCESS_EVENTS:
            command = args[_PROCESS_EVENTS[event]]
            if isinstance(command, bytes | str | os.PathLike):
                command = os.fsdecode(command)
            else:
                command = [os.fsdecode(part) for part in command]
            if not _finding_a_library(command):
                self.processes.append(f"{event} {command!r}")
        elif event in _FORK_EVENTS:
            self.processes.append(f"{event} (a copy of this process)")
        elif event == "sqlite3.connect":
            self._database(event, args[0])
        elif event == "os.chdir":
            self._chdir(args[0])

    def _database(self, event: str, database: object) -> None:
        if isinstance(database, bytes):
            database = os.fsdecode(database)
        if not isinstance(database, str | os.PathLike):
            return
        name = os.fspath(database)
        if name.startswith("file:"):  # a URI: file:path?mode=ro...
            name, _, query = name[len("file:") :].partition("?")
            if "mode=memory" in query or "mode=ro" in query:
                return
        if name in _MEMORY_DATABASES:
            return
        self._write(event, name)

    @staticmethod
    def _absolute(path: str | os.PathLike[str], dir_fd: object = None) -> Path:
        """``path`` made absolute (against ``dir_fd`` or the working directory) and normal."""
        target = Path(path)
        if not target.is_absolute():
            base = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) if isinstance(dir_fd, int) else None
            target = (base or Path.cwd()) / target
        return Path(os.path.normpath(target))

    def _chdir(self, path: object) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, int):  # os.fchdir
            path = os.readlink(f"/proc/self/fd/{path}")
        if isinstance(path, str | os.PathLike):
            self.chdirs.append(str(self._absolute(path)))

    def started(self, argv: object) -> None:
        """A program started through ``_posixsubprocess.fork_exec`` (``multiprocessing``)."""
        if isinstance(argv, list | tuple):
            argv = [os.fsdecode(part) for part in argv]
        self.processes.append(f"_posixsubprocess.fork_exec {argv!r}")

    def _write(self, event: str, path: object, dir_fd: object = None) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str | os.PathLike):
            return  # a file descriptor: its open was seen already
        target = self._absolute(path, dir_fd)
        if "__pycache__" in target.parts or target.parts[:2] == ("/", "dev"):
            return  # Python caching bytecode of a lazy import; /dev/null and /dev/shm
        if any(target.is_relative_to(root) for root in self.allowed):
            return
        self.writes.append(f"{event} {target}")

    def stray_files(self) -> list[str]:
        """Files that appeared in the working directory (native writes included)."""
        return sorted(str(p.relative_to(self.workdir)) for p in self.workdir.rglob("*"))


_state = threading.local()
_active: list[Sandbox] = []
_hook_lock = threading.Lock()
_hook_installed = False


def _finding_a_library(command: str | list[str]) -> bool:
    """Whether ``command`` is ``ctypes.util.find_library``'s look-up, ``/sbin/ldconfig -p``
    started by its ``_findSoname_ldconfig`` (it reads the linker's cache and prints it,
    writing nothing): importing PyTorch runs one, so a plugin that imports it in
    ``__init__``, as it should, would be said to start a program, or not, by whether
    PyTorch was imported before. Its other ways (``gcc``, ``ld``, found on ``PATH``) count."""
    if command != ["/sbin/ldconfig", "-p"]:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_filename == ctypes.util.__file__ and code.co_name == "_findSoname_ldconfig":
            return True
        frame = frame.f_back
    return False


_fork_exec = _posixsubprocess.fork_exec


def _observed_fork_exec(*args: Any, **kwargs: Any) -> Any:
    if getattr(_state, "popen", False):
        _state.popen = False  # subprocess.Popen's own, seen by the audit hook already
    elif _active and not getattr(_state, "busy", False):
        _state.busy = True
        try:
            for box in _active:
                box.started(args[0] if args else kwargs.get("args"))
        finally:
            _state.busy = False
    return _fork_exec(*args, **kwargs)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _active or getattr(_state, "busy", False):
        return
    _state.busy = True  # the hook's own path handling must not observe itself
    try:
        for box in _active:
            box.observe(event, args)
        if event in ("subprocess.Popen", "os.posix_spawn"):  # Popen forks or posix_spawns
            _state.popen = event == "subprocess.Popen"
    except Exception as exc:  # an audit hook must never break the audited call
        for box in _active:
            box.writes.append(f"(sandbox could not read event {event}: {exc})")
    finally:
        _state.busy = False


@contextmanager
def sandboxed(allowed: list[Path], workdir: Path) -> Iterator[Sandbox]:
    """Observe the block; the returned :class:`Sandbox` holds what it did."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:  # audit hooks cannot be removed: one, idle when unused
            sys.addaudithook(_hook)
            _hook_installed = True
    workdir.mkdir(parents=True, exist_ok=True)
    box = Sandbox([Path(os.path.normpath(p.resolve())) for p in allowed], workdir.resolve())
    previous = Path.cwd()
    os.chdir(box.workdir)
    with _hook_lock:
        _active.append(box)
        _posixsubprocess.fork_exec = _observed_fork_exec
    try:
        yield box
    finally:
        with _hook_lock:
            _active.remove(box)
            if not _active:
                _posixsubprocess.fork_exec = _fork_exec
        try:
            now = os.getcwd()
        except OSError as exc:  # a folder since removed
            now = f"a folder that no longer exists ({exc.strerror})"
        if now != str(box.workdir) and not box.chdirs:  # changed by native code
            box.chdirs.append(now)
        os.chdir(previous)
