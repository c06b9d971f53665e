"""Data-parallel training on MPI: images/s and the share of each step spent communicating, at 1
and 2 ranks on this machine, and a model of the scaling to 4-64 machines.

    python bench/distributed.py            # 3 rounds of every configuration (2-3 minutes)
    python bench/distributed.py --quick    # 1 round, short epochs

Measured, in fresh processes (mpirun for 2 ranks), SeedNet and ResNet-8 at 1x28x28 training
through fastcnn.fit on a fixed synthetic set of Fashion-MNIST's shape (uint8 pixels):

  1 rank      2 threads (all cores), batch 64
  2 ranks     1 thread each (mpirun binds each to a core), batch 64: 32 per rank, the same
              training as one process (strong scaling)
  2 ranks     batch 128: 64 per rank, each rank's work that of one process at 64 (weak scaling)

Each run trains a warm-up epoch, then a timed epoch; reported: images/s of the timed epoch, and
`wait_share`, the share of the epoch that ranks spent waiting for the gradient all-reduce after
their backward ended (the part of the exchange that the overlap with backward did not hide; the
largest over the ranks). Configurations alternate in rounds; medians.

The model (printed after the measurements; the figures in bench/README.md): a step's exchange is
one ring all-reduce of every gradient, 4 bytes a parameter. A ring all-reduce over N machines
moves 2(N-1)/N of the bytes through each machine's link and takes 2(N-1) latency-bound hops:

    t_comm(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency

With each machine training 64 images per step at the measured single-machine step time
t_step (2 cores), the time per step is t_step + t_comm without overlap, and
t_step + max(0, t_comm - t_backward) when the exchange hides behind backward (about 2/3 of a
step), so the scaling efficiency lies between t_step / (t_step + t_comm) and
t_step / (t_step + max(0, t_comm - 2/3 t_step)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import harness  # first: puts this checkout's fastcnn on sys.path when it is built in place

ARCHS = ("seednet", "resnet8")
CONFIGS = (  # (ranks, global batch)
    (1, 64),
    (2, 64),
    (2, 128),
)
LINKS_GBIT = (10, 25, 100)
LATENCY_S = 20e-6  # per hop: TCP over Ethernet; RDMA is some 2-5 us
MACHINES = (2, 4, 8, 16, 32, 64)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def worker(arch, batch, steps):
    """One rank's run; rank 0 prints a JSON line."""
    import numpy as np

    import fastcnn
    from fastcnn import data, models, nn

    world = fastcnn.distributed.init()
    rng = np.random.default_rng(0)
    n = batch * steps
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    train = data.ArrayDataset(images, labels)
    nn.manual_seed(0)
    model = models.ARCHITECTURES[arch](in_channels=1, num_classes=10, image_size=(28, 28))
    fit = dict(batch_size=batch, lr=0.01, progress=False, warnings=False, distributed=True)
    fastcnn.fit(model, train, epochs=1, **fit)  # warm-up
    waited = world.reduce_seconds if world else 0.0
    history = fastcnn.fit(model, train, epochs=1, **fit)
    # The timed epoch's wait on every rank: rank 0 reports the largest.
    share = ((world.reduce_seconds if world else 0.0) - waited) / history[-1]["seconds"]
    if world is not None:
        share = max(world.comm.allgather(share))
        if world.rank != 0:
            return
    params = sum(p.data.size for p in model.parameters())
    print(
        json.dumps(
            {
                "arch": arch,
                "ranks": 1 if world is None else world.size,
                "batch": batch,
                "threads": fastcnn.get_num_threads(),
                "images_per_second": history[-1]["images_per_second"],
                "step_ms": 1e3 * history[-1]["seconds"] / steps,
                "wait_share": share,
                "allreduce_bytes": 4 * params,
            }
        ),
        flush=True,
    )


def run(arch, ranks, batch, steps):
    cmd = [sys.executable, __file__, "--worker", arch, str(batch), str(steps)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), *cmd]
    env = {**os.environ, **MPI_ENV}
    env.pop("FASTCNN_NUM_THREADS", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def ring_seconds(nbytes, machines, gbit):
    hops = 2 * (machines - 1)
    return hops / machines * nbytes / (gbit * 1e9 / 8) + hops * LATENCY_S


def model_rows(measured):
    rows = []
    for arch in ARCHS:
        one = measured[(arch, 1, 64)]
        t_step, nbytes = one["step_ms"] / 1e3, one["allreduce_bytes"]
        for gbit in LINKS_GBIT:
            row = [arch, f"{nbytes / 1e6:.2f}", f"{1e3 * t_step:.1f}", gbit]
            for n in MACHINES:
                t = ring_seconds(nbytes, n, gbit)
                worst = t_step / (t_step + t)
                best = t_step / (t_step + max(0.0, t - 2 / 3 * t_step))
                row.append(f"{100 * worst:.0f}-{100 * best:.0f}")
            rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round, short epochs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", nargs=3, metavar=("ARCH", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
    if shutil.which("mpirun") is None:
        sys.exit("bench/distributed.py needs mpirun: pip install 'fastcnn[distributed]'")
    harness.emit(harness.machine_info())
    rounds, steps = (1, 40) if args.quick else (args.rounds, 150)
    results = {}
    for r in range(rounds):
        for arch in ARCHS:
            for ranks, batch in CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]:
                record = run(arch, ranks, batch, steps)
                record["round"] = r
                harness.emit({"bench": "distributed", **record})
                results.setdefault((arch, ranks, batch), []).append(record)
    measured = {}
    rows = []
    for (arch, ranks, batch), records in sorted(results.items()):
        med = {k: statistics.median(r[k] for r in records) for k in records[0] if k != "arch"}
        measured[(arch, ranks, batch)] = {**records[0], **med}
        base = statistics.median(r["images_per_second"] for r in results[(arch, 1, 64)])
        rows.append(
            [arch, ranks, batch, batch // ranks, int(med["threads"]),
             f"{med['images_per_second']:,.0f}", f"{med['images_per_second'] / base:.2f}x",
             f"{100 * med['wait_share']:.1f}%"]
        )  # fmt: skip
    harness.print_table(
        "Measured on this machine (medians)",
        ["net", "ranks", "batch", "per rank", "threads", "images/s", "vs 1 rank", "wait share"],
        rows,
    )
    harness.print_table(
        f"Model: scaling efficiency (%, no overlap - overlap with backward), 64 images per "
        f"machine per step, ring all-reduce, {LATENCY_S * 1e6:.0f} us a hop",
        ["net", "MB/step", "step ms", "Gbit/s", *[f"{n} machines" for n in MACHINES]],
        model_rows(measured),
    )
    print(f"(measured {time.strftime('%Y-%m-%d')}; the step time is 1 rank's at batch 64)")


if __name__ == "__main__":
    main()
