"""The raw SGEMM under every micro-kernel: edges of the register tiles and cache blocks."""

import ast

import numpy as np
import pytest
import reference as ref
from conftest import ALL_GEMM_KERNELS, run_python

from fastcnn import ops

SIZES = [
    # M, N, K  (c is M x N, the inner dimension K)
    (1, 1, 1),
    (1, 1, 300),
    (1, 257, 3),
    (257, 1, 3),
    (2, 3, 4),
    (8, 16, 16),
    (14, 32, 8),  # typical register tiles: 14x32 (AVX-512), 6x16 (AVX2)
    (6, 16, 1),
    (13, 17, 19),
    (31, 33, 65),
    (48, 48, 48),
    (97, 131, 300),
    (256, 513, 257),
    (1, 1000, 17),
    (600, 7, 5),
    (300, 70, 1100),  # K past a typical KC block, M past a typical MC block
    (20, 3000, 40),  # N past a typical NC block
]

TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]

# The last panel of B holds 16 of the 32 columns of the AVX-512 tile (a packing once copied it
# as a whole 16-wide AVX2 panel, and these products came out wrong).
PART_PANEL_SIZES = [(4, 16, 425), (9, 48, 700), (33, 80, 300), (7, 112, 1000), (48, 48, 48)]


def make(rng, m, n, k, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: f"ta{int(t[0])}tb{int(t[1])}")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_sgemm(size, trans, gemm_kernel, rng):
    a, b = make(rng, *size, *trans)
    c = ops.sgemm(a, b, trans_a=trans[0], trans_b=trans[1])
    assert c.shape == size[:2] and c.flags.c_contiguous
    ref.assert_close(c, ref.sgemm(a, b, *trans), name="c")


@pytest.mark.parametrize("size", SIZES[::3], ids=lambda s: "x".join(map(str, s)))
def test_sgemm_defaults_and_repeatable(size, gemm_kernel, rng):
    a, b = make(rng, *size, False, False)
    c = ops.sgemm(a, b)
    np.testing.assert_array_equal(c, ops.sgemm(a, b, False, False))
    np.testing.assert_array_equal(c, ops.sgemm(a, b))
    np.testing.assert_array_equal(c, ops.sgemm(np.ascontiguousarray(a.T), b, trans_a=True))


@pytest.mark.parametrize("trans", TRANSPOSES, ids=lambda t: f"ta{int(t[0])}tb{int(t[1])}")
@pytest.mark.parametrize("size", PART_PANEL_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_sgemm_part_filled_last_panel(size, trans, gemm_kernel, rng):
    # A product of other shapes first leaves other values in the pack buffers, as in real use.
    a, b = make(rng, 64, 96, 500, *trans)
    ops.sgemm(a, b, trans_a=trans[0], trans_b=trans[1])
    a, b = make(rng, *size, *trans)
    c = ops.sgemm(a, b, trans_a=trans[0], trans_b=trans[1])
    ref.assert_close(c, ref.sgemm(a, b, *trans), name="c")


def test_kernel_table():
    """Every kernel table is listed once, in the test fixture's order; each ISA kernel has a
    portable twin at exactly its geometry, which runs on any CPU."""
    table = {k["name"]: k for k in ops.gemm_kernel_table()}
    assert [k["name"] for k in ops.gemm_kernel_table()] == ALL_GEMM_KERNELS
    geometry = ("mr", "nr", "cmr", "cnr", "kc", "mc")
    for isa in ("avx512", "avx2"):
        kernel, twin = table[isa], table[f"generic-{isa}"]
        assert kernel["isa"] == isa and twin["isa"] == ""
        assert [kernel[g] for g in geometry] == [twin[g] for g in geometry]
        assert twin["supported"] and f"generic-{isa}" in ops.gemm_kernels()
    assert table["avx512"]["nr"] != table["avx2"]["nr"]  # the twins cover different geometries
    assert [k for k in ALL_GEMM_KERNELS if table[k]["supported"]] == ops.gemm_kernels()


def test_disable_isa_runs_as_a_cpu_without_it():
    code = "from fastcnn import ops; print(repr((ops.gemm_kernel(), ops.gemm_kernels())))"
    default, kernels = ast.literal_eval(run_python(code, FASTCNN_DISABLE_ISA="avx512, avx2"))
    assert default == "generic"
    assert kernels == ["generic", "generic-avx512", "generic-avx2"]
    default, kernels = ast.literal_eval(run_python(code, FASTCNN_DISABLE_ISA="avx512"))
    assert "avx512" not in kernels and default in ("avx2", "generic")


def test_sgemm_special_values(gemm_kernel):
    a = np.zeros((5, 7), np.float32)
    b = np.full((7, 3), 2.0, np.float32)
    np.testing.assert_array_equal(ops.sgemm(a, b), 0.0)
    a = np.eye(9, dtype=np.float32)
    b = np.arange(81, dtype=np.float32).reshape(9, 9)
    np.testing.assert_array_equal(ops.sgemm(a, b), b)
    np.testing.assert_array_equal(ops.sgemm(a, b, trans_b=True), b.T)
    # A NaN in A reaches its row of C (no "skip the zeros" shortcut that drops it).
    a = np.ones((4, 4), np.float32)
    a[2, 1] = np.nan
    c = ops.sgemm(a, np.ones((4, 5), np.float32))
    assert np.isnan(c[2]).all() and not np.isnan(np.delete(c, 2, axis=0)).any()


def test_sgemm_noncontiguous_inputs(rng):
    a = rng.standard_normal((20, 30), dtype=np.float32)
    b = rng.standard_normal((30, 11), dtype=np.float32)
    expect = ops.sgemm(a, b)
    np.testing.assert_array_equal(ops.sgemm(np.asfortranarray(a), b[:, :]), expect)
    ref.assert_close(ops.sgemm(a[::2], b[:, ::2]), ref.sgemm(a[::2], b[:, ::2]), name="c")


def test_kernel_selection():
    kernels = ops.gemm_kernels()
    assert isinstance(kernels, list) and kernels
    assert "generic" in kernels
    assert set(kernels) <= set(ALL_GEMM_KERNELS)
    assert ops.gemm_kernel() in kernels
    previous = ops.gemm_kernel()
    try:
        for name in kernels:
            ops.set_gemm_kernel(name)
            assert ops.gemm_kernel() == name
        with pytest.raises(ValueError, match="sse9"):
            ops.set_gemm_kernel("sse9")
        for name in {"avx512", "avx2"} - set(kernels):
            with pytest.raises(ValueError, match=name):
                ops.set_gemm_kernel(name)
        assert ops.gemm_kernel() == kernels[-1]  # a failed set changes nothing
    finally:
        ops.set_gemm_kernel(previous)


def test_default_kernel_is_the_best_supported():
    """A fresh process picks the widest micro-kernel the CPU supports."""
    code = "from fastcnn import ops; print(repr((ops.gemm_kernel(), ops.gemm_kernels())))"
    default, kernels = ast.literal_eval(run_python(code))
    assert default == [k for k in ("avx512", "avx2", "generic") if k in kernels][0]
