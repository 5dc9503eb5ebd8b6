"""DenseNet-121 for CIFAR-10 (growth rate 32, compression 0.5), as in the original loss-landscape code.

Pre-activation bottleneck layers (BN-ReLU-1x1 conv to 4*growth, BN-ReLU-3x3 conv to growth)
in four dense blocks of 6/12/24/16 layers, a 3x3 stem of 2*growth channels, and transitions
(BN-ReLU-1x1 conv, 2x2 average pooling) between the blocks.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new_features = self.conv1(F.relu(self.bn1(x)))
        new_features = self.conv2(F.relu(self.bn2(new_features)))
        # New features go first: the channel order matters to checkpoints trained this way.
        return torch.cat([new_features, x], dim=1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(
        self,
        layers_per_block: list[int],
        growth_rate: int = 32,
        compression: float = 0.5,
        num_classes: int = 10,
    ):
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        last_block = len(layers_per_block)
        for block_number, num_layers in enumerate(layers_per_block, start=1):
            layers = []
            for _ in range(num_layers):
                layers.append(DenseLayer(planes, growth_rate))
                planes += growth_rate
            # Named dense1, trans1, dense2, ... to match the original checkpoints.
            self.add_module(f"dense{block_number}", nn.Sequential(*layers))
            if block_number < last_block:
                out_planes = int(math.floor(planes * compression))
                self.add_module(f"trans{block_number}", Transition(planes, out_planes))
                planes = out_planes
        self.num_blocks = last_block
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for block_number in range(1, self.num_blocks + 1):
            out = getattr(self, f"dense{block_number}")(out)
            if block_number < self.num_blocks:
                out = getattr(self, f"trans{block_number}")(out)
        out = F.relu(self.bn(out))
        # On 32x32 inputs this equals the original's avg_pool2d(kernel 4).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def densenet121(num_classes: int = 10) -> DenseNet:
    return DenseNet([6, 12, 24, 16], growth_rate=32, compression=0.5, num_classes=num_classes)
