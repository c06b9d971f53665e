"""The ops, models and training loop on a device, compared with the CPU on the same inputs.

Parametrised over devices: "cuda" runs where fastcnn was built with CUDA and a GPU answers
(skipped elsewhere); "fake" (tests/fake_device.py: the CPU kernels behind a device array that
refuses to act as a numpy array) runs everywhere, so the device plumbing of nn, optim, train and
io is tested on every machine. On "fake" results must equal the CPU's bit for bit; on "cuda"
within float32 rounding of a different summation order.
"""

import numpy as np
import pytest
from fake_device import register

import fastcnn
from fastcnn import cuda, data, io, nn, ops, optim

register()


@pytest.fixture(params=["fake", "cuda"])
def device(request):
    if request.param == "cuda" and not cuda.is_available():
        pytest.skip("no CUDA device (or fastcnn built without CUDA)")
    return request.param


def close(got, want, device, rtol=2e-5, atol=2e-5):
    """got (on `device`) equals want (numpy): exactly on fake, to float32 rounding on cuda."""
    got = ops.to_numpy(got)
    assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype
    if device == "fake":
        np.testing.assert_array_equal(got, want)
    else:
        scale = max(1.0, float(np.abs(want).max(initial=0)))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def on(device, *arrays):
    return [None if a is None else ops.to_device(a, device) for a in arrays]


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- the device array ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64, np.float64])
def test_arrays_round_trip(device, rng, dtype):
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    d = ops.to_device(a, device)
    assert ops.device_of(d) == device and d.shape == (3, 4, 5) and d.dtype == a.dtype
    assert len(d) == 3 and d.ndim == 3 and d.size == 60
    np.testing.assert_array_equal(d.numpy(), a)
    np.testing.assert_array_equal(ops.to_device(d, "cpu"), a)
    assert ops.to_device(d, device) is d  # already there: no copy
    np.testing.assert_array_equal(d.reshape(12, -1).numpy(), a.reshape(12, 5))


def test_array_in_place_add_reshape_view_and_scalars(device, rng):
    a, b = randn(rng, 6, 7), randn(rng, 6, 7)
    d = ops.to_device(a, device)
    view = d.reshape(42)
    d += ops.to_device(b, device)
    close(view, (a + b).reshape(42), device, rtol=0, atol=0)  # the view sees the update
    assert float(ops.to_device(np.array([2.5], np.float32), device)) == 2.5
    z = ops.zeros_like(d)
    close(z, np.zeros_like(a), device, rtol=0, atol=0)


def test_device_arrays_are_not_numpy_arrays(device):
    d = ops.to_device(np.ones(3, np.float32), device)
    with pytest.raises(TypeError):
        d + np.ones(3, np.float32)
    with pytest.raises(TypeError):
        ops.relu_forward(d, out=np.empty(3, np.float32))


def test_mixed_devices_are_refused_naming_the_arrays(device, rng):
    x = randn(rng, 2, 3, 5, 5)
    w = ops.to_device(randn(rng, 4, 3, 3, 3), device)
    with pytest.raises(TypeError, match=f"x on cpu, w on {device}"):
        ops.conv2d_forward(x, w)


# ---- every op against the CPU -------------------------------------------------------------------

CONV_CASES = [
    # N, C, H, W, O, kh, kw, stride, padding, bias, relu
    (1, 1, 7, 7, 3, 3, 3, 1, 0, True, False),
    (2, 3, 9, 8, 5, 3, 3, 1, 1, True, True),
    (3, 4, 11, 10, 6, 5, 3, (2, 1), (2, 1), False, False),
    (2, 17, 6, 6, 33, 3, 3, 2, 1, True, True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_and_backward(device, rng, case):
    n, c, h, w, o, kh, kw, stride, padding, bias, relu = case
    x, wt = randn(rng, n, c, h, w), randn(rng, o, c, kh, kw)
    b = randn(rng, o) if bias else None
    want = ops.conv2d_forward(x, wt, b, stride, padding, relu)
    dx_, dw_, db_ = on(device, x, wt, b)
    close(ops.conv2d_forward(dx_, dw_, db_, stride, padding, relu), want, device)
    dy = randn(rng, *want.shape)
    want_grads = ops.conv2d_backward(x, wt, dy, stride, padding)
    got_grads = ops.conv2d_backward(dx_, dw_, ops.to_device(dy, device), stride, padding)
    for got, expected in zip(got_grads, want_grads):
        close(got, expected, device, rtol=1e-4, atol=1e-4)
    dx, *_ = ops.conv2d_backward(dx_, dw_, ops.to_device(dy, device), stride, padding, False)
    assert dx is None


@pytest.mark.parametrize("shape,k,s", [((2, 3, 8, 8), 2, None), ((1, 2, 7, 9), 3, 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_maxpool2d(device, rng, shape, k, s, relu):
    x = randn(rng, *shape)
    y, idx = ops.maxpool2d_forward(x, k, s, relu)
    gy, gidx = ops.maxpool2d_forward(ops.to_device(x, device), k, s, relu)
    close(gy, y, device, rtol=0, atol=0)  # a max is exact
    close(gidx, idx, device, rtol=0, atol=0)
    dy = randn(rng, *y.shape)
    want = ops.maxpool2d_backward(dy, idx, shape, y if relu else None)
    got = ops.maxpool2d_backward(ops.to_device(dy, device), gidx, shape, gy if relu else None)
    close(got, want, device)


def test_avgpool2d(device, rng):
    x = randn(rng, 2, 3, 9, 7)
    y = ops.avgpool2d_forward(x, 3, 2)
    close(ops.avgpool2d_forward(ops.to_device(x, device), 3, 2), y, device)
    dy = randn(rng, *y.shape)
    got = ops.avgpool2d_backward(ops.to_device(dy, device), x.shape, 3, 2)
    close(got, ops.avgpool2d_backward(dy, x.shape, 3, 2), device)


@pytest.mark.parametrize("n,i,o,bias,relu", [(1, 5, 3, True, False), (13, 40, 10, False, True)])
def test_linear(device, rng, n, i, o, bias, relu):
    x, w = randn(rng, n, i), randn(rng, o, i)
    b = randn(rng, o) if bias else None
    gx, gw, gb = on(device, x, w, b)
    close(ops.linear_forward(gx, gw, gb, relu), ops.linear_forward(x, w, b, relu), device)
    dy = randn(rng, n, o)
    got = ops.linear_backward(gx, gw, ops.to_device(dy, device))
    for g, want in zip(got, ops.linear_backward(x, w, dy)):
        close(g, want, device, rtol=1e-4, atol=1e-4)


def test_relu(device, rng):
    x = randn(rng, 4, 5, 6)
    x[0, 0, :3] = [0.0, -0.0, np.nan]
    y = ops.relu_forward(x)
    gy = ops.relu_forward(ops.to_device(x, device))
    np.testing.assert_array_equal(ops.to_numpy(gy), y)  # NaN propagates on every device
    dy = randn(rng, *x.shape)
    close(ops.relu_backward(gy, ops.to_device(dy, device)), ops.relu_backward(y, dy), device)


def test_softmax_cross_entropy_and_batch_stats(device, rng):
    logits = randn(rng, 9, 7) * 5
    labels = rng.integers(0, 7, 9)
    loss, d = ops.softmax_cross_entropy(logits, labels)
    gloss, gd = ops.softmax_cross_entropy(*on(device, logits, labels))
    assert ops.device_of(gloss) == device and gloss.shape == ()
    assert float(gloss) == pytest.approx(loss, rel=1e-6)
    close(gd, d, device)
    stats = ops.to_device(np.zeros(2), device)
    for _ in range(2):
        ops.batch_stats(*on(device, logits, labels), gloss, stats)
    correct = int((logits.argmax(1) == labels).sum())
    total, hits = ops.to_numpy(stats)
    assert total == pytest.approx(2 * 9 * loss, rel=1e-6) and hits == 2 * correct


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_and_adam_steps(device, rng, nesterov):
    p, g = randn(rng, 37), randn(rng, 37)
    buf = np.zeros(37, np.float32)
    gp, gg, gbuf = on(device, p, g, buf)
    for first in (True, False):
        ops.sgd_step(p, g, buf, 0.1, 0.9, 0.01, nesterov, first)
        ops.sgd_step(gp, gg, gbuf, 0.1, 0.9, 0.01, nesterov, first)
    close(gp, p, device)
    close(gbuf, buf, device)
    m, v = np.zeros(37, np.float32), np.zeros(37, np.float32)
    gm, gv = on(device, m, v)
    for step in (1, 2, 3):
        ops.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, step)
        ops.adam_step(gp, gg, gm, gv, 1e-3, 0.9, 0.999, 1e-8, 0.0, step)
    close(gp, p, device)
    close(gv, v, device)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_sgemm(device, rng, ta, tb):
    a = randn(rng, *((37, 19) if ta else (19, 37)))
    b = randn(rng, *((23, 37) if tb else (37, 23)))
    close(ops.sgemm(*on(device, a, b), ta, tb), ops.sgemm(a, b, ta, tb), device, 1e-4, 1e-4)


# ---- models and training ------------------------------------------------------------------------


def squares(n, seed, size=12):
    """uint8 (n, size, size) noise with a bright square whose quadrant is the class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    labels = rng.integers(0, 4, n)
    half = size // 2
    for i, c in enumerate(labels):
        r, k = (c // 2) * half + rng.integers(0, 3), (c % 2) * half + rng.integers(0, 3)
        images[i, r : r + 3, k : k + 3] = 230
    return data.ArrayDataset(images, labels, classes=["a", "b", "c", "d"])


def net(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def test_model_to_moves_parameters_and_back(device):
    model = net()
    before = model.state_dict()
    assert model.device == "cpu"
    assert model.to(device) is model and model.device == device
    assert all(ops.device_of(p.data) == device for p in model.parameters())
    after = model.state_dict()  # numpy copies, read back from the device
    assert all(isinstance(a, np.ndarray) for a in after.values())
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())


def test_forward_backward_on_device_matches_cpu(device, rng):
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    cpu, dev = net(), net().to(device)
    loss_fn = nn.CrossEntropyLoss()
    for model, inputs in ((cpu, (x, labels)), (dev, on(device, x, labels))):
        model.zero_grad()
        loss_fn(model(inputs[0]), inputs[1])
        model.backward(loss_fn.backward())
    for p, q in zip(cpu.parameters(), dev.parameters()):
        close(q.grad, p.grad, device, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make_optimizer", [None, "sgd-before-to", "adam"])
def test_fit_on_device_matches_cpu(device, make_optimizer):
    train, val = squares(192, 1), squares(64, 2)
    runs = []
    for where in ("cpu", device):
        model = net()
        optimizer = None
        if make_optimizer == "sgd-before-to":  # its state must follow the model to the device
            optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        model.to(where)
        if make_optimizer == "adam":
            optimizer = optim.Adam(model, lr=3e-3)
        history = fastcnn.fit(
            model,
            train,
            epochs=2,
            batch_size=32,
            lr=0.05,
            optimizer=optimizer,
            val=val,
            progress=False,
        )
        runs.append((model, history, optimizer))
    (cpu, cpu_hist, cpu_opt), (dev, dev_hist, dev_opt) = runs
    assert dev.device == device
    for a, b in zip(cpu_hist, dev_hist):
        for key in ("loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5 if device == "fake" else 1e-3)
        if device == "fake":
            assert (b["accuracy"], b["val_accuracy"]) == (a["accuracy"], a["val_accuracy"])
    for name, want in cpu.state_dict().items():
        close(dev.state_dict()[name], want, device, rtol=1e-3, atol=1e-4)
    if cpu_opt is not None:  # optimizer state comes back as numpy from any device
        for key, value in cpu_opt.state_dict().items():
            if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                for got, want in zip(dev_opt.state_dict()[key], value):
                    assert isinstance(got, np.ndarray)
                    close(got, want, device, rtol=1e-3, atol=1e-4)


def test_evaluate_predict_save_and_load_from_device(device, tmp_path):
    model = net().to(device)
    train = squares(128, 3)
    fastcnn.fit(model, train, epochs=1, batch_size=32, lr=0.05, progress=False)
    test = squares(50, 4)
    cpu = net()
    cpu.load_state_dict(model.state_dict())
    for key, value in fastcnn.evaluate(model, test).items():
        assert value == pytest.approx(fastcnn.evaluate(cpu, test)[key], rel=1e-5)
    x = test.images[:7]
    probs = fastcnn.predict(model, x)
    assert isinstance(probs, np.ndarray)
    np.testing.assert_allclose(probs, fastcnn.predict(cpu, x), rtol=1e-4, atol=1e-6)
    path = tmp_path / "m.safetensors"
    fastcnn.save(model, path)
    np.testing.assert_allclose(fastcnn.predict(io.load(path), x), probs, rtol=1e-4, atol=1e-6)


def test_checkpoint_and_resume_on_device(device, tmp_path):
    train, path = squares(96, 5), tmp_path / "ckpt.safetensors"
    whole = net().to(device)
    want = fastcnn.fit(whole, train, epochs=2, batch_size=32, progress=False)
    part = net().to(device)
    fastcnn.fit(part, train, epochs=1, batch_size=32, progress=False, checkpoint=path)
    again = net().to(device)
    got = fastcnn.fit(
        again, train, epochs=2, batch_size=32, progress=False, checkpoint=path, resume=True
    )
    assert again.device == device
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in want], rel=1e-6)
    for name, value in whole.state_dict().items():
        close(again.state_dict()[name], value, device, rtol=1e-6, atol=1e-7)


def test_bad_labels_and_divergence_on_device(device):
    train = squares(64, 6)
    model = net().to(device)
    with pytest.raises(ValueError, match="labels out of range"):
        fastcnn.evaluate(model, (train.images, train.labels + 3))
    model = net().to(device)
    model[0].weight.data.copy_from(np.full((6, 1, 3, 3), np.inf, np.float32))
    with pytest.raises(FloatingPointError, match="epoch 1, (batch 1|one of batches 1-)"):
        fastcnn.fit(model, train, epochs=1, batch_size=32, progress=False)


# ---- without a GPU -----------------------------------------------------------------------------


def test_cuda_answers_without_crashing():
    assert isinstance(cuda.is_available(), bool)
    if not cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            net().to("cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            ops.to_device(np.zeros(3, np.float32), "cuda")


def test_unknown_device_is_a_value_error():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        net().to("tpu")


def test_cli_predict_and_eval_on_a_device(device, tmp_path, capsys):
    from PIL import Image

    from fastcnn import cli

    train = squares(96, 7)
    model = net()
    fastcnn.fit(model, train, epochs=1, batch_size=32, progress=False)
    path = tmp_path / "m.safetensors"
    fastcnn.save(model, path)
    folder = tmp_path / "data"
    for i, (image, label) in enumerate(zip(train.raw[:8], train.labels[:8])):
        (folder / str(train.classes[label])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.reshape(image.shape[-2:])).save(
            folder / str(train.classes[label]) / f"{i}.png"
        )
    files = sorted(str(p) for p in folder.rglob("*.png"))[:3]
    assert cli.main(["predict", str(path), *files, "--device", device]) == 0
    on_device = capsys.readouterr().out
    assert cli.main(["predict", str(path), *files]) == 0
    on_cpu = capsys.readouterr().out
    assert len(on_device.splitlines()) == 3
    labels = [line.split("\t")[1] for line in on_device.splitlines()]
    assert labels == [line.split("\t")[1] for line in on_cpu.splitlines()]
    assert cli.main(["eval", str(path), str(folder), "--device", device]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_device_array_type_exists_in_every_build():
    assert not isinstance(np.zeros(3, np.float32), cuda.DeviceArray)
    if not cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            cuda.DeviceArray(np.zeros(3, np.float32))
