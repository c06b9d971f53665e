"""Optional: fastcnn's ops against PyTorch's CPU ops (skipped where torch is not installed)."""

import numpy as np
import pytest
import reference as ref

from fastcnn import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONV_CASES = [
    # N, C, H, W, O, kh, kw, stride, padding
    (2, 3, 8, 8, 4, 3, 3, 1, 1),
    (1, 17, 11, 13, 5, 5, 5, 2, 2),
    (3, 1, 28, 28, 32, 5, 5, 1, 2),
    (2, 3, 9, 12, 4, 1, 7, (2, 1), (0, 3)),
    (2, 6, 7, 7, 3, 7, 7, 3, 2),
]


def t64(a):
    return torch.from_numpy(np.asarray(a, np.float64)).requires_grad_()


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_torch(case, rng):
    n, c, h, w, o, kh, kw, stride, padding = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, kh, kw), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    tx, tw, tb = t64(x), t64(wt), t64(b)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    y = ops.conv2d_forward(x, wt, b, stride=stride, padding=padding)
    ref.assert_close(y, ty.detach().numpy(), name="y")
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = ops.conv2d_backward(x, wt, dy, stride=stride, padding=padding)
    ref.assert_close(dx, tx.grad.numpy(), name="dx")
    ref.assert_close(dw, tw.grad.numpy(), name="dw")
    ref.assert_close(db, tb.grad.numpy(), name="db")


@pytest.mark.parametrize(
    "case", [(2, 3, 8, 8, 2, None), (1, 4, 9, 11, 3, 2), (2, 2, 7, 10, (2, 3), (1, 2))], ids=str
)
def test_pools_match_torch(case, rng):
    n, c, h, w, k, s = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    tx = t64(x)
    ty, tidx = F.max_pool2d(tx, k, s, return_indices=True)
    y, idx = ops.maxpool2d_forward(x, k, s)
    np.testing.assert_array_equal(y, ty.detach().numpy().astype(np.float32))
    np.testing.assert_array_equal(idx, tidx.numpy())
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    ref.assert_close(ops.maxpool2d_backward(dy, idx, x.shape), tx.grad.numpy(), name="max dx")

    tx = t64(x)
    ty = F.avg_pool2d(tx, k, s)
    ref.assert_close(ops.avgpool2d_forward(x, k, s), ty.detach().numpy(), name="avg y")
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    ref.assert_close(ops.avgpool2d_backward(dy, x.shape, k, s), tx.grad.numpy(), name="avg dx")


@pytest.mark.parametrize("case", [(1, 1, 1), (7, 13, 5), (64, 3136, 128)], ids=str)
def test_linear_matches_torch(case, rng):
    n, fin, fout = case
    x = rng.standard_normal((n, fin), dtype=np.float32)
    w = rng.standard_normal((fout, fin), dtype=np.float32)
    b = rng.standard_normal(fout, dtype=np.float32)
    tx, tw, tb = t64(x), t64(w), t64(b)
    ty = F.linear(tx, tw, tb)
    ref.assert_close(ops.linear_forward(x, w, b), ty.detach().numpy(), name="y")
    dy = rng.standard_normal((n, fout), dtype=np.float32)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = ops.linear_backward(x, w, dy)
    ref.assert_close(dx, tx.grad.numpy(), name="dx")
    ref.assert_close(dw, tw.grad.numpy(), name="dw")
    ref.assert_close(db, tb.grad.numpy(), name="db")


def test_relu_and_cross_entropy_match_torch(rng):
    x = rng.standard_normal((4, 3, 5, 5), dtype=np.float32)
    np.testing.assert_array_equal(ops.relu_forward(x), F.relu(torch.from_numpy(x)).numpy())
    logits = (rng.standard_normal((16, 10)) * 5).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    tz = t64(logits)
    tloss = F.cross_entropy(tz, torch.from_numpy(labels))
    tloss.backward()
    loss, dlogits = ops.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(tloss.item(), rel=1e-4, abs=1e-4)
    ref.assert_close(dlogits, tz.grad.numpy(), name="dlogits")
