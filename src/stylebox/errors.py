"""The error taxonomy every part of stylebox speaks.

The runner decides what happens to a job from the class alone: a ``BadInput`` is
quarantined at once, a ``PluginError`` is retried, ``Cancelled`` leaves the job to resume
later, and a ``ConfigError`` stops stylebox before it takes any work.
"""


class StyleboxError(Exception):
    """Base of every error stylebox raises on purpose."""


class BadInput(StyleboxError):
    """The input itself is unusable (not an image, truncated, too large...). Never retried."""


class PluginError(StyleboxError):
    """A plugin failed on an input that may well succeed on another try."""


class Cancelled(StyleboxError):
    """The job was asked to stop; its checkpoint lets it resume later."""


class ConfigError(StyleboxError):
    """The configuration is wrong; the message names the file, the table and the field."""
