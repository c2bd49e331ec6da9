"""Helpers for testing plugins outside the daemon: a job context that records everything."""

from stylebox.testing.context import RecordingContext

__all__ = ["RecordingContext"]
