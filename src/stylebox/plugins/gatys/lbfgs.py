"""L-BFGS for one image, one loss evaluation per step, guarded against blow-ups.

While all goes well this is exactly ``torch.optim.LBFGS(max_iter=1)`` without a line
search, the classic style-transfer optimiser: each step evaluates the loss and gradient
once, updates the curvature memory and moves by the two-loop direction, the very first
step scaled down to ``lr / |g|_1``. On some photo and painting pairs that recipe fails
(Kodak photo 6 with Starry Night, kept in the tests): a curvature pair is refused at the
second step (``y.s <= 0`` where ReLU and max-pooling make the loss non-convex), torch then
takes a raw gradient step of ``lr * g``, pixels move by 10^4, the loss becomes 10^26, and
from there no direction is a descent direction, so every later step stands still and
the "result" is the photo. The guards:

* until a curvature pair is accepted, gradient steps start at the first step's scale and
  double at each step (steps too small to measure curvature through fp32 noise would
  otherwise repeat), never a raw ``lr * g``;
* no pixel moves more than :data:`MAX_STEP` in one step;
* a direction that is not a descent direction is replaced by a gradient step;
* a point whose loss is not finite or more than :data:`BLOWUP` times the last accepted
  loss is refused: the image goes back to the last accepted point, the curvature memory
  is cleared and quasi-Newton steps are halved until one of them pays off again.

A refused point costs one evaluation (a step) and nothing else. Line searches (strong
Wolfe) would also prevent blow-ups but cost extra evaluations on every step they run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

#: A loss more than this many times the last accepted one is a blow-up, not a detour:
#: healthy runs rise by at most 2-3x for a step, blow-ups by orders of magnitude.
BLOWUP = 10.0
#: The most any pixel may move in one step; healthy steps move at most about 0.6.
MAX_STEP = 1.0
#: Curvature pairs with ``y.s`` at or below this are refused (torch's threshold).
MIN_CURVATURE = 1e-10


class GuardedLBFGS:
    """Minimises ``evaluate(x)`` over the tensor ``x`` in place, one evaluation a step.
    ``x`` may be one image of a batch (a view of the batch's tensor), stepped with
    :meth:`update`.

    ``evaluate`` computes the loss at ``x`` and leaves its gradient in ``x.grad``.
    :meth:`step` returns the loss of the last *accepted* point, which is what a progress
    report should show; :attr:`refused` counts refused points.
    """

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history_size: int = 20) -> None:
        self.x = x
        self.lr = lr
        self.history_size = history_size
        self.steps_y: list[torch.Tensor] = []
        self.steps_s: list[torch.Tensor] = []
        self.rho: list[torch.Tensor] = []
        self.h_diag: torch.Tensor | float = 1.0
        self.last_step: torch.Tensor | None = None
        self.last_grad: torch.Tensor | None = None
        self.last_loss = math.inf
        self.trust = 1.0
        """Scale of quasi-Newton steps: halved by each refusal, doubled back by successes."""
        self.boost = 1.0
        """Growth of gradient steps while no curvature pair is known."""
        self.quasi_newton = False
        """Whether the last move was a quasi-Newton step (else a scaled gradient step)."""
        self.refused = 0

    def step(self, evaluate: Callable[[torch.Tensor], torch.Tensor]) -> float:
        with torch.enable_grad():
            loss = float(evaluate(self.x).detach())
        assert self.x.grad is not None, "evaluate() must leave the gradient in x.grad"
        return self.update(loss, self.x.grad)

    def update(self, loss: float, gradient: torch.Tensor) -> float:
        """The step after an evaluation made elsewhere: ``loss`` and ``gradient`` at
        ``x`` (a batch of images is evaluated once, then each image's optimiser is given
        its own loss and gradient). Returns what :meth:`step` returns."""
        grad = gradient.detach().reshape(-1).clone()
        flat = self.x.detach().view(-1)
        limit = self.last_loss + (BLOWUP - 1) * abs(self.last_loss)
        if self.last_step is not None and not (math.isfinite(loss) and loss <= limit):
            return self._refuse(flat)
        if self.last_step is not None and self.last_grad is not None:
            self._remember(grad - self.last_grad, self.last_step)
        if self.quasi_newton and loss < self.last_loss:  # a halved step paid off: grow back
            self.trust = min(1.0, self.trust * 2)
        direction, scale = self._direction(grad)
        self._move(flat, direction.mul_(scale))
        self.last_grad, self.last_loss = grad, loss
        return loss

    def _move(self, flat: torch.Tensor, move: torch.Tensor) -> None:
        # No pixel moves further than MAX_STEP (the image spans 0..1): a bigger step is
        # never right and is where blow-ups start. Kept on the device: no sync.
        move.mul_((MAX_STEP / move.abs().amax().clamp_min(1e-30)).clamp_max(1.0))
        flat.add_(move)
        self.last_step = move

    def _refuse(self, flat: torch.Tensor) -> float:
        """Back to the last accepted point; forget the curvature that led astray."""
        assert self.last_step is not None and self.last_grad is not None
        flat.sub_(self.last_step)
        self.refused += 1
        self.trust /= 2
        self.boost = 1.0
        self._forget()
        self._move(flat, self.last_grad.neg().mul_(self._first_scale(self.last_grad)))
        self.quasi_newton = False
        return self.last_loss

    def _remember(self, y: torch.Tensor, s: torch.Tensor) -> None:
        ys = y.dot(s)
        if not ys > MIN_CURVATURE:
            return
        self.boost = 1.0
        if len(self.steps_s) == self.history_size:
            self.steps_y.pop(0)
            self.steps_s.pop(0)
            self.rho.pop(0)
        self.steps_y.append(y)
        self.steps_s.append(s)
        self.rho.append(1.0 / ys)
        self.h_diag = ys / y.dot(y)

    def _direction(self, grad: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The two-loop L-BFGS direction and its step length, or the scaled gradient."""
        self.quasi_newton = False
        if not self.steps_s:
            return self._gradient_step(grad)
        # The two-loop recursion, operation for operation as torch.optim.LBFGS does it.
        q = grad.neg()
        alphas: list[torch.Tensor] = []
        for i in range(len(self.steps_s) - 1, -1, -1):
            alphas.insert(0, self.steps_s[i].dot(q) * self.rho[i])
            q.add_(self.steps_y[i], alpha=-alphas[0])
        r = torch.mul(q, self.h_diag)
        for i in range(len(self.steps_s)):
            beta = self.steps_y[i].dot(r) * self.rho[i]
            r.add_(self.steps_s[i], alpha=alphas[i] - beta)
        if not grad.dot(r) < 0:  # not downhill: the memory is no good here
            self._forget()
            return self._gradient_step(grad)
        self.quasi_newton = True
        return r, self.lr * self.trust

    def _gradient_step(self, grad: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Steepest descent, first at the classic first step's tiny scale, then doubling at
        each step until a curvature pair is accepted: steps too small to measure curvature
        through fp32 noise would otherwise repeat for many steps."""
        scale = self._first_scale(grad) * self.boost
        self.boost *= 2
        return grad.neg(), scale

    def _first_scale(self, grad: torch.Tensor) -> float:
        return min(1.0, 1.0 / max(float(grad.abs().sum()), 1e-30)) * self.lr * self.trust

    def _forget(self) -> None:
        self.steps_y.clear()
        self.steps_s.clear()
        self.rho.clear()

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The state, for a checkpoint. Its tensors stay where they are (a checkpoint
        writer moves them off the device, off the optimiser's thread), and may be saved
        while the optimiser goes on: it never changes a tensor it has stored, it only
        stores new ones."""
        return {
            "steps_y": list(self.steps_y),
            "steps_s": list(self.steps_s),
            "rho": list(self.rho),
            "h_diag": torch.as_tensor(self.h_diag),
            "boost": self.boost,
            "last_step": self.last_step,
            "last_grad": self.last_grad,
            "last_loss": self.last_loss,
            "trust": self.trust,
            "quasi_newton": self.quasi_newton,
            "refused": self.refused,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.x.device

        def moved(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        self.steps_y = [t.to(device) for t in state["steps_y"]]
        self.steps_s = [t.to(device) for t in state["steps_s"]]
        self.rho = [t.to(device) for t in state["rho"]]
        self.h_diag = state["h_diag"].to(device)
        self.boost = float(state["boost"])
        self.last_step = moved(state["last_step"])
        self.last_grad = moved(state["last_grad"])
        self.last_loss = float(state["last_loss"])
        self.trust = float(state["trust"])
        self.quasi_newton = bool(state["quasi_newton"])
        self.refused = int(state["refused"])
