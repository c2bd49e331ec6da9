"""The perceptual building blocks shared by gatys and fast-style training."""

from __future__ import annotations

import torch

from stylebox.perceptual import gram


def test_gram_backward_matches_numerical_gradient() -> None:
    features = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, 6, dtype=torch.float64)  # not symmetric: the general case
    assert torch.autograd.gradcheck(lambda f: (gram(f) * weights).sum(), (features,))


def test_gram_stays_fp32_under_bf16_autocast() -> None:
    """bf16 autocast (gatys precision = "bf16") used to crash in the Gram's backward."""
    features = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.randn(1, 8, 8)

    def grad_of(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = features.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            g = gram(leaf)
        (g - target).pow(2).sum().backward()
        assert leaf.grad is not None
        return g, leaf.grad

    (plain, plain_grad), (mixed, mixed_grad) = grad_of(False), grad_of(True)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert torch.equal(mixed_grad, plain_grad)
    # bf16 features, as a convolution under autocast makes them, are accepted too
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    leaf = features.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram(conv(leaf))
    g.sum().backward()
    assert g.dtype == torch.float32 and leaf.grad is not None and leaf.grad.isfinite().all()
