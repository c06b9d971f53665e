"""linear_forward / linear_backward against tests/reference.py, under every GEMM micro-kernel."""

import numpy as np
import pytest
import reference as ref

from fastcnn import ops

CASES = [
    # N, in_features, out_features
    (1, 1, 1),
    (1, 17, 1),
    (1, 1, 33),
    (7, 13, 5),
    (33, 65, 17),
    (128, 10, 10),
    (2, 3136, 128),  # SeedNet fc1 (7*7*64 -> 128)
    (64, 128, 10),  # SeedNet fc2
    (3, 300, 257),
    (17, 48, 96),  # tile multiples
]

EPILOGUES = ["none", "bias", "bias_relu", "relu"]


def make(rng, case):
    n, fin, fout = case
    x = rng.standard_normal((n, fin), dtype=np.float32)
    w = rng.standard_normal((fout, fin), dtype=np.float32)
    b = rng.standard_normal(fout, dtype=np.float32)
    return x, w, b


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward(case, epilogue, gemm_kernel, rng):
    x, w, b = make(rng, case)
    bias = b if epilogue in ("bias", "bias_relu") else None
    relu = epilogue in ("relu", "bias_relu")
    y = ops.linear_forward(x, w, bias, relu=relu)
    assert y.shape == (case[0], case[2]) and y.flags.c_contiguous
    ref.assert_close(y, ref.linear_forward(x, w, bias, relu=relu), name="y")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_out_is_overwritten(case, gemm_kernel, rng):
    x, w, b = make(rng, case)
    fresh = ops.linear_forward(x, w, b, relu=True)
    for garbage in (np.nan, -1e30):
        out = np.full(fresh.shape, garbage, np.float32)
        y = ops.linear_forward(x, w, b, relu=True, out=out)
        assert y is out
        np.testing.assert_array_equal(out, fresh)
    out = np.full(fresh.shape, np.nan, np.float32)
    ops.linear_forward(x, w, out=out)
    np.testing.assert_array_equal(out, ops.linear_forward(x, w))


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_backward(case, need_dx, gemm_kernel, rng):
    x, w, _ = make(rng, case)
    dy = rng.standard_normal((case[0], case[2]), dtype=np.float32)
    dx, dw, db = ops.linear_backward(x, w, dy, need_dx=need_dx)
    ref_dx, ref_dw, ref_db = ref.linear_backward(x, w, dy)
    if need_dx:
        ref.assert_close(dx, ref_dx, name="dx")
    else:
        assert dx is None
    ref.assert_close(dw, ref_dw, name="dw")
    ref.assert_close(db, ref_db, name="db")


def test_backward_overwrites(gemm_kernel, rng):
    x, w, _ = make(rng, (9, 20, 7))
    first = ops.linear_backward(x, w, rng.standard_normal((9, 7), dtype=np.float32))
    dy = rng.standard_normal((9, 7), dtype=np.float32)
    got = ops.linear_backward(x, w, dy)
    for g, f, e, name in zip(got, first, ref.linear_backward(x, w, dy), "dx dw db".split()):
        assert not np.shares_memory(g, f)
        ref.assert_close(g, e, name=name)


def test_inputs_not_modified_and_noncontiguous(rng):
    x, w, b = make(rng, (6, 11, 5))
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    y = ops.linear_forward(x, w, b)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    grads = ops.linear_backward(x, w, dy)
    for a, a0 in ((x, x0), (w, w0), (b, b0)):
        np.testing.assert_array_equal(a, a0)
    xf, wt = np.asfortranarray(x), np.ascontiguousarray(w.T).T
    bs = np.repeat(b, 3)[::3]
    np.testing.assert_array_equal(ops.linear_forward(xf, wt, bs), y)
    for g, e in zip(ops.linear_backward(xf, wt, np.asfortranarray(dy)), grads):
        np.testing.assert_array_equal(g, e)
