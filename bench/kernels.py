"""Kernel benchmarks: every SeedNet layer, forward and backward, at batch 64, and SGEMM 2048^3.

    python bench/kernels.py            # all layers, 1 and all threads (a few minutes)
    python bench/kernels.py --quick    # all layers, all threads only, few repeats (seconds)
    python bench/kernels.py --only conv2,sgemm --threads 2

Each layer runs on fastcnn, on PyTorch (default NCHW) and, for the 4-D ops, on PyTorch with
channels_last tensors, on the same shapes and data and with the same thread count. fastcnn's
result is checked against PyTorch's before anything is timed ("valid"). Implementations are
measured in alternating rounds and the per-call times of all rounds pooled into one median.
Prints one JSON line per measurement, then a summary table and the targets. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os

import harness  # first: puts this checkout's fastcnn on sys.path when it is built in place
import numpy as np

from fastcnn import ops

torch = harness.try_import_torch()
if torch is not None:
    import torch.nn.functional as F

    CL = torch.channels_last


# ---- cases --------------------------------------------------------------------------------------
#
# A case is one op and one pass on one shape: its FLOP count (None for the memory-bound ops, which
# get bytes instead), a callable per implementation, and a check of fastcnn against PyTorch.


class Case:
    def __init__(self, op, pas, shape, impls, *, flops=None, nbytes=None, check=None):
        self.op, self.pas, self.shape = op, pas, shape
        self.impls = impls  # {"fastcnn": fn, "torch": fn, "torch_cl": fn}, each fn() -> result
        self.flops, self.nbytes, self.check = flops, nbytes, check


def _close(mine, ref, rtol=1e-3) -> tuple[bool, float]:
    """allclose at rtol with an absolute floor of rtol/10 of the reference's scale (sums of
    hundreds of products cancel to near zero); also the max error relative to that scale."""
    mine = np.asarray(mine, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, dtype=np.float64)
    if mine.shape != ref.shape:
        return False, float("inf")
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-30)
    ok = bool(np.allclose(mine, ref, rtol=rtol, atol=rtol * 0.1 * scale))
    return ok, float(np.abs(mine - ref).max() / scale) if ref.size else 0.0


def _all_close(pairs) -> tuple[bool, float]:
    results = [_close(m, r) for m, r in pairs]
    return all(ok for ok, _ in results), max(err for _, err in results)


def _t(a):
    return torch.from_numpy(a)


def _cl(t):
    return t.contiguous(memory_format=CL)


def _without_winograd(fn):
    """fn run on conv algorithm "indirect": fastcnn's direct sums, not Winograd's F(2x2, 5x5)."""

    def run():
        previous = ops.conv_algorithm()
        ops.set_conv_algorithm("indirect")
        try:
            return fn()
        finally:
            ops.set_conv_algorithm(previous)

    return run


def conv_cases(name, rng, N, C, H, W, OC, k, pad, need_dx):
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((OC, C, k, k), dtype=np.float32) / np.sqrt(C * k * k)).astype(
        np.float32
    )
    b = rng.standard_normal(OC, dtype=np.float32) * np.float32(0.1)
    OH, OW = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    dy = rng.standard_normal((N, OC, OH, OW), dtype=np.float32)
    fwd_flops = 2 * N * OC * C * k * k * OH * OW
    shape = f"x{N}x{C}x{H}x{W} w{OC}x{C}x{k}x{k} pad{pad}"
    fwd = {"fastcnn": lambda: ops.conv2d_forward(x, w, b, 1, pad)}
    bwd = {"fastcnn": lambda: ops.conv2d_backward(x, w, dy, 1, pad, need_dx)}
    if k == 5 and C >= 16:  # Winograd's layers: also without it, A/B in one run
        fwd["fastcnn_direct"] = _without_winograd(fwd["fastcnn"])
        bwd["fastcnn_direct"] = _without_winograd(bwd["fastcnn"])
    check_fwd = check_bwd = None
    if torch is not None:
        xt, wt, bt, dyt = _t(x), _t(w), _t(b), _t(dy)
        xc, wc, dyc = _cl(xt), _cl(wt), _cl(dyt)
        mask = [need_dx, True, True]

        def aten_bwd(dy_, x_, w_):
            return torch.ops.aten.convolution_backward(
                dy_, x_, w_, [OC], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask
            )

        fwd["torch"] = lambda: F.conv2d(xt, wt, bt, padding=pad)
        fwd["torch_cl"] = lambda: F.conv2d(xc, wc, bt, padding=pad)
        bwd["torch"] = lambda: aten_bwd(dyt, xt, wt)
        bwd["torch_cl"] = lambda: aten_bwd(dyc, xc, wc)

        def check_fwd():
            return _close(ops.conv2d_forward(x, w, b, 1, pad), F.conv2d(xt, wt, bt, padding=pad))

        def check_bwd():
            dx, dw, db = ops.conv2d_backward(x, w, dy, 1, pad, need_dx)
            rdx, rdw, rdb = aten_bwd(dyt, xt, wt)
            pairs = [(dw, rdw), (db, rdb)] + ([(dx, rdx)] if need_dx else [])
            return _all_close(pairs)

    bwd_pass = "bwd" if need_dx else "bwd_no_dx"
    return [
        Case(name, "fwd", shape, fwd, flops=fwd_flops, check=check_fwd),
        Case(name, bwd_pass, shape, bwd, flops=fwd_flops * (2 if need_dx else 1), check=check_bwd),
    ]


def relu_cases(name, rng, shape4):
    x = rng.standard_normal(shape4, dtype=np.float32)
    y = ops.relu_forward(x)
    dy = rng.standard_normal(shape4, dtype=np.float32)
    nbytes = 2 * x.nbytes  # read x, write y (backward: read y and dy, write dx: 3x)
    shape = "x" + "x".join(map(str, shape4))
    fwd = {"fastcnn": lambda: ops.relu_forward(x)}
    bwd = {"fastcnn": lambda: ops.relu_backward(y, dy)}
    check_fwd = check_bwd = None
    if torch is not None:
        xt, yt, dyt = _t(x), _t(y), _t(dy)
        fwd["torch"] = lambda: torch.relu(xt)
        bwd["torch"] = lambda: torch.ops.aten.threshold_backward(dyt, yt, 0)

        def check_fwd():
            return _close(ops.relu_forward(x), torch.relu(xt))

        def check_bwd():
            return _close(ops.relu_backward(y, dy), torch.ops.aten.threshold_backward(dyt, yt, 0))

    return [
        Case(name, "fwd", shape, fwd, nbytes=nbytes, check=check_fwd),
        Case(name, "bwd", shape, bwd, nbytes=nbytes * 3 // 2, check=check_bwd),
    ]


def pool_cases(name, rng, shape4):
    x = rng.standard_normal(shape4, dtype=np.float32)
    y, idx = ops.maxpool2d_forward(x, 2)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    nbytes = x.nbytes + y.nbytes  # x in, y out (indices not counted)
    shape = "x" + "x".join(map(str, shape4)) + " k2s2"
    fwd = {"fastcnn": lambda: ops.maxpool2d_forward(x, 2)}
    bwd = {"fastcnn": lambda: ops.maxpool2d_backward(dy, idx, x.shape)}
    check_fwd = check_bwd = None
    if torch is not None:
        xt, dyt = _t(x), _t(dy)
        xc, dyc = _cl(xt), _cl(dyt)
        yt, it = F.max_pool2d(xt, 2, return_indices=True)
        _, ic = F.max_pool2d(xc, 2, return_indices=True)

        def aten_bwd(dy_, x_, i_):
            return torch.ops.aten.max_pool2d_with_indices_backward(
                dy_, x_, [2, 2], [2, 2], [0, 0], [1, 1], False, i_
            )

        # Training keeps the indices for backward, so PyTorch computes them too.
        fwd["torch"] = lambda: F.max_pool2d(xt, 2, return_indices=True)
        fwd["torch_cl"] = lambda: F.max_pool2d(xc, 2, return_indices=True)
        bwd["torch"] = lambda: aten_bwd(dyt, xt, it)
        bwd["torch_cl"] = lambda: aten_bwd(dyc, xc, ic)

        def check_fwd():
            my, mi = ops.maxpool2d_forward(x, 2)
            ok, err = _close(my, yt)
            return ok and np.array_equal(mi, it.numpy()), err

        def check_bwd():
            return _close(ops.maxpool2d_backward(dy, idx, x.shape), aten_bwd(dyt, xt, it))

    return [
        Case(name, "fwd", shape, fwd, nbytes=nbytes, check=check_fwd),
        Case(name, "bwd", shape, bwd, nbytes=nbytes, check=check_bwd),
    ]


def linear_cases(name, rng, N, fin, fout):
    x = rng.standard_normal((N, fin), dtype=np.float32)
    w = (rng.standard_normal((fout, fin), dtype=np.float32) / np.sqrt(fin)).astype(np.float32)
    b = rng.standard_normal(fout, dtype=np.float32) * np.float32(0.1)
    dy = rng.standard_normal((N, fout), dtype=np.float32)
    fwd_flops = 2 * N * fin * fout
    shape = f"x{N}x{fin} w{fout}x{fin}"
    fwd = {"fastcnn": lambda: ops.linear_forward(x, w, b)}
    bwd = {"fastcnn": lambda: ops.linear_backward(x, w, dy)}
    check_fwd = check_bwd = None
    if torch is not None:
        xt, wt, bt, dyt = _t(x), _t(w), _t(b), _t(dy)

        def torch_bwd():  # what autograd runs for F.linear: dx, dw, db
            return dyt.mm(wt), dyt.t().mm(xt), dyt.sum(0)

        fwd["torch"] = lambda: F.linear(xt, wt, bt)
        bwd["torch"] = torch_bwd

        def check_fwd():
            return _close(ops.linear_forward(x, w, b), F.linear(xt, wt, bt))

        def check_bwd():
            return _all_close(zip(ops.linear_backward(x, w, dy), torch_bwd()))

    return [
        Case(name, "fwd", shape, fwd, flops=fwd_flops, check=check_fwd),
        Case(name, "bwd", shape, bwd, flops=2 * fwd_flops, check=check_bwd),
    ]


def loss_cases(name, rng, N, classes):
    logits = rng.standard_normal((N, classes), dtype=np.float32)
    labels = rng.integers(0, classes, N).astype(np.int64)
    impls = {"fastcnn": lambda: ops.softmax_cross_entropy(logits, labels)}
    check = None
    if torch is not None:
        lt, yt = _t(logits), _t(labels)
        one = torch.ones(())

        def torch_loss_and_grad():  # F.cross_entropy forward + backward, without autograd
            ls = torch.ops.aten._log_softmax(lt, 1, False)
            loss, total = torch.ops.aten.nll_loss_forward(ls, yt, None, 1, -100)
            g = torch.ops.aten.nll_loss_backward(one, ls, yt, None, 1, -100, total)
            return loss, torch.ops.aten._log_softmax_backward_data(g, ls, 1, torch.float32)

        impls["torch"] = torch_loss_and_grad

        def check():
            loss, grad = ops.softmax_cross_entropy(logits, labels)
            rloss, rgrad = torch_loss_and_grad()
            ok1, e1 = _close(np.float32(loss), rloss)
            ok2, e2 = _close(grad, rgrad)
            return ok1 and ok2, max(e1, e2)

    nbytes = 2 * logits.nbytes
    return [Case(name, "fwd+bwd", f"x{N}x{classes}", impls, nbytes=nbytes, check=check)]


def sgemm_case(rng, n):
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    impls = {"fastcnn": lambda: ops.sgemm(a, b), "numpy": lambda: a @ b}
    check = None
    if torch is not None:
        at, bt = _t(a), _t(b)
        impls["torch"] = lambda: torch.mm(at, bt)

        def check():
            return _close(ops.sgemm(a, b), torch.mm(at, bt))
    else:

        def check():
            return _close(ops.sgemm(a, b), a @ b)

    return Case("sgemm", "fwd", f"{n}x{n}x{n}", impls, flops=2 * n**3, check=check)


def seednet_cases(batch, rng):
    """SeedNet's layers at `batch` on 1x28x28 (conv1 skips dx, as the first layer in training)."""
    N = batch
    return [
        *conv_cases("conv1", rng, N, 1, 28, 28, 32, 5, 2, need_dx=False),
        *relu_cases("relu1", rng, (N, 32, 28, 28)),
        *pool_cases("pool1", rng, (N, 32, 28, 28)),
        *conv_cases("conv2", rng, N, 32, 14, 14, 64, 5, 2, need_dx=True),
        *relu_cases("relu2", rng, (N, 64, 14, 14)),
        *pool_cases("pool2", rng, (N, 64, 14, 14)),
        *linear_cases("fc1", rng, N, 64 * 7 * 7, 128),
        *relu_cases("relu3", rng, (N, 128)),
        *linear_cases("fc2", rng, N, 128, 10),
        *loss_cases("softmax_ce", rng, N, 10),
    ]


# ---- running ------------------------------------------------------------------------------------


def run_case(case, threads, timing) -> dict:
    """Checks, then times every implementation of `case` in alternating rounds; returns {impl:
    record} (peak_share is filled in, and the records emitted, once the peak is known)."""
    valid, err = case.check() if case.check is not None else (None, None)
    pooled = {impl: [] for impl in case.impls}
    for _ in range(timing["rounds"]):
        for impl, fn in case.impls.items():
            m = harness.measure(
                fn, warmup=timing["warmup"], repeats=timing["repeats"], min_time=timing["min_time"]
            )
            pooled[impl] += m["times"]
    records = {}
    for impl, times in pooled.items():
        m = harness.summarize(times)
        gflops = case.flops / m["median_s"] * 1e-9 if case.flops else None
        records[impl] = {
            "bench": "kernel",
            "op": case.op,
            "pass": case.pas,
            "shape": case.shape,
            "threads": threads,
            "impl": impl,
            "median_ms": m["median_s"] * 1e3,
            "min_ms": m["min_s"] * 1e3,
            "repeats": m["repeats"],
            "gflops": gflops,
            "gbs": case.nbytes / m["median_s"] * 1e-9 if case.nbytes else None,
            "peak_share": None,
            "best_share": None,
        }
    mine = records["fastcnn"]
    mine["valid"], mine["max_rel_err"] = valid, err
    for ref in ("torch", "torch_cl", "numpy", "fastcnn_direct"):
        key = "ratio_vs_torch" if ref == "torch" else f"ratio_vs_{ref}"
        if ref in records:
            mine[key] = records[ref]["median_ms"] / mine["median_ms"]
        elif ref == "torch":
            mine[key] = None
    return records


def settle_peaks(results, peaks):
    """Fills in every record's peak_share: its nominal FLOP count over the time, as a share of
    the peak. A peak that a speed measured at its thread count beats (a core taken by something
    else while the peak was measured) is no peak: its shares stay null and the thread count is
    returned among the unreliable ones. Beats means: SGEMM (whose FLOP count is exact) faster
    than the peak, or a PyTorch conv faster than 1.2x the peak (one that skips the padding does
    as little as 84% of the nominal count, see README). fastcnn's convs are not judged: its 5x5
    stride-1 layers run Winograd's F(2x2, 5x5), 36 products where the nominal count has 100,
    so their share of the peak can pass 1."""
    unreliable = []
    for t, peak in peaks.items():
        recs = [(op, i, r) for (op, _, tt), rr in results.items() if tt == t for i, r in rr.items()]
        over = max(
            (
                r["gflops"] / (1.0 if op == "sgemm" else 1.2)
                for op, impl, r in recs
                if r["gflops"] and (op == "sgemm" or impl != "fastcnn")
            ),
            default=0.0,
        )
        ok = bool(peak["gflops"]) and over <= peak["gflops"]
        if peak["gflops"] and not ok:
            unreliable.append(t)
        for _, _, r in recs:
            share = r["gflops"] / peak["gflops"] if ok and r["gflops"] else None
            r["peak_share"] = share
            # The fastest call's share: what the code reaches while the machine is quiet.
            r["best_share"] = share * r["median_ms"] / r["min_ms"] if share else None
    return unreliable


def kernel_targets(results, threads, sgemm_size):
    """The issue's kernel targets, at the given thread count: (name, measured, fastest call,
    goal, met). Measured is the median, which the goal is judged on; the fastest call's figure
    (shares only) says what the code reaches while the machine is quiet."""
    t = threads
    specs = [
        ("conv2", "fwd", f"conv2 fwd: share of FMA peak ({t} thr)", "peak_share", 0.80),
        ("conv2", "bwd", f"conv2 bwd: share of FMA peak ({t} thr)", "peak_share", 0.80),
        ("sgemm", "fwd", f"sgemm {sgemm_size}^3: share of FMA peak ({t} thr)", "peak_share", 0.85),
        ("pool1", "fwd", f"max-pool fwd (pool1) vs torch ({t} thr)", "ratio_vs_torch", 5.0),
        ("pool2", "fwd", f"max-pool fwd (pool2) vs torch ({t} thr)", "ratio_vs_torch", 5.0),
    ]
    rows = []
    for op, pas, name, key, goal in specs:
        r = results.get((op, pas, t), {}).get("fastcnn") or {}
        value = r.get(key)
        fastest = r.get("best_share") if key == "peak_share" else None
        rows.append(
            [name, value, fastest, f">= {goal:.2f}", None if value is None else value >= goal]
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="all threads only, few repeats: a check that it runs"
    )
    p.add_argument("--threads", help="comma-separated thread counts (default: 1 and all cores)")
    p.add_argument("--batch", type=int, default=64, help="SeedNet batch size (default 64)")
    p.add_argument("--sgemm-size", type=int, default=2048, help="n of the n^3 SGEMM (default 2048)")
    p.add_argument(
        "--only", help="comma-separated ops: conv1,relu1,pool1,conv2,...,softmax_ce,sgemm"
    )
    p.add_argument("--rounds", type=int, help="alternating rounds per case (default 3, quick 1)")
    args = p.parse_args(argv)

    cores = os.cpu_count() or 1
    if args.threads:
        thread_counts = [int(t) for t in args.threads.split(",")]
    else:
        thread_counts = [cores] if args.quick else sorted({1, cores})
    timing = (
        {"rounds": 1, "warmup": 1, "repeats": 3, "min_time": 0.02}
        if args.quick
        else {"rounds": 3, "warmup": 3, "repeats": 5, "min_time": 0.15}
    )
    if args.rounds:
        timing["rounds"] = args.rounds
    only = set(args.only.split(",")) if args.only else None

    harness.emit(harness.machine_info(torch))
    watch = harness.CpuWatch()
    if torch is None:
        print("# torch not importable: fastcnn only, no ratios", flush=True)

    # The peak of each thread count is measured before its cases and again after them, and the
    # better taken: on a shared machine a core can be busy elsewhere for a second or two, and a
    # peak measured then would make every share too high.
    def peak_now(t):
        return harness.fma_peak_gflops(
            [t], seconds=0.2 if args.quick else 0.3, trials=2 if args.quick else 3
        )[t]

    results, peaks = {}, {}
    for t in thread_counts:
        before = peak_now(t)
        harness.set_threads(t, torch)
        rng = np.random.default_rng(0)
        cases = seednet_cases(args.batch, rng) + [sgemm_case(rng, args.sgemm_size)]
        for case in cases:
            if only and case.op not in only:
                continue
            results[(case.op, case.pas, t)] = run_case(case, t, timing)
        after = peak_now(t)
        peaks[t] = dict(before, trials=before["trials"] + after["trials"])
        if after["gflops"] and (before["gflops"] or 0) < after["gflops"]:
            peaks[t]["gflops"] = after["gflops"]
    unreliable = settle_peaks(results, peaks)
    for t, peak in peaks.items():
        harness.emit({"bench": "fma_peak", "threads": t, **peak, "reliable": t not in unreliable})
    for recs in results.values():
        for record in recs.values():
            harness.emit(record)

    contention = watch.stop()
    harness.emit(contention)

    # ---- summary
    rows = []
    for (op, pas, t), recs in results.items():
        mine = recs["fastcnn"]
        ref = recs.get("torch") or recs.get("numpy")
        rows.append(
            [
                op,
                pas,
                t,
                mine["median_ms"],
                mine["gflops"],
                mine["peak_share"],
                mine["best_share"],
                ref["median_ms"] if ref else None,
                recs["torch_cl"]["median_ms"] if "torch_cl" in recs else None,
                mine.get("ratio_vs_torch"),
                mine.get("ratio_vs_torch_cl"),
                mine.get("ratio_vs_fastcnn_direct"),
                mine["valid"],
            ]
        )
    harness.print_table(
        f"kernels, batch {args.batch} (ratio = fastcnn speed / other speed; > 1: fastcnn faster)",
        [
            "op",
            "pass",
            "thr",
            "fastcnn ms",
            "GFLOP/s",
            "peak",
            "best",
            "torch ms",
            "torch_cl ms",
            "x torch",
            "x torch_cl",
            "x direct",
            "valid",
        ],
        rows,
    )
    print(
        "FMA peak (measured now): "
        + ", ".join(
            f"{t} thr {p['gflops']:.0f} GFLOP/s ({p['isa']})" if p["gflops"] else f"{t} thr unknown"
            for t, p in peaks.items()
        )
    )
    for t in unreliable:
        print(
            f"FMA peak at {t} thr ({peaks[t]['gflops']:.0f} GFLOP/s) is below a speed measured "
            "at that thread count (a core was busy elsewhere while it was measured): no shares"
        )
    blas_core = harness.numpy_blas("corename")
    for (op, _, t), recs in results.items():
        if op == "sgemm":
            print(
                f"sgemm {args.sgemm_size}^3, {t} thr: "
                + ", ".join(
                    f"{impl} {r['median_ms']:.1f} ms ({r['gflops']:.0f} GFLOP/s)"
                    for impl, r in recs.items()
                )
                + f"; numpy's OpenBLAS core: {blas_core or 'unknown'}"
                + (
                    f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})"
                    if os.environ.get("OPENBLAS_CORETYPE")
                    else ""
                )
            )
    target_threads = max(thread_counts)
    harness.print_table(
        f"kernel targets ({target_threads} threads)",
        ["target", "measured", "fastest call", "goal", "met"],
        kernel_targets(results, target_threads, args.sgemm_size),
    )
    print(harness.contention_note(contention))


if __name__ == "__main__":
    main()
