"""bench/torch_recipe.py (PyTorch with fastcnn's CLI recipe) runs and learns, and its
augmentation is RandomCrop(padding) + RandomHorizontalFlip: a shift with a black border, then an
optional mirror."""

import json
import os

import numpy as np
import pytest


@pytest.fixture
def recipe(bench_module):
    pytest.importorskip("torch")
    return bench_module("torch_recipe")


def test_augmentation_is_a_shift_with_black_border_then_a_flip(recipe):
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(1, 256, (64, 1, 7, 9), dtype=np.uint8))
    out = recipe.augment(torch, x, 2, torch.Generator().manual_seed(1))
    raw = np.rint((out.numpy() * recipe.STD + recipe.MEAN) * 255).astype(np.int64)
    flips = 0
    for img, src in zip(raw, x.numpy().astype(np.int64)):
        padded = np.pad(src, ((0, 0), (2, 2), (2, 2)))
        candidates = [padded[:, dy : dy + 7, dx : dx + 9] for dy in range(5) for dx in range(5)]
        plain = any((img == c).all() for c in candidates)
        mirrored = any((img == c[:, :, ::-1]).all() for c in candidates)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54  # about half mirrored


def test_trains_and_reports_each_epoch(recipe, capsys):
    """One epoch on 1,000 images and a test on 1,000: it learns (chance is 10 %)."""
    from fastcnn import data

    folder = data.DEBIAN_DIR
    if not os.path.isdir(folder):
        pytest.skip("Fashion-MNIST is not installed")
    args = ["--epochs", "1", "--limit", "1000", "--nesterov", "--label-smoothing", "0.1"]
    assert recipe.main(args + ["--data", folder, "--tag", "t"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s[:1] == "{"]
    assert [r["epoch"] for r in lines] == [1] and lines[0]["tag"] == "t"
    assert lines[0]["test_accuracy"] > 0.25 and lines[0]["images_per_second"] > 0
