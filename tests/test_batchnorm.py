"""BatchNorm2d: the kernels against tests/reference.py (training forward and backward, with and
without the fused ReLU and the affine transform, eval forward), thread independence, the layer's
running statistics and state dict against PyTorch's rules (and PyTorch itself when installed)."""

import numpy as np
import pytest
import reference as ref

from fastcnn import nn, ops

SHAPES = [(1, 1, 1, 2), (2, 3, 4, 5), (1, 16, 7, 7), (8, 2, 1, 1), (3, 17, 9, 6), (64, 16, 14, 14)]


def make(rng, shape, affine=True):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    c = shape[1]
    w = (rng.standard_normal(c) + 1).astype(np.float32) if affine else None
    b = rng.standard_normal(c).astype(np.float32) if affine else None
    return x, w, b


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_train(shape, affine, relu, rng):
    x, w, b = make(rng, shape, affine)
    y, mean, invstd, var = ops.batchnorm2d_forward(x, w, b, 1e-5, relu)
    ry, rmean, rvar = ref.batchnorm2d_forward(x, w, b, 1e-5, relu)
    ref.assert_close(y, ry, name="y")
    ref.assert_close(mean, rmean, name="mean")
    ref.assert_close(var, rvar, name="var")
    ref.assert_close(invstd, 1 / np.sqrt(rvar + 1e-5), name="invstd")


@pytest.mark.parametrize("shape", [(4, 5, 7, 7), (64, 5, 14, 14)], ids=str)
def test_statistics_around_the_first_value(shape, rng):
    """The statistics are summed around each channel's first value, then again around the mean
    where that value lies far from it: a large mean with a small spread (the one pass), a first
    value 1,000 standard deviations out (the second pass), a constant channel, one channel of
    Infs, one with a NaN. Each as the float64 reference has it, within the kernels' rounding."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 0] = 1e4 + x[:, 0] * np.float32(0.1)
    x[0, 1, 0, 0] = 1e3
    x[:, 2] = 5.0
    x[1, 3, 2, 2] = np.inf
    x[-1, 4, -1, -1] = np.nan
    y, mean, invstd, var = ops.batchnorm2d_forward(x, None, None, 1e-5)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        rmean, rvar = x64.mean((0, 2, 3)), x64.var((0, 2, 3))
    for c in range(3):
        ref.assert_close(mean[c : c + 1], rmean[c : c + 1], rtol=1e-6, name=f"mean {c}")
        ref.assert_close(var[c : c + 1], rvar[c : c + 1], rtol=1e-5, name=f"var {c}")
    assert var[2] == 0 and np.all(y[:, 2] == 0)
    assert np.isinf(mean[3]) and np.isnan(var[3]) and np.isnan(mean[4]) and np.isnan(var[4])
    # y = x * scale + shift in float: channel 0's (mean 1e4 standard deviations out) is rounded
    # to 1e4 * scale's float steps, so y is compared for channels 1 and 2.
    ry, _, _ = ref.batchnorm2d_forward(x[:, 1:3], None, None, 1e-5, False)
    ref.assert_close(y[:, 1:3], ry, name="y")


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward(shape, affine, relu, rng):
    x, w, b = make(rng, shape, affine)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, mean, invstd, _ = ops.batchnorm2d_forward(x, w, b, 1e-5, relu)
    dx, dw, db = ops.batchnorm2d_backward(x, dy, y if relu else None, mean, invstd, w, True, affine)
    rdx, rdw, rdb = ref.batchnorm2d_backward(x, dy, w, b, 1e-5, relu)
    ref.assert_close(dx, rdx, name="dx")
    if affine:
        ref.assert_close(dw, rdw, name="dw")
        ref.assert_close(db, rdb, name="db")
    else:
        assert dw is None and db is None
    dx2, _, _ = ops.batchnorm2d_backward(x, dy, y if relu else None, mean, invstd, w, True, False)
    np.testing.assert_array_equal(dx, dx2)
    none = ops.batchnorm2d_backward(x, dy, None, mean, invstd, w, False, False)
    assert none == (None, None, None)


@pytest.mark.parametrize("relu", [False, True])
def test_forward_eval(relu, rng):
    x, _, _ = make(rng, (3, 5, 6, 7))
    scale, shift = (
        rng.standard_normal(5).astype(np.float32),
        rng.standard_normal(5).astype(np.float32),
    )
    y = ops.batchnorm2d_forward_eval(x, scale, shift, relu)
    want = x.astype(np.float64) * scale[:, None, None] + shift[:, None, None]
    ref.assert_close(y, np.maximum(want, 0) if relu else want, name="y")


# The threads split the batch by images (by vectors where there are fewer images than threads),
# and each chunk of 64 vectors that straddles two threads' shares is summed again in order: shares
# that begin inside a chunk, inside a plane, a share within one chunk, a first value far from the
# mean (the second pass), the ReLU's mask from y and recomputed from x.
@pytest.mark.parametrize(
    "shape",
    [(64, 16, 14, 14), (65, 7, 13, 13), (1, 4, 100, 100), (3, 5, 50, 50), (9, 2, 61, 67)],
    ids=str,
)
def test_kernels_do_not_depend_on_the_thread_count(shape, rng, num_threads):
    x, w, b = make(rng, shape)
    x[0, 1, 0, 0] = 1e4  # channel 1's first value: the statistics summed again
    dy = rng.standard_normal(x.shape).astype(np.float32)
    res = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for t in (1, 2, 3, 4):
        num_threads(t)
        y, mean, invstd, var = ops.batchnorm2d_forward(x, w, b, 1e-5, True)
        out = [y, mean, var, *ops.batchnorm2d_backward(x, dy, y, mean, invstd, w)]
        y2, mean2, invstd2, _ = ops.batchnorm2d_forward(x, w, b, 1e-5, True, None, res)
        g = np.empty_like(x)
        out += [y2, *ops.batchnorm2d_backward(x, dy, y2, mean2, invstd2, w, masked_dy_out=g), g]
        out += ops.batchnorm2d_backward(x, dy, None, mean, invstd, w, relu=True, bias=b)
        results.append(out)
    for other in results[1:]:
        for a, b2 in zip(results[0], other):
            np.testing.assert_array_equal(a, b2)


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (0, 3, 4, 4), (2, 0, 4, 4), (3, 2, 5, 0)], ids=str)
def test_empty_batches(shape, num_threads):
    """No values: mean and variance 0, invstd 1/sqrt(eps), zero gradients for the affine
    parameters, at every thread count (an empty plane once divided by zero)."""
    x = np.zeros(shape, np.float32)
    c = shape[1]
    w = np.ones(c, np.float32)
    for t in (1, 2, 3):
        num_threads(t)
        y, mean, invstd, var = ops.batchnorm2d_forward(x, w, w, 1e-4, True)
        assert y.shape == shape
        np.testing.assert_array_equal(mean, np.zeros(c, np.float32))
        np.testing.assert_array_equal(var, np.zeros(c, np.float32))
        np.testing.assert_allclose(invstd, np.full(c, 100, np.float32), rtol=1e-6)
        dx, dw, db = ops.batchnorm2d_backward(x, x, y, mean, invstd, w, masked_dy_out=x.copy())
        assert dx.shape == shape
        np.testing.assert_array_equal(dw, np.zeros(c, np.float32))
        np.testing.assert_array_equal(db, np.zeros(c, np.float32))


def test_outputs_are_overwritten(rng):
    x, w, b = make(rng, (2, 3, 4, 4))
    out = np.full(x.shape, np.nan, np.float32)
    y = ops.batchnorm2d_forward(x, w, b, 1e-5, False, out)[0]
    assert y is out and np.isfinite(out).all()


def test_bad_arguments(rng):
    x, w, b = make(rng, (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        ops.batchnorm2d_forward(x, w[:2], b)
    with pytest.raises(TypeError, match="x must be float32"):
        ops.batchnorm2d_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ops.batchnorm2d_forward(x[0], w, b)
    with pytest.raises(ValueError, match="eps"):
        ops.batchnorm2d_forward(x, w, b, 0.0)
    y, mean, invstd, _ = ops.batchnorm2d_forward(x, w, b)
    with pytest.raises(ValueError, match="dy must have shape"):
        ops.batchnorm2d_backward(x, y[:1], None, mean, invstd, w)
    layer = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"takes \(N, 3, H, W\)"):
        layer(x[:, :2])
    with pytest.raises(RuntimeError, match="without a forward"):
        nn.BatchNorm2d(3).backward(x)
    for bad in (lambda: nn.BatchNorm2d(0), lambda: nn.BatchNorm2d(3, eps=0),
                lambda: nn.BatchNorm2d(3, momentum=2)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()


# ---- the layer --------------------------------------------------------------------------------


def test_running_statistics_follow_pytorchs_rule(rng):
    layer = nn.BatchNorm2d(4, momentum=0.2)
    rm, rv = np.zeros(4), np.ones(4)
    for _ in range(3):
        x, _, _ = make(rng, (5, 4, 3, 2))
        layer(x)
        xs = x.astype(np.float64)
        m = xs.mean(axis=(0, 2, 3))
        v = xs.var(axis=(0, 2, 3), ddof=1)  # unbiased, as PyTorch keeps it
        rm, rv = 0.8 * rm + 0.2 * m, 0.8 * rv + 0.2 * v
    np.testing.assert_allclose(layer.running_mean.data, rm, rtol=1e-5)
    np.testing.assert_allclose(layer.running_var.data, rv, rtol=1e-5)
    assert layer.num_batches_tracked.data == 3 and layer.num_batches_tracked.data.dtype == np.int64
    layer.eval()  # eval: the running statistics
    x, _, _ = make(rng, (2, 4, 3, 3))
    want = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
    ref.assert_close(layer(x), want, name="y")


def test_cumulative_average_without_momentum(rng):
    layer = nn.BatchNorm2d(2, momentum=None)
    xs = [make(rng, (4, 2, 3, 3))[0] for _ in range(3)]
    for x in xs:
        layer(x)
    means = [x.astype(np.float64).mean(axis=(0, 2, 3)) for x in xs]
    np.testing.assert_allclose(layer.running_mean.data, np.mean(means, 0), rtol=1e-5)


def test_state_dict_keys_and_round_trip(rng):
    layer = nn.BatchNorm2d(3)
    layer(make(rng, (4, 3, 2, 2))[0])
    state = layer.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert state["num_batches_tracked"].shape == () and state["num_batches_tracked"] == 1
    other = nn.BatchNorm2d(3)
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    with pytest.raises(TypeError, match="integer"):
        other.load_state_dict({**state, "num_batches_tracked": np.float32(1)})
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in nn.BatchNorm2d(3, affine=False).named_parameters()] == []


def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    mine = nn.BatchNorm2d(6, momentum=0.3)
    theirs = torch.nn.BatchNorm2d(6, momentum=0.3).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in mine.state_dict().items()}, strict=True)
    for _ in range(2):
        x, _, _ = make(rng, (4, 6, 5, 5))
        dy = rng.standard_normal(x.shape).astype(np.float32)
        mine.zero_grad()
        y = mine(x)
        dx = mine.backward(dy)
        tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        theirs.zero_grad()
        ty = theirs(tx)
        ty.backward(torch.tensor(dy, dtype=torch.float64))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mine.weight.grad, theirs.weight.grad.numpy(), rtol=1e-4)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(mine.state_dict()[k], v.numpy(), rtol=1e-5)
    mine.eval(), theirs.eval()
    x, _, _ = make(rng, (2, 6, 3, 3))
    np.testing.assert_allclose(
        mine(x), theirs(torch.tensor(x, dtype=torch.float64)).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_fused_relu_in_a_sequential(rng):
    nn.manual_seed(1)
    fused = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    assert [r for _, r in fused._steps()] == [False, True]
    x, _, _ = make(rng, (2, 3, 5, 5))
    y = fused(x)
    conv, bn = fused[0], fused[1]
    plain_bn = nn.BatchNorm2d(4)
    want = np.maximum(plain_bn(conv(x)), 0)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fused.backward(dy)
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert bn.weight.grad is not None


@pytest.mark.parametrize("relu", [False, True])
def test_residual_is_added_before_the_relu(relu, rng):
    x, w, b = make(rng, (3, 4, 5, 6))
    r = rng.standard_normal(x.shape).astype(np.float32)
    y = ops.batchnorm2d_forward(x, w, b, 1e-5, relu, residual=r)[0]
    plain = ref.batchnorm2d_forward(x, w, b, 1e-5, False)[0] + r
    ref.assert_close(y, np.maximum(plain, 0) if relu else plain, name="y")
    scale, shift = (
        rng.standard_normal(4).astype(np.float32),
        rng.standard_normal(4).astype(np.float32),
    )
    y = ops.batchnorm2d_forward_eval(x, scale, shift, relu, residual=r)
    plain = x.astype(np.float64) * scale[:, None, None] + shift[:, None, None] + r
    ref.assert_close(y, np.maximum(plain, 0) if relu else plain, name="y")
    with pytest.raises(ValueError, match="residual must have shape"):
        ops.batchnorm2d_forward(x, w, b, residual=r[:1])


def test_masked_dy_out(rng):
    x, w, b = make(rng, (3, 4, 5, 6))
    r = rng.standard_normal(x.shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, invstd, _ = ops.batchnorm2d_forward(x, w, b, 1e-5, True, residual=r)
    g = np.full(x.shape, np.nan, np.float32)
    dx, dw, db = ops.batchnorm2d_backward(x, dy, y, mean, invstd, w, masked_dy_out=g)
    np.testing.assert_array_equal(g, np.where(y > 0, dy, 0))
    # The BN part sees the masked gradient: the reference with dy already masked, no ReLU.
    rdx, rdw, rdb = ref.batchnorm2d_backward(x, g, w, b, 1e-5, False)
    ref.assert_close(dx, rdx, name="dx")
    ref.assert_close(dw, rdw, name="dw")
    with pytest.raises(ValueError, match="needs a ReLU's mask"):
        ops.batchnorm2d_backward(x, dy, None, mean, invstd, w, masked_dy_out=g)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_mask_recomputed_from_x(shape, affine, rng):
    """Without a residual, backward may recompute the ReLU's mask from x (relu=True, the
    forward's bias) instead of reading y: exactly the same gradients, masked dy included. In
    the second case half of x is 0 and each channel's mean is exactly 0, with no bias: the
    ReLU's input is exactly 0 there, the edge both ways must treat alike."""
    x0, w, b0 = make(rng, shape, affine)
    n, c, p = shape[0], shape[1], shape[2] * shape[3]
    values = np.resize(np.array([-1, 0, 1, 0], np.float32), (c, n * p))
    values[:, -1] -= values.sum(axis=1)  # each channel sums to 0 exactly
    zeros = values.reshape(c, n, p).transpose(1, 0, 2).reshape(shape)
    for x, b in ((x0, b0), (zeros, None)):
        dy = rng.standard_normal(shape).astype(np.float32)
        y, mean, invstd, _ = ops.batchnorm2d_forward(x, w, b, 1e-5, True)
        g_y, g_x = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
        from_y = ops.batchnorm2d_backward(x, dy, y, mean, invstd, w, True, affine, None, g_y)
        from_x = ops.batchnorm2d_backward(
            x, dy, None, mean, invstd, w, True, affine, None, g_x, relu=True, bias=b
        )
        for got, want in zip(from_x, from_y):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(g_x, g_y)
        np.testing.assert_array_equal(g_x, np.where(y > 0, dy, 0))


@pytest.mark.parametrize("n", [1, 17, 70000])  # 70000: over the threads
def test_add_and_add_relu(n, rng):
    a, b = rng.standard_normal((2, n)).astype(np.float32)
    np.testing.assert_array_equal(ops.add_relu(a, b), np.maximum(a + b, 0))
    np.testing.assert_array_equal(ops.add(a, b), a + b)
    for op, want in ((ops.add_relu, np.maximum(a + b, 0)), (ops.add, a + b)):
        c = a.copy()
        assert op(c, b, out=c) is c  # in place over its first input
        np.testing.assert_array_equal(c, want)
    with pytest.raises(ValueError, match="b"):
        ops.add(a, b[:-1] if n > 1 else np.zeros(2, np.float32))


def test_eval_folds_batchnorm_into_the_convolution(rng):
    nn.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                          nn.Conv2d(5, 4, 1, bias=False), nn.BatchNorm2d(4))  # fmt: skip
    for _ in range(3):  # running statistics away from their initial values
        model(make(rng, (8, 3, 6, 6))[0] * 2)
    model.eval()
    steps = model._steps()
    assert [type(s).__name__ for s, _ in steps] == ["_ConvBN", "_ConvBN"]
    assert [relu for _, relu in steps] == [True, False]
    x = make(rng, (2, 3, 6, 6))[0]
    y = model(x)
    unfused = model[4](model[3](np.maximum(model[1](model[0](x)), 0)))
    np.testing.assert_allclose(y, unfused, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(y)
