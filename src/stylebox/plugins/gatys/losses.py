"""The Gatys objective: an image's perceptual loss against one photo and one painting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
        regions: Sequence[RegionStyle] = (),
        laplacians: Sequence[torch.Tensor] = (),
        photorealism: float = 0.0,
    ) -> None:
        """``regions``: each photo's style loss region by region, in place of the plain
        Gram loss; ``laplacians``: each photo's matting Laplacian, for the photorealism
        term of weight ``photorealism`` (one of each per photo the targets were made for)."""
        self.network = network
        self.content_targets = dict(content_targets)
        self.regions = list(regions)
        self.region_layers = (
            {k: w for k, w in style_layers.items() if w and style_weight} if regions else {}
        )
        self.style_weight = style_weight
        self.laplacians = list(laplacians) if photorealism else []
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
        self,
        images: torch.Tensor,
        rows: torch.Tensor | None = None,
        photos: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each image's loss and parts (see :meth:`PerceptualLoss.per_image`) for a batch
        of images: of the photos the targets were made for, or of those at ``rows`` (an
        index on the images' device; ``photos``: the same, on the host, for the terms each
        photo has of its own)."""
        layers = self.layers
        features = self.network(images, layers) if layers else {}
        content, style = self.content_targets, self.loss.style_targets
        if rows is not None:
            content = {k: v.index_select(0, rows) for k, v in content.items()}
            style = {k: v if len(v) == 1 else v.index_select(0, rows) for k, v in style.items()}
        terms = self.loss.per_image(images, features, content, style)
        photos = range(len(images)) if photos is None else photos
        if self.regions:
            each = [
                self.regions[k].loss(
                    {n: f[j : j + 1] for n, f in features.items()}, self.region_layers
                )
                for j, k in enumerate(photos)
            ]
            terms["style"] = self.style_weight * torch.cat(each)
            terms["loss"] = terms["loss"] + terms["style"]
        if self.laplacians:
            each = [
                matting_loss(images[j : j + 1].float(), self.laplacians[k])
                for j, k in enumerate(photos)
            ]
            terms["photo"] = self.photorealism * torch.cat(each)
            terms["loss"] = terms["loss"] + terms["photo"]
        return terms
