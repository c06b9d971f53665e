"""The data doctor on a folder with planted problems: a corrupt file, a truncated one, an exact
duplicate, copies leaking across the train/val split (exact and re-encoded), small images and
an imbalance; and a clean folder that needs nothing."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli import cli

from fastcnn import data


def photo(rng, h, w):
    """A smooth random picture (gradients and blobs, as photos have; noise hashes unstably)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([np.sin(6 * c[k, 0] * x + 4 * c[k, 1] * y + 6 * c[k, 2]) for k in range(3)], -1)
    return ((img + 1) * 127.5).astype(np.uint8)


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for split, counts in (("train", {"cat": 30, "dog": 8}), ("val", {"cat": 6, "dog": 3})):
        for cls, n in counts.items():
            os.makedirs(root / split / cls)
            for i in range(n):
                size = (40, 50) if i == 0 else (96, 80)  # one small image per class and split
                Image.fromarray(photo(rng, *size)).save(root / split / cls / f"{i}.jpg", quality=95)
    t = root / "train"
    shutil.copy(t / "cat" / "1.jpg", t / "cat" / "copy.jpg")  # exact duplicate
    shutil.copy(t / "dog" / "2.jpg", root / "val" / "dog" / "leak.jpg")  # exact, across
    Image.open(t / "cat" / "3.jpg").save(root / "val" / "cat" / "reencoded.jpg", quality=50)
    (t / "cat" / "notes.jpg").write_bytes(b"this is not a JPEG")
    whole = (t / "dog" / "4.jpg").read_bytes()
    (t / "dog" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def test_planted_problems_are_found(planted):
    r = data.doctor(planted)
    assert r["images"] == 30 + 8 + 6 + 3 + 5  # and the 5 planted files
    assert r["classes"]["train"] == {"cat": 32, "dog": 9}  # the planted files count too
    unreadable = sorted(os.path.basename(p) for p, _ in r["unreadable"])
    assert unreadable == ["cut.jpg", "notes.jpg"]
    exact = sorted(sorted(os.path.basename(p) for p in g) for g in r["exact_duplicates"])
    assert exact == [["1.jpg", "copy.jpg"], ["2.jpg", "leak.jpg"]]
    assert [sorted(os.path.basename(p) for p in g) for g in r["near_duplicates"]] == [
        ["3.jpg", "reencoded.jpg"]
    ]
    leaked = sorted(sorted(os.path.basename(p) for p in g) for g in r["leaks"])
    assert leaked == [["2.jpg", "leak.jpg"], ["3.jpg", "reencoded.jpg"]]
    assert r["too_small"] == 4 and r["imbalance"] == pytest.approx(39 / 13)
    text = r["text"]
    for needle in ("notes.jpg", "leakage", "imbalanced", "smaller than 64x64", "what to do"):
        assert needle in text


def test_a_clean_folder_needs_nothing(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
        for i in range(5):
            Image.fromarray(photo(rng, 80, 80)).save(tmp_path / cls / f"{i}.png")
    r = data.doctor(tmp_path)
    assert r["unreadable"] == [] and r["exact_duplicates"] == [] and r["near_duplicates"] == []
    assert r["advice"] == ["nothing to fix"]


def test_cli_doctor(planted):
    result = cli("doctor", "pets", cwd=planted.parent)
    assert result.returncode == 0, result.stderr
    assert "across the train/val split (leakage): 2" in result.stdout
    bad = cli("doctor", "nowhere", cwd=planted.parent)
    assert bad.returncode == 1 and "is not a folder" in bad.stderr
