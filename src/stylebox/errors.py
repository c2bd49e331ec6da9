"""The error taxonomy every part of stylebox speaks.

What becomes of a daemon or batch job (``daemon/pipeline.py``) follows from the class of
its error, and for ``Cancelled`` from why the job was cancelled:

- ``BadInput``: the job fails at once (an inbox's input goes to ``failed/`` with the reason).
- ``PluginError``: the job is tried again after a doubling backoff, up to ``max_attempts``
  tries in all, then fails. Its subclass ``PermanentFailure`` (``retry = False``) fails at
  once.
- ``Cancelled``: when stylebox is stopping (SIGTERM, Ctrl-C), the job goes back to the queue
  without counting a try and resumes from its checkpoint at the next start. When it was
  cancelled for outliving its ``timeout_seconds``, that is a failed try, a ``PluginError``
  ("timed out after N s"), retried or failed as above.
- ``ConfigError``: raised while the config is loaded or a plugin starts, it refuses the
  whole config (the command exits with status 2 before it takes any work; a reload is
  refused and the running config kept). Raised from ``process`` it is a plugin fault.

Any other exception from a plugin is a plugin fault too: a ``PluginError`` naming it.
``stylebox run`` ends instead with an exit status: 2 for ``BadInput`` and ``ConfigError``,
1 for ``PluginError``, 130 for ``Cancelled``.
"""


class StyleboxError(Exception):
    """Base of every error stylebox raises on purpose."""


class BadInput(StyleboxError):
    """The input itself is unusable (not an image, truncated, too large...). Never retried."""


class PluginError(StyleboxError):
    """A plugin failed on an input that may well succeed on another try."""

    retry = True


class PermanentFailure(PluginError):
    """The plugin ran as designed, but with these params this input gives no usable result,
    and another try would do exactly the same: the job fails at once, without retries."""

    retry = False


class Cancelled(StyleboxError):
    """The job was asked to stop; its checkpoint lets it resume later."""


class ConfigError(StyleboxError):
    """The configuration is wrong; the message names the file, the table and the field."""
