"""softmax_cross_entropy against tests/reference.py: values, label dtypes, numerical stability."""

import numpy as np
import pytest
import reference as ref

from fastcnn import ops

CASES = [
    # N, K, logit scale
    (1, 1, 1.0),  # one class: loss 0, gradient 0
    (1, 10, 1.0),
    (4, 3, 1.0),
    (64, 10, 3.0),
    (5, 1000, 1.0),
    (33, 17, 10.0),
    (256, 10, 1.0),
    (8, 10, 1e4),  # would overflow exp() without the max shift
    (8, 37, 1e-4),  # nearly uniform
]

LABEL_DTYPES = [
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.intp,
]


def check(logits, labels):
    logits0, labels0 = logits.copy(), labels.copy()
    loss, dlogits = ops.softmax_cross_entropy(logits, labels)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-4)
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float32
    assert not np.shares_memory(dlogits, logits)
    ref.assert_close(dlogits, ref_dlogits, name="dlogits")
    np.testing.assert_array_equal(logits, logits0)  # inputs untouched
    np.testing.assert_array_equal(labels, labels0)
    return loss, dlogits


@pytest.mark.parametrize("case", CASES, ids=str)
def test_softmax_cross_entropy(case, rng):
    n, k, scale = case
    logits = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, n)
    loss, dlogits = check(logits, labels)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_label_dtypes(dtype, rng):
    logits = rng.standard_normal((12, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 12)
    loss, dlogits = check(logits, labels.astype(dtype))
    loss64, dlogits64 = ops.softmax_cross_entropy(logits, labels.astype(np.int64))
    assert loss == loss64
    np.testing.assert_array_equal(dlogits, dlogits64)


def test_extreme_logits():
    cases = [
        ([[1e4, 0.0, -1e4]], [1], 1e4),
        ([[1e4, 0.0, -1e4]], [0], 0.0),
        ([[3e38, 3e38]], [0], np.log(2)),
        ([[-3e38, -3e38, -3e38]], [2], np.log(3)),
        ([[3e38, -3e38]], [0], 0.0),
        ([[-1e4, -1e4 + 1]], [0], np.log1p(np.e)),
        ([[0.0] * 5, [50.0] * 5], [4, 0], np.log(5)),
    ]
    for logits, labels, expect in cases:
        logits = np.array(logits, np.float32)
        loss, dlogits = ops.softmax_cross_entropy(logits, np.array(labels))
        assert np.isfinite(loss) and np.isfinite(dlogits).all(), (logits, loss, dlogits)
        assert loss == pytest.approx(expect, rel=1e-5, abs=1e-6), logits
        _, ref_dlogits = ref.softmax_cross_entropy(logits, np.array(labels))
        ref.assert_close(dlogits, ref_dlogits, name=str(logits))


def test_repeatable_and_shift_invariant(rng):
    logits = rng.standard_normal((16, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 16)
    a = ops.softmax_cross_entropy(logits, labels)
    b = ops.softmax_cross_entropy(logits, labels)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    shifted = ops.softmax_cross_entropy(logits + np.float32(1000), labels)
    assert shifted[0] == pytest.approx(a[0], abs=1e-3)
    np.testing.assert_allclose(shifted[1], a[1], atol=1e-4)


def test_noncontiguous_inputs(rng):
    logits = rng.standard_normal((10, 6), dtype=np.float32)
    labels = rng.integers(0, 6, 20)[::2]
    expect = ops.softmax_cross_entropy(logits, np.ascontiguousarray(labels))
    got = ops.softmax_cross_entropy(np.asfortranarray(logits), labels)
    assert got[0] == expect[0]
    np.testing.assert_array_equal(got[1], expect[1])


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("case", CASES[:7], ids=str)
def test_label_smoothing(case, smoothing, rng):
    n, k, scale = case
    logits = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, n)
    loss, dlogits = ops.softmax_cross_entropy(logits, labels, label_smoothing=smoothing)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, labels, smoothing)
    assert loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-4)
    ref.assert_close(dlogits, ref_dlogits, name="dlogits")
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-6)


def test_label_smoothing_zero_is_the_plain_loss_bit_for_bit(rng):
    logits = rng.standard_normal((33, 17)).astype(np.float32)
    labels = rng.integers(0, 17, 33)
    plain = ops.softmax_cross_entropy(logits, labels)
    smooth = ops.softmax_cross_entropy(logits, labels, label_smoothing=0.0)
    assert plain[0] == smooth[0]
    np.testing.assert_array_equal(plain[1], smooth[1])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_label_smoothing_out_of_range(bad, rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.softmax_cross_entropy(logits, np.zeros(4, np.int64), label_smoothing=bad)
    from fastcnn import nn

    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=bad)


def test_label_smoothing_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    from fastcnn import nn

    logits = (rng.standard_normal((16, 10)) * 2).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = fn(logits, labels)
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    want = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(z, torch.tensor(labels))
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(fn.backward(), z.grad.numpy(), rtol=1e-4, atol=1e-7)
