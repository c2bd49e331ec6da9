"""The gatys plugin's guarded L-BFGS: torch's iteration while all is well, safe when not,
batched image by image, and never waiting for the device."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from conftest import read_backs

from stylebox.plugins.gatys.lbfgs import GuardedLBFGS

Function = Callable[[torch.Tensor], torch.Tensor]


def smooth(x: torch.Tensor) -> torch.Tensor:
    """A convex, badly scaled bowl: where plain L-BFGS is at its best."""
    scales = torch.linspace(1, 50, x.numel())
    return (scales * (x.reshape(-1) - 0.3) ** 2).sum() + 0.1 * (x**4).sum()


def double_well(x: torch.Tensor) -> torch.Tensor:
    """Steep, with negative curvature at the start: the shape that broke torch's L-BFGS on
    photos. The first curvature pair has ``y.s < 0`` and is refused; torch then steps by
    the raw gradient, and never recovers."""
    return 2500.0 * ((x * x - 1) ** 2).sum()


def start(n: int = 100, seed: int = 0) -> torch.Tensor:
    """A batch of one image of ``n`` values."""
    return 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(seed))


def evaluator(*functions: Function) -> Function:
    """Row ``i`` of the batch is scored by ``functions[i]``, all in one backward pass."""

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        x.grad = None
        losses = torch.stack([f(row) for f, row in zip(functions, x, strict=True)])
        losses.sum().backward()
        return losses

    return evaluate


def with_torch(function: Function, steps: int) -> tuple[torch.Tensor, list[float]]:
    x = start().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=20)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = function(x)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(steps)]
    return x.detach(), losses


def with_guarded(function: Function, steps: int) -> tuple[torch.Tensor, list[float], GuardedLBFGS]:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x, lr=1, history_size=20)
    losses = [float(optimizer.step(evaluator(function))) for _ in range(steps)]
    return x.detach(), losses, optimizer


def test_while_all_goes_well_it_is_torchs_lbfgs() -> None:
    theirs, their_losses = with_torch(smooth, 25)
    ours, our_losses, optimizer = with_guarded(smooth, 25)
    # the same iteration; only the order of float sums differs (batched dot products)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert our_losses == pytest.approx(their_losses, rel=1e-4)
    assert int(optimizer.refused) == 0
    assert our_losses[-1] < 1e-3 * our_losses[0]


def test_negative_curvature_at_the_start_does_not_stall_it() -> None:
    _, their_losses = with_torch(double_well, 40)
    ours, our_losses, _ = with_guarded(double_well, 40)
    # the first gradient steps double in size while no curvature pair is accepted
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    sizes = []
    for _ in range(4):
        optimizer.step(evaluator(double_well))
        assert not optimizer.rho.any()
        sizes.append(float(optimizer.last_step.abs().max()))
    # (each doubling of the scale, times 1/|g|_1 of a gradient that shrinks a little)
    assert all(1.6 < b / a <= 2.0 for a, b in itertools.pairwise(sizes))
    # torch stands still at its starting loss: the failure seen on real photos
    assert their_losses[-1] > 0.9 * their_losses[0]
    assert our_losses[-1] < 1e-6 * our_losses[0]
    assert torch.allclose(ours.abs(), torch.ones_like(ours), atol=1e-3)


def flaky(function: Function, at_call: int, factor: float) -> Function:
    """``function``, whose loss is multiplied by ``factor`` at one call."""
    calls = 0

    def scored(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = function(x)
        return loss * factor if calls == at_call else loss

    return scored


def test_a_non_finite_point_is_refused_and_the_run_goes_on() -> None:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    evaluate = evaluator(flaky(smooth, 6, math.inf))
    losses = [float(optimizer.step(evaluate)) for _ in range(5)]
    accepted = x.detach() - optimizer.last_step  # the point step 5 evaluated
    gradient = optimizer.last_grad.clone()
    reported = float(optimizer.step(evaluate))
    assert int(optimizer.refused) == 1
    assert reported == losses[-1]  # progress shows the accepted point, not the blow-up
    assert not optimizer.rho.any()  # the memory that led astray is gone
    # back at the accepted point, then a gradient step of half the first step's scale
    halved = min(1.0, 1.0 / float(gradient.abs().sum())) * 0.5
    assert torch.allclose(x.detach(), accepted - halved * gradient, atol=1e-6)
    losses += [float(optimizer.step(evaluate)) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 1e-3 * losses[0]


@pytest.mark.parametrize("function", [smooth, double_well])
def test_a_restored_state_continues_exactly(function: Function) -> None:
    whole, whole_losses, _ = with_guarded(function, 30)

    x = start().requires_grad_(True)
    first = GuardedLBFGS(x)
    losses = [float(first.step(evaluator(function))) for _ in range(12)]
    state, y = first.state_dict(), x.detach().clone().requires_grad_(True)
    first.step(evaluator(function))  # the saved state is a copy: going on leaves it be
    second = GuardedLBFGS(y)
    second.load_state_dict(state)
    losses += [float(second.step(evaluator(function))) for _ in range(18)]
    assert torch.equal(y.detach(), whole)
    assert losses == whole_losses


def test_no_value_moves_more_than_the_full_range_in_one_step() -> None:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    largest = 0.0
    for _ in range(40):
        before = x.detach().clone()
        optimizer.step(evaluator(double_well))
        largest = max(largest, float((x.detach() - before).abs().max()))
    assert largest == pytest.approx(1.0)  # the bound was needed, and held


@pytest.mark.parametrize(("factor", "refused"), [(20.0, 1), (5.0, 0)])
def test_a_tenfold_rise_is_refused_and_a_detour_is_not(factor: float, refused: int) -> None:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    evaluate = evaluator(flaky(smooth, 6, factor))
    losses = [float(optimizer.step(evaluate)) for _ in range(6)]
    assert int(optimizer.refused) == refused
    assert (losses[5] == losses[4]) == bool(refused)


def test_each_image_of_a_batch_is_optimised_as_if_alone() -> None:
    """Two images with different losses, one of them refused once, stepped together."""
    blowing_up = flaky(double_well, 6, math.inf)
    alone = []
    for function, seed in [(smooth, 0), (flaky(double_well, 6, math.inf), 1)]:
        x = start(seed=seed).requires_grad_(True)
        optimizer = GuardedLBFGS(x)
        losses = [float(optimizer.step(evaluator(function))) for _ in range(30)]
        alone.append((x.detach()[0], losses, int(optimizer.refused)))

    x = torch.cat([start(seed=0), start(seed=1)]).requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    steps = [optimizer.step(evaluator(smooth, blowing_up)).tolist() for _ in range(30)]
    assert optimizer.refused.tolist() == [0, 1]
    for i, (image, losses, _) in enumerate(alone):
        assert torch.allclose(x.detach()[i], image, atol=1e-5)
        assert [step[i] for step in steps] == pytest.approx(losses, rel=1e-4)


def test_an_inactive_image_stands_still() -> None:
    x = torch.cat([start(seed=0), start(seed=1)]).requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    evaluate = evaluator(smooth, smooth)
    for _ in range(3):
        optimizer.step(evaluate)
    held = x.detach()[1].clone()
    for _ in range(3):
        loss = evaluate(x).detach()
        assert x.grad is not None
        optimizer.update(loss, x.grad, active=torch.tensor([True, False]))
    assert torch.equal(x.detach()[1], held)
    assert not torch.equal(x.detach()[0], start(seed=0)[0])


def test_a_step_never_waits_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a value comes back to the host (what would make the GPU drain) is
    forbidden while the optimiser steps, refusals and forgetting included."""
    x = torch.cat([start(seed=0), start(seed=1)]).requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    evaluate = evaluator(flaky(smooth, 6, math.inf), double_well)
    losses = []
    for _ in range(25):
        loss = evaluate(x).detach()
        assert x.grad is not None
        with monkeypatch.context() as patched:
            calls = read_backs(patched)
            losses.append(optimizer.update(loss, x.grad))
        assert not calls, f"the step read the device back: {calls}"
    assert optimizer.refused.tolist() == [1, 0]
    assert torch.stack(losses)[-1].lt(1e-2 * torch.stack(losses)[0]).all()
