"""Results do not depend on the thread count: 1, 2 and more threads agree bit for bit."""

import os

import numpy as np
import pytest
import reference as ref
from conftest import run_python

import fastcnn
from fastcnn import ops

THREAD_COUNTS = [2, 3, 4]

CONV_CASES = [
    # N, C, H, W, O, kh, kw, stride, padding
    (1, 16, 32, 32, 32, 3, 3, 1, 1),  # batch 1: threads must split within the image
    (4, 3, 28, 28, 16, 5, 5, 1, 2),
    (3, 17, 13, 11, 8, 3, 3, 2, 0),
    (8, 8, 16, 16, 16, 3, 3, 1, 1),  # dw sums over 8 images x 256 positions
    (2, 32, 14, 14, 64, 5, 5, 1, 2),  # SeedNet conv2
    (1, 1, 3, 3, 1, 3, 3, 1, 0),  # far less work than threads
]

LINEAR_CASES = [(64, 3136, 128), (1, 1000, 10), (33, 65, 17), (2, 5, 3), (256, 128, 10)]


def bits(a):
    """Raw bit pattern, so that even 0.0 vs -0.0 or two different NaNs count as a difference."""
    return np.ascontiguousarray(a).view(np.uint32)


def assert_bit_identical(a, b, name=""):
    if a is None or b is None:
        assert a is None and b is None, name
        return
    assert a.shape == b.shape, name
    np.testing.assert_array_equal(bits(a), bits(b), err_msg=name)


def run_with_threads(num_threads, n, fn):
    num_threads(n)
    assert fastcnn.get_num_threads() == n
    return fn()


def test_set_get_num_threads(num_threads):
    for n in (1, 2, 3, 7, 1):
        num_threads(n)
        assert fastcnn.get_num_threads() == n


def test_nonpositive_thread_count_is_refused_or_ignored(num_threads):
    for bad in (0, -1):
        try:
            num_threads(bad)
        except ValueError:
            pass
        assert fastcnn.get_num_threads() >= 1


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_bit_identical_across_threads(case, gemm_kernel, num_threads, rng):
    n, c, h, w, o, kh, kw, stride, padding = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, kh, kw), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)

    def compute():
        y = ops.conv2d_forward(x, wt, b, stride=stride, padding=padding, relu=True)
        dy = np.sin(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
        return (
            y,
            *ops.conv2d_backward(x, wt, dy, stride=stride, padding=padding),
            ops.conv2d_backward(x, wt, dy, stride=stride, padding=padding, need_dx=False)[1],
        )

    single = run_with_threads(num_threads, 1, compute)
    ref.assert_close(single[0], ref.conv2d_forward(x, wt, b, stride, padding, relu=True))
    for t in THREAD_COUNTS:
        multi = run_with_threads(num_threads, t, compute)
        for a, m, name in zip(single, multi, ["y", "dx", "dw", "db", "dw (need_dx=False)"]):
            assert_bit_identical(a, m, f"{name} with {t} threads")


@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_bit_identical_across_threads(case, gemm_kernel, num_threads, rng):
    n, fin, fout = case
    x = rng.standard_normal((n, fin), dtype=np.float32)
    w = rng.standard_normal((fout, fin), dtype=np.float32)
    b = rng.standard_normal(fout, dtype=np.float32)
    dy = rng.standard_normal((n, fout), dtype=np.float32)

    def compute():
        return (
            ops.linear_forward(x, w, b),
            ops.linear_forward(x, w, b, relu=True),
            *ops.linear_backward(x, w, dy),
        )

    single = run_with_threads(num_threads, 1, compute)
    for t in THREAD_COUNTS:
        multi = run_with_threads(num_threads, t, compute)
        for a, m, name in zip(single, multi, ["y", "y relu", "dx", "dw", "db"]):
            assert_bit_identical(a, m, f"{name} with {t} threads")


@pytest.mark.parametrize(
    "size", [(256, 513, 257), (97, 131, 300), (1, 700, 900), (700, 1, 900)], ids=str
)
def test_sgemm_bit_identical_across_threads(size, gemm_kernel, num_threads, rng):
    m, n, k = size
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    single = run_with_threads(num_threads, 1, lambda: ops.sgemm(a, b))
    for t in THREAD_COUNTS:
        assert_bit_identical(
            single, run_with_threads(num_threads, t, lambda: ops.sgemm(a, b)), f"c with {t} threads"
        )


def test_other_ops_bit_identical_across_threads(num_threads, rng):
    x = rng.standard_normal((4, 32, 28, 28), dtype=np.float32)
    dy = rng.standard_normal((4, 32, 14, 14), dtype=np.float32)
    logits = rng.standard_normal((64, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 64)

    def compute():
        y, idx = ops.maxpool2d_forward(x, 2)
        loss, dlogits = ops.softmax_cross_entropy(logits, labels)
        return (
            y,
            idx.view(np.float32),
            ops.maxpool2d_backward(dy, idx, x.shape),
            ops.avgpool2d_forward(x, 3, 2),
            ops.avgpool2d_backward(dy, x.shape, 2),
            ops.relu_forward(x),
            ops.relu_backward(x, x),
            np.float32([loss]),
            dlogits,
        )

    single = run_with_threads(num_threads, 1, compute)
    for t in THREAD_COUNTS:
        multi = run_with_threads(num_threads, t, compute)
        for i, (a, m) in enumerate(zip(single, multi)):
            assert_bit_identical(a, m, f"output {i} with {t} threads")


def python_in_repo(code, **env):
    return run_python(code, **env)


def test_environment_variable_sets_default():
    code = "import fastcnn; print(fastcnn.get_num_threads())"
    assert python_in_repo(code, FASTCNN_NUM_THREADS="1") == "1"
    assert python_in_repo(code, FASTCNN_NUM_THREADS="3") == "3"
    cores = {os.cpu_count(), len(os.sched_getaffinity(0))}
    assert int(python_in_repo(code)) in cores
