"""fit(..., optimizer=, scheduler=, label_smoothing=): schedules stepped as PyTorch's
documentation says (OneCycleLR per batch, the others per epoch), and checkpoints that carry the
schedule so a resumed run ends bit for bit where an uninterrupted one ends."""

import math

import numpy as np
import pytest
from test_resume import assert_same_weights, squares, tiny_net, without_timing

import fastcnn
from fastcnn import data, optim
from fastcnn.optim import lr_scheduler as ls

BATCH = 32


@pytest.fixture(scope="module")
def train_set():
    return data.ArrayDataset(*squares(160, 1), classes=["a", "b", "c", "d"])


def steps_per_epoch(dataset):
    return math.ceil(len(dataset) / BATCH)


SCHEDULES = {
    "onecycle": lambda opt, ds, epochs: ls.OneCycleLR(
        opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps_per_epoch(ds)
    ),
    "cosine": lambda opt, ds, epochs: ls.CosineAnnealingLR(opt, T_max=epochs),
    "step": lambda opt, ds, epochs: ls.StepLR(opt, step_size=1, gamma=0.5),
}


def train(dataset, schedule, epochs, total=None, checkpoint=None, resume=False, smoothing=0.0):
    """tiny_net trained for `epochs` of a schedule planned for `total` epochs."""
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = SCHEDULES[schedule](opt, dataset, total or epochs)
    history = fastcnn.fit(
        model,
        dataset,
        epochs=epochs,
        batch_size=BATCH,
        optimizer=opt,
        scheduler=sched,
        label_smoothing=smoothing,
        progress=False,
        checkpoint=checkpoint,
        resume=resume,
    )
    return model, opt, sched, history


def test_one_cycle_steps_every_batch(train_set):
    _, opt, sched, _ = train(train_set, "onecycle", 2)
    assert sched.last_epoch == sched.total_steps == 2 * steps_per_epoch(train_set)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_epoch_schedules_step_every_epoch(train_set, schedule):
    _, opt, sched, _ = train(train_set, schedule, 3)
    assert sched.last_epoch == 3
    want = 0.05 * 0.5**3 if schedule == "step" else 0.0  # cosine: eta_min at T_max
    assert opt.lr == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_resume_with_a_schedule_is_bit_for_bit(train_set, schedule, tmp_path):
    whole, whole_opt, _, whole_history = train(train_set, schedule, 3)
    path = tmp_path / "run.ckpt.safetensors"
    train(train_set, schedule, 2, total=3, checkpoint=path)  # "interrupted" after epoch 2
    resumed, opt, sched, history = train(train_set, schedule, 3, checkpoint=path, resume=True)
    assert len(history) == 3
    assert without_timing(history) == without_timing(whole_history)
    assert_same_weights(resumed, whole)
    assert opt.lr == whole_opt.lr and opt.momentum == whole_opt.momentum


def test_resume_refuses_another_schedule_or_smoothing(train_set, tmp_path):
    path = tmp_path / "run.ckpt.safetensors"
    train(train_set, "cosine", 1, total=3, checkpoint=path)
    with pytest.raises(ValueError, match="schedule differs: CosineAnnealingLR there, StepLR here"):
        train(train_set, "step", 3, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="T_max 3 there, 4 here"):
        train(train_set, "cosine", 4, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="label smoothing differs"):
        train(train_set, "cosine", 3, checkpoint=path, resume=True, smoothing=0.1)
    model = tiny_net()  # no schedule at all
    with pytest.raises(ValueError, match="schedule differs: CosineAnnealingLR there, none here"):
        fastcnn.fit(model, train_set, epochs=3, batch_size=BATCH, lr=0.05, progress=False,
                    checkpoint=path, resume=True)  # fmt: skip


def test_label_smoothing_reaches_the_loss(train_set):
    plain, *_, plain_history = train(train_set, "cosine", 1)
    smooth, *_, smooth_history = train(train_set, "cosine", 1, smoothing=0.2)
    assert smooth_history[0]["loss"] != plain_history[0]["loss"]
    assert not np.array_equal(smooth.state_dict()["4.weight"], plain.state_dict()["4.weight"])


def test_scheduler_needs_its_optimizer(train_set):
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = ls.StepLR(opt, 1)
    with pytest.raises(ValueError, match="optimizer="):
        fastcnn.fit(model, train_set, epochs=1, scheduler=sched, progress=False)
    other = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must schedule the optimizer"):
        fastcnn.fit(model, train_set, epochs=1, optimizer=other, scheduler=sched, progress=False)


def test_a_cycle_too_short_for_the_run_says_so(train_set):
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = ls.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    with pytest.raises(ValueError, match="total_steps=3"):
        fastcnn.fit(model, train_set, epochs=1, batch_size=BATCH, optimizer=opt,
                    scheduler=sched, progress=False)  # fmt: skip
    assert np.isfinite(model.state_dict()["4.weight"]).all()
