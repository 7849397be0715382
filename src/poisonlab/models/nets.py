"""Network definitions: the BadNets MNIST net, small CNNs, a CIFAR-style ResNet-18, an MLP.

Every model is a plain ``nn.Module`` whose layers have stable names, so that
:mod:`poisonlab.models.layers` can read any layer's activations by name.
"""
from __future__ import annotations

import torch
from torch import nn


class BadNetMNIST(nn.Sequential):
    """The BadNets MNIST baseline network (Gu et al. 2017, Table 1).

    conv 16@5x5, ReLU, avg-pool 2x2, conv 32@5x5, ReLU, avg-pool 2x2, fc 512, ReLU, fc 10.
    Expects (N, C, 28, 28) input; other sizes work as long as both convolutions fit.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        side = ((image_size - 4) // 2 - 4) // 2
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_channels, 16, 5))
        self.add_module("relu1", nn.ReLU())
        self.add_module("pool1", nn.AvgPool2d(2))
        self.add_module("conv2", nn.Conv2d(16, 32, 5))
        self.add_module("relu2", nn.ReLU())
        self.add_module("pool2", nn.AvgPool2d(2))
        self.add_module("flatten", nn.Flatten())
        self.add_module("fc1", nn.Linear(32 * side * side, 512))
        self.add_module("relu3", nn.ReLU())
        self.add_module("fc2", nn.Linear(512, num_classes))


class DigitsCNN(nn.Sequential):
    """A small CNN for 8x8 images (scikit-learn digits): two 3x3 convs, one pool, fc 128."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        super().__init__()
        side = image_size // 2
        self.add_module("conv1", nn.Conv2d(in_channels, 32, 3, padding=1))
        self.add_module("relu1", nn.ReLU())
        self.add_module("conv2", nn.Conv2d(32, 64, 3, padding=1))
        self.add_module("relu2", nn.ReLU())
        self.add_module("pool", nn.MaxPool2d(2))
        self.add_module("flatten", nn.Flatten())
        self.add_module("fc1", nn.Linear(64 * side * side, 128))
        self.add_module("relu3", nn.ReLU())
        self.add_module("fc2", nn.Linear(128, num_classes))


class SmallCNN(nn.Sequential):
    """A small VGG-style CNN for 32x32 colour images (GTSRB, CIFAR-10).

    Three blocks of ``convs_per_block`` 3x3 convs (``width``, 2x, 4x channels; default
    32-64-128) with batch norm and ReLU, each block closed by a 2x2 max-pool, then fc 256
    and the classifier. Layers are named ``conv{i}``, ``bn{i}``, ``relu{i}``, ``pool{b}``;
    the last conv (``conv6`` by default, ``conv3`` with one conv per block) is the layer
    Fine-Pruning prunes. One conv per block trains about 3x faster on a CPU.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 43, image_size: int = 32,
                 convs_per_block: int = 2, width: int = 32) -> None:
        super().__init__()
        i, cin = 0, in_channels
        for block in range(1, 4):
            cout = width * 2 ** (block - 1)
            for _ in range(convs_per_block):
                i += 1
                self.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
                self.add_module(f"bn{i}", nn.BatchNorm2d(cout))
                self.add_module(f"relu{i}", nn.ReLU())
                cin = cout
            self.add_module(f"pool{block}", nn.MaxPool2d(2))
        side = image_size // 8
        self.add_module("flatten", nn.Flatten())
        self.add_module("fc1", nn.Linear(cin * side * side, 256))
        self.add_module("relu_fc", nn.ReLU())
        self.add_module("dropout", nn.Dropout(0.3))
        self.add_module("fc2", nn.Linear(256, num_classes))


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18 (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), as commonly used on CIFAR-10."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        layers = []
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            blocks = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            setattr(self, f"layer{i}", blocks)
            layers.append(blocks)
            cin = cout
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


class MLP(nn.Sequential):
    """A multilayer perceptron on flattened input; ``hidden`` lists the hidden widths."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256,)) -> None:
        super().__init__()
        self.add_module("flatten", nn.Flatten())
        width = in_features
        for i, h in enumerate(hidden, start=1):
            self.add_module(f"fc{i}", nn.Linear(width, h))
            self.add_module(f"relu{i}", nn.ReLU())
            width = h
        self.add_module("out", nn.Linear(width, num_classes))
