"""conv2d_forward / conv2d_backward against tests/reference.py, under every GEMM micro-kernel."""

import numpy as np
import pytest
import reference as ref
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastcnn import ops

CASES = [
    # N, C, H, W, O, kh, kw, stride, padding
    (1, 1, 5, 5, 1, 1, 1, 1, 0),
    (1, 1, 1, 1, 1, 1, 1, 1, 0),  # a single pixel
    (2, 3, 8, 8, 4, 3, 3, 1, 1),
    (1, 3, 7, 9, 5, 3, 3, 2, 1),
    (3, 17, 11, 13, 8, 5, 5, 1, 2),
    (2, 17, 15, 10, 6, 7, 7, 3, 2),
    (1, 17, 13, 13, 1, 3, 3, 1, 1),  # one output channel
    (2, 1, 28, 28, 32, 5, 5, 1, 2),  # SeedNet conv1
    (2, 32, 14, 14, 64, 5, 5, 1, 2),  # SeedNet conv2
    (4, 3, 9, 9, 16, 7, 7, 1, 0),
    (1, 2, 5, 5, 3, 7, 7, 1, 1),  # kernel exactly covers the padded input: 1x1 output
    (2, 3, 10, 7, 5, 1, 1, 2, 0),  # 1x1, strided
    (1, 5, 12, 12, 17, 3, 3, 3, 0),
    (5, 4, 6, 6, 3, 2, 2, 2, 0),  # even kernel
    (2, 3, 16, 16, 33, 3, 3, 1, 1),  # O just past a multiple of 16 / 32
    (1, 3, 6, 11, 2, 3, 5, (1, 2), (1, 2)),  # non-square kernel, stride and padding pairs
    (2, 3, 9, 12, 4, 1, 7, 1, (0, 3)),
    (1, 3, 12, 9, 4, 7, 1, (3, 1), (3, 0)),
    (2, 3, 11, 11, 4, 1, 1, 3, 0),  # stride larger than the kernel
    (1, 2, 10, 10, 3, 2, 2, 3, 1),
    (1, 2, 5, 5, 3, 1, 1, 1, 2),  # padding larger than the kernel: border is bias only
    (3, 7, 1, 19, 5, 1, 3, 1, (0, 1)),  # one-row images
    (2, 6, 23, 3, 9, 5, 3, 2, (2, 0)),  # tall thin images
    (2, 64, 10, 10, 70, 3, 3, 1, 1),  # long reduction (C*kh*kw = 576), O past 64
    (8, 3, 5, 5, 4, 5, 5, 1, 0),  # batch of 1x1 outputs
    # Wide enough for the indirect NHWC kernels (out and in channels >= 16):
    (1, 16, 9, 11, 16, 3, 3, 1, 1),  # batch 1: threads split one image's tiles
    (3, 20, 13, 7, 24, 5, 3, (2, 1), (2, 1)),  # strided: dx as stride-1 convolutions per phase
    (2, 33, 8, 9, 40, 3, 3, 1, 0),  # channels just past a register tile
    (2, 16, 6, 6, 16, 3, 3, 1, 3),  # padding past k-1: dx takes the im2col path
    (5, 18, 7, 7, 19, 1, 1, 1, 0),  # pointwise
    (1, 24, 4, 4, 32, 4, 4, 1, 0),  # kernel covers the input: one output pixel
    # The weight gradient reading the images in place (in channels a multiple of 16), which
    # skips the pixels whose tap row falls in the zero border:
    (2, 16, 9, 8, 20, 3, 3, 2, 1),  # strided
    (3, 32, 7, 6, 8, 5, 5, (2, 1), 3),  # strided, padding past k-1: rows with no valid tap
    (5, 16, 6, 6, 16, 3, 3, 1, 1),  # small images: a block spans several of them
    # The direct kernels (few input channels) at the kernel widths no case above has, with
    # output channels not a multiple of the channels a step:
    (2, 2, 9, 11, 7, 3, 4, 1, 1),
    (1, 1, 12, 13, 5, 2, 6, 1, 2),
    (2, 3, 10, 19, 3, 3, 8, (1, 2), (1, 3)),
    # ... and the weight gradient over a batch of more than 256 KB of dy and input (the AVX-512
    # kernel's images in blocks, the last one short; two output channels a pass, then one):
    (40, 3, 30, 30, 5, 3, 3, 1, 1),
    (20, 2, 40, 40, 3, 7, 7, 1, 3),
    # Strided dx by phases (ResNet's downsampling layers), and the shapes left to im2col:
    # phases no tap reaches, a phase with a negative border:
    (2, 16, 12, 12, 32, 3, 3, 2, 1),
    (2, 32, 7, 7, 64, 3, 3, 2, 1),  # odd input: phases of 4 and 3 positions
    (1, 24, 10, 11, 16, 5, 4, 3, 2),  # stride 3: nine phases of 1-2 taps a side
    (2, 16, 9, 9, 32, 1, 1, 2, 0),  # 1x1 shortcut: a stride-1 conv of the gathered pixels
    (1, 16, 7, 10, 16, 1, 1, (2, 3), 0),  # the same, batch 1, a stride a side, odd sizes
    (3, 32, 14, 14, 64, 1, 1, 2, 0),  # ResNet's second projection shortcut
    (2, 16, 5, 6, 20, 1, 1, (1, 2), 0),  # strided along W only
    (2, 16, 7, 7, 16, 1, 1, 2, 1),  # 1x1 strided with padding: not gathered
    (1, 24, 10, 11, 16, 2, 2, 3, 1),  # stride past the kernel: im2col
    (2, 16, 8, 8, 16, 4, 4, 2, 3),  # padding past k/2: im2col
    # Output pixels (the im2col GEMM's columns) filling 16 of the last 32-wide panel:
    (2, 17, 8, 8, 6, 5, 5, 2, 2),  # 4x4 output, strided
    (1, 1, 12, 12, 4, 5, 5, 1, 2),  # 144 pixels; dx of one input channel
    # Winograd's F(2x2, 5x5) (5x5, stride 1, where the indirect kernel applies): odd output
    # sizes (a last row and column of half-used tiles), batch 1 (threads split the tile blocks),
    # every padding up to 4, channels past a panel, more tiles than a block:
    (1, 16, 7, 9, 16, 5, 5, 1, 2),
    (2, 19, 9, 6, 35, 5, 5, 1, 1),
    (3, 16, 5, 5, 48, 5, 5, 1, 4),
    (1, 64, 12, 12, 16, 5, 5, 1, 0),
    (2, 24, 8, 11, 20, 5, 5, 1, 3),
    (2, 16, 20, 18, 24, 5, 5, 1, 2),  # 90 tiles an image: the weight gradient's blocks of 64
    # Winograd's F(4x4, 3x3) (3x3, stride 1): output sizes of every remainder mod 4 (last rows
    # and columns of partly used tiles), batch 1, paddings 0-2 and unequal ones, channels past
    # a panel, tiles past a block of the kernel's pixels:
    (1, 16, 7, 9, 16, 3, 3, 1, 1),
    (2, 19, 10, 6, 35, 3, 3, 1, 0),
    (3, 16, 5, 5, 48, 3, 3, 1, 2),
    (1, 64, 14, 14, 16, 3, 3, 1, 1),
    (2, 24, 6, 11, 70, 3, 3, 1, (2, 1)),
    (1, 16, 32, 32, 16, 3, 3, 1, 1),  # 64 tiles, output planes 4 KB apart
    # The weight gradient by F(4x4, 3x3): images of 9 blocks, three to a product; an image of
    # 81 blocks, past a product's 64:
    (20, 16, 12, 12, 16, 3, 3, 1, 1),
    (1, 16, 36, 36, 32, 3, 3, 1, 1),
]

EPILOGUES = ["none", "bias", "bias_relu", "relu"]


def make(rng, case):
    n, c, h, w, o, kh, kw, stride, padding = case
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((o, c, kh, kw), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    return x, wt, b, stride, padding


def ref_out_shape(case):
    n, c, h, w, o, kh, kw, stride, padding = case
    (sh, sw), (ph, pw) = ref.pair(stride), ref.pair(padding)
    return n, o, ref.out_size(h, kh, sh, ph), ref.out_size(w, kw, sw, pw)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward(case, epilogue, gemm_kernel, conv_algorithm, rng):
    x, w, b, stride, padding = make(rng, case)
    bias = b if epilogue in ("bias", "bias_relu") else None
    relu = epilogue in ("relu", "bias_relu")
    y = ops.conv2d_forward(x, w, bias, stride=stride, padding=padding, relu=relu)
    expect = ref.conv2d_forward(x, w, bias, stride, padding, relu=relu)
    assert y.shape == ref_out_shape(case)
    assert y.flags.c_contiguous
    ref.assert_close(y, expect, name="y")
    if relu:
        assert (y >= 0).all()


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_forward_out_is_overwritten(case, gemm_kernel, rng):
    """out= prefilled with garbage gives exactly the fresh result, and is what is returned."""
    x, w, b, stride, padding = make(rng, case)
    fresh = ops.conv2d_forward(x, w, b, stride=stride, padding=padding, relu=True)
    for garbage in (np.nan, 1e30, -7.0):
        out = np.full(fresh.shape, garbage, np.float32)
        y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding, relu=True, out=out)
        assert y is out
        np.testing.assert_array_equal(out, fresh)
    out = np.full(fresh.shape, np.nan, np.float32)
    ops.conv2d_forward(x, w, None, stride=stride, padding=padding, out=out)
    np.testing.assert_array_equal(
        out, ops.conv2d_forward(x, w, None, stride=stride, padding=padding)
    )


WINOGRAD = (2, 32, 14, 14, 64, 5, 5, 1, 2)  # SeedNet conv2: Winograd forward, dx and dw
WINOGRAD_3X3 = (2, 16, 14, 14, 16, 3, 3, 1, 1)  # ResNet's 3x3: F(4x4, 3x3), dw F(2x2, 3x3)
WINOGRAD_3X3_DW4 = (3, 16, 16, 16, 16, 3, 3, 1, 1)  # 3x3 at 16x16: dw F(4x4, 3x3) too
WINOGRAD_CASES = [WINOGRAD, WINOGRAD_3X3, WINOGRAD_3X3_DW4]
WINOGRAD_IDS = ["5x5", "3x3", "3x3-dw4x4"]


def _auto_and_indirect(x, w, b, dy, stride, padding):
    """{algorithm: (y, dx, dw)} for "auto" and "indirect"."""
    got = {}
    for algorithm in ("auto", "indirect"):
        ops.set_conv_algorithm(algorithm)
        try:
            y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
            dx, dw, _ = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
        finally:
            ops.set_conv_algorithm("auto")
        got[algorithm] = y, dx, dw
    return got


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_runs_where_it_applies(case, gemm_kernel, rng):
    """Winograd's rounding differs from the direct sums': "auto" (Winograd) and "indirect"
    disagree in the last bits where it runs, both within the reference's tolerance: y, dx and dw
    of 5x5 and 3x3 layers (the weight gradient's Winograd needs the in-place-B GEMM kernel,
    which the plain generic kernel lacks)."""
    x, w, b, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    got = _auto_and_indirect(x, w, b, dy, stride, padding)
    expect = (
        ref.conv2d_forward(x, w, b, stride, padding),
        *ref.conv2d_backward(x, w, dy, stride, padding)[:2],
    )
    for i, name in enumerate(("y", "dx", "dw")):
        ref.assert_close(got["auto"][i], expect[i], name=name)
        ref.assert_close(got["indirect"][i], expect[i], name=name)
        winograd = name != "dw" or gemm_kernel != "generic"
        assert np.array_equal(got["auto"][i], got["indirect"][i]) != winograd, name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_dx_of_an_image_does_not_depend_on_its_batch(case, threads, num_threads, rng):
    """With several images (and one thread, or segments for each), dx is computed inside the
    weight gradient's pass, each image's dy padded once for both; alone at two threads, on its
    own. An image's dx is the same bits either way, and so is dw with the batch split."""
    num_threads(threads)
    n, *rest = case
    x, w, _, stride, padding = make(rng, (4, *rest))
    dy = rng.standard_normal(ref_out_shape((4, *rest)), dtype=np.float32)
    dx, dw, _ = ops.conv2d_backward(x, w, dy, stride, padding)
    for i in (0, 3):
        alone, _, _ = ops.conv2d_backward(x[i : i + 1], w, dy[i : i + 1], stride, padding)
        np.testing.assert_array_equal(dx[i : i + 1], alone)
    ref_dx, ref_dw, _ = ref.conv2d_backward(x, w, dy, stride, padding)
    ref.assert_close(dx, ref_dx, name="dx")
    ref.assert_close(dw, ref_dw, name="dw")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "w", "dy"])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_non_finite_gives_the_direct_result(case, bad, where, gemm_kernel, rng):
    """Winograd's transforms would spread an Inf or NaN over whole tiles: where any output
    is not finite, the direct kernel's result is returned, the Inf and NaN exactly where the
    direct sums put them."""
    x, w, b, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    target = {"x": x, "w": w, "dy": dy}[where]
    target[1, 3, min(4, target.shape[2] - 1), min(7, target.shape[3] - 1)] = bad
    got = _auto_and_indirect(x, w, b, dy, stride, padding)
    for i in {"x": [0, 2], "w": [0, 1], "dy": [1, 2]}[where]:  # y, dx, dw: those it reaches
        np.testing.assert_array_equal(got["auto"][i], got["indirect"][i])
    if where == "x" and not np.isfinite(bad):  # the outputs whose window holds it, no more
        k, p = case[5], case[8]
        expect = np.zeros(got["auto"][0].shape, bool)
        expect[1, :, 4 + p - k + 1 : 4 + p + 1, 7 + p - k + 1 : 7 + p + 1] = True
        np.testing.assert_array_equal(~np.isfinite(got["auto"][0]), expect)


@pytest.mark.parametrize("huge", [1e37, 3e38])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_huge_values(case, huge, gemm_kernel, rng):
    """A huge finite input: Winograd's result where its transforms stay finite (errors then
    scale with the largest value in a tile's window, as the reference tolerance allows), the
    direct kernel's where they overflow (3e38: direct sums that stay finite must not become Inf),
    forward and for the weight gradient."""
    x, w, b, stride, padding = make(rng, case)
    w *= np.float32(0.05)
    x[1, 3, 4, 7] = huge
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32) * np.float32(0.05)
    y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    _, dw, _ = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding, need_dx=False)
    for name, got, expect in (
        ("y", y, ref.conv2d_forward(x, w, b, stride, padding)),
        ("dw", dw, ref.conv2d_backward(x, w, dy, stride, padding)[1]),
    ):
        assert np.isfinite(expect).all()
        assert np.isfinite(got).all(), name
        ref.assert_close(got, expect, name=name)


@pytest.mark.parametrize("case", CASES[1::4], ids=str)
def test_forward_repeats_bit_for_bit(case, gemm_kernel, rng):
    x, w, b, stride, padding = make(rng, case)
    y1 = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    y2 = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    np.testing.assert_array_equal(y1, y2)


def test_stride_and_padding_int_equals_pair(rng):
    x, w, b, _, _ = make(rng, (2, 3, 9, 8, 4, 3, 3, 1, 1))
    y_int = ops.conv2d_forward(x, w, b, stride=2, padding=1)
    np.testing.assert_array_equal(y_int, ops.conv2d_forward(x, w, b, stride=(2, 2), padding=(1, 1)))
    dx, dw, db = ops.conv2d_backward(x, w, y_int, stride=2, padding=1)
    dx2, dw2, db2 = ops.conv2d_backward(x, w, y_int, stride=(2, 2), padding=(1, 1))
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)


def test_default_arguments(rng):
    x, w, b, _, _ = make(rng, (2, 3, 6, 5, 4, 3, 2, 1, 0))
    ref.assert_close(ops.conv2d_forward(x, w), ref.conv2d_forward(x, w), name="y")
    ref.assert_close(ops.conv2d_forward(x, w, b), ref.conv2d_forward(x, w, b), name="y")


def test_inputs_are_not_modified(rng):
    x, w, b, stride, padding = make(rng, (2, 3, 8, 7, 4, 3, 3, 2, 1))
    copies = [a.copy() for a in (x, w, b)]
    y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding, relu=True)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dy_copy = dy.copy()
    ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    for a, c in zip((x, w, b, dy), (*copies, dy_copy)):
        np.testing.assert_array_equal(a, c)
    assert not np.shares_memory(y, x)


@pytest.mark.parametrize("case", [CASES[3], CASES[15]], ids=str)
def test_noncontiguous_inputs(case, rng):
    """Strided views, transposed and Fortran-ordered arrays are accepted and give the same."""
    x, w, b, stride, padding = make(rng, case)
    xs = np.repeat(x, 2, axis=3)[:, :, :, ::2]  # a strided view equal to x
    wf = np.asfortranarray(w)
    bs = np.repeat(b, 2)[::2]
    assert not xs.flags.c_contiguous and not wf.flags.c_contiguous and not bs.flags.c_contiguous
    y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    np.testing.assert_array_equal(ops.conv2d_forward(xs, wf, bs, stride=stride, padding=padding), y)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dyt = np.ascontiguousarray(dy.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    expect = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    got = ops.conv2d_backward(xs, wf, dyt, stride=stride, padding=padding)
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(g, e)


def test_denormal_flushing_does_not_leak_into_python(rng):
    """Kernels may flush denormals to zero, but must not leave the caller's FP mode changed."""
    x, w, b, stride, padding = make(rng, CASES[2])
    ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    ops.conv2d_backward(
        x, w, np.ones(ref_out_shape(CASES[2]), np.float32), stride=stride, padding=padding
    )
    ops.linear_forward(x.reshape(2, -1), w.reshape(4, -1)[:, :1].repeat(x[0].size, 1))
    tiny32 = np.array([1e-40], np.float32)
    assert (tiny32 * np.float32(1.0))[0] != 0
    assert (np.array([5e-324]) * 1.0)[0] != 0


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_backward(case, need_dx, gemm_kernel, conv_algorithm, rng):
    x, w, _, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    dx, dw, db = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding, need_dx=need_dx)
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dy, stride, padding)
    if need_dx:
        ref.assert_close(dx, ref_dx, name="dx")
    else:
        assert dx is None
    ref.assert_close(dw, ref_dw, name="dw")
    ref.assert_close(db, ref_db, name="db")


def test_backward_finite_dy_whose_plane_sums_overflow(gemm_kernel, rng):
    # The in-place weight gradient skips border taps only when dy's plane sums are finite (an
    # Inf or NaN in dy must reach dw through 0 * Inf); a finite plane of huge values overflows
    # its sum and turns the skipping off, which must not change dw.
    case = (2, 32, 14, 14, 64, 5, 5, 1, 2)  # SeedNet conv2
    x, w, _, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    dy[:, 3] = np.float32(1e37)  # 196 of them per plane: the float sum is Inf
    x *= np.float32(1e-3)
    _, dw, db = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding, need_dx=False)
    _, ref_dw, ref_db = ref.conv2d_backward(x, w, dy, stride, padding)
    assert np.isfinite(dw).all()
    ref.assert_close(dw, ref_dw, name="dw")
    assert db[3] == np.inf
    ref.assert_close(np.delete(db, 3), np.delete(ref_db, 3), name="db")


@pytest.mark.parametrize("case", CASES[::4], ids=str)
def test_backward_overwrites(case, gemm_kernel, rng):
    """Gradients never accumulate: a second call (new dy) gives that dy's gradients only."""
    x, w, _, stride, padding = make(rng, case)
    shape = ref_out_shape(case)
    first = ops.conv2d_backward(
        x, w, rng.standard_normal(shape, dtype=np.float32), stride=stride, padding=padding
    )
    dy = rng.standard_normal(shape, dtype=np.float32)
    got = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    again = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    for g, a, f in zip(got, again, first):
        np.testing.assert_array_equal(g, a)
        assert not np.shares_memory(g, f)
    for g, e, name in zip(got, ref.conv2d_backward(x, w, dy, stride, padding), "dx dw db".split()):
        ref.assert_close(g, e, name=name)


STRIDED_POINTWISE = [c for c in CASES if c[5] == c[6] == 1 and c[7] != 1 and c[8] == 0]


@pytest.mark.parametrize("case", CASES[::3] + STRIDED_POINTWISE, ids=str)
def test_backward_add_dx_adds_into_the_given_array(case, gemm_kernel, conv_algorithm, rng):
    """add_dx: dx is added into out's dx (a residual block's branches meeting), every pixel of
    it, the strided 1x1 shortcut's skipped pixels kept as they were; dw and db as without."""
    x, w, _, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    base = rng.standard_normal(x.shape, dtype=np.float32)
    into = base.copy()
    dx, dw, db = ops.conv2d_backward(x, w, dy, stride, padding, out=(into, None, None), add_dx=True)
    assert dx is into
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dy, stride, padding)
    ref.assert_close(dx, base.astype(np.float64) + ref_dx, name="dx")
    ref.assert_close(dw, ref_dw, name="dw")
    ref.assert_close(db, ref_db, name="db")
    # bit for bit the sum of the plain dx and the array, as ops.add gives it
    plain = ops.conv2d_backward(x, w, dy, stride, padding)[0]
    np.testing.assert_array_equal(dx, ops.add(base, plain))


@pytest.mark.parametrize("n", [1, 3, 9])  # a segment of the weight gradient per image, or several
def test_backward_non_finite_dy_in_one_image_reaches_dw(n, gemm_kernel, conv_algorithm, rng):
    # The in-place weight gradient skips the zero border's products image segment by image
    # segment, only where that segment's dy is finite: an Inf in one image's dy must still give
    # the NaN of 0 * Inf at the taps that read the border, as the reference's direct sums do.
    case = (n, 16, 9, 8, 20, 3, 3, 2, 1)
    x, w, _, stride, padding = make(rng, case)
    dy = rng.standard_normal(ref_out_shape(case), dtype=np.float32)
    dy[n - 1, 2, 0, 0] = np.inf
    _, dw, _ = ops.conv2d_backward(x, w, dy, stride, padding, need_dx=False)
    with np.errstate(invalid="ignore", over="ignore"):
        _, ref_dw, _ = ref.conv2d_backward(x, w, dy, stride, padding)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(ref_dw))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(ref_dw))
    assert np.isnan(dw).any()  # the border's 0 * Inf, at least
    finite = np.isfinite(ref_dw)
    ref.assert_close(dw[finite], ref_dw[finite], name="dw")


def test_backward_add_dx_needs_the_array(rng):
    x, w, _, stride, padding = make(rng, CASES[0])
    dy = rng.standard_normal(ref_out_shape(CASES[0]), dtype=np.float32)
    with pytest.raises(ValueError, match="add_dx"):
        ops.conv2d_backward(x, w, dy, stride, padding, add_dx=True)
    with pytest.raises(ValueError, match="add_dx"):
        into = np.zeros(x.shape, np.float32)
        ops.conv2d_backward(
            x, w, dy, stride, padding, need_dx=False, out=(into, None, None), add_dx=True
        )
    for into in (np.zeros((x.shape[0] + 1, *x.shape[1:]), np.float32), x.astype(np.float64)):
        with pytest.raises((ValueError, TypeError)):  # never added into a copy
            ops.conv2d_backward(x, w, dy, stride, padding, out=(into, None, None), add_dx=True)


@pytest.mark.parametrize(
    "case",
    [
        (2, 0, 8, 8, 16, 1, 1, 4, 0),  # no input channels: y is the bias, dw is empty
        (2, 0, 9, 9, 32, 3, 3, 1, 1),
        (0, 32, 8, 8, 16, 3, 3, 1, 1),  # no images
        (2, 32, 8, 8, 0, 3, 3, 1, 1),  # no output channels
    ],
    ids=str,
)
def test_empty_dimensions(case, gemm_kernel, conv_algorithm, rng):
    x, w, b, stride, padding = make(rng, case)
    y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding)
    ref.assert_close(y, ref.conv2d_forward(x, w, b, stride, padding), name="y")
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    got = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    for g, e, name in zip(got, ref.conv2d_backward(x, w, dy, stride, padding), "dx dw db".split()):
        assert g.shape == e.shape, name
        ref.assert_close(g, e, name=name)


def test_backward_zero_dy_gives_zero_gradients(rng):
    x, w, _, stride, padding = make(rng, CASES[4])
    dy = np.zeros(ref_out_shape(CASES[4]), np.float32)
    for g in ops.conv2d_backward(x, w, dy, stride=stride, padding=padding):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("channels", [3, 16])  # few channels, and the indirect kernels
def test_strided_pointwise_never_reads_the_pixels_it_skips(
    channels, gemm_kernel, conv_algorithm, rng
):
    # A 1x1 stride-2 convolution reads only even rows and columns, as PyTorch's: NaN elsewhere
    # must not reach y or dw, and dx is 0 there.
    x = rng.standard_normal((2, channels, 7, 9), dtype=np.float32)
    w = rng.standard_normal((8, channels, 1, 1), dtype=np.float32)
    clean = x.copy()
    x[:, :, 1::2, :] = np.nan
    x[:, :, :, 1::2] = np.nan
    y = ops.conv2d_forward(x, w, stride=2)
    ref.assert_close(y, ref.conv2d_forward(clean, w, None, 2, 0), name="y")
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = ops.conv2d_backward(x, w, dy, stride=2)
    rdx, rdw, rdb = ref.conv2d_backward(clean, w, dy, 2, 0)
    ref.assert_close(dw, rdw, name="dw")
    ref.assert_close(dx, rdx, name="dx")
    assert np.all(dx[:, :, 1::2, :] == 0) and np.all(dx[:, :, :, 1::2] == 0)


# --------------------------------------------------------------------------------------------
# properties over random shapes
# --------------------------------------------------------------------------------------------


@st.composite
def conv_shapes(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 9))
    return n, c, h, w, o, kh, kw, (sh, sw), (ph, pw)


@st.composite
def winograd_shapes(draw):
    """5x5 or 3x3, stride 1: Winograd's layers where the indirect kernels apply (8 or more
    output channels; the weight gradient's Winograd wants whole panels of input channels), any
    padding up to k - 1 a side, odd and even sizes."""
    k = draw(st.sampled_from([3, 5]))
    ph, pw = draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))
    h, w = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    assume(h + 2 * ph >= k and w + 2 * pw >= k)
    n, o = draw(st.integers(1, 3)), draw(st.integers(8, 40))
    c = draw(st.sampled_from([5, 8, 16, 17, 32, 48]))
    return n, c, h, w, o, k, k, 1, (ph, pw)


@settings(max_examples=40, deadline=None)
@given(case=winograd_shapes(), seed=st.integers(0, 2**31 - 1), relu=st.booleans())
def test_property_winograd(case, seed, relu):
    _forward_backward_against_reference(case, seed, relu)


@settings(max_examples=60, deadline=None)
@given(case=conv_shapes(), seed=st.integers(0, 2**31 - 1), relu=st.booleans())
def test_property_forward_backward(case, seed, relu):
    _forward_backward_against_reference(case, seed, relu)


def _forward_backward_against_reference(case, seed, relu):
    rng = np.random.default_rng(seed)
    x, w, b, stride, padding = make(rng, case)
    y = ops.conv2d_forward(x, w, b, stride=stride, padding=padding, relu=relu)
    ref.assert_close(y, ref.conv2d_forward(x, w, b, stride, padding, relu=relu), name="y")
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    got = ops.conv2d_backward(x, w, dy, stride=stride, padding=padding)
    for g, e, name in zip(got, ref.conv2d_backward(x, w, dy, stride, padding), "dx dw db".split()):
        ref.assert_close(g, e, name=name)
