"""A :class:`~stylebox.plugins.api.JobContext` that keeps what a plugin reports in memory."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from stylebox.plugins.api import JobContext, JsonValue, check_facts


class RecordingContext(JobContext):
    """Records progress, snapshots and notes; can ask the plugin to stop at a given step.

    ``cancel_at_step``: once a progress report reaches this step, :attr:`cancelled` turns
    true, as it would when the daemon receives SIGTERM. ``companions``: the files a daemon
    job would find beside its photo, by kind (``{"mask": Path("photo.mask.png")}``).
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        cancel_at_step: int | None = None,
        companions: dict[str, Path] | None = None,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.cancel_at_step = cancel_at_step
        self._companions = dict(companions or {})
        self.progress_reports: list[tuple[int, int, dict[str, float]]] = []
        self.snapshots: list[tuple[int, Image.Image]] = []
        self.facts: dict[str, JsonValue] = {}
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def companions(self) -> dict[str, Path]:
        return dict(self._companions)

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.progress_reports.append((step, total, dict(metrics)))
        if self.cancel_at_step is not None and step >= self.cancel_at_step:
            self._cancelled = True

    def snapshot(self, image: Image.Image, step: int) -> None:
        self.snapshots.append((step, image.copy()))

    def note(self, **facts: JsonValue) -> None:
        check_facts(facts)  # as the runner does: a plugin that notes "output" fails here
        self.facts.update(facts)

    def metric(self, name: str) -> list[float]:
        """One reported metric over the steps, e.g. ``metric("loss")``."""
        return [metrics[name] for _, _, metrics in self.progress_reports if name in metrics]
