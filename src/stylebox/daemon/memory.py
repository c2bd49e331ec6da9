"""Memory a job freed, handed back to the system once it ends.

glibc keeps the heap pages that a job's large buffers were freed into (the decoded photo,
its tiles, the encoded result) for the process to reuse, which in a daemon means for good.
Its ``malloc_trim`` hands the free pages back. (Most of what a ``fast`` daemon kept, about
2 GB after a few camera photos, was onnxruntime's: see ``faststyle/session.py``; with both,
0.2 GB after them, bench/fast_memory.py.) Elsewhere (musl) there is no such call, and
nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the process's own libc
    except (OSError, AttributeError):
        return None
    return trim


def give_back() -> bool:
    """Hand the heap's free pages back to the system; whether there was a way to."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
