"""The Gatys objective: an image's perceptual loss against one photo and one painting."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from stylebox.backbone import VGG19
from stylebox.perceptual import PerceptualLoss
from stylebox.plugins.gatys.photoreal import matting_loss
from stylebox.plugins.gatys.regions import RegionStyle


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
        regions: RegionStyle | None = None,
        laplacian: torch.Tensor | None = None,
        photorealism: float = 0.0,
    ) -> None:
        """``regions``: the style loss region by region (one photo) in place of the plain
        Gram loss; ``laplacian``: the photo's matting Laplacian, for the photorealism term
        of weight ``photorealism`` (one photo)."""
        self.network = network
        self.content_targets = dict(content_targets)
        self.regions = regions
        self.region_layers = (
            {k: w for k, w in style_layers.items() if w and style_weight} if regions else {}
        )
        self.style_weight = style_weight
        self.laplacian = laplacian if photorealism else None
        self.photorealism = photorealism
        self.loss = PerceptualLoss(
            content_layers,
            style_layers,
            style_targets,
            content_weight,
            0.0 if regions else style_weight,
            tv_weight,
        )
        self.layers = sorted({*self.loss.layers, *self.region_layers})

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total (for backward) and its parts (for reporting)."""
        terms = self.per_image(image)
        parts = {name: float(values.detach().mean()) for name, values in terms.items()}
        return terms["loss"].mean(), parts

    def per_image(
        self, images: torch.Tensor, rows: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each image's loss and parts (see :meth:`PerceptualLoss.per_image`) for a batch
        of images: of the photos the targets were made for, or of those at ``rows`` (an
        index on the images' device)."""
        layers = self.layers
        features = self.network(images, layers) if layers else {}
        content, style = self.content_targets, self.loss.style_targets
        if rows is not None:
            content = {k: v.index_select(0, rows) for k, v in content.items()}
            style = {k: v if len(v) == 1 else v.index_select(0, rows) for k, v in style.items()}
        terms = self.loss.per_image(images, features, content, style)
        if self.regions is not None:
            terms["style"] = self.style_weight * self.regions.loss(features, self.region_layers)
            terms["loss"] = terms["loss"] + terms["style"]
        if self.laplacian is not None:
            terms["photo"] = self.photorealism * matting_loss(images.float(), self.laplacian)
            terms["loss"] = terms["loss"] + terms["photo"]
        return terms
