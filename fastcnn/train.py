"""The training loop, evaluation and prediction: the loop a person would write by hand."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time

import numpy as np

from . import nn, ops, optim
from .data import DataLoader

__all__ = ["fit", "evaluate", "predict"]


def _loader(data, batch_size, shuffle=False, seed=None) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple) and len(data) == 2:  # (images, labels) arrays
        from .data import ArrayDataset

        data = ArrayDataset(*data)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"expected a dataset or DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("the data set is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, seed=seed)


def _remember_data(model, dataset) -> None:
    """Keeps the class names and preprocessing on the model, so save() can store them."""
    for attr in ("classes", "preprocessing"):
        value = getattr(dataset, attr, None)
        if value is not None and getattr(model, attr, None) is None:
            setattr(model, attr, value)


def _check_classes(model, loader) -> None:
    classes = getattr(loader.dataset, "classes", None)
    out = _output_features(model)
    if classes is not None and out is not None and len(classes) > out:
        raise ValueError(
            f"the data set has {len(classes)} classes but the model outputs only {out} scores"
        )


def _output_features(model):
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    return last


def fit(
    model,
    train,
    *,
    epochs,
    batch_size=64,
    lr=0.01,
    momentum=0.9,
    optimizer=None,
    val=None,
    seed=0,
    progress=True,
    checkpoint=None,
    resume=False,
):
    """Trains `model` on `train` for `epochs` epochs of shuffled mini-batches; returns the history.

    train/val: a data set (anything with len, [i], ideally .images/.labels arrays), a DataLoader,
    or an (images, labels) pair. optimizer defaults to SGD(lr, momentum). seed fixes the shuffle
    order, so a seeded run repeats exactly. Returns one dict per epoch: epoch, loss, accuracy,
    val_loss, val_accuracy, seconds, images_per_second.

    checkpoint: a path written after every epoch (atomically: a crash leaves the previous
    epoch's file) with the model (fastcnn.load reads it), the optimizer's state, the history and
    where the shuffling stands; it is not written when the weights are no longer finite.
    resume=True: if that file exists, training continues from it (weights, optimizer state,
    history, shuffle order) and runs the remaining epochs, ending bit for bit where an
    uninterrupted run would have; the architecture, optimizer type and hyper-parameters, batch
    size, seed and data-set size must be those of the run that wrote it (ValueError otherwise).
    If the file does not exist, training starts from scratch. The returned history includes the
    restored epochs.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (the file to resume from)")
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        folder = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(folder):  # fail now, not after the first epoch
            raise FileNotFoundError(
                f"cannot write the checkpoint {checkpoint}: folder {folder} does not exist"
            )
    loader = _loader(train, batch_size, shuffle=True, seed=seed)
    if len(loader) == 0:  # an empty data set, or drop_last dropping every sample
        raise ValueError(
            f"the training data gives no batches ({len(loader.dataset)} samples, "
            f"batch_size {loader.batch_size}, drop_last={loader.drop_last})"
        )
    val_loader = None if val is None else _loader(val, max(batch_size, 256))
    _remember_data(model, loader.dataset)
    _check_classes(model, loader)
    if optimizer is None:
        optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    history = []
    if resume and os.path.exists(checkpoint):
        _resume(checkpoint, model, optimizer, loader, epochs, history)
        if progress:
            print(f"resuming from {checkpoint} after epoch {len(history)}/{epochs}", flush=True)
    loss_fn = nn.CrossEntropyLoss()
    wanted_input_grad = model.requires_input_grad
    model.requires_input_grad = False  # nothing needs d(loss)/d(image) while training
    try:
        _epochs(
            model, loader, val_loader, optimizer, loss_fn, epochs, progress, checkpoint, history
        )
    finally:
        model.requires_input_grad = wanted_input_grad
    return history


def _training_state(loader):
    """What, besides weights and optimizer, a resumed run needs to repeat the shuffling (and
    what it must agree on to end where an uninterrupted run would)."""
    classes = getattr(loader.dataset, "classes", None)
    return {
        "loader_epoch": loader.epoch,
        "seed": loader.seed,
        "batch_size": loader.batch_size,
        "shuffle": bool(loader.shuffle),
        "drop_last": bool(loader.drop_last),
        "samples": len(loader.dataset),
        "classes": None if classes is None else [str(c) for c in classes],
    }


def _resume(path, model, optimizer, loader, epochs, history):
    """Loads the checkpoint at `path` into model, optimizer, loader and history, after checking
    that it belongs to this run (ValueError naming the difference; nothing changed then)."""
    from . import io

    ckpt = io.load_checkpoint(path)
    problem = _resume_problem(ckpt, model, optimizer, loader)
    if problem:
        raise ValueError(f"cannot resume from {path}: {problem}")
    if ckpt.epoch > epochs:
        raise ValueError(
            f"cannot resume from {path}: it holds {ckpt.epoch} epochs of training, "
            f"more than epochs={epochs}"
        )
    try:  # the optimizer checks its state before changing anything; the weights fit (above)
        optimizer.load_state_dict(ckpt.optimizer_state)
        model.load_state_dict(ckpt.model.state_dict())
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot resume from {path}: {e}") from e
    loader.set_epoch(ckpt.training["loader_epoch"])
    history[:] = ckpt.history


def _resume_problem(ckpt, model, optimizer, loader):
    """Why `ckpt` cannot continue this run, or None."""
    from . import io

    saved_arch = json.loads(json.dumps(io.architecture(ckpt.model)))
    try:
        arch = json.loads(json.dumps(io.architecture(model)))
    except TypeError:
        arch = None  # not a Sequential: the parameter shapes below decide
    if arch is not None and arch != saved_arch:
        return f"the architecture differs: {_first_difference(saved_arch, arch)}"
    saved = {k: v.shape for k, v in ckpt.model.state_dict().items()}
    mine = {k: p.data.shape for k, p in model.named_parameters()}
    if saved != mine:
        return f"the parameters differ: checkpoint {saved}, model {mine}"
    kind = type(optimizer).__name__
    if ckpt.optimizer_type != kind:
        return f"it was trained with {ckpt.optimizer_type}, this run uses {kind}"
    hyper = io._hyperparameters(optimizer)
    if ckpt.hyperparameters != hyper:
        keys = sorted(set(ckpt.hyperparameters) | set(hyper))
        diff = [
            f"{k} {ckpt.hyperparameters.get(k)!r} there, {hyper.get(k)!r} here"
            for k in keys
            if ckpt.hyperparameters.get(k) != hyper.get(k)
        ]
        return f"the {kind} settings differ: " + "; ".join(diff)
    if ckpt.parameter_names != io._parameter_names(model, optimizer):
        return "the optimizer updates different parameters than the run that wrote it"
    want = _training_state(loader)
    have = ckpt.training
    if not isinstance(have.get("loader_epoch"), int):
        return "it records no data-loader epoch"
    for key, what in (
        ("samples", "training images"),
        ("classes", "classes"),
        ("batch_size", "batch size"),
        ("seed", "shuffle seed"),
        ("shuffle", "shuffling"),
        ("drop_last", "drop_last"),
    ):
        if have.get(key) != want[key]:
            return f"the {what} differ: {have.get(key)!r} there, {want[key]!r} here"
    return None


def _first_difference(saved, mine):
    a, b = saved.get("layers", []), mine.get("layers", [])
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"layer {i} is {_layer(x)} in the checkpoint, {_layer(y)} in the model"
    return f"the checkpoint has {len(a)} layers, the model {len(b)}"


def _layer(spec):
    args = ", ".join(f"{k}={v}" for k, v in spec.get("config", {}).items())
    return f"{spec.get('type')}({args})"


class _Tally:
    """An epoch's loss and accuracy sums. On a device they stay there (ops.batch_stats adds each
    batch's in place) and are read only every READ_EVERY batches, so a training step makes no
    round trip to the host; on the CPU they are read after every batch."""

    READ_EVERY = 50

    def __init__(self, device):
        self.device, self.seen, self.batches = device, 0, 0
        self.sums = ops.to_device(np.zeros(2), device)
        self.read_at, self.loss_sum, self.correct = 0, 0.0, 0

    def add(self, logits, labels, loss):
        ops.batch_stats(logits, labels, loss, self.sums)
        self.seen += len(labels)
        self.batches += 1

    def due(self) -> bool:
        return self.device == "cpu" or self.batches - self.read_at >= self.READ_EVERY

    def read(self):
        """(mean loss, accuracy) so far; the batches since the last read, for error messages."""
        since = (self.read_at + 1, self.batches)
        self.read_at = self.batches
        loss_sum, correct = ops.to_numpy(self.sums)
        self.loss_sum, self.correct = float(loss_sum), int(correct)
        return since

    def check(self, epoch, lr):
        """Reads the sums; FloatingPointError naming the batch(es) if the loss is not finite."""
        first, last = self.read()
        if not math.isfinite(self.loss_sum):
            at = f"batch {last}" if first == last else f"one of batches {first}-{last}"
            raise FloatingPointError(
                f"the loss became {self.loss_sum} at epoch {epoch}, {at}: training diverged; "
                f"try a lower learning rate (lr is {lr})"
            )

    @property
    def loss(self):
        return self.loss_sum / self.seen

    @property
    def accuracy(self):
        return self.correct / self.seen


def _on(device, x, y, classes):
    """A loader's batch, moved to the model's device. Labels are checked on the host first
    (the CPU loss checks them itself; a device's would only give a NaN)."""
    if device == "cpu":
        return x, y
    if classes is not None and len(y) and (y.min() < 0 or y.max() >= classes):
        i = int(np.flatnonzero((y < 0) | (y >= classes))[0])
        raise ValueError(
            f"labels out of range: labels[{i}] = {y[i]}, but logits have {classes} classes "
            f"(valid: 0..{classes - 1})"
        )
    return ops.to_device(x, device), ops.to_device(y, device)


def _epochs(model, loader, val_loader, optimizer, loss_fn, epochs, progress, checkpoint, history):
    device, classes = model.device, _output_features(model)
    for epoch in range(len(history) + 1, epochs + 1):
        model.train()
        start = time.perf_counter()
        tally = _Tally(device)
        bar = _progress(len(loader), f"epoch {epoch}/{epochs}", progress)
        for x, y in loader:
            x, y = _on(device, x, y, classes)
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            tally.add(logits, y, loss)
            if tally.due():
                tally.check(epoch, optimizer.lr)
            model.backward(loss_fn.backward())
            optimizer.step()
            if bar is not None:
                rate = tally.seen / (time.perf_counter() - start)
                bar.set_postfix(
                    loss=f"{tally.loss:.4f}",
                    acc=f"{tally.accuracy:.4f}",
                    img_s=f"{rate:,.0f}",
                    refresh=False,
                )
                bar.update(1)
        tally.check(epoch, optimizer.lr)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        record = {
            "epoch": epoch,
            "loss": tally.loss,
            "accuracy": tally.accuracy,
            "seconds": seconds,
            "images_per_second": tally.seen / seconds,
        }
        if val_loader is not None:
            scores = evaluate(model, val_loader)
            record["val_loss"], record["val_accuracy"] = scores["loss"], scores["accuracy"]
        history.append(record)
        if progress:
            _print_epoch(record, epochs)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, loader, history, epoch)


def _save_checkpoint(path, model, optimizer, loader, history, epoch):
    from . import io

    for name, array in model.state_dict().items():
        if not np.isfinite(array).all():
            # The last batch's step overflowed: keep the previous epoch's checkpoint.
            raise FloatingPointError(
                f"the weights ({name}) are no longer finite at the end of epoch {epoch}: "
                f"training diverged; try a lower learning rate (lr is {optimizer.lr}); "
                f"the checkpoint {path} was left as it was"
            )
    io.save_checkpoint(
        path, model, optimizer, epoch=epoch, history=history, **_training_state(loader)
    )


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
        return None
    return tqdm(
        total=total,
        desc=desc,
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=not sys.stderr.isatty() and not os.environ.get("FASTCNN_PROGRESS"),
    )


def _print_epoch(r, epochs):
    line = f"epoch {r['epoch']}/{epochs}: loss {r['loss']:.4f}, accuracy {r['accuracy']:.4f}"
    if "val_accuracy" in r:
        line += f", val_loss {r['val_loss']:.4f}, val_accuracy {r['val_accuracy']:.4f}"
    line += f" ({r['seconds']:.1f} s, {r['images_per_second']:,.0f} images/s)"
    print(line, flush=True)


def evaluate(model, data, batch_size=256) -> dict:
    """Mean loss and accuracy of `model` on `data` (a data set, DataLoader or (images, labels)).

    Runs the model in eval mode and leaves it in the mode it found, also when several threads
    evaluate it at once."""
    loader = _loader(data, batch_size)
    loss_fn = nn.CrossEntropyLoss()
    device, classes = model.device, _output_features(model)
    tally = _Tally(device)
    with _eval_mode(model):
        for x, y in loader:
            x, y = _on(device, x, y, classes)
            logits = model(x)
            tally.add(logits, y, loss_fn(logits, y))
    if tally.seen == 0:
        raise ValueError("evaluate: the data set is empty")
    tally.read()
    return {"loss": tally.loss, "accuracy": tally.accuracy}


# Models being evaluated: id(model) -> [evaluations running, the mode to restore after the last].
# The first evaluation remembers the mode and switches to eval; the last one restores it. (A
# plain save/restore per call would let a thread that started while another had switched to
# eval "restore" eval mode on a model that was training.)
_evaluating: dict = {}
_evaluating_lock = threading.Lock()


@contextlib.contextmanager
def _eval_mode(model):
    key = id(model)
    with _evaluating_lock:
        entry = _evaluating.get(key)
        if entry is None:
            entry = _evaluating[key] = [0, model.training]
            model.eval()
        entry[0] += 1
    try:
        yield
    finally:
        with _evaluating_lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _evaluating[key]
                model.train(entry[1])


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _as_batch(model, images) -> np.ndarray:
    """Whatever predict() was given -> float32 NCHW, with the model's preprocessing applied."""
    from .transforms import load_image, preprocess_array

    prep = getattr(model, "preprocessing", None)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
        if prep is None:
            raise ValueError(
                "predicting from image files needs the model's preprocessing "
                "(train with fit() on a data set, or set model.preprocessing)"
            )
        return np.concatenate(
            [
                load_image(p, prep["image_size"], prep["channels"], prep["mean"], prep["std"])
                for p in images
            ]
        )
    a = np.asarray(images)
    if a.dtype == np.uint8:
        if prep is None:
            raise ValueError(
                "raw uint8 images need the model's preprocessing "
                "(set model.preprocessing, or pass float32 NCHW arrays)"
            )
        return preprocess_array(a, prep)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"images must be uint8 (raw) or float (preprocessed NCHW), got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"float images must be (C, H, W) or (N, C, H, W), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def predict(model, images, batch_size=256) -> np.ndarray:
    """Class probabilities (N, classes) for one image or a batch.

    images: image file path(s); raw uint8 (H,W), (H,W,C), (N,H,W), (N,H,W,C) (preprocessed as in
    training); or float32 (C,H,W) / (N,C,H,W) already preprocessed. Puts the model in eval mode.
    """
    x = _as_batch(model, images)
    model.eval()
    device = model.device
    out = [
        _softmax(ops.to_numpy(model(ops.to_device(x[i : i + batch_size], device))))
        for i in range(0, len(x), batch_size)
    ]
    if not out:
        raise ValueError("predict: no images given")
    return np.concatenate(out)
