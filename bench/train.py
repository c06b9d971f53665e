"""End-to-end benchmark: SeedNet and ResNet-8 training and inference, fastcnn against PyTorch,
in one run.

    python bench/train.py            # every configuration below (a few minutes)
    python bench/train.py --quick    # batch 64, all threads, few steps (seconds)

Configurations: SeedNet at 1x28x28 (Fashion-MNIST) at batches 32, 64 and 256 on all cores,
batch 64 on one thread, and 3x64x64 (the cats-vs-dogs shape) at batch 64 on all cores; ResNet-8
at 1x28x28 batch 64 and 3x32x32 (CIFAR's shape) batch 128 on all cores. In each, the same network
(same initial weights, copied from fastcnn into PyTorch), the same fixed random batch and the
same thread count run on fastcnn, PyTorch (default NCHW) and PyTorch channels_last, alternating
in rounds; each reports the median of its per-step times. One training step = zero_grad, forward,
cross-entropy, backward, SGD step (lr 0.01, momentum 0.9); inference = eval-mode forward (PyTorch
under inference_mode). Before timing, the three are checked to compute the same logits, loss and
first update ("valid"). Each round starts with a probe of the machine's mode ("slow rounds":
those whose 768^3 SGEMM ran less than 1.8x faster on all threads than on one; see ModeProbe),
and the ratios are also given over the fast rounds and over the slow ones apart.

Also, in fresh child processes: peak RSS while training SeedNet and ResNet-8 on real
Fashion-MNIST for a bounded number of steps (`--rss-child fastcnn|torch`), and the time to
import each library.
Prints one JSON line per measurement, then summary tables and the targets. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # first: puts this checkout's fastcnn on sys.path when it is built in place
import numpy as np

# ---- models -------------------------------------------------------------------------------------


def torch_seednet(torch, in_channels=1, num_classes=10, image_size=(28, 28)):
    """fastcnn.models.seednet, layer for layer, so that state dict names ('0.weight', ...) match."""
    nn = torch.nn
    h, w = image_size
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def torch_resnet(torch, depth=8, in_channels=3, num_classes=10):
    """fastcnn.models.resnet(depth), built as PyTorch users build the CIFAR ResNets (a BasicBlock
    with conv1, bn1, conv2, bn2 and an nn.Sequential shortcut), with the same state-dict keys."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = tnn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    n = (depth - 2) // 6
    layers = [tnn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()]
    cin = 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            layers.append(BasicBlock(cin, planes, 2 if stage and i == 0 else 1))
            cin = planes
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, num_classes)]
    return tnn.Sequential(*layers)


def build_models(torch, arch, channels, size):
    """(fastcnn model, the same network in PyTorch or None), the latter with the former's
    weights."""
    import fastcnn

    if arch == "seednet":
        model = fastcnn.models.seednet(in_channels=channels, num_classes=10, image_size=size)
        tmodel = None if torch is None else torch_seednet(torch, channels, 10, (size, size))
    else:
        model = fastcnn.models.resnet(int(arch[len("resnet") :]), channels, 10)
        tmodel = None if torch is None else torch_resnet(torch, int(arch[6:]), channels, 10)
    if tmodel is not None:
        tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return model, tmodel


class FastcnnRunner:
    """fastcnn's training step and inference, as in `fastcnn bench` (fastcnn/cli.py)."""

    impl = "fastcnn"

    def __init__(self, model, x, y):
        import fastcnn

        self.model, self.x, self.y = model, x, y
        model.requires_input_grad = False  # the first conv skips dL/dx
        self.opt = fastcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = fastcnn.nn.CrossEntropyLoss()

    def mode(self, training: bool):
        self.model.train(training)

    def step(self) -> float:
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        self.model.backward(self.loss_fn.backward())
        self.opt.step()
        return loss

    def infer(self):
        return self.model(self.x)

    def first_weight(self):
        return self.model.layers[0].weight.data


class TorchRunner:
    """PyTorch's training step and inference; channels_last when `cl`."""

    def __init__(self, torch, model, x, y, cl=False):
        self.torch = torch
        self.impl = "torch_cl" if cl else "torch"
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)  # once: the data, not the model
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def mode(self, training: bool):
        self.model.train(training)

    def step(self) -> float:
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self):
        with self.torch.inference_mode():
            return self.model(self.x)

    def first_weight(self):
        return self.model[0].weight.detach().numpy()


def make_runners(torch, channels, size, batch, seed=0, arch="seednet"):
    """The same network (SeedNet or a ResNet) and the same random batch for every
    implementation."""
    import fastcnn

    fastcnn.nn.manual_seed(seed)
    model, tmodel = build_models(torch, arch, channels, size)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    runners = [FastcnnRunner(model, x, y)]
    if torch is not None:
        xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
        runners.append(TorchRunner(torch, copy.deepcopy(tmodel), xt, yt))
        runners.append(TorchRunner(torch, tmodel, xt, yt, cl=True))
    return runners


def _as_numpy(a):
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


def check_same(runners) -> tuple[bool, float]:
    """Same logits (eval), same first loss and same first update everywhere: (ok, max rel err).
    Leaves every model one SGD step on, which changes nothing in what is timed."""
    if len(runners) < 2:
        return None, None
    errs = []
    for r in runners:
        r.mode(False)
    logits = [_as_numpy(r.infer()) for r in runners]
    for r in runners:
        r.mode(True)
    losses = [r.step() for r in runners]
    weights = [np.array(r.first_weight()) for r in runners]
    for group in (logits, [np.float64(v) for v in losses], weights):
        ref = np.asarray(group[0], dtype=np.float64)
        scale = max(float(np.abs(ref).max()), 1e-30)
        for other in group[1:]:
            errs.append(float(np.abs(np.asarray(other, dtype=np.float64) - ref).max() / scale))
    err = max(errs)
    return err < 1e-3, err


# ---- timing -------------------------------------------------------------------------------------


# On the 2-vCPU machines fastcnn is tuned on, the two vCPUs sit for minutes at a time on cores
# that share no L3, and whatever one thread reads of the other's writes then comes from the other
# core (bench/machine_modes.py, bench/RESULTS.md). Each round therefore first measures the SGEMM's
# two-thread speed-up, ~1.9 in the fast minutes and ~1.6 in the slow ones.
SLOW_SPEEDUP = 1.8


class ModeProbe:
    """The all-threads over one-thread speed of a 768^3 SGEMM on fastcnn's kernels (~60 ms)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.a = np.random.default_rng(0).standard_normal((768, 768)).astype(np.float32)

    def __call__(self) -> float | None:
        import fastcnn
        from fastcnn import ops

        if self.threads < 2:
            return None
        times = {}
        for t in (self.threads, 1):
            fastcnn.set_num_threads(t)
            ops.sgemm(self.a, self.a)
            times[t] = min(self._time(ops.sgemm) for _ in range(3))
        fastcnn.set_num_threads(self.threads)
        return times[1] / times[self.threads]

    def _time(self, sgemm) -> float:
        t = time.perf_counter()
        sgemm(self.a, self.a)
        return time.perf_counter() - t


def time_config(runners, mode, *, rounds, budget_s, min_steps=2, max_steps=50, probe=None):
    """Alternates the runners in `rounds` rounds (order rotated each round); in each, one untimed
    step, then enough timed steps to fill about `budget_s`. Returns ({impl: [each round's
    per-step seconds]}, the probe's value at the start of each round)."""
    for r in runners:
        r.mode(mode == "train")
    fns = {r.impl: (r.step if mode == "train" else r.infer) for r in runners}
    estimate = {}
    for impl, fn in fns.items():  # warm-up: first-call allocations, thread pools, JIT kernels
        fn()
        t = time.perf_counter()
        fn()
        estimate[impl] = time.perf_counter() - t
    times = {impl: [] for impl in fns}
    modes = []
    order = list(fns)
    for k in range(rounds):
        modes.append(probe() if probe else None)
        for impl in order[k % len(order) :] + order[: k % len(order)]:
            times[impl].append([])
            fn = fns[impl]
            steps = int(min(max_steps, max(min_steps, round(budget_s / max(estimate[impl], 1e-6)))))
            fn()
            for _ in range(steps):
                t = time.perf_counter()
                fn()
                times[impl][-1].append(time.perf_counter() - t)
    return times, modes


def run_config(torch, cfg, *, rounds, budget_s):
    """One configuration, training then inference; emits a JSON line per implementation and
    returns {(mode, impl): record}."""
    channels, size, batch, threads = cfg["channels"], cfg["size"], cfg["batch"], cfg["threads"]
    arch = cfg.get("arch", "seednet")
    harness.set_threads(threads, torch)
    runners = make_runners(torch, channels, size, batch, arch=arch)
    valid, err = check_same(runners)
    probe = ModeProbe(threads)
    out = {}
    for mode in ("train", "infer"):
        per_round, speedups = time_config(
            runners, mode, rounds=rounds, budget_s=budget_s, probe=probe
        )
        records = {}
        for impl, rounds_ts in per_round.items():
            ts = [t for r in rounds_ts for t in r]
            median = statistics.median(ts)
            records[impl] = {
                "bench": mode,
                "arch": arch,
                "impl": impl,
                "input": f"{channels}x{size}x{size}",
                "batch": batch,
                "threads": threads,
                "median_ms": median * 1e3,
                "min_ms": min(ts) * 1e3,
                "steps": len(ts),
                "images_per_s": batch / median,
            }
        mine = records["fastcnn"]
        mine["valid"], mine["max_rel_err"] = valid, err
        known = [s for s in speedups if s is not None]
        mine["sgemm_speedup_rounds"] = known or None
        mine["slow_rounds"] = sum(s < SLOW_SPEEDUP for s in known) if known else None
        mine["rounds"] = len(speedups)
        for ref in ("torch", "torch_cl"):
            mine[f"ratio_vs_{ref}"] = (
                records[ref]["median_ms"] / mine["median_ms"] if ref in records else None
            )
        # The same ratios over the fast rounds only and over the slow ones only.
        for name, in_mode in (
            ("fast", lambda v: v >= SLOW_SPEEDUP),
            ("slow", lambda v: v < SLOW_SPEEDUP),
        ):
            picked = [k for k, v in enumerate(speedups) if v is not None and in_mode(v)]
            for ref in ("torch", "torch_cl"):
                ratio = None
                if picked and ref in per_round:
                    pooled = {
                        impl: statistics.median(t for k in picked for t in per_round[impl][k])
                        for impl in ("fastcnn", ref)
                    }
                    ratio = pooled[ref] / pooled["fastcnn"]
                mine[f"ratio_vs_{ref}_{name}"] = ratio
        for impl in per_round:
            harness.emit(records[impl])
            out[(mode, impl)] = records[impl]
    return out


# ---- child processes: peak RSS and import time --------------------------------------------------


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_peak_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork + exec, so a child of a big parent reports the parent's size as its own peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_child(framework: str, steps: int, batch: int, threads: int, arch="seednet") -> None:
    """In a fresh process: import `framework`, load Fashion-MNIST (through fastcnn.data for both,
    so both hold the same arrays), train `arch` for `steps` steps, print peak RSS as JSON."""
    t0 = time.perf_counter()
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        torch = None
    import fastcnn

    fastcnn.set_num_threads(threads)
    rss_import = _rss_now_mb()
    train_set = fastcnn.data.FashionMNIST(train=True)
    loader = fastcnn.data.DataLoader(
        train_set, batch_size=batch, shuffle=True, seed=0, drop_last=True
    )
    rss_data = _rss_now_mb()
    peak_loading = _rss_peak_mb()
    fastcnn.nn.manual_seed(0)
    model, tmodel = build_models(torch, arch, 1, 28)
    if torch is not None:
        del model
        opt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        model.requires_input_grad = False
        opt = fastcnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = fastcnn.nn.CrossEntropyLoss()
    done, loss = 0, float("nan")
    while done < steps:
        for x, y in loader:
            if torch is not None:
                opt.zero_grad()
                out = loss_fn(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
                out.backward()
                opt.step()
                loss = out.item()
            else:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                model.backward(loss_fn.backward())
                opt.step()
            done += 1
            if done >= steps:
                break
    peak = _rss_peak_mb()
    print(
        json.dumps(
            {
                "bench": "peak_rss",
                "impl": framework,
                "arch": arch,
                "batch": batch,
                "threads": threads,
                "steps": done,
                "peak_rss_mb": round(peak, 1),
                "rss_after_import_mb": round(rss_import, 1),
                "rss_after_data_mb": round(rss_data, 1),
                "peak_rss_loading_mb": round(peak_loading, 1),
                "rss_end_mb": round(_rss_now_mb(), 1),
                "final_loss": round(float(loss), 4),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        ),
        flush=True,
    )


def measure_rss(framework, steps, batch, threads, arch="seednet"):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--rss-child",
        framework,
        "--rss-steps",
        str(steps),
        "--rss-batch",
        str(batch),
        "--threads",
        str(threads),
        "--rss-arch",
        arch,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.child_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        record = {
            "bench": "peak_rss",
            "impl": framework,
            "arch": arch,
            "error": proc.stderr.strip()[-500:],
        }
    else:
        record = json.loads(lines[-1])
    harness.emit(record)
    return record


def measure_import(module, repeats):
    """Seconds to `import module` in a fresh interpreter (median of `repeats` interpreters)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        # Not from the current directory: `python -c` puts it first on sys.path, and in a
        # checkout that is the source tree's fastcnn, unbuilt (child_env adds a built one).
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=harness.child_env(),
            cwd=tempfile.gettempdir(),
        )
        if proc.returncode != 0:
            record = {"bench": "import", "impl": module, "error": proc.stderr.strip()[-500:]}
            harness.emit(record)
            return record
        times.append(float(proc.stdout.split()[-1]))
    record = {
        "bench": "import",
        "impl": module,
        "seconds": statistics.median(times),
        "repeats": repeats,
    }
    harness.emit(record)
    return record


# ---- targets and summary ------------------------------------------------------------------------


def _ratio_row(results, label, key, ref, goal):
    rec = results.get(key)
    ratio = rec.get(f"ratio_vs_{ref}") if rec else None
    return [label, ratio, f">= {goal}", None if ratio is None else ratio >= goal]


def config_key(cfg) -> tuple:
    return (cfg.get("arch", "seednet"), cfg["channels"], cfg["size"], cfg["batch"], cfg["threads"])


def targets(results, rss, all_threads):
    t = all_threads
    seed = ("seednet", 1, 28)
    specs = [  # label, (mode, network, input, batch, threads), reference, goal
        (f"train b64 {t}thr vs torch", ("train", *seed, 64, t), "torch", 1.5),
        (f"train b64 {t}thr vs torch_cl", ("train", *seed, 64, t), "torch_cl", 1.25),
        (f"train b32 {t}thr vs torch", ("train", *seed, 32, t), "torch", 1.3),
        (f"train b256 {t}thr vs torch", ("train", *seed, 256, t), "torch", 1.3),
        (f"infer b256 {t}thr vs torch", ("infer", *seed, 256, t), "torch", 1.5),
        (f"infer b256 {t}thr vs torch_cl", ("infer", *seed, 256, t), "torch_cl", 1.0),
        ("train b64 1thr vs torch", ("train", *seed, 64, 1), "torch", 1.3),
    ]
    for c, size, batch in ((1, 28, 64), (3, 32, 128)):
        key, label = ("resnet8", c, size, batch, t), f"resnet8 {c}x{size} b{batch} {t}thr"
        specs += [
            (f"train {label} vs torch", ("train", *key), "torch", 1.5),
            (f"train {label} vs torch_cl", ("train", *key), "torch_cl", 1.25),
            (f"infer {label} vs torch", ("infer", *key), "torch", 1.5),
        ]
    rows = [_ratio_row(results, label, key, ref, goal) for label, key, ref, goal in specs]
    rows.append(_rss_row(rss, "", "peak RSS training, fastcnn / torch", 1 / 3, "<= 0.333"))
    rows.append(_rss_row(rss, " resnet8", "peak RSS training resnet8, fastcnn / torch", 0.5))
    return rows


def _rss_row(rss, suffix, label, goal, shown=None):
    """[label, fastcnn's peak RSS over torch's, goal, met] for the RSS children `suffix` names."""
    mine = rss.get(f"fastcnn{suffix}", {}).get("peak_rss_mb")
    theirs = rss.get(f"torch{suffix}", {}).get("peak_rss_mb")
    share = mine / theirs if mine and theirs else None
    return [label, share, shown or f"<= {goal}", None if share is None else share <= goal]


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="batch 64 on all cores, few steps")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="'all cores' thread count (default: os.cpu_count())",
    )
    p.add_argument(
        "--rounds", type=int, help="alternating rounds per configuration (default 5, quick 2)"
    )
    p.add_argument(
        "--no-rss", action="store_true", help="skip the peak-RSS and import-time children"
    )
    p.add_argument(
        "--rss-steps", type=int, help="training steps of each RSS child (default 200, quick 20)"
    )
    p.add_argument("--rss-batch", type=int, default=64)
    p.add_argument("--rss-child", choices=["fastcnn", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--rss-arch", default="seednet", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.rss_child:
        return rss_child(
            args.rss_child, args.rss_steps or 200, args.rss_batch, args.threads, args.rss_arch
        )

    torch = harness.try_import_torch()
    t_all = args.threads
    if args.quick:
        configs = [
            dict(channels=1, size=28, batch=64, threads=t_all),
            dict(arch="resnet8", channels=1, size=28, batch=64, threads=t_all),
        ]
        rounds, budget, rss_steps, import_repeats = args.rounds or 2, 0.1, args.rss_steps or 20, 1
    else:
        configs = [dict(channels=1, size=28, batch=b, threads=t_all) for b in (32, 64, 256)]
        configs += [
            dict(channels=1, size=28, batch=64, threads=1),
            dict(channels=3, size=64, batch=64, threads=t_all),
            dict(arch="resnet8", channels=1, size=28, batch=64, threads=t_all),
            dict(arch="resnet8", channels=3, size=32, batch=128, threads=t_all),
        ]
        rounds, budget, rss_steps, import_repeats = args.rounds or 5, 0.5, args.rss_steps or 200, 3

    harness.emit(harness.machine_info(torch))
    watch = harness.CpuWatch()
    if torch is None:
        print("# torch not importable: fastcnn only, no ratios", flush=True)

    results = {}
    for cfg in configs:
        out = run_config(torch, cfg, rounds=rounds, budget_s=budget)
        for (mode, impl), rec in out.items():
            if impl == "fastcnn":
                results[(mode, *config_key(cfg))] = rec
            results[(mode, impl, *config_key(cfg))] = rec

    rss, imports = {}, {}
    if not args.no_rss:
        frameworks = ["fastcnn"] + (["torch"] if torch is not None else [])
        for fw in frameworks:
            imports[fw] = measure_import(fw, import_repeats)
        for fw in frameworks:
            rss[fw] = measure_rss(fw, rss_steps, args.rss_batch, t_all)
        for fw in frameworks:  # the ResNet-8 rows: "fastcnn resnet8", "torch resnet8"
            rss[f"{fw} resnet8"] = measure_rss(fw, rss_steps, args.rss_batch, t_all, "resnet8")

    contention = watch.stop()
    harness.emit(contention)

    # ---- summary
    rows = []
    for cfg in configs:
        for mode in ("train", "infer"):
            key = config_key(cfg)
            mine = results[(mode, *key)]
            ips = {
                impl: results.get((mode, impl, *key), {}).get("images_per_s")
                for impl in ("fastcnn", "torch", "torch_cl")
            }
            rows.append(
                [
                    mode,
                    mine["arch"],
                    mine["input"],
                    cfg["batch"],
                    cfg["threads"],
                    ips["fastcnn"],
                    ips["torch"],
                    ips["torch_cl"],
                    mine["ratio_vs_torch"],
                    mine["ratio_vs_torch_cl"],
                    mine["valid"],
                    "-"
                    if mine["slow_rounds"] is None
                    else f"{mine['slow_rounds']}/{mine['rounds']}",
                ]
            )
    harness.print_table(
        "images/s (median step; ratio = fastcnn speed / other speed; > 1: fastcnn faster)",
        [
            "mode",
            "net",
            "input",
            "batch",
            "thr",
            "fastcnn",
            "torch",
            "torch_cl",
            "x torch",
            "x torch_cl",
            "valid",
            "slow rounds",
        ],
        rows,
    )
    by_mode = []
    for cfg in configs:
        for mode in ("train", "infer"):
            mine = results[(mode, *config_key(cfg))]
            if mine["slow_rounds"] is None:
                continue
            by_mode.append(
                [mode, mine["arch"], mine["input"], cfg["batch"]]
                + [
                    mine[f"ratio_vs_{ref}_{m}"]
                    for m in ("fast", "slow")
                    for ref in ("torch", "torch_cl")
                ]
                + [f"{mine['slow_rounds']}/{mine['rounds']}"]
            )
    if by_mode:
        harness.print_table(
            "the same ratios over the fast rounds and over the slow ones (see ModeProbe)",
            [
                "mode",
                "net",
                "input",
                "batch",
                "fast: x torch",
                "x torch_cl",
                "slow: x torch",
                "x torch_cl",
                "slow rounds",
            ],
            by_mode,
        )
    if rss or imports:
        harness.print_table(
            f"memory and start-up (training on Fashion-MNIST, batch {args.rss_batch}, "
            f"{rss_steps} steps)",
            [
                "library, network",
                "import s",
                "RSS after import MB",
                "RSS with data MB",
                "peak while loading MB",
                "peak RSS MB",
            ],
            [
                [
                    key if " " in key else f"{key} seednet",
                    imports.get(key.split()[0], {}).get("seconds"),
                    rss.get(key, {}).get("rss_after_import_mb"),
                    rss.get(key, {}).get("rss_after_data_mb"),
                    rss.get(key, {}).get("peak_rss_loading_mb"),
                    rss.get(key, {}).get("peak_rss_mb"),
                ]
                for key in rss
            ],
        )
    harness.print_table(
        "targets", ["target", "measured", "goal", "met"], targets(results, rss, t_all)
    )
    print(harness.contention_note(contention))
    return None


if __name__ == "__main__":
    sys.exit(main())
