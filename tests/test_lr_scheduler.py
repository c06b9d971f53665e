"""optim.lr_scheduler: the schedules' values (closed forms here, PyTorch's own when installed),
stepping, momentum cycling, state_dict round trips and bad arguments."""

import json
import math

import numpy as np
import pytest

from fastcnn import nn, optim
from fastcnn.optim import lr_scheduler as ls


def params():
    layer = nn.Linear(3, 2)
    return layer.parameters()


def sgd(lr=0.1, momentum=0.9, **kw):
    return optim.SGD(params(), lr=lr, momentum=momentum, **kw)


def run(sched, steps):
    """The lr of step 0 (set when the scheduler is made), then after each step()."""
    lrs = [sched.optimizer.lr]
    for _ in range(steps):
        sched.step()
        lrs.append(sched.optimizer.lr)
        assert sched.get_last_lr() == [sched.optimizer.lr]
    return np.array(lrs)


def test_step_lr():
    lrs = run(ls.StepLR(sgd(lr=0.1), step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(lrs, [0.1 * 0.5 ** (e // 3) for e in range(11)], rtol=1e-15)


def test_cosine_annealing_lr():
    T, lo = 7, 0.001
    lrs = run(ls.CosineAnnealingLR(sgd(lr=0.1), T_max=T, eta_min=lo), 2 * T)
    closed = [lo + (0.1 - lo) * (1 + math.cos(math.pi * e / T)) / 2 for e in range(2 * T + 1)]
    np.testing.assert_allclose(lrs, closed, rtol=1e-12, atol=1e-15)  # and back up past T_max
    assert lrs[T] == pytest.approx(lo)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_lr(strategy):
    opt = sgd(lr=0.5, momentum=0.9)
    sched = ls.OneCycleLR(opt, max_lr=0.1, total_steps=20, anneal_strategy=strategy)
    assert opt.lr == pytest.approx(0.1 / 25) and opt.momentum == 0.95  # set when made
    lrs, moms = [opt.lr], [opt.momentum]
    for _ in range(19):
        sched.step()
        lrs.append(opt.lr)
        moms.append(opt.momentum)
    peak = round(0.3 * 20) - 1  # the rise ends at step pct_start * total_steps - 1
    assert int(np.argmax(lrs)) == peak and lrs[peak] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)
    assert np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)
    assert moms[peak] == pytest.approx(0.85) and moms[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()
        sched.step()


def test_one_cycle_sets_adam_beta1_and_sgd_without_momentum_trains():
    adam = optim.AdamW(params(), lr=1.0)
    ls.OneCycleLR(adam, max_lr=0.01, epochs=2, steps_per_epoch=5)
    assert adam.beta1 == 0.95
    opt = sgd(momentum=0.0)
    sched = ls.OneCycleLR(opt, max_lr=0.1, total_steps=4)
    assert opt.momentum == 0.95
    for _ in range(3):  # momentum buffers appear when the schedule sets a momentum
        for p in opt.params:
            p.grad = np.ones_like(p.data)
        opt.step()
        sched.step()
    assert all(b is not None for b in opt.buffers)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: ls.StepLR(o, 2, 0.3),
        lambda o: ls.CosineAnnealingLR(o, 5, 0.01),
        lambda o: ls.OneCycleLR(o, 0.2, total_steps=30, three_phase=True),
    ],
    ids=["step", "cosine", "onecycle"],
)
def test_state_dict_continues_identically(make):
    whole = make(sgd())
    want = run(whole, 12)
    first = make(sgd())
    run(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able, as checkpoints store it
    resumed = make(sgd())
    resumed.optimizer.lr = 123.0  # load_state_dict sets the optimizer's lr (and momentum)
    resumed.load_state_dict(state)
    assert resumed.optimizer.lr == first.optimizer.lr
    assert resumed.optimizer.momentum == first.optimizer.momentum
    np.testing.assert_array_equal(run(resumed, 7), want[5:])


def test_bad_arguments():
    for bad in (
        lambda: ls.StepLR(sgd(), 0),
        lambda: ls.StepLR(sgd(), 2, gamma=0),
        lambda: ls.CosineAnnealingLR(sgd(), 0),
        lambda: ls.CosineAnnealingLR(sgd(), 3, eta_min=-1),
        lambda: ls.OneCycleLR(sgd(), 0.1),
        lambda: ls.OneCycleLR(sgd(), 0.1, total_steps=10, pct_start=1.0),
        lambda: ls.OneCycleLR(sgd(), 0.1, total_steps=10, anneal_strategy="exp"),
        lambda: ls.OneCycleLR(sgd(), -0.1, total_steps=10),
        lambda: ls.StepLR(sgd(), 2, last_epoch=3),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError, match="Optimizer"):
        ls.StepLR("sgd", 2)
    with pytest.raises(ValueError, match="unknown keys"):
        ls.StepLR(sgd(), 2).load_state_dict({"T_max": 3})


CASES = [
    ("StepLR", dict(step_size=3, gamma=0.5), 20),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001), 30),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=50), 49),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=50, anneal_strategy="linear"), 49),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=50, three_phase=True), 49),
    ("OneCycleLR", dict(max_lr=0.3, epochs=3, steps_per_epoch=7, pct_start=0.25), 20),
]


@pytest.mark.parametrize("name,kw,steps", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("opt", ["SGD", "AdamW"])
def test_matches_pytorch_bit_for_bit(name, kw, steps, opt):
    torch = pytest.importorskip("torch")
    mine = (
        optim.SGD(params(), lr=0.1, momentum=0.9, nesterov=True)
        if opt == "SGD"
        else optim.AdamW(params(), lr=0.1)
    )
    p = [torch.nn.Parameter(torch.zeros(3))]
    theirs = (
        torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)
        if opt == "SGD"
        else torch.optim.AdamW(p, lr=0.1)
    )
    a, b = getattr(ls, name)(mine, **kw), getattr(torch.optim.lr_scheduler, name)(theirs, **kw)
    group = theirs.param_groups[0]
    for _ in range(steps + 1):
        assert mine.lr == group["lr"]
        m = mine.momentum if opt == "SGD" else mine.beta1
        assert m == (group["momentum"] if opt == "SGD" else group["betas"][0])
        theirs.step()
        a.step()
        b.step()
