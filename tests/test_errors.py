"""Bad input raises a TypeError / ValueError that names the argument; nothing crashes.

The table-driven part checks each documented error; the fuzz part throws random shapes, dtypes
and hyper-parameters at the ops and requires either a correct answer or a clean exception.
"""

import re

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcnn import ops


def f32(*shape):
    return np.ones(shape, np.float32)


def maxpool_backward_with_one_index(shape, at, value):
    """maxpool2d_backward of a 2x2 pool over (N, C, 2H, 2W) inputs whose indices, shaped
    (N, C, H, W), are all 0 but the flat position `at`, which holds `value`."""
    indices = np.zeros(shape, np.int32)
    indices.flat[at] = value
    n, c, h, w = shape
    return ops.maxpool2d_backward(f32(*shape), indices, (n, c, 2 * h, 2 * w))


def typed(dtype, *shape):
    return np.ones(shape, dtype)


X = f32(2, 3, 9, 8)
W = f32(4, 3, 3, 3)
B = f32(4)
DY = f32(2, 4, 7, 6)  # conv2d(X, W) output, stride 1, padding 0

# Each case: (id, call, exception type, regex the message must match)
CASES = [
    # ---- conv2d_forward ----
    (
        "conv x float64",
        lambda: ops.conv2d_forward(typed(np.float64, 2, 3, 9, 8), W, B),
        TypeError,
        r"\bx\b",
    ),
    (
        "conv x float16",
        lambda: ops.conv2d_forward(typed(np.float16, 2, 3, 9, 8), W, B),
        TypeError,
        r"\bx\b",
    ),
    (
        "conv x int32",
        lambda: ops.conv2d_forward(typed(np.int32, 2, 3, 9, 8), W, B),
        TypeError,
        r"\bx\b",
    ),
    (
        "conv w float64",
        lambda: ops.conv2d_forward(X, typed(np.float64, 4, 3, 3, 3), B),
        TypeError,
        r"\bw\b",
    ),
    (
        "conv w int64",
        lambda: ops.conv2d_forward(X, typed(np.int64, 4, 3, 3, 3), B),
        TypeError,
        r"\bw\b",
    ),
    ("conv b float64", lambda: ops.conv2d_forward(X, W, typed(np.float64, 4)), TypeError, r"\bb\b"),
    ("conv x 3-D", lambda: ops.conv2d_forward(f32(3, 9, 8), W, B), ValueError, r"\bx\b"),
    ("conv x 5-D", lambda: ops.conv2d_forward(f32(1, 2, 3, 9, 8), W, B), ValueError, r"\bx\b"),
    ("conv w 2-D", lambda: ops.conv2d_forward(X, f32(4, 27), B), ValueError, r"\bw\b"),
    ("conv b 2-D", lambda: ops.conv2d_forward(X, W, f32(4, 1)), ValueError, r"\bb\b"),
    ("conv b length", lambda: ops.conv2d_forward(X, W, f32(5)), ValueError, r"\bb\b"),
    ("conv b empty", lambda: ops.conv2d_forward(X, W, f32(0)), ValueError, r"\bb\b"),
    (
        "conv kernel > input",
        lambda: ops.conv2d_forward(f32(1, 3, 4, 4), f32(2, 3, 5, 5)),
        ValueError,
        r"(?i)kernel|\bw\b",
    ),
    (
        "conv kernel > padded width",
        lambda: ops.conv2d_forward(f32(1, 3, 4, 4), f32(2, 3, 5, 5), padding=(1, 0)),
        ValueError,
        r"(?i)kernel|\bw\b",
    ),
    ("conv stride 0", lambda: ops.conv2d_forward(X, W, B, stride=0), ValueError, "stride"),
    ("conv stride -1", lambda: ops.conv2d_forward(X, W, B, stride=-1), ValueError, "stride"),
    ("conv stride (1,0)", lambda: ops.conv2d_forward(X, W, B, stride=(1, 0)), ValueError, "stride"),
    ("conv padding -1", lambda: ops.conv2d_forward(X, W, B, padding=-1), ValueError, "padding"),
    (
        "conv padding (0,-2)",
        lambda: ops.conv2d_forward(X, W, B, padding=(0, -2)),
        ValueError,
        "padding",
    ),
    (
        "conv out shape",
        lambda: ops.conv2d_forward(X, W, B, out=f32(2, 4, 7, 7)),
        ValueError,
        r"\bout\b",
    ),
    (
        "conv out float64",
        lambda: ops.conv2d_forward(X, W, B, out=typed(np.float64, 2, 4, 7, 6)),
        TypeError,
        r"\bout\b",
    ),
    (
        "conv out non-contiguous",
        lambda: ops.conv2d_forward(X, W, B, out=f32(2, 4, 7, 12)[:, :, :, ::2]),
        (TypeError, ValueError),
        r"\bout\b",
    ),
    # ---- conv2d_backward ----
    (
        "conv bwd x float64",
        lambda: ops.conv2d_backward(typed(np.float64, 2, 3, 9, 8), W, DY),
        TypeError,
        r"\bx\b",
    ),
    (
        "conv bwd w float16",
        lambda: ops.conv2d_backward(X, typed(np.float16, 4, 3, 3, 3), DY),
        TypeError,
        r"\bw\b",
    ),
    (
        "conv bwd dy float64",
        lambda: ops.conv2d_backward(X, W, typed(np.float64, 2, 4, 7, 6)),
        TypeError,
        r"\bdy\b",
    ),
    (
        "conv bwd dy shape",
        lambda: ops.conv2d_backward(X, W, f32(2, 4, 7, 7)),
        ValueError,
        r"\bdy\b",
    ),
    (
        "conv bwd dy channels",
        lambda: ops.conv2d_backward(X, W, f32(2, 5, 7, 6)),
        ValueError,
        r"\bdy\b",
    ),
    (
        "conv bwd dy batch",
        lambda: ops.conv2d_backward(X, W, f32(1, 4, 7, 6)),
        ValueError,
        r"\bdy\b",
    ),
    ("conv bwd dy 3-D", lambda: ops.conv2d_backward(X, W, f32(4, 7, 6)), ValueError, r"\bdy\b"),
    ("conv bwd stride 0", lambda: ops.conv2d_backward(X, W, DY, stride=0), ValueError, "stride"),
    (
        "conv bwd padding -1",
        lambda: ops.conv2d_backward(X, W, DY, padding=-1),
        ValueError,
        "padding",
    ),
    (
        "conv bwd channels",
        lambda: ops.conv2d_backward(X, f32(4, 2, 3, 3), DY),
        ValueError,
        r"\bw\b|\bx\b",
    ),
    # ---- maxpool2d ----
    (
        "maxpool x float64",
        lambda: ops.maxpool2d_forward(typed(np.float64, 1, 2, 4, 4), 2),
        TypeError,
        r"\bx\b",
    ),
    (
        "maxpool x int",
        lambda: ops.maxpool2d_forward(typed(np.int32, 1, 2, 4, 4), 2),
        TypeError,
        r"\bx\b",
    ),
    ("maxpool x 3-D", lambda: ops.maxpool2d_forward(f32(2, 4, 4), 2), ValueError, r"\bx\b"),
    ("maxpool kernel 0", lambda: ops.maxpool2d_forward(f32(1, 2, 4, 4), 0), ValueError, "kernel"),
    ("maxpool kernel -2", lambda: ops.maxpool2d_forward(f32(1, 2, 4, 4), -2), ValueError, "kernel"),
    (
        "maxpool kernel > input",
        lambda: ops.maxpool2d_forward(f32(1, 2, 4, 4), 5),
        ValueError,
        "kernel",
    ),
    (
        "maxpool kernel > width",
        lambda: ops.maxpool2d_forward(f32(1, 2, 8, 4), (2, 5)),
        ValueError,
        "kernel",
    ),
    (
        "maxpool stride 0",
        lambda: ops.maxpool2d_forward(f32(1, 2, 4, 4), 2, 0),
        ValueError,
        "stride",
    ),
    (
        "maxpool bwd dy float64",
        lambda: ops.maxpool2d_backward(
            typed(np.float64, 1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int32), (1, 2, 4, 4)
        ),
        TypeError,
        r"\bdy\b",
    ),
    (
        "maxpool bwd indices shape",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 3), np.int32), (1, 2, 4, 4)
        ),
        ValueError,
        "indices",
    ),
    (
        "maxpool bwd indices 3-D",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((2, 2, 2), np.int32), (1, 2, 4, 4)
        ),
        ValueError,
        "indices",
    ),
    (
        "maxpool bwd indices float",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.float32), (1, 2, 4, 4)
        ),
        (TypeError, ValueError),
        "indices",
    ),
    (
        "maxpool bwd indices too large",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.full((1, 2, 2, 2), 16, np.int32), (1, 2, 4, 4)
        ),
        ValueError,
        "indices",
    ),
    (
        "maxpool bwd one bad index after many good ones",
        lambda: maxpool_backward_with_one_index((3, 5, 8, 8), 3 * 5 * 64 - 1, 256),
        ValueError,
        "indices holds 256",
    ),
    # Enough indices (over 65,536) for the threads to split the check:
    (
        "maxpool bwd one bad index near the end of a threaded check",
        lambda: maxpool_backward_with_one_index((5, 64, 16, 16), 5 * 64 * 256 - 7, 1024),
        ValueError,
        "indices holds 1024",
    ),
    (
        "maxpool bwd a negative index in the middle of a threaded check",
        lambda: maxpool_backward_with_one_index((5, 64, 16, 16), 40000, -3),
        ValueError,
        "indices holds -3",
    ),
    (
        "maxpool bwd indices negative",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.full((1, 2, 2, 2), -1, np.int32), (1, 2, 4, 4)
        ),
        ValueError,
        "indices",
    ),
    (
        "maxpool bwd int64 indices past 2**31",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.full((1, 2, 2, 2), 2**32 + 3, np.int64), (1, 2, 4, 4)
        ),
        ValueError,
        "indices",
    ),
    (
        "maxpool bwd x_shape 3 dims",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int32), (2, 4, 4)
        ),
        ValueError,
        "x_shape",
    ),
    (
        "maxpool bwd x_shape batch",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int32), (2, 2, 4, 4)
        ),
        ValueError,
        r"x_shape|\bdy\b",
    ),
    (
        "maxpool bwd x_shape channels",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int32), (1, 3, 4, 4)
        ),
        ValueError,
        r"x_shape|\bdy\b",
    ),
    (
        "maxpool bwd x_shape negative",
        lambda: ops.maxpool2d_backward(
            f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int32), (1, 2, -4, 4)
        ),
        ValueError,
        "x_shape",
    ),
    # ---- avgpool2d ----
    (
        "avgpool x float64",
        lambda: ops.avgpool2d_forward(typed(np.float64, 1, 2, 4, 4), 2),
        TypeError,
        r"\bx\b",
    ),
    ("avgpool x 2-D", lambda: ops.avgpool2d_forward(f32(4, 4), 2), ValueError, r"\bx\b"),
    ("avgpool kernel 0", lambda: ops.avgpool2d_forward(f32(1, 2, 4, 4), 0), ValueError, "kernel"),
    (
        "avgpool kernel > input",
        lambda: ops.avgpool2d_forward(f32(1, 2, 4, 4), 5),
        ValueError,
        "kernel",
    ),
    (
        "avgpool stride 0",
        lambda: ops.avgpool2d_forward(f32(1, 2, 4, 4), 2, 0),
        ValueError,
        "stride",
    ),
    (
        "avgpool bwd dy float16",
        lambda: ops.avgpool2d_backward(typed(np.float16, 1, 2, 2, 2), (1, 2, 4, 4), 2),
        TypeError,
        r"\bdy\b",
    ),
    (
        "avgpool bwd x_shape 5 dims",
        lambda: ops.avgpool2d_backward(f32(1, 2, 2, 2), (1, 1, 2, 4, 4), 2),
        ValueError,
        "x_shape",
    ),
    (
        "avgpool bwd x_shape size",
        lambda: ops.avgpool2d_backward(f32(1, 2, 2, 2), (1, 2, 6, 4), 2),
        ValueError,
        r"x_shape|\bdy\b",
    ),
    (
        "avgpool bwd x_shape channels",
        lambda: ops.avgpool2d_backward(f32(1, 2, 2, 2), (1, 3, 4, 4), 2),
        ValueError,
        r"x_shape|\bdy\b",
    ),
    (
        "avgpool bwd kernel 0",
        lambda: ops.avgpool2d_backward(f32(1, 2, 2, 2), (1, 2, 4, 4), 0),
        ValueError,
        "kernel",
    ),
    # ---- linear ----
    (
        "linear x float64",
        lambda: ops.linear_forward(typed(np.float64, 5, 7), f32(3, 7)),
        TypeError,
        r"\bx\b",
    ),
    (
        "linear w int",
        lambda: ops.linear_forward(f32(5, 7), typed(np.int32, 3, 7)),
        TypeError,
        r"\bw\b",
    ),
    (
        "linear b float16",
        lambda: ops.linear_forward(f32(5, 7), f32(3, 7), typed(np.float16, 3)),
        TypeError,
        r"\bb\b",
    ),
    ("linear x 1-D", lambda: ops.linear_forward(f32(7), f32(3, 7)), ValueError, r"\bx\b"),
    ("linear x 3-D", lambda: ops.linear_forward(f32(5, 7, 1), f32(3, 7)), ValueError, r"\bx\b"),
    ("linear w 3-D", lambda: ops.linear_forward(f32(5, 7), f32(3, 7, 1)), ValueError, r"\bw\b"),
    (
        "linear b length",
        lambda: ops.linear_forward(f32(5, 7), f32(3, 7), f32(4)),
        ValueError,
        r"\bb\b",
    ),
    (
        "linear out shape",
        lambda: ops.linear_forward(f32(5, 7), f32(3, 7), out=f32(3, 5)),
        ValueError,
        r"\bout\b",
    ),
    (
        "linear out dtype",
        lambda: ops.linear_forward(f32(5, 7), f32(3, 7), out=typed(np.float64, 5, 3)),
        TypeError,
        r"\bout\b",
    ),
    (
        "linear bwd dy float64",
        lambda: ops.linear_backward(f32(5, 7), f32(3, 7), typed(np.float64, 5, 3)),
        TypeError,
        r"\bdy\b",
    ),
    (
        "linear bwd dy features",
        lambda: ops.linear_backward(f32(5, 7), f32(3, 7), f32(5, 4)),
        ValueError,
        r"\bdy\b",
    ),
    (
        "linear bwd dy batch",
        lambda: ops.linear_backward(f32(5, 7), f32(3, 7), f32(6, 3)),
        ValueError,
        r"\bdy\b",
    ),
    (
        "linear bwd in mismatch",
        lambda: ops.linear_backward(f32(5, 7), f32(3, 8), f32(5, 3)),
        ValueError,
        r"\bw\b|\bx\b",
    ),
    # ---- relu ----
    ("relu x float64", lambda: ops.relu_forward(typed(np.float64, 3, 4)), TypeError, r"\bx\b"),
    ("relu x int", lambda: ops.relu_forward(typed(np.int64, 3, 4)), TypeError, r"\bx\b"),
    (
        "relu bwd y float16",
        lambda: ops.relu_backward(typed(np.float16, 3, 4), f32(3, 4)),
        TypeError,
        r"\by\b",
    ),
    (
        "relu bwd dy int",
        lambda: ops.relu_backward(f32(3, 4), typed(np.int32, 3, 4)),
        TypeError,
        r"\bdy\b",
    ),
    (
        "relu bwd shapes",
        lambda: ops.relu_backward(f32(3, 4), f32(4, 3)),
        ValueError,
        r"\by\b|\bdy\b",
    ),
    (
        "relu bwd sizes",
        lambda: ops.relu_backward(f32(3, 4), f32(3, 5)),
        ValueError,
        r"\by\b|\bdy\b",
    ),
    # ---- softmax_cross_entropy ----
    (
        "ce logits float64",
        lambda: ops.softmax_cross_entropy(typed(np.float64, 4, 3), np.zeros(4, np.int64)),
        TypeError,
        "logits",
    ),
    (
        "ce logits int",
        lambda: ops.softmax_cross_entropy(typed(np.int32, 4, 3), np.zeros(4, np.int64)),
        TypeError,
        "logits",
    ),
    (
        "ce logits 1-D",
        lambda: ops.softmax_cross_entropy(f32(4), np.zeros(1, np.int64)),
        ValueError,
        "logits",
    ),
    (
        "ce logits 3-D",
        lambda: ops.softmax_cross_entropy(f32(4, 3, 1), np.zeros(4, np.int64)),
        ValueError,
        "logits",
    ),
    (
        "ce labels length",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.zeros(5, np.int64)),
        ValueError,
        "labels",
    ),
    (
        "ce labels 2-D",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.zeros((4, 1), np.int64)),
        ValueError,
        "labels",
    ),
    (
        "ce labels == K",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.array([0, 1, 3, 2])),
        ValueError,
        "labels",
    ),
    (
        "ce labels negative",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.array([0, -1, 2, 2])),
        ValueError,
        "labels",
    ),
    (
        "ce labels uint8 out of range",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.array([0, 255, 2, 2], np.uint8)),
        ValueError,
        "labels",
    ),
    (
        "ce labels uint64 huge",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.array([0, 2**64 - 1, 2, 2], np.uint64)),
        ValueError,
        "labels",
    ),
    (
        "ce labels float",
        lambda: ops.softmax_cross_entropy(f32(4, 3), np.zeros(4, np.float32)),
        (TypeError, ValueError),
        "labels",
    ),
    # ---- sgemm ----
    ("sgemm a float64", lambda: ops.sgemm(typed(np.float64, 3, 4), f32(4, 5)), TypeError, r"\ba\b"),
    ("sgemm b int", lambda: ops.sgemm(f32(3, 4), typed(np.int32, 4, 5)), TypeError, r"\bb\b"),
    ("sgemm a 1-D", lambda: ops.sgemm(f32(4), f32(4, 5)), ValueError, r"\ba\b"),
    ("sgemm b 3-D", lambda: ops.sgemm(f32(3, 4), f32(4, 5, 1)), ValueError, r"\bb\b"),
    ("sgemm inner", lambda: ops.sgemm(f32(3, 4), f32(5, 5)), ValueError, r"\ba\b|\bb\b"),
    (
        "sgemm inner trans_a",
        lambda: ops.sgemm(f32(3, 4), f32(4, 5), trans_a=True),
        ValueError,
        r"\ba\b|\bb\b",
    ),
    (
        "sgemm inner trans_b",
        lambda: ops.sgemm(f32(3, 4), f32(4, 5), trans_b=True),
        ValueError,
        r"\ba\b|\bb\b",
    ),
    # ---- kernel selection ----
    ("gemm kernel unknown", lambda: ops.set_gemm_kernel("sse9"), ValueError, "sse9"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def shape_pattern(shape):
    """Regex for a shape printed as (2, 3, 9, 8), [2, 3, 9, 8], 2x3x9x8 and the like."""
    return r"\D{1,3}".join(str(d) for d in shape)


@pytest.mark.parametrize(
    "call,x_shape,w_shape",
    [
        (lambda: ops.conv2d_forward(f32(2, 3, 9, 8), f32(4, 5, 3, 3)), (2, 3, 9, 8), (4, 5, 3, 3)),
        (
            lambda: ops.conv2d_backward(f32(2, 3, 9, 8), f32(4, 5, 3, 3), f32(2, 4, 7, 6)),
            (2, 3, 9, 8),
            (4, 5, 3, 3),
        ),
        (lambda: ops.linear_forward(f32(6, 7), f32(3, 8)), (6, 7), (3, 8)),
        (lambda: ops.sgemm(f32(6, 7), f32(9, 5)), (6, 7), (9, 5)),
    ],
    ids=["conv fwd", "conv bwd", "linear", "sgemm"],
)
def test_mismatch_names_both_shapes(call, x_shape, w_shape):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert re.search(shape_pattern(x_shape), message), message
    assert re.search(shape_pattern(w_shape), message), message


def test_errors_leave_kernel_state_usable(rng):
    """After a burst of refused calls, the ops still compute correct results."""
    for _, call, _, _ in CASES:
        try:
            call()
        except (TypeError, ValueError):
            pass
    x = rng.standard_normal((2, 3, 9, 8), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)
    ref.assert_close(ops.conv2d_forward(x, w, padding=1), ref.conv2d_forward(x, w, padding=1))


# --------------------------------------------------------------------------------------------
# fuzz: any input gives either the right answer or a clean TypeError / ValueError
# --------------------------------------------------------------------------------------------

dims = st.integers(0, 5)
small_shapes = st.lists(dims, min_size=0, max_size=5).map(tuple)
dtypes = st.sampled_from([np.float32] * 6 + [np.float64, np.float16, np.int32, np.int64])
ints = st.one_of(st.integers(-2, 4), st.tuples(st.integers(-2, 4), st.integers(-2, 4)))


def array(shape, dtype):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def expect_clean(call, valid):
    """valid=True: must succeed; False: must raise; None: either (zero-size dimensions)."""
    try:
        result = call()
    except (TypeError, ValueError):
        assert valid is not True, "a valid call was refused"
        return None
    assert valid is not False, "an invalid call was accepted"
    return result


def conv_valid(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = ref.pair(stride), ref.pair(padding)
    if any(a is not None and a.dtype != np.float32 for a in (x, w, b)):
        return False
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        return False
    if b is not None and b.shape != (w.shape[0],):
        return False
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        return False
    if x.shape[2] + 2 * ph < w.shape[2] or x.shape[3] + 2 * pw < w.shape[3]:
        return False
    if w.shape[2] == 0 or w.shape[3] == 0:
        return False
    if 0 in x.shape or 0 in w.shape:
        return None  # empty tensors: an empty (or bias-only) result or a refusal are both fine
    return True


@settings(max_examples=200, deadline=None)
@given(
    xs=small_shapes,
    ws=small_shapes,
    bs=st.one_of(st.none(), small_shapes),
    xd=dtypes,
    wd=dtypes,
    bd=dtypes,
    stride=ints,
    padding=ints,
)
def test_fuzz_conv2d(xs, ws, bs, xd, wd, bd, stride, padding):
    x, w = array(xs, xd), array(ws, wd)
    b = None if bs is None else array(bs, bd)
    valid = conv_valid(x, w, b, stride, padding)
    y = expect_clean(lambda: ops.conv2d_forward(x, w, b, stride=stride, padding=padding), valid)
    if y is not None:
        ref.assert_close(y, ref.conv2d_forward(x, w, b, stride, padding), name="y")
        dy = array(y.shape, np.float32)
        grads = expect_clean(
            lambda: ops.conv2d_backward(x, w, dy, stride=stride, padding=padding), valid
        )
        if grads is not None:
            for g, e in zip(grads, ref.conv2d_backward(x, w, dy, stride, padding)):
                ref.assert_close(g, e)


@settings(max_examples=200, deadline=None)
@given(
    xs=small_shapes, xd=dtypes, kernel=ints, stride=st.one_of(st.none(), ints), avg=st.booleans()
)
def test_fuzz_pool2d(xs, xd, kernel, stride, avg):
    x = array(xs, xd)
    (kh, kw), (sh, sw) = ref.pair(kernel), ref.pair(kernel if stride is None else stride)
    valid = (
        xd == np.float32
        and x.ndim == 4
        and min(kh, kw, sh, sw) >= 1
        and x.shape[2] >= kh
        and x.shape[3] >= kw
    )
    if valid and 0 in x.shape:
        valid = None
    if avg:
        y = expect_clean(lambda: ops.avgpool2d_forward(x, kernel, stride), valid)
        if y is not None:
            ref.assert_close(y, ref.avgpool2d_forward(x, kernel, stride))
            dx = ops.avgpool2d_backward(y, x.shape, kernel, stride)
            ref.assert_close(dx, ref.avgpool2d_backward(y, x.shape, kernel, stride))
    else:
        result = expect_clean(lambda: ops.maxpool2d_forward(x, kernel, stride), valid)
        if result is not None:
            y, idx = result
            ref_y, ref_idx = ref.maxpool2d_forward(x, kernel, stride)
            np.testing.assert_array_equal(y, ref_y)
            np.testing.assert_array_equal(idx, ref_idx)
            dx = ops.maxpool2d_backward(y, idx, x.shape)
            ref.assert_close(dx, ref.maxpool2d_backward(y, idx, x.shape))


@settings(max_examples=150, deadline=None)
@given(xs=small_shapes, ws=small_shapes, xd=dtypes, wd=dtypes, n_idx=st.integers(-3, 8))
def test_fuzz_linear_relu_loss_sgemm(xs, ws, xd, wd, n_idx):
    x, w = array(xs, xd), array(ws, wd)
    f32_ok = xd == np.float32 and wd == np.float32
    two_d = x.ndim == 2 and w.ndim == 2
    # linear: x (N, in), w (out, in)
    valid = f32_ok and two_d and x.shape[1] == w.shape[1]
    if valid and (0 in x.shape or 0 in w.shape):
        valid = None
    y = expect_clean(lambda: ops.linear_forward(x, w), valid)
    if y is not None:
        ref.assert_close(y, ref.linear_forward(x, w))
    # sgemm: a (M, K) @ b (K, N)
    valid = f32_ok and two_d and x.shape[1] == w.shape[0]
    if valid and (0 in x.shape or 0 in w.shape):
        valid = None
    c = expect_clean(lambda: ops.sgemm(x, w), valid)
    if c is not None:
        ref.assert_close(c, ref.sgemm(x, w))
    # relu: any float32 shape, y and dy of one shape
    valid = (xd == np.float32) if x.ndim and x.size else None  # 0-d or empty: either way
    r = expect_clean(lambda: ops.relu_forward(x), valid)
    if r is not None:
        np.testing.assert_array_equal(r, np.maximum(x, 0))
    valid = f32_ok and x.shape == w.shape
    if valid and x.size == 0:
        valid = None
    if f32_ok and (x.ndim == 0 or w.ndim == 0) and x.size == w.size:
        valid = None  # a 0-d y against a 1-element dy: lenient or strict, both fine
    expect_clean(lambda: ops.relu_backward(x, w), valid)
    # softmax cross-entropy: logits (N, K), labels (N,) in [0, K)
    labels = np.full(x.shape[:1], n_idx, np.int64)
    valid = xd == np.float32 and x.ndim == 2 and 0 <= n_idx < x.shape[1]
    if valid and x.shape[0] == 0:
        valid = None
    result = expect_clean(lambda: ops.softmax_cross_entropy(x, labels), valid)
    if result is not None:
        ref_loss, ref_d = ref.softmax_cross_entropy(x, labels)
        assert result[0] == pytest.approx(ref_loss, rel=1e-4, abs=1e-4)
        ref.assert_close(result[1], ref_d)
