"""Data augmentation for training, torchvision-like, on uint8 batches (B, C, H, W).

A transform is called with a batch of the uint8 pixels fastcnn's data sets keep and a
numpy Generator, and returns a new uint8 batch: the random parameters (one set per image) are
drawn from the generator in NumPy, the pixels moved by C++ kernels (fastcnn._C, threaded over the
images). Give one to the training loader, `DataLoader(train, transform=...)` or
`fit(..., transform=...)` (or set `dataset.transform`); the loader draws each batch's generator
from its seed, epoch and batch number, so a seeded run repeats bit for bit, resumes included,
and evaluation never sees it.

Example:
    >>> from fastcnn import data
    >>> augment = data.Compose([data.RandomCrop(28, padding=4), data.RandomHorizontalFlip()])
    >>> loader = data.DataLoader(data.FashionMNIST(), 64, shuffle=True, seed=0, transform=augment)
"""

from __future__ import annotations

import numpy as np

from . import _C
from .transforms import to_size

__all__ = ["Compose", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop"]


def _check_batch(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"augmentation works on uint8 (B, C, H, W) pixel batches, got {got}")
    return np.ascontiguousarray(x)


class Compose:
    """Apply transforms in order, as torchvision.transforms.Compose."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose takes callables, got {type(t).__name__}")

    def __call__(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """A random `size` crop of the image zero-padded by `padding` on every side, as
    torchvision's RandomCrop(size, padding): with size equal to the image's, a random shift by
    up to `padding` pixels, the uncovered border black.

    Args:
        size: output side (int) or (height, width), at most the padded image's.
        padding: zero border added to each side before cropping, >= 0.
    """

    def __init__(self, size, padding: int = 0):
        self.size = to_size(size)
        if not isinstance(padding, (int, np.integer)) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)

    def __call__(self, x, rng):
        x = _check_batch(x)
        B, _, H, W = x.shape
        h, w = self.size
        p = self.padding
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"RandomCrop size {h}x{w} is larger than the padded image")
        top = rng.integers(0, H + 2 * p - h + 1, B)  # in the padded image
        left = rng.integers(0, W + 2 * p - w + 1, B)
        if (h, w) != (H, W):  # a smaller window: take it from a zero-padded copy
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            rows = top[:, None] + np.arange(h)
            cols = left[:, None] + np.arange(w)
            b = np.arange(B)[:, None, None, None]
            c = np.arange(x.shape[1])[None, :, None, None]
            return np.ascontiguousarray(
                padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
            )
        shift = lambda a: (a - p).astype(np.int32)  # noqa: E731
        return _C.augment_crop_flip(x, shift(top), shift(left), np.zeros(B, np.uint8))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left to right with probability p, as torchvision's."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, rng):
        x = _check_batch(x)
        B = len(x)
        flip = (rng.random(B) < self.p).astype(np.uint8)
        zero = np.zeros(B, np.int32)
        return _C.augment_crop_flip(x, zero, zero, flip)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """A random box of each image (area a `scale` fraction of it, aspect ratio within `ratio`,
    log-uniform) resampled bilinearly to `size`, as torchvision's RandomResizedCrop: ten tries
    per image, then the central crop of the nearest allowed ratio.

    Args:
        size: output side (int) or (height, width).
        scale: (min, max) fraction of the image's area, in (0, 1].
        ratio: (min, max) width / height of the box.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = to_size(size)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must be 0 < min <= max <= 1, got {scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must be 0 < min <= max, got {ratio}")

    def boxes(self, B, H, W, rng) -> np.ndarray:
        """(B, 4) float32 boxes: top, left, height, width (integers, inside the image)."""
        area = H * W
        log_r = np.log(self.ratio)
        out = np.empty((B, 4), np.float64)
        done = np.zeros(B, bool)
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1], B)
            aspect = np.exp(rng.uniform(log_r[0], log_r[1], B))
            w = np.round(np.sqrt(target * aspect))
            h = np.round(np.sqrt(target / aspect))
            ok = ~done & (w > 0) & (h > 0) & (w <= W) & (h <= H)
            top = np.floor(rng.random(B) * (H - h + 1))
            left = np.floor(rng.random(B) * (W - w + 1))
            out[ok] = np.stack([top, left, h, w], 1)[ok]
            done |= ok
        if not done.all():  # the whole image, or its central crop of the nearest allowed ratio
            r = W / H
            if r < self.ratio[0]:
                w, h = W, round(W / self.ratio[0])
            elif r > self.ratio[1]:
                h, w = H, round(H * self.ratio[1])
            else:
                w, h = W, H
            out[~done] = [(H - h) // 2, (W - w) // 2, h, w]
        return out.astype(np.float32)

    def __call__(self, x, rng):
        x = _check_batch(x)
        B, _, H, W = x.shape
        boxes = self.boxes(B, H, W, rng)
        h, w = self.size
        return _C.augment_resized_crop(x, boxes, np.zeros(B, np.uint8), h, w)

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def default(kind: str, image_size) -> Compose:
    """The augmentation `fastcnn train --augment` uses: for small grey images (Fashion-MNIST,
    `kind="small"`) a shift by up to a seventh of the side (a 4-pixel zero border at 28) and a
    horizontal flip; for photos (`kind="photo"`) a random resized crop (scale 0.35-1) and a
    flip."""
    h, w = to_size(image_size)
    if kind == "small":
        return Compose([RandomCrop((h, w), padding=max(1, min(h, w) // 7)), RandomHorizontalFlip()])
    if kind == "photo":
        return Compose([RandomResizedCrop((h, w), scale=(0.35, 1.0)), RandomHorizontalFlip()])
    raise ValueError(f"kind must be 'small' or 'photo', got {kind!r}")
