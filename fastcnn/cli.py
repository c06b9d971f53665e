"""The `fastcnn` command: train, eval, predict, export, doctor, bench, info."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

DEFAULT_DATA = "fashion-mnist"


def _load_data(spec, image_size, channels, *, train=True, reference=None, seed=0):
    """(train set, validation set or None) for DATA: 'fashion-mnist' or an image folder.

    A folder with train/ (and val/ or test/) sub-folders is used as split; otherwise, with
    train=True, a seeded tenth of it is held out for validation. reference: a dataset or model
    whose classes and preprocessing the loaded data must reuse (eval).
    """
    from . import data

    if spec == DEFAULT_DATA:
        return data.FashionMNIST(train=train), (data.FashionMNIST(train=False) if train else None)
    if not os.path.isdir(spec):
        raise FileNotFoundError(
            f"DATA must be '{DEFAULT_DATA}' or an image folder; {spec} is neither"
        )
    prep = getattr(reference, "preprocessing", None)
    kw = {"image_size": image_size, "channels": channels}
    if prep is not None:
        kw = {
            "image_size": prep["image_size"],
            "channels": prep["channels"],
            "mean": prep["mean"],
            "std": prep["std"],
        }
    classes = getattr(reference, "classes", None)
    sub = {name: os.path.join(spec, name) for name in ("train", "val", "test")}
    if os.path.isdir(sub["train"]) and train:
        train_set = data.ImageFolder(sub["train"], classes=classes, **kw)
        val_dir = next((sub[n] for n in ("val", "test") if os.path.isdir(sub[n])), None)
        val_set = None
        if val_dir:
            p = train_set.preprocessing
            val_set = data.ImageFolder(
                val_dir,
                p["image_size"],
                p["channels"],
                mean=p["mean"],
                std=p["std"],
                classes=train_set.classes,
            )
        return train_set, val_set
    if not train:
        folder = next((sub[n] for n in ("test", "val") if os.path.isdir(sub[n])), spec)
        return data.ImageFolder(folder, classes=classes, **kw), None
    full = data.ImageFolder(spec, classes=classes, **kw)
    if len(full) < 20:
        return full, None
    order = np.random.default_rng(seed).permutation(len(full))
    n_val = max(1, len(full) // 10)
    parts = []
    for idx in (order[n_val:], order[:n_val]):
        # From the uint8 pixels with the folder's statistics: the same floats, a quarter the size.
        pixels = full.raw[idx].transpose(0, 2, 3, 1)
        part = data.ArrayDataset(
            pixels, full.labels[idx], classes=full.classes, mean=full.mean, std=full.std
        )
        parts.append(part)
    return parts[0], parts[1]


def default_checkpoint(out):
    """Where `train --out OUT` keeps its checkpoint: OUT with .ckpt before .safetensors."""
    root, ext = os.path.splitext(out)
    if ext != ".safetensors":
        root = out
    return root + ".ckpt.safetensors"


def make_optimizer(args, model, steps_per_epoch):
    """The optimizer and learning-rate schedule (or None) that `train`'s options ask for."""
    from . import optim
    from .optim import lr_scheduler

    params = model.parameters()
    decay = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        opt = optim.SGD(params, args.lr, args.momentum, nesterov=args.nesterov, **decay)
    else:
        if args.nesterov:
            raise ValueError("--nesterov is for --optimizer sgd")
        cls = optim.Adam if args.optimizer == "adam" else optim.AdamW
        opt = cls(params, args.lr, **decay)
    if args.schedule == "step":  # a tenth of the rate after each third of the epochs
        sched = lr_scheduler.StepLR(opt, step_size=max(1, args.epochs // 3), gamma=0.1)
    elif args.schedule == "cosine":
        sched = lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    elif args.schedule == "onecycle":
        sched = lr_scheduler.OneCycleLR(
            opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
        )
    else:
        sched = None
    return opt, sched


def cmd_train(args):
    import fastcnn

    from . import models, nn

    fastcnn.ops._device(args.device)
    world = fastcnn.distributed.world()  # under mpirun: rank 0 alone prints and writes
    lead = world is None or world.rank == 0
    say = print if lead else (lambda *a, **k: None)
    defaults = (28, 1) if args.data == DEFAULT_DATA else (64, 3)
    image_size = defaults[0] if args.image_size is None else args.image_size  # 0 is an error
    channels = args.channels or defaults[1]
    if image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {image_size}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)  # fail now, not after the training
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"cannot write the model to {args.out}: {out_dir} is not writable")
    checkpoint = args.checkpoint or default_checkpoint(args.out)
    checkpoint_dir = os.path.dirname(os.path.abspath(checkpoint))
    os.makedirs(checkpoint_dir, exist_ok=True)
    if not os.access(checkpoint_dir, os.W_OK):
        raise PermissionError(
            f"cannot write the checkpoint {checkpoint}: {checkpoint_dir} is not writable"
        )
    if args.resume and not os.path.exists(checkpoint):
        say(f"no checkpoint at {checkpoint}: training from the start", flush=True)
    t0 = time.perf_counter()
    train_set, val_set = _load_data(args.data, image_size, channels, seed=args.seed)
    x0 = train_set[0][0]  # one image, (C, H, W): never the whole set as floats
    say(
        f"data: {len(train_set)} training images {tuple(x0.shape)}, "
        f"{len(train_set.classes)} classes"
        + (f", {len(val_set)} test images" if val_set is not None else "")
        + f" ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    nn.manual_seed(args.seed)
    model = models.ARCHITECTURES[args.arch](
        in_channels=x0.shape[0], num_classes=len(train_set.classes), image_size=x0.shape[1:]
    ).to(args.device)
    # (a batch size below 1 is refused by fit, with the other checks)
    ranks = 1 if world is None else world.size
    steps = fastcnn.distributed.steps_per_epoch(len(train_set), max(1, args.batch_size), ranks)
    opt, sched = make_optimizer(args, model, steps)
    if world is not None:
        say(
            f"distributed: {world.size} ranks on {len({h for h, _ in world.peers})} "
            f"machine(s), {fastcnn.get_num_threads()} thread(s) each; each batch of "
            f"{args.batch_size} split among them",
            flush=True,
        )
    on_epoch_end = None
    if args.plots and lead:
        from . import plot

        plot._pyplot()  # say now, not after the training, that matplotlib is missing
        os.makedirs(args.plots, exist_ok=True)
        on_epoch_end = lambda h: plot.curves(h, os.path.join(args.plots, "curves.png"))  # noqa: E731
    transform = None
    if args.augment:
        from . import augment

        kind = "small" if args.data == DEFAULT_DATA else "photo"
        transform = augment.default(kind, tuple(x0.shape[1:]))
    history = fastcnn.fit(
        model,
        train_set,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=opt,
        scheduler=sched,
        label_smoothing=args.label_smoothing,
        transform=transform,
        val=val_set,
        seed=args.seed,
        progress=not args.quiet,
        checkpoint=checkpoint,
        resume=args.resume,
        on_epoch_end=on_epoch_end,
        sync_batchnorm=args.sync_bn,
    )
    if not lead:
        return
    fastcnn.save(model, args.out)
    from . import plot

    csv_path = history_csv_path(args.out)
    plot.write_history_csv(history, csv_path)
    if args.plots:
        _model_plots(model, val_set, args.plots)
    if not args.checkpoint and os.path.abspath(checkpoint) != os.path.abspath(args.out):
        # The default checkpoint has served its purpose; one the user named stays.
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint)
    last = history[-1]
    total = sum(r["seconds"] for r in history)
    summary = f"trained {args.epochs} epoch{'' if args.epochs == 1 else 's'} in {total:.1f} s"
    if "val_accuracy" in last:
        summary += f"; test accuracy {last['val_accuracy']:.4f}"
    print(f"{summary}; model saved to {args.out}")


def history_csv_path(out):
    """Where `train --out OUT` writes the per-epoch history: OUT with .csv for .safetensors."""
    root, ext = os.path.splitext(out)
    return (root if ext == ".safetensors" else out) + ".history.csv"


def _model_plots(model, dataset, folder):
    """The confusion matrix and misclassified grid of `model` on `dataset`, and its filters."""
    from . import plot

    written = [plot.filters(model, os.path.join(folder, "filters.png"))]
    if dataset is not None:
        written.insert(
            0, plot.confusion_matrix(model, dataset, os.path.join(folder, "confusion.png"))
        )
        written.insert(
            1, plot.misclassified(model, dataset, os.path.join(folder, "misclassified.png"))
        )
    print("plots: " + ", ".join(written))


def cmd_doctor(args):
    from . import data

    if args.image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {args.image_size}")
    print(data.doctor(args.data, image_size=args.image_size)["text"])


def cmd_export(args):
    import fastcnn

    model = fastcnn.load(args.model)
    print(f"wrote {fastcnn.export_onnx(model, args.out)}")


def cmd_eval(args):
    import fastcnn

    model = fastcnn.load(args.model).to(args.device)
    if args.plots:
        from . import plot

        plot._pyplot()
    dataset, _ = _load_data(args.data, None, None, train=False, reference=model)
    scores = fastcnn.evaluate(model, dataset)
    print(
        f"{args.data}: {len(dataset)} images, loss {scores['loss']:.4f}, "
        f"accuracy {scores['accuracy']:.4f}"
    )
    if args.plots:
        _model_plots(model, dataset, args.plots)


def cmd_predict(args):
    import fastcnn

    model = fastcnn.load(args.model).to(args.device)
    classes = model.classes
    for path in args.images:
        probs = fastcnn.predict(model, path)[0]
        k = int(probs.argmax())
        label = classes[k] if classes and k < len(classes) else str(k)
        print(f"{path}\t{label}\t{probs[k]:.4f}")


def cmd_bench(args):
    import fastcnn

    from . import models, nn, optim

    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    nn.manual_seed(0)
    model = models.seednet()
    model.requires_input_grad = False
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)
    times = []
    for _ in range(args.steps + 3):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        times.append(time.perf_counter() - t)
    median = float(np.median(times[3:]))
    print(
        f"seednet training, batch {args.batch_size}, {fastcnn.get_num_threads()} threads, "
        f"{fastcnn.ops.gemm_kernel()} GEMM: {median * 1e3:.1f} ms/step, "
        f"{args.batch_size / median:,.0f} images/s (median of {args.steps})"
    )
    print(
        "full benchmarks, side by side with PyTorch: python bench/kernels.py; python bench/train.py"
    )


def cmd_info(args):
    import fastcnn

    from . import _C, cuda

    print(f"fastcnn {fastcnn.__version__}")
    table = [k for k in fastcnn.ops.gemm_kernel_table() if k["supported"]]
    twins = [k["name"] for k in table if k["name"].startswith("generic-")]
    runs = [k["name"] for k in table if k["name"] not in twins]
    print(
        f"gemm kernel: {fastcnn.ops.gemm_kernel()} (this CPU runs: {', '.join(runs)}; "
        f"portable twins at the ISA kernels' geometry, for tests: {', '.join(twins)})"
    )
    print(f"threads: {fastcnn.get_num_threads()} (OpenMP: {'yes' if _C.has_openmp else 'no'})")
    algorithm = fastcnn.ops.conv_algorithm()
    print(
        f"conv algorithm: {algorithm}"
        + {
            "auto": " (Winograd for stride-1 layers: F(2x2, 5x5) for 5x5 ones, F(4x4, 3x3)"
            " for 3x3 ones, F(2x2, 3x3) for some of their weight gradients; direct sums"
            " elsewhere)",
            "indirect": " (direct sums, no Winograd)",
        }.get(algorithm, "")
    )
    if cuda.is_available():
        state = f"available ({_C.cuda_device_count()} device(s))"
    elif _C.has_cuda:
        state = "built with CUDA, but no GPU or driver answers"
    else:
        state = "not available (a CPU-only build)"
    print(f"cuda: {state}")


def build_parser():
    p = argparse.ArgumentParser(prog="fastcnn", description="Train CNNs for image recognition.")
    p.add_argument("--threads", type=int, help="kernel threads (default: all cores)")
    sub = p.add_subparsers(dest="command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--device", default="cpu", help="'cpu' (default) or 'cuda' (a CUDA build and a GPU)"
    )

    t = sub.add_parser("train", help="train a model and save it", parents=[where])
    t.add_argument(
        "data",
        nargs="?",
        default=DEFAULT_DATA,
        help=f"'{DEFAULT_DATA}' (default) or an image folder with one sub-folder per class",
    )
    t.add_argument(
        "--arch",
        default="seednet",
        choices=["seednet", "resnet8", "resnet20"],
        help="default seednet",
    )
    t.add_argument("--image-size", type=int, help="side in pixels (default 28 / 64 for folders)")
    t.add_argument("--channels", type=int, choices=[1, 3], help="1 grey, 3 RGB")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per step (default 64); under mpirun split among the ranks",
    )
    t.add_argument("--lr", type=float, default=0.01, help="learning rate (onecycle: its peak)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum (default 0.9)")
    t.add_argument(
        "--optimizer", default="sgd", choices=["sgd", "adam", "adamw"], help="default: sgd"
    )
    t.add_argument(
        "--weight-decay",
        type=float,
        help="L2 penalty (sgd, adam; default 0) or decoupled decay (adamw; default 0.01)",
    )
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    t.add_argument(
        "--schedule",
        default="none",
        choices=["none", "step", "cosine", "onecycle"],
        help="learning-rate schedule: step (x0.1 after each third of the epochs), cosine "
        "(to 0 at the last epoch), onecycle (up to --lr and down, momentum cycled; per batch)",
    )
    t.add_argument(
        "--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing"
    )
    t.add_argument(
        "--augment",
        action="store_true",
        help="augment the training images: Fashion-MNIST, shifts by up to 4 pixels and "
        "horizontal flips; folders, random resized crops (35-100%% of the area) and flips",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="model.safetensors")
    t.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="training state written after every epoch (default: OUT with .ckpt.safetensors, "
        "e.g. model.ckpt.safetensors, deleted once OUT is saved; a PATH given here is kept)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint if there is one (the same data and options but "
        "--epochs, which is the total; --quiet and --out may change too)",
    )
    t.add_argument(
        "--plots",
        metavar="DIR",
        help="write PNG pictures there: curves.png after every epoch, then confusion.png, "
        "misclassified.png (on the held-out images) and filters.png (needs fastcnn[plot])",
    )
    t.add_argument(
        "--sync-bn",
        action="store_true",
        help="under mpirun: BatchNorm statistics of the whole global batch, not each rank's",
    )
    t.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no per-epoch lines, only the summary",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy of a saved model on a data set", parents=[where])
    e.add_argument("model")
    e.add_argument("data", nargs="?", default=DEFAULT_DATA)
    e.add_argument(
        "--plots",
        metavar="DIR",
        help="write confusion.png, misclassified.png and filters.png there (fastcnn[plot])",
    )
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="label image files with a saved model", parents=[where])
    r.add_argument("model")
    r.add_argument("images", nargs="+")
    r.set_defaults(func=cmd_predict)

    d = sub.add_parser("doctor", help="check an image folder: classes, bad files, duplicates")
    d.add_argument("data", help="an image folder (one sub-folder per class, or train/ and val/)")
    d.add_argument("--image-size", type=int, default=64, help="the training size (default 64)")
    d.set_defaults(func=cmd_doctor)

    x = sub.add_parser("export", help="write a saved model as ONNX (needs fastcnn[onnx])")
    x.add_argument("model", help="a .safetensors model file")
    x.add_argument("out", help="the .onnx file to write")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="a short training-speed benchmark")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=20)
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="version, GEMM kernel, threads, CUDA")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    code = _run(args)
    if code:
        _stop_other_ranks()
    return code


def _stop_other_ranks() -> None:
    """Under mpirun, a rank that failed stops the job: the others would wait for it."""
    from . import distributed

    world = distributed.world()
    if world is not None:
        print(
            f"fastcnn: {world.name(world.rank)} failed: stopping all {world.size} ranks",
            file=sys.stderr,
        )
        world.abort(1)


def _run(args) -> int:
    try:
        if args.threads is not None:
            import fastcnn

            fastcnn.set_num_threads(args.threads)
        if args.command == "train":
            from . import distributed

            if distributed.launched_size() > 1:  # started by mpirun: train as one of its ranks
                distributed.init(threads=args.threads)
        args.func(args)
    except KeyboardInterrupt:
        print("fastcnn: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        RuntimeError,
        FloatingPointError,
        ImportError,
    ) as e:
        print(f"fastcnn: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # numpy's message says how much it failed to allocate
        print(f"fastcnn: error: out of memory ({e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
