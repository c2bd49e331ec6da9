"""The Gatys objective: an image's perceptual loss against one photo and one painting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from stylebox.backbone import VGG19
from stylebox.perceptual import PerceptualLoss


class Objective:
    """Total loss of an image against fixed content features and style Grams."""

    def __init__(
        self,
        network: VGG19,
        content_targets: Mapping[str, torch.Tensor],
        style_targets: Mapping[str, torch.Tensor],
        content_layers: Mapping[str, float],
        style_layers: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ) -> None:
        self.network = network
        self.content_targets = dict(content_targets)
        self.loss = PerceptualLoss(
            content_layers, style_layers, style_targets, content_weight, style_weight, tv_weight
        )

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total (for backward) and its parts (for reporting)."""
        layers = self.loss.layers
        features = self.network(image, layers) if layers else {}
        return self.loss(image, features, self.content_targets)

    def per_image(
        self, images: torch.Tensor, rows: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Each image's loss and parts (see :meth:`PerceptualLoss.per_image`) for a batch
        of images: of the photos the targets were made for, or of those at ``rows``."""
        layers = self.loss.layers
        features = self.network(images, layers) if layers else {}
        content, style = self.content_targets, self.loss.style_targets
        if rows is not None and list(rows) != list(range(self._photos)):
            index = torch.as_tensor(list(rows), device=images.device)
            content = {k: v.index_select(0, index) for k, v in content.items()}
            style = {k: v if len(v) == 1 else v.index_select(0, index) for k, v in style.items()}
        return self.loss.per_image(images, features, content, style)

    @property
    def _photos(self) -> int:
        return next(iter(self.content_targets.values())).shape[0] if self.content_targets else 1
