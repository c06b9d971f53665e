"""Image preprocessing shared by training and prediction.

One pipeline turns an image into uint8 pixels (C, H, W): decode with Pillow, apply the EXIF
rotation, convert to 'L' or 'RGB', resize with an antialiased bilinear filter (16-bit and float
sources are resized at full precision, then quantised to 8 bits). Pixels become float32 as
`(raw * (1/255) - mean[c]) * (1/std[c])`, per-channel mean/std. The data sets keep the uint8
pixels and convert batches with `raw_to_float`; `load_image` and `preprocess_array` run the same
steps, with the same float32 operations in the same order, for one file or for raw uint8 arrays,
so a saved model sees at prediction time bit for bit what it saw in training. Only numpy, Pillow
and the standard library are used here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Refuse images above this many pixels before decoding them (decompression bombs). Pillow has the
# same guard, but it is a process-wide setting that other code may have disabled (None), so we
# keep our own limit rather than rely on, or change, Pillow's global. The value is Pillow's
# default: ~89 megapixels, a 0.25 GiB RGB decode, far beyond any training image.
MAX_IMAGE_PIXELS = 89_478_485

_SCALE_8BIT = np.float32(1.0 / 255.0)
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_size(image_size) -> tuple[int, int]:
    """An int or an (h, w) pair -> (h, w) of positive ints, at most MAX_IMAGE_PIXELS in all;
    ValueError otherwise."""
    pair = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    if len(pair) != 2 or not all(_is_int(v) and v > 0 for v in pair):
        raise ValueError(
            f"image_size must be a positive int or (height, width), got {image_size!r}"
        )
    h, w = int(pair[0]), int(pair[1])
    if h * w > MAX_IMAGE_PIXELS:  # every image is resized to this: refuse before allocating
        raise ValueError(
            f"image_size {h}x{w} is over the limit of {MAX_IMAGE_PIXELS} pixels "
            "(fastcnn.transforms.MAX_IMAGE_PIXELS)"
        )
    return h, w


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def channel_values(value, channels: int, name: str) -> np.ndarray:
    """A float or a per-channel sequence -> float32 array (channels,); one value is broadcast."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be one finite number or {channels} of them, got {value!r}")
    if name == "std" and np.any(arr <= 0):
        raise ValueError(f"std must be positive, got {value!r}")
    return arr.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# one image
# ---------------------------------------------------------------------------------------------


def pil_to_uint8(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """A Pillow image -> uint8 (channels, h, w), C-contiguous: the pixels the data sets keep."""
    h, w = size
    if img.mode in _HIGH_DEPTH_MODES:
        # 16/32-bit grey: convert("L") would clip values above 255 instead of scaling them.
        # Integer modes are read as 16-bit (0..65535); float images ("F") as already 0..1.
        arr = np.asarray(img, dtype=np.float32)
        if img.mode != "F":
            arr = arr * np.float32(1.0 / 65535.0)
        img = Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32))  # mode 'F'
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        # Resized at full precision, then quantised to 8 bits (rounded to nearest): the data sets
        # hold uint8 pixels (4x less memory than float32), and prediction rounds the same way.
        grey = np.asarray(img, dtype=np.float32)
        grey = np.rint(np.clip(grey, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        return np.repeat(grey[None], channels, axis=0)

    # Palette transparency must go through RGBA (Pillow warns otherwise); alpha is then dropped,
    # as torchvision's convert("RGB") does.
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (w, h):
        # Pillow's BILINEAR widens its support when shrinking, so this is antialiased.
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None].copy() if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def pil_to_array(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """A Pillow image -> float32 (channels, h, w) in [0, 1] (pil_to_uint8, scaled by 1/255)."""
    return np.multiply(pil_to_uint8(img, size, channels), _SCALE_8BIT, dtype=np.float32)


def decode_pixels(path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Read one image file -> uint8 (channels, h, w); ValueError naming the file."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{img.width}x{img.height} pixels is over the limit of {MAX_IMAGE_PIXELS} "
                    "(fastcnn.transforms.MAX_IMAGE_PIXELS; guards against decompression bombs)"
                )
            if img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that small:
                # much faster for photos, and the size stays >= the target (rotation included).
                side = max(size)
                img.draft("L" if channels == 1 else "RGB", (side, side))
            if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: phone photos
                img = ImageOps.exif_transpose(img)  # are stored sideways plus this tag
            return pil_to_uint8(img, size, channels)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: image too large, refused as a decompression bomb ({e})") from e
    except Exception as e:
        # Pillow's decoders raise many types on bad input (OSError, SyntaxError, EOFError,
        # struct.error, ...); callers need one: a ValueError that names the file.
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def decode_image(path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Read one image file -> float32 (channels, h, w) in [0, 1]; ValueError naming the file."""
    return np.multiply(decode_pixels(path, size, channels), _SCALE_8BIT, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of NCHW images, accumulated in float64.

    images: float (taken as they are), or uint8 raw pixels, which are scaled to [0, 1] first
    exactly as the data sets scale them (float32 `raw * (1/255)`), so the statistics of a data
    set's `.raw` equal those of its unnormalised float images. Works in chunks of ~4M values so
    a large data set needs no float copy of itself.
    """
    n, c = images.shape[:2]
    per_image = max(1, int(np.prod(images.shape[1:])))
    step = max(1, (1 << 22) // per_image)
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for i in range(0, n, step):
        x = images[i : i + step]
        if x.dtype == np.uint8:
            x = np.multiply(x, _SCALE_8BIT, dtype=np.float32)
        x = x.astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        total_sq += np.square(x).sum(axis=(0, 2, 3))
    count = max(1, n * images.shape[2] * images.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    # A constant channel (all-black border class, synthetic data) has std 0: leave it unscaled
    # rather than divide by zero.
    std = np.where(std > 1e-6, std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def normalize_(images: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel, in place on float32 NCHW images; returns images.

    Computed as `x -= mean[c]; x *= 1/std[c]` in float32, the rounding `raw_to_float` repeats.
    """
    c = images.shape[1]
    _normalize(images, channel_values(mean, c, "mean"), channel_values(std, c, "std"))
    return images


def _normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """In place, float32 (N, C, H, W); mean/std already float32 (C,) (channel_values)."""
    for k in range(x.shape[1]):
        if mean[k] == 0 and std[k] == 1:
            continue  # x - 0 and x * 1 are exact: skipping them changes no bit
        xk = x[:, k]
        np.subtract(xk, mean[k], out=xk)
        np.multiply(xk, np.float32(1.0) / std[k], out=xk)


# Convert in slices of this many float32 values (1 MiB): each is scaled and normalised while it
# is still in cache, and a batch of up to this size is one slice.
_CONVERT_CHUNK = 1 << 18


def raw_to_float(raw: np.ndarray, mean=0.0, std=1.0) -> np.ndarray:
    """uint8 pixels (N, C, H, W) -> a new float32 array `(raw * (1/255) - mean[c]) * (1/std[c])`.

    The same float32 operations in the same order as `pil_to_array` followed by `normalize_`, so
    the result is bit-identical to that two-step path (and to load_image / preprocess_array).
    The conversion of uint8 to float32 is fused into the first multiply; the work goes in slices
    of ~1 MiB so that converting a whole data set makes no temporary copy.
    mean/std: a float or one per channel.
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 4:
        raise ValueError(f"raw_to_float takes uint8 (N,C,H,W) pixels, got {raw.dtype} {raw.shape}")
    c = raw.shape[1]
    return _raw_to_float(raw, channel_values(mean, c, "mean"), channel_values(std, c, "std"))


def _raw_to_float(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """raw_to_float without the argument checks (the data sets' hot path)."""
    out = np.empty(raw.shape, dtype=np.float32)
    n = raw.shape[0]
    step = max(1, _CONVERT_CHUNK // max(1, raw[:1].size))
    for i in range(0, n, step):
        o = out[i : i + step]
        np.multiply(raw[i : i + step], _SCALE_8BIT, out=o, dtype=np.float32)
        _normalize(o, mean, std)
    return out


def pixel_affine(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift), float32 (C,), with raw * scale + shift = (raw/255 - mean) / std.

    Exact in real arithmetic (scale = 1/(255 std), shift = -mean/std, rounded once from float64).
    In float32, `raw * scale + shift` rounds differently from `raw_to_float` (two roundings of
    other operands instead of three), so it can differ from the data sets' images in the last
    bit or two: 219 of the 256 values do for Fashion-MNIST's mean/std, by at most 3.6e-7. Use it
    where that does not matter (folding the normalisation into another operation); fastcnn's
    own conversion, bit-identical to the original pipeline, is `raw_to_float`.
    """
    mean = channel_values(mean, channels, "mean").astype(np.float64)
    std = channel_values(std, channels, "std").astype(np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the public entry points used by predict
# ---------------------------------------------------------------------------------------------


def load_image(path, image_size, channels=3, mean=None, std=None) -> np.ndarray:
    """Read one image file as a float32 (1, C, H, W) batch, preprocessed as ImageFolder does.

    Args:
        path: the image file (any format Pillow reads).
        image_size: int or (h, w) to resize to.
        channels: 1 (grey) or 3 (RGB).
        mean: per-channel mean (or one float) to subtract after scaling to [0, 1].
        std: per-channel standard deviation (or one float) to divide by.

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    raw = decode_pixels(path, to_size(image_size), channels)[None]
    return raw_to_float(raw, 0.0 if mean is None else mean, 1.0 if std is None else std)


def preprocess_array(images, preprocessing: dict) -> np.ndarray:
    """Raw uint8 images -> float32 NCHW, preprocessed as described by `preprocessing`.

    images: (H, W) one grey image; (H, W, C) one image with C in 1, 3, 4; (N, H, W) grey batch;
    (N, H, W, C) batch. A 3-D array whose last axis is 1, 3 or 4 is read as one image.
    preprocessing: {"image_size": [h, w], "channels": c, "mean": [...], "std": [...]}, as
    exposed by the datasets and stored with a saved model.
    """
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"preprocess_array takes raw uint8 images, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None] if a.shape[-1] in (1, 3, 4) else a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4) or 0 in a.shape:
        raise ValueError(
            "images must be (H,W), (H,W,C), (N,H,W) or (N,H,W,C) with C in 1, 3, 4; "
            f"got shape {np.shape(images)}"
        )
    size = to_size(preprocessing["image_size"])
    channels = int(preprocessing["channels"])
    if channels not in (1, 3):
        raise ValueError(f"preprocessing channels must be 1 or 3, got {channels!r}")

    n, h, w, c = a.shape
    if (h, w) == size and (c == channels or (c == 1 and channels == 3)):
        raw = a.transpose(0, 3, 1, 2)  # already the right size: no Pillow round trip
        if c != channels:
            raw = np.repeat(raw, channels, axis=1)
    else:
        raw = np.empty((n, channels) + size, dtype=np.uint8)
        for i in range(n):
            img = Image.fromarray(a[i, :, :, 0] if c == 1 else a[i])
            raw[i] = pil_to_uint8(img, size, channels)
    mean, std = preprocessing.get("mean"), preprocessing.get("std")
    return raw_to_float(raw, 0.0 if mean is None else mean, 1.0 if std is None else std)
