"""Reference networks."""

from __future__ import annotations

from .nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

__all__ = ["seednet", "ARCHITECTURES"]


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


ARCHITECTURES = {"seednet": seednet}
