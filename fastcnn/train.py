"""The training loop, evaluation and prediction: the loop a person would write by hand."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import threading
import time
import warnings

import numpy as np

from . import nn, ops, optim
from .data import DataLoader

__all__ = ["fit", "evaluate", "predict", "TrainingWarning"]


def _loader(data, batch_size, shuffle=False, seed=None, transform=None) -> DataLoader:
    if isinstance(data, DataLoader):
        if transform is not None:
            raise ValueError("the data is a DataLoader: give it the transform instead")
        return data
    if isinstance(data, tuple) and len(data) == 2:  # (images, labels) arrays
        from .data import ArrayDataset

        data = ArrayDataset(*data)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"expected a dataset or DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("the data set is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, seed=seed, transform=transform)


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
    scheduler=None,
    label_smoothing=0.0,
    transform=None,
    val=None,
    seed=0,
    progress=True,
    checkpoint=None,
    resume=False,
    on_epoch_end=None,
    warnings=True,
    distributed=None,
    sync_batchnorm=False,
):
    """Train `model` on `train` for `epochs` epochs of shuffled mini-batches.

    Each step is the loop one would write by hand: zero the gradients, forward, softmax
    cross-entropy, backward, optimizer step. The data set's class names and preprocessing are
    kept on the model (when it has none yet), so that save() stores them and predict() can
    label raw image files.

    Args:
        model: the network to train, in place (an nn.Sequential such as models.seednet()).
            Train it on the GPU by moving it first: model.to("cuda").
        train: the training data: a data set (anything with len() and [i] -> (image,
            label); fastcnn.data's are fastest), a DataLoader, or an (images, labels) pair of
            arrays (see data.ArrayDataset).
        epochs: the number of passes over `train`, in all (epochs restored by resume count).
        batch_size: images per step; ignored when `train` is a DataLoader.
        lr: learning rate of the default optimizer, SGD with `momentum`.
        momentum: momentum of the default optimizer.
        optimizer: an optimizer over model.parameters() (optim.SGD, optim.Adam, optim.AdamW)
            to use instead of the default; then `lr` and `momentum` are ignored.
        scheduler: a schedule of `optimizer` from optim.lr_scheduler, stepped as PyTorch's
            documentation does: after every batch for OneCycleLR (`scheduler.per_batch`),
            after every epoch (its validation included) for the others. Its state is part of
            the checkpoint.
        label_smoothing: the loss's label smoothing, in [0, 1] (nn.CrossEntropyLoss).
        transform: augmentation of the training batches (fastcnn.augment, e.g.
            data.Compose([data.RandomCrop(28, padding=4), data.RandomHorizontalFlip()])),
            seeded by `seed`; never applied to `val`.
        val: data to evaluate after every epoch, of the same kinds as `train`.
        seed: seeds the shuffling: a run with the same seed, data and initial weights
            (nn.manual_seed) repeats bit for bit.
        progress: print one line per epoch on stdout, and show a progress bar on stderr
            when it is a terminal (or $FASTCNN_PROGRESS is set).
        checkpoint: a path to write after every epoch: the model (fastcnn.load reads it),
            the optimizer's state, the history and where the shuffling stands. Written
            atomically, so a crash leaves the previous epoch's file; not written when the
            weights are no longer finite.
        resume: continue from `checkpoint` if that file exists (weights, optimizer state,
            history, shuffle order) and run the remaining epochs, ending bit for bit where an
            uninterrupted run ends; start from scratch if it does not exist.
        on_epoch_end: called with the history after each epoch (its record appended, the
            checkpoint written), e.g. to redraw fastcnn.plot.curves; on rank 0 only.
        warnings: warn (TrainingWarning, once each, with what to try) when the loss has not
            fallen after the first few hundred steps, accuracy sits at chance, the loss jumps,
            or validation loss rises for several epochs while training loss falls.
        distributed: train data-parallel with the other ranks mpirun started (see
            fastcnn.distributed): True joins them (distributed.init()), None (the default) does
            so when distributed.init() was called before, False never. Each batch of
            `batch_size` images is split among the ranks, so the run computes what one process
            computes; rank 0 alone prints, warns, checkpoints and calls on_epoch_end; the
            history holds the whole job's figures. Outside mpirun it changes nothing.
        sync_batchnorm: with `distributed`, BatchNorm2d normalises by the statistics of the
            whole global batch (all-reduced) instead of each rank's part.

    Returns:
        The history: a list with one dict per epoch (restored epochs included), with keys
        "epoch", "loss" and "accuracy" (on the training batches, averaged over the epoch),
        "seconds", "images_per_second" and, with `val`, "val_loss" and "val_accuracy".

    Raises:
        ValueError: a bad argument, a data set with more classes than the model has outputs,
            or (resume) a checkpoint written by a run with another architecture, optimizer,
            hyper-parameters, batch size, seed or data set.
        FloatingPointError: the loss or the weights stopped being finite (training diverged;
            the message suggests a lower learning rate).

    Example:
        >>> from fastcnn import data, models
        >>> model = models.seednet(in_channels=1, num_classes=10)
        >>> history = fastcnn.fit(model, data.FashionMNIST(), epochs=8,
        ...                       val=data.FashionMNIST(train=False))
        >>> sorted(history[-1])
        ['accuracy', 'epoch', 'images_per_second', 'loss', 'seconds', 'val_accuracy', 'val_loss']
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (the file to resume from)")
    world = _join(distributed, model)
    if world is not None and world.rank != 0:
        progress, warnings, on_epoch_end = False, False, None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
    loader = _loader(train, batch_size, shuffle=True, seed=seed, transform=transform)
    steps = len(loader if world is None else world.shard(loader))
    if steps == 0:  # an empty data set, or drop_last dropping every sample
        raise ValueError(
            f"the training data gives no batches ({len(loader.dataset)} samples, "
            f"batch_size {loader.batch_size}, drop_last={loader.drop_last})"
        )
    val_loader = None if val is None else _loader(val, max(batch_size, 256))
    _remember_data(model, loader.dataset)
    _check_classes(model, loader)
    if optimizer is None:
        if scheduler is not None:
            raise ValueError("scheduler needs the optimizer it schedules: pass optimizer= too")
        optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler must schedule the optimizer passed as optimizer=")
    loss_fn = nn.CrossEntropyLoss(label_smoothing)
    run = _Run(optimizer, scheduler, loss_fn, world)
    train = functools.partial(
        _train, model, loader, val_loader, run, epochs, checkpoint, resume, progress,
        on_epoch_end, warnings,
    )  # fmt: skip
    if world is None:
        return train()
    with world.training(model, run, sync_batchnorm):
        return train()


def _join(distributed, model):
    """fit's World (fastcnn.distributed), or None for a single process."""
    from . import distributed as dist

    if distributed is False or (distributed is None and dist.world() is None):
        return None
    world = dist.init()
    if world is not None and model.device != "cpu":
        raise dist.DistributedError(
            f"distributed training runs on the CPU; the model is on {model.device}"
        )
    return world


def _train(
    model, loader, val_loader, run, epochs, checkpoint, resume, progress, on_epoch_end, warnings
):
    world, optimizer, history = run.world, run.optimizer, []
    if checkpoint is not None and (world is None or world.rank == 0):
        folder = os.path.dirname(os.path.abspath(checkpoint))
        if not os.path.isdir(folder):  # fail now, not after the first epoch
            raise FileNotFoundError(
                f"cannot write the checkpoint {checkpoint}: folder {folder} does not exist"
            )
    if world is not None:  # the same data, batches and model on every rank, or a clear error
        world.check_agreement(model, loader, val_loader)
    if resume:
        _resume_shared(checkpoint, model, run, loader, epochs, history, progress)
    if world is not None:  # every rank starts from rank 0's weights, as DDP does
        world.broadcast_model(model)
    wanted_input_grad = model.requires_input_grad
    model.requires_input_grad = False  # nothing needs d(loss)/d(image) while training
    try:
        watch = _Watch(_output_features(model), lambda: optimizer.lr, history) if warnings else None
        _epochs(
            model,
            loader,
            val_loader,
            run,
            epochs,
            progress,
            checkpoint,
            history,
            on_epoch_end,
            watch,
        )
    finally:
        model.requires_input_grad = wanted_input_grad
    return history


class _Run:
    """What a training step uses besides the model and the data: the optimizer, the schedule
    (or None), the loss function, and in a distributed run the World and gradient reducer."""

    def __init__(self, optimizer, scheduler, loss_fn, world=None):
        self.optimizer, self.scheduler, self.loss_fn = optimizer, scheduler, loss_fn
        self.world, self.reducer = world, None

    @property
    def ranks(self) -> int:
        return 1 if self.world is None else self.world.size

    def state(self) -> dict:
        """The schedule's and the loss's part of a checkpoint (JSON-able), and the state of the
        generator Dropout draws its masks from (nn.manual_seed's), so that a resumed run draws
        the masks an uninterrupted one would."""
        s = self.scheduler
        return {
            "layer_rng": nn._rng.bit_generator.state,
            "scheduler": None if s is None else {"type": type(s).__name__, **s.state_dict()},
            "label_smoothing": self.loss_fn.label_smoothing,
        }


def _training_state(loader, run=None, ranks=1):
    """What, besides weights and optimizer, a resumed run needs to repeat the shuffling (and
    what it must agree on to end where an uninterrupted run would)."""
    classes = getattr(loader.dataset, "classes", None)
    return {
        **({} if run is None else run.state()),
        "ranks": ranks if run is None else run.ranks,
        "loader_epoch": loader.epoch,
        "seed": loader.seed,
        "batch_size": loader.batch_size,
        "shuffle": bool(loader.shuffle),
        "drop_last": bool(loader.drop_last),
        "samples": len(loader.dataset),
        "classes": None if classes is None else [str(c) for c in classes],
        "transform": None if loader.transform is None else repr(loader.transform),
    }


def _resume_shared(checkpoint, model, run, loader, epochs, history, progress):
    """resume=True: _resume from the checkpoint if there is one. In a distributed run rank 0
    reads it and sends it to the others (their machines may not see rank 0's files)."""
    world, path = run.world, checkpoint
    if world is not None:
        path = world.share_file(checkpoint, "the checkpoint's transfer from rank 0")
    elif not os.path.exists(checkpoint):
        path = None
    if path is None:
        return
    try:
        _resume(path, model, run, loader, epochs, history, shown=checkpoint)
    finally:
        if path != checkpoint:
            os.remove(path)
    if progress:
        print(f"resuming from {checkpoint} after epoch {len(history)}/{epochs}", flush=True)


def _resume(path, model, run, loader, epochs, history, shown=None):
    """Loads the checkpoint at `path` into model, optimizer, schedule, loader and history, after
    checking that it belongs to this run (ValueError naming the difference; nothing changed
    then)."""
    from . import io

    optimizer = run.optimizer
    ckpt = io.load_checkpoint(path)
    path = shown or path
    problem = _resume_problem(ckpt, model, run, loader)
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
        if run.scheduler is not None:  # its lr (and momentum) last: they are the current ones
            saved = dict(ckpt.training["scheduler"])
            saved.pop("type")
            run.scheduler.load_state_dict(saved)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot resume from {path}: {e}") from e
    loader.set_epoch(ckpt.training["loader_epoch"])
    rng_state = ckpt.training.get("layer_rng")
    if rng_state is not None:
        try:
            nn._rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as e:  # another bit generator, or corrupt
            raise ValueError(f"cannot resume from {path}: bad layer_rng state: {e}") from e
    history[:] = ckpt.history


def _resume_problem(ckpt, model, run, loader):
    """Why `ckpt` cannot continue this run, or None."""
    from . import io

    optimizer, scheduler = run.optimizer, run.scheduler
    saved_arch = json.loads(json.dumps(io.architecture(ckpt.model)))
    try:
        arch = json.loads(json.dumps(io.architecture(model)))
    except TypeError:
        arch = None  # not a Sequential: the parameter shapes below decide
    if arch is not None and arch != saved_arch:
        return f"the architecture differs: {_first_difference(saved_arch, arch)}"
    saved = {k: v.shape for k, v in ckpt.model.state_dict().items()}
    mine = {k: tuple(np.shape(v)) for k, v in model.state_dict().items()}
    if saved != mine:
        return f"the parameters differ: checkpoint {saved}, model {mine}"
    kind = type(optimizer).__name__
    if ckpt.optimizer_type != kind:
        return f"it was trained with {ckpt.optimizer_type}, this run uses {kind}"
    problem = _schedule_problem(ckpt.training.get("scheduler"), scheduler)
    if problem:
        return problem
    # A schedule moves the settings it drives: those are restored with it, not compared.
    moved = set() if scheduler is None else scheduler.scheduled()
    hyper = {k: v for k, v in io._hyperparameters(optimizer).items() if k not in moved}
    saved_hyper = {k: v for k, v in ckpt.hyperparameters.items() if k not in moved}
    if saved_hyper != hyper:
        keys = sorted(set(saved_hyper) | set(hyper))
        diff = [
            f"{k} {saved_hyper.get(k)!r} there, {hyper.get(k)!r} here"
            for k in keys
            if saved_hyper.get(k) != hyper.get(k)
        ]
        return f"the {kind} settings differ: " + "; ".join(diff)
    smoothing = ckpt.training.get("label_smoothing", 0.0)
    if smoothing != run.loss_fn.label_smoothing:
        return (
            f"the label smoothing differs: {smoothing!r} there, "
            f"{run.loss_fn.label_smoothing!r} here"
        )
    if ckpt.parameter_names != io._parameter_names(model, optimizer):
        return "the optimizer updates different parameters than the run that wrote it"
    want = _training_state(loader, ranks=run.ranks)
    have = ckpt.training
    if not isinstance(have.get("loader_epoch"), int):
        return "it records no data-loader epoch"
    if have.get("ranks", 1) != want["ranks"]:
        return (
            f"it was written by a run of {have.get('ranks', 1)} process(es), this one has "
            f"{want['ranks']}: resume with the same number (mpirun -n {have.get('ranks', 1)})"
        )
    for key, what in (
        ("samples", "training images"),
        ("classes", "classes"),
        ("batch_size", "batch size"),
        ("seed", "shuffle seed"),
        ("shuffle", "shuffling"),
        ("drop_last", "drop_last"),
        ("transform", "augmentations"),
    ):
        if have.get(key) != want[key]:
            return f"the {what} differ: {have.get(key)!r} there, {want[key]!r} here"
    return None


def _schedule_problem(saved, scheduler):
    """Why a checkpoint's schedule (its state_dict with "type", or None) cannot continue with
    `scheduler`, or None."""
    if saved is None or scheduler is None:
        if saved is None and scheduler is None:
            return None
        there = "none" if saved is None else saved.get("type")
        here = "none" if scheduler is None else type(scheduler).__name__
        return f"the learning-rate schedule differs: {there} there, {here} here"
    kind = type(scheduler).__name__
    if saved.get("type") != kind:
        return f"the learning-rate schedule differs: {saved.get('type')} there, {kind} here"
    mine = json.loads(json.dumps(scheduler.settings()))
    theirs = {k: saved.get(k) for k in mine}
    if theirs != mine:
        diff = [f"{k} {theirs[k]!r} there, {mine[k]!r} here" for k in mine if theirs[k] != mine[k]]
        return f"the {kind} settings differ: " + "; ".join(diff)
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


class TrainingWarning(UserWarning):
    """fit()'s "is it learning?" warnings (fit(..., warnings=False) turns them off)."""


class _Watch:
    """Watches a run for the usual ways training fails and warns once about each, saying what
    to try: a loss far above chance level from the start or one that has not fallen after the
    first few hundred steps (both: the learning rate), accuracy at chance,
    a loss that jumps (a learning rate too high, before it turns into NaN), and validation loss
    rising for several epochs while training loss falls (overfitting)."""

    EARLY, LATE = 50, 300  # the first steps' mean loss against that of steps LATE-EARLY..LATE
    PATIENCE = 3  # epochs of rising validation loss

    def __init__(self, classes, lr_of, history=()):
        self.classes, self.lr_of = classes, lr_of
        self.losses, self.said = [], set()
        self.epochs = list(history)  # a resumed run's epochs so far
        self.lrs = []  # the learning rate at the end of each epoch this run watched
        # A resumed run's first steps are not the run's first: its loss has already fallen.
        self.resumed = bool(self.epochs)

    def _warn(self, kind, message):
        if kind not in self.said:
            self.said.add(kind)
            warnings.warn(message, TrainingWarning, stacklevel=4)

    def batch(self, loss: float):
        losses = self.losses
        losses.append(loss)
        # A jump: the last 5 steps' mean loss at 3x the median of the 50 before them (one batch
        # of hard or mislabelled images alone does not make one).
        if len(losses) >= 25 and math.isfinite(loss):
            before = sorted(losses[-55:-5])
            median = before[len(before) // 2]
            recent = sum(losses[-5:]) / 5
            if recent > 3 * median and recent > median + 1.0:
                self._warn(
                    "jump",
                    f"the loss jumped from about {median:.3g} to {recent:.3g} around step "
                    f"{len(losses)}: the learning rate ({self.lr_of():.3g}) is probably too "
                    "high; lower it (by 3-10x) before the loss turns into NaN",
                )
        if len(losses) == self.EARLY and self.classes:
            # Far above what guessing costs (ln classes) from the start: the steps overshoot.
            typical = sorted(losses)[len(losses) // 2]
            chance = math.log(max(self.classes, 2))
            if typical > 3 * chance:
                self._warn(
                    "high",
                    f"the loss has stayed around {typical:.3g} in the first {self.EARLY} steps, "
                    f"far above the {chance:.3g} of guessing: the learning rate "
                    f"({self.lr_of():.3g}) is probably too high; lower it (by 3-10x)",
                )
        if len(losses) == self.LATE and not self.resumed:
            first = sum(losses[: self.EARLY]) / self.EARLY
            last = sum(losses[-self.EARLY :]) / self.EARLY
            if not last < 0.97 * first:
                self._warn(
                    "flat",
                    f"the loss has not fallen in the first {self.LATE} steps ({first:.4g} -> "
                    f"{last:.4g}): try a larger learning rate (now {self.lr_of():.3g}), check that "
                    "the labels belong to the images, and that the inputs are normalised",
                )

    def epoch(self, record):
        self.epochs.append(record)
        self.lrs.append(self.lr_of())
        chance = 1.0 / max(self.classes, 1)
        if len(self.losses) >= self.LATE and record["accuracy"] <= 1.5 * chance:
            self._warn(
                "chance",
                f"training accuracy is {record['accuracy']:.3f} after {len(self.losses)} steps, "
                f"about chance (1/{self.classes} = {chance:.3f}): the network is not learning; "
                "check the labels, the learning rate and the input normalisation",
            )
        tail = self.epochs[-(self.PATIENCE + 1) :]
        if len(tail) == self.PATIENCE + 1 and all("val_loss" in r for r in tail):
            val = [r["val_loss"] for r in tail]
            train = [r["loss"] for r in tail]
            # Not while a schedule still holds the rate high (above half its peak) and moving:
            # a one-cycle run's validation loss swings near its peak and settles as the rate
            # anneals, which is no overfitting.
            lrs = self.lrs[-(self.PATIENCE + 1) :]
            scheduled_high = len(set(lrs)) > 1 and lrs[-1] > 0.5 * max(self.lrs)
            rising = all(b > a for a, b in zip(val, val[1:])) and train[-1] < train[0]
            if rising and not scheduled_high:
                self._warn(
                    "overfit",
                    f"validation loss has risen for {self.PATIENCE} epochs ({val[0]:.4g} -> "
                    f"{val[-1]:.4g}) while training loss fell: the model is overfitting; try "
                    "augmentation (transform=, --augment), weight decay, or fewer epochs",
                )


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


def _epochs(
    model, loader, val_loader, run, epochs, progress, checkpoint, history, on_epoch_end, watch
):
    device, classes = model.device, _output_features(model)
    optimizer, scheduler, loss_fn = run.optimizer, run.scheduler, run.loss_fn
    per_batch = scheduler is not None and scheduler.per_batch
    world, reducer = run.world, run.reducer
    # A distributed rank's part of each global batch comes with its share of it, by which its
    # loss gradient is weighted so that the summed gradients are the global batch's mean.
    batches = loader if world is None else world.shard(loader)
    for epoch in range(len(history) + 1, epochs + 1):
        model.train()
        start = time.perf_counter()
        tally = _Tally(device)
        bar = _progress(len(batches), f"epoch {epoch}/{epochs}", progress)
        for batch in batches:
            x, y = _on(device, batch[0], batch[1], classes)
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            tally.add(logits, y, loss)
            if tally.due():
                tally.check(epoch, optimizer.lr)
            if watch is not None and isinstance(loss, float):  # CPU: the loss is at hand
                watch.batch(loss)
            grad = loss_fn.backward()
            if reducer is not None:
                grad *= np.float32(batch[2])
                reducer.start()
            model.backward(grad)
            if reducer is not None:
                reducer.finish()
            optimizer.step()
            if per_batch:
                scheduler.step()
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
        if world is not None:
            _reduce_tally(world, tally, "the training loss's sum")
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
        if world is not None and not any(getattr(m, "sync", None) for m in model.modules()):
            world.average_buffers(model)  # each rank's BatchNorm statistics -> their mean
        if val_loader is not None:
            scores = evaluate(model, val_loader, _world=world)
            record["val_loss"], record["val_accuracy"] = scores["loss"], scores["accuracy"]
        history.append(record)
        if progress:
            _print_epoch(record, epochs)
        if watch is not None:
            watch.epoch(record)
        if scheduler is not None and not per_batch:
            scheduler.step()
        if checkpoint is not None and (world is None or world.rank == 0):
            _save_checkpoint(checkpoint, model, run, loader, history, epoch)
        if on_epoch_end is not None:
            on_epoch_end(history)


def _save_checkpoint(path, model, run, loader, history, epoch):
    from . import io

    optimizer = run.optimizer
    for name, array in model.state_dict().items():
        if not np.isfinite(array).all():
            # The last batch's step overflowed: keep the previous epoch's checkpoint.
            raise FloatingPointError(
                f"the weights ({name}) are no longer finite at the end of epoch {epoch}: "
                f"training diverged; try a lower learning rate (lr is {optimizer.lr}); "
                f"the checkpoint {path} was left as it was"
            )
    io.save_checkpoint(
        path, model, optimizer, epoch=epoch, history=history, **_training_state(loader, run)
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


def _reduce_tally(world, tally, what) -> None:
    """A distributed tally's sums -> those of all ranks."""
    sums = np.array([tally.loss_sum, tally.correct, tally.seen], np.float64)
    world.allreduce(sums, what)
    tally.loss_sum, tally.correct, tally.seen = float(sums[0]), int(sums[1]), int(sums[2])


def evaluate(model, data, batch_size=256, *, _world=None) -> dict:
    """Mean cross-entropy loss and accuracy of `model` on labelled data.

    The model runs in eval mode and is left in the mode it was found in, also when several
    threads evaluate (or predict with) one model at once.

    Args:
        model: a trained network (on the CPU or a GPU).
        data: a data set, a DataLoader, or an (images, labels) pair of arrays.
        batch_size: images per forward pass; ignored when `data` is a DataLoader.

    Returns:
        {"loss": mean loss over all images, "accuracy": the fraction classified right}.

    Example:
        >>> fastcnn.evaluate(model, fastcnn.data.FashionMNIST(train=False))
        {'loss': 0.24..., 'accuracy': 0.91...}
    """
    loader = _loader(data, batch_size)
    loss_fn = nn.CrossEntropyLoss()
    device, classes = model.device, _output_features(model)
    tally = _Tally(device)
    # In a distributed run (fit's validation), each rank evaluates its part of the data.
    batches = loader if _world is None else _world.shard_for_eval(loader)
    with _eval_mode(model):
        for x, y in batches:
            x, y = _on(device, x, y, classes)
            logits = model(x)
            tally.add(logits, y, loss_fn(logits, y))
    tally.read()
    if _world is not None:
        _reduce_tally(_world, tally, "the validation loss's sum")
    if tally.seen == 0:
        raise ValueError("evaluate: the data set is empty")
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
    """Class probabilities for one image or a batch.

    Image files and raw uint8 pixels go through the model's own preprocessing (size, channels,
    mean, std: what it was trained with, stored in its model file), as in training. Puts the
    model in eval mode (and leaves it there); several threads may predict with one model at
    once.

    Args:
        model: a trained network, e.g. from fastcnn.load().
        images: an image file path or a list of them; raw uint8 pixels, (H, W), (H, W, C),
            (N, H, W) or (N, H, W, C); or float32 (C, H, W) or (N, C, H, W) arrays already
            preprocessed.
        batch_size: images per forward pass.

    Returns:
        float32 array (N, classes): the softmax of the model's outputs, one row per image.
        model.classes names the columns.

    Raises:
        ValueError: file paths or uint8 pixels for a model without preprocessing, an image
            that cannot be read, or no images.

    Example:
        >>> model = fastcnn.load("pets.safetensors")
        >>> probs = fastcnn.predict(model, ["cat.jpg", "dog.png"])
        >>> [model.classes[i] for i in probs.argmax(axis=1)]
        ['cat', 'dog']
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
