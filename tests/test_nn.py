"""fastcnn.nn: parameter discovery and naming, state dicts, modes, gradients, initialisation."""

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastcnn
from fastcnn import models, nn


def small_net(in_channels=2, num_classes=4):
    """conv -> relu -> maxpool -> flatten -> linear, for 8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, num_classes),
    )


def loss_and_grads(model, x, y):
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    return loss, {k: p.grad.copy() for k, p in model.named_parameters()}


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same weights, whatever ran before it."""
    nn.manual_seed(1234)


@pytest.fixture
def batch(rng):
    x = rng.standard_normal((6, 2, 8, 8), dtype=np.float32)
    y = rng.integers(0, 4, 6)
    return x, y


# ---- naming -------------------------------------------------------------------------------------


def test_sequential_names_parameters_like_pytorch():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
    assert list(model.state_dict()) == names
    params = model.parameters()
    assert len(params) == 6
    assert all(isinstance(p, nn.Parameter) for p in params)
    assert params[0] is model[0].weight and params[5] is model[6].bias


def test_seednet_names_and_shapes():
    state = models.seednet().state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        "0.weight": (32, 1, 5, 5),
        "0.bias": (32,),
        "3.weight": (64, 32, 5, 5),
        "3.bias": (64,),
        "7.weight": (128, 64 * 7 * 7),
        "7.bias": (128,),
        "9.weight": (10, 128),
        "9.bias": (10,),
    }
    assert list(state) == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "7.weight",
        "7.bias",
        "9.weight",
        "9.bias",
    ]
    assert all(v.dtype == np.float32 for v in state.values())


def test_nested_modules_and_custom_module_names():
    class Net(nn.Module):
        def __init__(self):
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.head = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(2, 3)))
            self.fc = nn.Linear(3, 2)

    names = [n for n, _ in Net().named_parameters()]
    assert names == [
        "features.0.weight",
        "features.0.bias",
        "head.1.0.weight",
        "head.1.0.bias",
        "fc.weight",
        "fc.bias",
    ]
    assert len(list(Net().modules())) == 9  # Net, 3 containers, 5 layers


def test_layers_without_bias_have_no_bias_parameter():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(2, 3, bias=False))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "2.weight"]
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 3), dtype=np.float32)
    expected = np.einsum("ncij,ocij->no", x, model[0].weight.data) @ model[2].weight.data.T
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


def test_sequential_refuses_non_modules():
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


# ---- state dicts --------------------------------------------------------------------------------


def test_state_dict_is_a_copy(batch):
    model = small_net()
    state = model.state_dict()
    state["0.weight"][:] = 123.0
    assert not np.any(model[0].weight.data == 123.0)


def test_state_dict_round_trip_gives_identical_outputs(batch):
    x, _ = batch
    nn.manual_seed(1)
    a = small_net()
    nn.manual_seed(2)
    b = small_net()
    assert not np.array_equal(a(x), b(x))
    source = a.state_dict()
    b.load_state_dict(source)
    np.testing.assert_array_equal(a(x), b(x))
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, a.state_dict()[k])
    # load copies: changing the source afterwards leaves b alone
    source["0.weight"][:] = 0.0
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_casts_float64_and_keeps_float32():
    model = small_net()
    state = {k: v.astype(np.float64) + 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    for k, p in model.named_parameters():
        assert p.data.dtype == np.float32 and p.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data, state[k].astype(np.float32))


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_load_state_dict_missing_key_raises_and_changes_nothing():
    model = small_net()
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    del state["4.bias"]
    with pytest.raises(KeyError, match="4.bias"):
        model.load_state_dict(state)
    _assert_unchanged(model, before)


def test_load_state_dict_unexpected_key_raises_and_changes_nothing():
    model = small_net()
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["5.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(KeyError, match="5.weight"):
        model.load_state_dict(state)
    _assert_unchanged(model, before)


def test_load_state_dict_wrong_shape_raises_and_changes_nothing():
    model = small_net()
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    # the bad entry comes last, after entries that would load fine
    state["4.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"4\.bias"):
        model.load_state_dict(state)
    _assert_unchanged(model, before)
    state["4.bias"] = np.zeros((1, 4), np.float32)  # same size, wrong shape
    with pytest.raises(ValueError):
        model.load_state_dict(state)
    _assert_unchanged(model, before)


def test_load_state_dict_integer_values_refused():
    model = small_net()
    before = model.state_dict()
    state = dict(before)
    state["0.bias"] = np.arange(3)
    with pytest.raises(TypeError):
        model.load_state_dict(state)
    _assert_unchanged(model, before)


def test_load_state_dict_non_strict_loads_what_matches():
    model = small_net()
    before = model.state_dict()
    new_w = before["0.weight"] + 1
    model.load_state_dict({"0.weight": new_w, "junk": np.zeros(1, np.float32)}, strict=False)
    np.testing.assert_array_equal(model[0].weight.data, new_w)
    np.testing.assert_array_equal(model[4].weight.data, before["4.weight"])


# ---- modes and gradients ------------------------------------------------------------------------


def test_train_and_eval_propagate_to_every_submodule():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(2, 2)
    )
    assert model.eval() is model
    assert all(m.training is False for m in model.modules())
    assert len(list(model.modules())) == 6
    assert model.train() is model
    assert all(m.training is True for m in model.modules())
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_backward_after_eval_forward_is_refused(batch):
    x, y = batch
    model = small_net().eval()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)
    with pytest.raises(RuntimeError, match="training"):
        model.backward(loss_fn.backward())


def test_eval_forward_matches_train_forward(batch):
    x, _ = batch
    model = small_net()
    train_out = model(x).copy()
    np.testing.assert_array_equal(model.eval()(x), train_out)


def test_zero_grad(batch):
    x, y = batch
    model = small_net()
    loss_and_grads(model, x, y)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_gradients_accumulate_across_backward_calls(batch):
    x, y = batch
    model = small_net()
    _, once = loss_and_grads(model, x, y)
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    for _ in range(2):
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # a third backward of the same forward adds once more
    model.backward(loss_fn.backward())
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 3 * once[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_accumulating_half_batches_equals_full_batch(batch):
    x, y = batch
    model = small_net()
    _, full = loss_and_grads(model, x, y)
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    for half in (slice(0, 3), slice(3, 6)):
        loss_fn(model(x[half]), y[half])
        model.backward(loss_fn.backward())
    for k, p in model.named_parameters():
        # two half-batch means add up to twice the full-batch mean
        np.testing.assert_allclose(p.grad, 2 * full[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_requires_input_grad_false_returns_none_and_keeps_parameter_grads(batch):
    x, y = batch
    model = small_net()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)
    dx = model.backward(loss_fn.backward())
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape and np.any(dx != 0)
    with_dx = {k: p.grad.copy() for k, p in model.named_parameters()}

    model.zero_grad()
    model.requires_input_grad = False
    loss_fn(model(x), y)
    assert model.backward(loss_fn.backward()) is None
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, with_dx[k], err_msg=k)

    model.requires_input_grad = True  # and back
    loss_fn(model(x), y)
    assert model.backward(loss_fn.backward()).shape == x.shape


def test_requires_input_grad_false_reaches_nested_first_layer(batch):
    x, y = batch
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()), nn.Flatten(), nn.Linear(3 * 64, 4)
    )
    model.requires_input_grad = False
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)
    assert model.backward(loss_fn.backward()) is None
    assert model[0][0].weight.grad is not None


def test_input_gradient_matches_finite_differences(batch):
    """dL/dx from backward, against float64 central differences of a NumPy forward."""
    x, y = batch
    model = small_net()
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(x), y)
    dx = model.backward(loss_fn.backward())
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    rng = np.random.default_rng(3)
    x64 = x.astype(np.float64)
    for idx in zip(*(rng.integers(0, s, 12) for s in x.shape)):
        fd = _fd(lambda v, idx=idx: _set(x64, idx, v), x64[idx], lambda: ref_loss(params, x64, y))
        assert abs(fd - dx[idx]) <= 1e-4 + 1e-3 * abs(fd), (idx, fd, dx[idx])


# ---- a whole network against finite differences -------------------------------------------------


def _ref_forward(params, x):
    """float64 NumPy forward of small_net (independent of fastcnn)."""
    w, b = params["0.weight"], params["0.bias"]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    h = np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]
    h = np.maximum(h, 0.0)
    n, c, hh, ww = h.shape
    h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    return h.reshape(n, -1) @ params["4.weight"].T + params["4.bias"]


def _ce64(logits, y):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def ref_loss(params, x, y):
    return _ce64(_ref_forward(params, x), y)


def _set(a, idx, v):
    a[idx] = v


def _fd(setter, original, f, eps=1e-6):
    setter(original + eps)
    up = f()
    setter(original - eps)
    down = f()
    setter(original)
    return (up - down) / (2 * eps)


def test_reference_forward_matches_fastcnn(batch):
    x, y = batch
    model = small_net()
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    np.testing.assert_allclose(
        model(x), _ref_forward(params, x.astype(np.float64)), rtol=1e-5, atol=1e-5
    )
    loss = nn.CrossEntropyLoss()(model(x), y)
    assert abs(loss - ref_loss(params, x.astype(np.float64), y)) < 1e-5


def test_every_parameter_gradient_matches_float64_finite_differences(batch):
    x, y = batch
    model = small_net()
    _, grads = loss_and_grads(model, x, y)
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    x64 = x.astype(np.float64)
    for name, p in params.items():
        fd = np.empty_like(p)
        for idx in np.ndindex(p.shape):
            fd[idx] = _fd(
                lambda v, idx=idx, p=p: _set(p, idx, v), p[idx], lambda: ref_loss(params, x64, y)
            )
        np.testing.assert_allclose(grads[name], fd, rtol=1e-3, atol=2e-5, err_msg=name)


def _ref_pattern(model, x):
    """The ReLU mask and the max-pool choices of small_net at its current weights (float64)."""
    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(2, 3))
    h = np.einsum("nchwij,ocij->nohw", win, params["0.weight"])
    h += params["0.bias"][None, :, None, None]
    n, c, hh, ww = h.shape
    pooled = np.maximum(h, 0).reshape(n, c, hh // 2, 2, ww // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return h > 0, pooled.reshape(n, c, hh // 2, ww // 2, 4).argmax(-1)


def test_float32_finite_differences_through_fastcnn(batch):
    """Central differences of the float64 loss of fastcnn's own float32 logits.

    With the ReLU masks and max-pool choices fixed, the logits are affine in any one weight, so
    the central difference is exact up to float32 rounding; perturbations that change a mask or
    a max choice are skipped (eps is 1e-2 for the dense layer, 1e-3 for the conv layer, whose
    weights touch every pre-activation of their channel, so that few are).
    """
    x, y = batch[0][:2], batch[1][:2]
    model = small_net()
    _, grads = loss_and_grads(model, x, y)
    rng = np.random.default_rng(7)

    for li, name, eps in (
        (0, "weight", 1e-3),
        (0, "bias", 1e-3),
        (4, "weight", 1e-2),
        (4, "bias", 1e-2),
    ):
        p = getattr(model[li], name)
        checked = 0
        for _ in range(12):
            idx = tuple(int(rng.integers(0, s)) for s in p.shape)
            original = p.data[idx]
            p.data[idx] = original + np.float32(eps)
            up = _ce64(model(x), y)
            mask_up, ind_up = _ref_pattern(model, x)
            p.data[idx] = original - np.float32(eps)
            down = _ce64(model(x), y)
            mask_down, ind_down = _ref_pattern(model, x)
            p.data[idx] = original
            if not (np.array_equal(mask_up, mask_down) and np.array_equal(ind_up, ind_down)):
                continue
            fd = (up - down) / (2 * eps)
            an = float(grads[f"{li}.{name}"][idx])
            assert abs(fd - an) <= 1e-4 + 2e-3 * abs(an), (li, name, idx, fd, an)
            checked += 1
        assert checked >= 4, (li, name, checked)


@pytest.mark.parametrize("pool2", [nn.AvgPool2d, nn.MaxPool2d])
def test_sequential_equals_running_its_layers_one_by_one(rng, pool2):
    """However Sequential runs its layers (fused, with buffers reused from pass to pass and a
    max-pool's input gradient written over its conv's output), results are those of the plain
    chain, pass after pass."""

    def build():
        nn.manual_seed(9)
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            pool2(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        )

    loss_fn = nn.CrossEntropyLoss()
    seq, chain = build(), build()
    for _ in range(3):
        x = rng.standard_normal((5, 2, 8, 8), dtype=np.float32)
        y = rng.integers(0, 3, 5)
        seq.zero_grad()
        out = seq(x)
        loss_fn(out, y)
        dx = seq.backward(loss_fn.backward())

        chain.zero_grad()
        h = x
        for layer in chain:
            h = layer(h).copy()
        np.testing.assert_allclose(out, h, rtol=1e-6, atol=1e-6)
        loss_fn(h, y)
        g = loss_fn.backward()
        for layer in reversed(chain.layers):
            g = layer.backward(g).copy()
        np.testing.assert_allclose(dx, g, rtol=1e-5, atol=1e-7)
        for (k, a), b in zip(seq.named_parameters(), chain.parameters()):
            np.testing.assert_allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7, err_msg=k)


def test_outputs_and_input_gradients_are_not_overwritten_by_the_next_pass(batch, rng):
    """What forward and backward hand out belongs to the caller: a later pass must not write
    into it (PyTorch returns new tensors every time)."""
    x, y = batch
    x2 = rng.standard_normal(x.shape, dtype=np.float32)
    model = small_net()
    loss_fn = nn.CrossEntropyLoss()
    out1 = model(x)
    kept_out = out1.copy()
    loss_fn(out1, y)
    dx1 = model.backward(loss_fn.backward())
    kept_dx = dx1.copy()
    loss_fn(model(x2), y)
    dx2 = model.backward(loss_fn.backward())
    np.testing.assert_array_equal(out1, kept_out)
    assert dx2 is not dx1
    np.testing.assert_array_equal(dx1, kept_dx)


def test_layer_outputs_are_fresh_when_called_directly_after_a_sequential(batch, rng):
    """Calling model[0] by hand (feature extraction) after the model ran must give arrays that
    the next call does not overwrite."""
    x, _ = batch
    model = small_net()
    model(x)
    for i in (0, 1, 2):
        shape = x.shape if i == 0 else (6, 3, 8, 8)
        first, second = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
        a = model[i](first)
        kept = a.copy()
        b = model[i](second)
        np.testing.assert_array_equal(a, kept, err_msg=f"layer {i}: output overwritten")
        assert not np.array_equal(a, b), i


# ---- initialisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (lambda: nn.Conv2d(3, 64, (5, 3)), 45),
        (lambda: nn.Conv2d(16, 32, 3), 144),
        (lambda: nn.Linear(200, 300), 200),
        (lambda: nn.Linear(7, 500), 7),
    ],
)
def test_default_initialisation_is_uniform_over_one_over_sqrt_fan_in(layer, fan_in):
    nn.manual_seed(0)
    m = layer()
    bound = 1.0 / math.sqrt(fan_in)
    for p in (m.weight.data, m.bias.data):
        assert p.dtype == np.float32 and p.flags.c_contiguous
        assert np.all(np.abs(p) <= bound)
    w = m.weight.data.astype(np.float64)
    assert w.max() > 0.97 * bound and w.min() < -0.97 * bound  # the whole interval is used
    assert abs(w.mean()) < 0.05 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # uniform, not normal
    assert np.unique(m.bias.data).size == m.bias.data.size


def test_manual_seed_makes_initialisation_reproducible():
    nn.manual_seed(42)
    a = models.seednet().state_dict()
    nn.manual_seed(42)
    b = models.seednet().state_dict()
    nn.manual_seed(43)
    c = models.seednet().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not any(np.array_equal(a[k], c[k]) for k in a)
    # fastcnn.manual_seed is the same function
    fastcnn.manual_seed(42)
    d = models.seednet().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], d[k])


def test_successive_layers_get_different_weights():
    nn.manual_seed(0)
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)
    assert not np.array_equal(a.weight.data, b.weight.data)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(0, 4, 3),
        lambda: nn.Conv2d(1, 4, 0),
        lambda: nn.Conv2d(1, 4, (3, 3, 3)),
        lambda: nn.Conv2d(1, 4, 3, stride=0),
        lambda: nn.Conv2d(1, 4, 3, padding=-1),
        lambda: nn.Conv2d(1, 4, 2.5),
        lambda: nn.Linear(4, 0),
        lambda: nn.MaxPool2d(0),
        lambda: nn.MaxPool2d(2, stride=0),
        lambda: nn.AvgPool2d((2, 2, 2)),
    ],
)
def test_bad_layer_arguments_are_refused_at_construction(make):
    with pytest.raises(ValueError):
        make()


# ---- seednet ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, x_shape, flat",
    [
        ({}, (2, 1, 28, 28), 64 * 7 * 7),
        ({"image_size": 32}, (2, 1, 32, 32), 64 * 8 * 8),
        ({"image_size": (64, 48)}, (1, 1, 64, 48), 64 * 16 * 12),
        ({"in_channels": 3, "num_classes": 5, "image_size": 32}, (2, 3, 32, 32), 64 * 8 * 8),
        ({"image_size": (30, 29)}, (1, 1, 30, 29), 64 * 7 * 7),
    ],
)
def test_seednet_shapes(kwargs, x_shape, flat):
    nn.manual_seed(0)
    model = models.seednet(**kwargs)
    assert model[0].weight.shape == (32, kwargs.get("in_channels", 1), 5, 5)
    assert model[7].weight.shape == (128, flat)
    num_classes = kwargs.get("num_classes", 10)
    assert model[9].weight.shape == (num_classes, 128)
    x = np.random.default_rng(0).standard_normal(x_shape, dtype=np.float32)
    out = model(x)
    assert out.shape == (x_shape[0], num_classes) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(out, np.zeros(x_shape[0], np.int64))
    assert model.backward(loss_fn.backward()).shape == x_shape


def test_seednet_architecture_and_bad_arguments():
    model = models.seednet()
    kinds = [type(m).__name__ for m in model]
    assert kinds == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert model[0].padding == (2, 2) and model[3].padding == (2, 2)
    assert model[2].kernel_size == (2, 2) and model[2].stride == (2, 2)
    with pytest.raises(ValueError):
        models.seednet(image_size=3)
    with pytest.raises(ValueError):
        models.seednet(in_channels=0)
    assert models.ARCHITECTURES["seednet"] is models.seednet


def test_cross_entropy_loss_matches_numpy(rng):
    logits = rng.standard_normal((5, 7), dtype=np.float32) * 3
    y = rng.integers(0, 7, 5)
    fn = nn.CrossEntropyLoss()
    assert abs(fn(logits, y) - _ce64(logits, y)) < 1e-5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), y] -= 1
    np.testing.assert_allclose(fn.backward(), p / 5, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "layer, n_nan",
    [
        (lambda: nn.ReLU(), 1),
        (lambda: nn.MaxPool2d(2), 1),
        (lambda: nn.AvgPool2d(2), 1),
        (lambda: nn.Conv2d(1, 2, 1), 2),
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 3),
    ],
    ids=["relu", "maxpool", "avgpool", "conv", "linear"],
)
def test_nan_propagates_through_layers_like_pytorch(layer, n_nan):
    """NaN in, NaN out: a layer that maps NaN to a number hides a diverged or corrupt input."""
    x = np.full((1, 1, 4, 4), 0.5, np.float32)
    x[0, 0, 1, 2] = np.nan
    assert np.isnan(layer()(x)).sum() == n_nan


def test_to_cpu_returns_model_and_cuda_is_refused_cleanly():
    model = small_net()
    assert model.to("cpu") is model
    if not fastcnn.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            model.to("cuda")
