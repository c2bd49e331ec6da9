"""What an interrupted Gatys job needs to carry on exactly where it stopped."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stylebox.images import atomic_write_bytes

FILENAME = "gatys.pt"
#: 2: the optimiser's own L-BFGS state and the job's start loss; no process-wide RNG.
#: 3: the batched L-BFGS's tensors (a ring of curvature pairs) for one photo.
FORMAT = 3


@dataclass
class Checkpoint:
    params_digest: str
    content_size: tuple[int, int]
    scale: int
    """Index of the scale being optimised."""
    step: int
    """Steps completed within that scale."""
    image: torch.Tensor
    optimizer: dict[str, Any]
    best_loss: float = float("inf")
    stale_steps: int = 0
    start_loss: float | None = None
    """The loss of the job's starting image, which its result must improve on."""

    def save(self, folder: Path) -> None:
        """Write it durably into ``folder``; tensors on a GPU are copied off it here (on
        the job's writer thread, where the runner calls this)."""
        state = asdict(self) | {"format": FORMAT}
        buffer = io.BytesIO()
        torch.save(_on_cpu(state), buffer)
        atomic_write_bytes(folder / FILENAME, buffer.getvalue())

    @classmethod
    def load(
        cls, folder: Path, params_digest: str, content_size: tuple[int, int]
    ) -> Checkpoint | None:
        """The checkpoint in ``folder`` if it belongs to this job, else ``None``."""
        path = folder / FILENAME
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start over rather than fail the job
            return None
        if (
            state.pop("format", None) != FORMAT
            or state.get("params_digest") != params_digest
            or tuple(state.get("content_size", ())) != tuple(content_size)
        ):
            return None
        state["content_size"] = tuple(state["content_size"])
        return cls(**state)


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts and lists) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_on_cpu(item) for item in value]
    return value
