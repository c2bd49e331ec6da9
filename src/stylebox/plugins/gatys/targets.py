"""Style targets (Gram matrices), computed once and cached in memory and on disk.

A style's Grams depend only on the style image, the size it is shown at, the layers and the
backbone, so every later job with the same style and size skips that forward pass.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from stylebox.backbone import VGG19
from stylebox.images import atomic_write_bytes
from stylebox.perceptual import gram

CacheOutcome = Literal["memory", "disk", "computed"]


class StyleTargetCache:
    """Grams keyed by everything they depend on; a bounded LRU in memory, files on disk."""

    def __init__(self, folder: Path | None, capacity: int = 32) -> None:
        self.folder = folder
        self.capacity = capacity
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(style_id: str, size: tuple[int, int], layers: Sequence[str], backbone: str) -> str:
        text = f"{style_id}|{size[0]}x{size[1]}|{','.join(sorted(layers))}|{backbone}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def grams(
        self, key: str, style: torch.Tensor, network: VGG19, layers: Sequence[str]
    ) -> tuple[dict[str, torch.Tensor], CacheOutcome]:
        """Grams of ``style`` at ``layers`` on ``style``'s device, and where they came from."""
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return _to(found, style.device), "memory"
        outcome: CacheOutcome = "disk"
        found = self._read(key)
        if found is None or set(found) != set(layers):
            outcome = "computed"
            with torch.no_grad():
                features = network(style, list(layers))
                found = {layer: gram(features[layer]).cpu() for layer in layers}
            self._write(key, found)
        with self._lock:
            self._memory[key] = found
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)
        return _to(found, style.device), outcome

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.pt" if self.folder is not None else None

    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache file is recomputed, never fatal
            path.unlink(missing_ok=True)
            return None

    def _write(self, key: str, grams: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        if path is None:
            return
        buffer = io.BytesIO()
        torch.save(grams, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def _to(grams: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {layer: g.to(device) for layer, g in grams.items()}
