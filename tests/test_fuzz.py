"""Fuzzing the two readers of untrusted files: IDX data (fastcnn.data.read_idx) and model files
(fastcnn.load).

The contract (DESIGN.md, "Errors"): a bad file gives a Python exception that names the problem,
never a crash and never a silent wrong answer. For a file that exists, the one exception type
either reader may raise is ValueError (FileNotFoundError is for a missing path only, checked
once below). Anything else fails these tests: another exception type, a hang (every call runs
under a SIGALRM watchdog, see `bounded`), or a crash (which takes the whole run down).

Where the input is valid the answer is checked too: a well-formed IDX file must parse to
exactly its payload, and a model that loads must run on an input of its own shape and give
float32 scores of shape (1, classes), finite while its weights are moderate.

Each property runs ~100-200 examples (a few seconds in all); the `slow` variants run 10x more.
"""

import contextlib
import gzip
import json
import math
import os
import re
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import nn
from fastcnn.data import read_idx

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=2000)
WATCHDOG_S = 20.0  # far above any honest answer here (milliseconds), far below "hung"


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no `except Exception` can swallow it."""


@contextlib.contextmanager
def bounded(seconds=WATCHDOG_S):
    def alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Open findings of this fuzzing, each pinned by a strict xfail test at the end of this file.
# While open, the properties accept exactly these escapes (type and message), so that they keep
# looking for new ones. When a fix lands, its xfail test passes, which fails the run (strict):
# then delete the test's entry here as well.
KNOWN_LOAD = []
KNOWN_RUN = []
if os.environ.get("FASTCNN_FUZZ_STRICT"):  # tolerate nothing: shows what the fuzzing finds
    KNOWN_LOAD, KNOWN_RUN = [], []


def attempt(call, known=()):
    """(result, None) or (None, the ValueError); an exception matching one of the `known`
    (type, regex) pairs is returned like a ValueError; anything else propagates: test fails."""
    try:
        with bounded():
            return call(), None
    except ValueError as e:
        assert str(e), "a ValueError without a message"
        return None, e
    except Exception as e:
        if any(isinstance(e, t) and re.search(m, str(e)) for t, m in known):
            event(f"known finding: {type(e).__name__}")
            return None, e
        raise


def fuzz_test(body, n_fast, **strategies):
    """The property `body` twice: a bounded variant and a 10x longer one marked slow."""
    fast = FAST if n_fast == FAST.max_examples else settings(FAST, max_examples=n_fast)
    slow = settings(SLOW, max_examples=10 * n_fast)
    return (fast(given(**strategies)(body)), pytest.mark.slow(slow(given(**strategies)(body))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for the whole module: hypothesis reruns a test body many times per fixture."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_header(code, dims):
    return bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


def noise(seed, n):
    return np.random.default_rng(seed).bytes(n) if n > 0 else b""


@st.composite
def idx_files(draw):
    """(file bytes, expected array or None where the file is invalid, or ... where either)."""
    code = draw(st.one_of(st.sampled_from(sorted(IDX_DTYPES)), st.integers(0, 255)))
    ndim = draw(st.one_of(st.integers(1, 4), st.integers(0, 255)))
    small = st.integers(0, 5)
    lying = st.sampled_from([2**32 - 1, 2**31, 2**16, 1000])
    dims = draw(
        st.lists(
            st.one_of(small, small, small, lying), min_size=min(ndim, 6), max_size=min(ndim, 6)
        )
    )
    dims += [1] * (ndim - len(dims))  # up to 255 dimensions, most of them 1
    valid_header = code in IDX_DTYPES and ndim >= 1
    itemsize = np.dtype(IDX_DTYPES.get(code, "u1")).itemsize
    expected = math.prod(dims) * itemsize
    delta = draw(
        st.one_of(
            st.just(0),
            st.just(0),
            st.integers(-9, 9),
            st.sampled_from([-expected, 1 - expected, 4096]),
        )
    )
    size = expected + delta
    if size < 0 or size > 1 << 16:
        size = draw(st.integers(0, 64))
    payload = noise(draw(st.integers(0, 2**32 - 1)), size)
    header = idx_header(code, dims)
    cut = draw(st.one_of(st.none(), st.integers(0, len(header) - 1)))  # a truncated header
    if cut is not None:
        return header[:cut], None
    if not valid_header or size != expected:
        return header + payload, None
    # Formally valid. numpy still refuses > 64 dimensions, or shapes whose element count
    # (ignoring the zeros) overflows: a ValueError is the right answer there as well.
    nonzero = math.prod(d for d in dims if d)
    if ndim > 64 or nonzero * itemsize >= 2**63:
        return header + payload, ...
    arr = np.frombuffer(payload, dtype=IDX_DTYPES[code]).reshape(dims)
    return header + payload, arr


def check_idx(path, expected):
    arr, err = attempt(lambda: read_idx(path))
    if err is None:
        assert expected is not None, f"an invalid IDX file was accepted: {arr.dtype} {arr.shape}"
        if expected is not ...:
            assert arr.shape == expected.shape and arr.dtype == expected.dtype.newbyteorder("=")
            np.testing.assert_array_equal(
                arr.view(np.uint8), expected.astype(arr.dtype).view(np.uint8)
            )
    else:
        assert expected is None or expected is ..., f"a valid IDX file was refused: {err}"
    return err


def _idx_random_bytes(workdir, content, gz):
    path = workdir / "random.idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    check_idx(path, ...)  # any answer but a crash, hang or foreign exception


test_idx_random_bytes, test_idx_random_bytes_long = fuzz_test(
    _idx_random_bytes, 200, content=st.binary(max_size=300), gz=st.booleans()
)


def _idx_structured(workdir, case, gz):
    content, expected = case
    path = workdir / "structured.idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    err = check_idx(path, expected)
    if err is not None and expected is None:
        # (Formally valid headers numpy cannot hold give numpy's words, without the file name:
        # test_known_idx_shapes_numpy_cannot_hold.)
        assert "structured.idx" in str(err), f"the error does not name the file: {err}"


test_idx_structured, test_idx_structured_long = fuzz_test(
    _idx_structured, 200, case=idx_files(), gz=st.booleans()
)


@st.composite
def gzip_mutations(draw):
    """A valid gzip-wrapped IDX file with bytes flipped, cut off, or junk appended."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dims = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    code = draw(st.sampled_from(sorted(IDX_DTYPES)))
    itemsize = np.dtype(IDX_DTYPES[code]).itemsize
    packed = bytearray(
        gzip.compress(idx_header(code, dims) + rng.bytes(math.prod(dims) * itemsize))
    )
    kind = draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            packed[draw(st.integers(0, len(packed) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        packed = packed[: draw(st.integers(0, len(packed) - 1))]
    else:
        packed += draw(st.binary(min_size=1, max_size=40))
    return bytes(packed)


def _idx_gzip_mutated(workdir, content):
    path = workdir / "mutated.idx.gz"
    path.write_bytes(content)
    check_idx(path, ...)


test_idx_gzip_mutated, test_idx_gzip_mutated_long = fuzz_test(
    _idx_gzip_mutated, 150, content=gzip_mutations()
)


def test_idx_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing-here")


def test_idx_oracle_accepts_a_valid_file_and_refuses_a_cut_one(tmp_path):
    """The checks above can fail: a valid file is parsed exactly, a truncated one refused."""
    payload = np.arange(24, dtype=">i2").tobytes()
    path = tmp_path / "ok.idx"
    path.write_bytes(idx_header(0x0B, [2, 3, 4]) + payload)
    check_idx(path, np.frombuffer(payload, ">i2").reshape(2, 3, 4))
    path.write_bytes(idx_header(0x0B, [2, 3, 4]) + payload[:-1])
    assert check_idx(path, None) is not None
    with pytest.raises(AssertionError, match="refused"):
        check_idx(path, np.frombuffer(payload, ">i2").reshape(2, 3, 4))


# ---------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------

PREP = {"image_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.25]}
X = np.random.default_rng(3).random((1, 1, 8, 8), dtype=np.float32)


def small_model():
    """Every layer type io can store, in a file of ~1.5 kB (mostly header)."""
    nn.manual_seed(11)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(12, 4),
    )  # fmt: skip
    model.classes = ["a", "b", "c", "d"]
    model.preprocessing = json.loads(json.dumps(PREP))
    return model


@pytest.fixture(scope="module")
def original(workdir):
    """(file bytes, header length, header dict) of a valid saved model."""
    path = workdir / "original.safetensors"
    fastcnn.save(small_model(), path)
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return blob, n, json.loads(blob[8 : 8 + n])


def pack(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def check_model(path, original_arch, x=X):
    """load() gives a ValueError naming the file, or a model that runs on its input shape."""
    model, err = attempt(lambda: fastcnn.load(path), KNOWN_LOAD)
    if isinstance(err, ValueError):
        assert str(path) in str(err), f"the error does not name the file: {err}"
    if err is not None:
        return err
    assert isinstance(model, nn.Sequential) and not model.training
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        arch = json.loads(f.read(n))["__metadata__"]["architecture"]
    probs, run_err = attempt(lambda: fastcnn.predict(model, x), KNOWN_RUN)
    if run_err is not None:
        # Only a changed architecture may fail to run on the original input shape.
        assert json.loads(arch) != json.loads(original_arch), f"a valid model failed: {run_err}"
        return None
    assert probs.dtype == np.float32 and probs.ndim == 2 and probs.shape[0] == 1
    last = model[len(model) - 1]
    if isinstance(last, nn.Linear):
        assert probs.shape == (1, last.out_features)
    weights = [p.data for p in model.parameters()]
    if all(np.all(np.isfinite(w)) and np.abs(w).max(initial=0) < 1e4 for w in weights):
        assert np.all(np.isfinite(probs)), "moderate weights gave non-finite scores"
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    return None


def _model_byte_flips(workdir, original, flips, in_header):
    blob, n, header = original
    data = bytearray(blob)
    for position, xor in flips:
        limit = 8 + n if in_header else len(data)
        data[position % limit] ^= xor
    path = workdir / "flipped.safetensors"
    path.write_bytes(bytes(data))
    check_model(path, header["__metadata__"]["architecture"])


test_model_byte_flips, test_model_byte_flips_long = fuzz_test(
    _model_byte_flips,
    200,
    flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=6),
    in_header=st.booleans(),
)


def _model_truncated_or_extended(workdir, original, keep, junk):
    blob, _, header = original
    path = workdir / "cut.safetensors"
    content = blob[: keep % (len(blob) + 1)] + junk
    path.write_bytes(content)
    err = check_model(path, header["__metadata__"]["architecture"])
    if len(content) != len(blob):  # (same length: the junk just overwrote the last bytes)
        assert err is not None, f"a file of {len(content)} bytes instead of {len(blob)} loaded"


test_model_truncated, test_model_truncated_long = fuzz_test(
    _model_truncated_or_extended,
    150,
    keep=st.integers(0, 2**16),
    junk=st.one_of(st.just(b""), st.just(b""), st.binary(min_size=1, max_size=64)),
)


def _model_header_length(workdir, original, value, relative):
    blob, n, header = original
    length = (n + value if relative else value) % 2**64
    path = workdir / "length.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + blob[8:])
    err = check_model(path, header["__metadata__"]["architecture"])
    if length != n:
        assert err is not None, f"header length {length} instead of {n} was accepted"


test_model_header_length, test_model_header_length_long = fuzz_test(
    _model_header_length,
    150,
    value=st.one_of(
        st.integers(-64, 64),
        st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1, 2**31, 2**32, 2**63, 2**64 - 1]),
    ),
    relative=st.booleans(),
)


# Values to put where the model file had something sensible. No int between 2**20 and 2**62:
# as a padding, such a value makes the model allocate (and, where memory is overcommitted, fill)
# gigabytes when it runs; that finding is pinned by its own test below instead.
nasty_ints = st.sampled_from([0, -1, -(2**63) - 1, 2**63, 2**64, 10**30, 10**400, 10**400])
json_scalars = st.one_of(
    st.integers(-3, 40),
    nasty_ints,
    nasty_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(sorted(nn.LAYERS) + ["Sequential", "__import__", "os.system"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
# Metadata text that is not what the field should hold: junk, and JSON nested deeper than
# Python's recursion limit.
odd_texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from([1, 10, 1000, 100_000]).map(lambda d: "[" * d + "]" * d),
    st.sampled_from([1000, 100_000]).map(lambda d: '{"a":' * d + "1" + "}" * d),
)


def json_paths(value, prefix=()):
    """Every path inside a JSON value, leaves first (they are the likelier targets)."""
    inner = []
    if isinstance(value, dict):
        for k, v in value.items():
            inner += list(json_paths(v, prefix + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            inner += list(json_paths(v, prefix + (i,)))
    return inner + [prefix]


def lookup(value, path):
    for key in path:
        value = value[key]
    return value


def edit(value, path, action, new):
    """A copy of `value` with the item at `path` replaced, deleted, or given a sibling."""
    value = json.loads(json.dumps(value))
    if not path:
        return new
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "insert" and isinstance(parent, list):
        parent.insert(key, new)
    elif action == "insert":
        parent["x" + str(key)] = new
    else:
        parent[key] = new
    return value


METADATA_TARGETS = (
    ["architecture"] * 5 + ["preprocessing"] * 3 + ["classes", "format", "format_version", "extra"]
)


@st.composite
def header_edits(draw, header):
    """A header with one piece of its metadata or tensor table replaced by something odd."""
    header = json.loads(json.dumps(header))
    meta = header["__metadata__"]
    tensors = sorted(k for k in header if k != "__metadata__")
    target = draw(st.sampled_from(METADATA_TARGETS + ["tensor"] * 2))
    if target != "tensor":
        how = draw(st.sampled_from(["json"] * 6 + ["text", "drop"]))
        if how == "drop":
            meta.pop(target, None)
        elif how == "text":
            meta[target] = draw(odd_texts)
        else:
            try:
                parsed = json.loads(meta.get(target, "null"))
            except json.JSONDecodeError:  # the plain strings: "fastcnn", "0.1.0"
                parsed = meta[target]
            paths = list(json_paths(parsed))
            numbers = [q for q in paths if type(lookup(parsed, q)) in (int, float)]
            path = draw(st.one_of(st.sampled_from(numbers or paths), st.sampled_from(paths)))
            action = draw(st.sampled_from(["replace"] * 4 + ["delete", "insert"]))
            if action != "replace" and not path:
                action = "replace"
            edited = edit(parsed, path, action, draw(st.one_of(nasty_ints, json_values)))
            meta[target] = edited if isinstance(edited, str) else json.dumps(edited)
    else:  # a tensor entry: dtype, shape or data_offsets
        entry = header[draw(st.sampled_from(tensors))]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        if field == "dtype":
            entry["dtype"] = draw(
                st.sampled_from(
                    ["F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "f32", "XYZ"]
                )
            )
        else:
            values = entry[field]
            choice = draw(st.one_of(st.integers(-2, 70), st.sampled_from([2**32, 2**63])))
            if values and draw(st.booleans()):
                values[draw(st.integers(0, len(values) - 1))] = choice
            else:
                values.append(choice)
    return header


def _model_header_edits(workdir, original, data):
    blob, n, header = original
    edited = data.draw(header_edits(header))
    assume(edited != header)
    path = workdir / "edited.safetensors"
    path.write_bytes(pack(edited, blob[8 + n :]))
    check_model(path, header["__metadata__"]["architecture"])


test_model_header_edits, test_model_header_edits_long = fuzz_test(
    _model_header_edits, 200, data=st.data()
)


def test_model_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastcnn.load(tmp_path / "none.safetensors")


def test_model_oracle_accepts_the_original_and_catches_a_broken_model(workdir, original):
    """check_model can fail: the unmodified file passes, a model that cannot run does not."""
    blob, n, header = original
    path = workdir / "same.safetensors"
    path.write_bytes(pack(header, blob[8 + n :]))
    assert check_model(path, header["__metadata__"]["architecture"]) is None
    with pytest.raises(AssertionError, match="a valid model failed"):
        check_model(path, header["__metadata__"]["architecture"], x=X[:, :, :4, :4])


# ---------------------------------------------------------------------------------------------
# open findings (see KNOWN_LOAD / KNOWN_RUN): minimal repros, strict xfail until fixed
# ---------------------------------------------------------------------------------------------


def edited_model(workdir, name, field, change):
    """The original model file with metadata `field` (JSON) changed in place by `change`."""
    path = workdir / "original.safetensors"
    blob = path.read_bytes() if path.exists() else None
    assert blob is not None, "needs the `original` fixture"
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    value = json.loads(header["__metadata__"][field])
    header["__metadata__"][field] = change(value)
    out = workdir / f"{name}.safetensors"
    out.write_bytes(pack(header, blob[8 + n :]))
    return out


def _set(path, new):
    def change(value):
        edit_target = value
        for key in path[:-1]:
            edit_target = edit_target[key]
        edit_target[path[-1]] = new
        return json.dumps(value)

    return change


def test_known_huge_int_in_preprocessing(workdir, original):
    path = edited_model(workdir, "mean-int", "preprocessing", _set(["mean", 0], 10**400))
    with pytest.raises(ValueError, match="preprocessing"):
        fastcnn.load(path)


def test_known_deeply_nested_metadata(workdir, original):
    path = edited_model(workdir, "deep", "classes", lambda v: "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="classes"):
        fastcnn.load(path)


def test_known_int64_overflow_in_layer_config(workdir, original):
    path = edited_model(
        workdir,
        "pool-huge",
        "architecture",
        _set(["layers", 2, "config", "kernel_size"], [10**30, 2]),
    )
    with pytest.raises(ValueError):
        fastcnn.predict(fastcnn.load(path), X)


def _overcommit_always():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(_overcommit_always(), reason="vm.overcommit_memory=1: would really allocate")
def test_known_absurd_padding_in_layer_config(workdir, original):
    path = edited_model(
        workdir, "pad-huge", "architecture", _set(["layers", 0, "config", "padding"], [2**31, 1])
    )
    with pytest.raises(ValueError):
        fastcnn.predict(fastcnn.load(path), X)


@pytest.mark.parametrize("dims", [(2**32 - 1, 2**32 - 1, 0), (1,) * 65], ids=["zero", "65-d"])
def test_known_idx_shapes_numpy_cannot_hold(tmp_path, dims):
    path = tmp_path / "odd-shape.idx"
    path.write_bytes(idx_header(0x08, dims) + bytes(math.prod(dims)))
    with pytest.raises(ValueError, match="odd-shape.idx"):
        read_idx(path)
