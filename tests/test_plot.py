"""fastcnn.plot (the `plot` extra): each picture is written as a PNG of sensible size, the
history CSV holds every epoch, and without matplotlib the error says how to install it."""

import csv
import os
import sys

import numpy as np
import pytest
from test_cli import cli, make_folder
from test_resume import squares, tiny_net

import fastcnn
from fastcnn import data, plot

matplotlib = pytest.importorskip("matplotlib")

CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture(scope="module")
def trained():
    train = data.ArrayDataset(*squares(200, 1), classes=CLASSES)
    val = data.ArrayDataset(*squares(60, 2), classes=CLASSES)
    model = tiny_net()
    history = fastcnn.fit(model, train, epochs=3, batch_size=32, lr=0.05, val=val, progress=False)
    return model, val, history


def test_curves(trained, tmp_path):
    _, _, history = trained
    w, h = png_size(plot.curves(history, tmp_path / "c.png"))
    assert w > 600 and h > 250
    no_val = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in history]
    assert png_size(plot.curves(no_val, tmp_path / "c2.png"))[0] > 600
    with pytest.raises(ValueError, match="empty"):
        plot.curves([], tmp_path / "c3.png")


def test_history_csv(trained, tmp_path):
    _, _, history = trained
    with open(plot.write_history_csv(history, tmp_path / "h.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["epoch"] == "1"
    assert float(rows[2]["val_accuracy"]) == pytest.approx(history[2]["val_accuracy"])


def test_predictions_follow_the_data(trained):
    model, val, _ = trained
    labels, preds, conf, images = plot.predictions(model, val)
    np.testing.assert_array_equal(labels, val.labels)
    np.testing.assert_array_equal(preds, fastcnn.predict(model, val.images).argmax(1))
    assert np.all((conf > 0.25 - 1e-6) & (conf <= 1))
    assert images.shape == (60, 12, 12, 1) and images.dtype == np.uint8


def test_confusion_matrix_misclassified_and_filters(trained, tmp_path):
    model, val, _ = trained
    assert png_size(plot.confusion_matrix(model, val, tmp_path / "m.png"))[0] > 300
    assert png_size(plot.confusion_matrix(model, val, tmp_path / "n.png", normalize=False))[0] > 300
    assert png_size(plot.misclassified(model, val, tmp_path / "x.png", max_images=7))[0] > 300
    assert png_size(plot.filters(model, tmp_path / "f.png"))[0] > 200
    assert not any(name.endswith(".tmp.png") for name in os.listdir(tmp_path))


def test_no_matplotlib_says_how_to_install(monkeypatch, trained, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fastcnn\[plot\]"):
        plot.curves(trained[2], tmp_path / "c.png")


def test_cli_plots(tmp_path):
    make_folder(tmp_path / "images", per_class=12)
    result = cli(
        *["train", "images", "--epochs", "2", "--image-size", "16", "--plots", "plots"],
        *["--out", "m.safetensors", "--quiet"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "plots")) == [
        "confusion.png",
        "curves.png",
        "filters.png",
        "misclassified.png",
    ]
    with open(tmp_path / "m.history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    result = cli("eval", "m.safetensors", "images", "--plots", "again", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "again")) == [
        "confusion.png",
        "filters.png",
        "misclassified.png",
    ]
