"""maxpool2d / avgpool2d, forward and backward, against tests/reference.py."""

import numpy as np
import pytest
import reference as ref
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastcnn import ops

CASES = [
    # N, C, H, W, kernel_size, stride
    (1, 1, 2, 2, 2, None),
    (1, 1, 1, 1, 1, None),
    (2, 3, 8, 8, 2, None),
    (1, 17, 7, 7, 2, None),  # floor mode drops the last row and column
    (2, 3, 9, 11, 3, None),
    (2, 3, 9, 11, 3, 2),  # overlapping windows
    (1, 1, 5, 5, 1, 1),  # identity
    (1, 2, 6, 6, 1, 2),  # subsampling
    (3, 5, 10, 10, 3, 1),
    (2, 32, 28, 28, 2, 2),  # SeedNet pool1
    (1, 4, 13, 6, 5, 3),
    (2, 3, 7, 7, 7, None),  # global pooling
    (1, 2, 9, 9, 2, 3),  # stride larger than the kernel: rows skipped
    (4, 1, 3, 17, 3, 2),
]

PAIR_CASES = [
    # kernel_size / stride as (h, w) pairs, as PyTorch's pools accept
    (1, 2, 6, 9, (2, 3), None),
    (2, 3, 10, 7, (3, 1), (2, 1)),
    (1, 1, 8, 8, (1, 4), (3, 2)),
]


def out_shape(case):
    n, c, h, w, k, s = case
    kh, kw = ref.pair(k)
    sh, sw = ref.pair(k if s is None else s)
    return n, c, ref.out_size(h, kh, sh), ref.out_size(w, kw, sw)


def check_maxpool(x, k, s):
    y, idx = ops.maxpool2d_forward(x, k, s)
    ref_y, ref_idx = ref.maxpool2d_forward(x, k, s)
    assert y.shape == ref_y.shape and idx.shape == ref_y.shape
    assert y.dtype == np.float32
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(y, ref_y.astype(np.float32))  # a max is exact
    np.testing.assert_array_equal(idx, ref_idx)
    return y, idx


# --------------------------------------------------------------------------------------------
# maxpool2d
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES + PAIR_CASES, ids=str)
def test_maxpool_forward(case, gemm_kernel, rng):
    """Under every ISA kernel table: AVX-512 has its own 2x2 max-pool."""
    n, c, h, w, k, s = case
    check_maxpool(rng.standard_normal((n, c, h, w), dtype=np.float32), k, s)


@pytest.mark.parametrize("case", CASES + PAIR_CASES, ids=str)
def test_maxpool_forward_ties_pick_first(case, gemm_kernel, rng):
    """Few distinct values -> many ties, broken towards the first max in row-major order."""
    n, c, h, w, k, s = case
    check_maxpool(rng.integers(0, 3, (n, c, h, w)).astype(np.float32), k, s)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_maxpool_forward_negative_inputs(case, gemm_kernel, rng):
    n, c, h, w, k, s = case
    x = -np.abs(rng.standard_normal((n, c, h, w), dtype=np.float32)) - 1e3
    y, _ = check_maxpool(x, k, s)
    assert (y < 0).all()


def test_maxpool_forward_constant_and_infinite_planes():
    for value in (0.0, -1.0, -np.inf, np.inf, -3.4e38):
        x = np.full((2, 3, 6, 5), value, np.float32)
        check_maxpool(x, 2, None)
        check_maxpool(x, 3, 1)


@pytest.mark.parametrize("case", CASES + PAIR_CASES, ids=str)
def test_maxpool_backward(case, gemm_kernel, rng):
    n, c, h, w, k, s = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    y, idx = ops.maxpool2d_forward(x, k, s)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx = ops.maxpool2d_backward(dy, idx, x.shape)
    ref.assert_close(dx, ref.maxpool2d_backward(dy, idx, x.shape), name="dx")
    # And against the reference's own indices, to tie the pair together.
    _, ref_idx = ref.maxpool2d_forward(x, k, s)
    ref.assert_close(dx, ref.maxpool2d_backward(dy, ref_idx, x.shape), name="dx")


def test_maxpool_backward_overwrites_and_accumulates_shared_maxima(rng):
    """Windows that share a max add their gradients; a fresh call never adds to an old dx."""
    x_shape = (2, 3, 5, 4)
    idx = np.zeros((2, 3, 2, 3), np.int32)  # every window "picked" element 0
    idx[:, :, 1, 2] = 19  # ... except one, which picked the last element
    first = ops.maxpool2d_backward(np.ones((2, 3, 2, 3), np.float32), idx, x_shape)
    dy = rng.standard_normal((2, 3, 2, 3), dtype=np.float32)
    dx = ops.maxpool2d_backward(dy, idx, x_shape)
    assert not np.shares_memory(dx, first)
    ref.assert_close(first, ref.maxpool2d_backward(np.ones((2, 3, 2, 3)), idx, x_shape), name="dx")
    ref.assert_close(dx, ref.maxpool2d_backward(dy, idx, x_shape), name="dx")
    assert dx.shape == x_shape and dx.dtype == np.float32
    np.testing.assert_array_equal(dx.reshape(2, 3, 20)[:, :, 1:19], 0.0)


def test_maxpool_inputs_not_modified(rng):
    x = rng.standard_normal((2, 3, 6, 6), dtype=np.float32)
    x0 = x.copy()
    y, idx = ops.maxpool2d_forward(x, 2)
    idx0, y0 = idx.copy(), y.copy()
    ops.maxpool2d_backward(y, idx, x.shape)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(idx, idx0)


def test_maxpool_noncontiguous_input(rng):
    x = rng.standard_normal((2, 3, 9, 8), dtype=np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    y, idx = ops.maxpool2d_forward(x, 3, 2)
    y2, idx2 = ops.maxpool2d_forward(xt, 3, 2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(idx, idx2)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    np.testing.assert_array_equal(
        ops.maxpool2d_backward(dy, idx, x.shape),
        ops.maxpool2d_backward(np.asfortranarray(dy), idx, x.shape),
    )


# --------------------------------------------------------------------------------------------
# avgpool2d
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES + PAIR_CASES, ids=str)
def test_avgpool_forward(case, rng):
    n, c, h, w, k, s = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    y = ops.avgpool2d_forward(x, k, s)
    assert y.shape == out_shape(case)
    ref.assert_close(y, ref.avgpool2d_forward(x, k, s), name="y")


@pytest.mark.parametrize("case", CASES + PAIR_CASES, ids=str)
def test_avgpool_backward(case, rng):
    n, c, h, w, k, s = case
    x_shape = (n, c, h, w)
    dy = rng.standard_normal(out_shape(case), dtype=np.float32)
    dx = ops.avgpool2d_backward(dy, x_shape, k, s)
    assert dx.shape == x_shape
    ref.assert_close(dx, ref.avgpool2d_backward(dy, x_shape, k, s), name="dx")


def test_avgpool_default_stride_and_overwrite(rng):
    x = rng.standard_normal((2, 3, 8, 6), dtype=np.float32)
    np.testing.assert_array_equal(ops.avgpool2d_forward(x, 2), ops.avgpool2d_forward(x, 2, 2))
    dy = rng.standard_normal((2, 3, 4, 3), dtype=np.float32)
    first = ops.avgpool2d_backward(dy, x.shape, 2)
    second = ops.avgpool2d_backward(dy, x.shape, 2)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, ops.avgpool2d_backward(dy, x.shape, 2, 2))


# --------------------------------------------------------------------------------------------
# properties over random shapes
# --------------------------------------------------------------------------------------------


@st.composite
def pool_shapes(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.one_of(st.none(), st.integers(1, 4)))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    assume(h >= k and w >= k)
    return draw(st.integers(1, 3)), draw(st.integers(1, 5)), h, w, k, s


@settings(max_examples=60, deadline=None)
@given(case=pool_shapes(), seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([0, 2, 5]))
def test_property_pools(case, seed, levels):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(seed)
    if levels:  # integer-valued: lots of ties
        x = rng.integers(0, levels, (n, c, h, w)).astype(np.float32)
    else:
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    y, idx = check_maxpool(x, k, s)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    ref.assert_close(
        ops.maxpool2d_backward(dy, idx, x.shape),
        ref.maxpool2d_backward(dy, idx, x.shape),
        name="max dx",
    )
    ref.assert_close(ops.avgpool2d_forward(x, k, s), ref.avgpool2d_forward(x, k, s), name="avg y")
    ref.assert_close(
        ops.avgpool2d_backward(dy, x.shape, k, s),
        ref.avgpool2d_backward(dy, x.shape, k, s),
        name="avg dx",
    )


@pytest.mark.parametrize(
    "shape", [(2, 3, 6, 40), (1, 2, 5, 41), (1, 1, 4, 66), (3, 2, 2, 2)], ids=str
)
@pytest.mark.parametrize("relu", [False, True])
def test_maxpool2x2_row_tails_and_foreign_indices(shape, relu, gemm_kernel, rng):
    """2x2 pooling with rows of whole kernel steps plus a short one (16 outputs a step for the
    AVX-512 kernels, 8 for AVX2), odd sizes, the ReLU-fused pair, and indices that lie in the
    plane but outside their own window (the kernel gives up, the general path scatters them)."""
    x = rng.standard_normal(shape, dtype=np.float32)
    y, idx = ops.maxpool2d_forward(x, 2, relu=relu)
    ref_y, ref_idx = ref.maxpool2d_forward(x, 2, None)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(y, np.maximum(ref_y, 0) if relu else ref_y)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    passed = np.where(y > 0, dy, 0) if relu else dy
    dx = ops.maxpool2d_backward(dy, idx, shape, y if relu else None)
    ref.assert_close(dx, ref.maxpool2d_backward(passed, idx, shape), name="dx")
    foreign = idx.copy()
    foreign[-1, -1, -1, -1] = 0  # the plane's first element: the last window's index no more
    dx = ops.maxpool2d_backward(dy, foreign, shape, y if relu else None)
    ref.assert_close(dx, ref.maxpool2d_backward(passed, foreign, shape), name="dx")
