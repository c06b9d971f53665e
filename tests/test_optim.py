"""fastcnn.optim against hand-written NumPy versions of PyTorch's update rules."""

import numpy as np
import pytest

from fastcnn import nn, optim

SHAPES = [(4, 3, 3, 3), (4,), (7, 5), (1,)]


def make_params(rng):
    return [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def grads_for(rng, steps):
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


# ---- the references: torch.optim.SGD / torch.optim.Adam, in float64 ----------------------------


def sgd_reference(p0, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    p = [a.astype(np.float64) for a in p0]
    bufs = [None] * len(p)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            d_p = g.astype(np.float64)
            if weight_decay:
                d_p = d_p + weight_decay * p[i]
            if momentum:
                if bufs[i] is None:
                    bufs[i] = d_p.copy()  # torch: buf = clone(d_p) on the first step
                else:
                    bufs[i] = momentum * bufs[i] + d_p  # dampening 0
                d_p = d_p + momentum * bufs[i] if nesterov else bufs[i]
            p[i] = p[i] - lr * d_p
    return p


def adam_reference(p0, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """Adam; decoupled: AdamW (p *= 1 - lr * weight_decay, then Adam on the gradient alone)."""
    b1, b2 = betas
    p = [a.astype(np.float64) for a in p0]
    m = [np.zeros_like(a) for a in p]
    v = [np.zeros_like(a) for a in p]
    for t, step_grads in enumerate(grads, 1):
        for i, g in enumerate(step_grads):
            g = g.astype(np.float64)
            if decoupled:
                p[i] = p[i] * (1 - lr * weight_decay)
            elif weight_decay:
                g = g + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            denom = np.sqrt(v[i]) / np.sqrt(bc2) + eps
            p[i] = p[i] - (lr / bc1) * m[i] / denom
    return p


def run(opt, params, grads):
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.03, momentum=0.8, weight_decay=5e-3),
    dict(lr=0.03, momentum=0.5, weight_decay=1e-2, nesterov=True),
]


def _ids(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", SGD_CASES, ids=_ids)
def test_sgd_matches_pytorch_rule(kw, rng):
    params = make_params(rng)
    p0 = [p.data.copy() for p in params]
    grads = grads_for(rng, 6)
    run(optim.SGD(params, **kw), params, grads)
    expected = sgd_reference(p0, grads, **kw)
    for i, (p, e) in enumerate(zip(params, expected)):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, e, rtol=1e-5, atol=1e-6, err_msg=f"param {i}")
        # the update is not vanishingly small next to the tolerance
        assert np.abs(e - p0[i]).max() > 1e-2


ADAM_CASES = [
    dict(lr=1e-3),
    dict(lr=0.01, betas=(0.8, 0.99)),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.005, betas=(0.5, 0.9), eps=1e-3),
]


@pytest.mark.parametrize("kw", ADAM_CASES, ids=_ids)
def test_adam_matches_pytorch_rule(kw, rng):
    params = make_params(rng)
    p0 = [p.data.copy() for p in params]
    grads = grads_for(rng, 7)
    run(optim.Adam(params, **kw), params, grads)
    expected = adam_reference(p0, grads, **kw)
    for i, (p, e) in enumerate(zip(params, expected)):
        # 1e-4 of the total update, plus the float32 rounding of the weight at each of the steps
        tol = 1e-4 * np.abs(e - p0[i]) + len(grads) * np.spacing(np.abs(e).astype(np.float32))
        err = np.abs(p.data - e)
        assert np.all(err <= tol), (i, float((err / tol).max()))
        assert np.abs(e - p0[i]).max() > 2 * kw["lr"]  # the weights did move


ADAMW_CASES = [dict(lr=1e-3), dict(lr=0.01, weight_decay=0.1), dict(lr=0.05, weight_decay=0.5)]


@pytest.mark.parametrize("kw", ADAMW_CASES, ids=_ids)
def test_adamw_matches_pytorch_rule(kw, rng):
    params = make_params(rng)
    p0 = [p.data.copy() for p in params]
    grads = grads_for(rng, 7)
    opt = optim.AdamW(params, **kw)
    assert opt.weight_decay == kw.get("weight_decay", 1e-2)  # PyTorch's default
    run(opt, params, grads)
    expected = adam_reference(p0, grads, decoupled=True, **{"weight_decay": 1e-2, **kw})
    plain = adam_reference(p0, grads, **{"weight_decay": 1e-2, **kw})
    for i, (p, e) in enumerate(zip(params, expected)):
        tol = 1e-4 * np.abs(e - p0[i]) + len(grads) * np.spacing(np.abs(e).astype(np.float32))
        err = np.abs(p.data - e)
        assert np.all(err <= tol), (i, float((err / tol).max()))
        assert np.abs(plain[i] - e).max() > 10 * tol.max()  # not Adam's coupled decay


def test_adamw_against_pytorch(rng):
    torch = pytest.importorskip("torch")
    params = make_params(rng)
    tparams = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
    grads = grads_for(rng, 5)
    run(optim.AdamW(params, lr=0.01, weight_decay=0.2), params, grads)
    topt = torch.optim.AdamW(tparams, lr=0.01, weight_decay=0.2)
    for step_grads in grads:
        for t, g in zip(tparams, step_grads):
            t.grad = torch.tensor(g)
        topt.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adam_default_hyperparameters(rng):
    params = make_params(rng)
    opt = optim.Adam(params)
    assert opt.lr == 1e-3 and (opt.beta1, opt.beta2) == (0.9, 0.999) and opt.eps == 1e-8
    # Adam's first step moves every weight by ~lr * sign(grad)
    p0 = [p.data.copy() for p in params]
    grads = grads_for(rng, 1)
    run(opt, params, grads)
    for p, q, g in zip(params, p0, grads[0]):
        np.testing.assert_allclose(p.data - q, -1e-3 * np.sign(g), rtol=1e-3, atol=1e-7)


def test_step_leaves_the_gradient_untouched(rng):
    for opt_cls, kw in (
        (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
        (optim.Adam, dict(lr=0.1, weight_decay=0.1)),
    ):
        params = make_params(rng)
        opt = opt_cls(params, **kw)
        grads = grads_for(rng, 1)[0]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g)


def test_parameters_without_gradient_are_skipped(rng):
    """As in PyTorch: no grad, no update and no state change (momentum starts on the first grad)."""
    params = make_params(rng)
    p0 = [p.data.copy() for p in params]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    grads = grads_for(rng, 3)
    for step, step_grads in enumerate(grads):
        opt.zero_grad()
        for i, (p, g) in enumerate(zip(params, step_grads)):
            if i == 1 and step < 2:
                continue  # param 1 gets its first gradient at step 3
            p.grad = g.copy()
        opt.step()
    np.testing.assert_allclose(
        params[1].data, sgd_reference([p0[1]], [[grads[2][1]]], 0.1, 0.9)[0], rtol=1e-6
    )
    np.testing.assert_allclose(
        params[0].data,
        sgd_reference([p0[0]], [[g[0]] for g in grads], 0.1, 0.9)[0],
        rtol=1e-5,
        atol=1e-6,
    )

    params = make_params(rng)
    p0 = [p.data.copy() for p in params]
    opt = optim.Adam(params, lr=0.01)
    for step, step_grads in enumerate(grads):
        opt.zero_grad()
        for i, (p, g) in enumerate(zip(params, step_grads)):
            if i != 1 or step == 2:
                p.grad = g.copy()
        opt.step()
    assert opt.steps == [3, 1, 3, 3]
    np.testing.assert_allclose(
        params[1].data - p0[1],
        adam_reference([p0[1]], [[grads[2][1]]], 0.01)[0] - p0[1],
        rtol=1e-4,
        atol=1e-6,
    )


def test_float64_and_non_contiguous_gradients_are_accepted(rng):
    p = nn.Parameter(rng.standard_normal((4, 6)).astype(np.float32))
    p0 = p.data.copy()
    g = rng.standard_normal((6, 4))
    opt = optim.SGD([p], lr=0.1)
    p.grad = g.T  # float64, Fortran order
    opt.step()
    np.testing.assert_allclose(p.data, p0 - 0.1 * g.T, rtol=1e-6, atol=1e-6)


def test_optimizer_takes_a_module_or_a_generator():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(optim.SGD(model, lr=0.1).params) == 4
    assert len(optim.Adam(p for p in model.parameters()).params) == 4
    opt = optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---- state dicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
        lambda ps: optim.SGD(ps, lr=0.05),
        lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-3),
    ],
    ids=["sgd-momentum", "sgd-nesterov", "sgd-plain", "adam"],
)
def test_state_dict_resumes_identically(make, rng):
    params = make_params(rng)
    grads = grads_for(rng, 6)
    opt = make(params)
    run(opt, params, grads[:3])
    state = opt.state_dict()
    saved = [p.data.copy() for p in params]

    run(opt, params, grads[3:])  # the uninterrupted run

    resumed = [nn.Parameter(a.copy()) for a in saved]
    opt2 = make(resumed)
    opt2.load_state_dict(state)
    run(opt2, resumed, grads[3:])
    for a, b in zip(params, resumed):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam])
def test_state_dict_is_a_snapshot(opt_cls, rng):
    params = make_params(rng)
    grads = grads_for(rng, 4)
    kw = {"lr": 0.05, "momentum": 0.9} if opt_cls is optim.SGD else {"lr": 0.01}
    opt = opt_cls(params, **kw)
    run(opt, params, grads[:2])
    state = opt.state_dict()
    frozen = {
        k: [None if a is None else np.array(a, copy=True) for a in v] if isinstance(v, list) else v
        for k, v in state.items()
    }
    run(opt, params, grads[2:])
    for k, v in state.items():
        if isinstance(v, list):
            for a, b in zip(v, frozen[k]):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b, err_msg=k)
                else:
                    assert a == b, k


def test_fresh_state_dict_round_trip_before_any_step(rng):
    params = make_params(rng)
    grads = grads_for(rng, 2)
    a = optim.SGD(params, lr=0.1, momentum=0.9)
    twins = [nn.Parameter(p.data.copy()) for p in params]
    b = optim.SGD(twins, lr=0.5, momentum=0.9)
    b.load_state_dict(a.state_dict())
    assert b.lr == 0.1
    run(a, params, grads)
    run(b, twins, grads)
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam])
def test_state_dict_for_a_different_parameter_list_is_refused(opt_cls, rng):
    """A checkpoint from another model must not be spread silently over the wrong parameters."""
    kw = {"lr": 0.05, "momentum": 0.9} if opt_cls is optim.SGD else {"lr": 0.01}
    params = make_params(rng)
    opt = opt_cls(params, **kw)
    run(opt, params, grads_for(rng, 1))
    state = opt.state_dict()
    for other in (make_params(rng)[:3], make_params(rng) + [nn.Parameter(np.zeros(3, np.float32))]):
        target = opt_cls(other, **kw)
        run(target, other, [[np.ones_like(p.data) for p in other]])
        before = target.state_dict()
        with pytest.raises(ValueError):
            target.load_state_dict(state)
        after = target.state_dict()  # and the failed load changed nothing
        assert after.keys() == before.keys()
        for k in before:
            if isinstance(before[k], list):
                assert len(after[k]) == len(before[k]), k
                for a, b in zip(after[k], before[k]):
                    np.testing.assert_array_equal(a, b, err_msg=k)
            else:
                assert after[k] == before[k], k


# ---- argument checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0),
        lambda ps: optim.SGD(ps, lr=-0.1),
        lambda ps: optim.SGD(ps, lr=float("nan")),
        lambda ps: optim.SGD([], lr=0.1),
        lambda ps: optim.SGD(iter([]), lr=0.1),
        lambda ps: optim.SGD(ps, lr=0.1, nesterov=True),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.0, nesterov=True),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5),
        lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1e-4),
        lambda ps: optim.Adam(ps, lr=0),
        lambda ps: optim.Adam(ps, lr=-1e-3),
        lambda ps: optim.Adam([], lr=1e-3),
        lambda ps: optim.Adam(ps, betas=(1.0, 0.999)),
        lambda ps: optim.Adam(ps, betas=(0.9, -0.1)),
    ],
)
def test_bad_arguments_raise_value_error(make, rng):
    with pytest.raises(ValueError):
        make(make_params(rng))


def test_non_parameters_are_refused(rng):
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(3, np.float32)], lr=0.1)
