"""fastcnn.fit / evaluate / predict on small synthetic data sets, end to end."""

import os
import re

import numpy as np
import pytest
from PIL import Image

import fastcnn
import fastcnn.train
from fastcnn import data, io, models, nn, optim

SIZE = 12  # synthetic images are SIZE x SIZE grey
CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def squares(n, seed):
    """uint8 (n, 12, 12) noise with one bright 3x3 square; its quadrant is the class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, SIZE, SIZE)).astype(np.uint8)
    labels = rng.integers(0, 4, n)
    for i, c in enumerate(labels):
        r = (c // 2) * 6 + rng.integers(0, 4)
        k = (c % 2) * 6 + rng.integers(0, 4)
        images[i, r : r + 3, k : k + 3] = rng.integers(200, 256)
    return images, labels.astype(np.int64)


def tiny_net(seed=0, channels=1, size=SIZE, num_classes=4):
    nn.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * (size // 2) ** 2, num_classes),
    )


@pytest.fixture(scope="module")
def train_set():
    return data.ArrayDataset(*squares(256, 1), classes=CLASSES)


@pytest.fixture(scope="module")
def test_arrays():
    return squares(128, 2)


@pytest.fixture(scope="module")
def trained(train_set):
    model = tiny_net()
    history = fastcnn.fit(model, train_set, epochs=3, batch_size=32, lr=0.05, progress=False)
    return model, history


def _softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


# ---- fit ----------------------------------------------------------------------------------------


def test_fit_learns_a_separable_data_set(trained, test_arrays):
    model, history = trained
    assert len(history) == 3
    assert history[-1]["accuracy"] >= 0.95
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    scores = fastcnn.evaluate(model, data.ArrayDataset(*test_arrays, classes=CLASSES))
    assert scores["accuracy"] >= 0.9


def test_fit_keeps_classes_and_preprocessing_on_the_model(trained, train_set):
    model, _ = trained
    assert model.classes == CLASSES
    assert model.preprocessing == train_set.preprocessing
    assert model.preprocessing["image_size"] == [SIZE, SIZE]


def test_history_records(train_set, test_arrays):
    model = tiny_net()
    val = data.ArrayDataset(*test_arrays, classes=CLASSES)
    history = fastcnn.fit(
        model, train_set, epochs=2, batch_size=64, lr=0.05, val=val, progress=False
    )
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0
        assert r["loss"] > 0 and r["val_loss"] > 0 and r["seconds"] > 0
        assert all(
            isinstance(r[k], float)
            for k in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")
        )
    # the last validation scores are those of the final model
    assert history[-1]["val_loss"] == pytest.approx(fastcnn.evaluate(model, val)["loss"], rel=1e-9)
    assert history[-1]["val_accuracy"] == fastcnn.evaluate(model, val)["accuracy"]

    no_val = fastcnn.fit(tiny_net(), train_set, epochs=1, lr=0.05, progress=False)
    assert {"loss", "accuracy", "seconds"} <= set(no_val[0])
    assert "val_accuracy" not in no_val[0] or no_val[0]["val_accuracy"] is None


def test_fit_is_the_loop_one_would_write_by_hand(train_set):
    """Seeded shuffle (DataLoader(seed)), SGD(lr, momentum), mean loss and accuracy per epoch."""
    fitted = tiny_net()
    history = fastcnn.fit(
        fitted, train_set, epochs=2, batch_size=50, lr=0.03, momentum=0.8, seed=7, progress=False
    )

    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.03, momentum=0.8)
    loss_fn = nn.CrossEntropyLoss()
    loader = data.DataLoader(train_set, batch_size=50, shuffle=True, seed=7)
    for epoch in range(2):
        losses, correct = [], 0
        for x, y in loader:
            opt.zero_grad()
            logits = model(x)
            losses.append(loss_fn(logits, y) * len(y))
            correct += int((logits.argmax(1) == y).sum())
            model.backward(loss_fn.backward())
            opt.step()
        assert history[epoch]["loss"] == pytest.approx(sum(losses) / len(train_set), rel=1e-12)
        assert history[epoch]["accuracy"] == correct / len(train_set)
    for (k, a), b in zip(fitted.state_dict().items(), model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def _without_timing(history):
    return [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in history
    ]


def test_seeded_runs_are_bit_identical(train_set, test_arrays):
    val = data.ArrayDataset(*test_arrays, classes=CLASSES)
    runs = []
    for _ in range(2):
        model = tiny_net(seed=3)
        history = fastcnn.fit(
            model, train_set, epochs=2, batch_size=32, lr=0.05, val=val, seed=11, progress=False
        )
        runs.append((_without_timing(history), model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k], err_msg=k)

    other = tiny_net(seed=3)
    fastcnn.fit(other, train_set, epochs=2, batch_size=32, lr=0.05, seed=12, progress=False)
    assert not np.array_equal(other.state_dict()["0.weight"], runs[0][1]["0.weight"])


def test_fit_accepts_arrays_loaders_and_an_optimizer(train_set, test_arrays):
    x, y = train_set.images, train_set.labels
    model = tiny_net()
    h = fastcnn.fit(
        model,
        (x, y),
        epochs=1,
        batch_size=32,
        lr=0.05,
        val=(test_arrays[0][:, None] / np.float32(255), test_arrays[1]),
        progress=False,
    )
    assert "val_accuracy" in h[0]

    model = tiny_net()
    adam = optim.Adam(model.parameters(), lr=0.01)
    before = model.state_dict()
    h = fastcnn.fit(
        model,
        data.DataLoader(train_set, batch_size=32, shuffle=True, seed=0),
        epochs=2,
        optimizer=adam,
        progress=False,
    )
    assert adam.steps[0] == 2 * 8  # the given optimizer did the steps
    assert not np.array_equal(before["0.weight"], model.state_dict()["0.weight"])
    assert h[-1]["accuracy"] > 0.5


def test_fit_refuses_bad_arguments(train_set):
    with pytest.raises(ValueError):
        fastcnn.fit(tiny_net(), train_set, epochs=0, progress=False)
    with pytest.raises(ValueError):
        fastcnn.fit(tiny_net(), train_set, epochs=1.5, progress=False)
    ten = data.ArrayDataset(*squares(32, 0), classes=[str(i) for i in range(10)])
    with pytest.raises(ValueError, match="10 classes"):
        fastcnn.fit(tiny_net(num_classes=4), ten, epochs=1, progress=False)
    with pytest.raises(TypeError):
        fastcnn.fit(tiny_net(), 42, epochs=1, progress=False)


def test_progress_prints_one_line_per_epoch(train_set, capsys):
    fastcnn.fit(tiny_net(), train_set, epochs=2, batch_size=64, lr=0.05, progress=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "accuracy" in lines[0]


def test_diverging_training_raises_floating_point_error(train_set):
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch \d+") as info:
        fastcnn.fit(tiny_net(), train_set, epochs=3, batch_size=32, lr=1e20, progress=False)
    assert "lr" in str(info.value)


def test_nan_loss_names_the_epoch_and_batch():
    """A NaN pixel must reach the loss (ReLU propagates NaN, as PyTorch's does), not vanish."""
    images, labels = squares(96, 4)
    x = (images[:, None] / np.float32(255)).astype(np.float32)
    x[70, 0, 5, 5] = np.nan  # sample 70 is in batch 3 of 32 (no shuffling)
    loader = data.DataLoader(data.ArrayDataset(x, labels), batch_size=32)
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 3\b"):
        fastcnn.fit(tiny_net(), loader, epochs=2, progress=False)


def test_nan_weight_is_not_trained_over_silently(train_set):
    model = tiny_net()
    model[0].weight.data[0, 0, 1, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 1\b"):
        fastcnn.fit(model, train_set, epochs=1, batch_size=32, progress=False)


def test_checkpoint_is_written_and_loadable_after_every_epoch(train_set, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    model = tiny_net()
    saved = []
    real_save = io.save_checkpoint

    def save_and_check(p, m, opt, **training):
        real_save(p, m, opt, **training)
        loaded = fastcnn.load(p)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[k], v)
        assert loaded.classes == CLASSES
        saved.append(os.fspath(p))

    monkeypatch.setattr(io, "save_checkpoint", save_and_check)
    fastcnn.fit(model, train_set, epochs=3, batch_size=64, lr=0.05, checkpoint=path, progress=False)
    assert saved == [os.fspath(path)] * 3
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]
    x = train_set.images[:5]
    np.testing.assert_array_equal(fastcnn.predict(fastcnn.load(path), x), fastcnn.predict(model, x))


# ---- evaluate -----------------------------------------------------------------------------------


def test_evaluate_matches_a_hand_computation(trained, test_arrays):
    model, _ = trained
    model.train()
    ds = data.ArrayDataset(*test_arrays, classes=CLASSES)
    scores = fastcnn.evaluate(model, ds, batch_size=50)  # uneven last batch
    assert set(scores) == {"loss", "accuracy"}
    logits = model.eval()(ds.images)
    p = _softmax64(logits)
    loss = -np.mean(np.log(p[np.arange(len(ds)), ds.labels]))
    assert scores["loss"] == pytest.approx(loss, rel=1e-5)
    assert scores["accuracy"] == np.mean(logits.argmax(1) == ds.labels)
    assert model.training is False  # eval() above
    model.train()
    fastcnn.evaluate(model, ds)
    assert model.training is True  # evaluate restores the mode it found
    assert fastcnn.evaluate(model, (ds.images, ds.labels), batch_size=50) == scores
    assert fastcnn.evaluate(model, data.DataLoader(ds, batch_size=7)) == pytest.approx(scores)


def test_evaluate_refuses_labels_out_of_range(trained):
    model, _ = trained
    x = np.zeros((3, 1, SIZE, SIZE), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        fastcnn.evaluate(model, (x, np.array([0, 9, 1])))


# ---- predict ------------------------------------------------------------------------------------


def _check_probabilities(p, n, k=4):
    assert p.shape == (n, k)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_predict_float_batches_and_single_images(trained, train_set):
    model, _ = trained
    x = train_set.images[:10]
    model.train()
    p = fastcnn.predict(model, x)
    assert model.training is False  # predict switched to eval mode
    _check_probabilities(p, 10)
    np.testing.assert_allclose(p, _softmax64(model(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p.argmax(1), train_set.labels[:10])
    one = fastcnn.predict(model, x[3])
    _check_probabilities(one, 1)
    np.testing.assert_allclose(one[0], p[3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        fastcnn.predict(model, x.astype(np.float64)), p, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(fastcnn.predict(model, x, batch_size=3), p, rtol=1e-6, atol=1e-7)


def test_predict_raw_uint8_applies_the_models_preprocessing(trained, train_set):
    model, _ = trained
    raw, _ = squares(256, 1)  # the very images of train_set
    expected = fastcnn.predict(model, train_set.images[:6])
    np.testing.assert_allclose(fastcnn.predict(model, raw[:6]), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        fastcnn.predict(model, raw[:6, :, :, None]), expected, rtol=1e-6, atol=1e-7
    )
    one = fastcnn.predict(model, raw[2])
    _check_probabilities(one, 1)
    np.testing.assert_allclose(one[0], expected[2], rtol=1e-6, atol=1e-7)
    # a larger raw image is resized to the training size
    big = np.kron(raw[2], np.ones((2, 2), np.uint8))
    assert fastcnn.predict(model, big).argmax() == train_set.labels[2]


def test_predict_refuses_wrong_shapes(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="channel"):
        fastcnn.predict(model, np.zeros((2, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError):
        fastcnn.predict(model, np.zeros((0, 1, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError):
        fastcnn.predict(model, np.zeros((SIZE, SIZE), np.float32))  # float needs (C, H, W)


def test_predict_raw_uint8_needs_preprocessing(train_set):
    model = tiny_net()
    with pytest.raises(ValueError, match="preprocessing"):
        fastcnn.predict(model, np.zeros((2, SIZE, SIZE), np.uint8))
    with pytest.raises((TypeError, ValueError)):
        fastcnn.predict(model, np.zeros((1, 1, SIZE, SIZE), np.int32))


def test_predict_image_files(trained, train_set, tmp_path):
    model, _ = trained
    raw, labels = squares(256, 1)
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(raw[0]).save(png)
    Image.fromarray(raw[1]).save(jpg, quality=95)
    rgb = tmp_path / "c.png"
    Image.fromarray(np.kron(raw[2], np.ones((3, 3), np.uint8))).convert("RGB").save(rgb)

    p = fastcnn.predict(model, str(png))
    _check_probabilities(p, 1)
    # a lossless grey PNG of the training size is exactly the training image
    np.testing.assert_allclose(
        p, fastcnn.predict(model, train_set.images[:1]), rtol=1e-6, atol=1e-7
    )
    many = fastcnn.predict(model, [png, str(jpg), rgb])
    _check_probabilities(many, 3)
    np.testing.assert_array_equal(many.argmax(1), labels[:3])


def test_predict_missing_or_broken_file_raises_value_error(trained, tmp_path):
    model, _ = trained
    with pytest.raises((ValueError, FileNotFoundError)):
        fastcnn.predict(model, tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        fastcnn.predict(model, bad)


# ---- an image folder, end to end ----------------------------------------------------------------


def _folder_image(rng, side):
    """An image whose bright half (0 left, 1 right) is its class, at a random size and mode."""
    h, w = int(rng.integers(14, 40)), int(rng.integers(14, 40))
    a = rng.integers(0, 70, (h, w, 3)).astype(np.uint8)
    cols = slice(0, w // 2) if side == 0 else slice(w - w // 2, w)
    a[:, cols] = rng.integers(180, 256, (h, w // 2, 3))
    return Image.fromarray(a)


def _make_folder(root, per_class, seed):
    rng = np.random.default_rng(seed)
    files = []
    for side, name in enumerate(["left", "right"]):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            img = _folder_image(rng, side)
            kind = i % 4
            if kind == 0:
                path = root / name / f"{i}.png"
                img.convert("L").save(path)
            elif kind == 1:
                path = root / name / f"{i}.jpg"
                img.save(path, quality=90)
            elif kind == 2:
                path = root / name / f"{i}.PNG"
                img.convert("RGBA").save(path)
            else:
                path = root / name / f"{i}.png"
                img.convert("P").save(path)
            files.append((path, side))
    (root / "left" / ".DS_Store").write_bytes(b"\x00\x01junk")
    return files


def test_image_folder_end_to_end(tmp_path):
    files = _make_folder(tmp_path / "train", 16, seed=0)
    train = data.ImageFolder(tmp_path / "train", image_size=12, channels=1)
    assert train.classes == ["left", "right"] and len(train) == 32
    model = tiny_net(num_classes=2)
    history = fastcnn.fit(model, train, epochs=8, batch_size=8, lr=0.05, progress=False)
    assert history[-1]["accuracy"] >= 0.9

    path = tmp_path / "model.safetensors"
    fastcnn.save(model, path)
    loaded = fastcnn.load(path)
    assert loaded.classes == ["left", "right"]
    assert loaded.preprocessing == train.preprocessing
    # a file of the training set, predicted by the loaded model from its path alone, gets the
    # same probabilities as its decoded training image
    first = train.samples[0][0]
    np.testing.assert_allclose(
        fastcnn.predict(loaded, first), fastcnn.predict(model, train[0][0]), rtol=1e-5, atol=1e-6
    )
    # new files of both classes, every format and mode
    new = _make_folder(tmp_path / "new", 4, seed=1)
    probs = fastcnn.predict(loaded, [p for p, _ in new])
    _check_probabilities(probs, len(new), k=2)
    assert np.mean(probs.argmax(1) == np.array([s for _, s in new])) >= 0.75
    assert files  # silence unused


# ---- the full data set (slow) -------------------------------------------------------------------


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion-MNIST not installed at {FASHION}")
def test_seednet_learns_fashion_mnist():
    train = data.FashionMNIST(FASHION, train=True, download=False)
    test = data.FashionMNIST(FASHION, train=False, download=False)
    assert len(train) == 60000 and len(test) == 10000
    nn.manual_seed(0)
    model = models.seednet()
    history = fastcnn.fit(
        model, train, epochs=2, batch_size=64, lr=0.01, momentum=0.9, val=test, progress=False
    )
    assert history[-1]["val_accuracy"] >= 0.88, history
    assert fastcnn.evaluate(model, test)["accuracy"] == history[-1]["val_accuracy"]
    assert re.fullmatch(r"[\w\- /]+", model.classes[0])
