"""The photorealism regulariser of Luan et al. 2017 ("Deep Photo Style Transfer").

The output should be, in every 3x3 window, an affine colour transform of the input photo.
Levin et al.'s closed-form matting Laplacian ``L`` of the photo (built by pymatting) measures
exactly that: ``V^T L V`` is zero for any such output channel ``V`` and grows with edges and
textures the photo does not have. The loss is ``sum_c V_c^T L V_c`` over the three channels,
divided by the pixel count so that one weight means the same at 256 and 512 px (the other
gatys terms are means too).

``L`` is a sparse (N x N) matrix with 25 entries a row (N pixels): at 512 x 341 it takes
about 0.2 s to build and 53 MB as CSR; one product with the image costs less than a VGG19
step's tenth on the CPU. It is built once per photo and size and kept on the image's device.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

#: Levin et al.'s regularisation of the windows' colour covariance (also Luan et al.'s).
EPSILON = 1e-7

# "Sparse CSR tensor support is in beta": products are all this module uses. Filtered once
# here: ``warnings.catch_warnings`` around each use is not thread-safe, and jobs run in
# threads (it could swallow a photo's own warning raised meanwhile in another).
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)


@functools.cache
def warm_up() -> None:
    """Import pymatting and load its compiled code (numba's cache) once per process, on a
    tiny photo: then a photo's own build time is what its manifest records."""
    matting_laplacian(torch.rand(1, 3, 4, 4))


def matting_laplacian(photo: torch.Tensor, epsilon: float = EPSILON) -> Any:
    """The closed-form matting Laplacian (3x3 windows) of a (1, 3, H, W) photo in 0..1, as a
    scipy CSR matrix over the pixels in row-major order (``index = y * W + x``)."""
    from pymatting import cf_laplacian  # numba compiles it on first use: import late

    array = photo[0].detach().permute(1, 2, 0).double().cpu().numpy()
    return cf_laplacian(np.ascontiguousarray(array), epsilon=epsilon, radius=1).tocsr()


def to_torch(
    laplacian: Any, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor on ``device`` (scipy's own, valid:
    its invariants are not checked again)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(laplacian.indptr.astype(np.int64)),
        torch.from_numpy(laplacian.indices.astype(np.int64)),
        torch.from_numpy(laplacian.data).to(dtype),
        size=laplacian.shape,
        device=device,
        check_invariants=False,
    )


class _QuadraticForm(torch.autograd.Function):
    """``sum_c V_c^T L V_c`` for the columns of V (N, C), L symmetric: the gradient is
    ``2 L V``, which the forward pass has already computed, so a step costs one sparse
    product rather than the two that autograd would spend."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
        product = laplacian @ values
        ctx.save_for_backward(product)
        return (values * product).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (product,) = ctx.saved_tensors
        return 2 * grad * product, None


def matting_loss(image: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """``sum_c V_c^T L V_c / N`` for a (1, 3, H, W) image, one value of shape (1,)."""
    _, c, h, w = image.shape
    values = image[0].reshape(c, h * w).t().to(laplacian.dtype)
    return (_QuadraticForm.apply(values.contiguous(), laplacian) / (h * w)).reshape(1)


class LaplacianCache:
    """The Laplacians of recent photos by (photo digest, size, device): a job's every scale
    and its resumed run reuse them. A few entries only: one at 1024 px is about 220 MB."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, tuple[int, int], str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, photo: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The Laplacian of ``photo`` (1, 3, H, W), and whether it was cached."""
        key = (digest, (photo.shape[-2], photo.shape[-1]), str(photo.device))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found, True
        built = to_torch(matting_laplacian(photo), photo.device)
        with self._lock:
            self._entries[key] = built
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return built, False
