"""The kernels, as NumPy functions: float32 NCHW arrays in, new arrays out; and their dispatch.

Each function checks nothing that the C++ binding checks again; it only turns Python-level
conveniences (an int or a pair for stride and padding, non-contiguous arrays, any integer dtype
for labels) into the exact arguments fastcnn._C expects. Float arrays must already be float32:
a float64 array is refused with a TypeError rather than silently copied on every call.

Kernels overwrite their outputs and never accumulate into them; gradient accumulation, where
wanted, happens in Python (``Parameter.grad``). Functions that take ``out=`` write there instead
of allocating, so a training step can reuse its buffers.

Dispatch: numpy arrays run on the CPU kernels (fastcnn._C). Arrays of a device (a
``fastcnn.cuda.DeviceArray``, made by ``to_device`` or ``model.to("cuda")``) run on that device's
kernels (fastcnn._C.cuda: the same functions, the same arguments). All the arrays of one call
must be on one device; the results stay there.
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
    "batchnorm2d_forward",
    "batchnorm2d_forward_eval",
    "batchnorm2d_backward",
    "add",
    "add_relu",
    "dropout_forward",
    "dropout_backward",
    "sgemm",
    "set_conv_algorithm",
    "conv_algorithm",
    "gemm_kernels",
    "gemm_kernel_table",
    "gemm_kernel",
    "set_gemm_kernel",
    "device_of",
    "to_device",
    "to_numpy",
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


# ---- devices ------------------------------------------------------------------------------------

# name -> kernel module of each device besides the CPU. A kernel module has _C's op functions
# plus DeviceArray (its array type: created from a numpy array, `.numpy()` copies back),
# empty(shape, dtype), zeros(shape, dtype) and batch_stats(logits, labels, loss, stats).
_devices: dict = {}
_array_types: dict = {}  # DeviceArray type -> device name


def _register_device(name: str, kernels) -> None:
    _devices[name] = kernels
    _array_types[kernels.DeviceArray] = name


if getattr(_C, "has_cuda", False):
    _register_device("cuda", _C.cuda)


def device_of(a) -> str:
    """ "cpu" for numpy arrays (and anything numpy takes), else the device the array lives on."""
    return _array_types.get(type(a), "cpu")


def _device(name) -> str:
    """A device name, checked: "cpu", or a device this build has (and, for cuda, a GPU)."""
    name = str(name)
    if name == "cpu" or (name in _devices and name != "cuda"):
        return name
    if name == "cuda":
        from . import cuda

        cuda.require()
        return name
    raise ValueError(f"unknown device {name!r}: expected 'cpu' or 'cuda'")


def to_device(a, device: str):
    """`a` on `device` ("cpu" or "cuda"): the same array when it is there already, else a copy
    (same dtype: float32 for what the ops take, int64 labels)."""
    device = _device(device)
    here = device_of(a)
    if here == device:
        return a
    if here != "cpu":
        a = a.numpy()
    if device == "cpu":
        return a
    return _devices[device].DeviceArray(np.ascontiguousarray(a))


def to_numpy(a) -> np.ndarray:
    """A numpy array with the values of `a` (`a` itself when it is one)."""
    return a if device_of(a) == "cpu" else a.numpy()


def empty(shape, dtype, like):
    """An uninitialised array on the device of `like`."""
    device = device_of(like)
    if device == "cpu":
        return np.empty(shape, dtype)
    return _devices[device].empty(tuple(shape), np.dtype(dtype).name)


def zeros_like(a):
    device = device_of(a)
    if device == "cpu":
        return np.zeros_like(a)
    return _devices[device].zeros(tuple(a.shape), np.dtype(a.dtype).name)


def copy_into(dst, src) -> None:
    """dst[...] = src for a float32 dst on any device and a numpy (or same-device) src."""
    if device_of(dst) == "cpu":
        np.copyto(dst, to_numpy(src), casting="same_kind")
    else:
        dst.copy_from(src)


def _kernels(_inout=(), **arrays):
    """The kernel module for these arrays (None ones aside), after checking they share a device;
    numpy arrays come back as contiguous float32 (see _f32) for the CPU kernels, except those
    named in _inout: arrays updated in place go as they are (the kernel checks them; a converted
    copy would take the update)."""
    # Plain numpy arrays (the usual case) skip the device bookkeeping.
    if not all(type(a) is np.ndarray or a is None for a in arrays.values()):
        devices = {name: device_of(a) for name, a in arrays.items() if a is not None}
        kinds = set(devices.values())
        if len(kinds) > 1:
            where = ", ".join(f"{name} on {d}" for name, d in devices.items())
            raise TypeError(
                f"arrays on different devices ({where}): move them to one device "
                "(fastcnn.ops.to_device, or model.to(device))"
            )
        device = kinds.pop() if kinds else "cpu"
        if device != "cpu":
            return _devices[device], list(arrays.values())
    return _C, [a if name in _inout else _f32(a, name) for name, a in arrays.items()]


# ---- conv2d -------------------------------------------------------------------------------------


def conv2d_forward(x, w, b=None, stride=1, padding=0, relu=False, out=None):
    """2-D convolution (cross-correlation, as PyTorch's conv2d), plus bias, optionally ReLU'd.

    Args:
        x: input, float32 (N, C, H, W).
        w: filters, float32 (O, C, kh, kw).
        b: bias, float32 (O,), or None.
        stride: int or (sh, sw).
        padding: int or (ph, pw): zeros on each side.
        relu: apply max(y, 0) in the same pass.
        out: optional float32 (N, O, OH, OW) array to write y into.

    Returns:
        y, float32 (N, O, OH, OW), OH = (H + 2*ph - kh) // sh + 1, OW likewise.

    Example:
        >>> y = ops.conv2d_forward(x, w, b, stride=1, padding=2)
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    k, (x, w, b) = _kernels(x=x, w=w, b=b)
    return k.conv2d_forward(x, w, b, sh, sw, ph, pw, relu, out)


def conv2d_backward(x, w, dy, stride=1, padding=0, need_dx=True, out=None, add_dx=False):
    """Gradients of conv2d_forward (without relu) for dy = dL/dy.

    Args:
        x, w, stride, padding: as given to conv2d_forward.
        dy: float32 (N, O, OH, OW), the gradient of the loss with respect to y.
        need_dx: compute dx (False for a network's first layer).
        out: optional (dx, dw, db) arrays to write into (any may be None).
        add_dx: add the input gradient into out's dx instead of overwriting it (CPU only): a
            residual block's two branches summed where they meet, a strided 1x1 shortcut
            touching only the pixels it reads.

    Returns:
        (dx (N, C, H, W) or None, dw (O, C, kh, kw), db (O,)), float32; dw and db
        overwritten, never accumulated into.
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dx_out, dw_out, db_out = out if out is not None else (None, None, None)
    if add_dx:  # the kernel checks that need_dx and dx_out are given
        _cpu_only("conv2d_backward with add_dx", x=x, w=w, dy=dy, dx=dx_out)
    k, (x, w, dy) = _kernels(x=x, w=w, dy=dy)
    args = (x, w, dy, sh, sw, ph, pw, need_dx, dx_out, dw_out, db_out)
    return k.conv2d_backward(*args, True) if add_dx else k.conv2d_backward(*args)


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
    """Max-pooling over kernel_size windows (no padding, floor mode).

    Args:
        x: float32 (N, C, H, W).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); defaults to kernel_size.
        relu: return max(0, y), the same as pooling a ReLU'd x, at a quarter of the work.
        out: optional (y, indices) arrays to write into.

    Returns:
        (y float32 (N, C, OH, OW), indices int32 (N, C, OH, OW)): each index is h*W + w of
        the maximum in its input plane, ties to the first.
    """
    y_out, idx_out = out if out is not None else (None, None)
    k, (x,) = _kernels(x=x)
    return k.maxpool2d_forward(x, *_pool_args(kernel_size, stride), relu, y_out, idx_out)


def maxpool2d_backward(dy, indices, x_shape, y=None, out=None):
    """Gradient of max-pooling: each dy added at the input position its index names.

    Args:
        dy: float32 (N, C, OH, OW).
        indices: the indices maxpool2d_forward returned (checked: each must lie in its plane).
        x_shape: the input's shape (N, C, H, W).
        y: the forward output when it was computed with relu=True (dy is masked where y <= 0).
        out: optional float32 array of x_shape to write dx into.

    Returns:
        dx, float32 of x_shape.
    """
    k, (dy, y) = _kernels(dy=dy, y=y)
    if k is not _C:  # the device kernel skips indices outside their plane
        return k.maxpool2d_backward(dy, indices, _shape4(x_shape), y, out)
    indices = np.asarray(indices)
    if indices.dtype != np.int32 and np.issubdtype(indices.dtype, np.integer):
        # Range-check before narrowing, or 2**32 + 5 would wrap to a valid-looking 5.
        if indices.size and (indices.min() < 0 or indices.max() > np.iinfo(np.int32).max):
            raise ValueError("indices out of range for the input plane (see maxpool2d_forward)")
        indices = indices.astype(np.int32)
    return _C.maxpool2d_backward(dy, np.ascontiguousarray(indices), _shape4(x_shape), y, out)


def avgpool2d_forward(x, kernel_size, stride=None, out=None):
    """Average pooling over kernel_size windows (no padding, floor mode).

    Args:
        x: float32 (N, C, H, W).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); defaults to kernel_size.
        out: optional float32 (N, C, OH, OW) array to write into.

    Returns:
        y, float32 (N, C, OH, OW).
    """
    k, (x,) = _kernels(x=x)
    return k.avgpool2d_forward(x, *_pool_args(kernel_size, stride), out)


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, out=None):
    """Gradient of average pooling: each dy spread evenly over its window.

    Args:
        dy: float32 (N, C, OH, OW).
        x_shape: the input's shape (N, C, H, W).
        kernel_size, stride: as given to avgpool2d_forward.
        out: optional float32 array of x_shape to write dx into.

    Returns:
        dx, float32 of x_shape.
    """
    k, (dy,) = _kernels(dy=dy)
    return k.avgpool2d_backward(dy, _shape4(x_shape), *_pool_args(kernel_size, stride), out)


# ---- linear -------------------------------------------------------------------------------------


def linear_forward(x, w, b=None, relu=False, out=None):
    """Fully connected layer: y = x @ w.T + b, optionally ReLU'd.

    Args:
        x: float32 (N, in).
        w: float32 (out, in).
        b: float32 (out,), or None.
        relu: apply max(y, 0) in the same pass.
        out: optional float32 (N, out) array to write y into.

    Returns:
        y, float32 (N, out).
    """
    k, (x, w, b) = _kernels(x=x, w=w, b=b)
    return k.linear_forward(x, w, b, relu, out)


def linear_backward(x, w, dy, need_dx=True, out=None):
    """Gradients of linear_forward (without relu) for dy = dL/dy, float32 (N, out).

    Args:
        x, w: as given to linear_forward.
        dy: float32 (N, out).
        need_dx: compute dx.
        out: optional (dx, dw, db) arrays to write into (any may be None).

    Returns:
        (dx (N, in) or None, dw (out, in), db (out,)), float32.
    """
    dx_out, dw_out, db_out = out if out is not None else (None, None, None)
    k, (x, w, dy) = _kernels(x=x, w=w, dy=dy)
    return k.linear_backward(x, w, dy, need_dx, dx_out, dw_out, db_out)


# ---- activation ---------------------------------------------------------------------------------


def relu_forward(x, out=None):
    """y = max(x, 0), element-wise, any shape (NaN stays NaN); out: optional array for y."""
    k, (x,) = _kernels(x=x)
    return k.relu_forward(x, out)


def relu_backward(y, dy, out=None):
    """Gradient of ReLU: dx = dy where the forward output y > 0, else 0; out: optional array
    for dx."""
    k, (y, dy) = _kernels(y=y, dy=dy)
    return k.relu_backward(y, dy, out)


# ---- batch normalisation and dropout (CPU kernels only) -----------------------------------------


def _cpu_only(op, **arrays):
    for name, a in arrays.items():
        if a is not None and device_of(a) != "cpu":
            raise NotImplementedError(
                f"{op} has no {device_of(a)} kernel yet ({name} is on {device_of(a)}): "
                "keep models with this layer on the CPU"
            )


def batchnorm2d_forward(x, weight, bias, eps=1e-5, relu=False, out=None, residual=None):
    """Batch normalisation of x (N, C, H, W) by its own per-channel statistics (training mode).

    Args:
        x: float32 (N, C, H, W).
        weight, bias: float32 (C,) each, or None (no affine transform).
        eps: added to the variance, > 0.
        relu: apply max(0, .) to the output (a BatchNorm2d followed by a ReLU).
        out: optional float32 array of x's shape to write y into.
        residual: optional float32 array of x's shape added before the ReLU (a ResNet block's
            shortcut).

    Returns:
        (y, mean, invstd, var): the output, and per channel the batch mean, 1/sqrt(var + eps)
        and the biased variance, float32 (C,) each.
    """
    _cpu_only("batchnorm2d_forward", x=x)
    return _C.batchnorm2d_forward(_f32(x, "x"), weight, bias, eps, relu, out, residual)


def batchnorm2d_forward_eval(x, scale, shift, relu=False, out=None, residual=None):
    """y = x * scale[c] + shift[c] (+ residual) per channel, then max(0, .) with relu (eval-mode
    batch normalisation, folded)."""
    _cpu_only("batchnorm2d_forward_eval", x=x)
    return _C.batchnorm2d_forward_eval(_f32(x, "x"), scale, shift, relu, out, residual)


def add(a, b, out=None):
    """a + b, float32, over the threads; out may be a itself."""
    _cpu_only("add", a=a, b=b)
    return _C.add(_f32(a, "a"), _f32(b, "b"), False, out)


def add_relu(a, b, out=None):
    """max(0, a + b), float32; out may be a itself."""
    _cpu_only("add_relu", a=a, b=b)
    return _C.add(_f32(a, "a"), _f32(b, "b"), True, out)


def batchnorm2d_backward(
    x,
    dy,
    y,
    mean,
    invstd,
    weight,
    need_dx=True,
    need_affine=True,
    dx_out=None,
    masked_dy_out=None,
    relu=False,
    bias=None,
):
    """Gradients of training-mode batch normalisation.

    Args:
        x, dy: float32 (N, C, H, W): the forward input and d(loss)/d(output).
        y: the forward output when it was computed with relu=True, else None. With a residual
            it is needed for the ReLU's mask; without one, relu=True and bias do instead.
        mean, invstd: what batchnorm2d_forward returned.
        weight: (C,) or None.
        masked_dy_out: with a mask (y, or relu), an array of x's shape that receives dy through
            the ReLU's mask (what a residual block's shortcut gets).
        relu: with y None, the forward had relu=True and no residual: the mask is recomputed
            from x, mean, invstd, weight and bias (the forward's), exactly as the forward
            computed it, so that y need not be read.
        bias: (C,) or None, the forward's.

    Returns:
        (dx or None, dweight or None, dbias or None).
    """
    _cpu_only("batchnorm2d_backward", x=x, dy=dy)
    return _C.batchnorm2d_backward(
        _f32(x, "x"),
        _f32(dy, "dy"),
        y,
        mean,
        invstd,
        weight,
        need_dx,
        need_affine,
        dx_out,
        masked_dy_out,
        relu,
        bias,
    )


def dropout_forward(x, p, seed, out=None):
    """Inverted dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p).

    Returns:
        (y, mask): the output and the uint8 keep mask (x's shape) backward needs; the same
        (x, p, seed) always gives the same mask.
    """
    _cpu_only("dropout_forward", x=x)
    return _C.dropout_forward(_f32(x, "x"), p, seed, out)


def dropout_backward(dy, mask, p, out=None):
    """dx = dy / (1 - p) where the mask kept the element, else 0."""
    _cpu_only("dropout_backward", dy=dy)
    return _C.dropout_backward(_f32(dy, "dy"), mask, p, out)


# ---- loss ---------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, out=None, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against labels, and its gradient.

    Args:
        logits: float32 (N, classes).
        labels: (N,) class indices in [0, classes) (ValueError otherwise), any integer
            dtype (TypeError otherwise).
        out: optional float32 (N, classes) array to write the gradient into.
        label_smoothing: in [0, 1]: the target is 1 - label_smoothing at the label plus
            label_smoothing / classes everywhere (PyTorch's CrossEntropyLoss argument).

    Returns:
        (loss, dlogits): the mean loss and d(loss)/d(logits), float32 (N, classes).

    On the CPU the loss is a float. On a device it is a 0-d array left there (float(loss) reads
    it), and labels must be an int64 array on that device; a label out of range gives a NaN loss
    there rather than an error (checking it would mean a round trip to the host)."""
    if device_of(logits) != "cpu":
        k, (logits, labels) = _kernels(logits=logits, labels=labels)
        return k.softmax_cross_entropy(logits, labels, out, label_smoothing)
    logits = _f32(logits, "logits")
    loss, dlogits = _C.softmax_cross_entropy(
        logits, _labels(labels, len(logits)), out, label_smoothing
    )
    return float(loss), dlogits


def batch_stats(logits, labels, loss, stats) -> None:
    """stats += (loss * len(labels), number of rows whose largest logit is the label's), in
    place, on the device of logits (stats: float64 (2,) there). The training loop's tally."""
    if device_of(logits) == "cpu":
        stats[0] += loss * len(labels)
        stats[1] += int((np.asarray(logits).argmax(1) == labels).sum())
        return
    k, (logits, labels, loss, stats) = _kernels(
        ("labels", "stats"), logits=logits, labels=labels, loss=loss, stats=stats
    )
    k.batch_stats(logits, labels, loss, stats)


# ---- optimizer updates --------------------------------------------------------------------------


def sgd_step(param, grad, momentum_buffer, lr, momentum, weight_decay, nesterov, first) -> None:
    """One SGD update of `param` in place (see fastcnn.optim.SGD)."""
    k, (param, grad, momentum_buffer) = _kernels(
        ("param", "momentum_buffer"), param=param, grad=grad, momentum_buffer=momentum_buffer
    )
    k.sgd_step(param, grad, momentum_buffer, lr, momentum, weight_decay, nesterov, first)


def adam_step(
    param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, decoupled=False
) -> None:
    """One Adam update of `param` in place (see fastcnn.optim.Adam); decoupled: AdamW's weight
    decay (see fastcnn.optim.AdamW)."""
    k, (param, grad, exp_avg, exp_avg_sq) = _kernels(
        ("param", "exp_avg", "exp_avg_sq"),
        param=param,
        grad=grad,
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
    )
    k.adam_step(
        param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, decoupled
    )


# ---- gemm ---------------------------------------------------------------------------------------


def sgemm(a, b, trans_a=False, trans_b=False):
    """Matrix product op(a) @ op(b) on fastcnn's SGEMM (the engine under conv2d and linear).

    Args:
        a: float32 (M, K), or (K, M) with trans_a.
        b: float32 (K, N), or (N, K) with trans_b.
        trans_a, trans_b: use the transpose of a, of b.

    Returns:
        float32 (M, N).
    """
    k, (a, b) = _kernels(a=a, b=b)
    return k.sgemm(a, b, trans_a, trans_b)


def set_conv_algorithm(name: str) -> None:
    """ "auto" (default: Winograd's F(2x2, 5x5) for 5x5 stride-1 layers, F(4x4, 3x3) for 3x3
    stride-1 ones (F(2x2, 3x3) for a weight gradient whose output 4x4 blocks would cover with
    more waste), and the indirect NHWC kernels where they apply),
    "indirect" (the same without Winograd) or "im2col" (the reference path: im2col + SGEMM,
    col2im), for tests and benchmarks."""
    _C.set_conv_algorithm(name)


def conv_algorithm() -> str:
    """The convolution algorithm in use: "auto", "indirect" or "im2col" (see
    set_conv_algorithm)."""
    return _C.conv_algorithm()


def gemm_kernels() -> list[str]:
    """The GEMM micro-kernels this CPU can run, best first, then the portable twins of the ISA
    kernels ("generic-avx512", "generic-avx2": plain C++ at those kernels' geometry, for tests)."""
    return list(_C.gemm_kernels())


def gemm_kernel_table() -> list[dict]:
    """Every micro-kernel this build has, as dicts: name, the ISA it needs ("" for portable
    ones), whether this CPU runs it (`supported`), its GEMM tile (mr x nr), convolution tile
    (cmr x cnr) and cache blocks (kc, mc). FASTCNN_DISABLE_ISA=avx512 (or "avx512,avx2") in the
    environment before fastcnn is imported makes those ISAs count as missing."""
    return list(_C.gemm_kernel_table())


def gemm_kernel() -> str:
    """The GEMM micro-kernel in use."""
    return _C.gemm_kernel()


def set_gemm_kernel(name: str) -> None:
    """Force a GEMM micro-kernel (a name from gemm_kernels()); ValueError if unsupported."""
    _C.set_gemm_kernel(name)
