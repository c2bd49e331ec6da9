"""The error taxonomy every part of stylebox speaks.

What becomes of a daemon or batch job (``daemon/pipeline.py``) follows from the class of
its error, and for ``Cancelled`` from why the job was cancelled:

- ``BadInput``: the job fails at once (an inbox's input goes to ``failed/`` with the reason).
  Its subclass ``MissingCompanion`` (no mask where one is needed) is taken up again in an
  inbox when the missing file arrives.
- ``PluginError``: the job is tried again after a doubling backoff, up to ``max_attempts``
  tries in all, then fails. Its subclass ``PermanentFailure`` (``retry = False``) fails at
  once; its subclass ``StorageError`` for a passing reason (a full disk, a share gone)
  waits in an inbox (each minute, no try counted) for the disk or share to be back.
- ``Cancelled``: when stylebox is stopping (SIGTERM, Ctrl-C), the job goes back to the queue
  without counting a try and resumes from its checkpoint at the next start. When it was
  cancelled for outliving its ``timeout_seconds``, that is a failed try, a ``PluginError``
  ("timed out after N s"), retried or failed as above.
- ``InputChanged``: the input's bytes are not those its job was queued for (the file was
  replaced before the job read it): the job is queued again for the new bytes, keeping its
  output names; when those bytes already have a job, it ends as failed, saying so, and the
  file is taken as any arrival of those bytes is. Its input is never moved for it.
- ``ConfigError``: raised while the config is loaded or a plugin starts, it refuses the
  whole config (the command exits with status 2 before it takes any work; a reload is
  refused and the running config kept). Raised from ``process`` it is a plugin fault.

Any other exception from a plugin is a plugin fault too: a ``PluginError`` naming it.
``stylebox run`` ends instead with an exit status: 2 for ``BadInput`` and ``ConfigError``,
1 for ``PluginError``, 130 for ``Cancelled``.
"""

from __future__ import annotations

import errno


class StyleboxError(Exception):
    """Base of every error stylebox raises on purpose."""


class BadInput(StyleboxError):
    """The input itself is unusable (not an image, truncated, too large...). Never retried."""


class MissingCompanion(BadInput):
    """The input needs a companion file it does not have (its mask: ``photo.mask.png``). In
    an inbox, the companion dropped in later brings the photo back from ``failed/``."""

    def __init__(self, message: str = "", kind: str = "mask") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type[MissingCompanion], tuple[str, str]]:
        return type(self), (str(self), self.kind)  # its kind too, across processes (Ray)


class Truncated(BadInput):
    """The input ends before its image does (in its header or its pixels): a partial copy,
    or one still being written by a writer that pauses longer than the settle time. An
    inbox gives it a while to grow before it fails."""


class PluginError(StyleboxError):
    """A plugin failed on an input that may well succeed on another try."""

    retry = True
    #: The plugin raised an exception of its own (its ``__cause__``: a ``KeyError``, a CUDA
    #: out-of-memory error), whose traceback is logged once for the plugin's author.
    plugin_bug = False


class StorageError(PluginError):
    """stylebox could not read or write its own files for a job (its input could not be
    moved, a folder is not writable): no fault of the plugin's. Where the system's reason
    is one that passes or is mended (:attr:`passing`: a full disk, a read-only or gone
    share, a folder's permissions), an inbox's job waits and is tried each minute, no try
    counted; otherwise (a name the file system refuses, an encoder's error), and in a batch
    or run, it is retried like a plugin fault."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.__cause__ = cause
        self.passing = cause is not None and cause.errno in PASSING_ERRNOS
        """Whether the disk or folder may be back as it should be by a later try."""


#: The system's reasons that pass or are mended without changing the job: a full disk or
#: quota, a read-only or unreachable share, permissions, a folder gone or a file where a
#: folder should be.
PASSING_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EEXIST,
    }
)


class PermanentFailure(PluginError):
    """The plugin ran as designed, but with these params this input gives no usable result,
    and another try would do exactly the same: the job fails at once, without retries."""

    retry = False


class InputChanged(StyleboxError):
    """The input holds other bytes than its job was queued for: it was replaced."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
        """The sha256 of the bytes found."""


class Cancelled(StyleboxError):
    """The job was asked to stop; its checkpoint lets it resume later."""


class ConfigError(StyleboxError):
    """The configuration is wrong; the message names the file, the table and the field."""


class StateError(StyleboxError):
    """stylebox's own state cannot be used (a journal that is not a database); the message
    names the file and what to do."""


def describe(error: BaseException) -> str:
    """``KeyError: 'x'``: an exception's class and message, as reasons and logs name it;
    one raised without a message (``raise Exception()``) says so rather than end in ``: ``."""
    message = str(error)
    name = type(error).__name__
    return f"{name}: {message}" if message else f"{name} (raised without a message)"
