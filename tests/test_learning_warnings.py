"""fit()'s "is it learning?" warnings: each failure mode warns once with what to try, a good
run never warns, and warnings=False silences them."""

import warnings

import numpy as np
import pytest
from test_resume import squares, tiny_net

import fastcnn
from fastcnn import data
from fastcnn.train import TrainingWarning, _Watch


def fit_quietly(train, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastcnn.fit(tiny_net(), train, progress=False, **kw)
    return [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]


def test_a_good_run_does_not_warn():
    train = data.ArrayDataset(*squares(640, 1, noise=0.1))
    val = data.ArrayDataset(*squares(160, 2, noise=0.1))
    said = fit_quietly(train, val=val, epochs=5, batch_size=8, lr=0.02)  # 400 steps
    assert said == []


def test_labels_unrelated_to_the_images_warn():
    images, _ = squares(640, 1)
    labels = np.random.default_rng(5).integers(0, 4, 640)
    said = fit_quietly(data.ArrayDataset(images, labels), epochs=4, batch_size=8, lr=0.001)
    assert any("has not fallen" in s for s in said) or any("chance" in s for s in said), said
    assert len(said) == len(set(said))  # once each
    assert (
        fit_quietly(
            data.ArrayDataset(images, labels), epochs=4, batch_size=8, lr=0.001, warnings=False
        )
        == []
    )


def watch(losses=(), records=(), lrs=None):
    """What a _Watch says of these batch losses and epoch records; `lrs`: the learning rate at
    each epoch's end (default 0.5 throughout)."""
    lr = [0.5]
    w = _Watch(classes=10, lr_of=lambda: lr[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for v in losses:
            w.batch(v)
        for i, r in enumerate(records):
            if lrs is not None:
                lr[0] = lrs[i]
            w.epoch(r)
    return [str(c.message) for c in caught]


def test_a_jump_in_the_loss_warns_once_naming_the_learning_rate():
    rng = np.random.default_rng(0)
    steady = list(1.0 + 0.05 * rng.standard_normal(100))
    said = watch(steady + [6.0, 9.0, 12.0, 20.0, 30.0] + steady)
    assert len(said) == 1 and "jumped" in said[0] and "0.5" in said[0]
    assert watch(steady + [3.5] + steady) == []  # one bad batch, not a jump


def test_a_loss_far_above_chance_from_the_start_names_the_learning_rate():
    said = watch([60.0, 80.0, 45.0] * 20)
    assert len(said) == 1 and "far above the 2.3 of guessing" in said[0] and "(0.5)" in said[0]
    assert watch([2.3 * 0.99**i for i in range(60)]) == []  # a run starting at chance level
    assert watch([6.0] * 60) == []  # high, but under 3x chance


def test_a_flat_loss_and_chance_accuracy_warn():
    said = watch([2.30] * 300, [{"epoch": 1, "loss": 2.3, "accuracy": 0.11}])
    assert any("has not fallen in the first 300 steps" in s for s in said)
    assert any("about chance (1/10" in s for s in said)
    assert (
        watch([2.3 * 0.99**i for i in range(300)], [{"epoch": 1, "loss": 1, "accuracy": 0.6}]) == []
    )


def test_rising_validation_loss_warns_of_overfitting():
    records = [
        {"epoch": e, "loss": 1.0 - 0.1 * e, "accuracy": 0.9, "val_loss": v}
        for e, v in enumerate([0.5, 0.45, 0.5, 0.55, 0.6], 1)
    ]
    said = watch(records=records)
    assert len(said) == 1 and "overfitting" in said[0]
    flat = [dict(r, val_loss=0.5) for r in records]
    assert watch(records=flat) == []


def test_rising_validation_loss_near_a_schedules_peak_is_not_called_overfitting():
    # A one-cycle run near its peak rate: the validation loss swings, then settles as the rate
    # anneals. Past half the peak on the way down, the same rise is reported.
    records = [
        {"epoch": e, "loss": 1.0 - 0.01 * e, "accuracy": 0.9, "val_loss": v}
        for e, v in enumerate([0.4, 0.45, 0.48, 0.5, 0.54, 0.56], 1)
    ]
    assert watch(records=records, lrs=[0.04, 0.08, 0.1, 0.09, 0.08, 0.07]) == []
    said = watch(records=records, lrs=[0.1, 0.09, 0.07, 0.05, 0.04, 0.03])
    assert len(said) == 1 and "overfitting" in said[0]
    # A step schedule holding its rate: reported as with a constant rate.
    said = watch(records=records, lrs=[0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert len(said) == 1 and "overfitting" in said[0]


def test_a_resumed_run_whose_loss_has_already_fallen_does_not_warn():
    # fit gives the watch the checkpoint's history: the resumed run's first steps are flat
    # because the loss fell before the interruption, which is no sign of trouble.
    w = _Watch(classes=10, lr_of=lambda: 0.5, history=[{"epoch": 1, "loss": 0.2, "accuracy": 0.9}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(300):
            w.batch(0.2)
    assert caught == []
    assert any("has not fallen" in s for s in watch([0.2] * 300))  # from the start, it does


@pytest.mark.parametrize("lr", [0.02])
def test_cli_prints_no_warning_on_a_good_run(lr, tmp_path):
    from test_cli import cli, make_folder

    make_folder(tmp_path / "images", per_class=12)
    result = cli("train", "images", "--epochs", "2", "--image-size", "12", "--lr", str(lr),
                 "--out", "m.safetensors", "--quiet", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and "TrainingWarning" not in result.stderr, result.stderr
