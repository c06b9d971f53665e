"""Data-parallel training on MPI (fastcnn.distributed).

The end-to-end tests start tests/mpi_worker.py under mpirun (Open MPI from the distributed
extra; skipped without it) and compare with the same run in one process. The synchronised
BatchNorm is also checked without MPI, with threads standing in for ranks.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import distributed as dist
from fastcnn import nn

WORKER = Path(__file__).with_name("mpi_worker.py")
MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY, reason="needs mpi4py and mpirun (fastcnn[distributed])"
)

# Open MPI refuses root without these (CI runs as root); --oversubscribe allows 3 ranks on 2 cores.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def mpirun(n, out, *args, env=None, timeout=180):
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, str(WORKER), str(out), *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **MPI_ENV, **(env or {})},
        cwd=Path(out).parent,  # never the source tree, whose fastcnn/ has no extension
    )


def alone(out, *args):
    cmd = [sys.executable, str(WORKER), str(out), "--alone", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=Path(out).parent)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def weights(out, rank=0):
    with np.load(f"{out}.rank{rank}.npz") as f:
        state = {k: f[k] for k in f.files}
    history = json.loads(str(state.pop("history")))
    state.pop("threads")
    return state, history


def assert_weights_close(a, b, rtol):
    assert a.keys() == b.keys()
    for k in a:
        scale = np.abs(a[k]).max() + 1e-12
        err = np.abs(a[k].astype(np.float64) - b[k]).max() / scale
        assert err <= rtol, f"{k}: relative difference {err:.2e}"


# -- without MPI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "samples,batch,ranks,drop_last",
    [
        (100, 8, 3, False),
        (97, 5, 2, False),
        (26, 4, 3, False),
        (26, 4, 3, True),
        (7, 1, 7, False),
        (64, 32, 2, False),
    ],
)
def test_shards_cut_each_global_batch_into_disjoint_parts(samples, batch, ranks, drop_last):
    ds = fastcnn.data.ArrayDataset(np.zeros((samples, 1, 2, 2), np.float32), np.arange(samples))
    one = fastcnn.data.DataLoader(ds, batch * ranks, shuffle=True, seed=3, drop_last=drop_last)
    expected = [np.sort(y) for _, y in one]
    parts = []
    for rank in range(ranks):
        loader = fastcnn.data.DataLoader(
            ds, batch * ranks, shuffle=True, seed=3, drop_last=drop_last
        )
        shard = dist.ShardedBatches(loader, rank, ranks)
        assert len(shard) == dist.steps_per_epoch(samples, batch * ranks, ranks, drop_last)
        parts.append(list(shard))
        assert loader.epoch == 1  # iterating advances the epoch, as the loader itself does
    assert len({len(p) for p in parts}) == 1
    for k in range(len(parts[0])):
        labels = np.concatenate([parts[r][k][1] for r in range(ranks)])
        shares = [parts[r][k][2] for r in range(ranks)]
        assert all(len(parts[r][k][1]) >= 1 for r in range(ranks))
        assert sum(shares) == pytest.approx(1.0)
        for r in range(ranks):
            assert shares[r] == len(parts[r][k][1]) / len(labels)
        # The same images as one process's k-th batch at ranks * batch, when none is left out.
        if k < len(expected):
            np.testing.assert_array_equal(np.sort(labels), expected[k])
    # Only a last global batch of fewer images than ranks is left out.
    covered = sum(len(parts[r][k][1]) for r in range(ranks) for k in range(len(parts[0])))
    rest = samples % (batch * ranks)
    left_out = rest if (drop_last or rest < ranks) else 0
    assert covered == samples - left_out


def test_steps_per_epoch_of_one_rank_is_the_loaders_length():
    ds = fastcnn.data.ArrayDataset(np.zeros((37, 1, 2, 2), np.float32), np.zeros(37, np.int64))
    for batch in (1, 5, 37, 50):
        for drop_last in (False, True):
            loader = fastcnn.data.DataLoader(ds, batch, drop_last=drop_last)
            assert dist.steps_per_epoch(37, batch, 1, drop_last) == len(loader)


def test_threads_per_rank():
    assert dist._threads_per_rank([0], [[0], [1]], 2) == 1  # bound to a core each
    assert dist._threads_per_rank([0, 1], [[0, 1], [2, 3]], 4) == 2
    assert dist._threads_per_rank([0, 1, 2, 3], [[0, 1, 2, 3]] * 2, 4) == 2  # shared: divided
    assert dist._threads_per_rank([0, 1], [[0, 1]] * 3, 2) == 1  # never below one
    assert dist._threads_per_rank(None, [None] * 2, 8) == 4


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "_world", None)
    with pytest.raises(
        dist.DistributedError, match=r"mpirun started 2 processes.*fastcnn\[distributed\]"
    ):
        dist.init()


def test_cli_error_without_mpi4py_is_printed(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "_world", None)
    from fastcnn import cli

    assert cli.main(["train", "--epochs", "1", "--out", os.devnull]) == 1
    err = capsys.readouterr().err
    assert "pip install 'fastcnn[distributed]'" in err


def test_a_process_not_under_mpirun_trains_as_before(monkeypatch):
    for var in dist._SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dist.launched_size() == 1
    assert fastcnn.distributed.world() is None


class _ThreadWorld:
    """Ranks as threads: allreduce sums the threads' arrays (a barrier on each side)."""

    def __init__(self, size):
        self.size, self.barrier, self.lock = size, threading.Barrier(size), threading.Lock()
        self.total = None

    def allreduce(self, array, what):
        with self.lock:
            self.total = array.copy() if self.total is None else self.total + array
        self.barrier.wait()
        total = self.total
        self.barrier.wait()
        self.total = None
        self.barrier.wait()
        array[...] = total
        return array


@pytest.mark.parametrize(
    "relu,residual,affine",
    [(False, False, True), (True, False, True), (True, True, True), (False, False, False)],
)
@pytest.mark.parametrize("parts", [[3, 2], [1, 1, 4]])
def test_synchronised_batchnorm_is_batchnorm_of_the_whole_batch(rng, relu, residual, affine, parts):
    n, c, h, w = sum(parts), 5, 3, 4
    x = (rng.normal(1.5, 2.0, (n, c, h, w))).astype(np.float32)
    dy = rng.normal(size=(n, c, h, w)).astype(np.float32)
    res = rng.normal(size=(n, c, h, w)).astype(np.float32) if residual else None
    weight = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)

    def make():
        bn = nn.BatchNorm2d(c, affine=affine)
        if affine:
            bn.weight.data[:], bn.bias.data[:] = weight, bias
        return bn

    whole = make()
    if relu:
        y_ref = whole.forward(x, relu=True, residual=res)
        dx_ref, g_ref = whole.backward_masked(dy)
    else:
        y_ref, g_ref = whole.forward(x), None
        dx_ref = whole.backward(dy)
    cuts = np.cumsum([0, *parts])
    world, out = _ThreadWorld(len(parts)), [None] * len(parts)

    def rank(r):
        s = slice(cuts[r], cuts[r + 1])
        bn = make()
        bn.sync = world
        r_res = None if res is None else res[s]
        if relu:
            y = bn.forward(x[s], relu=True, residual=r_res)
            dx, g = bn.backward_masked(dy[s])
            g = g.copy()
        else:
            y, g = bn.forward(x[s]), None
            dx = bn.backward(dy[s])
        grads = (bn.weight.grad, bn.bias.grad) if affine else None
        out[r] = (y.copy(), dx.copy(), g, grads, bn.running_mean.data, bn.running_var.data)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    y = np.concatenate([o[0] for o in out])
    dx = np.concatenate([o[1] for o in out])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    if relu:
        np.testing.assert_array_equal(np.concatenate([o[2] for o in out]), g_ref)
    if affine:  # each rank's part; the gradient reducer sums them
        np.testing.assert_allclose(
            sum(o[3][0] for o in out), whole.weight.grad, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(sum(o[3][1] for o in out), whole.bias.grad, rtol=1e-5, atol=1e-5)
    for o in out:  # every rank's running statistics are those of the whole batch
        np.testing.assert_allclose(o[4], whole.running_mean.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(o[5], whole.running_var.data, rtol=1e-5, atol=1e-6)


# -- under mpirun -----------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_compute_what_one_process_computes(tmp_path, ranks):
    # 200 images at 16 x ranks per step: a last batch smaller than the others (8 images). One
    # epoch: the ranks add their gradients in another order than one process, and over more
    # steps a ReLU or max-pool decision within rounding of its threshold flips now and then,
    # which SGD spreads over every weight (1e-3 after 2 epochs at lr 0.06, 3 ranks).
    args = ("--batch", str(16 * ranks), "--epochs", "1")
    ok(alone(tmp_path / "one", *args))
    ok(mpirun(ranks, tmp_path / "many", *args))
    one, h1 = weights(tmp_path / "one")
    for rank in range(ranks):  # every rank holds the same weights, those of one process
        many, hn = weights(tmp_path / "many", rank)
        assert_weights_close(many, one, rtol=1e-4)
    assert len(hn) == len(h1) == 1
    for a, b in zip(h1, hn):  # the history holds the whole job's figures
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["accuracy"] == a["accuracy"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["val_accuracy"] == a["val_accuracy"]
    assert h1[-1]["val_loss"] < np.log(10)  # it learned: below a uniform guess's loss


@needs_mpi
def test_synchronised_batchnorm_matches_one_process(tmp_path):
    args = ("--arch", "resnet8", "--samples", "120", "--epochs", "1")
    ok(alone(tmp_path / "one", *args, "--batch", "40"))
    ok(mpirun(2, tmp_path / "two", *args, "--batch", "40", "--sync-bn"))
    assert_weights_close(weights(tmp_path / "two")[0], weights(tmp_path / "one")[0], rtol=1e-3)


@needs_mpi
def test_a_run_repeats_bit_for_bit_and_ranks_agree(tmp_path):
    args = ("--arch", "resnet8", "--samples", "90", "--epochs", "1", "--batch", "30")
    ok(mpirun(2, tmp_path / "a", *args))
    ok(mpirun(2, tmp_path / "b", *args))
    a0, a1, b0 = (
        weights(tmp_path / "a", 0)[0],
        weights(tmp_path / "a", 1)[0],
        weights(tmp_path / "b")[0],
    )
    for k in a0:
        np.testing.assert_array_equal(a0[k], b0[k], err_msg=k)
        np.testing.assert_array_equal(a0[k], a1[k], err_msg=k)  # running statistics averaged


@needs_mpi
def test_threads_default_to_the_cores_per_rank(tmp_path):
    ok(
        mpirun(
            2, tmp_path / "t", "--samples", "40", "--epochs", "1", env={"FASTCNN_NUM_THREADS": ""}
        )
    )
    with np.load(f"{tmp_path / 't'}.rank0.npz") as f:
        threads = int(f["threads"])
    assert threads == max(1, len(os.sched_getaffinity(0)) // 2) or threads == 1


@needs_mpi
def test_a_hung_rank_is_named_and_the_job_stops(tmp_path):
    start = time.monotonic()
    result = mpirun(
        2,
        tmp_path / "h",
        "--hang-rank",
        "1",
        "--at-step",
        "3",
        env={"FASTCNN_DISTRIBUTED_TIMEOUT": "3"},
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "gradient all-reduce did not complete within 3 s" in result.stderr
    assert "no word from rank 1 (host" in result.stderr
    assert elapsed < 60


@needs_mpi
def test_ranks_with_different_data_are_refused_by_name(tmp_path):
    result = mpirun(2, tmp_path / "d", "--samples", "40", "--rank1-samples", "41", timeout=120)
    assert result.returncode != 0
    assert "the ranks do not train the same thing" in result.stderr
    assert "rank 1 (host" in result.stderr and "training images 41, rank 0 40" in result.stderr


@needs_mpi
def test_an_uncaught_exception_on_one_rank_stops_the_job(tmp_path):
    start = time.monotonic()
    result = mpirun(2, tmp_path / "e", "--samples", "40", "--epochs", "1", "--raise-after-fit", "1",
                    timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "RuntimeError: the script failed on this rank" in result.stderr
    assert "rank 1 (host" in result.stderr and "ended with RuntimeError" in result.stderr
    assert time.monotonic() - start < 60


@needs_mpi
def test_a_killed_rank_stops_the_job_and_resume_finishes_it(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"
    args = ("--epochs", "3", "--samples", "160", "--checkpoint", str(ckpt))
    # Rank 1 dies in epoch 2 (10 steps an epoch at 16).
    died = mpirun(2, tmp_path / "x", *args, "--batch", "16", "--kill-rank", "1", "--at-step", "14")
    assert died.returncode != 0
    assert "rank 1" in died.stderr and "signal 9" in died.stderr, died.stderr[-2000:]
    assert fastcnn.io.load_checkpoint(ckpt).epoch == 1  # the last whole epoch's, intact
    resumed = ok(mpirun(2, tmp_path / "r", *args, "--batch", "16", "--resume"))
    assert "resuming from" in resumed.stdout
    ok(mpirun(2, tmp_path / "u", "--epochs", "3", "--samples", "160", "--batch", "16"))
    r, hr = weights(tmp_path / "r")
    u, hu = weights(tmp_path / "u")
    for k in u:  # ends bit for bit where an uninterrupted run ends
        np.testing.assert_array_equal(r[k], u[k], err_msg=k)
    assert [h["loss"] for h in hr] == [h["loss"] for h in hu]
    # Another number of ranks cannot continue it.
    other = alone(tmp_path / "o", *args, "--batch", "16", "--resume")
    assert other.returncode != 0 and "mpirun -n 2" in other.stderr


@needs_mpi
def test_cli_under_mpirun_trains_one_model_and_rank_0_alone_speaks(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, level in (("dark", 60), ("light", 190)):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(24):
            pixels = np.clip(rng.normal(level, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pets" / label / f"{i}.png")
    out = tmp_path / "m.safetensors"
    cmd = [
        MPIRUN,
        "-n",
        "2",
        "--oversubscribe",
        sys.executable,
        "-m",
        "fastcnn.cli",
        "train",
        str(tmp_path / "pets"),
        "--epochs",
        "2",
        "--image-size",
        "12",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--quiet",
    ]
    result = subprocess.run(  # from tmp_path: `-m fastcnn.cli` must not find the source tree
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **MPI_ENV},
        cwd=tmp_path,
    )  # fmt: skip
    ok(result)
    assert result.stdout.count("distributed: 2 ranks on 1 machine(s)") == 1
    assert result.stdout.count("trained 2 epochs") == 1
    from fastcnn import cli

    assert cli.main(["eval", str(out), str(tmp_path / "pets")]) == 0
    accuracy = float(capsys.readouterr().out.split("accuracy")[1].split()[0].strip(":,"))
    assert accuracy > 0.9


@needs_mpi
def test_a_missing_hostfile_is_a_clear_error(tmp_path):
    cmd = [
        MPIRUN,
        "--hostfile",
        str(tmp_path / "no-such-hosts"),
        "-n",
        "2",
        sys.executable,
        "-c",
        "pass",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **MPI_ENV}
    )
    assert result.returncode != 0
    assert "no-such-hosts" in result.stdout + result.stderr


@needs_mpi
@pytest.mark.skipif(shutil.which("ssh") is None, reason="Open MPI reaches other hosts by ssh")
def test_a_hostfile_naming_an_unknown_machine_is_a_clear_error(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("no-such-host.invalid slots=2\n")
    cmd = [MPIRUN, "--hostfile", str(hosts), "-n", "2", sys.executable, "-c", "pass"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **MPI_ENV}
    )
    assert result.returncode != 0
    assert "no-such-host.invalid" in result.stdout + result.stderr
