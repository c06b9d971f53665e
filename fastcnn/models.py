"""Reference networks."""

from __future__ import annotations

from .nn import (
    AdaptiveAvgPool2d,
    BasicBlock,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)

__all__ = ["seednet", "resnet", "resnet8", "resnet20", "ARCHITECTURES"]


def _size(image_size):
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 4 or w < 4:
        raise ValueError(f"seednet needs images of at least 4x4, got {h}x{w}")
    return int(h), int(w)


def seednet(in_channels: int = 1, num_classes: int = 10, image_size=28) -> Sequential:
    """conv(5x5, 32, pad 2) -> ReLU -> maxpool 2 -> conv(5x5, 64, pad 2) -> ReLU -> maxpool 2
    -> flatten -> linear(128) -> ReLU -> linear(num_classes)."""
    h, w = _size(image_size)
    if in_channels < 1 or num_classes < 1:
        raise ValueError("in_channels and num_classes must be >= 1")
    return Sequential(
        Conv2d(in_channels, 32, 5, padding=2),
        ReLU(),
        MaxPool2d(2),
        Conv2d(32, 64, 5, padding=2),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(64 * (h // 4) * (w // 4), 128),
        ReLU(),
        Linear(128, num_classes),
    )


def resnet(depth: int, in_channels: int = 3, num_classes: int = 10, image_size=None) -> Sequential:
    """The CIFAR ResNets of He et al. 2016 (section 4.2): a 3x3 convolution to 16 channels with
    BatchNorm2d and ReLU, three stages of n = (depth - 2) / 6 BasicBlocks at 16, 32 and 64
    channels (the first block of the second and third stages with stride 2 and a 1x1
    convolution + BatchNorm2d shortcut), global average pooling and a linear layer. Keys are
    those of Sequential(conv, bn, relu, block..., pool, flatten, linear). Any image size works
    (global pooling); `image_size` is accepted for a common signature and ignored.

    Args:
        depth: 6n + 2: 8, 14, 20, 32, 44, 56, 110...
        in_channels: image channels (1 for Fashion-MNIST, 3 for photos).
        num_classes: outputs.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError("in_channels and num_classes must be >= 1")
    n = (depth - 2) // 6
    layers = [Conv2d(in_channels, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU()]
    planes_in = 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BasicBlock(planes_in, planes, stride))
            planes_in = planes
    layers += [AdaptiveAvgPool2d(1), Flatten(), Linear(64, num_classes)]
    return Sequential(*layers)


def resnet8(in_channels: int = 3, num_classes: int = 10, image_size=None) -> Sequential:
    """resnet(8): one BasicBlock a stage, 78k parameters at 10 classes."""
    return resnet(8, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10, image_size=None) -> Sequential:
    """resnet(20): three BasicBlocks a stage, 0.27M parameters at 10 classes."""
    return resnet(20, in_channels, num_classes)


ARCHITECTURES = {"seednet": seednet, "resnet8": resnet8, "resnet20": resnet20}
