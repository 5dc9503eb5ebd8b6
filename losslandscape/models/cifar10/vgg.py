"""VGG-9 with batch normalization, as in the original loss-landscape CIFAR-10 code.

Seven 3x3 convolutions (with bias, each followed by BatchNorm and ReLU) in three
max-pooled stages, then a hidden fully connected layer with BatchNorm1d and ReLU
(`fc`), then the 10-way `classifier`.
"""
import torch
from torch import nn

MAX_POOL = "M"

# Output channels of each convolution; MAX_POOL marks a 2x2 max pooling.
VGG9_LAYERS = (64, 64, MAX_POOL, 128, 128, MAX_POOL, 256, 256, 256, MAX_POOL)


class VGG(nn.Module):
    def __init__(self, layers=VGG9_LAYERS, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        modules = []
        in_channels, side = 3, input_size
        for layer in layers:
            if layer == MAX_POOL:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                side //= 2
            else:
                modules += [
                    nn.Conv2d(in_channels, layer, kernel_size=3, padding=1),
                    nn.BatchNorm2d(layer),
                    nn.ReLU(inplace=True),
                ]
                in_channels = layer
        self.features = nn.Sequential(*modules)
        # The hidden layer is as wide as the last feature map has channels, and it reads the
        # flattened map (no global pooling), so the input size is fixed at construction.
        self.fc = nn.Sequential(
            nn.Linear(in_channels * side * side, in_channels),
            nn.BatchNorm1d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(1)
        return self.classifier(self.fc(features))


def vgg9(num_classes: int = 10) -> VGG:
    return VGG(VGG9_LAYERS, num_classes)
