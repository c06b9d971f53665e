"""A stand-in device, "fake", for testing fastcnn's device plumbing on machines without a GPU.

Its arrays hold numpy arrays inside but refuse to be used as numpy arrays (no implicit
conversion, no numpy arithmetic), like fastcnn.cuda.DeviceArray; its kernels are fastcnn's CPU
kernels behind the CUDA kernels' interface (fastcnn._C.cuda): the same functions, refusing numpy
arguments, returning the loss as a 0-d float32 array. So a model moved to "fake" runs every line
of the Python layer that a model on "cuda" runs, and any place that treats a device array as a
numpy array, or hands a numpy array to a device op, fails here as it would on a GPU.
"""

from __future__ import annotations

import sys

import numpy as np

from fastcnn import _C, ops

DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64)}


class DeviceArray:
    __array_ufunc__ = None  # numpy arithmetic with it raises TypeError, as with a GPU array
    device = "fake"

    def __init__(self, array, _share=False):
        array = array if _share else np.array(array, order="C")
        if array.dtype not in DTYPES:
            raise TypeError(f"fake device: unsupported dtype {array.dtype}")
        self._a = array

    def __array__(self, *args, **kwargs):
        raise TypeError("a fake-device array used as a numpy array: call .numpy()")

    @property
    def shape(self):
        return self._a.shape

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def dtype(self):
        return self._a.dtype

    def __len__(self):
        return len(self._a)

    def __float__(self):
        if self._a.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        return float(self._a.reshape(()))

    def numpy(self):
        return self._a.copy()

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return DeviceArray(self._a.reshape(shape), _share=True)

    def copy_from(self, src):
        src = src._a if isinstance(src, DeviceArray) else np.asarray(src)
        if src.shape != self._a.shape:
            raise ValueError(f"copy_from: shape {src.shape} into {self._a.shape}")
        np.copyto(self._a, src, casting="same_kind")

    def __iadd__(self, other):
        if not isinstance(other, DeviceArray):
            raise TypeError(f"fake device: += a {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"fake device: += shape {other.shape} to {self.shape}")
        self._a += other._a
        return self

    def zero_(self):
        self._a[...] = 0

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device='fake')"


def _unwrap(name, value):
    if isinstance(value, np.ndarray):
        raise TypeError(f"{name}: a numpy array handed to a fake-device op")
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(name, v) for v in value)
    return value


def _wrap(value):
    if isinstance(value, np.ndarray):
        return DeviceArray(value, _share=True)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


def _op(name):
    cpu = getattr(_C, name)

    def run(*args, **kwargs):
        args = [_unwrap(f"{name} argument {i}", a) for i, a in enumerate(args)]
        kwargs = {k: _unwrap(f"{name} {k}", v) for k, v in kwargs.items()}
        return _wrap(cpu(*args, **kwargs))

    run.__name__ = name
    return run


OPS = [
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "linear_forward",
    "linear_backward",
    "relu_forward",
    "relu_backward",
    "sgd_step",
    "adam_step",
    "sgemm",
]
for _name in OPS:
    globals()[_name] = _op(_name)


def softmax_cross_entropy(logits, labels, out=None, label_smoothing=0.0):
    loss, d = _op("softmax_cross_entropy")(logits, labels, out, label_smoothing)
    return DeviceArray(np.array(loss, np.float32)), d  # the loss stays "on the device"


def batch_stats(logits, labels, loss, stats):
    z, y = _unwrap("logits", logits), _unwrap("labels", labels)
    s = _unwrap("stats", stats)
    s[0] += float(_unwrap("loss", loss)) * len(y)
    s[1] += int((z.argmax(1) == y).sum())


def empty(shape, dtype="float32"):
    return DeviceArray(np.empty(shape, dtype))


def zeros(shape, dtype="float32"):
    return DeviceArray(np.zeros(shape, dtype))


def register():
    """Makes "fake" a device fastcnn knows (model.to("fake"), ops.to_device(a, "fake"))."""
    ops._register_device("fake", sys.modules[__name__])
