"""Name -> constructor registry of the CIFAR-10 model zoo, using the original code's model names."""
from functools import partial
from typing import Callable

from torch import nn

from losslandscape.models.cifar10 import densenet, resnet, vgg

MODELS: dict[str, Callable[[], nn.Module]] = {
    "vgg9": vgg.vgg9,
    "densenet121": densenet.densenet121,
    # ResNet-18..152 adapted to 32x32 inputs.
    "resnet18": partial(resnet.resnet, 18),
    "resnet18_noshort": partial(resnet.resnet, 18, shortcut=False),
    "resnet34": partial(resnet.resnet, 34),
    "resnet34_noshort": partial(resnet.resnet, 34, shortcut=False),
    "resnet50": partial(resnet.resnet, 50),
    "resnet50_noshort": partial(resnet.resnet, 50, shortcut=False),
    "resnet101": partial(resnet.resnet, 101),
    "resnet101_noshort": partial(resnet.resnet, 101, shortcut=False),
    "resnet152": partial(resnet.resnet, 152),
    "resnet152_noshort": partial(resnet.resnet, 152, shortcut=False),
    # He et al.'s CIFAR ResNets (16/32/64 planes).
    "resnet20": partial(resnet.cifar_resnet, 20),
    "resnet20_noshort": partial(resnet.cifar_resnet, 20, shortcut=False),
    "resnet32_noshort": partial(resnet.cifar_resnet, 32, shortcut=False),
    "resnet44_noshort": partial(resnet.cifar_resnet, 44, shortcut=False),
    # "_16" tells this depth-50 CIFAR ResNet (16 base planes) from the bottleneck ResNet-50.
    "resnet50_16_noshort": partial(resnet.cifar_resnet, 50, shortcut=False),
    "resnet56": partial(resnet.cifar_resnet, 56),
    "resnet56_noshort": partial(resnet.cifar_resnet, 56, shortcut=False),
    "resnet110": partial(resnet.cifar_resnet, 110),
    "resnet110_noshort": partial(resnet.cifar_resnet, 110, shortcut=False),
    # Wide CIFAR ResNets: wrn<depth>_<width multiplier>.
    "wrn56_2": partial(resnet.cifar_resnet, 56, 2),
    "wrn56_2_noshort": partial(resnet.cifar_resnet, 56, 2, shortcut=False),
    "wrn56_4": partial(resnet.cifar_resnet, 56, 4),
    "wrn56_4_noshort": partial(resnet.cifar_resnet, 56, 4, shortcut=False),
    "wrn56_8": partial(resnet.cifar_resnet, 56, 8),
    "wrn56_8_noshort": partial(resnet.cifar_resnet, 56, 8, shortcut=False),
    "wrn110_2_noshort": partial(resnet.cifar_resnet, 110, 2, shortcut=False),
    "wrn110_4_noshort": partial(resnet.cifar_resnet, 110, 4, shortcut=False),
}


def build(name: str) -> nn.Module:
    """A freshly initialized model of the given zoo name, with 10 outputs."""
    try:
        constructor = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}") from None
    return constructor()
