"""Checkpoints and resuming: fit(checkpoint=..., resume=True), `fastcnn train --resume`.

An interrupted run loses at most one epoch, and a resumed run ends bit for bit where an
uninterrupted run with the same seed ends (weights, optimizer state, history).
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastcnn
import fastcnn.io
from fastcnn import data, io, nn, optim

SIZE = 12
CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]
TIMING = ("seconds", "images_per_second")


def squares(n, seed, noise=0.2):
    """uint8 (n, 12, 12) noise with a 3x3 bright square whose quadrant is the class; a fraction
    `noise` of the labels is random, so that the loss does not reach 0 and training goes on
    changing the weights."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, SIZE, SIZE)).astype(np.uint8)
    labels = rng.integers(0, 4, n)
    for i, c in enumerate(labels):
        r = (c // 2) * 6 + rng.integers(0, 4)
        k = (c % 2) * 6 + rng.integers(0, 4)
        images[i, r : r + 3, k : k + 3] += 60
    flip = rng.random(n) < noise
    labels[flip] = rng.integers(0, 4, int(flip.sum()))
    return images, labels.astype(np.int64)


def tiny_net(seed=0, conv=8, num_classes=4):
    nn.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, conv, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(conv * (SIZE // 2) ** 2, num_classes),
    )


@pytest.fixture(scope="module")
def train_set():
    return data.ArrayDataset(*squares(320, 1), classes=CLASSES)


@pytest.fixture(scope="module")
def val_set():
    return data.ArrayDataset(*squares(96, 2), classes=CLASSES)


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].tobytes() == sb[k].tobytes(), k


def assert_same_optimizer_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        if isinstance(sa[key], list) and any(isinstance(v, np.ndarray) for v in sa[key]):
            for x, y in zip(sa[key], sb[key]):
                assert x.tobytes() == y.tobytes(), key
        else:
            assert sa[key] == sb[key], key


OPTIMIZERS = {
    "sgd-momentum": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "sgd-plain": lambda m: optim.SGD(m.parameters(), lr=0.05),
    "sgd-nesterov-wd": lambda m: optim.SGD(
        m.parameters(), lr=0.05, momentum=0.8, weight_decay=1e-3, nesterov=True
    ),
    "adam": lambda m: optim.Adam(m.parameters(), lr=3e-3, weight_decay=1e-4),
}


# ---- resuming in the same process ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(kind, train_set, val_set, tmp_path):
    full_model = tiny_net(seed=4)
    full_opt = OPTIMIZERS[kind](full_model)
    full = fastcnn.fit(
        full_model,
        train_set,
        epochs=4,
        batch_size=32,
        optimizer=full_opt,
        val=val_set,
        seed=9,
        progress=False,
    )

    path = tmp_path / "run.ckpt.safetensors"
    first_model = tiny_net(seed=4)
    first = fastcnn.fit(
        first_model,
        train_set,
        epochs=2,
        batch_size=32,
        optimizer=OPTIMIZERS[kind](first_model),
        val=val_set,
        seed=9,
        checkpoint=path,
        progress=False,
    )
    assert without_timing(first) == without_timing(full[:2])

    # A new model, initialised differently: everything it ends with comes from the file.
    model = tiny_net(seed=123)
    opt = OPTIMIZERS[kind](model)
    resumed = fastcnn.fit(
        model,
        train_set,
        epochs=4,
        batch_size=32,
        optimizer=opt,
        val=val_set,
        seed=9,
        checkpoint=path,
        resume=True,
        progress=False,
    )
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    assert without_timing(resumed) == without_timing(full)
    assert resumed[0]["seconds"] == first[0]["seconds"]  # restored, not re-measured
    assert_same_weights(model, full_model)
    assert_same_optimizer_state(opt, full_opt)
    # ... and the checkpoint now holds the end of epoch 4
    ckpt = io.load_checkpoint(path)
    assert ckpt.epoch == 4 and without_timing(ckpt.history) == without_timing(full)
    assert_same_weights(ckpt.model, full_model)
    # the training really changed the weights in epochs 3 and 4 (the test could fail)
    assert not np.array_equal(
        first_model.state_dict()["0.weight"], full_model.state_dict()["0.weight"]
    )


def test_resume_continues_the_shuffle_order_of_a_given_data_loader(train_set, tmp_path):
    """A DataLoader passed by the caller: its seed and epoch counter are what is continued."""
    full_model = tiny_net()
    full_loader = data.DataLoader(train_set, batch_size=40, shuffle=True, seed=77)
    full = fastcnn.fit(full_model, full_loader, epochs=3, lr=0.05, progress=False)

    path = tmp_path / "c.safetensors"
    fastcnn.fit(
        tiny_net(),
        data.DataLoader(train_set, batch_size=40, shuffle=True, seed=77),
        epochs=1,
        lr=0.05,
        checkpoint=path,
        progress=False,
    )
    loader = data.DataLoader(train_set, batch_size=40, shuffle=True, seed=77)
    model = tiny_net(seed=5)
    resumed = fastcnn.fit(
        model, loader, epochs=3, lr=0.05, checkpoint=path, resume=True, progress=False
    )
    assert loader.epoch == full_loader.epoch == 3
    assert without_timing(resumed) == without_timing(full)
    assert_same_weights(model, full_model)


def test_resume_without_a_checkpoint_starts_from_scratch(train_set, tmp_path):
    path = tmp_path / "none-yet.safetensors"
    reference = tiny_net()
    expected = fastcnn.fit(reference, train_set, epochs=2, batch_size=32, lr=0.05, progress=False)
    model = tiny_net()
    history = fastcnn.fit(
        model,
        train_set,
        epochs=2,
        batch_size=32,
        lr=0.05,
        checkpoint=path,
        resume=True,
        progress=False,
    )
    assert without_timing(history) == without_timing(expected)
    assert_same_weights(model, reference)
    assert io.load_checkpoint(path).epoch == 2
    assert sorted(os.listdir(tmp_path)) == ["none-yet.safetensors"]  # no temporary files left


def test_resume_of_a_finished_run_trains_no_more(train_set, tmp_path, capsys):
    path = tmp_path / "c.safetensors"
    done = tiny_net()
    history = fastcnn.fit(
        done, train_set, epochs=2, batch_size=32, lr=0.05, checkpoint=path, progress=False
    )
    before = path.read_bytes()
    model = tiny_net(seed=8)
    again = fastcnn.fit(
        model,
        train_set,
        epochs=2,
        batch_size=32,
        lr=0.05,
        checkpoint=path,
        resume=True,
        progress=True,
    )
    assert again == history  # timing included: nothing was re-run
    assert_same_weights(model, done)
    assert path.read_bytes() == before
    assert "resuming from" in capsys.readouterr().out


def test_without_resume_an_existing_checkpoint_is_overwritten(train_set, tmp_path):
    path = tmp_path / "c.safetensors"
    fastcnn.fit(
        tiny_net(), train_set, epochs=3, batch_size=32, lr=0.05, checkpoint=path, progress=False
    )
    model = tiny_net(seed=2)
    fastcnn.fit(model, train_set, epochs=1, batch_size=32, lr=0.05, checkpoint=path, progress=False)
    ckpt = io.load_checkpoint(path)
    assert ckpt.epoch == 1
    assert_same_weights(ckpt.model, model)


# ---- what the checkpoint holds -----------------------------------------------------------------


def test_a_checkpoint_is_written_and_readable_after_every_epoch(
    train_set, val_set, tmp_path, monkeypatch
):
    path = tmp_path / "ckpt.safetensors"
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen = []
    real = io.save_checkpoint

    def save_and_check(p, m, o, **kw):
        real(p, m, o, **kw)
        assert m is model and o is opt
        assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]
        plain = fastcnn.load(p)  # the model, as a model file
        assert_same_weights(plain, model)
        assert plain.classes == CLASSES and plain.preprocessing == train_set.preprocessing
        np.testing.assert_array_equal(
            fastcnn.predict(plain, train_set.images[:8]),
            fastcnn.predict(model.eval(), train_set.images[:8]),
        )
        model.train()
        ckpt = io.load_checkpoint(p)
        assert ckpt.epoch == kw["epoch"] == len(seen) + 1
        assert [r["epoch"] for r in ckpt.history] == list(range(1, ckpt.epoch + 1))
        assert ckpt.history == kw["history"]
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(ckpt.history[-1])
        assert ckpt.training["loader_epoch"] == ckpt.epoch
        assert ckpt.training["seed"] == 5 and ckpt.training["batch_size"] == 32
        assert ckpt.optimizer_type == "SGD"
        assert ckpt.hyperparameters == {
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "nesterov": False,
        }
        assert ckpt.parameter_names == ["0.weight", "0.bias", "4.weight", "4.bias"]
        for saved, mine in zip(ckpt.optimizer_state["buffers"], opt.buffers):
            assert saved.tobytes() == mine.tobytes()
        assert ckpt.optimizer_state["started"] == [True] * 4
        seen.append(ckpt.epoch)

    monkeypatch.setattr(fastcnn.io, "save_checkpoint", save_and_check)
    fastcnn.fit(
        model,
        train_set,
        epochs=3,
        batch_size=32,
        optimizer=opt,
        val=val_set,
        seed=5,
        checkpoint=path,
        progress=False,
    )
    assert seen == [1, 2, 3]


def test_checkpoint_file_is_plain_safetensors_without_pickle(train_set, tmp_path):
    """The header is JSON: tensors (model weights, then optimizer.<i>.<key>) and string
    metadata; nothing in it is a pickle."""
    path = tmp_path / "c.safetensors"
    model = tiny_net()
    fastcnn.fit(
        model,
        train_set,
        epochs=1,
        batch_size=32,
        optimizer=optim.Adam(model, lr=1e-3),
        checkpoint=path,
        progress=False,
    )
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert set(header) == {"0.weight", "0.bias", "4.weight", "4.bias"} | {
        f"optimizer.{i}.{k}" for i in range(4) for k in ("exp_avg", "exp_avg_sq")
    }
    assert all(v["dtype"] == "F32" for v in header.values())
    assert header["optimizer.2.exp_avg"]["shape"] == [4, 8 * 36]
    assert meta["format"] == "fastcnn"
    opt = json.loads(meta["optimizer"])
    assert opt["type"] == "Adam" and opt["state"]["steps"] == [10] * 4
    state = json.loads(meta["checkpoint"])
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert b"\x80\x04" not in raw[: 8 + n] and b"pickle" not in raw  # no pickle protocol marker


def test_io_round_trip_of_sgd_without_momentum(tmp_path):
    """SGD without momentum has no buffers (None): stored as JSON nulls, read back as None."""
    model = tiny_net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "c.safetensors"
    io.save_checkpoint(
        path, model, opt, epoch=1, history=[{"epoch": 1, "loss": 0.5}], note="anything JSON-able"
    )
    ckpt = io.load_checkpoint(path)
    assert ckpt.optimizer_state["buffers"] == [None] * 4
    assert ckpt.training["note"] == "anything JSON-able"
    opt2 = optim.SGD(tiny_net().parameters(), lr=0.1)
    opt2.load_state_dict(ckpt.optimizer_state)


# ---- refusing a checkpoint that is not this run's ------------------------------------------------


@pytest.fixture(scope="module")
def written(train_set, tmp_path_factory):
    """A checkpoint after 2 epochs of tiny_net, SGD(0.05, 0.9), batch 32, seed 0."""
    path = tmp_path_factory.mktemp("written") / "c.safetensors"
    fastcnn.fit(
        tiny_net(),
        train_set,
        epochs=2,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        checkpoint=path,
        progress=False,
    )
    return path


def _resume(path, train, model=None, **kw):
    args = dict(epochs=3, batch_size=32, lr=0.05, momentum=0.9, seed=0, progress=False)
    args.update(kw)
    model = tiny_net(seed=3) if model is None else model
    return fastcnn.fit(model, train, checkpoint=path, resume=True, **args)


BAD_RESUMES = {
    "architecture": (
        dict(model=lambda: tiny_net(conv=6)),
        r"architecture differs: layer 0 is Conv2d\(.*out_channels=8.*\) in the "
        r"checkpoint, Conv2d\(.*out_channels=6",
    ),
    "num_classes": (dict(model=lambda: tiny_net(num_classes=5)), r"architecture differs"),
    "optimizer_kind": (
        dict(optimizer=lambda m: optim.Adam(m.parameters(), lr=0.05)),
        r"trained with SGD, this run uses Adam",
    ),
    "momentum": (dict(momentum=0.5), r"SGD settings differ: momentum 0.9 there, 0.5 here"),
    "lr": (dict(lr=0.01), r"lr 0.05 there, 0.01 here"),
    "batch_size": (dict(batch_size=16), r"batch size differ: 32 there, 16 here"),
    "seed": (dict(seed=1), r"shuffle seed differ: 0 there, 1 here"),
    "fewer_epochs": (dict(epochs=1), r"holds 2 epochs of training, more than epochs=1"),
    "subset_optimizer": (
        dict(optimizer=lambda m: optim.SGD(m.parameters()[:2], lr=0.05, momentum=0.9)),
        r"optimizer updates different parameters",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RESUMES))
def test_resume_refuses_a_checkpoint_of_another_run(case, written, train_set):
    kw, message = BAD_RESUMES[case]
    kw = dict(kw)
    model = kw.pop("model", lambda: tiny_net(seed=3))()
    if "optimizer" in kw:
        kw["optimizer"] = kw["optimizer"](model)
    before = model.state_dict()
    file_before = written.read_bytes()
    with pytest.raises(ValueError, match=message) as info:
        _resume(written, train_set, model=model, **kw)
    assert str(written) in str(info.value)
    # nothing was changed: not the model, not the file
    for k, v in model.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k
    assert written.read_bytes() == file_before


def test_resume_refuses_another_data_set(written):
    other_size = data.ArrayDataset(*squares(300, 1), classes=CLASSES)
    with pytest.raises(ValueError, match=r"training images differ: 320 there, 300 here"):
        _resume(written, other_size)
    renamed = data.ArrayDataset(*squares(320, 1), classes=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"classes differ"):
        _resume(written, renamed)


def test_resume_refuses_a_model_file_and_a_corrupt_file(train_set, tmp_path):
    model_file = tmp_path / "model.safetensors"
    fastcnn.save(tiny_net(), model_file)
    with pytest.raises(ValueError, match="without training state"):
        _resume(model_file, train_set)

    good = tmp_path / "good.safetensors"
    fastcnn.fit(
        tiny_net(),
        train_set,
        epochs=1,
        batch_size=32,
        lr=0.05,
        momentum=0.9,
        checkpoint=good,
        progress=False,
    )
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        _resume(truncated, train_set)

    # an optimizer tensor of the wrong shape is refused before anything changes
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(good), "numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(good))
    tensors["optimizer.0.buffers"] = np.zeros((3, 3), np.float32)
    bad_shape = tmp_path / "bad-shape.safetensors"
    save_file(tensors, str(bad_shape), metadata=meta)
    model = tiny_net(seed=3)
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"buffers'\[0\] has shape \(3, 3\)"):
        _resume(bad_shape, train_set, model=model)
    for k, v in model.state_dict().items():
        assert v.tobytes() == before[k].tobytes(), k


def test_resume_needs_a_checkpoint_path(train_set):
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        fastcnn.fit(tiny_net(), train_set, epochs=1, resume=True, progress=False)


def test_checkpoint_in_a_missing_folder_fails_before_training(train_set, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fastcnn.train, "_epochs", lambda *a: calls.append(a))
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        fastcnn.fit(
            tiny_net(),
            train_set,
            epochs=1,
            checkpoint=tmp_path / "no/such/folder/c",
            progress=False,
        )
    assert calls == []


# ---- diverging runs keep the last good checkpoint -----------------------------------------------


def test_divergence_leaves_the_last_good_checkpoint_intact(train_set, tmp_path):
    """Two good epochs, then a run that continues on data with a NaN pixel: the loss becomes NaN
    in epoch 3, fit raises, and the checkpoint still holds epoch 2, byte for byte."""
    path = tmp_path / "c.safetensors"
    good = tiny_net()
    fastcnn.fit(good, train_set, epochs=2, batch_size=32, lr=0.05, checkpoint=path, progress=False)
    before = path.read_bytes()

    x = train_set.images.copy()
    x[100, 0, 3, 3] = np.nan
    poisoned = data.ArrayDataset(x, train_set.labels, classes=CLASSES)
    with pytest.raises(FloatingPointError, match=r"epoch 3, batch \d+"):
        _resume(path, poisoned, epochs=4)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]
    ckpt = io.load_checkpoint(path)
    assert ckpt.epoch == 2
    assert_same_weights(ckpt.model, good)


def test_diverging_from_the_start_writes_no_checkpoint(train_set, tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch \d+"):
        fastcnn.fit(
            tiny_net(), train_set, epochs=3, batch_size=32, lr=1e20, checkpoint=path, progress=False
        )
    assert os.listdir(tmp_path) == []


class _Overflow(optim.SGD):
    """SGD whose update number `at` turns one weight into inf (an overflow in the last batch of
    an epoch: the loss of every batch was finite, the weights after the epoch are not)."""

    def __init__(self, params, at, **kw):
        super().__init__(params, **kw)
        self.at, self.count = at, 0

    def step(self):
        super().step()
        self.count += 1
        if self.count == self.at:
            self.params[0].data[0, 0, 0, 0] = np.inf


def test_non_finite_weights_at_the_end_of_an_epoch_are_not_checkpointed(train_set, tmp_path):
    path = tmp_path / "c.safetensors"
    model = tiny_net()
    steps = len(data.DataLoader(train_set, batch_size=32))  # 10
    opt = _Overflow(model.parameters(), at=2 * steps, lr=0.05, momentum=0.9)
    with pytest.raises(FloatingPointError, match=r"end of epoch 2.*c\.safetensors"):
        fastcnn.fit(
            model,
            train_set,
            epochs=3,
            batch_size=32,
            optimizer=opt,
            checkpoint=path,
            progress=False,
        )
    ckpt = io.load_checkpoint(path)
    assert ckpt.epoch == 1
    assert all(np.isfinite(v).all() for v in ckpt.model.state_dict().values())


# ---- a real interruption: SIGKILL, then a new process resumes ---------------------------------


CHILD = r"""
import sys, time
import numpy as np
import fastcnn
from fastcnn import data, nn

path, epochs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pause_marker = sys.argv[4] if len(sys.argv) > 4 else None
rng = np.random.default_rng(5)
n, side = int(sys.argv[5]) if len(sys.argv) > 5 else 1600, 16
images = rng.integers(0, 90, (n, side, side)).astype(np.uint8)
labels = rng.integers(0, 4, n)
for i, c in enumerate(labels):
    r, k = (c // 2) * 8 + rng.integers(0, 5), (c % 2) * 8 + rng.integers(0, 5)
    images[i, r:r + 3, k:k + 3] += 50
flip = rng.random(n) < 0.2
labels[flip] = rng.integers(0, 4, int(flip.sum()))
train = data.ArrayDataset(images[: n - 200], labels[: n - 200], classes=list("abcd"))
val = data.ArrayDataset(images[n - 200 :], labels[n - 200 :], classes=list("abcd"))


class Loader(data.DataLoader):
    # In the run to be killed: in epoch 2, after batch 5, say so and wait for the SIGKILL.
    def __iter__(self):
        epoch = self.epoch
        for b, batch in enumerate(super().__iter__(), 1):
            if pause_marker and epoch == 1 and b == 6:
                open(pause_marker, "w").close()
                time.sleep(120)
            yield batch


nn.manual_seed(1)
model = nn.Sequential(nn.Conv2d(1, 12, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(16 * 4 * 4, 4))
fastcnn.fit(model, Loader(train, batch_size=32, shuffle=True, seed=3), epochs=epochs, lr=0.02,
            momentum=0.9, val=val, checkpoint=path, resume=(mode == "resume"), progress=True)
print("finished", flush=True)
"""


def _env():
    """The environment run_python (conftest.py) gives: the same fastcnn as this process."""
    env = {k: v for k, v in os.environ.items() if k != "FASTCNN_NUM_THREADS"}
    parent = str(pathlib.Path(fastcnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    env.pop("FASTCNN_PROGRESS", None)
    return env


def _start(cwd, *args):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "finished" in out
    return out


def _kill(proc) -> bool:
    """SIGKILL; True if that is what ended the process (False: it had just finished)."""
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        assert "finished" in out
        return False
    assert proc.returncode == -signal.SIGKILL, err
    return True


def _wait_for(predicate, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the training process ended early ({proc.returncode}): {out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.01)


def _inode(path):
    """Changes at every write (os.replace puts a new file there)."""
    try:
        st = os.stat(path)
        return st.st_ino, st.st_mtime_ns, st.st_size
    except FileNotFoundError:
        return None


def _final(path):
    ckpt = io.load_checkpoint(path)
    tensors = {}
    from safetensors.numpy import load_file

    for name, array in load_file(str(path)).items():  # weights and optimizer state
        tensors[name] = array.tobytes()
    return ckpt, tensors


def test_sigkill_mid_epoch_then_resume_in_a_new_process(tmp_path):
    epochs = 4
    reference_path = tmp_path / "reference.safetensors"
    _finish(_start(tmp_path, reference_path, epochs, "fresh"))

    path = tmp_path / "run.safetensors"
    marker = tmp_path / "paused-in-epoch-2"
    proc = _start(tmp_path, path, epochs, "fresh", marker)
    _wait_for(lambda: path.exists() and marker.exists(), proc)
    assert _kill(proc)  # in epoch 2, between batches 5 and 6

    ckpt = io.load_checkpoint(path)  # never corrupt
    assert ckpt.epoch == 1
    fastcnn.load(path)
    assert sorted(os.listdir(tmp_path)) == sorted([reference_path.name, path.name, marker.name])

    out = _finish(_start(tmp_path, path, epochs, "resume"))
    assert f"resuming from {path} after epoch 1/{epochs}" in out
    assert "epoch 1/4:" not in out and "epoch 2/4:" in out and "epoch 4/4:" in out

    done, tensors = _final(path)
    want, want_tensors = _final(reference_path)
    assert done.epoch == want.epoch == epochs
    assert without_timing(done.history) == without_timing(want.history)
    assert done.history[-1]["val_accuracy"] > 0.5  # it learned: the comparison is not trivial
    assert done.optimizer_state["started"] == want.optimizer_state["started"]
    assert tensors.keys() == want_tensors.keys()
    for name in tensors:
        assert tensors[name] == want_tensors[name], name


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_the_checkpoint(tmp_path):
    """Many short epochs, so that kills also land while a checkpoint is being written: after
    each kill the file loads, and the run resumed again and again ends like the reference."""
    epochs, n = 12, 3000  # 1800 training images: 60 batches an epoch, so kills land mid-run
    reference_path = tmp_path / "reference.safetensors"
    _finish(_start(tmp_path, reference_path, epochs, "fresh", "", n))

    path = tmp_path / "run.safetensors"
    chooser = random.Random(0)
    kills, last = 0, 0
    for _ in range(4):
        before = _inode(path)
        if before is not None and io.load_checkpoint(path).epoch == epochs:
            break
        proc = _start(tmp_path, path, epochs, "resume", "", n)
        # once this process has written a checkpoint of its own, kill it at a random moment
        _wait_for(lambda before=before: _inode(path) not in (None, before), proc)
        time.sleep(chooser.uniform(0.0, 0.3))
        killed = _kill(proc)
        ckpt = io.load_checkpoint(path)  # whatever the moment, the file is whole
        assert last < ckpt.epoch <= epochs
        last = ckpt.epoch
        if not killed:
            break
        kills += 1
    assert kills >= 1
    _finish(_start(tmp_path, path, epochs, "resume", "", n))
    done, tensors = _final(path)
    want, want_tensors = _final(reference_path)
    assert without_timing(done.history) == without_timing(want.history)
    for name in want_tensors:
        assert tensors[name] == want_tensors[name], name
    # only the two checkpoints, and maybe a temporary file of a write that a kill cut short
    leftovers = set(os.listdir(tmp_path)) - {path.name, reference_path.name}
    assert all(f.startswith(".fastcnn-") and f.endswith(".tmp") for f in leftovers), leftovers


# ---- the command line -------------------------------------------------------------------------


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fastcnn.cli", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(root):
    from PIL import Image

    images, labels = squares(40, 6, noise=0.0)
    for i, (img, c) in enumerate(zip(images, labels)):
        os.makedirs(root / CLASSES[c], exist_ok=True)
        Image.fromarray(img).save(root / CLASSES[c] / f"{i}.png")


def test_cli_train_resume(tmp_path):
    _folder(tmp_path / "images")
    common = [
        "train",
        "images",
        "--image-size",
        "12",
        "--channels",
        "1",
        "--batch-size",
        "8",
        "--quiet",
    ]
    full = _cli(*common, "--epochs", "3", "--out", "full.safetensors", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    # the default checkpoint (full.ckpt.safetensors) is deleted once the model is saved; the
    # history stays beside the model
    assert sorted(os.listdir(tmp_path)) == ["full.history.csv", "full.safetensors", "images"]

    # a named checkpoint stays; --resume continues it to the new --epochs total
    first = _cli(
        *common,
        "--epochs",
        "1",
        "--out",
        "part.safetensors",
        "--checkpoint",
        "ckpt/run.safetensors",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert io.load_checkpoint(tmp_path / "ckpt" / "run.safetensors").epoch == 1
    rest = _cli(
        *common,
        "--epochs",
        "3",
        "--out",
        "part.safetensors",
        "--checkpoint",
        "ckpt/run.safetensors",
        "--resume",
        cwd=tmp_path,
    )
    assert rest.returncode == 0, rest.stderr
    assert "trained 3 epochs" in rest.stdout
    assert io.load_checkpoint(tmp_path / "ckpt" / "run.safetensors").epoch == 3
    a, b = fastcnn.load(tmp_path / "full.safetensors"), fastcnn.load(tmp_path / "part.safetensors")
    assert_same_weights(a, b)
    assert a.classes == b.classes and a.preprocessing == b.preprocessing

    # a resume with other settings is a one-line error naming the difference
    bad = _cli(
        *common,
        "--epochs",
        "3",
        "--lr",
        "0.5",
        "--out",
        "part.safetensors",
        "--checkpoint",
        "ckpt/run.safetensors",
        "--resume",
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("fastcnn: error: cannot resume from ckpt/run.safetensors")
    assert "lr 0.01 there, 0.5 here" in bad.stderr

    # --resume with no checkpoint yet starts from the start, and removes the default one after
    fresh = _cli(*common, "--epochs", "1", "--out", "new.safetensors", "--resume", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "no checkpoint at new.ckpt.safetensors" in fresh.stdout
    assert not (tmp_path / "new.ckpt.safetensors").exists()
