"""Is this machine in its fast or its slow minutes? A probe for shared virtual machines.

    python bench/machine_modes.py                # 14 rounds, about a second each
    python bench/machine_modes.py --rounds 60    # a few minutes: long enough to see both

Each round times, at all threads and then at one, the median of a few ResNet-8 training steps
(1x28x28, batch 64), a 1024^3 SGEMM on fastcnn's kernels and a 64 MB ops.add, and prints one
JSON line. On the 2-vCPU machines fastcnn is tuned on, the two-thread figures switch for minutes
at a time between two levels while the one-thread ones stay put: SGEMM's two-thread speed-up
falls from ~1.9 to ~1.6, while the copy does not slow. The two vCPUs then sit on cores that share
no L3 (a cache line's round trip between them ~350 ns, against ~65): what a thread reads of the
other's writes comes from the other core (SGEMM's shared packed panels, say), while each core's
own arithmetic and its streams from memory keep their speed. A figure from bench/train.py is
worth quoting with the mode it met; see bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import harness  # first: puts this checkout's fastcnn on sys.path when it is built in place
import numpy as np


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def probes(size: int, gemm_n: int, add_mb: int):
    """{name: (fn, repeats)}: a ResNet-8 step, an SGEMM, a large add."""
    from fastcnn import models, nn, ops, optim

    rng = np.random.default_rng(0)
    nn.manual_seed(0)
    model = models.resnet8(1, 10)
    model.requires_input_grad = False
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = rng.standard_normal((64, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    a = rng.standard_normal((gemm_n, gemm_n)).astype(np.float32)
    big = np.ones(add_mb << 18, np.float32)
    other = big.copy()
    return {
        "resnet8_step_ms": (step, 15),
        "sgemm_ms": (lambda: ops.sgemm(a, a), 5),
        "add_ms": (lambda: ops.add(big, other, out=big), 5),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--threads", type=int, help="'all threads' (default: os.cpu_count())")
    ap.add_argument("--size", type=int, default=28, help="ResNet-8's image side")
    ap.add_argument("--gemm", type=int, default=1024, help="SGEMM's side")
    ap.add_argument("--add-mb", type=int, default=64, help="the add's array, MB")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    tests = probes(args.size, args.gemm, args.add_mb)
    for r in range(args.rounds):
        record = {"bench": "machine_mode", "round": r, "time": time.strftime("%H:%M:%S")}
        for t in sorted({threads, 1}, reverse=True):
            harness.set_threads(t)
            for name, (fn, repeats) in tests.items():
                record[f"{name}_{t}t"] = median_ms(fn, repeats)
        if threads > 1:
            record["sgemm_speedup"] = record["sgemm_ms_1t"] / record[f"sgemm_ms_{threads}t"]
        harness.emit(record)
    harness.set_threads(threads)


if __name__ == "__main__":
    main()
