"""Colour control (Gatys et al., "Preserving Color in Neural Artistic Style Transfer", 2016).

Images here are (1, 3, H, W) RGB tensors in 0..1.
"""

from __future__ import annotations

import torch

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
