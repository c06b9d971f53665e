"""Dropout, AdaptiveAvgPool2d, Residual, BasicBlock and the CIFAR ResNets: values and gradients,
PyTorch's state-dict keys (and PyTorch's own outputs and gradients when it is installed), model
files, and `fastcnn train --arch resnet8`."""

import numpy as np
import pytest
import reference as ref

import fastcnn
from fastcnn import models, nn, ops


def floats(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- Dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_kernel(p, rng):
    x = floats(rng, 200_000)  # past the threading threshold
    y, mask = ops.dropout_forward(x, p, seed=7)
    kept = mask.astype(bool)
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert np.all(y[~kept] == 0)
    dy = floats(rng, 200_000)
    dx = ops.dropout_backward(dy, mask, p)
    np.testing.assert_allclose(dx, np.where(kept, dy / (1 - p), 0), rtol=1e-6)
    y2, mask2 = ops.dropout_forward(x, p, seed=7)  # a seed gives the same mask
    np.testing.assert_array_equal(mask, mask2)
    assert p == 0 or not np.array_equal(mask, ops.dropout_forward(x, p, seed=8)[1])


def test_dropout_mask_does_not_depend_on_the_thread_count(rng, num_threads):
    x = floats(rng, 300_000)
    masks = []
    for t in (1, 2):
        num_threads(t)
        masks.append(ops.dropout_forward(x, 0.3, seed=11)[1])
    np.testing.assert_array_equal(*masks)


def test_dropout_layer(rng):
    x = floats(rng, 4, 1000)
    nn.manual_seed(3)
    layer = nn.Dropout(0.25)
    y = layer(x)
    assert 0.7 < (y != 0).mean() < 0.8
    dy = floats(rng, 4, 1000)
    np.testing.assert_array_equal(layer.backward(dy) != 0, y != 0)
    nn.manual_seed(3)
    np.testing.assert_array_equal(nn.Dropout(0.25)(x), y)  # seeded by nn.manual_seed
    layer.eval()
    assert layer(x) is x and layer.backward(dy) is dy
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.0)


# ---- global average pooling and Residual ------------------------------------------------------


def test_adaptive_avg_pool(rng):
    x = floats(rng, 3, 5, 4, 7)
    layer = nn.AdaptiveAvgPool2d(1)
    y = layer(x)
    assert y.shape == (3, 5, 1, 1)
    ref.assert_close(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), name="y")
    dy = floats(rng, 3, 5, 1, 1)
    ref.assert_close(layer.backward(dy), np.broadcast_to(dy / 28.0, x.shape), name="dx")
    with pytest.raises(ValueError, match="output_size 1"):
        nn.AdaptiveAvgPool2d(2)


def test_residual_adds_outputs_and_gradients(rng):
    nn.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    block = nn.Residual(body)
    x = floats(rng, 2, 3, 5, 5)
    y = block(x)
    body_y = body(x)
    np.testing.assert_allclose(y, body_y + x, rtol=1e-6)
    dy = floats(rng, *y.shape)
    body(x)
    want = body.backward(dy) + dy
    body.zero_grad()
    block(x)
    np.testing.assert_allclose(block.backward(dy), want, rtol=1e-6)
    assert [k for k in block.state_dict()] == ["body.0.weight", "body.0.bias"]
    projected = nn.Residual(body, nn.Conv2d(3, 3, 1))
    assert "shortcut.weight" in projected.state_dict()
    with pytest.raises(ValueError, match="shortcut"):
        nn.Residual(body, nn.Conv2d(3, 2, 1))(x)


# ---- BasicBlock and ResNets -------------------------------------------------------------------


def test_resnet_structure_and_keys():
    nn.manual_seed(0)
    model = models.resnet8(in_channels=1, num_classes=10)
    types = [type(m).__name__ for m in model]
    assert types == [
        "Conv2d", "BatchNorm2d", "ReLU", "BasicBlock", "BasicBlock", "BasicBlock",
        "AdaptiveAvgPool2d", "Flatten", "Linear",
    ]  # fmt: skip
    keys = list(model.state_dict())
    assert keys[:6] == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked",
    ]  # fmt: skip
    assert "3.shortcut.0.weight" not in keys and "4.shortcut.0.weight" in keys
    assert "4.shortcut.1.running_var" in keys and keys[-2:] == ["8.weight", "8.bias"]
    assert sum(p.data.size for p in model.parameters()) == 77_850 - 96  # 10 classes, 1 channel
    assert len(models.resnet20()) == 3 + 9 + 3
    for bad in (7, 9, 0, 8.0):
        with pytest.raises(ValueError, match="6n"):
            models.resnet(bad)


def test_resnet_trains_saves_and_loads(rng, tmp_path):
    nn.manual_seed(0)
    model = models.resnet8(in_channels=3, num_classes=4)
    x = floats(rng, 8, 3, 16, 16)
    y = rng.integers(0, 4, 8)
    opt = fastcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0]  # it learns (memorises) the batch
    path = tmp_path / "r8.safetensors"
    fastcnn.save(model, path)
    loaded = fastcnn.load(path)
    model.eval()
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.state_dict()["1.num_batches_tracked"] == 12
    probs = fastcnn.predict(loaded, x)
    assert probs.shape == (8, 4)


def test_model_file_with_wrong_bn_shapes_is_refused(rng, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    model = models.resnet8(in_channels=1, num_classes=3)
    path = tmp_path / "m.safetensors"
    fastcnn.save(model, path)
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["3.bn1.running_var"] = np.ones(5, np.float32)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="3.bn1.running_var"):
        fastcnn.load(path)


@pytest.mark.parametrize("depth", [8, 14])
def test_resnet_matches_pytorch(depth, rng, bench_module):
    """Against the same network built the usual PyTorch way (bench/train.py's torch_resnet), in
    float64 there. The training step runs on the direct sums: on this input one of ResNet-14's
    ReLUs gets 2e-6 (of activations up to ~1), inside Winograd's rounding (3-6e-6 of the largest
    value; test_conv2d.py checks it against the float64 reference), and a ReLU decided the other
    way changes the gradients below it by up to 3 %. Winograd's eval forward is compared last."""
    torch = pytest.importorskip("torch")
    previous = ops.conv_algorithm()
    ops.set_conv_algorithm("indirect")
    try:
        _resnet_matches_pytorch(torch, depth, rng, bench_module)
    finally:
        ops.set_conv_algorithm(previous)


def _resnet_matches_pytorch(torch, depth, rng, bench_module):
    nn.manual_seed(1)
    mine = models.resnet(depth, in_channels=1, num_classes=10)
    theirs = bench_module("train").torch_resnet(torch, depth, 1, 10).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in mine.state_dict().items()}, strict=True)
    x = floats(rng, 6, 1, 28, 28)
    labels = rng.integers(0, 10, 6)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(mine(x), labels)
    mine.backward(loss_fn.backward())
    tx = torch.tensor(x, dtype=torch.float64)
    tloss = torch.nn.functional.cross_entropy(theirs(tx), torch.tensor(labels))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-4)
    grads = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(
            grads[name].grad, p.grad.numpy(), rtol=2e-3, atol=2e-5, err_msg=name
        )
    for name, v in theirs.state_dict().items():  # running statistics after one batch
        np.testing.assert_allclose(mine.state_dict()[name], v.numpy(), rtol=1e-4, atol=1e-6)
    mine.eval(), theirs.eval()
    expect = theirs(tx).detach().numpy()
    np.testing.assert_allclose(mine(x), expect, rtol=1e-3, atol=1e-4)
    ops.set_conv_algorithm("auto")
    np.testing.assert_allclose(mine(x), expect, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_resnet8_one_cycle_learns_as_pytorch_does(bench_module):
    """The issue's recipe (SGD, one-cycle to lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4,
    batch 64) for two epochs of Fashion-MNIST, from the same initial weights in the same batch
    order: fastcnn and PyTorch end within a few tenths of a point of test accuracy."""
    torch = pytest.importorskip("torch")
    from fastcnn import data, optim
    from fastcnn.optim import lr_scheduler

    train, test = data.FashionMNIST(train=True), data.FashionMNIST(train=False)
    torch.manual_seed(0)
    nn.manual_seed(0)
    mine = models.resnet8(in_channels=1, num_classes=10)
    theirs = bench_module("train").torch_resnet(torch, 8, 1, 10)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})
    epochs, batch = 2, 64
    loader = data.DataLoader(train, batch, shuffle=True, seed=0)
    opt = optim.SGD(mine.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = lr_scheduler.OneCycleLR(opt, 0.1, epochs=epochs, steps_per_epoch=len(loader))
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)  # fmt: skip
    tsched = torch.optim.lr_scheduler.OneCycleLR(
        topt, 0.1, epochs=epochs, steps_per_epoch=len(loader)
    )
    loss_fn = nn.CrossEntropyLoss()
    mine.requires_input_grad = False
    for _ in range(epochs):
        mine.train(), theirs.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(mine(x), y)
            mine.backward(loss_fn.backward())
            opt.step()
            sched.step()
            topt.zero_grad()
            tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                      torch.from_numpy(y))  # fmt: skip
            tloss.backward()
            topt.step()
            tsched.step()
    ours = fastcnn.evaluate(mine, test)["accuracy"]
    theirs.eval()
    with torch.no_grad():
        x, y = test.images, torch.from_numpy(test.labels)
        predicted = torch.cat([theirs(torch.from_numpy(x[i : i + 500])).argmax(1)
                               for i in range(0, len(x), 500)])  # fmt: skip
    their_accuracy = (predicted == y).double().mean().item()
    assert ours > 0.85 and their_accuracy > 0.85  # both learned
    assert abs(ours - their_accuracy) < 0.005, (ours, their_accuracy)


def test_pytorch_weights_in(rng, tmp_path, bench_module):
    """A state dict trained in PyTorch, saved as .safetensors, loads into the same fastcnn
    network (running statistics included) and gives PyTorch's outputs; pickles are refused."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    torch.manual_seed(3)
    theirs = bench_module("train").torch_resnet(torch, 8, 3, 10)
    theirs.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial values
            theirs(torch.randn(16, 3, 32, 32) * 2 + 1)
    theirs.eval()
    path = tmp_path / "r8.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    mine = fastcnn.load_state_dict_from(models.resnet8(3, 10), path).eval()
    x = floats(rng, 4, 3, 32, 32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mine(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        fastcnn.load_state_dict_from(models.resnet8(1, 10), path)
    with pytest.raises(KeyError, match="missing"):
        fastcnn.load_state_dict_from(models.resnet20(3, 10), path)
    pickled = tmp_path / "r8.pt"
    torch.save(theirs.state_dict(), pickled)
    with pytest.raises(ValueError, match="pickled"):
        fastcnn.load_state_dict_from(models.resnet8(3, 10), pickled)


def test_resume_with_dropout_and_batchnorm_is_bit_for_bit(tmp_path):
    from test_resume import assert_same_weights, squares

    train = fastcnn.data.ArrayDataset(*squares(96, 1))

    def run(epochs, **kw):
        nn.manual_seed(4)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 144, 4))  # fmt: skip
        fastcnn.fit(model, train, epochs=epochs, batch_size=16, progress=False, **kw)
        return model

    whole = run(3)
    path = tmp_path / "d.ckpt.safetensors"
    run(2, checkpoint=path)
    nn.manual_seed(99)  # whatever the generator did in between
    assert_same_weights(run(3, checkpoint=path, resume=True), whole)
