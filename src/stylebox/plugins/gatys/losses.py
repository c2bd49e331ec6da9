"""The Gatys objective: an image's perceptual loss against one photo and one painting."""

from __future__ import annotations

from collections.abc import Mapping

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
