"""A training run that tests/test_distributed.py starts under mpirun (or alone, as the
single-process reference): fit() on a small learnable data set, then each rank's weights and
history into OUT.rank<r>.npz (OUT.rank0.npz alone).

Faults for the fault tests: --hang-rank R --at-step S makes rank R stop answering (it sleeps)
before its S-th training step; --kill-rank R --at-step S makes it die (SIGKILL) there;
--raise-after-fit R makes rank R's script raise after fit while the others wait in a barrier.
"""

import argparse
import json
import os
import signal
import time

import numpy as np

import fastcnn
from fastcnn import data, models, nn


def learnable(samples, seed=1):
    """Ten classes of 16x16 grey images: a fixed random pattern per class, plus noise."""
    patterns = np.random.default_rng(0).normal(0.0, 1.0, (10, 1, 16, 16))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, samples)
    images = patterns[labels] + rng.normal(0, 0.5, (samples, 1, 16, 16))
    return data.ArrayDataset(images.astype(np.float32), labels)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--arch", default="seednet")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--checkpoint")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--alone", action="store_true", help="distributed=False")
    p.add_argument("--hang-rank", type=int)
    p.add_argument("--kill-rank", type=int)
    p.add_argument("--at-step", type=int, default=3)
    p.add_argument("--raise-after-fit", type=int, metavar="RANK")
    p.add_argument("--rank1-samples", type=int, help="rank 1 loads another number of images")
    args = p.parse_args()

    world = None if args.alone else fastcnn.distributed.init()
    rank = 0 if world is None else world.rank
    nn.manual_seed(0)
    model = models.ARCHITECTURES[args.arch](in_channels=1, num_classes=10, image_size=(16, 16))
    steps = [0]
    forward = model.forward

    def faulty_forward(x):
        if model.training:
            steps[0] += 1
            if steps[0] == args.at_step and rank == args.hang_rank:
                while True:  # stops answering, as a rank stuck in a deadlock or swapping
                    time.sleep(60)
            if steps[0] == args.at_step and rank == args.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
        return forward(x)

    model.forward = faulty_forward
    train = learnable(args.rank1_samples if rank == 1 and args.rank1_samples else args.samples)
    history = fastcnn.fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        val=learnable(args.samples // 2, seed=2),
        progress=rank == 0,
        warnings=False,
        checkpoint=args.checkpoint,
        resume=args.resume,
        distributed=not args.alone,
        sync_batchnorm=args.sync_bn,
    )
    if args.raise_after_fit is not None:  # a script's own error, after training
        if rank == args.raise_after_fit:
            raise RuntimeError("the script failed on this rank")
        world.comm.Barrier()  # the others wait in the script's own exchange
    state = model.state_dict()
    state["history"] = np.array(json.dumps(history))
    state["threads"] = np.array(fastcnn.get_num_threads())
    np.savez(f"{args.out}.rank{rank}.npz", **state)


if __name__ == "__main__":
    main()
