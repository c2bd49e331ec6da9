"""Who holds a running job: the owner id a lease is taken under, whether its process
lives, and the flag that stops a run (and why)."""

from __future__ import annotations

import os
import socket
import threading
from typing import Literal


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


StopReason = Literal["drain", "timeout", "cancel", "lost"]


class Stop(threading.Event):
    """A running job's stop flag, with why it was raised: ``"drain"`` (stylebox is
    stopping: the job checkpoints and goes back to the queue, no attempt spent) or
    ``"timeout"`` (its time is up: retried or failed like a fault) or ``"cancel"`` (someone
    cancelled it, on the status page: failed at once, to be retried by hand) or ``"lost"``
    (its lease lapsed and another worker claimed the job: this run records nothing). The
    first reason given stands, but a cancel overrides a drain or a timeout (the person
    asked for it not to run again), and ``"lost"`` overrides any.

    ``claimed_at``: when the run's claim was made, which tells it from a later claim of
    the same job by this same process."""

    def __init__(self, claimed_at: float | None = None) -> None:
        super().__init__()
        self.reason: StopReason | None = None
        self.claimed_at = claimed_at

    def stop(self, reason: StopReason) -> None:
        if self.reason is None or _STOP_RANK[reason] > _STOP_RANK[self.reason]:
            self.reason = reason
        self.set()


_STOP_RANK: dict[StopReason, int] = {"drain": 0, "timeout": 0, "cancel": 1, "lost": 2}
