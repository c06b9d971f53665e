"""Data sets and the batch loader.

Every data set holds all its samples in memory, with `.labels` int64 (N,). Images that come as
8-bit pixels (every file format, MNIST, CIFAR-10, uint8 arrays) stay uint8: `.raw` (N, C, H, W),
a quarter of the memory of float32; DataLoader gathers a batch from `.raw` with one fancy-indexing
copy and converts just that batch to normalised float32 (`ds.to_float`). Float arrays given to
ArrayDataset are kept as float32 `.images`. `len(ds)`, `ds[i] -> (image float32 (C, H, W), label
int)` and `.classes` give the usual per-sample view; `.images`, float32 (N, C, H, W), is still
there for every data set, but on a uint8 one it is made (and kept) on first access: 4x `.raw`.

- ArrayDataset: arrays you already have.
- ImageFolder: one sub-folder per class, decoded with Pillow in threads (see transforms.py).
- MNIST, FashionMNIST: IDX files (gzipped or not); FashionMNIST finds the Debian-installed copy
  or downloads the official files with a SHA-256 check.
- CIFAR10: the binary batches only; the "python version" is pickle, which fastcnn never loads.

Only numpy, Pillow and the standard library are imported here (no fastcnn._C).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import math
import operator
import os
import queue
import tempfile
import threading
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .augment import Compose, RandomCrop, RandomHorizontalFlip, RandomResizedCrop
from .doctor import doctor
from .transforms import (
    _raw_to_float,
    channel_stats,
    channel_values,
    decode_pixels,
    load_image,
    normalize_,
    pixel_affine,
    preprocess_array,
    to_size,
)

__all__ = [
    "ArrayDataset",
    "ImageFolder",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "DataLoader",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "doctor",
    "read_idx",
    "load_image",
    "preprocess_array",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# The official files, over HTTPS, from Zalando's repository (plain git blobs, the same bytes as
# the S3 website mirror http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/, which
# serves no HTTPS). Override with $FASTCNN_FASHION_MNIST_URL (a base URL ending in /).
FASHION_MNIST_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
)
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# SHA-256 of the official .gz files, the version published since 2017-08-31 (duplicates removed;
# the files whose MD5s Zalando publishes: 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
# The same digests are in torchvision (prototype/datasets/_builtin/mnist.py); the two label files
# were also hashed here from the repository's blobs, whose MD5s are the published ones.
# Debian's dataset-fashion-mnist is not a source: it recompresses the files (gzip header without
# the original file name, 24 bytes shorter), so its .gz digests differ from the official ones.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz":
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}  # fmt: skip
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Training-split statistics of pixels scaled to [0, 1], used for both splits. Fashion-MNIST:
# computed here from the Debian-installed files (0.28604060, 0.35302424). MNIST: the usual values.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860406, 0.3530242
MNIST_MEAN, MNIST_STD = 0.1306605, 0.3081078

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
# Per-channel training-set statistics (the often-quoted std 0.2023, 0.1994, 0.2010 is a known
# miscalculation, the std of per-image means).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# in-memory data sets
# ---------------------------------------------------------------------------------------------


class _InMemory:
    """The shared behaviour: `.labels` int64 (N,), `.classes`, and the images held either

    - as uint8 pixels: `.raw` (N, C, H, W), C-contiguous, with the per-channel normalisation
      `(raw * (1/255) - mean[c]) * (1/std[c])` in float32 (`to_float`), also given as an affine
      `.scale`, `.shift` (float32 (C,); see transforms.pixel_affine); or
    - as float32 `.images` (N, C, H, W) (ArrayDataset built from float arrays; no `.raw`).
    """

    labels: np.ndarray
    classes: list
    _images = None  # float32 (N, C, H, W): given, or materialised from .raw on first access
    _norm = None  # (mean, std), float32 (C,) each: how .raw becomes float; None without .raw

    def _set_raw(self, raw: np.ndarray, mean, std) -> None:
        """Hold uint8 (N, C, H, W) pixels, normalised by mean/std (a float or one per channel)."""
        c = raw.shape[1]
        mean, std = channel_values(mean, c, "mean"), channel_values(std, c, "std")
        self.raw = np.ascontiguousarray(raw, dtype=np.uint8)
        self._norm = (mean, std)
        self.scale, self.shift = pixel_affine(mean, std, c)
        self._images = None

    @property
    def images(self) -> np.ndarray:
        """float32 (N, C, H, W), normalised.

        On a data set held as uint8 `.raw`, the first access converts all of it and keeps the
        copy (4x the memory of `.raw`: 188 MB for Fashion-MNIST's training set). Training does
        not need it: DataLoader and `ds[i]` convert only the samples they return, bit for bit
        as this copy holds them.
        """
        x = self._images
        if x is None and self._norm is not None:
            x = self._images = _raw_to_float(self.raw, *self._norm)
        return x

    @images.setter
    def images(self, value) -> None:
        # Float images replace the uint8 ones: the data set no longer has a .raw.
        self._images = value
        self._norm = None
        for name in ("raw", "scale", "shift"):
            self.__dict__.pop(name, None)

    def to_float(self, raw) -> np.ndarray:
        """uint8 pixels (B, C, H, W) (a gather from `.raw`) -> a new float32 array, normalised
        exactly as this data set's images (same float32 operations, same bits)."""
        if self._norm is None:
            raise ValueError(f"{type(self).__name__} holds float images, not uint8 pixels")
        raw = np.asarray(raw)
        c = len(self._norm[0])
        if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[1] != c:
            raise ValueError(
                f"to_float takes uint8 (B,{c},H,W) pixels, got {raw.dtype} {raw.shape}"
            )
        return _raw_to_float(raw, *self._norm)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        i = operator.index(i)  # ints only: a slice would return a batch under a per-sample API
        if self._norm is None:
            return self.images[i], int(self.labels[i])
        # One image converted on its own: the float copy of the whole set is never made here.
        return _raw_to_float(self.raw[i][None], *self._norm)[0], int(self.labels[i])

    def __repr__(self) -> str:
        shape = (self.images if self._norm is None else self.raw).shape[1:]
        return f"{type(self).__name__}(n={len(self)}, shape={shape}, classes={len(self.classes)})"


def _preprocessing(size, channels, mean, std) -> dict:
    return {
        "image_size": [int(size[0]), int(size[1])],
        "channels": int(channels),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def _check_labels(labels, n: int, num_classes: int | None, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what}: labels must be 1-D, got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what}: labels must be integers, got dtype {labels.dtype} (use .astype(np.int64))"
        )
    if len(labels) != n:
        raise ValueError(f"{what}: {n} images but {len(labels)} labels")
    if n and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, found {labels.min()}")
    if n and num_classes is not None and labels.max() >= num_classes:
        raise ValueError(f"{what}: label {labels.max()} is out of range for {num_classes} classes")
    return labels.astype(np.int64)


class ArrayDataset(_InMemory):
    """Images and labels you already hold in arrays.

    Args:
        images: raw pixels, uint8 (N, H, W) or (N, H, W, C), kept as uint8 `.raw`
            (N, C, H, W) (a copy) and converted to float32 in [0, 1] batch by batch; or
            floats (N, C, H, W), kept as float32 `.images` (a copy).
        labels: (N,) class indices, any integer dtype, >= 0.
        classes: class names (default: "0", "1", ... up to the largest label).
        mean: subtracted after scaling to [0, 1]; a float or one per channel.
        std: divided by after subtracting `mean`; a float or one per channel.

    Example:
        >>> ds = data.ArrayDataset(np.zeros((100, 28, 28), np.uint8), np.zeros(100, np.int64))
        >>> image, label = ds[0]                 # float32 (1, 28, 28), int
    """

    def __init__(self, images, labels, classes=None, mean=None, std=None):
        images = np.asarray(images)
        if images.size == 0:
            raise ValueError(f"ArrayDataset: images are empty (shape {images.shape})")
        raw = x = None
        if images.dtype == np.uint8:
            if images.ndim == 3:
                images = images[:, None]
            elif images.ndim == 4:
                images = images.transpose(0, 3, 1, 2)
            else:
                raise ValueError(
                    f"ArrayDataset: uint8 images must be (N,H,W) or (N,H,W,C), got {images.shape}"
                )
            # A C-contiguous NCHW copy: later writes to the caller's array change nothing here.
            raw = np.array(images, dtype=np.uint8, order="C")
            n, c = raw.shape[:2]
            # Raw pixels: predict can redo these steps on new raw images.
            self.preprocessing = _preprocessing(raw.shape[2:], c, [0.0] * c, [1.0] * c)
        elif np.issubdtype(images.dtype, np.floating):
            if images.ndim != 4:
                raise ValueError(f"ArrayDataset: float images must be NCHW, got {images.shape}")
            # A copy, so that normalising never writes into the caller's array.
            x = np.array(images, dtype=np.float32, order="C")
            n, c = x.shape[:2]
            self.preprocessing = None  # unknown: the caller prepared these floats
        else:
            raise ValueError(
                f"ArrayDataset: images must be uint8 or floating point, got dtype {images.dtype}"
            )
        if classes is not None:
            classes = [str(c) for c in classes]
        self.labels = _check_labels(
            labels, n, None if classes is None else len(classes), "ArrayDataset"
        )
        if classes is None:
            classes = [str(i) for i in range(int(self.labels.max()) + 1)]
        self.classes = classes
        mean_, std_ = 0.0, 1.0
        if mean is not None or std is not None:
            mean_ = channel_values(0.0 if mean is None else mean, c, "mean")
            std_ = channel_values(1.0 if std is None else std, c, "std")
            if x is not None:
                normalize_(x, mean_, std_)
            if self.preprocessing is not None:
                self.preprocessing.update(mean=mean_.tolist(), std=std_.tolist())
        if raw is not None:
            self._set_raw(raw, mean_, std_)
        else:
            self._images = x


class ImageFolder(_InMemory):
    """A folder of images with one sub-folder per class, every image loaded at construction.

    Images (jpg, jpeg, png, bmp, gif, webp, tif, tiff; any case) are found recursively in each
    class folder; hidden files and folders (".DS_Store", ".ipynb_checkpoints") and files with
    other extensions are ignored. Each is decoded (in threads), turned upright by its EXIF
    orientation, converted to `channels` (1: 'L', 3: 'RGB'), resized to `image_size` (the
    aspect ratio is not kept) and kept as uint8 `.raw` (16-bit and float images are resized at
    full precision, then rounded to 8 bits; load_image does the same, so prediction sees the
    same pixels). Batches are scaled to [0, 1] and normalised per channel by `mean` and `std`.

    Args:
        root: the folder; its visible sub-folders, sorted by name, are the classes.
        image_size: int or (h, w), the size every image is resized to.
        channels: 1 (grey) or 3 (RGB).
        skip_bad: leave out files that cannot be decoded, listing them in `.skipped`, instead
            of raising ValueError naming the first.
        mean: per-channel mean of the pixels scaled to [0, 1]; with `std`, computed from this
            folder when neither is given. Pass the training set's for a validation folder.
        std: per-channel standard deviation, likewise.
        classes: the class names, in label order (pass the training set's `.classes` for a
            validation folder, which may lack some); a sub-folder not among them is an error.
        workers: decoding threads (default: the number of cores).
        cache: where decoded pixels are kept between runs, as a memory-mapped .npy keyed by the
            file list (paths, sizes, modification times), image_size and channels: a folder,
            None for $FASTCNN_CACHE or ~/.cache/fastcnn/images, or False for no cache. A
            changed file changes the key (decoded again); a cache file that fails its checks
            (size, CRC-32) is decoded again and rewritten, never used.

    Attributes:
        classes, samples ((path, label) pairs), labels, raw, mean, std, preprocessing, skipped,
        cache_hit (whether the pixels came from the cache).

    Example:
        >>> train = data.ImageFolder("pets/train", image_size=64)
        >>> val = data.ImageFolder("pets/val", 64, mean=train.mean, std=train.std,
        ...                        classes=train.classes)
    """

    def __init__(
        self, root, image_size, channels=3, skip_bad=False, mean=None, std=None, classes=None,
        workers=None, cache=None,
    ):  # fmt: skip
        size = to_size(image_size)
        if channels not in (1, 3):
            raise ValueError(f"ImageFolder: channels must be 1 or 3, got {channels!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"ImageFolder: workers must be a positive int, got {workers!r}")
        root = os.fspath(root)
        self.root = root
        self.classes, self.samples = _scan_folder(root, classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        store = _PixelCache(cache, self.samples, size, channels)
        cached = store.load()
        self.cache_hit = cached is not None
        if cached is not None:
            x, bad = cached
            if bad and not skip_bad:  # cached from a skip_bad run: say which, as decoding would
                raise ValueError(f"ImageFolder: cannot decode {self.samples[min(bad)][0]}")
        else:
            x, bad = self._decode_all(size, channels, skip_bad, workers)
            store.save(x, bad)
        self.skipped = [self.samples[i][0] for i in sorted(bad)]
        if len(bad) == len(self.samples):
            raise ValueError(f"ImageFolder: no readable image in {root}")
        if bad:
            keep = [i for i in range(len(self.samples)) if i not in bad]
            x = x[keep]  # one compacting copy, only when something was skipped
            self.samples = [self.samples[i] for i in keep]
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)

        if mean is None and std is None:
            mean, std = channel_stats(x)  # of the pixels scaled to [0, 1]
        mean = channel_values(0.0 if mean is None else mean, channels, "mean")
        std = channel_values(1.0 if std is None else std, channels, "std")
        self._set_raw(x, mean, std)
        self.mean, self.std = mean.tolist(), std.tolist()
        self.preprocessing = _preprocessing(size, channels, self.mean, self.std)

    def _decode_all(self, size, channels, skip_bad, workers):
        """Decode every sample into one preallocated array -> (array, indices of bad files)."""
        x = np.empty((len(self.samples), channels) + size, dtype=np.uint8)
        bad = set()

        def decode(path):
            try:
                return decode_pixels(path, size, channels)
            except ValueError as e:
                if not skip_bad:
                    raise
                return e

        # Threads suffice: Pillow releases the GIL while decoding and resizing.
        pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
        try:
            for i, arr in enumerate(pool.map(decode, [p for p, _ in self.samples])):
                if isinstance(arr, ValueError):
                    bad.add(i)
                else:
                    x[i] = arr
        finally:
            # On the first bad file, do not go on decoding the thousands still queued.
            pool.shutdown(wait=True, cancel_futures=True)
        return x, bad


class _PixelCache:
    """ImageFolder's decoded pixels on disk (see ImageFolder's `cache`): <key>.npy holds the
    uint8 (N, C, H, W) array, <key>.json its shape, the bad files' indices and a CRC-32 of the
    pixels. Written to temporary files and renamed; read memory-mapped after its checks."""

    VERSION = 1  # of the decoding (transforms.pil_to_uint8): a change invalidates every entry

    def __init__(self, cache, samples, size, channels):
        self.folder = None
        if cache is False:
            return
        if cache is None:
            cache = os.environ.get("FASTCNN_CACHE") or os.path.join(
                os.path.expanduser("~"), ".cache", "fastcnn", "images"
            )
        self.folder = os.fspath(cache)
        files = []
        for path, _ in samples:
            st = os.stat(path)
            files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
        spec = json.dumps([self.VERSION, list(size), channels, files])
        self.key = hashlib.sha256(spec.encode()).hexdigest()[:32]
        self.shape = [len(samples), channels, *size]

    def _paths(self):
        base = os.path.join(self.folder, self.key)
        return base + ".npy", base + ".json"

    def load(self):
        """(pixels, bad indices) from the cache, or None (no entry, or one that fails a check)."""
        if self.folder is None:
            return None
        npy, meta = self._paths()
        try:
            with open(meta) as f:
                info = json.load(f)
            x = np.load(npy, mmap_mode="r")
            if list(x.shape) != self.shape or x.dtype != np.uint8 or info["shape"] != self.shape:
                return None
            if zlib.crc32(memoryview(np.ascontiguousarray(x)).cast("B")) != info["crc32"]:
                return None
            return x, set(info["bad"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or corrupt: decode again

    def save(self, x, bad):
        if self.folder is None:
            return
        npy, meta = self._paths()
        try:
            os.makedirs(self.folder, exist_ok=True)
            for path, write in (
                (npy, lambda f: np.save(f, x)),
                (meta, lambda f: f.write(json.dumps({"shape": self.shape, "bad": sorted(bad),
                 "crc32": zlib.crc32(memoryview(x).cast("B"))}).encode())),
            ):  # fmt: skip
                fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    write(f)
                os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full disk: the cache is an optimisation, not a requirement


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _scan_folder(root: str, classes):
    if not os.path.exists(root):
        raise ValueError(f"ImageFolder: {root} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"ImageFolder: {root} is not a folder")
    found = sorted(e.name for e in os.scandir(root) if _visible(e.name) and e.is_dir())
    if not found:
        raise ValueError(
            f"ImageFolder: no class folders in {root} (expected one sub-folder per class)"
        )
    if classes is None:
        classes = found
    else:
        # A validation folder may lack a class, but a folder we have no label for is an error.
        classes = [str(c) for c in classes]
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"ImageFolder: folders {unknown} in {root} are not in classes")
    samples = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        paths = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if _visible(d)]
            paths += [
                os.path.join(dirpath, f)
                for f in filenames
                if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not paths:
            raise ValueError(
                f"ImageFolder: class folder {folder} has no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(p, label) for p in sorted(paths)]
    return classes, samples


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAX_RATIO = 1032  # deflate cannot expand more than this: bounds a gzip file's content
# The most dimensions numpy holds (NPY_MAXDIMS: 64, 32 before numpy 2); real IDX files have 1-4.
_IDX_MAX_DIMS = 64 if int(np.__version__.split(".")[0]) >= 2 else 32


def read_idx(path) -> np.ndarray:
    """Parse an IDX file (gzipped or not: detected by its magic bytes 1f 8b, not its name).

    Layout: 2 zero bytes, a dtype code, ndim, then ndim big-endian uint32 sizes, then the data.
    Every field is checked, and the data length must match the header exactly; a header that
    claims more than the file can hold is refused before anything of that size is allocated.
    """
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        try:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0":
                raise ValueError(f"{path}: not an IDX file (bad magic {magic.hex()})")
            code, ndim = magic[2], magic[3]
            if code not in _IDX_DTYPES:
                raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x}")
            if not 1 <= ndim <= _IDX_MAX_DIMS:
                raise ValueError(
                    f"{path}: IDX header has {ndim} dimensions (numpy holds 1 to {_IDX_MAX_DIMS})"
                )
            head = f.read(4 * ndim)
            if len(head) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4"))  # Python ints
            dtype = np.dtype(_IDX_DTYPES[code])
            expected = math.prod(dims) * dtype.itemsize
            if gzipped:
                bound = _GZIP_MAX_RATIO * file_size
                if expected > bound:
                    raise ValueError(
                        f"{path}: IDX header claims {expected} bytes of data, more than a "
                        f"{file_size}-byte gzip file can hold"
                    )
                data = _read_exactly(f, expected, path)
            else:
                actual = file_size - 4 - 4 * ndim
                if actual != expected:
                    why = "truncated" if actual < expected else "extra bytes"
                    raise ValueError(
                        f"{path}: IDX header {dims} needs {expected} bytes of data, "
                        f"the file has {actual} ({why})"
                    )
                data = bytearray(expected)  # safe now: the file holds exactly this much
                if f.readinto(data) != expected:
                    raise ValueError(f"{path}: file changed while being read")
        except (OSError, EOFError, zlib.error) as e:  # mostly a corrupt or truncated gzip stream
            raise ValueError(f"{path}: cannot read IDX data ({type(e).__name__}: {e})") from e
        finally:
            f.close()
    # numpy refuses a shape whose size, zeros left out, overflows its byte count, even for an
    # empty array: (2**32-1, 2**32-1, 0)
    if math.prod(d for d in dims if d) * dtype.itemsize > np.iinfo(np.intp).max:
        raise ValueError(f"{path}: IDX header {dims} is too large a shape for numpy")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def _read_exactly(f, expected: int, path: str) -> np.ndarray:
    """Read a stream of unknown length (gzip) that must hold exactly `expected` bytes -> uint8.

    The data goes straight into one np.empty buffer, whose pages take memory only as data lands
    in them: memory follows the data, not the header, and no second copy joins chunks (joining
    them doubled the peak memory of loading Fashion-MNIST).
    """
    try:
        buf = np.empty(expected, dtype=np.uint8)
    except MemoryError:
        buf = None  # not even reservable: count what the stream really holds, keep nothing
    total, step = 0, 1 << 20
    if buf is not None:
        view = memoryview(buf)
        while total < expected:
            got = f.readinto(view[total : total + step])
            if not got:
                break
            total += got
        if total == expected and f.read(1):
            total += 1
    else:
        while total <= expected:
            chunk = f.read(min(step, expected + 1 - total))
            if not chunk:
                break
            total += len(chunk)
    if total != expected:
        raise ValueError(
            f"{path}: IDX header needs {expected} bytes of data, the file has "
            f"{'only ' + str(total) if total < expected else 'more'} (truncated or lying header)"
        )
    if buf is None:
        raise MemoryError(f"{path}: {expected} bytes of IDX data do not fit in memory")
    return buf


def _find_idx(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _split_files(directory: str, split: str) -> list:
    """[images path, labels path] of a split ("train" or "t10k"), None where missing."""
    kinds = ("images-idx3", "labels-idx1")
    return [_find_idx(directory, f"{split}-{kind}-ubyte") for kind in kinds]


class MNIST(_InMemory):
    """MNIST from the four IDX files in a folder.

    Images are kept as uint8 `.raw` (N, 1, 28, 28); as float32 (batches, `ds[i]`, `.images`)
    they are in [0, 1], then, when `normalize`, normalised by the training split's mean and std
    (for the test split too).

    Args:
        root: the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each gzipped, .gz, or not).
        train: the training split (True) or the test split (False).
        normalize: normalise by the training split's mean and std; False leaves [0, 1].
    """

    MEAN, STD = MNIST_MEAN, MNIST_STD
    CLASSES = [str(i) for i in range(10)]

    def __init__(self, root, train=True, normalize=True):
        self._load(os.fspath(root), train, normalize)

    def _load(self, directory: str, train: bool, normalize: bool):
        split = "train" if train else "t10k"
        paths = _split_files(directory, split)
        if None in paths:
            raise FileNotFoundError(
                f"{type(self).__name__}: no {split}-images-idx3-ubyte[.gz] and "
                f"{split}-labels-idx1-ubyte[.gz] in {directory}"
            )
        raw, labels = read_idx(paths[0]), read_idx(paths[1])
        if raw.dtype != np.uint8 or raw.ndim != 3:
            raise ValueError(
                f"{paths[0]}: expected uint8 images (N,H,W), got {raw.dtype} {raw.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"{paths[1]}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
            )
        self.labels = _check_labels(labels, len(raw), len(self.CLASSES), paths[1])
        self.root = directory
        self.classes = list(self.CLASSES)
        mean, std = (self.MEAN, self.STD) if normalize else (0.0, 1.0)
        self._set_raw(raw[:, None], mean, std)  # (N, 1, H, W): a view, no copy
        self.preprocessing = _preprocessing(raw.shape[1:], 1, [mean], [std])


class FashionMNIST(MNIST):
    """Fashion-MNIST (60k train / 10k test, 28x28 grey, 10 classes), found or downloaded.

    Args:
        root: a folder holding the four IDX files (train-images-idx3-ubyte.gz,
            train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz;
            gzipped or not). When given, only this folder is searched, and a download goes
            there. When None, fastcnn looks in $FASTCNN_DATA, $FASTCNN_DATA/fashion-mnist,
            /usr/share/datasets/fashion-mnist (Debian's package dataset-fashion-mnist) and
            ~/.cache/fastcnn/fashion-mnist, in that order, and downloads into the last.
        train: the 60,000 training images (True) or the 10,000 test images (False).
        download: when the files are nowhere to be found, fetch the four official .gz files
            over HTTPS (base URL: $FASTCNN_FASHION_MNIST_URL, else FASHION_MNIST_URL), each
            checked against its SHA-256 (FASHION_MNIST_SHA256) before it is kept.
        normalize: normalise by the training split's mean and std (0.2860, 0.3530), for both
            splits; False leaves the pixels in [0, 1].

    Raises:
        FileNotFoundError: not found, and download=False.
        OSError: the download failed (no network, a refused connection, an HTTP error).
        Both messages say how else to get the files.

    Example:
        >>> train = FashionMNIST(train=True)
        >>> image, label = train[0]          # float32 (1, 28, 28), int
        >>> train.classes[label]
        'Ankle boot'
    """

    MEAN, STD = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    CLASSES = FASHION_MNIST_CLASSES

    def __init__(self, root=None, train=True, download=True, normalize=True):
        split = "train" if train else "t10k"
        dirs = _fashion_mnist_dirs(root)
        for d in dirs:
            if None not in _split_files(d, split):
                return self._load(d, train, normalize)
        target = dirs[0] if root is not None else dirs[-1]
        searched = root is None
        if not download:
            raise FileNotFoundError(
                f"FashionMNIST: not found in {', '.join(dirs)}; pass download=True to fetch it.\n"
                + _fashion_mnist_help(target, searched)
            )
        try:
            download_fashion_mnist(target)
        except OSError as e:
            raise type(e)(f"{e}\n{_fashion_mnist_help(target, searched)}") from e
        self._load(target, train, normalize)


def _fashion_mnist_help(directory: str, searched: bool) -> str:
    """How else to get Fashion-MNIST, for the errors of a failed download or a missing copy.
    searched: FashionMNIST was given no root, so it looks in $FASTCNN_DATA and Debian's folder."""
    files = ", ".join(FASHION_MNIST_FILES)
    lines = ["Other ways to get Fashion-MNIST:"]
    if searched:
        lines.append(f"  - Debian: apt-get install {DEBIAN_PACKAGE} (installs {DEBIAN_DIR})")
    lines.append(f"  - copy the four files {files} (or the same without .gz) into {directory}")
    if searched:
        lines[-1] += ", or into any folder and point FASTCNN_DATA at it"
    return "\n".join(lines)


def _fashion_mnist_dirs(root) -> list[str]:
    if root is not None:
        return [os.fspath(root)]
    dirs = []
    env = os.environ.get("FASTCNN_DATA")
    if env:
        dirs += [env, os.path.join(env, "fashion-mnist")]
    dirs.append(DEBIAN_DIR)
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "fastcnn", "fashion-mnist"))
    return dirs


def download_fashion_mnist(directory) -> str:
    """Fetch the Fashion-MNIST .gz files missing from `directory` (created if need be).

    Each file comes from $FASTCNN_FASHION_MNIST_URL (else FASHION_MNIST_URL) and is kept only
    once its length and SHA-256 are right. Returns `directory`. Raises OSError when a file
    cannot be fetched, ValueError when one arrives truncated or with the wrong digest.
    """
    directory = os.fspath(directory)
    base = os.environ.get("FASTCNN_FASHION_MNIST_URL") or FASHION_MNIST_URL
    os.makedirs(directory, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if _find_idx(directory, name[: -len(".gz")]) is None:
            url = base.rstrip("/") + "/" + name
            _download(url, os.path.join(directory, name), FASHION_MNIST_SHA256[name])
    return directory


def _download(url: str, dest: str, sha256: str) -> None:
    """Stream url to a temp file beside dest, check length and SHA-256, then rename.

    dest only ever appears complete and verified; every failure removes the temp file.
    """
    folder, name = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    declared = response.headers.get("Content-Length")
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, refused, ...
                raise OSError(f"could not download {url} to {dest}: {e}") from e
        # http.client returns a short body without complaint when the server hangs up early.
        if declared is not None and received != int(declared):
            raise ValueError(
                f"{dest}: truncated download from {url} ({received} of {declared} bytes)"
            )
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"{dest}: SHA-256 mismatch for {url} ({received} bytes): got {digest.hexdigest()}, "
                f"expected {sha256}; the file was not kept"
            )
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (binary version)
# ---------------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 R, 1024 G, 1024 B, row-major


class CIFAR10(_InMemory):
    """CIFAR-10 (50k train / 10k test, 32x32 RGB, 10 classes) from its binary version.

    The python version is a set of pickles and is refused: unpickling runs arbitrary code, and
    fastcnn never unpickles. Images are kept as uint8 `.raw` (N, 3, 32, 32); as float32 they are
    in [0, 1], normalised by the training set's per-channel mean/std when `normalize`.

    Args:
        root: a folder holding `cifar-10-batches-bin/`, or that folder itself
            (data_batch_1.bin ... data_batch_5.bin, test_batch.bin, batches.meta.txt).
        train: the five training batches (True) or the test batch (False).
        normalize: normalise per channel; False leaves [0, 1].
    """

    def __init__(self, root, train=True, normalize=True):
        directory = _cifar_dir(os.fspath(root))
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
        paths, counts = [], []
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CIFAR10: {path} is missing")
            size = os.path.getsize(path)
            if size == 0 or size % _CIFAR_RECORD:
                raise ValueError(
                    f"{path}: {size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                    "CIFAR-10 records (truncated?)"
                )
            paths.append(path)
            counts.append(size // _CIFAR_RECORD)
        # Filled one file at a time: at most one file (30 MB) is held besides the pixels.
        raw = np.empty((sum(counts), 3, 32, 32), dtype=np.uint8)
        labels = np.empty(len(raw), dtype=np.uint8)
        start = 0
        for path, count in zip(paths, counts):
            data = np.fromfile(path, dtype=np.uint8)
            if data.size != count * _CIFAR_RECORD:
                raise ValueError(f"{path}: the file changed while being read")
            rec = data.reshape(count, _CIFAR_RECORD)
            raw[start : start + count] = rec[:, 1:].reshape(count, 3, 32, 32)
            labels[start : start + count] = rec[:, 0]
            start += count
        self.root = directory
        self.classes = _cifar_classes(directory)
        self.labels = _check_labels(labels, len(raw), len(self.classes), directory)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if normalize else ((0.0,) * 3, (1.0,) * 3)
        self._set_raw(raw, mean, std)
        self.preprocessing = _preprocessing((32, 32), 3, mean, std)


def _cifar_dir(root: str) -> str:
    def has(d, *names):
        return any(os.path.isfile(os.path.join(d, n)) for n in names)

    for d in (os.path.join(root, "cifar-10-batches-bin"), root):
        if has(d, "data_batch_1.bin", "test_batch.bin"):
            return d
    for d in (os.path.join(root, "cifar-10-batches-py"), root):
        if has(d, "data_batch_1", "test_batch"):
            raise ValueError(
                f"CIFAR10: {d} holds the python version of CIFAR-10, which is pickle; fastcnn "
                "never unpickles (loading a pickle can run arbitrary code). Use the binary "
                "version instead (cifar-10-batches-bin/): "
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
            )
    raise FileNotFoundError(f"CIFAR10: no cifar-10-batches-bin/ with *.bin batches in {root}")


def _cifar_classes(directory: str) -> list[str]:
    meta = os.path.join(directory, "batches.meta.txt")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) == 10:
            return names
    return list(CIFAR10_CLASSES)


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


class DataLoader:
    """Iterate over a data set in batches: (images float32 (B, C, H, W), labels int64 (B,)).

    A data set with uint8 `.raw` (N,C,H,W), `.to_float` and `.labels` (fastcnn's, built from
    8-bit images): each batch gathers its pixels from `.raw` and converts only them, into a new
    array (the whole set is never converted). With float `.images` and `.labels` arrays: one
    gather. Anything else with len and [i]: sample by sample.

    Args:
        dataset: a data set (len() and [i] -> (image, label)).
        batch_size: images per batch, >= 1; the last batch may be smaller.
        shuffle: a new permutation every epoch, drawn from np.random.default_rng((seed,
            epoch)), so a seed gives a repeatable sequence of epochs and `set_epoch(e)`
            resumes at epoch e. Each `iter()` uses the current epoch, then advances it.
        seed: the shuffling seed; without one a random seed is drawn once, at construction.
        drop_last: leave out the last batch when it is smaller than batch_size.
        transform: augmentation for training (fastcnn.augment: RandomCrop, RandomHorizontalFlip,
            RandomResizedCrop, Compose), applied to each batch's uint8 pixels before they become
            float; needs a data set of uint8 pixels (`.raw`). Its random numbers come from
            np.random.default_rng((seed, epoch, batch)), so the batches repeat with the seed.
        prefetch: True builds the next batch in a background thread while this one is used;
            None (the default) does so only for data sets read sample by sample. An in-memory
            batch takes some 20 us to gather, nothing worth overlapping, and on a machine with
            as many busy compute threads as cores the extra thread preempts them (SeedNet
            trained 2.4x slower with it on 2 cores).

    Example:
        >>> for x, y in data.DataLoader(data.FashionMNIST(), batch_size=64, shuffle=True, seed=0):
        ...     print(x.shape, y.shape)          # (64, 1, 28, 28) (64,)
        ...     break
    """

    def __init__(
        self,
        dataset,
        batch_size=64,
        shuffle=False,
        seed=None,
        drop_last=False,
        prefetch=None,
        transform=None,
    ):
        ok = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
        if not ok or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else int(seed)
        self.drop_last = drop_last
        self.prefetch = prefetch
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable, got {type(transform)}")
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iter() yield epoch `epoch`'s order (with shuffle)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch):
        """The data set's indices in epoch `epoch`'s order."""
        n = len(self.dataset)
        if self.shuffle:
            return np.random.default_rng((self.seed, epoch)).permutation(n)
        return np.arange(n)

    def __iter__(self):
        order = self._order(self.epoch)
        epoch = self.epoch
        self.epoch += 1
        stops = range(0, len(self) * self.batch_size, self.batch_size)
        batches = (
            self._batch(order[i : i + self.batch_size], (self.seed, epoch, k))
            for k, i in enumerate(stops)
        )
        prefetch = self.prefetch
        if prefetch is None:
            prefetch = not isinstance(getattr(self.dataset, "labels", None), np.ndarray)
        return _prefetched(batches) if prefetch else batches

    def _batch(self, idx: np.ndarray, key):
        ds = self.dataset
        n = len(ds)
        labels = getattr(ds, "labels", None)
        if isinstance(labels, np.ndarray) and len(labels) == n:
            y = labels.take(idx).astype(np.int64, copy=False)
            # Checked before .images: on a uint8 data set, touching .images converts all of it.
            raw, to_float = getattr(ds, "raw", None), getattr(ds, "to_float", None)
            if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and len(raw) == n:
                if callable(to_float):
                    # One gather of B uint8 images, then one float32 conversion of just those.
                    pixels = raw.take(idx, axis=0)
                    if self.transform is not None:
                        pixels = self.transform(pixels, np.random.default_rng(key))
                    return to_float(pixels), y
            images = None if self.transform is not None else getattr(ds, "images", None)
            if isinstance(images, np.ndarray) and len(images) == n:
                # One gather; fancy indexing returns a fresh C-contiguous copy.
                return images.take(idx, axis=0).astype(np.float32, copy=False), y
        if self.transform is not None:
            raise TypeError(
                f"DataLoader: transform needs a data set of uint8 pixels (.raw), such as "
                f"fastcnn.data's; {type(ds).__name__} has none"
            )
        pairs = [ds[int(i)] for i in idx]
        x = np.stack([np.asarray(img, dtype=np.float32) for img, _ in pairs])
        y = np.asarray([label for _, label in pairs])
        if y.dtype.kind not in "iu":  # a cast to int64 would truncate 0.5 to class 0, silently
            raise TypeError(f"labels must be integers, got {y.dtype} labels {y[:4].tolist()}")
        return x, y.astype(np.int64, copy=False)


_END = object()


class _Failed:
    def __init__(self, exc):
        self.exc = exc


def _prefetched(batches):
    """Run the `batches` generator one batch ahead in a daemon thread (queue of 2).

    Abandoning the loop (break, exception, garbage collection) sets `stop`; the worker polls it
    while waiting for room in the queue, so it ends within ~0.1 s and never blocks exit.
    """
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))

    def consume():
        # Started on the first next(), so an iterator that is never used starts no thread.
        thread = threading.Thread(target=work, name="fastcnn-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    return consume()
