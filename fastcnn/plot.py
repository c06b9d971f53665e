"""Pictures of a training run and of a model, as PNG files, drawn with matplotlib (the optional
extra `pip install "fastcnn[plot]"`): loss and accuracy curves, a confusion matrix, a grid of
misclassified images, and the first convolution's filters.

Example:
    >>> history = fastcnn.fit(model, train, epochs=8, val=test)
    >>> fastcnn.plot.curves(history, "curves.png")
    >>> fastcnn.plot.confusion_matrix(model, test, "confusion.png")
    >>> fastcnn.plot.misclassified(model, test, "misclassified.png")
    >>> fastcnn.plot.filters(model, "filters.png")
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

__all__ = [
    "curves",
    "confusion_matrix",
    "misclassified",
    "filters",
    "predictions",
    "write_history_csv",
]


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or an ImportError saying how to get it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            'fastcnn.plot needs matplotlib: pip install "fastcnn[plot]" (or pip install matplotlib)'
        ) from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> str:
    """Writes the figure (laid out) as PNG at `path` and closes it; returns the path."""
    try:
        fig.tight_layout()
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)  # a reader never sees half a file
        return path
    finally:
        plt.close(fig)


# ---- the history ------------------------------------------------------------------------------


def curves(history, path) -> str:
    """Loss and accuracy per epoch, training and (when recorded) validation, side by side.

    Args:
        history: fit()'s list of per-epoch dicts.
        path: the PNG to write.

    Returns:
        The path written.
    """
    if not history:
        raise ValueError("curves: the history is empty")
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [r[key] for r in history], "o-", label="training")
        if all(f"val_{key}" in r for r in history):
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(plt, fig, path)


def write_history_csv(history, path) -> str:
    """The history as CSV, one row per epoch, a column per key (in fit()'s order)."""
    if not history:
        raise ValueError("write_history_csv: the history is empty")
    keys = list(dict.fromkeys(k for r in history for k in r))
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
    return path


# ---- a model on labelled data -----------------------------------------------------------------


def predictions(model, data, batch_size=256):
    """(labels, predicted classes, confidence of the prediction, images for display) of `model`
    on every sample of `data` (a data set or (images, labels) pair), in order. The images are
    uint8 (N, H, W, C) when the data set keeps uint8 pixels, else the inputs rescaled to 0-255.
    """
    from .data import DataLoader
    from .train import _loader, predict

    loader = _loader(data, batch_size)
    if not isinstance(data, DataLoader):
        loader = DataLoader(loader.dataset, batch_size)  # in order, no augmentation
    labels, preds, conf = [], [], []
    for x, y in loader:
        p = predict(model, x)
        labels.append(np.asarray(y))
        preds.append(p.argmax(1))
        conf.append(p.max(1))
    ds = loader.dataset
    raw = getattr(ds, "raw", None)
    if isinstance(raw, np.ndarray) and raw.dtype == np.uint8:
        images = raw.transpose(0, 2, 3, 1)
    else:
        x = np.stack([np.asarray(ds[i][0], np.float32) for i in range(len(ds))])
        lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
        images = ((x - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
        images = images.transpose(0, 2, 3, 1)
    return np.concatenate(labels), np.concatenate(preds), np.concatenate(conf), images


def _class_names(model, data, n):
    names = getattr(model, "classes", None) or getattr(data, "classes", None)
    if names and len(names) >= n:
        return [str(c) for c in names]
    return [str(i) for i in range(n)]


def confusion_matrix(model, data, path, *, normalize=True) -> str:
    """The confusion matrix of `model` on `data`: rows the true class, columns the predicted
    one, with class names; each row in percent of its class (normalize) or in counts.

    Returns:
        The path written.
    """
    labels, preds, _, _ = predictions(model, data)
    n = int(max(labels.max(), preds.max()) + 1)
    names = _class_names(model, data, n)[:n]
    counts = np.zeros((n, n), np.int64)
    np.add.at(counts, (labels, preds), 1)
    shown = counts / np.maximum(counts.sum(1, keepdims=True), 1) * 100 if normalize else counts
    plt = _pyplot()
    side = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix ({len(labels)} images, accuracy {accuracy:.1%})")
    if n <= 20:
        top = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.0f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > top / 2 else "black")  # fmt: skip
    fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class" if normalize else "images"
    )
    return _save(plt, fig, path)


def misclassified(model, data, path, *, max_images=25) -> str:
    """A grid of the images `model` gets wrong, the most confident mistakes first, each with
    its true label, the predicted one and the confidence.

    Returns:
        The path written.
    """
    labels, preds, conf, images = predictions(model, data)
    wrong = np.flatnonzero(labels != preds)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:max_images]
    names = _class_names(model, data, int(max(labels.max(), preds.max()) + 1))
    plt = _pyplot()
    cols = max(1, min(5, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        img = images[i]
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true: {names[labels[i]]}\npred: {names[preds[i]]} ({conf[i]:.0%})",
                     fontsize=8)  # fmt: skip
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"misclassified: {int((labels != preds).sum())} of {len(labels)}", fontsize=10)
    return _save(plt, fig, path)


def filters(model, path) -> str:
    """The first convolution's filters, one tile each (RGB when the layer reads 3 channels,
    else the first input channel in grey), each scaled to its own range.

    Returns:
        The path written.
    """
    from . import nn, ops

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("filters: the model has no Conv2d layer")
    w = np.asarray(ops.to_numpy(conv.weight.data), np.float64)  # (O, C, kh, kw)
    lo, hi = w.min(axis=(1, 2, 3), keepdims=True), w.max(axis=(1, 2, 3), keepdims=True)
    w = (w - lo) / np.maximum(hi - lo, 1e-12)
    plt = _pyplot()
    n = len(w)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for o, ax in zip(range(n), axes.flat):
        tile = w[o].transpose(1, 2, 0) if w.shape[1] == 3 else w[o, 0]
        ax.imshow(tile, cmap=None if w.shape[1] == 3 else "gray", interpolation="nearest")
        ax.set_title(str(o), fontsize=7)
    fig.suptitle(f"first convolution: {n} filters {w.shape[2]}x{w.shape[3]}", fontsize=10)
    return _save(plt, fig, path)
