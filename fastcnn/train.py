"""The training loop, evaluation and prediction: the loop a person would write by hand."""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from . import nn, optim
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
):
    """Trains `model` on `train` for `epochs` epochs of shuffled mini-batches; returns the history.

    train/val: a data set (anything with len, [i], ideally .images/.labels arrays), a DataLoader,
    or an (images, labels) pair. optimizer defaults to SGD(lr, momentum). seed fixes the shuffle
    order, so a seeded run repeats exactly. checkpoint: a path the model is saved to after every
    epoch (atomically). Returns one dict per epoch: loss, accuracy, val_loss, val_accuracy,
    seconds, images_per_second.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    loader = _loader(train, batch_size, shuffle=True, seed=seed)
    val_loader = None if val is None else _loader(val, max(batch_size, 256))
    _remember_data(model, loader.dataset)
    _check_classes(model, loader)
    if optimizer is None:
        optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    wanted_input_grad = model.requires_input_grad
    model.requires_input_grad = False  # nothing needs d(loss)/d(image) while training
    try:
        _epochs(
            model, loader, val_loader, optimizer, loss_fn, epochs, progress, checkpoint, history
        )
    finally:
        model.requires_input_grad = wanted_input_grad
    return history


def _epochs(model, loader, val_loader, optimizer, loss_fn, epochs, progress, checkpoint, history):
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        bar = _progress(len(loader), f"epoch {epoch}/{epochs}", progress)
        for batch, (x, y) in enumerate(loader, 1):
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss} at epoch {epoch}, batch {batch}: training diverged; "
                    f"try a lower learning rate (lr is {optimizer.lr})"
                )
            model.backward(loss_fn.backward())
            optimizer.step()
            total_loss += loss * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(
                    loss=f"{total_loss / seen:.4f}",
                    acc=f"{correct / seen:.4f}",
                    img_s=f"{rate:,.0f}",
                    refresh=False,
                )
                bar.update(1)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        record = {
            "epoch": epoch,
            "loss": total_loss / seen,
            "accuracy": correct / seen,
            "seconds": seconds,
            "images_per_second": seen / seconds,
        }
        if val_loader is not None:
            scores = evaluate(model, val_loader)
            record["val_loss"], record["val_accuracy"] = scores["loss"], scores["accuracy"]
        history.append(record)
        if progress:
            _print_epoch(record, epochs)
        if checkpoint is not None:
            from .io import save

            save(model, checkpoint)


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
    """Mean loss and accuracy of `model` on `data` (a data set, DataLoader or (images, labels))."""
    loader = _loader(data, batch_size)
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for x, y in loader:
            logits = model(x)
            total_loss += loss_fn(logits, y) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the data set is empty")
    return {"loss": total_loss / seen, "accuracy": correct / seen}


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
    out = [_softmax(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    if not out:
        raise ValueError("predict: no images given")
    return np.concatenate(out)
