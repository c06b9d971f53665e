"""ImageFolder's decoded-pixel cache: a second load is a hit with the same pixels, a changed
file is decoded again, a corrupt cache is rebuilt (never used), and cache=False writes
nothing."""

import os
import time

import numpy as np
from PIL import Image

from fastcnn import data


def folder(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )
    return root


def test_second_load_hits_with_the_same_pixels(tmp_path):
    root, cache = folder(tmp_path / "imgs"), tmp_path / "cache"
    first = data.ImageFolder(root, 16, cache=cache)
    second = data.ImageFolder(root, 16, cache=cache)
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.raw, second.raw)
    assert first.mean == second.mean and list(first.labels) == list(second.labels)
    other = data.ImageFolder(root, 12, cache=cache)  # another size: another entry
    assert not other.cache_hit and other.raw.shape[2:] == (12, 12)
    assert len([f for f in os.listdir(cache) if f.endswith(".npy")]) == 2


def test_a_changed_file_is_decoded_again(tmp_path):
    root, cache = folder(tmp_path / "imgs"), tmp_path / "cache"
    data.ImageFolder(root, 16, cache=cache)
    time.sleep(0.01)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "a" / "0.png")
    again = data.ImageFolder(root, 16, cache=cache)
    assert not again.cache_hit
    assert again.raw[0].max() == 0  # the new, black picture


def test_a_corrupt_cache_is_rebuilt_not_trusted(tmp_path):
    root, cache = folder(tmp_path / "imgs"), tmp_path / "cache"
    want = data.ImageFolder(root, 16, cache=cache).raw.copy()
    (npy,) = [cache / f for f in os.listdir(cache) if f.endswith(".npy")]
    blob = bytearray(npy.read_bytes())
    blob[-10] ^= 0xFF  # one pixel flipped: same size, a valid header
    npy.write_bytes(bytes(blob))
    rebuilt = data.ImageFolder(root, 16, cache=cache)
    assert not rebuilt.cache_hit
    np.testing.assert_array_equal(rebuilt.raw, want)
    assert data.ImageFolder(root, 16, cache=cache).cache_hit  # rewritten, good again
    npy.write_bytes(b"garbage")
    assert not data.ImageFolder(root, 16, cache=cache).cache_hit


def test_no_cache(tmp_path):
    root, cache = folder(tmp_path / "imgs"), tmp_path / "cache"
    data.ImageFolder(root, 16, cache=False)
    assert not cache.exists()
