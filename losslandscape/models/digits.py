"""Small networks for 1x8x8 digit images (10 classes), sized so the demo and tests run in seconds.

``cnn_bn`` has BatchNorm (so 'weights' vs 'states' directions differ); ``mlp`` has only linear
layers (so every weight tensor is 2-D and biases are the only 1-D entries).
"""
import torch.nn as nn


class DigitsMLP(nn.Module):
    def __init__(self, hidden=32, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())


class DigitsCNN(nn.Module):
    """conv(8) - pool - conv(16) - pool - linear, optionally with BatchNorm after each conv."""

    def __init__(self, batch_norm=False, num_classes=10):
        super().__init__()
        def block(cin, cout):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            return nn.Sequential(*layers, nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(1, 8), block(8, 16))
        self.classifier = nn.Linear(16 * 2 * 2, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


MODELS = {
    'mlp': DigitsMLP,
    'cnn': lambda: DigitsCNN(batch_norm=False),
    'cnn_bn': lambda: DigitsCNN(batch_norm=True),
}
