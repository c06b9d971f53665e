"""Bad input, the matrix that test_errors.py (op arguments), test_data.py, test_io.py and
test_cli.py leave open: non-finite values in the ops, empty data sets, out-of-range labels,
decompression bombs, and every CLI command given a missing, unreadable or corrupt input.

The rule (DESIGN.md, "Errors"): a Python exception that names the problem, never a crash,
never a silent wrong answer. Non-finite numbers are not errors: they must propagate as they do
in PyTorch (IEEE arithmetic; NaN wins max-pooling; ReLU keeps NaN).

Cases that fastcnn gets wrong today are marked xfail(strict=True) with the reason: they pass
once the bug is fixed, and then fail the run until the mark is removed.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
import reference as ref
from PIL import Image
from safetensors.numpy import save_file

import fastcnn
from fastcnn import data, io, nn, ops, transforms

# ---------------------------------------------------------------------------------------------
# non-finite values in the ops: the NaN / +Inf / -Inf pattern of the float64 reference, exactly
# ---------------------------------------------------------------------------------------------

NONFINITE = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


def assert_same_nonfinite(got, want, name=""):
    """Same NaN, +Inf and -Inf positions as the reference; the finite rest as close as usual."""
    got, want = np.asarray(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        g, w = test(got), test(want)
        assert np.array_equal(g, w), (
            f"{name}: {what} at {np.argwhere(g & ~w)[:4].tolist()} (not in the reference), "
            f"missing at {np.argwhere(w & ~g)[:4].tolist()}"
        )
    finite = np.isfinite(want)
    ref.assert_close(
        np.where(finite, got, 0).astype(np.float32), np.where(finite, want, 0), name=name
    )


def poison(a, value, *positions):
    a = a.copy()
    for p in positions:
        a[p] = value
    return a


def normal(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


# (N, C, H, W, O, k, stride, padding): the generic path, the direct kernel for few input
# channels (SeedNet's first layer), and a strided one.
CONV_SHAPES = {
    "generic": (2, 3, 9, 9, 8, 3, 1, 1),
    "few-channels": (2, 1, 12, 12, 32, 5, 1, 2),
    "strided": (1, 16, 8, 8, 32, 3, 2, 1),
    "wide": (1, 16, 8, 8, 16, 3, 1, 1),  # dx on the indirect kernel
}

# Findings, pinned: (GEMM kernel, conv algorithm, shape, where, value) -> what goes wrong. Each
# is expected to fail until fixed; a fixed one fails the test until its entry is removed.
_PAD_SKIP = (
    "conv2d_forward, indirect path with the generic micro-kernel: taps on the "
    "zero padding are skipped, so 0 * NaN-weight is not NaN there (the avx512 "
    "and im2col paths, the reference and PyTorch's native conv give NaN)"
)
_ROW_SKIP = (
    "conv2d_forward, indirect path: tap rows that lie on the zero padding for a whole tile "
    "are skipped, so 0 * NaN-weight there is not NaN at the border pixels (every other pixel "
    "is NaN; the im2col path, the reference and PyTorch's native conv give NaN there too)"
)
KNOWN_CONV = {
    **{
        ("generic", a, "strided", "w", v): _PAD_SKIP
        for a in ("auto", "indirect")
        for v in ("nan", "+inf", "-inf")
    },
    **{
        (k, a, "wide", "w", v): _ROW_SKIP
        for k in ("avx512", "avx2", "generic", "generic-avx512", "generic-avx2")
        for a in ("auto", "indirect")
        for v in ("nan", "+inf", "-inf")
    },
}


def pinned(known, check):
    """Run `check`; where `known` names an open finding, it must still fail (then xfail)."""
    if not known:
        return check()
    try:
        check()
    except AssertionError:
        pytest.xfail(known)
    pytest.fail(f"fixed? remove this case from its KNOWN table: {known}")


def conv_case(where, value, shape, rng):
    """[(name, got, want)] for one non-finite value placed in `where`."""
    n, c, h, w_, o, k, s, p = shape
    x, w, b = normal(rng, n, c, h, w_), normal(rng, o, c, k, k), normal(rng, o)
    oh, ow = (h + 2 * p - k) // s + 1, (w_ + 2 * p - k) // s + 1
    dy = normal(rng, n, o, oh, ow)
    if where in ("x", "x relu", "dx of x"):
        x = poison(x, value, (0, 0, 0, 0), (n - 1, c - 1, h // 2, w_ // 2))
    elif where in ("w", "dx of w"):
        # The corner tap lands on the padding at the border: the reference pads with explicit
        # zeros, so 0 * Inf and 0 * NaN there give NaN (PyTorch's native conv does the same;
        # its oneDNN path for batches skips the padding and gives a number).
        w = poison(w, value, (o - 1, 0, 0, 0))
    elif where == "b":
        b = poison(b, value, (o // 2,))
    elif where == "dy":
        dy = poison(dy, value, (0, 0, 0, 0), (n - 1, o - 1, oh - 1, ow // 2))
    if where in ("x", "w", "b"):
        return [("y", ops.conv2d_forward(x, w, b, s, p), ref.conv2d_forward(x, w, b, s, p))]
    if where == "x relu":
        return [
            (
                "y",
                ops.conv2d_forward(x, w, b, s, p, relu=True),
                np.maximum(ref.conv2d_forward(x, w, b, s, p), 0),
            )
        ]
    names = ("dx", "dw", "db")
    return list(
        zip(names, ops.conv2d_backward(x, w, dy, s, p), ref.conv2d_backward(x, w, dy, s, p))
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the float64 reference meets NaN too
@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("where", ["x", "w", "b", "x relu", "dy", "dx of x", "dx of w"])
@pytest.mark.parametrize("shape", sorted(CONV_SHAPES))
def test_conv2d_propagates_nonfinite(shape, where, value, rng, gemm_kernel, conv_algorithm):
    def check():
        for name, got, want in conv_case(where, NONFINITE[value], CONV_SHAPES[shape], rng):
            assert_same_nonfinite(got, want, name)

    pinned(KNOWN_CONV.get((gemm_kernel, conv_algorithm, shape, where, value)), check)


def _maxpool(value, rng, relu, k, s):
    x = normal(rng, 2, 3, 8, 9)
    # One non-finite value per window (with two NaNs in a window the index is a tie; fastcnn
    # keeps the first, as documented, PyTorch the last).
    x = poison(x, value, (0, 0, 1, 1), (1, 2, 6, 7))
    y, idx = ops.maxpool2d_forward(x, k, s, relu=relu)
    ry, ridx = ref.maxpool2d_forward(x, k, s)
    assert_same_nonfinite(y, np.maximum(ry, 0) if relu else ry, "y")
    if not relu:  # fused: indices of the pre-ReLU maximum, checked by test_pool2d
        np.testing.assert_array_equal(idx, ridx)


def _maxpool_backward(value, rng):
    x = normal(rng, 2, 3, 8, 8)
    _, idx = ops.maxpool2d_forward(x, 2)
    dy = poison(normal(rng, 2, 3, 4, 4), value, (0, 1, 2, 3), (1, 0, 0, 0))
    assert_same_nonfinite(
        ops.maxpool2d_backward(dy, idx, x.shape), ref.maxpool2d_backward(dy, idx, x.shape), "dx"
    )


def _avgpool(value, rng):
    x = poison(normal(rng, 2, 3, 8, 9), value, (0, 0, 1, 1), (1, 2, 7, 8))
    assert_same_nonfinite(ops.avgpool2d_forward(x, 3, 2), ref.avgpool2d_forward(x, 3, 2), "y")
    dy = poison(normal(rng, 2, 3, 3, 4), value, (0, 0, 1, 1))
    assert_same_nonfinite(
        ops.avgpool2d_backward(dy, x.shape, 3, 2), ref.avgpool2d_backward(dy, x.shape, 3, 2), "dx"
    )


def _linear(value, rng, where):
    x, w, b, dy = normal(rng, 5, 37), normal(rng, 19, 37), normal(rng, 19), normal(rng, 5, 19)
    if where == "x":
        x = poison(x, value, (2, 3), (4, 36))
    elif where == "w":
        w = poison(w, value, (18, 0))
    elif where == "b":
        b = poison(b, value, (7,))
    else:
        dy = poison(dy, value, (4, 18))
    assert_same_nonfinite(ops.linear_forward(x, w, b), ref.linear_forward(x, w, b), "y")
    assert_same_nonfinite(
        ops.linear_forward(x, w, b, relu=True),
        np.maximum(ref.linear_forward(x, w, b), 0),
        "relu(y)",
    )
    for name, got, want in zip(
        ("dx", "dw", "db"), ops.linear_backward(x, w, dy), ref.linear_backward(x, w, dy)
    ):
        assert_same_nonfinite(got, want, name)


def _relu(value, rng):
    x = poison(normal(rng, 3, 17), value, (0, 0), (2, 16))
    assert_same_nonfinite(ops.relu_forward(x), np.maximum(x.astype(np.float64), 0), "y")
    dy = poison(normal(rng, 3, 17), value, (1, 1), (1, 2))
    y = poison(np.abs(normal(rng, 3, 17)), value, (1, 2), (2, 5))
    y[1, 1] = 1.0  # a NaN / Inf gradient where the unit is on passes through
    # PyTorch's threshold_backward: zero where y <= 0, dy elsewhere, so also where y is NaN.
    want = np.where(y <= 0, 0.0, dy.astype(np.float64))
    assert_same_nonfinite(ops.relu_backward(y, dy), want, "dx")


def _cross_entropy(value, rng, column):
    logits = normal(rng, 4, 5)
    labels = np.array([0, 1, 2, 3])
    logits = poison(logits, value, (1, 1 if column == "target" else 4))
    loss, d = ops.softmax_cross_entropy(logits, labels)
    ref_loss, ref_d = ref.softmax_cross_entropy(logits, labels)
    if np.isfinite(ref_loss):
        assert loss == pytest.approx(ref_loss, rel=1e-4)
    else:
        assert np.isnan(loss) if np.isnan(ref_loss) else loss == ref_loss
    assert_same_nonfinite(d, ref_d, "dlogits")


def _sgemm(value, rng, trans):
    a, b = normal(rng, 33, 21), normal(rng, 21, 18)
    a = poison(a, value, (32, 20))
    b = poison(b, value, (0, 17))
    if trans:
        a, b = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    assert_same_nonfinite(ops.sgemm(a, b, trans, trans), ref.sgemm(a, b, trans, trans), "c")


OTHER_OPS = {
    "maxpool 2x2": lambda v, rng: _maxpool(v, rng, False, 2, 2),
    "maxpool 3x3 stride 1": lambda v, rng: _maxpool(v, rng, False, 3, 1),
    "maxpool fused relu": lambda v, rng: _maxpool(v, rng, True, 2, 2),
    "maxpool backward": _maxpool_backward,
    "avgpool forward and backward": _avgpool,
    "linear x": lambda v, rng: _linear(v, rng, "x"),
    "linear w": lambda v, rng: _linear(v, rng, "w"),
    "linear b": lambda v, rng: _linear(v, rng, "b"),
    "linear dy": lambda v, rng: _linear(v, rng, "dy"),
    "relu forward and backward": _relu,
    "cross-entropy target logit": lambda v, rng: _cross_entropy(v, rng, "target"),
    "cross-entropy other logit": lambda v, rng: _cross_entropy(v, rng, "other"),
    "sgemm": lambda v, rng: _sgemm(v, rng, False),
    "sgemm transposed": lambda v, rng: _sgemm(v, rng, True),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("case", sorted(OTHER_OPS))
def test_ops_propagate_nonfinite(case, value, rng, gemm_kernel):
    OTHER_OPS[case](NONFINITE[value], rng)


def test_nonfinite_check_can_fail():
    """assert_same_nonfinite is not vacuous: a NaN turned into a number is caught."""
    with pytest.raises(AssertionError, match="NaN"):
        assert_same_nonfinite(np.zeros(3, np.float32), np.array([0.0, np.nan, 0.0]))
    with pytest.raises(AssertionError, match="Inf"):
        assert_same_nonfinite(np.array([np.inf], np.float32), np.array([-np.inf]))


# ---------------------------------------------------------------------------------------------
# data sets, training and prediction: (id, call, exception type, message regex)
# ---------------------------------------------------------------------------------------------


class Empty:
    """A data set with nothing in it (a filter that matched nothing, an empty split)."""

    classes = ["a", "b"]

    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


class PerSample:
    """A plain data set (len and [i], no arrays) with the labels it is given."""

    def __init__(self, labels, size=8):
        self.labels_ = list(labels)
        self.size = size

    def __len__(self):
        return len(self.labels_)

    def __getitem__(self, i):
        image = np.full((1, self.size, self.size), i % 3, np.float32)
        return image, self.labels_[i]


def net(num_classes=3, size=8):
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * (size // 2) ** 2, num_classes),
    )


def images(n, size=8):
    return np.random.default_rng(n).integers(0, 256, (n, size, size), dtype=np.uint8)


def fit(train, **kw):
    return fastcnn.fit(net(), train, epochs=1, batch_size=4, progress=False, **kw)


def case(name, call, exc, match, xfail=None):
    marks = [pytest.mark.xfail(strict=True, **xfail)] if xfail else []
    return pytest.param(call, exc, match, id=name, marks=marks)


DATA_CASES = [
    case("fit empty data set", lambda: fit(Empty()), ValueError, "empty"),
    case(
        "fit empty arrays",
        lambda: fit((np.zeros((0, 8, 8), np.uint8), np.zeros(0, int))),
        ValueError,
        "empty",
    ),
    case(
        "fit loader over an empty data set",
        lambda: fit(data.DataLoader(Empty())),
        ValueError,
        "empty|no batch",
    ),
    case(
        "fit loader whose drop_last drops everything",
        lambda: fit(
            data.DataLoader(data.ArrayDataset(images(3), [0, 1, 2]), batch_size=4, drop_last=True)
        ),
        ValueError,
        "empty|no batch",
    ),
    case(
        "fit validation set empty",
        lambda: fit(data.ArrayDataset(images(8), [0, 1, 2] * 2 + [0, 1]), val=Empty()),
        ValueError,
        "empty",
    ),
    case("evaluate empty data set", lambda: fastcnn.evaluate(net(), Empty()), ValueError, "empty"),
    case(
        "evaluate loader over an empty data set",
        lambda: fastcnn.evaluate(net(), data.DataLoader(Empty())),
        ValueError,
        "empty",
    ),
    case(
        "predict empty float batch",
        lambda: fastcnn.predict(net(), np.zeros((0, 1, 8, 8), np.float32)),
        ValueError,
        "no images",
    ),
    case("predict empty list", lambda: fastcnn.predict(net(), []), ValueError, "images|shape"),
    case(
        "predict empty uint8 batch",
        lambda: fastcnn.predict(_with_prep(net()), np.zeros((0, 8, 8), np.uint8)),
        ValueError,
        "shape",
    ),
    case(
        "fit labels beyond the model's outputs (classes from the labels)",
        lambda: fit(data.ArrayDataset(images(6), [0, 1, 2, 3, 4, 5])),
        ValueError,
        "6 classes but the model outputs only 3",
    ),
    case(
        "fit labels beyond the model's outputs, plain data set",
        lambda: fit(PerSample([0, 1, 7, 2])),
        ValueError,
        r"labels out of range.*= 7",
    ),
    case(
        "fit negative label, plain data set",
        lambda: fit(PerSample([0, -1, 2, 1])),
        ValueError,
        r"labels out of range.*= -1",
    ),
    case(
        "fit labels beyond the outputs, arrays",
        lambda: fit((np.zeros((4, 1, 8, 8), np.float32), np.array([0, 3, 1, 2]))),
        ValueError,
        "4 classes but the model outputs only 3",
    ),
    case(
        "fit float labels, plain data set",
        lambda: fit(PerSample([0.5, 1.5, 2.0, 0.0])),
        (TypeError, ValueError),
        "label",
    ),
    case(
        "evaluate labels of a plain data set beyond the outputs",
        lambda: fastcnn.evaluate(net(), PerSample([0, 1, 2, 3])),
        ValueError,
        "out of range",
    ),
    case(
        "load a model whose preprocessing asks for 10^10-pixel images",
        lambda: _load_with_prep({"image_size": [100_000, 100_000]}),
        ValueError,
        "image_size|preprocessing",
    ),
    case(
        "fit Inf images",
        lambda: fit((np.full((4, 1, 8, 8), np.inf, np.float32), [0, 1, 2, 0])),
        FloatingPointError,
        "epoch 1, batch 1",
    ),
]


def _load_with_prep(prep):
    """fastcnn.load of a model file whose preprocessing metadata is updated with `prep`."""
    with tempfile.TemporaryDirectory() as folder:
        model = _with_prep(net())
        model.preprocessing.update(prep)
        path = os.path.join(folder, "prep.safetensors")
        fastcnn.save(model, path)
        return fastcnn.load(path)


def _with_prep(model):
    model.preprocessing = {"image_size": [8, 8], "channels": 1, "mean": [0.0], "std": [1.0]}
    return model


@pytest.mark.parametrize("call,exc,match", DATA_CASES)
def test_bad_data(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_over_an_empty_data_set_yields_nothing(shuffle, prefetch):
    loader = data.DataLoader(Empty(), batch_size=4, shuffle=shuffle, seed=0, prefetch=prefetch)
    assert len(loader) == 0
    assert list(loader) == []
    assert list(loader) == []  # and again, next epoch


def test_nan_propagates_to_predict_not_hidden():
    """A NaN image gives NaN probabilities (as PyTorch's softmax would), not a confident label."""
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    x[1, 0, 4, 4] = np.nan
    p = fastcnn.predict(net(), x)
    assert np.isnan(p[1]).all() and np.isfinite(p[[0, 2]]).all()


# ---------------------------------------------------------------------------------------------
# decompression bombs: headers that claim 10^10 pixels, a few hundred bytes on disk
# ---------------------------------------------------------------------------------------------


def _png_chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bomb(width=100_000, height=100_000):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def bmp_bomb(width=100_000, height=100_000):
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 256, 0)
    palette = bytes(range(256)) * 4
    pixels = b"\0" * 64
    offset = 14 + len(info) + len(palette)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def gif_bomb(width=65535, height=65535):
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + image + b"\x02\x02\x44\x01\x00" + b"\x3b"


BOMBS = {"png": png_bomb, "bmp": bmp_bomb, "gif": gif_bomb}


def bomb_folder(root, kind):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("L", (10, 10), 7).save(root / "a" / "fine.png")
    path = root / "b" / f"bomb.{kind}"
    path.write_bytes(BOMBS[kind]())
    return root, path


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_bomb_files_claim_huge_sizes(tmp_path, kind):
    """The bombs are what they claim: Pillow reads the header (and refuses it as a bomb)."""
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(BOMBS[kind]())
    assert path.stat().st_size < 2000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


BOMB_CASES = [
    (f"{where} {kind}{' (Pillow guard off)' if off else ''}", where, kind, off)
    for where in ("ImageFolder", "predict")
    for kind in sorted(BOMBS)
    for off in (False, True)
]


@pytest.mark.parametrize(
    "where,kind,pillow_guard_off", [c[1:] for c in BOMB_CASES], ids=[c[0] for c in BOMB_CASES]
)
def test_decompression_bomb_is_refused_by_name(
    tmp_path, monkeypatch, where, kind, pillow_guard_off
):
    if pillow_guard_off:
        # Another library switched Pillow's guard off: fastcnn's own limit must still hold. The
        # bomb is then just past that limit (90 megapixels), so that a regression costs a
        # 90 MB decode attempt, not a 10 GB one.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        monkeypatch.setitem(BOMBS, kind, lambda f=BOMBS[kind]: f(10_000, 9_000))
    root, path = bomb_folder(tmp_path / "photos", kind)
    with pytest.raises(ValueError, match=rf"bomb\.{kind}.*decompression bomb"):
        if where == "ImageFolder":
            data.ImageFolder(root, 8)
        else:
            fastcnn.predict(_with_prep(net()), str(path))


def test_decompression_bomb_is_skipped_with_skip_bad(tmp_path):
    root, path = bomb_folder(tmp_path / "photos", "png")
    (root / "b" / "ok.png").write_bytes((root / "a" / "fine.png").read_bytes())
    ds = data.ImageFolder(root, 8, skip_bad=True)
    assert ds.skipped == [str(path)] and len(ds) == 2


def test_the_bombs_are_over_fastcnn_pixel_limit():
    assert transforms.MAX_IMAGE_PIXELS <= 100_000_000
    assert 100_000 * 100_000 > transforms.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------------------------
# the CLI: a missing, unreadable or corrupt input -> one line "fastcnn: error: ...", exit 1
# ---------------------------------------------------------------------------------------------

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__)))


def cli(*args, cwd, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.pop("FASTCNN_PROGRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "fastcnn.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _overcommit_always():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _model_file(path, *, prep=None, arch=None):
    """A small valid model file, with its preprocessing or one layer's config replaced."""
    model = _with_prep(net(num_classes=2))
    model.classes = ["a", "b"]
    meta = {
        "format": "fastcnn",
        "format_version": "1",
        "architecture": io.architecture(model),
        "classes": model.classes,
        "preprocessing": dict(model.preprocessing, **(prep or {})),
    }
    if arch:
        index, key, value = arch
        meta["architecture"]["layers"][index]["config"][key] = value
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    tensors = {k: np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)
    return path.name


@pytest.fixture(scope="module")
def clidir(tmp_path_factory):
    """images/ (two classes of 10x10 PNGs) and model.safetensors (1 channel, 8x8, 2 classes)."""
    root = tmp_path_factory.mktemp("badcli")
    for label, level in (("a", 20), ("b", 220)):
        (root / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (10, 10), level + i).save(root / "images" / label / f"{i}.png")
    model = _with_prep(net(num_classes=2))
    model.classes = ["a", "b"]
    fastcnn.save(model, root / "model.safetensors")
    return root


def folder_with(root, name, filename, content):
    """A copy of images/ with one more file in class a."""
    target = root / name
    if not target.exists():
        shutil.copytree(root / "images", target)
    (target / "a" / filename).write_bytes(content)
    return name


def folder_with_class(root, name, cls):
    target = root / name
    if not target.exists():
        shutil.copytree(root / "images", target)
        (target / cls).mkdir()
        Image.new("L", (10, 10), 5).save(target / cls / "x.png")
    return name


def write(root, name, content):
    (root / name).write_bytes(content)
    return name


TRAIN = ["train", "--epochs", "1", "--quiet", "--out", "out.safetensors"]
ROOT_READS_ANYTHING = os.name == "posix" and os.geteuid() == 0


def unreadable(root, name, content=b"x"):
    path = root / name
    path.write_bytes(content)
    path.chmod(0)
    return name


CLI_CASES = [
    # id, argv builder (root -> list), stderr regex, marks
    (
        "train --image-size 0",
        lambda r: TRAIN + ["images", "--image-size", "0"],
        "image-size",
        [],
    ),
    ("train --image-size -3", lambda r: TRAIN + ["images", "--image-size", "-3"], "image-size", []),
    ("train --epochs 0", lambda r: TRAIN + ["images", "--epochs", "0"], "epochs", []),
    ("train --batch-size 0", lambda r: TRAIN + ["images", "--batch-size", "0"], "batch_size", []),
    ("train data is a file", lambda r: TRAIN + ["model.safetensors"], "neither", []),
    (
        "train corrupt image",
        lambda r: TRAIN + [folder_with(r, "img-corrupt", "bad.png", b"\x89PNG\r\n\x1a\nrubbish")],
        r"bad\.png",
        [],
    ),
    (
        "train empty image file",
        lambda r: TRAIN + [folder_with(r, "img-empty", "empty.png", b"")],
        r"empty\.png",
        [],
    ),
    (
        "train bomb image",
        lambda r: TRAIN + [folder_with(r, "img-bomb", "bomb.png", png_bomb())],
        r"bomb\.png.*decompression bomb",
        [],
    ),
    (
        "train --out below a file",
        lambda r: TRAIN[:-1] + ["model.safetensors/out.safetensors", "images"],
        "model.safetensors",
        [],
    ),
    (
        "eval missing model",
        lambda r: ["eval", "missing.safetensors", "images"],
        "missing.safetensors",
        [],
    ),
    ("eval model is a folder", lambda r: ["eval", "images", "images"], "images", []),
    (
        "eval truncated model",
        lambda r: [
            "eval",
            write(r, "cut.safetensors", (r / "model.safetensors").read_bytes()[:100]),
            "images",
        ],
        r"cut\.safetensors",
        [],
    ),
    (
        "eval model with deeply nested metadata",
        lambda r: ["eval", _deep_json_model(r), "images"],
        r"deep\.safetensors",
        [],
    ),
    (
        "eval model with a 400-digit mean",
        lambda r: [
            "eval",
            _model_file(r / "bigmean.safetensors", prep={"mean": [10**400]}),
            "images",
        ],
        r"bigmean\.safetensors",
        [],
    ),
    (
        "eval data is a file",
        lambda r: ["eval", "model.safetensors", "model.safetensors"],
        "neither",
        [],
    ),
    ("eval missing data folder", lambda r: ["eval", "model.safetensors", "nowhere"], "nowhere", []),
    (
        "eval corrupt image",
        lambda r: [
            "eval",
            "model.safetensors",
            folder_with(r, "img-corrupt", "bad.png", b"\x89PNG\r\n\x1a\nrubbish"),
        ],
        r"bad\.png",
        [],
    ),
    (
        "eval bomb image",
        lambda r: ["eval", "model.safetensors", folder_with(r, "img-bomb", "bomb.png", png_bomb())],
        r"bomb\.png.*decompression bomb",
        [],
    ),
    (
        "eval unknown class folder",
        lambda r: ["eval", "model.safetensors", folder_with_class(r, "img-extra", "zebra")],
        "zebra",
        [],
    ),
    (
        "predict empty image file",
        lambda r: ["predict", "model.safetensors", write(r, "empty.png", b"")],
        r"empty\.png",
        [],
    ),
    (
        "predict truncated png",
        lambda r: [
            "predict",
            "model.safetensors",
            write(r, "cut.png", (r / "images" / "a" / "0.png").read_bytes()[:40]),
        ],
        r"cut\.png",
        [],
    ),
    (
        "predict bomb png",
        lambda r: ["predict", "model.safetensors", write(r, "bomb.png", png_bomb())],
        r"bomb\.png.*decompression bomb",
        [],
    ),
    (
        "predict bomb gif",
        lambda r: ["predict", "model.safetensors", write(r, "bomb.gif", gif_bomb())],
        r"bomb\.gif.*decompression bomb",
        [],
    ),
    ("predict model is a folder", lambda r: ["predict", "images", "images/a/0.png"], "images", []),
    (
        "predict model with a pooling window beyond int64",
        lambda r: [
            "predict",
            _model_file(r / "pool.safetensors", arch=(2, "kernel_size", 10**30)),
            "images/a/0.png",
        ],
        "kernel_size|pool",
        [],
    ),
    (
        "predict model with a padding of 2**31",
        lambda r: [
            "predict",
            _model_file(r / "pad.safetensors", arch=(0, "padding", [2**31, 1])),
            "images/a/0.png",
        ],
        "padding|pad.safetensors",
        [
            pytest.mark.skipif(
                _overcommit_always(), reason="vm.overcommit_memory=1: would allocate"
            ),
        ],
    ),
    ("--threads 0", lambda r: ["--threads", "0", "info"], "threads", []),
    (
        "bench --batch-size 0",
        lambda r: ["bench", "--batch-size", "0", "--steps", "1"],
        "batch",
        [],
    ),
    (
        "bench --steps 0",
        lambda r: ["bench", "--steps", "0"],
        "steps",
        [],
    ),
]

if not ROOT_READS_ANYTHING:
    CLI_CASES += [
        (
            "predict unreadable image",
            lambda r: ["predict", "model.safetensors", unreadable(r, "locked.png")],
            r"locked\.png",
            [],
        ),
        (
            "eval unreadable model",
            lambda r: ["eval", unreadable(r, "locked.safetensors"), "images"],
            r"locked\.safetensors",
            [],
        ),
    ]


def _deep_json_model(root):
    name = _model_file(root / "deep.safetensors")
    path = root / name
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"]["classes"] = "[" * 100_000 + "]" * 100_000
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])
    return name


@pytest.mark.parametrize(
    "argv,match", [pytest.param(c[1], c[2], marks=c[3], id=c[0]) for c in CLI_CASES]
)
def test_cli_bad_input_gives_one_line_error(clidir, argv, match):
    try:
        result = cli(*argv(clidir), cwd=clidir)
    finally:  # a train that should have failed must not leave a model for the next case
        wrote = sorted(p.name for p in clidir.glob("out*.safetensors"))
        for name in wrote:
            (clidir / name).unlink()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastcnn: error: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    assert not wrote, f"a failed train wrote {wrote}"
