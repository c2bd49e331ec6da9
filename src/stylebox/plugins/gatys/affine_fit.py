"""The result refitted as a local affine colour change of the photo (a colour guided filter).

Luan et al. 2017 end photo-to-photo transfer with such a step: whatever the optimiser left
that the photo's own edges do not explain (a wobble of a straight edge, a painterly texture
on a clear sky) goes, while the new colours stay. In every window of ``2 r + 1`` pixels, each
output channel is fitted by least squares as ``a . I + b`` of the photo's RGB ``I`` (He et
al. 2010, "Guided Image Filtering"; ``epsilon`` is the ridge on ``a``: larger is smoother),
and each pixel takes its windows' mean ``a`` and ``b``. It runs once per job, on the job's
device, in float64 (window covariances are differences of near-equal means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Each pixel's mean over the window around it; windows at the border are cut short.
    Down the columns, then along the rows: the same means in 2 (2r + 1) adds a pixel, not
    (2r + 1) squared (a cut window is still a rectangle, so its mean is separable too)."""
    side = 2 * radius + 1
    x = F.avg_pool2d(x, (side, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, side), stride=1, padding=(0, radius), count_include_pad=False)


def affine_fit(
    photo: torch.Tensor, result: torch.Tensor, radius: int, epsilon: float
) -> torch.Tensor:
    """``result`` (N, C, H, W) as a local affine function of ``photo`` (N, 3, H, W), both
    in 0..1; the fit is clamped to 0..1. Windows of ``2 * radius + 1`` pixels; a larger
    ``radius`` bounds wider, ``epsilon`` smooths more."""
    if photo.shape[0] != result.shape[0] or photo.shape[-2:] != result.shape[-2:]:
        raise ValueError(
            f"the photo {tuple(photo.shape)} and the result {tuple(result.shape)} differ in size"
        )
    if photo.shape[1] != 3:
        raise ValueError(f"the photo must have 3 colour channels, not {photo.shape[1]}")
    if radius == 0:
        return result.clamp(0, 1)
    c = result.shape[1]
    guide, target = photo.double(), result.double()
    # Every mean the fit needs, in one pass of the box filter: I, p, I_i I_j, I_i p_c.
    outer = (guide[:, :, None] * guide[:, None]).flatten(1, 2)
    cross = (guide[:, :, None] * target[:, None]).flatten(1, 2)
    means = _box_mean(torch.cat([guide, target, outer, cross], 1), radius)
    mean_i, mean_p = means[:, :3], means[:, 3 : 3 + c]
    moment_ii = means[:, 3 + c : 12 + c].unflatten(1, (3, 3))
    moment_ip = means[:, 12 + c :].unflatten(1, (3, c))
    covariance = moment_ii - mean_i[:, :, None] * mean_i[:, None]
    covariance = (
        covariance
        + epsilon * torch.eye(3, dtype=guide.dtype, device=guide.device)[:, :, None, None]
    )
    cross_covariance = moment_ip - mean_i[:, :, None] * mean_p[:, None]
    # a (3 x C per window) solves (cov_I + eps) a = cov_Ip; pixels last for the solver.
    a = torch.linalg.solve(
        covariance.permute(0, 3, 4, 1, 2), cross_covariance.permute(0, 3, 4, 1, 2)
    ).permute(0, 3, 4, 1, 2)
    b = mean_p - (a * mean_i[:, :, None]).sum(1)
    smoothed = _box_mean(torch.cat([a.flatten(1, 2), b], 1), radius)
    mean_a, mean_b = smoothed[:, : 3 * c].unflatten(1, (3, c)), smoothed[:, 3 * c :]
    fitted = (mean_a * guide[:, :, None]).sum(1) + mean_b
    return fitted.clamp(0, 1).to(result.dtype)
