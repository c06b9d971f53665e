"""The kernels, as NumPy functions: float32 NCHW arrays in, new arrays out.

Each function checks nothing that the C++ binding checks again; it only turns Python-level
conveniences (an int or a pair for stride and padding, non-contiguous arrays, any integer dtype
for labels) into the exact arguments fastcnn._C expects. Float arrays must already be float32:
a float64 array is refused with a TypeError rather than silently copied on every call.

Kernels overwrite their outputs and never accumulate into them; gradient accumulation, where
wanted, happens in Python (``Parameter.grad``). Functions that take ``out=`` write there instead
of allocating, so a training step can reuse its buffers.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _C

__all__ = [
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
    "softmax_cross_entropy",
    "sgemm",
    "set_conv_algorithm",
    "conv_algorithm",
    "gemm_kernels",
    "gemm_kernel",
    "set_gemm_kernel",
]


def _pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _f32(a, name: str):
    """Contiguous float32 view of `a`; refuses other dtypes (naming the argument)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
        if a.dtype == np.float64:  # a Python list or scalar: take it as float32
            a = a.astype(np.float32)
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype} (convert with .astype(np.float32))")
    return np.ascontiguousarray(a)


def _labels(labels, n: int):
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    return np.ascontiguousarray(labels, dtype=np.int64)


# ---- conv2d -------------------------------------------------------------------------------------


def conv2d_forward(x, w, b=None, stride=1, padding=0, relu=False, out=None):
    """y = conv2d(x, w) + b (optionally ReLU'd). x (N,C,H,W), w (O,C,kh,kw), b (O,) or None."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    return _C.conv2d_forward(_f32(x, "x"), _f32(w, "w"), _f32(b, "b"), sh, sw, ph, pw, relu, out)


def conv2d_backward(x, w, dy, stride=1, padding=0, need_dx=True, out=None):
    """Gradients of conv2d: (dx or None, dw, db), given the forward's x, w and dy = dL/dy.

    out: optional (dx, dw, db) buffers to write into (dx may be None).
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dx_out, dw_out, db_out = out if out is not None else (None, None, None)
    return _C.conv2d_backward(
        _f32(x, "x"), _f32(w, "w"), _f32(dy, "dy"), sh, sw, ph, pw, need_dx, dx_out, dw_out, db_out
    )


# ---- pool2d -------------------------------------------------------------------------------------


def _pool_args(kernel_size, stride):
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride")
    return kh, kw, sh, sw


def _shape4(x_shape):
    shape = tuple(x_shape)
    if len(shape) != 4 or not all(isinstance(d, numbers.Integral) for d in shape):
        raise ValueError(f"x_shape must be 4 integers (N, C, H, W), got {x_shape!r}")
    return [int(d) for d in shape]


def maxpool2d_forward(x, kernel_size, stride=None, relu=False, out=None):
    """Max-pooling: (y, indices); indices (int32) hold h*W + w of each max in its input plane.

    relu=True gives max(0, y), the same as pooling a ReLU'd x, at a quarter of the work.
    out: optional (y, indices) buffers.
    """
    y_out, idx_out = out if out is not None else (None, None)
    return _C.maxpool2d_forward(
        _f32(x, "x"), *_pool_args(kernel_size, stride), relu, y_out, idx_out
    )


def maxpool2d_backward(dy, indices, x_shape, y=None, out=None):
    """dx of max-pooling: each dy added at the input position its index names.

    y: the forward output when it was computed with relu=True (dy is masked where y <= 0).
    """
    indices = np.asarray(indices)
    if indices.dtype != np.int32 and np.issubdtype(indices.dtype, np.integer):
        # Range-check before narrowing, or 2**32 + 5 would wrap to a valid-looking 5.
        if indices.size and (indices.min() < 0 or indices.max() > np.iinfo(np.int32).max):
            raise ValueError("indices out of range for the input plane (see maxpool2d_forward)")
        indices = indices.astype(np.int32)
    return _C.maxpool2d_backward(
        _f32(dy, "dy"), np.ascontiguousarray(indices), _shape4(x_shape), _f32(y, "y"), out
    )


def avgpool2d_forward(x, kernel_size, stride=None, out=None):
    """Average pooling over kernel_size windows (no padding, floor mode)."""
    return _C.avgpool2d_forward(_f32(x, "x"), *_pool_args(kernel_size, stride), out)


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, out=None):
    """dx of average pooling: each dy spread evenly over its window."""
    return _C.avgpool2d_backward(
        _f32(dy, "dy"), _shape4(x_shape), *_pool_args(kernel_size, stride), out
    )


# ---- linear -------------------------------------------------------------------------------------


def linear_forward(x, w, b=None, relu=False, out=None):
    """y = x @ w.T + b (optionally ReLU'd). x (N,in), w (out,in), b (out,) or None."""
    return _C.linear_forward(_f32(x, "x"), _f32(w, "w"), _f32(b, "b"), relu, out)


def linear_backward(x, w, dy, need_dx=True, out=None):
    """Gradients of linear: (dx or None, dw, db); out: optional (dx, dw, db) buffers."""
    dx_out, dw_out, db_out = out if out is not None else (None, None, None)
    return _C.linear_backward(
        _f32(x, "x"), _f32(w, "w"), _f32(dy, "dy"), need_dx, dx_out, dw_out, db_out
    )


# ---- activation ---------------------------------------------------------------------------------


def relu_forward(x, out=None):
    """y = max(x, 0), any shape."""
    return _C.relu_forward(_f32(x, "x"), out)


def relu_backward(y, dy, out=None):
    """dx = dy where the forward output y > 0, else 0."""
    return _C.relu_backward(_f32(y, "y"), _f32(dy, "dy"), out)


# ---- loss ---------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, out=None):
    """(mean cross-entropy of softmax(logits) against labels, d(mean)/d(logits))."""
    logits = _f32(logits, "logits")
    loss, dlogits = _C.softmax_cross_entropy(logits, _labels(labels, len(logits)), out)
    return float(loss), dlogits


# ---- gemm ---------------------------------------------------------------------------------------


def sgemm(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) on fastcnn's SGEMM (the engine under conv2d and linear)."""
    return _C.sgemm(_f32(a, "a"), _f32(b, "b"), trans_a, trans_b)


def set_conv_algorithm(name: str) -> None:
    """ "auto" (default: the indirect NHWC kernels where they apply) or "im2col" (the reference
    path: im2col + SGEMM, col2im), for tests and benchmarks."""
    _C.set_conv_algorithm(name)


def conv_algorithm() -> str:
    return _C.conv_algorithm()


def gemm_kernels() -> list[str]:
    """The GEMM micro-kernels this CPU can run, best first."""
    return list(_C.gemm_kernels())


def gemm_kernel() -> str:
    """The GEMM micro-kernel in use."""
    return _C.gemm_kernel()


def set_gemm_kernel(name: str) -> None:
    """Force a GEMM micro-kernel ("avx512", "avx2", "generic"); ValueError if unsupported."""
    _C.set_gemm_kernel(name)
