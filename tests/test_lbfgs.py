"""The gatys plugin's guarded L-BFGS: torch's iteration while all is well, safe when not."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stylebox.plugins.gatys.lbfgs import GuardedLBFGS


def smooth(x: torch.Tensor) -> torch.Tensor:
    """A convex, badly scaled bowl: where plain L-BFGS is at its best."""
    scales = torch.linspace(1, 50, x.numel())
    return (scales * (x - 0.3) ** 2).sum() + 0.1 * (x**4).sum()


def double_well(x: torch.Tensor) -> torch.Tensor:
    """Steep, with negative curvature at the start: the shape that broke torch's L-BFGS on
    photos. The first curvature pair has ``y.s < 0`` and is refused; torch then steps by
    the raw gradient, and never recovers."""
    return 2500.0 * ((x * x - 1) ** 2).sum()


def start(n: int = 100) -> torch.Tensor:
    return 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(0))


def evaluator(function):
    def evaluate(x: torch.Tensor) -> torch.Tensor:
        x.grad = None
        loss = function(x)
        loss.backward()
        return loss

    return evaluate


def with_torch(function, steps: int) -> tuple[torch.Tensor, list[float]]:
    x = start().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=20)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = function(x)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(steps)]
    return x.detach(), losses


def with_guarded(function, steps: int) -> tuple[torch.Tensor, list[float], GuardedLBFGS]:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x, lr=1, history_size=20)
    losses = [optimizer.step(evaluator(function)) for _ in range(steps)]
    return x.detach(), losses, optimizer


def test_while_all_goes_well_it_is_torchs_lbfgs_bit_for_bit() -> None:
    theirs, their_losses = with_torch(smooth, 25)
    ours, our_losses, optimizer = with_guarded(smooth, 25)
    assert torch.equal(ours, theirs)
    assert our_losses == their_losses
    assert optimizer.refused == 0
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
        assert optimizer.last_step is not None and not optimizer.steps_s
        sizes.append(float(optimizer.last_step.abs().max()))
    # (each doubling of the scale, times 1/|g|_1 of a gradient that shrinks a little)
    assert all(1.6 < b / a <= 2.0 for a, b in itertools.pairwise(sizes))
    # torch stands still at its starting loss: the failure seen on real photos
    assert their_losses[-1] > 0.9 * their_losses[0]
    assert our_losses[-1] < 1e-6 * our_losses[0]
    assert torch.allclose(ours.abs(), torch.ones_like(ours), atol=1e-3)


def test_a_non_finite_point_is_refused_and_the_run_goes_on() -> None:
    x = start().requires_grad_(True)
    optimizer = GuardedLBFGS(x)
    calls = 0

    def flaky(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = evaluator(smooth)(x)
        return loss * math.inf if calls == 6 else loss

    losses = [optimizer.step(flaky) for _ in range(5)]
    assert optimizer.last_step is not None and optimizer.last_grad is not None
    accepted = x.detach() - optimizer.last_step  # the point step 5 evaluated
    gradient = optimizer.last_grad.clone()
    reported = optimizer.step(flaky)
    assert optimizer.refused == 1
    assert reported == losses[-1]  # progress shows the accepted point, not the blow-up
    assert not optimizer.steps_s  # the memory that led astray is gone
    # back at the accepted point, then a gradient step of half the first step's scale
    halved = min(1.0, 1.0 / float(gradient.abs().sum())) * 0.5
    assert torch.allclose(x.detach(), accepted - halved * gradient, atol=1e-6)
    losses += [optimizer.step(flaky) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 1e-3 * losses[0]


@pytest.mark.parametrize("function", [smooth, double_well])
def test_a_restored_state_continues_exactly(function) -> None:
    whole, whole_losses, _ = with_guarded(function, 30)

    x = start().requires_grad_(True)
    first = GuardedLBFGS(x)
    losses = [first.step(evaluator(function)) for _ in range(12)]
    state = first.state_dict()
    y = x.detach().clone().requires_grad_(True)
    second = GuardedLBFGS(y)
    second.load_state_dict(state)
    losses += [second.step(evaluator(function)) for _ in range(18)]
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
    calls = 0

    def rising(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = evaluator(smooth)(x)
        return loss * factor if calls == 6 else loss

    losses = [optimizer.step(rising) for _ in range(6)]
    assert optimizer.refused == refused
    assert (losses[5] == losses[4]) == bool(refused)
