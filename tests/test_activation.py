"""relu_forward / relu_backward against tests/reference.py, on shapes that hit SIMD tails."""

import numpy as np
import pytest
import reference as ref

from fastcnn import ops

SHAPES = [
    (1,),
    (7,),
    (16,),
    (17,),
    (33,),
    (1023,),
    (3, 4),
    (2, 3, 5, 7),
    (4, 32, 14, 14),
    (1, 1, 1, 1),
    (2, 1, 3, 1, 5),
    (100_003,),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_forward(shape, rng):
    x = rng.standard_normal(shape, dtype=np.float32)
    x.reshape(-1)[::5] = 0.0
    y = ops.relu_forward(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(y, ref.relu_forward(x).astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_backward(shape, rng):
    x = rng.standard_normal(shape, dtype=np.float32)
    x.reshape(-1)[::5] = 0.0  # y == 0 must block the gradient
    y = ref.relu_forward(x).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    dx = ops.relu_backward(y, dy)
    assert dx.shape == shape and dx.dtype == np.float32
    np.testing.assert_array_equal(dx, ref.relu_backward(y, dy).astype(np.float32))


def test_relu_extremes():
    x = np.array([-np.inf, -3.4e38, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3.4e38, np.inf], np.float32)
    y = ops.relu_forward(x)
    # 1e-45 is a denormal: whether it survives relu depends on flush-to-zero, so index 5 may be
    # either; every other position is certain.
    keep = [0, 1, 2, 3, 4, 6, 7, 8]
    np.testing.assert_array_equal(y[keep], np.array([0, 0, 0, 0, 0, 1, 3.4e38, np.inf], np.float32))
    assert y[5] in (np.float32(0), np.float32(1e-45))
    dy = np.arange(1, 10, dtype=np.float32)
    dx = ops.relu_backward(y, dy)
    np.testing.assert_array_equal(dx[keep], [0, 0, 0, 0, 0, 7, 8, 9])


def test_relu_inputs_not_modified_and_noncontiguous(rng):
    x = rng.standard_normal((4, 6, 5), dtype=np.float32)
    x0 = x.copy()
    y = ops.relu_forward(x)
    np.testing.assert_array_equal(x, x0)
    view = x[:, ::2, 1:]
    np.testing.assert_array_equal(ops.relu_forward(view), np.maximum(view, 0))
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    dy0 = dy.copy()
    dx = ops.relu_backward(y, dy)
    np.testing.assert_array_equal(dy, dy0)
    np.testing.assert_array_equal(
        ops.relu_backward(np.asfortranarray(y), dy.transpose(2, 1, 0).copy().transpose(2, 1, 0)), dx
    )
    np.testing.assert_array_equal(ops.relu_backward(y[:, ::2], dy[:, ::2]), dx[:, ::2])
