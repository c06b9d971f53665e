"""Plain NumPy float64 references for every fastcnn kernel, forward directly above backward.

These are the oracle the C++ kernels are tested against: written for clarity, not speed, and
independent of fastcnn. Every function takes arrays of any float dtype, computes in float64 and
returns float64 (indices are int64). Layouts and conventions follow fastcnn.ops (and PyTorch):

- images NCHW, conv weight (O, C, kh, kw), linear weight (out, in);
- stride / padding / kernel_size are an int or an (h, w) pair;
- conv output size: OH = (H + 2*ph - kh) // sh + 1 (zero padding);
- pooling: no padding, floor mode; maxpool indices hold the flat index h*W + w of the max inside
  its (H, W) input plane, ties go to the first max in row-major window order;
- softmax cross-entropy returns the mean loss and dlogits = (softmax - onehot) / N.

The file ends with `assert_close`, the one tolerance rule all kernel tests share.
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided


def pair(v):
    """An int or an (h, w) pair -> (h, w) tuple of ints."""
    if isinstance(v, (tuple, list)):
        h, w = v
        return int(h), int(w)
    return int(v), int(v)


def out_size(size, kernel, stride, padding=0):
    return (size + 2 * padding - kernel) // stride + 1


def windows(xp, kh, kw, sh, sw):
    """View of shape (N, C, OH, OW, kh, kw): every kernel window of an (already padded) xp."""
    n, c, h, w = xp.shape
    oh = out_size(h, kh, sh)
    ow = out_size(w, kw, sw)
    s = xp.strides
    return as_strided(
        xp,
        shape=(n, c, oh, ow, kh, kw),
        strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]),
        writeable=False,
    )


# --------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------


def conv2d_forward(x, w, b=None, stride=1, padding=0, relu=False):
    """y[n,o,i,j] = b[o] + sum_{c,p,q} x_pad[n, c, i*sh + p, j*sw + q] * w[o,c,p,q]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.einsum("nchwpq,ocpq->nohw", windows(xp, kh, kw, sh, sw), w, optimize=True)
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    if relu:
        y = np.maximum(y, 0.0)
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0):
    """Gradients of sum(y * dy) for y = conv2d_forward(x, w, b): returns (dx, dw, db)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dy = np.asarray(dy, np.float64)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    kh, kw = w.shape[2:]
    oh, ow = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))

    db = dy.sum(axis=(0, 2, 3))
    dw = np.einsum("nohw,nchwpq->ocpq", dy, windows(xp, kh, kw, sh, sw), optimize=True)

    # Scatter every kernel tap back onto the padded input, then crop the padding away.
    dxp = np.zeros_like(xp)
    for p in range(kh):
        for q in range(kw):
            rows = slice(p, p + sh * (oh - 1) + 1, sh)
            cols = slice(q, q + sw * (ow - 1) + 1, sw)
            dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", dy, w[:, :, p, q])
    dx = dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# maxpool2d
# --------------------------------------------------------------------------------------------


def maxpool2d_forward(x, kernel_size, stride=None):
    """Returns (y, indices); indices are flat h*W + w positions inside each (H, W) plane."""
    x = np.asarray(x, np.float64)
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh), out_size(w, kw, sw)
    y = np.empty((n, c, oh, ow))
    indices = np.empty((n, c, oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(n, c, kh * kw)
            k = np.argmax(window, axis=2)  # first maximum in row-major window order
            y[:, :, i, j] = np.take_along_axis(window, k[:, :, None], axis=2)[:, :, 0]
            indices[:, :, i, j] = (i * sh + k // kw) * w + (j * sw + k % kw)
    return y, indices


def maxpool2d_backward(dy, indices, x_shape):
    """dx[n, c].flat[indices[n, c, i, j]] += dy[n, c, i, j] (overlapping windows add up)."""
    dy = np.asarray(dy, np.float64)
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    k = dy.shape[2] * dy.shape[3]
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    np.add.at(
        dx,
        (nn[:, :, None], cc[:, :, None], np.asarray(indices).reshape(n, c, k)),
        dy.reshape(n, c, k),
    )
    return dx.reshape(n, c, h, w)


# --------------------------------------------------------------------------------------------
# avgpool2d
# --------------------------------------------------------------------------------------------


def avgpool2d_forward(x, kernel_size, stride=None):
    x = np.asarray(x, np.float64)
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    return windows(x, kh, kw, sh, sw).mean(axis=(4, 5))


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None):
    dy = np.asarray(dy, np.float64)
    kh, kw = pair(kernel_size)
    sh, sw = pair(kernel_size if stride is None else stride)
    oh, ow = dy.shape[2:]
    dx = np.zeros(x_shape)
    for i in range(oh):
        for j in range(ow):
            dx[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw] += dy[
                :, :, i : i + 1, j : j + 1
            ] / (kh * kw)
    return dx


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------


def linear_forward(x, w, b=None, relu=False):
    """y = x @ w.T + b, x (N, in), w (out, in)."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    if b is not None:
        y = y + np.asarray(b, np.float64)
    if relu:
        y = np.maximum(y, 0.0)
    return y


def linear_backward(x, w, dy):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dy = np.asarray(dy, np.float64)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# --------------------------------------------------------------------------------------------
# relu
# --------------------------------------------------------------------------------------------


def relu_forward(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


def relu_backward(y, dy):
    """dx = dy where y > 0 else 0 (y is the forward *output*)."""
    return np.where(np.asarray(y) > 0, np.asarray(dy, np.float64), 0.0)


# --------------------------------------------------------------------------------------------
# softmax cross-entropy
# --------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Returns (mean loss as a Python float, dlogits = (softmax - target) / N), the target being
    1 - label_smoothing at the label plus label_smoothing / K everywhere (one-hot without)."""
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    n, k = z.shape
    z = z - z.max(axis=1, keepdims=True)  # stable: the largest logit becomes 0
    log_p = z - np.log(np.exp(z).sum(axis=1))[:, None]
    target = np.full((n, k), label_smoothing / k)
    target[np.arange(n), labels] += 1.0 - label_smoothing
    rows = -(1.0 - label_smoothing) * log_p[np.arange(n), labels]
    if label_smoothing:  # (without, a -inf logit elsewhere costs nothing, never 0 * -inf)
        rows = rows - label_smoothing / k * log_p.sum(axis=1)
    return float(np.mean(rows)), (np.exp(log_p) - target) / n


# --------------------------------------------------------------------------------------------
# batch normalisation, dropout
# --------------------------------------------------------------------------------------------


def batchnorm2d_forward(x, w=None, b=None, eps=1e-5, relu=False):
    """Training-mode batch norm: (y, mean, biased var) per channel, in float64."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    y = xhat * (1.0 if w is None else np.asarray(w, np.float64)[None, :, None, None])
    y = y + (0.0 if b is None else np.asarray(b, np.float64)[None, :, None, None])
    return (np.maximum(y, 0) if relu else y), mean, var


def batchnorm2d_backward(x, dy, w=None, b=None, eps=1e-5, relu=False):
    """(dx, dw, db) of batchnorm2d_forward, from the chain rule written out (float64)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    y, mean, var = batchnorm2d_forward(x, w, b, eps, relu)
    if relu:
        dy = np.where(y > 0, dy, 0.0)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
    db = dy.sum(axis=(0, 2, 3))
    dw = (dy * xhat).sum(axis=(0, 2, 3))
    g = 1.0 if w is None else np.asarray(w, np.float64)[None, :, None, None]
    dxhat = dy * g
    dx = (invstd[None, :, None, None] / m) * (
        m * dxhat
        - dxhat.sum(axis=(0, 2, 3), keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True)
    )
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# gemm
# --------------------------------------------------------------------------------------------


def sgemm(a, b, trans_a=False, trans_b=False):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------


def assert_close(got, ref, rtol=1e-4, name=""):
    """float32 kernel output vs float64 reference: rtol, plus an absolute floor scaled to ref."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    assert got.dtype == np.float32, f"{name}: dtype {got.dtype}, expected float32"
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=name)
