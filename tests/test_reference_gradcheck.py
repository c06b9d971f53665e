"""Central finite differences (float64) against the reference backward functions.

The kernel tests trust tests/reference.py, so its backward functions are checked here against
the derivative of its own forward functions: for a random cotangent g, d/dx sum(f(x) * g) must
equal the reference's analytic gradient. Also a few hand-worked values, so that forward is not
merely self-consistent.
"""

import numpy as np
import pytest
import reference as ref

EPS = 1e-6


def numeric_grad(f, x, eps=EPS):
    """Gradient of the scalar f() with respect to the array x (perturbed in place)."""
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def check(analytic, numeric):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------

CONV_CASES = [
    # N, C, H, W, O, kh, kw, stride, padding
    (1, 1, 4, 4, 1, 1, 1, 1, 0),
    (2, 2, 5, 5, 3, 3, 3, 1, 1),
    (1, 3, 6, 7, 2, 3, 3, 2, 1),
    (2, 2, 7, 5, 2, 2, 3, (2, 1), (0, 2)),
    (1, 1, 8, 8, 2, 5, 5, 3, 2),
    (1, 2, 5, 6, 2, 1, 1, 2, 2),
    (1, 1, 3, 3, 1, 5, 5, 1, 1),  # kernel equals the padded input
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_backward(case):
    n, c, h, w, o, kh, kw, stride, padding = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c, kh, kw))
    b = rng.standard_normal(o)
    y = ref.conv2d_forward(x, wt, b, stride, padding)
    g = rng.standard_normal(y.shape)

    def loss():
        return np.sum(ref.conv2d_forward(x, wt, b, stride, padding) * g)

    dx, dw, db = ref.conv2d_backward(x, wt, g, stride, padding)
    check(dx, numeric_grad(loss, x))
    check(dw, numeric_grad(loss, wt))
    check(db, numeric_grad(loss, b))


def test_conv2d_forward_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 2, 2))
    y = ref.conv2d_forward(x, w, np.array([0.5]), stride=2)
    np.testing.assert_array_equal(
        y,
        [
            [
                [
                    [0 + 1 + 4 + 5 + 0.5, 2 + 3 + 6 + 7 + 0.5],
                    [8 + 9 + 12 + 13 + 0.5, 10 + 11 + 14 + 15 + 0.5],
                ]
            ]
        ],
    )
    y = ref.conv2d_forward(np.ones((1, 1, 2, 3)), np.ones((1, 1, 3, 3)), padding=1)
    np.testing.assert_array_equal(y, [[[[4, 6, 4], [4, 6, 4]]]])
    assert ref.conv2d_forward(
        np.ones((2, 3, 7, 9)), np.ones((5, 3, 3, 1)), stride=(2, 3), padding=(1, 0)
    ).shape == (2, 5, 4, 3)
    y = ref.conv2d_forward(
        -np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), np.array([0.5]), relu=True
    )
    np.testing.assert_array_equal(y, np.zeros((1, 1, 2, 2)))


def test_conv2d_forward_matches_direct_loops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    sh, sw, ph, pw = 2, 1, 1, 2
    y = ref.conv2d_forward(x, w, stride=(sh, sw), padding=(ph, pw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    expect = np.zeros(y.shape)
    for n in range(2):
        for o in range(4):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    expect[n, o, i, j] = np.sum(
                        xp[n, :, i * sh : i * sh + 3, j * sw : j * sw + 2] * w[o]
                    )
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

POOL_CASES = [
    # N, C, H, W, kernel, stride
    (1, 1, 4, 4, 2, None),
    (2, 3, 5, 7, 2, None),  # floor mode drops the last row / column
    (1, 2, 7, 7, 3, 2),  # overlapping windows
    (2, 1, 6, 9, 3, 1),
    (1, 2, 8, 6, (2, 3), (1, 2)),
    (1, 1, 5, 5, 1, 2),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d_backward(case):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(2)
    # Distinct values (a permutation), well apart compared with EPS, so argmax is stable.
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 1e-3
    y, idx = ref.maxpool2d_forward(x, k, s)
    g = rng.standard_normal(y.shape)

    def loss():
        return np.sum(ref.maxpool2d_forward(x, k, s)[0] * g)

    check(ref.maxpool2d_backward(g, idx, x.shape), numeric_grad(loss, x))


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avgpool2d_backward(case):
    n, c, h, w, k, s = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w))
    y = ref.avgpool2d_forward(x, k, s)
    g = rng.standard_normal(y.shape)

    def loss():
        return np.sum(ref.avgpool2d_forward(x, k, s) * g)

    check(ref.avgpool2d_backward(g, x.shape, k, s), numeric_grad(loss, x))


def test_maxpool2d_by_hand():
    x = np.array([[1, 5, 2, 0, 9], [3, 5, 7, 7, 1], [4, 4, 0, 8, 1]], dtype=np.float64).reshape(
        1, 1, 3, 5
    )
    y, idx = ref.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, [[[[5, 7]]]])
    # Ties: 5 at (0,1) and (1,1) -> first in row-major order, flat 0*5+1; 7 at (1,2),(1,3) -> 7.
    np.testing.assert_array_equal(idx, [[[[1, 7]]]])
    y, idx = ref.maxpool2d_forward(x, (2, 3), (1, 2))
    np.testing.assert_array_equal(y, [[[[7, 9], [7, 8]]]])
    np.testing.assert_array_equal(idx, [[[[7, 4], [7, 13]]]])
    # Overlapping windows that share a max add their gradients.
    dx = ref.maxpool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), idx, x.shape)
    expect = np.zeros(15)
    expect[7] = 1 + 3
    expect[4] = 2
    expect[13] = 4
    np.testing.assert_array_equal(dx.reshape(-1), expect)


def test_maxpool2d_all_equal_window_picks_first():
    y, idx = ref.maxpool2d_forward(np.zeros((1, 1, 4, 6)), 2, 2)
    np.testing.assert_array_equal(idx, [[[[0, 2, 4], [12, 14, 16]]]])


def test_avgpool2d_by_hand():
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    np.testing.assert_array_equal(ref.avgpool2d_forward(x, 2), [[[[2.5, 4.5]]]])
    dx = ref.avgpool2d_backward(np.array([[[[4.0, 8.0]]]]), x.shape, 2)
    np.testing.assert_array_equal(dx, [[[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]]])


# --------------------------------------------------------------------------------------------
# linear, relu, softmax cross-entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (3, 5, 4), (4, 7, 2)])
def test_linear_backward(n, fin, fout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, fin))
    w = rng.standard_normal((fout, fin))
    b = rng.standard_normal(fout)
    g = rng.standard_normal((n, fout))

    def loss():
        return np.sum(ref.linear_forward(x, w, b) * g)

    dx, dw, db = ref.linear_backward(x, w, g)
    check(dx, numeric_grad(loss, x))
    check(dw, numeric_grad(loss, w))
    check(db, numeric_grad(loss, b))


def test_relu_backward():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    g = rng.standard_normal(x.shape)

    def loss():
        return np.sum(ref.relu_forward(x) * g)

    check(ref.relu_backward(ref.relu_forward(x), g), numeric_grad(loss, x))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("n,k", [(1, 1), (1, 3), (4, 5), (6, 10)])
def test_softmax_cross_entropy_backward(n, k, smoothing):
    rng = np.random.default_rng(6)
    z = rng.standard_normal((n, k)) * 3
    labels = rng.integers(0, k, n)
    _, dz = ref.softmax_cross_entropy(z, labels, smoothing)
    check(dz, numeric_grad(lambda: ref.softmax_cross_entropy(z, labels, smoothing)[0], z))


def test_label_smoothing_by_hand():
    # Two classes, logits equal: p = (1/2, 1/2) and the loss is log 2 whatever the target.
    loss, dz = ref.softmax_cross_entropy(np.zeros((1, 2)), np.array([0]), 0.2)
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(dz, [[0.5 - 0.9, 0.5 - 0.1]])  # target (1 - 0.2 + 0.1, 0.1)


def test_softmax_cross_entropy_values():
    loss, dz = ref.softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    assert loss == pytest.approx(np.log(4))
    np.testing.assert_allclose(dz, [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]])
    # Huge logits: no overflow, and shifting all logits by a constant changes nothing.
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 + 1]])
    loss, dz = ref.softmax_cross_entropy(z, np.array([1, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    assert loss == pytest.approx((1e4 + np.log1p(np.exp(-1.0))) / 2)
    loss2, dz2 = ref.softmax_cross_entropy(z + 123.0, np.array([1, 2]))
    assert loss2 == pytest.approx(loss)
    np.testing.assert_allclose(dz2, dz, atol=1e-15)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (5, 1, 1, 2)])
def test_batchnorm2d_backward(shape, affine, relu):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape) * 2 + 0.5
    g = rng.standard_normal(shape)
    w = rng.standard_normal(shape[1]) if affine else None
    b = rng.standard_normal(shape[1]) if affine else None
    dx, dw, db = ref.batchnorm2d_backward(x, g, w, b, 1e-3, relu)

    def loss():
        return np.sum(ref.batchnorm2d_forward(x, w, b, 1e-3, relu)[0] * g)

    check(dx, numeric_grad(loss, x))
    if affine:
        check(dw, numeric_grad(loss, w))
        check(db, numeric_grad(loss, b))
