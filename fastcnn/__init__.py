"""fastcnn: train convolutional neural networks for image recognition, fast, on a CPU.

    import fastcnn
    from fastcnn import data, models

    model = models.seednet(in_channels=1, num_classes=10)
    fastcnn.fit(model, data.FashionMNIST(), epochs=8, val=data.FashionMNIST(train=False))
    fastcnn.save(model, "model.safetensors")
    probs = fastcnn.predict(fastcnn.load("model.safetensors"), "shoe.png")

Training and use:   fit, evaluate, predict, save, load, load_state_dict_from (PyTorch
                    weights), export_onnx, manual_seed (weight initialisation),
                    set_num_threads, get_num_threads
Modules:            data (data sets, DataLoader, augmentation, doctor), models (seednet,
                    resnet, resnet8, resnet20), nn (layers, Sequential, CrossEntropyLoss),
                    optim (SGD, Adam, AdamW, lr_scheduler), ops (the kernels on NumPy arrays),
                    plot (pictures, with the plot extra), io (training checkpoints),
                    distributed (data-parallel training under mpirun, with the
                    distributed extra), cuda (the GPU backend, when built)

Arrays are float32 NCHW; weights have PyTorch's names and shapes.
"""

from __future__ import annotations

__version__ = "0.1.0"

try:
    from . import _C
except ImportError as e:  # a source checkout without the compiled extension
    raise ImportError(
        "fastcnn's C++ extension (fastcnn._C) is missing: install fastcnn with `pip install .` "
        "and import it from outside the source tree"
    ) from e

from . import cuda, data, distributed, models, nn, ops, optim, plot
from .io import load, load_state_dict_from, save
from .nn import manual_seed
from .onnx_export import export_onnx
from .train import evaluate, fit, predict


def set_num_threads(n: int) -> None:
    """Set the number of threads every kernel uses.

    The default is $FASTCNN_NUM_THREADS when set, else the number of cores. Results do not
    depend on the thread count: every sum is taken in an order fixed by the shapes.

    Args:
        n: threads, >= 1.

    Example:
        >>> fastcnn.set_num_threads(1)
    """
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """Return the number of threads the kernels use (see set_num_threads)."""
    return _C.get_num_threads()


__all__ = [
    "__version__",
    "cuda",
    "data",
    "distributed",
    "models",
    "nn",
    "ops",
    "optim",
    "plot",
    "fit",
    "evaluate",
    "predict",
    "save",
    "load",
    "export_onnx",
    "load_state_dict_from",
    "manual_seed",
    "set_num_threads",
    "get_num_threads",
]
