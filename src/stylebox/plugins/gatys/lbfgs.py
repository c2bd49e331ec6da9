"""L-BFGS for a batch of images, one loss evaluation per step, guarded against blow-ups.

Each image of the batch has its own curvature memory, step length and guards; one call
of :meth:`GuardedLBFGS.update` steps them all with batched tensor operations and never
reads a value back to the host, so on a GPU the next evaluation is queued while this
one runs. Every decision is taken per image with ``torch.where``.

While all goes well each image follows ``torch.optim.LBFGS(max_iter=1)`` without a line
search, the classic style-transfer optimiser (equal to it up to float rounding): each
step evaluates the loss and gradient once, updates the curvature memory and moves by the
two-loop direction, the very first step scaled down to ``lr / |g|_1``. On some photo and
painting pairs that recipe fails (Kodak photo 6 with Starry Night, kept in the tests): a
curvature pair is refused at the second step (``y.s <= 0`` where ReLU and max-pooling
make the loss non-convex), torch then takes a raw gradient step of ``lr * g``, pixels
move by 10^4, the loss becomes 10^26, and from there no direction is a descent
direction, so every later step stands still and the "result" is the photo. The guards:

* until a curvature pair is accepted, gradient steps start at the first step's scale and
  double at each step (steps too small to measure curvature through fp32 noise would
  otherwise repeat), never a raw ``lr * g``;
* no pixel moves more than :data:`MAX_STEP` in one step;
* a direction that is not a descent direction is replaced by a gradient step;
* a point whose loss is not finite or more than :data:`BLOWUP` times the last accepted
  loss is refused: the image goes back to the last accepted point, its curvature memory
  is cleared and its quasi-Newton steps are halved until one of them pays off again.

A refused point costs one evaluation (a step) and nothing else. Line searches (strong
Wolfe) would also prevent blow-ups but cost extra evaluations, and host syncs, on every
step they run.

The memory is a ring of ``history_size`` slots that all images of a batch write in
step: each step fills the next slot, with a pair of weight ``rho = 0`` for an image
whose pair was refused, and such a pair drops out of the two-loop recursion. (torch
keeps the last ``history_size`` *accepted* pairs instead; the two differ only after a
refused pair, which mostly happens at the start of a run, where the memory is empty
anyway; one refused later costs that photo its oldest pair a step early.)
"""

from __future__ import annotations

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

#: The state tensors, each with one row per image (what a checkpoint holds).
_STATE = (
    "last_loss", "trust", "boost", "quasi_newton", "refused", "h_diag",
    "last_step", "last_grad", "rho", "steps_s", "steps_y",
)  # fmt: skip


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each image's dot product: ``[B, n] x [B, n] -> [B]``."""
    return torch.linalg.vecdot(a, b)


class GuardedLBFGS:
    """Minimises a loss over each image (row) of ``x``, in place, one evaluation a step.

    ``x`` is a leaf tensor whose first dimension is the batch; each image has its own
    optimiser state. :meth:`update` takes each image's loss and gradient from one
    evaluation of the whole batch and returns the loss of each image's last *accepted*
    point, which is what a progress report should show; :attr:`refused` counts refused
    points per image. All state stays on ``x``'s device.
    """

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history_size: int = 20) -> None:
        self.x = x
        self.lr = lr
        self.history_size = history_size
        batch, device = x.shape[0], x.device
        n = x[0].numel()

        def full(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.full((batch,), value, dtype=dtype, device=device)

        self.last_loss = full(torch.inf)
        self.trust = full(1.0)
        """Scale of quasi-Newton steps: halved by each refusal, doubled back by successes."""
        self.boost = full(1.0)
        """Growth of gradient steps while no curvature pair is known."""
        self.quasi_newton = full(False, torch.bool)
        """Whether the last move was a quasi-Newton step (else a scaled gradient step)."""
        self.refused = full(0, torch.int64)
        self.h_diag = full(1.0)
        self.last_step = torch.zeros(batch, n, device=device)
        self.last_grad = torch.zeros(batch, n, device=device)
        self.rho = torch.zeros(batch, history_size, device=device)
        """Each pair's ``1 / y.s``; 0 for a slot that holds no pair of this image."""
        self.steps_s = torch.zeros(batch, history_size, n, device=device)
        self.steps_y = torch.zeros(batch, history_size, n, device=device)
        self.pairs = 0
        """Slots written so far (the ring's position), the same for every image."""
        self.started = False
        """Whether a step has been taken (there is a point to refuse or a pair to make)."""

    def step(self, evaluate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Evaluate at ``x`` (``evaluate`` returns each image's loss, or the loss of a
        batch of one, and leaves the gradient in ``x.grad``), then :meth:`update`."""
        with torch.enable_grad():
            loss = evaluate(self.x).detach().reshape(-1)
        assert self.x.grad is not None, "evaluate() must leave the gradient in x.grad"
        assert len(loss) == len(self.x), "evaluate() must return each image's loss"
        return self.update(loss, self.x.grad)

    @torch.no_grad()
    def update(
        self, loss: torch.Tensor, gradient: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The step after an evaluation made elsewhere: each image's ``loss`` ([B]) and
        ``gradient`` at ``x``. Images where ``active`` ([B] bool) is false do not move
        (their memory is not kept up: they are not meant to step again). Returns the
        loss of each image's last accepted point, as a tensor on the device: nothing here
        waits for the device."""
        batch = self.x.shape[0]
        grad = gradient.detach().reshape(batch, -1).float().clone()
        loss = loss.detach().float()
        flat = self.x.detach().view(batch, -1)
        live = torch.ones_like(self.quasi_newton) if active is None else active

        if self.started:
            limit = self.last_loss + (BLOWUP - 1) * self.last_loss.abs()
            refuse = live & ~(loss.isfinite() & (loss <= limit))
            y = grad - self.last_grad
            ys = _dot(y, self.last_step)
            accept = live & ~refuse & (ys > MIN_CURVATURE)
            self._remember(accept, self.last_step, y, ys)
            # A halved quasi-Newton step that paid off: grow back.
            paid = live & self.quasi_newton & (loss < self.last_loss) & ~refuse
            self.trust = torch.where(
                refuse,
                self.trust / 2,
                torch.where(paid, (self.trust * 2).clamp_max(1.0), self.trust),
            )
            self.boost = torch.where(accept | refuse, 1.0, self.boost)
            self._forget(refuse)
        else:
            refuse = torch.zeros_like(live)

        r = self._two_loop(grad)
        known = self.rho.ne(0).any(1)
        downhill = _dot(grad, r) < 0
        quasi_newton = known & downhill & ~refuse
        self._forget(live & known & ~downhill)  # not downhill: the memory is no good here

        # A refused image goes back and takes a gradient step from its accepted point.
        base = torch.where(refuse[:, None], self.last_grad, grad)
        first = (1.0 / base.abs().sum(1).clamp_min(1e-30)).clamp_max(1.0) * self.lr * self.trust
        gradient_step = ~quasi_newton & ~refuse
        scale = torch.where(
            quasi_newton,
            self.lr * self.trust,
            torch.where(gradient_step, first * self.boost, first),
        )
        self.boost = torch.where(gradient_step & live, self.boost * 2, self.boost)
        move = torch.where(quasi_newton[:, None], r, base.neg()).mul_(scale[:, None])
        # No pixel moves further than MAX_STEP (the image spans 0..1): a bigger step is
        # never right and is where blow-ups start.
        move.mul_((MAX_STEP / move.abs().amax(1).clamp_min(1e-30)).clamp_max(1.0)[:, None])
        move = torch.where(live[:, None], move, 0.0)
        flat.add_(torch.where(refuse[:, None], move - self.last_step, move))

        kept = refuse | ~live  # these keep their last accepted point
        reported = torch.where(kept, self.last_loss, loss)
        self.last_grad = torch.where(kept[:, None], self.last_grad, grad)
        self.last_loss = torch.where(kept, self.last_loss, loss)
        self.last_step = torch.where(live[:, None], move, self.last_step)
        self.quasi_newton = torch.where(live, quasi_newton, self.quasi_newton)
        self.refused = self.refused + refuse.long()
        self.started = True
        return reported

    def _remember(
        self, accept: torch.Tensor, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor
    ) -> None:
        """Write this step's pair into the next slot; a refused pair is written as zeros
        (finite, so ``rho = 0`` takes it out of the recursion exactly)."""
        slot = self.pairs % self.history_size
        self.pairs += 1
        keep = accept[:, None]
        self.steps_s[:, slot] = torch.where(keep, s, 0.0)
        self.steps_y[:, slot] = torch.where(keep, y, 0.0)
        self.rho[:, slot] = torch.where(accept, 1.0 / ys, 0.0)
        self.h_diag = torch.where(accept, ys / _dot(y, y), self.h_diag)

    def _forget(self, which: torch.Tensor) -> None:
        self.rho = torch.where(which[:, None], 0.0, self.rho)

    def _two_loop(self, grad: torch.Tensor) -> torch.Tensor:
        """The two-loop L-BFGS direction of each image, newest pair first, as
        torch.optim.LBFGS computes it; slots without a pair have ``rho = 0`` and change
        nothing."""
        filled = min(self.pairs, self.history_size)
        order = [(self.pairs - 1 - k) % self.history_size for k in range(filled)]
        q = grad.neg()
        alphas: dict[int, torch.Tensor] = {}
        for slot in order:
            alphas[slot] = _dot(self.steps_s[:, slot], q) * self.rho[:, slot]
            q.addcmul_(self.steps_y[:, slot], alphas[slot][:, None], value=-1)
        r = q.mul_(self.h_diag[:, None])
        for slot in reversed(order):
            beta = _dot(self.steps_y[:, slot], r) * self.rho[:, slot]
            r.addcmul_(self.steps_s[:, slot], (alphas[slot] - beta)[:, None])
        return r

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self, index: int = 0) -> dict[str, Any]:
        """Image ``index``'s state, for a checkpoint: copies made on the device, so the
        optimiser may go on while a checkpoint writer moves them off it."""
        state: dict[str, Any] = {name: getattr(self, name)[index].clone() for name in _STATE}
        return state | {"pairs": self.pairs, "started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state, for a batch of one image."""
        assert self.x.shape[0] == 1, "a checkpoint resumes one image"
        device = self.x.device
        for name in _STATE:
            setattr(self, name, state[name].to(device).unsqueeze(0))
        self.pairs = int(state["pairs"])
        self.started = bool(state["started"])
