"""GPU benchmarks: SeedNet's layers (forward and backward, batch 64) and SGEMM 2048^3 on the
device, then SeedNet training and inference images/s, fastcnn's CUDA ops against PyTorch's CUDA
kernels when torch with CUDA is importable. Without a GPU (or a CUDA build) it says so and exits 0.

    python bench/gpu.py                 # everything (a minute)
    python bench/gpu.py --quick         # few repeats: a check that it runs

One JSON line per measurement ("bench": "gpu_kernel" / "gpu_train"), then a table. Times are of
whole calls with the device synchronised after each (so launch overhead counts, as it does in
training). Each op's result is compared with fastcnn's CPU op on the same inputs ("valid").
"""

from __future__ import annotations

import argparse
import sys

import harness
import numpy as np

import fastcnn
from fastcnn import models, nn, ops

# SeedNet at batch N on 1x28x28: (name, x shape, weight shape or pool size, padding).
LAYERS = [
    ("conv1", (1, 28, 28), (32, 1, 5, 5), 2),
    ("pool1", (32, 28, 28), 2, None),
    ("conv2", (32, 14, 14), (64, 32, 5, 5), 2),
    ("pool2", (64, 14, 14), 2, None),
    ("fc1", (64 * 7 * 7,), (128, 64 * 7 * 7), None),
    ("fc2", (128,), (10, 128), None),
]


def synchronizer(device):
    """A function that waits for the device's queued work (nothing to wait for on others)."""
    if device == "cuda":
        return fastcnn._C.cuda.synchronize
    return lambda: None


def _close(got, want, rtol=1e-3):
    got, want = ops.to_numpy(got), np.asarray(want)
    scale = max(float(np.abs(want).max(initial=0)), 1e-30)
    err = float(np.abs(got - want).max(initial=0)) / scale
    return err <= rtol, err


def layer_cases(device, batch, rng):
    """(op, pass, flops, fn_on_device, check) for every SeedNet layer and SGEMM."""
    cases = []
    for name, xs, wshape, pad in LAYERS:
        x = rng.standard_normal((batch, *xs)).astype(np.float32)
        gx = ops.to_device(x, device)
        if name.startswith("conv"):
            w = (rng.standard_normal(wshape) * 0.1).astype(np.float32)
            b = rng.standard_normal(wshape[0]).astype(np.float32)
            gw, gb = ops.to_device(w, device), ops.to_device(b, device)
            y = ops.conv2d_forward(x, w, b, 1, pad)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            gdy = ops.to_device(dy, device)
            flops = 2.0 * y.size * np.prod(wshape[1:])
            need_dx = name != "conv1"
            want = ops.conv2d_backward(x, w, dy, 1, pad, need_dx)
            cases += [
                (
                    name,
                    "fwd",
                    flops,
                    lambda gx=gx, gw=gw, gb=gb, p=pad: ops.conv2d_forward(gx, gw, gb, 1, p),
                    lambda gx=gx, gw=gw, gb=gb, p=pad, y=y: _close(
                        ops.conv2d_forward(gx, gw, gb, 1, p), y
                    ),
                ),
                (
                    name,
                    "bwd",
                    flops * (2 if need_dx else 1),
                    lambda gx=gx, gw=gw, gdy=gdy, p=pad, d=need_dx: ops.conv2d_backward(
                        gx, gw, gdy, 1, p, d
                    ),
                    lambda gx=gx, gw=gw, gdy=gdy, p=pad, d=need_dx, want=want: _close(
                        ops.conv2d_backward(gx, gw, gdy, 1, p, d)[1], want[1]
                    ),
                ),
            ]
        elif name.startswith("pool"):
            y, idx = ops.maxpool2d_forward(x, 2)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            gy, gidx = ops.maxpool2d_forward(gx, 2)
            gdy = ops.to_device(dy, device)
            want = ops.maxpool2d_backward(dy, idx, x.shape)
            cases += [
                (
                    name,
                    "fwd",
                    None,
                    lambda gx=gx: ops.maxpool2d_forward(gx, 2),
                    lambda gx=gx, y=y: _close(ops.maxpool2d_forward(gx, 2)[0], y),
                ),
                (
                    name,
                    "bwd",
                    None,
                    lambda gdy=gdy, gidx=gidx, s=x.shape: ops.maxpool2d_backward(gdy, gidx, s),
                    lambda gdy=gdy, gidx=gidx, s=x.shape, want=want: _close(
                        ops.maxpool2d_backward(gdy, gidx, s), want
                    ),
                ),
            ]
        else:
            w = (rng.standard_normal(wshape) * 0.05).astype(np.float32)
            b = rng.standard_normal(wshape[0]).astype(np.float32)
            gw, gb = ops.to_device(w, device), ops.to_device(b, device)
            y = ops.linear_forward(x, w, b)
            flops = 2.0 * batch * wshape[0] * wshape[1]
            cases.append(
                (
                    name,
                    "fwd",
                    flops,
                    lambda gx=gx, gw=gw, gb=gb: ops.linear_forward(gx, gw, gb),
                    lambda gx=gx, gw=gw, gb=gb, y=y: _close(ops.linear_forward(gx, gw, gb), y),
                )
            )
    n = 2048
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    ga, gb = ops.to_device(a, device), ops.to_device(b, device)
    cases.append(
        (
            "sgemm",
            "fwd",
            2.0 * n**3,
            lambda: ops.sgemm(ga, gb),
            lambda: _close(ops.sgemm(ga, gb), a @ b),
        )
    )
    return cases


def torch_cases(torch, batch, rng):
    """The same layers on PyTorch's CUDA kernels: {(op, pass): fn}."""
    F, dev = torch.nn.functional, "cuda"
    out = {}
    for name, xs, wshape, pad in LAYERS:
        x = torch.randn((batch, *xs), device=dev)
        if name.startswith("conv"):
            w, b = torch.randn(wshape, device=dev), torch.randn(wshape[0], device=dev)
            y = F.conv2d(x, w, b, padding=pad)
            dy = torch.randn_like(y)
            mask = [name != "conv1", True, True]
            out[(name, "fwd")] = lambda x=x, w=w, b=b, p=pad: F.conv2d(x, w, b, padding=p)
            out[(name, "bwd")] = lambda x=x, w=w, dy=dy, p=pad, m=mask: (
                torch.ops.aten.convolution_backward(
                    dy, x, w, [w.shape[0]], [1, 1], [p, p], [1, 1], False, [0, 0], 1, m
                )
            )
        elif name.startswith("pool"):
            y, idx = F.max_pool2d(x, 2, return_indices=True)
            dy = torch.randn_like(y)
            out[(name, "fwd")] = lambda x=x: F.max_pool2d(x, 2, return_indices=True)
            out[(name, "bwd")] = lambda x=x, dy=dy, idx=idx: (
                torch.ops.aten.max_pool2d_with_indices_backward(
                    dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
                )
            )
        else:
            w, b = torch.randn(wshape, device=dev), torch.randn(wshape[0], device=dev)
            out[(name, "fwd")] = lambda x=x, w=w, b=b: F.linear(x, w, b)
    a, b = torch.randn(2048, 2048, device=dev), torch.randn(2048, 2048, device=dev)
    out[("sgemm", "fwd")] = lambda: a @ b
    return out


def training_rate(device, batch, steps, sync, timing):
    """SeedNet training and inference images/s on `device` (fastcnn)."""
    nn.manual_seed(0)
    model = models.seednet().to(device)
    opt = fastcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = ops.to_device(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), device)
    y = ops.to_device(rng.integers(0, 10, batch), device)
    model.requires_input_grad = False

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        sync()

    def infer():
        model(x)
        sync()

    rates = {}
    for mode, fn in (("train", step), ("infer", infer)):
        model.train(mode == "train")
        m = harness.measure(fn, warmup=timing["warmup"], repeats=steps, min_time=timing["min_time"])
        rates[mode] = batch / m["median_s"]
    return rates


def main(argv=None, device="cuda"):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="few repeats: a check that it runs")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    if device == "cuda" and not fastcnn.cuda.is_available():
        print("bench/gpu.py: no GPU here (or fastcnn built without CUDA): nothing to measure")
        return 0
    timing = (
        {"warmup": 1, "repeats": 3, "min_time": 0.0}
        if args.quick
        else {"warmup": 5, "repeats": 20, "min_time": 0.3}
    )
    sync = synchronizer(device)
    torch = harness.try_import_torch()
    if torch is not None and not (device == "cuda" and torch.cuda.is_available()):
        torch = None
    rng = np.random.default_rng(0)
    reference = torch_cases(torch, args.batch, rng) if torch is not None else {}
    rows = []
    for op, pas, flops, fn, check in layer_cases(device, args.batch, rng):
        valid, err = check()
        m = harness.measure(lambda fn=fn: (fn(), sync()), **timing)
        record = {
            "bench": "gpu_kernel",
            "device": device,
            "op": op,
            "pass": pas,
            "median_ms": m["median_s"] * 1e3,
            "gflops": flops / m["median_s"] * 1e-9 if flops else None,
            "valid": valid,
            "max_rel_err": err,
            "torch_ms": None,
            "ratio_vs_torch": None,
        }
        if (op, pas) in reference:
            tfn = reference[(op, pas)]
            t = harness.measure(lambda tfn=tfn: (tfn(), torch.cuda.synchronize()), **timing)
            record["torch_ms"] = t["median_s"] * 1e3
            record["ratio_vs_torch"] = t["median_s"] / m["median_s"]
        harness.emit(record)
        rows.append(
            [
                op,
                pas,
                record["median_ms"],
                record["gflops"],
                record["torch_ms"],
                record["ratio_vs_torch"],
                "yes" if valid else "NO",
            ]
        )
    harness.print_table(
        f"== {device} kernels, batch {args.batch} (ratio > 1: fastcnn faster) ==",
        ["op", "pass", "fastcnn ms", "GFLOP/s", "torch ms", "x torch", "valid"],
        rows,
    )
    rates = training_rate(device, args.batch, 3 if args.quick else 30, sync, timing)
    for mode, rate in rates.items():
        harness.emit(
            {
                "bench": "gpu_train",
                "device": device,
                "mode": mode,
                "batch": args.batch,
                "images_per_second": rate,
            }
        )
    print(
        f"SeedNet on {device}, batch {args.batch}: training {rates['train']:,.0f} images/s, "
        f"inference {rates['infer']:,.0f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
