"""Colour control (Gatys et al., "Preserving Color in Neural Artistic Style Transfer", 2016).

Images here are (1, 3, H, W) RGB tensors in 0..1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The Y channel of ``image``, repeated to three channels so VGG can read it."""
    y = _apply(_RGB_TO_YIQ, image)[:, :1]
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Grey ``style`` shifted and scaled to the mean and spread of grey ``content``."""
    s_mean, s_std = style.mean(), style.std().clamp_min(1e-6)
    return ((style - s_mean) / s_std * content.std() + content.mean()).clamp(0, 1)


def with_content_colour(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance of ``result`` under the chrominance (I, Q) of ``content``."""
    y = _apply(_RGB_TO_YIQ, result)[:, :1]
    iq = _apply(_RGB_TO_YIQ, content)[:, 1:]
    return _apply(_YIQ_TO_RGB, torch.cat([y, iq], dim=1)).clamp(0, 1)


def match_colour(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Recolour ``style`` so its pixel mean and covariance equal those of ``content``.

    The linear map is Σc^½ Σs^-½ (symmetric square roots), which keeps the style's
    structure and swaps in the photo's palette before any optimisation happens.
    """
    s = style.reshape(3, -1).double()
    c = content.reshape(3, -1).double()
    s_mean, c_mean = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64) * 1e-5
    s_cov = torch.cov(s) + eye
    c_cov = torch.cov(c) + eye
    transform = _sqrtm(c_cov) @ torch.linalg.inv(_sqrtm(s_cov))
    out = transform @ (s - s_mean) + c_mean
    return out.reshape(style.shape).to(style.dtype).clamp(0, 1)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


#: Regions of the photo blend into each other's recolouring over this share of its longest
#: side, so a rough mask's edge leaves no step in a smooth sky.
BLEND_SHARE = 0.02
#: A region of fewer pixels than this (in the photo or in a reference) has too few colours
#: to fit a map to: the photo's takes its neighbours' maps, a reference's counts as absent.
#: A stray pixel of a resized mask would otherwise flatten a whole region to its one colour.
MIN_REGION_PIXELS = 64
#: No direction of colour space is stretched or squeezed more than this many times: a flat
#: region (a clear sky) matched to a textured one would otherwise have its noise blown up.
MAX_STRETCH = 4.0


def recolour_regions(
    photo: torch.Tensor,
    masks: torch.Tensor,
    references: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
) -> torch.Tensor:
    """``photo`` (1, 3, H, W) with each region's colours moved to those of the same region
    of the references: the region's pixels map, by the linear transport map between two
    Gaussians (Pitié's Monge-Kantorovich solution, the smallest move), onto the blend's
    mean and covariance. ``masks`` (K, H, W) are the photo's regions; each reference is
    (1, 3, h, w) with its (K, h, w) masks and blend weight. A region a reference lacks
    (or has fewer than :data:`MIN_REGION_PIXELS` of) lends the photo's own colours to the
    blend, as in the region-wise style loss; one that small in the photo takes the maps of
    the regions around it (or, out of their reach, keeps its colours).

    Within a region this is one affine map of the photo's colours, which the photorealism
    term does not penalise; near a region's edge the maps blend over a band of
    :data:`BLEND_SHARE` of the longest side.
    """
    pixels = photo[0].reshape(3, -1).double()
    flat = masks.reshape(masks.shape[0], -1).double()
    maps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
    for k in range(masks.shape[0]):
        own = _moments(pixels, flat[k])
        if own is None:  # too small in this photo (at this size): see below
            maps.append(None)
            continue
        blend_mean = torch.zeros(3, 1, dtype=torch.float64)
        blend_second = torch.zeros(3, 3, dtype=torch.float64)
        for image, image_masks, weight in references:
            theirs = _moments(image[0].reshape(3, -1).double(), image_masks[k].reshape(-1).double())
            mean, cov = theirs if theirs is not None else own
            blend_mean += weight * mean
            blend_second += weight * (cov + mean @ mean.T)
        blend_cov = blend_second - blend_mean @ blend_mean.T
        maps.append((own[0], _transport(own[1], blend_cov), blend_mean))

    radius = max(1, round(BLEND_SHARE * max(photo.shape[-2:])))
    soft = _box_blur(_box_blur(masks.double(), radius), radius).reshape(masks.shape[0], -1)
    out = torch.zeros_like(pixels)
    total = torch.zeros_like(pixels[:1])
    for k, linear in enumerate(maps):
        if linear is None:  # its pixels take their neighbours' maps, blurred into them
            continue
        mean, transform, target = linear
        out += soft[k] * (transform @ (pixels - mean) + target)
        total += soft[k]
    # Every pixel lies in some region, so ``total`` is positive; the guard is for float dust.
    recoloured = torch.where(total > 1e-6, out / total.clamp_min(1e-6), pixels)
    return recoloured.reshape(photo.shape).to(photo.dtype).clamp(0, 1)


def _moments(
    pixels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The weighted mean (3, 1) and covariance (3, 3) of (3, N) ``pixels``; None for a
    region of under :data:`MIN_REGION_PIXELS`."""
    area = weights.sum()
    if area < MIN_REGION_PIXELS:
        return None
    mean = (pixels * weights).sum(1, keepdim=True) / area
    centred = pixels - mean
    cov = (centred * weights) @ centred.T / area
    return mean, cov


def _transport(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The symmetric linear map T with T source T = target: Σs^-½ (Σs^½ Σt Σs^½)^½ Σs^-½,
    its stretch in any direction held within 1 / :data:`MAX_STRETCH` .. :data:`MAX_STRETCH`
    (a flat region takes part of a textured one's spread rather than its noise blown up)."""
    eye = torch.eye(3, dtype=torch.float64) * 1e-4
    root = _sqrtm(source + eye)
    inverse_root = torch.linalg.inv(root)
    transform = inverse_root @ _sqrtm(root @ (target + eye) @ root) @ inverse_root
    values, vectors = torch.linalg.eigh((transform + transform.T) / 2)
    values = values.clamp(1 / MAX_STRETCH, MAX_STRETCH)
    return vectors @ torch.diag(values) @ vectors.T


def _box_blur(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """(K, H, W) masks averaged over (2r+1)-pixel squares, edges counting only the image."""
    return F.avg_pool2d(
        masks[None], 2 * radius + 1, stride=1, padding=radius, count_include_pad=False
    )[0]
