"""fastcnn.data: data sets, IDX parsing, image decoding and the batch loader.

Everything is built in tmp_path from synthetic images and IDX files written here; the one test
on the real Fashion-MNIST runs only where Debian's dataset-fashion-mnist is installed.
"""

import gzip
import os
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from fastcnn import transforms
from fastcnn.data import (
    CIFAR10,
    MNIST,
    ArrayDataset,
    DataLoader,
    FashionMNIST,
    ImageFolder,
    load_image,
    preprocess_array,
    read_idx,
)

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
             np.float64: 0x0E}  # fmt: skip


def idx_bytes(arr, dims=None, code=None):
    """The IDX encoding of arr; dims/code override the header to write lying files."""
    arr = np.asarray(arr)
    code = IDX_CODES[arr.dtype.type] if code is None else code
    dims = arr.shape if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------------------------------------
# ArrayDataset
# ---------------------------------------------------------------------------------------------


def test_array_dataset_uint8_grey_becomes_nchw_unit_range(rng):
    raw = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    ds = ArrayDataset(raw, np.arange(5, dtype=np.int32))
    assert ds.images.shape == (5, 1, 4, 3) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0], raw / 255.0, rtol=1e-6)
    assert ds.labels.dtype == np.int64 and ds.classes == ["0", "1", "2", "3", "4"]
    assert ds.preprocessing == {"image_size": [4, 3], "channels": 1, "mean": [0.0], "std": [1.0]}
    image, label = ds[2]
    assert image.shape == (1, 4, 3) and label == 2 and type(label) is int
    assert len(ds) == 5


def test_array_dataset_uint8_nhwc_is_transposed_and_normalised(rng):
    raw = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    ds = ArrayDataset(raw, [0, 1, 1], classes=["a", "b"], mean=[0.1, 0.2, 0.3], std=0.5)
    assert ds.images.shape == (3, 3, 4, 5)
    expected = (raw.transpose(0, 3, 1, 2) / 255.0 - np.array([0.1, 0.2, 0.3])[:, None, None]) / 0.5
    np.testing.assert_allclose(ds.images, expected, rtol=1e-5, atol=1e-6)
    assert ds.preprocessing["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert ds.classes == ["a", "b"]


def test_array_dataset_float_is_kept_and_caller_array_untouched(rng):
    x = rng.standard_normal((4, 2, 3, 3))  # float64 in: float32 out
    before = x.copy()
    ds = ArrayDataset(x, [0, 1, 2, 3], mean=1.0, std=2.0)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_allclose(ds.images, (x - 1.0) / 2.0, rtol=1e-5, atol=1e-6)
    assert ds.images.dtype == np.float32 and ds.images.flags.c_contiguous
    assert ds.preprocessing is None


@pytest.mark.parametrize(
    "images, labels, kwargs, match",
    [
        (np.zeros((3, 2, 2), np.uint8), [0, 1], {}, "3 images but 2 labels"),
        (np.zeros((2, 2), np.uint8), [0, 1], {}, r"uint8 images must be \(N,H,W\)"),
        (np.zeros((2, 2, 2)), [0, 1], {}, "float images must be NCHW"),
        (np.zeros((2, 1, 2, 2)), [0, -1], {}, "labels must be >= 0"),
        (np.zeros((2, 1, 2, 2)), [0.0, 1.0], {}, "labels must be integers"),
        (np.zeros((2, 1, 2, 2)), [[0], [1]], {}, "labels must be 1-D"),
        (np.zeros((0, 1, 2, 2)), [], {}, "empty"),
        (np.zeros((2, 1, 2, 2)), [0, 2], {"classes": ["a", "b"]}, "out of range for 2 classes"),
        (np.zeros((2, 1, 2, 2), np.int16), [0, 1], {}, "uint8 or floating point"),
        (np.zeros((2, 3, 2, 2)), [0, 1], {"mean": [0, 0]}, "mean must be"),
        (np.zeros((2, 1, 2, 2)), [0, 1], {"std": 0.0}, "std must be positive"),
    ],
)
def test_array_dataset_rejects_bad_input(images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(images, labels, **kwargs)


def test_dataset_index_must_be_an_integer():
    ds = ArrayDataset(np.zeros((3, 2, 2), np.uint8), [0, 1, 2])
    assert ds[np.int64(-1)][1] == 2
    with pytest.raises(TypeError):
        ds[0:2]


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------


def save(path, img, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


@pytest.fixture
def folder(tmp_path, rng):
    """cat: 4 images in assorted formats; dog: 5 in assorted modes; plus things to ignore."""
    root = tmp_path / "photos"

    def noise(h, w, c=3):
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)

    save(root / "cat" / "a.png", Image.fromarray(noise(30, 40)))
    save(root / "cat" / "b.JPG", Image.fromarray(noise(20, 20)), quality=90)
    save(root / "cat" / "c.bmp", Image.fromarray(noise(15, 10)[..., 0]))
    save(root / "cat" / "nested" / "d.png", Image.fromarray(noise(8, 8, 4), "RGBA"))
    palette = Image.fromarray(noise(12, 12)).convert("P", palette=Image.ADAPTIVE)
    save(root / "dog" / "e.png", palette, transparency=0)
    save(root / "dog" / "f.png", Image.fromarray(rng.integers(0, 65536, (9, 7), dtype=np.uint16)))
    save(root / "dog" / "g.gif", Image.fromarray(noise(16, 16)).convert("P"))
    save(root / "dog" / "h.webp", Image.fromarray(noise(18, 14)))
    save(root / "dog" / "i.TIFF", Image.fromarray(noise(10, 10, 4), "RGBA").convert("CMYK"))
    # Ignored: hidden files and folders, other extensions.
    (root / "cat" / ".DS_Store").write_bytes(os.urandom(64))
    (root / "cat" / ".hidden.png").write_bytes(os.urandom(64))
    (root / "dog" / "notes.txt").write_text("not an image")
    save(root / ".ipynb_checkpoints" / "x.png", Image.fromarray(noise(4, 4)))
    save(root / "dog" / ".cache" / "y.png", Image.fromarray(noise(4, 4)))
    (root / "README.md").write_text("files at the top level are not classes")
    return root


def test_image_folder_loads_every_mode_and_ignores_hidden(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        ds = ImageFolder(folder, image_size=16)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert len(ds) == 9 and ds.images.shape == (9, 3, 16, 16) and ds.images.dtype == np.float32
    assert ds.labels.tolist() == [0] * 4 + [1] * 5 and ds.labels.dtype == np.int64
    names = [os.path.relpath(p, folder) for p, _ in ds.samples]
    assert names[:4] == ["cat/a.png", "cat/b.JPG", "cat/c.bmp", "cat/nested/d.png"]
    assert ds.skipped == []
    # Normalised by its own per-channel statistics.
    np.testing.assert_allclose(ds.images.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.images.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert len(ds.mean) == 3 and len(ds.std) == 3
    assert ds.preprocessing == {"image_size": [16, 16], "channels": 3, "mean": ds.mean,
                                "std": ds.std}  # fmt: skip


def test_image_folder_grey_and_rectangular(folder):
    ds = ImageFolder(folder, image_size=(12, 20), channels=1, workers=1)
    assert ds.images.shape == (9, 1, 12, 20)
    assert ds.preprocessing["image_size"] == [12, 20] and ds.preprocessing["channels"] == 1


def test_image_folder_pixel_values(tmp_path):
    root = tmp_path / "d"
    save(root / "red" / "r.png", Image.new("RGB", (5, 7), (255, 0, 0)))
    save(root / "half" / "h.png", Image.fromarray(np.full((6, 6), 32768, np.uint16)))
    save(root / "clear" / "c.png", Image.new("RGBA", (4, 4), (0, 255, 0, 0)))
    raw = ImageFolder(root, 4, mean=0.0, std=1.0)  # given mean/std: no statistics, [0, 1] kept
    assert raw.classes == ["clear", "half", "red"]
    np.testing.assert_allclose(raw.images[2], [[[1.0]], [[0.0]], [[0.0]]] * np.ones((3, 4, 4)))
    # 16-bit grey is scaled by 65535, not clipped at 255, then rounded to 8 bits (the data set
    # keeps uint8 pixels): 32768 / 65535 * 255 = 127.502 -> 128.
    assert raw.raw.dtype == np.uint8 and (raw.raw[1] == 128).all()
    np.testing.assert_allclose(raw.images[1], 128 / 255, rtol=1e-6)
    np.testing.assert_allclose(raw.images[0][1], 1.0)  # alpha is dropped, colour kept
    grey = ImageFolder(root, 4, channels=1, mean=0.5, std=0.25)
    np.testing.assert_allclose(grey.images[1], (128 / 255 - 0.5) / 0.25, rtol=1e-4)
    assert grey.mean == [0.5] and grey.std == [0.25]


def test_image_folder_bad_files_raise_or_are_skipped(folder):
    corrupt = folder / "cat" / "corrupt.jpg"
    corrupt.write_bytes(os.urandom(500))
    empty = folder / "dog" / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt.jpg: not a readable image"):
        ImageFolder(folder, 8)
    ds = ImageFolder(folder, 8, skip_bad=True)
    assert sorted(ds.skipped) == sorted([str(corrupt), str(empty)])
    assert len(ds) == 9 == len(ds.samples) == len(ds.images)
    assert all(p not in ds.skipped for p, _ in ds.samples)


def test_image_folder_truncated_png_names_the_file(tmp_path, rng):
    root = tmp_path / "d"
    path = save(root / "a" / "t.png", Image.fromarray(rng.integers(0, 256, (50, 50, 3), np.uint8)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="t.png"):
        ImageFolder(root, 8)


def test_image_folder_refuses_oversized_images(tmp_path, monkeypatch):
    root = tmp_path / "d"
    save(root / "a" / "big.png", Image.new("L", (20, 20)))
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="big.png.*decompression bombs"):
        ImageFolder(root, 8)


def test_image_folder_turns_pillow_bomb_error_into_value_error(tmp_path, monkeypatch):
    root = tmp_path / "d"
    save(root / "a" / "big.png", Image.new("L", (20, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow itself raises past 2x this
    with pytest.raises(ValueError, match="big.png: image too large"):
        ImageFolder(root, 8)


def test_image_folder_structure_errors(tmp_path, folder):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 8)
    flat = tmp_path / "flat"
    save(flat / "a.png", Image.new("L", (4, 4)))
    (flat / ".git").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(flat, 8)
    with pytest.raises(ValueError, match="is not a folder"):
        ImageFolder(flat / "a.png", 8)
    (folder / "emu").mkdir()
    (folder / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="class folder .*emu has no images"):
        ImageFolder(folder, 8)


@pytest.mark.parametrize("size", [0, -3, (0, 4), (4,), 2.5, True])
def test_image_folder_rejects_bad_size(folder, size):
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(folder, size)


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_image_folder_rejects_bad_channels(folder, channels):
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageFolder(folder, 8, channels=channels)


def test_validation_folder_reuses_training_statistics_and_classes(tmp_path, rng):
    train, val = tmp_path / "train", tmp_path / "val"
    for c in ["a", "b", "c"]:
        save(train / c / "1.png", Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)))
    save(val / "c" / "1.png", Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)))
    tr = ImageFolder(train, 6)
    va = ImageFolder(val, 6, mean=tr.mean, std=tr.std, classes=tr.classes)
    assert va.classes == ["a", "b", "c"] and va.labels.tolist() == [2]
    assert va.preprocessing == tr.preprocessing
    save(val / "zebra" / "1.png", Image.new("RGB", (3, 3)))
    with pytest.raises(ValueError, match="zebra"):
        ImageFolder(val, 6, mean=tr.mean, std=tr.std, classes=tr.classes)


def test_load_image_matches_image_folder(folder):
    ds = ImageFolder(folder, (10, 14))
    for i in (0, 1, 4, 5, 8):  # png, jpeg (draft mode), palette, 16-bit, cmyk
        x = load_image(ds.samples[i][0], (10, 14), 3, ds.mean, ds.std)
        assert x.shape == (1, 3, 10, 14) and x.dtype == np.float32
        np.testing.assert_array_equal(x[0], ds.images[i])


@pytest.mark.parametrize("shape, channels", [((9, 11, 3), 3), ((9, 11), 1), ((9, 11), 3),
                                             ((9, 11, 4), 3), ((9, 11, 3), 1)])  # fmt: skip
@pytest.mark.parametrize("size", [(9, 11), (5, 6)])
def test_preprocess_array_matches_load_image(tmp_path, rng, shape, channels, size):
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    path = save(tmp_path / "x.png", Image.fromarray(raw))
    pre = {"image_size": list(size), "channels": channels, "mean": [0.3] * channels,
           "std": [0.2] * channels}  # fmt: skip
    expected = load_image(path, size, channels, pre["mean"], pre["std"])
    got = preprocess_array(raw, pre)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    batch = preprocess_array(np.stack([raw, raw]), pre)
    assert batch.shape == (2, channels) + size
    np.testing.assert_allclose(batch[1], expected[0], rtol=1e-6, atol=1e-6)


def test_preprocess_array_rejects_non_uint8_and_bad_shapes():
    pre = {"image_size": [4, 4], "channels": 1, "mean": [0.0], "std": [1.0]}
    with pytest.raises(ValueError, match="uint8"):
        preprocess_array(np.zeros((4, 4), np.float32), pre)
    with pytest.raises(ValueError, match="shape"):
        preprocess_array(np.zeros((2, 4, 4, 5), np.uint8), pre)


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, rng, dtype, gz):
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(arr), gz=gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, arr)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain", idx_bytes(arr), gz=True)), arr)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "x.gz", idx_bytes(arr))), arr)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "data, match",
    [
        (idx_bytes(np.zeros((4, 3), np.uint8))[:-5], "truncated|only"),
        (idx_bytes(np.zeros((4, 3), np.uint8)) + b"\0", "extra bytes|more"),
        (idx_bytes(np.zeros(4, np.int32))[:-1], "truncated|only"),
        # a lying header: 2^96 elements; must be refused without trying to allocate them
        (idx_bytes(np.zeros(8, np.uint8), dims=(2**32 - 1,) * 3), "needs|claims"),
        (b"\x01\x02\x08\x01" + bytes(8), "not an IDX file"),
        (b"\0\0\x07\x01" + bytes(8), "unknown IDX dtype code 0x07"),
        (b"\0\0\x08\x00", "0 dimensions"),
        (b"\0\0\x08\x03\0\0\0\x01", "truncated IDX header"),
        (b"\0\0", "not an IDX file"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, data, match, gz):
    path = write(tmp_path / "bad-idx", data, gz=gz)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert "bad-idx" in str(info.value)


def test_read_idx_truncated_or_corrupt_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(write(tmp_path / "cut.gz", packed[: len(packed) // 2]))
    with pytest.raises(ValueError, match="junk.gz"):
        read_idx(write(tmp_path / "junk.gz", packed[:10] + os.urandom(200)))


# ---------------------------------------------------------------------------------------------
# MNIST-style data sets
# ---------------------------------------------------------------------------------------------


def write_mnist(root, rng, n_train=7, n_test=3, gz=True, size=(28, 28)):
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n,) + size, dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write(root / f"{split}-images-idx3-ubyte{suffix}", idx_bytes(images), gz=gz)
        write(root / f"{split}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz=gz)
        data[split] = images, labels
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, rng, gz):
    data = write_mnist(tmp_path, rng, gz=gz)
    raw = MNIST(tmp_path, train=True, normalize=False)
    images, labels = data["train"]
    assert raw.images.shape == (7, 1, 28, 28) and raw.images.dtype == np.float32
    np.testing.assert_allclose(raw.images[:, 0], images / 255.0, rtol=1e-6)
    assert raw.labels.dtype == np.int64 and raw.labels.tolist() == labels.tolist()
    assert raw.classes == [str(i) for i in range(10)]
    assert raw.preprocessing == {"image_size": [28, 28], "channels": 1, "mean": [0.0],
                                 "std": [1.0]}  # fmt: skip
    test = MNIST(tmp_path, train=False)
    assert len(test) == 3
    np.testing.assert_allclose(
        test.images[:, 0], (data["t10k"][0] / 255.0 - 0.1306605) / 0.3081078, rtol=1e-5, atol=1e-5
    )
    assert test.preprocessing["mean"] == pytest.approx([0.1306605])


def test_mnist_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MNIST(tmp_path)
    write_mnist(tmp_path, rng, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(ValueError, match="7 images but 6 labels"):
        MNIST(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.full(7, 10, np.uint8)))
    with pytest.raises(ValueError, match="label 10 is out of range"):
        MNIST(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((7, 4), np.uint8)))
    with pytest.raises(ValueError, match=r"uint8 images \(N,H,W\)"):
        MNIST(tmp_path)


def test_fashion_mnist_from_root(tmp_path, rng):
    write_mnist(tmp_path, rng)
    ds = FashionMNIST(tmp_path, train=True, download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.preprocessing["mean"] == pytest.approx([0.2860406])
    assert ds.root == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        FashionMNIST(tmp_path / "empty", download=False)


def test_fashion_mnist_search_order_prefers_fastcnn_data(tmp_path, rng, monkeypatch):
    write_mnist(tmp_path / "fashion-mnist", rng)
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    ds = FashionMNIST(train=False, download=False)
    assert ds.root == str(tmp_path / "fashion-mnist") and len(ds) == 3


REAL = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL, "t10k-labels-idx1-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    train = FashionMNIST(REAL, train=True, download=False, normalize=False)
    test = FashionMNIST(train=False, download=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert np.bincount(train.labels).tolist() == [6000] * 10
    # the constants used to normalise are this training set's statistics
    mean, std = transforms.channel_stats(train.images)
    assert mean == pytest.approx([0.2860406], abs=1e-6)
    assert std == pytest.approx([0.3530242], abs=1e-6)
    assert abs(float(test.images.mean())) < 0.01


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------


def write_cifar(d, rng, n=2):
    d.mkdir(parents=True)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, n)
        (d / name).write_bytes(rec.tobytes())
        records[name] = rec
    return records


def test_cifar10_binary(tmp_path, rng):
    records = write_cifar(tmp_path / "cifar-10-batches-bin", rng)
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_text(
        "\n".join(f"class{i}" for i in range(10)) + "\n\n"
    )
    train = CIFAR10(tmp_path, train=True, normalize=False)
    assert train.images.shape == (10, 3, 32, 32) and train.labels.dtype == np.int64
    rec = records["data_batch_1.bin"]
    np.testing.assert_allclose(train.images[0, 0], rec[0, 1:1025].reshape(32, 32) / 255.0, 1e-6)
    np.testing.assert_allclose(train.images[1, 2], rec[1, 2049:].reshape(32, 32) / 255.0, 1e-6)
    assert train.labels[:2].tolist() == rec[:2, 0].tolist()
    assert train.classes == [f"class{i}" for i in range(10)]
    test = CIFAR10(tmp_path / "cifar-10-batches-bin", train=False)
    assert len(test) == 2 and test.preprocessing["channels"] == 3


def test_cifar10_refuses_pickle_and_truncation(tmp_path, rng):
    py = tmp_path / "py" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    (py / "data_batch_1").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(ValueError, match="pickle"):
        CIFAR10(tmp_path / "py")
    write_cifar(tmp_path / "bin", rng)
    path = tmp_path / "bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="test_batch.bin.*truncated"):
        CIFAR10(tmp_path / "bin", train=False)
    with pytest.raises(FileNotFoundError):
        CIFAR10(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------


def numbered(n=10):
    """Image i is filled with i, so a batch tells which samples it holds."""
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 3, 3), np.float32)
    return ArrayDataset(x, np.arange(n))


class PerSample:
    """A data set with only __len__ and __getitem__: the loader's fallback path."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"sample {i} is broken")
        return np.full((1, 2, 2), i, np.float64), i


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("ds", [numbered(10), PerSample(10)], ids=["arrays", "per-sample"])
def test_loader_batches_in_order(ds, prefetch):
    loader = DataLoader(ds, batch_size=4, prefetch=prefetch)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    assert np.concatenate([y for _, y in batches]).tolist() == list(range(10))
    dropped = DataLoader(ds, batch_size=4, drop_last=True, prefetch=prefetch)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert len(DataLoader(ds, batch_size=11, drop_last=True)) == 0


def test_loader_batch_is_a_copy():
    ds = numbered(4)
    x, _ = next(iter(DataLoader(ds, batch_size=4)))
    x[:] = -1
    assert ds.images.min() == 0


def test_loader_shuffle_is_seeded_per_epoch():
    ds = numbered(50)

    def epochs(loader, n):
        return [np.concatenate([y for _, y in loader]).tolist() for _ in range(n)]

    a = epochs(DataLoader(ds, 8, shuffle=True, seed=7), 3)
    b = epochs(DataLoader(ds, 8, shuffle=True, seed=7, prefetch=False), 3)
    assert a == b
    assert a[0] != a[1] != a[2] and all(sorted(e) == list(range(50)) for e in a)
    assert a[0] != epochs(DataLoader(ds, 8, shuffle=True, seed=8), 1)[0]
    resumed = DataLoader(ds, 8, shuffle=True, seed=7)
    resumed.set_epoch(2)
    assert epochs(resumed, 1)[0] == a[2]
    unseeded = DataLoader(ds, 8, shuffle=True)
    assert epochs(unseeded, 2)[0] != list(range(50))


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "fastcnn-prefetch"]


def test_loader_early_break_stops_the_thread():
    loader = DataLoader(numbered(100), batch_size=2)
    for _ in range(3):
        for i, _ in enumerate(loader):
            if i == 1:
                break
    iter(loader)  # an iterator never advanced starts no thread
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


def test_loader_abandoned_iterator_stops_the_thread():
    it = iter(DataLoader(numbered(100), batch_size=2))
    next(it)
    del it  # garbage collection closes the generator
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


@pytest.mark.parametrize("prefetch", [True, False])
def test_loader_passes_dataset_errors_on(prefetch):
    loader = DataLoader(PerSample(10, fail_at=5), batch_size=2, prefetch=prefetch)
    with pytest.raises(RuntimeError, match="sample 5 is broken"):
        list(loader)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8"])
def test_loader_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(numbered(), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# uint8 pixels: `.raw`, converted batch by batch; `.images` made only on request
# ---------------------------------------------------------------------------------------------


def _image_folder(root, rng):
    for i in range(20):
        img = Image.fromarray(rng.integers(0, 256, (int(rng.integers(8, 30)), 17, 3), np.uint8))
        img = [img, img.convert("L"), img.convert("P"), img.convert("RGBA")][i % 4]
        save(root / ("ab"[i % 2]) / f"{i}.{'jpg' if i % 5 == 0 and i % 4 < 2 else 'png'}", img)
    return ImageFolder(root, (10, 12))


def _mnist(root, rng, cls=MNIST, **kwargs):
    write_mnist(root, rng, n_train=70)
    return cls(root, **kwargs)


UINT8_SETS = {
    "array-grey": lambda root, rng: ArrayDataset(
        rng.integers(0, 256, (70, 9, 7), dtype=np.uint8), rng.integers(0, 3, 70)),
    "array-rgb-normalised": lambda root, rng: ArrayDataset(
        rng.integers(0, 256, (70, 6, 5, 3), dtype=np.uint8), rng.integers(0, 4, 70),
        mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3]),
    "mnist": _mnist,
    "fashion-mnist-unnormalised": lambda root, rng: _mnist(
        root, rng, FashionMNIST, download=False, normalize=False),
    "cifar10": lambda root, rng: (write_cifar(root / "cifar-10-batches-bin", rng, n=14),
                                  CIFAR10(root))[1],
    "image-folder": _image_folder,
}  # fmt: skip


def materialised(ds):
    """The float32 copy of the whole set that `.images` caches, or None if never made."""
    return ds._images


@pytest.mark.parametrize("name", UINT8_SETS)
def test_uint8_data_sets_keep_raw_pixels_and_never_convert_all(name, tmp_path, rng):
    ds = UINT8_SETS[name](tmp_path, rng)
    raw = ds.raw
    assert raw.dtype == np.uint8 and raw.ndim == 4 and raw.flags.c_contiguous
    assert len(raw) == len(ds) == len(ds.labels)
    c = raw.shape[1]
    for a in (ds.scale, ds.shift):
        assert a.dtype == np.float32 and a.shape == (c,)
    assert str(raw.shape[1:]) in repr(ds)
    x, y = ds[3]
    assert x.dtype == np.float32 and x.shape == raw.shape[1:] and y == ds.labels[3]
    assert ds[-1][0].shape == raw.shape[1:]
    for prefetch in (True, False):
        seen = 0
        for xb, yb in DataLoader(ds, batch_size=16, shuffle=True, seed=1, prefetch=prefetch):
            assert xb.dtype == np.float32 and xb.flags.c_contiguous and xb.shape[1:] == x.shape
            assert yb.dtype == np.int64
            seen += len(yb)
        assert seen == len(ds)
    assert materialised(ds) is None  # len, repr, ds[i] and the loader never made the float copy
    assert ds.raw is raw and raw.dtype == np.uint8


@pytest.mark.parametrize("name", UINT8_SETS)
def test_uint8_batches_are_bit_identical_to_the_materialised_images(name, tmp_path, rng):
    ds = UINT8_SETS[name](tmp_path, rng)
    batches = list(DataLoader(ds, batch_size=16, shuffle=True, seed=3))
    singles = {i: ds[i][0] for i in (0, 5, len(ds) - 1)}
    assert materialised(ds) is None
    images = ds.images  # now the whole set is converted, once
    assert images.dtype == np.float32 and images.flags.c_contiguous
    assert images.shape == ds.raw.shape and ds.images is images  # cached
    order = np.random.default_rng((3, 0)).permutation(len(ds))  # epoch 0 of seed 3
    for k, (xb, yb) in enumerate(batches):
        idx = order[16 * k : 16 * (k + 1)]
        np.testing.assert_array_equal(xb.view(np.uint32), images[idx].view(np.uint32))
        np.testing.assert_array_equal(yb, ds.labels[idx])
    for i, x in singles.items():
        np.testing.assert_array_equal(x.view(np.uint32), images[i].view(np.uint32))
    # The affine form is the same map (float32 rounding aside).
    affine = ds.raw * ds.scale[:, None, None] + ds.shift[:, None, None]
    np.testing.assert_allclose(affine, images, rtol=1e-6, atol=1e-6)


def test_uint8_array_dataset_copies_the_caller_pixels(rng):
    pixels = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    ds = ArrayDataset(pixels, [0, 1, 2, 3])
    before = ds[1][0].copy()
    pixels[:] = 0
    np.testing.assert_array_equal(ds[1][0], before)


def test_float_array_dataset_has_no_raw():
    ds = numbered(4)
    assert not hasattr(ds, "raw") and not hasattr(ds, "scale")
    assert ds.images is ds.images and ds.images.dtype == np.float32
    with pytest.raises(ValueError, match="float images"):
        ds.to_float(np.zeros((1, 2, 3, 3), np.uint8))


def test_assigning_images_replaces_the_raw_pixels(rng):
    ds = ArrayDataset(rng.integers(0, 256, (6, 2, 2), dtype=np.uint8), np.arange(6))
    ds.images = np.full((6, 1, 2, 2), 7.0, np.float32)
    assert not hasattr(ds, "raw")
    x, _ = next(iter(DataLoader(ds, batch_size=6)))
    assert (x == 7.0).all() and (ds[2][0] == 7.0).all()


def test_to_float_checks_its_input(rng):
    ds = ArrayDataset(rng.integers(0, 256, (6, 2, 2, 3), dtype=np.uint8), np.arange(6))
    for bad in (np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8),
                np.zeros((3, 2, 2), np.uint8)):  # fmt: skip
        with pytest.raises(ValueError, match="uint8"):
            ds.to_float(bad)


def test_raw_to_float_is_the_two_step_pipeline_bit_for_bit(rng):
    # 200 images of 3x32x32 span several of raw_to_float's ~1 MiB slices.
    raw = rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    expected = transforms.normalize_(
        np.multiply(raw, np.float32(1 / 255), dtype=np.float32), mean, std
    )
    got = transforms.raw_to_float(raw, mean, std)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    part = transforms.raw_to_float(raw[::7, :, 3:], mean, std)  # strided input
    np.testing.assert_array_equal(part.view(np.uint32), expected[::7, :, 3:].view(np.uint32))
    plain = transforms.raw_to_float(raw[:2])  # no mean/std: [0, 1]
    np.testing.assert_array_equal(plain, raw[:2] * np.float32(1 / 255))
    with pytest.raises(ValueError, match="uint8"):
        transforms.raw_to_float(raw.astype(np.float32))
    with pytest.raises(ValueError, match="mean"):
        transforms.raw_to_float(raw, [0.1, 0.2], 1.0)


def test_channel_stats_of_raw_pixels_match_the_float_images(rng):
    raw = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    floats = np.multiply(raw, np.float32(1 / 255), dtype=np.float32)
    assert transforms.channel_stats(raw) == transforms.channel_stats(floats)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL, "train-images-idx3-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_stays_uint8_through_an_epoch():
    train = FashionMNIST(REAL, train=True, download=False)
    assert train.raw.shape == (60000, 1, 28, 28) and train.raw.dtype == np.uint8
    for _ in DataLoader(train, batch_size=64, shuffle=True, seed=0):
        pass
    assert materialised(train) is None
    kept = sum(v.nbytes for v in vars(train).values() if isinstance(v, np.ndarray))
    # raw (47 MB) + labels + per-channel scale/shift; the float32 images would be 188 MB more
    assert train.raw.nbytes + train.labels.nbytes <= kept < 60e6


PEAK_MEMORY_SCRIPT = """
import sys
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from fastcnn.data import DataLoader, FashionMNIST
base = rss("VmRSS:")
train = FashionMNIST(sys.argv[1], train=True, download=False)
test = FashionMNIST(sys.argv[1], train=False, download=False)
for loader in (DataLoader(train, 64, shuffle=True, seed=0), DataLoader(test, 64)):
    for batch in loader:
        pass
print(rss("VmHWM:") - base)
"""


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL, "train-images-idx3-ubyte.gz"))
    or not os.path.isfile("/proc/self/status"),
    reason="needs Debian's dataset-fashion-mnist and Linux's /proc",
)
def test_real_fashion_mnist_peak_memory():
    """Loading both splits and an epoch over each adds ~56 MB (the uint8 pixels) to the peak.

    The float32 copies would add 219 MB; reading a .gz file in chunks joined at the end, 47 MB.
    """
    import subprocess
    import sys

    import fastcnn

    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT, REAL],
        env=env,
        cwd=REAL,  # not the source tree, whose fastcnn/ has no compiled extension
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    grown = int(result.stdout.split()[-1])
    assert grown < 80e6, f"peak memory grew by {grown / 1e6:.0f} MB"


def test_float_array_batches_are_one_gather_not_sample_by_sample(monkeypatch):
    from fastcnn import data

    rng = np.random.default_rng(0)
    images = rng.normal(size=(23, 2, 3, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 23)
    ds = data.ArrayDataset(images, labels)
    loader = data.DataLoader(ds, batch_size=5, shuffle=True, seed=1)
    expected = [(x.copy(), y.copy()) for x, y in loader]

    def one_by_one(self, i):
        raise AssertionError("a float ArrayDataset batch was gathered sample by sample")

    monkeypatch.setattr(type(ds), "__getitem__", one_by_one)
    loader.set_epoch(0)
    for (x, y), (ex, ey) in zip(loader, expected, strict=True):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    order = np.random.default_rng((1, 0)).permutation(23)
    np.testing.assert_array_equal(np.concatenate([y for _, y in expected]), labels[order])
