"""The paper's network: ResNet50 (He et al. 2016), no pretrained weights, 2 output classes.

Defined here rather than imported from ``torchvision.models``: importing torchvision costs a
process 164 MiB (torch 2.14 CUDA build, torchvision 0.29), because ``torchvision.ops`` imports
``torch._dynamo`` and with it Triton, none of which the dashboard runs; measured with
``/proc/self/smaps`` before and after the import. The network is torchvision's ``resnet50``
module for module: the same parameter names (checkpoints load either way), the same
initialisation drawn in the same order (a seed gives the same weights), the same forward
pass. ``tests/models/test_resnet.py`` holds it to torchvision's, tensor for tensor.
"""

from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4  # a bottleneck block's output channels over its width


class Bottleneck(nn.Module):
    """1×1 → 3×3 (carrying the stride) → 1×1 convolutions, each batch-normalised, plus the shortcut.

    Shapes: (B, in_channels, H, W) float32 → (B, 4·width, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)  # in place: one block-sized tensor fewer
        return self.relu(out)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """One stage of bottleneck blocks; the first changes the resolution and channel count.

    The shortcut's projection is made before the first block, as torchvision does: the order in
    which modules are made is the order in which their default initialisation draws from the RNG.
    """
    downsample = None
    if stride != 1 or in_channels != width * EXPANSION:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, width * EXPANSION, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(width * EXPANSION),
        )
    layers = [Bottleneck(in_channels, width, stride, downsample)]
    layers += [Bottleneck(width * EXPANSION, width, 1, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """Stem (7×7 stride-2 convolution, 3×3 stride-2 max pool), four stages, global average pool, linear.

    Shapes: (B, 3, S, S) float32 → (B, num_classes) logits; any S ≥ 32 (the paper's is 224).
    """

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, blocks=3, stride=1)  # out: 256 channels at 1/4 of the input size
        self.layer2 = _stage(256, 128, blocks=4, stride=2)  # 512 at 1/8
        self.layer3 = _stage(512, 256, blocks=6, stride=2)  # 1,024 at 1/16
        self.layer4 = _stage(1024, 512, blocks=3, stride=2)  # 2,048 at 1/32
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * EXPANSION, num_classes)
        for module in self.modules():  # He initialisation for the convolutions, BatchNorm as identity
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet50(num_classes: int = 2, seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised ResNet50 (no pretrained weights), in training mode.

    Args:
        num_classes: outputs of the final fully connected layer.
        seed: when given, the initial weights are reproducible (and equal torchvision's
            ``resnet50(weights=None)`` made under the same seed).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNet50(num_classes)
    return ResNet50(num_classes)
