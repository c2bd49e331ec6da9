"""The error taxonomy every part of stylebox speaks.

The runner decides what happens to a job from the class alone: a ``BadInput`` is
quarantined at once, a ``PluginError`` is retried (its subclass ``PermanentFailure`` is
not), ``Cancelled`` leaves the job to resume later, and a ``ConfigError`` stops stylebox
before it takes any work.
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
