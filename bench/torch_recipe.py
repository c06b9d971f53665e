"""PyTorch with the recipe of `fastcnn train --arch resnetN --augment ...`: the accuracy that
fastcnn's runs are compared with.

The same network (bench/train.py's torch_resnet, PyTorch's default initialisation, as
fastcnn's), the same data (Fashion-MNIST's 60,000 training images, normalised by the training
set's mean and std, the 10,000 test images for evaluation), the same augmentation (a shift by up
to 4 pixels with a black border, then a horizontal flip with probability 1/2: RandomCrop(28,
padding=4) and RandomHorizontalFlip), SGD with momentum 0.9 (Nesterov optional), weight decay,
OneCycleLR stepped every batch, cross-entropy with optional label smoothing; float32 throughout
(TF32 off). The augmentation runs on the device, batch by batch, so a GPU is not kept waiting.

    python bench/torch_recipe.py --device cuda --epochs 50 --lr 0.1 --nesterov \
        --weight-decay 5e-4 --label-smoothing 0.1

One JSON line per epoch (test accuracy, training loss and accuracy, images/s), then the final
test accuracy. Needs torch (the `bench` extra); reads Fashion-MNIST with fastcnn's loader (from
--data, else where `fastcnn train` finds it). `--limit N` trains and tests on the first N images
of each split: a check that it runs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from train import torch_resnet

from fastcnn import data

MEAN, STD = data.FASHION_MNIST_MEAN, data.FASHION_MNIST_STD


def augment(torch, x, shift, generator):
    """x: uint8 (B, C, H, W) on the device. A random shift by up to `shift` pixels in each
    direction (zero fill) and a horizontal flip of half the images, then normalised floats."""
    b, _, h, w = x.shape
    dev = x.device
    xp = torch.nn.functional.pad(x.float(), (shift, shift, shift, shift))
    oy = torch.randint(0, 2 * shift + 1, (b, 1), device=dev, generator=generator)
    ox = torch.randint(0, 2 * shift + 1, (b, 1), device=dev, generator=generator)
    flip = torch.rand((b, 1), device=dev, generator=generator) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, w - 1 - cols, cols) + ox
    rows = oy + torch.arange(h, device=dev)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return normalise(torch, out)


def normalise(torch, x):
    """uint8 (or integral float) pixels -> fastcnn's normalised floats for Fashion-MNIST."""
    return (x.float() * (1 / 255) - MEAN) * (1 / STD)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="OneCycleLR's peak")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--shift",
        type=int,
        default=4,
        help="largest shift of the augmentation (0: no augmentation, no flips either)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="the folder of the idx files (default: where fastcnn looks)")
    p.add_argument("--tag", default="", help="copied into every JSON line")
    p.add_argument(
        "--limit", type=int, help="train and test on the first LIMIT images of each (a check)"
    )
    args = p.parse_args(argv)

    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    def split(train):  # fastcnn's own loader: the same uint8 pixels and labels
        ds = data.FashionMNIST(root=args.data, train=train)
        labels = ds.labels[: args.limit].astype(np.int64)
        return torch.from_numpy(ds.raw[: args.limit]).to(dev), torch.from_numpy(labels).to(dev)

    x_train, y_train = split(True)
    x_test, y_test = split(False)
    model = torch_resnet(torch, args.depth, 1, 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          nesterov=args.nesterov, weight_decay=args.weight_decay)  # fmt: skip
    n = len(x_train)
    steps = -(-n // args.batch_size)  # the last, smaller batch kept, as fastcnn's DataLoader
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps)  # fmt: skip
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, device=dev, generator=gen)
        total_loss = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = x_train[idx]
            x = augment(torch, x, args.shift, gen) if args.shift else normalise(torch, x)
            y = y_train[idx]
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(normalise(torch, x_test[j : j + 1000])).argmax(1)
                            == y_test[j : j + 1000]).sum())
                       for j in range(0, len(x_test), 1000))  # fmt: skip
        accuracy = hits / len(x_test)
        line = {"bench": "torch_recipe", "tag": args.tag, "epoch": epoch,
                "test_accuracy": accuracy, "train_loss": float(total_loss) / n,
                "train_accuracy": int(correct) / n, "images_per_second": n / seconds}  # fmt: skip
        print(json.dumps(line), flush=True)
    print(f"{args.tag or 'torch'}: test accuracy {accuracy:.2%} after {args.epochs} epochs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
