"""Residual networks for CIFAR-10, as in the original loss-landscape code.

Two families share the blocks below:
- `resnet(depth)`: ResNet-18/34/50/101/152 adapted to 32x32 inputs (3x3 stem with stride 1,
  no max pooling, four stages of 64..512 planes).
- `cifar_resnet(depth, width_multiplier)`: He et al.'s CIFAR ResNet-(6n+2) with three stages
  of 16/32/64 planes, and its wide variants with every width (stem included) multiplied.

`shortcut=False` builds the same net without skip connections ("_noshort"): no shortcut
modules and no addition, so only the plain convolution path remains. Quirk kept for
checkpoint fidelity: the no-shortcut bottleneck block has no ReLU after its last BatchNorm.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 convolution + BatchNorm that matches the residual's shape (option B of He et al.)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def _make_shortcut(in_planes: int, out_planes: int, stride: int, enabled: bool) -> nn.Module | None:
    if not enabled:
        return None
    if stride != 1 or in_planes != out_planes:
        return _projection(in_planes, out_planes, stride)
    # An empty Sequential is the identity and adds no state_dict entries.
    return nn.Sequential()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _make_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # The stride sits on the 3x3 convolution, not on the first 1x1.
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _make_shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:
            # The original Bottleneck_noshort returns bn3's output without a final ReLU
            # (unlike its BasicBlock_noshort); the golden logits confirm it.
            return out
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, then one stage per entry of `stage_planes`; the first stage keeps the
    resolution and each later one halves it. Global average pooling feeds `linear`."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: list[int],
        stage_planes: list[int],
        shortcut: bool = True,
        num_classes: int = 10,
    ):
        super().__init__()
        in_planes = stage_planes[0]
        self.conv1 = nn.Conv2d(3, in_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        for stage, (num_blocks, planes) in enumerate(zip(blocks_per_stage, stage_planes)):
            first_stride = 1 if stage == 0 else 2
            blocks = []
            for index in range(num_blocks):
                blocks.append(block(in_planes, planes, first_stride if index == 0 else 1, shortcut))
                in_planes = planes * block.expansion
            # Named layer1, layer2, ... to match the original checkpoints.
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_stages = len(blocks_per_stage)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in range(self.num_stages):
            out = getattr(self, f"layer{stage + 1}")(out)
        # On 32x32 inputs this equals the original's fixed avg_pool2d (kernel 4 or 8).
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


_IMAGENET_STYLE_CONFIGS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def resnet(depth: int, shortcut: bool = True, num_classes: int = 10) -> ResNet:
    """ResNet-18/34/50/101/152 on 32x32 inputs (stages of 64, 128, 256, 512 planes)."""
    if depth not in _IMAGENET_STYLE_CONFIGS:
        raise ValueError(f"depth must be one of {sorted(_IMAGENET_STYLE_CONFIGS)}, got {depth}")
    block, blocks_per_stage = _IMAGENET_STYLE_CONFIGS[depth]
    return ResNet(block, blocks_per_stage, [64, 128, 256, 512], shortcut, num_classes)


def cifar_resnet(depth: int, width_multiplier: int = 1, shortcut: bool = True, num_classes: int = 10) -> ResNet:
    """He et al.'s CIFAR ResNet of depth 6n+2 (n basic blocks per stage), optionally widened."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    blocks = (depth - 2) // 6
    planes = [16 * width_multiplier, 32 * width_multiplier, 64 * width_multiplier]
    return ResNet(BasicBlock, [blocks] * 3, planes, shortcut, num_classes)
