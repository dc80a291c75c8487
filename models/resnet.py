"""The paper's network: torchvision ResNet50, no pretrained weights, 2 output classes."""

from __future__ import annotations

import torch
from torchvision.models import resnet50


def build_resnet50(num_classes: int = 2, seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised ResNet50 (torchvision, ``weights=None``).

    Args:
        num_classes: outputs of the final fully connected layer.
        seed: when given, the initial weights are reproducible.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return resnet50(weights=None, num_classes=num_classes)
    return resnet50(weights=None, num_classes=num_classes)
