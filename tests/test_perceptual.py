"""The perceptual building blocks shared by gatys and fast-style training."""

from __future__ import annotations

from pathlib import Path

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


def test_the_whole_gatys_objective_runs_under_bf16_autocast(tmp_path: Path) -> None:
    """The path gatys precision = "bf16" takes on a GPU, through VGG19, every loss term
    and the backward pass, exercised with the CPU's bf16 autocast: the losses and the
    image's gradient stay finite fp32 and close to the fp32 ones."""
    from conftest import photo

    from stylebox.plugins.api import Runtime
    from stylebox.plugins.gatys import GatysParams, GatysPlugin
    from stylebox.tensors import to_tensor

    params = GatysParams(style=["starry_night"], size=64)
    engine = GatysPlugin(params, Runtime(device="cpu", state_dir=tmp_path)).engine
    content = torch.cat([to_tensor(photo(64, 48, seed=s)) for s in (1, 2)])
    objective = engine._objective(content, content, {})
    start = content.flip(-1)  # not the photos themselves: every term is non-zero

    def evaluate(bf16: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = start.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            terms = objective.per_image(x)
        terms["loss"].sum().backward()
        assert x.grad is not None
        return terms, x.grad

    (plain, plain_grad), (mixed, mixed_grad) = evaluate(False), evaluate(True)
    for name in ("loss", "content", "style", "tv"):
        assert mixed[name].dtype == torch.float32 and mixed[name].isfinite().all()
        assert torch.allclose(mixed[name], plain[name], rtol=0.1), name
    assert mixed_grad.dtype == torch.float32 and mixed_grad.isfinite().all()
    cosine = torch.nn.functional.cosine_similarity(mixed_grad.flatten(), plain_grad.flatten(), 0)
    assert cosine > 0.95
