"""stylebox: a plugin-based batch image-processing daemon for neural style transfer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stylebox")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
