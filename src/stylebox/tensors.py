"""Moving images between Pillow and PyTorch, and choosing the device to run on."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from stylebox.errors import ConfigError


def to_tensor(image: Image.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """An RGB Pillow image as a float tensor of shape (1, 3, H, W) in 0..1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in 0..1 as an 8-bit RGB Pillow image."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), mode="RGB")


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N`` into a device that exists on this machine."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} was asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
    return device
