"""fastcnn: train convolutional neural networks for image recognition, fast, on a CPU."""

from __future__ import annotations

__version__ = "0.1.0"

try:
    from . import _C
except ImportError as e:  # a source checkout without the compiled extension
    raise ImportError(
        "fastcnn's C++ extension (fastcnn._C) is missing: install fastcnn with `pip install .` "
        "and import it from outside the source tree"
    ) from e

from . import cuda, data, models, nn, ops, optim
from .io import load, save
from .nn import manual_seed
from .train import evaluate, fit, predict


def set_num_threads(n: int) -> None:
    """Threads used by every kernel (default: FASTCNN_NUM_THREADS, else the number of cores)."""
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the kernels use."""
    return _C.get_num_threads()


__all__ = [
    "__version__",
    "cuda",
    "data",
    "models",
    "nn",
    "ops",
    "optim",
    "fit",
    "evaluate",
    "predict",
    "save",
    "load",
    "manual_seed",
    "set_num_threads",
    "get_num_threads",
]
